//! One exchange of a coordinator: the slot `begin` sends (the library's one slot maker,
//! `rules::slots::make`, or the invalid-request marker), what `begin` hands the device work,
//! and what is in flight between `begin` and `end`.

use std::time::Instant;

use crate::cuda::StreamHandle;
use crate::error::{Error, Result};
use crate::rules::{self, Decision, Request};
use crate::slot::Slot;

/// One `begin`'s inputs to the device work.
pub(super) struct Step {
    /// This rank's slot, sealed, with the exchange's sequence number.
    pub(super) slot: Slot,
    /// The request's step id, for the profiler's ranges.
    pub(super) step_id: i64,
    pub(super) deadline: Option<Instant>,
    pub(super) start: Instant,
}

/// An exchange begun and not yet ended.
pub(super) struct InFlight {
    pub(super) start: Instant,
    pub(super) deadline: Option<Instant>,
    pub(super) timeout_ms: i32,
    /// The request's step id, for the log and the profiler's ranges.
    pub(super) step_id: i64,
    /// The slot this rank sent.
    pub(super) slot: Slot,
    /// This rank's request was invalid and joined as [`Slot::marker`]: `end` returns this
    /// error once the exchange completed.
    pub(super) rejected: Option<Error>,
    pub(super) kind: Flight,
}

/// Where an exchange's decision comes from.
pub(super) enum Flight {
    /// dp_size 1 (not forced): decided locally, no GPU work.
    Local(Result<Decision>),
    /// On the GPU: published with `seq` on `stream` (the caller's, or the coordinator's own
    /// for a stream it could not use).
    Exchange {
        seq: u32,
        stream: StreamHandle,
        /// `stream` is special (NULL, legacy, per-thread: what it means depends on the
        /// thread), so `begin` recorded the state's event behind its work on the caller's
        /// thread: `end`, `cancel` and `destroy`, maybe on other threads, use that event and
        /// never the stream.
        marked: bool,
    },
}

/// This rank's slot for `req` with sequence number `seq` and arrival time `arrival_ns`
/// ([`rules::slots::make`]'s), or the invalid-request marker with the reason (`refused`: the
/// C boundary's or the stream's, else `make`'s). Only a request that cannot join (a negative
/// `timeout_ms`: the wait would have no bound) is an error.
pub(super) fn own_slot(
    req: &Request,
    refused: Option<Error>,
    seq: u32,
    arrival_ns: i64,
) -> Result<(Slot, Option<Error>)> {
    let made = match refused {
        Some(e) => Err(e),
        // The kernel decides V1 slots; the V2 rules reach the GPU path with its graph table.
        None if req.rules != rules::DP_RULES_VLLM_V1 => Err(Error::new(
            crate::error::ErrorKind::InvalidArgument,
            format!(
                "req->rules = {}: the GPU path takes the V1 rules (0) in this build",
                req.rules
            ),
        )),
        None => rules::slots::make(req, seq, arrival_ns, None),
    };
    match made {
        Ok(slot) => Ok((slot, None)),
        Err(e) if req.timeout_ms >= 0 => Ok((Slot::marker(seq, arrival_ns), Some(e))),
        Err(e) => Err(e),
    }
}

/// The decision of a one-rank communicator (nothing exchanged): the slot's checks and
/// decision, as if it had been gathered.
pub(super) fn decide_alone(slot: Slot) -> Result<Decision> {
    let slots = [slot];
    let checked = rules::slots::check(&slots, None)?;
    rules::slots::decide_v1(&slots, 0, None, &checked, None)
}
