//! `end`'s one host wait and what it accepts: the sequence word the kernel writes last, then
//! the verdict, decision and straggler report the kernel published (or, on any other verdict,
//! the exact error from the kernel's copy of the slots, by `rules::slots`: one source of every
//! message).

use std::sync::atomic::{fence, Ordering};
use std::time::Instant;

use super::flight::decide_checked;
use super::{
    cancelled_error, Coordinator, Decided, GpuState, InFlight, CHECK_INTERVAL, POLLS_PER_CLOCK,
    SPIN_BEFORE_YIELD,
};
use crate::cuda::{self, StreamHandle};
use crate::diag;
use crate::error::{Error, ErrorKind, Result};
use crate::kernels as k;
use crate::rules::{slots, Agreement, Decision, Descriptor, GraphTable};
use crate::slot::{join64, Slot};

impl Coordinator {
    /// The one host wait: polls the sequence word the kernel writes last, checking
    /// `cancel`, the communicator, the stream and the clock every [`CHECK_INTERVAL`]. Returns
    /// how long it waited, in ns (0 when the exchange had finished).
    pub(super) fn wait(
        &self,
        gpu: &GpuState,
        seq: u32,
        (stream, marked): (StreamHandle, bool),
        f: &InFlight,
    ) -> Result<i64> {
        if gpu.host.load(k::HOST_SEQ) as u32 == seq {
            fence(Ordering::Acquire);
            return Ok(0);
        }
        let entered = Instant::now();
        let _range = diag::range(c"dp_coordinator_wait", self.dp_rank, f.step_id);
        let mut polls: u32 = 0;
        let mut next_check = f.start + CHECK_INTERVAL;
        loop {
            if gpu.host.load(k::HOST_SEQ) as u32 == seq {
                fence(Ordering::Acquire);
                return Ok(i64::try_from(entered.elapsed().as_nanos()).unwrap_or(i64::MAX));
            }
            polls = polls.wrapping_add(1);
            if polls % POLLS_PER_CLOCK != 0 {
                std::hint::spin_loop();
                continue;
            }
            let now = Instant::now();
            if now < next_check {
                continue;
            }
            next_check = now + CHECK_INTERVAL;
            if self.shared.is_cancelled() {
                return Err(cancelled_error());
            }
            self.nccl.check_async_error(self.comm)?;
            // A special stream means another stream on this thread: its work is behind the
            // event `begin` recorded (see Flight::Exchange). A rank that sent the marker
            // (possibly for a stream capturing a CUDA graph, where a stream query from this
            // thread is refused and invalidates the capture) only polls the host word.
            let done = match (marked, f.rejected.is_some()) {
                (_, true) => false,
                (true, false) => {
                    let _current = gpu.ctx.enter()?;
                    gpu.event.done()?
                }
                (false, false) => cuda::stream_idle(stream)?,
            };
            if done && gpu.host.load(k::HOST_SEQ) as u32 != seq {
                return Err(Error::internal(
                    "the post-processing kernel finished without publishing its result",
                ));
            }
            if f.deadline.is_some_and(|d| now >= d) {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "the exchange did not complete within timeout_ms = {} (a rank did not \
                         call, or is stuck); the communicator is unusable: abort it with \
                         ncclCommAbort on every rank, then destroy the coordinator",
                        f.timeout_ms
                    ),
                ));
            }
            if now - f.start >= SPIN_BEFORE_YIELD {
                std::thread::yield_now();
            }
        }
    }
}

/// What the kernel published for a step it accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Published {
    pub(super) decided: Decided,
    pub(super) last_rank: i32,
    pub(super) arrival_skew_ns: i64,
}

/// The decision words of an accepted step, by the rule set the kernel names.
fn decided(word: &dyn Fn(usize) -> i32) -> Decided {
    let flag = |i: usize| word(i) != 0;
    if word(k::HOST_RULES) != k::RULES_VLLM_V2 {
        return Decided::V1(Decision {
            should_ubatch: flag(k::HOST_SHOULD_UBATCH),
            should_dp_pad: flag(k::HOST_SHOULD_DP_PAD),
            has_num_tokens_after_padding: true,
            synced_cudagraph_mode: word(k::HOST_SYNCED_CUDAGRAPH_MODE),
            num_tokens_after_padding_self: word(k::HOST_NUM_TOKENS_AFTER_PADDING_SELF),
            max_num_tokens_padded: word(k::HOST_MAX_NUM_TOKENS_PADDED),
            min_num_tokens_unpadded: word(k::HOST_MIN_NUM_TOKENS_UNPADDED),
            num_ubatches: word(k::HOST_NUM_UBATCHES),
        });
    }
    Decided::V2(Agreement {
        idle: flag(k::HOST_IDLE),
        graph: Descriptor {
            mode: word(k::HOST_SYNCED_CUDAGRAPH_MODE),
            num_tokens: word(k::HOST_GRAPH_NUM_TOKENS),
            num_reqs: word(k::HOST_GRAPH_NUM_REQS),
            uniform_token_count: word(k::HOST_GRAPH_UNIFORM),
            max_query_len: word(k::HOST_GRAPH_MAX_QUERY_LEN),
            num_ubatches: word(k::HOST_NUM_UBATCHES),
            num_active_loras: word(k::HOST_GRAPH_LORAS),
        },
        eager: flag(k::HOST_EAGER),
        uniform_token_count: word(k::HOST_AGREED_UNIFORM),
        max_query_len: word(k::HOST_AGREED_MAX_QUERY_LEN),
        max_num_reqs: word(k::HOST_MAX_NUM_REQS),
        skip_drafts: flag(k::HOST_SKIP_DRAFTS),
        has_array: flag(k::HOST_HAS_ARRAY),
        padded: flag(k::HOST_SHOULD_DP_PAD),
        num_tokens_self: word(k::HOST_NUM_TOKENS_AFTER_PADDING_SELF),
        max_num_tokens: word(k::HOST_MAX_NUM_TOKENS_PADDED),
        min_num_tokens: word(k::HOST_MIN_NUM_TOKENS_UNPADDED),
    })
}

/// Reads the verdict the kernel published in the host block (`word(i)` is its word `i`) for
/// `dp_size` ranks and exchange `seq`, as rank `dp_rank` with graph `table`: the decision on
/// `STATUS_OK`, else the error `rules::slots` finds in the kernel's copy of the slots (the
/// transport's own message for stale slots, which `rules::slots` does not check).
pub(super) fn read(
    word: &dyn Fn(usize) -> i32,
    dp_size: usize,
    dp_rank: i32,
    seq: u32,
    table: Option<&GraphTable>,
) -> Result<Published> {
    let status = word(k::HOST_STATUS);
    if status == k::STATUS_OK {
        return Ok(Published {
            decided: decided(word),
            last_rank: word(k::HOST_LAST_RANK),
            arrival_skew_ns: join64(word(k::HOST_SKEW) as u32, word(k::HOST_SKEW + 1) as u32),
        });
    }
    // Error path: the exact message from the kernel's copy of the slots.
    let base = k::host_slots_offset(dp_size);
    let gathered: Vec<Slot> = (0..dp_size)
        .map(|r| Slot {
            opaque: std::array::from_fn(|i| word(base + r * k::SLOT_WORDS + i) as u32),
        })
        .collect();
    if status == k::STATUS_STALE {
        return Err(stale_error(&gathered, dp_rank, seq));
    }
    let checked = slots::check(&gathered, None)?;
    decide_checked(&gathered, dp_rank, &checked, table)?;
    Err(Error::internal(format!(
        "the post-processing kernel flagged status {status}, but rules::slots accepts the same \
         slots"
    )))
}

/// The message for slots that do not carry this exchange's sequence number.
pub(super) fn stale_error(gathered: &[Slot], dp_rank: i32, seq: u32) -> Error {
    let bad: Vec<String> = gathered
        .iter()
        .enumerate()
        .filter(|(_, s)| s.seq() != seq)
        .take(4)
        .map(|(r, s)| format!("rank {r} carries {}", s.seq()))
        .collect();
    let own_ok = gathered[dp_rank as usize].seq() == seq;
    let (kind, why) = if own_ok {
        (
            ErrorKind::InconsistentRanks,
            "the ranks' coordinators are out of step: a coordinator was recreated on some rank, \
             or an earlier exchange was aborted or completed on only some ranks (what the \
             sequence number detects; a rank that skipped a call is caught only by step ids)",
        )
    } else {
        (
            ErrorKind::Nccl,
            "the collective did not deliver this call's data, not even this rank's own slot (an \
             aborted, partial or failed ncclAllGather)",
        )
    };
    Error::new(
        kind,
        format!(
            "stale exchange: slots must carry this exchange's sequence number {seq}, but {}: \
             {why}; nothing of this exchange was used",
            bad.join(", ")
        ),
    )
}
