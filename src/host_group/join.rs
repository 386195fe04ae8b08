//! Joining a group: open or create the segment, check an existing one, reclaim a stale one,
//! wait until every rank joined; and what `close` needs to know to unlink.

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rustix::fs::{FileType, OFlags};
use rustix::io::Errno;

use super::identity::{mixed_namespaces, Identity, Presence};
use super::segment::{
    segment_size, Mapping, HEADER_SIZE, LAYOUT_VERSION, MAGIC, SLOT_SIZE, STATE_CLOSED,
    STATE_EMPTY, STATE_JOINED,
};
use super::sys::{
    fstat, ftruncate, futex_wake_all, pid_plausible, pidfd_open, shm_open, shm_unlink, Locked,
};
use super::wait::Deadline;
use super::{corrupt, peer_exited, timeout_error, HostGroup, Peer, MAX_DP_SIZE};
use crate::diag::{self, Level};
use crate::error::{invalid, Error, Result};

/// Why one attempt to join did not get through.
pub(super) enum JoinError {
    /// Try again (the segment is busy, being replaced, or held by a previous run).
    Retry(String),
    Fatal(Error),
}

impl From<Error> for JoinError {
    fn from(e: Error) -> Self {
        JoinError::Fatal(e)
    }
}

impl HostGroup {
    pub(super) fn wait_all_joined(
        &mut self,
        deadline: Option<Instant>,
        timeout_ms: i32,
    ) -> Result<()> {
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
                let id = Identity::load(member);
                let pid = id.pid;
                if !pid_plausible(pid) || (r != me && pid == g.own.pid) {
                    return Err(corrupt(&g.name, format!("member[{r}].pid = {pid}")));
                }
                if id.pid_ns != g.own.pid_ns {
                    // Cannot happen through open (each joiner checks every joined rank under
                    // the lock); said as what it would mean.
                    return Err(mixed_namespaces(&g.name, r, &id, &g.own));
                }
                if r == me {
                    if let Some((field, now, was)) = id.differs_from(&g.own) {
                        return Err(corrupt(
                            &g.name,
                            format!("member[{r}].{field} = {now}, but this rank joined as {was}"),
                        ));
                    }
                }
                *next += 1;
            }
            Ok(true)
        };
        let r = self.wait(
            Deadline::At(deadline),
            |g| joined(g, &mut next),
            |g| {
                // Only the ranks that joined so far have a process to check (one of another
                // namespace is refused by `joined`).
                for r in 0..g.dp_size {
                    let member = g.map.member(r);
                    if r != me && member.state.load(Ordering::Acquire) == STATE_JOINED {
                        let id = Identity::load(member);
                        if !pid_plausible(id.pid) || id.pid_ns != g.own.pid_ns {
                            continue;
                        }
                        let presence = id.presence(g.proc_own);
                        if presence != Presence::Alive {
                            return Err(g.exited_before_all_joined(r, &id, presence));
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
        // Each peer's pidfd is taken on the process that has its pid now, and kept only if that
        // process is the peer (start time): from here on the pidfd names it, reuse or not.
        for r in 0..self.dp_size {
            if r == me {
                self.peers.push(Peer {
                    id: self.own,
                    pidfd: None,
                });
                continue;
            }
            let id = Identity::load(self.map.member(r));
            let pidfd = pidfd_open(id.pid).ok();
            let presence = match &pidfd {
                Some(fd) => id.presence_through(fd, self.proc_own),
                None => id.presence(self.proc_own),
            };
            if presence != Presence::Alive {
                return Err(self.exited_before_all_joined(r, &id, presence));
            }
            self.peers.push(Peer { id, pidfd });
        }
        diag::log!(
            Level::Info,
            self.ctx(0),
            "host group joined: segment {} ({} bytes), peers watched by {}, {}, dpcoord {}",
            self.path.to_string_lossy(),
            self.map.len,
            if self
                .peers
                .iter()
                .all(|p| p.pidfd.is_some() || p.id == self.own)
            {
                "pidfd"
            } else {
                "kill(pid, 0)"
            },
            if self.proc_own {
                "start times from /proc"
            } else {
                "start times not compared (/proc is not this pid namespace's)"
            },
            env!("CARGO_PKG_VERSION")
        );
        Ok(())
    }

    /// The error of an open whose peer `r`, named by `id`, is gone (`presence`).
    fn exited_before_all_joined(&self, r: usize, id: &Identity, presence: Presence) -> Error {
        peer_exited(format!(
            "host group '{}': rank {r} (pid {}) exited before every rank joined{}",
            self.name,
            id.pid,
            presence.reuse_note(id)
        ))
    }

    /// Whether another rank still holds the group: joined, not closed, and its process alive.
    pub(super) fn others_live(&self) -> bool {
        (0..self.dp_size).any(|r| {
            let member = self.map.member(r);
            let joined = member.state.load(Ordering::Acquire) == STATE_JOINED;
            let id = Identity::load(member);
            // A rank of another pid namespace (which open refuses) cannot be judged: live.
            r != self.dp_rank
                && joined
                && pid_plausible(id.pid)
                && id.pid != self.own.pid
                && (id.pid_ns != self.own.pid_ns || id.presence(self.proc_own) == Presence::Alive)
        })
    }
}

/// Whether `path` still names the segment open as `fd`.
pub(super) fn same_segment(path: &CString, fd: &OwnedFd) -> Result<bool> {
    let Ok(named) = shm_open(path, OFlags::empty()) else {
        return Ok(false);
    };
    let (a, b) = (fstat(fd)?, fstat(&named)?);
    Ok(a.st_dev == b.st_dev && a.st_ino == b.st_ino)
}

/// What one rank asks for when it opens a group; each attempt to join is one `attempt`.
pub(super) struct Opening<'a> {
    pub(super) name: &'a str,
    /// The segment file, `/dev/shm/dpcoord.<name>`.
    pub(super) path: &'a CString,
    pub(super) dp_size: usize,
    pub(super) dp_rank: usize,
    /// This process, as its member entry will name it.
    pub(super) own: Identity,
    /// Whether `/proc` shows this pid namespace (`identity::proc_is_own`).
    pub(super) proc_own: bool,
    /// The effective uid, which must own the segment.
    pub(super) uid: u32,
}

impl Opening<'_> {
    /// The segment file as messages show it.
    fn shown(&self) -> std::borrow::Cow<'_, str> {
        self.path.to_string_lossy()
    }

    /// A segment this open refuses: what is wrong with it.
    fn bad(&self, what: String) -> JoinError {
        JoinError::Fatal(invalid!(
            "host group '{}': segment {} {what}",
            self.name,
            self.shown()
        ))
    }

    /// What is at the segment path when it is not a regular file (`lstat`, for a message).
    fn not_a_file(&self) -> Option<&'static str> {
        let st = rustix::fs::lstat(self.path.as_c_str()).ok()?;
        let kind = FileType::from_raw_mode(st.st_mode);
        (kind != FileType::RegularFile).then(|| describe(kind))
    }

    /// One attempt to join: open or create the segment, lock it, check it, reclaim it when
    /// stale, take this rank's slot.
    pub(super) fn attempt(&self) -> std::result::Result<(OwnedFd, Mapping), JoinError> {
        let (name, shown) = (self.name, self.shown());
        let fd = shm_open(self.path, OFlags::CREATE).map_err(|e| {
            // Something that is not a file (a directory, a symbolic link, a socket) fails to
            // open: the message says what it is.
            if let Some(kind) = self.not_a_file() {
                return self.bad(format!("is {kind}, not a shared-memory file; refusing it"));
            }
            let why = if e == Errno::ACCESS {
                " (it belongs to another user)"
            } else {
                ""
            };
            JoinError::Fatal(invalid!(
                "host group '{name}': cannot open segment {shown}: {e}{why}"
            ))
        })?;
        let st = fstat(&fd)?;
        let kind = FileType::from_raw_mode(st.st_mode);
        if kind != FileType::RegularFile {
            // A FIFO or a device opens (without blocking, without side effects: see shm_open).
            return Err(self.bad(format!(
                "is {}, not a shared-memory file; refusing it",
                describe(kind)
            )));
        }
        let Some(lock) = Locked::take(&fd, Duration::ZERO) else {
            return Err(JoinError::Retry(format!(
                "{shown} is locked by another process"
            )));
        };
        if !same_segment(self.path, &fd)? {
            return Err(JoinError::Retry(format!(
                "{shown} was replaced while opening"
            )));
        }
        let st = fstat(&fd)?;
        let uid = self.uid;
        if st.st_uid != uid {
            return Err(JoinError::Fatal(invalid!(
                "host group '{name}': segment {shown} is owned by uid {}, this process runs as \
                 uid {uid}; refusing it",
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
            self.create(&fd)?
        } else {
            self.check_existing(&fd, size)?
        };
        for b in &map.slot(self.dp_rank).bufs {
            b.reset();
        }
        let member = map.member(self.dp_rank);
        self.own.store(member);
        member.state.store(STATE_JOINED, Ordering::Release);
        let h = map.header();
        h.wake.epoch.fetch_add(1, Ordering::SeqCst);
        futex_wake_all(&h.wake.epoch);
        drop(lock);
        Ok((fd, map))
    }

    /// Sizes and initialises a new segment (the caller holds the lock); the magic is written
    /// last.
    fn create(&self, fd: &OwnedFd) -> Result<Mapping> {
        let len = segment_size(self.dp_size);
        ftruncate(fd, len)?;
        let map = Mapping::map(fd, len, self.dp_size)?;
        let h = map.header();
        h.layout_version.store(LAYOUT_VERSION, Ordering::Relaxed);
        h.dp_size.store(self.dp_size as u32, Ordering::Relaxed);
        h.owner_uid.store(self.uid, Ordering::Relaxed);
        h.slot_size.store(SLOT_SIZE as u32, Ordering::Relaxed);
        h.segment_size.store(len as u64, Ordering::Relaxed);
        h.magic.store(MAGIC, Ordering::Release);
        Ok(map)
    }

    /// Checks an existing segment of `size` bytes (the caller holds the lock) and maps it, or
    /// says why not: a stale one (no live member) is unlinked and the open retried.
    fn check_existing(&self, fd: &OwnedFd, size: usize) -> std::result::Result<Mapping, JoinError> {
        let (shown, uid) = (self.shown(), self.uid);
        if size < HEADER_SIZE {
            return Err(self.bad(format!(
                "is {size} bytes, shorter than its {HEADER_SIZE}-byte header (truncated)"
            )));
        }
        let head = Mapping::map(fd, HEADER_SIZE, 0)?;
        let h = head.header();
        let magic = h.magic.load(Ordering::Acquire);
        if magic == 0 {
            // The magic is creation's last store, and a creator holds the lock from before it
            // sizes the file until after it joined. This process holds the lock now, so the
            // creator is gone (killed, or failed) between two stores: nobody can have joined.
            // Unlinked under the lock, after `same_segment` showed that the name is this file.
            shm_unlink(self.path);
            return Err(JoinError::Retry(format!(
                "reclaimed the unfinished segment {shown}"
            )));
        }
        if magic != MAGIC {
            return Err(self.bad(format!(
                "has magic {magic:#018x}, not a dpcoord host group's"
            )));
        }
        let version = h.layout_version.load(Ordering::Relaxed);
        if version != LAYOUT_VERSION {
            return Err(self.bad(format!(
                "was made with layout version {version}; this library uses version \
                 {LAYOUT_VERSION}"
            )));
        }
        let owner = h.owner_uid.load(Ordering::Relaxed);
        if owner != uid {
            return Err(self.bad(format!(
                "says header.owner_uid = {owner}, this process runs as uid {uid}; refusing it"
            )));
        }
        let slot_size = h.slot_size.load(Ordering::Relaxed);
        if slot_size as usize != SLOT_SIZE {
            return Err(self.bad(format!(
                "has header.slot_size = {slot_size}, want {SLOT_SIZE}"
            )));
        }
        let theirs = h.dp_size.load(Ordering::Relaxed);
        if theirs < 1 || theirs > MAX_DP_SIZE as u32 {
            return Err(self.bad(format!(
                "has header.dp_size = {theirs}, outside 1..={MAX_DP_SIZE}"
            )));
        }
        let recorded = h.segment_size.load(Ordering::Relaxed);
        let needed = segment_size(theirs as usize);
        if recorded != needed as u64 || size != needed {
            return Err(self.bad(format!(
                "is {size} bytes and header.segment_size = {recorded}, but dp_size {theirs} \
                 needs {needed} (truncated or corrupt)"
            )));
        }
        drop(head);
        let map = Mapping::map(fd, size, theirs as usize)?;
        let mut live = None;
        let mut previous = None;
        for r in 0..theirs as usize {
            let member = map.member(r);
            let state = member.state.load(Ordering::Acquire);
            let id = Identity::load(member);
            let pid = id.pid;
            match state {
                STATE_EMPTY => continue,
                STATE_JOINED | STATE_CLOSED if pid_plausible(pid) => {}
                STATE_JOINED | STATE_CLOSED => {
                    return Err(self.bad(format!("has member[{r}].pid = {pid}")))
                }
                s => return Err(self.bad(format!("has member[{r}].state = {s}"))),
            }
            if state == STATE_JOINED && id.pid_ns != self.own.pid_ns {
                // Its pid means nothing in this namespace: whether it lives cannot be told.
                return Err(JoinError::Fatal(mixed_namespaces(
                    self.name, r, &id, &self.own,
                )));
            }
            if state == STATE_JOINED && id.presence(self.proc_own) == Presence::Alive {
                live.get_or_insert((r, pid));
            } else {
                previous.get_or_insert((r, pid));
            }
        }
        let Some((live_rank, live_pid)) = live else {
            drop(map);
            shm_unlink(self.path);
            return Err(JoinError::Retry(format!(
                "reclaimed the stale segment {shown} (every process in it is gone)"
            )));
        };
        let dp_size = self.dp_size;
        if theirs as usize != dp_size {
            return Err(self.bad(format!(
                "belongs to a group of dp_size {theirs} (rank {live_rank} is pid {live_pid}); \
                 this open asks for dp_size {dp_size}"
            )));
        }
        if let Some((r, pid)) = previous {
            return Err(JoinError::Retry(format!(
                "{shown} is still held by an earlier run (rank {r}, pid {pid}, has left it; \
                 rank {live_rank}, pid {live_pid}, has not closed it yet)"
            )));
        }
        if map.header().failure.load(Ordering::Acquire) != 0 {
            return Err(JoinError::Retry(format!(
                "{shown} is held by an earlier run that failed and has not closed it yet"
            )));
        }
        let own = map.member(self.dp_rank);
        if own.state.load(Ordering::Acquire) == STATE_JOINED {
            let pid = own.pid.load(Ordering::Relaxed);
            return Err(JoinError::Fatal(invalid!(
                "host group '{}': dp_rank {} is already held by pid {pid}",
                self.name,
                self.dp_rank
            )));
        }
        Ok(map)
    }
}

/// A file type as messages name it.
fn describe(kind: FileType) -> &'static str {
    match kind {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a FIFO (named pipe)",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "a file of unknown type",
    }
}
