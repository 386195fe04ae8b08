//! The pass over the V2 records: one vector min/max fold over the live records' eight words
//! that both validates their ranges and yields vLLM's reductions (`VLLM_V2.md` 2.3).

use crate::error::{invalid, Result};

use super::super::{LiveRuns, V2Record, MODE_RANGE};

/// The live records' aggregates, vLLM's reductions (`VLLM_V2.md` 2.3).
#[derive(Clone, Copy)]
pub(crate) struct Summary {
    pub(crate) min_tokens: i32,
    pub(crate) max_tokens: i32,
    pub(crate) min_mode: i32,
    pub(crate) synced_uniform: i32,
    pub(crate) synced_mql: i32,
    pub(crate) all_ubatch: bool,
    pub(crate) max_reqs: i32,
    pub(crate) skip_drafts: bool,
}

/// Words of one record.
pub(crate) const W: usize = 8;
/// Record words.
const T: usize = 0;
const MODE: usize = 1;
const U: usize = 2;
const MQL: usize = 3;
const UB: usize = 4;
const R: usize = 5;
const SKIP: usize = 6;
/// The lowest legal value of each word.
const LO: [i32; W] = [0, 0, 0, -1, 0, 0, 0, 0];
/// The highest legal value of each word.
const HI: [i32; W] = [i32::MAX, 2, i32::MAX, i32::MAX, 1, i32::MAX, 1, i32::MAX];

/// Lane-wise running aggregates of records as `[i32; 8]`: min and max, two vector operations
/// a record. They see every out-of-range word but one: a query bound of 0 on a rank while
/// other live ranks send -1 and a positive bound (the min is -1, the max positive). Such a
/// step's agreed
/// bound is none whatever that word holds (vLLM reads 0 as none too), so the decision is the
/// one of a legal record; a third operation a record (an unsigned min) would cost a third of
/// the pass.
#[derive(Clone, Copy)]
struct Acc {
    lo: [i32; W],
    hi: [i32; W],
}

impl Acc {
    const EMPTY: Acc = Acc {
        lo: [i32::MAX; W],
        hi: [i32::MIN; W],
    };

    #[inline(always)]
    fn add(&mut self, w: &[i32; W]) {
        self.lo = std::array::from_fn(|j| self.lo[j].min(w[j]));
        self.hi = std::array::from_fn(|j| self.hi[j].max(w[j]));
    }

    #[inline(always)]
    fn merge(&mut self, o: &Acc) {
        self.lo = std::array::from_fn(|j| self.lo[j].min(o.lo[j]));
        self.hi = std::array::from_fn(|j| self.hi[j].max(o.hi[j]));
    }

    /// The aggregates of records `begin..end` (`word(r)` is record r's words), four
    /// accumulators deep (independent chains).
    #[inline(always)]
    fn of_run(begin: usize, end: usize, word: &impl Fn(usize) -> [i32; W]) -> Acc {
        let mut acc = [Acc::EMPTY; 4];
        let mut r = begin;
        while r + 4 <= end {
            for (k, a) in acc.iter_mut().enumerate() {
                a.add(&word(r + k));
            }
            r += 4;
        }
        while r < end {
            acc[0].add(&word(r));
            r += 1;
        }
        let [mut a, b, c, d] = acc;
        a.merge(&b);
        a.merge(&c);
        a.merge(&d);
        a
    }

    #[inline(always)]
    fn valid(&self) -> bool {
        let lo_ok = self
            .lo
            .iter()
            .zip(LO)
            .fold(true, |ok, (&v, b)| ok & (v >= b));
        let hi_ok = self
            .hi
            .iter()
            .zip(HI)
            .fold(true, |ok, (&v, b)| ok & (v <= b));
        // A bound of 0 shows as a min or a max of 0 unless a -1 hides it (see above).
        lo_ok & hi_ok & (self.lo[MQL] != 0) & (self.hi[MQL] != 0)
    }
}

impl Summary {
    /// One pass over the `n` live records (every record, or each run of live ones; `word(r)`
    /// is record r's words, wherever they are), validating their ranges; only a failure walks
    /// them again, to name the first bad word.
    #[inline(always)]
    pub(crate) fn of_with(
        n: usize,
        live: Option<&[u8]>,
        word: impl Fn(usize) -> [i32; W],
    ) -> Result<Summary> {
        let acc = match live {
            None => Acc::of_run(0, n, &word),
            Some(live) => {
                let mut acc = Acc::EMPTY;
                for (begin, end) in (LiveRuns { live, r: 0 }) {
                    acc.merge(&Acc::of_run(begin, end, &word));
                }
                acc
            }
        };
        if !acc.valid() {
            let is_live = |r: usize| live.map_or(true, |l| l[r] == 1);
            for rank in (0..n).filter(|&r| is_live(r)) {
                check_record(rank, &bytemuck::cast(word(rank)))?;
            }
            return Err(crate::error::Error::internal(
                "a V2 record failed the fast check only",
            ));
        }
        Ok(Summary::from_acc(&acc))
    }

    /// The aggregates of every slot holding `record` (one [`super::make_v2_record`] made).
    pub(crate) fn of_one(record: &V2Record) -> Summary {
        let mut acc = Acc::EMPTY;
        acc.add(bytemuck::cast_ref(record));
        Summary::from_acc(&acc)
    }

    #[inline(always)]
    fn from_acc(acc: &Acc) -> Summary {
        let (lo, hi) = (&acc.lo, &acc.hi);
        Summary {
            min_tokens: lo[T],
            max_tokens: hi[T],
            min_mode: lo[MODE],
            // vLLM: the first live rank's count, None when it is 0 or any live one differs.
            synced_uniform: if lo[U] == hi[U] { lo[U] } else { 0 },
            // vLLM: the max when no live rank has -1.
            synced_mql: if lo[MQL] != -1 { hi[MQL] } else { -1 },
            all_ubatch: lo[UB] == 1,
            max_reqs: hi[R],
            skip_drafts: lo[SKIP] == 1,
        }
    }
}

/// The all -1 record: what the slot layer sends for a rank whose request was invalid.
pub(crate) const MARKER: V2Record = V2Record {
    num_tokens: -1,
    cg_mode: -1,
    uniform_token_count: -1,
    max_query_len: -1,
    allow_ubatching: -1,
    num_reqs: -1,
    allow_skip_drafts: -1,
    num_active_loras: -1,
};

/// Names the first out-of-range word of a record.
fn check_record(rank: usize, r: &V2Record) -> Result<()> {
    if *r == MARKER {
        return Err(invalid!(
            "records[{rank}] is the invalid-request marker (-1 in every word): rank {rank}'s \
             request was invalid (its own call names the field), so no rank decides this step"
        ));
    }
    for (field, value, lo) in [
        ("num_tokens", r.num_tokens, 0),
        ("uniform_token_count", r.uniform_token_count, 0),
        ("num_reqs", r.num_reqs, 0),
        ("num_active_loras", r.num_active_loras, 0),
    ] {
        if value < lo {
            return Err(invalid!(
                "records[{rank}].{field} = {value} must be >= {lo}"
            ));
        }
    }
    if !(0..=2).contains(&r.cg_mode) {
        return Err(invalid!(
            "records[{rank}].cg_mode = {} {MODE_RANGE}",
            r.cg_mode
        ));
    }
    if r.max_query_len != -1 && r.max_query_len < 1 {
        return Err(invalid!(
            "records[{rank}].max_query_len = {} must be -1 (none) or >= 1",
            r.max_query_len
        ));
    }
    for (field, value) in [
        ("allow_ubatching", r.allow_ubatching),
        ("allow_skip_drafts", r.allow_skip_drafts),
    ] {
        if value != 0 && value != 1 {
            return Err(invalid!("records[{rank}].{field} = {value} must be 0 or 1"));
        }
    }
    Ok(())
}
