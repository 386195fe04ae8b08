//! The C ABI: every `extern "C"` function of `include/dpcoord.h`, and the one room where C's
//! pointers, sizes and bytes are checked.
//!
//! Conventions, for every function here: pointers are checked for NULL and for their type's
//! alignment before use; a struct is read through its `struct_size` (only
//! `min(struct_size, sizeof)` bytes, the rest takes defaults) and written the same way; C
//! `bool`s are read as bytes (0 or 1, anything else is an error naming the field); outputs are
//! written only on success; a panic never crosses the boundary (it becomes `DP_ERR_INTERNAL`);
//! every failure leaves a thread-local message for `dp_last_error`.

#![allow(non_camel_case_types)]
// The exported functions take raw pointers from C by design; each is checked before use and
// each dereference carries a SAFETY note stating the C caller's promise.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

mod boundary;
mod decide;
mod gpu;
mod graphs;
mod host;
mod host_group;
mod local;
mod slices;
mod slots;
mod types;

pub use boundary::*;
pub use decide::*;
pub use gpu::*;
pub use graphs::*;
pub use host::*;
pub use host_group::*;
pub use local::*;
pub use slices::*;
pub use slots::*;
pub use types::*;

/// Major version of this header and library.
pub const DPCOORD_VERSION_MAJOR: u32 = 0;
/// Minor version; a 0.x minor is a breaking release (the SONAME carries it).
pub const DPCOORD_VERSION_MINOR: u32 = 3;
/// Patch version.
pub const DPCOORD_VERSION_PATCH: u32 = 0;

pub use crate::rules::{
    DP_CUDAGRAPH_FULL, DP_CUDAGRAPH_NONE, DP_CUDAGRAPH_PIECEWISE, DP_PAD_POLICY_EXPLICIT,
    DP_PAD_POLICY_WHEN_CUDAGRAPH,
};

#[cfg(test)]
pub(crate) mod tests;
