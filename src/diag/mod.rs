//! What dpcoord tells a person debugging or profiling it: the `DPCOORD_DEBUG` log and NVTX
//! ranges. Both are read from the environment once per process and cost a relaxed atomic
//! load and a branch per call site while switched off (no formatting, no allocation, no
//! call into NVTX).
//!
//! # The log (`DPCOORD_DEBUG`, like `NCCL_DEBUG`)
//!
//! | variable | values |
//! |---|---|
//! | `DPCOORD_DEBUG` | `WARN` (every failure), `INFO` (+ once per coordinator: NCCL and CUDA versions, the library files resolved), `TRACE` (+ every call with its decision); case-insensitive; unset or anything else: off |
//! | `DPCOORD_DEBUG_FILE` | write to this file instead of stderr; `%h` = host name, `%p` = pid, `%%` = `%` (as `NCCL_DEBUG_FILE`); appended to, created at the first line; stderr when it cannot be opened |
//!
//! One event is one line, written with one `write(2)`, so lines of several threads or
//! processes sharing a file never interleave within a line:
//!
//! ```text
//! host:pid:tid dpcoord LEVEL [rank R/N comm 0xADDR | group NAME, step S] message
//! gpu7:4021:4021 dpcoord WARN invalid argument: req->num_tokens_unpadded = -3 must be >= 0
//! gpu7:4021:4033 dpcoord TRACE [rank 1/4 comm 0x55d3c1e0 step 42] dp_coordinator_end: ubatch 1 ...
//! ```
//!
//! The host name is cut at its first dot, as NCCL does; the bracket lists only what the call
//! site knows (a failure logged at the C boundary knows only its message, exactly the text
//! `dp_last_error` returns).
//!
//! API: [`log!`]`(Level::Trace, Ctx::new().rank(r, n).step(s), "format", args..)` (the
//! context and the arguments are evaluated only when the level is on), [`enabled`] to
//! guard work done only for a line, [`coordinator_info`] for the GPU path's INFO line,
//! [`decision`] for a call's TRACE line.
//!
//! # NVTX ranges
//!
//! [`range`]`(c"dp_coordinator_begin", rank, step_id)` returns a guard: while it lives, a
//! profiler attached through NVTX (nsys, ncu: they set `NVTX_INJECTION64_PATH`) shows a
//! range named `dp_coordinator_begin rank R step S` in the `dpcoord` domain on the calling
//! thread. See [`nvtx`] for why NVTX's C header rather than the `nvtx` crate.

pub(crate) mod log;
pub(crate) mod nvtx;
pub(crate) mod straggler;
/// The helpers the NVTX unit tests (`nvtx.rs`) share with `tests/diag.rs`.
#[cfg(test)]
#[path = "../../tests/diag_support/mod.rs"]
mod test_support;

pub(crate) use self::log::{coordinator_info, decision, enabled, Ctx, Level};
pub(crate) use self::nvtx::range;
pub(crate) use self::straggler::Stragglers;

/// Writes one line at `level` when `DPCOORD_DEBUG` lets it through:
/// `diag::log!(Level::Info, ctx, "format {}", args)`. While the level is off this is one
/// relaxed atomic load and a branch; `ctx` and the arguments are not evaluated.
macro_rules! log_line {
    ($level:expr, $ctx:expr, $($arg:tt)+) => {
        if $crate::diag::log::may_log($level) {
            $crate::diag::log::emit($level, &$ctx, format_args!($($arg)+));
        }
    };
}
pub(crate) use log_line as log;
