//! What only dpcoord's own GPU benchmark (`gpu-bench/`) needs, behind the `testing` cargo
//! feature and hidden from the docs: a coordinator that runs the GPU path even on a one-rank
//! communicator, the post-processing kernel on its own (stage measurements), a bare NCCL
//! harness (communicator set-up, the bare allgather) and the few CUDA calls the benchmark
//! uses to set up and check. Not part of the API; the C ABI never reaches it.
//!
//! The raw driver and NCCL wrappers behind these live in `cuda` and `nccl` under the same
//! feature (the rooms where `unsafe` may live); this module is safe code over them.

pub mod diag_sites;

use crate::coordinator::Coordinator;
use crate::cuda::{self, extra, DeviceBuffer, MappedHost, Module, PostArgs};
use crate::error::{Error, ErrorKind, Result};
use crate::ffi::{self, dp_batch_request, dp_batch_result, dp_graphs, dp_status};
use crate::kernels as k;
use crate::nccl::{self, Nccl};
use crate::slot::{self, Slot};

pub use crate::coordinator::{Decided, Outcome, SendPath};
pub use crate::cuda::{DevicePtr, StreamHandle};
pub use crate::nccl::{CommHandle, UniqueId};

/// Words of one rank's slot on the wire.
pub const SLOT_WORDS: usize = k::SLOT_WORDS;

/// One rank's slot for `req` with sequence number `seq`, arriving now, as the coordinator's
/// `begin` writes it (`dp_make_slot`'s, with the sequence number), as the words the allgather
/// moves.
pub fn slot_words(req: &dp_batch_request, seq: u32) -> Result<[i32; SLOT_WORDS]> {
    let mut s = Slot {
        opaque: [0; SLOT_WORDS],
    };
    match ffi::dp_make_slot(req, std::ptr::null(), &mut s) {
        dp_status::DP_OK => {}
        st => {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("dp_make_slot refused the request: {st:?}"),
            ))
        }
    }
    s.opaque[slot::at::SEQ] = seq;
    s.seal();
    Ok(bytemuck::cast(s.opaque))
}

/// A coordinator that runs the whole GPU path even on a one-rank communicator (where the
/// library itself decides locally), for the one-rank forced-exchange benchmark.
pub struct ForcedCoordinator {
    inner: Coordinator,
}

impl ForcedCoordinator {
    /// A forced coordinator for `comm` with the given send buffer.
    pub fn new(comm: CommHandle, send_path: SendPath) -> Result<ForcedCoordinator> {
        Ok(ForcedCoordinator {
            inner: Coordinator::with_send_path(comm, true, send_path)?,
        })
    }

    /// `dp_coordinator_set_graphs` (`g` from `dp_graphs_create`, or NULL: no table; the
    /// coordinator keeps its own reference).
    pub fn set_graphs(&self, g: *const dp_graphs) -> Result<()> {
        self.inner.set_graphs(ffi::graphs_of(g)?)
    }

    /// `dp_coordinator_begin` (the C request read and checked as the C ABI does).
    pub fn begin(&self, stream: StreamHandle, req: &dp_batch_request) -> Result<()> {
        let request = ffi::read_request(req)?;
        self.inner.begin(stream, &request, None)
    }

    /// `dp_coordinator_poll`.
    pub fn poll(&self) -> Result<bool> {
        self.inner.poll()
    }

    /// `dp_coordinator_end`.
    pub fn end(&self) -> Result<Outcome> {
        self.inner.end()
    }

    /// `dp_coordinate_batch` end to end on this coordinator: the C request read and checked
    /// as the C ABI does, begin, end, the C result written. What the forced benchmark times.
    pub fn coordinate_batch(
        &self,
        stream: StreamHandle,
        req: &dp_batch_request,
        res: &mut dp_batch_result,
    ) -> dp_status {
        let res: *mut dp_batch_result = res;
        ffi::boundary(|| {
            let request = ffi::read_request(req)?;
            let size = ffi::check_result(res)?;
            self.inner.begin(stream, &request, None)?;
            let o = self.inner.end()?;
            ffi::write_result(res, size, &ffi::outcome_result(&o));
            Ok(())
        })
    }
}

impl Drop for ForcedCoordinator {
    fn drop(&mut self) {
        let _ = self.inner.destroy();
    }
}

/// The C result `dp_coordinator_end` writes for an outcome.
pub fn outcome_result(o: &Outcome) -> dp_batch_result {
    ffi::outcome_result(o)
}

/// The NCCL of the process plus its communicator set-up functions.
pub struct Harness {
    nccl: &'static Nccl,
}

impl Harness {
    /// Finds NCCL as the library does.
    pub fn new() -> Result<Harness> {
        let nccl = nccl::nccl()?;
        nccl.harness()?;
        Ok(Harness { nccl })
    }

    /// `ncclGetVersion`'s code.
    pub fn version(&self) -> i32 {
        self.nccl.version()
    }

    /// Where NCCL was found.
    pub fn origin(&self) -> String {
        match self.nccl.library_path() {
            Some(p) => format!("{} ({p})", self.nccl.origin()),
            None => self.nccl.origin().to_string(),
        }
    }

    /// `ncclGetUniqueId`.
    pub fn unique_id(&self) -> Result<UniqueId> {
        self.nccl.harness()?.unique_id(self.nccl)
    }

    /// `ncclCommInitRank` on the current device.
    pub fn init_rank(&self, nranks: i32, id: UniqueId, rank: i32) -> Result<CommHandle> {
        self.nccl.harness()?.init_rank(self.nccl, nranks, id, rank)
    }

    /// `ncclCommDestroy` of a communicator made by `init_rank`.
    pub fn destroy(&self, comm: CommHandle) -> Result<()> {
        self.nccl.harness()?.destroy(self.nccl, comm)
    }

    /// The bare `ncclAllGather` of `words` int32 per rank on `stream`.
    pub fn all_gather(
        &self,
        send: DevicePtr,
        recv: DevicePtr,
        words: usize,
        comm: CommHandle,
        stream: StreamHandle,
    ) -> Result<()> {
        self.nccl
            .all_gather_i32_until(send, recv, words, comm, stream, None)
    }

    /// The bare `ncclAllReduce` (sum) of `words` int32 on `stream`.
    pub fn all_reduce(
        &self,
        send: DevicePtr,
        recv: DevicePtr,
        words: usize,
        comm: CommHandle,
        stream: StreamHandle,
    ) -> Result<()> {
        self.nccl
            .harness()?
            .all_reduce_sum_i32(self.nccl, (send, recv), words, comm, stream)
    }
}

/// `cuDeviceGetCount` (0 and the error when no driver is usable).
pub fn device_count() -> Result<i32> {
    extra::device_count()
}

/// `cuDeviceGetName`.
pub fn device_name(ordinal: i32) -> Result<String> {
    extra::device_name(ordinal)
}

/// Makes `device`'s primary context current on this thread.
pub fn bind_device(device: i32) -> Result<()> {
    extra::bind_device(device)
}

/// `cuStreamSynchronize`.
pub fn synchronize(stream: StreamHandle) -> Result<()> {
    extra::synchronize(stream)
}

/// `cuStreamQuery`: whether the stream is idle.
pub fn stream_idle(stream: StreamHandle) -> Result<bool> {
    cuda::stream_idle(stream)
}

/// A non-blocking stream of the current context, destroyed on drop.
pub struct Stream {
    stream: cuda::OwnedStream,
}

impl Stream {
    /// Creates the stream.
    pub fn new() -> Result<Stream> {
        Ok(Stream {
            stream: cuda::OwnedStream::new(extra::current_context()?)?,
        })
    }

    /// Its handle.
    pub fn handle(&self) -> StreamHandle {
        self.stream.handle()
    }
}

/// Zeroed device memory of int32 words, freed on drop (in its context).
pub struct DeviceWords {
    buffer: DeviceBuffer,
}

impl DeviceWords {
    /// Allocates `words` int32 in the current context.
    pub fn new(words: usize) -> Result<DeviceWords> {
        Ok(DeviceWords {
            buffer: DeviceBuffer::new(extra::current_context()?, words)?,
        })
    }

    /// The device address.
    pub fn ptr(&self) -> DevicePtr {
        self.buffer.ptr()
    }

    /// Copies `out.len()` words back (synchronously).
    pub fn read(&self, out: &mut [i32]) -> Result<()> {
        extra::copy_to_host(self.ptr(), out)
    }
}

/// Mapped pinned host memory of int32 words, freed on drop (in its context).
pub struct MappedWords {
    block: MappedHost,
}

impl MappedWords {
    /// Allocates `words` zeroed int32 in the current context.
    pub fn new(words: usize) -> Result<MappedWords> {
        Ok(MappedWords {
            block: MappedHost::new(extra::current_context()?, words)?,
        })
    }

    fn block(&self) -> &MappedHost {
        &self.block
    }

    /// Its device address.
    pub fn device_ptr(&self) -> DevicePtr {
        self.block().device_ptr()
    }

    /// Word `i` as last written (volatile).
    pub fn load(&self, i: usize) -> i32 {
        self.block().load(i)
    }

    /// Writes `words` at `i` (volatile).
    pub fn store(&self, i: usize, words: &[i32]) {
        self.block().store(i, words);
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }

    /// `cuMemcpyHtoDAsync` of `words` words from word `i` to `dst` on `stream`.
    pub fn copy_to_device_async(
        &self,
        i: usize,
        words: usize,
        dst: DevicePtr,
        stream: StreamHandle,
    ) -> Result<()> {
        cuda::copy_host_to_device_async(dst, self.block(), i, words, stream)
    }
}

/// The post-processing kernel on its own, with the coordinator's buffers, for the stage
/// measurements: launch it on slots already gathered, spin on its sequence word.
pub struct PostKit {
    /// The module `post` belongs to, unloaded on drop.
    _module: Module,
    post: cuda::Kernel,
    dp_size: i32,
    dp_rank: i32,
    /// The gathered slots the kernel reads.
    pub slots: DeviceWords,
    /// The device array.
    pub device_out: DeviceWords,
    /// The kernel's host block.
    pub host: MappedWords,
}

impl PostKit {
    /// Loads the kernel into the current context and allocates its buffers.
    pub fn new(dp_size: i32, dp_rank: i32) -> Result<PostKit> {
        let n = dp_size as usize;
        let module = Module::load(extra::current_context()?, k::POSTPROCESS_PTX_CSTR)?;
        let post = module.kernel(k::POSTPROCESS_KERNEL)?;
        Ok(PostKit {
            _module: module,
            post,
            dp_size,
            dp_rank,
            slots: DeviceWords::new(SLOT_WORDS * n)?,
            device_out: DeviceWords::new(n)?,
            host: MappedWords::new(k::host_block_words(n))?,
        })
    }

    /// Launches the kernel on `self.slots` with sequence number `seq` (the pad policy and
    /// `num_ubatches` are the slots').
    pub fn launch(&self, stream: StreamHandle, seq: u32) -> Result<()> {
        let args = PostArgs {
            slots: self.slots.ptr(),
            dp_size: self.dp_size,
            dp_rank: self.dp_rank,
            seq,
            device_out: self.device_out.ptr(),
            host: self.host.device_ptr(),
            table: 0,
        };
        self.post.launch_post(
            crate::coordinator::block_threads(self.dp_size),
            stream,
            &args,
        )
    }

    /// Spins until the kernel published `seq`, or `Timeout` after `limit`.
    pub fn spin(&self, seq: u32, limit: std::time::Duration) -> Result<()> {
        let start = std::time::Instant::now();
        let mut polls = 0u32;
        while self.host.load(k::HOST_SEQ) as u32 != seq {
            polls = polls.wrapping_add(1);
            if polls % 4096 == 0 && start.elapsed() > limit {
                return Err(Error::new(
                    ErrorKind::Timeout,
                    "the post kernel did not publish",
                ));
            }
            std::hint::spin_loop();
        }
        std::sync::atomic::fence(std::sync::atomic::Ordering::Acquire);
        Ok(())
    }

    /// The published status word and the decision words (should_ubatch, should_dp_pad,
    /// synced mode, self, max padded, min unpadded).
    pub fn verdict(&self) -> (i32, [i32; 6]) {
        let w = |i| self.host.load(i);
        (
            w(k::HOST_STATUS),
            [
                w(k::HOST_SHOULD_UBATCH),
                w(k::HOST_SHOULD_DP_PAD),
                w(k::HOST_SYNCED_CUDAGRAPH_MODE),
                w(k::HOST_NUM_TOKENS_AFTER_PADDING_SELF),
                w(k::HOST_MAX_NUM_TOKENS_PADDED),
                w(k::HOST_MIN_NUM_TOKENS_UNPADDED),
            ],
        )
    }

    /// The host word index of the per-rank array.
    pub fn host_array_offset(&self) -> usize {
        k::host_array_offset()
    }
}

/// The status value the kernel publishes for a valid decision.
pub const STATUS_OK: i32 = k::STATUS_OK;
