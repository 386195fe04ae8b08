//! The system calls of the host group: futex, shared memory, file locks, process liveness.
//!
//! Through `rustix`, whose calls are safe functions that return `Result<_, Errno>`: no
//! `unsafe` block and no `== -1` check by hand here. The mapping itself (`mmap`, `munmap`)
//! stays with its owner, `segment::Mapping`.

use std::ffi::CStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::AtomicU32;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{FlockOperation, Mode, OFlags, Stat};
use rustix::io::Errno;
use rustix::process::{Pid, PidfdFlags};
use rustix::thread::futex;

use super::os_error;
use crate::error::Result;

/// Sleeps on `word` while it holds `expected`, at most `max`.
pub(super) fn futex_wait(word: &AtomicU32, expected: u32, max: Duration) {
    let timeout = Timespec {
        tv_sec: max.as_secs() as i64,
        tv_nsec: max.subsec_nanos() as i64,
    };
    // A shared (not private) futex: the word is in memory mapped by several processes. Every
    // outcome (woken, EAGAIN, ETIMEDOUT, EINTR) is fine: the caller re-checks its condition.
    let _ = futex::wait(word, futex::Flags::empty(), expected, Some(&timeout));
}

/// Wakes every process sleeping on `word`.
pub(super) fn futex_wake_all(word: &AtomicU32) {
    let _ = futex::wake(word, futex::Flags::empty(), i32::MAX as u32);
}

/// `pid` as rustix's type; `None` for a pid that names no single process (<= 0).
fn pid_of(pid: i32) -> Option<Pid> {
    (pid > 0).then(|| Pid::from_raw(pid)).flatten()
}

/// A pidfd for `pid`: `ESRCH` when no such process exists; another error where the kernel
/// has no pidfds (before 5.3, or a seccomp filter), when `kill(pid, 0)` must do.
pub(super) fn pidfd_open(pid: i32) -> std::result::Result<OwnedFd, Errno> {
    let pid = pid_of(pid).ok_or(Errno::SRCH)?;
    rustix::process::pidfd_open(pid, PidfdFlags::empty())
}

/// Whether the process behind `pidfd` has exited (exited but not yet reaped counts).
pub(super) fn pidfd_exited(pidfd: &OwnedFd) -> bool {
    let mut fds = [PollFd::new(pidfd, PollFlags::IN)];
    let now = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    matches!(rustix::event::poll(&mut fds, Some(&now)), Ok(n) if n > 0)
        && !fds[0].revents().is_empty()
}

/// Whether a process `pid` exists (`kill(pid, 0)`; EPERM: under another user), for where
/// there is no pidfd. An unreaped zombie counts as existing.
pub(super) fn process_exists(pid: i32) -> bool {
    pid_of(pid).is_some_and(|pid| {
        matches!(
            rustix::process::test_kill_process(pid),
            Ok(()) | Err(Errno::PERM)
        )
    })
}

/// Whether a pid read from the segment can name a process of this host.
pub(super) fn pid_plausible(pid: i32) -> bool {
    pid > 0 && pid < (1 << 22) + 1
}

/// The segment's descriptor, locked with `flock` until dropped; the borrow keeps the
/// descriptor open at least as long as the lock.
pub(super) struct Locked<'fd>(BorrowedFd<'fd>);

impl<'fd> Locked<'fd> {
    /// Takes the lock, retrying for up to `patience`.
    pub(super) fn take(fd: &'fd OwnedFd, patience: Duration) -> Option<Locked<'fd>> {
        let start = Instant::now();
        loop {
            if rustix::fs::flock(fd, FlockOperation::NonBlockingLockExclusive).is_ok() {
                return Some(Locked(fd.as_fd()));
            }
            if start.elapsed() >= patience {
                return None;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let _ = rustix::fs::flock(self.0, FlockOperation::Unlock);
    }
}

pub(super) fn fstat(fd: &OwnedFd) -> Result<Stat> {
    rustix::fs::fstat(fd).map_err(|e| os_error("fstat of the group segment", e))
}

/// `shm_open(path, O_RDWR | flags, 0600)` as glibc does it: `open` of the file under
/// `/dev/shm` with `O_NOFOLLOW | O_CLOEXEC` (`rustix::shm::open` would follow a symbolic
/// link: it omits `O_NOFOLLOW`). `path` is the full path, `/dev/shm/dpcoord.<name>`.
/// `O_NONBLOCK | O_NOCTTY` (no effect on a regular file) make opening something else at the
/// path (a FIFO, a device) harmless until the caller's type check refuses it.
pub(super) fn shm_open(path: &CStr, flags: OFlags) -> std::result::Result<OwnedFd, Errno> {
    let flags = flags
        | OFlags::RDWR
        | OFlags::NOFOLLOW
        | OFlags::CLOEXEC
        | OFlags::NONBLOCK
        | OFlags::NOCTTY;
    rustix::fs::open(path, flags, Mode::from_raw_mode(0o600))
}

/// `shm_unlink`: a failure (already unlinked) is fine.
pub(super) fn shm_unlink(path: &CStr) {
    let _ = rustix::fs::unlink(path);
}

pub(super) fn euid() -> u32 {
    rustix::process::geteuid().as_raw()
}

pub(super) fn getpid() -> i32 {
    rustix::process::getpid().as_raw_nonzero().get()
}

/// Sizes the segment open as `fd` to `len` bytes (new bytes read as zero).
pub(super) fn ftruncate(fd: &OwnedFd, len: usize) -> Result<()> {
    rustix::fs::ftruncate(fd, len as u64).map_err(|e| os_error("ftruncate of the group segment", e))
}
