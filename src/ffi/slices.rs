//! `dp_make_ubatch_slices`: this rank's microbatch slices (vLLM V1's
//! `maybe_create_ubatch_slices`), computed by the pure [`crate::slices`].

use std::mem::size_of;

use super::{boundary, check_ptr, dp_status};
use crate::error::invalid;
use crate::slices::{self, SliceInputs, UbatchSlice};

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
        check_ptr(num_scheduled_tokens, "num_scheduled_tokens")?;
        check_ptr(slices.cast_const(), "slices")?;
        if !padded_slices.is_null() {
            check_ptr(padded_slices.cast_const(), "padded_slices")?;
        }
        let (r, n) = (num_requests as usize, num_ubatches as usize);
        let range = |p: usize, bytes: usize| (p, p.saturating_add(bytes));
        let counts_range = range(num_scheduled_tokens as usize, r * size_of::<i32>());
        let slices_range = range(slices as usize, n * size_of::<UbatchSlice>());
        let overlap = |a: (usize, usize), b: (usize, usize)| a.0 < b.1 && b.0 < a.1;
        if overlap(slices_range, counts_range) {
            return Err(invalid!("slices overlaps num_scheduled_tokens"));
        }
        if !padded_slices.is_null() {
            let padded_range = range(padded_slices as usize, n * size_of::<UbatchSlice>());
            if overlap(padded_range, counts_range) {
                return Err(invalid!("padded_slices overlaps num_scheduled_tokens"));
            }
            if overlap(padded_range, slices_range) {
                return Err(invalid!("padded_slices overlaps slices"));
            }
        }
        // SAFETY: non-NULL and aligned (checked); the caller promises `num_requests` (>= 1,
        // checked) readable counts there for the call.
        let counts = unsafe { std::slice::from_raw_parts(num_scheduled_tokens, r) };
        // SAFETY: non-NULL and aligned (checked); the caller promises `num_ubatches` (>= 2,
        // checked) writable slices there, not overlapping the counts (checked).
        let out = unsafe { std::slice::from_raw_parts_mut(slices, n) };
        let padded = if padded_slices.is_null() {
            None
        } else {
            // SAFETY: as for `slices`; checked not to overlap the counts nor `slices`.
            Some(unsafe { std::slice::from_raw_parts_mut(padded_slices, n) })
        };
        let inputs = SliceInputs {
            num_scheduled_tokens: counts,
            num_tokens_padded,
            num_requests_padded,
            num_ubatches,
            split_point,
        };
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked at run time just above.
            return unsafe { make_avx2(&inputs, out, padded) };
        }
        slices::make_ubatch_slices(&inputs, out, padded)
    })
}

/// [`slices::make_ubatch_slices`] with AVX2 code generation (its passes over the counts are
/// vector sums and ORs: twice the lanes of the baseline target's SSE2).
///
/// # Safety
/// Only on a CPU with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn make_avx2(
    inputs: &SliceInputs<'_>,
    out: &mut [UbatchSlice],
    padded: Option<&mut [UbatchSlice]>,
) -> crate::error::Result<()> {
    slices::make_ubatch_slices(inputs, out, padded)
}
