//! Microbatch slices (docs/ARCHITECTURE.md ("Semantics")): which requests and tokens of this rank's step go
//! into each microbatch, exactly as vLLM V1's `maybe_create_ubatch_slices` computes them for a
//! step that microbatches. Pure, local, allocation-free.
//!
//! With `cu` the cumulative token counts (`cu[0] = 0`, `cu[j + 1] = cu[j] + counts[j]`, in 64
//! bits) and split point `s` (default `P / n`), the token boundaries are `0, s, 2s, ...,
//! (n-1)s, cu[R]`; slice k covers tokens `[start, end)` and requests
//! `[bisect_right(cu, start) - 1, bisect_left(cu, end))`. The padded slices equal these except
//! the last, which runs to `[its request_begin, Rp)` and `[its token_begin, P)`.
//!
//! `cu` is never stored: one pass validates the counts and sums them, a second walks the
//! running sum only as far as the last split point (block sums skip whole blocks that lie
//! before the next split point), and a backward scan finds where the last real request ends.
//! The sums are exact: 64-bit where they could exceed `i32::MAX`, 32-bit where they provably
//! cannot (every partial sum of valid counts is <= P).

use crate::error::{invalid, Result};

/// One microbatch: requests `[request_begin, request_end)` and tokens `[token_begin, token_end)`
/// of this rank's step (Python's `slice(start, stop)` pairs of vLLM's `UBatchSlice`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct UbatchSlice {
    /// First request of the microbatch (a straddling request is in both microbatches).
    pub request_begin: i32,
    /// One past the last request of the microbatch.
    pub request_end: i32,
    /// First token of the microbatch.
    pub token_begin: i32,
    /// One past the last token of the microbatch.
    pub token_end: i32,
}

/// The inputs of [`make_ubatch_slices`], named as in `dp_make_ubatch_slices`.
#[derive(Debug, Clone, Copy)]
pub struct SliceInputs<'a> {
    /// This rank's tokens per request (`R = len` requests, each >= 0).
    pub num_scheduled_tokens: &'a [i32],
    /// `P`: the agreed tokens after padding of this rank (`num_tokens_after_padding_self`).
    pub num_tokens_padded: i32,
    /// `Rp`: the padded request count, `-1` for `R`; else `>= R`.
    pub num_requests_padded: i32,
    /// `n`: microbatches, `>= 2`.
    pub num_ubatches: i32,
    /// `s`: tokens per microbatch before the last; `-1` for `P / n`; else `>= 1`.
    pub split_point: i32,
}

/// Checks the two sizes the C caller's arrays depend on, before any array is formed:
/// `num_requests >= 1` and `num_ubatches >= 2`.
pub fn check_sizes(num_requests: i64, num_ubatches: i32) -> Result<()> {
    if num_requests < 1 {
        return Err(invalid!("num_requests = {num_requests} must be >= 1"));
    }
    if num_ubatches < 2 {
        return Err(invalid!("num_ubatches = {num_ubatches} must be >= 2"));
    }
    Ok(())
}

/// Counts per block of the split walk: block sums are added without a branch per request.
const BLOCK: usize = 32;

/// vLLM's `maybe_create_ubatch_slices` for a step that microbatches: writes the `n` slices to
/// `slices` and, when given, the `n` padded slices to `padded_slices` (both exactly
/// `num_ubatches` long), and only on success.
///
/// Errors (invalid argument, naming the input): no request, fewer than 2 microbatches, a
/// negative `P` or count, `sum(counts) > P`, `Rp < R`, a split point other than -1 below 1, a
/// split point whose last split `s * (n - 1)` is not below `sum(counts)` (the last microbatch
/// would be empty), output slices of the wrong length.
#[inline(always)]
pub fn make_ubatch_slices(
    inputs: &SliceInputs<'_>,
    slices: &mut [UbatchSlice],
    padded_slices: Option<&mut [UbatchSlice]>,
) -> Result<()> {
    let counts = inputs.num_scheduled_tokens;
    let num_requests = counts.len();
    let n = inputs.num_ubatches;
    check_sizes(num_requests as i64, n)?;
    let p = inputs.num_tokens_padded;
    if p < 0 {
        return Err(invalid!("num_tokens_padded = {p} must be >= 0"));
    }
    let rp = match inputs.num_requests_padded {
        -1 => num_requests as i64,
        v if i64::from(v) >= num_requests as i64 => i64::from(v),
        v => {
            return Err(invalid!(
                "num_requests_padded = {v} must be -1 (= num_requests) or >= num_requests = \
                 {num_requests}"
            ))
        }
    };
    let (s, default_note) = match inputs.split_point {
        -1 => (
            i64::from(p / n),
            " (the default num_tokens_padded / num_ubatches)",
        ),
        v if v >= 1 => (i64::from(v), ""),
        v => {
            return Err(invalid!(
                "split_point = {v} must be -1 (num_tokens_padded / num_ubatches) or >= 1 (0 \
                 leaves microbatch 0 empty)"
            ))
        }
    };
    let total = checked_sum(counts)?;
    if total > i64::from(p) {
        return Err(invalid!(
            "sum(num_scheduled_tokens) = {total} must be <= num_tokens_padded = {p}"
        ));
    }
    if s == 0 {
        return Err(invalid!(
            "split_point = 0{default_note} leaves microbatch 0 empty (num_tokens_padded = {p}, \
             num_ubatches = {n}: num_tokens_padded must be >= num_ubatches)"
        ));
    }
    let last_split = s * i64::from(n - 1);
    if last_split >= total {
        return Err(invalid!(
            "split_point = {s}{default_note} puts the last split at split_point * \
             (num_ubatches - 1) = {last_split}, which must be < sum(num_scheduled_tokens) = \
             {total}: microbatch {} (the last) would be empty",
            n - 1
        ));
    }

    let n_len = n as usize;
    if slices.len() != n_len {
        return Err(invalid!(
            "slices holds {} entries, num_ubatches = {n} needed",
            slices.len()
        ));
    }
    if let Some(padded) = &padded_slices {
        if padded.len() != n_len {
            return Err(invalid!(
                "padded_slices holds {} entries, num_ubatches = {n} needed",
                padded.len()
            ));
        }
    }
    // Nothing can fail from here on: write the slices directly.
    // Every boundary below is <= total <= P <= i32::MAX, and every request index <= R <= Rp,
    // which is an i32 or the length of an i32-indexed array, so the narrowing casts are exact.
    let mut walk = Walk::new(counts);
    let mut token_begin = 0i64;
    let mut request_begin = leading_zeros(counts);
    for (k, slice) in slices.iter_mut().enumerate() {
        let is_last = k + 1 == n_len;
        let token_end = if is_last { total } else { s * (k as i64 + 1) };
        let (request_end, next_begin) = if is_last {
            (num_requests - trailing_zeros(counts), 0)
        } else {
            walk.locate(token_end as i32)
        };
        *slice = UbatchSlice {
            request_begin: request_begin as i32,
            request_end: request_end as i32,
            token_begin: token_begin as i32,
            token_end: token_end as i32,
        };
        token_begin = token_end;
        request_begin = next_begin;
    }
    if let Some(padded) = padded_slices {
        padded.copy_from_slice(slices);
        let last = &mut padded[n_len - 1];
        last.request_end = rp as i32;
        last.token_end = p;
    }
    Ok(())
}

/// `sum(counts)`, exact (64 bits), or the first negative count as an error.
///
/// One branch-free pass in 32 bits: a wrapping sum and the OR of the counts. The OR is >= every
/// non-negative count (and negative iff some count is), so when `R * OR` fits in an `i32` no
/// partial sum can overflow and the 32-bit sum is exact; only otherwise (counts near 2^31 / R)
/// is the sum taken again in 64 bits.
#[inline(always)]
fn checked_sum(counts: &[i32]) -> Result<i64> {
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

    /// For a split point `0 < t < cu[R]`, at or after the previous one: returns
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
        // Now cu[j] < t <= cu[R] (cu[j] < t holds: the previous split was below t, or j = 0).
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
