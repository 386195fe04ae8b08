//! The device side of a coordinator, the graph table's device copy (`set_graphs`) and the
//! graveyard: state whose work may still be pending is freed only once it is not, and state a
//! helper thread may still write never.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use super::{broken_error, lock, Coordinator};
use crate::cuda::{
    self, Context, DeviceBuffer, DevicePtr, Event, Kernel, MappedHost, Module, OwnedStream,
    StreamHandle,
};
use crate::error::{Error, ErrorKind, Result};
use crate::kernels::{self as k, SLOT_WORDS};
use crate::rules::GraphTable;

/// Environment variable choosing the send buffer: `host` (default: mapped pinned memory that
/// NCCL reads) or `device` (a device buffer filled by one async copy on the stream).
pub(crate) const ENV_SEND_BUFFER: &str = "DPCOORD_SEND_BUFFER";

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

/// The device side of a coordinator: created with it (so that no `begin` allocates, loads a
/// module or frees: each of those may wait for the whole device), in the context that is
/// current on the communicator's device, else that device's primary context.
///
/// Every resource frees itself when dropped (in its context, unless that context was
/// destroyed or reset meanwhile, which took the memory with it), so a `create` that fails
/// half-way frees what it made. A whole state is dropped only by [`sweep_graveyard`], once
/// [`GpuState::idle`]; one that must leak stays in the graveyard, never dropped.
pub(super) struct GpuState {
    pub(super) ctx: Context,
    pub(super) post: Kernel,
    /// This rank's slot, written by the host (NCCL's send buffer on the host path).
    pub(super) send_host: MappedHost,
    /// The device send buffer (device path only).
    pub(super) send_device: Option<DeviceBuffer>,
    /// Every rank's slot, gathered by NCCL.
    pub(super) recv: DeviceBuffer,
    pub(super) device_out: DeviceBuffer,
    /// The device form of the V2 graph table (`Coordinator::set_graphs`), if any.
    pub(super) graphs: Option<DeviceBuffer>,
    /// The kernel's host block.
    pub(super) host: MappedHost,
    /// Recorded behind work that may still be pending when the coordinator fails or is
    /// destroyed, and behind every `begin` on a special stream (see [`Flight::Exchange`]).
    ///
    /// [`Flight::Exchange`]: super::Flight::Exchange
    pub(super) event: Event,
    pub(super) event_recorded: bool,
    /// The coordinator's own stream: the first exchange's gather (on the helper thread),
    /// and the whole exchange of a `begin` whose stream it cannot use.
    pub(super) stream: OwnedStream,
    /// Orders the first gather on [`GpuState::stream`] after the caller's stream, and the
    /// caller's stream after it.
    pub(super) order: Event,
    /// A helper thread is inside NCCL with pointers to these buffers: not freed until it left.
    pub(super) helper: Arc<AtomicBool>,
    /// Pending work that could not be covered by the event: never freed.
    pub(super) leak: bool,
    /// The module `post` belongs to: it lives, and is unloaded, with the state.
    _module: Module,
}

impl GpuState {
    pub(super) fn new(ctx: Context, dp_size: usize, send_path: SendPath) -> Result<GpuState> {
        let _current = ctx.enter()?;
        let module = Module::load(ctx, k::POSTPROCESS_PTX_CSTR)?;
        let post = module.kernel(k::POSTPROCESS_KERNEL)?;
        let send_host = MappedHost::new(ctx, SLOT_WORDS)?;
        let send_device = match send_path {
            SendPath::Host => None,
            SendPath::Device => Some(DeviceBuffer::new(ctx, SLOT_WORDS)?),
        };
        // Zeroed: no slot carries sequence number 0, so nothing left here is ever accepted.
        let recv = DeviceBuffer::new(ctx, SLOT_WORDS * dp_size)?;
        let device_out = DeviceBuffer::new(ctx, dp_size)?;
        let host = MappedHost::new(ctx, k::host_block_words(dp_size))?;
        let event = Event::new(ctx)?;
        let stream = OwnedStream::new(ctx)?;
        let order = Event::new(ctx)?;
        Ok(GpuState {
            ctx,
            post,
            send_host,
            send_device,
            recv,
            device_out,
            graphs: None,
            host,
            event,
            event_recorded: false,
            stream,
            order,
            helper: Arc::default(),
            leak: false,
            _module: module,
        })
    }

    /// The send buffer NCCL reads.
    pub(super) fn send_ptr(&self) -> DevicePtr {
        match &self.send_device {
            Some(d) => d.ptr(),
            None => self.send_host.device_ptr(),
        }
    }

    /// Records the event behind whatever is queued on `stream` (best effort: a failure
    /// leaves the state to be leaked rather than freed too early).
    pub(super) fn record_pending(&mut self, stream: StreamHandle) {
        if let Ok(_current) = self.ctx.enter() {
            self.event_recorded = self.event.record(stream).is_ok();
            if !self.event_recorded {
                self.leak = true;
            }
        } else {
            self.leak = true;
        }
    }

    /// Whether freeing now is safe: no helper thread inside NCCL, the work recorded on the
    /// event finished, and so did whatever the helper left on the coordinator's own stream.
    pub(super) fn idle(&self) -> bool {
        if self.leak || self.helper.load(Ordering::SeqCst) {
            return false;
        }
        // A context destroyed or reset took the work with it; a failed query (the work
        // failed) means nothing of it runs any more.
        let Some(_current) = self.ctx.enter_if_alive() else {
            return true;
        };
        if self.event_recorded && !self.event.done().unwrap_or(true) {
            return false;
        }
        cuda::stream_idle(self.stream.handle()).unwrap_or(true)
    }
}

impl Coordinator {
    /// Sets the V2 graph table every later `begin` makes its slot with and the kernel
    /// dispatches over (`None`: no table), replacing the previous one: keeps `table` and, with
    /// GPU state, copies its device form into device memory (allocates; may wait for the
    /// device). `Busy` while an exchange is in flight or another thread is inside a call on
    /// the coordinator; after a failure mid-exchange, that failure. On an error nothing
    /// changes.
    pub(crate) fn set_graphs(&self, table: Option<Arc<GraphTable>>) -> Result<()> {
        let _inside = self.shared.enter()?;
        let mut inner = self.try_inner("dp_coordinator_set_graphs")?;
        if let Some(e) = &inner.broken {
            return Err(broken_error(e));
        }
        if inner.in_flight.is_some() {
            return Err(Error::new(
                ErrorKind::Busy,
                "dp_coordinator_set_graphs: an exchange is in flight on this coordinator; set \
                 the graph table before dp_coordinator_begin or after dp_coordinator_end",
            ));
        }
        if let Some(gpu) = inner.gpu.as_mut() {
            let _current = gpu.ctx.enter()?;
            let words = match &table {
                Some(t) => {
                    let mut words = t.device_words();
                    // The kernel's prefetch reads this many words of any table.
                    words.resize(words.len().max(k::TABLE_PREFETCH_WORDS), 0);
                    Some(DeviceBuffer::with_words(gpu.ctx, &words)?)
                }
                None => None,
            };
            // No work reads the old copy: nothing is in flight, and an ended exchange's
            // kernel read its table before it published.
            gpu.graphs = words;
        }
        inner.table = table;
        Ok(())
    }
}

/// States whose work may still be pending, freed once it is not.
pub(super) static GRAVEYARD: Mutex<Vec<GpuState>> = Mutex::new(Vec::new());

/// Frees what in the graveyard is idle now.
pub(super) fn sweep_graveyard() {
    let ready: Vec<GpuState> = {
        let mut g = lock(&GRAVEYARD);
        let (ready, waiting): (Vec<_>, Vec<_>) = g.drain(..).partition(GpuState::idle);
        *g = waiting;
        ready
    };
    drop(ready);
}

/// Hands `state` to the graveyard without looking at it (it never waits and never frees
/// here); a later [`sweep_graveyard`] frees it once it is idle.
pub(super) fn retire(state: GpuState) {
    lock(&GRAVEYARD).push(state);
}
