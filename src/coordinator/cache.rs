//! The per-communicator cache of `dp_coordinate_batch`: one coordinator per communicator
//! address, created on first use, cancelled by `dp_cancel` and removed by `dp_release`.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, TryLockError};

use super::{cancelled_error, lock, shared::Shared, Coordinator, Outcome};
use crate::cuda::StreamHandle;
use crate::error::{Error, ErrorKind, Result};
use crate::nccl::CommHandle;
use crate::rules::Request;

/// One cached communicator: the cancel flags reachable without its lock (made with the
/// entry, before anything touches the communicator), the coordinator behind it.
struct Entry {
    shared: Arc<Shared>,
    held: Mutex<Held>,
}

/// What an entry holds.
enum Held {
    /// No coordinator yet: the first call (or one after a change of shape) makes it.
    Creating,
    Ready(Box<Coordinator>),
    /// Released, or its creation failed: a caller that raced it looks again.
    Gone,
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

/// Removes `entry` from the cache, if it is still the one cached for `key`.
fn forget(key: usize, entry: &Arc<Entry>) {
    let mut cache = lock(&CACHE);
    if cache.get(&key).is_some_and(|e| Arc::ptr_eq(e, entry)) {
        cache.remove(&key);
    }
}

/// `dp_coordinate_batch`: begin + end on the coordinator cached for `comm`, created (only
/// once NCCL answered for the communicator) on first use.
///
/// The call is visible to `dp_cancel` and `dp_release` from its first line: the entry (a
/// placeholder until the coordinator exists) is cached, and this thread counted inside it,
/// before anything touches the communicator; so `dp_cancel` returning `DP_OK` means no
/// dpcoord thread touches it again. An invalid request joins as the marker (see
/// [`Coordinator::begin`]); when no coordinator can be made for `comm`, the request's error
/// is returned, saying it was not exchanged.
pub(crate) fn coordinate(
    comm: CommHandle,
    stream: StreamHandle,
    req: &Request,
    invalid: Option<&Error>,
) -> Result<Outcome> {
    let key = comm.as_raw() as usize;
    loop {
        let entry = Arc::clone(lock(&CACHE).entry(key).or_insert_with(|| {
            Arc::new(Entry {
                shared: Arc::default(),
                held: Mutex::new(Held::Creating),
            })
        }));
        let _inside = entry.shared.enter()?;
        let mut held = match entry.held.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(busy_comm()),
        };
        if let Held::Creating = *held {
            match Coordinator::with_shared(comm, Arc::clone(&entry.shared)) {
                Ok(c) => *held = Held::Ready(Box::new(c)),
                Err(e) => {
                    *held = Held::Gone;
                    forget(key, &entry);
                    return Err(match invalid {
                        Some(why) if req.timeout_ms < 0 => why.clone(), // never a marker
                        Some(why) => Error::new(
                            why.kind,
                            format!(
                                "{}; nor could it be exchanged as the invalid-request marker, \
                                 so the other ranks are not told: {e}",
                                why.message
                            ),
                        ),
                        None => e,
                    });
                }
            }
            if entry.shared.is_cancelled() {
                return Err(cancelled_error());
            }
        }
        let Held::Ready(c) = &*held else {
            continue; // released meanwhile: look again
        };
        // A new communicator at a released one's address, of another shape: start afresh in
        // the same entry (the old state is retired without waiting; a cancel still holds).
        let (size, rank) = (c.nccl.comm_count(comm)?, c.nccl.comm_user_rank(comm)?);
        if (size, rank) != c.shape() {
            c.destroy_inside(1)?;
            *held = Held::Creating;
            continue;
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
    let mut held = match entry.held.try_lock() {
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
    forget(key, &entry);
    if let Held::Ready(c) = &*held {
        if let Err(e) = c.destroy() {
            lock(&CACHE)
                .entry(key)
                .or_insert_with(|| Arc::clone(&entry));
            return Err(e);
        }
    }
    *held = Held::Gone;
    Ok(())
}

/// Whether a coordinator is cached at this communicator address (tests of the C functions).
#[cfg(test)]
pub(crate) fn is_cached(comm: usize) -> bool {
    lock(&CACHE).contains_key(&comm)
}
