//! The per-communicator cache of `dp_coordinate_batch`: one coordinator per communicator
//! address, created on first use, cancelled by `dp_cancel` and removed by `dp_release`.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, TryLockError};

use super::{lock, shared::Shared, Coordinator, Outcome};
use crate::cuda::StreamHandle;
use crate::error::{Error, ErrorKind, Result};
use crate::nccl::CommHandle;
use crate::rules::Request;

/// One cached communicator: the cancel flags reachable without its lock, the coordinator
/// behind it. `None` once released (a caller that raced the release retries the lookup).
struct Entry {
    shared: Arc<Shared>,
    coordinator: Mutex<Option<Coordinator>>,
}

/// Coordinators of `dp_coordinate_batch`, keyed by the communicator's address.
static CACHE: LazyLock<Mutex<HashMap<usize, Arc<Entry>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn busy_comm() -> Error {
    Error::new(
        ErrorKind::Busy,
        "another thread is inside dp_coordinate_batch or dp_release on this communicator",
    )
}

/// `dp_coordinate_batch`: begin + end on the coordinator cached for `comm`, created (only
/// once NCCL answered for the communicator) on first use.
///
/// An invalid request joins as the marker (see [`Coordinator::begin`]); when no coordinator
/// can be made for `comm`, the request's error is returned, saying it was not exchanged.
pub(crate) fn coordinate(
    comm: CommHandle,
    stream: StreamHandle,
    req: &Request,
    invalid: Option<&Error>,
) -> Result<Outcome> {
    loop {
        let existing = lock(&CACHE).get(&(comm.as_raw() as usize)).cloned();
        let entry = match existing {
            Some(e) => e,
            None => {
                let c = Coordinator::new(comm, false).map_err(|e| match invalid {
                    Some(why) if req.timeout_ms < 0 => why.clone(), // never a marker
                    Some(why) => Error::new(
                        why.kind,
                        format!(
                            "{}; nor could it be exchanged as the invalid-request marker, so \
                             the other ranks are not told: {e}",
                            why.message
                        ),
                    ),
                    None => e,
                })?;
                let fresh = Arc::new(Entry {
                    shared: Arc::clone(&c.shared),
                    coordinator: Mutex::new(Some(c)),
                });
                let mut cache = lock(&CACHE);
                let kept = cache
                    .entry(comm.as_raw() as usize)
                    .or_insert_with(|| Arc::clone(&fresh));
                let kept = Arc::clone(kept);
                drop(cache);
                // Another thread created one first: ours has no GPU state and is dropped.
                drop(fresh);
                kept
            }
        };
        let mut guard = match entry.coordinator.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(busy_comm()),
        };
        let Some(c) = guard.as_ref() else {
            continue; // released meanwhile: look again
        };
        // A new communicator at a released one's address, of another shape: start afresh
        // (the old state is retired without waiting).
        let (size, rank) = (c.nccl.comm_count(comm)?, c.nccl.comm_user_rank(comm)?);
        if (size, rank) != c.shape() {
            c.destroy()?;
            guard.take();
            let key = comm.as_raw() as usize;
            let mut cache = lock(&CACHE);
            if cache.get(&key).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
                cache.remove(&key);
            }
            continue; // the next lookup creates a coordinator of the new shape
        }
        c.begin(stream, req, invalid)?;
        return c.end();
    }
}

/// `dp_cancel`: cancels the coordinator cached for `comm` (none: nothing to do).
pub(crate) fn cancel(comm: CommHandle) -> Result<()> {
    let entry = lock(&CACHE).get(&(comm.as_raw() as usize)).cloned();
    match entry {
        Some(e) => e.shared.cancel(),
        None => Ok(()),
    }
}

/// `dp_release`: removes `comm`'s coordinator from the cache (under the entry's lock) and
/// destroys it without waiting: state whose work may be pending is freed later, never
/// early. Never calls NCCL, so it may follow `ncclCommAbort`.
pub(crate) fn release(comm: CommHandle) -> Result<()> {
    let key = comm.as_raw() as usize;
    let Some(entry) = lock(&CACHE).get(&key).cloned() else {
        return Ok(());
    };
    let mut guard = match entry.coordinator.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => {
            return Err(Error::new(
                ErrorKind::Busy,
                "dp_release: a dp_coordinate_batch on this communicator is running on another \
                 thread; cancel it first (dp_cancel), or release after it returned",
            ))
        }
    };
    {
        let mut cache = lock(&CACHE);
        if cache.get(&key).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
            cache.remove(&key);
        }
    }
    if let Some(c) = guard.as_ref() {
        if let Err(e) = c.destroy() {
            lock(&CACHE)
                .entry(key)
                .or_insert_with(|| Arc::clone(&entry));
            return Err(e);
        }
    }
    guard.take();
    Ok(())
}

/// Whether a coordinator is cached at this communicator address (tests of the C functions).
#[cfg(test)]
pub(crate) fn is_cached(comm: usize) -> bool {
    lock(&CACHE).contains_key(&comm)
}
