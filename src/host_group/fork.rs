//! Whether the calling process is the one that opened a group, or a child forked from it
//! that inherited the handle, in one load per step (`getpid` is a system call, a third of a
//! step's own cost): a page that `MADV_WIPEONFORK` empties in every forked child holds the
//! pid of the process that last opened a group here. Where the kernel has no
//! `MADV_WIPEONFORK` (before Linux 4.14), each check calls `getpid`.

use std::ptr::null_mut;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::OnceLock;

use rustix::mm::{madvise, mmap_anonymous, munmap, Advice, MapFlags, ProtFlags};

use super::sys::getpid;

/// Bytes of the page.
const PAGE: usize = 4096;

/// The word of the page (0 in a forked child until it opens a group itself), or `None`
/// without `MADV_WIPEONFORK`.
static OPENER: OnceLock<Option<&'static AtomicI32>> = OnceLock::new();

fn opener_word() -> Option<&'static AtomicI32> {
    *OPENER.get_or_init(|| {
        let prot = ProtFlags::READ | ProtFlags::WRITE;
        // SAFETY: a new private anonymous mapping at an address the kernel picks (NULL hint):
        // it aliases no memory Rust knows of.
        let page = unsafe { mmap_anonymous(null_mut(), PAGE, prot, MapFlags::PRIVATE) }.ok()?;
        // SAFETY: advice on exactly the page mapped just above, which nothing uses yet.
        if unsafe { madvise(page, PAGE, Advice::LinuxWipeOnFork) }.is_err() {
            // SAFETY: unmaps the page mapped just above; no reference into it exists.
            let _ = unsafe { munmap(page, PAGE) };
            return None;
        }
        // SAFETY: the page is mapped for the rest of the process (never unmapped), page
        // aligned and zero-filled, and an `AtomicI32` is valid for any bits.
        Some(unsafe { &*page.cast::<AtomicI32>() })
    })
}

/// Marks this process, whose pid is `pid`, as one that opened a group.
pub(super) fn mark_opener(pid: i32) {
    if let Some(word) = opener_word() {
        word.store(pid, Ordering::Relaxed);
    }
}

/// Whether this process is `opener` (marked by [`mark_opener`]), and not a child forked from
/// it.
pub(super) fn is_opener(opener: i32) -> bool {
    match opener_word() {
        Some(word) => word.load(Ordering::Relaxed) == opener,
        None => getpid() == opener,
    }
}
