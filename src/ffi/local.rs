//! Decisions with no exchange (0.3): `dp_decide_local` (vLLM's `skip_dp_coordination`, for
//! process-local warm-up and capture) and the V2 reuse of a prior agreement for draft steps
//! (`dp_reuse_agreement`, `dp_uniform_draft_agreement`).

use super::decide::{out_array, Span};
use super::graphs::table_of;
use super::slots::read_nullable_options;
use super::{
    boundary, check_ptr, check_result, dp_batch_request, dp_batch_result, dp_decide_options,
    dp_graphs, dp_status, read_request, read_result, write_result,
};
use crate::error::{invalid, Result};
use crate::rules::{self, Agreement, Prior, DP_RULES_VLLM_V2};

/// A decision with no exchange, as if every rank had sent this rank's request (vLLM's
/// `skip_dp_coordination()`): for process-local warm-up and CUDA-graph capture ONLY. It is not
/// the decision the other ranks reach (`res->local` is true); never run a collective of the
/// model on it.
///
/// V1 (`req->rules` 0): `should_ubatch` = this rank would attempt it and its own last
/// microbatch is not empty, every rank's tokens are this rank's padded count; the rest as if
/// every record were this rank's. V2 (`req->rules` 1): the V2 decision over dp_size copies of
/// this rank's inputs, with `opts->graphs` (nullable `opts`: no table). `num_tokens_after_padding`
/// (nullable, `dp_size` entries) receives `[own count] x dp_size` when the result has an array
/// (not for dp_size 1 or an idle step). `res->step_id` is the request's. Local, thread-safe,
/// allocation-free; outputs are written only on success. Returns `DP_OK` or
/// `DP_ERR_INVALID_ARGUMENT` (a pointer, a size, the rank, or a request field: named).
#[no_mangle]
pub extern "C" fn dp_decide_local(
    req: *const dp_batch_request,
    dp_size: i32,
    dp_rank: i32,
    opts: *const dp_decide_options,
    num_tokens_after_padding: *mut i32,
    res: *mut dp_batch_result,
) -> dp_status {
    boundary(|| {
        let res_size = check_result(res)?;
        let request = read_request(req)?;
        let options = read_nullable_options(opts)?;
        let table = table_of(options.graphs, "opts->graphs")?;
        if dp_size < 1 {
            return Err(invalid!("dp_size = {dp_size} must be >= 1"));
        }
        let out = out_array(num_tokens_after_padding, dp_size as usize, &[])?;
        let has_array = out.is_some();
        let mut filled = if request.rules == DP_RULES_VLLM_V2 {
            let a = rules::decide_local_v2(&request, dp_size, dp_rank, table, out)?;
            let mut r = dp_batch_result::from_agreement(&a, dp_rank, dp_size, request.step_id);
            r.has_num_tokens_after_padding = has_array && a.has_array;
            r
        } else {
            let d = rules::decide_local_v1(&request, dp_size, dp_rank, out)?;
            let mut r = dp_batch_result::from_decision(&d, dp_rank, dp_size, request.step_id);
            r.has_num_tokens_after_padding = has_array && d.has_num_tokens_after_padding;
            r
        };
        if filled.has_num_tokens_after_padding {
            filled.num_tokens_after_padding = num_tokens_after_padding;
        }
        filled.local = true;
        write_result(res, res_size, &filled);
        Ok(())
    })
}

/// Reuses a prior V2 agreement for a draft step over the same batch, with no exchange (vLLM's
/// `dispatch_cg_and_sync_dp(dp_sync_state=...)`: the EAGLE-style draft prefill over the
/// target's padded batch). `*prior` is the result of this rank's V2 step (its host array, when
/// it has one, must still be valid: until the next call on its coordinator or group, or as
/// long as the caller keeps its own array); `*draft` is the draft's request (V2 rules: its
/// `num_tokens` is the target's padded count, its `num_reqs` and LoRA count its own; its
/// uniform count and query bound are replaced by the prior's agreed ones). `graphs` is the
/// draft's graph table (nullable: no table; it may differ from the target's, and may pad
/// further).
///
/// Checks, as errors where vLLM asserts: the prior's array entry for this rank equals the
/// draft's `num_tokens`; the prior's uniform count is none or the draft's. Stricter than
/// vLLM: a draft `parent_step_id` and a prior `step_id` that are both set must be equal, else
/// `DP_ERR_INCONSISTENT_RANKS`. An idle prior agreed nothing: refused. The result is the same
/// on every rank when every rank reuses its own result of the same step; `res->step_id` is
/// the prior's. `num_tokens_after_padding` (nullable, `dp_size` entries, must not overlap the
/// prior's array) receives the reused array. Local, thread-safe, allocation-free; outputs
/// are written only on success. Returns `DP_OK`, `DP_ERR_INVALID_ARGUMENT` or
/// `DP_ERR_INCONSISTENT_RANKS`.
#[no_mangle]
pub extern "C" fn dp_reuse_agreement(
    prior: *const dp_batch_result,
    draft: *const dp_batch_request,
    graphs: *const dp_graphs,
    num_tokens_after_padding: *mut i32,
    res: *mut dp_batch_result,
) -> dp_status {
    boundary(|| {
        let res_size = check_result(res)?;
        let draft = read_request(draft)?;
        let table = table_of(graphs, "graphs")?;
        reuse(prior, num_tokens_after_padding, res, res_size, |p, out| {
            rules::reuse_agreement(p, &draft, table, out)
        })
    })
}

/// The agreement of a uniform draft decode after a prior V2 agreement, with no exchange
/// (vLLM's `_build_uniform_batch_dp_sync`): every rank runs `prior max_num_reqs x query_len`
/// tokens with uniform count and query bound `query_len`, not eager (FULL graphs stay usable
/// after an eager target step), dispatched over `graphs` (nullable: no table) with this rank's
/// `num_reqs` (`num_reqs x query_len` must fit: vLLM's assert, an error here). Otherwise as
/// `dp_reuse_agreement` (the prior, the array, the statuses; no parent step id to check).
#[no_mangle]
pub extern "C" fn dp_uniform_draft_agreement(
    prior: *const dp_batch_result,
    num_reqs: i32,
    query_len: i32,
    graphs: *const dp_graphs,
    num_tokens_after_padding: *mut i32,
    res: *mut dp_batch_result,
) -> dp_status {
    boundary(|| {
        let res_size = check_result(res)?;
        let table = table_of(graphs, "graphs")?;
        reuse(prior, num_tokens_after_padding, res, res_size, |p, out| {
            rules::uniform_draft_agreement(p, num_reqs, query_len, table, out)
        })
    })
}

/// What both reuse functions share: the prior read and checked, the output array, the result
/// written (`decide` is the rule applied to the prior).
fn reuse(
    prior: *const dp_batch_result,
    array: *mut i32,
    res: *mut dp_batch_result,
    res_size: usize,
    decide: impl FnOnce(&Prior<'_>, Option<&mut [i32]>) -> Result<Agreement>,
) -> Result<()> {
    let p = read_result(prior, "prior")?;
    if p.rules != DP_RULES_VLLM_V2 {
        return Err(invalid!(
            "prior->rules = {}: only a V2 result (rules 1) can be reused",
            p.rules
        ));
    }
    if p.dp_size < 1 || p.dp_rank < 0 || p.dp_rank >= p.dp_size {
        return Err(invalid!(
            "prior->dp_rank = {} / prior->dp_size = {} is not a result of a decision",
            p.dp_rank,
            p.dp_size
        ));
    }
    let n = p.dp_size as usize;
    let prior_array = if p.has_num_tokens_after_padding {
        check_ptr(
            p.num_tokens_after_padding,
            "prior->num_tokens_after_padding",
        )?;
        // SAFETY: non-NULL and aligned (checked); the C caller promises the prior's array is
        // still valid (its documented lifetime), `dp_size` int32.
        Some(unsafe { std::slice::from_raw_parts(p.num_tokens_after_padding, n) })
    } else {
        None
    };
    let inputs = [Span::of(
        prior_array.map_or(std::ptr::null(), <[i32]>::as_ptr),
        n,
        "prior->num_tokens_after_padding",
    )];
    let out = out_array(array, n, &inputs)?;
    let has_array = out.is_some();
    let view = Prior {
        dp_size: p.dp_size,
        dp_rank: p.dp_rank,
        step_id: p.step_id,
        agreement: p.agreement(),
        array: prior_array,
    };
    let a = decide(&view, out)?;
    let mut filled = dp_batch_result::from_agreement(&a, p.dp_rank, p.dp_size, p.step_id);
    filled.has_num_tokens_after_padding = has_array && a.has_array;
    if filled.has_num_tokens_after_padding {
        filled.num_tokens_after_padding = array;
    }
    write_result(res, res_size, &filled);
    Ok(())
}
