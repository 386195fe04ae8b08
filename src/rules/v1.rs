//! vLLM's V1 rules (docs/ARCHITECTURE.md, "Semantics"): the local step ([`make_record`]) and
//! the decision over every rank's 20-byte record ([`decide_with_options`]), with the
//! vectorised pass over the records' words.

use super::{
    check_active_ranks, check_decide_args, check_step_ids, marker_error, mode_ok, LiveRuns,
    Request, DP_CUDAGRAPH_FULL, DP_CUDAGRAPH_NONE, DP_PAD_POLICY_EXPLICIT, MODE_RANGE,
};
use crate::error::{invalid, Error, ErrorKind, Result};
use crate::slot::RankRecord;

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
pub(crate) fn decide_summary(
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
pub(crate) fn fill_after_padding(
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

/// Aggregates of one validated pass over the live records.
pub(crate) struct Summary {
    pub(crate) min_unpadded: i32,
    pub(crate) max_padded: i32,
    pub(crate) min_mode: i32,
    pub(crate) all_attempt_ubatch: bool,
    pub(crate) all_attempt_dp_pad: bool,
    /// `(a live rank with dp_pad 1, a live rank with dp_pad 0)` when the flags differ.
    pub(crate) dp_pad_disagreement: Option<(usize, usize)>,
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
pub(crate) struct Acc {
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
    /// The accumulator of one record's lanes: `lo` and `hi` hold the five fields' min and
    /// max as the block pass folds them (`hi[0]` is max(unpadded - padded)), in the first
    /// five words (the rest neutral).
    #[inline(always)]
    pub(crate) fn of_fields(lo: [i32; 5], hi: [i32; 5]) -> Acc {
        let mut acc = Acc::EMPTY;
        acc.lo[..5].copy_from_slice(&lo);
        acc.hi[..5].copy_from_slice(&hi);
        acc
    }

    pub(crate) const EMPTY: Acc = Acc {
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
    pub(crate) fn add_run(&mut self, words: &[i32], begin: usize, end: usize) {
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
    pub(crate) fn from_acc(
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
