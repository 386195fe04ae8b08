//! The GPU path: the collective on the caller's NCCL communicator and CUDA stream.

use super::{
    boundary, check_ptr, check_result, dp_batch_request, dp_batch_result, dp_status, ncclComm,
    read_request, write_result, CUstream_st,
};
use crate::coordinator;

/// The collective: every rank of `comm` calls it with its own request, and all get the
/// same decision in `*res` (written only on success).
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
/// `res->num_tokens_after_padding` (host) and `num_tokens_after_padding_device` are
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
    res: *mut dp_batch_result,
) -> dp_status {
    boundary(|| {
        check_ptr(comm.cast_const(), "comm")?;
        let request = read_request(req)?;
        let res_size = check_result(res)?;
        let o = coordinator::coordinate(comm.cast(), stream.cast(), &request, false)?;
        let mut filled =
            dp_batch_result::from_decision(&o.decision, o.dp_rank, o.dp_size, request.step_id);
        if o.decision.has_num_tokens_after_padding {
            filled.has_num_tokens_after_padding = true;
            filled.num_tokens_after_padding = o.host_array;
            filled.num_tokens_after_padding_device = o.device_array as *const i32;
        }
        write_result(res, res_size, &filled);
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
        check_ptr(comm.cast_const(), "comm")?;
        coordinator::release(comm.cast())
    })
}
