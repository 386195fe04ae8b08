use bytemuck::Zeroable;

use super::*;
use crate::rules::{decide_with_options, DecideOptions};
use crate::slot::RankRecord;

fn v1_settings(pad_policy: i32, num_ubatches: i32) -> Settings {
    Settings {
        rules: 0,
        pad_policy,
        num_ubatches,
        decode_threshold: 0,
        prefill_threshold: 0,
        graphs: 0,
        decode_query_len: 0,
    }
}

fn slot(record: [i32; 5], step_id: i64, arrival_ns: i64) -> Slot {
    let [a, b, c, d, e] = record;
    Slot::new(
        0,
        &v1_settings(0, 2),
        step_id,
        0,
        arrival_ns,
        [a, b, c, d, e, 0, 0, 0],
    )
}

fn three() -> [Slot; 3] {
    [
        slot([600, 640, 1, 1, 2], 9, 1_000),
        slot([500, 512, 1, 1, 2], 9, 4_000),
        slot([700, 704, 1, 1, 1], 9, 2_500),
    ]
}

fn err(e: Result<Checked>) -> Error {
    e.expect_err("the check must fail")
}

#[test]
fn intact_slots_pass_and_report_the_straggler() {
    let c = check(&three(), None).unwrap();
    assert_eq!((c.step_id, c.parent_step_id), (9, 0));
    assert_eq!((c.last_rank, c.arrival_skew_ns), (1, 3_000));
    assert_eq!(c.settings, v1_settings(0, 2));
}

#[test]
fn a_damaged_slot_is_corrupt_naming_its_rank() {
    let mut s = three();
    s[2].opaque[crate::slot::at::RECORD] ^= 4; // a stray write into a record word
    let e = err(check(&s, None));
    assert_eq!(e.kind, ErrorKind::Corrupt);
    assert!(e.message.contains("slots[2] fails its checksum"), "{e}");
}

#[test]
fn the_checksum_is_checked_before_the_marker_and_the_configuration() {
    let mut s = three();
    s[0] = Slot::marker(0, 5);
    s[1] = Slot::new(0, &v1_settings(1, 2), 9, 0, 0, [1, 1, 0, 0, 0, 0, 0, 0]);
    s[2].opaque[0] ^= 1;
    assert_eq!(err(check(&s, None)).kind, ErrorKind::Corrupt);
    s[2] = three()[2];
    let e = err(check(&s, None));
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert!(
        e.message
            .contains("records[0] is the invalid-request marker"),
        "{e}"
    );
}

#[test]
fn a_differing_setting_is_inconsistent_naming_two_ranks_and_the_field() {
    for (settings, field) in [
        (
            v1_settings(1, 2),
            "pad_policy differs: rank 0 has 0, rank 1 has 1",
        ),
        (
            v1_settings(0, 3),
            "num_ubatches (0: microbatching disabled) differs",
        ),
        (
            Settings {
                rules: 1,
                ..v1_settings(0, 2)
            },
            "rules differs: rank 0 has 0, rank 1 has 1",
        ),
    ] {
        let mut s = three();
        s[1] = Slot::new(0, &settings, 9, 0, 0, [1, 1, 0, 0, 0, 0, 0, 0]);
        let e = err(check(&s, None));
        assert_eq!(e.kind, ErrorKind::InconsistentRanks);
        assert!(e.message.contains(field), "{e}");
    }
    let mut s = three();
    s[2].opaque[crate::slot::at::LAYOUT] = 0x6470_0004;
    s[2].seal();
    let e = err(check(&s, None));
    assert!(e.message.contains("the slot layout differs"), "{e}");
}

#[test]
fn step_and_parent_ids_must_agree() {
    let mut s = three();
    s[2] = slot([1, 1, 0, 0, 0], 10, 0);
    let e = err(check(&s, None));
    assert_eq!(e.kind, ErrorKind::InconsistentRanks);
    assert!(
        e.message
            .contains("rank 0 passed step_id 9, rank 2 passed step_id 10"),
        "{e}"
    );
    let mut s = three();
    s[1] = Slot::new(0, &v1_settings(0, 2), 9, 4, 0, [1, 1, 0, 0, 0, 0, 0, 0]);
    let e = err(check(&s, None));
    assert!(e.message.contains("parent_step_id 4"), "{e}");
}

#[test]
fn a_dead_slot_is_not_read() {
    let mut s = three();
    s[1] = Slot::zeroed(); // garbage: fails every check if read
    let live = [1u8, 0, 1];
    let c = check(&s, Some(&live)).unwrap();
    assert_eq!((c.last_rank, c.arrival_skew_ns), (2, 1_500));
    let mut out = [0; 3];
    let d = decide_v1(&s, 0, Some(&live), &c, Some(&mut out)).unwrap();
    assert_eq!(out, [704, 704, 704]);
    assert!(d.should_ubatch);
}

#[test]
fn the_v1_decision_over_slots_is_the_decision_over_records() {
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = |m: u64| {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng % m) as i32
    };
    for case in 0..2_000 {
        let n = 1 + next(150) as usize;
        let pad_policy = next(2);
        let num_ubatches = 2 + next(3);
        let same_pad = next(2);
        let records: Vec<RankRecord> = (0..n)
            .map(|_| {
                let unpadded = next(3000);
                RankRecord::from_words([
                    unpadded,
                    unpadded + next(64),
                    next(2),
                    if same_pad == 1 { 1 } else { next(2) },
                    next(3),
                ])
            })
            .collect();
        let live: Vec<u8> = (0..n).map(|r| u8::from(r == 0 || next(5) != 0)).collect();
        let live = (case % 2 == 1).then_some(&live[..]);
        let slots: Vec<Slot> = records
            .iter()
            .map(|r| {
                let w = r.to_words();
                Slot::new(
                    0,
                    &v1_settings(pad_policy, num_ubatches),
                    0,
                    0,
                    0,
                    [w[0], w[1], w[2], w[3], w[4], 0, 0, 0],
                )
            })
            .collect();
        let options = DecideOptions {
            active_ranks: live,
            ..DecideOptions::new(pad_policy, num_ubatches)
        };
        let (mut want_out, mut got_out) = (vec![-7; n], vec![-7; n]);
        let want = decide_with_options(&records, 0, &options, Some(&mut want_out)).map(|d| d.0);
        let got =
            check(&slots, live).and_then(|c| decide_v1(&slots, 0, live, &c, Some(&mut got_out)));
        assert_eq!(got, want, "case {case}");
        assert_eq!(got_out, want_out, "case {case}");
    }
}
