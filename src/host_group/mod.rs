//! The host shared-memory group (docs/ARCHITECTURE.md, "Host group"): the ranks
//! of one host agree each step through one POSIX shared-memory segment, with no GPU and no MPI.
//!
//! Segment `/dpcoord.<name>`, the file `/dev/shm/dpcoord.<name>` (mode 0600, owned by the
//! caller's effective uid), layout version 3:
//!
//! | bytes | what |
//! |---|---|
//! | header line 0 | magic, layout version, dp_size, owner uid, slot size, segment size, failure word (written once, then read-only except the failure word) |
//! | header line 1 | futex word (`epoch`) and sleeper count |
//! | member table (24 bytes per rank, whole 128-byte pairs) | each rank's pid, state (empty, joined, closed), pid namespace and start time, written when it joins and leaves |
//! | slot r (two 128-byte pairs of lines) | two buffers, by step parity, each one 96-byte slot: the checked slot every transport exchanges (`crate::slot`: sequence number, settings, step ids, arrival time, record, checksum) |
//!
//! The code, one concern a file: `segment.rs` (the layout and its mapping), `sys.rs` (the
//! system calls, through `rustix`), `identity.rs` (who a member is, and whether it lives),
//! `join.rs` (create, join, check and reclaim a segment), `wait.rs` (spin, yield, futex
//! sleep), `step.rs` (publish, wait, copy, check, decide, the failure word), `straggler.rs`
//! (which rank arrives last, for the INFO log), `fork.rs` (whether the caller is the process
//! that opened the group).
//!
//! # Steps
//!
//! Step `k` (this group's own count, from 1): a rank makes its slot with
//! `rules::slots::make` (sequence number `k` mod 2^32, arrival time `coordinate`'s entry, the
//! V2 graph table of `set_graphs`), writes it into its buffer of parity `k & 1` with the
//! sequence number last (release), then waits (acquire loads) until every rank's buffer of
//! that parity holds sequence number `k`. It copies every rank's slot out of the segment and
//! checks and decides on the copies with `rules::slots` (checksums, the invalid-request
//! marker, the settings, the step ids; then V1's or V2's decision), exactly as the host path
//! does. Ranks are never more than one step apart, so a buffer cannot be overwritten before
//! every rank has read it, and a buffer holds this step's sequence number or the one two
//! steps back (anything else is a damaged slot: the group's own check of sequence numbers).
//! Waits spin (then yield) for 50 us, or 1 ms while the cores are oversubscribed, then sleep
//! on the futex in slices of at most 10 ms, checking between slices whether a peer exited or
//! closed (see "Who is alive").
//!
//! An invalid request (or one the C boundary could not read) is published as the
//! invalid-request marker, so every rank of that step fails with an invalid-argument error and
//! no rank decides; the exchange itself completed, so the group stays usable, as it does after
//! the inconsistent-ranks errors (settings or step ids). A wait that failed (timeout, a peer
//! that exited or closed, a corrupt segment) or a damaged slot (a failed checksum, a sequence
//! number of another step: `DP_ERR_CORRUPT` naming the rank) leaves the group unusable: the
//! rank writes a failure word that makes every rank fail fast, and every later call fails with
//! the first failure until `close`. A rank that copied a slot before it was damaged decides
//! with the intact copy, the decision every intact copy gives.
//!
//! # Who is alive
//!
//! A member entry names its process by pid, pid namespace (the inode of `/proc/self/ns/pid`)
//! and start time (field 22 of `/proc/self/stat`); 0 for either of the last two where `/proc`
//! cannot tell. A member is alive when a process with its pid exists in this pid namespace
//! and, where `/proc` was mounted for this namespace (one `NSpid` entry in
//! `/proc/self/status`; `unshare --pid` without `--mount-proc` keeps the parent's /proc, whose
//! `/proc/<pid>` is another process), has its start time. So:
//!
//! - A rank whose pid namespace is not that of a joined member is refused at open
//!   (`DP_ERR_INVALID_ARGUMENT`, saying so and naming the member): its pids mean nothing to
//!   the others (containers that share `/dev/shm` but not their pids), so a live group would
//!   look stale and be unlinked, a live peer dead, a dead one alive. Open checks every joined
//!   member under the segment lock, so the joined members always share one namespace.
//! - A reused pid (a live process with another start time) is a dead member: at open, a
//!   segment whose joined members are all dead is stale and reclaimed; while waiting for the
//!   others to join, and at the end of open, such a peer is `DP_ERR_PEER_EXITED` naming the
//!   rank and what became of its pid.
//! - While stepping, a peer is watched through a pidfd taken at the end of open and checked
//!   then against the start time (the start time read while the pidfd's process runs, before
//!   and after the read, is that process's); the pidfd names that process whatever later
//!   happens to the pid, so an exit is seen even after the pid is reused. Where the kernel
//!   has no pidfd, each check is `kill(pid, 0)` plus the start time.
//! - Where `/proc` is not this namespace's, start times are not compared: a member is alive
//!   when its pid exists (and its pidfd has not exited).
//!
//! # Opening, creating, reclaiming, closing
//!
//! Each attempt to open takes the segment file's `flock` (non-blocking, retried). The file is
//! opened as glibc's `shm_open` does (`O_NOFOLLOW`), plus `O_NONBLOCK | O_NOCTTY` so that
//! opening something else is harmless; anything at the path that is not a regular file (a
//! FIFO, a directory, a symbolic link, a socket, a device) is `DP_ERR_INVALID_ARGUMENT` naming
//! the path and what is there, and is left alone.
//!
//! A segment is created under that lock: the creator sizes the file, writes the header and
//! stores the magic last, then joins, and only then unlocks. The lock dies with its holder, so
//! an opener that holds it and finds a segment whose magic was never written knows that its
//! creator is gone (killed or failed between two stores, before anyone could join) and
//! unlinks it. Every unlink (an unfinished segment, a stale one, the last rank's) happens
//! under the lock and only while the name still refers to the file locked (compared by device
//! and inode), so it never removes a newer segment.
//!
//! `close` marks the rank closed, wakes the others and, when no other member is alive,
//! unlinks the segment. In a process other than the one that opened the handle (a child that
//! inherited it across `fork`) it only unmaps the segment and closes its descriptors: it
//! writes no member state and unlinks nothing, so the parent's rank is untouched; and
//! `coordinate` there is refused (the child would step as the parent's rank).
//!
//! # What a hostile segment can do
//!
//! Everything read from the segment is checked (a corrupt or hostile peer gives an error,
//! never a crash, a hang past the timeout or a wrong decision); each step re-reads every
//! member's identity and compares it with what open saw. Two limits are inherent to a
//! segment shared with same-user processes: a peer that shrinks the segment while it is
//! mapped makes the next access fault (SIGBUS), and a peer that rewrites another rank's slot
//! consistently (with its checksum, which guards against damage, not against a forger) is
//! indistinguishable from that rank.

mod fork;
mod identity;
mod join;
mod segment;
mod step;
mod sys;
mod wait;

#[cfg(test)]
mod tests;

use std::ffi::CString;
use std::os::fd::OwnedFd;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::diag::{Ctx, Stragglers};
use crate::error::{invalid, Error, ErrorKind, Result};
use crate::rules::{Agreement, Decision, GraphTable};
use crate::slot::Slot;

use identity::Identity;
use join::{same_segment, JoinError, Opening};
use segment::{Mapping, STATE_CLOSED};
use sys::{euid, getpid, shm_unlink, Locked};
use wait::deadline_after;

/// Largest `dp_size` a group accepts.
pub(crate) const MAX_DP_SIZE: i32 = 1024;
/// Longest group name.
pub(crate) const MAX_NAME_LEN: usize = 64;
/// How long `close` tries to take the segment lock before it leaves the unlink to a later open.
const CLOSE_LOCK_MS: u64 = 200;

/// What one step decided, under the rule set every rank's slot names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decided {
    V1(Decision),
    V2(Agreement),
}

/// What one step agreed on: the decision, the step id (0 when unchecked) and the straggler
/// report. The per-rank array is [`HostGroup::tokens`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Step {
    pub(crate) decided: Decided,
    pub(crate) step_id: i64,
    /// The rank whose slot carries the latest arrival time.
    pub(crate) last_rank: i32,
    /// Latest minus earliest arrival time, in ns.
    pub(crate) arrival_skew_ns: i64,
    /// How long this call waited, from its entry until every rank's slot was there, in ns (0
    /// when they all were at the first look).
    pub(crate) wait_ns: i64,
}

/// One open group, this process's rank in it.
pub(crate) struct HostGroup {
    name: String,
    path: CString,
    fd: OwnedFd,
    map: Mapping,
    dp_size: usize,
    dp_rank: usize,
    /// This process, as its member entry names it.
    own: Identity,
    /// Whether `/proc` shows this pid namespace, so that start times can be compared.
    proc_own: bool,
    open_timeout_ms: i32,
    /// Every rank as it joined (this one included), and a pidfd for each peer where the
    /// kernel has them.
    peers: Vec<Peer>,
    /// This rank's last published sequence number.
    seq: u64,
    /// The effective uid, which owns the segment.
    uid: u32,
    /// A recent wait found the cores oversubscribed (see `wait`).
    contended: std::cell::Cell<bool>,
    /// The first failure of a wait; every later call fails with it.
    failed: Option<Error>,
    /// Every rank's slot of the step being decided, copied out of the segment.
    slots: Vec<Slot>,
    /// The tokens after padding of every rank, from the last step that decided.
    tokens: Vec<i32>,
    /// The V2 graph table this rank dispatches with (its hash is in every slot).
    graphs: Option<Arc<GraphTable>>,
    /// Which rank arrived last in the recent steps (read only for the INFO log).
    stragglers: Stragglers,
}

struct Peer {
    id: Identity,
    pidfd: Option<OwnedFd>,
}

fn timeout_error(msg: String) -> Error {
    Error::new(ErrorKind::Timeout, msg)
}

fn peer_exited(msg: String) -> Error {
    Error::new(ErrorKind::PeerExited, msg)
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

/// Rank `r`'s slot in the segment was damaged: `what` says how.
fn slot_damaged(name: &str, what: String, r: usize) -> Error {
    Error::new(
        ErrorKind::Corrupt,
        format!(
            "host group '{name}': rank {r}'s slot was damaged in the shared segment: {what} (a \
             stray or hostile write into its memory); nothing of this step was used"
        ),
    )
}

fn os_error(what: &str, e: rustix::io::Errno) -> Error {
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

/// The file of a group's segment: POSIX shared memory `/dpcoord.<name>`, as glibc's
/// `shm_open` names it.
fn segment_path(name: &str) -> String {
    format!("/dev/shm/dpcoord.{name}")
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
        let own = Identity::own();
        fork::mark_opener(own.pid);
        let proc_own = identity::proc_is_own();
        let uid = euid();
        let opening = Opening {
            name,
            path: &path,
            dp_size,
            dp_rank,
            own,
            proc_own,
            uid,
        };
        let (fd, map) = loop {
            match opening.attempt() {
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
            own,
            proc_own,
            open_timeout_ms: timeout_ms,
            peers: Vec::with_capacity(dp_size),
            seq: 0,
            uid,
            contended: std::cell::Cell::new(false),
            failed: None,
            slots: vec![Slot { opaque: [0; 24] }; dp_size],
            tokens: vec![0; dp_size],
            graphs: None,
            stragglers: Stragglers::new(),
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

    /// The graph table of the V2 rules this rank uses from its next step on (`None`: none).
    pub(crate) fn set_graphs(&mut self, graphs: Option<Arc<GraphTable>>) {
        self.graphs = graphs;
    }

    /// What the diagnostics log says about this rank at step id `step_id`.
    fn ctx(&self, step_id: i64) -> Ctx<'_> {
        Ctx::new()
            .rank(self.dp_rank as i32, self.dp_size as i32)
            .group(&self.name)
            .step(step_id)
    }
}

/// Leaves the group: marks this rank closed, wakes the others, and unlinks the segment when
/// no other rank holds it any more (under the segment lock, and only if the name still refers
/// to this segment). In a process other than the one that opened the group (a child that
/// inherited the handle across `fork`), the rank is the parent's: only the local mapping and
/// descriptors are released.
impl Drop for HostGroup {
    fn drop(&mut self) {
        if getpid() != self.own.pid {
            return; // the fields' own drops unmap and close, which is local
        }
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
