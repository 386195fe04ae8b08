//! The host path on the slot (0.3): `dp_make_slot` and `dp_decide_slots`, the same checked
//! slot the GPU path and the host group exchange (docs/ARCHITECTURE.md, "One slot on every
//! wire"), for callers that exchange the bytes themselves (`MPI_Allgather` of
//! `sizeof(dp_slot)` bytes, their own transport).

use std::ffi::CStr;

use super::decide::{out_array, read_options, RawOptions, Span};
use super::graphs::table_of;
use super::{
    boundary, check_ptr, check_result, dp_batch_request, dp_batch_result, dp_decide_options,
    dp_status, read_request_fields, write_out, write_result,
};
use crate::diag::{self, Ctx};
use crate::error::{invalid, Result};
use crate::rules::{slots, GraphTable, DP_RULES_VLLM_V2};
use crate::slot::now_ns;
pub use crate::slot::Slot;

/// Writes this rank's slot for this step to `*out`: the request's record and settings, its
/// step ids, and this rank's arrival time (`CLOCK_MONOTONIC`), sealed with a checksum. Then
/// exchange `sizeof(dp_slot)` bytes per rank (every rank's slot, indexed by rank) and call
/// `dp_decide_slots` with the same `opts`.
///
/// `opts` (nullable) gives the graph table of the V2 rules (`opts->graphs`: the rank's own
/// dispatch, and the table's hash, which every rank must share); nothing else of it is read
/// here. Local, thread-safe, allocation-free. Unlike the other functions, `*out` is written
/// even when the request is refused: a request that cannot be read or is invalid (NULL, a
/// `struct_size` too small, a field out of range, a bool byte other than 0/1) writes the
/// invalid-request marker and returns `DP_ERR_INVALID_ARGUMENT` naming the field. Exchange
/// that slot anyway: every rank's `dp_decide_slots` then fails this step, naming this rank,
/// and no rank waits for it. Only a NULL or misaligned `out` (4 bytes) writes nothing.
/// Returns `DP_OK` or `DP_ERR_INVALID_ARGUMENT`.
#[no_mangle]
pub extern "C" fn dp_make_slot(
    req: *const dp_batch_request,
    opts: *const dp_decide_options,
    out: *mut Slot,
) -> dp_status {
    let arrival = now_ns();
    boundary(|| {
        check_ptr(out.cast_const(), "out")?;
        let made = read_request_fields(req).and_then(|read| {
            if let Some(e) = read.invalid {
                return Err(e);
            }
            let options = read_nullable_options(opts)?;
            let table = table_of(options.graphs, "opts->graphs")?;
            slots::make(&read.request, 0, arrival, table)
        });
        match made {
            Ok(slot) => {
                write_out(out, slot);
                Ok(())
            }
            Err(e) => {
                write_out(out, Slot::marker(0, arrival));
                Err(e)
            }
        }
    })
}

/// `*opts`, or the defaults of `dp_decide_options_init` when `opts` is NULL.
pub(crate) fn read_nullable_options(opts: *const dp_decide_options) -> Result<RawOptions> {
    if opts.is_null() {
        Ok(RawOptions::default())
    } else {
        read_options(opts)
    }
}

/// The decision from every rank's slot (`slots[r]` is rank r's, `dp_size` of them, as
/// `dp_make_slot` wrote them and the caller exchanged them).
///
/// Checks, over the live ranks and in this order, and fails on every rank alike: every
/// slot's checksum (`DP_ERR_CORRUPT` naming the rank), the invalid-request marker
/// (`DP_ERR_INVALID_ARGUMENT` naming the rank whose request was refused), the configuration
/// (rule set, pad policy, microbatching; `DP_ERR_INCONSISTENT_RANKS` naming two ranks and the
/// setting), the step ids and parent step ids (`DP_ERR_INCONSISTENT_RANKS` naming two ranks
/// and their ids); then decides as `dp_decide_batch_with_options` does. The configuration
/// comes from the slots: `opts` (nullable: every rank live) gives only `active_ranks`;
/// `opts->pad_policy` and `opts->num_ubatches` are not read, and `opts->step_ids` must be NULL
/// (the step ids travel in the slots). `res` receives the decision, the agreed step id, and
/// the straggler report (`last_rank`, `arrival_skew_ns`; `wait_ns` is 0: the caller's own
/// exchange did the waiting). `num_tokens_after_padding` (nullable, `dp_size` entries, must
/// not overlap the inputs) as in `dp_decide_batch`. Local, deterministic, thread-safe,
/// allocation-free; outputs are written only on success. Returns `DP_OK`,
/// `DP_ERR_INVALID_ARGUMENT`, `DP_ERR_INCONSISTENT_RANKS` or `DP_ERR_CORRUPT`.
#[no_mangle]
pub extern "C" fn dp_decide_slots(
    slots: *const Slot,
    dp_size: i32,
    dp_rank: i32,
    opts: *const dp_decide_options,
    num_tokens_after_padding: *mut i32,
    res: *mut dp_batch_result,
) -> dp_status {
    const CALL: &CStr = c"dp_decide_slots";
    let _range = diag::range(CALL, dp_rank, 0);
    boundary(|| {
        let res_size = check_result(res)?;
        let options = read_nullable_options(opts)?;
        let table = table_of(options.graphs, "opts->graphs")?;
        if !options.step_ids.is_null() {
            return Err(invalid!(
                "opts->step_ids must be NULL for dp_decide_slots: the step ids travel in the slots"
            ));
        }
        if dp_size < 1 {
            return Err(invalid!("dp_size = {dp_size} must be >= 1"));
        }
        check_ptr(slots, "slots")?;
        let n = dp_size as usize;
        let inputs = [
            Span::of(slots, n, "slots"),
            Span::of(options.active_ranks, n, "opts->active_ranks"),
        ];
        let out = out_array(num_tokens_after_padding, n, &inputs)?;
        // SAFETY: `slots` is non-NULL and aligned (checked) and the caller promises `dp_size`
        // (>= 1, checked) readable slots there for the duration of the call.
        let slots = unsafe { std::slice::from_raw_parts(slots, n) };
        let live = options.live(n);
        slots::check_shape(slots, dp_rank, live)?;
        let to = Destination {
            array: num_tokens_after_padding,
            res,
            res_size,
        };
        #[cfg(target_arch = "x86_64")]
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked at run time just above.
            return unsafe { decide_avx2(slots, dp_rank, live, table, out, &to) };
        }
        decide_and_write(slots, dp_rank, live, table, out, &to)
    })
}

/// Where a decision goes: the caller's result (checked, `res_size` bytes) and array.
struct Destination {
    array: *mut i32,
    res: *mut dp_batch_result,
    res_size: usize,
}

/// The checks, the decision and the result written: compiled twice, for the baseline target
/// and for AVX2 (as `dp_decide_batch`).
#[inline(always)]
fn decide_and_write(
    slots: &[Slot],
    dp_rank: i32,
    live: Option<&[u8]>,
    table: Option<&GraphTable>,
    out: Option<&mut [i32]>,
    to: &Destination,
) -> Result<()> {
    let dp_size = slots.len() as i32;
    let has_array = out.is_some();
    let checked = slots::check(slots, live)?;
    let ctx = Ctx::new().rank(dp_rank, dp_size).step(checked.step_id);
    let mut filled = if checked.settings.rules == DP_RULES_VLLM_V2 {
        let agreement = slots::decide_v2(slots, dp_rank, live, &checked, table, out)?;
        diag::decision(&ctx, "dp_decide_slots", &agreement);
        let mut filled =
            dp_batch_result::from_agreement(&agreement, dp_rank, dp_size, checked.step_id);
        filled.has_num_tokens_after_padding = has_array && agreement.has_array;
        filled
    } else {
        let decision = slots::decide_v1(slots, dp_rank, live, &checked, out)?;
        diag::decision(&ctx, "dp_decide_slots", &decision);
        let mut filled =
            dp_batch_result::from_decision(&decision, dp_rank, dp_size, checked.step_id);
        filled.has_num_tokens_after_padding = has_array && decision.has_num_tokens_after_padding;
        filled
    };
    if filled.has_num_tokens_after_padding {
        filled.num_tokens_after_padding = to.array;
    }
    filled.last_rank = checked.last_rank;
    filled.arrival_skew_ns = checked.arrival_skew_ns;
    write_result(to.res, to.res_size, &filled);
    Ok(())
}

/// [`decide_and_write`] with AVX2 code generation.
///
/// # Safety
/// Only on a CPU with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn decide_avx2(
    slots: &[Slot],
    dp_rank: i32,
    live: Option<&[u8]>,
    table: Option<&GraphTable>,
    out: Option<&mut [i32]>,
    to: &Destination,
) -> Result<()> {
    decide_and_write(slots, dp_rank, live, table, out, to)
}
