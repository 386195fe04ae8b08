//! The post-processing kernel's module: loaded from PTX, its kernel launched.

use std::ffi::{c_void, CStr};

use super::{driver, Context, CuFunction, CuModule, DevicePtr, StreamHandle};
use crate::error::Result;

/// A loaded PTX module; unloaded on drop, in its context (no launch of it may be in flight
/// then).
pub(crate) struct Module {
    raw: CuModule,
    ctx: Context,
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
    /// JIT-loads NUL-terminated PTX into `ctx`, which is current.
    pub(crate) fn load(ctx: Context, ptx: &CStr) -> Result<Self> {
        let d = driver()?;
        let mut raw = std::ptr::null_mut();
        d.check(
            // SAFETY: `ptx` is a NUL-terminated image; the driver writes the module handle.
            unsafe { (d.sym.module_load_data)(&mut raw, ptx.as_ptr().cast()) },
            "cuModuleLoadData (the embedded PTX)",
        )?;
        Ok(Self { raw, ctx })
    }

    /// The kernel named `name`.
    pub(crate) fn kernel(&self, name: &CStr) -> Result<Kernel> {
        let d = driver()?;
        let mut raw = std::ptr::null_mut();
        d.check(
            // SAFETY: the module is live; `name` is NUL-terminated.
            unsafe { (d.sym.module_get_function)(&mut raw, self.raw, name.as_ptr()) },
            "cuModuleGetFunction",
        )?;
        Ok(Kernel { raw })
    }
}

impl Drop for Module {
    fn drop(&mut self) {
        if let (Ok(d), Some(_current)) = (driver(), self.ctx.enter_if_alive()) {
            // SAFETY: unloads the module this value owns, in its context, which is still the
            // one it was loaded in; no launch of it is in flight (the type's contract).
            unsafe { (d.sym.module_unload)(self.raw) };
        }
    }
}

/// The post-processing kernel's parameters, in its signature's order.
pub(crate) struct PostArgs {
    pub(crate) slots: DevicePtr,
    pub(crate) dp_size: i32,
    pub(crate) dp_rank: i32,
    pub(crate) seq: u32,
    pub(crate) device_out: DevicePtr,
    pub(crate) host: DevicePtr,
    /// The device graph table (0: none).
    pub(crate) table: DevicePtr,
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
        let mut params: [*mut c_void; 7] = [
            (&a.slots as *const DevicePtr).cast_mut().cast(),
            (&a.dp_size as *const i32).cast_mut().cast(),
            (&a.dp_rank as *const i32).cast_mut().cast(),
            (&a.seq as *const u32).cast_mut().cast(),
            (&a.device_out as *const DevicePtr).cast_mut().cast(),
            (&a.host as *const DevicePtr).cast_mut().cast(),
            (&a.table as *const DevicePtr).cast_mut().cast(),
        ];
        d.check(
            // SAFETY: the kernel is live; `params` holds one valid address per kernel
            // parameter, of the parameter's type and in its order (the signature in
            // postprocess.cu), and outlives the call, which copies the values; the stream
            // handle's contract.
            unsafe {
                (d.sym.launch_kernel)(
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
