//! A CUDA context: the one that owns a stream on the communicator's device, made current
//! for a scope and checked to be still the one resolved.

use std::sync::{Mutex, PoisonError};

use super::{driver, CuContext, StreamHandle, CUDA_SUCCESS};
use crate::error::{Error, ErrorKind, Result};

/// A CUDA context and the device it belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Context {
    pub(super) raw: CuContext,
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
            d.check(
                // SAFETY: writes the current context (or NULL) into a valid local.
                unsafe { (d.sym.ctx_get_current)(&mut raw) },
                "cuCtxGetCurrent",
            )?;
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
            unsafe { (d.sym.stream_get_ctx)(stream.as_raw(), &mut raw) },
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
            d.check(
                // SAFETY: writes the current context (or NULL) into a valid local.
                unsafe { (d.sym.ctx_get_current)(&mut raw) },
                "cuCtxGetCurrent",
            )?;
            return Ok(raw == self.raw || raw.is_null());
        }
        d.check(
            // SAFETY: as in `of_stream`.
            unsafe { (d.sym.stream_get_ctx)(stream.as_raw(), &mut raw) },
            "cuStreamGetCtx",
        )?;
        Ok(raw == self.raw)
    }

    /// Device and id of a live context.
    pub(super) fn resolve(raw: CuContext) -> Result<Context> {
        let d = driver()?;
        // SAFETY: `raw` is a live context; it is pushed, queried and popped again, leaving
        // the thread's context stack as it was.
        unsafe {
            d.check((d.sym.ctx_push)(raw), "cuCtxPushCurrent")?;
            let mut device = 0;
            let status = (d.sym.ctx_get_device)(&mut device);
            let mut popped: CuContext = std::ptr::null_mut();
            d.check((d.sym.ctx_pop)(&mut popped), "cuCtxPopCurrent")?;
            d.check(status, "cuCtxGetDevice")?;
            let mut id = 0;
            if let Some(get_id) = d.sym.ctx_get_id {
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
                        unsafe { (d.sym.device_get)(&mut cu_device, device) },
                        "cuDeviceGet",
                    )?;
                    let mut raw: CuContext = std::ptr::null_mut();
                    d.check(
                        // SAFETY: writes the retained primary context into a valid local.
                        unsafe { (d.sym.primary_ctx_retain)(&mut raw, cu_device) },
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
            unsafe { (d.sym.ctx_get_current)(&mut current) },
            "cuCtxGetCurrent",
        )?;
        if current == self.raw {
            return Ok(ContextGuard { pushed: false });
        }
        // SAFETY: `self.raw` was a live context; the driver validates it.
        d.check(unsafe { (d.sym.ctx_push)(self.raw) }, "cuCtxPushCurrent")?;
        Ok(ContextGuard { pushed: true })
    }

    /// Makes this context current for the life of the guard, if it is still the one
    /// resolved: entering it works and, where the driver reports context ids, its id is
    /// unchanged (a primary context reset by `cudaDeviceReset` gets a new id, and memory
    /// allocated in the old one is gone). Where an owned resource frees itself, so that
    /// nothing of a destroyed or reset context is freed twice.
    pub(crate) fn enter_if_alive(&self) -> Option<ContextGuard> {
        let d = driver().ok()?;
        let guard = self.enter().ok()?;
        match d.sym.ctx_get_id {
            Some(get_id) if self.id != 0 => {
                let mut id = 0;
                // SAFETY: the context is current and valid (entered above); valid out pointer.
                let rc = unsafe { get_id(self.raw, &mut id) };
                (rc == CUDA_SUCCESS && id == self.id).then_some(guard)
            }
            _ => Some(guard),
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
                unsafe { (d.sym.ctx_pop)(&mut popped) };
            }
        }
    }
}
