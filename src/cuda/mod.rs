//! The CUDA driver API, loaded at run time like NCCL: the process's own `libcuda.so.1` first
//! (`dlopen` with `RTLD_NOLOAD`), else `dlopen("libcuda.so.1")`; never the unversioned
//! `libcuda.so`, which a toolkit's `stubs/` directory on `LD_LIBRARY_PATH` shadows. Every
//! symbol is resolved once, up front, into one [`Symbols`] table. A missing library, a stub
//! driver, no device or a missing symbol is `LibraryUnavailable` naming what was tried; it is
//! not cached, so a process that gains a driver later finds it. Every driver failure becomes a
//! `Cuda` error with the driver's own text.
//!
//! Here: loading, streams; `context` (a context and making it current), `memory` (device and
//! mapped pinned memory), `module` (the kernel), `event`; `extra` (bench-only calls, the
//! `testing` feature).

use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::sync::{Mutex, OnceLock, PoisonError};

use crate::dl::{self, symbol_table, Lookup};
use crate::error::{Error, ErrorKind, Result};

mod context;
mod event;
#[cfg(feature = "testing")]
pub(crate) mod extra;
mod memory;
mod module;
#[cfg(test)]
mod tests;

pub(crate) use context::Context;
pub(crate) use event::{Event, OwnedStream};
pub(crate) use memory::{copy_host_to_device_async, DeviceBuffer, MappedHost};
pub(crate) use module::{Kernel, Module, PostArgs};

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

    /// NULL, legacy or per-thread: a default stream, owned by no context of its own, whose
    /// meaning depends on the thread (per-thread) or on the context current there (NULL,
    /// legacy).
    pub(crate) fn is_special(self) -> bool {
        matches!(self.0 as usize, 0 | STREAM_LEGACY | STREAM_PER_THREAD)
    }
}

symbol_table! {
    /// The driver's entry points dpcoord uses, with their cuda.h signatures (handles are
    /// pointers, enums and `CUresult` are `int`, `size_t` is `usize`, `CUdeviceptr` is
    /// `u64`). The bench-only ones (`testing`) are resolved and demanded in every build, so a
    /// driver is accepted or refused alike.
    pub(crate) struct Symbols {
        required init: unsafe extern "C" fn(c_uint) -> CuResult = c"cuInit";
        required driver_get_version: unsafe extern "C" fn(*mut c_int) -> CuResult = c"cuDriverGetVersion";
        required get_error_name: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult = c"cuGetErrorName";
        required get_error_string: unsafe extern "C" fn(CuResult, *mut *const c_char) -> CuResult = c"cuGetErrorString";
        required ctx_get_current: unsafe extern "C" fn(*mut CuContext) -> CuResult = c"cuCtxGetCurrent";
        #[cfg(feature = "testing")]
        required ctx_set_current: unsafe extern "C" fn(CuContext) -> CuResult = c"cuCtxSetCurrent";
        required ctx_push: unsafe extern "C" fn(CuContext) -> CuResult = c"cuCtxPushCurrent_v2";
        required ctx_pop: unsafe extern "C" fn(*mut CuContext) -> CuResult = c"cuCtxPopCurrent_v2";
        required ctx_get_device: unsafe extern "C" fn(*mut c_int) -> CuResult = c"cuCtxGetDevice";
        required stream_get_ctx: unsafe extern "C" fn(CuStream, *mut CuContext) -> CuResult = c"cuStreamGetCtx";
        required device_get: unsafe extern "C" fn(*mut c_int, c_int) -> CuResult = c"cuDeviceGet";
        #[cfg(feature = "testing")]
        required device_get_count: unsafe extern "C" fn(*mut c_int) -> CuResult = c"cuDeviceGetCount";
        #[cfg(feature = "testing")]
        required device_get_name: unsafe extern "C" fn(*mut c_char, c_int, c_int) -> CuResult = c"cuDeviceGetName";
        required primary_ctx_retain: unsafe extern "C" fn(*mut CuContext, c_int) -> CuResult = c"cuDevicePrimaryCtxRetain";
        #[cfg(feature = "testing")]
        required stream_synchronize: unsafe extern "C" fn(CuStream) -> CuResult = c"cuStreamSynchronize";
        required stream_query: unsafe extern "C" fn(CuStream) -> CuResult = c"cuStreamQuery";
        required stream_is_capturing: unsafe extern "C" fn(CuStream, *mut c_int) -> CuResult = c"cuStreamIsCapturing";
        required stream_create: unsafe extern "C" fn(*mut CuStream, c_uint) -> CuResult = c"cuStreamCreate";
        required stream_destroy: unsafe extern "C" fn(CuStream) -> CuResult = c"cuStreamDestroy_v2";
        required stream_wait_event: unsafe extern "C" fn(CuStream, CuEvent, c_uint) -> CuResult = c"cuStreamWaitEvent";
        required mem_alloc: unsafe extern "C" fn(*mut DevicePtr, usize) -> CuResult = c"cuMemAlloc_v2";
        required mem_free: unsafe extern "C" fn(DevicePtr) -> CuResult = c"cuMemFree_v2";
        required mem_host_alloc: unsafe extern "C" fn(*mut *mut c_void, usize, c_uint) -> CuResult = c"cuMemHostAlloc";
        required mem_free_host: unsafe extern "C" fn(*mut c_void) -> CuResult = c"cuMemFreeHost";
        required mem_host_get_device_pointer: unsafe extern "C" fn(*mut DevicePtr, *mut c_void, c_uint) -> CuResult = c"cuMemHostGetDevicePointer_v2";
        required memset_d32: unsafe extern "C" fn(DevicePtr, c_uint, usize) -> CuResult = c"cuMemsetD32_v2";
        required memcpy_htod_async: unsafe extern "C" fn(DevicePtr, *const c_void, usize, CuStream) -> CuResult = c"cuMemcpyHtoDAsync_v2";
        required memcpy_htod: unsafe extern "C" fn(DevicePtr, *const c_void, usize) -> CuResult = c"cuMemcpyHtoD_v2";
        #[cfg(feature = "testing")]
        required memcpy_dtoh: unsafe extern "C" fn(*mut c_void, DevicePtr, usize) -> CuResult = c"cuMemcpyDtoH_v2";
        required event_create: unsafe extern "C" fn(*mut CuEvent, c_uint) -> CuResult = c"cuEventCreate";
        required event_record: unsafe extern "C" fn(CuEvent, CuStream) -> CuResult = c"cuEventRecord";
        required event_query: unsafe extern "C" fn(CuEvent) -> CuResult = c"cuEventQuery";
        required event_destroy: unsafe extern "C" fn(CuEvent) -> CuResult = c"cuEventDestroy_v2";
        required module_load_data: unsafe extern "C" fn(*mut CuModule, *const c_void) -> CuResult = c"cuModuleLoadData";
        required module_get_function: unsafe extern "C" fn(*mut CuFunction, CuModule, *const c_char) -> CuResult = c"cuModuleGetFunction";
        required module_unload: unsafe extern "C" fn(CuModule) -> CuResult = c"cuModuleUnload";
        required launch_kernel: unsafe extern "C" fn(CuFunction, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, c_uint, CuStream, *mut *mut c_void, *mut *mut c_void) -> CuResult = c"cuLaunchKernel";
        /// `cuCtxGetId` (CUDA 12.0+), to notice a context destroyed and re-made.
        optional ctx_get_id: unsafe extern "C" fn(CuContext, *mut u64) -> CuResult = c"cuCtxGetId";
    }
}

/// The resolved driver and where it was found.
pub(crate) struct Driver {
    sym: Symbols,
    /// Where the library was found.
    origin: String,
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
    // SAFETY: the library is a libcuda.so.1; every symbol of these names has its cuda.h
    // signature, which the table's types match.
    let sym = unsafe { Symbols::resolve(Lookup::Handle(handle)) }.map_err(|missing| {
        unavailable(format!(
            "{origin} lacks the driver function {}; dpcoord needs a CUDA 12+ driver (it loads \
             no other copy)",
            missing.name.to_string_lossy()
        ))
    })?;
    let d = Driver { sym, origin };
    // SAFETY: cuInit has no pointer arguments; 0 is the only legal flag value.
    let rc = unsafe { (d.sym.init)(0) };
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
        let rc = unsafe { (self.sym.driver_get_version)(&mut version) };
        if rc == CUDA_SUCCESS {
            version
        } else {
            0
        }
    }

    /// The file the driver was loaded from (per `dladdr`) and how it was found.
    pub(crate) fn library(&self) -> String {
        match crate::dl::defining_file(self.sym.init as *mut c_void) {
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
            (self.sym.get_error_name)(status, &mut name);
            (self.sym.get_error_string)(status, &mut text);
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

/// Whether all work on `stream` has finished; a failure of that work is an error.
pub(crate) fn stream_idle(stream: StreamHandle) -> Result<bool> {
    let d = driver()?;
    // SAFETY: the handle's contract: a live or special stream.
    match unsafe { (d.sym.stream_query)(stream.as_raw()) } {
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
    let r = unsafe { (d.sym.stream_is_capturing)(stream.as_raw(), &mut status) };
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
