//! The host path on the slot (docs/ARCHITECTURE.md, "One slot on every wire"):
//! `dp_make_slot` and `dp_decide_slots` through the C ABI.

mod ffi_common;

use std::ptr::{null, null_mut};

use dpcoord::ffi::*;
use dpcoord::rules::RankRecord;
use ffi_common::*;

/// A request of `tokens` with microbatching and padding on (V1).
fn request(tokens: i32, padded: i32, step_id: i64) -> dp_batch_request {
    let mut r = std::mem::MaybeUninit::<dp_batch_request>::zeroed();
    dp_batch_request_init(r.as_mut_ptr());
    // SAFETY: initialised by dp_batch_request_init.
    let mut r = unsafe { r.assume_init() };
    r.num_tokens_unpadded = tokens;
    r.num_tokens_padded = padded;
    r.allow_microbatching = true;
    r.allow_dp_padding = true;
    r.uniform_decode = 0;
    r.cudagraph_mode = 2;
    r.ubatch.enabled = true;
    r.ubatch.prefill_token_threshold = 256;
    r.step_id = step_id;
    r
}

fn slot_of(req: &dp_batch_request) -> Slot {
    let mut s = Slot { opaque: [7; 24] };
    assert_eq!(
        dp_make_slot(req, null(), &mut s),
        dp_status::DP_OK,
        "{}",
        last_error()
    );
    s
}

fn decide(
    slots: &[Slot],
    rank: i32,
    opts: *const dp_decide_options,
) -> (dp_status, dp_batch_result, Vec<i32>) {
    let mut res = sentinel_result();
    let mut out = vec![SENTINEL; slots.len()];
    let status = dp_decide_slots(
        slots.as_ptr(),
        slots.len() as i32,
        rank,
        opts,
        out.as_mut_ptr(),
        &mut res,
    );
    (status, res, out)
}

#[test]
fn slots_decide_as_the_records_do_on_every_rank() {
    let reqs = [
        request(600, 640, 5),
        request(500, 512, 5),
        request(700, 704, 5),
    ];
    let slots: Vec<Slot> = reqs.iter().map(slot_of).collect();
    let records: Vec<RankRecord> = reqs
        .iter()
        .map(|q| {
            let mut r = SENTINEL_RECORD;
            assert_eq!(dp_make_record(q, &mut r), dp_status::DP_OK);
            r
        })
        .collect();
    for rank in 0..3 {
        let (status, res, out) = decide(&slots, rank, null());
        assert_eq!(status, dp_status::DP_OK, "{}", last_error());
        let mut want = sentinel_result();
        let mut want_out = vec![SENTINEL; 3];
        assert_eq!(
            dp_decide_batch(
                records.as_ptr(),
                3,
                rank,
                0,
                2,
                want_out.as_mut_ptr(),
                &mut want
            ),
            dp_status::DP_OK
        );
        assert_eq!(out, want_out);
        assert_eq!(out, [704, 704, 704]);
        assert!(res.should_ubatch && res.should_dp_pad);
        assert_eq!(
            (
                res.synced_cudagraph_mode,
                res.num_tokens_after_padding_self,
                res.num_ubatches
            ),
            (
                want.synced_cudagraph_mode,
                want.num_tokens_after_padding_self,
                2
            )
        );
        assert_eq!(res.step_id, 5, "the agreed step id");
        assert_eq!(res.num_tokens_after_padding, out.as_ptr());
        // Made in order: rank 2 arrived last.
        assert_eq!(res.last_rank, 2);
        assert!(res.arrival_skew_ns >= 0);
        assert_eq!((res.wait_ns, res.local, res.idle), (0, false, false));
    }
}

#[test]
fn a_refused_request_writes_the_marker_and_every_rank_names_it() {
    let mut bad = request(600, 640, 5);
    bad.cudagraph_mode = 7;
    let mut marker = Slot { opaque: [7; 24] };
    assert_fails(
        dp_make_slot(&bad, null(), &mut marker),
        dp_status::DP_ERR_INVALID_ARGUMENT,
        &["req->cudagraph_mode = 7"],
    );
    assert_ne!(marker.opaque, [7; 24], "the marker is written on failure");
    let slots = [
        slot_of(&request(600, 640, 5)),
        marker,
        slot_of(&request(8, 8, 5)),
    ];
    for rank in 0..3 {
        let (status, res, out) = decide(&slots, rank, null());
        assert_fails(
            status,
            dp_status::DP_ERR_INVALID_ARGUMENT,
            &["records[1] is the invalid-request marker"],
        );
        assert_eq!(res.dp_rank, SENTINEL, "result written on failure");
        assert_eq!(out, [SENTINEL; 3]);
    }
    // An unreadable request writes the marker too; a NULL `out` writes nothing.
    let mut s = Slot { opaque: [7; 24] };
    assert_fails(
        dp_make_slot(null(), null(), &mut s),
        dp_status::DP_ERR_INVALID_ARGUMENT,
        &["req is NULL"],
    );
    let (status, _, _) = decide(&[slot_of(&request(8, 8, 5)), s], 0, null());
    assert_fails(
        status,
        dp_status::DP_ERR_INVALID_ARGUMENT,
        &["records[1] is the invalid-request marker"],
    );
    assert_fails(
        dp_make_slot(&request(8, 8, 5), null(), null_mut()),
        dp_status::DP_ERR_INVALID_ARGUMENT,
        &["out is NULL"],
    );
}

#[test]
fn a_damaged_slot_is_corrupt_on_every_rank() {
    let mut slots = [
        slot_of(&request(600, 640, 5)),
        slot_of(&request(500, 512, 5)),
    ];
    slots[1].opaque[16] = slots[1].opaque[16].wrapping_add(32); // a stray write: padded + 32
    for rank in 0..2 {
        let (status, res, _) = decide(&slots, rank, null());
        assert_fails(
            status,
            dp_status::DP_ERR_CORRUPT,
            &["slots[1] fails its checksum"],
        );
        assert_eq!(res.dp_rank, SENTINEL);
    }
}

#[test]
fn ranks_with_another_pad_policy_or_num_ubatches_fail_together() {
    let mut other = request(500, 512, 5);
    other.pad_policy = DP_PAD_POLICY_WHEN_CUDAGRAPH;
    let slots = [slot_of(&request(600, 640, 5)), slot_of(&other)];
    for rank in 0..2 {
        let (status, _, _) = decide(&slots, rank, null());
        assert_fails(
            status,
            dp_status::DP_ERR_INCONSISTENT_RANKS,
            &["pad_policy differs: rank 0 has 0, rank 1 has 1"],
        );
    }
    let mut other = request(500, 512, 5);
    other.ubatch.num_ubatches = 3;
    let slots = [slot_of(&request(600, 640, 5)), slot_of(&other)];
    let (status, _, _) = decide(&slots, 0, null());
    assert_fails(
        status,
        dp_status::DP_ERR_INCONSISTENT_RANKS,
        &["num_ubatches"],
    );
    let mut skipped = request(500, 512, 6);
    skipped.parent_step_id = 0;
    let slots = [slot_of(&request(600, 640, 5)), slot_of(&skipped)];
    let (status, _, _) = decide(&slots, 1, null());
    assert_fails(
        status,
        dp_status::DP_ERR_INCONSISTENT_RANKS,
        &["rank 0 passed step_id 5, rank 1 passed step_id 6"],
    );
}

#[test]
fn options_give_the_live_ranks_and_never_the_step_ids() {
    let mut dead = Slot {
        opaque: [0xffff_ffff; 24],
    };
    dead.opaque[0] = 1;
    let slots = [
        slot_of(&request(600, 640, 5)),
        dead,
        slot_of(&request(500, 512, 5)),
    ];
    let live = [1u8, 0, 1];
    let mut opts = std::mem::MaybeUninit::<dp_decide_options>::zeroed();
    dp_decide_options_init(opts.as_mut_ptr());
    // SAFETY: initialised by dp_decide_options_init.
    let mut opts = unsafe { opts.assume_init() };
    opts.active_ranks = live.as_ptr();
    let (status, res, out) = decide(&slots, 2, &opts);
    assert_eq!(status, dp_status::DP_OK, "{}", last_error());
    assert_eq!(out, [640, 640, 640], "a dead slot is padded too");
    assert_eq!(res.last_rank, 2);
    let ids = [5i64; 3];
    opts.step_ids = ids.as_ptr();
    let (status, _, _) = decide(&slots, 2, &opts);
    assert_fails(
        status,
        dp_status::DP_ERR_INVALID_ARGUMENT,
        &["opts->step_ids must be NULL"],
    );
}

#[test]
fn bad_arguments_are_named_and_nothing_is_written() {
    let slots = [
        slot_of(&request(600, 640, 5)),
        slot_of(&request(500, 512, 5)),
    ];
    let (status, res, _) = decide(&slots, 2, null());
    assert_fails(status, dp_status::DP_ERR_INVALID_ARGUMENT, &["dp_rank = 2"]);
    assert_eq!(res.dp_rank, SENTINEL);
    let mut res = sentinel_result();
    assert_fails(
        dp_decide_slots(null(), 2, 0, null(), null_mut(), &mut res),
        dp_status::DP_ERR_INVALID_ARGUMENT,
        &["slots is NULL"],
    );
    let mut overlapping = slots;
    let (status, _, _) = {
        let mut res = sentinel_result();
        let out = overlapping.as_mut_ptr().cast::<i32>();
        let status = dp_decide_slots(overlapping.as_ptr(), 2, 0, null(), out, &mut res);
        (status, res, ())
    };
    assert_fails(
        status,
        dp_status::DP_ERR_INVALID_ARGUMENT,
        &["overlaps slots"],
    );
}
