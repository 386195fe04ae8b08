//! The boundary every exported function runs behind: panics and errors become a status plus
//! a thread-local message; pointer checks; the string getters.

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use super::types::{check_ptr, dp_status, dp_status_code};
use crate::diag::{self, Ctx, Level};
use crate::error::{invalid, Error, ErrorKind, Result};

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

fn set_last_error(message: &str) {
    let text = CString::new(message.replace('\0', "\\0")).unwrap_or_default();
    // During thread-local destruction (a C++ thread_local destructor calling dpcoord) the
    // slot is gone: the message is dropped rather than aborting the process.
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = text);
}

/// Runs `body` behind the boundary: panics and errors become a status plus a last error.
pub(crate) fn boundary(body: impl FnOnce() -> Result<()>) -> dp_status {
    let outcome = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic with a non-string payload".to_string());
        Err(Error::internal(format!(
            "panic caught at the C boundary: {what}"
        )))
    });
    match outcome {
        Ok(()) => dp_status::DP_OK,
        Err(e) => {
            let message = e.to_string();
            // Every failure of every exported function passes here once: DPCOORD_DEBUG=WARN
            // logs it with exactly the text dp_last_error returns.
            diag::log!(Level::Warn, Ctx::new(), "{message}");
            set_last_error(&message);
            dp_status::from(e.kind)
        }
    }
}

/// The `struct_size` an init function records for a caller's `size` (saturated to `u32`), or
/// an error when `size` is below `min`, the size of the first version of `type_name`.
pub(crate) fn init_struct_size(size: usize, min: usize, type_name: &str) -> Result<u32> {
    if size < min {
        return Err(invalid!(
            "size = {size} is smaller than {min}, the size of the first version of {type_name}"
        ));
    }
    Ok(u32::try_from(size).unwrap_or(u32::MAX))
}

/// An opaque C handle type whose `*mut Self` owns one boxed [`OwnedHandle::Owned`]: the one
/// pattern for every handle the C caller creates and destroys.
pub(crate) trait OwnedHandle: Sized {
    /// What the handle owns.
    type Owned;

    /// Hands `value` to the C caller, who owns it until [`OwnedHandle::drop_raw`].
    fn into_raw(value: Self::Owned) -> *mut Self {
        Box::into_raw(Box::new(value)).cast()
    }

    /// The value behind `handle` (checked: non-NULL and aligned for what it owns; `name` is
    /// the parameter's name in the error).
    fn borrow<'a>(handle: *mut Self, name: &str) -> Result<&'a Self::Owned> {
        let owned = handle.cast_const().cast::<Self::Owned>();
        check_ptr(owned, name)?;
        // SAFETY: non-NULL and aligned (checked); the C caller promises a handle from
        // `into_raw` that was not dropped yet.
        Ok(unsafe { &*owned })
    }

    /// Frees what `handle` owns.
    ///
    /// # Safety
    /// `handle` came from [`OwnedHandle::into_raw`], was not dropped before, and no reference
    /// from [`OwnedHandle::borrow`] is alive.
    unsafe fn drop_raw(handle: *mut Self) {
        // SAFETY: the caller's promise above.
        drop(unsafe { Box::from_raw(handle.cast::<Self::Owned>()) });
    }
}

/// Writes `value` through an output pointer (checked by `check_ptr` first).
pub(crate) fn write_out<T>(out: *mut T, value: T) {
    // SAFETY: every caller checked `out` with `check_ptr` first, and the C caller promises
    // it points at writable memory for one `T`.
    unsafe { out.write(value) }
}

/// The name of a status code, e.g. "DP_ERR_TIMEOUT"; any other value gives
/// "DP_ERR_UNKNOWN". The string is static. Local, thread-safe; never fails.
#[no_mangle]
pub extern "C" fn dp_status_string(status: dp_status_code) -> *const c_char {
    let name = match status {
        0 => c"DP_OK",
        code => ErrorKind::from_code(code).map_or(c"DP_ERR_UNKNOWN", ErrorKind::status_name),
    };
    name.as_ptr()
}

/// The message of this thread's last failed dpcoord call ("" if none yet): it names the
/// field and value, or carries CUDA's/NCCL's own text. Thread-local; the pointer stays
/// valid until the next failing dpcoord call on this thread. Never fails.
#[no_mangle]
pub extern "C" fn dp_last_error() -> *const c_char {
    LAST_ERROR
        .try_with(|slot| slot.borrow().as_ptr())
        .unwrap_or(c"".as_ptr())
}

/// The library's version string, "MAJOR.MINOR.PATCH"; static. Never fails.
#[no_mangle]
pub extern "C" fn dp_version() -> *const c_char {
    const VERSION: &CStr =
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => panic!("CARGO_PKG_VERSION contains a NUL"),
        };
    VERSION.as_ptr()
}
