//! The host shared-memory group: the ranks of one host, no GPU, no MPI.

use std::ffi::{c_char, CStr};
use std::sync::{Mutex, TryLockError};

use super::{
    boundary, check_ptr, check_result, dp_batch_request, dp_batch_result, dp_status, read_request,
    write_out, write_result,
};
use crate::diag;
use crate::error::{Error, ErrorKind, Result};
use crate::host_group::HostGroup;

/// Opaque handle of one rank's membership in a host group (`dp_host_group_open`).
pub struct dp_host_group {
    _opaque: [u8; 0],
}

/// What a `dp_host_group*` points at: the group behind a lock that turns a second thread's
/// concurrent call into `DP_ERR_BUSY`.
type Handle = Mutex<HostGroup>;

/// The handle behind `g`, locked, or an error naming what is wrong.
fn with_group<T>(
    g: *mut dp_host_group,
    body: impl FnOnce(&mut HostGroup) -> Result<T>,
) -> Result<T> {
    check_ptr(g.cast_const().cast::<Handle>(), "g")?;
    // SAFETY: a non-NULL, aligned `g` came from `dp_host_group_open` and the caller promises
    // it was not closed yet; the handle is only read through the lock.
    let handle = unsafe { &*g.cast_const().cast::<Handle>() };
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
/// a segment owned by another user, with another mode, dp_size or layout version, truncated
/// or corrupt; the rank already held by a live process), `DP_ERR_TIMEOUT` (not every rank
/// joined in time), `DP_ERR_PEER_EXITED` (a rank that joined exited or closed before every
/// rank joined) or `DP_ERR_INTERNAL` (an OS call failed; the message has its error).
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
        let handle: Box<Handle> = Box::new(Mutex::new(group));
        write_out(out, Box::into_raw(handle).cast::<dp_host_group>());
        Ok(())
    })
}

/// One step: every rank of the group calls it with its own request and all get the same
/// decision, exactly as from `dp_coordinate_batch` (the host array, no device array): the
/// same validation, the same decision from the same records, step ids checked. Collective
/// over the group's ranks, each call matching the same call on every other rank.
///
/// Publishes this rank's record in its slot, spins briefly, then sleeps on a futex until
/// every rank's record of this step is there, bounded by `req->timeout_ms` (0: forever); a
/// rank that exited or closed is reported within 100 ms either way. `*res` is written only
/// on success; `res->num_tokens_after_padding` is owned by the group and valid until the next
/// call on `g` or its close. No allocation.
///
/// An invalid request fails on every rank of that step with `DP_ERR_INVALID_ARGUMENT` (the
/// invalid rank's message says why, the others' name the rank), and differing pad flags,
/// pad policies, num_ubatches or step ids fail on every rank with
/// `DP_ERR_INCONSISTENT_RANKS`; the step still completed, so the group stays usable. After
/// `DP_ERR_TIMEOUT`, `DP_ERR_PEER_EXITED` or a corrupt segment (`DP_ERR_INTERNAL`) every rank
/// fails fast, every later call fails with the first failure, and the group must be closed.
///
/// One thread at a time per handle: a concurrent call on the same handle returns
/// `DP_ERR_BUSY`. Returns `DP_OK`, `DP_ERR_INVALID_ARGUMENT`, `DP_ERR_INCONSISTENT_RANKS`,
/// `DP_ERR_TIMEOUT`, `DP_ERR_PEER_EXITED` (naming the rank), `DP_ERR_BUSY` or
/// `DP_ERR_INTERNAL`.
#[no_mangle]
pub extern "C" fn dp_host_group_coordinate(
    g: *mut dp_host_group,
    req: *const dp_batch_request,
    res: *mut dp_batch_result,
) -> dp_status {
    boundary(|| {
        with_group(g, |group| {
            // A request or result this rank cannot use is still published (as an invalid
            // marker), so that every rank fails this step together.
            let request = read_request(req);
            let step_id = request.as_ref().map_or(0, |r| r.step_id);
            let _range = diag::range(c"dp_host_group_coordinate", group.dp_rank() as i32, step_id);
            let res_size = check_result(res);
            let usable = match (&request, &res_size) {
                (Ok(r), Ok(_)) => Ok(r),
                (Err(e), _) | (_, Err(e)) => Err(e.clone()),
            };
            let step = group.coordinate(usable)?;
            let dp_rank = group.dp_rank() as i32;
            let dp_size = group.dp_size() as i32;
            let mut filled =
                dp_batch_result::from_decision(&step.decision, dp_rank, dp_size, step.step_id);
            if step.decision.has_num_tokens_after_padding {
                filled.has_num_tokens_after_padding = true;
                filled.num_tokens_after_padding = group.tokens().as_ptr();
            }
            write_result(res, res_size?, &filled);
            Ok(())
        })
    })
}

/// Leaves the group and frees the handle: marks this rank closed (a peer waiting on it gets
/// `DP_ERR_PEER_EXITED`), and unlinks the segment when it is the last rank out. Local; it
/// always frees, after any status of earlier calls, and never waits longer than 200 ms.
/// Arrays from earlier results become invalid.
///
/// Must not run while another thread is inside a call on `g` (then it returns
/// `DP_ERR_BUSY` and frees nothing). Returns `DP_OK`, `DP_ERR_INVALID_ARGUMENT` (NULL or
/// misaligned `g`) or `DP_ERR_BUSY`.
#[no_mangle]
pub extern "C" fn dp_host_group_close(g: *mut dp_host_group) -> dp_status {
    boundary(|| {
        with_group(g, |_| Ok(()))?;
        // SAFETY: `g` came from `Box::into_raw` in `dp_host_group_open` (checked non-NULL and
        // aligned above; not busy) and the caller promises it is not used again.
        let handle = unsafe { Box::from_raw(g.cast::<Handle>()) };
        drop(handle);
        Ok(())
    })
}
