//! The host decision: `dp_decide_batch` (0.1) and `dp_decide_batch_with_options` (0.2: dead
//! ranks, step ids), one implementation behind both.

use std::ffi::CStr;
use std::mem::{align_of, offset_of, size_of};

use super::{
    boundary, check_ptr, check_ptr_align, check_result, dp_batch_result, dp_graphs, dp_status,
    init_struct_size, read_field, read_struct_size, write_field, write_result,
};
use crate::diag::{self, Ctx};
use crate::error::{invalid, Result};
use crate::rules::{self, DecideOptions, RankRecord, DEFAULT_NUM_UBATCHES, DP_PAD_POLICY_EXPLICIT};

/// Options of `dp_decide_batch_with_options`. Initialise with `dp_decide_options_init`, then
/// set fields; the library reads only `min(struct_size, sizeof)` bytes, so the struct can grow.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct dp_decide_options {
    /// `sizeof(dp_decide_options)` as the caller compiled it (set by `dp_decide_options_init`).
    pub struct_size: u32,
    /// 0 EXPLICIT (default), 1 WHEN_CUDAGRAPH; every rank must pass the same value.
    pub pad_policy: i32,
    /// Microbatches per step, >= 2 (default 2); every rank must pass the same value.
    pub num_ubatches: i32,
    /// NULL (default): every rank is live. Else `dp_size` bytes, 1 live, 0 dead: a dead slot's
    /// record is not read for the decision (garbage there is fine), it votes yes on
    /// microbatching and takes no part in min/max or the pad-flag comparison (vLLM's
    /// `neutralize_dead_dp_columns`); its tokens after padding are max(padded) of the live ranks
    /// when padding, else 0. The calling rank must be live. Borrowed for the call only.
    pub active_ranks: *const u8,
    /// NULL (default): unchecked. Else `dp_size` step ids (each >= 0), compared over the live
    /// ranks: when any is non-zero all must be equal, else `DP_ERR_INCONSISTENT_RANKS` naming two
    /// ranks and their ids; the agreed id lands in `res->step_id`. Borrowed for the call only.
    pub step_ids: *const i64,
    /// NULL (default): no graph table. Else the V2 rules' graph table (`dp_graphs_create`),
    /// read by `dp_make_slot`, `dp_decide_slots` and `dp_decide_local` under the V2 rules
    /// (0.3); borrowed for the call only.
    pub graphs: *const dp_graphs,
}

/// The smallest `struct_size` accepted: the 0.2 struct (its first version, 32 bytes).
const OPTIONS_MIN_SIZE: usize = offset_of!(dp_decide_options, graphs);

/// Invokes `$visit!` with every field of `dp_decide_options` after `struct_size`: the one list
/// the initialiser and the reader walk.
macro_rules! options_fields {
    ($visit:ident) => {
        $visit!(pad_policy, num_ubatches, active_ranks, step_ids, graphs)
    };
}

/// Fills the caller's `*opts` with the defaults (pad policy EXPLICIT, 2 microbatches, every
/// rank live, step ids unchecked) and `struct_size = size`, writing only the fields inside its
/// first `min(size, sizeof)` bytes. Call it through the header's `dp_decide_options_init(opts)`,
/// which passes the caller's `sizeof(*opts)`. `opts` must be aligned to 8 bytes.
///
/// Local, thread-safe. A NULL or misaligned `opts`, or a `size` below 32 (the 0.2 struct),
/// writes nothing and leaves a message for `dp_last_error`.
#[no_mangle]
pub extern "C" fn dp_decide_options_init_sized(opts: *mut dp_decide_options, size: usize) {
    boundary(|| {
        check_ptr(opts.cast_const(), "opts")?;
        let struct_size = init_struct_size(size, OPTIONS_MIN_SIZE, "dp_decide_options")?;
        let base = opts.cast::<u8>();
        let defaults = RawOptions::default();
        macro_rules! write {
            ($($field:ident),+) => {
                // SAFETY: `opts` is non-NULL and aligned (checked) and the C caller promises
                // `size` writable bytes there; `write_field` writes only inside them.
                unsafe {
                    write_field(|o: &dp_decide_options| o.struct_size, base, size, 0, struct_size);
                    $(write_field(
                        |o: &dp_decide_options| o.$field,
                        base,
                        size,
                        offset_of!(dp_decide_options, $field),
                        defaults.$field,
                    );)+
                }
            };
        }
        options_fields!(write);
        Ok(())
    });
}

/// Rust callers' counterpart of the header's inline `dp_decide_options_init(opts)`.
pub fn dp_decide_options_init(opts: *mut dp_decide_options) {
    dp_decide_options_init_sized(opts, size_of::<dp_decide_options>());
}

/// The decision from every rank's record (`records[r]` is rank r's, `dp_size` entries), every
/// rank live and step ids unchecked: `dp_decide_batch_with_options` with default options but
/// for `pad_policy` and `num_ubatches`.
///
/// Local and deterministic: every rank passing the same records gets the same answer.
/// `num_tokens_after_padding` (nullable, `dp_size` entries, must not overlap `records`)
/// receives every rank's tokens after padding, and `res->num_tokens_after_padding` then
/// points at it; with NULL, only the scalars are filled and that pointer is NULL. For
/// dp_size == 1 no exchange is implied: no array is written and
/// `has_num_tokens_after_padding` is false. `res->num_tokens_after_padding_device` is
/// always NULL and `res->step_id` 0. `*res` must be initialised with `dp_batch_result_init`
/// (its `struct_size` is read). Outputs are written only on success. Thread-safe,
/// allocation-free. Returns `DP_OK`, `DP_ERR_INVALID_ARGUMENT` (bad pointer, sizes, rank,
/// policy, num_ubatches or record field: the message names it) or
/// `DP_ERR_INCONSISTENT_RANKS`.
#[no_mangle]
pub extern "C" fn dp_decide_batch(
    records: *const RankRecord,
    dp_size: i32,
    dp_rank: i32,
    pad_policy: i32,
    num_ubatches: i32,
    num_tokens_after_padding: *mut i32,
    res: *mut dp_batch_result,
) -> dp_status {
    const CALL: &CStr = c"dp_decide_batch";
    let _range = diag::range(CALL, dp_rank, 0);
    boundary(|| {
        let options = RawOptions {
            pad_policy,
            num_ubatches,
            ..RawOptions::default()
        };
        decide(
            "dp_decide_batch",
            records,
            dp_size,
            dp_rank,
            &options,
            num_tokens_after_padding,
            res,
        )
    })
}

/// The decision from every live rank's record, with dead slots and step ids (0.2).
///
/// As `dp_decide_batch`, with `*opts` (initialised by `dp_decide_options_init`; its
/// `struct_size` is read first) giving the pad policy, `num_ubatches`, the live ranks and the
/// step ids (see `dp_decide_options`). `dp_rank` must be live. `res->step_id` receives the
/// agreed step id (0 when unchecked). The arrays `active_ranks` and `step_ids` must not overlap
/// `num_tokens_after_padding`. Local, deterministic, thread-safe, allocation-free; outputs are
/// written only on success. Returns `DP_OK`, `DP_ERR_INVALID_ARGUMENT` (bad pointer or size, a
/// rank, policy, num_ubatches, live byte, step id or live record field out of range, or the
/// calling rank dead: the message names it) or `DP_ERR_INCONSISTENT_RANKS` (EXPLICIT pad flags
/// or step ids differ across live ranks: the message names two ranks).
#[no_mangle]
pub extern "C" fn dp_decide_batch_with_options(
    records: *const RankRecord,
    dp_size: i32,
    dp_rank: i32,
    opts: *const dp_decide_options,
    num_tokens_after_padding: *mut i32,
    res: *mut dp_batch_result,
) -> dp_status {
    const CALL: &CStr = c"dp_decide_batch_with_options";
    let _range = diag::range(CALL, dp_rank, 0);
    boundary(|| {
        let options = read_options(opts)?;
        decide(
            "dp_decide_batch_with_options",
            records,
            dp_size,
            dp_rank,
            &options,
            num_tokens_after_padding,
            res,
        )
    })
}

/// The options as read from C: pointers not yet checked.
pub(crate) struct RawOptions {
    pub(crate) pad_policy: i32,
    pub(crate) num_ubatches: i32,
    pub(crate) active_ranks: *const u8,
    pub(crate) step_ids: *const i64,
    pub(crate) graphs: *const dp_graphs,
}

impl Default for RawOptions {
    /// What `dp_decide_options_init` writes: EXPLICIT, 2 microbatches, every rank live, step
    /// ids unchecked.
    fn default() -> Self {
        Self {
            pad_policy: DP_PAD_POLICY_EXPLICIT,
            num_ubatches: DEFAULT_NUM_UBATCHES,
            active_ranks: std::ptr::null(),
            step_ids: std::ptr::null(),
            graphs: std::ptr::null(),
        }
    }
}

impl RawOptions {
    /// `active_ranks` as `dp_size` bytes (`None`: every rank live).
    pub(crate) fn live<'a>(&self, dp_size: usize) -> Option<&'a [u8]> {
        if self.active_ranks.is_null() {
            None
        } else {
            // SAFETY: non-NULL (a byte has no alignment), and the caller promises `dp_size`
            // readable bytes there for the call.
            Some(unsafe { std::slice::from_raw_parts(self.active_ranks, dp_size) })
        }
    }
}

/// The caller's `num_tokens_after_padding` (nullable) as `n` int32: checked for alignment and
/// for overlap with the call's `inputs`, so the slices never alias.
pub(crate) fn out_array<'a>(
    array: *mut i32,
    n: usize,
    inputs: &[Span],
) -> Result<Option<&'a mut [i32]>> {
    if array.is_null() {
        return Ok(None);
    }
    check_ptr(array.cast_const(), "num_tokens_after_padding")?;
    let out_span = Span::of(array.cast_const(), n, "");
    if let Some(input) = inputs.iter().find(|s| s.overlaps(&out_span)) {
        return Err(invalid!("num_tokens_after_padding overlaps {}", input.name));
    }
    // SAFETY: non-NULL, aligned (checked), `n` writable int32 promised by the caller, and
    // checked above not to overlap any input.
    Ok(Some(unsafe { std::slice::from_raw_parts_mut(array, n) }))
}

/// Reads `*opts`: `struct_size` first, then only the fields inside it (the rest takes the
/// defaults of `dp_decide_options_init`).
pub(crate) fn read_options(opts: *const dp_decide_options) -> Result<RawOptions> {
    let base = opts.cast::<u8>();
    let size = read_struct_size(base, "opts", "dp_decide_options", OPTIONS_MIN_SIZE)?;
    check_ptr(opts, "opts")?;
    let mut options = RawOptions::default();
    macro_rules! read {
        ($($field:ident),+) => {$(
            if let Some(v) = read_field(
                |o: &dp_decide_options| o.$field,
                base,
                size,
                offset_of!(dp_decide_options, $field),
            ) {
                options.$field = v;
            }
        )+};
    }
    options_fields!(read);
    Ok(options)
}

/// The one implementation behind both entry points (`call` names the entry point).
fn decide(
    call: &str,
    records: *const RankRecord,
    dp_size: i32,
    dp_rank: i32,
    options: &RawOptions,
    num_tokens_after_padding: *mut i32,
    res: *mut dp_batch_result,
) -> Result<()> {
    let res_size = check_result(res)?;
    rules::check_decide_args(
        i64::from(dp_size),
        dp_rank,
        options.pad_policy,
        options.num_ubatches,
    )?;
    check_ptr(records, "records")?;
    let n = dp_size as usize;
    let inputs = [
        Span::of(records, n, "records"),
        Span::of(options.active_ranks, n, "opts->active_ranks"),
        Span::of(options.step_ids, n, "opts->step_ids"),
    ];
    let out = out_array(num_tokens_after_padding, n, &inputs)?;
    // SAFETY: `records` is non-NULL and aligned (checked) and the caller promises `dp_size`
    // (>= 1, checked) readable records there for the duration of the call.
    let records = unsafe { std::slice::from_raw_parts(records, n) };
    let active_ranks = options.live(n);
    let step_ids = if options.step_ids.is_null() {
        None
    } else {
        check_ptr_align(options.step_ids.cast(), "opts->step_ids", align_of::<i64>())?;
        // SAFETY: non-NULL and aligned (checked), and the caller promises `dp_size` readable
        // int64 there for the call.
        Some(unsafe { std::slice::from_raw_parts(options.step_ids, n) })
    };
    let decide_options = DecideOptions {
        pad_policy: options.pad_policy,
        num_ubatches: options.num_ubatches,
        active_ranks,
        step_ids,
    };
    let to = Destination {
        call,
        dp_size,
        array: num_tokens_after_padding,
        res,
        res_size,
    };
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked at run time just above.
        return unsafe { decide_avx2(records, dp_rank, &decide_options, out, &to) };
    }
    decide_and_write(records, dp_rank, &decide_options, out, &to)
}

/// Where a decision goes: the caller's result (checked, `res_size` bytes) and array.
struct Destination<'a> {
    call: &'a str,
    dp_size: i32,
    array: *mut i32,
    res: *mut dp_batch_result,
    res_size: usize,
}

/// `rules::decide_with_options`, then the result written: the part of the call that runs
/// compiled twice, for the baseline target and for AVX2 (the pass is vector min/max, which
/// SSE2 lacks). Only a `Result<()>` crosses from the AVX2 build back, never the decision.
#[inline(always)]
fn decide_and_write(
    records: &[RankRecord],
    dp_rank: i32,
    options: &DecideOptions<'_>,
    out: Option<&mut [i32]>,
    to: &Destination<'_>,
) -> Result<()> {
    let has_array = out.is_some();
    let (decision, step_id) = rules::decide_with_options(records, dp_rank, options, out)?;
    diag::decision(&Ctx::new().rank(dp_rank, to.dp_size), to.call, &decision);
    let mut filled = dp_batch_result::from_decision(&decision, dp_rank, to.dp_size, step_id);
    if has_array && decision.has_num_tokens_after_padding {
        filled.has_num_tokens_after_padding = true;
        filled.num_tokens_after_padding = to.array;
    }
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
    records: &[RankRecord],
    dp_rank: i32,
    options: &DecideOptions<'_>,
    out: Option<&mut [i32]>,
    to: &Destination<'_>,
) -> Result<()> {
    decide_and_write(records, dp_rank, options, out, to)
}

/// A caller's array as an address range, for overlap checks (a NULL array is empty).
pub(crate) struct Span {
    begin: usize,
    end: usize,
    name: &'static str,
}

impl Span {
    pub(crate) fn of<T>(ptr: *const T, n: usize, name: &'static str) -> Span {
        let begin = ptr as usize;
        let end = if ptr.is_null() {
            begin
        } else {
            begin.saturating_add(n.saturating_mul(size_of::<T>()))
        };
        Span { begin, end, name }
    }

    pub(crate) fn overlaps(&self, other: &Span) -> bool {
        self.begin < other.end && other.begin < self.end
    }
}
