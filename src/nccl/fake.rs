//! Test doubles of NCCL made of Rust functions (unit tests only): [`one_rank`], the
//! coordinator's fake one-rank communicator, and [`nccl_with`] for a table of the test's own.

use std::ffi::{c_char, c_int, c_void};
use std::sync::OnceLock;

use super::{CommPtr, Nccl, StreamPtr, Symbols};

/// A fake NCCL 2.28.3 ("fake") over `sym`.
pub(crate) fn nccl_with(sym: Symbols) -> Nccl {
    Nccl {
        sym,
        #[cfg(feature = "testing")]
        harness: None,
        version: 22803,
        origin: "fake".into(),
        library_path: None,
    }
}

/// `ncclGetVersion` of NCCL 2.28.3.
pub(crate) unsafe extern "C" fn version(out: *mut c_int) -> c_int {
    // SAFETY: out is the caller's valid out pointer.
    unsafe { *out = 22803 };
    0
}

/// A fake NCCL for the coordinator's tests: every communicator has one rank on device 0 and
/// no error; collectives are refused.
pub(crate) fn one_rank() -> &'static Nccl {
    unsafe extern "C" fn one(_c: CommPtr, out: *mut c_int) -> c_int {
        // SAFETY: out is the wrapper's valid out pointer.
        unsafe { *out = 1 };
        0
    }
    unsafe extern "C" fn zero(_c: CommPtr, out: *mut c_int) -> c_int {
        // SAFETY: out is the wrapper's valid out pointer.
        unsafe { *out = 0 };
        0
    }
    unsafe extern "C" fn refuse(
        _s: *const c_void,
        _r: *mut c_void,
        _n: usize,
        _t: c_int,
        _c: CommPtr,
        _st: StreamPtr,
    ) -> c_int {
        5
    }
    unsafe extern "C" fn text(_code: c_int) -> *const c_char {
        c"fake".as_ptr()
    }
    static FAKE: OnceLock<Nccl> = OnceLock::new();
    FAKE.get_or_init(|| {
        nccl_with(Symbols {
            all_gather: refuse,
            comm_count: one,
            comm_user_rank: zero,
            comm_cu_device: zero,
            comm_get_async_error: zero,
            get_error_string: text,
            get_version: version,
            get_last_error: None,
        })
    })
}
