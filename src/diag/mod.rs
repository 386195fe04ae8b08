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
/// The helpers the diag tests share with `tests/diag.rs`.
#[cfg(test)]
#[path = "../../tests/diag_support/mod.rs"]
mod test_support;

pub(crate) use self::log::{coordinator_info, decision, enabled, Ctx, Level};
pub(crate) use self::nvtx::range;

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

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::test_support::{build_nvtx_tool, rerun, scratch};
    use crate::coordinator::Coordinator;
    use crate::cuda::StreamHandle;
    use crate::nccl;
    use crate::rules::Request;

    #[test]
    #[ignore = "the body of the GPU-path diagnostics test, run by it in a subprocess"]
    fn child_runs_a_one_rank_coordinator() {
        let c = Coordinator::with_nccl(nccl::fake::one_rank(), false);
        let req = Request {
            num_tokens_unpadded: 64,
            cudagraph_mode: 2,
            step_id: 7,
            ..Request::default()
        };
        // SAFETY: NULL is the legacy default stream; the one-rank path never uses it.
        let stream = unsafe { StreamHandle::from_raw(std::ptr::null_mut()) };
        c.begin(stream, &req, None).unwrap();
        let o = c.end().unwrap();
        assert_eq!(o.decision.num_tokens_after_padding_self, 64);
    }

    /// The GPU path's lines and ranges, on a one-rank coordinator over the fake NCCL (its
    /// communicator is 0x1000, its NCCL 2.28.3; no GPU needed).
    #[test]
    fn the_gpu_path_logs_info_and_trace_and_opens_ranges() {
        let dir = scratch("gpu-path");
        let tool = build_nvtx_tool(&dir);
        let events = dir.join("events.txt");
        let output = rerun(
            "diag::tests::child_runs_a_one_rank_coordinator",
            &[
                ("DPCOORD_DEBUG", OsStr::new("TRACE")),
                ("NVTX_INJECTION64_PATH", tool.as_os_str()),
                ("DPCOORD_TEST_NVTX_OUT", events.as_os_str()),
            ],
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        let lines: Vec<&str> = stderr
            .lines()
            .filter_map(|l| l.split_once(" dpcoord ").map(|(_, rest)| rest))
            .collect();
        assert_eq!(lines.len(), 2, "{stderr}");
        assert!(
            lines[0].starts_with(
                "INFO [rank 0/1 comm 0x1000] coordinator created: NCCL 2.28.3 from fake, CUDA \
                 driver "
            ),
            "{}",
            lines[0]
        );
        assert_eq!(
            lines[1],
            "TRACE [rank 0/1 comm 0x1000 step 7] dp_coordinator_end: ubatch 0 dp_pad 0 \
             cudagraph 2 tokens self 64 max 64 min 64"
        );
        assert_eq!(
            std::fs::read_to_string(&events).unwrap(),
            "init\n\
             domain dpcoord\n\
             push dpcoord dp_coordinator_begin rank 0 step 7\n\
             pop dpcoord\n\
             push dpcoord dp_coordinator_end rank 0 step 7\n\
             pop dpcoord\n"
        );
    }
}
