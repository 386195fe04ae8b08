//! `rules::decide_with_options` (docs/ARCHITECTURE.md, "Semantics"): dead slots with vLLM V1's
//! `neutralize_dead_dp_columns` semantics (vllm/v1/worker/dp_utils.py: a dead column votes yes
//! on microbatching, takes no part in min(unpadded), max(padded), min(cudagraph_mode)), step
//! ids compared over live ranks, both pad policies; and a property: a decision with dead slots
//! full of garbage equals the decision over the live ranks alone.

use dpcoord::rules::{
    decide, decide_with_options, DecideOptions, Decision, RankRecord, DP_PAD_POLICY_EXPLICIT,
    DP_PAD_POLICY_WHEN_CUDAGRAPH,
};
use dpcoord::{Error, ErrorKind};
use proptest::prelude::*;

const SENTINEL: i32 = -777;

fn rec(unpadded: i32, padded: i32, ubatch: i32, dp_pad: i32, mode: i32) -> RankRecord {
    RankRecord::from_words([unpadded, padded, ubatch, dp_pad, mode])
}

/// Records no live rank could send: every field out of range.
const GARBAGE: RankRecord = RankRecord {
    num_tokens_unpadded: i32::MIN,
    num_tokens_padded: -5,
    should_attempt_ubatch: 7,
    should_attempt_dp_pad: -1,
    cudagraph_mode: 99,
};

fn opts<'a>(policy: i32, live: Option<&'a [u8]>, ids: Option<&'a [i64]>) -> DecideOptions<'a> {
    DecideOptions {
        pad_policy: policy,
        num_ubatches: 2,
        active_ranks: live,
        step_ids: ids,
    }
}

fn run(
    records: &[RankRecord],
    rank: i32,
    o: &DecideOptions<'_>,
) -> Result<(Decision, i64, Vec<i32>), Error> {
    let mut out = vec![SENTINEL; records.len()];
    match decide_with_options(records, rank, o, Some(&mut out)) {
        Ok((d, id)) => Ok((d, id, out)),
        Err(e) => {
            assert!(out.iter().all(|&v| v == SENTINEL), "out written on error");
            Err(e)
        }
    }
}

fn err(r: Result<(Decision, i64, Vec<i32>), Error>, kind: ErrorKind) -> String {
    match r {
        Err(e) if e.kind == kind => e.message,
        other => panic!("expected {kind:?}, got {other:?}"),
    }
}

#[test]
fn dead_slot_is_neutral_like_vllm() {
    // Rank 2 is dead and its slot holds garbage (what a dead rank's all-reduce column holds
    // before vLLM neutralizes it, or anything at all).
    let records = [
        rec(100, 128, 1, 1, 2),
        rec(60, 64, 1, 1, 1),
        GARBAGE,
        rec(90, 96, 1, 1, 2),
    ];
    let live = [1, 1, 0, 1];
    let (d, id, out) = run(
        &records,
        0,
        &opts(DP_PAD_POLICY_EXPLICIT, Some(&live), None),
    )
    .unwrap();
    // Dead votes yes: all live attempt, (128 / 2) * 1 = 64 >= 60 is an empty last ubatch.
    assert!(!d.should_ubatch);
    assert!(d.should_dp_pad);
    assert_eq!(d.synced_cudagraph_mode, 1);
    assert_eq!(d.max_num_tokens_padded, 128);
    assert_eq!(d.min_num_tokens_unpadded, 60);
    assert_eq!(d.num_tokens_after_padding_self, 128);
    assert_eq!(out, vec![128, 128, 128, 128]);
    assert_eq!(id, 0);
    // Not padding: the dead slot's entry is 0 (vLLM's zero-filled column).
    let records = [rec(10, 16, 0, 0, 0), GARBAGE, rec(20, 24, 0, 0, 0)];
    let live = [1, 0, 1];
    let (d, _, out) = run(
        &records,
        2,
        &opts(DP_PAD_POLICY_EXPLICIT, Some(&live), None),
    )
    .unwrap();
    assert!(!d.should_dp_pad);
    assert_eq!(out, vec![16, 0, 24]);
    assert_eq!(d.num_tokens_after_padding_self, 24);
}

#[test]
fn dead_slot_votes_yes_on_microbatching() {
    // The live ranks all attempt; the dead one's flag (0 here) is ignored.
    let records = [
        rec(600, 600, 1, 0, 0),
        rec(0, 0, 0, 0, 0),
        rec(700, 704, 1, 0, 0),
    ];
    let live = [1, 0, 1];
    let (d, _, out) = run(
        &records,
        0,
        &opts(DP_PAD_POLICY_EXPLICIT, Some(&live), None),
    )
    .unwrap();
    assert!(d.should_ubatch);
    assert!(d.should_dp_pad, "microbatching forces padding");
    assert_eq!(out, vec![704, 704, 704]);
    // With the same rank live, its 0 vetoes.
    let (d, _, _) = run(&records, 0, &opts(DP_PAD_POLICY_EXPLICIT, None, None)).unwrap();
    assert!(!d.should_ubatch);
}

#[test]
fn dead_slot_takes_no_part_in_min_mode_or_pad_comparison() {
    // WHEN_CUDAGRAPH: the dead slot's mode 0 would force NONE; dead, it does not.
    let records = [rec(8, 8, 0, 0, 2), rec(8, 8, 0, 1, 0), rec(9, 16, 0, 0, 1)];
    let live = [1, 0, 1];
    let (d, _, out) = run(
        &records,
        0,
        &opts(DP_PAD_POLICY_WHEN_CUDAGRAPH, Some(&live), None),
    )
    .unwrap();
    assert_eq!(d.synced_cudagraph_mode, 1);
    assert!(d.should_dp_pad);
    assert_eq!(out, vec![16, 16, 16]);
    // EXPLICIT: the dead slot's differing pad flag is not compared.
    let (d, _, out) = run(
        &records,
        2,
        &opts(DP_PAD_POLICY_EXPLICIT, Some(&live), None),
    )
    .unwrap();
    assert!(!d.should_dp_pad);
    assert_eq!(out, vec![8, 0, 16]);
    // Live, the same flags are inconsistent, naming the two ranks.
    let m = err(
        run(&records, 2, &opts(DP_PAD_POLICY_EXPLICIT, None, None)),
        ErrorKind::InconsistentRanks,
    );
    assert!(m.contains("rank 1 has 1, rank 0 has 0"), "{m}");
}

#[test]
fn dead_slot_records_are_never_validated() {
    for garbage in [
        GARBAGE,
        rec(5, 4, 0, 0, 0),
        rec(-1, -1, 0, 0, 0),
        rec(1, 1, 2, 0, 0),
        rec(1, 1, 0, 2, 0),
        rec(1, 1, 0, 0, -1),
        rec(i32::MAX, i32::MIN, i32::MIN, i32::MAX, i32::MIN),
    ] {
        // Dead slots first, last, in the middle, in runs, across the pass's blocks.
        let mut records = vec![rec(40, 48, 1, 1, 2); 37];
        let mut live = vec![1u8; 37];
        for r in [0, 5, 6, 7, 16, 31, 36] {
            records[r] = garbage;
            live[r] = 0;
        }
        let (d, _, out) = run(
            &records,
            1,
            &opts(DP_PAD_POLICY_EXPLICIT, Some(&live), None),
        )
        .unwrap_or_else(|e| panic!("{garbage:?}: {e}"));
        assert!(d.should_ubatch);
        assert_eq!(d.max_num_tokens_padded, 48);
        assert_eq!(d.min_num_tokens_unpadded, 40);
        assert!(out.iter().all(|&v| v == 48));
        // The same record in a live slot is refused, naming it.
        live[16] = 1;
        let m = err(
            run(
                &records,
                1,
                &opts(DP_PAD_POLICY_EXPLICIT, Some(&live), None),
            ),
            ErrorKind::InvalidArgument,
        );
        assert!(m.contains("records[16]"), "{m}");
    }
}

#[test]
fn calling_rank_must_be_live() {
    let records = [rec(1, 1, 0, 0, 0); 3];
    let m = err(
        run(
            &records,
            1,
            &opts(DP_PAD_POLICY_EXPLICIT, Some(&[1, 0, 1]), None),
        ),
        ErrorKind::InvalidArgument,
    );
    assert!(m.contains("active_ranks[1] = 0"), "{m}");
    assert!(m.contains("dp_rank = 1"), "{m}");
    let m = err(
        run(
            &records,
            0,
            &opts(DP_PAD_POLICY_EXPLICIT, Some(&[0, 0, 0]), None),
        ),
        ErrorKind::InvalidArgument,
    );
    assert!(m.contains("0 of 3 ranks are live"), "{m}");
}

#[test]
fn active_ranks_bytes_are_zero_or_one() {
    let records = [rec(1, 1, 0, 0, 0); 3];
    for byte in [2u8, 255] {
        let live = [1, 1, byte];
        let m = err(
            run(
                &records,
                0,
                &opts(DP_PAD_POLICY_EXPLICIT, Some(&live), None),
            ),
            ErrorKind::InvalidArgument,
        );
        assert!(m.contains(&format!("active_ranks[2] = {byte}")), "{m}");
    }
}

#[test]
fn option_arrays_must_have_dp_size_entries() {
    let records = [rec(1, 1, 0, 0, 0); 3];
    let m = err(
        run(
            &records,
            0,
            &opts(DP_PAD_POLICY_EXPLICIT, Some(&[1, 1]), None),
        ),
        ErrorKind::InvalidArgument,
    );
    assert!(
        m.contains("active_ranks holds 2 entries, dp_size = 3"),
        "{m}"
    );
    let m = err(
        run(
            &records,
            0,
            &opts(DP_PAD_POLICY_EXPLICIT, None, Some(&[1, 1, 1, 1])),
        ),
        ErrorKind::InvalidArgument,
    );
    assert!(m.contains("step_ids holds 4 entries, dp_size = 3"), "{m}");
}

#[test]
fn dp_size_one_with_options() {
    let records = [rec(7, 8, 1, 1, 2)];
    let (d, id, out) = run(
        &records,
        0,
        &opts(DP_PAD_POLICY_EXPLICIT, Some(&[1]), Some(&[42])),
    )
    .unwrap();
    assert!(!d.should_ubatch && !d.should_dp_pad && !d.has_num_tokens_after_padding);
    assert_eq!(d.synced_cudagraph_mode, 2);
    assert_eq!(
        (
            d.num_tokens_after_padding_self,
            d.max_num_tokens_padded,
            d.min_num_tokens_unpadded
        ),
        (8, 8, 7)
    );
    assert_eq!(id, 42);
    assert_eq!(out, vec![SENTINEL], "no array for dp_size 1");
}

#[test]
fn step_ids_agree_over_live_ranks() {
    let records = [rec(1, 1, 0, 0, 0); 4];
    let p = DP_PAD_POLICY_EXPLICIT;
    // All zero: unchecked.
    let (_, id, _) = run(&records, 0, &opts(p, None, Some(&[0, 0, 0, 0]))).unwrap();
    assert_eq!(id, 0);
    // All the same: the agreed id.
    let (_, id, _) = run(&records, 3, &opts(p, None, Some(&[9, 9, 9, 9]))).unwrap();
    assert_eq!(id, 9);
    // A rank a step ahead: inconsistent, naming two ranks and their ids.
    let m = err(
        run(&records, 0, &opts(p, None, Some(&[9, 9, 10, 9]))),
        ErrorKind::InconsistentRanks,
    );
    assert!(m.contains("rank 0 passed step_id 9"), "{m}");
    assert!(m.contains("rank 2 passed step_id 10"), "{m}");
    // One rank unchecked while another checks: inconsistent too.
    let m = err(
        run(&records, 0, &opts(p, None, Some(&[0, 5, 5, 5]))),
        ErrorKind::InconsistentRanks,
    );
    assert!(m.contains("rank 0 passed step_id 0"), "{m}");
    assert!(m.contains("rank 1 passed step_id 5"), "{m}");
    // A dead rank's id is not compared (nor its record read).
    let live = [1, 1, 0, 1];
    let mut with_dead = records;
    with_dead[2] = GARBAGE;
    let (_, id, _) = run(&with_dead, 0, &opts(p, Some(&live), Some(&[9, 9, -4, 9]))).unwrap();
    assert_eq!(id, 9);
    // A negative live id is invalid, named.
    let m = err(
        run(&records, 0, &opts(p, None, Some(&[3, -1, 3, 3]))),
        ErrorKind::InvalidArgument,
    );
    assert!(m.contains("step_ids[1] = -1"), "{m}");
}

#[test]
fn no_options_is_decide() {
    let records = [
        rec(600, 608, 1, 1, 2),
        rec(520, 520, 1, 1, 1),
        rec(900, 904, 1, 1, 2),
    ];
    for policy in [DP_PAD_POLICY_EXPLICIT, DP_PAD_POLICY_WHEN_CUDAGRAPH] {
        for rank in 0..3 {
            let mut a = vec![SENTINEL; 3];
            let mut b = vec![SENTINEL; 3];
            let plain = decide(&records, rank, policy, 2, Some(&mut a)).unwrap();
            let all_live = [1u8; 3];
            let (with, id) = decide_with_options(
                &records,
                rank,
                &opts(policy, Some(&all_live), None),
                Some(&mut b),
            )
            .unwrap();
            assert_eq!(plain, with);
            assert_eq!(a, b);
            assert_eq!(id, 0);
        }
    }
}

/// A valid live record.
fn live_record() -> impl Strategy<Value = RankRecord> {
    (0..=2_000i32, 0..=64i32, 0..=1i32, 0..=2i32).prop_map(|(u, extra, ub, mode)| RankRecord {
        num_tokens_unpadded: u,
        num_tokens_padded: u + extra,
        should_attempt_ubatch: ub,
        should_attempt_dp_pad: 0,
        cudagraph_mode: mode,
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1500, ..ProptestConfig::default() })]

    /// Dead slots full of anything decide exactly as the live ranks alone, and the dead
    /// slots' entries are max(padded) when padding, else 0.
    #[test]
    fn dead_slots_decide_as_the_live_ranks_alone(
        slots in prop::collection::vec(
            (prop_oneof![3 => Just(true), 1 => Just(false)], live_record(), any::<[i32; 5]>()),
            2..=70,
        ),
        pad in any::<bool>(),
        policy in 0..=1i32,
        n in 2..=4i32,
        pick in any::<prop::sample::Index>(),
    ) {
        let live_ranks: Vec<usize> = (0..slots.len()).filter(|&r| slots[r].0).collect();
        prop_assume!(live_ranks.len() >= 2);
        let records: Vec<RankRecord> = slots
            .iter()
            .map(|&(live, mut r, garbage)| {
                if live {
                    r.should_attempt_dp_pad = i32::from(pad);
                    r
                } else {
                    RankRecord::from_words(garbage)
                }
            })
            .collect();
        let live: Vec<u8> = slots.iter().map(|s| u8::from(s.0)).collect();
        let subset: Vec<RankRecord> = live_ranks.iter().map(|&r| records[r]).collect();
        let k = pick.index(live_ranks.len());
        let rank = live_ranks[k] as i32;

        let mut want_out = vec![SENTINEL; subset.len()];
        let want = decide(&subset, k as i32, policy, n, Some(&mut want_out)).unwrap();
        let mut out = vec![SENTINEL; records.len()];
        let o = DecideOptions { pad_policy: policy, num_ubatches: n, active_ranks: Some(&live), step_ids: None };
        let (got, _) = decide_with_options(&records, rank, &o, Some(&mut out)).unwrap();
        prop_assert_eq!(got, want);
        for (r, &v) in out.iter().enumerate() {
            let expected = match live_ranks.iter().position(|&l| l == r) {
                Some(j) => want_out[j],
                None if want.should_dp_pad => want.max_num_tokens_padded,
                None => 0,
            };
            prop_assert_eq!(v, expected, "rank {}", r);
        }
    }
}
