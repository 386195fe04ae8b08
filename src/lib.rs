//! dpcoord: every data-parallel rank agrees, once per engine step and in one collective on
//! the caller's NCCL communicator, on microbatching, DP padding and the CUDA-graph mode.
//!
//! The C API lives in [`ffi`] (it is what `include/dpcoord.h` declares); [`rules`] is the pure
//! decision logic the C API, the GPU path (`coordinator` over `nccl`, `cuda` and `kernels`) and
//! the host transports share. docs/ARCHITECTURE.md maps the modules.

/// cbindgen:ignore
#[cfg(not(feature = "testing"))]
mod diag;
// The benchmarks measure the log's and the ranges' call sites (benches/diag.rs).
/// cbindgen:ignore
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod diag;
mod error;
pub mod ffi;
pub mod rules;
pub mod slices;

// The GPU path. Internal; `#[doc(hidden)] pub` only until the bench reaches it through the
// `testing` module.
/// cbindgen:ignore
#[doc(hidden)]
pub mod coordinator;
/// cbindgen:ignore
#[doc(hidden)]
pub mod cuda;
/// cbindgen:ignore
#[doc(hidden)]
pub mod kernels;
/// cbindgen:ignore
#[doc(hidden)]
pub mod nccl;

pub use error::{Error, ErrorKind, Result};
