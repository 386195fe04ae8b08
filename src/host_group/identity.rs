//! Who a rank is: its pid, its pid namespace and its process start time, as its member entry
//! records them.
//!
//! A pid names a process only within one pid namespace, and only until that process is reaped
//! and the pid reused. So a member entry records, besides the pid, the inode of the rank's
//! `/proc/self/ns/pid` (its pid namespace) and field 22 of its `/proc/self/stat` (its start
//! time, in clock ticks since boot). 0 in either means unknown (no `/proc`).
//!
//! A member is alive when a process with its pid exists in this pid namespace (the callers
//! compare namespaces first) and, where `/proc` can tell, has its start time: a reused pid
//! names another process, which is not the member. Through a pidfd the check is free of
//! races: the start time read while the pidfd's process runs (checked before and after the
//! read) is that process's, and the pidfd keeps naming it whatever later happens to the pid.
//!
//! `/proc/<pid>` names the process that `pid` names here only when `/proc` was mounted for
//! this pid namespace (a container mounts its own; `unshare --pid --fork` without
//! `--mount-proc` keeps the parent's). Where it was not, start times are not compared, and a
//! member is alive when its pid exists (and its pidfd, taken at open, has not exited).

use std::os::fd::OwnedFd;
use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;

use rustix::io::Errno;

use super::segment::Member;
use super::sys::{getpid, pidfd_exited, pidfd_open, process_exists};
use crate::error::{invalid, Error};

/// A process as a member entry names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Identity {
    pub(super) pid: i32,
    /// The inode of the process's `/proc/<pid>/ns/pid`; 0 when unknown.
    pub(super) pid_ns: u64,
    /// Field 22 of `/proc/<pid>/stat`; 0 when unknown.
    pub(super) start_time: u64,
}

impl Identity {
    /// This process.
    pub(super) fn own() -> Identity {
        Identity {
            pid: getpid(),
            pid_ns: std::fs::metadata("/proc/self/ns/pid").map_or(0, |m| m.ino()),
            start_time: start_time_at("/proc/self/stat").unwrap_or(0),
        }
    }

    /// What member entry `m` says (the caller read its state first, with acquire).
    pub(super) fn load(m: &Member) -> Identity {
        Identity {
            pid: m.pid.load(Ordering::Relaxed),
            pid_ns: m.pid_ns.load(Ordering::Relaxed),
            start_time: m.start_time.load(Ordering::Relaxed),
        }
    }

    /// Writes this identity into member entry `m` (the caller then publishes the state, with
    /// release).
    pub(super) fn store(&self, m: &Member) {
        m.pid.store(self.pid, Ordering::Relaxed);
        m.pid_ns.store(self.pid_ns, Ordering::Relaxed);
        m.start_time.store(self.start_time, Ordering::Relaxed);
    }

    /// Whether the process this identity names still runs (see the module docs); `proc_own`
    /// says whether `/proc` shows this pid namespace ([`proc_is_own`]).
    pub(super) fn presence(&self, proc_own: bool) -> Presence {
        match pidfd_open(self.pid) {
            Ok(pidfd) => self.presence_through(&pidfd, proc_own),
            Err(Errno::SRCH) => Presence::Exited,
            Err(_) if !process_exists(self.pid) => Presence::Exited,
            Err(_) => match self.start_time_now(proc_own) {
                Some(now) if now != self.start_time => Presence::Reused { start_time: now },
                _ => Presence::Alive,
            },
        }
    }

    /// `presence` through a pidfd opened on this identity's pid.
    pub(super) fn presence_through(&self, pidfd: &OwnedFd, proc_own: bool) -> Presence {
        if pidfd_exited(pidfd) {
            return Presence::Exited;
        }
        let now = self.start_time_now(proc_own);
        // Still running after the read: the start time read is that of the pidfd's process.
        if pidfd_exited(pidfd) {
            return Presence::Exited;
        }
        match now {
            Some(now) if now != self.start_time => Presence::Reused { start_time: now },
            _ => Presence::Alive,
        }
    }

    /// The start time of the process that has this pid now, where `/proc` can tell and this
    /// identity has one to compare with.
    fn start_time_now(&self, proc_own: bool) -> Option<u64> {
        if !proc_own || self.start_time == 0 {
            return None;
        }
        start_time_at(&format!("/proc/{}/stat", self.pid))
    }

    /// The first field in which `self` (what a member entry says now) differs from `was` (what
    /// it said when the rank joined), for a message: `member[r].<field> = <value>, but ...`.
    pub(super) fn differs_from(&self, was: &Identity) -> Option<(&'static str, String, String)> {
        if self.pid != was.pid {
            Some(("pid", self.pid.to_string(), was.pid.to_string()))
        } else if self.pid_ns != was.pid_ns {
            Some(("pid_ns", self.pid_ns.to_string(), was.pid_ns.to_string()))
        } else if self.start_time != was.start_time {
            let (now, then) = (self.start_time, was.start_time);
            Some(("start_time", now.to_string(), then.to_string()))
        } else {
            None
        }
    }
}

/// Whether a member is still the process it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Presence {
    Alive,
    Exited,
    /// Its pid names another process now, which started at this time.
    Reused {
        start_time: u64,
    },
}

impl Presence {
    /// What a message about member `id`, which exited, adds: what became of its pid when it
    /// was reused, else nothing.
    pub(super) fn reuse_note(&self, id: &Identity) -> String {
        match *self {
            Presence::Reused { start_time } => format!(
                "; pid {} now names another process (started at tick {start_time} since boot, \
                 the rank at tick {})",
                id.pid, id.start_time
            ),
            Presence::Alive | Presence::Exited => String::new(),
        }
    }
}

/// Whether `/proc` shows this process's own pid namespace, so that `/proc/<pid>` names the
/// process `pid` names here: the `NSpid` line of `/proc/self/status` lists this process's pid
/// in every namespace from `/proc`'s down to its own, so one entry means they are the same.
pub(super) fn proc_is_own() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    let own = getpid().to_string();
    match status.lines().find_map(|l| l.strip_prefix("NSpid:")) {
        Some(pids) => pids.split_whitespace().eq([own.as_str()]),
        // Before Linux 4.1 (no NSpid): whether /proc/self is this pid.
        None => std::fs::read_link("/proc/self").is_ok_and(|link| link.as_os_str() == own.as_str()),
    }
}

/// A pid namespace as `readlink /proc/<pid>/ns/pid` shows it.
pub(super) fn show_pid_ns(pid_ns: u64) -> String {
    if pid_ns == 0 {
        "unknown (no /proc/self/ns/pid)".to_owned()
    } else {
        format!("pid:[{pid_ns}]")
    }
}

/// The error of a rank whose group has a member in another pid namespace: its pids mean
/// nothing here, so whether that member lives cannot be told.
pub(super) fn mixed_namespaces(name: &str, r: usize, theirs: &Identity, own: &Identity) -> Error {
    invalid!(
        "host group '{name}': rank {r} (pid {}) runs in pid namespace {}, this process in pid \
         namespace {}: the ranks of a group must share one pid namespace (containers that \
         share /dev/shm need a shared pid namespace, or each its own group name); if rank {r} \
         is gone, remove /dev/shm/dpcoord.{name}",
        theirs.pid,
        show_pid_ns(theirs.pid_ns),
        show_pid_ns(own.pid_ns)
    )
}

/// Field 22 (`starttime`) of a `/proc/<pid>/stat` file: the fields after the command, which is
/// in parentheses and may hold spaces and parentheses itself, start with field 3.
pub(super) fn start_time_at(stat: &str) -> Option<u64> {
    let text = std::fs::read_to_string(stat).ok()?;
    let after_command = &text[text.rfind(')')? + 1..];
    after_command.split_whitespace().nth(22 - 3)?.parse().ok()
}
