//! Waiting for the other ranks: spin, then yield, then sleep on the futex in slices.

use std::sync::atomic::{fence, Ordering};
use std::time::{Duration, Instant};

use super::sys::{futex_wait, futex_wake_all};
use super::HostGroup;
use crate::error::{Error, Result};

/// How long a wait spins (then yields) before it sleeps on the futex, on an idle machine.
const SPIN_NS: u64 = 50_000;
/// Of which this long without yielding the core.
const PURE_SPIN_NS: u64 = 5_000;
/// A yield that took this long ran another process: the machine is oversubscribed; waits
/// then yield at once...
const BUSY_YIELD_NS: u64 = 2_000;
/// ...and keep yielding this long before they sleep (only while other processes want the
/// core; on an idle core a wait sleeps after `SPIN_NS`).
const BUSY_SPIN_NS: u64 = 1_000_000;
/// The longest futex sleep between two checks for a dead or closed peer.
const SLICE_MS: u64 = 10;
/// The first futex sleep of a wait (the sleeps double up to `SLICE_MS`).
const FIRST_SLICE_MS: u64 = 1;

/// The deadline `timeout_ms` from now; `None` waits forever.
pub(super) fn deadline_after(timeout_ms: i32) -> Option<Instant> {
    (timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(timeout_ms as u64))
}

/// When a wait gives up: a fixed instant (open), or `timeout_ms` after the wait began.
#[derive(Clone, Copy)]
pub(super) enum Deadline {
    At(Option<Instant>),
    AfterMs(i32),
}

impl Deadline {
    fn resolve(self, start: Instant) -> Option<Instant> {
        match self {
            Deadline::At(d) => d,
            Deadline::AfterMs(ms) => (ms > 0).then(|| start + Duration::from_millis(ms as u64)),
        }
    }
}

impl HostGroup {
    pub(super) fn wake(&self) {
        let h = self.map.header();
        fence(Ordering::SeqCst);
        if h.wake.sleepers.load(Ordering::Relaxed) != 0 {
            h.wake.epoch.fetch_add(1, Ordering::SeqCst);
            futex_wake_all(&h.wake.epoch);
        }
    }

    /// Waits until `ready` says so: spins, then yields, then (after waking the ranks that
    /// sleep on this rank's publication) sleeps on the futex in slices, calling `between`
    /// after each slice; past the deadline, fails with `timed_out`. The clock is first read
    /// after 64 polls, so a wait that ends at once costs no clock read.
    pub(super) fn wait(
        &self,
        deadline: Deadline,
        mut ready: impl FnMut(&Self) -> Result<bool>,
        mut between: impl FnMut(&Self) -> Result<()>,
        timed_out: impl FnOnce(&Self) -> Error,
    ) -> Result<()> {
        let mut polls = 0u32;
        let mut start = None;
        let mut budget = Duration::from_nanos(SPIN_NS);
        loop {
            if ready(self)? {
                return Ok(());
            }
            polls = polls.wrapping_add(1);
            let contended = self.contended.get();
            if polls % 64 == 0 || contended {
                let t = start.get_or_insert_with(Instant::now).elapsed();
                if t >= budget {
                    break;
                }
                if contended || t >= Duration::from_nanos(PURE_SPIN_NS) {
                    let before = Instant::now();
                    std::thread::yield_now();
                    // A yield that ran another process: the cores are oversubscribed, and
                    // yielding at once gives them to the ranks this one waits for (this wait
                    // and the next ones, until a yield finds the core idle again).
                    let busy = before.elapsed() >= Duration::from_nanos(BUSY_YIELD_NS);
                    self.contended.set(busy);
                    if busy {
                        budget = Duration::from_nanos(BUSY_SPIN_NS);
                    }
                }
            }
            std::hint::spin_loop();
        }
        let deadline = deadline.resolve(start.unwrap_or_else(Instant::now));
        self.wake();
        let h = self.map.header();
        let mut slice = Duration::from_millis(FIRST_SLICE_MS);
        loop {
            let epoch = h.wake.epoch.load(Ordering::SeqCst);
            h.wake.sleepers.fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            let now_ready = ready(self);
            if !matches!(now_ready, Ok(false)) {
                h.wake.sleepers.fetch_sub(1, Ordering::SeqCst);
                return now_ready.map(|_| ());
            }
            let mut this_slice = slice;
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    h.wake.sleepers.fetch_sub(1, Ordering::SeqCst);
                    return Err(timed_out(self));
                }
                this_slice = this_slice.min(left);
            }
            futex_wait(&h.wake.epoch, epoch, this_slice);
            h.wake.sleepers.fetch_sub(1, Ordering::SeqCst);
            slice = (slice * 2).min(Duration::from_millis(SLICE_MS));
            if ready(self)? {
                return Ok(());
            }
            between(self)?;
        }
    }
}
