//! Dynamic loading shared by the two loaders (`nccl`, `cuda`): `dlopen`, `dlsym` and `dladdr`
//! with `dlerror`'s text as the error, and [`symbol_table!`], the one way either loader turns a
//! library's symbols into typed function pointers. Handles are never closed (a loaded NCCL or
//! CUDA driver stays for the life of the process, as the communicator and contexts made with
//! it do).
//!
//! # Why not `libloading`
//!
//! `libloading` was evaluated for this room (0.8 and 0.9) and not adopted, because here it
//! would make the code neither smaller nor safer:
//! - NCCL's first step looks a symbol up with `dlsym(RTLD_DEFAULT, ..)`. libloading has no
//!   `RTLD_DEFAULT`; its `Library::this()` is `dlopen(NULL, RTLD_LAZY | RTLD_LOCAL)`, whose
//!   scope is not the caller's default scope when libdpcoord itself was loaded `RTLD_LOCAL`
//!   (a Python extension, say), so step 1 would find another set of libraries. It has no
//!   `dladdr` either. This file would keep its `libc` calls for both.
//! - A typed `Library::get::<T>` is `unsafe` for exactly the reason [`function`] is (the
//!   caller promises `T`), so it removes no `unsafe` block; [`symbol_table!`] already has one
//!   cast site for every table.
//! - Its `Library` closes the handle on drop; every use would need `into_raw` to keep NCCL
//!   and the driver loaded, a trap in a room whose rule is never to close one.
//! - Its errors print as "dlopen failed" with `dlerror`'s text as the `source()`, so every
//!   message naming the failing path would need the chain walked; and 0.9 needs Rust 1.88
//!   (dpcoord's floor is 1.80).

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

/// An address from [`sym`] as the function-pointer type `F` (checked at compile time to be
/// pointer-sized).
///
/// # Safety
/// `p` is the address of a C function whose signature `F` matches exactly (handles are
/// pointers, enums and status codes are `int`, `size_t` is `usize`).
pub(crate) unsafe fn function<F: Copy>(p: *mut c_void) -> F {
    const { assert!(std::mem::size_of::<F>() == std::mem::size_of::<*mut c_void>()) };
    // SAFETY: `F` is pointer-sized (checked above) and, by the caller's promise, a function
    // pointer type whose signature is the function's at `p`.
    unsafe { std::mem::transmute_copy::<*mut c_void, F>(&p) }
}

/// A required symbol that [`symbol_table!`]'s `resolve` did not find.
#[derive(Debug)]
pub(crate) struct Missing {
    /// The symbol's name.
    pub(crate) name: &'static CStr,
    /// `dlerror`'s text.
    pub(crate) why: String,
}

/// Declares a library's table of entry points, every one resolved once, up front, from one
/// [`Lookup`]:
///
/// ```ignore
/// symbol_table! {
///     /// The table's doc.
///     pub(crate) struct Symbols {
///         /// A field's doc.
///         required all_gather: AllGatherFn = c"ncclAllGather";
///         optional get_last_error: LastErrorFn = c"ncclGetLastError";
///         #[cfg(feature = "testing")]
///         required stream_create: StreamCreateFn = c"cuStreamCreate";
///     }
/// }
/// ```
///
/// A `required` symbol missing makes `resolve` fail with [`Missing`] (the first one, in
/// declaration order); an `optional` one is `None`. A field under `#[cfg(..)]` is still
/// resolved (and, when required, still demanded) in every build, so a library is accepted or
/// refused alike with and without the feature; it is only stored where the feature is on.
macro_rules! symbol_table {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident {
            $(
                $(#[doc = $doc:literal])*
                $(#[cfg($cfg:meta)])?
                $need:ident $field:ident: $ty:ty = $sym:literal;
            )*
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $(
                $(#[doc = $doc])*
                $(#[cfg($cfg)])?
                pub(crate) $field: $crate::dl::symbol_table!(@type $need $ty),
            )*
        }

        impl $name {
            /// Resolves every entry point in `lookup`, in declaration order.
            ///
            /// # Safety
            /// Every symbol of these names that `lookup` finds is a C function whose
            /// signature its field's type matches exactly.
            $vis unsafe fn resolve(
                lookup: $crate::dl::Lookup,
            ) -> ::std::result::Result<Self, $crate::dl::Missing> {
                $(
                    let $field = $crate::dl::symbol_table!(@get $need lookup, $sym, $ty);
                    $(#[cfg(not($cfg))] let _ = $field;)?
                )*
                Ok(Self { $($(#[cfg($cfg)])? $field,)* })
            }
        }
    };
    (@type required $ty:ty) => { $ty };
    (@type optional $ty:ty) => { ::std::option::Option<$ty> };
    (@get required $lookup:ident, $sym:literal, $ty:ty) => {{
        let p = $crate::dl::sym($lookup, $sym)
            .map_err(|why| $crate::dl::Missing { name: $sym, why })?;
        // SAFETY: the caller's promise: the symbol of this name has the field's signature.
        unsafe { $crate::dl::function::<$ty>(p) }
    }};
    (@get optional $lookup:ident, $sym:literal, $ty:ty) => {
        $crate::dl::sym($lookup, $sym).ok().map(|p| {
            // SAFETY: as for a required symbol.
            unsafe { $crate::dl::function::<$ty>(p) }
        })
    };
}
pub(crate) use symbol_table;
