//! The segment's layout (header, member table, slots) and its mapping into this process.

use std::os::fd::OwnedFd;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicI32, AtomicU32, AtomicU64, Ordering};

use rustix::mm::{mmap, munmap, MapFlags, ProtFlags};

use super::{internal, os_error};
use crate::error::Result;
use crate::slot::{at, Slot, SLOT3_WORDS};

/// `"dpcoordH"` as a little-endian word: a dpcoord host-group segment.
pub(super) const MAGIC: u64 = u64::from_le_bytes(*b"dpcoordH");
/// Bumped on any change of the segment layout below (3: the buffers hold the 0.3 slot).
pub(super) const LAYOUT_VERSION: u32 = 3;

/// Member states.
pub(super) const STATE_EMPTY: u32 = 0;
pub(super) const STATE_JOINED: u32 = 1;
pub(super) const STATE_CLOSED: u32 = 2;

#[repr(C, align(64))]
pub(super) struct Header {
    pub(super) magic: AtomicU64,
    pub(super) layout_version: AtomicU32,
    pub(super) dp_size: AtomicU32,
    pub(super) owner_uid: AtomicU32,
    pub(super) slot_size: AtomicU32,
    pub(super) segment_size: AtomicU64,
    pub(super) failure: AtomicU64,
    _reserved: [u64; 3],
    pub(super) wake: WakeLine,
}

/// The futex word and the count of ranks sleeping on it, on a cache line of their own.
#[repr(C, align(64))]
pub(super) struct WakeLine {
    pub(super) epoch: AtomicU32,
    pub(super) sleepers: AtomicU32,
}

/// One buffer: the words of one [`Slot`], the checked slot every transport exchanges. Word 0,
/// its sequence number (the group's step number), is stored last, with release: a reader that
/// loads it with acquire and finds this step's number reads the whole slot. Two 64-byte lines
/// of its own (a 128-byte pair: the adjacent-line prefetcher's unit).
#[repr(C, align(128))]
pub(super) struct Buf {
    pub(super) words: [AtomicU32; SLOT3_WORDS],
}

impl Buf {
    /// The sequence number this buffer holds (acquire: the slot's other words are then
    /// visible).
    pub(super) fn seq(&self) -> u32 {
        self.words[at::SEQ].load(Ordering::Acquire)
    }

    /// Writes `slot` here: every word, the sequence number last (release).
    pub(super) fn publish(&self, slot: &Slot) {
        for (w, &v) in self.words.iter().zip(&slot.opaque).skip(at::SEQ + 1) {
            w.store(v, Ordering::Relaxed);
        }
        self.words[at::SEQ].store(slot.opaque[at::SEQ], Ordering::Release);
    }

    /// A copy of the slot here (after [`Buf::seq`] found it published): the words as they
    /// are now, which the reader checks (a word changed since is a failed checksum).
    pub(super) fn copy(&self) -> Slot {
        Slot {
            opaque: std::array::from_fn(|i| self.words[i].load(Ordering::Relaxed)),
        }
    }

    /// Empties the buffer (sequence number 0: no step yet), for a rank that joins.
    pub(super) fn reset(&self) {
        self.words[at::SEQ].store(0, Ordering::Relaxed);
    }
}

/// One rank's entry in the member table: written when it joins and when it leaves. The
/// process is named by pid, pid namespace and start time (`identity.rs`).
#[repr(C)]
pub(super) struct Member {
    pub(super) pid: AtomicI32,
    pub(super) state: AtomicU32,
    /// The inode of the rank's `/proc/self/ns/pid` (layout 2).
    pub(super) pid_ns: AtomicU64,
    /// The rank's start time, field 22 of `/proc/self/stat` (layout 2).
    pub(super) start_time: AtomicU64,
}

/// One rank's place in the segment: a buffer per step parity, so that a rank writes step
/// `k + 1` while a slower peer may still read step `k`.
#[repr(C)]
pub(super) struct RankSlot {
    pub(super) bufs: [Buf; 2],
}

pub(super) const HEADER_SIZE: usize = std::mem::size_of::<Header>();
pub(super) const MEMBER_SIZE: usize = std::mem::size_of::<Member>();
pub(super) const SLOT_SIZE: usize = std::mem::size_of::<RankSlot>();
const _: () = assert!(HEADER_SIZE == 128 && MEMBER_SIZE == 24 && SLOT_SIZE == 256);

/// Bytes of the member table of `dp_size` ranks, rounded up to 128 so that every slot
/// starts a 128-byte pair of lines (the unit of the adjacent-line prefetcher): a rank's
/// buffers never share a pair with another rank's.
pub(super) fn members_size(dp_size: usize) -> usize {
    (MEMBER_SIZE * dp_size).div_ceil(128) * 128
}

fn slots_offset(dp_size: usize) -> usize {
    HEADER_SIZE + members_size(dp_size)
}

pub(super) fn segment_size(dp_size: usize) -> usize {
    slots_offset(dp_size) + SLOT_SIZE * dp_size
}

/// The segment mapped into this process.
pub(super) struct Mapping {
    ptr: NonNull<u8>,
    pub(super) len: usize,
    /// The dp_size the mapping was checked for (0 for a header-only mapping).
    dp_size: usize,
}

impl Mapping {
    /// Maps `len` bytes: the segment of `dp_size` ranks (`len = segment_size(dp_size)`), or
    /// only the header (`dp_size = 0`).
    pub(super) fn map(fd: &OwnedFd, len: usize, dp_size: usize) -> Result<Mapping> {
        // What the accessors' SAFETY comments rely on: the header is always mapped, and a
        // mapping for dp_size ranks holds their whole member table and every slot.
        let want = if dp_size == 0 {
            HEADER_SIZE
        } else {
            segment_size(dp_size)
        };
        if len != want {
            return Err(internal(&format!(
                "mapping {len} bytes for dp_size {dp_size}, want {want}"
            )));
        }
        // SAFETY: a new shared mapping at an address the kernel picks (NULL hint), so it
        // aliases no memory Rust knows of.
        let ptr = unsafe {
            mmap(
                std::ptr::null_mut(),
                len,
                ProtFlags::READ | ProtFlags::WRITE,
                MapFlags::SHARED,
                fd,
                0,
            )
        }
        .map_err(|e| os_error("mmap of the group segment", e))?;
        let ptr = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| internal("mmap returned NULL"))?;
        Ok(Mapping { ptr, len, dp_size })
    }

    pub(super) fn header(&self) -> &Header {
        // SAFETY: every mapping holds at least the header (`map` checks the length), its base
        // is page aligned, and `Header` consists of atomics, valid for any bits another process
        // writes.
        unsafe { &*self.ptr.as_ptr().cast::<Header>() }
    }

    /// Rank `r`'s member entry; `r` below the mapping's dp_size.
    pub(super) fn member(&self, r: usize) -> &Member {
        assert!(r < self.dp_size, "member {r} is outside the mapping");
        // SAFETY: in bounds (asserted; `map` checked that the mapping holds the whole member
        // table), aligned (page-aligned base, whole-line header, entries of MEMBER_SIZE, a
        // multiple of their alignment), and `Member` consists of atomics, valid for any bits.
        unsafe {
            &*self
                .ptr
                .as_ptr()
                .add(HEADER_SIZE + MEMBER_SIZE * r)
                .cast::<Member>()
        }
    }

    /// Rank `r`'s slot; `r` below the mapping's dp_size.
    pub(super) fn slot(&self, r: usize) -> &RankSlot {
        assert!(r < self.dp_size, "slot {r} is outside the mapping");
        let offset = slots_offset(self.dp_size) + SLOT_SIZE * r;
        // SAFETY: in bounds (asserted; `map` checked that the mapping holds every slot),
        // 128-aligned (page-aligned base, header, member table and slots in whole 128-byte
        // pairs), and `RankSlot` consists of atomics, valid for any bits.
        unsafe { &*self.ptr.as_ptr().add(offset).cast::<RankSlot>() }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region `map` created; no reference into it outlives
        // `self` (they all borrow it).
        let _ = unsafe { munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}
