//! The GPU path: the explicit coordinator (`dp_coordinator_*`) on the caller's NCCL
//! communicator and CUDA stream, and the cached per-communicator form
//! (`dp_coordinate_batch`, `dp_cancel`, `dp_release`) on top of it.

use std::sync::Arc;

use super::{
    boundary, check_ptr, check_result, dp_batch_request, dp_batch_result, dp_graphs, dp_status,
    ncclComm, read_request_fields, write_out, write_result, CUstream_st, OwnedHandle,
};
use crate::coordinator::{self, Coordinator, Decided, Outcome};
use crate::cuda::StreamHandle;
use crate::error::Result;
use crate::nccl::CommHandle;
use crate::rules::GraphTable;

/// An explicit coordinator for one NCCL communicator: create it once per communicator (on
/// every rank), then `dp_coordinator_begin` / `dp_coordinator_end` once per step. Opaque;
/// owned by the caller until `dp_coordinator_destroy`.
pub struct dp_coordinator {
    _opaque: [u8; 0],
}

impl OwnedHandle for dp_coordinator {
    type Owned = Coordinator;
}

/// The typed handles of a C communicator and stream (checked: the comm is non-NULL).
fn comm_handle(comm: *mut ncclComm) -> Result<CommHandle> {
    check_ptr(comm.cast_const(), "comm")?;
    // SAFETY: the C caller promises a live communicator of the process's NCCL for as long as
    // it uses dpcoord with it (each function's documented contract).
    Ok(unsafe { CommHandle::from_raw(comm.cast()) })
}

fn stream_handle(stream: *mut CUstream_st) -> StreamHandle {
    // SAFETY: the C caller promises NULL, cudaStreamLegacy, cudaStreamPerThread or a live
    // stream of the communicator's device (each function's documented contract).
    unsafe { StreamHandle::from_raw(stream.cast()) }
}

/// The coordinator behind a C pointer (checked: non-NULL, aligned).
fn coordinator<'a>(c: *mut dp_coordinator) -> Result<&'a Coordinator> {
    dp_coordinator::borrow(c, "c")
}

/// The C result of a coordinated step (arrays set when there are any; the straggler report).
pub(crate) fn outcome_result(o: &Outcome) -> dp_batch_result {
    let mut r = match &o.decision {
        Decided::V1(d) => dp_batch_result::from_decision(d, o.dp_rank, o.dp_size, o.step_id),
        Decided::V2(a) => dp_batch_result::from_agreement(a, o.dp_rank, o.dp_size, o.step_id),
    };
    r.last_rank = o.last_rank;
    r.arrival_skew_ns = o.arrival_skew_ns;
    r.wait_ns = o.wait_ns;
    if o.decision.has_array() {
        r.has_num_tokens_after_padding = true;
        r.num_tokens_after_padding = o.host_array;
        r.num_tokens_after_padding_device = o.device_array as *const i32;
    }
    r
}

/// Writes an outcome into the caller's result (its `struct_size` bytes only).
fn fill_result(res: *mut dp_batch_result, res_size: usize, o: &Outcome) {
    write_result(res, res_size, &outcome_result(o));
}

/// Creates a coordinator for `comm` and writes it to `*out` (local, no collective: asks NCCL
/// for the communicator's size, rank and device, and for dp_size > 1 allocates the device and
/// mapped pinned buffers and loads the kernel on that device, so `begin` and `end` never
/// allocate).
///
/// `comm` must be a live communicator of the process's NCCL and stay live until the
/// coordinator is destroyed (or, after a failure, until it is aborted). The coordinator
/// belongs to the caller; nothing in dpcoord is keyed by the communicator's address.
/// Create, use and destroy coordinators on every rank together: each exchange carries the
/// coordinator's sequence number, and ranks whose coordinators are out of step get an error.
/// `DPCOORD_SEND_BUFFER=device` (read here) makes NCCL read the send slot from device memory
/// instead of mapped pinned host memory.
/// Returns `DP_OK`, `DP_ERR_INVALID_ARGUMENT` (NULL, a bad `DPCOORD_SEND_BUFFER`),
/// `DP_ERR_NCCL`, `DP_ERR_CUDA` (an allocation or the kernel's load failed),
/// `DP_ERR_LIBRARY_UNAVAILABLE` (no NCCL or CUDA driver found).
#[no_mangle]
pub extern "C" fn dp_coordinator_create(
    comm: *mut ncclComm,
    out: *mut *mut dp_coordinator,
) -> dp_status {
    boundary(|| {
        let comm = comm_handle(comm)?;
        check_ptr(out.cast_const(), "out")?;
        let coordinator = Coordinator::new(comm, false)?;
        write_out(out, dp_coordinator::into_raw(coordinator));
        Ok(())
    })
}

/// Sets the V2 graph table of `c` (`DP_RULES_VLLM_V2`; `NULL`: no table): every later
/// `dp_coordinator_begin` makes this rank's slot with it (its own dispatch, and the table's
/// hash, which every rank must share) and the post-processing kernel dispatches over it, as
/// `dp_decide_slots` does with `opts->graphs`. V1 requests do not read it.
///
/// Local (no collective); call it on every rank with the same table, before the first V2
/// step (ranks with different tables fail each step with `DP_ERR_INCONSISTENT_RANKS` naming
/// the graph table). Not thread-safe: from one thread at a time, and never while another
/// thread is inside a call on `c`. `c` keeps its own reference to the table: `g` may be
/// destroyed right after. Copies the table's dispatch index into device memory here
/// (allocates and may wait for the device, as `dp_coordinator_create` may; `begin` and `end`
/// never do), replacing the previous table's; on an error nothing changes.
/// Returns `DP_OK`, `DP_ERR_INVALID_ARGUMENT` (a NULL or misaligned `c`, a misaligned `g`),
/// `DP_ERR_BUSY` (an exchange is in flight: call it before `dp_coordinator_begin` or after
/// `dp_coordinator_end`; or another thread is inside a call on `c`), `DP_ERR_CUDA` (the device
/// copy failed), `DP_ERR_CANCELLED`, or the earlier failure of a broken coordinator.
#[no_mangle]
pub extern "C" fn dp_coordinator_set_graphs(
    c: *mut dp_coordinator,
    g: *const dp_graphs,
) -> dp_status {
    boundary(|| coordinator(c)?.set_graphs(graphs_of(g)?))
}

/// The table behind a nullable `dp_graphs` handle, shared (checked: aligned).
pub(crate) fn graphs_of(g: *const dp_graphs) -> Result<Option<Arc<GraphTable>>> {
    if g.is_null() {
        return Ok(None);
    }
    Ok(Some(Arc::clone(dp_graphs::borrow(g.cast_mut(), "g")?)))
}

/// Begins this step's exchange (collective: every rank of the communicator calls it, in the
/// same order relative to every other collective on that communicator) and returns at once.
///
/// Writes this rank's slot (`dp_slot`, as `dp_make_slot` makes it with the graph table of
/// `dp_coordinator_set_graphs`, with the coordinator's sequence number and this call's time
/// as the arrival time) into mapped pinned memory and enqueues on `stream`: `ncclAllGather` of
/// every rank's slot, then the post-processing kernel, which checks every slot and decides as
/// `dp_decide_slots` does (V1, or V2 over that table in device memory) and writes the decision
/// to the device array and to mapped host memory. The host does not wait for the GPU; the
/// caller may enqueue more work on `stream` and do host work before `dp_coordinator_end`. The first begin of a
/// coordinator runs NCCL's first collective on a helper thread and waits for it to be enqueued,
/// bounded by `req->timeout_ms` (NCCL connects lazily inside it); that collective runs on a
/// stream the coordinator owns, ordered after the work queued on `stream` and before the
/// kernel. `stream` may be NULL, `cudaStreamLegacy` or `cudaStreamPerThread`, meaning the
/// stream they mean on the thread that calls `begin` (`end`, `poll`, `cancel` and `destroy` may
/// run on other threads: they use an event recorded here, never the stream); it must stay alive
/// until `end`. With dp_size 1 no GPU work is done. The device array of the previous step stays
/// valid until this call. `begin` and `end` may run on different threads, never at once.
///
/// An invalid request (a field out of range or a bool byte other than 0/1) still joins the
/// exchange, as the invalid-request marker, so that no rank waits for it: `begin` returns
/// `DP_OK` and `end` returns `DP_ERR_INVALID_ARGUMENT` on every rank, naming the field on
/// this rank and this rank on the others; the coordinator stays usable. So does a `stream`
/// the coordinator cannot use (one of another device or context, or one capturing a CUDA
/// graph): the marker is exchanged on the coordinator's own stream, nothing is enqueued on
/// `stream`, and `end` names the stream's fault. Only what cannot be exchanged fails here at
/// once: NULL or misaligned pointers, a bad `struct_size`, a negative `timeout_ms` (the wait
/// would have no bound).
/// Returns `DP_OK`, `DP_ERR_INVALID_ARGUMENT`, `DP_ERR_BUSY` (an exchange is in flight, or
/// another thread is inside a call on `c`), `DP_ERR_CUDA`, `DP_ERR_NCCL`, `DP_ERR_TIMEOUT`
/// (first call only), `DP_ERR_CANCELLED`, `DP_ERR_LIBRARY_UNAVAILABLE`; after a failure once
/// enqueued, every later call fails with it.
#[no_mangle]
pub extern "C" fn dp_coordinator_begin(
    c: *mut dp_coordinator,
    stream: *mut CUstream_st,
    req: *const dp_batch_request,
) -> dp_status {
    boundary(|| {
        let c = coordinator(c)?;
        let read = read_request_fields(req)?;
        c.begin(stream_handle(stream), &read.request, read.invalid.as_ref())
    })
}

/// Writes to `*done` whether the exchange begun last has finished, or failed
/// (`dp_coordinator_end` then says how). Local; never blocks (a few loads and at most one
/// `ncclCommGetAsyncError`). Returns `DP_OK`, `DP_ERR_INVALID_ARGUMENT` (NULL, or no
/// exchange in flight), `DP_ERR_BUSY`, `DP_ERR_CANCELLED`, or the earlier failure.
#[no_mangle]
pub extern "C" fn dp_coordinator_poll(c: *mut dp_coordinator, done: *mut bool) -> dp_status {
    boundary(|| {
        let c = coordinator(c)?;
        check_ptr(done.cast_const(), "done")?;
        let finished = c.poll()?;
        write_out(done, finished);
        Ok(())
    })
}

/// Waits for the exchange begun last and writes its decision to `*res` (only on `DP_OK`).
///
/// The wait spins on a word the kernel writes last, bounded by the request's `timeout_ms`
/// counted from `dp_coordinator_begin` (plus at most 100 ms), ended early by
/// `dp_coordinator_cancel`, and watching `ncclCommGetAsyncError` and the stream. A result is
/// accepted only when the kernel verified every rank's slot (this exchange's sequence number;
/// then, as `dp_decide_slots`: its checksum, the invalid-request marker, the configuration
/// (rule set, pad policy, microbatching, graph table), the step ids and parent step ids) and
/// NCCL reports no error; the decision uses the configuration the slots carry. A V2 step
/// fills the V2 fields (`idle`, `eager`, `skip_drafts`, the descriptor `graph_*` and
/// `num_ubatches`, the agreed uniform count, query bound and largest request count) as
/// `dp_decide_slots` does; it has arrays (`has_num_tokens_after_padding`) unless idle, and
/// every rank's entry is its padded tokens, or its own tokens when eager.
/// `res->last_rank` and `arrival_skew_ns` report the rank that entered `begin` last and by
/// how much; `wait_ns` is how long this call waited for the exchange to finish (0 when it had).
/// `res->num_tokens_after_padding` (host) and `num_tokens_after_padding_device` are owned by
/// the coordinator and stay valid until the next `begin` on it or its destruction; the
/// device array is written in `stream` order.
/// Returns `DP_OK`, `DP_ERR_INVALID_ARGUMENT` (NULL, a bad `res->struct_size`, no exchange
/// in flight, or a rank's invalid request: every rank gets it), `DP_ERR_INCONSISTENT_RANKS`
/// (a setting, the step ids or the EXPLICIT pad flags differ across ranks, or ranks out of
/// step), `DP_ERR_CORRUPT` (a rank's slot arrived damaged: the coordinator is then unusable),
/// `DP_ERR_TIMEOUT`, `DP_ERR_NCCL`, `DP_ERR_CUDA`, `DP_ERR_CANCELLED`, `DP_ERR_BUSY`,
/// `DP_ERR_INTERNAL`. After `TIMEOUT`, `NCCL`, `CUDA`, `CORRUPT` or `CANCELLED`: abort the
/// communicator on every rank, then destroy the coordinator.
#[no_mangle]
pub extern "C" fn dp_coordinator_end(
    c: *mut dp_coordinator,
    res: *mut dp_batch_result,
) -> dp_status {
    boundary(|| {
        let c = coordinator(c)?;
        let res_size = check_result(res)?;
        let o = c.end()?;
        fill_result(res, res_size, &o);
        Ok(())
    })
}

/// Ends a wait on `c` from any thread (a watchdog): a waiting `dp_coordinator_end` (or the
/// first `begin`) returns `DP_ERR_CANCELLED`, and so does every later call on `c`.
///
/// Returns once no thread is inside dpcoord for `c` (each checks every 50 us): then
/// `ncclCommAbort` on the communicator is safe, after which `dp_coordinator_destroy`.
/// Returns `DP_OK`, `DP_ERR_INVALID_ARGUMENT` (NULL), or `DP_ERR_BUSY` when a thread is still
/// inside: a caller's thread inside a CUDA or NCCL call after 100 ms (call cancel again), or
/// dpcoord's helper thread inside NCCL's first collective, which only `ncclCommAbort` can free
/// (the message says which). Cancelling with nothing in flight is fine.
#[no_mangle]
pub extern "C" fn dp_coordinator_cancel(c: *mut dp_coordinator) -> dp_status {
    boundary(|| coordinator(c)?.cancel())
}

/// Destroys `c` (local; never waits and never calls NCCL, so it may follow `ncclCommAbort`).
///
/// Device and pinned memory that work still in flight may write (an exchange begun and not
/// ended, a timed-out or cancelled one) is freed only once that work has finished and, after
/// a first exchange that timed out or was cancelled, once NCCL let dpcoord's helper thread go
/// (`ncclCommAbort`); later `dp_coordinator_create` calls check. Arrays of earlier results
/// become invalid. NULL is fine. Returns `DP_OK`, `DP_ERR_INVALID_ARGUMENT`
/// (misaligned), `DP_ERR_BUSY` (another thread is inside a call on `c`: nothing is freed).
#[no_mangle]
pub extern "C" fn dp_coordinator_destroy(c: *mut dp_coordinator) -> dp_status {
    boundary(|| {
        if c.is_null() {
            return Ok(());
        }
        coordinator(c)?.destroy()?;
        // SAFETY: `c` came from dp_coordinator_create (the C caller's promise), was not
        // destroyed before, and no thread is inside a call on it (checked by destroy).
        unsafe { dp_coordinator::drop_raw(c) };
        Ok(())
    })
}

/// The collective in one call: `dp_coordinator_begin` + `dp_coordinator_end` on a
/// coordinator that dpcoord keeps per communicator (keyed by its address), created on the
/// first call once NCCL answered for `comm`.
///
/// Every rank of `comm` calls it with its own request, and all get the same decision in
/// `*res` (written only on success). Blocks until the decision is on the host: behind the
/// work already queued on `stream` (use the explicit coordinator, begin early and end late,
/// or a dedicated stream, to avoid the stall). `stream` as for `dp_coordinator_begin`.
/// Ordering: every rank must call it in the same order relative to every other collective on
/// `comm`; use a communicator reserved for coordination (`ncclCommSplit`). The arrays are
/// owned by the cache entry, valid until the next call on `comm` or `dp_release(comm)`. Call
/// `dp_release(comm)` before `ncclCommDestroy`/`ncclCommAbort`: a new communicator created at
/// the address of an unreleased one would inherit its state. Thread-safe across
/// communicators; a concurrent call on the same communicator returns `DP_ERR_BUSY`.
/// An invalid request joins as the invalid-request marker, as for `dp_coordinator_begin`:
/// every rank gets `DP_ERR_INVALID_ARGUMENT` from this call (when no coordinator can be made
/// for `comm`, the request's error comes back, saying it was not exchanged).
/// The cached coordinator has no graph table (no handle takes one): a V2 request is decided
/// without a table (every rank's own `cudagraph_mode`, the agreed inputs, `T*`; the caller
/// dispatches locally). For V2 with a table use the explicit coordinator and
/// `dp_coordinator_set_graphs`.
/// Returns what `dp_coordinator_begin` and `dp_coordinator_end` return.
#[no_mangle]
pub extern "C" fn dp_coordinate_batch(
    comm: *mut ncclComm,
    stream: *mut CUstream_st,
    req: *const dp_batch_request,
    res: *mut dp_batch_result,
) -> dp_status {
    boundary(|| {
        let comm = comm_handle(comm)?;
        let read = read_request_fields(req)?;
        let res_size = check_result(res)?;
        let o = coordinator::coordinate(
            comm,
            stream_handle(stream),
            &read.request,
            read.invalid.as_ref(),
        )?;
        fill_result(res, res_size, &o);
        Ok(())
    })
}

/// `dp_coordinator_cancel` for the coordinator `dp_coordinate_batch` keeps for `comm` (from
/// any thread; a communicator never used with dpcoord is fine). A `dp_coordinate_batch` on
/// `comm` is seen from its first line, also while it creates that coordinator: once this
/// returns `DP_OK`, no dpcoord thread calls NCCL on `comm` again. Then abort `comm` and call
/// `dp_release(comm)`. Never calls NCCL. Returns as `dp_coordinator_cancel`.
#[no_mangle]
pub extern "C" fn dp_cancel(comm: *mut ncclComm) -> dp_status {
    boundary(|| coordinator::cancel(comm_handle(comm)?))
}

/// Removes and destroys the coordinator `dp_coordinate_batch` keeps for `comm`, as
/// `dp_coordinator_destroy` does (never waits, never calls NCCL, so it may follow
/// `ncclCommAbort`). A communicator dpcoord never saw is fine. Arrays from earlier results
/// become invalid. Returns `DP_OK`, `DP_ERR_INVALID_ARGUMENT` (NULL), `DP_ERR_BUSY` (a
/// `dp_coordinate_batch` on `comm` is running on another thread: `dp_cancel` it first).
#[no_mangle]
pub extern "C" fn dp_release(comm: *mut ncclComm) -> dp_status {
    boundary(|| coordinator::release(comm_handle(comm)?))
}
