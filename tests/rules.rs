//! One test per rule of docs/ARCHITECTURE.md ("Semantics"), through the Rust API of `dpcoord::rules`.
//!
//! `make_record`: threshold selection, padded default, validation (field and value named).
//! `decide`: early exit at dp_size 1, CUDA-graph minimum, the last-microbatch-empty rule at its
//! exact boundary, both pad policies, microbatching forcing padding, the per-rank array, and
//! every invalid argument (with the output array left untouched).

use dpcoord::rules::{decide, make_record, Decision, RankRecord, Request, UbatchConfig};
use dpcoord::{Error, ErrorKind};

/// What an output array holds before a call; any entry still equal to it was not written.
const SENTINEL: i32 = -777;

const EXPLICIT: i32 = 0;
const WHEN_CUDAGRAPH: i32 = 1;

fn rec(unpadded: i32, padded: i32, ubatch: i32, dp_pad: i32, mode: i32) -> RankRecord {
    RankRecord::from_words([unpadded, padded, ubatch, dp_pad, mode])
}

/// A request that attempts microbatching whenever the token count reaches the threshold.
fn ubatch_request(unpadded: i32, uniform_decode: i32) -> Request {
    Request {
        num_tokens_unpadded: unpadded,
        allow_microbatching: true,
        uniform_decode,
        ubatch: UbatchConfig {
            enabled: true,
            ..UbatchConfig::default()
        },
        ..Request::default()
    }
}

fn attempts(req: &Request) -> i32 {
    make_record(req)
        .expect("a valid request")
        .should_attempt_ubatch
}

/// The message of an `InvalidArgument`, failing the test on anything else.
fn invalid_message<T: std::fmt::Debug>(result: Result<T, Error>) -> String {
    match result {
        Err(Error {
            kind: ErrorKind::InvalidArgument,
            message,
        }) => message,
        other => panic!("expected InvalidArgument, got {other:?}"),
    }
}

fn assert_names(message: &str, needles: &[&str]) {
    for needle in needles {
        assert!(
            message.contains(needle),
            "message {message:?} does not contain {needle:?}"
        );
    }
}

/// `decide` with a sentinel-filled array; checks the array is untouched on failure.
fn decide_all(
    records: &[RankRecord],
    dp_rank: i32,
    policy: i32,
    n: i32,
) -> (Result<Decision, Error>, Vec<i32>) {
    let mut out = vec![SENTINEL; records.len()];
    let result = decide(records, dp_rank, policy, n, Some(&mut out));
    if result.is_err() {
        assert!(
            out.iter().all(|&v| v == SENTINEL),
            "array written on error: {out:?}"
        );
    }
    // The scalars do not depend on whether an array is passed.
    assert_eq!(result, decide(records, dp_rank, policy, n, None));
    (result, out)
}

fn decide_ok(records: &[RankRecord], dp_rank: i32, policy: i32, n: i32) -> (Decision, Vec<i32>) {
    let (result, out) = decide_all(records, dp_rank, policy, n);
    (result.expect("a valid decision"), out)
}

// ---------------------------------------------------------------------------------------
// make_record
// ---------------------------------------------------------------------------------------

#[test]
fn request_defaults_match_the_design() {
    let d = Request::default();
    assert_eq!(d.num_tokens_padded, -1);
    assert!(!d.allow_microbatching);
    assert!(!d.allow_dp_padding);
    assert_eq!(d.uniform_decode, -1);
    assert_eq!(d.cudagraph_mode, 0);
    assert_eq!(d.pad_policy, 0);
    assert_eq!(d.timeout_ms, 0);
    assert_eq!(
        d.ubatch,
        UbatchConfig {
            enabled: false,
            num_ubatches: 2,
            decode_token_threshold: 32,
            prefill_token_threshold: 512,
        }
    );
    assert_eq!(make_record(&d), Ok(rec(0, 0, 0, 0, 0)));
}

#[test]
fn record_is_five_int32_in_wire_order() {
    assert_eq!(std::mem::size_of::<RankRecord>(), 20);
    assert_eq!(std::mem::align_of::<RankRecord>(), 4);
    let r = rec(1, 2, 3, 4, 5);
    // SAFETY: RankRecord is repr(C) with five i32 fields and no padding (size 20 pinned above).
    let words: [i32; 5] = unsafe { std::mem::transmute(r) };
    assert_eq!(words, [1, 2, 3, 4, 5]);
}

#[test]
fn uniform_decode_uses_decode_threshold_at_its_edge() {
    // Default decode threshold 32: == threshold attempts, threshold - 1 does not.
    assert_eq!(attempts(&ubatch_request(32, 1)), 1);
    assert_eq!(attempts(&ubatch_request(31, 1)), 0);
    // Between the thresholds: decode attempts, prefill does not.
    assert_eq!(attempts(&ubatch_request(100, 1)), 1);
}

#[test]
fn prefill_uses_prefill_threshold_at_its_edge() {
    assert_eq!(attempts(&ubatch_request(512, 0)), 1);
    assert_eq!(attempts(&ubatch_request(511, 0)), 0);
    assert_eq!(attempts(&ubatch_request(100, 0)), 0);
}

#[test]
fn custom_thresholds_select_by_uniform_decode() {
    let mut req = ubatch_request(0, 1);
    req.ubatch.decode_token_threshold = 700;
    req.ubatch.prefill_token_threshold = 5;
    for (unpadded, uniform, want) in [(700, 1, 1), (699, 1, 0), (5, 0, 1), (4, 0, 0), (699, 0, 1)] {
        req.num_tokens_unpadded = unpadded;
        req.uniform_decode = uniform;
        assert_eq!(
            attempts(&req),
            want,
            "unpadded {unpadded} uniform {uniform}"
        );
    }
    // The lowest legal threshold is num_ubatches (0.2): 2 tokens attempt, 1 does not.
    req.ubatch.decode_token_threshold = 2;
    req.num_tokens_unpadded = 2;
    req.uniform_decode = 1;
    assert_eq!(attempts(&req), 1);
    req.num_tokens_unpadded = 1;
    assert_eq!(attempts(&req), 0);
    // And i32::MAX tokens reach an i32::MAX threshold.
    req.ubatch.prefill_token_threshold = i32::MAX;
    req.uniform_decode = 0;
    req.num_tokens_unpadded = i32::MAX;
    assert_eq!(attempts(&req), 1);
    req.num_tokens_unpadded = i32::MAX - 1;
    assert_eq!(attempts(&req), 0);
}

#[test]
fn padded_minus_one_defaults_to_unpadded() {
    let req = Request {
        num_tokens_unpadded: 37,
        num_tokens_padded: -1,
        ..Request::default()
    };
    assert_eq!(make_record(&req), Ok(rec(37, 37, 0, 0, 0)));
    let req = Request {
        num_tokens_padded: 40,
        ..req
    };
    assert_eq!(make_record(&req), Ok(rec(37, 40, 0, 0, 0)));
    let req = Request {
        num_tokens_padded: 37,
        ..req
    };
    assert_eq!(make_record(&req), Ok(rec(37, 37, 0, 0, 0)));
}

#[test]
fn flags_and_mode_are_copied_into_the_record() {
    for mode in 0..=2 {
        for pad in [false, true] {
            let req = Request {
                num_tokens_unpadded: 9,
                num_tokens_padded: 16,
                allow_dp_padding: pad,
                cudagraph_mode: mode,
                ..Request::default()
            };
            assert_eq!(make_record(&req), Ok(rec(9, 16, 0, i32::from(pad), mode)));
        }
    }
}

#[test]
fn disabled_ubatch_ignores_its_config_and_never_attempts() {
    let mut req = ubatch_request(100_000, 1);
    req.ubatch = UbatchConfig {
        enabled: false,
        num_ubatches: -5,
        decode_token_threshold: -1,
        prefill_token_threshold: i32::MIN,
    };
    assert_eq!(make_record(&req), Ok(rec(100_000, 100_000, 0, 0, 0)));
    req.ubatch.num_ubatches = 0;
    req.uniform_decode = 0;
    assert_eq!(attempts(&req), 0);
}

#[test]
fn allow_microbatching_false_never_attempts() {
    let mut req = ubatch_request(100_000, 1);
    req.allow_microbatching = false;
    assert_eq!(attempts(&req), 0);
    req.uniform_decode = 0;
    assert_eq!(attempts(&req), 0);
    // -1 (unknown) is legal here, and attempts nothing.
    req.uniform_decode = -1;
    assert_eq!(attempts(&req), 0);
}

#[test]
fn valid_field_edges_are_accepted() {
    let base = ubatch_request(0, 0);
    let cases: Vec<Request> = vec![
        Request {
            cudagraph_mode: 2,
            ..base
        },
        Request {
            pad_policy: 1,
            ..base
        },
        Request {
            timeout_ms: i32::MAX,
            ..base
        },
        Request {
            num_tokens_unpadded: i32::MAX,
            num_tokens_padded: i32::MAX,
            ..base
        },
        Request {
            ubatch: UbatchConfig {
                enabled: true,
                num_ubatches: 2,
                decode_token_threshold: 2,
                prefill_token_threshold: 2,
            },
            ..base
        },
        Request {
            ubatch: UbatchConfig {
                enabled: true,
                num_ubatches: 4,
                decode_token_threshold: 4,
                prefill_token_threshold: 4,
            },
            ..base
        },
        Request {
            ubatch: UbatchConfig {
                enabled: true,
                num_ubatches: i32::MAX,
                decode_token_threshold: i32::MAX,
                prefill_token_threshold: i32::MAX,
            },
            ..base
        },
    ];
    for req in cases {
        assert!(make_record(&req).is_ok(), "{req:?}");
    }
}

/// Each case: the request, and the texts its error message must contain.
fn invalid_request_cases() -> Vec<(Request, Vec<&'static str>)> {
    let base = ubatch_request(10, 0);
    let with_ubatch = |f: fn(&mut UbatchConfig)| {
        let mut r = base;
        f(&mut r.ubatch);
        r
    };
    vec![
        (
            Request {
                num_tokens_unpadded: -1,
                ..base
            },
            vec!["num_tokens_unpadded = -1"],
        ),
        (
            Request {
                num_tokens_unpadded: i32::MIN,
                num_tokens_padded: -1,
                ..base
            },
            vec!["num_tokens_unpadded = -2147483648"],
        ),
        (
            Request {
                num_tokens_padded: 9,
                ..base
            },
            vec!["num_tokens_padded = 9", "10"],
        ),
        (
            Request {
                num_tokens_padded: -2,
                ..base
            },
            vec!["num_tokens_padded = -2"],
        ),
        (
            Request {
                num_tokens_unpadded: 0,
                num_tokens_padded: i32::MIN,
                ..base
            },
            vec!["num_tokens_padded = -2147483648"],
        ),
        (
            Request {
                uniform_decode: 2,
                ..base
            },
            vec!["uniform_decode = 2"],
        ),
        (
            Request {
                uniform_decode: -2,
                ..base
            },
            vec!["uniform_decode = -2"],
        ),
        (
            Request {
                uniform_decode: -1,
                ..base
            },
            vec!["uniform_decode = -1", "allow_microbatching"],
        ),
        (
            Request {
                cudagraph_mode: 3,
                ..base
            },
            vec!["cudagraph_mode = 3"],
        ),
        (
            Request {
                cudagraph_mode: -1,
                ..base
            },
            vec!["cudagraph_mode = -1"],
        ),
        (
            Request {
                pad_policy: 2,
                ..base
            },
            vec!["pad_policy = 2"],
        ),
        (
            Request {
                pad_policy: -1,
                ..base
            },
            vec!["pad_policy = -1"],
        ),
        (
            with_ubatch(|u| u.num_ubatches = 1),
            vec!["num_ubatches = 1"],
        ),
        (
            with_ubatch(|u| u.num_ubatches = 0),
            vec!["num_ubatches = 0"],
        ),
        (
            with_ubatch(|u| u.num_ubatches = i32::MIN),
            vec!["num_ubatches = -2147483648"],
        ),
        (
            with_ubatch(|u| u.decode_token_threshold = -1),
            vec!["decode_token_threshold = -1"],
        ),
        (
            Request {
                timeout_ms: -1,
                ..base
            },
            vec!["timeout_ms = -1"],
        ),
        (
            Request {
                timeout_ms: i32::MIN,
                ..base
            },
            vec!["timeout_ms = -2147483648"],
        ),
    ]
}

#[test]
fn every_invalid_request_field_is_named_with_its_value() {
    for (req, needles) in invalid_request_cases() {
        let message = invalid_message(make_record(&req));
        assert_names(&message, &needles);
        // The Display form carries the same message.
        assert_eq!(
            make_record(&req).unwrap_err().to_string(),
            format!("invalid argument: {message}")
        );
    }
}

#[test]
fn ubatch_config_is_validated_even_without_allow_microbatching() {
    // `enabled` decides whether the config is checked, not `allow_microbatching`.
    let mut req = ubatch_request(10, 0);
    req.allow_microbatching = false;
    req.ubatch.num_ubatches = 1;
    assert_names(&invalid_message(make_record(&req)), &["num_ubatches = 1"]);
}

// ---------------------------------------------------------------------------------------
// decide: dp_size 1
// ---------------------------------------------------------------------------------------

#[test]
fn dp_size_one_exits_early_and_leaves_the_array_alone() {
    // Everything that would microbatch and pad with more ranks.
    let records = [rec(300, 320, 1, 1, 2)];
    for policy in [EXPLICIT, WHEN_CUDAGRAPH] {
        for n in [2, 3, 7] {
            let (d, out) = decide_ok(&records, 0, policy, n);
            assert_eq!(
                d,
                Decision {
                    should_ubatch: false,
                    should_dp_pad: false,
                    has_num_tokens_after_padding: false,
                    synced_cudagraph_mode: 2,
                    num_tokens_after_padding_self: 320,
                    max_num_tokens_padded: 320,
                    min_num_tokens_unpadded: 300,
                    num_ubatches: 1,
                }
            );
            assert_eq!(out, vec![SENTINEL]);
        }
    }
    let (d, _) = decide_ok(&[rec(0, 0, 0, 0, 1)], 0, WHEN_CUDAGRAPH, 2);
    assert_eq!(d.synced_cudagraph_mode, 1);
    assert!(!d.should_dp_pad);
}

#[test]
fn dp_size_one_still_validates() {
    let (r, _) = decide_all(&[rec(-1, 0, 0, 0, 0)], 0, EXPLICIT, 2);
    assert_names(
        &invalid_message(r),
        &["records[0].num_tokens_unpadded = -1"],
    );
    let (r, _) = decide_all(&[rec(1, 1, 0, 0, 0)], 1, EXPLICIT, 2);
    assert_names(&invalid_message(r), &["dp_rank = 1"]);
    let (r, _) = decide_all(&[rec(1, 1, 0, 0, 0)], 0, 2, 2);
    assert_names(&invalid_message(r), &["pad_policy = 2"]);
    let (r, _) = decide_all(&[rec(1, 1, 0, 0, 0)], 0, EXPLICIT, 1);
    assert_names(&invalid_message(r), &["num_ubatches = 1"]);
}

// ---------------------------------------------------------------------------------------
// decide: CUDA-graph mode
// ---------------------------------------------------------------------------------------

#[test]
fn synced_cudagraph_mode_is_the_minimum() {
    for (modes, want) in [
        (vec![2, 2], 2),
        (vec![2, 1, 2], 1),
        (vec![1, 2, 0, 2], 0),
        (vec![0, 0], 0),
        (vec![2, 2, 2, 2, 2, 2, 2, 1], 1),
    ] {
        let records: Vec<_> = modes.iter().map(|&m| rec(4, 4, 0, 0, m)).collect();
        for rank in 0..records.len() as i32 {
            let (d, _) = decide_ok(&records, rank, EXPLICIT, 2);
            assert_eq!(d.synced_cudagraph_mode, want, "modes {modes:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------
// decide: microbatching
// ---------------------------------------------------------------------------------------

/// Two ranks, both attempting: one with `min_unpadded` tokens, one padded to `max_padded`.
fn ubatch_pair(min_unpadded: i32, max_padded: i32) -> [RankRecord; 2] {
    [
        rec(min_unpadded, min_unpadded, 1, 0, 0),
        rec(min_unpadded, max_padded, 1, 0, 0),
    ]
}

#[test]
fn last_ubatch_empty_boundary_for_n_2_3_4_7() {
    for n in [2, 3, 4, 7] {
        // max_padded not a multiple of n, so integer division matters: (10n + n - 1) / n = 10.
        let max_padded = 10 * n + (n - 1);
        let boundary = 10 * (n - 1);
        for policy in [EXPLICIT, WHEN_CUDAGRAPH] {
            // (max / n) * (n - 1) == min: the last microbatch is empty, no microbatching.
            let (d, _) = decide_ok(&ubatch_pair(boundary, max_padded), 0, policy, n);
            assert!(!d.should_ubatch, "n {n}: min == boundary must not ubatch");
            assert_eq!(d.max_num_tokens_padded, max_padded);
            assert_eq!(d.min_num_tokens_unpadded, boundary);
            // One more token on the smallest rank: microbatch.
            let (d, _) = decide_ok(&ubatch_pair(boundary + 1, max_padded), 0, policy, n);
            assert!(d.should_ubatch, "n {n}: min == boundary + 1 must ubatch");
            // One fewer: empty again.
            let (d, _) = decide_ok(&ubatch_pair(boundary - 1, max_padded), 0, policy, n);
            assert!(
                !d.should_ubatch,
                "n {n}: min == boundary - 1 must not ubatch"
            );
        }
    }
}

#[test]
fn n_2_is_vllms_half_rule() {
    // vLLM: last_ubatch_empty = max_padded // 2 >= min_unpadded.
    for max_padded in [0, 1, 2, 3, 64, 65, 511, 512] {
        for min_unpadded in 0..=max_padded {
            let (d, _) = decide_ok(&ubatch_pair(min_unpadded, max_padded), 1, EXPLICIT, 2);
            assert_eq!(
                d.should_ubatch,
                max_padded / 2 < min_unpadded,
                "max {max_padded} min {min_unpadded}"
            );
        }
    }
}

#[test]
fn max_uses_padded_and_min_uses_unpadded() {
    // Rank 1 has the fewest unpadded tokens but the most padded ones: the rule compares the
    // largest padded count with the smallest unpadded count.
    let records = [rec(60, 64, 1, 0, 0), rec(10, 128, 1, 0, 0)];
    let (d, _) = decide_ok(&records, 0, EXPLICIT, 2);
    assert_eq!(d.max_num_tokens_padded, 128);
    assert_eq!(d.min_num_tokens_unpadded, 10);
    // 128 / 2 = 64 >= 10: empty.
    assert!(!d.should_ubatch);
    let records = [rec(65, 65, 1, 0, 0), rec(100, 128, 1, 0, 0)];
    let (d, _) = decide_ok(&records, 0, EXPLICIT, 2);
    assert!(d.should_ubatch);
}

#[test]
fn one_rank_not_attempting_blocks_microbatching() {
    for absent in 0..4 {
        let records: Vec<_> = (0..4)
            .map(|r| rec(1000, 1000, i32::from(r != absent), 1, 2))
            .collect();
        let (d, _) = decide_ok(&records, 0, EXPLICIT, 2);
        assert!(!d.should_ubatch, "rank {absent} did not attempt");
    }
    let records = vec![rec(1000, 1000, 1, 1, 2); 4];
    assert!(decide_ok(&records, 3, EXPLICIT, 2).0.should_ubatch);
}

// ---------------------------------------------------------------------------------------
// decide: padding policies
// ---------------------------------------------------------------------------------------

#[test]
fn explicit_all_pad_and_none_pad() {
    let padded = [rec(3, 8, 0, 1, 0), rec(5, 16, 0, 1, 0), rec(7, 8, 0, 1, 0)];
    let (d, out) = decide_ok(&padded, 0, EXPLICIT, 2);
    assert!(d.should_dp_pad);
    assert_eq!(out, vec![16, 16, 16]);
    assert_eq!(d.num_tokens_after_padding_self, 16);

    let unpadded = [rec(3, 8, 0, 0, 2), rec(5, 16, 0, 0, 2), rec(7, 8, 0, 0, 2)];
    let (d, out) = decide_ok(&unpadded, 2, EXPLICIT, 2);
    assert!(!d.should_dp_pad);
    assert_eq!(out, vec![8, 16, 8]);
    assert_eq!(d.num_tokens_after_padding_self, 8);
    assert!(d.has_num_tokens_after_padding);
}

#[test]
fn explicit_mixed_flags_fail_every_rank_naming_both_ranks() {
    for (flags, pad_rank, no_pad_rank) in [
        (vec![1, 0], 0, 1),
        (vec![0, 1], 1, 0),
        (vec![0, 0, 1, 0], 2, 0),
        (vec![1, 1, 1, 0], 0, 3),
    ] {
        let records: Vec<_> = flags.iter().map(|&f| rec(5, 5, 1, f, 2)).collect();
        for rank in 0..records.len() as i32 {
            let (r, _) = decide_all(&records, rank, EXPLICIT, 2);
            match r {
                Err(Error {
                    kind: ErrorKind::InconsistentRanks,
                    message,
                }) => {
                    assert_names(
                        &message,
                        &[
                            &format!("rank {pad_rank} has 1"),
                            &format!("rank {no_pad_rank} has 0"),
                        ],
                    );
                }
                other => panic!("flags {flags:?}: expected InconsistentRanks, got {other:?}"),
            }
        }
    }
}

#[test]
fn invalid_records_take_precedence_over_inconsistent_flags() {
    let records = [rec(5, 5, 0, 1, 0), rec(5, 5, 0, 0, 9)];
    let (r, _) = decide_all(&records, 0, EXPLICIT, 2);
    assert_names(&invalid_message(r), &["records[1].cudagraph_mode = 9"]);
}

#[test]
fn when_cudagraph_ignores_pad_flags() {
    // Mixed flags are no error under WHEN_CUDAGRAPH; the mode alone decides.
    let mixed = |mode_last: i32| {
        [
            rec(3, 4, 0, 1, 2),
            rec(5, 9, 0, 0, 1),
            rec(1, 2, 0, 1, mode_last),
        ]
    };
    let (d, out) = decide_ok(&mixed(2), 1, WHEN_CUDAGRAPH, 2);
    assert!(d.should_dp_pad);
    assert_eq!(d.synced_cudagraph_mode, 1);
    assert_eq!(out, vec![9, 9, 9]);
    let (d, out) = decide_ok(&mixed(0), 1, WHEN_CUDAGRAPH, 2);
    assert!(!d.should_dp_pad);
    assert_eq!(out, vec![4, 9, 2]);
    // All flags 1 but mode NONE somewhere: no padding.
    let all = [rec(3, 4, 0, 1, 2), rec(5, 9, 0, 1, 0)];
    let (d, out) = decide_ok(&all, 0, WHEN_CUDAGRAPH, 2);
    assert!(!d.should_dp_pad);
    assert_eq!(out, vec![4, 9]);
    assert_eq!(d.num_tokens_after_padding_self, 4);
}

#[test]
fn microbatching_forces_padding_under_both_policies() {
    // EXPLICIT, nobody asked for padding; WHEN_CUDAGRAPH, mode NONE.
    let records = [rec(300, 310, 1, 0, 0), rec(400, 420, 1, 0, 0)];
    for policy in [EXPLICIT, WHEN_CUDAGRAPH] {
        let (d, out) = decide_ok(&records, 0, policy, 2);
        assert!(d.should_ubatch);
        assert!(d.should_dp_pad);
        assert_eq!(out, vec![420, 420]);
        assert_eq!(d.num_tokens_after_padding_self, 420);
    }
}

#[test]
fn per_rank_array_and_self_entry() {
    let records: Vec<_> = (0..16)
        .map(|r| rec(r * 3, r * 3 + r % 4, 0, 0, 1))
        .collect();
    let unpadded_out: Vec<i32> = records.iter().map(|r| r.num_tokens_padded).collect();
    for rank in 0..16 {
        let (d, out) = decide_ok(&records, rank, EXPLICIT, 2);
        assert_eq!(out, unpadded_out);
        assert_eq!(d.num_tokens_after_padding_self, out[rank as usize]);
        assert_eq!(d.max_num_tokens_padded, 48);
        assert_eq!(d.min_num_tokens_unpadded, 0);
        let (d, out) = decide_ok(&records, rank, WHEN_CUDAGRAPH, 2);
        assert_eq!(out, vec![48; 16]);
        assert_eq!(d.num_tokens_after_padding_self, 48);
    }
}

#[test]
fn array_is_only_written_up_to_its_length() {
    // `decide` writes through the slice it is given; a longer slice keeps its tail.
    let records = [rec(1, 2, 0, 0, 0), rec(3, 4, 0, 0, 0)];
    let mut out = [SENTINEL; 4];
    decide(&records, 0, EXPLICIT, 2, Some(&mut out[..2])).unwrap();
    assert_eq!(out, [2, 4, SENTINEL, SENTINEL]);
}

// ---------------------------------------------------------------------------------------
// decide: invalid arguments
// ---------------------------------------------------------------------------------------

#[test]
fn every_invalid_record_field_is_named_with_rank_and_value() {
    let good = rec(10, 12, 1, 1, 2);
    let cases: Vec<(RankRecord, &str)> = vec![
        (rec(-1, 12, 1, 1, 2), "records[2].num_tokens_unpadded = -1"),
        (
            rec(i32::MIN, 0, 1, 1, 2),
            "records[2].num_tokens_unpadded = -2147483648",
        ),
        (rec(10, 9, 1, 1, 2), "records[2].num_tokens_padded = 9"),
        // A record has no -1 default: the local step resolved it.
        (rec(0, -1, 1, 1, 2), "records[2].num_tokens_padded = -1"),
        (rec(10, 12, 2, 1, 2), "records[2].should_attempt_ubatch = 2"),
        (
            rec(10, 12, -1, 1, 2),
            "records[2].should_attempt_ubatch = -1",
        ),
        (rec(10, 12, 1, 2, 2), "records[2].should_attempt_dp_pad = 2"),
        (
            rec(10, 12, 1, -1, 2),
            "records[2].should_attempt_dp_pad = -1",
        ),
        (rec(10, 12, 1, 1, 3), "records[2].cudagraph_mode = 3"),
        (rec(10, 12, 1, 1, -1), "records[2].cudagraph_mode = -1"),
        (
            rec(10, 12, 1, 1, i32::MAX),
            "records[2].cudagraph_mode = 2147483647",
        ),
    ];
    for (bad, needle) in cases {
        let mut records = vec![good; 4];
        records[2] = bad;
        for policy in [EXPLICIT, WHEN_CUDAGRAPH] {
            for rank in 0..4 {
                let (r, _) = decide_all(&records, rank, policy, 2);
                assert_names(&invalid_message(r), &[needle]);
            }
        }
    }
}

#[test]
fn dp_rank_out_of_range() {
    let records = vec![rec(1, 1, 0, 0, 0); 3];
    for rank in [-1, 3, 4, i32::MAX, i32::MIN] {
        let (r, _) = decide_all(&records, rank, EXPLICIT, 2);
        assert_names(
            &invalid_message(r),
            &[&format!("dp_rank = {rank}"), "dp_size = 3"],
        );
    }
}

#[test]
fn empty_records_are_dp_size_zero() {
    let (r, _) = decide_all(&[], 0, EXPLICIT, 2);
    assert_names(&invalid_message(r), &["dp_size = 0"]);
}

#[test]
fn unknown_pad_policy() {
    let records = vec![rec(1, 1, 0, 0, 0); 2];
    for policy in [2, -1, i32::MAX, i32::MIN] {
        let (r, _) = decide_all(&records, 0, policy, 2);
        assert_names(&invalid_message(r), &[&format!("pad_policy = {policy}")]);
    }
}

#[test]
fn num_ubatches_below_two() {
    let records = vec![rec(1000, 1000, 1, 1, 2); 2];
    for n in [1, 0, -1, i32::MIN] {
        for policy in [EXPLICIT, WHEN_CUDAGRAPH] {
            let (r, _) = decide_all(&records, 0, policy, n);
            assert_names(&invalid_message(r), &[&format!("num_ubatches = {n}")]);
        }
    }
}

#[test]
fn array_untouched_on_every_error() {
    // decide_all asserts the sentinel survives; here every error kind once, with a pad-worthy
    // set of records so that a premature write would show.
    let good = vec![rec(5, 8, 1, 1, 2); 3];
    let mut bad_record = good.clone();
    bad_record[1].num_tokens_padded = 4;
    let mut mixed = good.clone();
    mixed[2].should_attempt_dp_pad = 0;
    for (records, rank, policy, n) in [
        (&bad_record, 0, EXPLICIT, 2),
        (&good, 3, EXPLICIT, 2),
        (&good, 0, 5, 2),
        (&good, 0, EXPLICIT, 1),
        (&mixed, 0, EXPLICIT, 2),
    ] {
        let (r, out) = decide_all(records, rank, policy, n);
        assert!(r.is_err());
        assert_eq!(out, vec![SENTINEL; 3]);
    }
}

// ---------------------------------------------------------------------------------------
// decide: large values
// ---------------------------------------------------------------------------------------

#[test]
fn values_near_i32_max_do_not_overflow() {
    let max = i32::MAX;
    // (MAX / n) * (n - 1) computed naively as MAX * (n - 1) / n would overflow i32.
    for n in [2, 3, 4, 7, 1000, max - 1, max] {
        let boundary = ((i64::from(max) / i64::from(n)) * i64::from(n - 1)) as i32;
        let (d, out) = decide_ok(&ubatch_pair(boundary, max), 0, EXPLICIT, n);
        assert!(!d.should_ubatch, "n {n}: min == boundary");
        let (d, out2) = decide_ok(&ubatch_pair(boundary + 1, max), 1, EXPLICIT, n);
        assert!(d.should_ubatch, "n {n}: min == boundary + 1");
        assert!(d.should_dp_pad);
        assert_eq!(out2, vec![max, max]);
        assert_eq!(out, vec![boundary, max]);
        assert_eq!(d.max_num_tokens_padded, max);
    }
    // Everyone at i32::MAX, many ranks.
    let records = vec![rec(max, max, 1, 1, 2); 64];
    let (d, out) = decide_ok(&records, 63, WHEN_CUDAGRAPH, 2);
    assert!(d.should_ubatch && d.should_dp_pad);
    assert_eq!(d.min_num_tokens_unpadded, max);
    assert_eq!(out, vec![max; 64]);
    // The smallest and largest legal values side by side.
    let records = [rec(0, 0, 1, 0, 0), rec(0, max, 1, 0, 0)];
    let (d, out) = decide_ok(&records, 0, EXPLICIT, max);
    assert!(!d.should_ubatch);
    assert!(!d.should_dp_pad);
    assert_eq!(out, vec![0, max]);
}

#[test]
fn zero_tokens_everywhere() {
    // (0 / n) * (n - 1) = 0 >= 0: empty, so no microbatching even when all attempt.
    let records = vec![rec(0, 0, 1, 0, 1); 5];
    let (d, out) = decide_ok(&records, 4, EXPLICIT, 2);
    assert!(!d.should_ubatch);
    assert!(!d.should_dp_pad);
    assert_eq!(out, vec![0; 5]);
    assert_eq!(d.synced_cudagraph_mode, 1);
}

#[test]
fn record_words_are_the_wire_order_and_round_trip() {
    let r = RankRecord {
        num_tokens_unpadded: 11,
        num_tokens_padded: 22,
        should_attempt_ubatch: 1,
        should_attempt_dp_pad: 0,
        cudagraph_mode: 2,
    };
    assert_eq!(r.to_words(), [11, 22, 1, 0, 2]);
    assert_eq!(RankRecord::from_words(r.to_words()), r);
}

/// The threshold rule (0.2): with microbatching enabled, both thresholds must be >=
/// num_ubatches (vLLM's config rejects lower ones); the message names the field and the bound.
#[test]
fn thresholds_below_num_ubatches_are_refused() {
    for n in [2, 4] {
        for decode in [true, false] {
            for value in [n - 1, 0] {
                let mut req = ubatch_request(100, 1);
                req.ubatch.num_ubatches = n;
                let field = if decode {
                    req.ubatch.decode_token_threshold = value;
                    "decode"
                } else {
                    req.ubatch.prefill_token_threshold = value;
                    "prefill"
                };
                let m = invalid_message(make_record(&req));
                assert_names(
                    &m,
                    &[
                        &format!("ubatch.{field}_token_threshold = {value}"),
                        &format!(">= ubatch.num_ubatches = {n}"),
                    ],
                );
                // At the bound it is accepted.
                if decode {
                    req.ubatch.decode_token_threshold = n;
                } else {
                    req.ubatch.prefill_token_threshold = n;
                }
                assert!(make_record(&req).is_ok(), "{req:?}");
            }
        }
    }
}
