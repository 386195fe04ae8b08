//! NVTX ranges named after the API call, carrying the rank and the step id.
//!
//! Why NVIDIA's C header through `cc` and not the `nvtx` crate: `nvtx-sys` 2.0.0 (what the
//! `nvtx` crate 2.0.0 builds on) runs bindgen in its build script on every build, which
//! needs libclang on the building machine (ours and CI's have none: "Unable to find
//! libclang") and 26 more build crates, for the three functions used here. NVTX v3 itself is
//! header-only: `third_party/nvtx` vendors the headers from NVIDIA's `nvidia-nvtx-cu12`
//! 12.9.79 wheel (Apache-2.0 WITH LLVM-exception, unchanged) and `build.rs` compiles a
//! three-function shim (`nvtx_shim.c`) with `cc`, so the build downloads nothing, needs no
//! CUDA and no libclang.
//!
//! What it costs and loads: NVTX links against nothing (no libnvToolsExt); its first call
//! reads `NVTX_INJECTION64_PATH` and `dlopen`s the tool named there (nsys and ncu set it
//! when they launch the process), and with none every NVTX call is a no-op. dpcoord goes
//! further: it reads that variable once itself and, when it is unset or empty, never calls
//! into NVTX at all, so a range is one relaxed atomic load and a branch, and the library
//! loads and runs the same with no profiler installed. The shim's symbols are not exported
//! (`exports.map` exports `dp_*` only).

use std::ffi::{c_char, c_void, CStr};
use std::fmt::{self, Write as _};
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

/// The C functions of `nvtx_shim.c` (NVTX v3 through NVIDIA's header).
mod c {
    use std::ffi::{c_char, c_void};

    extern "C" {
        /// `nvtxDomainCreateA(name)`: the domain's handle (NVTX returns one handle per name).
        pub(super) fn dpcoord_nvtx_domain_create(name: *const c_char) -> *mut c_void;
        /// `nvtxDomainRangePushEx` with an ASCII message and an ARGB colour, on this thread.
        pub(super) fn dpcoord_nvtx_range_push(
            domain: *mut c_void,
            message: *const c_char,
            argb: u32,
        );
        /// `nvtxDomainRangePop`: closes this thread's innermost range in `domain`.
        pub(super) fn dpcoord_nvtx_range_pop(domain: *mut c_void);
    }
}

/// The NVTX domain of every dpcoord range (nsys: `--nvtx-domain-include=dpcoord`).
const DOMAIN_NAME: &CStr = c"dpcoord";
/// The ranges' colour (ARGB).
const COLOR: u32 = 0xFF1F_77B4;

const OFF: u8 = 0;
const ON: u8 = 1;
const UNREAD: u8 = 2;
/// Whether a profiler is attached through NVTX: `UNREAD` until the first range.
static STATE: AtomicU8 = AtomicU8::new(UNREAD);
/// The `dpcoord` domain's handle, created at the first range with a profiler attached.
static DOMAIN: OnceLock<usize> = OnceLock::new();

/// An open NVTX range; it closes when dropped, on the thread that opened it.
#[must_use = "the range closes when this guard is dropped"]
pub(crate) struct Range {
    /// The domain pushed into, or `None` when no profiler is attached.
    domain: Option<usize>,
    /// NVTX ranges are per thread: the guard must not move to another one.
    _not_send: PhantomData<*const ()>,
}

/// Opens the range `name rank R step S` (`step` left out when `step_id` is 0) in the
/// `dpcoord` domain; a no-op costing a relaxed load and a branch without a profiler.
#[inline]
pub(crate) fn range(name: &'static CStr, rank: i32, step_id: i64) -> Range {
    if STATE.load(Ordering::Relaxed) == OFF {
        return Range {
            domain: None,
            _not_send: PhantomData,
        };
    }
    open(name, rank, step_id)
}

/// Whether NVTX calls are made at all: `NVTX_INJECTION64_PATH` set and not empty.
pub(crate) fn attached() -> bool {
    match STATE.load(Ordering::Relaxed) {
        UNREAD => {
            let on = std::env::var_os("NVTX_INJECTION64_PATH").is_some_and(|p| !p.is_empty());
            STATE.store(if on { ON } else { OFF }, Ordering::Relaxed);
            on
        }
        state => state == ON,
    }
}

#[cold]
#[inline(never)]
fn open(name: &'static CStr, rank: i32, step_id: i64) -> Range {
    if !attached() {
        return Range {
            domain: None,
            _not_send: PhantomData,
        };
    }
    let domain = *DOMAIN.get_or_init(|| {
        // SAFETY: DOMAIN_NAME is a NUL-terminated string that outlives the call; NVTX
        // copies what it keeps. A NULL handle (no tool, or one without domains) is NVTX's
        // default domain, valid in the calls below.
        unsafe { c::dpcoord_nvtx_domain_create(DOMAIN_NAME.as_ptr()) as usize }
    });
    let mut message = Message::new();
    let _ = write!(message, "{} rank {rank}", name.to_string_lossy());
    if step_id != 0 {
        let _ = write!(message, " step {step_id}");
    }
    // SAFETY: `message` is NUL-terminated (Message::as_ptr) and lives across the call (NVTX
    // copies the text); `domain` came from dpcoord_nvtx_domain_create.
    unsafe { c::dpcoord_nvtx_range_push(domain as *mut c_void, message.as_ptr(), COLOR) };
    Range {
        domain: Some(domain),
        _not_send: PhantomData,
    }
}

impl Drop for Range {
    #[inline]
    fn drop(&mut self) {
        if let Some(domain) = self.domain {
            // SAFETY: this thread pushed a range into `domain` (the guard is not Send) and
            // this pops exactly that one.
            unsafe { c::dpcoord_nvtx_range_pop(domain as *mut c_void) };
        }
    }
}

/// A range's message on the stack (no allocation), cut at 127 bytes, NUL-terminated.
struct Message {
    bytes: [u8; 128],
    len: usize,
}

impl Message {
    fn new() -> Self {
        Message {
            bytes: [0; 128],
            len: 0,
        }
    }

    fn as_ptr(&self) -> *const c_char {
        // bytes[len] is 0: write_str never fills the last byte.
        self.bytes.as_ptr().cast()
    }
}

impl fmt::Write for Message {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let room = self.bytes.len() - 1 - self.len;
        let take = s.len().min(room);
        self.bytes[self.len..self.len + take].copy_from_slice(&s.as_bytes()[..take]);
        self.len += take;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_and_terminated() {
        let mut message = Message::new();
        let _ = write!(message, "{}", "x".repeat(300));
        assert_eq!(message.len, 127);
        assert_eq!(message.bytes[127], 0);
        let text = CStr::from_bytes_until_nul(&message.bytes).unwrap();
        assert_eq!(text.to_bytes().len(), 127);
    }

    #[test]
    fn without_a_profiler_no_domain_is_created() {
        if std::env::var_os("NVTX_INJECTION64_PATH").is_none() {
            drop(range(c"dp_coordinator_begin", 0, 1));
            assert!(!attached());
            assert!(DOMAIN.get().is_none());
        }
    }
}
