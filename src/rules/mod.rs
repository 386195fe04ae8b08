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
pub mod v1;
pub mod v2;

pub use graphs::{Descriptor, Graph, GraphTable, DP_MAX_GRAPHS};
pub use local::{
    decide_local_v1, decide_local_v2, reuse_agreement, uniform_draft_agreement, Prior,
};
pub use v1::{decide, decide_with_options, make_record, DecideOptions, Decision};
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

/// `active_ranks`: `dp_size` bytes, each 0 (dead) or 1 (live), the calling rank live.
#[inline(always)]
pub(crate) fn check_active_ranks(live: &[u8], dp_size: usize, dp_rank: i32) -> Result<()> {
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

/// Every maximal run `[begin, end)` of live ranks (`live[r] == 1`), in order.
pub(crate) struct LiveRuns<'a> {
    pub(crate) live: &'a [u8],
    pub(crate) r: usize,
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

/// The error every rank gets for a step in which rank `rank` exchanged [`RankRecord::MARKER`].
pub(crate) fn marker_error(rank: usize) -> Error {
    invalid!(
        "records[{rank}] is the invalid-request marker (-1 in every word): rank {rank}'s \
         request was invalid (its own call names the field), so no rank decides this step"
    )
}

/// What a legal CUDA-graph mode is, for error messages.
pub(crate) const MODE_RANGE: &str = "must be 0 (NONE), 1 (PIECEWISE) or 2 (FULL)";

pub(crate) fn mode_ok(mode: i32) -> bool {
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
