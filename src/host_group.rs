//! The host shared-memory group (docs/ARCHITECTURE.md, "Host group"): the ranks
//! of one host agree each step through one POSIX shared-memory segment, with no GPU and no MPI.
//!
//! Segment `/dpcoord.<name>` (mode 0600, owned by the caller's effective uid):
//!
//! | bytes | what |
//! |---|---|
//! | header line 0 | magic, layout version, dp_size, owner uid, slot size, segment size, failure word (written once, then read-only except the failure word) |
//! | header line 1 | futex word (`epoch`) and sleeper count |
//! | member table (8 bytes per rank, whole lines) | each rank's pid and state (empty, joined, closed), written when it joins and leaves |
//! | slot r (two 64-byte lines) | two buffers, by step parity, each: tag (the step number it holds), step id, kind (record or invalid-request marker), pad policy, num_ubatches, the five record words |
//!
//! Step `k` (this group's own count, from 1): a rank fills its buffer of parity `k & 1` and
//! publishes it by storing the tag `k` with release, then waits (acquire loads) until every
//! rank's buffer of that parity holds `k`, and decides on copies of the buffers. Ranks are
//! never more than one step apart, so a buffer cannot be overwritten before every rank has
//! read it, and a step moves one cache line per rank.
//! Waits spin for [`SPIN_NS`], then sleep on the futex in slices of at most [`SLICE_MS`],
//! checking between slices whether a peer exited (pidfd, else `kill(pid, 0)`) or closed.
//!
//! Everything read from the segment is checked (a corrupt or hostile peer gives an error,
//! never a crash, a hang past the timeout or a wrong decision). Two limits are inherent to a
//! segment shared with same-user processes and documented: a peer that shrinks the segment
//! while it is mapped makes the next access fault (SIGBUS), and a peer that rewrites the data
//! of another rank consistently is indistinguishable from that rank.
//!
//! An invalid request (or one the C boundary could not read) is published as a marker, so
//! every rank of that step fails with an invalid-argument error and no rank decides; the
//! exchange itself completed, so the group stays usable, as it does after the inconsistent-
//! ranks errors. A wait that failed (timeout, a peer that exited or closed, a corrupt segment)
//! leaves the group unusable: it writes a failure word that makes every rank fail fast, and
//! every later call fails with the first failure until `close`.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{fence, AtomicI32, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::diag::{self, Ctx, Level};
use crate::error::{invalid, Error, ErrorKind, Result};
use crate::rules::{self, RankRecord, Request};

/// `"dpcoordH"` as a little-endian word: a dpcoord host-group segment.
const MAGIC: u64 = u64::from_le_bytes(*b"dpcoordH");
/// Bumped on any change of the segment layout below.
pub(crate) const LAYOUT_VERSION: u32 = 1;
/// Largest `dp_size` a group accepts.
pub(crate) const MAX_DP_SIZE: i32 = 1024;
/// Longest group name.
pub(crate) const MAX_NAME_LEN: usize = 64;
/// How long a wait spins (then yields) before it sleeps on the futex, on an idle machine.
const SPIN_NS: u64 = 50_000;
/// Of which this long without yielding the core.
const PURE_SPIN_NS: u64 = 5_000;
/// A yield that took this long ran another process: the machine is oversubscribed; waits
/// then yield at once...
const BUSY_YIELD_NS: u64 = 2_000;
/// ...and keep yielding this long before they sleep (only while other processes want the
/// core; on an idle core a wait sleeps after `SPIN_NS`).
const BUSY_SPIN_NS: u64 = 1_000_000;
/// The longest futex sleep between two checks for a dead or closed peer.
const SLICE_MS: u64 = 10;
/// The first futex sleep of a wait (the sleeps double up to `SLICE_MS`).
const FIRST_SLICE_MS: u64 = 1;
/// How long `close` tries to take the segment lock before it leaves the unlink to a later open.
const CLOSE_LOCK_MS: u64 = 200;

/// Slot states.
const STATE_EMPTY: u32 = 0;
const STATE_JOINED: u32 = 1;
const STATE_CLOSED: u32 = 2;

/// Buffer kinds.
const KIND_RECORD: u32 = 1;
const KIND_INVALID: u32 = 2;

/// Failure word codes (bits 48..64; bits 32..48 the reporting rank, 16..32 the rank concerned).
const FAIL_TIMEOUT: u64 = 1;
const FAIL_PEER_EXITED: u64 = 2;
const FAIL_CORRUPT: u64 = 3;

#[repr(C, align(64))]
struct Header {
    magic: AtomicU64,
    layout_version: AtomicU32,
    dp_size: AtomicU32,
    owner_uid: AtomicU32,
    slot_size: AtomicU32,
    segment_size: AtomicU64,
    failure: AtomicU64,
    _reserved: [u64; 3],
    wake: WakeLine,
}

/// The futex word and the count of ranks sleeping on it, on a cache line of their own.
#[repr(C, align(64))]
struct WakeLine {
    epoch: AtomicU32,
    sleepers: AtomicU32,
}

#[repr(C, align(64))]
struct Buf {
    tag: AtomicU64,
    step_id: AtomicI64,
    kind: AtomicU32,
    pad_policy: AtomicI32,
    num_ubatches: AtomicI32,
    words: [AtomicI32; 5],
}

/// One rank's entry in the member table: written when it joins and when it leaves.
#[repr(C)]
struct Member {
    pid: AtomicI32,
    state: AtomicU32,
}

/// One rank's slot: a cache line per buffer, so that a step moves one line per rank.
#[repr(C)]
struct Slot {
    bufs: [Buf; 2],
}

const HEADER_SIZE: usize = std::mem::size_of::<Header>();
const MEMBER_SIZE: usize = std::mem::size_of::<Member>();
const SLOT_SIZE: usize = std::mem::size_of::<Slot>();
const _: () = assert!(HEADER_SIZE == 128 && MEMBER_SIZE == 8 && SLOT_SIZE == 128);

/// Bytes of the member table of `dp_size` ranks, rounded up to 128 so that every slot
/// starts a 128-byte pair of lines (the unit of the adjacent-line prefetcher): a rank's
/// buffers never share a pair with another rank's.
fn members_size(dp_size: usize) -> usize {
    (MEMBER_SIZE * dp_size).div_ceil(128) * 128
}

fn slots_offset(dp_size: usize) -> usize {
    HEADER_SIZE + members_size(dp_size)
}

fn segment_size(dp_size: usize) -> usize {
    slots_offset(dp_size) + SLOT_SIZE * dp_size
}

/// What one step agreed on: the decision and the step id (0 when unchecked). The per-rank
/// array is [`HostGroup::tokens`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Step {
    pub(crate) decision: rules::Decision,
    pub(crate) step_id: i64,
}

/// One open group, this process's rank in it.
pub(crate) struct HostGroup {
    name: String,
    path: CString,
    fd: OwnedFd,
    map: Mapping,
    dp_size: usize,
    dp_rank: usize,
    pid: i32,
    open_timeout_ms: i32,
    /// The peers' pids as they joined, and a pidfd for each where the kernel has them.
    peers: Vec<Peer>,
    /// This rank's last published sequence number.
    seq: u64,
    /// The effective uid, which owns the segment.
    uid: u32,
    /// A recent wait found the cores oversubscribed (see `wait`).
    contended: std::cell::Cell<bool>,
    /// The first failure of a wait; every later call fails with it.
    failed: Option<Error>,
    records: Vec<RankRecord>,
    step_ids: Vec<i64>,
    tokens: Vec<i32>,
    /// Every rank's `(pad_policy, num_ubatches)` of the step being decided.
    policies: Vec<(i32, i32)>,
    /// The lowest rank that published an invalid-request marker this step.
    first_invalid: Option<usize>,
}

struct Peer {
    pid: i32,
    pidfd: Option<OwnedFd>,
}

/// The segment mapped into this process.
struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    /// The dp_size the mapping was checked for (0 for a header-only mapping).
    dp_size: usize,
}

impl Mapping {
    /// Maps `len` bytes: the segment of `dp_size` ranks (`len = segment_size(dp_size)`), or
    /// only the header (`dp_size = 0`).
    fn map(fd: RawFd, len: usize, dp_size: usize) -> Result<Mapping> {
        // SAFETY: a fresh shared mapping of `len` bytes of an open descriptor; the kernel picks
        // the address, and failure is checked.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(os_error("mmap of the group segment"));
        }
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| internal("mmap returned NULL"))?;
        debug_assert!(dp_size == 0 || len == segment_size(dp_size));
        Ok(Mapping { ptr, len, dp_size })
    }

    fn header(&self) -> &Header {
        // SAFETY: every mapping is at least HEADER_SIZE bytes (checked before mapping), page
        // aligned, and `Header` consists of atomics, valid for any bits another process writes.
        unsafe { &*self.ptr.as_ptr().cast::<Header>() }
    }

    /// Rank `r`'s member entry; `r` below the mapping's dp_size.
    fn member(&self, r: usize) -> &Member {
        assert!(r < self.dp_size, "member {r} is outside the mapping");
        // SAFETY: in bounds (asserted; the mapping holds the whole member table), 8-aligned,
        // and `Member` consists of atomics, valid for any bits.
        unsafe {
            &*self
                .ptr
                .as_ptr()
                .add(HEADER_SIZE + MEMBER_SIZE * r)
                .cast::<Member>()
        }
    }

    /// Rank `r`'s slot; `r` below the mapping's dp_size.
    fn slot(&self, r: usize) -> &Slot {
        assert!(r < self.dp_size, "slot {r} is outside the mapping");
        let at = slots_offset(self.dp_size) + SLOT_SIZE * r;
        // SAFETY: in bounds (asserted), 64-aligned (page-aligned base, whole-line header,
        // member table and slots), and `Slot` consists of atomics, valid for any bits.
        unsafe { &*self.ptr.as_ptr().add(at).cast::<Slot>() }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region `map` created; no reference into it outlives
        // `self` (they all borrow it).
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

fn timeout_error(msg: String) -> Error {
    Error::new(ErrorKind::Timeout, msg)
}

fn peer_exited(msg: String) -> Error {
    Error::new(ErrorKind::PeerExited, msg)
}

fn inconsistent(msg: String) -> Error {
    Error::new(ErrorKind::InconsistentRanks, msg)
}

fn internal(msg: &str) -> Error {
    Error::internal(msg)
}

fn corrupt(name: &str, what: String) -> Error {
    Error::internal(format!(
        "host group '{name}': shared segment corrupt: {what} (a peer process wrote it, or it \
         is not a dpcoord segment)"
    ))
}

fn os_error(what: &str) -> Error {
    let e = std::io::Error::last_os_error();
    Error::internal(format!("{what} failed: {e}"))
}

/// Checks a group name: 1-64 of `[A-Za-z0-9._-]`.
pub(crate) fn check_name(name: &[u8]) -> Result<&str> {
    let ok = |c: &u8| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-');
    if name.is_empty() || name.len() > MAX_NAME_LEN || !name.iter().all(ok) {
        let shown = String::from_utf8_lossy(&name[..name.len().min(80)]).into_owned();
        return Err(invalid!(
            "name = {shown:?} ({} bytes) must be 1-{MAX_NAME_LEN} characters of [A-Za-z0-9._-]",
            name.len()
        ));
    }
    // The check above admits ASCII only.
    std::str::from_utf8(name).map_err(|_| internal("an ASCII name is not UTF-8"))
}

/// The deadline `timeout_ms` from now; `None` waits forever.
fn deadline_after(timeout_ms: i32) -> Option<Instant> {
    (timeout_ms > 0).then(|| Instant::now() + Duration::from_millis(timeout_ms as u64))
}

/// When a wait gives up: a fixed instant (open), or `timeout_ms` after the wait began.
#[derive(Clone, Copy)]
enum Deadline {
    At(Option<Instant>),
    AfterMs(i32),
}

impl Deadline {
    fn resolve(self, start: Instant) -> Option<Instant> {
        match self {
            Deadline::At(d) => d,
            Deadline::AfterMs(ms) => (ms > 0).then(|| start + Duration::from_millis(ms as u64)),
        }
    }
}

/// Sleeps on `word` while it holds `expected`, at most `max`.
fn futex_wait(word: &AtomicU32, expected: u32, max: Duration) {
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

fn futex_wake_all(word: &AtomicU32) {
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
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a descriptor the kernel just gave us and nothing else owns.
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Whether the process behind `pidfd` has exited (exited but not yet reaped counts).
fn pidfd_exited(pidfd: &OwnedFd) -> bool {
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
fn process_alive(pid: i32) -> bool {
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
fn pid_plausible(pid: i32) -> bool {
    pid > 0 && pid < (1 << 22) + 1
}

/// Why one attempt to join did not get through.
enum JoinError {
    /// Try again (the segment is busy, being replaced, or held by a previous run).
    Retry(String),
    Fatal(Error),
}

impl From<Error> for JoinError {
    fn from(e: Error) -> Self {
        JoinError::Fatal(e)
    }
}

/// The segment's descriptor, locked with `flock` until dropped.
struct Locked(RawFd);

impl Locked {
    /// Takes the lock, retrying for up to `patience`.
    fn take(fd: &OwnedFd, patience: Duration) -> Option<Locked> {
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

fn fstat(fd: RawFd) -> Result<libc::stat> {
    let mut st = std::mem::MaybeUninit::<libc::stat>::uninit();
    // SAFETY: fstat writes one `struct stat` into `st` on success (checked).
    if unsafe { libc::fstat(fd, st.as_mut_ptr()) } != 0 {
        return Err(os_error("fstat of the group segment"));
    }
    // SAFETY: fstat succeeded, so it initialised `st`.
    Ok(unsafe { st.assume_init() })
}

fn shm_open(path: &CString, flags: i32) -> std::io::Result<OwnedFd> {
    // SAFETY: `path` is NUL-terminated; shm_open returns a new descriptor or -1.
    let fd =
        unsafe { libc::shm_open(path.as_ptr(), flags | libc::O_RDWR | libc::O_CLOEXEC, 0o600) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a descriptor shm_open just returned, owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn shm_unlink(path: &CString) {
    // SAFETY: `path` is NUL-terminated; a failure (already unlinked) is fine.
    unsafe { libc::shm_unlink(path.as_ptr()) };
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// The segment path of a group name.
pub(crate) fn segment_path(name: &str) -> String {
    format!("/dpcoord.{name}")
}

impl HostGroup {
    /// Joins group `name` as `dp_rank` of `dp_size` and waits, up to `timeout_ms` (0: forever),
    /// until every rank joined.
    pub(crate) fn open(
        name: &[u8],
        dp_size: i32,
        dp_rank: i32,
        timeout_ms: i32,
    ) -> Result<HostGroup> {
        let name = check_name(name)?;
        if !(1..=MAX_DP_SIZE).contains(&dp_size) {
            return Err(invalid!("dp_size = {dp_size} must be in 1..={MAX_DP_SIZE}"));
        }
        if dp_rank < 0 || dp_rank >= dp_size {
            return Err(invalid!(
                "dp_rank = {dp_rank} must be in 0..{} (dp_size = {dp_size})",
                dp_size - 1
            ));
        }
        if timeout_ms < 0 {
            return Err(invalid!(
                "timeout_ms = {timeout_ms} must be >= 0 (0 waits forever)"
            ));
        }
        let deadline = deadline_after(timeout_ms);
        let path =
            CString::new(segment_path(name)).map_err(|_| internal("NUL in a checked name"))?;
        let (dp_size, dp_rank) = (dp_size as usize, dp_rank as usize);
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        let (fd, map) = loop {
            match join(name, &path, dp_size, dp_rank, pid) {
                Ok(joined) => break joined,
                Err(JoinError::Fatal(e)) => return Err(e),
                Err(JoinError::Retry(why)) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(timeout_error(format!(
                            "dp_host_group_open('{name}', dp_rank {dp_rank}) gave up after \
                             timeout_ms = {timeout_ms}: {why}"
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
            }
        };
        let mut group = HostGroup {
            name: name.to_owned(),
            path,
            fd,
            map,
            dp_size,
            dp_rank,
            pid,
            open_timeout_ms: timeout_ms,
            peers: Vec::with_capacity(dp_size),
            seq: 0,
            uid: euid(),
            contended: std::cell::Cell::new(false),
            failed: None,
            records: vec![RankRecord::default(); dp_size],
            step_ids: vec![0; dp_size],
            tokens: vec![0; dp_size],
            policies: vec![(0, 0); dp_size],
            first_invalid: None,
        };
        // On failure `group` is dropped, which leaves the group (and unlinks when last).
        group.wait_all_joined(deadline, timeout_ms)?;
        Ok(group)
    }

    pub(crate) fn dp_size(&self) -> usize {
        self.dp_size
    }

    pub(crate) fn dp_rank(&self) -> usize {
        self.dp_rank
    }

    /// The tokens after padding of every rank from the last successful step.
    pub(crate) fn tokens(&self) -> &[i32] {
        &self.tokens
    }

    fn wait_all_joined(&mut self, deadline: Option<Instant>, timeout_ms: i32) -> Result<()> {
        let me = self.dp_rank;
        let mut next = 0;
        let joined = |g: &HostGroup, next: &mut usize| -> Result<bool> {
            g.check_segment()?;
            while *next < g.dp_size {
                let r = *next;
                let member = g.map.member(r);
                match member.state.load(Ordering::Acquire) {
                    STATE_EMPTY => return Ok(false),
                    STATE_JOINED => {}
                    STATE_CLOSED if r != me => {
                        return Err(peer_exited(format!(
                            "host group '{}': rank {r} closed the group before every rank \
                             joined",
                            g.name
                        )))
                    }
                    s => return Err(corrupt(&g.name, format!("member[{r}].state = {s}"))),
                }
                let pid = member.pid.load(Ordering::Relaxed);
                if !pid_plausible(pid) || (r != me && pid == g.pid) || (r == me && pid != g.pid) {
                    return Err(corrupt(&g.name, format!("member[{r}].pid = {pid}")));
                }
                *next += 1;
            }
            Ok(true)
        };
        let r = self.wait(
            Deadline::At(deadline),
            |g| joined(g, &mut next),
            |g| {
                // Only the ranks that joined so far have a pid to check.
                for r in 0..g.dp_size {
                    let member = g.map.member(r);
                    if r != me && member.state.load(Ordering::Acquire) == STATE_JOINED {
                        let pid = member.pid.load(Ordering::Relaxed);
                        if pid_plausible(pid) && !process_alive(pid) {
                            return Err(peer_exited(format!(
                                "host group '{}': rank {r} (pid {pid}) exited before every \
                                 rank joined",
                                g.name
                            )));
                        }
                    }
                }
                Ok(())
            },
            |g| {
                let missing: Vec<usize> = (0..g.dp_size)
                    .filter(|&r| g.map.member(r).state.load(Ordering::Acquire) != STATE_JOINED)
                    .collect();
                timeout_error(format!(
                    "dp_host_group_open('{}', dp_size {}, dp_rank {me}): ranks {missing:?} did \
                     not join within timeout_ms = {timeout_ms}",
                    g.name, g.dp_size
                ))
            },
        );
        // A failed open leaves through `Drop` (state CLOSED), which the other ranks see.
        r?;
        for r in 0..self.dp_size {
            let pid = self.map.member(r).pid.load(Ordering::Relaxed);
            let pidfd = if r == me { None } else { pidfd_open(pid) };
            self.peers.push(Peer { pid, pidfd });
        }
        diag::log!(
            Level::Info,
            self.ctx(0),
            "host group joined: segment /dev/shm{} ({} bytes), peers watched by {}, dpcoord {}",
            self.path.to_string_lossy(),
            self.map.len,
            if self
                .peers
                .iter()
                .all(|p| p.pidfd.is_some() || p.pid == self.pid)
            {
                "pidfd"
            } else {
                "kill(pid, 0)"
            },
            env!("CARGO_PKG_VERSION")
        );
        Ok(())
    }

    /// Re-checks the header fields fixed at creation and the failure word.
    fn check_segment(&self) -> Result<()> {
        let h = self.map.header();
        let name = &self.name;
        let magic = h.magic.load(Ordering::Relaxed);
        if magic != MAGIC {
            return Err(corrupt(name, format!("header.magic = {magic:#018x}")));
        }
        let checks = [
            (
                "layout_version",
                h.layout_version.load(Ordering::Relaxed) as u64,
                LAYOUT_VERSION as u64,
            ),
            (
                "dp_size",
                h.dp_size.load(Ordering::Relaxed) as u64,
                self.dp_size as u64,
            ),
            (
                "owner_uid",
                h.owner_uid.load(Ordering::Relaxed) as u64,
                self.uid as u64,
            ),
            (
                "slot_size",
                h.slot_size.load(Ordering::Relaxed) as u64,
                SLOT_SIZE as u64,
            ),
            (
                "segment_size",
                h.segment_size.load(Ordering::Relaxed),
                self.map.len as u64,
            ),
        ];
        for (field, got, want) in checks {
            if got != want {
                return Err(corrupt(
                    name,
                    format!("header.{field} = {got}, want {want}"),
                ));
            }
        }
        let failure = h.failure.load(Ordering::Acquire);
        if failure != 0 {
            return Err(self.failure_error(failure));
        }
        Ok(())
    }

    /// The error a rank reports when it finds a peer's failure word.
    fn failure_error(&self, word: u64) -> Error {
        let code = word >> 48;
        let reporter = ((word >> 32) & 0xffff) as usize;
        let concerned = ((word >> 16) & 0xffff) as usize;
        let name = &self.name;
        if reporter >= self.dp_size || concerned >= self.dp_size || word & 0xffff != 0 {
            return corrupt(name, format!("header.failure = {word:#018x}"));
        }
        let what = format!("host group '{name}' failed: rank {reporter}");
        match code {
            FAIL_TIMEOUT => timeout_error(format!("{what} timed out waiting for rank {concerned}")),
            FAIL_PEER_EXITED => peer_exited(format!(
                "{what} saw rank {concerned} exit or close the group"
            )),
            FAIL_CORRUPT => internal(&format!(
                "{what} found the segment corrupt (the header or the slot of rank {concerned})"
            )),
            _ => corrupt(name, format!("header.failure = {word:#018x}")),
        }
    }

    /// What the diagnostics log says about this rank at step id `step_id`.
    fn ctx(&self, step_id: i64) -> Ctx<'_> {
        Ctx::new()
            .rank(self.dp_rank as i32, self.dp_size as i32)
            .group(&self.name)
            .step(step_id)
    }

    /// Marks this rank's copy unusable and tells the other ranks (first failure wins).
    fn fail(&mut self, e: &Error, code: u64, concerned: usize) {
        // INFO, not WARN: the C boundary logs the failure itself once at WARN (with exactly
        // dp_last_error's text); this line adds the group, the rank and what follows.
        diag::log!(Level::Info, self.ctx(0), "group unusable from here on: {e}");
        if self.failed.is_none() {
            self.failed = Some(e.clone());
        }
        let word =
            (code << 48) | ((self.dp_rank as u64) << 32) | ((concerned as u64 & 0xffff) << 16);
        let h = self.map.header();
        let _ = h
            .failure
            .compare_exchange(0, word, Ordering::AcqRel, Ordering::Acquire);
        self.wake();
    }

    fn wake(&self) {
        let h = self.map.header();
        fence(Ordering::SeqCst);
        if h.wake.sleepers.load(Ordering::Relaxed) != 0 {
            h.wake.epoch.fetch_add(1, Ordering::SeqCst);
            futex_wake_all(&h.wake.epoch);
        }
    }

    /// Waits until `ready` says so: spins, then yields, then (after waking the ranks that
    /// sleep on this rank's publication) sleeps on the futex in slices, calling `between`
    /// after each slice; past the deadline, fails with `timed_out`. The clock is first read
    /// after 64 polls, so a wait that ends at once costs no clock read.
    fn wait(
        &self,
        deadline: Deadline,
        mut ready: impl FnMut(&Self) -> Result<bool>,
        mut between: impl FnMut(&Self) -> Result<()>,
        timed_out: impl FnOnce(&Self) -> Error,
    ) -> Result<()> {
        let mut polls = 0u32;
        let mut start = None;
        let mut budget = Duration::from_nanos(SPIN_NS);
        loop {
            if ready(self)? {
                return Ok(());
            }
            polls = polls.wrapping_add(1);
            let contended = self.contended.get();
            if polls % 64 == 0 || contended {
                let t = start.get_or_insert_with(Instant::now).elapsed();
                if t >= budget {
                    break;
                }
                if contended || t >= Duration::from_nanos(PURE_SPIN_NS) {
                    let before = Instant::now();
                    std::thread::yield_now();
                    // A yield that ran another process: the cores are oversubscribed, and
                    // yielding at once gives them to the ranks this one waits for (this wait
                    // and the next ones, until a yield finds the core idle again).
                    let busy = before.elapsed() >= Duration::from_nanos(BUSY_YIELD_NS);
                    self.contended.set(busy);
                    if busy {
                        budget = Duration::from_nanos(BUSY_SPIN_NS);
                    }
                }
            }
            std::hint::spin_loop();
        }
        let deadline = deadline.resolve(start.unwrap_or_else(Instant::now));
        self.wake();
        let h = self.map.header();
        let mut slice = Duration::from_millis(FIRST_SLICE_MS);
        loop {
            let epoch = h.wake.epoch.load(Ordering::SeqCst);
            h.wake.sleepers.fetch_add(1, Ordering::SeqCst);
            fence(Ordering::SeqCst);
            let now_ready = ready(self);
            if !matches!(now_ready, Ok(false)) {
                h.wake.sleepers.fetch_sub(1, Ordering::SeqCst);
                return now_ready.map(|_| ());
            }
            let mut this_slice = slice;
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    h.wake.sleepers.fetch_sub(1, Ordering::SeqCst);
                    return Err(timed_out(self));
                }
                this_slice = this_slice.min(left);
            }
            futex_wait(&h.wake.epoch, epoch, this_slice);
            h.wake.sleepers.fetch_sub(1, Ordering::SeqCst);
            slice = (slice * 2).min(Duration::from_millis(SLICE_MS));
            if ready(self)? {
                return Ok(());
            }
            between(self)?;
        }
    }

    /// One step: publishes this rank's record (or, for an invalid request, a marker), waits
    /// for every rank's, and decides. `req` is `Err` when the C boundary could not read it.
    pub(crate) fn coordinate(&mut self, req: Result<&Request>) -> Result<Step> {
        if let Some(e) = &self.failed {
            return Err(e.context(&format!(
                "host group '{}' is unusable after an earlier failure; close it",
                self.name
            )));
        }
        if let Err(e) = self.check_segment() {
            self.fail(&e, FAIL_CORRUPT, self.dp_rank);
            return Err(e);
        }
        let local = req.and_then(|r| {
            let record = rules::make_record(r)?;
            Ok((record, r))
        });
        let timeout_ms = match &local {
            Ok((_, r)) => r.timeout_ms,
            Err(_) => self.open_timeout_ms,
        };
        let step_id = local.as_ref().map_or(0, |(_, r)| r.step_id);
        let k = self.seq + 1;
        self.publish(k, &local, step_id);
        self.seq = k;
        if let Err((e, code, concerned)) = self.wait_step(k, timeout_ms) {
            self.fail(&e, code, concerned);
            return Err(e);
        }
        if let Err((e, concerned)) = self.gather(k) {
            self.fail(&e, FAIL_CORRUPT, concerned);
            return Err(e);
        }
        local?;
        let step = self.decide(k)?;
        diag::decision(
            &self.ctx(step.step_id),
            "dp_host_group_coordinate",
            &step.decision,
        );
        Ok(step)
    }

    fn publish(&self, k: u64, local: &Result<(RankRecord, &Request)>, step_id: i64) {
        let slot = self.map.slot(self.dp_rank);
        let b = &slot.bufs[(k & 1) as usize];
        let (kind, words, policy, n) = match local {
            Ok((rec, r)) => (
                KIND_RECORD,
                rec.to_words(),
                r.pad_policy,
                r.effective_num_ubatches(),
            ),
            Err(_) => (KIND_INVALID, [0; 5], 0, 0),
        };
        b.kind.store(kind, Ordering::Relaxed);
        b.step_id.store(step_id, Ordering::Relaxed);
        b.pad_policy.store(policy, Ordering::Relaxed);
        b.num_ubatches.store(n, Ordering::Relaxed);
        for (w, v) in b.words.iter().zip(words) {
            w.store(v, Ordering::Relaxed);
        }
        // The tag last, with release: a reader that sees it sees the buffer. The ranks
        // sleeping on it are woken by `wake` once this rank's wait ends or before it sleeps,
        // off the path of the store.
        b.tag.store(k, Ordering::Release);
    }

    /// Waits until every rank's buffer of parity `k & 1` holds step `k` (a rank already a
    /// step on has it there too: it cannot pass step `k + 1` before this rank publishes it).
    fn wait_step(&self, k: u64, timeout_ms: i32) -> std::result::Result<(), (Error, u64, usize)> {
        let me = self.dp_rank;
        let next = std::cell::Cell::new(0usize);
        let bad = std::cell::Cell::new(None::<(u64, usize)>);
        let name = &self.name;
        let parity = (k & 1) as usize;
        // What the buffer holds before rank r publishes step k: step k - 2, or nothing yet.
        let before = k.saturating_sub(2);
        let r = self.wait(
            Deadline::AfterMs(timeout_ms),
            |g| {
                let failure = g.map.header().failure.load(Ordering::Acquire);
                if failure != 0 {
                    return Err(g.failure_error(failure));
                }
                while next.get() < g.dp_size {
                    let r = next.get();
                    let tag = g.map.slot(r).bufs[parity].tag.load(Ordering::Acquire);
                    if tag == k {
                        next.set(r + 1);
                        continue;
                    }
                    if tag != before {
                        bad.set(Some((FAIL_CORRUPT, r)));
                        return Err(corrupt(
                            name,
                            format!(
                                "slot[{r}].bufs[{parity}].tag = {tag} at step {k} (want {before} \
                                 or {k})"
                            ),
                        ));
                    }
                    if g.map.member(r).state.load(Ordering::Acquire) != STATE_JOINED {
                        bad.set(Some((FAIL_PEER_EXITED, r)));
                        return Err(peer_exited(format!(
                            "host group '{name}': rank {r} closed the group (rank {me} waits \
                             at step {k})"
                        )));
                    }
                    return Ok(false);
                }
                Ok(true)
            },
            |g| {
                // Every rank not yet arrived, not only the first: a dead rank behind a slow
                // one is reported within one slice too.
                for r in next.get()..g.dp_size {
                    if r == me || g.map.slot(r).bufs[parity].tag.load(Ordering::Acquire) == k {
                        continue;
                    }
                    let peer = &g.peers[r];
                    let member = g.map.member(r);
                    let pid = member.pid.load(Ordering::Relaxed);
                    if pid != peer.pid {
                        bad.set(Some((FAIL_CORRUPT, r)));
                        return Err(corrupt(
                            name,
                            format!(
                                "member[{r}].pid = {pid}, but rank {r} joined as pid {}",
                                peer.pid
                            ),
                        ));
                    }
                    let dead = match &peer.pidfd {
                        Some(fd) => pidfd_exited(fd),
                        None => !process_alive(peer.pid),
                    };
                    let closed = member.state.load(Ordering::Acquire) != STATE_JOINED;
                    if dead || closed {
                        bad.set(Some((FAIL_PEER_EXITED, r)));
                        let what = if dead { "exited" } else { "closed the group" };
                        return Err(peer_exited(format!(
                            "host group '{name}': rank {r} (pid {pid}) {what} (rank {me} waits \
                             at step {k})"
                        )));
                    }
                }
                Ok(())
            },
            |g| {
                let r = next.get().min(g.dp_size - 1);
                let bufs = &g.map.slot(r).bufs;
                let s = bufs[0]
                    .tag
                    .load(Ordering::Relaxed)
                    .max(bufs[1].tag.load(Ordering::Relaxed));
                timeout_error(format!(
                    "host group '{name}': rank {me} waited timeout_ms = {timeout_ms} at step {k} \
                     for rank {r} (pid {}), which is still at step {s}",
                    g.peers[r].pid
                ))
            },
        );
        // Wakes the ranks sleeping on this rank's publication (or a failure's).
        self.wake();
        r.map_err(|e| {
            let (code, concerned) = bad.get().unwrap_or(match e.kind {
                ErrorKind::Timeout => (FAIL_TIMEOUT, next.get().min(self.dp_size - 1)),
                // A peer's failure word: this rank leaves it as it is.
                _ => (0, me),
            });
            (e, code, concerned)
        })
    }

    /// Copies every rank's buffer of step `k` into the local arrays, checking tag and kind.
    /// On corrupt data, the error and the rank whose slot holds it.
    fn gather(&mut self, k: u64) -> std::result::Result<(), (Error, usize)> {
        let parity = (k & 1) as usize;
        self.first_invalid = None;
        for r in 0..self.dp_size {
            let pid = self.map.member(r).pid.load(Ordering::Relaxed);
            let b = &self.map.slot(r).bufs[parity];
            let tag = b.tag.load(Ordering::Relaxed);
            let kind = b.kind.load(Ordering::Relaxed);
            let bad = if pid != self.peers[r].pid {
                Some(format!(
                    "member[{r}].pid = {pid}, but rank {r} joined as pid {}",
                    self.peers[r].pid
                ))
            } else if tag != k {
                Some(format!("slot[{r}].bufs[{parity}].tag = {tag} at step {k}"))
            } else if kind != KIND_RECORD && kind != KIND_INVALID {
                Some(format!("slot[{r}].bufs[{parity}].kind = {kind}"))
            } else {
                None
            };
            if let Some(what) = bad {
                return Err((corrupt(&self.name, what), r));
            }
            if kind == KIND_INVALID && self.first_invalid.is_none() {
                self.first_invalid = Some(r);
            }
            let words: [i32; 5] = std::array::from_fn(|i| b.words[i].load(Ordering::Relaxed));
            self.records[r] = RankRecord::from_words(words);
            self.step_ids[r] = b.step_id.load(Ordering::Relaxed);
            self.policies[r] = (
                b.pad_policy.load(Ordering::Relaxed),
                b.num_ubatches.load(Ordering::Relaxed),
            );
        }
        Ok(())
    }

    /// The decision of step `k` from the gathered copies; every rank reaches the same verdict.
    fn decide(&mut self, k: u64) -> Result<Step> {
        if let Some(r) = self.first_invalid {
            return Err(invalid!(
                "host group '{}': rank {r} passed an invalid request at step {k} (its \
                 dp_last_error says why); no rank decides this step",
                self.name
            ));
        }
        let (policy, n) = self.policies[0];
        for (r, &(p, m)) in self.policies.iter().enumerate() {
            if p != policy {
                return Err(inconsistent(format!(
                    "pad_policy differs across ranks: rank 0 passed {policy}, rank {r} passed {p}"
                )));
            }
            if m != n {
                return Err(inconsistent(format!(
                    "num_ubatches differs across ranks: rank 0 uses {n}, rank {r} uses {m}"
                )));
            }
        }
        let step_id = rules::check_step_ids(&self.step_ids, None)?;
        let decision = rules::decide(
            &self.records,
            self.dp_rank as i32,
            policy,
            n,
            Some(&mut self.tokens),
        )?;
        Ok(Step { decision, step_id })
    }

    /// Whether another rank still holds the group: joined, not closed, and its process alive.
    fn others_live(&self) -> bool {
        (0..self.dp_size).any(|r| {
            let member = self.map.member(r);
            let pid = member.pid.load(Ordering::Relaxed);
            r != self.dp_rank
                && member.state.load(Ordering::Acquire) == STATE_JOINED
                && pid_plausible(pid)
                && pid != self.pid
                && process_alive(pid)
        })
    }
}

/// Leaves the group: marks this rank closed, wakes the others, and unlinks the segment when
/// no other rank holds it any more (under the segment lock, and only if the name still refers
/// to this segment).
impl Drop for HostGroup {
    fn drop(&mut self) {
        let member = self.map.member(self.dp_rank);
        member.state.store(STATE_CLOSED, Ordering::Release);
        self.wake();
        let Some(_lock) = Locked::take(&self.fd, Duration::from_millis(CLOSE_LOCK_MS)) else {
            return; // a later open reclaims the segment once every process is gone
        };
        if same_segment(&self.path, &self.fd).unwrap_or(false) && !self.others_live() {
            shm_unlink(&self.path);
        }
    }
}

/// Whether `path` still names the segment open as `fd`.
fn same_segment(path: &CString, fd: &OwnedFd) -> Result<bool> {
    let Ok(named) = shm_open(path, 0) else {
        return Ok(false);
    };
    let (a, b) = (fstat(fd.as_raw_fd())?, fstat(named.as_raw_fd())?);
    Ok(a.st_dev == b.st_dev && a.st_ino == b.st_ino)
}

/// One attempt to join: open or create the segment, lock it, check it, reclaim it when stale,
/// take this rank's slot.
fn join(
    name: &str,
    path: &CString,
    dp_size: usize,
    dp_rank: usize,
    pid: i32,
) -> std::result::Result<(OwnedFd, Mapping), JoinError> {
    let shown = format!("/dev/shm{}", path.to_string_lossy());
    let fd = shm_open(path, libc::O_CREAT).map_err(|e| {
        let why = if e.raw_os_error() == Some(libc::EACCES) {
            " (it belongs to another user)"
        } else {
            ""
        };
        JoinError::Fatal(invalid!(
            "host group '{name}': cannot open segment {shown}: {e}{why}"
        ))
    })?;
    let Some(_lock) = Locked::take(&fd, Duration::ZERO) else {
        return Err(JoinError::Retry(format!(
            "{shown} is locked by another process"
        )));
    };
    if !same_segment(path, &fd)? {
        return Err(JoinError::Retry(format!(
            "{shown} was replaced while opening"
        )));
    }
    let st = fstat(fd.as_raw_fd())?;
    let uid = euid();
    if st.st_uid != uid {
        return Err(JoinError::Fatal(invalid!(
            "host group '{name}': segment {shown} is owned by uid {}, this process runs as uid \
             {uid}; refusing it",
            st.st_uid
        )));
    }
    if st.st_mode & 0o777 != 0o600 {
        return Err(JoinError::Fatal(invalid!(
            "host group '{name}': segment {shown} has mode {:o}, not 0600; refusing it",
            st.st_mode & 0o777
        )));
    }
    let size = st.st_size as usize;
    let map = if size == 0 {
        create(fd.as_raw_fd(), dp_size, uid)?
    } else {
        check_existing(
            name,
            &shown,
            fd.as_raw_fd(),
            size,
            dp_size,
            dp_rank,
            uid,
            path,
        )?
    };
    for b in &map.slot(dp_rank).bufs {
        b.tag.store(0, Ordering::Relaxed);
    }
    let member = map.member(dp_rank);
    member.pid.store(pid, Ordering::Relaxed);
    member.state.store(STATE_JOINED, Ordering::Release);
    let h = map.header();
    h.wake.epoch.fetch_add(1, Ordering::SeqCst);
    futex_wake_all(&h.wake.epoch);
    drop(_lock);
    Ok((fd, map))
}

/// Sizes and initialises a new segment (the caller holds the lock); the magic is written last.
fn create(fd: RawFd, dp_size: usize, uid: u32) -> Result<Mapping> {
    let len = segment_size(dp_size);
    // SAFETY: ftruncate of a descriptor we own; the new bytes read as zero.
    if unsafe { libc::ftruncate(fd, len as libc::off_t) } != 0 {
        return Err(os_error("ftruncate of the group segment"));
    }
    let map = Mapping::map(fd, len, dp_size)?;
    let h = map.header();
    h.layout_version.store(LAYOUT_VERSION, Ordering::Relaxed);
    h.dp_size.store(dp_size as u32, Ordering::Relaxed);
    h.owner_uid.store(uid, Ordering::Relaxed);
    h.slot_size.store(SLOT_SIZE as u32, Ordering::Relaxed);
    h.segment_size.store(len as u64, Ordering::Relaxed);
    h.magic.store(MAGIC, Ordering::Release);
    Ok(map)
}

/// Checks an existing segment (the caller holds the lock) and maps it, or says why not: a
/// stale one (no live member) is unlinked and the open retried.
#[allow(clippy::too_many_arguments)]
fn check_existing(
    name: &str,
    shown: &str,
    fd: RawFd,
    size: usize,
    dp_size: usize,
    dp_rank: usize,
    uid: u32,
    path: &CString,
) -> std::result::Result<Mapping, JoinError> {
    let bad =
        |what: String| JoinError::Fatal(invalid!("host group '{name}': segment {shown} {what}"));
    if size < HEADER_SIZE {
        return Err(bad(format!(
            "is {size} bytes, shorter than its {HEADER_SIZE}-byte header (truncated)"
        )));
    }
    let head = Mapping::map(fd, HEADER_SIZE, 0)?;
    let h = head.header();
    let magic = h.magic.load(Ordering::Acquire);
    if magic == 0 && h.layout_version.load(Ordering::Relaxed) == 0 {
        // A creator died before it finished: nobody can have joined.
        shm_unlink(path);
        return Err(JoinError::Retry(format!(
            "reclaimed the unfinished segment {shown}"
        )));
    }
    if magic != MAGIC {
        return Err(bad(format!(
            "has magic {magic:#018x}, not a dpcoord host group's"
        )));
    }
    let version = h.layout_version.load(Ordering::Relaxed);
    if version != LAYOUT_VERSION {
        return Err(bad(format!(
            "was made with layout version {version}; this library uses version {LAYOUT_VERSION}"
        )));
    }
    let owner = h.owner_uid.load(Ordering::Relaxed);
    if owner != uid {
        return Err(bad(format!(
            "says header.owner_uid = {owner}, this process runs as uid {uid}; refusing it"
        )));
    }
    let slot_size = h.slot_size.load(Ordering::Relaxed);
    if slot_size as usize != SLOT_SIZE {
        return Err(bad(format!(
            "has header.slot_size = {slot_size}, want {SLOT_SIZE}"
        )));
    }
    let theirs = h.dp_size.load(Ordering::Relaxed);
    if theirs < 1 || theirs > MAX_DP_SIZE as u32 {
        return Err(bad(format!(
            "has header.dp_size = {theirs}, outside 1..={MAX_DP_SIZE}"
        )));
    }
    let recorded = h.segment_size.load(Ordering::Relaxed);
    let needed = segment_size(theirs as usize);
    if recorded != needed as u64 || size != needed {
        return Err(bad(format!(
            "is {size} bytes and header.segment_size = {recorded}, but dp_size {theirs} needs \
             {needed} (truncated or corrupt)"
        )));
    }
    drop(head);
    let map = Mapping::map(fd, size, theirs as usize)?;
    let mut live = None;
    let mut previous = None;
    for r in 0..theirs as usize {
        let member = map.member(r);
        let state = member.state.load(Ordering::Acquire);
        let pid = member.pid.load(Ordering::Relaxed);
        match state {
            STATE_EMPTY => continue,
            STATE_JOINED | STATE_CLOSED if pid_plausible(pid) => {}
            STATE_JOINED | STATE_CLOSED => return Err(bad(format!("has member[{r}].pid = {pid}"))),
            s => return Err(bad(format!("has member[{r}].state = {s}"))),
        }
        if state == STATE_JOINED && process_alive(pid) {
            live.get_or_insert((r, pid));
        } else {
            previous.get_or_insert((r, pid));
        }
    }
    let Some((live_rank, live_pid)) = live else {
        drop(map);
        shm_unlink(path);
        return Err(JoinError::Retry(format!(
            "reclaimed the stale segment {shown} (every process in it is gone)"
        )));
    };
    if theirs as usize != dp_size {
        return Err(bad(format!(
            "belongs to a group of dp_size {theirs} (rank {live_rank} is pid {live_pid}); this \
             open asks for dp_size {dp_size}"
        )));
    }
    if let Some((r, pid)) = previous {
        return Err(JoinError::Retry(format!(
            "{shown} is still held by an earlier run (rank {r}, pid {pid}, has left it; rank \
             {live_rank}, pid {live_pid}, has not closed it yet)"
        )));
    }
    if map.header().failure.load(Ordering::Acquire) != 0 {
        return Err(JoinError::Retry(format!(
            "{shown} is held by an earlier run that failed and has not closed it yet"
        )));
    }
    let own = map.member(dp_rank);
    if own.state.load(Ordering::Acquire) == STATE_JOINED {
        let pid = own.pid.load(Ordering::Relaxed);
        return Err(JoinError::Fatal(invalid!(
            "host group '{name}': dp_rank {dp_rank} is already held by pid {pid}"
        )));
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    /// tests/host_group.rs corrupts fields by these offsets; a layout change must update both.
    #[test]
    fn layout_is_the_one_the_process_tests_corrupt() {
        let header = [
            (offset_of!(Header, magic), 0),
            (offset_of!(Header, layout_version), 8),
            (offset_of!(Header, dp_size), 12),
            (offset_of!(Header, owner_uid), 16),
            (offset_of!(Header, slot_size), 20),
            (offset_of!(Header, segment_size), 24),
            (offset_of!(Header, failure), 32),
            (offset_of!(Header, wake) + offset_of!(WakeLine, epoch), 64),
            (
                offset_of!(Header, wake) + offset_of!(WakeLine, sleepers),
                68,
            ),
        ];
        let slot = [
            (offset_of!(Member, pid), 0),
            (offset_of!(Member, state), 4),
            (offset_of!(Slot, bufs), 0),
            (std::mem::size_of::<Buf>(), 64),
            (members_size(2), 128),
            (members_size(17), 256),
        ];
        let buf = [
            (offset_of!(Buf, tag), 0),
            (offset_of!(Buf, step_id), 8),
            (offset_of!(Buf, kind), 16),
            (offset_of!(Buf, pad_policy), 20),
            (offset_of!(Buf, num_ubatches), 24),
            (offset_of!(Buf, words), 28),
        ];
        for (got, want) in header.into_iter().chain(slot).chain(buf) {
            assert_eq!(got, want);
        }
        assert_eq!(
            (HEADER_SIZE, SLOT_SIZE, segment_size(8)),
            (128, 128, 128 + 128 + 128 * 8)
        );
    }

    #[test]
    fn names_are_checked() {
        assert!(check_name(b"dp-8.engine_0").is_ok());
        assert!(check_name(&[b'a'; MAX_NAME_LEN]).is_ok());
        for bad in [&b""[..], &[b'a'; MAX_NAME_LEN + 1], b"a/b", b"..\0", b"x y"] {
            let e = check_name(bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::InvalidArgument);
            assert!(e.message.contains("name = "), "{e}");
        }
    }
}
