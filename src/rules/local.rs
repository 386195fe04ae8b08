//! Decisions with no exchange (DESIGN 1d, `VLLM_V2.md` 3): vLLM's `skip_dp_coordination()`
//! for both rule sets, and the V2 reuse of a prior agreement for draft steps
//! (`dispatch_cg_and_sync_dp(dp_sync_state=...)`, `_build_uniform_batch_dp_sync`).
//!
//! A local decision is **rank-local by design** (`VLLM_V2.md` 6.9): as if every rank had sent
//! this rank's record, so two ranks' local decisions differ whenever their requests do. It is
//! for process-local warm-up and capture only.
//!
//! The reuse functions trust the prior as this library returned it; they check vLLM's two
//! preconditions (its asserts, here errors naming the values) and, stricter than vLLM, the
//! draft's `parent_step_id` against the prior's `step_id` when both are set. A prior that is
//! **idle** (no rank had work) agreed nothing: vLLM's drafters get no state and run a fresh
//! collective, which a local function cannot, so both functions refuse it. A prior of
//! **dp_size 1** has no array: vLLM's drafters then get no state either and dispatch on their
//! own inputs with no exchange, which is what both functions do (the draft's own uniform count
//! and query bound; for a uniform draft decode `R' x q` tokens with no query bound).
//!
//! In a reused agreement, `max_num_tokens` and `min_num_tokens` are over the draft's per-rank
//! tokens, which the precondition makes the prior's array entries: the common count when the
//! prior padded every rank, else the prior's own; `num_tokens_self` is this rank's entry of
//! the new array.

use crate::error::{invalid, Error, ErrorKind, Result};

use super::graphs::{Descriptor, GraphTable};
use super::v1::{decide_summary, make_record, Decision, Summary as Summary1};
use super::v2::{
    check_shape, decide_many, decide_one, make_v2_record, own_descriptor, untabled, Agreement,
    Fill, Summary, V2Config,
};
use super::{check_decide_args, Request, DP_CUDAGRAPH_NONE, DP_RULES_VLLM_V1, DP_RULES_VLLM_V2};

/// V1's local decision (vLLM's `coordinate_batch_across_dp` under `skip_dp_coordination()`):
/// `should_ubatch = should_attempt_ubatch && !last_ubatch_empty(own unpadded, own padded, n)`,
/// the array `[own padded] x dp_size`, the synced mode the own mode; the other fields as if
/// every rank had sent this rank's record (the pad flag under the request's policy). dp_size
/// 1 is V1's early exit (no array, `out` untouched). `req.rules` must be V1.
pub fn decide_local_v1(
    req: &Request,
    dp_size: i32,
    dp_rank: i32,
    out: Option<&mut [i32]>,
) -> Result<Decision> {
    let rec = make_record(req)?;
    if req.rules != DP_RULES_VLLM_V1 {
        return Err(invalid!(
            "rules = {} must be 0 (VLLM_V1) for decide_local_v1",
            req.rules
        ));
    }
    let n = req.effective_num_ubatches();
    check_decide_args(i64::from(dp_size), dp_rank, req.pad_policy, n)?;
    check_shape(i64::from(dp_size), dp_rank, out.as_deref())?;
    // Every rank's record is this rank's: the summary of dp_size copies is the record itself.
    let summary = Summary1 {
        min_unpadded: rec.num_tokens_unpadded,
        max_padded: rec.num_tokens_padded,
        min_mode: rec.cudagraph_mode,
        all_attempt_ubatch: rec.should_attempt_ubatch == 1,
        all_attempt_dp_pad: rec.should_attempt_dp_pad == 1,
        dp_pad_disagreement: None,
    };
    let decision = decide_summary(&summary, rec, dp_size as usize, req.pad_policy, n)?;
    if let (Some(out), true) = (out, decision.has_num_tokens_after_padding) {
        out.fill(rec.num_tokens_padded);
    }
    Ok(decision)
}

/// V2's local decision: `VLLM_V2.md` section 2 on this rank's own record in every slot (3.2,
/// example `skip-coordination`), without materialising the copies; the array is the agreed
/// count, or the own tokens when eager, on every slot. dp_size 1 is [`super::decide_v2`]'s.
pub fn decide_local_v2(
    req: &Request,
    dp_size: i32,
    dp_rank: i32,
    table: Option<&GraphTable>,
    out: Option<&mut [i32]>,
) -> Result<Agreement> {
    let own = make_v2_record(req, table)?;
    check_shape(i64::from(dp_size), dp_rank, out.as_deref())?;
    if dp_size == 1 {
        return Ok(decide_one(&own, table));
    }
    let cfg = V2Config::of(req, table);
    let (agreement, fill) = decide_many(&Summary::of_one(&own), &own, &cfg, table);
    if let Some(out) = out {
        match fill {
            Fill::Nothing => {}
            Fill::All(v) => out.fill(v),
            Fill::Row0 => out.fill(own.num_tokens),
        }
    }
    Ok(agreement)
}

/// A prior V2 result to reuse: where it was decided, its step, its agreement and its array.
#[derive(Debug, Clone, Copy)]
pub struct Prior<'a> {
    /// The prior's dp_size.
    pub dp_size: i32,
    /// The prior's (and this call's) dp_rank.
    pub dp_rank: i32,
    /// The prior's step id (0 = none).
    pub step_id: i64,
    /// The prior's agreement.
    pub agreement: Agreement,
    /// The prior's per-rank array, dp_size entries (`None` when it has none).
    pub array: Option<&'a [i32]>,
}

impl Prior<'_> {
    /// The checks both reuse functions share; `Some(array)` when there is an agreement to
    /// reuse, `None` for dp_size 1 (no state: the caller decides on its own inputs).
    fn state(&self, out: Option<&[i32]>) -> Result<Option<&[i32]>> {
        check_shape(i64::from(self.dp_size), self.dp_rank, out).map_err(|e| e.context("prior"))?;
        if self.dp_size == 1 {
            return Ok(None);
        }
        if self.agreement.idle {
            return Err(invalid!(
                "prior.agreement.idle = true: no rank had work in the prior step, so it agreed \
                 nothing to reuse (vLLM returns no DPSyncState there); a draft step after it \
                 needs its own exchange"
            ));
        }
        match self.array {
            Some(a) if a.len() == self.dp_size as usize => Ok(Some(a)),
            Some(a) => Err(invalid!(
                "prior.array holds {} entries, prior.dp_size = {} needed",
                a.len(),
                self.dp_size
            )),
            None => Err(invalid!(
                "prior.array is missing: a dp_size = {} agreement that is not idle has its \
                 per-rank array",
                self.dp_size
            )),
        }
    }
}

/// The agreement of a dp_size-1 step with `descriptor`'s inputs (no state to reuse).
fn single(desc: Descriptor, t: i32, uniform: i32, mql: i32, reqs: i32, skip: bool) -> Agreement {
    let idle = t == 0;
    Agreement {
        idle,
        graph: desc,
        eager: !idle && desc.mode == DP_CUDAGRAPH_NONE,
        uniform_token_count: uniform,
        max_query_len: mql,
        max_num_reqs: reqs,
        skip_drafts: skip,
        has_array: false,
        padded: false,
        num_tokens_self: t,
        max_num_tokens: t,
        min_num_tokens: t,
    }
}

/// Reuses `prior` for a draft step over the same batch, with no exchange
/// (`dispatch_cg_and_sync_dp(dp_sync_state=prior)`, `VLLM_V2.md` 3.1): the descriptor is
/// NONE(T, R, loras) when the prior is eager or the draft needs eager, else the dispatch of
/// the draft's (R, T, loras) with the prior's uniform count and query bound (which replace
/// the draft's, even when none); the prior's array is kept, or every slot becomes the
/// descriptor's tokens when this table pads further (not when eager). vLLM's asserts are
/// errors: the prior's array entry for this rank must equal the draft's `num_tokens`, and the
/// prior's uniform count must be none or the draft's. Stricter than vLLM: a draft
/// `parent_step_id` and a prior `step_id` that are both set must be equal
/// ([`ErrorKind::InconsistentRanks`]). Without a table the descriptor is the draft's
/// `cudagraph_mode` over the agreed inputs. See the module docs for idle and dp_size-1 priors.
pub fn reuse_agreement(
    prior: &Prior<'_>,
    draft: &Request,
    table: Option<&GraphTable>,
    out: Option<&mut [i32]>,
) -> Result<Agreement> {
    draft.validate()?;
    if draft.rules != DP_RULES_VLLM_V2 {
        return Err(invalid!(
            "draft rules = {} must be 1 (VLLM_V2) to reuse a V2 agreement",
            draft.rules
        ));
    }
    if draft.parent_step_id != 0 && prior.step_id != 0 && draft.parent_step_id != prior.step_id {
        return Err(Error::new(
            ErrorKind::InconsistentRanks,
            format!(
                "draft parent_step_id = {} differs from the prior's step_id = {}: the prior \
                 agreement belongs to another step",
                draft.parent_step_id, prior.step_id
            ),
        ));
    }
    let Some(array) = prior.state(out.as_deref())? else {
        let own = own_descriptor(draft, table);
        return Ok(single(
            own,
            draft.num_tokens_unpadded,
            draft.uniform_token_count,
            draft.max_query_len,
            draft.num_reqs,
            draft.allow_skip_drafts,
        ));
    };
    let s = &prior.agreement;
    let (t, r, loras) = (
        draft.num_tokens_unpadded,
        draft.num_reqs,
        draft.num_active_loras,
    );
    let desc = if draft.need_eager || s.eager {
        Descriptor::none(t, r, loras, 1)
    } else {
        match table {
            Some(table) => table.dispatch(r, t, s.uniform_token_count, loras, s.max_query_len, 1),
            None => untabled(
                if t > 0 {
                    draft.cudagraph_mode
                } else {
                    DP_CUDAGRAPH_NONE
                },
                t,
                r,
                s.uniform_token_count,
                s.max_query_len,
                loras,
            ),
        }
    };
    let mine = array[prior.dp_rank as usize];
    if mine != t {
        return Err(invalid!(
            "draft num_tokens_unpadded = {t} must equal prior.array[{}] = {mine}: reusing a DP \
             agreement taken over a different batch",
            prior.dp_rank
        ));
    }
    if s.uniform_token_count != 0 && draft.uniform_token_count != s.uniform_token_count {
        return Err(invalid!(
            "draft uniform_token_count = {} must equal the prior's agreed uniform count {}: \
             reusing a DP agreement taken over a different batch",
            draft.uniform_token_count,
            s.uniform_token_count
        ));
    }
    let repad = !s.eager && desc.num_tokens != t;
    let padded = !s.eager || s.padded;
    if let Some(out) = out {
        if repad {
            out.fill(desc.num_tokens);
        } else {
            out.copy_from_slice(array);
        }
    }
    Ok(Agreement {
        idle: false,
        graph: desc,
        has_array: true,
        padded,
        num_tokens_self: if repad { desc.num_tokens } else { t },
        max_num_tokens: if padded { t } else { s.max_num_tokens },
        min_num_tokens: if padded { t } else { s.min_num_tokens },
        ..*s
    })
}

/// The agreement of a uniform draft decode (`_build_uniform_batch_dp_sync(prior, num_reqs,
/// query_len)` reused by `dispatch_cg_and_sync_dp`, `VLLM_V2.md` 3.1): `T = prior
/// max_num_reqs x query_len` on every rank (`num_reqs x query_len <= T` is checked: vLLM's
/// assert), uniform count and query bound `query_len`, not eager (FULL graphs stay usable
/// after an eager target step), then this rank's dispatch of `(num_reqs, T, query_len, 0
/// loras, query_len)`; every slot becomes the descriptor's tokens when the table pads further.
/// Without a table the descriptor is NONE with `T` tokens, not eager: the caller dispatches
/// locally on the agreed inputs. See the module docs for idle and dp_size-1 priors.
pub fn uniform_draft_agreement(
    prior: &Prior<'_>,
    num_reqs: i32,
    query_len: i32,
    table: Option<&GraphTable>,
    out: Option<&mut [i32]>,
) -> Result<Agreement> {
    if num_reqs < 0 {
        return Err(invalid!("num_reqs = {num_reqs} must be >= 0"));
    }
    if query_len < 1 {
        return Err(invalid!("query_len = {query_len} must be >= 1"));
    }
    let dispatch = |t: i32, mql: i32| match table {
        Some(table) => table.dispatch(num_reqs, t, query_len, 0, mql, 1),
        None => Descriptor::none(t, num_reqs, 0, 1),
    };
    let Some(_) = prior.state(out.as_deref())? else {
        let t = tokens(num_reqs, query_len, "num_reqs")?;
        return Ok(single(dispatch(t, -1), t, query_len, -1, num_reqs, false));
    };
    let s = &prior.agreement;
    let t = tokens(s.max_num_reqs, query_len, "prior max_num_reqs")?;
    let need = i64::from(num_reqs) * i64::from(query_len);
    if need > i64::from(t) {
        return Err(invalid!(
            "num_reqs x query_len = {num_reqs} x {query_len} = {need} must be <= prior \
             max_num_reqs x query_len = {t}: the prior agreement does not cover this batch's \
             requests"
        ));
    }
    let desc = dispatch(t, query_len);
    if let Some(out) = out {
        out.fill(desc.num_tokens);
    }
    Ok(Agreement {
        idle: false,
        graph: desc,
        eager: false,
        uniform_token_count: query_len,
        max_query_len: query_len,
        has_array: true,
        padded: true,
        num_tokens_self: desc.num_tokens,
        max_num_tokens: t,
        min_num_tokens: t,
        ..*s
    })
}

/// `count x query_len` as a token count, or an error naming `what` when it overflows int32.
fn tokens(count: i32, query_len: i32, what: &str) -> Result<i32> {
    let t = i64::from(count) * i64::from(query_len);
    i32::try_from(t)
        .map_err(|_| invalid!("{what} x query_len = {count} x {query_len} = {t} overflows int32"))
}

#[cfg(test)]
mod tests;
