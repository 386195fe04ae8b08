//! The V2 rule set: vLLM 0.34.0's `dispatch_cg_and_sync_dp` / `sync_cudagraph_and_dp_padding`
//! (`vllm/v1/worker/gpu/dp_utils.py`; `VLLM_V2.md` sections 1-2), on dpcoord's inputs.
//!
//! A rank validates its request and makes its [`V2Record`] ([`make_v2_record`]: vLLM's seven
//! exchanged rows, the mode being the rank's own dispatch over the graph table); every rank
//! then decides from every rank's record ([`decide_v2`]), in vLLM's order: dead ranks dropped,
//! the agreed values, all idle, microbatching, the eager case, padding to the agreed graph.
//!
//! Where dpcoord decides what vLLM leaves open (`VLLM_V2.md` section 6):
//! - `uniform_decode` is derived, not taken from the caller: the agreed uniform count equals
//!   the configured `decode_query_len` (6.1). Ranks whose caller would have passed different
//!   flags therefore agree.
//! - The microbatch branch ignores the mode row (6.4), its fallback factor is 2 for every `n`
//!   (6.3), and a NONE result of the agreed lookup pads without being eager (6.5), all as
//!   vLLM's code does.
//! - Zero tokens is not idle (6.6): only a step in which every live rank has 0 tokens is.
//! - Every dispatch uses the rank's own request count (6.2, 6.11), so a descriptor's
//!   `num_reqs` (and, out of vLLM's usual flow, its mode) can differ per rank; see
//!   [`Agreement`].
//!
//! **Without a table** (`table = None`) everything is agreed but the graph: the microbatch
//! branch gives NONE with `T*` tokens, eager (vLLM's no-manager path); the padded branch gives
//! a descriptor with the synced mode, `T*` tokens, no request count, the agreed uniform count
//! and query bound, not eager: the caller dispatches locally on those agreed inputs.
//!
//! **Record validation.** [`decide_v2`] range-checks every word of every live record (one
//! vector min/max pass): tokens, requests, uniform count and LoRA count >= 0, mode 0..2, the
//! query bound -1 or >= 1, the two flags 0 or 1. One out-of-range word passes: a query bound
//! of 0 while other live ranks send -1 and a positive bound; the -1 leaves the agreed bound
//! none whatever the 0 was (as vLLM, which reads 0 as none), and closing that would cost a
//! third of the pass. The
//! cross-field rules of [`check_v2_request`] hold for every record [`make_v2_record`] makes
//! and are not checked again: no decision depends on them.

use crate::error::{invalid, Result};

use super::graphs::{Descriptor, GraphTable};
use super::{
    check_active_ranks, Request, V2Record, DEFAULT_DECODE_TOKEN_THRESHOLD,
    DEFAULT_PREFILL_TOKEN_THRESHOLD, DP_CUDAGRAPH_NONE, DP_RULES_VLLM_V2,
};
pub(crate) use pass::Summary;

/// The V2 configuration every rank shares (vLLM's `ParallelConfig` microbatching settings and
/// the runner's `decode_query_len`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V2Config {
    /// Microbatching is configured (vLLM's `use_ubatching`).
    pub ubatch_enabled: bool,
    /// Microbatches per step (vLLM's `get_num_ubatches`: 1 when microbatching is off).
    pub num_ubatches: i32,
    /// Smallest `min(num_tokens)` of a uniform-decode step that microbatches.
    pub decode_token_threshold: i32,
    /// Smallest `min(num_tokens)` of any other step that microbatches.
    pub prefill_token_threshold: i32,
    /// The runner's uniform decode query length (1 + speculative tokens).
    pub decode_query_len: i32,
}

impl V2Config {
    /// The configuration of a (validated) request and the table: `decode_query_len` is the
    /// table's, 1 without a table. With microbatching enabled, each threshold below
    /// `num_ubatches x decode_query_len` is raised to it, as vLLM's
    /// `_raise_dbo_thresholds_for_spec_decode` does at start-up (so an idle rank's dummy batch
    /// never passes a threshold); with microbatching off, `num_ubatches` is 1 and the
    /// thresholds are the defaults (they are never read), so ignored fields never make two
    /// ranks' configurations differ.
    pub fn of(req: &Request, table: Option<&GraphTable>) -> V2Config {
        let decode_query_len = table.map_or(1, GraphTable::decode_query_len);
        if !req.ubatch.enabled {
            return V2Config {
                ubatch_enabled: false,
                num_ubatches: 1,
                decode_token_threshold: DEFAULT_DECODE_TOKEN_THRESHOLD,
                prefill_token_threshold: DEFAULT_PREFILL_TOKEN_THRESHOLD,
                decode_query_len,
            };
        }
        let n = req.ubatch.num_ubatches;
        let floor = (i64::from(n) * i64::from(decode_query_len)).min(i64::from(i32::MAX)) as i32;
        V2Config {
            ubatch_enabled: true,
            num_ubatches: n,
            decode_token_threshold: req.ubatch.decode_token_threshold.max(floor),
            prefill_token_threshold: req.ubatch.prefill_token_threshold.max(floor),
            decode_query_len,
        }
    }

    /// `decode_query_len >= 1`, and `num_ubatches >= 2` when microbatching is enabled.
    #[inline(always)]
    fn check(&self) -> Result<()> {
        if self.decode_query_len < 1 {
            return Err(invalid!(
                "cfg.decode_query_len = {} must be >= 1",
                self.decode_query_len
            ));
        }
        if self.ubatch_enabled && self.num_ubatches < 2 {
            return Err(invalid!(
                "cfg.num_ubatches = {} must be >= 2 when microbatching is enabled",
                self.num_ubatches
            ));
        }
        Ok(())
    }
}

/// The V2 cross-field rules of a request ([`Request::validate`] runs them, after the range
/// checks, when `rules` is [`DP_RULES_VLLM_V2`]). Each refuses what vLLM 0.34.0's runner
/// cannot send (`VLLM_V2.md` 1.1):
/// - `num_tokens_padded` must be -1: V2 pads to the graph table, not to a caller's count;
/// - `num_tokens > 0` needs `num_reqs >= 1`, and `num_tokens == 0` needs `num_reqs == 0`:
///   every scheduled request has a token, a dummy batch has one request, and a rank with
///   nothing scheduled has no request;
/// - a uniform count needs `num_reqs >= 1` and `num_tokens >= uniform_token_count` (vLLM sets
///   it only for `R > 0` requests of that query length; the dummy batch is one request of
///   `decode_query_len` tokens).
///
/// Two rules a reader might expect are deliberately absent, because vLLM's own flow breaks
/// them: `num_reqs <= num_tokens` and `num_tokens == num_reqs x uniform_token_count`. With
/// prefill context parallelism and `pcp_shard_decode_requests`, `num_tokens` is the largest
/// PCP rank's share of the decodes while `num_reqs` and the uniform count are the whole
/// batch's (`GPUModelRunner.execute_model`, `PCPManager.get_num_tokens_for_dispatch`). Such a
/// rank's own dispatch then fails the decode graphs' request check (6.2), as in vLLM.
///
/// The V1-only fields `uniform_decode`, `pad_policy` and `allow_dp_padding` are not read by
/// the V2 rules (validate still range-checks them); `num_active_loras` is local.
pub fn check_v2_request(req: &Request) -> Result<()> {
    if req.num_tokens_padded != -1 {
        return Err(invalid!(
            "num_tokens_padded = {} must be -1 under rules = 1 (VLLM_V2): V2 pads to the graph \
             table; pass the unpadded count in num_tokens_unpadded",
            req.num_tokens_padded
        ));
    }
    let (t, r, u) = (
        req.num_tokens_unpadded,
        req.num_reqs,
        req.uniform_token_count,
    );
    if t > 0 && r < 1 {
        return Err(invalid!(
            "num_reqs = {r} must be >= 1 when num_tokens_unpadded = {t} > 0 (tokens belong to \
             requests)"
        ));
    }
    if t == 0 && r != 0 {
        return Err(invalid!(
            "num_reqs = {r} must be 0 when num_tokens_unpadded = 0 (a scheduled request has \
             tokens)"
        ));
    }
    if u != 0 && (r < 1 || t < u) {
        return Err(invalid!(
            "uniform_token_count = {u} needs num_reqs >= 1 and num_tokens_unpadded >= {u} \
             (num_reqs = {r}, num_tokens_unpadded = {t}): a uniform batch is whole requests of \
             that query length"
        ));
    }
    Ok(())
}

/// The rank's own descriptor (vLLM's `dispatch_cg_and_sync_dp` step 1): NONE with
/// `need_eager`; else the dispatch over the table; without a table, the request's
/// `cudagraph_mode` over the batch's own inputs (NONE for 0 tokens, which no dispatch
/// matches).
pub(crate) fn own_descriptor(req: &Request, table: Option<&GraphTable>) -> Descriptor {
    let (t, r, loras) = (req.num_tokens_unpadded, req.num_reqs, req.num_active_loras);
    if req.need_eager {
        return Descriptor::none(t, r, loras, 1);
    }
    match table {
        Some(table) => table.dispatch(r, t, req.uniform_token_count, loras, req.max_query_len, 1),
        None => untabled(
            if t > 0 {
                req.cudagraph_mode
            } else {
                DP_CUDAGRAPH_NONE
            },
            t,
            r,
            req.uniform_token_count,
            req.max_query_len,
            loras,
        ),
    }
}

/// A descriptor without a table: NONE with the batch's own shape, or `mode` over the inputs
/// the caller dispatches on (no request count).
pub(crate) fn untabled(mode: i32, t: i32, r: i32, u: i32, mql: i32, loras: i32) -> Descriptor {
    if mode == DP_CUDAGRAPH_NONE {
        return Descriptor::none(t, r, loras, 1);
    }
    Descriptor {
        mode,
        num_tokens: t,
        num_reqs: -1,
        uniform_token_count: u,
        max_query_len: mql,
        num_ubatches: 1,
        num_active_loras: loras,
    }
}

/// Validates `req` (a V2 request) and makes this rank's record (`VLLM_V2.md` 1.1): row 1 is
/// the mode of the rank's own descriptor (NONE with `need_eager`, else its dispatch over
/// `table` with `num_ubatches` 1, else the request's `cudagraph_mode`, NONE for 0 tokens);
/// `allow_ubatching = allow_microbatching && ubatch.enabled`; the LoRA word is the own
/// descriptor's LoRA count (the request's, resolved to its captured case by the dispatch), for
/// this rank's own use.
pub fn make_v2_record(req: &Request, table: Option<&GraphTable>) -> Result<V2Record> {
    req.validate()?;
    if req.rules != DP_RULES_VLLM_V2 {
        return Err(invalid!(
            "rules = {} must be 1 (VLLM_V2) to make a V2 record",
            req.rules
        ));
    }
    let own = own_descriptor(req, table);
    Ok(V2Record {
        num_tokens: req.num_tokens_unpadded,
        cg_mode: own.mode,
        uniform_token_count: req.uniform_token_count,
        max_query_len: req.max_query_len,
        allow_ubatching: i32::from(req.allow_microbatching && req.ubatch.enabled),
        num_reqs: req.num_reqs,
        allow_skip_drafts: i32::from(req.allow_skip_drafts),
        num_active_loras: own.num_active_loras,
    })
}

/// What a V2 step decided (`VLLM_V2.md` 2.9), one rank's view: the descriptor it runs and the
/// agreement (vLLM's `DPSyncState`).
///
/// Per rank (6.11): `graph.num_tokens` when eager (each rank's own T), `graph.num_reqs` of a
/// NONE descriptor (each rank's own R), `graph.num_active_loras`, `num_tokens_self`; and, for
/// a rank whose own request count exceeds the agreed graph's (possible only with PCP, see
/// [`check_v2_request`]), the graph itself. Everything else is identical on every rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agreement {
    /// Every live rank has 0 tokens: nothing runs, and nothing is agreed (vLLM returns no
    /// state); the other fields still hold the aggregates vLLM computes before returning.
    pub idle: bool,
    /// The descriptor this rank runs.
    pub graph: Descriptor,
    /// The ranks agreed to run eager (`DPSyncState.eager`; false in "NONE but not eager").
    pub eager: bool,
    /// The agreed uniform count (`synced_uniform`); 0 = none or the ranks disagreed.
    pub uniform_token_count: i32,
    /// The agreed query-length bound (`synced_mql`, the largest); -1 = none.
    pub max_query_len: i32,
    /// The largest live request count (before graph padding).
    pub max_num_reqs: i32,
    /// Every live rank allows skipping drafts.
    pub skip_drafts: bool,
    /// A per-rank token array exists: false when idle and for dp_size 1.
    pub has_array: bool,
    /// Every rank runs `graph.num_tokens` (vLLM 2.5 and 2.7); false in the eager case and idle.
    pub padded: bool,
    /// This rank's entry of the array (its own tokens when eager; 0 when idle).
    pub num_tokens_self: i32,
    /// The largest live `num_tokens` (`T*`).
    pub max_num_tokens: i32,
    /// The smallest live `num_tokens`.
    pub min_num_tokens: i32,
}

impl std::fmt::Display for Agreement {
    /// The agreement as the TRACE log writes it: `idle 0 graph FULL 40t/40r u1 q- x2 eager 0
    /// uniform 1 mql 1 reqs 40 skip 0 tokens self 40 max 40 min 32 array 1 padded 1`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "idle {} graph {} eager {} uniform {} mql {} reqs {} skip {} tokens self {} max {} \
             min {} array {} padded {}",
            u8::from(self.idle),
            self.graph,
            u8::from(self.eager),
            self.uniform_token_count,
            self.max_query_len,
            self.max_num_reqs,
            u8::from(self.skip_drafts),
            self.num_tokens_self,
            self.max_num_tokens,
            self.min_num_tokens,
            u8::from(self.has_array),
            u8::from(self.padded)
        )
    }
}

/// What the array holds after a decision.
#[derive(Clone, Copy)]
pub(crate) enum Fill {
    /// No array (idle, dp_size 1).
    Nothing,
    /// The same count on every slot, dead ones too.
    All(i32),
    /// Row 0 as exchanged: each live rank's own tokens, dead slots 0.
    Row0,
}

/// The decision of a step with dp_size > 1 (`VLLM_V2.md` 2.3-2.7) from the live aggregates,
/// this rank's own record, the configuration and the table; and what the array holds.
#[inline(always)]
pub(crate) fn decide_many(
    s: &Summary,
    own: &V2Record,
    cfg: &V2Config,
    table: Option<&GraphTable>,
) -> (Agreement, Fill) {
    let base = Agreement {
        idle: false,
        graph: Descriptor::none(0, 0, 0, 1),
        eager: false,
        uniform_token_count: s.synced_uniform,
        max_query_len: s.synced_mql,
        max_num_reqs: s.max_reqs,
        skip_drafts: s.skip_drafts,
        has_array: true,
        padded: true,
        num_tokens_self: 0,
        max_num_tokens: s.max_tokens,
        min_num_tokens: s.min_tokens,
    };
    // 2.4: all idle (every live T is 0; T >= 0 is checked).
    if s.max_tokens == 0 {
        let a = Agreement {
            idle: true,
            has_array: false,
            padded: false,
            ..base
        };
        return (a, Fill::Nothing);
    }
    let t_star = s.max_tokens;
    // 2.5: microbatching (row 1 ignored).
    if s.all_ubatch && cfg.ubatch_enabled {
        let uniform_decode = s.synced_uniform == cfg.decode_query_len;
        let threshold = if uniform_decode {
            cfg.decode_token_threshold
        } else {
            cfg.prefill_token_threshold
        };
        if s.min_tokens >= threshold {
            let n = cfg.num_ubatches;
            let d = table
                .map(|t| {
                    t.dispatch(
                        own.num_reqs,
                        t_star,
                        s.synced_uniform,
                        own.num_active_loras,
                        -1,
                        n,
                    )
                })
                .filter(|d| 2 * i64::from(s.min_tokens) >= i64::from(d.num_tokens))
                .unwrap_or(Descriptor::none(t_star, own.num_reqs, 0, n));
            let a = Agreement {
                graph: d,
                eager: d.mode == DP_CUDAGRAPH_NONE,
                num_tokens_self: d.num_tokens,
                ..base
            };
            return (a, Fill::All(d.num_tokens));
        }
    }
    // 2.6: any rank eager makes every rank eager, unpadded.
    if s.min_mode == DP_CUDAGRAPH_NONE {
        let a = Agreement {
            graph: Descriptor::none(own.num_tokens, own.num_reqs, own.num_active_loras, 1),
            eager: true,
            padded: false,
            num_tokens_self: own.num_tokens,
            ..base
        };
        return (a, Fill::Row0);
    }
    // 2.7: the agreed graph for T* ("NONE but not eager" when there is none).
    let d = match table {
        Some(t) => t.dispatch(
            own.num_reqs,
            t_star,
            s.synced_uniform,
            own.num_active_loras,
            s.synced_mql,
            1,
        ),
        None => untabled(
            s.min_mode,
            t_star,
            own.num_reqs,
            s.synced_uniform,
            s.synced_mql,
            own.num_active_loras,
        ),
    };
    let a = Agreement {
        graph: d,
        num_tokens_self: d.num_tokens,
        ..base
    };
    (a, Fill::All(d.num_tokens))
}

/// The decision of dp_size 1 (vLLM returns the own descriptor and no state): the own
/// descriptor rebuilt from the record, no array, the agreement holding the rank's own
/// values; idle when it has no tokens (then not eager: nothing runs).
pub(crate) fn decide_one(own: &V2Record, table: Option<&GraphTable>) -> Agreement {
    let (t, r, loras) = (own.num_tokens, own.num_reqs, own.num_active_loras);
    let graph = if own.cg_mode == DP_CUDAGRAPH_NONE {
        Descriptor::none(t, r, loras, 1)
    } else {
        match table {
            Some(table) => {
                table.dispatch(r, t, own.uniform_token_count, loras, own.max_query_len, 1)
            }
            None => untabled(
                own.cg_mode,
                t,
                r,
                own.uniform_token_count,
                own.max_query_len,
                loras,
            ),
        }
    };
    let idle = t == 0;
    Agreement {
        idle,
        graph,
        eager: !idle && graph.mode == DP_CUDAGRAPH_NONE,
        uniform_token_count: own.uniform_token_count,
        max_query_len: own.max_query_len,
        max_num_reqs: r,
        skip_drafts: own.allow_skip_drafts == 1,
        has_array: false,
        padded: false,
        num_tokens_self: t,
        max_num_tokens: t,
        min_num_tokens: t,
    }
}

/// `dp_size >= 1`, `dp_rank` in range, `out` (when given) of `dp_size` entries.
#[inline(always)]
pub(crate) fn check_shape(dp_size: i64, dp_rank: i32, out: Option<&[i32]>) -> Result<()> {
    if dp_size < 1 {
        return Err(invalid!("dp_size = {dp_size} must be >= 1"));
    }
    if dp_rank < 0 || i64::from(dp_rank) >= dp_size {
        return Err(invalid!(
            "dp_rank = {dp_rank} must be in 0..{} (dp_size = {dp_size})",
            dp_size - 1
        ));
    }
    if let Some(out) = out {
        if out.len() as i64 != dp_size {
            return Err(invalid!(
                "out holds {} entries, dp_size = {dp_size} needed",
                out.len()
            ));
        }
    }
    Ok(())
}

/// The V2 decision over every rank's record (`records[r]` is rank r's; `VLLM_V2.md` 2.2-2.7).
///
/// `live`: `None` when every rank is live, else one byte per rank, 1 live, 0 dead; a dead
/// rank's record is neither read nor validated and takes no part in any aggregate, and the
/// array keeps full width. `dp_rank` must be live. `cfg` is [`V2Config::of`] and `table` the
/// graph table (both identical on every rank). `out`, when given, has dp_size entries and
/// receives every rank's tokens after padding (dead slots: the padded count, or 0 when
/// eager), only on success and only when the agreement has an array (not for dp_size 1 or an
/// idle step). No allocation.
#[inline(always)]
pub fn decide_v2(
    records: &[V2Record],
    dp_rank: i32,
    live: Option<&[u8]>,
    cfg: &V2Config,
    table: Option<&GraphTable>,
    out: Option<&mut [i32]>,
) -> Result<Agreement> {
    decide_v2_with(records.len(), dp_rank, live, cfg, table, out, |r| {
        bytemuck::cast(records[r])
    })
}

/// [`decide_v2`] over `n` records wherever they are (`word(r)` is record r's eight words):
/// the one implementation behind the record slice and the gathered slots.
#[inline(always)]
pub(crate) fn decide_v2_with(
    n: usize,
    dp_rank: i32,
    live: Option<&[u8]>,
    cfg: &V2Config,
    table: Option<&GraphTable>,
    out: Option<&mut [i32]>,
    word: impl Fn(usize) -> [i32; pass::W],
) -> Result<Agreement> {
    check_shape(n as i64, dp_rank, out.as_deref())?;
    if let Some(live) = live {
        check_active_ranks(live, n, dp_rank)?;
    }
    cfg.check()?;
    let summary = Summary::of_with(n, live, &word)?;
    let own: V2Record = bytemuck::cast(word(dp_rank as usize));
    if n == 1 {
        return Ok(decide_one(&own, table));
    }
    let (agreement, fill) = decide_many(&summary, &own, cfg, table);
    if let Some(out) = out {
        match fill {
            Fill::Nothing => {}
            Fill::All(v) => out.fill(v),
            Fill::Row0 => {
                for (r, slot) in out.iter_mut().enumerate() {
                    let is_live = live.map_or(true, |l| l[r] == 1);
                    *slot = if is_live { word(r)[0] } else { 0 };
                }
            }
        }
    }
    Ok(agreement)
}

mod pass;
#[cfg(test)]
mod tests;
