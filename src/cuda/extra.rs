//! Bench-only driver wrappers (the `testing` feature): device enumeration, owned streams,
//! synchronisation and copies the benchmark uses to check results. Not in a production build.

use std::ffi::{c_char, c_int, CStr};

use super::{driver, Context, DevicePtr, StreamHandle};
use crate::error::Result;

/// `cuDeviceGetCount` (loads the driver).
pub(crate) fn device_count() -> Result<i32> {
    let d = driver()?;
    let mut count = 0;
    d.check(
        // SAFETY: writes the device count into a valid local.
        unsafe { (d.sym.device_get_count)(&mut count) },
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
        unsafe { (d.sym.device_get)(&mut device, ordinal) },
        "cuDeviceGet",
    )?;
    let mut name = [0 as c_char; 256];
    d.check(
        // SAFETY: the driver writes at most `name.len()` bytes, NUL-terminated.
        unsafe { (d.sym.device_get_name)(name.as_mut_ptr(), name.len() as c_int, device) },
        "cuDeviceGetName",
    )?;
    // SAFETY: NUL-terminated within the buffer (the driver's contract).
    Ok(unsafe { CStr::from_ptr(name.as_ptr()) }
        .to_string_lossy()
        .into_owned())
}

/// The context current on this thread (an error when there is none).
pub(crate) fn current_context() -> Result<Context> {
    let d = driver()?;
    let mut raw = std::ptr::null_mut();
    d.check(
        // SAFETY: writes the current context (or NULL) into a valid local.
        unsafe { (d.sym.ctx_get_current)(&mut raw) },
        "cuCtxGetCurrent",
    )?;
    if raw.is_null() {
        return Err(crate::error::Error::new(
            crate::error::ErrorKind::Cuda,
            "no CUDA context is current on this thread (bind a device first)",
        ));
    }
    Context::resolve(raw)
}

/// Makes `device`'s primary context current on this thread (as `cudaSetDevice` does).
pub(crate) fn bind_device(device: i32) -> Result<()> {
    let d = driver()?;
    let ctx = Context::primary(device)?;
    d.check(
        // SAFETY: `ctx.raw` is a retained primary context.
        unsafe { (d.sym.ctx_set_current)(ctx.raw) },
        "cuCtxSetCurrent",
    )
}

/// Blocks until all work on `stream` has finished.
pub(crate) fn synchronize(stream: StreamHandle) -> Result<()> {
    let d = driver()?;
    d.check(
        // SAFETY: the stream handle's contract.
        unsafe { (d.sym.stream_synchronize)(stream.as_raw()) },
        "cuStreamSynchronize",
    )
}

/// Copies `out.len()` int32 from device address `src` (synchronously).
pub(crate) fn copy_to_host(src: DevicePtr, out: &mut [i32]) -> Result<()> {
    let d = driver()?;
    d.check(
        // SAFETY: `out` is writable; the caller promises `src` holds as many int32.
        unsafe { (d.sym.memcpy_dtoh)(out.as_mut_ptr().cast(), src, out.len() * 4) },
        "cuMemcpyDtoH",
    )
}
