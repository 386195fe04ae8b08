//! The host group's unit tests: the layout the process tests corrupt, and name checks.

use std::mem::offset_of;

use super::segment::{
    members_size, segment_size, Buf, Header, Member, Slot, WakeLine, HEADER_SIZE, LAYOUT_VERSION,
    SLOT_SIZE,
};
use super::{check_name, MAX_NAME_LEN};
use crate::error::ErrorKind;

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
        (offset_of!(Member, pid_ns), 8),
        (offset_of!(Member, start_time), 16),
        (std::mem::size_of::<Member>(), 24),
        (offset_of!(Slot, bufs), 0),
        (std::mem::size_of::<Buf>(), 64),
        (members_size(2), 128),
        (members_size(5), 128),
        (members_size(6), 256),
        (members_size(17), 512),
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
        (128, 128, 128 + 256 + 128 * 8)
    );
    assert_eq!(
        LAYOUT_VERSION, 2,
        "tests/host_group.rs writes layout 2 segments"
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
