//! What every thread may touch without the coordinator's lock: `cancel`'s flag, the count of
//! threads inside, and whether the first allgather's helper thread is inside NCCL.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::error::{Error, ErrorKind, Result};

/// How long `cancel` waits for the threads inside the coordinator to leave (each checks for
/// `cancel` every [`CHECK_INTERVAL`]).
const CANCEL_WAIT: Duration = Duration::from_millis(100);

/// What every thread may touch without the coordinator's lock: `cancel`'s flag and the count
/// of threads inside.
#[derive(Default)]
pub(super) struct Shared {
    pub(super) cancelled: AtomicBool,
    /// Threads inside `begin`, `poll` or `end`.
    pub(super) active: AtomicU32,
    /// A helper thread is inside NCCL's first `ncclAllGather` (only `ncclCommAbort` frees it).
    pub(super) helper_inside: AtomicBool,
}

/// Counts a thread inside the coordinator for as long as it lives.
pub(super) struct Inside<'a>(&'a Shared);

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

pub(super) fn cancelled_error() -> Error {
    Error::new(
        ErrorKind::Cancelled,
        "the coordinator was cancelled (dp_coordinator_cancel / dp_cancel): abort the \
         communicator (ncclCommAbort) on every rank, then destroy the coordinator \
         (dp_coordinator_destroy / dp_release)",
    )
}

impl Shared {
    /// Enters the coordinator, unless it was cancelled. The count is raised before the flag
    /// is read (both sequentially consistent), so `cancel` either sees this thread inside or
    /// this thread sees the flag.
    pub(super) fn enter(&self) -> Result<Inside<'_>> {
        self.active.fetch_add(1, Ordering::SeqCst);
        let inside = Inside(self);
        if self.cancelled.load(Ordering::SeqCst) {
            return Err(cancelled_error());
        }
        Ok(inside)
    }

    pub(super) fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Sets the flag, then waits (bounded) until no thread is inside.
    pub(super) fn cancel(&self) -> Result<()> {
        self.cancelled.store(true, Ordering::SeqCst);
        let start = Instant::now();
        while self.active.load(Ordering::SeqCst) != 0 {
            if start.elapsed() >= CANCEL_WAIT {
                return Err(Error::new(
                    ErrorKind::Busy,
                    format!(
                        "cancelled, but a thread is still inside dpcoord for this coordinator \
                         after {} ms (inside an NCCL or CUDA call); call cancel again before \
                         ncclCommAbort",
                        CANCEL_WAIT.as_millis()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_micros(20));
        }
        if self.helper_inside.load(Ordering::SeqCst) {
            return Err(Error::new(
                ErrorKind::Busy,
                "cancelled; no caller thread is inside dpcoord, but its helper thread is still \
                 inside the first ncclAllGather on this communicator (NCCL's lazy connect to a \
                 peer that is not calling), where only ncclCommAbort can free it: abort the \
                 communicator on every rank, then destroy the coordinator",
            ));
        }
        Ok(())
    }
}
