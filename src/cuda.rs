//! The CUDA driver API through `cudarc` (loaded at run time): the context that owns the
//! caller's stream, device buffers, mapped pinned host memory, an event, the kernel module
//! and launches. Every driver failure becomes [`Error::Cuda`] with the driver's own text.

use std::ffi::{c_void, CStr};
use std::sync::{Mutex, OnceLock, PoisonError};

use cudarc::driver::sys::{self, CUresult};

use crate::error::{Error, ErrorKind, Result};

/// The caller's `cudaStream_t` / `CUstream`, as a raw pointer.
pub type StreamPtr = *mut c_void;
/// A device address.
pub type DevicePtr = u64;

/// The legacy default stream handle (`cudaStreamLegacy`, `CU_STREAM_LEGACY`).
pub const STREAM_LEGACY: usize = 0x1;
/// The per-thread default stream handle (`cudaStreamPerThread`, `CU_STREAM_PER_THREAD`).
pub const STREAM_PER_THREAD: usize = 0x2;

/// Turns a driver status into `Ok` or an [`Error::Cuda`] naming the call and the driver's text.
fn check(status: CUresult, call: &str) -> Result<()> {
    if status == CUresult::CUDA_SUCCESS {
        return Ok(());
    }
    Err(Error::new(
        ErrorKind::Cuda,
        format!("{call} failed: {}", describe(status)),
    ))
}

/// The driver's name and description of a status, e.g. "CUDA_ERROR_INVALID_VALUE (invalid argument)".
fn describe(status: CUresult) -> String {
    let (mut name, mut text) = (std::ptr::null(), std::ptr::null());
    // SAFETY: both calls only write a pointer to a static string into the out-parameters,
    // which are valid locals; a NULL result is handled below.
    unsafe {
        sys::cuGetErrorName(status, &mut name);
        sys::cuGetErrorString(status, &mut text);
    }
    let read = |p: *const std::ffi::c_char| {
        if p.is_null() {
            format!("{status:?}")
        } else {
            // SAFETY: non-NULL pointers from cuGetErrorName/String point at static
            // NUL-terminated strings owned by the driver.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    format!("{} ({})", read(name), read(text))
}

/// Loads the driver and runs `cuInit(0)` once; an absent driver is `LibraryUnavailable`.
pub fn driver() -> Result<()> {
    static INIT: OnceLock<std::result::Result<(), Error>> = OnceLock::new();
    INIT.get_or_init(|| {
        // SAFETY: `is_culib_present` only tries to dlopen the driver library by name.
        if !unsafe { sys::is_culib_present() } {
            return Err(Error::new(
                ErrorKind::LibraryUnavailable,
                "the CUDA driver (libcuda.so.1) could not be loaded: no NVIDIA driver on this \
                 machine, or it is not on the loader's path",
            ));
        }
        // SAFETY: cuInit has no pointer arguments; 0 is the only legal flag value.
        check(unsafe { sys::cuInit(0) }, "cuInit")
    })
    .clone()
}

/// A CUDA context and the device it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    raw: sys::CUcontext,
    /// The device ordinal of the context.
    pub device: i32,
}

// SAFETY: a CUcontext is a driver handle usable from any thread (the driver API lets any
// thread make it current); dpcoord never dereferences it.
unsafe impl Send for Context {}

impl Context {
    /// The context that owns `stream` on `comm_device`, checking that they agree.
    ///
    /// For a NULL, legacy or per-thread stream: the current context if it is on
    /// `comm_device`, else that device's primary context (as the CUDA runtime uses). A stream
    /// on another device is an invalid argument naming both devices.
    ///
    /// `known` is a context resolved by an earlier call: when the stream's context is that
    /// one, its device is not queried again.
    pub fn of_stream(
        stream: StreamPtr,
        comm_device: i32,
        known: Option<Context>,
    ) -> Result<Context> {
        let with_device = |raw: sys::CUcontext| -> Result<Context> {
            match known {
                Some(k) if k.raw == raw => Ok(k),
                _ => Ok(Context {
                    raw,
                    device: device_of(raw)?,
                }),
            }
        };
        let mut raw: sys::CUcontext = std::ptr::null_mut();
        if matches!(stream as usize, 0 | STREAM_LEGACY | STREAM_PER_THREAD) {
            // SAFETY: writes the current context (or NULL) into a valid local.
            check(unsafe { sys::cuCtxGetCurrent(&mut raw) }, "cuCtxGetCurrent")?;
            if !raw.is_null() {
                let ctx = with_device(raw)?;
                if ctx.device == comm_device {
                    return Ok(ctx);
                }
            }
            return Context::primary(comm_device);
        }
        check(
            // SAFETY: `stream` is the caller's live stream handle (documented contract of
            // dp_coordinate_batch); the driver writes its context into a valid local.
            unsafe { sys::cuStreamGetCtx(stream.cast(), &mut raw) },
            "cuStreamGetCtx",
        )?;
        let ctx = with_device(raw)?;
        if ctx.device != comm_device {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                "stream is on CUDA device {} but the communicator is on CUDA device {comm_device}",
                ctx.device
            ),
            ));
        }
        Ok(ctx)
    }

    /// The primary context of `device`, retained once per device for the process's life (as
    /// the CUDA runtime does; never released, so handles cached by dpcoord stay valid).
    fn primary(device: i32) -> Result<Context> {
        static RETAINED: Mutex<Vec<Context>> = Mutex::new(Vec::new());
        let mut retained = RETAINED.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(ctx) = retained.iter().find(|c| c.device == device) {
            return Ok(*ctx);
        }
        let mut cu_device = 0;
        check(
            // SAFETY: writes a device handle into a valid local.
            unsafe { sys::cuDeviceGet(&mut cu_device, device) },
            "cuDeviceGet",
        )?;
        let mut raw: sys::CUcontext = std::ptr::null_mut();
        check(
            // SAFETY: writes the retained primary context into a valid local.
            unsafe { sys::cuDevicePrimaryCtxRetain(&mut raw, cu_device) },
            "cuDevicePrimaryCtxRetain",
        )?;
        let ctx = Context { raw, device };
        retained.push(ctx);
        Ok(ctx)
    }

    /// Makes this context current for the life of the guard (a no-op when it already is).
    pub fn enter(&self) -> Result<ContextGuard> {
        let mut current: sys::CUcontext = std::ptr::null_mut();
        check(
            // SAFETY: writes the current context (or NULL) into a valid local.
            unsafe { sys::cuCtxGetCurrent(&mut current) },
            "cuCtxGetCurrent",
        )?;
        if current == self.raw {
            return Ok(ContextGuard { pushed: false });
        }
        check(
            // SAFETY: `self.raw` is a live context (from the stream or a retained primary).
            unsafe { sys::cuCtxPushCurrent_v2(self.raw) },
            "cuCtxPushCurrent",
        )?;
        Ok(ContextGuard { pushed: true })
    }
}

/// The device ordinal of `ctx`.
fn device_of(ctx: sys::CUcontext) -> Result<i32> {
    // SAFETY: `ctx` is a live context; it is pushed, queried and popped again, leaving the
    // thread's context stack as it was.
    unsafe {
        check(sys::cuCtxPushCurrent_v2(ctx), "cuCtxPushCurrent")?;
        let mut device = 0;
        let status = sys::cuCtxGetDevice(&mut device);
        let mut popped: sys::CUcontext = std::ptr::null_mut();
        check(sys::cuCtxPopCurrent_v2(&mut popped), "cuCtxPopCurrent")?;
        check(status, "cuCtxGetDevice")?;
        Ok(device)
    }
}

/// Makes `device`'s primary context current on this thread (as `cudaSetDevice` does), for
/// callers of dpcoord's Rust API that set up their own NCCL communicators (benchmarks).
pub fn bind_device(device: i32) -> Result<Context> {
    driver()?;
    let ctx = Context::primary(device)?;
    // SAFETY: `ctx.raw` is a retained primary context.
    check(unsafe { sys::cuCtxSetCurrent(ctx.raw) }, "cuCtxSetCurrent")?;
    Ok(ctx)
}

/// Blocks until all work on `stream` has finished.
pub fn synchronize(stream: StreamPtr) -> Result<()> {
    // SAFETY: `stream` is a live stream handle or a special handle (the caller's promise).
    check(
        unsafe { sys::cuStreamSynchronize(stream.cast()) },
        "cuStreamSynchronize",
    )
}

/// Copies `out.len()` int32 from device address `src` (synchronously).
pub fn copy_to_host(src: DevicePtr, out: &mut [i32]) -> Result<()> {
    // SAFETY: `out` is a valid writable slice; the caller promises `src` holds as many int32.
    check(
        unsafe { sys::cuMemcpyDtoH_v2(out.as_mut_ptr().cast(), src, out.len() * 4) },
        "cuMemcpyDtoH",
    )
}

/// A non-blocking stream of the current context, destroyed on drop.
pub struct Stream {
    raw: sys::CUstream,
}

impl Stream {
    /// Creates a stream that does not synchronise with the legacy default stream.
    pub fn new() -> Result<Self> {
        let mut raw = std::ptr::null_mut();
        let flags = sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32;
        check(
            // SAFETY: writes the new stream into a valid local.
            unsafe { sys::cuStreamCreate(&mut raw, flags) },
            "cuStreamCreate",
        )?;
        Ok(Self { raw })
    }

    /// The handle, as `dp_coordinate_batch` and NCCL take it.
    pub fn as_ptr(&self) -> StreamPtr {
        self.raw.cast()
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        // SAFETY: destroys the stream this value owns.
        unsafe { sys::cuStreamDestroy_v2(self.raw) };
    }
}

/// Most writes one [`stream_write_u32_batch`] call takes.
pub const MAX_BATCH_WRITES: usize = 8;

/// `cuStreamBatchMemOp`: enqueues up to [`MAX_BATCH_WRITES`] 32-bit writes `(addr, value)` on
/// `stream` as one operation (no kernel). Same address rules as [`stream_write_u32`].
pub fn stream_write_u32_batch(stream: StreamPtr, writes: &[(DevicePtr, u32)]) -> Result<()> {
    if writes.is_empty() || writes.len() > MAX_BATCH_WRITES {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "stream_write_u32_batch takes 1..={MAX_BATCH_WRITES} writes, got {}",
                writes.len()
            ),
        ));
    }
    type WriteParams = sys::CUstreamBatchMemOpParams_union_CUstreamMemOpWriteValueParams_st;
    type WriteValue =
        sys::CUstreamBatchMemOpParams_union_CUstreamMemOpWriteValueParams_st__bindgen_ty_1;
    let op = |addr: DevicePtr, value: u32| sys::CUstreamBatchMemOpParams {
        writeValue: WriteParams {
            operation: sys::CUstreamBatchMemOpType::CU_STREAM_MEM_OP_WRITE_VALUE_32,
            address: addr,
            __bindgen_anon_1: WriteValue { value },
            flags: 0,
            alias: 0,
        },
    };
    let mut params = [op(0, 0); MAX_BATCH_WRITES];
    for (slot, &(addr, value)) in params.iter_mut().zip(writes) {
        *slot = op(addr, value);
    }
    // SAFETY: `params` holds `writes.len()` (1..=8, checked) initialised write operations and
    // outlives the call, which copies them; `stream` is a live stream handle (the caller's
    // promise); the driver validates the addresses.
    check(
        unsafe {
            sys::cuStreamBatchMemOp_v2(stream.cast(), writes.len() as u32, params.as_mut_ptr(), 0)
        },
        "cuStreamBatchMemOp",
    )
}

/// Whether all work on `stream` has finished; a failure of that work is an error.
pub fn stream_idle(stream: StreamPtr) -> Result<bool> {
    // SAFETY: `stream` is a live stream handle or a special handle (the caller's promise).
    match unsafe { sys::cuStreamQuery(stream.cast()) } {
        CUresult::CUDA_ERROR_NOT_READY => Ok(false),
        status => check(status, "cuStreamQuery").map(|()| true),
    }
}

/// Restores the previously current context on drop.
pub struct ContextGuard {
    pushed: bool,
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        if self.pushed {
            let mut popped: sys::CUcontext = std::ptr::null_mut();
            // SAFETY: pops exactly the context this guard pushed, into a valid local.
            unsafe { sys::cuCtxPopCurrent_v2(&mut popped) };
        }
    }
}

/// Refuses a stream that is being captured into a CUDA graph (a blocking call can't be).
pub fn check_not_capturing(stream: StreamPtr) -> Result<()> {
    let mut status = sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE;
    // SAFETY: `stream` is the caller's live stream handle (or a special handle); the driver
    // writes the capture status into a valid local.
    let r = unsafe { sys::cuStreamIsCapturing(stream.cast(), &mut status) };
    if r == CUresult::CUDA_ERROR_STREAM_CAPTURE_IMPLICIT {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "stream is the legacy default stream while another stream is capturing a CUDA \
             graph; dp_coordinate_batch blocks and cannot be captured",
        ));
    }
    check(r, "cuStreamIsCapturing")?;
    if status != sys::CUstreamCaptureStatus::CU_STREAM_CAPTURE_STATUS_NONE {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "stream is capturing a CUDA graph (capture status {status:?}); \
             dp_coordinate_batch blocks on the host and cannot be captured"
            ),
        ));
    }
    Ok(())
}

/// Device memory of `words` int32, freed on drop (the owning context must be current).
pub struct DeviceBuffer {
    ptr: DevicePtr,
}

// SAFETY: device memory is addressed by a plain integer and may be used from any thread.
unsafe impl Send for DeviceBuffer {}

impl DeviceBuffer {
    /// Allocates `words` int32 in the current context.
    pub fn new(words: usize) -> Result<Self> {
        let mut ptr = 0;
        check(
            // SAFETY: writes the new allocation's address into a valid local.
            unsafe { sys::cuMemAlloc_v2(&mut ptr, words * 4) },
            "cuMemAlloc",
        )?;
        Ok(Self { ptr })
    }

    /// The device address.
    pub fn ptr(&self) -> DevicePtr {
        self.ptr
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        // SAFETY: frees the allocation this buffer owns; no work that uses it is in flight
        // (the engine waits for its event before dropping state).
        unsafe { sys::cuMemFree_v2(self.ptr) };
    }
}

/// Pinned host memory of int32 words mapped into the device's address space.
pub struct MappedHost {
    host: *mut i32,
    device: DevicePtr,
    words: usize,
}

// SAFETY: pinned host memory is ordinary process memory; access is serialised by the
// engine's per-communicator lock.
unsafe impl Send for MappedHost {}

impl MappedHost {
    /// Allocates `words` zeroed int32 of mapped pinned memory in the current context.
    pub fn new(words: usize) -> Result<Self> {
        let mut host: *mut c_void = std::ptr::null_mut();
        let flags = sys::CU_MEMHOSTALLOC_DEVICEMAP | sys::CU_MEMHOSTALLOC_PORTABLE;
        check(
            // SAFETY: writes the new allocation's address into a valid local.
            unsafe { sys::cuMemHostAlloc(&mut host, words * 4, flags) },
            "cuMemHostAlloc",
        )?;
        let mut block = Self {
            host: host.cast(),
            device: 0,
            words,
        };
        // SAFETY: `host` is a fresh allocation of `words` int32, exclusively ours.
        unsafe { std::ptr::write_bytes(block.host, 0, words) };
        check(
            // SAFETY: `host` was allocated with DEVICEMAP; the driver writes its device address.
            unsafe { sys::cuMemHostGetDevicePointer_v2(&mut block.device, host, 0) },
            "cuMemHostGetDevicePointer",
        )?;
        Ok(block)
    }

    /// The device address of the block.
    pub fn device_ptr(&self) -> DevicePtr {
        self.device
    }

    /// The host address of word `index`.
    pub fn host_ptr(&self, index: usize) -> *const i32 {
        assert!(
            index <= self.words,
            "word {index} outside a block of {}",
            self.words
        );
        self.host.wrapping_add(index)
    }

    /// Reads word `index` as the device last wrote it (a volatile load).
    pub fn load(&self, index: usize) -> i32 {
        assert!(
            index < self.words,
            "word {index} outside a block of {}",
            self.words
        );
        // SAFETY: in bounds (checked); the memory is live and may be written by the device,
        // hence the volatile read.
        unsafe { std::ptr::read_volatile(self.host.add(index)) }
    }
}

impl Drop for MappedHost {
    fn drop(&mut self) {
        // SAFETY: frees the allocation this block owns; no device work uses it any more.
        unsafe { sys::cuMemFreeHost(self.host.cast()) };
    }
}

/// A timing-free event, destroyed on drop.
pub struct Event {
    raw: sys::CUevent,
}

// SAFETY: an event handle may be recorded and queried from any thread.
unsafe impl Send for Event {}

/// What [`Event::query`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventState {
    /// All work before the record has completed.
    Done,
    /// Work before the record is still running.
    Pending,
}

impl Event {
    /// Creates an event without timing in the current context.
    pub fn new() -> Result<Self> {
        let mut raw = std::ptr::null_mut();
        let flags = sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32;
        check(
            // SAFETY: writes the new event into a valid local.
            unsafe { sys::cuEventCreate(&mut raw, flags) },
            "cuEventCreate",
        )?;
        Ok(Self { raw })
    }

    /// Records the event on `stream`.
    pub fn record(&self, stream: StreamPtr) -> Result<()> {
        // SAFETY: the event is live; `stream` is the caller's live stream handle.
        check(
            unsafe { sys::cuEventRecord(self.raw, stream.cast()) },
            "cuEventRecord",
        )
    }

    /// Whether the work before the last record has finished; a failure of that work is an error.
    pub fn query(&self) -> Result<EventState> {
        // SAFETY: the event is live.
        match unsafe { sys::cuEventQuery(self.raw) } {
            CUresult::CUDA_ERROR_NOT_READY => Ok(EventState::Pending),
            status => check(status, "cuEventQuery").map(|()| EventState::Done),
        }
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        // SAFETY: destroys the event this value owns.
        unsafe { sys::cuEventDestroy_v2(self.raw) };
    }
}

/// A loaded PTX module and one of its kernels.
pub struct Module {
    raw: sys::CUmodule,
}

// SAFETY: module and function handles may be used from any thread of the process.
unsafe impl Send for Module {}

/// A kernel of a [`Module`].
#[derive(Clone, Copy)]
pub struct Kernel {
    raw: sys::CUfunction,
}

// SAFETY: see `Module`.
unsafe impl Send for Kernel {}

impl Module {
    /// JIT-loads NUL-terminated PTX into the current context.
    pub fn load(ptx: &CStr) -> Result<Self> {
        let mut raw = std::ptr::null_mut();
        check(
            // SAFETY: `ptx` is a NUL-terminated image; the driver writes the module handle.
            unsafe { sys::cuModuleLoadData(&mut raw, ptx.as_ptr().cast()) },
            "cuModuleLoadData (the embedded PTX)",
        )?;
        Ok(Self { raw })
    }

    /// The kernel named `name`.
    pub fn kernel(&self, name: &CStr) -> Result<Kernel> {
        let mut raw = std::ptr::null_mut();
        check(
            // SAFETY: the module is live; `name` is NUL-terminated.
            unsafe { sys::cuModuleGetFunction(&mut raw, self.raw, name.as_ptr()) },
            "cuModuleGetFunction",
        )?;
        Ok(Kernel { raw })
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        // SAFETY: unloads the module this value owns; no launch of it is in flight.
        unsafe { sys::cuModuleUnload(self.raw) };
    }
}

/// One kernel parameter, passed by address as `cuLaunchKernel` expects.
pub trait KernelArg {
    /// The address of the value.
    fn as_arg(&self) -> *mut c_void;
}

impl KernelArg for i32 {
    fn as_arg(&self) -> *mut c_void {
        (self as *const i32).cast_mut().cast()
    }
}

impl KernelArg for u32 {
    fn as_arg(&self) -> *mut c_void {
        (self as *const u32).cast_mut().cast()
    }
}

impl KernelArg for u64 {
    fn as_arg(&self) -> *mut c_void {
        (self as *const u64).cast_mut().cast()
    }
}

impl Kernel {
    /// Launches one block of `threads` on `stream` with the given parameters.
    ///
    /// `args` must match the kernel's parameter list in number, order and type.
    pub fn launch(&self, threads: u32, stream: StreamPtr, args: &[*mut c_void]) -> Result<()> {
        // SAFETY: the kernel is live; `args` holds one valid address per kernel parameter
        // (the engine passes exactly the kernel's signature) and outlives the call, which
        // copies the values; `stream` is the caller's live stream handle.
        check(
            unsafe {
                sys::cuLaunchKernel(
                    self.raw,
                    1,
                    1,
                    1,
                    threads,
                    1,
                    1,
                    0,
                    stream.cast(),
                    args.as_ptr().cast_mut(),
                    std::ptr::null_mut(),
                )
            },
            "cuLaunchKernel",
        )
    }
}

// ---- used by the GPU benchmark ----
//
// Wrappers that only `bench/gpu_bench.rs` (`dpcoord-gpu-bench`) calls: device enumeration,
// stream memory operations (the "stream memory op pack" variant), event synchronisation,
// and copies the benchmark uses to check results. The library never calls these.

/// `cuDeviceGetCount`: the number of CUDA devices visible to this process (loads the driver).
pub fn device_count() -> Result<i32> {
    driver()?;
    let mut count = 0;
    check(
        // SAFETY: writes the device count into a valid local.
        unsafe { sys::cuDeviceGetCount(&mut count) },
        "cuDeviceGetCount",
    )?;
    Ok(count)
}

/// `cuDeviceGetName` of device `ordinal`, e.g. "NVIDIA H200".
pub fn device_name(ordinal: i32) -> Result<String> {
    driver()?;
    let mut device = 0;
    check(
        // SAFETY: writes a device handle into a valid local.
        unsafe { sys::cuDeviceGet(&mut device, ordinal) },
        "cuDeviceGet",
    )?;
    let mut name = [0 as std::ffi::c_char; 256];
    check(
        // SAFETY: the driver writes at most `name.len()` bytes, NUL-terminated, into the buffer.
        unsafe { sys::cuDeviceGetName(name.as_mut_ptr(), name.len() as i32, device) },
        "cuDeviceGetName",
    )?;
    let bytes: Vec<u8> = name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// `cuStreamWriteValue32`: enqueues a 32-bit write of `value` to device address `addr` on
/// `stream` (no kernel). `addr` must be 4-byte aligned device memory of the stream's context.
/// A device or driver without stream memory operations answers `CUDA_ERROR_NOT_SUPPORTED`.
pub fn stream_write_u32(stream: StreamPtr, addr: DevicePtr, value: u32) -> Result<()> {
    // SAFETY: `stream` is a live stream handle (the caller's promise); the driver validates
    // `addr` and performs the write on the device, in stream order.
    check(
        unsafe { sys::cuStreamWriteValue32_v2(stream.cast(), addr, value, 0) },
        "cuStreamWriteValue32",
    )
}

/// `cuMemcpyDtoDAsync`: copies `words` int32 from device address `src` to device address
/// `dst` (which may be the device alias of mapped pinned host memory) on `stream`.
pub fn copy_device_async(
    dst: DevicePtr,
    src: DevicePtr,
    words: usize,
    stream: StreamPtr,
) -> Result<()> {
    // SAFETY: `stream` is a live stream handle; the caller promises both addresses hold
    // `words` int32 in the stream's context; the driver validates them.
    check(
        unsafe { sys::cuMemcpyDtoDAsync_v2(dst, src, words * 4, stream.cast()) },
        "cuMemcpyDtoDAsync",
    )
}

/// `cuMemcpy` (unified addressing): copies `out.len()` int32 from address `src`, which may
/// be device memory or pinned / mapped host memory (the driver infers which), synchronously.
pub fn copy_unified_to_host(src: DevicePtr, out: &mut [i32]) -> Result<()> {
    // SAFETY: `out` is a valid writable slice; the caller promises `src` holds as many int32
    // in memory the driver knows (device, pinned or mapped host).
    check(
        unsafe { sys::cuMemcpy(out.as_mut_ptr() as DevicePtr, src, out.len() * 4) },
        "cuMemcpy",
    )
}

impl Event {
    /// `cuEventSynchronize`: blocks until the work before the last record has finished (as
    /// the context's scheduling flags say: spin, yield or block).
    pub fn synchronize(&self) -> Result<()> {
        // SAFETY: the event is live.
        check(
            unsafe { sys::cuEventSynchronize(self.raw) },
            "cuEventSynchronize",
        )
    }
}
