//! Microbatch slices (docs/ARCHITECTURE.md ("Semantics")): which requests and tokens of this
//! rank's step go into each microbatch, exactly as vLLM computes them for a step that
//! microbatches. Pure, local, allocation-free. Three front ends over one slicer (`walk.rs`):
//!
//! - [`make_ubatch_slices`]: V1's `maybe_create_ubatch_slices` with an int split point `s`
//!   (default `P / n`): boundaries `s, 2s, ..., (n-1)s`.
//! - [`make_ubatch_slices_at`]: the same with a list of `n - 1` explicit boundaries (vLLM 0.33+).
//! - [`make_ubatch_slices_v2`]: vLLM 0.34.0's `create_ubatch_slices` (`gpu/ubatch_utils.py`): the
//!   split `(P / (u n)) u` for a uniform count `u > 1` when that is > 0, else `P / n`; V1's
//!   padded list, each request range clamped to `[min(start, R-1), min(stop, Rp))`.
//!
//! With `cu` the cumulative token counts (`cu[0] = 0`, `cu[j + 1] = cu[j] + counts[j]`, exact),
//! the token boundaries are the split points and then `cu[R]`; slice k covers tokens `[start,
//! end)` and requests `[bisect_right(cu, start) - 1, bisect_left(cu, end))`. The padded slices
//! equal these except the last, which runs to `[its request_begin, Rp)` and `[its token_begin,
//! P)`. V1's two forms refuse any input that leaves a slice empty; V2 lets trailing microbatches
//! lie entirely in padding, as vLLM 0.34.0 does.

mod walk;

use crate::error::{invalid, Result};
use walk::{checked_sum, slice, RawSlice};

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

/// The batch [`make_ubatch_slices_at`] and [`make_ubatch_slices_v2`] slice: the fields of
/// [`SliceInputs`] but the split, named as in the C functions.
#[derive(Debug, Clone, Copy)]
pub struct SliceBatch<'a> {
    /// This rank's tokens per request (`R = len` requests, `R >= 1`, each >= 0).
    pub num_scheduled_tokens: &'a [i32],
    /// `P`: the agreed tokens after padding of this rank (>= the sum of the counts).
    pub num_tokens_padded: i32,
    /// `Rp`: the padded request count, `-1` for `R`; else `>= R`.
    pub num_requests_padded: i32,
    /// `n`: microbatches, `>= 2`.
    pub num_ubatches: i32,
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

/// vLLM's `maybe_create_ubatch_slices` for a step that microbatches, with an int split point:
/// writes the `n` slices to `slices` and, when given, the `n` padded slices to `padded_slices`
/// (both exactly `num_ubatches` long), and only on success.
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
    let batch = SliceBatch {
        num_scheduled_tokens: inputs.num_scheduled_tokens,
        num_tokens_padded: inputs.num_tokens_padded,
        num_requests_padded: inputs.num_requests_padded,
        num_ubatches: inputs.num_ubatches,
    };
    let (p, n) = (batch.num_tokens_padded, batch.num_ubatches);
    let rp = check_batch(&batch)?;
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
    let total = check_total(batch.num_scheduled_tokens, p)?;
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
    write_v1(
        &batch,
        total,
        rp,
        |k| s * (k as i64 + 1),
        slices,
        padded_slices,
    )
}

/// vLLM's `maybe_create_ubatch_slices` with a list of `n - 1` explicit split points (vLLM 0.33+):
/// the token boundaries are `split_points` and then `sum(counts)`. Otherwise as
/// [`make_ubatch_slices`]: the `n` slices to `slices`, the padded ones to `padded_slices` when
/// given, only on success.
///
/// vLLM checks only the list's length; what it does with the rest (negative or inverted token
/// ranges, an empty or inverted last slice) no caller can use, so it is refused here. Errors
/// (invalid argument, naming the input): those of [`make_ubatch_slices`] but the split point,
/// and `split_points` not exactly `n - 1` long, a point <= 0 or not above the one before it
/// (a microbatch would be empty), a point >= `P` (the microbatch after it would hold no token),
/// a point >= `sum(counts)` (the microbatches after it would hold no scheduled token, the last
/// no token at all), outputs of the wrong length.
#[inline(always)]
pub fn make_ubatch_slices_at(
    batch: &SliceBatch<'_>,
    split_points: &[i32],
    slices: &mut [UbatchSlice],
    padded_slices: Option<&mut [UbatchSlice]>,
) -> Result<()> {
    let (p, n) = (batch.num_tokens_padded, batch.num_ubatches);
    let rp = check_batch(batch)?;
    if split_points.len() as i64 != i64::from(n) - 1 {
        return Err(invalid!(
            "split_points holds {} entries, num_ubatches - 1 = {} needed",
            split_points.len(),
            i64::from(n) - 1
        ));
    }
    let mut previous = 0;
    for (i, &v) in split_points.iter().enumerate() {
        if i == 0 && v <= 0 {
            return Err(invalid!(
                "split_points[0] = {v} must be > 0: microbatch 0 would be empty"
            ));
        }
        if i > 0 && v <= previous {
            return Err(invalid!(
                "split_points[{i}] = {v} must be > split_points[{}] = {previous}: microbatch \
                 {i} would be empty",
                i - 1
            ));
        }
        if v >= p {
            return Err(invalid!(
                "split_points[{i}] = {v} must be < num_tokens_padded = {p}: microbatch {} would \
                 hold no token",
                i + 1
            ));
        }
        previous = v;
    }
    let total = check_total(batch.num_scheduled_tokens, p)?;
    if let Some(i) = split_points.iter().position(|&v| i64::from(v) >= total) {
        let v = split_points[i];
        let last = n - 1;
        let what = if i as i32 + 1 == last {
            format!("microbatch {last} (the last) would be empty")
        } else {
            format!(
                "microbatches {} to {last} would hold no scheduled token (the last would be empty)",
                i + 1
            )
        };
        return Err(invalid!(
            "split_points[{i}] = {v} must be < sum(num_scheduled_tokens) = {total}: {what}"
        ));
    }
    write_v1(
        batch,
        total,
        rp,
        |k| i64::from(split_points[k]),
        slices,
        padded_slices,
    )
}

/// vLLM 0.34.0's `create_ubatch_slices` (model runner V2): writes the `n` slices to `slices`
/// (exactly `num_ubatches` long), only on success.
///
/// The split `s` is `(P / (u n)) u` when `u = uniform_token_count > 1` and that is > 0 (a
/// request boundary of a uniform batch), else `P / n`; the slices are V1's padded list for the
/// boundaries `s, 2s, ..., (n-1)s`, each request range clamped to `[min(start, R-1), min(stop,
/// Rp))`. They tile `[0, P)`; a trailing microbatch may lie entirely in padding (it holds
/// request `R - 1`, with zero of its tokens, and the padded requests).
///
/// Errors (invalid argument, naming the input): no request, fewer than 2 microbatches, a
/// negative `P` or count, `sum(counts) > P`, `Rp < R`, `uniform_token_count < 0` (0 = none),
/// `P < n` (the split `P / n` is 0 and microbatch 0 empty, which vLLM asserts against), an
/// output of the wrong length.
#[inline(always)]
pub fn make_ubatch_slices_v2(
    batch: &SliceBatch<'_>,
    uniform_token_count: i32,
    slices: &mut [UbatchSlice],
) -> Result<()> {
    let (p, n) = (batch.num_tokens_padded, batch.num_ubatches);
    let rp = check_batch(batch)?;
    let u = uniform_token_count;
    if u < 0 {
        return Err(invalid!("uniform_token_count = {u} must be >= 0 (0: none)"));
    }
    let total = check_total(batch.num_scheduled_tokens, p)?;
    let (p64, n64, u64_) = (i64::from(p), i64::from(n), i64::from(u));
    // vLLM: reqs_per_ubatch = P // (u * n); the split is reqs_per_ubatch * u when u > 1 and
    // that is > 0, else P // n.
    let reqs_per_ubatch = if u > 1 { p64 / (u64_ * n64) } else { 0 };
    let s = if reqs_per_ubatch > 0 {
        reqs_per_ubatch * u64_
    } else {
        p64 / n64
    };
    if s == 0 {
        return Err(invalid!(
            "num_tokens_padded = {p} must be >= num_ubatches = {n}: the split \
             num_tokens_padded / num_ubatches = 0 leaves microbatch 0 empty"
        ));
    }
    check_len("slices", slices, n)?;
    // Nothing can fail from here on. Every token boundary is <= P and every clamped request
    // index <= Rp, both i32, so the narrowing casts are exact.
    let (last, last_request) = (n as usize - 1, batch.num_scheduled_tokens.len() - 1);
    slice(
        batch.num_scheduled_tokens,
        total,
        |k| s * (k as i64 + 1),
        slices,
        |k, raw| {
            // The padded list: the last runs to Rp and P.
            let (request_end, token_end) = if k == last {
                (rp, p64)
            } else {
                (raw.request_end as i64, raw.token_end)
            };
            UbatchSlice {
                request_begin: raw.request_begin.min(last_request) as i32,
                request_end: request_end.min(rp) as i32,
                token_begin: raw.token_begin as i32,
                token_end: token_end as i32,
            }
        },
    );
    Ok(())
}

/// The checks every front end makes first, in order: the sizes, `P >= 0`, `Rp`. Returns `Rp`
/// (`R` for -1).
#[inline(always)]
fn check_batch(batch: &SliceBatch<'_>) -> Result<i64> {
    let num_requests = batch.num_scheduled_tokens.len();
    check_sizes(num_requests as i64, batch.num_ubatches)?;
    let p = batch.num_tokens_padded;
    if p < 0 {
        return Err(invalid!("num_tokens_padded = {p} must be >= 0"));
    }
    match batch.num_requests_padded {
        -1 => Ok(num_requests as i64),
        v if i64::from(v) >= num_requests as i64 => Ok(i64::from(v)),
        v => Err(invalid!(
            "num_requests_padded = {v} must be -1 (= num_requests) or >= num_requests = \
             {num_requests}"
        )),
    }
}

/// `sum(counts)`, checked: every count >= 0 and the sum <= `P`.
#[inline(always)]
fn check_total(counts: &[i32], p: i32) -> Result<i64> {
    let total = checked_sum(counts)?;
    if total > i64::from(p) {
        return Err(invalid!(
            "sum(num_scheduled_tokens) = {total} must be <= num_tokens_padded = {p}"
        ));
    }
    Ok(total)
}

/// An output holds exactly `n` slices.
#[inline(always)]
fn check_len(name: &str, out: &[UbatchSlice], n: i32) -> Result<()> {
    if out.len() as i64 != i64::from(n) {
        return Err(invalid!(
            "{name} holds {} entries, num_ubatches = {n} needed",
            out.len()
        ));
    }
    Ok(())
}

/// V1's two lists for validated inputs whose every microbatch holds a scheduled token (`0 <
/// split(0) < ... < split(n-2) < total`): checks the outputs' lengths, then writes them.
#[inline(always)]
fn write_v1(
    batch: &SliceBatch<'_>,
    total: i64,
    rp: i64,
    split: impl Fn(usize) -> i64,
    slices: &mut [UbatchSlice],
    padded_slices: Option<&mut [UbatchSlice]>,
) -> Result<()> {
    let n = batch.num_ubatches;
    check_len("slices", slices, n)?;
    if let Some(padded) = &padded_slices {
        check_len("padded_slices", padded, n)?;
    }
    // Nothing can fail from here on. Every boundary is <= total <= P <= i32::MAX, and every
    // request index <= R <= Rp (no split reaches the total), so the narrowing casts are exact.
    slice(
        batch.num_scheduled_tokens,
        total,
        split,
        slices,
        |_, raw: RawSlice| UbatchSlice {
            request_begin: raw.request_begin as i32,
            request_end: raw.request_end as i32,
            token_begin: raw.token_begin as i32,
            token_end: raw.token_end as i32,
        },
    );
    if let Some(padded) = padded_slices {
        padded.copy_from_slice(slices);
        let last = &mut padded[n as usize - 1];
        last.request_end = rp as i32;
        last.token_end = batch.num_tokens_padded;
    }
    Ok(())
}
