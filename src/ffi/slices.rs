//! The slicers' C entry points: `dp_make_ubatch_slices` (vLLM V1's `maybe_create_ubatch_slices`
//! with a split point), `dp_make_ubatch_slices_at` (with a list of split points) and
//! `dp_make_ubatch_slices_v2` (vLLM 0.34.0's `create_ubatch_slices`), computed by the pure
//! [`crate::slices`], with an AVX2 build where the CPU has it.

use std::mem::size_of;

use super::{boundary, check_ptr, dp_status};
use crate::error::{invalid, Result};
use crate::slices::{self, SliceBatch, SliceInputs, UbatchSlice};

/// Which requests and tokens of this rank's step go into each microbatch, for a step whose
/// decision has `should_ubatch` (exactly vLLM V1's `maybe_create_ubatch_slices`).
///
/// `num_scheduled_tokens` holds this rank's `num_requests` (>= 1) token counts (each >= 0,
/// summing to at most `num_tokens_padded`, the agreed `num_tokens_after_padding_self`).
/// `num_requests_padded` is the padded request count (-1: `num_requests`; else >= it);
/// `split_point` the tokens per microbatch before the last (-1: `num_tokens_padded /
/// num_ubatches`; else >= 1). With `cu` the cumulative counts, microbatch k covers tokens
/// `[s*k, s*(k+1))` (the last up to `cu[R]`) and requests `[bisect_right(cu, start) - 1,
/// bisect_left(cu, end))`: a request straddling a split point is in both microbatches.
/// `slices` receives the `num_ubatches` slices; `padded_slices` (nullable) the same but the
/// last, which runs to `num_requests_padded` and `num_tokens_padded`. Neither may overlap the
/// other or `num_scheduled_tokens`.
///
/// Local, thread-safe, allocation-free; outputs are written only on success. Returns `DP_OK`
/// or `DP_ERR_INVALID_ARGUMENT` (a NULL or misaligned pointer, no request, fewer than 2
/// microbatches, a negative count, counts summing past `num_tokens_padded`, `num_requests_padded`
/// below `num_requests`, a split point out of range or one that leaves a microbatch empty: the
/// message names it).
#[no_mangle]
pub extern "C" fn dp_make_ubatch_slices(
    num_scheduled_tokens: *const i32,
    num_requests: i32,
    num_tokens_padded: i32,
    num_requests_padded: i32,
    num_ubatches: i32,
    split_point: i32,
    slices: *mut UbatchSlice,
    padded_slices: *mut UbatchSlice,
) -> dp_status {
    boundary(|| {
        slices::check_sizes(i64::from(num_requests), num_ubatches)?;
        // SAFETY: the caller's promise, as documented above: `num_requests` counts and
        // `num_ubatches` slices (and padded slices, when not NULL) for the call.
        let arrays = unsafe {
            Arrays::new(
                num_scheduled_tokens,
                num_requests,
                None,
                slices,
                padded_slices,
                num_ubatches,
            )
        }?;
        let inputs = SliceInputs {
            num_scheduled_tokens: arrays.counts,
            num_tokens_padded,
            num_requests_padded,
            num_ubatches,
            split_point,
        };
        run(V1 {
            inputs,
            slices: arrays.slices,
            padded_slices: arrays.padded_slices,
        })
    })
}

/// `dp_make_ubatch_slices` with explicit split points (vLLM 0.33+'s list form of
/// `maybe_create_ubatch_slices`'s `split_point`): `split_points` holds the `num_ubatches - 1`
/// token boundaries between microbatches, strictly increasing, each > 0, < `num_tokens_padded`
/// and < the sum of the counts; the last microbatch runs to that sum (its padded twin to
/// `num_tokens_padded`). Everything else, `num_requests_padded = -1` and the nullable
/// `padded_slices` included, is as in `dp_make_ubatch_slices`. No output may overlap an input
/// or the other output.
///
/// Local, thread-safe, allocation-free; outputs are written only on success. Returns `DP_OK`
/// or `DP_ERR_INVALID_ARGUMENT` (a NULL or misaligned pointer, no request, fewer than 2
/// microbatches, a negative count, counts summing past `num_tokens_padded`, `num_requests_padded`
/// below `num_requests`, a split point <= 0, not above the one before it, or at or past
/// `num_tokens_padded` or the sum of the counts, so that a microbatch would be empty: the
/// message names the index and the value).
#[no_mangle]
pub extern "C" fn dp_make_ubatch_slices_at(
    num_scheduled_tokens: *const i32,
    num_requests: i32,
    num_tokens_padded: i32,
    num_requests_padded: i32,
    num_ubatches: i32,
    split_points: *const i32,
    slices: *mut UbatchSlice,
    padded_slices: *mut UbatchSlice,
) -> dp_status {
    boundary(|| {
        slices::check_sizes(i64::from(num_requests), num_ubatches)?;
        // SAFETY: the caller's promise, as documented above: `num_requests` counts,
        // `num_ubatches - 1` split points and `num_ubatches` slices (and padded slices, when not
        // NULL) for the call.
        let arrays = unsafe {
            Arrays::new(
                num_scheduled_tokens,
                num_requests,
                Some(split_points),
                slices,
                padded_slices,
                num_ubatches,
            )
        }?;
        let batch = SliceBatch {
            num_scheduled_tokens: arrays.counts,
            num_tokens_padded,
            num_requests_padded,
            num_ubatches,
        };
        run(At {
            batch,
            split_points: arrays.split_points,
            slices: arrays.slices,
            padded_slices: arrays.padded_slices,
        })
    })
}

/// This rank's microbatch slices under vLLM 0.34.0's model runner V2 (`create_ubatch_slices`,
/// `UBatchRunner.prepare`), for a V2 step that microbatches.
///
/// Inputs: the `num_requests` (>= 1) real token counts (each >= 0, summing to at most
/// `num_tokens_padded`, V2's `num_tokens_after_padding`), `num_requests_padded` (V2's
/// `num_reqs_after_padding`: the descriptor's request count or `num_requests`; -1:
/// `num_requests`; else >= it), `num_ubatches` (>= 2, and <= `num_tokens_padded`) and
/// `uniform_token_count` (the descriptor's on FULL, else the agreed one; 0: none). The split is
/// `(num_tokens_padded / (u * n)) * u` when `u > 1` and that is > 0 (a request boundary of a
/// spec-decode batch), else `num_tokens_padded / n`; microbatch k covers tokens `[s*k,
/// s*(k+1))`, the last up to `num_tokens_padded`, and requests `[min(start, R-1), min(stop,
/// Rp))` of V1's padded list (the last runs to `num_requests_padded`). A trailing microbatch may
/// lie entirely in padding: it holds request `num_requests - 1` with zero of its tokens. `slices`
/// receives `num_ubatches` slices and may not overlap `num_scheduled_tokens`.
///
/// Local, thread-safe, allocation-free; outputs are written only on success. Returns `DP_OK`
/// or `DP_ERR_INVALID_ARGUMENT` (a NULL or misaligned pointer, no request, fewer than 2
/// microbatches or more than `num_tokens_padded`, a negative count or `uniform_token_count`,
/// counts summing past `num_tokens_padded`, `num_requests_padded` below `num_requests`: the
/// message names it).
#[no_mangle]
pub extern "C" fn dp_make_ubatch_slices_v2(
    num_scheduled_tokens: *const i32,
    num_requests: i32,
    num_tokens_padded: i32,
    num_requests_padded: i32,
    num_ubatches: i32,
    uniform_token_count: i32,
    slices: *mut UbatchSlice,
) -> dp_status {
    boundary(|| {
        slices::check_sizes(i64::from(num_requests), num_ubatches)?;
        // SAFETY: the caller's promise, as documented above: `num_requests` counts and
        // `num_ubatches` slices for the call.
        let arrays = unsafe {
            Arrays::new(
                num_scheduled_tokens,
                num_requests,
                None,
                slices,
                std::ptr::null_mut(),
                num_ubatches,
            )
        }?;
        let batch = SliceBatch {
            num_scheduled_tokens: arrays.counts,
            num_tokens_padded,
            num_requests_padded,
            num_ubatches,
        };
        run(V2 {
            batch,
            uniform_token_count,
            slices: arrays.slices,
        })
    })
}

/// A slicer call's C arrays, checked and borrowed for the call.
struct Arrays<'a> {
    counts: &'a [i32],
    /// Empty when the call takes no split points.
    split_points: &'a [i32],
    slices: &'a mut [UbatchSlice],
    padded_slices: Option<&'a mut [UbatchSlice]>,
}

impl Arrays<'_> {
    /// Checks every pointer (NULL, alignment; `padded_slices` may be NULL) and that no output
    /// overlaps an input or the other output, then forms the slices: `num_requests` counts,
    /// `num_ubatches - 1` split points when given, `num_ubatches` slices each.
    ///
    /// # Safety
    /// `num_requests >= 1` and `num_ubatches >= 2` (checked before); each non-NULL pointer
    /// holds its count of entries, readable (inputs) or writable (outputs), for the call.
    #[inline(always)]
    unsafe fn new(
        counts: *const i32,
        num_requests: i32,
        split_points: Option<*const i32>,
        slices: *mut UbatchSlice,
        padded_slices: *mut UbatchSlice,
        num_ubatches: i32,
    ) -> Result<Self> {
        check_ptr(counts, "num_scheduled_tokens")?;
        if let Some(points) = split_points {
            check_ptr(points, "split_points")?;
        }
        check_ptr(slices.cast_const(), "slices")?;
        if !padded_slices.is_null() {
            check_ptr(padded_slices.cast_const(), "padded_slices")?;
        }
        let (r, n) = (num_requests as usize, num_ubatches as usize);
        let range = |p: usize, bytes: usize| (p, p.saturating_add(bytes));
        let overlap = |a: (usize, usize), b: (usize, usize)| a.0 < b.1 && b.0 < a.1;
        // An absent array is an empty range, which overlaps nothing.
        let inputs = [
            (
                "num_scheduled_tokens",
                range(counts as usize, r * size_of::<i32>()),
            ),
            (
                "split_points",
                split_points.map_or((0, 0), |p| range(p as usize, (n - 1) * size_of::<i32>())),
            ),
        ];
        let slices_range = range(slices as usize, n * size_of::<UbatchSlice>());
        let padded_range = if padded_slices.is_null() {
            (0, 0)
        } else {
            range(padded_slices as usize, n * size_of::<UbatchSlice>())
        };
        for (out_name, out_range) in [("slices", slices_range), ("padded_slices", padded_range)] {
            for (in_name, in_range) in inputs {
                if overlap(out_range, in_range) {
                    return Err(invalid!("{out_name} overlaps {in_name}"));
                }
            }
        }
        if overlap(padded_range, slices_range) {
            return Err(invalid!("padded_slices overlaps slices"));
        }
        let split_points = match split_points {
            // SAFETY: non-NULL and aligned (checked); the caller promises `num_ubatches - 1`
            // (>= 1) readable split points there for the call.
            Some(points) => unsafe { std::slice::from_raw_parts(points, n - 1) },
            None => &[],
        };
        Ok(Self {
            // SAFETY: non-NULL and aligned (checked); the caller promises `num_requests` (>= 1)
            // readable counts there for the call.
            counts: unsafe { std::slice::from_raw_parts(counts, r) },
            split_points,
            // SAFETY: non-NULL and aligned (checked); the caller promises `num_ubatches` (>= 2)
            // writable slices there, overlapping no input (checked).
            slices: unsafe { std::slice::from_raw_parts_mut(slices, n) },
            padded_slices: if padded_slices.is_null() {
                None
            } else {
                // SAFETY: as for `slices`; checked not to overlap an input nor `slices`.
                Some(unsafe { std::slice::from_raw_parts_mut(padded_slices, n) })
            },
        })
    }
}

/// One slicer call over its formed arrays: run by [`run`], in an AVX2 build where the CPU has
/// it (one build per call kind, no dispatch inside).
trait Slicer {
    /// The pure slicer (inlined: it takes the caller's code generation).
    fn slice(self) -> Result<()>;
}

/// A `dp_make_ubatch_slices` call.
struct V1<'a> {
    inputs: SliceInputs<'a>,
    slices: &'a mut [UbatchSlice],
    padded_slices: Option<&'a mut [UbatchSlice]>,
}

impl Slicer for V1<'_> {
    #[inline(always)]
    fn slice(self) -> Result<()> {
        slices::make_ubatch_slices(&self.inputs, self.slices, self.padded_slices)
    }
}

/// A `dp_make_ubatch_slices_at` call.
struct At<'a> {
    batch: SliceBatch<'a>,
    split_points: &'a [i32],
    slices: &'a mut [UbatchSlice],
    padded_slices: Option<&'a mut [UbatchSlice]>,
}

impl Slicer for At<'_> {
    #[inline(always)]
    fn slice(self) -> Result<()> {
        slices::make_ubatch_slices_at(
            &self.batch,
            self.split_points,
            self.slices,
            self.padded_slices,
        )
    }
}

/// A `dp_make_ubatch_slices_v2` call.
struct V2<'a> {
    batch: SliceBatch<'a>,
    uniform_token_count: i32,
    slices: &'a mut [UbatchSlice],
}

impl Slicer for V2<'_> {
    #[inline(always)]
    fn slice(self) -> Result<()> {
        slices::make_ubatch_slices_v2(&self.batch, self.uniform_token_count, self.slices)
    }
}

/// Runs `job`, in its AVX2 build when the CPU has AVX2 (the passes over the counts are vector
/// sums and ORs: twice the lanes of the baseline target's SSE2).
#[inline(always)]
fn run(job: impl Slicer) -> Result<()> {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked at run time just above.
        return unsafe { run_avx2(job) };
    }
    job.slice()
}

/// [`Slicer::slice`] with AVX2 code generation.
///
/// # Safety
/// Only on a CPU with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn run_avx2(job: impl Slicer) -> Result<()> {
    job.slice()
}
