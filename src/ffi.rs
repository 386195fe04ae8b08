//! The C ABI: every `extern "C"` function of `include/dpcoord.h`.
//!
//! Conventions, for every function here: pointers are checked before use; a `struct_size`
//! smaller than the first version of its struct is refused; outputs are written only on
//! success; a panic never crosses the boundary (it becomes `DP_ERR_INTERNAL`); every failure
//! leaves a thread-local message for `dp_last_error`.

#![allow(non_camel_case_types)]
// The exported functions take raw pointers from C by design; each dereference is checked
// for NULL first and carries a SAFETY note stating the C caller's promise.
#![allow(clippy::not_unsafe_ptr_arg_deref)]

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::engine;
use crate::error::{invalid, Error, Result};
use crate::plan::{self, RankRecord, Request, UbatchConfig};

/// Major version of this header and library (the SONAME carries it).
pub const DPCOORD_VERSION_MAJOR: u32 = 0;
/// Minor version: grows when functions or struct fields are added.
pub const DPCOORD_VERSION_MINOR: u32 = 1;
/// Patch version.
pub const DPCOORD_VERSION_PATCH: u32 = 0;

/// `pad_policy`: pad iff every rank set `allow_dp_padding` (vLLM's rule).
pub const DP_PAD_POLICY_EXPLICIT: i32 = 0;
/// `pad_policy`: pad iff the synced CUDA-graph mode is not NONE (newer vLLM).
pub const DP_PAD_POLICY_WHEN_CUDAGRAPH: i32 = 1;
/// `cudagraph_mode`: no CUDA graph.
pub const DP_CUDAGRAPH_NONE: i32 = 0;
/// `cudagraph_mode`: piecewise CUDA graphs.
pub const DP_CUDAGRAPH_PIECEWISE: i32 = 1;
/// `cudagraph_mode`: full CUDA graphs.
pub const DP_CUDAGRAPH_FULL: i32 = 2;

/// Opaque NCCL communicator: `ncclComm_t` is `struct ncclComm*`.
pub struct ncclComm {
    _opaque: [u8; 0],
}

/// Opaque CUDA stream: `cudaStream_t` (and `CUstream`) is `struct CUstream_st*`.
pub struct CUstream_st {
    _opaque: [u8; 0],
}

/// Status of every dpcoord call. Numbered explicitly; a number never changes meaning.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum dp_status {
    /// Success.
    DP_OK = 0,
    /// An argument is NULL, out of range, or a `struct_size` is too small; see `dp_last_error`.
    DP_ERR_INVALID_ARGUMENT = 1,
    /// Ranks passed records that cannot be combined (EXPLICIT pad flags differ); every rank gets it.
    DP_ERR_INCONSISTENT_RANKS = 2,
    /// A CUDA driver call failed.
    DP_ERR_CUDA = 3,
    /// An NCCL call failed or the communicator holds an asynchronous error.
    DP_ERR_NCCL = 4,
    /// The exchange did not finish within `timeout_ms`; the communicator must be aborted.
    DP_ERR_TIMEOUT = 5,
    /// The CUDA driver or NCCL could not be loaded, or lacks a needed function.
    DP_ERR_LIBRARY_UNAVAILABLE = 6,
    /// Another thread is inside a call on the same communicator.
    DP_ERR_BUSY = 7,
    /// A bug in dpcoord (for instance a caught panic); the message says what happened.
    DP_ERR_INTERNAL = 8,
}

impl From<&Error> for dp_status {
    fn from(e: &Error) -> Self {
        match e {
            Error::InvalidArgument(_) => dp_status::DP_ERR_INVALID_ARGUMENT,
            Error::InconsistentRanks(_) => dp_status::DP_ERR_INCONSISTENT_RANKS,
            Error::Cuda(_) => dp_status::DP_ERR_CUDA,
            Error::Nccl(_) => dp_status::DP_ERR_NCCL,
            Error::Timeout(_) => dp_status::DP_ERR_TIMEOUT,
            Error::LibraryUnavailable(_) => dp_status::DP_ERR_LIBRARY_UNAVAILABLE,
            Error::Busy(_) => dp_status::DP_ERR_BUSY,
            Error::Internal(_) => dp_status::DP_ERR_INTERNAL,
        }
    }
}

/// A status code as it crosses from C: read as an integer, since C may pass any value.
pub type dp_status_code = u32;

/// Microbatching configuration (vLLM's `enable_dbo` and thresholds).
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dp_ubatch_config {
    /// Microbatching is configured; when false the other fields are ignored.
    pub enabled: bool,
    /// Microbatches per step; >= 2 when enabled (default 2).
    pub num_ubatches: i32,
    /// Minimum tokens of a uniform-decode batch to attempt microbatching; >= 0 (default 32).
    pub decode_token_threshold: i32,
    /// Minimum tokens of a batch with prefill to attempt microbatching; >= 0 (default 512).
    pub prefill_token_threshold: i32,
}

/// One rank's request for this step. Initialise with `dp_batch_request_init`, then set fields.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dp_batch_request {
    /// `sizeof(dp_batch_request)` as the caller compiled it; lets the struct grow.
    pub struct_size: u32,
    /// Tokens this rank schedules this step; >= 0.
    pub num_tokens_unpadded: i32,
    /// Tokens incl. non-DP padding (CUDA-graph bucket, TP); -1 = same as unpadded; else >= unpadded.
    pub num_tokens_padded: i32,
    /// The caller wants microbatching considered.
    pub allow_microbatching: bool,
    /// The caller wants every rank padded to the same count (EXPLICIT pad policy).
    pub allow_dp_padding: bool,
    /// 1 = only single-token decodes, 0 = contains prefill, -1 = unknown (only without microbatching).
    pub uniform_decode: i32,
    /// 0 NONE, 1 PIECEWISE, 2 FULL.
    pub cudagraph_mode: i32,
    /// 0 EXPLICIT, 1 WHEN_CUDAGRAPH; every rank must pass the same value.
    pub pad_policy: i32,
    /// Microbatching configuration; every rank must pass the same value.
    pub ubatch: dp_ubatch_config,
    /// 0 = wait forever; > 0 = the blocking call returns `DP_ERR_TIMEOUT` after this many ms.
    pub timeout_ms: i32,
}

/// The smallest `struct_size` accepted: the first published version of `dp_batch_request`.
const REQUEST_V1_SIZE: usize = std::mem::size_of::<dp_batch_request>();

/// The decision every rank shares for this step.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dp_batch_result {
    /// Every rank splits this step into microbatches.
    pub should_ubatch: bool,
    /// Every rank is padded to `max_num_tokens_padded`.
    pub should_dp_pad: bool,
    /// `num_tokens_after_padding` holds `dp_size` entries (false when dp_size == 1 or no array).
    pub has_num_tokens_after_padding: bool,
    /// The minimum CUDA-graph mode across ranks: the mode every rank uses.
    pub synced_cudagraph_mode: i32,
    /// This rank.
    pub dp_rank: i32,
    /// Number of ranks.
    pub dp_size: i32,
    /// This rank's tokens after padding (own padded count when dp_size == 1).
    pub num_tokens_after_padding_self: i32,
    /// Maximum padded token count across ranks.
    pub max_num_tokens_padded: i32,
    /// Minimum unpadded token count across ranks.
    pub min_num_tokens_unpadded: i32,
    /// Host array of `dp_size` tokens-after-padding, or NULL (see `has_num_tokens_after_padding`).
    pub num_tokens_after_padding: *const i32,
    /// Device array of `dp_size` entries written in stream order; NULL from `dp_decide_batch`.
    pub num_tokens_after_padding_device: *const i32,
}

impl dp_batch_result {
    fn from_decision(d: &plan::Decision, dp_rank: i32, dp_size: i32) -> Self {
        Self {
            should_ubatch: d.should_ubatch,
            should_dp_pad: d.should_dp_pad,
            has_num_tokens_after_padding: false,
            synced_cudagraph_mode: d.synced_cudagraph_mode,
            dp_rank,
            dp_size,
            num_tokens_after_padding_self: d.num_tokens_after_padding_self,
            max_num_tokens_padded: d.max_num_tokens_padded,
            min_num_tokens_unpadded: d.min_num_tokens_unpadded,
            num_tokens_after_padding: std::ptr::null(),
            num_tokens_after_padding_device: std::ptr::null(),
        }
    }
}

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
fn boundary(body: impl FnOnce() -> Result<()>) -> dp_status {
    let outcome = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|panic| {
        let what = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic with a non-string payload".to_string());
        Err(Error::Internal(format!(
            "panic caught at the C boundary: {what}"
        )))
    });
    match outcome {
        Ok(()) => dp_status::DP_OK,
        Err(e) => {
            set_last_error(&e.to_string());
            dp_status::from(&e)
        }
    }
}

/// Borrows a pointer argument, or fails naming it.
fn arg<'a, T>(ptr: *const T, name: &str) -> Result<&'a T> {
    // SAFETY: the C caller promises a non-NULL pointer argument points at a valid `T` for
    // the duration of the call (documented on every function); NULL is rejected here.
    unsafe { ptr.as_ref() }.ok_or_else(|| invalid!("{name} is NULL"))
}

/// Checks an output pointer without forming a reference to memory that may be uninitialised.
fn out_arg<T>(ptr: *mut T, name: &str) -> Result<()> {
    if ptr.is_null() {
        Err(invalid!("{name} is NULL"))
    } else {
        Ok(())
    }
}

/// Reads a `dp_batch_request`, checking `struct_size` first.
fn read_request(req: *const dp_batch_request) -> Result<Request> {
    let raw = arg(req, "req")?;
    if (raw.struct_size as usize) < REQUEST_V1_SIZE {
        return Err(invalid!(
            "req->struct_size = {} is smaller than sizeof(dp_batch_request) = {} of the first \
             version; call dp_batch_request_init first",
            raw.struct_size,
            REQUEST_V1_SIZE
        ));
    }
    Ok(Request {
        num_tokens_unpadded: raw.num_tokens_unpadded,
        num_tokens_padded: raw.num_tokens_padded,
        allow_microbatching: raw.allow_microbatching,
        allow_dp_padding: raw.allow_dp_padding,
        uniform_decode: raw.uniform_decode,
        cudagraph_mode: raw.cudagraph_mode,
        pad_policy: raw.pad_policy,
        ubatch: UbatchConfig {
            enabled: raw.ubatch.enabled,
            num_ubatches: raw.ubatch.num_ubatches,
            decode_token_threshold: raw.ubatch.decode_token_threshold,
            prefill_token_threshold: raw.ubatch.prefill_token_threshold,
        },
        timeout_ms: raw.timeout_ms,
    })
}

/// Writes `value` through an output pointer (checked non-NULL by `out_arg` first).
fn write_out<T>(out: *mut T, value: T) {
    // SAFETY: every caller checked `out` with `out_arg` first, and the C caller promises it
    // points at writable memory for one `T`.
    unsafe { out.write(value) }
}

/// Fills `*req` with the defaults: padded -1, no microbatching or DP padding, uniform_decode
/// -1, CUDA-graph NONE, pad policy EXPLICIT, ubatch {false, 2, 32, 512}, timeout 0 (forever),
/// and `struct_size = sizeof(dp_batch_request)`.
///
/// Local, thread-safe. A NULL `req` is ignored (and leaves a message for `dp_last_error`).
#[no_mangle]
pub extern "C" fn dp_batch_request_init(req: *mut dp_batch_request) {
    boundary(|| {
        out_arg(req, "req")?;
        let d = Request::default();
        write_out(
            req,
            dp_batch_request {
                struct_size: REQUEST_V1_SIZE as u32,
                num_tokens_unpadded: d.num_tokens_unpadded,
                num_tokens_padded: d.num_tokens_padded,
                allow_microbatching: d.allow_microbatching,
                allow_dp_padding: d.allow_dp_padding,
                uniform_decode: d.uniform_decode,
                cudagraph_mode: d.cudagraph_mode,
                pad_policy: d.pad_policy,
                ubatch: dp_ubatch_config {
                    enabled: d.ubatch.enabled,
                    num_ubatches: d.ubatch.num_ubatches,
                    decode_token_threshold: d.ubatch.decode_token_threshold,
                    prefill_token_threshold: d.ubatch.prefill_token_threshold,
                },
                timeout_ms: d.timeout_ms,
            },
        );
        Ok(())
    });
}

/// The local step: validates `*req` and writes this rank's wire record to `*out`.
///
/// Local (no communication), thread-safe, allocation-free on success. `*out` is written only
/// on success. Returns `DP_OK` or `DP_ERR_INVALID_ARGUMENT` (NULL pointer, small
/// `struct_size`, or a field out of range: the message names the field and value).
#[no_mangle]
pub extern "C" fn dp_make_record(req: *const dp_batch_request, out: *mut RankRecord) -> dp_status {
    boundary(|| {
        let request = read_request(req)?;
        out_arg(out, "out")?;
        write_out(out, plan::make_record(&request)?);
        Ok(())
    })
}

/// The decision from every rank's record (`records[r]` is rank r's, `dp_size` entries).
///
/// Local and deterministic: every rank passing the same records gets the same answer.
/// `num_tokens_after_padding` (nullable, `dp_size` entries, must not overlap `records`)
/// receives every rank's tokens after padding, and `result->num_tokens_after_padding` then
/// points at it; with NULL, only the scalars are filled and that pointer is NULL. For
/// dp_size == 1 no exchange is implied: no array is written and
/// `has_num_tokens_after_padding` is false. `result->num_tokens_after_padding_device` is
/// always NULL. Outputs are written only on success. Thread-safe, allocation-free.
/// Returns `DP_OK`, `DP_ERR_INVALID_ARGUMENT` (bad sizes, rank, policy, num_ubatches or
/// record field: the message names it) or `DP_ERR_INCONSISTENT_RANKS`.
#[no_mangle]
pub extern "C" fn dp_decide_batch(
    records: *const RankRecord,
    dp_size: i32,
    dp_rank: i32,
    pad_policy: i32,
    num_ubatches: i32,
    num_tokens_after_padding: *mut i32,
    result: *mut dp_batch_result,
) -> dp_status {
    boundary(|| {
        out_arg(result, "result")?;
        plan::check_decide_args(i64::from(dp_size), dp_rank, pad_policy, num_ubatches)?;
        arg(records, "records")?;
        let n = dp_size as usize;
        let records_bytes = n * std::mem::size_of::<RankRecord>();
        let out_bytes = n * std::mem::size_of::<i32>();
        let (r0, o0) = (records as usize, num_tokens_after_padding as usize);
        if !num_tokens_after_padding.is_null() && o0 < r0 + records_bytes && r0 < o0 + out_bytes {
            return Err(invalid!("num_tokens_after_padding overlaps records"));
        }
        // SAFETY: `records` is non-NULL and the caller promises `dp_size` (>= 1, checked)
        // readable records there for the duration of the call.
        let records = unsafe { std::slice::from_raw_parts(records, n) };
        let out = if num_tokens_after_padding.is_null() {
            None
        } else {
            // SAFETY: non-NULL, `dp_size` writable int32 promised by the caller, and checked
            // above not to overlap `records`, so the two slices never alias.
            Some(unsafe { std::slice::from_raw_parts_mut(num_tokens_after_padding, n) })
        };
        let has_array = out.is_some();
        let decision = plan::decide(records, dp_rank, pad_policy, num_ubatches, out)?;
        let mut filled = dp_batch_result::from_decision(&decision, dp_rank, dp_size);
        if has_array && decision.has_num_tokens_after_padding {
            filled.has_num_tokens_after_padding = true;
            filled.num_tokens_after_padding = num_tokens_after_padding;
        }
        write_out(result, filled);
        Ok(())
    })
}

/// The collective: every rank of `comm` calls it with its own request, and all get the
/// same decision in `*result` (written only on success).
///
/// Validates `*req` first (an invalid request fails before any communication), exchanges
/// one 20-byte record per rank with `ncclAllGather` on `stream`, post-processes on the GPU,
/// and blocks until the decision is on the host: one polled wait, bounded by
/// `req->timeout_ms` and watching `ncclCommGetAsyncError`. With dp_size == 1 it does no GPU
/// work and returns no arrays. `stream` may be NULL, `cudaStreamLegacy` or
/// `cudaStreamPerThread`; it must belong to the communicator's device and must not be
/// capturing a CUDA graph. Ordering: every rank must call it in the same order relative to
/// every other collective on `comm`; use a communicator reserved for coordination
/// (`ncclCommSplit` of the DP communicator) or the same stream as your other collectives.
///
/// `result->num_tokens_after_padding` (host) and `num_tokens_after_padding_device` are
/// library-owned, stable per communicator, valid until the next call on `comm` or
/// `dp_release(comm)`; the device array is written in stream order on `stream`.
/// Thread-safe across communicators; a concurrent call on the same communicator returns
/// `DP_ERR_BUSY`. The first call per communicator allocates; later calls do not.
/// Returns `DP_OK`, `DP_ERR_INVALID_ARGUMENT`, `DP_ERR_INCONSISTENT_RANKS`, `DP_ERR_CUDA`,
/// `DP_ERR_NCCL`, `DP_ERR_TIMEOUT` (then abort `comm` with `ncclCommAbort` on every rank
/// and call `dp_release`), `DP_ERR_LIBRARY_UNAVAILABLE` (no CUDA driver or NCCL found),
/// `DP_ERR_BUSY` or `DP_ERR_INTERNAL`.
#[no_mangle]
pub extern "C" fn dp_coordinate_batch(
    comm: *mut ncclComm,
    stream: *mut CUstream_st,
    req: *const dp_batch_request,
    result: *mut dp_batch_result,
) -> dp_status {
    boundary(|| {
        arg(comm, "comm")?;
        let request = read_request(req)?;
        out_arg(result, "result")?;
        let o = engine::coordinate(comm.cast(), stream.cast(), &request, false)?;
        let mut filled = dp_batch_result::from_decision(&o.decision, o.dp_rank, o.dp_size);
        if o.decision.has_num_tokens_after_padding {
            filled.has_num_tokens_after_padding = true;
            filled.num_tokens_after_padding = o.host_array;
            filled.num_tokens_after_padding_device = o.device_array as *const i32;
        }
        write_out(result, filled);
        Ok(())
    })
}

/// Frees everything dpcoord cached for `comm` (device and pinned buffers, module, event),
/// after waiting up to 10 s for its work in flight. Call it before `ncclCommDestroy`, or
/// after `ncclCommAbort` (it never calls NCCL, so an aborted communicator is fine). A
/// communicator dpcoord never saw is fine too (`DP_OK`). Arrays from earlier results become
/// invalid. Returns `DP_OK`, `DP_ERR_INVALID_ARGUMENT` (NULL), `DP_ERR_TIMEOUT` (work still
/// running after a timed-out call whose communicator was not aborted: the state is kept and
/// a later `dp_release` can retry), `DP_ERR_BUSY` never (it waits for a call in progress).
#[no_mangle]
pub extern "C" fn dp_release(comm: *mut ncclComm) -> dp_status {
    boundary(|| {
        arg(comm, "comm")?;
        engine::release(comm.cast())
    })
}

/// The name of a status code, e.g. "DP_ERR_TIMEOUT"; any other value gives
/// "DP_ERR_UNKNOWN". The string is static. Thread-safe; never fails.
#[no_mangle]
pub extern "C" fn dp_status_string(status: dp_status_code) -> *const c_char {
    let name: &'static CStr = match status {
        0 => c"DP_OK",
        1 => c"DP_ERR_INVALID_ARGUMENT",
        2 => c"DP_ERR_INCONSISTENT_RANKS",
        3 => c"DP_ERR_CUDA",
        4 => c"DP_ERR_NCCL",
        5 => c"DP_ERR_TIMEOUT",
        6 => c"DP_ERR_LIBRARY_UNAVAILABLE",
        7 => c"DP_ERR_BUSY",
        8 => c"DP_ERR_INTERNAL",
        _ => c"DP_ERR_UNKNOWN",
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

#[cfg(test)]
mod tests {
    use super::*;

    fn last_error() -> String {
        // SAFETY: dp_last_error returns a NUL-terminated thread-local string.
        unsafe { CStr::from_ptr(dp_last_error()) }
            .to_string_lossy()
            .into_owned()
    }

    #[test]
    fn a_panic_inside_the_boundary_becomes_internal_with_its_message() {
        let status = boundary(|| panic!("boom at the boundary"));
        assert_eq!(status, dp_status::DP_ERR_INTERNAL);
        assert!(
            last_error().contains("boom at the boundary"),
            "{}",
            last_error()
        );
        let formatted = boundary(|| panic!("formatted {}", 42));
        assert_eq!(formatted, dp_status::DP_ERR_INTERNAL);
        assert!(last_error().contains("formatted 42"), "{}", last_error());
    }

    #[test]
    fn every_error_maps_to_its_status() {
        let cases = [
            (
                Error::InvalidArgument("a".into()),
                dp_status::DP_ERR_INVALID_ARGUMENT,
            ),
            (
                Error::InconsistentRanks("b".into()),
                dp_status::DP_ERR_INCONSISTENT_RANKS,
            ),
            (Error::Cuda("c".into()), dp_status::DP_ERR_CUDA),
            (Error::Nccl("d".into()), dp_status::DP_ERR_NCCL),
            (Error::Timeout("e".into()), dp_status::DP_ERR_TIMEOUT),
            (
                Error::LibraryUnavailable("f".into()),
                dp_status::DP_ERR_LIBRARY_UNAVAILABLE,
            ),
            (Error::Busy("g".into()), dp_status::DP_ERR_BUSY),
            (Error::Internal("h".into()), dp_status::DP_ERR_INTERNAL),
        ];
        for (error, status) in cases {
            let text = error.to_string();
            assert_eq!(boundary(|| Err(error)), status);
            assert_eq!(last_error(), text);
        }
    }

    #[test]
    fn a_message_with_a_nul_byte_is_kept_readable() {
        boundary(|| Err(Error::Internal("before\0after".into())));
        assert!(last_error().contains("before\\0after"), "{}", last_error());
    }
}
