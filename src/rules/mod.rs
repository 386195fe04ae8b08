//! The decision rules (docs/ARCHITECTURE.md, "Semantics"): pure, allocation-free, no FFI and
//! no CUDA.
//!
//! [`make_record`] turns one rank's request into its 20-byte wire record; [`decide`] turns
//! every rank's record into the decision all ranks share.

use crate::error::{invalid, Error, ErrorKind, Result};
pub use crate::slot::{RankRecord, V2Record};

pub mod graphs;
pub mod local;
pub(crate) mod slots;
pub mod v2;

pub use graphs::{Descriptor, Graph, GraphTable, DP_MAX_GRAPHS};
pub use local::{
    decide_local_v1, decide_local_v2, reuse_agreement, uniform_draft_agreement, Prior,
};
pub use v2::{check_v2_request, decide_v2, make_v2_record, Agreement, V2Config};

// The policy and mode constants are the header's own (`ffi` re-exports them, cbindgen writes
// them from here): one source for the C API, the rules and the kernel's layout.h.

/// `pad_policy`: pad iff every rank set `allow_dp_padding` (vLLM's rule).
pub const DP_PAD_POLICY_EXPLICIT: i32 = 0;
/// `pad_policy`: pad iff the synced CUDA-graph mode is not NONE (newer vLLM).
pub const DP_PAD_POLICY_WHEN_CUDAGRAPH: i32 = 1;
/// `cudagraph_mode`: no CUDA graph.
pub const DP_CUDAGRAPH_NONE: i32 = 0;
/// `cudagraph_mode`: piecewise CUDA graphs.
pub const DP_CUDAGRAPH_PIECEWISE: i32 = 1;
/// `cudagraph_mode`: full CUDA graphs (the largest legal mode).
pub const DP_CUDAGRAPH_FULL: i32 = 2;
/// `rules`: vLLM's V1 rules (docs/ARCHITECTURE.md, "Semantics"), the default.
pub const DP_RULES_VLLM_V1: i32 = 0;
/// `rules`: vLLM's model runner V2 rules (docs/ARCHITECTURE.md, "The V2 rule set").
pub const DP_RULES_VLLM_V2: i32 = 1;
/// Default `num_ubatches`.
pub const DEFAULT_NUM_UBATCHES: i32 = 2;
/// Default `decode_token_threshold`.
pub const DEFAULT_DECODE_TOKEN_THRESHOLD: i32 = 32;
/// Default `prefill_token_threshold`.
pub const DEFAULT_PREFILL_TOKEN_THRESHOLD: i32 = 512;

/// Microbatching configuration (vLLM's `enable_dbo` and its thresholds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UbatchConfig {
    /// Microbatching is configured at all; when false the other fields are ignored.
    pub enabled: bool,
    /// Microbatches per step (>= 2 when enabled).
    pub num_ubatches: i32,
    /// Minimum tokens of a uniform-decode batch for microbatching (>= num_ubatches when enabled).
    pub decode_token_threshold: i32,
    /// Minimum tokens of a batch containing prefill for microbatching (>= num_ubatches when
    /// enabled).
    pub prefill_token_threshold: i32,
}

impl Default for UbatchConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            num_ubatches: DEFAULT_NUM_UBATCHES,
            decode_token_threshold: DEFAULT_DECODE_TOKEN_THRESHOLD,
            prefill_token_threshold: DEFAULT_PREFILL_TOKEN_THRESHOLD,
        }
    }
}

/// One rank's request for this step, as plain values (the C struct minus `struct_size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Request {
    /// Tokens this rank schedules (>= 0).
    pub num_tokens_unpadded: i32,
    /// Tokens incl. non-DP padding; -1 means "same as unpadded".
    pub num_tokens_padded: i32,
    /// The caller wants microbatching considered.
    pub allow_microbatching: bool,
    /// The caller wants every rank padded to the same count (EXPLICIT policy).
    pub allow_dp_padding: bool,
    /// 1 uniform decode, 0 contains prefill, -1 unknown (only without microbatching).
    pub uniform_decode: i32,
    /// 0 NONE, 1 PIECEWISE, 2 FULL.
    pub cudagraph_mode: i32,
    /// 0 EXPLICIT, 1 WHEN_CUDAGRAPH.
    pub pad_policy: i32,
    /// Microbatching configuration.
    pub ubatch: UbatchConfig,
    /// 0 waits forever; > 0 bounds the blocking wait in milliseconds.
    pub timeout_ms: i32,
    /// The caller's step counter; 0 = unchecked, else equal on every rank.
    pub step_id: i64,
    /// The rule set: [`DP_RULES_VLLM_V1`] or [`DP_RULES_VLLM_V2`]; equal on every rank.
    pub rules: i32,
    /// For a draft (speculator) agreement, the step it belongs to; 0 = none.
    pub parent_step_id: i64,
    /// V2: the requests this rank schedules (>= 0).
    pub num_reqs: i32,
    /// V2: the per-request query length of a uniform batch (>= 1); 0 = none.
    pub uniform_token_count: i32,
    /// V2: the largest query length when the batch may use varlen decode graphs (>= 1);
    /// -1 = none.
    pub max_query_len: i32,
    /// V2: active LoRA adapters on this rank (>= 0); local, never exchanged.
    pub num_active_loras: i32,
    /// V2: none of this rank's requests can use this step's drafts.
    pub allow_skip_drafts: bool,
    /// V2: this rank must run eager (its own graph is NONE).
    pub need_eager: bool,
}

impl Default for Request {
    fn default() -> Self {
        Self {
            num_tokens_unpadded: 0,
            num_tokens_padded: -1,
            allow_microbatching: false,
            allow_dp_padding: false,
            uniform_decode: -1,
            cudagraph_mode: DP_CUDAGRAPH_NONE,
            pad_policy: DP_PAD_POLICY_EXPLICIT,
            ubatch: UbatchConfig::default(),
            timeout_ms: 0,
            step_id: 0,
            rules: DP_RULES_VLLM_V1,
            parent_step_id: 0,
            num_reqs: 0,
            uniform_token_count: 0,
            max_query_len: -1,
            num_active_loras: 0,
            allow_skip_drafts: false,
            need_eager: false,
        }
    }
}

impl Request {
    /// Checks every field against its range; the error names the field and the value.
    pub fn validate(&self) -> Result<()> {
        if self.num_tokens_unpadded < 0 {
            return Err(invalid!(
                "num_tokens_unpadded = {} must be >= 0",
                self.num_tokens_unpadded
            ));
        }
        if self.num_tokens_padded != -1 && self.num_tokens_padded < self.num_tokens_unpadded {
            return Err(invalid!(
                "num_tokens_padded = {} must be -1 or >= num_tokens_unpadded = {}",
                self.num_tokens_padded,
                self.num_tokens_unpadded
            ));
        }
        match self.uniform_decode {
            0 | 1 => {}
            // V2 derives the flag from the agreed uniform count: the field is not read.
            -1 if !self.allow_microbatching || self.rules == DP_RULES_VLLM_V2 => {}
            -1 => {
                return Err(invalid!(
                    "uniform_decode = -1 (unknown) is only legal when allow_microbatching is false"
                ))
            }
            v => return Err(invalid!("uniform_decode = {v} must be -1, 0 or 1")),
        }
        if !mode_ok(self.cudagraph_mode) {
            return Err(invalid!(
                "cudagraph_mode = {} {MODE_RANGE}",
                self.cudagraph_mode
            ));
        }
        check_pad_policy(self.pad_policy)?;
        if self.ubatch.enabled {
            check_num_ubatches("ubatch.num_ubatches", self.ubatch.num_ubatches)?;
            let thresholds = [
                (
                    "ubatch.decode_token_threshold",
                    self.ubatch.decode_token_threshold,
                ),
                (
                    "ubatch.prefill_token_threshold",
                    self.ubatch.prefill_token_threshold,
                ),
            ];
            // vLLM's config rejects lower thresholds: they let a step with fewer tokens than
            // microbatches attempt microbatching, whose first microbatch is then empty.
            let n = self.ubatch.num_ubatches;
            for (field, value) in thresholds {
                if value < n {
                    return Err(invalid!(
                        "{field} = {value} must be >= ubatch.num_ubatches = {n} when \
                         microbatching is enabled"
                    ));
                }
            }
        }
        if self.timeout_ms < 0 {
            return Err(invalid!(
                "timeout_ms = {} must be >= 0 (0 waits forever)",
                self.timeout_ms
            ));
        }
        if self.step_id < 0 {
            return Err(invalid!(
                "step_id = {} must be >= 0 (0 = unchecked)",
                self.step_id
            ));
        }
        self.validate_0_3()
    }

    /// The checks of the 0.3 fields (rule set, parent step, the V2 inputs).
    fn validate_0_3(&self) -> Result<()> {
        match self.rules {
            DP_RULES_VLLM_V1 | DP_RULES_VLLM_V2 => {}
            v => return Err(invalid!("rules = {v} must be 0 (VLLM_V1) or 1 (VLLM_V2)")),
        }
        if self.parent_step_id < 0 {
            return Err(invalid!(
                "parent_step_id = {} must be >= 0 (0 = none)",
                self.parent_step_id
            ));
        }
        for (field, value) in [
            ("num_reqs", self.num_reqs),
            ("uniform_token_count", self.uniform_token_count),
            ("num_active_loras", self.num_active_loras),
        ] {
            if value < 0 {
                return Err(invalid!("{field} = {value} must be >= 0"));
            }
        }
        if self.max_query_len != -1 && self.max_query_len < 1 {
            return Err(invalid!(
                "max_query_len = {} must be -1 (none) or >= 1",
                self.max_query_len
            ));
        }
        if self.rules == DP_RULES_VLLM_V2 {
            check_v2_request(self)?;
        }
        Ok(())
    }

    /// The `num_ubatches` to decide with: the configured one when microbatching is
    /// enabled, else the default (no rank with it disabled attempts microbatching).
    pub fn effective_num_ubatches(&self) -> i32 {
        if self.ubatch.enabled {
            self.ubatch.num_ubatches
        } else {
            DEFAULT_NUM_UBATCHES
        }
    }
}

/// The local step: validates `req` and builds this rank's wire record.
pub fn make_record(req: &Request) -> Result<RankRecord> {
    req.validate()?;
    let threshold = if req.uniform_decode == 1 {
        req.ubatch.decode_token_threshold
    } else {
        req.ubatch.prefill_token_threshold
    };
    let attempt_ubatch =
        req.allow_microbatching && req.ubatch.enabled && req.num_tokens_unpadded >= threshold;
    let padded = if req.num_tokens_padded == -1 {
        req.num_tokens_unpadded
    } else {
        req.num_tokens_padded
    };
    Ok(RankRecord {
        num_tokens_unpadded: req.num_tokens_unpadded,
        num_tokens_padded: padded,
        should_attempt_ubatch: i32::from(attempt_ubatch),
        should_attempt_dp_pad: i32::from(req.allow_dp_padding),
        cudagraph_mode: req.cudagraph_mode,
    })
}

/// The decision every rank reaches from the same records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Every rank microbatches this step.
    pub should_ubatch: bool,
    /// Every rank is padded to `max_num_tokens_padded`.
    pub should_dp_pad: bool,
    /// A per-rank tokens-after-padding array exists (false only when dp_size == 1).
    pub has_num_tokens_after_padding: bool,
    /// The minimum CUDA-graph mode across ranks.
    pub synced_cudagraph_mode: i32,
    /// This rank's tokens after padding.
    pub num_tokens_after_padding_self: i32,
    /// Maximum padded token count across ranks.
    pub max_num_tokens_padded: i32,
    /// Minimum unpadded token count across ranks.
    pub min_num_tokens_unpadded: i32,
    /// Microbatches this step runs: `num_ubatches` when microbatching, else 1.
    pub num_ubatches: i32,
}

impl std::fmt::Display for Decision {
    /// The decision as the TRACE log writes it: `ubatch 1 dp_pad 1 cudagraph 2 tokens self 96
    /// max 96 min 64`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ubatch {} dp_pad {} cudagraph {} tokens self {} max {} min {}",
            u8::from(self.should_ubatch),
            u8::from(self.should_dp_pad),
            self.synced_cudagraph_mode,
            self.num_tokens_after_padding_self,
            self.max_num_tokens_padded,
            self.min_num_tokens_unpadded
        )
    }
}

/// The step id every live rank agrees on: 0 when every live rank passed 0 (unchecked), else
/// the one id every live rank passed. `live[r] == 0` marks a dead slot (not compared); `None`
/// means every rank is live. Differing ids are [`ErrorKind::InconsistentRanks`] naming two
/// ranks and their ids.
///
/// One branch-free pass compares every (live) id with the first live one; only a mismatch or a
/// negative id walks them again, to name the ranks.
#[inline(always)]
pub fn check_step_ids(step_ids: &[i64], live: Option<&[u8]>) -> Result<i64> {
    let first_live = match live {
        None => (!step_ids.is_empty()).then_some(0),
        Some(l) => l.iter().position(|&b| b != 0),
    };
    let Some(r0) = first_live else {
        return Ok(0);
    };
    let id0 = step_ids[r0];
    let (differ, sign) = match live {
        None => step_ids
            .iter()
            .fold((0i64, 0i64), |(d, n), &id| (d | (id ^ id0), n | id)),
        Some(l) => step_ids
            .iter()
            .zip(l)
            .fold((0i64, 0i64), |(d, n), (&id, &b)| {
                let m = -i64::from(b != 0);
                (d | ((id ^ id0) & m), n | (id & m))
            }),
    };
    if differ == 0 && sign >= 0 {
        return Ok(id0);
    }
    let is_live = |r: usize| live.map_or(true, |l| l[r] != 0);
    let mut first: Option<(usize, i64)> = None;
    for (rank, &id) in step_ids.iter().enumerate() {
        if !is_live(rank) {
            continue;
        }
        if id < 0 {
            return Err(invalid!(
                "step_ids[{rank}] = {id} must be >= 0 (0 = unchecked)"
            ));
        }
        match first {
            None => first = Some((rank, id)),
            Some((r0, id0)) if id0 != id => {
                return Err(Error::new(
                    ErrorKind::InconsistentRanks,
                    format!(
                        "step ids differ across ranks: rank {r0} passed step_id {id0}, rank \
                         {rank} passed step_id {id}; every rank must pass the same step_id \
                         (a rank is a step ahead or behind)"
                    ),
                ));
            }
            Some(_) => {}
        }
    }
    Ok(first.map_or(0, |(_, id)| id))
}

/// Checks the decision parameters that do not depend on the records.
pub fn check_decide_args(
    dp_size: i64,
    dp_rank: i32,
    pad_policy: i32,
    num_ubatches: i32,
) -> Result<()> {
    if dp_size < 1 {
        return Err(invalid!("dp_size = {dp_size} must be >= 1"));
    }
    if dp_rank < 0 || i64::from(dp_rank) >= dp_size {
        return Err(invalid!(
            "dp_rank = {dp_rank} must be in 0..{} (dp_size = {dp_size})",
            dp_size - 1
        ));
    }
    check_pad_policy(pad_policy)?;
    check_num_ubatches("num_ubatches", num_ubatches)
}

/// What a decision needs beyond the records: the C `dp_decide_options`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecideOptions<'a> {
    /// 0 EXPLICIT, 1 WHEN_CUDAGRAPH.
    pub pad_policy: i32,
    /// Microbatches per step (>= 2).
    pub num_ubatches: i32,
    /// `None`: every rank is live; else one byte per rank, 1 live, 0 dead (vLLM's
    /// `neutralize_dead_dp_columns`: a dead slot's record is not validated and takes no part).
    pub active_ranks: Option<&'a [u8]>,
    /// `None`: unchecked; else one step id per rank, compared over the live ranks.
    pub step_ids: Option<&'a [i64]>,
}

impl DecideOptions<'_> {
    /// Every rank live, step ids unchecked: the options of `dp_decide_batch`.
    pub fn new(pad_policy: i32, num_ubatches: i32) -> Self {
        Self {
            pad_policy,
            num_ubatches,
            active_ranks: None,
            step_ids: None,
        }
    }
}

/// The decision (docs/ARCHITECTURE.md, "Semantics") over every rank's record (`records[r]` is
/// rank r's), every rank live and step ids unchecked: [`decide_with_options`] with
/// [`DecideOptions::new`].
pub fn decide(
    records: &[RankRecord],
    dp_rank: i32,
    pad_policy: i32,
    num_ubatches: i32,
    out: Option<&mut [i32]>,
) -> Result<Decision> {
    let options = DecideOptions::new(pad_policy, num_ubatches);
    decide_with_options(records, dp_rank, &options, out).map(|(decision, _)| decision)
}

/// The decision over every live rank's record, and the step id the live ranks agree on (0 when
/// unchecked or every live rank passed 0).
///
/// A dead slot (`active_ranks[r] == 0`) is neither validated nor counted: it votes yes on
/// microbatching, takes no part in min(unpadded), max(padded) and min(cudagraph_mode), and its
/// pad flag is not compared; its `out` entry is max(padded) of the live ranks when padding,
/// else 0. `dp_rank` must be live. When `out` is given (length `records.len()`), it receives
/// every rank's tokens after padding, and only on success; for dp_size == 1 it is untouched.
#[inline(always)]
pub fn decide_with_options(
    records: &[RankRecord],
    dp_rank: i32,
    options: &DecideOptions<'_>,
    out: Option<&mut [i32]>,
) -> Result<(Decision, i64)> {
    let dp_size = records.len();
    check_decide_args(
        dp_size as i64,
        dp_rank,
        options.pad_policy,
        options.num_ubatches,
    )?;
    let live = options.active_ranks;
    if let Some(live) = live {
        check_active_ranks(live, dp_size, dp_rank)?;
    }
    let step_id = match options.step_ids {
        Some(ids) if ids.len() != dp_size => {
            return Err(invalid!(
                "step_ids holds {} entries, dp_size = {dp_size} needed",
                ids.len()
            ))
        }
        Some(ids) => check_step_ids(ids, live)?,
        None => 0,
    };
    let summary = Summary::of(records, live)?;
    let own = records[dp_rank as usize];
    let decision = decide_summary(
        &summary,
        own,
        dp_size,
        options.pad_policy,
        options.num_ubatches,
    )?;
    if let (Some(out), true) = (out, decision.has_num_tokens_after_padding) {
        fill_after_padding(out, live, decision.should_dp_pad, summary.max_padded, |r| {
            records[r].num_tokens_padded
        });
    }
    Ok((decision, step_id))
}

/// The V1 decision from the live records' [`Summary`], this rank's own record, the rank count
/// and the step's settings (`n` = num_ubatches).
#[inline(always)]
fn decide_summary(
    summary: &Summary,
    own: RankRecord,
    dp_size: usize,
    pad_policy: i32,
    n: i32,
) -> Result<Decision> {
    if dp_size == 1 {
        return Ok(Decision {
            should_ubatch: false,
            should_dp_pad: false,
            has_num_tokens_after_padding: false,
            synced_cudagraph_mode: own.cudagraph_mode,
            num_tokens_after_padding_self: own.num_tokens_padded,
            max_num_tokens_padded: own.num_tokens_padded,
            min_num_tokens_unpadded: own.num_tokens_unpadded,
            num_ubatches: 1,
        });
    }
    let n64 = i64::from(n);
    let last_ubatch_empty =
        (i64::from(summary.max_padded) / n64) * (n64 - 1) >= i64::from(summary.min_unpadded);
    let should_ubatch = summary.all_attempt_ubatch && !last_ubatch_empty;
    let policy_pad = if pad_policy == DP_PAD_POLICY_EXPLICIT {
        if let Some((padding_rank, other_rank)) = summary.dp_pad_disagreement {
            return Err(Error::new(
                ErrorKind::InconsistentRanks,
                format!(
                    "should_attempt_dp_pad (allow_dp_padding) differs across ranks under \
                     pad_policy EXPLICIT: rank {padding_rank} has 1, rank {other_rank} has 0; \
                     every rank must pass the same allow_dp_padding"
                ),
            ));
        }
        summary.all_attempt_dp_pad
    } else {
        summary.min_mode != DP_CUDAGRAPH_NONE
    };
    let should_dp_pad = policy_pad || should_ubatch;
    Ok(Decision {
        should_ubatch,
        should_dp_pad,
        has_num_tokens_after_padding: true,
        synced_cudagraph_mode: summary.min_mode,
        num_tokens_after_padding_self: if should_dp_pad {
            summary.max_padded
        } else {
            own.num_tokens_padded
        },
        max_num_tokens_padded: summary.max_padded,
        min_num_tokens_unpadded: summary.min_unpadded,
        num_ubatches: if should_ubatch { n } else { 1 },
    })
}

/// Every rank's tokens after padding: max(padded) when padding, else its own padded count
/// (`padded(r)`); a dead slot's is max(padded) when padding, else 0 (its record is not read).
#[inline(always)]
fn fill_after_padding(
    out: &mut [i32],
    live: Option<&[u8]>,
    pad: bool,
    max_padded: i32,
    padded: impl Fn(usize) -> i32,
) {
    match (pad, live) {
        (true, _) => out.fill(max_padded),
        (false, None) => {
            for (r, slot) in out.iter_mut().enumerate() {
                *slot = padded(r);
            }
        }
        (false, Some(live)) => {
            for (r, (slot, &l)) in out.iter_mut().zip(live).enumerate() {
                *slot = if l == 1 { padded(r) } else { 0 };
            }
        }
    }
}

/// `active_ranks`: `dp_size` bytes, each 0 (dead) or 1 (live), the calling rank live.
#[inline(always)]
fn check_active_ranks(live: &[u8], dp_size: usize, dp_rank: i32) -> Result<()> {
    if live.len() != dp_size {
        return Err(invalid!(
            "active_ranks holds {} entries, dp_size = {dp_size} needed",
            live.len()
        ));
    }
    if live.iter().fold(0u8, |bad, &b| bad | (b & !1)) != 0 {
        let (rank, byte) = live
            .iter()
            .enumerate()
            .find(|&(_, &b)| b > 1)
            .map(|(r, &b)| (r, b))
            .unwrap_or_default();
        return Err(invalid!(
            "active_ranks[{rank}] = {byte} must be 0 (dead) or 1 (live)"
        ));
    }
    if live[dp_rank as usize] == 0 {
        let live_count = live.iter().map(|&b| usize::from(b)).sum::<usize>();
        return Err(invalid!(
            "active_ranks[{dp_rank}] = 0 but dp_rank = {dp_rank} is the calling rank, which must \
             be live ({live_count} of {dp_size} ranks are live)"
        ));
    }
    Ok(())
}

/// Aggregates of one validated pass over the live records.
struct Summary {
    min_unpadded: i32,
    max_padded: i32,
    min_mode: i32,
    all_attempt_ubatch: bool,
    all_attempt_dp_pad: bool,
    /// `(a live rank with dp_pad 1, a live rank with dp_pad 0)` when the flags differ.
    dp_pad_disagreement: Option<(usize, usize)>,
}

/// Records per block of the pass: 8 records are 40 words, five 256-bit or ten 128-bit
/// vectors.
const BLOCK: usize = 8;
/// Words per block.
const WORDS: usize = 5 * BLOCK;
/// Words per vector of the pass (256 bits).
const LANES: usize = 8;

/// Running aggregates over records, word by word: `lo[i]` is the minimum and `hi[i]` the
/// maximum seen in word `i` of a block (word `i` is field `i % 5` of a record). The same two
/// operations on every word let the pass run as plain vector min/max, without a branch and
/// without regrouping the fields:
/// - `lo` gives min(unpadded), min(padded) >= 0, min(ubatch) (= all), min(dp_pad) (= all),
///   min(mode); `hi` gives max(padded), max(ubatch), max(dp_pad) (= any), max(mode).
/// - `hi` of the unpadded word instead folds `unpadded - padded`: the padded word is the
///   word after it in the flat word stream (`RankRecord::words`), so the block's words
///   shifted by one, masked to the unpadded lanes, are subtracted from the block's words (the
///   compiler builds the few lanes needed with broadcasts and in-lane shuffles).
///   max(unpadded - padded) <= 0 is "padded >= unpadded" for every record. The wrapping
///   difference is exact once min(unpadded) and min(padded) are >= 0, which the same pass
///   establishes; where they are not, the record is invalid anyway.
#[derive(Clone, Copy)]
struct Acc {
    lo: [i32; WORDS],
    hi: [i32; WORDS],
}

/// `-1` at the unpadded words of a block (word `i` with `i % 5 == 0`), else `0`.
const UNPADDED_LANES: [i32; WORDS] = {
    let mut m = [0i32; WORDS];
    let mut i = 0;
    while i < WORDS {
        m[i] = -1;
        i += 5;
    }
    m
};

impl Acc {
    const EMPTY: Acc = Acc {
        lo: [i32::MAX; WORDS],
        hi: [i32::MIN; WORDS],
    };

    /// Folds the records of words `words[begin..end]` (a run of consecutive live records;
    /// `begin` and `end` multiples of 5).
    ///
    /// Min and max are idempotent, so blocks may overlap: a run of 8 or more records is
    /// folded block by block, its last (partial) block as the block ending at its end; shorter
    /// runs are folded record by record.
    #[inline(always)]
    fn add_run(&mut self, words: &[i32], begin: usize, end: usize) {
        let run = &words[begin..end];
        if run.len() < WORDS {
            for w in run.chunks_exact(5) {
                for (i, &v) in w.iter().enumerate() {
                    self.lo[i] = self.lo[i].min(v);
                }
                self.hi[0] = self.hi[0].max(w[0].wrapping_sub(w[1]));
                for (i, &v) in w.iter().enumerate().skip(1) {
                    self.hi[i] = self.hi[i].max(v);
                }
            }
            return;
        }
        let block_at =
            |at: usize| -> &[i32; WORDS] { run[at..at + WORDS].try_into().expect("WORDS words") };
        let mut at = 0;
        while at + WORDS <= run.len() {
            self.fold(block_at(at));
            at += WORDS;
        }
        if at != run.len() {
            self.fold(block_at(run.len() - WORDS));
        }
    }

    /// Folds one block as five 8-lane vectors.
    #[inline(always)]
    fn fold(&mut self, block: &[i32; WORDS]) {
        for v in 0..WORDS / LANES {
            let at = LANES * v;
            let w: [i32; LANES] = block[at..at + LANES].try_into().expect("LANES words");
            // The word after each (only read at the unpadded lanes, whose next word is the
            // same record's padded count: inside the block).
            let next: [i32; LANES] =
                std::array::from_fn(|j| block.get(at + j + 1).map_or(0, |&x| x));
            let lo: &mut [i32; LANES] = (&mut self.lo[at..at + LANES])
                .try_into()
                .expect("LANES words");
            let hi: &mut [i32; LANES] = (&mut self.hi[at..at + LANES])
                .try_into()
                .expect("LANES words");
            for j in 0..LANES {
                let padded = next[j] & UNPADDED_LANES[at + j];
                lo[j] = lo[j].min(w[j]);
                hi[j] = hi[j].max(w[j].wrapping_sub(padded));
            }
        }
    }

    /// Per field `f`, `(min, max)` over every word of that field (words `f, f + 5, ...`).
    #[inline(always)]
    fn fields(&self) -> ([i32; 5], [i32; 5]) {
        let mut lo = [i32::MAX; 5];
        let mut hi = [i32::MIN; 5];
        for (l, h) in self.lo.chunks_exact(5).zip(self.hi.chunks_exact(5)) {
            for f in 0..5 {
                lo[f] = lo[f].min(l[f]);
                hi[f] = hi[f].max(h[f]);
            }
        }
        (lo, hi)
    }
}

/// Every maximal run `[begin, end)` of live ranks (`live[r] == 1`), in order.
struct LiveRuns<'a> {
    live: &'a [u8],
    r: usize,
}

impl Iterator for LiveRuns<'_> {
    type Item = (usize, usize);

    #[inline(always)]
    fn next(&mut self) -> Option<(usize, usize)> {
        /// Mask bytes checked at once for "all live".
        const CHUNK: usize = 64;
        let live = self.live;
        let mut r = self.r;
        while r < live.len() && live[r] != 1 {
            r += 1;
        }
        if r == live.len() {
            self.r = r;
            return None;
        }
        let begin = r;
        while r + CHUNK <= live.len() && live[r..r + CHUNK].iter().fold(1u8, |a, &b| a & b) == 1 {
            r += CHUNK;
        }
        while r < live.len() && live[r] == 1 {
            r += 1;
        }
        self.r = r;
        Some((begin, r))
    }
}

impl Summary {
    /// One branch-free pass over the live records (the whole slice when every rank is live,
    /// else each run of live ranks); only the error path walks them again, to name the first
    /// bad field or the two disagreeing ranks.
    #[inline(always)]
    fn of(records: &[RankRecord], live: Option<&[u8]>) -> Result<Self> {
        // The records as flat words (a layout cast).
        let words = RankRecord::words(records);
        let mut acc = Acc::EMPTY;
        match live {
            None => acc.add_run(words, 0, words.len()),
            Some(live) => {
                for (begin, end) in (LiveRuns { live, r: 0 }) {
                    acc.add_run(words, 5 * begin, 5 * end);
                }
            }
        }
        Self::from_acc(&acc, records.len(), live, |rank| records[rank])
    }

    /// The summary from the accumulated words of the live records; `record(r)` is rank r's
    /// record, read again only on the error path (to name the first bad field) and to name two
    /// ranks whose pad flags differ.
    #[inline(always)]
    fn from_acc(
        acc: &Acc,
        dp_size: usize,
        live: Option<&[u8]>,
        record: impl Fn(usize) -> RankRecord,
    ) -> Result<Self> {
        let is_live = |rank: usize| live.map_or(true, |l| l[rank] == 1);
        let (lo, hi) = acc.fields();
        let [min_unpadded, min_padded, ubatch_lo, dp_pad_lo, mode_lo] = lo;
        let [unpadded_minus_padded, max_padded, ubatch_hi, dp_pad_hi, mode_hi] = hi;
        let valid = min_unpadded >= 0
            && min_padded >= 0
            && unpadded_minus_padded <= 0
            && ubatch_lo >= 0
            && ubatch_hi <= 1
            && dp_pad_lo >= 0
            && dp_pad_hi <= 1
            && mode_lo >= DP_CUDAGRAPH_NONE
            && mode_hi <= DP_CUDAGRAPH_FULL;
        if !valid {
            for rank in (0..dp_size).filter(|&rank| is_live(rank)) {
                check_record(rank, &record(rank))?;
            }
            return Err(Error::internal("a record failed the fast check only"));
        }
        let first = |pad: i32| {
            (0..dp_size).find(|&rank| is_live(rank) && record(rank).should_attempt_dp_pad == pad)
        };
        Ok(Summary {
            min_unpadded,
            max_padded,
            min_mode: mode_lo,
            all_attempt_ubatch: ubatch_lo == 1,
            all_attempt_dp_pad: dp_pad_lo == 1,
            dp_pad_disagreement: if dp_pad_lo != dp_pad_hi {
                first(1).zip(first(0))
            } else {
                None
            },
        })
    }
}

/// The error every rank gets for a step in which rank `rank` exchanged [`RankRecord::MARKER`].
pub(crate) fn marker_error(rank: usize) -> Error {
    invalid!(
        "records[{rank}] is the invalid-request marker (-1 in every word): rank {rank}'s \
         request was invalid (its own call names the field), so no rank decides this step"
    )
}

fn check_record(rank: usize, r: &RankRecord) -> Result<()> {
    if *r == RankRecord::MARKER {
        return Err(marker_error(rank));
    }
    if r.num_tokens_unpadded < 0 {
        return Err(invalid!(
            "records[{rank}].num_tokens_unpadded = {} must be >= 0",
            r.num_tokens_unpadded
        ));
    }
    if r.num_tokens_padded < r.num_tokens_unpadded {
        return Err(invalid!(
            "records[{rank}].num_tokens_padded = {} must be >= num_tokens_unpadded = {}",
            r.num_tokens_padded,
            r.num_tokens_unpadded
        ));
    }
    for (field, value) in [
        ("should_attempt_ubatch", r.should_attempt_ubatch),
        ("should_attempt_dp_pad", r.should_attempt_dp_pad),
    ] {
        if value != 0 && value != 1 {
            return Err(invalid!("records[{rank}].{field} = {value} must be 0 or 1"));
        }
    }
    if !mode_ok(r.cudagraph_mode) {
        return Err(invalid!(
            "records[{rank}].cudagraph_mode = {} {MODE_RANGE}",
            r.cudagraph_mode
        ));
    }
    Ok(())
}

/// What a legal CUDA-graph mode is, for error messages.
const MODE_RANGE: &str = "must be 0 (NONE), 1 (PIECEWISE) or 2 (FULL)";

fn mode_ok(mode: i32) -> bool {
    (DP_CUDAGRAPH_NONE..=DP_CUDAGRAPH_FULL).contains(&mode)
}

fn check_pad_policy(pad_policy: i32) -> Result<()> {
    match pad_policy {
        DP_PAD_POLICY_EXPLICIT | DP_PAD_POLICY_WHEN_CUDAGRAPH => Ok(()),
        v => Err(invalid!(
            "pad_policy = {v} must be 0 (EXPLICIT) or 1 (WHEN_CUDAGRAPH)"
        )),
    }
}

fn check_num_ubatches(field: &str, n: i32) -> Result<()> {
    if n >= 2 {
        Ok(())
    } else {
        Err(invalid!("{field} = {n} must be >= 2"))
    }
}
