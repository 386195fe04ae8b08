//! Device memory and mapped pinned host memory of int32 words, and the copy between them.

use std::ffi::c_void;

use super::{
    driver, Context, DevicePtr, StreamHandle, CUDA_SUCCESS, CU_MEMHOSTALLOC_DEVICEMAP,
    CU_MEMHOSTALLOC_PORTABLE,
};
use crate::error::Result;

/// Device memory of `words` int32, zeroed; freed on drop, in its context (no work that uses
/// it may be in flight then: the coordinator's graveyard sees to that).
pub(crate) struct DeviceBuffer {
    ptr: DevicePtr,
    ctx: Context,
}

impl DeviceBuffer {
    /// Allocates `words` int32 in `ctx`, which is current, and zeroes them (synchronously).
    pub(crate) fn new(ctx: Context, words: usize) -> Result<Self> {
        let d = driver()?;
        let mut ptr = 0;
        d.check(
            // SAFETY: writes the new allocation's address into a valid local.
            unsafe { (d.sym.mem_alloc)(&mut ptr, words * 4) },
            "cuMemAlloc",
        )?;
        let buffer = Self { ptr, ctx };
        // SAFETY: `ptr` is a fresh allocation of `words` int32 in the current context.
        let rc = unsafe { (d.sym.memset_d32)(ptr, 0, words) };
        if rc != CUDA_SUCCESS {
            return Err(d.failure("cuMemsetD32", rc));
        }
        Ok(buffer)
    }

    /// Allocates `words.len()` int32 in `ctx`, which is current, and copies `words` there
    /// (synchronously: `cuMemcpyHtoD`, which may wait for work on the device, as the
    /// allocation itself may).
    pub(crate) fn with_words(ctx: Context, words: &[u32]) -> Result<Self> {
        let d = driver()?;
        let mut ptr = 0;
        d.check(
            // SAFETY: writes the new allocation's address into a valid local.
            unsafe { (d.sym.mem_alloc)(&mut ptr, words.len() * 4) },
            "cuMemAlloc",
        )?;
        let buffer = Self { ptr, ctx };
        // SAFETY: `ptr` is a fresh allocation of `words.len()` int32 in the current context;
        // `words` is readable for that many.
        let rc = unsafe { (d.sym.memcpy_htod)(ptr, words.as_ptr().cast(), words.len() * 4) };
        if rc != CUDA_SUCCESS {
            return Err(d.failure("cuMemcpyHtoD", rc));
        }
        Ok(buffer)
    }

    /// The device address.
    pub(crate) fn ptr(&self) -> DevicePtr {
        self.ptr
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        if let (Ok(d), Some(_current)) = (driver(), self.ctx.enter_if_alive()) {
            // SAFETY: frees the allocation this buffer owns, in its context, which is still
            // the one it was made in; nothing uses it any more (the type's contract).
            unsafe { (d.sym.mem_free)(self.ptr) };
        }
    }
}

/// Pinned host memory of int32 words mapped into the device's address space; freed on drop,
/// in its context (no work that uses it may be in flight then).
pub(crate) struct MappedHost {
    host: *mut i32,
    device: DevicePtr,
    words: usize,
    ctx: Context,
}

// SAFETY: pinned host memory is ordinary process memory; access is serialised by the
// coordinator's lock.
unsafe impl Send for MappedHost {}

impl MappedHost {
    /// Allocates `words` zeroed int32 of mapped pinned memory in `ctx`, which is current.
    pub(crate) fn new(ctx: Context, words: usize) -> Result<Self> {
        let d = driver()?;
        let mut host: *mut c_void = std::ptr::null_mut();
        let flags = CU_MEMHOSTALLOC_DEVICEMAP | CU_MEMHOSTALLOC_PORTABLE;
        d.check(
            // SAFETY: writes the new allocation's address into a valid local.
            unsafe { (d.sym.mem_host_alloc)(&mut host, words * 4, flags) },
            "cuMemHostAlloc",
        )?;
        let mut block = Self {
            host: host.cast(),
            device: 0,
            words,
            ctx,
        };
        // SAFETY: `host` is a fresh allocation of `words` int32, exclusively ours.
        unsafe { std::ptr::write_bytes(block.host, 0, words) };
        // SAFETY: `host` was allocated with DEVICEMAP; the driver writes its device address.
        let rc = unsafe { (d.sym.mem_host_get_device_pointer)(&mut block.device, host, 0) };
        if rc != CUDA_SUCCESS {
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
}

impl Drop for MappedHost {
    fn drop(&mut self) {
        if let (Ok(d), Some(_current)) = (driver(), self.ctx.enter_if_alive()) {
            // SAFETY: frees the allocation this block owns, in its context, which is still
            // the one it was made in; nothing uses it any more (the type's contract).
            unsafe { (d.sym.mem_free_host)(self.host.cast()) };
        }
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
        unsafe { (d.sym.memcpy_htod_async)(dst, from.cast(), words * 4, stream.as_raw()) },
        "cuMemcpyHtoDAsync",
    )
}
