//! The C functions of `shim.c` (NVTX v3 through NVIDIA's header). dpcoord's `diag::nvtx`
//! is the only caller and documents when they are called.

use std::ffi::{c_char, c_void};

extern "C" {
    /// `nvtxDomainCreateA(name)`: the domain's handle (NVTX returns one handle per name).
    pub fn dpcoord_nvtx_domain_create(name: *const c_char) -> *mut c_void;
    /// `nvtxDomainRangePushEx` with an ASCII message and an ARGB colour, on this thread.
    pub fn dpcoord_nvtx_range_push(domain: *mut c_void, message: *const c_char, argb: u32);
    /// `nvtxDomainRangePop`: closes this thread's innermost range in `domain`.
    pub fn dpcoord_nvtx_range_pop(domain: *mut c_void);
}
