//! A timing-free event (recorded behind work, queried without blocking, waited for by a
//! stream) and a stream of dpcoord's own.

use super::{
    driver, Context, CuEvent, StreamHandle, CUDA_ERROR_NOT_READY, CU_EVENT_DISABLE_TIMING,
};
use crate::error::Result;

/// A timing-free event; destroyed on drop, in its context.
pub(crate) struct Event {
    raw: CuEvent,
    ctx: Context,
}

// SAFETY: an event handle may be recorded and queried from any thread.
unsafe impl Send for Event {}

impl Event {
    /// Creates an event without timing in `ctx`, which is current.
    pub(crate) fn new(ctx: Context) -> Result<Self> {
        let d = driver()?;
        let mut raw = std::ptr::null_mut();
        d.check(
            // SAFETY: writes the new event into a valid local.
            unsafe { (d.sym.event_create)(&mut raw, CU_EVENT_DISABLE_TIMING) },
            "cuEventCreate",
        )?;
        Ok(Self { raw, ctx })
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

    /// Makes `stream` wait (on the device) for the work before this event's last record.
    pub(crate) fn wait_on(&self, stream: StreamHandle) -> Result<()> {
        let d = driver()?;
        d.check(
            // SAFETY: the event is live; the stream handle's contract; flags 0.
            unsafe { (d.sym.stream_wait_event)(stream.as_raw(), self.raw, 0) },
            "cuStreamWaitEvent",
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
}

impl Drop for Event {
    fn drop(&mut self) {
        if let (Ok(d), Some(_current)) = (driver(), self.ctx.enter_if_alive()) {
            // SAFETY: destroys the event this value owns, in its context, which is still the
            // one it was made in.
            unsafe { (d.sym.event_destroy)(self.raw) };
        }
    }
}

/// A non-blocking stream dpcoord made (in its context) and destroys on drop.
pub(crate) struct OwnedStream {
    raw: StreamHandle,
    ctx: Context,
}

impl OwnedStream {
    /// A new non-blocking stream of `ctx`, which is current.
    pub(crate) fn new(ctx: Context) -> Result<Self> {
        let d = driver()?;
        let mut raw = std::ptr::null_mut();
        d.check(
            // SAFETY: writes the new stream into a valid local (1: CU_STREAM_NON_BLOCKING).
            unsafe { (d.sym.stream_create)(&mut raw, 1) },
            "cuStreamCreate",
        )?;
        Ok(Self {
            raw: StreamHandle(raw),
            ctx,
        })
    }

    /// Its handle.
    pub(crate) fn handle(&self) -> StreamHandle {
        self.raw
    }
}

impl Drop for OwnedStream {
    fn drop(&mut self) {
        if let (Ok(d), Some(_current)) = (driver(), self.ctx.enter_if_alive()) {
            // SAFETY: destroys the stream this value made, in its context, which is still the
            // one it was made in; pending work on it still completes (the driver's rule).
            unsafe { (d.sym.stream_destroy)(self.raw.as_raw()) };
        }
    }
}
