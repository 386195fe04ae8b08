//! Where the NCCL that owns the caller's communicator is, and loading it.
//!
//! A communicator only works with the NCCL copy that created it, so [`nccl`](super::nccl)
//! looks for that copy in this order and stops at the first step that finds a library:
//!
//! 1. **process symbols**: `dlsym(RTLD_DEFAULT, "ncclAllGather")` (NCCL linked into the
//!    process or loaded with `RTLD_GLOBAL`);
//! 2. **already-loaded libnccl.so.2**: `dlopen("libnccl.so.2", RTLD_NOW | RTLD_NOLOAD)` (a
//!    private copy, e.g. PyTorch's, which step 1 cannot see);
//! 3. **`DPCOORD_NCCL_LIBRARY=<path>`**: `dlopen(path)`;
//! 4. **`dlopen(libnccl.so.2)`**: the dynamic linker's search.
//!
//! A step that finds a library lacking a required symbol is an error, not a reason to try
//! the next step (the next step would load a second copy). `DPCOORD_NCCL_LIBRARY`, once set,
//! is the only library steps 3–4 will load: if it cannot be opened or is not NCCL, that is
//! reported instead of falling back to step 4. Steps 1–2 still come first, so a set variable
//! is ignored when NCCL is already in the process. The result is cached on success only; a
//! failure is retried on the next call (the host may load NCCL later). Handles are never
//! closed.

use std::ffi::{c_int, CString, OsString};
use std::os::unix::ffi::OsStrExt;

use super::{Nccl, Symbols, NCCL_SUCCESS};
use crate::dl::{self, defining_file, Lookup};
use crate::error::{Error, ErrorKind, Result};

/// Environment variable naming the NCCL library to load when none is in the process.
pub const ENV_LIBRARY: &str = "DPCOORD_NCCL_LIBRARY";

/// The library name of steps 2 and 4.
const SONAME: &str = "libnccl.so.2";

/// One step of the search.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Source {
    /// `dlsym(RTLD_DEFAULT, ...)`.
    ProcessSymbols,
    /// `dlopen("libnccl.so.2", RTLD_NOW | RTLD_NOLOAD)`.
    AlreadyLoaded,
    /// `dlopen` of the value of `DPCOORD_NCCL_LIBRARY` (`None`: unset or empty).
    EnvPath(Option<OsString>),
    /// `dlopen("libnccl.so.2", RTLD_NOW)`.
    Dlopen,
}

impl Source {
    /// The step's name, as used in [`Nccl::origin`] and in error messages.
    fn label(&self) -> String {
        match self {
            Source::ProcessSymbols => "process symbols".into(),
            Source::AlreadyLoaded => format!("already-loaded {SONAME}"),
            Source::EnvPath(Some(p)) => format!("{ENV_LIBRARY}={}", p.to_string_lossy()),
            Source::EnvPath(None) => ENV_LIBRARY.into(),
            Source::Dlopen => format!("dlopen({SONAME})"),
        }
    }
}

/// The four steps in order, given the value of `DPCOORD_NCCL_LIBRARY`.
pub(crate) fn sources(env_library: Option<OsString>) -> [Source; 4] {
    let env = env_library.filter(|p| !p.is_empty());
    [
        Source::ProcessSymbols,
        Source::AlreadyLoaded,
        Source::EnvPath(env),
        Source::Dlopen,
    ]
}

/// One failed step: its label and why it found nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Attempt {
    pub(crate) step: String,
    pub(crate) why: String,
}

/// The `LibraryUnavailable` text for a search that found no library.
pub(crate) fn format_not_found(attempts: &[Attempt]) -> String {
    let mut s = String::from("NCCL not found; tried:");
    for (i, a) in attempts.iter().enumerate() {
        s.push_str(&format!(" ({}) {}: {};", i + 1, a.step, a.why));
    }
    s.push_str(&format!(
        " fix: link NCCL into the process, load it before the first dpcoord call \
         (e.g. create the communicator first), or set {ENV_LIBRARY} to the path of the \
         {SONAME} that owns the communicator"
    ));
    s
}

/// Runs the steps in order; the first that finds a library decides the outcome.
pub(crate) fn resolve(sources: &[Source]) -> Result<Nccl> {
    let mut tried = Vec::with_capacity(sources.len());
    let mut env_failed = false;
    for source in sources {
        let step = source.label();
        if env_failed {
            tried.push(Attempt {
                step,
                why: format!(
                    "not tried: {ENV_LIBRARY} is set, and no other library is loaded in its place"
                ),
            });
            continue;
        }
        let found = match source {
            Source::ProcessSymbols => dl::sym(Lookup::Global, c"ncclAllGather")
                .map(|_| Lookup::Global)
                .map_err(|e| format!("dlsym(RTLD_DEFAULT, \"ncclAllGather\"): {e}")),
            Source::AlreadyLoaded => dl::open(c"libnccl.so.2", libc::RTLD_NOW | libc::RTLD_NOLOAD)
                .map(Lookup::Handle)
                .map_err(|e| format!("not loaded (dlopen with RTLD_NOLOAD: {e})")),
            Source::EnvPath(None) => Err("not set".to_string()),
            Source::EnvPath(Some(path)) => {
                env_failed = true;
                match CString::new(path.as_bytes()) {
                    Ok(c) => dl::open(&c, libc::RTLD_NOW).map(Lookup::Handle),
                    Err(_) => Err("the path contains a NUL byte".to_string()),
                }
                .map_err(|e| format!("dlopen failed: {e}"))
            }
            Source::Dlopen => dl::open(c"libnccl.so.2", libc::RTLD_NOW)
                .map(Lookup::Handle)
                .map_err(|e| format!("dlopen failed: {e}")),
        };
        match found {
            Ok(lookup) => return load(lookup, step),
            Err(why) => tried.push(Attempt { step, why }),
        }
    }
    Err(Error::new(
        ErrorKind::LibraryUnavailable,
        format_not_found(&tried),
    ))
}

/// Reads every entry point from a library that a step found.
fn load(lookup: Lookup, origin: String) -> Result<Nccl> {
    let probe = dl::sym(lookup, c"ncclAllGather");
    let library_path = probe.as_ref().ok().and_then(|&p| defining_file(p));
    let library = match &library_path {
        Some(path) => format!("{origin} ({path})"),
        None => origin.clone(),
    };
    // SAFETY: the library is the NCCL a step found; every symbol of these names has its
    // nccl.h signature, which the table's types match.
    let sym = unsafe { Symbols::resolve(lookup) }.map_err(|missing| {
        Error::new(
            ErrorKind::LibraryUnavailable,
            format!(
                "{library} is not a usable NCCL: required symbol {} is missing ({}); \
                 dpcoord does not load another copy in its place",
                missing.name.to_string_lossy(),
                missing.why
            ),
        )
    })?;
    // SAFETY: as above, for the set-up functions (ncclUniqueId is passed by value as the
    // 128-byte repr(C) struct it is); any of them missing leaves the harness out.
    #[cfg(feature = "testing")]
    let harness = unsafe { super::Harness::resolve(lookup) }.ok();
    let mut n = Nccl {
        sym,
        #[cfg(feature = "testing")]
        harness,
        version: 0,
        origin,
        library_path,
    };
    let mut version: c_int = 0;
    // SAFETY: get_version is ncclGetVersion; version is a valid out pointer.
    let rc = unsafe { (n.sym.get_version)(&mut version) };
    if rc != NCCL_SUCCESS {
        return Err(n.failure("ncclGetVersion", rc, std::ptr::null_mut()));
    }
    n.version = version;
    Ok(n)
}
