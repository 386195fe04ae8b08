//! The host shared-memory group: the ranks of one host, no GPU, no MPI.

use std::ffi::{c_char, CStr};
use std::sync::{Mutex, TryLockError};

use super::graphs::shared_table;
use super::{
    boundary, check_ptr, check_result, dp_batch_request, dp_batch_result, dp_graphs, dp_status,
    read_request, write_out, write_result, OwnedHandle,
};
use crate::diag;
use crate::error::{Error, ErrorKind, Result};
use crate::host_group::{Decided, HostGroup};

/// Opaque handle of one rank's membership in a host group (`dp_host_group_open`).
pub struct dp_host_group {
    _opaque: [u8; 0],
}

/// The group behind a lock that turns a second thread's concurrent call into `DP_ERR_BUSY`.
impl OwnedHandle for dp_host_group {
    type Owned = Mutex<HostGroup>;
}

/// The group behind `g`, locked, or an error naming what is wrong.
fn with_group<T>(
    g: *mut dp_host_group,
    body: impl FnOnce(&mut HostGroup) -> Result<T>,
) -> Result<T> {
    let handle = dp_host_group::borrow(g, "g")?;
    let mut group = match handle.try_lock() {
        Ok(group) => group,
        // A panic inside a call was caught at the boundary; the group's own state says what
        // holds (a failed wait marks it unusable), so the lock is taken over.
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => {
            return Err(Error::new(
                ErrorKind::Busy,
                "another thread is inside a dp_host_group call on this group",
            ))
        }
    };
    body(&mut group)
}

/// Joins the host group `name` as rank `dp_rank` of `dp_size` and waits until every rank
/// joined: collective over the `dp_size` processes that open the same `name` on this host, in
/// any order. On `DP_OK`, `*out` receives the handle; on failure `*out` is left untouched.
///
/// `name` is 1-64 characters of `[A-Za-z0-9._-]`; the group lives in the POSIX shared-memory
/// segment `/dpcoord.<name>` (`/dev/shm/dpcoord.<name>`), created with mode 0600. `dp_size` is
/// 1..=1024, `dp_rank` 0..dp_size-1. `timeout_ms` bounds the wait for the other ranks
/// (0 waits forever, still failing within 100 ms when a joined rank exits or gives up) and is
/// the wait used by a later `dp_host_group_coordinate` whose request cannot be read. A
/// segment left by processes that are all gone is reclaimed; one still held by a finished
/// run's last process is waited for (bounded by `timeout_ms`).
///
/// Thread-safe; the handle is owned by the caller until `dp_host_group_close`.
/// Returns `DP_OK`, `DP_ERR_INVALID_ARGUMENT` (bad name, dp_size, dp_rank, timeout or `out`;
/// something other than a regular file at the segment path: a FIFO, a directory, a symbolic
/// link, a socket, a device; a segment owned by another user, with another mode, dp_size or
/// layout version, truncated or corrupt; a joined rank in another pid namespace than this
/// process; the rank already held by a live process), `DP_ERR_TIMEOUT` (not every rank joined
/// in time), `DP_ERR_PEER_EXITED` (a rank that joined exited or closed before every rank
/// joined) or `DP_ERR_INTERNAL` (an OS call failed; the message has its error).
#[no_mangle]
pub extern "C" fn dp_host_group_open(
    name: *const c_char,
    dp_size: i32,
    dp_rank: i32,
    timeout_ms: i32,
    out: *mut *mut dp_host_group,
) -> dp_status {
    boundary(|| {
        check_ptr(name, "name")?;
        check_ptr(out.cast_const(), "out")?;
        // SAFETY: `name` is non-NULL (checked) and the caller promises a NUL-terminated
        // string; only its bytes up to the NUL are read, and they are checked before use.
        let bytes = unsafe { CStr::from_ptr(name) }.to_bytes();
        let group = HostGroup::open(bytes, dp_size, dp_rank, timeout_ms)?;
        write_out(out, dp_host_group::into_raw(Mutex::new(group)));
        Ok(())
    })
}

/// Sets the graph table of the V2 rules this rank dispatches with, from its next
/// `dp_host_group_coordinate` on (`graphs` NULL: no table; V2 then agrees everything but the
/// graph). Local: set the same table on every rank before the same step (each slot carries the
/// table's hash; ranks with different tables fail that step with `DP_ERR_INCONSISTENT_RANKS`
/// naming the graph table). The group keeps its own reference to the table: `graphs` may be
/// destroyed right after. V1 steps read no table. Must not run while another thread is inside
/// a call on `g` (then it returns `DP_ERR_BUSY` and changes nothing). Returns `DP_OK`,
/// `DP_ERR_INVALID_ARGUMENT` (NULL or misaligned `g`, misaligned `graphs`) or `DP_ERR_BUSY`.
#[no_mangle]
pub extern "C" fn dp_host_group_set_graphs(
    g: *mut dp_host_group,
    graphs: *const dp_graphs,
) -> dp_status {
    boundary(|| {
        with_group(g, |group| {
            group.set_graphs(shared_table(graphs, "graphs")?);
            Ok(())
        })
    })
}

/// One step: every rank of the group calls it with its own request, and all get the decision
/// that `dp_decide_slots` gives on every rank's `dp_make_slot` of the same requests (the host
/// path): the rule set of `req->rules` (V1, or V2 with the table of
/// `dp_host_group_set_graphs`), the same validation, checks and decision, the host array and
/// no device array. Collective over the group's ranks, each call matching the same call on
/// every other rank.
///
/// Makes this rank's slot (the group's step number as its sequence number, this call's entry
/// as its arrival time, sealed with a checksum), publishes it in the group's shared segment,
/// spins briefly, then sleeps on a futex until every rank's slot of this step is there,
/// bounded by `req->timeout_ms` (0: forever); a rank that exited or closed is reported within
/// 100 ms either way. The slots are then copied out of the segment, and the checks and the
/// decision read only the copies. `*res` is written only on success, with the straggler
/// report: `last_rank`, `arrival_skew_ns` (exact: the ranks share one `CLOCK_MONOTONIC`) and
/// `wait_ns` (from this call's entry until every rank's slot was there; 0 when they all were
/// at the first look).
/// `res->num_tokens_after_padding` is owned by the group and valid until the next call on `g`
/// or its close. No allocation.
///
/// Failures of one step, on every rank alike; the group stays usable: an invalid request
/// (`DP_ERR_INVALID_ARGUMENT`: the invalid rank's message names the field, the others' the
/// rank), ranks with different settings (rule set, pad policy, microbatching and
/// `num_ubatches`, the V2 thresholds, graph table or decode query length:
/// `DP_ERR_INCONSISTENT_RANKS` naming the setting and two ranks), differing pad flags under
/// the EXPLICIT policy, step ids or parent step ids (`DP_ERR_INCONSISTENT_RANKS`).
/// Failures that end the group (every rank fails fast, every later call fails with the first
/// failure: close it and open a new group): `DP_ERR_CORRUPT` (a rank's slot was damaged in the
/// segment: a failed checksum or another step's sequence number, naming the rank; a rank that
/// copied the slot before the damage got `DP_OK` and the intact slots' decision),
/// `DP_ERR_TIMEOUT`, `DP_ERR_PEER_EXITED` (naming the rank), `DP_ERR_INTERNAL` (a corrupt
/// segment header or member entry).
///
/// In a process that inherited `g` across `fork` (not the one that opened it) it returns
/// `DP_ERR_INVALID_ARGUMENT` and exchanges nothing. One thread at a time per handle: a
/// concurrent call on the same handle returns `DP_ERR_BUSY`. Returns `DP_OK`,
/// `DP_ERR_INVALID_ARGUMENT`, `DP_ERR_INCONSISTENT_RANKS`, `DP_ERR_CORRUPT`,
/// `DP_ERR_TIMEOUT`, `DP_ERR_PEER_EXITED`, `DP_ERR_BUSY` or `DP_ERR_INTERNAL`.
#[no_mangle]
pub extern "C" fn dp_host_group_coordinate(
    g: *mut dp_host_group,
    req: *const dp_batch_request,
    res: *mut dp_batch_result,
) -> dp_status {
    boundary(|| {
        with_group(g, |group| {
            // A request or result this rank cannot use is still published (as the
            // invalid-request marker), so that every rank fails this step together.
            let request = read_request(req);
            let step_id = request.as_ref().map_or(0, |r| r.step_id);
            let _range = diag::range(c"dp_host_group_coordinate", group.dp_rank() as i32, step_id);
            let res_size = check_result(res);
            let usable = match (&request, &res_size) {
                (Ok(r), Ok(_)) => Ok(r),
                (Err(e), _) | (_, Err(e)) => Err(e.clone()),
            };
            let step = group.coordinate(usable)?;
            let (dp_rank, dp_size) = (group.dp_rank() as i32, group.dp_size() as i32);
            let (mut filled, has_array) = match &step.decided {
                Decided::V1(d) => (
                    dp_batch_result::from_decision(d, dp_rank, dp_size, step.step_id),
                    d.has_num_tokens_after_padding,
                ),
                Decided::V2(a) => (
                    dp_batch_result::from_agreement(a, dp_rank, dp_size, step.step_id),
                    a.has_array,
                ),
            };
            if has_array {
                filled.has_num_tokens_after_padding = true;
                filled.num_tokens_after_padding = group.tokens().as_ptr();
            }
            filled.last_rank = step.last_rank;
            filled.arrival_skew_ns = step.arrival_skew_ns;
            filled.wait_ns = step.wait_ns;
            write_result(res, res_size?, &filled);
            Ok(())
        })
    })
}

/// Leaves the group and frees the handle: marks this rank closed (a peer waiting on it gets
/// `DP_ERR_PEER_EXITED`), and unlinks the segment when it is the last rank out. In a process
/// that inherited `g` across `fork` (not the one that opened it) it only unmaps the segment
/// and frees the handle: the rank stays the opener's, and nothing in the segment changes.
/// Local; it always frees, after any status of earlier calls, and never waits longer than
/// 200 ms. Arrays from earlier results become invalid.
///
/// Must not run while another thread is inside a call on `g` (then it returns
/// `DP_ERR_BUSY` and frees nothing). Returns `DP_OK`, `DP_ERR_INVALID_ARGUMENT` (NULL or
/// misaligned `g`) or `DP_ERR_BUSY`.
#[no_mangle]
pub extern "C" fn dp_host_group_close(g: *mut dp_host_group) -> dp_status {
    boundary(|| {
        with_group(g, |_| Ok(()))?;
        // SAFETY: `g` came from `dp_host_group_open` (checked non-NULL and aligned above; not
        // busy) and the caller promises it is not used again.
        unsafe { dp_host_group::drop_raw(g) };
        Ok(())
    })
}
