//! The NCCL that owns the caller's communicator, found at run time and never loaded twice.
//!
//! A communicator only works with the NCCL copy that created it, so [`nccl`] looks for that
//! copy in this order and stops at the first step that finds a library:
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

use std::borrow::Cow;
use std::ffi::{c_char, c_int, c_void, CStr, CString, OsString};
use std::os::unix::ffi::OsStrExt;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use crate::cuda::StreamHandle;
use crate::dl::{self, defining_file, Lookup};
use crate::error::{invalid, Error, ErrorKind, Result};

/// Raw `ncclComm_t`, inside this module only.
type CommPtr = *mut c_void;
/// Raw `cudaStream_t`, inside this module only.
type StreamPtr = *mut c_void;

/// The caller's `ncclComm_t`: its own type, so a swapped communicator and stream do not
/// compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CommHandle(*mut c_void);

// SAFETY: a communicator handle is an opaque NCCL handle; dpcoord never dereferences it, and
// NCCL allows its calls from any thread (one at a time per communicator, which the
// coordinator's lock ensures).
unsafe impl Send for CommHandle {}
// SAFETY: as above.
unsafe impl Sync for CommHandle {}

impl CommHandle {
    /// Wraps a raw communicator.
    ///
    /// # Safety
    /// `raw` is NULL or a live communicator of the process's NCCL, and stays live (not
    /// destroyed or aborted) for as long as the handle is used to call NCCL.
    pub unsafe fn from_raw(raw: *mut c_void) -> Self {
        Self(raw)
    }

    /// The raw handle.
    pub fn as_raw(self) -> *mut c_void {
        self.0
    }
}

/// Environment variable naming the NCCL library to load when none is in the process.
pub const ENV_LIBRARY: &str = "DPCOORD_NCCL_LIBRARY";

/// The library name of steps 2 and 4.
const SONAME: &str = "libnccl.so.2";

// ncclResult_t values, read as integers (never as a Rust enum: NCCL may add codes).
const NCCL_SUCCESS: c_int = 0;
const NCCL_IN_PROGRESS: c_int = 7;
// ncclDataType_t ncclInt32.
const NCCL_INT32: c_int = 2;

type AllGatherFn =
    unsafe extern "C" fn(*const c_void, *mut c_void, usize, c_int, CommPtr, StreamPtr) -> c_int;
type CommQueryFn = unsafe extern "C" fn(CommPtr, *mut c_int) -> c_int;
type ErrorStringFn = unsafe extern "C" fn(c_int) -> *const c_char;
type LastErrorFn = unsafe extern "C" fn(CommPtr) -> *const c_char;
type VersionFn = unsafe extern "C" fn(*mut c_int) -> c_int;
type GetUniqueIdFn = unsafe extern "C" fn(*mut UniqueId) -> c_int;
type CommInitRankFn = unsafe extern "C" fn(*mut CommPtr, c_int, UniqueId, c_int) -> c_int;
type CommFinishFn = unsafe extern "C" fn(CommPtr) -> c_int;
type AllReduceFn = unsafe extern "C" fn(
    *const c_void,
    *mut c_void,
    usize,
    c_int,
    c_int,
    CommPtr,
    StreamPtr,
) -> c_int;

// ncclRedOp_t ncclSum.
#[cfg(feature = "testing")]
const NCCL_SUM: c_int = 0;

/// `ncclUniqueId`: 128 opaque bytes that rank 0 creates and every rank passes to init.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct UniqueId {
    /// The bytes, as NCCL wrote them.
    pub internal: [u8; 128],
}

/// Communicator set-up and bare collectives for dpcoord's own GPU benchmarks (the `testing`
/// feature); the library never calls these.
#[derive(Debug)]
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
pub(crate) struct Harness {
    get_unique_id: GetUniqueIdFn,
    comm_init_rank: CommInitRankFn,
    comm_destroy: CommFinishFn,
    all_reduce: AllReduceFn,
}

/// The resolved NCCL: its entry points, version and where it was found.
#[derive(Debug)]
#[cfg_attr(not(feature = "testing"), allow(dead_code))]
pub struct Nccl {
    all_gather: AllGatherFn,
    comm_count: CommQueryFn,
    comm_user_rank: CommQueryFn,
    comm_cu_device: CommQueryFn,
    comm_get_async_error: CommQueryFn,
    get_error_string: ErrorStringFn,
    get_last_error: Option<LastErrorFn>,
    harness: Option<Harness>,
    version: i32,
    origin: String,
    library_path: Option<String>,
}

static NCCL: OnceLock<Nccl> = OnceLock::new();
static RESOLVING: Mutex<()> = Mutex::new(());

/// The process's NCCL, resolved on the first successful call and cached for the process.
///
/// After the first success this is one atomic load. A failure (`LibraryUnavailable`) is not
/// cached, so a later call finds NCCL once the host has loaded it.
pub fn nccl() -> Result<&'static Nccl> {
    if let Some(n) = NCCL.get() {
        return Ok(n);
    }
    let _guard = RESOLVING.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(n) = NCCL.get() {
        return Ok(n);
    }
    let n = resolve(&sources(std::env::var_os(ENV_LIBRARY)))?;
    Ok(NCCL.get_or_init(|| n))
}

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
    let required = |name: &CStr| {
        dl::sym(lookup, name).map_err(|e| {
            Error::new(
                ErrorKind::LibraryUnavailable,
                format!(
                    "{library} is not a usable NCCL: required symbol {} is missing ({e}); \
                 dpcoord does not load another copy in its place",
                    name.to_string_lossy()
                ),
            )
        })
    };
    // Every transmute below turns the address of the NCCL C function of the same name into the
    // function-pointer type whose signature matches its nccl.h declaration exactly: enums are
    // `int`, handles are pointers, `size_t` is `usize`.
    // SAFETY: see the note above.
    let all_gather =
        unsafe { std::mem::transmute::<*mut c_void, AllGatherFn>(required(c"ncclAllGather")?) };
    // SAFETY: see above.
    let comm_count =
        unsafe { std::mem::transmute::<*mut c_void, CommQueryFn>(required(c"ncclCommCount")?) };
    // SAFETY: see above.
    let comm_user_rank =
        unsafe { std::mem::transmute::<*mut c_void, CommQueryFn>(required(c"ncclCommUserRank")?) };
    // SAFETY: see above.
    let comm_cu_device =
        unsafe { std::mem::transmute::<*mut c_void, CommQueryFn>(required(c"ncclCommCuDevice")?) };
    // SAFETY: see above (ncclResult_t* is int*).
    let comm_get_async_error = unsafe {
        std::mem::transmute::<*mut c_void, CommQueryFn>(required(c"ncclCommGetAsyncError")?)
    };
    // SAFETY: see above.
    let get_error_string = unsafe {
        std::mem::transmute::<*mut c_void, ErrorStringFn>(required(c"ncclGetErrorString")?)
    };
    // SAFETY: see above.
    let get_version =
        unsafe { std::mem::transmute::<*mut c_void, VersionFn>(required(c"ncclGetVersion")?) };
    let get_last_error = dl::sym(lookup, c"ncclGetLastError").ok().map(|p| {
        // SAFETY: see above (optional: NCCL >= 2.13).
        unsafe { std::mem::transmute::<*mut c_void, LastErrorFn>(p) }
    });
    let optional = |name: &CStr| dl::sym(lookup, name).ok();
    let harness = (|| {
        Some(Harness {
            // SAFETY: the address of the NCCL function of that name, whose nccl.h signature the
            // function-pointer type matches (ncclUniqueId is passed by value as the 128-byte
            // repr(C) struct it is; ncclRedOp_t and ncclDataType_t are int); so for the others.
            get_unique_id: unsafe {
                std::mem::transmute::<*mut c_void, GetUniqueIdFn>(optional(c"ncclGetUniqueId")?)
            },
            // SAFETY: as for get_unique_id.
            comm_init_rank: unsafe {
                std::mem::transmute::<*mut c_void, CommInitRankFn>(optional(c"ncclCommInitRank")?)
            },
            // SAFETY: as for get_unique_id.
            comm_destroy: unsafe {
                std::mem::transmute::<*mut c_void, CommFinishFn>(optional(c"ncclCommDestroy")?)
            },
            // SAFETY: as for get_unique_id.
            all_reduce: unsafe {
                std::mem::transmute::<*mut c_void, AllReduceFn>(optional(c"ncclAllReduce")?)
            },
        })
    })();

    let mut n = Nccl {
        all_gather,
        comm_count,
        comm_user_rank,
        comm_cu_device,
        comm_get_async_error,
        get_error_string,
        get_last_error,
        harness,
        version: 0,
        origin,
        library_path,
    };
    let mut version: c_int = 0;
    // SAFETY: get_version is ncclGetVersion; version is a valid out pointer.
    let rc = unsafe { get_version(&mut version) };
    if rc != NCCL_SUCCESS {
        return Err(n.failure("ncclGetVersion", rc, std::ptr::null_mut()));
    }
    n.version = version;
    Ok(n)
}

/// `major.minor.patch` of an `ncclGetVersion` code (both the >= 2.9 and the older encoding).
fn version_string(v: i32) -> String {
    if v >= 10000 {
        format!("{}.{}.{}", v / 10000, (v % 10000) / 100, v % 100)
    } else {
        format!("{}.{}.{}", v / 1000, (v % 1000) / 100, v % 100)
    }
}

/// A NUL-terminated C string as text; `None` for NULL.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string that stays valid during the call.
unsafe fn c_text<'a>(p: *const c_char) -> Option<Cow<'a, str>> {
    if p.is_null() {
        None
    } else {
        // SAFETY: non-NULL and NUL-terminated (the caller's guarantee).
        Some(unsafe { CStr::from_ptr(p) }.to_string_lossy())
    }
}

#[cfg_attr(not(feature = "testing"), allow(dead_code))]
impl Nccl {
    /// `ncclGetVersion`'s code, e.g. 22803 for 2.28.3.
    pub fn version(&self) -> i32 {
        self.version
    }

    /// The step that found this NCCL: "process symbols", "already-loaded libnccl.so.2",
    /// "DPCOORD_NCCL_LIBRARY=<path>" or "dlopen(libnccl.so.2)".
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The file that defines `ncclAllGather` (per `dladdr`), when known.
    pub fn library_path(&self) -> Option<&str> {
        self.library_path.as_deref()
    }

    /// `ncclCommCount`: the number of ranks. `comm` must be a live ncclComm_t of this NCCL.
    pub fn comm_count(&self, comm: CommHandle) -> Result<i32> {
        self.query("ncclCommCount", self.comm_count, comm.0)
    }

    /// `ncclCommUserRank`: this process's rank. `comm` must be a live ncclComm_t of this NCCL.
    pub fn comm_user_rank(&self, comm: CommHandle) -> Result<i32> {
        self.query("ncclCommUserRank", self.comm_user_rank, comm.0)
    }

    /// `ncclCommCuDevice`: the CUDA device ordinal of the communicator. `comm` must be a live
    /// ncclComm_t of this NCCL.
    pub fn comm_cu_device(&self, comm: CommHandle) -> Result<i32> {
        self.query("ncclCommCuDevice", self.comm_cu_device, comm.0)
    }

    /// `Ok(())` while the communicator is healthy (`ncclSuccess` or `ncclInProgress`);
    /// `Err(Error::Nccl)` naming the asynchronous error otherwise. `comm` must be a live
    /// ncclComm_t of this NCCL.
    pub fn check_async_error(&self, comm: CommHandle) -> Result<()> {
        match self.async_state(comm.0)? {
            NCCL_SUCCESS | NCCL_IN_PROGRESS => Ok(()),
            code => Err(self.async_failure(code, comm.0)),
        }
    }

    /// `ncclAllGather` of `count` int32 per rank from device address `send` into `recv`
    /// (`count * nranks` int32) on `stream`. `comm` must be a live ncclComm_t of this NCCL.
    ///
    /// On a nonblocking communicator NCCL may answer `ncclInProgress`, meaning the collective
    /// is not yet enqueued on `stream`; this then polls `ncclCommGetAsyncError` until it is,
    /// without a deadline (see [`Nccl::all_gather_i32_until`]).
    pub fn all_gather_i32(
        &self,
        send: u64,
        recv: u64,
        count: usize,
        comm: CommHandle,
        stream: StreamHandle,
    ) -> Result<()> {
        self.all_gather_i32_until(send, recv, count, comm, stream, None)
    }

    /// [`Nccl::all_gather_i32`], giving up with `Error::Timeout` if a nonblocking
    /// communicator is still `ncclInProgress` at `deadline`. `comm` must be a live
    /// ncclComm_t of this NCCL.
    ///
    /// The buffers are device addresses (or the device alias of mapped pinned memory) that
    /// NCCL reads and writes in stream order; NCCL validates them.
    pub fn all_gather_i32_until(
        &self,
        send: u64,
        recv: u64,
        count: usize,
        comm: CommHandle,
        stream: StreamHandle,
        deadline: Option<Instant>,
    ) -> Result<()> {
        const FUNC: &str = "ncclAllGather";
        let (comm, stream) = (comm.0, stream.as_raw());
        check_comm(FUNC, comm)?;
        if count > 0 && (send == 0 || recv == 0) {
            return Err(invalid!(
                "{FUNC}: NULL device buffer (send {send:#x}, recv {recv:#x})"
            ));
        }
        // SAFETY: all_gather is ncclAllGather; comm is live (the caller's guarantee); the
        // buffers are device addresses NCCL validates, read and written in stream order.
        let rc = unsafe {
            (self.all_gather)(
                send as usize as *const c_void,
                recv as usize as *mut c_void,
                count,
                NCCL_INT32,
                comm,
                stream,
            )
        };
        match rc {
            NCCL_SUCCESS => Ok(()),
            NCCL_IN_PROGRESS => self.wait_enqueued(FUNC, comm, deadline),
            code => Err(self.failure(FUNC, code, comm)),
        }
    }

    /// `ncclAllGather` of `count` int32 per rank, returning NCCL's code as it is: for a call
    /// made on a helper thread that must not touch the communicator afterwards (the caller
    /// may have aborted it by then), so a failure is described without `ncclGetLastError`.
    pub(crate) fn all_gather_code(
        &self,
        send: u64,
        recv: u64,
        count: usize,
        comm: CommHandle,
        stream: StreamHandle,
    ) -> c_int {
        // SAFETY: all_gather is ncclAllGather; comm is live at the call (the coordinator's
        // contract; an abort during the call is how NCCL frees a blocked one); the buffers
        // are device addresses NCCL validates, read and written in stream order.
        unsafe {
            (self.all_gather)(
                send as usize as *const c_void,
                recv as usize as *mut c_void,
                count,
                NCCL_INT32,
                comm.0,
                stream.as_raw(),
            )
        }
    }

    /// What to do after [`Nccl::all_gather_code`]: `Ok(true)` enqueued, `Ok(false)` in
    /// progress (a nonblocking communicator: poll [`Nccl::wait_enqueued_until`]), or the
    /// failure, described without touching the communicator.
    pub(crate) fn all_gather_outcome(&self, code: c_int) -> Result<bool> {
        match code {
            NCCL_SUCCESS => Ok(true),
            NCCL_IN_PROGRESS => Ok(false),
            code => Err(Error::new(
                ErrorKind::Nccl,
                format!("ncclAllGather failed: {}", self.describe(code)),
            )),
        }
    }

    /// Polls a nonblocking communicator until the call in progress is enqueued, giving up
    /// with `Timeout` at `deadline`. `comm` must be live.
    pub(crate) fn wait_enqueued_until(
        &self,
        comm: CommHandle,
        deadline: Option<Instant>,
    ) -> Result<()> {
        self.wait_enqueued("ncclAllGather", comm.0, deadline)
    }

    /// Polls a nonblocking communicator until it leaves `ncclInProgress`.
    fn wait_enqueued(&self, func: &str, comm: CommPtr, deadline: Option<Instant>) -> Result<()> {
        loop {
            match self.async_state(comm)? {
                NCCL_SUCCESS => return Ok(()),
                NCCL_IN_PROGRESS => {}
                code => return Err(self.async_failure(code, comm)),
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "{func} returned ncclInProgress (nonblocking communicator) and was still \
                     not enqueued at the deadline"
                    ),
                ));
            }
            std::thread::yield_now();
        }
    }

    /// `ncclCommGetAsyncError`'s reported state, as an integer.
    fn async_state(&self, comm: CommPtr) -> Result<c_int> {
        self.query("ncclCommGetAsyncError", self.comm_get_async_error, comm)
    }

    /// Calls an `(comm, int*)` query and returns the int.
    fn query(&self, func: &str, f: CommQueryFn, comm: CommPtr) -> Result<i32> {
        check_comm(func, comm)?;
        let mut out: c_int = 0;
        // SAFETY: f is the NCCL query named `func`; comm is live (the caller's guarantee);
        // out is a valid out pointer.
        let rc = unsafe { f(comm, &mut out) };
        if rc == NCCL_SUCCESS {
            Ok(out)
        } else {
            Err(self.failure(func, rc, comm))
        }
    }

    /// NCCL's description of a code, plus the numeric code and this NCCL's version.
    fn describe(&self, code: c_int) -> String {
        // SAFETY: get_error_string is ncclGetErrorString, defined for every int (unknown
        // codes give "unknown result code"); it returns a static string or NULL.
        let text = unsafe { c_text((self.get_error_string)(code)) };
        let text = text.unwrap_or(Cow::Borrowed("(no description)"));
        format!(
            "{text} (ncclResult_t {code}, NCCL {})",
            version_string(self.version)
        )
    }

    /// `ncclGetLastError(comm)`'s text formatted as a suffix, or "" when absent or empty.
    fn last_error_suffix(&self, comm: CommPtr) -> String {
        let Some(f) = self.get_last_error else {
            return String::new();
        };
        // SAFETY: f is ncclGetLastError, which ignores or reads comm (live or NULL) and
        // returns a thread-local buffer or NULL; the text is copied out at once.
        match unsafe { c_text(f(comm)) } {
            Some(t) if !t.trim().is_empty() => format!("; ncclGetLastError: {}", t.trim_end()),
            _ => String::new(),
        }
    }

    /// The error for an NCCL call that returned `code`.
    fn failure(&self, func: &str, code: c_int, comm: CommPtr) -> Error {
        Error::new(
            ErrorKind::Nccl,
            format!(
                "{func} failed: {}{}",
                self.describe(code),
                self.last_error_suffix(comm)
            ),
        )
    }

    /// The error for a communicator whose asynchronous state is `code`.
    fn async_failure(&self, code: c_int, comm: CommPtr) -> Error {
        Error::new(
            ErrorKind::Nccl,
            format!(
                "ncclCommGetAsyncError reports the communicator failed: {}{}",
                self.describe(code),
                self.last_error_suffix(comm)
            ),
        )
    }
}

#[cfg(feature = "testing")]
impl Nccl {
    /// Communicator set-up for benchmarks and tests (NCCL always has these functions).
    pub(crate) fn harness(&self) -> Result<&Harness> {
        self.harness.as_ref().ok_or_else(|| {
            Error::new(
                ErrorKind::LibraryUnavailable,
                "this NCCL lacks ncclGetUniqueId/ncclCommInitRank/ncclCommDestroy/ncclAllReduce",
            )
        })
    }

    fn checked(&self, func: &str, rc: c_int, comm: CommPtr) -> Result<()> {
        if rc == NCCL_SUCCESS {
            Ok(())
        } else {
            Err(self.failure(func, rc, comm))
        }
    }
}

#[cfg(feature = "testing")]
impl Harness {
    /// `ncclGetUniqueId`: a new id for rank 0 to share.
    pub(crate) fn unique_id(&self, nccl: &Nccl) -> Result<UniqueId> {
        let mut id = UniqueId { internal: [0; 128] };
        nccl.checked(
            "ncclGetUniqueId",
            // SAFETY: ncclGetUniqueId writes 128 bytes into a valid out pointer.
            unsafe { (self.get_unique_id)(&mut id) },
            std::ptr::null_mut(),
        )?;
        Ok(id)
    }

    /// `ncclCommInitRank` on the current CUDA device: blocks until every rank joined.
    pub(crate) fn init_rank(
        &self,
        nccl: &Nccl,
        nranks: i32,
        id: UniqueId,
        rank: i32,
    ) -> Result<CommHandle> {
        let mut comm: CommPtr = std::ptr::null_mut();
        // SAFETY: writes the new communicator into a valid out pointer; id is passed by value.
        let rc = unsafe { (self.comm_init_rank)(&mut comm, nranks, id, rank) };
        nccl.checked("ncclCommInitRank", rc, std::ptr::null_mut())?;
        Ok(CommHandle(comm))
    }

    /// `ncclCommDestroy`. `comm` must be a live communicator of this NCCL, used no more.
    pub(crate) fn destroy(&self, nccl: &Nccl, comm: CommHandle) -> Result<()> {
        let comm = comm.0;
        check_comm("ncclCommDestroy", comm)?;
        // SAFETY: comm is live (the caller's guarantee) and not used afterwards.
        nccl.checked(
            "ncclCommDestroy",
            unsafe { (self.comm_destroy)(comm) },
            comm,
        )
    }

    /// `ncclAllReduce` (sum) of `count` int32 on `stream`. `comm` must be live; `send` and
    /// `recv` device buffers of `count` int32.
    pub(crate) fn all_reduce_sum_i32(
        &self,
        nccl: &Nccl,
        bufs: (u64, u64),
        count: usize,
        comm: CommHandle,
        stream: StreamHandle,
    ) -> Result<()> {
        let (comm, stream) = (comm.0, stream.as_raw());
        check_comm("ncclAllReduce", comm)?;
        // SAFETY: comm is live and the buffers hold `count` int32 (the caller's guarantee).
        let rc = unsafe {
            (self.all_reduce)(
                bufs.0 as *const c_void,
                bufs.1 as *mut c_void,
                count,
                NCCL_INT32,
                NCCL_SUM,
                comm,
                stream,
            )
        };
        nccl.checked("ncclAllReduce", rc, comm)
    }
}

/// A NULL communicator is an invalid argument (checked before calling NCCL).
fn check_comm(func: &str, comm: CommPtr) -> Result<()> {
    if comm.is_null() {
        Err(invalid!("{func}: the communicator is NULL"))
    } else {
        Ok(())
    }
}

/// A fake NCCL for the coordinator's tests: every communicator has one rank on device 0 and
/// no error; collectives are refused.
#[cfg(test)]
pub(crate) fn fake_one_rank() -> &'static Nccl {
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
    FAKE.get_or_init(|| Nccl {
        all_gather: refuse,
        comm_count: one,
        comm_user_rank: zero,
        comm_cu_device: zero,
        comm_get_async_error: zero,
        get_error_string: text,
        get_last_error: None,
        harness: None,
        version: 22803,
        origin: "fake".into(),
        library_path: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicI32, Ordering};
    use std::time::Duration;

    // ---- resolution, against the real dynamic linker (no NCCL needed) ----

    #[test]
    fn sources_are_the_four_steps_in_order() {
        let s = sources(Some("/x/libnccl.so.2".into()));
        assert_eq!(s[0], Source::ProcessSymbols);
        assert_eq!(s[1], Source::AlreadyLoaded);
        assert_eq!(s[2], Source::EnvPath(Some("/x/libnccl.so.2".into())));
        assert_eq!(s[3], Source::Dlopen);
        assert_eq!(sources(Some("".into()))[2], Source::EnvPath(None));
        assert_eq!(sources(None)[2], Source::EnvPath(None));
    }

    #[test]
    fn bad_env_path_names_all_four_steps_and_the_path() {
        // Holds on machines with NCCL installed too: a test process has not loaded NCCL, and
        // a set DPCOORD_NCCL_LIBRARY keeps step 4 from loading it.
        let bad = "/nonexistent/dpcoord-test/libnccl.so.2";
        let Err(Error {
            kind: ErrorKind::LibraryUnavailable,
            message: msg,
        }) = resolve(&sources(Some(bad.into())))
        else {
            panic!("expected LibraryUnavailable");
        };
        for needle in [
            "(1) process symbols: dlsym(RTLD_DEFAULT, \"ncclAllGather\"): ",
            "(2) already-loaded libnccl.so.2: not loaded",
            &format!("(3) DPCOORD_NCCL_LIBRARY={bad}: dlopen failed: {bad}: cannot open"),
            "(4) dlopen(libnccl.so.2): not tried: DPCOORD_NCCL_LIBRARY is set",
            "fix: link NCCL into the process",
            "or set DPCOORD_NCCL_LIBRARY",
        ] {
            assert!(msg.contains(needle), "missing {needle:?} in {msg}");
        }
    }

    #[test]
    fn unset_env_is_reported_as_not_set() {
        let Err(Error {
            kind: ErrorKind::LibraryUnavailable,
            message: msg,
        }) = resolve(&[Source::ProcessSymbols, Source::EnvPath(None)])
        else {
            panic!("expected LibraryUnavailable");
        };
        assert!(msg.contains("(2) DPCOORD_NCCL_LIBRARY: not set;"), "{msg}");
    }

    #[test]
    fn env_library_that_is_not_nccl_is_rejected_not_skipped() {
        let srcs = [Source::EnvPath(Some("libm.so.6".into())), Source::Dlopen];
        let Err(Error {
            kind: ErrorKind::LibraryUnavailable,
            message: msg,
        }) = resolve(&srcs)
        else {
            panic!("expected LibraryUnavailable");
        };
        assert!(
            msg.starts_with("DPCOORD_NCCL_LIBRARY=libm.so.6 is not a usable NCCL"),
            "{msg}"
        );
        assert!(
            msg.contains("required symbol ncclAllGather is missing"),
            "{msg}"
        );
        assert!(msg.contains("undefined symbol: ncclAllGather"), "{msg}");
    }

    #[test]
    fn format_not_found_lists_attempts_in_order() {
        let msg = format_not_found(&[
            Attempt {
                step: "a".into(),
                why: "no".into(),
            },
            Attempt {
                step: "b".into(),
                why: "nope".into(),
            },
        ]);
        assert!(
            msg.starts_with("NCCL not found; tried: (1) a: no; (2) b: nope; fix: "),
            "{msg}"
        );
    }

    #[test]
    fn nccl_is_found_or_unavailable() {
        // Never mutates the environment; whichever way this machine is set up.
        match nccl() {
            Ok(n) => assert!(n.version() > 0 && !n.origin().is_empty()),
            Err(Error {
                kind: ErrorKind::LibraryUnavailable,
                ..
            }) => {}
            Err(e) => panic!("unexpected {e}"),
        }
    }

    #[test]
    fn version_string_reads_both_encodings() {
        assert_eq!(version_string(22803), "2.28.3");
        assert_eq!(version_string(2708), "2.7.8");
    }

    /// With a real NCCL at `DPCOORD_TEST_NCCL_LIBRARY`, resolve it and read a real error.
    #[test]
    #[ignore = "needs a real NCCL: set DPCOORD_TEST_NCCL_LIBRARY=<libnccl.so.2> and pass --include-ignored (scripts/test.sh does)"]
    fn real_nccl_when_given() {
        let path = std::env::var_os("DPCOORD_TEST_NCCL_LIBRARY")
            .expect("DPCOORD_TEST_NCCL_LIBRARY names a real libnccl.so.2");
        let n = resolve(&[Source::EnvPath(Some(path))]).expect("resolve");
        assert!(n.version() >= 20000, "{}", n.version());
        assert!(n.get_last_error.is_some());
        let mut out = 0;
        // SAFETY: ncclCommCount with a NULL comm is an argument error NCCL reports.
        let rc = unsafe { (n.comm_count)(std::ptr::null_mut(), &mut out) };
        assert_ne!(rc, NCCL_SUCCESS);
        let e = n.failure("ncclCommCount", rc, std::ptr::null_mut());
        eprintln!(
            "origin: {} ({:?}); real error: {e}",
            n.origin(),
            n.library_path()
        );
        assert!(e.to_string().contains("ncclCommCount failed: "), "{e}");
    }

    // ---- wrappers, against a fake NCCL made of Rust functions ----

    /// A fake communicator: the async state answered for the next `polls` queries, then 0.
    struct FakeComm {
        state: AtomicI32,
        polls: AtomicI32,
    }

    fn fake_comm(state: i32, polls: i32) -> FakeComm {
        FakeComm {
            state: AtomicI32::new(state),
            polls: AtomicI32::new(polls),
        }
    }

    fn ptr(c: &FakeComm) -> CommHandle {
        CommHandle(c as *const FakeComm as CommPtr)
    }

    fn no_stream() -> StreamHandle {
        // SAFETY: NULL is the legacy default stream handle; the fake NCCL never uses it.
        unsafe { StreamHandle::from_raw(std::ptr::null_mut()) }
    }

    unsafe extern "C" fn fake_all_gather(
        _s: *const c_void,
        _r: *mut c_void,
        count: usize,
        dtype: c_int,
        _c: CommPtr,
        _st: StreamPtr,
    ) -> c_int {
        match (count, dtype) {
            (5, NCCL_INT32) => 0,
            (7, _) => NCCL_IN_PROGRESS,
            _ => 4,
        }
    }
    unsafe extern "C" fn fake_count(_c: CommPtr, out: *mut c_int) -> c_int {
        // SAFETY: out is the wrapper's valid out pointer.
        unsafe { *out = 4 };
        0
    }
    unsafe extern "C" fn fake_rank_fails(_c: CommPtr, _out: *mut c_int) -> c_int {
        5
    }
    unsafe extern "C" fn fake_async(c: CommPtr, out: *mut c_int) -> c_int {
        // SAFETY: tests pass a live FakeComm.
        let c = unsafe { &*(c as *const FakeComm) };
        let left = c.polls.fetch_sub(1, Ordering::SeqCst);
        let v = if left > 0 {
            c.state.load(Ordering::SeqCst)
        } else {
            0
        };
        // SAFETY: out is the wrapper's valid out pointer.
        unsafe { *out = v };
        0
    }
    unsafe extern "C" fn fake_error_string(code: c_int) -> *const c_char {
        match code {
            4 => c"invalid argument".as_ptr(),
            5 => c"invalid usage".as_ptr(),
            6 => c"remote process exited or there was a network error".as_ptr(),
            _ => c"unknown result code".as_ptr(),
        }
    }
    unsafe extern "C" fn fake_last_error(_c: CommPtr) -> *const c_char {
        c"peer 3 went away\n".as_ptr()
    }
    unsafe extern "C" fn fake_last_error_empty(_c: CommPtr) -> *const c_char {
        c"".as_ptr()
    }

    fn fake(last: Option<LastErrorFn>) -> Nccl {
        Nccl {
            all_gather: fake_all_gather,
            comm_count: fake_count,
            comm_user_rank: fake_rank_fails,
            comm_cu_device: fake_count,
            comm_get_async_error: fake_async,
            get_error_string: fake_error_string,
            get_last_error: last,
            harness: None,
            version: 22803,
            origin: "fake".into(),
            library_path: None,
        }
    }

    #[test]
    fn queries_return_values() {
        let n = fake(Some(fake_last_error));
        let c = fake_comm(0, 0);
        assert_eq!(n.comm_count(ptr(&c)), Ok(4));
        assert_eq!(n.comm_cu_device(ptr(&c)), Ok(4));
        assert_eq!(n.version(), 22803);
        assert_eq!(n.origin(), "fake");
    }

    #[test]
    fn failure_names_function_text_code_and_last_error() {
        let n = fake(Some(fake_last_error));
        let c = fake_comm(0, 0);
        assert_eq!(
            n.comm_user_rank(ptr(&c)),
            Err(Error::new(
                ErrorKind::Nccl,
                "ncclCommUserRank failed: invalid usage (ncclResult_t 5, NCCL 2.28.3); \
                 ncclGetLastError: peer 3 went away"
            ))
        );
    }

    #[test]
    fn empty_or_missing_last_error_is_left_out() {
        let c = fake_comm(0, 0);
        let want = Err(Error::new(
            ErrorKind::Nccl,
            "ncclCommUserRank failed: invalid usage (ncclResult_t 5, NCCL 2.28.3)",
        ));
        assert_eq!(fake(None).comm_user_rank(ptr(&c)), want);
        assert_eq!(
            fake(Some(fake_last_error_empty)).comm_user_rank(ptr(&c)),
            want
        );
    }

    #[test]
    fn null_comm_is_invalid_argument() {
        let n = fake(None);
        let null = CommHandle(std::ptr::null_mut());
        assert!(
            matches!(n.comm_count(null), Err(Error { kind: ErrorKind::InvalidArgument, message: m }) if m.contains("ncclCommCount"))
        );
        assert!(matches!(
            n.check_async_error(null),
            Err(Error {
                kind: ErrorKind::InvalidArgument,
                ..
            })
        ));
        assert!(matches!(
            n.all_gather_i32(1, 2, 5, null, no_stream()),
            Err(Error {
                kind: ErrorKind::InvalidArgument,
                ..
            })
        ));
    }

    #[test]
    fn async_error_healthy_states_and_failure() {
        let n = fake(None);
        assert_eq!(n.check_async_error(ptr(&fake_comm(0, 1))), Ok(()));
        assert_eq!(
            n.check_async_error(ptr(&fake_comm(NCCL_IN_PROGRESS, 1))),
            Ok(())
        );
        let Err(Error {
            kind: ErrorKind::Nccl,
            message: m,
        }) = n.check_async_error(ptr(&fake_comm(6, 1)))
        else {
            panic!("expected Nccl error");
        };
        assert!(m.starts_with("ncclCommGetAsyncError reports the communicator failed: remote"));
        assert!(m.contains("(ncclResult_t 6, NCCL 2.28.3)"), "{m}");
        let Err(Error {
            kind: ErrorKind::Nccl,
            message: m,
        }) = n.check_async_error(ptr(&fake_comm(42, 1)))
        else {
            panic!("expected Nccl error");
        };
        assert!(m.contains("unknown result code (ncclResult_t 42"), "{m}");
    }

    #[test]
    fn all_gather_success_failure_and_null_buffers() {
        let n = fake(None);
        let c = fake_comm(0, 0);
        let null = no_stream();
        assert_eq!(n.all_gather_i32(0x1000, 0x2000, 5, ptr(&c), null), Ok(()));
        let Err(Error {
            kind: ErrorKind::Nccl,
            message: m,
        }) = n.all_gather_i32(0x1000, 0x2000, 3, ptr(&c), null)
        else {
            panic!("expected Nccl error");
        };
        assert!(
            m.starts_with("ncclAllGather failed: invalid argument (ncclResult_t 4"),
            "{m}"
        );
        assert!(matches!(
            n.all_gather_i32(0, 0x2000, 5, ptr(&c), null),
            Err(Error {
                kind: ErrorKind::InvalidArgument,
                ..
            })
        ));
    }

    #[test]
    fn all_gather_in_progress_waits_until_enqueued() {
        let n = fake(None);
        let c = fake_comm(NCCL_IN_PROGRESS, 3);
        assert_eq!(
            n.all_gather_i32(0x1000, 0x2000, 7, ptr(&c), no_stream()),
            Ok(())
        );
        assert!(
            c.polls.load(Ordering::SeqCst) < 0,
            "polled past the in-progress answers"
        );
    }

    #[test]
    fn all_gather_in_progress_reports_async_failure_and_deadline() {
        let n = fake(None);
        let null = no_stream();
        let c = fake_comm(6, 1);
        assert!(matches!(
            n.all_gather_i32(1, 2, 7, ptr(&c), null),
            Err(Error {
                kind: ErrorKind::Nccl,
                ..
            })
        ));
        let c = fake_comm(NCCL_IN_PROGRESS, i32::MAX);
        let deadline = Some(Instant::now() + Duration::from_millis(5));
        assert!(matches!(
            n.all_gather_i32_until(1, 2, 7, ptr(&c), null, deadline),
            Err(Error { kind: ErrorKind::Timeout, message: m }) if m.contains("ncclAllGather")
        ));
    }
}
