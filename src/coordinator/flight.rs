//! One exchange of a coordinator: the slot `begin` sends (the library's one slot maker,
//! `rules::slots::make`, or the invalid-request marker), what `begin` hands the device work,
//! what is in flight between `begin` and `end`, and what a step decides (by its rule set).

use std::time::Instant;

use crate::cuda::StreamHandle;
use crate::error::{Error, Result};
use crate::rules::{self, Agreement, Decision, GraphTable, Request, DP_RULES_VLLM_V2};
use crate::slot::Slot;

/// What a step decided, by its rule set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decided {
    /// The V1 rules' decision.
    V1(Decision),
    /// The V2 rules' agreement (this rank's view: its descriptor and the shared agreement).
    V2(Agreement),
}

impl Decided {
    /// Whether the step has a per-rank array (V1: always on the GPU path; V2: the
    /// agreement's, false when idle and for dp_size 1).
    pub fn has_array(&self) -> bool {
        match self {
            Decided::V1(d) => d.has_num_tokens_after_padding,
            Decided::V2(a) => a.has_array,
        }
    }
}

impl std::fmt::Display for Decided {
    /// The decision as the TRACE log writes it (each rule set's own form).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Decided::V1(d) => d.fmt(f),
            Decided::V2(a) => a.fmt(f),
        }
    }
}

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
    Local(Result<Decided>),
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
/// ([`rules::slots::make`]'s, with the coordinator's graph `table`), or the invalid-request
/// marker with the reason (`refused`: the C boundary's or the stream's, else `make`'s). Only a
/// request that cannot join (a negative `timeout_ms`: the wait would have no bound) is an
/// error.
pub(super) fn own_slot(
    req: &Request,
    refused: Option<Error>,
    seq: u32,
    arrival_ns: i64,
    table: Option<&GraphTable>,
) -> Result<(Slot, Option<Error>)> {
    let made = match refused {
        Some(e) => Err(e),
        None => rules::slots::make(req, seq, arrival_ns, table),
    };
    match made {
        Ok(slot) => Ok((slot, None)),
        Err(e) if req.timeout_ms >= 0 => Ok((Slot::marker(seq, arrival_ns), Some(e))),
        Err(e) => Err(e),
    }
}

/// The decision of a one-rank communicator (nothing exchanged): the slot's checks and
/// decision (with the coordinator's graph `table`), as if it had been gathered.
pub(super) fn decide_alone(slot: Slot, table: Option<&GraphTable>) -> Result<Decided> {
    let slots = [slot];
    let checked = rules::slots::check(&slots, None)?;
    decide_checked(&slots, 0, &checked, table)
}

/// The decision over checked gathered `slots` as rank `dp_rank` (every rank live), by the
/// slots' rule set: `rules::slots::decide_v1`, or `decide_v2` with `table`.
pub(super) fn decide_checked(
    slots: &[Slot],
    dp_rank: i32,
    checked: &rules::slots::Checked,
    table: Option<&GraphTable>,
) -> Result<Decided> {
    Ok(if checked.settings.rules == DP_RULES_VLLM_V2 {
        Decided::V2(rules::slots::decide_v2(
            slots, dp_rank, None, checked, table, None,
        )?)
    } else {
        Decided::V1(rules::slots::decide_v1(
            slots, dp_rank, None, checked, None,
        )?)
    })
}
