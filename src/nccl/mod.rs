//! The NCCL that owns the caller's communicator, found at run time and never loaded twice
//! (the search is in [`resolve`]), and the calls dpcoord makes on it.
//!
//! Every entry point is one field of [`Symbols`], a [`symbol_table!`](crate::dl::symbol_table)
//! resolved once from the library that was found. The bench-only communicator set-up lives in
//! `harness` (the `testing` feature), the unit tests' one-rank fake in `fake`.

use std::borrow::Cow;
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use crate::cuda::StreamHandle;
use crate::dl::symbol_table;
use crate::error::{invalid, Error, ErrorKind, Result};

#[cfg(test)]
pub(crate) mod fake;
#[cfg(feature = "testing")]
mod harness;
mod resolve;
#[cfg(test)]
mod tests;

#[cfg(feature = "testing")]
pub(crate) use harness::Harness;
#[cfg(feature = "testing")]
pub use harness::UniqueId;
pub use resolve::ENV_LIBRARY;
#[cfg(test)]
use resolve::{format_not_found, resolve, sources, Attempt, Source};

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

symbol_table! {
    /// NCCL's entry points that the library calls, with their nccl.h signatures (enums and
    /// `ncclResult_t` are `int`, handles are pointers, `size_t` is `usize`).
    #[derive(Debug)]
    pub(crate) struct Symbols {
        required all_gather: AllGatherFn = c"ncclAllGather";
        required comm_count: CommQueryFn = c"ncclCommCount";
        required comm_user_rank: CommQueryFn = c"ncclCommUserRank";
        required comm_cu_device: CommQueryFn = c"ncclCommCuDevice";
        /// `ncclCommGetAsyncError(comm, ncclResult_t*)`: `ncclResult_t*` is `int*`.
        required comm_get_async_error: CommQueryFn = c"ncclCommGetAsyncError";
        required get_error_string: ErrorStringFn = c"ncclGetErrorString";
        required get_version: VersionFn = c"ncclGetVersion";
        /// NCCL >= 2.13.
        optional get_last_error: LastErrorFn = c"ncclGetLastError";
    }
}

/// The resolved NCCL: its entry points, version and where it was found.
#[derive(Debug)]
pub struct Nccl {
    sym: Symbols,
    /// Communicator set-up for the benchmarks (`None` when this NCCL lacks it).
    #[cfg(feature = "testing")]
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
    let n = resolve::resolve(&resolve::sources(std::env::var_os(ENV_LIBRARY)))?;
    Ok(NCCL.get_or_init(|| n))
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
        self.query("ncclCommCount", self.sym.comm_count, comm.0)
    }

    /// `ncclCommUserRank`: this process's rank. `comm` must be a live ncclComm_t of this NCCL.
    pub fn comm_user_rank(&self, comm: CommHandle) -> Result<i32> {
        self.query("ncclCommUserRank", self.sym.comm_user_rank, comm.0)
    }

    /// `ncclCommCuDevice`: the CUDA device ordinal of the communicator. `comm` must be a live
    /// ncclComm_t of this NCCL.
    pub fn comm_cu_device(&self, comm: CommHandle) -> Result<i32> {
        self.query("ncclCommCuDevice", self.sym.comm_cu_device, comm.0)
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
    /// The buffers are device addresses (or the device alias of mapped pinned memory) that
    /// NCCL reads and writes in stream order; NCCL validates them. On a nonblocking
    /// communicator NCCL may answer `ncclInProgress`, meaning the collective is not yet
    /// enqueued on `stream`; this then polls `ncclCommGetAsyncError` until it is, giving up
    /// with `Error::Timeout` at `deadline` (`None`: no deadline).
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
            (self.sym.all_gather)(
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
            (self.sym.all_gather)(
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
        self.query("ncclCommGetAsyncError", self.sym.comm_get_async_error, comm)
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
        let text = unsafe { c_text((self.sym.get_error_string)(code)) };
        let text = text.unwrap_or(Cow::Borrowed("(no description)"));
        format!(
            "{text} (ncclResult_t {code}, NCCL {})",
            version_string(self.version)
        )
    }

    /// `ncclGetLastError(comm)`'s text formatted as a suffix, or "" when absent or empty.
    fn last_error_suffix(&self, comm: CommPtr) -> String {
        let Some(f) = self.sym.get_last_error else {
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

/// A NULL communicator is an invalid argument (checked before calling NCCL).
fn check_comm(func: &str, comm: CommPtr) -> Result<()> {
    if comm.is_null() {
        Err(invalid!("{func}: the communicator is NULL"))
    } else {
        Ok(())
    }
}
