//! dpcoord: every data-parallel rank agrees, once per engine step and in one collective on
//! the caller's NCCL communicator, on microbatching, DP padding and the CUDA-graph mode.
//!
//! The C API lives in [`ffi`]; [`plan`] is the pure decision logic it and the GPU path share.

pub mod error;
pub mod ffi;
pub mod plan;

pub use error::{Error, Result};
