//! The host group's unit tests: the layout the process tests corrupt, a buffer's slot, the
//! straggler count, name checks, and who is alive.

use std::mem::offset_of;
use std::sync::atomic::AtomicU32;

use super::identity::{proc_is_own, start_time_at, Identity, Presence};
use super::segment::{
    members_size, segment_size, Buf, Header, Member, RankSlot, WakeLine, HEADER_SIZE,
    LAYOUT_VERSION, SLOT_SIZE,
};
use super::{check_name, MAX_NAME_LEN};
use crate::error::ErrorKind;
use crate::slot::{Settings, Slot};

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
        (offset_of!(RankSlot, bufs), 0),
        (std::mem::size_of::<Buf>(), 128),
        (offset_of!(Buf, words), 0),
        (members_size(2), 128),
        (members_size(5), 128),
        (members_size(6), 256),
        (members_size(17), 512),
    ];
    for (got, want) in header.into_iter().chain(slot) {
        assert_eq!(got, want);
    }
    assert_eq!(
        (HEADER_SIZE, SLOT_SIZE, segment_size(8)),
        (128, 256, 128 + 256 + 256 * 8)
    );
    assert_eq!(
        LAYOUT_VERSION, 3,
        "tests/host_group.rs writes layout 3 segments"
    );
}

#[test]
fn a_buffer_holds_the_slot_published_and_says_its_step() {
    let buf = Buf {
        words: std::array::from_fn(|_| AtomicU32::new(0xA5A5_A5A5)),
    };
    buf.reset();
    assert_eq!(buf.seq(), 0, "a joining rank's buffer holds no step");
    let settings = Settings {
        rules: 0,
        pad_policy: 1,
        num_ubatches: 2,
        decode_threshold: 0,
        prefill_threshold: 0,
        graphs: 0,
        decode_query_len: 0,
    };
    let slot = Slot::new(7, &settings, 42, 0, 1_000, [5, 6, 1, 0, 2, 0, 0, 0]);
    buf.publish(&slot);
    assert_eq!(buf.seq(), 7);
    assert_eq!(buf.copy(), slot);
    assert!(buf.copy().intact());
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

#[test]
fn this_process_is_alive_and_a_reused_pid_is_not() {
    let own = Identity::own();
    assert_eq!(own.pid, std::process::id() as i32);
    assert_ne!(own.pid_ns, 0, "/proc/self/ns/pid is readable here");
    assert_ne!(own.start_time, 0, "/proc/self/stat is readable here");
    assert!(
        proc_is_own(),
        "the tests run with a /proc of their own pid namespace"
    );
    assert_eq!(own.presence(true), Presence::Alive);
    let reused = Identity {
        start_time: own.start_time + 1,
        ..own
    };
    assert_eq!(
        reused.presence(true),
        Presence::Reused {
            start_time: own.start_time
        }
    );
    // Without a /proc of this namespace, start times are not compared.
    assert_eq!(reused.presence(false), Presence::Alive);
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let gone = Identity {
        pid: child.id() as i32,
        ..own
    };
    child.wait().unwrap();
    assert_eq!(gone.presence(true), Presence::Exited);
}

#[test]
fn the_start_time_is_field_22_whatever_the_command_holds() {
    let dir = std::env::temp_dir().join(format!("dpcoord-stat-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("stat");
    // The command may hold spaces and parentheses; fields 3..=21 are 1..=19, field 22 is 777.
    let fields: Vec<String> = (1..=19).map(|i| i.to_string()).collect();
    let text = format!("42 (a) b (c)) {} 777 23 24\n", fields.join(" "));
    std::fs::write(&file, text).unwrap();
    assert_eq!(start_time_at(file.to_str().unwrap()), Some(777));
    std::fs::write(&file, "42 (no fields after it)").unwrap();
    assert_eq!(start_time_at(file.to_str().unwrap()), None);
    std::fs::remove_dir_all(&dir).unwrap();
}
