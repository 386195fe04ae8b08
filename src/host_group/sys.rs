//! The system calls of the host group: futex, shared memory, file locks, process liveness.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use super::os_error;
use crate::error::Result;

/// Sleeps on `word` while it holds `expected`, at most `max`.
pub(super) fn futex_wait(word: &AtomicU32, expected: u32, max: Duration) {
    let ts = libc::timespec {
        tv_sec: max.as_secs() as libc::time_t,
        tv_nsec: max.subsec_nanos() as libc::c_long,
    };
    // SAFETY: FUTEX_WAIT on a 4-byte aligned word of our shared mapping with a relative
    // timeout; the kernel only reads the word and the timespec. Every outcome (woken, EAGAIN,
    // ETIMEDOUT, EINTR) is fine: the caller re-checks its condition.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
            std::ptr::null::<u32>(),
            0u32,
        )
    };
}

pub(super) fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: FUTEX_WAKE on a word of our shared mapping; the kernel reads nothing else.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAKE,
            i32::MAX,
            std::ptr::null::<libc::timespec>(),
            std::ptr::null::<u32>(),
            0u32,
        )
    };
}

/// A pidfd for `pid`, or `None` where the kernel has none (then `kill(pid, 0)` is used).
pub(super) fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a descriptor the kernel just gave us and nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Whether the process behind `pidfd` has exited (exited but not yet reaped counts).
pub(super) fn pidfd_exited(pidfd: &OwnedFd) -> bool {
    let mut p = libc::pollfd {
        fd: pidfd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: polls one valid descriptor without blocking; `p` outlives the call.
    let n = unsafe { libc::poll(&mut p, 1, 0) };
    n > 0 && p.revents != 0
}

/// Whether `pid` (> 0) is a running process: via a pidfd where possible (an unreaped zombie
/// is dead), else `kill(pid, 0)`.
pub(super) fn process_alive(pid: i32) -> bool {
    if let Some(fd) = pidfd_open(pid) {
        return !pidfd_exited(&fd);
    }
    let err = std::io::Error::last_os_error().raw_os_error();
    if err == Some(libc::ESRCH) {
        return false;
    }
    // SAFETY: signal 0 only checks for existence and permission; `pid` > 0 names one process.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

/// Whether a pid read from the segment can name a process of this host.
pub(super) fn pid_plausible(pid: i32) -> bool {
    pid > 0 && pid < (1 << 22) + 1
}

/// The segment's descriptor, locked with `flock` until dropped.
pub(super) struct Locked(RawFd);

impl Locked {
    /// Takes the lock, retrying for up to `patience`.
    pub(super) fn take(fd: &OwnedFd, patience: Duration) -> Option<Locked> {
        let start = Instant::now();
        loop {
            // SAFETY: flock on a descriptor the caller owns; non-blocking.
            if unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Some(Locked(fd.as_raw_fd()));
            }
            if start.elapsed() >= patience {
                return None;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Drop for Locked {
    fn drop(&mut self) {
        // SAFETY: releases the lock `take` took; the descriptor outlives the guard (both
        // are locals of the same scope, the guard declared after it).
        unsafe { libc::flock(self.0, libc::LOCK_UN) };
    }
}

pub(super) fn fstat(fd: RawFd) -> Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes one `struct stat` into `st` on success (checked).
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return Err(os_error("fstat of the group segment"));
    }
    // SAFETY: fstat succeeded, so it initialised `st`.
    Ok(unsafe { st.assume_init() })
}

pub(super) fn shm_open(path: &CString, flags: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: `path` is NUL-terminated; shm_open returns a new descriptor or -1.
    let fd =
        unsafe { libc::shm_open(path.as_ptr(), flags | libc::O_RDWR | libc::O_CLOEXEC, 0o600) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor shm_open just returned, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn shm_unlink(path: &CString) {
    // SAFETY: `path` is NUL-terminated; a failure (already unlinked) is fine.
    unsafe { libc::shm_unlink(path.as_ptr()) };
}

pub(super) fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

pub(super) fn getpid() -> i32 {
    // SAFETY: getpid has no preconditions.
    unsafe { libc::getpid() }
}

/// Sizes the segment open as `fd` to `len` bytes (new bytes read as zero).
pub(super) fn ftruncate(fd: RawFd, len: usize) -> Result<()> {
    // SAFETY: ftruncate of a descriptor the caller owns; the new bytes read as zero.
    if unsafe { libc::ftruncate(fd, len as libc::off_t) } != 0 {
        return Err(os_error("ftruncate of the group segment"));
    }
    Ok(())
}
