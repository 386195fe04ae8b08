//! dpcoord: every data-parallel rank agrees, once per engine step and in one collective on
//! the caller's NCCL communicator, on microbatching, DP padding and the CUDA-graph mode.
//!
//! The C API lives in [`ffi`]; [`plan`] is the pure decision logic it and the GPU path
//! ([`engine`] over [`nccl`], [`cuda`] and [`kernels`]) share.

/// cbindgen:ignore
pub mod cuda;
/// cbindgen:ignore
pub mod engine;
pub mod error;
pub mod ffi;
/// cbindgen:ignore
pub mod kernels;
/// cbindgen:ignore
pub mod nccl;
pub mod plan;
pub mod slices;

pub use error::{Error, Result};
