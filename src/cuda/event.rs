//! A timing-free event: recorded behind work, queried without blocking.

use super::{driver, CuEvent, StreamHandle, CUDA_ERROR_NOT_READY, CU_EVENT_DISABLE_TIMING};
use crate::error::Result;

/// A timing-free event; destroyed with [`Event::destroy`].
pub(crate) struct Event {
    raw: CuEvent,
}

// SAFETY: an event handle may be recorded and queried from any thread.
unsafe impl Send for Event {}

impl Event {
    /// Creates an event without timing in the current context.
    pub(crate) fn new() -> Result<Self> {
        let d = driver()?;
        let mut raw = std::ptr::null_mut();
        d.check(
            // SAFETY: writes the new event into a valid local.
            unsafe { (d.sym.event_create)(&mut raw, CU_EVENT_DISABLE_TIMING) },
            "cuEventCreate",
        )?;
        Ok(Self { raw })
    }

    /// Records the event on `stream`.
    pub(crate) fn record(&self, stream: StreamHandle) -> Result<()> {
        let d = driver()?;
        d.check(
            // SAFETY: the event is live; the stream handle's contract.
            unsafe { (d.sym.event_record)(self.raw, stream.as_raw()) },
            "cuEventRecord",
        )
    }

    /// Whether the work before the last record has finished (`Ok(true)`), is pending
    /// (`Ok(false)`), or failed (an error).
    pub(crate) fn done(&self) -> Result<bool> {
        let d = driver()?;
        // SAFETY: the event is live.
        match unsafe { (d.sym.event_query)(self.raw) } {
            CUDA_ERROR_NOT_READY => Ok(false),
            status => d.check(status, "cuEventQuery").map(|()| true),
        }
    }

    /// Destroys the event (its context current).
    pub(crate) fn destroy(self) {
        if let Ok(d) = driver() {
            // SAFETY: destroys the event this value owns.
            unsafe { (d.sym.event_destroy)(self.raw) };
        }
    }
}
