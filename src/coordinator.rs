//! The GPU path: an explicit coordinator per communicator (`dp_coordinator_*`), split into
//! `begin` (enqueue on the caller's stream, return), `poll` (never blocks) and `end` (one
//! bounded host wait), plus the per-communicator cache of `dp_coordinate_batch` on top of it.
//!
//! One exchange: the host writes its slot (sequence number, step id, record) into mapped
//! pinned memory that `ncclAllGather` reads as its send buffer (or, with
//! `DPCOORD_SEND_BUFFER=device`, copies it to a device buffer first), NCCL gathers every
//! rank's slot into device memory, `dp_postprocess` checks every slot and publishes the
//! decision to mapped memory (sequence word last) and to the device array, and `end` spins on
//! the sequence word. Nothing is trusted that the kernel did not verify (every slot carries
//! this exchange's sequence number, the step ids agree) and that NCCL did not flag
//! (`ncclCommGetAsyncError` is read before a result is accepted).
//!
//! Bounded waits: NCCL >= 2.22 connects lazily inside the first collective on a communicator,
//! on the calling thread and with no timeout. The first exchange of a coordinator therefore
//! calls `ncclAllGather` on a helper thread and waits for it, bounded by `timeout_ms` and by
//! `cancel`; if it does not return in time the coordinator fails with `DP_ERR_TIMEOUT` and
//! the helper is left inside NCCL, where only `ncclCommAbort` frees it (it touches nothing
//! afterwards). Later exchanges call NCCL on the caller's thread (connections exist; a
//! nonblocking communicator's `ncclInProgress` is polled against the same deadline).
//! A helper thread works for both kinds of communicator, where detecting a nonblocking one
//! would leave the blocking kind, the common one, unbounded.
//!
//! Device state is made by `create` and never freed by `destroy` or `dp_release` (freeing may
//! wait for the whole device): they hand it to a graveyard that the next `create` empties of
//! whatever is idle, that is, whose event recorded behind pending work has completed; state a
//! helper thread may still write (inside NCCL) is never freed.

use std::collections::HashMap;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use crate::cuda::{
    self, Context, DeviceBuffer, DevicePtr, Event, Kernel, MappedHost, Module, PostArgs,
    StreamHandle,
};
use crate::diag::{self, Ctx, Level};
use crate::error::{Error, ErrorKind, Result};
use crate::kernels as k;
use crate::nccl::{self, CommHandle, Nccl};
use crate::rules::{self, Decision, RankRecord, Request};
use crate::slot::{self, SLOT_WORDS};

/// Environment variable choosing the send buffer: `host` (default: mapped pinned memory that
/// NCCL reads) or `device` (a device buffer filled by one async copy on the stream).
pub(crate) const ENV_SEND_BUFFER: &str = "DPCOORD_SEND_BUFFER";

/// Host polls between two reads of the clock.
const POLLS_PER_CLOCK: u32 = 64;
/// Time between two checks of the communicator, the stream, `cancel` and the deadline. A
/// healthy exchange finishes before the first check, keeping those calls off the fast path.
const CHECK_INTERVAL: Duration = Duration::from_micros(50);
/// After this long spinning, the wait yields the CPU between polls.
const SPIN_BEFORE_YIELD: Duration = Duration::from_millis(1);
/// How long `cancel` waits for the threads inside the coordinator to leave (each checks for
/// `cancel` every [`CHECK_INTERVAL`]).
const CANCEL_WAIT: Duration = Duration::from_millis(100);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Where this rank's slot is when NCCL reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendPath {
    /// Mapped pinned host memory, read by NCCL directly (no operation on the stream).
    Host,
    /// A device buffer, filled from the pinned slot by `cuMemcpyHtoDAsync` on the stream.
    Device,
}

impl SendPath {
    /// The path `DPCOORD_SEND_BUFFER` selects (`host` when unset).
    pub(crate) fn from_env() -> Result<SendPath> {
        Self::parse(std::env::var(ENV_SEND_BUFFER).ok().as_deref())
    }

    /// The path a value of `DPCOORD_SEND_BUFFER` selects.
    pub(crate) fn parse(value: Option<&str>) -> Result<SendPath> {
        match value {
            None | Some("") | Some("host") => Ok(SendPath::Host),
            Some("device") => Ok(SendPath::Device),
            Some(other) => Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("{ENV_SEND_BUFFER} = {other:?} must be \"host\" or \"device\""),
            )),
        }
    }
}

/// What one coordinated step produced.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// The shared decision.
    pub decision: Decision,
    /// This rank.
    pub dp_rank: i32,
    /// Number of ranks.
    pub dp_size: i32,
    /// The agreed step id (0 when unchecked).
    pub step_id: i64,
    /// Library-owned host array of `dp_size` entries, or NULL when dp_size == 1.
    pub host_array: *const i32,
    /// Library-owned device array of `dp_size` entries, or 0 when dp_size == 1.
    pub device_array: DevicePtr,
}

/// What every thread may touch without the coordinator's lock: `cancel`'s flag and the count
/// of threads inside.
#[derive(Default)]
struct Shared {
    cancelled: AtomicBool,
    /// Threads inside `begin`, `poll` or `end`.
    active: AtomicU32,
    /// A helper thread is inside NCCL's first `ncclAllGather` (only `ncclCommAbort` frees it).
    helper_inside: AtomicBool,
}

/// Counts a thread inside the coordinator for as long as it lives.
struct Inside<'a>(&'a Shared);

impl Drop for Inside<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

fn cancelled_error() -> Error {
    Error::new(
        ErrorKind::Cancelled,
        "the coordinator was cancelled (dp_coordinator_cancel / dp_cancel): abort the \
         communicator (ncclCommAbort) on every rank, then destroy the coordinator \
         (dp_coordinator_destroy / dp_release)",
    )
}

impl Shared {
    /// Enters the coordinator, unless it was cancelled. The count is raised before the flag
    /// is read (both sequentially consistent), so `cancel` either sees this thread inside or
    /// this thread sees the flag.
    fn enter(&self) -> Result<Inside<'_>> {
        self.active.fetch_add(1, Ordering::SeqCst);
        let inside = Inside(self);
        if self.cancelled.load(Ordering::SeqCst) {
            return Err(cancelled_error());
        }
        Ok(inside)
    }

    fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Sets the flag, then waits (bounded) until no thread is inside.
    fn cancel(&self) -> Result<()> {
        self.cancelled.store(true, Ordering::SeqCst);
        let start = Instant::now();
        while self.active.load(Ordering::SeqCst) != 0 {
            if start.elapsed() >= CANCEL_WAIT {
                return Err(Error::new(
                    ErrorKind::Busy,
                    format!(
                        "cancelled, but a thread is still inside dpcoord for this coordinator \
                         after {} ms (inside an NCCL or CUDA call); call cancel again before \
                         ncclCommAbort",
                        CANCEL_WAIT.as_millis()
                    ),
                ));
            }
            std::thread::sleep(Duration::from_micros(20));
        }
        if self.helper_inside.load(Ordering::SeqCst) {
            return Err(Error::new(
                ErrorKind::Busy,
                "cancelled; no caller thread is inside dpcoord, but its helper thread is still \
                 inside the first ncclAllGather on this communicator (NCCL's lazy connect to a \
                 peer that is not calling), where only ncclCommAbort can free it: abort the \
                 communicator on every rank, then destroy the coordinator",
            ));
        }
        Ok(())
    }
}

/// The device side of a coordinator: created with it (so that no `begin` allocates, loads a
/// module or frees: each of those may wait for the whole device), in the context that is
/// current on the communicator's device, else that device's primary context.
struct GpuState {
    ctx: Context,
    post: Kernel,
    /// This rank's slot, written by the host (NCCL's send buffer on the host path).
    send_host: MappedHost,
    /// The device send buffer (device path only).
    send_device: Option<DeviceBuffer>,
    /// Every rank's slot, gathered by NCCL.
    recv: DeviceBuffer,
    device_out: DeviceBuffer,
    /// The kernel's host block.
    host: MappedHost,
    /// Recorded only behind work that may still be pending when the coordinator fails or
    /// is destroyed.
    event: Event,
    event_recorded: bool,
    /// A helper thread may still be inside NCCL with pointers to these buffers: never free.
    leak: bool,
    module: Module,
}

impl GpuState {
    fn new(ctx: Context, dp_size: usize, send_path: SendPath) -> Result<GpuState> {
        let _current = ctx.enter()?;
        let module = Module::load(k::POSTPROCESS_PTX_CSTR)?;
        let post = module.kernel(k::POSTPROCESS_KERNEL)?;
        let send_host = MappedHost::new(SLOT_WORDS)?;
        let send_device = match send_path {
            SendPath::Host => None,
            SendPath::Device => Some(DeviceBuffer::new(SLOT_WORDS)?),
        };
        // Zeroed: no slot carries sequence number 0, so nothing left here is ever accepted.
        let recv = DeviceBuffer::new(SLOT_WORDS * dp_size)?;
        let device_out = DeviceBuffer::new(dp_size)?;
        let host = MappedHost::new(k::host_block_words(dp_size))?;
        let event = Event::new()?;
        Ok(GpuState {
            ctx,
            post,
            send_host,
            send_device,
            recv,
            device_out,
            host,
            event,
            event_recorded: false,
            leak: false,
            module,
        })
    }

    /// The send buffer NCCL reads.
    fn send_ptr(&self) -> DevicePtr {
        match &self.send_device {
            Some(d) => d.ptr(),
            None => self.send_host.device_ptr(),
        }
    }

    /// Records the event behind whatever is queued on `stream` (best effort: a failure
    /// leaves the state to be leaked rather than freed too early).
    fn record_pending(&mut self, stream: StreamHandle) {
        if let Ok(_current) = self.ctx.enter() {
            self.event_recorded = self.event.record(stream).is_ok();
            if !self.event_recorded {
                self.leak = true;
            }
        } else {
            self.leak = true;
        }
    }

    /// Whether freeing now is safe: no helper inside NCCL, and the recorded work finished.
    fn idle(&self) -> bool {
        if self.leak {
            return false;
        }
        if !self.event_recorded {
            return true;
        }
        match self.ctx.enter() {
            // A failed query (the work failed, or the context is gone) means nothing of it
            // runs any more.
            Ok(_current) => self.event.done().unwrap_or(true),
            Err(_) => true,
        }
    }

    /// Frees everything in its own context; a context destroyed (or reset) meanwhile took
    /// the memory with it, and nothing is freed twice.
    fn free(self) {
        if !self.ctx.still_alive() {
            return;
        }
        let Ok(_current) = self.ctx.enter() else {
            return;
        };
        self.event.destroy();
        self.send_host.free();
        if let Some(d) = self.send_device {
            d.free();
        }
        self.recv.free();
        self.device_out.free();
        self.host.free();
        self.module.unload();
    }
}

/// States whose work may still be pending, freed once it is not.
static GRAVEYARD: Mutex<Vec<GpuState>> = Mutex::new(Vec::new());

/// Frees what in the graveyard is idle now.
fn sweep_graveyard() {
    let ready: Vec<GpuState> = {
        let mut g = lock(&GRAVEYARD);
        let (ready, waiting): (Vec<_>, Vec<_>) = g.drain(..).partition(GpuState::idle);
        *g = waiting;
        ready
    };
    for state in ready {
        state.free();
    }
}

/// Frees `state` now if idle, else hands it to the graveyard.
fn retire(state: GpuState) {
    lock(&GRAVEYARD).push(state);
}

/// The first `ncclAllGather`, on a helper thread: its result, once it returned.
struct Connect {
    code: Mutex<Option<i32>>,
}

/// Threads of the post kernel: one warp per 32 ranks, at most [`k::BLOCK_THREADS`] (a small
/// communicator gets one warp: fewer barriers and a faster launch).
pub(crate) fn block_threads(dp_size: i32) -> u32 {
    let warps = (dp_size.max(1) as u32).div_ceil(32);
    (warps * 32).min(k::BLOCK_THREADS)
}

/// One `begin`'s inputs to the device work.
struct Step {
    record: RankRecord,
    step_id: i64,
    pad_policy: i32,
    num_ubatches: i32,
    deadline: Option<Instant>,
    start: Instant,
}

/// An exchange begun and not yet ended.
struct InFlight {
    start: Instant,
    deadline: Option<Instant>,
    timeout_ms: i32,
    pad_policy: i32,
    num_ubatches: i32,
    step_id: i64,
    /// This rank's request was invalid and joined as [`RankRecord::MARKER`]: `end` returns
    /// this error once the exchange completed.
    rejected: Option<Error>,
    kind: Flight,
}

enum Flight {
    /// dp_size 1 (not forced): decided locally, no GPU work.
    Local(Result<Decision>),
    /// On the GPU: published with `seq` on `stream`.
    Exchange { seq: u32, stream: StreamHandle },
}

/// Everything behind the coordinator's lock.
struct Inner {
    gpu: Option<GpuState>,
    /// The last stream checked to belong to the state's context.
    checked_stream: Option<StreamHandle>,
    seq: u32,
    /// An exchange's `ncclAllGather` returned: NCCL's connections exist.
    connected: bool,
    in_flight: Option<InFlight>,
    /// The first failure mid-exchange; every later call fails with it.
    broken: Option<Error>,
}

/// One coordinator: caller-owned, for one communicator.
pub struct Coordinator {
    comm: CommHandle,
    nccl: &'static Nccl,
    dp_size: i32,
    dp_rank: i32,
    device: i32,
    /// Run the GPU path even for dp_size 1 (benchmarks, through `testing`).
    force_exchange: bool,
    shared: Arc<Shared>,
    inner: Mutex<Inner>,
}

impl Coordinator {
    /// A coordinator for `comm` (local: queries NCCL for the rank, size and device; allocates
    /// device memory on the first exchange).
    pub(crate) fn new(comm: CommHandle, force_exchange: bool) -> Result<Coordinator> {
        let send_path = SendPath::from_env()?;
        Self::with_send_path(comm, force_exchange, send_path)
    }

    /// As [`Coordinator::new`], with the send buffer chosen by the caller.
    pub(crate) fn with_send_path(
        comm: CommHandle,
        force_exchange: bool,
        send_path: SendPath,
    ) -> Result<Coordinator> {
        sweep_graveyard();
        Self::build(comm, nccl::nccl()?, force_exchange, send_path)
    }

    /// A coordinator over a fake NCCL (unit tests without a GPU).
    #[cfg(test)]
    pub(crate) fn with_nccl(nccl: &'static Nccl, force_exchange: bool) -> Coordinator {
        // SAFETY: the fake NCCL never dereferences the communicator.
        let comm = unsafe { CommHandle::from_raw(0x1000 as *mut std::ffi::c_void) };
        Self::build(comm, nccl, force_exchange, SendPath::Host).expect("the fake answers")
    }

    fn build(
        comm: CommHandle,
        nccl: &'static Nccl,
        force_exchange: bool,
        send_path: SendPath,
    ) -> Result<Coordinator> {
        let dp_size = nccl.comm_count(comm)?;
        let dp_rank = nccl.comm_user_rank(comm)?;
        let device = nccl.comm_cu_device(comm)?;
        if dp_size < 1 || dp_size as usize > k::MAX_DP_SIZE {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "the communicator has {dp_size} ranks; dpcoord supports 1..={}",
                    k::MAX_DP_SIZE
                ),
            ));
        }
        if diag::enabled(Level::Info) {
            // Once per coordinator: what was resolved (the driver is the process's already:
            // NCCL made the communicator with it).
            let (cuda_version, cuda_library) = match cuda::driver() {
                Ok(d) => (d.version(), d.library()),
                Err(e) => (0, format!("not loaded ({e})")),
            };
            let nccl_library = match nccl.library_path() {
                Some(file) => format!("{file} ({})", nccl.origin()),
                None => nccl.origin().to_owned(),
            };
            diag::coordinator_info(
                &Ctx::new().rank(dp_rank, dp_size).comm(comm.as_raw()),
                nccl.version(),
                &nccl_library,
                cuda_version,
                &cuda_library,
            );
        }
        let gpu = if dp_size > 1 || force_exchange {
            let ctx = Context::of_stream(StreamHandle::DEFAULT, device)?;
            Some(GpuState::new(ctx, dp_size as usize, send_path)?)
        } else {
            None
        };
        Ok(Coordinator {
            comm,
            nccl,
            dp_size,
            dp_rank,
            device,
            force_exchange,
            shared: Arc::new(Shared::default()),
            inner: Mutex::new(Inner {
                gpu,
                checked_stream: None,
                seq: 0,
                connected: false,
                in_flight: None,
                broken: None,
            }),
        })
    }

    /// The communicator's size and this rank, as NCCL reported them at creation.
    pub(crate) fn shape(&self) -> (i32, i32) {
        (self.dp_size, self.dp_rank)
    }

    /// What the DPCOORD_DEBUG log says about this coordinator at step `step_id`.
    fn ctx(&self, step_id: i64) -> Ctx<'static> {
        Ctx::new()
            .rank(self.dp_rank, self.dp_size)
            .comm(self.comm.as_raw())
            .step(step_id)
    }

    /// The TRACE line of a decision `end` returns.
    fn trace(&self, o: &Outcome) {
        diag::decision(&self.ctx(o.step_id), "dp_coordinator_end", &o.decision);
    }

    fn try_inner(&self, what: &str) -> Result<MutexGuard<'_, Inner>> {
        match self.inner.try_lock() {
            Ok(g) => Ok(g),
            Err(TryLockError::Poisoned(p)) => Ok(p.into_inner()),
            Err(TryLockError::WouldBlock) => Err(Error::new(
                ErrorKind::Busy,
                format!(
                    "{what}: another thread is inside a call on this coordinator (begin, poll \
                     and end must not run at once on one coordinator)"
                ),
            )),
        }
    }

    /// Enqueues this rank's exchange on `stream` and returns (collective: every rank calls
    /// it, in the same order relative to every other collective on the communicator).
    ///
    /// A request that is invalid (`invalid`, as the C boundary read it, else
    /// [`rules::make_record`]'s verdict) still joins, as [`RankRecord::MARKER`], so that no
    /// rank waits for it: `end` returns the error here and the marker's on every other rank.
    /// Only a negative `timeout_ms`, which leaves the wait unbounded, fails here.
    pub(crate) fn begin(
        &self,
        stream: StreamHandle,
        req: &Request,
        invalid: Option<&Error>,
    ) -> Result<()> {
        let _range = diag::range(c"dp_coordinator_begin", self.dp_rank, req.step_id);
        let _inside = self.shared.enter()?;
        let mut inner = self.try_inner("dp_coordinator_begin")?;
        if let Some(e) = &inner.broken {
            return Err(broken_error(e));
        }
        if inner.in_flight.is_some() {
            return Err(Error::new(
                ErrorKind::Busy,
                "dp_coordinator_begin: an exchange is already in flight on this coordinator; \
                 call dp_coordinator_end first",
            ));
        }
        let checked = match invalid {
            Some(e) => Err(e.clone()),
            None => rules::make_record(req),
        };
        let (record, rejected) = match checked {
            Ok(record) => (record, None),
            Err(e) if req.timeout_ms >= 0 => (RankRecord::MARKER, Some(e)),
            Err(e) => return Err(e),
        };
        // A marker's step: any valid policy and step id (the verdict is the marker's anyway).
        let (pad_policy, num_ubatches, step_id) = match rejected {
            None => (req.pad_policy, req.effective_num_ubatches(), req.step_id),
            Some(_) => (rules::DP_PAD_POLICY_EXPLICIT, 2, req.step_id.max(0)),
        };
        let start = Instant::now();
        let deadline =
            (req.timeout_ms > 0).then(|| start + Duration::from_millis(req.timeout_ms as u64));
        let kind = if self.dp_size == 1 && !self.force_exchange {
            Flight::Local(match &rejected {
                Some(e) => Err(e.clone()),
                None => rules::decide(&[record], 0, pad_policy, num_ubatches, None),
            })
        } else {
            let step = Step {
                record,
                step_id,
                pad_policy,
                num_ubatches,
                deadline,
                start,
            };
            self.enqueue(&mut inner, stream, &step)?
        };
        inner.in_flight = Some(InFlight {
            start,
            deadline,
            timeout_ms: req.timeout_ms,
            pad_policy,
            num_ubatches,
            step_id,
            rejected,
            kind,
        });
        Ok(())
    }

    /// Host write of the slot, allgather, post kernel. A failure before anything is
    /// enqueued leaves the coordinator usable; one after breaks it.
    fn enqueue(&self, inner: &mut Inner, stream: StreamHandle, step: &Step) -> Result<Flight> {
        let _range = diag::range(c"dp_coordinator_enqueue", self.dp_rank, step.step_id);
        let gpu = inner
            .gpu
            .as_ref()
            .expect("a coordinator of the GPU path has GPU state");
        if inner.checked_stream != Some(stream) {
            if !gpu.ctx.owns(stream)? {
                // Name the devices when they differ; else it is another context of the device.
                Context::of_stream(stream, self.device)?;
                return Err(Error::new(
                    ErrorKind::InvalidArgument,
                    "stream belongs to another CUDA context than the one current (or primary) \
                     on the communicator's device when the coordinator was created",
                ));
            }
            inner.checked_stream = Some(stream);
        }
        cuda::check_not_capturing(stream)?;
        let seq = inner.seq.wrapping_add(1).max(1);
        let connected = inner.connected;
        let gpu = inner.gpu.as_mut().expect("state was just ensured");
        let _current = gpu.ctx.enter()?;
        gpu.send_host.store(
            0,
            &slot::slot_words(seq, step.step_id, step.record.to_words()),
        );
        // The stores reach memory before the launch below makes the GPU read them.
        fence(Ordering::SeqCst);
        inner.seq = seq;
        let result = self.enqueue_device_work(gpu, stream, seq, connected, step);
        match result {
            Ok(()) => {
                inner.connected = true;
                Ok(Flight::Exchange { seq, stream })
            }
            Err(e) => {
                let gpu = inner.gpu.as_mut().expect("state exists");
                gpu.record_pending(stream);
                inner.broken = Some(e.clone());
                Err(e)
            }
        }
    }

    fn enqueue_device_work(
        &self,
        gpu: &mut GpuState,
        stream: StreamHandle,
        seq: u32,
        connected: bool,
        step: &Step,
    ) -> Result<()> {
        if let Some(d) = &gpu.send_device {
            cuda::copy_host_to_device_async(d.ptr(), &gpu.send_host, 0, SLOT_WORDS, stream)?;
        }
        let (send, recv) = (gpu.send_ptr(), gpu.recv.ptr());
        if connected {
            self.nccl.all_gather_i32_until(
                send,
                recv,
                SLOT_WORDS,
                self.comm,
                stream,
                step.deadline,
            )?;
        } else {
            self.first_all_gather(gpu, send, recv, stream, step.deadline, step.start)?;
        }
        let args = PostArgs {
            slots: recv,
            dp_size: self.dp_size,
            dp_rank: self.dp_rank,
            pad_policy: step.pad_policy,
            num_ubatches: step.num_ubatches,
            seq,
            device_out: gpu.device_out.ptr(),
            host: gpu.host.device_ptr(),
        };
        gpu.post
            .launch_post(block_threads(self.dp_size), stream, &args)
    }

    /// The first `ncclAllGather` of this coordinator, on a helper thread the wait can leave.
    fn first_all_gather(
        &self,
        gpu: &mut GpuState,
        send: DevicePtr,
        recv: DevicePtr,
        stream: StreamHandle,
        deadline: Option<Instant>,
        start: Instant,
    ) -> Result<()> {
        let connect = Arc::new(Connect {
            code: Mutex::new(None),
        });
        let (nccl, comm, ctx) = (self.nccl, self.comm, gpu.ctx);
        let shared = Arc::clone(&self.shared);
        let result = Arc::clone(&connect);
        shared.helper_inside.store(true, Ordering::SeqCst);
        let spawned = std::thread::Builder::new()
            .name("dpcoord-connect".into())
            .spawn(move || {
                let code = match ctx.enter() {
                    Ok(_current) => nccl.all_gather_code(send, recv, SLOT_WORDS, comm, stream),
                    Err(_) => -1,
                };
                // From here on the communicator is never touched: the caller may abort it.
                *lock(&result.code) = Some(code);
                shared.helper_inside.store(false, Ordering::SeqCst);
            });
        if let Err(e) = spawned {
            self.shared.helper_inside.store(false, Ordering::SeqCst);
            return Err(Error::internal(format!(
                "could not start the thread for the first ncclAllGather: {e}"
            )));
        }
        loop {
            if let Some(code) = *lock(&connect.code) {
                if code == -1 {
                    return Err(Error::new(
                        ErrorKind::Cuda,
                        "the helper thread could not make the stream's CUDA context current",
                    ));
                }
                return match self.nccl.all_gather_outcome(code)? {
                    true => Ok(()),
                    false => self.nccl.wait_enqueued_until(self.comm, deadline),
                };
            }
            if self.shared.is_cancelled() {
                gpu.leak = true;
                return Err(cancelled_error());
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                gpu.leak = true;
                return Err(Error::new(
                    ErrorKind::Timeout,
                    format!(
                        "the first ncclAllGather on this communicator (NCCL connects to the \
                         peers inside it) did not return within timeout_ms = {} ms: a rank did \
                         not call, or is stuck; a dpcoord helper thread is left inside NCCL, \
                         where only ncclCommAbort frees it: abort the communicator on every \
                         rank, then destroy the coordinator",
                        deadline.map_or(0, |d| (d - start).as_millis())
                    ),
                ));
            }
            std::thread::sleep(Duration::from_micros(20));
        }
    }

    /// Whether the exchange begun last has finished (or failed: `end` says how). Never
    /// blocks.
    pub(crate) fn poll(&self) -> Result<bool> {
        let _inside = self.shared.enter()?;
        let inner = self.try_inner("dp_coordinator_poll")?;
        if let Some(e) = &inner.broken {
            return Err(broken_error(e));
        }
        let Some(flight) = &inner.in_flight else {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "dp_coordinator_poll: no exchange in flight (call dp_coordinator_begin first)",
            ));
        };
        let Flight::Exchange { seq, .. } = flight.kind else {
            return Ok(true);
        };
        let gpu = inner.gpu.as_ref().expect("an exchange has GPU state");
        if gpu.host.load(k::HOST_SEQ) as u32 == seq {
            return Ok(true);
        }
        if flight.deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(true);
        }
        Ok(self.nccl.check_async_error(self.comm).is_err())
    }

    /// Waits for the exchange begun last (bounded by its `timeout_ms`, counted from `begin`,
    /// and by `cancel`) and returns its checked decision.
    pub(crate) fn end(&self) -> Result<Outcome> {
        let _inside = self.shared.enter()?;
        let mut inner = self.try_inner("dp_coordinator_end")?;
        if let Some(e) = &inner.broken {
            return Err(broken_error(e));
        }
        let Some(flight) = inner.in_flight.take() else {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                "dp_coordinator_end: no exchange in flight (call dp_coordinator_begin first)",
            ));
        };
        let _range = diag::range(c"dp_coordinator_end", self.dp_rank, flight.step_id);
        let (seq, stream) = match flight.kind {
            Flight::Local(decided) => {
                let decision = decided?;
                let outcome = Outcome {
                    decision,
                    dp_rank: self.dp_rank,
                    dp_size: self.dp_size,
                    step_id: flight.step_id,
                    host_array: std::ptr::null(),
                    device_array: 0,
                };
                self.trace(&outcome);
                return Ok(outcome);
            }
            Flight::Exchange { seq, stream } => (seq, stream),
        };
        let inner = &mut *inner;
        let gpu = inner.gpu.as_mut().expect("an exchange has GPU state");
        let waited = self
            .wait(gpu, seq, stream, &flight)
            .and_then(|()| self.nccl.check_async_error(self.comm));
        if let Err(e) = waited {
            gpu.record_pending(stream);
            inner.broken = Some(e.clone());
            return Err(e);
        }
        match (self.read_decision(gpu, &flight, seq), flight.rejected) {
            (Ok(outcome), None) => {
                self.trace(&outcome);
                Ok(outcome)
            }
            (Ok(_), Some(_)) => {
                let e = Error::internal(
                    "the post-processing kernel accepted a step in which this rank sent the \
                     invalid-request marker",
                );
                inner.broken = Some(e.clone());
                Err(e)
            }
            (Err(e), rejected) => {
                // Bad records or step ids: every rank exchanged and got the same error, so
                // the ranks stay in step. Anything else (stale slots) breaks the coordinator.
                let stale = gpu.host.load(k::HOST_STATUS) == k::STATUS_STALE;
                let in_step = matches!(
                    e.kind,
                    ErrorKind::InvalidArgument | ErrorKind::InconsistentRanks
                );
                if stale || !in_step {
                    inner.broken = Some(e.clone());
                    return Err(e);
                }
                // This rank's own reason, where it sent the marker; the others name it.
                Err(rejected.unwrap_or(e))
            }
        }
    }

    /// The one host wait: polls the sequence word the kernel writes last, checking
    /// `cancel`, the communicator, the stream and the clock every [`CHECK_INTERVAL`].
    fn wait(&self, gpu: &GpuState, seq: u32, stream: StreamHandle, f: &InFlight) -> Result<()> {
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
            let done = cuda::stream_idle(stream)?;
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
    fn read_decision(&self, gpu: &GpuState, f: &InFlight, seq: u32) -> Result<Outcome> {
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

    /// Ends a wait from any thread: see [`Shared::cancel`]; records the event behind an
    /// exchange begun and not ended, so `destroy` frees nothing it still writes.
    pub(crate) fn cancel(&self) -> Result<()> {
        let outcome = self.shared.cancel();
        if let Ok(mut inner) = self.inner.try_lock() {
            let inner = &mut *inner;
            if let (
                Some(InFlight {
                    kind: Flight::Exchange { stream, .. },
                    ..
                }),
                Some(gpu),
            ) = (&inner.in_flight, inner.gpu.as_mut())
            {
                if !gpu.event_recorded {
                    gpu.record_pending(*stream);
                }
            }
            if inner.broken.is_none() {
                inner.broken = Some(cancelled_error());
            }
        }
        outcome
    }

    /// Frees the coordinator's device state without waiting: state whose work may be
    /// pending goes to the graveyard. Never calls NCCL. `Busy` (and nothing freed) while
    /// another thread is inside a call on it. The coordinator itself may then be dropped.
    pub(crate) fn destroy(&self) -> Result<()> {
        let busy = || {
            Error::new(
                ErrorKind::Busy,
                "dp_coordinator_destroy: another thread is inside a call on this coordinator;                  cancel it first (dp_coordinator_cancel)",
            )
        };
        if self.shared.active.load(Ordering::SeqCst) != 0 {
            return Err(busy());
        }
        let mut inner = self
            .try_inner("dp_coordinator_destroy")
            .map_err(|_| busy())?;
        let inner = &mut *inner;
        if let Some(mut gpu) = inner.gpu.take() {
            if self.shared.helper_inside.load(Ordering::SeqCst) {
                gpu.leak = true;
            }
            if let Some(InFlight {
                kind: Flight::Exchange { stream, .. },
                ..
            }) = &inner.in_flight
            {
                if !gpu.event_recorded {
                    gpu.record_pending(*stream);
                }
            }
            retire(gpu);
        }
        inner.in_flight = None;
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // A coordinator dropped without `destroy` (a panic unwinding) still never frees
        // memory that pending work may write.
        if let Some(mut gpu) = self.gpu.take() {
            gpu.leak |= self.in_flight.is_some() || self.broken.is_some();
            retire(gpu);
        }
    }
}

fn broken_error(first: &Error) -> Error {
    if first.kind == ErrorKind::Cancelled {
        return first.clone();
    }
    first.context(
        "an earlier exchange on this coordinator failed mid-exchange, so the ranks are out of \
         step: abort the communicator (ncclCommAbort) on every rank and destroy the \
         coordinator; the earlier failure",
    )
}

/// The message for slots that do not carry this exchange's sequence number.
fn stale_error(n: usize, dp_rank: i32, seq: u32, slot: &dyn Fn(usize, usize) -> i32) -> Error {
    let bad: Vec<String> = (0..n)
        .filter(|&r| slot(r, slot::SLOT_SEQ) as u32 != seq)
        .take(4)
        .map(|r| format!("rank {r} carries {}", slot(r, slot::SLOT_SEQ) as u32))
        .collect();
    let own_ok = slot(dp_rank as usize, slot::SLOT_SEQ) as u32 == seq;
    let (kind, why) = if own_ok {
        (
            ErrorKind::InconsistentRanks,
            "the ranks' coordinators are out of step (a rank skipped a call or recreated its \
             coordinator)",
        )
    } else {
        (
            ErrorKind::Nccl,
            "the collective did not deliver this call's data (an aborted or failed \
             ncclAllGather)",
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

// ---- the cached per-communicator form of dp_coordinate_batch ----

/// One cached communicator: the cancel flags reachable without its lock, the coordinator
/// behind it. `None` once released (a caller that raced the release retries the lookup).
struct Entry {
    shared: Arc<Shared>,
    coordinator: Mutex<Option<Coordinator>>,
}

/// Coordinators of `dp_coordinate_batch`, keyed by the communicator's address.
static CACHE: LazyLock<Mutex<HashMap<usize, Arc<Entry>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

fn busy_comm() -> Error {
    Error::new(
        ErrorKind::Busy,
        "another thread is inside dp_coordinate_batch or dp_release on this communicator",
    )
}

/// `dp_coordinate_batch`: begin + end on the coordinator cached for `comm`, created (only
/// once NCCL answered for the communicator) on first use.
///
/// An invalid request joins as the marker (see [`Coordinator::begin`]); when no coordinator
/// can be made for `comm`, the request's error is returned, saying it was not exchanged.
pub(crate) fn coordinate(
    comm: CommHandle,
    stream: StreamHandle,
    req: &Request,
    invalid: Option<&Error>,
) -> Result<Outcome> {
    loop {
        let existing = lock(&CACHE).get(&(comm.as_raw() as usize)).cloned();
        let entry = match existing {
            Some(e) => e,
            None => {
                let c = Coordinator::new(comm, false).map_err(|e| match invalid {
                    Some(why) if req.timeout_ms < 0 => why.clone(), // never a marker
                    Some(why) => Error::new(
                        why.kind,
                        format!(
                            "{}; nor could it be exchanged as the invalid-request marker, so \
                             the other ranks are not told: {e}",
                            why.message
                        ),
                    ),
                    None => e,
                })?;
                let fresh = Arc::new(Entry {
                    shared: Arc::clone(&c.shared),
                    coordinator: Mutex::new(Some(c)),
                });
                let mut cache = lock(&CACHE);
                let kept = cache
                    .entry(comm.as_raw() as usize)
                    .or_insert_with(|| Arc::clone(&fresh));
                let kept = Arc::clone(kept);
                drop(cache);
                // Another thread created one first: ours has no GPU state and is dropped.
                drop(fresh);
                kept
            }
        };
        let mut guard = match entry.coordinator.try_lock() {
            Ok(g) => g,
            Err(TryLockError::Poisoned(p)) => p.into_inner(),
            Err(TryLockError::WouldBlock) => return Err(busy_comm()),
        };
        let Some(c) = guard.as_ref() else {
            continue; // released meanwhile: look again
        };
        // A new communicator at a released one's address, of another shape: start afresh
        // (the old state is retired without waiting).
        let (size, rank) = (c.nccl.comm_count(comm)?, c.nccl.comm_user_rank(comm)?);
        if (size, rank) != c.shape() {
            c.destroy()?;
            guard.take();
            let key = comm.as_raw() as usize;
            let mut cache = lock(&CACHE);
            if cache.get(&key).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
                cache.remove(&key);
            }
            continue; // the next lookup creates a coordinator of the new shape
        }
        c.begin(stream, req, invalid)?;
        return c.end();
    }
}

/// `dp_cancel`: cancels the coordinator cached for `comm` (none: nothing to do).
pub(crate) fn cancel(comm: CommHandle) -> Result<()> {
    let entry = lock(&CACHE).get(&(comm.as_raw() as usize)).cloned();
    match entry {
        Some(e) => e.shared.cancel(),
        None => Ok(()),
    }
}

/// `dp_release`: removes `comm`'s coordinator from the cache (under the entry's lock) and
/// destroys it without waiting: state whose work may be pending is freed later, never
/// early. Never calls NCCL, so it may follow `ncclCommAbort`.
pub(crate) fn release(comm: CommHandle) -> Result<()> {
    let key = comm.as_raw() as usize;
    let Some(entry) = lock(&CACHE).get(&key).cloned() else {
        return Ok(());
    };
    let mut guard = match entry.coordinator.try_lock() {
        Ok(g) => g,
        Err(TryLockError::Poisoned(p)) => p.into_inner(),
        Err(TryLockError::WouldBlock) => {
            return Err(Error::new(
                ErrorKind::Busy,
                "dp_release: a dp_coordinate_batch on this communicator is running on another \
                 thread; cancel it first (dp_cancel), or release after it returned",
            ))
        }
    };
    {
        let mut cache = lock(&CACHE);
        if cache.get(&key).is_some_and(|e| Arc::ptr_eq(e, &entry)) {
            cache.remove(&key);
        }
    }
    if let Some(c) = guard.as_ref() {
        if let Err(e) = c.destroy() {
            lock(&CACHE)
                .entry(key)
                .or_insert_with(|| Arc::clone(&entry));
            return Err(e);
        }
    }
    guard.take();
    Ok(())
}

#[cfg(test)]
mod tests;
