//! The CUDA driver API, loaded at run time like NCCL: the process's own `libcuda.so.1` first
//! (`dlopen` with `RTLD_NOLOAD`), else `dlopen("libcuda.so.1")`; never the unversioned
//! `libcuda.so`, which a toolkit's `stubs/` directory on `LD_LIBRARY_PATH` shadows. Every
//! symbol is resolved once, up front. A missing library, a stub driver, no device or a
//! missing symbol is `LibraryUnavailable` naming what was tried; it is not cached, so a
//! process that gains a driver later finds it. Every driver failure becomes a `Cuda` error
//! with the driver's own text.

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::{Mutex, OnceLock, PoisonError};

use crate::dl::{self, Lookup};
use crate::error::{Error, ErrorKind, Result};

/// A driver status (`CUresult`), read as an integer.
type CuResult = c_int;
type CuContext = *mut c_void;
type CuStream = *mut c_void;
type CuEvent = *mut c_void;
type CuModule = *mut c_void;
type CuFunction = *mut c_void;
/// A device address (`CUdeviceptr`).
pub type DevicePtr = u64;

const CUDA_SUCCESS: CuResult = 0;
const CUDA_ERROR_NO_DEVICE: CuResult = 100;
const CUDA_ERROR_STUB_LIBRARY: CuResult = 34;
const CUDA_ERROR_INSUFFICIENT_DRIVER: CuResult = 35;
const CUDA_ERROR_NOT_READY: CuResult = 600;
const CUDA_ERROR_STREAM_CAPTURE_IMPLICIT: CuResult = 906;
const CU_MEMHOSTALLOC_PORTABLE: c_uint = 1;
const CU_MEMHOSTALLOC_DEVICEMAP: c_uint = 2;
const CU_EVENT_DISABLE_TIMING: c_uint = 2;
const CU_STREAM_CAPTURE_STATUS_NONE: c_int = 0;

/// The legacy default stream handle (`cudaStreamLegacy`, `CU_STREAM_LEGACY`).
pub(crate) const STREAM_LEGACY: usize = 0x1;
/// The per-thread default stream handle (`cudaStreamPerThread`, `CU_STREAM_PER_THREAD`).
pub(crate) const STREAM_PER_THREAD: usize = 0x2;

/// The library names tried, in order (see the module docs).
const LIBRARY: &CStr = c"libcuda.so.1";

/// The caller's `cudaStream_t` / `CUstream`: its own type, so a swapped communicator and
/// stream do not compile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamHandle(*mut c_void);

// SAFETY: a stream handle is an opaque driver handle usable from any thread; dpcoord never
// dereferences it.
unsafe impl Send for StreamHandle {}
// SAFETY: as above.
unsafe impl Sync for StreamHandle {}

impl StreamHandle {
    /// The NULL stream (the legacy default stream).
    pub(crate) const DEFAULT: StreamHandle = StreamHandle(std::ptr::null_mut());

    /// Wraps a raw stream handle.
    ///
    /// # Safety
    /// `raw` is NULL, `cudaStreamLegacy`, `cudaStreamPerThread` or a live stream of this
    /// process, and stays live for as long as the handle is used.
    pub unsafe fn from_raw(raw: *mut c_void) -> Self {
        Self(raw)
    }

    /// The raw handle.
    pub fn as_raw(self) -> *mut c_void {
        self.0
    }

    /// NULL, legacy or per-thread: a default stream, owned by no context of its own.
    fn is_special(self) -> bool {
        matches!(self.0 as usize, 0 | STREAM_LEGACY | STREAM_PER_THREAD)
    }
}

/// Declares the driver's function table: every entry point resolved once, up front.
macro_rules! driver_table {
    ($($field:ident = $sym:literal: fn($($arg:ty),*);)*) => {
        /// The resolved driver: one function pointer per entry point dpcoord uses (some only
        /// with the `testing` feature; all resolved, so a driver is accepted or refused alike).
        #[cfg_attr(not(feature = "testing"), allow(dead_code))]
        pub(crate) struct Driver {
            $($field: unsafe extern "C" fn($($arg),*) -> CuResult,)*
            /// `cuCtxGetId` (optional: CUDA 12.0+), to notice a context destroyed and re-made.
            ctx_get_id: Option<unsafe extern "C" fn(CuContext, *mut u64) -> CuResult>,
            /// Where the library was found.
            origin: String,
        }

        impl Driver {
            fn load(handle: *mut c_void, origin: String) -> std::result::Result<Driver, String> {
                $(
                    let p = sym(handle, $sym).ok_or_else(|| {
                        format!("{origin} lacks the driver function {}", $sym.to_string_lossy())
                    })?;
                    // SAFETY: `p` is the address of the driver function of that name, whose
                    // cuda.h signature the field's type matches (handles are pointers, enums
                    // and CUresult are int, size_t is usize, CUdeviceptr is u64).
                    let $field = unsafe {
                        std::mem::transmute::<*mut c_void, unsafe extern "C" fn($($arg),*) -> CuResult>(p)
                    };
                )*
                let ctx_get_id = sym(handle, c"cuCtxGetId").map(|p| {
                    // SAFETY: as above, for cuCtxGetId(CUcontext, unsigned long long*).
                    unsafe {
                        std::mem::transmute::<*mut c_void, unsafe extern "C" fn(CuContext, *mut u64) -> CuResult>(p)
                    }
                });
                Ok(Driver { $($field,)* ctx_get_id, origin })
            }
        }
    };
}

driver_table! {
    init = c"cuInit": fn(c_uint);
    driver_get_version = c"cuDriverGetVersion": fn(*mut c_int);
    get_error_name = c"cuGetErrorName": fn(CuResult, *mut *const c_char);
    get_error_string = c"cuGetErrorString": fn(CuResult, *mut *const c_char);
    ctx_get_current = c"cuCtxGetCurrent": fn(*mut CuContext);
    ctx_set_current = c"cuCtxSetCurrent": fn(CuContext);
    ctx_push = c"cuCtxPushCurrent_v2": fn(CuContext);
    ctx_pop = c"cuCtxPopCurrent_v2": fn(*mut CuContext);
    ctx_get_device = c"cuCtxGetDevice": fn(*mut c_int);
    stream_get_ctx = c"cuStreamGetCtx": fn(CuStream, *mut CuContext);
    device_get = c"cuDeviceGet": fn(*mut c_int, c_int);
    device_get_count = c"cuDeviceGetCount": fn(*mut c_int);
    device_get_name = c"cuDeviceGetName": fn(*mut c_char, c_int, c_int);
    primary_ctx_retain = c"cuDevicePrimaryCtxRetain": fn(*mut CuContext, c_int);
    stream_synchronize = c"cuStreamSynchronize": fn(CuStream);
    stream_query = c"cuStreamQuery": fn(CuStream);
    stream_is_capturing = c"cuStreamIsCapturing": fn(CuStream, *mut c_int);
    stream_create = c"cuStreamCreate": fn(*mut CuStream, c_uint);
    stream_destroy = c"cuStreamDestroy_v2": fn(CuStream);
    mem_alloc = c"cuMemAlloc_v2": fn(*mut DevicePtr, usize);
    mem_free = c"cuMemFree_v2": fn(DevicePtr);
    mem_host_alloc = c"cuMemHostAlloc": fn(*mut *mut c_void, usize, c_uint);
    mem_free_host = c"cuMemFreeHost": fn(*mut c_void);
    mem_host_get_device_pointer = c"cuMemHostGetDevicePointer_v2": fn(*mut DevicePtr, *mut c_void, c_uint);
    memset_d32 = c"cuMemsetD32_v2": fn(DevicePtr, c_uint, usize);
    memcpy_htod_async = c"cuMemcpyHtoDAsync_v2": fn(DevicePtr, *const c_void, usize, CuStream);
    memcpy_dtoh = c"cuMemcpyDtoH_v2": fn(*mut c_void, DevicePtr, usize);
    event_create = c"cuEventCreate": fn(*mut CuEvent, c_uint);
    event_record = c"cuEventRecord": fn(CuEvent, CuStream);
    event_query = c"cuEventQuery": fn(CuEvent);
    event_destroy = c"cuEventDestroy_v2": fn(CuEvent);
    module_load_data = c"cuModuleLoadData": fn(*mut CuModule, *const c_void);
    module_get_function = c"cuModuleGetFunction": fn(*mut CuFunction, CuModule, *const c_char);
    module_unload = c"cuModuleUnload": fn(CuModule);
    launch_kernel = c"cuLaunchKernel": fn(CuFunction, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, CuStream, *mut *mut c_void, *mut *mut c_void);
}

/// `dlsym(handle, name)`, or `None`.
fn sym(handle: *mut c_void, name: &CStr) -> Option<*mut c_void> {
    dl::sym(Lookup::Handle(handle), name).ok()
}

/// `dlopen(LIBRARY, flags)`, or dlerror's text.
fn open(flags: c_int) -> std::result::Result<*mut c_void, String> {
    dl::open(LIBRARY, flags)
}

static DRIVER: OnceLock<Driver> = OnceLock::new();
static RESOLVING: Mutex<()> = Mutex::new(());

/// The driver, loaded and initialised (`cuInit(0)`) on the first successful call.
///
/// After the first success this is one atomic load. A failure is `LibraryUnavailable` (no
/// library, a stub, no device, a missing symbol) or `Cuda`, and is retried on the next call.
pub(crate) fn driver() -> Result<&'static Driver> {
    if let Some(d) = DRIVER.get() {
        return Ok(d);
    }
    let _guard = RESOLVING.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(d) = DRIVER.get() {
        return Ok(d);
    }
    let d = load_driver()?;
    Ok(DRIVER.get_or_init(|| d))
}

fn unavailable(text: String) -> Error {
    Error::new(ErrorKind::LibraryUnavailable, text)
}

fn load_driver() -> Result<Driver> {
    let (handle, origin) = match open(libc::RTLD_NOW | libc::RTLD_NOLOAD) {
        Ok(h) => (
            h,
            "the process's libcuda.so.1 (dlopen RTLD_NOLOAD)".to_string(),
        ),
        Err(first) => match open(libc::RTLD_NOW | libc::RTLD_LOCAL) {
            Ok(h) => (h, "dlopen(libcuda.so.1)".to_string()),
            Err(second) => {
                return Err(unavailable(format!(
                    "the CUDA driver could not be loaded; tried: (1) libcuda.so.1 already in \
                     the process (RTLD_NOLOAD): {first}; (2) dlopen(libcuda.so.1): {second} \
                     (the unversioned libcuda.so, which a toolkit stub shadows, is never \
                     tried): no NVIDIA driver on this machine, or it is not on the loader's path"
                )))
            }
        },
    };
    let d = Driver::load(handle, origin).map_err(|why| {
        unavailable(format!(
            "{why}; dpcoord needs a CUDA 12+ driver (it loads no other copy)"
        ))
    })?;
    // SAFETY: cuInit has no pointer arguments; 0 is the only legal flag value.
    let rc = unsafe { (d.init)(0) };
    match rc {
        CUDA_SUCCESS => Ok(d),
        CUDA_ERROR_STUB_LIBRARY | CUDA_ERROR_NO_DEVICE | CUDA_ERROR_INSUFFICIENT_DRIVER => {
            Err(unavailable(format!(
                "cuInit of {} failed: {} (a toolkit stub instead of the driver, no GPU, or a \
                 driver older than CUDA 12)",
                d.origin,
                d.describe(rc)
            )))
        }
        _ => Err(d.failure("cuInit", rc)),
    }
}

impl Driver {
    /// `cuDriverGetVersion`'s code (13000 = CUDA 13.0), or 0 when it fails (DPCOORD_DEBUG=INFO).
    pub(crate) fn version(&self) -> i32 {
        let mut version: c_int = 0;
        // SAFETY: cuDriverGetVersion writes one int through a valid out pointer.
        let rc = unsafe { (self.driver_get_version)(&mut version) };
        if rc == CUDA_SUCCESS {
            version
        } else {
            0
        }
    }

    /// The file the driver was loaded from (per `dladdr`) and how it was found.
    pub(crate) fn library(&self) -> String {
        match crate::dl::defining_file(self.init as *mut c_void) {
            Some(file) => format!("{file} ({})", self.origin),
            None => self.origin.clone(),
        }
    }

    /// The driver's name and description of a status.
    fn describe(&self, status: CuResult) -> String {
        let (mut name, mut text) = (std::ptr::null(), std::ptr::null());
        // SAFETY: both calls only write a pointer to a static string into valid locals; a
        // NULL result is handled below.
        unsafe {
            (self.get_error_name)(status, &mut name);
            (self.get_error_string)(status, &mut text);
        }
        let read = |p: *const c_char| {
            if p.is_null() {
                format!("CUresult {status}")
            } else {
                // SAFETY: non-NULL pointers from cuGetErrorName/String point at static
                // NUL-terminated strings owned by the driver.
                unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
            }
        };
        format!("{} ({})", read(name), read(text))
    }

    fn failure(&self, call: &str, status: CuResult) -> Error {
        Error::new(
            ErrorKind::Cuda,
            format!("{call} failed: {}", self.describe(status)),
        )
    }

    /// `Ok` or a `Cuda` error naming the call and the driver's text.
    fn check(&self, status: CuResult, call: &str) -> Result<()> {
        if status == CUDA_SUCCESS {
            Ok(())
        } else {
            Err(self.failure(call, status))
        }
    }
}

/// A CUDA context and the device it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Context {
    raw: CuContext,
    /// The device ordinal of the context.
    pub(crate) device: i32,
    /// `cuCtxGetId` when the context was resolved (0: unknown).
    id: u64,
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
    pub(crate) fn of_stream(stream: StreamHandle, comm_device: i32) -> Result<Context> {
        let d = driver()?;
        let mut raw: CuContext = std::ptr::null_mut();
        if stream.is_special() {
            // SAFETY: writes the current context (or NULL) into a valid local.
            d.check(unsafe { (d.ctx_get_current)(&mut raw) }, "cuCtxGetCurrent")?;
            if !raw.is_null() {
                let ctx = Context::resolve(raw)?;
                if ctx.device == comm_device {
                    return Ok(ctx);
                }
            }
            return Context::primary(comm_device);
        }
        d.check(
            // SAFETY: the handle's contract: a live stream; the driver writes its context
            // into a valid local.
            unsafe { (d.stream_get_ctx)(stream.as_raw(), &mut raw) },
            "cuStreamGetCtx",
        )?;
        let ctx = Context::resolve(raw)?;
        if ctx.device != comm_device {
            return Err(Error::new(
                ErrorKind::InvalidArgument,
                format!(
                    "stream is on CUDA device {} but the communicator is on CUDA device \
                     {comm_device}",
                    ctx.device
                ),
            ));
        }
        Ok(ctx)
    }

    /// Whether `stream` still belongs to this context (a cheap check for a cached context).
    pub(crate) fn owns(&self, stream: StreamHandle) -> Result<bool> {
        let d = driver()?;
        let mut raw: CuContext = std::ptr::null_mut();
        if stream.is_special() {
            // SAFETY: writes the current context (or NULL) into a valid local.
            d.check(unsafe { (d.ctx_get_current)(&mut raw) }, "cuCtxGetCurrent")?;
            return Ok(raw == self.raw || raw.is_null());
        }
        d.check(
            // SAFETY: as in `of_stream`.
            unsafe { (d.stream_get_ctx)(stream.as_raw(), &mut raw) },
            "cuStreamGetCtx",
        )?;
        Ok(raw == self.raw)
    }

    /// Device and id of a live context.
    fn resolve(raw: CuContext) -> Result<Context> {
        let d = driver()?;
        // SAFETY: `raw` is a live context; it is pushed, queried and popped again, leaving
        // the thread's context stack as it was.
        unsafe {
            d.check((d.ctx_push)(raw), "cuCtxPushCurrent")?;
            let mut device = 0;
            let status = (d.ctx_get_device)(&mut device);
            let mut popped: CuContext = std::ptr::null_mut();
            d.check((d.ctx_pop)(&mut popped), "cuCtxPopCurrent")?;
            d.check(status, "cuCtxGetDevice")?;
            let mut id = 0;
            if let Some(get_id) = d.ctx_get_id {
                if get_id(raw, &mut id) != CUDA_SUCCESS {
                    id = 0;
                }
            }
            Ok(Context { raw, device, id })
        }
    }

    /// The primary context of `device`, retained once per device for the process's life (as
    /// the CUDA runtime does; never released, so handles cached by dpcoord stay valid).
    pub(crate) fn primary(device: i32) -> Result<Context> {
        // Stored as addresses: a context handle is usable from any thread.
        static RETAINED: Mutex<Vec<(i32, usize)>> = Mutex::new(Vec::new());
        let d = driver()?;
        let raw = {
            let mut retained = RETAINED.lock().unwrap_or_else(PoisonError::into_inner);
            match retained.iter().find(|(dev, _)| *dev == device) {
                Some(&(_, raw)) => raw as CuContext,
                None => {
                    let mut cu_device = 0;
                    d.check(
                        // SAFETY: writes a device handle into a valid local.
                        unsafe { (d.device_get)(&mut cu_device, device) },
                        "cuDeviceGet",
                    )?;
                    let mut raw: CuContext = std::ptr::null_mut();
                    d.check(
                        // SAFETY: writes the retained primary context into a valid local.
                        unsafe { (d.primary_ctx_retain)(&mut raw, cu_device) },
                        "cuDevicePrimaryCtxRetain",
                    )?;
                    retained.push((device, raw as usize));
                    raw
                }
            }
        };
        Context::resolve(raw)
    }

    /// Makes this context current for the life of the guard (a no-op when it already is).
    /// Fails when the context was destroyed (or destroyed and re-made, where the driver
    /// reports context ids).
    pub(crate) fn enter(&self) -> Result<ContextGuard> {
        let d = driver()?;
        let mut current: CuContext = std::ptr::null_mut();
        d.check(
            // SAFETY: writes the current context (or NULL) into a valid local.
            unsafe { (d.ctx_get_current)(&mut current) },
            "cuCtxGetCurrent",
        )?;
        if current == self.raw {
            return Ok(ContextGuard { pushed: false });
        }
        // SAFETY: `self.raw` was a live context; the driver validates it.
        d.check(unsafe { (d.ctx_push)(self.raw) }, "cuCtxPushCurrent")?;
        Ok(ContextGuard { pushed: true })
    }

    /// Whether this context is still the one resolved: entering it works and, where the
    /// driver reports context ids, its id is unchanged (a primary context reset by
    /// `cudaDeviceReset` gets a new id, and memory allocated in the old one is gone).
    pub(crate) fn still_alive(&self) -> bool {
        let Ok(d) = driver() else { return false };
        let Ok(_guard) = self.enter() else {
            return false;
        };
        match d.ctx_get_id {
            Some(get_id) if self.id != 0 => {
                let mut id = 0;
                // SAFETY: the context is current and valid (entered above); valid out pointer.
                let rc = unsafe { get_id(self.raw, &mut id) };
                rc == CUDA_SUCCESS && id == self.id
            }
            _ => true,
        }
    }
}

/// Restores the previously current context on drop.
pub(crate) struct ContextGuard {
    pushed: bool,
}

impl Drop for ContextGuard {
    fn drop(&mut self) {
        if self.pushed {
            if let Ok(d) = driver() {
                let mut popped: CuContext = std::ptr::null_mut();
                // SAFETY: pops exactly the context this guard pushed, into a valid local.
                unsafe { (d.ctx_pop)(&mut popped) };
            }
        }
    }
}

/// Whether all work on `stream` has finished; a failure of that work is an error.
pub(crate) fn stream_idle(stream: StreamHandle) -> Result<bool> {
    let d = driver()?;
    // SAFETY: the handle's contract: a live or special stream.
    match unsafe { (d.stream_query)(stream.as_raw()) } {
        CUDA_ERROR_NOT_READY => Ok(false),
        status => d.check(status, "cuStreamQuery").map(|()| true),
    }
}

/// Refuses a stream that is being captured into a CUDA graph (the host waits for the result,
/// which a capture never produces).
pub(crate) fn check_not_capturing(stream: StreamHandle) -> Result<()> {
    let d = driver()?;
    let mut status = CU_STREAM_CAPTURE_STATUS_NONE;
    // SAFETY: the handle's contract; the driver writes the capture status into a valid local.
    let r = unsafe { (d.stream_is_capturing)(stream.as_raw(), &mut status) };
    if r == CUDA_ERROR_STREAM_CAPTURE_IMPLICIT {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "stream is the legacy default stream while another stream is capturing a CUDA \
             graph; the exchange's result is read on the host and cannot be captured",
        ));
    }
    d.check(r, "cuStreamIsCapturing")?;
    if status != CU_STREAM_CAPTURE_STATUS_NONE {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "stream is capturing a CUDA graph (capture status {status}); the exchange's \
                 result is read on the host and cannot be captured"
            ),
        ));
    }
    Ok(())
}

/// Device memory of `words` int32, zeroed; freed with [`DeviceBuffer::free`] (in its context).
pub(crate) struct DeviceBuffer {
    ptr: DevicePtr,
}

impl DeviceBuffer {
    /// Allocates `words` int32 in the current context and zeroes them (synchronously).
    pub(crate) fn new(words: usize) -> Result<Self> {
        let d = driver()?;
        let mut ptr = 0;
        // SAFETY: writes the new allocation's address into a valid local.
        d.check(unsafe { (d.mem_alloc)(&mut ptr, words * 4) }, "cuMemAlloc")?;
        let buffer = Self { ptr };
        // SAFETY: `ptr` is a fresh allocation of `words` int32 in the current context.
        let rc = unsafe { (d.memset_d32)(ptr, 0, words) };
        if rc != CUDA_SUCCESS {
            buffer.free();
            return Err(d.failure("cuMemsetD32", rc));
        }
        Ok(buffer)
    }

    /// The device address.
    pub(crate) fn ptr(&self) -> DevicePtr {
        self.ptr
    }

    /// Frees the memory. Its context must be current and no work that uses it in flight.
    pub(crate) fn free(self) {
        if let Ok(d) = driver() {
            // SAFETY: frees the allocation this buffer owns (the caller's contract above).
            unsafe { (d.mem_free)(self.ptr) };
        }
    }
}

/// Pinned host memory of int32 words mapped into the device's address space.
pub(crate) struct MappedHost {
    host: *mut i32,
    device: DevicePtr,
    words: usize,
}

// SAFETY: pinned host memory is ordinary process memory; access is serialised by the
// coordinator's lock.
unsafe impl Send for MappedHost {}

impl MappedHost {
    /// Allocates `words` zeroed int32 of mapped pinned memory in the current context.
    pub(crate) fn new(words: usize) -> Result<Self> {
        let d = driver()?;
        let mut host: *mut c_void = std::ptr::null_mut();
        let flags = CU_MEMHOSTALLOC_DEVICEMAP | CU_MEMHOSTALLOC_PORTABLE;
        d.check(
            // SAFETY: writes the new allocation's address into a valid local.
            unsafe { (d.mem_host_alloc)(&mut host, words * 4, flags) },
            "cuMemHostAlloc",
        )?;
        let mut block = Self {
            host: host.cast(),
            device: 0,
            words,
        };
        // SAFETY: `host` is a fresh allocation of `words` int32, exclusively ours.
        unsafe { std::ptr::write_bytes(block.host, 0, words) };
        // SAFETY: `host` was allocated with DEVICEMAP; the driver writes its device address.
        let rc = unsafe { (d.mem_host_get_device_pointer)(&mut block.device, host, 0) };
        if rc != CUDA_SUCCESS {
            block.free();
            return Err(d.failure("cuMemHostGetDevicePointer", rc));
        }
        Ok(block)
    }

    /// The device address of the block.
    pub(crate) fn device_ptr(&self) -> DevicePtr {
        self.device
    }

    /// The host address of word `index` (one past the end allowed).
    pub(crate) fn host_ptr(&self, index: usize) -> *const i32 {
        assert!(
            index <= self.words,
            "word {index} outside a block of {}",
            self.words
        );
        self.host.wrapping_add(index)
    }

    /// Reads word `index` as the device last wrote it (a volatile load).
    pub(crate) fn load(&self, index: usize) -> i32 {
        assert!(
            index < self.words,
            "word {index} outside a block of {}",
            self.words
        );
        // SAFETY: in bounds (checked); the memory is live and may be written by the device,
        // hence the volatile read.
        unsafe { std::ptr::read_volatile(self.host.add(index)) }
    }

    /// Writes `words` at `index` (volatile stores), for the device to read later.
    pub(crate) fn store(&self, index: usize, words: &[i32]) {
        assert!(
            index + words.len() <= self.words,
            "words {index}..{} outside a block of {}",
            index + words.len(),
            self.words
        );
        for (i, &w) in words.iter().enumerate() {
            // SAFETY: in bounds (checked); no device work reads these words now (the
            // coordinator writes its send slot only between exchanges).
            unsafe { std::ptr::write_volatile(self.host.add(index + i), w) };
        }
    }

    /// Frees the memory. No work that uses it may be in flight.
    pub(crate) fn free(self) {
        if let Ok(d) = driver() {
            // SAFETY: frees the allocation this block owns (the caller's contract above).
            unsafe { (d.mem_free_host)(self.host.cast()) };
        }
    }
}

/// A timing-free event; destroyed with [`Event::destroy`].
pub(crate) struct Event {
    raw: CuEvent,
}

// SAFETY: an event handle may be recorded and queried from any thread.
unsafe impl Send for Event {}

impl Event {
    /// Creates an event without timing in the current context.
    pub(crate) fn new() -> Result<Self> {
        let d = driver()?;
        let mut raw = std::ptr::null_mut();
        d.check(
            // SAFETY: writes the new event into a valid local.
            unsafe { (d.event_create)(&mut raw, CU_EVENT_DISABLE_TIMING) },
            "cuEventCreate",
        )?;
        Ok(Self { raw })
    }

    /// Records the event on `stream`.
    pub(crate) fn record(&self, stream: StreamHandle) -> Result<()> {
        let d = driver()?;
        d.check(
            // SAFETY: the event is live; the stream handle's contract.
            unsafe { (d.event_record)(self.raw, stream.as_raw()) },
            "cuEventRecord",
        )
    }

    /// Whether the work before the last record has finished (`Ok(true)`), is pending
    /// (`Ok(false)`), or failed (an error).
    pub(crate) fn done(&self) -> Result<bool> {
        let d = driver()?;
        // SAFETY: the event is live.
        match unsafe { (d.event_query)(self.raw) } {
            CUDA_ERROR_NOT_READY => Ok(false),
            status => d.check(status, "cuEventQuery").map(|()| true),
        }
    }

    /// Destroys the event (its context current).
    pub(crate) fn destroy(self) {
        if let Ok(d) = driver() {
            // SAFETY: destroys the event this value owns.
            unsafe { (d.event_destroy)(self.raw) };
        }
    }
}

/// A loaded PTX module.
pub(crate) struct Module {
    raw: CuModule,
}

// SAFETY: module and function handles may be used from any thread of the process.
unsafe impl Send for Module {}

/// A kernel of a [`Module`].
#[derive(Clone, Copy)]
pub(crate) struct Kernel {
    raw: CuFunction,
}

// SAFETY: see `Module`.
unsafe impl Send for Kernel {}

impl Module {
    /// JIT-loads NUL-terminated PTX into the current context.
    pub(crate) fn load(ptx: &CStr) -> Result<Self> {
        let d = driver()?;
        let mut raw = std::ptr::null_mut();
        d.check(
            // SAFETY: `ptx` is a NUL-terminated image; the driver writes the module handle.
            unsafe { (d.module_load_data)(&mut raw, ptx.as_ptr().cast()) },
            "cuModuleLoadData (the embedded PTX)",
        )?;
        Ok(Self { raw })
    }

    /// The kernel named `name`.
    pub(crate) fn kernel(&self, name: &CStr) -> Result<Kernel> {
        let d = driver()?;
        let mut raw = std::ptr::null_mut();
        d.check(
            // SAFETY: the module is live; `name` is NUL-terminated.
            unsafe { (d.module_get_function)(&mut raw, self.raw, name.as_ptr()) },
            "cuModuleGetFunction",
        )?;
        Ok(Kernel { raw })
    }

    /// Unloads the module (its context current, no launch of it in flight).
    pub(crate) fn unload(self) {
        if let Ok(d) = driver() {
            // SAFETY: unloads the module this value owns.
            unsafe { (d.module_unload)(self.raw) };
        }
    }
}

/// The post-processing kernel's parameters, in its signature's order.
pub(crate) struct PostArgs {
    pub(crate) slots: DevicePtr,
    pub(crate) dp_size: i32,
    pub(crate) dp_rank: i32,
    pub(crate) pad_policy: i32,
    pub(crate) num_ubatches: i32,
    pub(crate) seq: u32,
    pub(crate) device_out: DevicePtr,
    pub(crate) host: DevicePtr,
}

impl Kernel {
    /// Launches `dp_postprocess` (one block of `threads`) on `stream`.
    ///
    /// The kernel must be `dp_postprocess` of the embedded PTX, whose parameters `args`
    /// lists in order; the addresses must hold what its launch contract says.
    pub(crate) fn launch_post(
        &self,
        threads: u32,
        stream: StreamHandle,
        a: &PostArgs,
    ) -> Result<()> {
        let d = driver()?;
        let mut params: [*mut c_void; 8] = [
            (&a.slots as *const DevicePtr).cast_mut().cast(),
            (&a.dp_size as *const i32).cast_mut().cast(),
            (&a.dp_rank as *const i32).cast_mut().cast(),
            (&a.pad_policy as *const i32).cast_mut().cast(),
            (&a.num_ubatches as *const i32).cast_mut().cast(),
            (&a.seq as *const u32).cast_mut().cast(),
            (&a.device_out as *const DevicePtr).cast_mut().cast(),
            (&a.host as *const DevicePtr).cast_mut().cast(),
        ];
        d.check(
            // SAFETY: the kernel is live; `params` holds one valid address per kernel
            // parameter, of the parameter's type and in its order (the signature in
            // postprocess.cu), and outlives the call, which copies the values; the stream
            // handle's contract.
            unsafe {
                (d.launch_kernel)(
                    self.raw,
                    1,
                    1,
                    1,
                    threads,
                    1,
                    1,
                    0,
                    stream.as_raw(),
                    params.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            },
            "cuLaunchKernel",
        )
    }
}

/// `cuMemcpyHtoDAsync` of `words` int32 from mapped pinned `src` (word `index`) to `dst`,
/// on `stream` (the device-buffer send path).
pub(crate) fn copy_host_to_device_async(
    dst: DevicePtr,
    src: &MappedHost,
    index: usize,
    words: usize,
    stream: StreamHandle,
) -> Result<()> {
    let d = driver()?;
    let from = src.host_ptr(index);
    assert!(index + words <= src.words, "copy outside the host block");
    d.check(
        // SAFETY: `from` holds `words` int32 of pinned memory (checked) that stays allocated
        // until the coordinator's work finished; `dst` is device memory of as many words in
        // the current context; the stream handle's contract.
        unsafe { (d.memcpy_htod_async)(dst, from.cast(), words * 4, stream.as_raw()) },
        "cuMemcpyHtoDAsync",
    )
}

/// Bench-only driver wrappers (the `testing` feature): device enumeration, owned streams,
/// synchronisation and copies the benchmark uses to check results. Not in a production build.
#[cfg(feature = "testing")]
pub(crate) mod extra {
    use super::*;

    /// `cuDeviceGetCount` (loads the driver).
    pub(crate) fn device_count() -> Result<i32> {
        let d = driver()?;
        let mut count = 0;
        d.check(
            // SAFETY: writes the device count into a valid local.
            unsafe { (d.device_get_count)(&mut count) },
            "cuDeviceGetCount",
        )?;
        Ok(count)
    }

    /// `cuDeviceGetName` of device `ordinal`.
    pub(crate) fn device_name(ordinal: i32) -> Result<String> {
        let d = driver()?;
        let mut device = 0;
        d.check(
            // SAFETY: writes a device handle into a valid local.
            unsafe { (d.device_get)(&mut device, ordinal) },
            "cuDeviceGet",
        )?;
        let mut name = [0 as c_char; 256];
        d.check(
            // SAFETY: the driver writes at most `name.len()` bytes, NUL-terminated.
            unsafe { (d.device_get_name)(name.as_mut_ptr(), name.len() as c_int, device) },
            "cuDeviceGetName",
        )?;
        // SAFETY: NUL-terminated within the buffer (the driver's contract).
        Ok(unsafe { CStr::from_ptr(name.as_ptr()) }
            .to_string_lossy()
            .into_owned())
    }

    /// Makes `device`'s primary context current on this thread (as `cudaSetDevice` does).
    pub(crate) fn bind_device(device: i32) -> Result<()> {
        let d = driver()?;
        let ctx = Context::primary(device)?;
        // SAFETY: `ctx.raw` is a retained primary context.
        d.check(unsafe { (d.ctx_set_current)(ctx.raw) }, "cuCtxSetCurrent")
    }

    /// Blocks until all work on `stream` has finished.
    pub(crate) fn synchronize(stream: StreamHandle) -> Result<()> {
        let d = driver()?;
        d.check(
            // SAFETY: the stream handle's contract.
            unsafe { (d.stream_synchronize)(stream.as_raw()) },
            "cuStreamSynchronize",
        )
    }

    /// A new non-blocking stream of the current context (destroy with `destroy_stream`).
    pub(crate) fn create_stream() -> Result<StreamHandle> {
        let d = driver()?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: writes the new stream into a valid local (flag 1: CU_STREAM_NON_BLOCKING).
        d.check(unsafe { (d.stream_create)(&mut raw, 1) }, "cuStreamCreate")?;
        Ok(StreamHandle(raw))
    }

    /// Destroys a stream made by `create_stream`.
    pub(crate) fn destroy_stream(stream: StreamHandle) {
        if let Ok(d) = driver() {
            // SAFETY: the stream was made by create_stream and is used no more.
            unsafe { (d.stream_destroy)(stream.as_raw()) };
        }
    }

    /// Copies `out.len()` int32 from device address `src` (synchronously).
    pub(crate) fn copy_to_host(src: DevicePtr, out: &mut [i32]) -> Result<()> {
        let d = driver()?;
        d.check(
            // SAFETY: `out` is writable; the caller promises `src` holds as many int32.
            unsafe { (d.memcpy_dtoh)(out.as_mut_ptr().cast(), src, out.len() * 4) },
            "cuMemcpyDtoH",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_driver_the_error_is_library_unavailable_naming_what_was_tried() {
        match driver() {
            Ok(d) => assert!(!d.origin.is_empty()),
            Err(e) => {
                assert_eq!(e.kind, ErrorKind::LibraryUnavailable, "{e}");
                assert!(e.message.contains("libcuda.so.1"), "{e}");
                // Not cached: a second call tries again and says the same.
                assert_eq!(
                    driver().err().map(|e| e.kind),
                    Some(ErrorKind::LibraryUnavailable)
                );
            }
        }
    }

    #[test]
    fn the_unversioned_stub_name_is_never_loaded() {
        assert_eq!(LIBRARY, c"libcuda.so.1");
    }

    /// Every driver function dpcoord resolves, as a C stub returning `rc` (34 is
    /// CUDA_ERROR_STUB_LIBRARY, what a toolkit's `stubs/libcuda.so` answers).
    fn stub_source(functions: &[&str], rc: i32) -> String {
        functions
            .iter()
            .map(|f| format!("int {f}(void) {{ return {rc}; }}\n"))
            .collect()
    }

    /// Builds `source` as a `libcuda.so.1` in a fresh directory and runs the child test below
    /// in a new process with that directory first on the loader's path; returns the child's
    /// verdict line.
    fn driver_error_with(tag: &str, source: &str) -> String {
        let dir =
            std::env::temp_dir().join(format!("dpcoord-fake-cuda-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c_file = dir.join("fake_cuda.c");
        std::fs::write(&c_file, source).unwrap();
        let built = std::process::Command::new("cc")
            .args(["-shared", "-fPIC", "-o"])
            .arg(dir.join("libcuda.so.1"))
            .arg(&c_file)
            .status()
            .expect("cc (a C compiler) runs");
        assert!(built.success(), "cc failed to build the fake driver");
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--ignored",
                "--exact",
                "cuda::tests::child_reports_the_driver_error",
                "--nocapture",
            ])
            .env("LD_LIBRARY_PATH", &dir)
            .output()
            .unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "the child failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
            .lines()
            .find_map(|l| l.strip_prefix("DRIVER-ERROR: "))
            .unwrap_or_else(|| panic!("no verdict line in {stdout}"))
            .to_owned()
    }

    /// The body the tests above run in a child process: loads the driver and prints the error.
    #[test]
    #[ignore = "the body of the fake-driver tests, run by them in a child process"]
    fn child_reports_the_driver_error() {
        match driver() {
            Ok(_) => println!("DRIVER-ERROR: none"),
            Err(e) => {
                // Twice: a failure is not cached, and stays the same.
                let again = driver().err().map(|e| e.kind);
                println!("DRIVER-ERROR: {:?} again={again:?} {}", e.kind, e.message);
            }
        }
    }

    #[test]
    fn a_stub_driver_is_library_unavailable_not_a_panic() {
        let functions: Vec<String> = [
            "cuInit",
            "cuDriverGetVersion",
            "cuGetErrorName",
            "cuGetErrorString",
            "cuCtxGetCurrent",
            "cuCtxGetDevice",
            "cuCtxGetId",
            "cuCtxPopCurrent_v2",
            "cuCtxPushCurrent_v2",
            "cuCtxSetCurrent",
            "cuDeviceGet",
            "cuDeviceGetCount",
            "cuDeviceGetName",
            "cuDevicePrimaryCtxRetain",
            "cuEventCreate",
            "cuEventDestroy_v2",
            "cuEventQuery",
            "cuEventRecord",
            "cuLaunchKernel",
            "cuMemAlloc_v2",
            "cuMemFreeHost",
            "cuMemFree_v2",
            "cuMemHostAlloc",
            "cuMemHostGetDevicePointer_v2",
            "cuMemcpyDtoH_v2",
            "cuMemcpyHtoDAsync_v2",
            "cuMemsetD32_v2",
            "cuModuleGetFunction",
            "cuModuleLoadData",
            "cuModuleUnload",
            "cuStreamCreate",
            "cuStreamDestroy_v2",
            "cuStreamGetCtx",
            "cuStreamIsCapturing",
            "cuStreamQuery",
            "cuStreamSynchronize",
        ]
        .map(String::from)
        .to_vec();
        let names: Vec<&str> = functions.iter().map(String::as_str).collect();
        let verdict = driver_error_with("stub", &stub_source(&names, CUDA_ERROR_STUB_LIBRARY));
        assert!(
            verdict.starts_with("LibraryUnavailable again=Some(LibraryUnavailable)"),
            "{verdict}"
        );
        assert!(verdict.contains("cuInit"), "{verdict}");
        assert!(verdict.contains("stub"), "{verdict}");
        assert!(verdict.contains("dlopen(libcuda.so.1)"), "{verdict}");
    }

    #[test]
    fn a_driver_missing_a_function_is_library_unavailable_naming_it() {
        let verdict = driver_error_with("partial", &stub_source(&["cuInit"], 0));
        assert!(
            verdict.starts_with("LibraryUnavailable again=Some(LibraryUnavailable)"),
            "{verdict}"
        );
        assert!(
            verdict.contains("lacks the driver function cu"),
            "{verdict}"
        );
    }
}
