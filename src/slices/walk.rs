//! The one slicer every front end shares (V1 with a split point, V1 with a list of split points,
//! V2): vLLM V1's `maybe_create_ubatch_slices` loop over validated counts, without storing `cu`.
//!
//! One pass validates the counts and sums them ([`checked_sum`]); [`slice`] then walks the running
//! sum only as far as the last split point below the real total (block sums skip whole blocks
//! that lie before the next split point), and a backward scan finds where the last real request
//! ends. The sums are exact: 64-bit where they could exceed `i32::MAX`, 32-bit where they
//! provably cannot (every partial sum of valid counts is <= P).

use super::UbatchSlice;
use crate::error::{invalid, Result};

/// Counts per block of the split walk: block sums are added without a branch per request.
const BLOCK: usize = 32;

/// One microbatch as vLLM's loop computes it, before any narrowing or clamping: requests
/// `[bisect_right(cu, token_begin) - 1, bisect_left(cu, token_end))` (either may be past `R`
/// when its token lies past the real total), tokens `[token_begin, token_end)` (the last runs to
/// the real total, which lies below its `token_begin` when it is all padding).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawSlice {
    pub(crate) request_begin: usize,
    pub(crate) request_end: usize,
    pub(crate) token_begin: i64,
    pub(crate) token_end: i64,
}

/// `sum(counts)`, exact (64 bits), or the first negative count as an error.
///
/// One branch-free pass in 32 bits: a wrapping sum and the OR of the counts. The OR is >= every
/// non-negative count (and negative iff some count is), so when `R * OR` fits in an `i32` no
/// partial sum can overflow and the 32-bit sum is exact; only otherwise (counts near 2^31 / R)
/// is the sum taken again in 64 bits.
#[inline(always)]
pub(crate) fn checked_sum(counts: &[i32]) -> Result<i64> {
    let (sum, or) = counts
        .iter()
        .fold((0i32, 0i32), |(sum, or), &c| (sum.wrapping_add(c), or | c));
    if or < 0 {
        let (j, c) = counts
            .iter()
            .enumerate()
            .find(|&(_, &c)| c < 0)
            .map(|(j, &c)| (j, c))
            .unwrap_or_default();
        return Err(invalid!("num_scheduled_tokens[{j}] = {c} must be >= 0"));
    }
    if (counts.len() as u64).saturating_mul(or as u64) <= i32::MAX as u64 {
        Ok(i64::from(sum))
    } else {
        Ok(counts.iter().map(|&c| i64::from(c)).sum())
    }
}

/// vLLM's loop: writes `out[k] = make(k, raw)` for microbatch `k`'s [`RawSlice`], for every `k`
/// in `0..n` (`n = out.len()`), in order.
///
/// `counts` are valid (each >= 0) and sum to `total` <= `i32::MAX`; `split(k)` is the end of
/// microbatch `k` for `k < n - 1`: `0 < split(0) < split(1) < ...`, any of them possibly at or
/// past `total` (V2's microbatches that lie in padding). The last microbatch ends at `total`.
#[inline(always)]
pub(crate) fn slice(
    counts: &[i32],
    total: i64,
    split: impl Fn(usize) -> i64,
    out: &mut [UbatchSlice],
    make: impl Fn(usize, RawSlice) -> UbatchSlice,
) {
    let (num_requests, n) = (counts.len(), out.len());
    let mut walk = Walk::new(counts);
    let mut token_begin = 0i64;
    let mut request_begin = leading_zeros(counts);
    for (k, slot) in out.iter_mut().enumerate() {
        let is_last = k + 1 == n;
        let token_end = if is_last { total } else { split(k) };
        let (request_end, next_begin) = if is_last {
            (num_requests - trailing_zeros(counts), 0)
        } else if token_end > total {
            // Past every real token: bisect_left gives len(cu) = R + 1, bisect_right - 1 gives R.
            (num_requests + 1, num_requests)
        } else {
            // 0 < token_end <= total <= i32::MAX, at or after the previous split.
            walk.locate(token_end as i32)
        };
        *slot = make(
            k,
            RawSlice {
                request_begin,
                request_end,
                token_begin,
                token_end,
            },
        );
        token_begin = token_end;
        request_begin = next_begin;
    }
}

/// Zero-length requests before the first token: `bisect_right(cu, 0) - 1`.
#[inline(always)]
fn leading_zeros(counts: &[i32]) -> usize {
    counts.iter().take_while(|&&c| c == 0).count()
}

/// Zero-length requests after the last token: `R - bisect_left(cu, cu[R])`.
#[inline(always)]
fn trailing_zeros(counts: &[i32]) -> usize {
    counts.iter().rev().take_while(|&&c| c == 0).count()
}

/// A forward walk over the running sum `cu`, for split points visited in ascending order.
///
/// Only walked once the counts are validated: every count >= 0 and their sum <= P <=
/// `i32::MAX`, so every partial sum fits in an `i32`.
struct Walk<'a> {
    counts: &'a [i32],
    /// Requests consumed so far.
    j: usize,
    /// `cu[j]`.
    cu: i32,
}

impl<'a> Walk<'a> {
    fn new(counts: &'a [i32]) -> Self {
        Self {
            counts,
            j: 0,
            cu: 0,
        }
    }

    /// For a split point `0 < t <= cu[R]`, after the previous one: returns
    /// `(bisect_left(cu, t), bisect_right(cu, t) - 1)`, the end of the microbatch before `t`
    /// and the beginning of the one after it.
    #[inline(always)]
    fn locate(&mut self, t: i32) -> (usize, usize) {
        // Skip whole blocks whose end is still before t (their requests end before t).
        for block in self.counts[self.j..].chunks_exact(BLOCK) {
            let sum = block.iter().sum::<i32>();
            if self.cu + sum >= t {
                break;
            }
            self.cu += sum;
            self.j += BLOCK;
        }
        // Now cu[j] < t <= cu[R] (cu[j] < t holds: the previous split was below t, or j = 0),
        // so the scan stops at some j < R.
        while self.cu + self.counts[self.j] < t {
            self.cu += self.counts[self.j];
            self.j += 1;
        }
        // cu[j] < t <= cu[j + 1]: the first index with cu >= t is j + 1.
        let end = self.j + 1;
        if self.cu + self.counts[self.j] > t {
            // t falls inside request j: it straddles, and begins the next microbatch.
            return (end, self.j);
        }
        // cu[j + 1] == t: the next microbatch begins at the last index whose cu is t, past
        // any zero-length requests that start (and end) at t.
        let zeros = self.counts[end..].iter().take_while(|&&c| c == 0).count();
        (end, end + zeros)
    }
}
