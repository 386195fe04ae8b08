//! Dynamic loading shared by the two loaders (`nccl`, `cuda`): `dlopen`, `dlsym` and `dladdr`
//! with `dlerror`'s text as the error. Handles are never closed (a loaded NCCL or CUDA driver
//! stays for the life of the process, as the communicator and contexts made with it do).

use std::ffi::{c_int, c_void, CStr};

/// Where a library's symbols are looked up.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Lookup {
    /// `RTLD_DEFAULT`: every library loaded into the process with global symbols.
    Global,
    /// One library, from a successful [`open`].
    Handle(*mut c_void),
}

/// The text of the calling thread's last `dl*` error, or `fallback`.
fn dl_error(fallback: &str) -> String {
    // SAFETY: dlerror takes no arguments and returns NULL or a NUL-terminated string valid
    // until the next dl* call on this thread; it is copied out at once.
    let p = unsafe { libc::dlerror() };
    if p.is_null() {
        fallback.to_string()
    } else {
        // SAFETY: p is non-NULL and NUL-terminated (above).
        unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
    }
}

/// `dlopen(name, flags)`: the handle, or dlerror's text.
pub(crate) fn open(name: &CStr, flags: c_int) -> Result<*mut c_void, String> {
    dl_error(""); // clear a stale error
                  // SAFETY: name is a valid NUL-terminated string; dlopen has no other preconditions.
    let h = unsafe { libc::dlopen(name.as_ptr(), flags) };
    if h.is_null() {
        Err(dl_error("dlopen returned NULL"))
    } else {
        Ok(h)
    }
}

/// `dlsym` of `name` in `lookup`: the address, or dlerror's text.
pub(crate) fn sym(lookup: Lookup, name: &CStr) -> Result<*mut c_void, String> {
    let handle = match lookup {
        Lookup::Global => libc::RTLD_DEFAULT,
        Lookup::Handle(h) => h,
    };
    dl_error(""); // clear a stale error
                  // SAFETY: handle is RTLD_DEFAULT or a handle from a successful dlopen that is never
                  // closed; name is NUL-terminated.
    let p = unsafe { libc::dlsym(handle, name.as_ptr()) };
    if p.is_null() {
        Err(dl_error("symbol not found"))
    } else {
        Ok(p)
    }
}

/// The file that defines the code at `addr`, if the dynamic linker knows it.
pub(crate) fn defining_file(addr: *mut c_void) -> Option<String> {
    // SAFETY: Dl_info is plain old data; all-zero is a valid value.
    let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
    // SAFETY: addr is a symbol address returned by dlsym; info is a valid out pointer.
    let ok = unsafe { libc::dladdr(addr as *const c_void, &mut info) };
    if ok == 0 || info.dli_fname.is_null() {
        return None;
    }
    // SAFETY: dli_fname is non-NULL and NUL-terminated, owned by the never-unloaded library.
    Some(
        unsafe { CStr::from_ptr(info.dli_fname) }
            .to_string_lossy()
            .into_owned(),
    )
}
