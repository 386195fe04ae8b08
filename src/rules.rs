//! The decision rules (docs/ARCHITECTURE.md, "Semantics"): pure, allocation-free, no FFI and
//! no CUDA.
//!
//! [`make_record`] turns one rank's request into its 20-byte wire record; [`decide`] turns
//! every rank's record into the decision all ranks share.

use crate::error::{invalid, Error, ErrorKind, Result};

/// `cudagraph_mode` values: NONE.
pub const CUDAGRAPH_NONE: i32 = 0;
/// `cudagraph_mode` values: FULL (the largest legal mode).
pub const CUDAGRAPH_FULL: i32 = 2;
/// `pad_policy` EXPLICIT: pad iff every rank set `allow_dp_padding` (vLLM's rule).
pub const PAD_POLICY_EXPLICIT: i32 = 0;
/// `pad_policy` WHEN_CUDAGRAPH: pad iff the synced CUDA-graph mode is not NONE.
pub const PAD_POLICY_WHEN_CUDAGRAPH: i32 = 1;
/// Default `num_ubatches`.
pub const DEFAULT_NUM_UBATCHES: i32 = 2;
/// Default `decode_token_threshold`.
pub const DEFAULT_DECODE_TOKEN_THRESHOLD: i32 = 32;
/// Default `prefill_token_threshold`.
pub const DEFAULT_PREFILL_TOKEN_THRESHOLD: i32 = 512;

/// One rank's contribution to the exchange: five `int32_t`, the wire format.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RankRecord {
    /// Tokens this rank schedules this step.
    pub num_tokens_unpadded: i32,
    /// Tokens including non-DP padding (>= unpadded).
    pub num_tokens_padded: i32,
    /// 1 if this rank wants to microbatch, else 0.
    pub should_attempt_ubatch: i32,
    /// 1 if this rank allows DP padding, else 0.
    pub should_attempt_dp_pad: i32,
    /// This rank's CUDA-graph mode (0 NONE, 1 PIECEWISE, 2 FULL).
    pub cudagraph_mode: i32,
}

impl RankRecord {
    /// The five wire words, in record order.
    pub fn to_words(&self) -> [i32; 5] {
        [
            self.num_tokens_unpadded,
            self.num_tokens_padded,
            self.should_attempt_ubatch,
            self.should_attempt_dp_pad,
            self.cudagraph_mode,
        ]
    }

    /// The record whose wire words are `w`.
    pub fn from_words(w: [i32; 5]) -> Self {
        let [num_tokens_unpadded, num_tokens_padded, should_attempt_ubatch, should_attempt_dp_pad, cudagraph_mode] =
            w;
        Self {
            num_tokens_unpadded,
            num_tokens_padded,
            should_attempt_ubatch,
            should_attempt_dp_pad,
            cudagraph_mode,
        }
    }
}

/// Microbatching configuration (vLLM's `enable_dbo` and its thresholds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UbatchConfig {
    /// Microbatching is configured at all; when false the other fields are ignored.
    pub enabled: bool,
    /// Microbatches per step (>= 2 when enabled).
    pub num_ubatches: i32,
    /// Minimum tokens of a uniform-decode batch for microbatching (>= 0 when enabled).
    pub decode_token_threshold: i32,
    /// Minimum tokens of a batch containing prefill for microbatching (>= 0 when enabled).
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
}

impl Default for Request {
    fn default() -> Self {
        Self {
            num_tokens_unpadded: 0,
            num_tokens_padded: -1,
            allow_microbatching: false,
            allow_dp_padding: false,
            uniform_decode: -1,
            cudagraph_mode: CUDAGRAPH_NONE,
            pad_policy: PAD_POLICY_EXPLICIT,
            ubatch: UbatchConfig::default(),
            timeout_ms: 0,
            step_id: 0,
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
            -1 if !self.allow_microbatching => {}
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
            for (field, value) in thresholds {
                if value < 0 {
                    return Err(invalid!("{field} = {value} must be >= 0"));
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
}

/// The step id every live rank agrees on: 0 when every live rank passed 0 (unchecked), else
/// the one id every live rank passed. `live[r] == 0` marks a dead slot (not compared); `None`
/// means every rank is live. Differing ids are [`ErrorKind::InconsistentRanks`] naming two
/// ranks and their ids.
pub fn check_step_ids(step_ids: &[i64], live: Option<&[u8]>) -> Result<i64> {
    let is_live = |r: usize| live.map_or(true, |l| l[r] != 0);
    let mut first: Option<(usize, i64)> = None;
    for (rank, &id) in step_ids.iter().enumerate() {
        if !is_live(rank) {
            continue;
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

/// The decision (docs/ARCHITECTURE.md, "Semantics") over every rank's record (`records[r]` is rank r's).
///
/// When `out` is given (length `records.len()`), it receives the tokens after padding of
/// every rank, and only on success; for dp_size == 1 it is left untouched.
pub fn decide(
    records: &[RankRecord],
    dp_rank: i32,
    pad_policy: i32,
    num_ubatches: i32,
    out: Option<&mut [i32]>,
) -> Result<Decision> {
    check_decide_args(records.len() as i64, dp_rank, pad_policy, num_ubatches)?;
    let summary = Summary::of(records)?;
    let own = records[dp_rank as usize];
    if records.len() == 1 {
        return Ok(Decision {
            should_ubatch: false,
            should_dp_pad: false,
            has_num_tokens_after_padding: false,
            synced_cudagraph_mode: own.cudagraph_mode,
            num_tokens_after_padding_self: own.num_tokens_padded,
            max_num_tokens_padded: own.num_tokens_padded,
            min_num_tokens_unpadded: own.num_tokens_unpadded,
        });
    }
    let n = i64::from(num_ubatches);
    let last_ubatch_empty =
        (i64::from(summary.max_padded) / n) * (n - 1) >= i64::from(summary.min_unpadded);
    let should_ubatch = summary.all_attempt_ubatch && !last_ubatch_empty;
    let policy_pad = if pad_policy == PAD_POLICY_EXPLICIT {
        if let Some((padding_rank, other_rank)) = summary.dp_pad_disagreement {
            return Err(Error::new(
                ErrorKind::InconsistentRanks,
                format!(
                "should_attempt_dp_pad (allow_dp_padding) differs across ranks under pad_policy \
                 EXPLICIT: rank {padding_rank} has 1, rank {other_rank} has 0; every rank must \
                 pass the same allow_dp_padding"
            ),
            ));
        }
        summary.all_attempt_dp_pad
    } else {
        summary.min_mode != CUDAGRAPH_NONE
    };
    let should_dp_pad = policy_pad || should_ubatch;
    if let Some(out) = out {
        for (slot, record) in out.iter_mut().zip(records) {
            *slot = if should_dp_pad {
                summary.max_padded
            } else {
                record.num_tokens_padded
            };
        }
    }
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
    })
}

/// Aggregates of one validated pass over the records.
struct Summary {
    min_unpadded: i32,
    max_padded: i32,
    min_mode: i32,
    all_attempt_ubatch: bool,
    all_attempt_dp_pad: bool,
    /// `(a rank with dp_pad 1, a rank with dp_pad 0)` when the flags differ.
    dp_pad_disagreement: Option<(usize, usize)>,
}

/// Running aggregates of a slice of records: integer bit operations only, no branches, so
/// the pass pipelines (and vectorises where the target allows). The flag folds (`&`, `|`)
/// are exact once every flag is known to be 0 or 1, which `invalid` guards.
#[derive(Clone, Copy)]
struct Acc {
    invalid: u32,
    min_unpadded: i32,
    max_padded: i32,
    min_mode: i32,
    ubatch_and: i32,
    dp_pad_and: i32,
    dp_pad_or: i32,
}

impl Acc {
    const EMPTY: Acc = Acc {
        invalid: 0,
        min_unpadded: i32::MAX,
        max_padded: 0,
        min_mode: CUDAGRAPH_FULL,
        ubatch_and: 1,
        dp_pad_and: 1,
        dp_pad_or: 0,
    };

    fn add(&mut self, r: &RankRecord) {
        self.invalid |= u32::from(r.num_tokens_unpadded < 0)
            | u32::from(r.num_tokens_padded < r.num_tokens_unpadded)
            | u32::from(r.should_attempt_ubatch as u32 > 1)
            | u32::from(r.should_attempt_dp_pad as u32 > 1)
            | u32::from(r.cudagraph_mode as u32 > CUDAGRAPH_FULL as u32);
        self.min_unpadded = self.min_unpadded.min(r.num_tokens_unpadded);
        self.max_padded = self.max_padded.max(r.num_tokens_padded);
        self.min_mode = self.min_mode.min(r.cudagraph_mode);
        self.ubatch_and &= r.should_attempt_ubatch;
        self.dp_pad_and &= r.should_attempt_dp_pad;
        self.dp_pad_or |= r.should_attempt_dp_pad;
    }

    fn merge(self, o: Acc) -> Acc {
        Acc {
            invalid: self.invalid | o.invalid,
            min_unpadded: self.min_unpadded.min(o.min_unpadded),
            max_padded: self.max_padded.max(o.max_padded),
            min_mode: self.min_mode.min(o.min_mode),
            ubatch_and: self.ubatch_and & o.ubatch_and,
            dp_pad_and: self.dp_pad_and & o.dp_pad_and,
            dp_pad_or: self.dp_pad_or | o.dp_pad_or,
        }
    }
}

/// Independent accumulators per pass (measured: 4 beat 1 and 8 at dp_size 1024).
const LANES: usize = 4;

impl Summary {
    /// One branch-free pass over the records; only the error path walks them again, to name
    /// the first bad field or the two disagreeing ranks.
    fn of(records: &[RankRecord]) -> Result<Self> {
        let mut lanes = [Acc::EMPTY; LANES];
        let chunks = records.chunks_exact(LANES);
        let rest = chunks.remainder();
        for chunk in chunks {
            for (acc, r) in lanes.iter_mut().zip(chunk) {
                acc.add(r);
            }
        }
        for (acc, r) in lanes.iter_mut().zip(rest) {
            acc.add(r);
        }
        let acc = lanes.into_iter().fold(Acc::EMPTY, Acc::merge);
        if acc.invalid != 0 {
            for (rank, r) in records.iter().enumerate() {
                check_record(rank, r)?;
            }
            return Err(Error::internal("a record failed the fast check only"));
        }
        let disagree = acc.dp_pad_or != acc.dp_pad_and;
        let first = |pad: i32| records.iter().position(|r| r.should_attempt_dp_pad == pad);
        Ok(Summary {
            min_unpadded: acc.min_unpadded,
            max_padded: acc.max_padded,
            min_mode: acc.min_mode,
            all_attempt_ubatch: acc.ubatch_and == 1,
            all_attempt_dp_pad: acc.dp_pad_and == 1,
            dp_pad_disagreement: if disagree {
                first(1).zip(first(0))
            } else {
                None
            },
        })
    }
}

fn check_record(rank: usize, r: &RankRecord) -> Result<()> {
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
    (CUDAGRAPH_NONE..=CUDAGRAPH_FULL).contains(&mode)
}

fn check_pad_policy(pad_policy: i32) -> Result<()> {
    match pad_policy {
        PAD_POLICY_EXPLICIT | PAD_POLICY_WHEN_CUDAGRAPH => Ok(()),
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
