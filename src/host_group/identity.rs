//! Who a rank is: its pid, its pid namespace and its process start time, as its member entry
//! records them.
//!
//! A pid names a process only within one pid namespace, and only until that process is reaped
//! and the pid reused. So a member entry records, besides the pid, the inode of the rank's
//! `/proc/self/ns/pid` (its pid namespace) and field 22 of its `/proc/self/stat` (its start
//! time, in clock ticks since boot). 0 in either means unknown (no `/proc`).

use std::os::unix::fs::MetadataExt;
use std::sync::atomic::Ordering;

use super::segment::Member;
use super::sys::getpid;
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
fn start_time_at(stat: &str) -> Option<u64> {
    let text = std::fs::read_to_string(stat).ok()?;
    let after_command = &text[text.rfind(')')? + 1..];
    after_command.split_whitespace().nth(22 - 3)?.parse().ok()
}
