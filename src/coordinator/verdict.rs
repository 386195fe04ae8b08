//! `end`'s one host wait and what it accepts: the sequence word the kernel writes last, then
//! the verdict and decision the kernel published (or, on a flagged status, the exact error
//! from the kernel's copy of the slots).

use std::sync::atomic::{fence, Ordering};
use std::time::Instant;

use super::{
    cancelled_error, Coordinator, GpuState, InFlight, Outcome, CHECK_INTERVAL, POLLS_PER_CLOCK,
    SPIN_BEFORE_YIELD,
};
use crate::cuda::{self, StreamHandle};
use crate::diag;
use crate::error::{Error, ErrorKind, Result};
use crate::kernels as k;
use crate::rules::{self, Decision, RankRecord};
use crate::slot::{self, SLOT_WORDS};

impl Coordinator {
    /// The one host wait: polls the sequence word the kernel writes last, checking
    /// `cancel`, the communicator, the stream and the clock every [`CHECK_INTERVAL`].
    pub(super) fn wait(
        &self,
        gpu: &GpuState,
        seq: u32,
        (stream, marked): (StreamHandle, bool),
        f: &InFlight,
    ) -> Result<()> {
        let _range = diag::range(c"dp_coordinator_wait", self.dp_rank, f.step_id);
        let mut polls: u32 = 0;
        let mut next_check = f.start + CHECK_INTERVAL;
        loop {
            if gpu.host.load(k::HOST_SEQ) as u32 == seq {
                fence(Ordering::Acquire);
                return Ok(());
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
            // event `begin` recorded (see Flight::Exchange).
            let done = match marked {
                true => {
                    let _current = gpu.ctx.enter()?;
                    gpu.event.done()?
                }
                false => cuda::stream_idle(stream)?,
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

    /// Reads the verdict and decision the kernel published.
    pub(super) fn read_decision(&self, gpu: &GpuState, f: &InFlight, seq: u32) -> Result<Outcome> {
        let word = |i| gpu.host.load(i);
        let n = self.dp_size as usize;
        match word(k::HOST_STATUS) {
            k::STATUS_OK => Ok(Outcome {
                decision: Decision {
                    should_ubatch: word(k::HOST_SHOULD_UBATCH) != 0,
                    should_dp_pad: word(k::HOST_SHOULD_DP_PAD) != 0,
                    has_num_tokens_after_padding: true,
                    synced_cudagraph_mode: word(k::HOST_SYNCED_CUDAGRAPH_MODE),
                    num_tokens_after_padding_self: word(k::HOST_NUM_TOKENS_AFTER_PADDING_SELF),
                    max_num_tokens_padded: word(k::HOST_MAX_NUM_TOKENS_PADDED),
                    min_num_tokens_unpadded: word(k::HOST_MIN_NUM_TOKENS_UNPADDED),
                    num_ubatches: if word(k::HOST_SHOULD_UBATCH) != 0 {
                        f.num_ubatches
                    } else {
                        1
                    },
                },
                dp_rank: self.dp_rank,
                dp_size: self.dp_size,
                step_id: slot::step_id_of(word(k::HOST_STEP_LO), word(k::HOST_STEP_HI)),
                host_array: gpu.host.host_ptr(k::host_array_offset()),
                device_array: gpu.device_out.ptr(),
            }),
            flagged => {
                // Error path: the exact message from the kernel's copy of the slots.
                let base = k::host_slots_offset(n);
                let slot = |r: usize, i: usize| word(base + r * SLOT_WORDS + i);
                if flagged == k::STATUS_STALE {
                    return Err(stale_error(n, self.dp_rank, seq, &slot));
                }
                let records: Vec<RankRecord> = (0..n)
                    .map(|r| {
                        RankRecord::from_words(std::array::from_fn(|i| {
                            slot(r, slot::SLOT_RECORD + i)
                        }))
                    })
                    .collect();
                // A marker first: its rank's step id says nothing.
                if let Some(r) = records.iter().position(|x| *x == RankRecord::MARKER) {
                    return Err(rules::marker_error(r));
                }
                let ids: Vec<i64> = (0..n)
                    .map(|r| {
                        slot::step_id_of(slot(r, slot::SLOT_STEP_LO), slot(r, slot::SLOT_STEP_HI))
                    })
                    .collect();
                rules::check_step_ids(&ids, None)?;
                match rules::decide(&records, self.dp_rank, f.pad_policy, f.num_ubatches, None) {
                    Err(e) => Err(e),
                    Ok(_) => Err(Error::internal(format!(
                        "the post-processing kernel flagged status {flagged} but the host \
                         logic accepts the same records"
                    ))),
                }
            }
        }
    }
}

/// The message for slots that do not carry this exchange's sequence number.
pub(super) fn stale_error(
    n: usize,
    dp_rank: i32,
    seq: u32,
    slot: &dyn Fn(usize, usize) -> i32,
) -> Error {
    let bad: Vec<String> = (0..n)
        .filter(|&r| slot(r, slot::SLOT_SEQ) as u32 != seq)
        .take(4)
        .map(|r| format!("rank {r} carries {}", slot(r, slot::SLOT_SEQ) as u32))
        .collect();
    let own_ok = slot(dp_rank as usize, slot::SLOT_SEQ) as u32 == seq;
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
