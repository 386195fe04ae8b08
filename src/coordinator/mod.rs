//! The GPU path: an explicit coordinator per communicator (`dp_coordinator_*`), split into
//! `begin` (enqueue on the caller's stream, return), `poll` (never blocks) and `end` (one
//! bounded host wait), plus the per-communicator cache of `dp_coordinate_batch` on top of it.
//!
//! Here: the state machine (begin/poll/end/cancel/destroy). `flight`: the slot a `begin`
//! sends, what is in flight until `end`, what a step decided; `enqueue`: the device work of a
//! `begin`; `verdict`: `end`'s wait and what it accepts; `shared`: what `cancel` reaches
//! without the lock; `device`: the device state, the graph table's device copy
//! (`set_graphs`) and the graveyard; `cache`: the per-communicator cache
//! of `dp_coordinate_batch`, `dp_cancel` and `dp_release`; `straggler`: which rank arrives
//! last, for the INFO log.
//!
//! One exchange: the host writes its slot (the checked [`Slot`](crate::slot::Slot) of every
//! transport: sequence number, configuration, step ids, arrival time, record, checksum)
//! into mapped pinned memory that `ncclAllGather` reads as its send buffer (or, with
//! `DPCOORD_SEND_BUFFER=device`, copies it to a device buffer first), NCCL gathers every
//! rank's slot into device memory, `dp_postprocess` checks every slot and publishes the
//! decision and the straggler report to mapped memory (sequence word last) and to the
//! device array, and `end` spins on the sequence word. Nothing is trusted that the kernel
//! did not verify (every slot carries this exchange's sequence number, is intact, and
//! agrees with rank 0's on the configuration and step ids) and that NCCL did not flag
//! (`ncclCommGetAsyncError` is read before a result is accepted); on any other verdict the
//! message comes from `rules::slots` over the kernel's copy of the slots.
//!
//! Bounded waits: NCCL >= 2.22 connects lazily inside the first collective on a communicator,
//! on the calling thread and with no timeout. The first exchange of a coordinator therefore
//! calls `ncclAllGather` on a helper thread and waits for it, bounded by `timeout_ms` and by
//! `cancel`; if it does not return in time the coordinator fails with `DP_ERR_TIMEOUT` and
//! the helper is left inside NCCL, where only `ncclCommAbort` frees it (it touches nothing
//! afterwards). That gather runs on the coordinator's own stream, ordered after the caller's
//! stream and before the post kernel by an event each way, recorded and waited for on the
//! caller's thread (the helper's `cudaStreamPerThread` would be another stream). Later
//! exchanges call NCCL on the caller's thread (connections exist; a nonblocking
//! communicator's `ncclInProgress` is polled against the same deadline). A helper thread
//! works for both kinds of communicator, where detecting a nonblocking one would leave the
//! blocking kind, the common one, unbounded.
//!
//! Special streams (NULL, legacy, per-thread) mean something on the calling thread only:
//! `begin` records the state's event behind its work there, and `end`, `cancel` and
//! `destroy`, which may run on other threads, use the event, never the stream. An ordinary
//! stream costs nothing extra.
//!
//! Device state is made by `create` and never freed by `destroy` or `dp_release` (freeing may
//! wait for the whole device): they hand it to a graveyard that the next `create` empties of
//! whatever is idle, that is, whose event recorded behind pending work has completed, and
//! whose helper thread (if any) left NCCL and whatever it enqueued on the coordinator's own
//! stream completed.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::{Duration, Instant};

use crate::cuda::{self, Context, DevicePtr, StreamHandle};
use crate::diag::{self, Ctx, Level, Stragglers};
use crate::error::{Error, ErrorKind, Result};
use crate::kernels as k;
use crate::nccl::{self, CommHandle, Nccl};
use crate::rules::{GraphTable, Request};
use crate::slot;

mod cache;
mod device;
mod enqueue;
mod flight;
mod shared;
#[cfg(test)]
mod tests;
mod verdict;

#[cfg(test)]
pub(crate) use cache::is_cached;
pub(crate) use cache::{cancel, coordinate, release};
#[cfg(feature = "testing")]
pub(crate) use enqueue::block_threads;

pub use device::SendPath;
use device::{retire, sweep_graveyard, GpuState};
pub use flight::Decided;
use flight::{decide_alone, own_slot, Flight, InFlight, Step};
use shared::{cancelled_error, Shared};

/// Host polls between two reads of the clock.
const POLLS_PER_CLOCK: u32 = 64;
/// Time between two checks of the communicator, the stream, `cancel` and the deadline. A
/// healthy exchange finishes before the first check, keeping those calls off the fast path.
const CHECK_INTERVAL: Duration = Duration::from_micros(50);
/// After this long spinning, the wait yields the CPU between polls.
const SPIN_BEFORE_YIELD: Duration = Duration::from_millis(1);
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// What one coordinated step produced.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// The shared decision.
    pub decision: Decided,
    /// This rank.
    pub dp_rank: i32,
    /// Number of ranks.
    pub dp_size: i32,
    /// The agreed step id (0 when unchecked).
    pub step_id: i64,
    /// The rank that arrived last (the lowest such on a tie); -1 when nothing was exchanged.
    pub last_rank: i32,
    /// Latest minus earliest arrival time over the ranks, in ns.
    pub arrival_skew_ns: i64,
    /// How long `end` waited for the exchange to finish, in ns (0: it had finished).
    pub wait_ns: i64,
    /// Library-owned host array of `dp_size` entries, or NULL when dp_size == 1 (read it only
    /// when [`Decided::has_array`]).
    pub host_array: *const i32,
    /// Library-owned device array of `dp_size` entries, or 0 when dp_size == 1.
    pub device_array: DevicePtr,
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
    /// The V2 graph table (`set_graphs`; its device form is the GPU state's).
    table: Option<Arc<GraphTable>>,
    /// Which rank arrived last in the recent exchanges (read only for the INFO log).
    stragglers: Stragglers,
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
        Self::build(
            comm,
            nccl::nccl()?,
            force_exchange,
            send_path,
            Arc::default(),
        )
    }

    /// The coordinator of `dp_coordinate_batch`'s cache entry, whose `shared` (what
    /// `dp_cancel` reaches) existed, and counted the creating thread inside, before this
    /// touches the communicator.
    fn with_shared(comm: CommHandle, shared: Arc<Shared>) -> Result<Coordinator> {
        let send_path = SendPath::from_env()?;
        sweep_graveyard();
        Self::build(comm, nccl::nccl()?, false, send_path, shared)
    }

    /// A coordinator over a fake NCCL (unit tests without a GPU).
    #[cfg(test)]
    pub(crate) fn with_nccl(nccl: &'static Nccl, force_exchange: bool) -> Coordinator {
        // SAFETY: the fake NCCL never dereferences the communicator.
        let comm = unsafe { CommHandle::from_raw(0x1000 as *mut std::ffi::c_void) };
        Self::build(comm, nccl, force_exchange, SendPath::Host, Arc::default())
            .expect("the fake answers")
    }

    fn build(
        comm: CommHandle,
        nccl: &'static Nccl,
        force_exchange: bool,
        send_path: SendPath,
        shared: Arc<Shared>,
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
            shared,
            inner: Mutex::new(Inner {
                gpu,
                checked_stream: None,
                seq: 0,
                connected: false,
                in_flight: None,
                broken: None,
                table: None,
                stragglers: Stragglers::new(),
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
    /// This rank's slot is `rules::slots::make`'s, with the coordinator's next sequence
    /// number and the time `begin` was entered as its arrival time. A request that is invalid
    /// (`invalid`, as the C boundary read it, else `make`'s verdict) still joins, as
    /// `Slot::marker`, so that no rank waits for it: `end` returns the error here and the
    /// marker's on every other rank. So does a `stream` the coordinator cannot use (another
    /// device's or context's, or one capturing a CUDA graph): the marker is exchanged on the
    /// coordinator's own stream and the caller's is not touched. Only a negative
    /// `timeout_ms`, which leaves the wait unbounded, fails here.
    pub(crate) fn begin(
        &self,
        stream: StreamHandle,
        req: &Request,
        invalid: Option<&Error>,
    ) -> Result<()> {
        let arrival_ns = slot::now_ns();
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
        let exchange = self.dp_size > 1 || self.force_exchange;
        // Checked here, on the caller's thread; one the coordinator cannot use joins on its
        // own stream, as the marker.
        let (stream, unusable) = match exchange {
            true => self.usable_stream(&mut inner, stream)?,
            false => (stream, None),
        };
        let seq = inner.seq.wrapping_add(1).max(1);
        let table = inner.table.as_deref();
        let (slot, rejected) =
            own_slot(req, invalid.cloned().or(unusable), seq, arrival_ns, table)?;
        let step_id = req.step_id.max(0);
        let start = Instant::now();
        let deadline =
            (req.timeout_ms > 0).then(|| start + Duration::from_millis(req.timeout_ms as u64));
        let kind = if !exchange {
            Flight::Local(match &rejected {
                Some(e) => Err(e.clone()),
                None => decide_alone(slot, table),
            })
        } else {
            let step = Step {
                slot,
                step_id,
                deadline,
                start,
            };
            self.enqueue(&mut inner, stream, &step)?
        };
        inner.in_flight = Some(InFlight {
            start,
            deadline,
            timeout_ms: req.timeout_ms,
            step_id,
            slot,
            rejected,
            kind,
        });
        Ok(())
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
        let (seq, stream, marked) = match flight.kind {
            Flight::Local(decided) => {
                let decision = decided?;
                let outcome = Outcome {
                    decision,
                    dp_rank: self.dp_rank,
                    dp_size: self.dp_size,
                    step_id: flight.slot.step_id(),
                    last_rank: -1,
                    arrival_skew_ns: 0,
                    wait_ns: 0,
                    host_array: std::ptr::null(),
                    device_array: 0,
                };
                self.trace(&outcome);
                return Ok(outcome);
            }
            Flight::Exchange {
                seq,
                stream,
                marked,
            } => (seq, stream, marked),
        };
        let inner = &mut *inner;
        let gpu = inner.gpu.as_mut().expect("an exchange has GPU state");
        let waited = self
            .wait(gpu, seq, (stream, marked), &flight)
            .and_then(|ns| self.nccl.check_async_error(self.comm).map(|()| ns));
        let wait_ns = match waited {
            Ok(ns) => ns,
            Err(e) => {
                if !marked {
                    gpu.record_pending(stream);
                }
                inner.broken = Some(e.clone());
                return Err(e);
            }
        };
        let host = &gpu.host;
        let read = verdict::read(
            &|i| host.load(i),
            self.dp_size as usize,
            self.dp_rank,
            seq,
            inner.table.as_deref(),
        );
        match (read, flight.rejected) {
            (Ok(published), None) => {
                let outcome = Outcome {
                    decision: published.decided,
                    dp_rank: self.dp_rank,
                    dp_size: self.dp_size,
                    // The kernel checked that every rank's equals this rank's.
                    step_id: flight.slot.step_id(),
                    last_rank: published.last_rank,
                    arrival_skew_ns: published.arrival_skew_ns,
                    wait_ns,
                    host_array: host.host_ptr(k::host_array_offset()),
                    device_array: gpu.device_out.ptr(),
                };
                self.trace(&outcome);
                if self.dp_size > 1 {
                    let ctx = self.ctx(outcome.step_id);
                    inner
                        .stragglers
                        .note(&ctx, outcome.last_rank, outcome.arrival_skew_ns);
                }
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
                // A marker, other settings or step ids, bad records: every rank exchanged and
                // got the same error, so the ranks stay in step. Anything else (stale or
                // damaged slots) breaks the coordinator.
                let stale = host.load(k::HOST_STATUS) == k::STATUS_STALE;
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

    /// Ends a wait from any thread: see [`Shared::cancel`]; records the event behind an
    /// exchange begun and not ended, so `destroy` frees nothing it still writes.
    pub(crate) fn cancel(&self) -> Result<()> {
        let outcome = self.shared.cancel();
        if let Ok(mut inner) = self.inner.try_lock() {
            let inner = &mut *inner;
            if let (
                Some(InFlight {
                    kind:
                        Flight::Exchange {
                            stream,
                            marked: false,
                            ..
                        },
                    ..
                }),
                Some(gpu),
            ) = (&inner.in_flight, inner.gpu.as_mut())
            {
                gpu.record_pending(*stream);
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
        self.destroy_inside(0)
    }

    /// [`Coordinator::destroy`] by a caller that is itself counted inside `own` times (the
    /// cache, replacing a coordinator within its entered section).
    fn destroy_inside(&self, own: u32) -> Result<()> {
        let busy = || {
            Error::new(
                ErrorKind::Busy,
                "dp_coordinator_destroy: another thread is inside a call on this coordinator; \
                 cancel it first (dp_coordinator_cancel)",
            )
        };
        if self.shared.active.load(Ordering::SeqCst) != own {
            return Err(busy());
        }
        let mut inner = self
            .try_inner("dp_coordinator_destroy")
            .map_err(|_| busy())?;
        let inner = &mut *inner;
        if let Some(mut gpu) = inner.gpu.take() {
            if let Some(InFlight {
                kind:
                    Flight::Exchange {
                        stream,
                        marked: false,
                        ..
                    },
                ..
            }) = &inner.in_flight
            {
                gpu.record_pending(*stream);
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
