//! The GPU path of `dp_coordinate_batch`: per-communicator cached state and the call
//! sequence of DESIGN.md section 3 (pack -> ncclAllGather -> post-process kernel -> one polled
//! host wait). The event of that sequence is recorded only when a call fails with work in
//! flight: on success the kernel's last write is the completion signal, and nothing of the
//! call is left running that could touch dpcoord's buffers.

use std::collections::HashMap;
use std::sync::atomic::{fence, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use crate::cuda::{
    self, Context, DeviceBuffer, DevicePtr, Event, EventState, Kernel, KernelArg, MappedHost,
    Module,
};
use crate::error::{Error, ErrorKind, Result};
use crate::kernels::{self as k, RECORD_WORDS};
use crate::nccl::{self, CommPtr, Nccl};
use crate::rules::{self, Decision, RankRecord, Request};

/// Opaque stream handle as the caller passed it.
pub type StreamPtr = cuda::StreamPtr;

/// How long `release` waits for work still in flight before it gives up (and keeps the
/// state rather than free memory the device may still write).
const RELEASE_WAIT: Duration = Duration::from_secs(10);
/// Host polls between two reads of the clock.
const POLLS_PER_CLOCK: u32 = 64;
/// Time between two checks of the communicator and the stream for failures (and of the
/// deadline). A healthy exchange finishes before the first check, so the checks (each a
/// driver or NCCL call) stay off the fast path.
const CHECK_INTERVAL: Duration = Duration::from_micros(50);
/// After this long spinning, the wait yields the CPU between polls.
const SPIN_BEFORE_YIELD: Duration = Duration::from_millis(1);

/// What one coordinated step produced.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// The shared decision.
    pub decision: Decision,
    /// This rank.
    pub dp_rank: i32,
    /// Number of ranks.
    pub dp_size: i32,
    /// Library-owned host array of `dp_size` entries, or NULL when dp_size == 1.
    pub host_array: *const i32,
    /// Library-owned device array of `dp_size` entries, or 0 when dp_size == 1.
    pub device_array: DevicePtr,
}

/// How this rank's record reaches the send buffer, in stream order.
enum Pack {
    /// One `cuStreamBatchMemOp` of five 32-bit writes: no kernel launch.
    MemOps,
    /// The `dp_pack_record` kernel, where the device lacks stream memory operations.
    Kernel(Kernel),
}

/// One call's inputs to the device work.
struct Step {
    record: RankRecord,
    pad_policy: i32,
    num_ubatches: i32,
    /// When the whole call must have finished (`timeout_ms`), if bounded.
    deadline: Option<Instant>,
}

/// Everything cached for one communicator: created on first use, reused by every call.
struct CommState {
    ctx: Context,
    dp_size: i32,
    dp_rank: i32,
    pack: Pack,
    post: Kernel,
    send: DeviceBuffer,
    recv: DeviceBuffer,
    device_out: DeviceBuffer,
    host: MappedHost,
    /// Recorded only when a call fails with work in flight (`in_flight`): a successful call
    /// has nothing in flight once the kernel published its result, so it records nothing.
    event: Event,
    in_flight: bool,
    /// Sequence number of the last launched post-processing kernel.
    seq: u32,
    /// Set when a call failed after joining the collective: the ranks are out of step, so
    /// the communicator must be aborted and released; every later call says so.
    broken: Option<Error>,
    // Declared last: dropped after the kernels that belong to it.
    _module: Module,
}

/// A communicator's state, absent until first use or after a failed rebuild.
struct Slot(Option<CommState>);

/// Per-communicator slots, keyed by the communicator's address.
static REGISTRY: LazyLock<Mutex<HashMap<usize, Arc<Mutex<Slot>>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The coordinated decision for this rank's `req` on `comm`, exchanged on `stream`.
///
/// `comm` must be a live communicator of the process's NCCL and `stream` a live stream (or a
/// special handle) of the same device. With `force_exchange`, a one-rank communicator
/// still runs the GPU path (benchmarks only); otherwise dp_size 1 does no GPU work.
pub fn coordinate(
    comm: CommPtr,
    stream: StreamPtr,
    req: &Request,
    force_exchange: bool,
) -> Result<Outcome> {
    let record = rules::make_record(req)?;
    let slot = {
        let mut registry = lock(&REGISTRY);
        Arc::clone(
            registry
                .entry(comm as usize)
                .or_insert_with(|| Arc::new(Mutex::new(Slot(None)))),
        )
    };
    let mut guard =
        match slot.try_lock() {
            Ok(guard) => guard,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(Error::new(
                ErrorKind::Busy,
                "another thread is inside dp_coordinate_batch or dp_release on this communicator",
            )),
        };
    let nccl = nccl::nccl()?;
    let dp_size = nccl.comm_count(comm)?;
    let dp_rank = nccl.comm_user_rank(comm)?;
    let num_ubatches = req.effective_num_ubatches();
    if dp_size == 1 && !force_exchange {
        let decision = rules::decide(&[record], 0, req.pad_policy, num_ubatches, None)?;
        return Ok(Outcome {
            decision,
            dp_rank,
            dp_size,
            host_array: std::ptr::null(),
            device_array: 0,
        });
    }
    if dp_size as usize > k::MAX_DP_SIZE {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "the communicator has {dp_size} ranks; dpcoord supports at most {}",
                k::MAX_DP_SIZE
            ),
        ));
    }
    cuda::driver()?;
    let device = nccl.comm_cu_device(comm)?;
    let ctx = Context::of_stream(stream, device, guard.0.as_ref().map(|s| s.ctx))?;
    cuda::check_not_capturing(stream)?;
    let reusable =
        matches!(&guard.0, Some(s) if s.ctx == ctx && s.dp_size == dp_size && s.dp_rank == dp_rank);
    if !reusable {
        retire(&mut guard.0)?;
        guard.0 = Some(CommState::new(ctx, dp_size, dp_rank, stream)?);
    }
    let state = guard.0.as_mut().expect("state was just ensured");
    if let Some(e) = &state.broken {
        return Err(e.context(
            "an earlier dp_coordinate_batch on this communicator failed mid-exchange, so the \
             ranks are out of step: abort the communicator (ncclCommAbort) on every rank and \
             call dp_release; the earlier failure",
        ));
    }
    let start = Instant::now();
    let deadline =
        (req.timeout_ms > 0).then(|| start + Duration::from_millis(req.timeout_ms as u64));
    let step = Step {
        record,
        pad_policy: req.pad_policy,
        num_ubatches,
        deadline,
    };
    let exchanged = state
        .enqueue(nccl, comm, stream, &step)
        .and_then(|()| state.wait(nccl, comm, stream, start, req.timeout_ms));
    if let Err(e) = exchanged {
        state.mark_broken(stream, &e);
        return Err(e);
    }
    let decision = state.read_decision(req.pad_policy, num_ubatches)?;
    Ok(Outcome {
        decision,
        dp_rank,
        dp_size,
        host_array: state.host.host_ptr(k::host_array_offset()),
        device_array: state.device_out.ptr(),
    })
}

/// Frees the state cached for `comm` after its work in flight has finished. Unknown
/// communicators are fine. Never touches NCCL, so it may follow `ncclCommAbort`.
pub fn release(comm: CommPtr) -> Result<()> {
    let Some(slot) = lock(&REGISTRY).remove(&(comm as usize)) else {
        return Ok(());
    };
    let mut guard = lock(&slot);
    let outcome = retire(&mut guard.0);
    if outcome.is_err() {
        // Keep the state (its memory may still be written) so a later release can retry.
        drop(guard);
        lock(&REGISTRY).entry(comm as usize).or_insert(slot);
    }
    outcome
}

/// Waits (bounded) for a state's work in flight, then frees it in its own context.
fn retire(slot: &mut Option<CommState>) -> Result<()> {
    let Some(state) = slot.as_ref() else {
        return Ok(());
    };
    let _current = state.ctx.enter()?;
    let start = Instant::now();
    while state.in_flight && state.event.query().ok() == Some(EventState::Pending) {
        if start.elapsed() >= RELEASE_WAIT {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!(
                    "work of an earlier call on this communicator is still running after {} s; \
                 abort the communicator (ncclCommAbort) first, then release it",
                    RELEASE_WAIT.as_secs()
                ),
            ));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    *slot = None;
    Ok(())
}

impl CommState {
    fn new(ctx: Context, dp_size: i32, dp_rank: i32, stream: StreamPtr) -> Result<Self> {
        let _current = ctx.enter()?;
        let n = dp_size as usize;
        let module = Module::load(k::POSTPROCESS_PTX_CSTR)?;
        let send = DeviceBuffer::new(RECORD_WORDS)?;
        // CUDA 12 drivers support stream memory operations everywhere (the v1 attribute that
        // used to say so is deprecated and may read 0); a platform that still refuses them
        // answers this first, harmless write, and gets the pack kernel instead.
        let pack = match cuda::stream_write_u32_batch(stream, &[(send.ptr(), 0)]) {
            Ok(()) => Pack::MemOps,
            Err(_) => Pack::Kernel(module.kernel(k::PACK_RECORD_KERNEL)?),
        };
        Ok(Self {
            ctx,
            dp_size,
            dp_rank,
            pack,
            post: module.kernel(k::POSTPROCESS_KERNEL)?,
            send,
            recv: DeviceBuffer::new(RECORD_WORDS * n)?,
            device_out: DeviceBuffer::new(n)?,
            host: MappedHost::new(k::host_block_words(n))?,
            event: Event::new()?,
            in_flight: false,
            seq: 0,
            broken: None,
            _module: module,
        })
    }

    /// Enqueues pack -> allgather -> post-process -> event on `stream`.
    fn enqueue(
        &mut self,
        nccl: &Nccl,
        comm: CommPtr,
        stream: StreamPtr,
        step: &Step,
    ) -> Result<()> {
        let _current = self.ctx.enter()?;
        let send = self.send.ptr();
        let words = step.record.to_words();
        match &self.pack {
            Pack::MemOps => {
                let write = |i: usize| (send + 4 * i as u64, words[i] as u32);
                cuda::stream_write_u32_batch(
                    stream,
                    &[write(0), write(1), write(2), write(3), write(4)],
                )?;
            }
            Pack::Kernel(pack) => {
                let args = [
                    send.as_arg(),
                    words[0].as_arg(),
                    words[1].as_arg(),
                    words[2].as_arg(),
                    words[3].as_arg(),
                    words[4].as_arg(),
                ];
                pack.launch(1, stream, &args)?;
            }
        }
        nccl.all_gather_i32_until(
            send,
            self.recv.ptr(),
            RECORD_WORDS,
            comm,
            stream,
            step.deadline,
        )?;
        self.seq = self.seq.wrapping_add(1).max(1);
        let (recv, out, host, seq) = (
            self.recv.ptr(),
            self.device_out.ptr(),
            self.host.device_ptr(),
            self.seq,
        );
        let post_args = [
            recv.as_arg(),
            self.dp_size.as_arg(),
            self.dp_rank.as_arg(),
            step.pad_policy.as_arg(),
            step.num_ubatches.as_arg(),
            out.as_arg(),
            host.as_arg(),
            seq.as_arg(),
        ];
        self.post.launch(k::BLOCK_THREADS, stream, &post_args)
    }

    /// After a failure with work possibly in flight: remembers the failure and records the
    /// event behind that work, so `dp_release` can wait for it before freeing the buffers.
    fn mark_broken(&mut self, stream: StreamPtr, error: &Error) {
        self.broken = Some(error.clone());
        if let Ok(_current) = self.ctx.enter() {
            self.in_flight = self.event.record(stream).is_ok();
        }
    }

    /// The one host wait: polls the sequence word the kernel writes last, checking the
    /// communicator, the device and the clock every few polls.
    fn wait(
        &self,
        nccl: &Nccl,
        comm: CommPtr,
        stream: StreamPtr,
        start: Instant,
        timeout_ms: i32,
    ) -> Result<()> {
        let limit = Duration::from_millis(timeout_ms as u64);
        let mut polls: u32 = 0;
        let mut next_check = start + CHECK_INTERVAL;
        loop {
            if self.host.load(k::HOST_SEQ) as u32 == self.seq {
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
            nccl.check_async_error(comm)?;
            let done = cuda::stream_idle(stream)?;
            if done && self.host.load(k::HOST_SEQ) as u32 != self.seq {
                return Err(Error::internal(
                    "the post-processing kernel finished without publishing its result",
                ));
            }
            let waited = now - start;
            if timeout_ms > 0 && waited >= limit {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                    "the exchange did not complete within timeout_ms = {timeout_ms} (a rank did \
                     not call dp_coordinate_batch, or is stuck); the communicator is unusable: \
                     abort it with ncclCommAbort on every rank, then call dp_release"
                ),
                ));
            }
            if waited >= SPIN_BEFORE_YIELD {
                std::thread::yield_now();
            }
        }
    }

    /// Reads the decision the kernel published, or the error it flagged.
    fn read_decision(&self, pad_policy: i32, num_ubatches: i32) -> Result<Decision> {
        let word = |i| self.host.load(i);
        match word(k::HOST_STATUS) {
            k::STATUS_OK => Ok(Decision {
                should_ubatch: word(k::HOST_SHOULD_UBATCH) != 0,
                should_dp_pad: word(k::HOST_SHOULD_DP_PAD) != 0,
                has_num_tokens_after_padding: true,
                synced_cudagraph_mode: word(k::HOST_SYNCED_CUDAGRAPH_MODE),
                num_tokens_after_padding_self: word(k::HOST_NUM_TOKENS_AFTER_PADDING_SELF),
                max_num_tokens_padded: word(k::HOST_MAX_NUM_TOKENS_PADDED),
                min_num_tokens_unpadded: word(k::HOST_MIN_NUM_TOKENS_UNPADDED),
            }),
            flagged => {
                // Error path: rerun the host logic on the record copy for the exact message.
                let base = k::host_records_offset(self.dp_size as usize);
                let records: Vec<RankRecord> = (0..self.dp_size as usize)
                    .map(|r| {
                        RankRecord::from_words(std::array::from_fn(|i| {
                            word(base + r * RECORD_WORDS + i)
                        }))
                    })
                    .collect();
                match rules::decide(&records, self.dp_rank, pad_policy, num_ubatches, None) {
                    Err(e) => Err(e),
                    Ok(_) => Err(Error::internal(format!(
                        "the post-processing kernel flagged status {flagged} but the host logic \
                         accepts the same records"
                    ))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A distinct communicator address per test (tests run in parallel and share the
    /// registry); never dereferenced: each test fails or stops before NCCL would see it.
    fn fake_comm(tag: usize) -> CommPtr {
        (0x1000 + 8 * tag) as CommPtr
    }

    #[test]
    fn invalid_request_fails_before_any_communication() {
        let req = Request {
            num_tokens_unpadded: -3,
            ..Request::default()
        };
        let err = coordinate(fake_comm(1), std::ptr::null_mut(), &req, false).unwrap_err();
        assert!(
            matches!(&err, Error { kind: ErrorKind::InvalidArgument, message: m } if m.contains("num_tokens_unpadded = -3")),
            "{err}"
        );
    }

    #[test]
    fn without_nccl_the_call_reports_library_unavailable() {
        // Only meaningful where no NCCL can be found (CI, this crate's dev machines); where
        // one is, `nccl()` succeeding is checked instead of calling it with a fake comm.
        match nccl::nccl() {
            Ok(found) => assert!(found.version() > 0),
            Err(_) => {
                let comm = fake_comm(2);
                let err =
                    coordinate(comm, std::ptr::null_mut(), &Request::default(), false).unwrap_err();
                assert!(err.kind == ErrorKind::LibraryUnavailable, "{err}");
                assert!(err.to_string().contains("DPCOORD_NCCL_LIBRARY"), "{err}");
                release(comm).unwrap();
            }
        }
    }

    #[test]
    fn without_a_driver_cuda_reports_library_unavailable_not_a_panic() {
        match cuda::driver() {
            Ok(()) => {}
            Err(e) => assert!(e.kind == ErrorKind::LibraryUnavailable, "{e}"),
        }
    }

    #[test]
    fn a_second_caller_on_a_busy_communicator_gets_busy() {
        let comm = fake_comm(3);
        let slot = Arc::new(Mutex::new(Slot(None)));
        lock(&REGISTRY).insert(comm as usize, Arc::clone(&slot));
        let held = lock(&slot);
        let key = comm as usize;
        let err = std::thread::spawn(move || {
            coordinate(
                key as CommPtr,
                std::ptr::null_mut(),
                &Request::default(),
                false,
            )
            .err()
        })
        .join()
        .unwrap()
        .expect("a busy communicator is an error");
        assert!(
            matches!(&err, Error { kind: ErrorKind::Busy, message: m } if m.contains("this communicator")),
            "{err}"
        );
        drop(held);
        release(comm).unwrap();
        assert!(!lock(&REGISTRY).contains_key(&key));
    }

    #[test]
    fn releasing_an_unknown_communicator_is_harmless() {
        let comm = fake_comm(4);
        release(comm).unwrap();
        release(comm).unwrap();
        assert!(!lock(&REGISTRY).contains_key(&(comm as usize)));
    }

    #[test]
    fn releasing_an_empty_slot_removes_it() {
        let comm = fake_comm(5);
        lock(&REGISTRY).insert(comm as usize, Arc::new(Mutex::new(Slot(None))));
        release(comm).unwrap();
        assert!(!lock(&REGISTRY).contains_key(&(comm as usize)));
    }
}
