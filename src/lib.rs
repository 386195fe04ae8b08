//! dpcoord: every data-parallel rank agrees, once per engine step and in one collective on
//! the caller's NCCL communicator, on microbatching, DP padding and the CUDA-graph mode.
//!
//! The C API lives in [`ffi`] (it is what `include/dpcoord.h` declares); [`rules`] is the pure
//! decision logic the C API, the GPU path (`coordinator` over `nccl`, `cuda` and `kernels`) and
//! the host transports share. docs/ARCHITECTURE.md maps the modules.

/// cbindgen:ignore
mod diag;
mod error;
pub mod ffi;
/// cbindgen:ignore
mod host_group;
pub mod rules;
pub mod slices;
mod slot;

// The GPU path: internal rooms, reached from the C ABI (and, for the benchmark only, from
// `testing`).
/// cbindgen:ignore
mod coordinator;
/// cbindgen:ignore
mod cuda;
/// cbindgen:ignore
mod dl;
/// cbindgen:ignore
mod kernels;
/// cbindgen:ignore
mod nccl;

/// What only dpcoord's own GPU benchmark needs (the one-rank forced exchange, a bare NCCL
/// harness, a few CUDA calls). Not part of the API; not in a production build.
/// cbindgen:ignore
#[cfg(feature = "testing")]
#[doc(hidden)]
pub mod testing;

pub use error::{Error, ErrorKind, Result};
