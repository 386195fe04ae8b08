//! Microbatch slices (docs/ARCHITECTURE.md ("Semantics")): vLLM's own test cases replayed, the rules one by
//! one, and every error named.
//!
//! vLLM cases come from vllm-project/vllm (V1): `tests/v1/attention/test_attention_splitting.py`
//! and `tests/v1/worker/test_ubatch_utils.py`; the function is
//! `vllm/v1/worker/ubatch_utils.py::maybe_create_ubatch_slices`.

use dpcoord::slices::{make_ubatch_slices, SliceInputs, UbatchSlice};
use dpcoord::ErrorKind;

mod slices_common;

use slices_common::{model, run, Slices};

fn ok(counts: &[i32], p: i32, rp: i32, n: i32, s: i32) -> Slices {
    run(counts, p, rp, n, s).expect("valid inputs")
}

/// `(request_begin, request_end, token_begin, token_end)` per slice.
fn sl(v: &[(i32, i32, i32, i32)]) -> Vec<UbatchSlice> {
    v.iter()
        .map(
            |&(request_begin, request_end, token_begin, token_end)| UbatchSlice {
                request_begin,
                request_end,
                token_begin,
                token_end,
            },
        )
        .collect()
}

/// The error message of an invalid-argument failure.
fn invalid(counts: &[i32], p: i32, rp: i32, n: i32, s: i32) -> String {
    match run(counts, p, rp, n, s) {
        Err(e) if e.kind == ErrorKind::InvalidArgument => e.message,
        other => panic!("expected an invalid-argument error, got {other:?}"),
    }
}

/// Tokens of request `r` inside `slice` (what vLLM's `_make_metadata_with_slice` gives it).
fn tokens_of(counts: &[i32], r: usize, slice: &UbatchSlice) -> i32 {
    let begin: i32 = counts[..r].iter().sum();
    let end = begin + counts[r];
    (end.min(slice.token_end) - begin.max(slice.token_begin)).max(0)
}

// ---- vLLM: tests/v1/attention/test_attention_splitting.py --------------------------------

/// `test_prefill_split_across_ubatches[[32, 40]-[8, 8]-12-2-1]` ("split in the middle of
/// request 1"): query_lens [8, 8], num_tokens 16, batch_size 2, split_point 12.
#[test]
fn vllm_prefill_split_in_the_middle_of_request_1() {
    let counts = [8, 8];
    let (slices, padded) = ok(&counts, 16, 2, 2, 12);
    assert_eq!(slices, sl(&[(0, 2, 0, 12), (1, 2, 12, 16)]));
    assert_eq!(padded, slices);
    // The test's assertions: tokens 12 and 16 - 12, requests 2 and 1.
    let num_tokens = |s: &UbatchSlice| s.token_end - s.token_begin;
    let num_reqs = |s: &UbatchSlice| s.request_end - s.request_begin;
    assert_eq!((num_tokens(&slices[0]), num_tokens(&slices[1])), (12, 4));
    assert_eq!((num_reqs(&slices[0]), num_reqs(&slices[1])), (2, 1));
    // Request 1 (searchsorted(qsl, 12, "right") - 1) is split: 4 tokens in the first chunk,
    // and the two chunks add up to its query length.
    assert_eq!(tokens_of(&counts, 1, &slices[0]), 12 - 8);
    assert_eq!(
        tokens_of(&counts, 1, &slices[0]) + tokens_of(&counts, 1, &slices[1]),
        8
    );
    assert_eq!(slices[0].request_end - 1, slices[1].request_begin);
}

/// `test_prefill_split_across_ubatches[[32, 40]-[8, 8]-4-1-2]` ("split inside the first
/// request"): query_lens [8, 8], num_tokens 16, batch_size 2, split_point 4.
#[test]
fn vllm_prefill_split_inside_the_first_request() {
    let counts = [8, 8];
    let (slices, padded) = ok(&counts, 16, 2, 2, 4);
    assert_eq!(slices, sl(&[(0, 1, 0, 4), (0, 2, 4, 16)]));
    assert_eq!(padded, slices);
    assert_eq!(slices[0].token_end - slices[0].token_begin, 4);
    assert_eq!(slices[1].token_end - slices[1].token_begin, 16 - 4);
    assert_eq!(slices[0].request_end - slices[0].request_begin, 1);
    assert_eq!(slices[1].request_end - slices[1].request_begin, 2);
    assert_eq!(tokens_of(&counts, 0, &slices[0]), 4);
    assert_eq!(
        tokens_of(&counts, 0, &slices[0]) + tokens_of(&counts, 0, &slices[1]),
        8
    );
}

/// `test_split_attn_metadata_decode_batch`: BATCH_SPECS["large_decode"] (32 one-token
/// decodes) split at the midpoint into `[0, 16)` and `[16, 32)`, requests and tokens alike:
/// exactly what the default split point `P / 2` produces.
#[test]
fn vllm_split_attn_metadata_decode_batch() {
    let counts = [1; 32];
    let (slices, padded) = ok(&counts, 32, -1, 2, -1);
    assert_eq!(slices, sl(&[(0, 16, 0, 16), (16, 32, 16, 32)]));
    assert_eq!(padded, slices);
}

/// `test_make_metadata_with_slice_decode_batch`: BATCH_SPECS["small_decode"] (query_lens
/// [1, 1]) and `UBatchSlice(slice(0, 1), slice(0, 1))`: the first slice of the default split.
#[test]
fn vllm_make_metadata_with_slice_decode_batch() {
    let (slices, _) = ok(&[1, 1], 2, -1, 2, -1);
    assert_eq!(slices[0], sl(&[(0, 1, 0, 1)])[0]);
    assert_eq!(slices, sl(&[(0, 1, 0, 1), (1, 2, 1, 2)]));
}

// ---- vLLM: tests/v1/worker/test_ubatch_utils.py ------------------------------------------

/// `test_split_attn_metadata_preserves_position_and_prefill_flags`: query_start_loc
/// [0, 3, 7, 9] (counts [3, 4, 2]) and `UBatchSlice(slice(1, 3), slice(3, 9))`: the second
/// slice of a split at 3.
#[test]
fn vllm_split_attn_metadata_preserves_position_and_prefill_flags() {
    let (slices, padded) = ok(&[3, 4, 2], 9, -1, 2, 3);
    assert_eq!(slices[1], sl(&[(1, 3, 3, 9)])[0]);
    assert_eq!(slices, sl(&[(0, 1, 0, 3), (1, 3, 3, 9)]));
    assert_eq!(padded, slices);
}

// ---- the rules of docs/ARCHITECTURE.md ("Semantics") -----------------------------------------------------

#[test]
fn default_split_point_is_padded_tokens_over_n() {
    // P = 10, n = 2: s = 5; request 1 ([4, 8)) straddles.
    let (slices, _) = ok(&[4, 4, 2], 10, -1, 2, -1);
    assert_eq!(slices, sl(&[(0, 2, 0, 5), (1, 3, 5, 10)]));
    // Padding beyond the scheduled tokens moves the default split: P = 13, s = 6.
    let (slices, padded) = ok(&[4, 4, 2], 13, 5, 2, -1);
    assert_eq!(slices, sl(&[(0, 2, 0, 6), (1, 3, 6, 10)]));
    assert_eq!(padded, sl(&[(0, 2, 0, 6), (1, 5, 6, 13)]));
}

#[test]
fn split_on_a_request_boundary_puts_it_in_one_slice() {
    let (slices, _) = ok(&[4, 4], 8, -1, 2, 4);
    assert_eq!(slices, sl(&[(0, 1, 0, 4), (1, 2, 4, 8)]));
}

#[test]
fn a_straddling_request_is_in_both_slices() {
    // One prefill of 100 tokens split at 50.
    let (slices, _) = ok(&[100], 100, -1, 2, -1);
    assert_eq!(slices, sl(&[(0, 1, 0, 50), (0, 1, 50, 100)]));
    // A decode, a prefill straddling the split, a decode.
    let (slices, _) = ok(&[1, 30, 1], 32, -1, 2, -1);
    assert_eq!(slices, sl(&[(0, 2, 0, 16), (1, 3, 16, 32)]));
}

#[test]
fn three_and_four_microbatches() {
    let (slices, padded) = ok(&[5, 5, 5], 15, -1, 3, -1);
    assert_eq!(slices, sl(&[(0, 1, 0, 5), (1, 2, 5, 10), (2, 3, 10, 15)]));
    assert_eq!(padded, slices);
    // One request across every split.
    let (slices, _) = ok(&[12], 12, -1, 4, -1);
    assert_eq!(
        slices,
        sl(&[(0, 1, 0, 3), (0, 1, 3, 6), (0, 1, 6, 9), (0, 1, 9, 12)])
    );
    // Padding: the last slice ends at the scheduled tokens, its padded twin at P.
    let (slices, padded) = ok(&[3, 3, 3, 1], 12, 6, 4, -1);
    assert_eq!(
        slices,
        sl(&[(0, 1, 0, 3), (1, 2, 3, 6), (2, 3, 6, 9), (3, 4, 9, 10)])
    );
    assert_eq!(
        padded,
        sl(&[(0, 1, 0, 3), (1, 2, 3, 6), (2, 3, 6, 9), (3, 6, 9, 12)])
    );
}

#[test]
fn explicit_split_point_with_more_microbatches() {
    // s = 4, n = 3: splits at 4 and 8, last slice to 11.
    let (slices, padded) = ok(&[2, 3, 6], 16, 4, 3, 4);
    assert_eq!(slices, sl(&[(0, 2, 0, 4), (1, 3, 4, 8), (2, 3, 8, 11)]));
    assert_eq!(padded, sl(&[(0, 2, 0, 4), (1, 3, 4, 8), (2, 4, 8, 16)]));
}

#[test]
fn zero_length_requests_follow_bisect() {
    // Leading zeros: bisect_right(cu, 0) - 1 skips them.
    let (slices, _) = ok(&[0, 0, 4], 4, -1, 2, -1);
    assert_eq!(slices, sl(&[(2, 3, 0, 2), (2, 3, 2, 4)]));
    // A zero-length request sitting on the split point belongs to neither slice.
    let (slices, _) = ok(&[2, 0, 2], 4, -1, 2, -1);
    assert_eq!(slices, sl(&[(0, 1, 0, 2), (2, 3, 2, 4)]));
    // Several of them.
    let (slices, _) = ok(&[2, 0, 0, 0, 2], 4, -1, 2, -1);
    assert_eq!(slices, sl(&[(0, 1, 0, 2), (4, 5, 2, 4)]));
    // Trailing zeros: bisect_left(cu, cu[R]) stops before them; the padded slice keeps Rp.
    let (slices, padded) = ok(&[2, 2, 0, 0], 4, -1, 2, -1);
    assert_eq!(slices, sl(&[(0, 1, 0, 2), (1, 2, 2, 4)]));
    assert_eq!(padded, sl(&[(0, 1, 0, 2), (1, 4, 2, 4)]));
    // A zero-length request inside a slice stays in it.
    let (slices, _) = ok(&[1, 0, 1, 2], 4, -1, 2, -1);
    assert_eq!(slices, sl(&[(0, 3, 0, 2), (3, 4, 2, 4)]));
}

#[test]
fn split_walk_crosses_many_blocks() {
    // 1000 one-token requests and one long one: the walk skips whole blocks.
    let mut counts = vec![1; 1000];
    counts.push(1000);
    let (slices, _) = ok(&counts, 2000, -1, 2, -1);
    assert_eq!(slices, sl(&[(0, 1000, 0, 1000), (1000, 1001, 1000, 2000)]));
    let (slices, _) = ok(&counts, 2000, -1, 4, -1);
    assert_eq!(
        slices,
        sl(&[
            (0, 500, 0, 500),
            (500, 1000, 500, 1000),
            (1000, 1001, 1000, 1500),
            (1000, 1001, 1500, 2000)
        ])
    );
}

#[test]
fn padded_slices_are_optional_and_slices_match_without_them() {
    let counts = [3, 5, 2];
    let mut slices = [UbatchSlice::default(); 2];
    let inputs = SliceInputs {
        num_scheduled_tokens: &counts,
        num_tokens_padded: 12,
        num_requests_padded: -1,
        num_ubatches: 2,
        split_point: -1,
    };
    make_ubatch_slices(&inputs, &mut slices, None).unwrap();
    assert_eq!(slices.to_vec(), ok(&counts, 12, -1, 2, -1).0);
}

#[test]
fn cumulative_sums_are_64_bit() {
    // The counts sum past i32::MAX: an error naming the sum, not a wrapped value.
    let m = invalid(&[i32::MAX, i32::MAX, 2], i32::MAX, -1, 2, -1);
    assert!(m.contains("sum(num_scheduled_tokens) = 4294967296"), "{m}");
    assert!(
        m.contains(&format!("num_tokens_padded = {}", i32::MAX)),
        "{m}"
    );
    // Right at the limit: P = i32::MAX, the split at P / 2 inside the first request.
    let (slices, padded) = ok(&[i32::MAX - 1, 1], i32::MAX, -1, 2, -1);
    let half = i32::MAX / 2;
    assert_eq!(slices, sl(&[(0, 1, 0, half), (0, 2, half, i32::MAX)]));
    assert_eq!(padded, slices);
    // s * (n - 1) past i32::MAX is an empty last slice, computed without overflow.
    let m = invalid(&[10], 10, -1, i32::MAX, 3);
    assert!(m.contains("(num_ubatches - 1) = 6442450938"), "{m}");
}

#[test]
fn outputs_are_untouched_on_error() {
    let sentinel = UbatchSlice {
        request_begin: -7,
        request_end: -7,
        token_begin: -7,
        token_end: -7,
    };
    let mut slices = [sentinel; 2];
    let mut padded = [sentinel; 2];
    let counts = [4, -1];
    let inputs = SliceInputs {
        num_scheduled_tokens: &counts,
        num_tokens_padded: 4,
        num_requests_padded: -1,
        num_ubatches: 2,
        split_point: -1,
    };
    assert!(make_ubatch_slices(&inputs, &mut slices, Some(&mut padded)).is_err());
    assert_eq!(slices, [sentinel; 2]);
    assert_eq!(padded, [sentinel; 2]);
}

// ---- every bad input names itself ---------------------------------------------------------

#[test]
fn no_requests() {
    let m = invalid(&[], 4, -1, 2, -1);
    assert!(m.contains("num_requests = 0 must be >= 1"), "{m}");
}

#[test]
fn negative_count() {
    let m = invalid(&[3, -2, 1], 8, -1, 2, -1);
    assert!(
        m.contains("num_scheduled_tokens[1] = -2 must be >= 0"),
        "{m}"
    );
}

#[test]
fn sum_above_padded() {
    let m = invalid(&[5, 6], 10, -1, 2, -1);
    assert!(
        m.contains("sum(num_scheduled_tokens) = 11 must be <= num_tokens_padded = 10"),
        "{m}"
    );
    let m = invalid(&[0], -1, -1, 2, -1);
    assert!(m.contains("num_tokens_padded = -1 must be >= 0"), "{m}");
}

#[test]
fn padded_requests_below_requests() {
    let m = invalid(&[2, 2, 2], 6, 2, 2, -1);
    assert!(m.contains("num_requests_padded = 2"), "{m}");
    assert!(m.contains(">= num_requests = 3"), "{m}");
    let m = invalid(&[2, 2], 4, -2, 2, -1);
    assert!(m.contains("num_requests_padded = -2"), "{m}");
}

#[test]
fn fewer_than_two_microbatches() {
    for n in [1, 0, -3] {
        let m = invalid(&[4, 4], 8, -1, n, -1);
        assert!(
            m.contains(&format!("num_ubatches = {n} must be >= 2")),
            "{m}"
        );
    }
}

#[test]
fn split_point_out_of_range() {
    for s in [0, -2, i32::MIN] {
        let m = invalid(&[4, 4], 8, -1, 2, s);
        assert!(m.contains(&format!("split_point = {s} must be -1")), "{m}");
    }
    // The last split at or past the scheduled tokens: the last slice would be empty.
    let m = invalid(&[4, 4], 8, -1, 2, 8);
    assert!(m.contains("split_point = 8 puts the last split"), "{m}");
    assert!(m.contains("microbatch 1 (the last) would be empty"), "{m}");
    let m = invalid(&[4, 4], 8, -1, 3, 4);
    assert!(
        m.contains("= 8, which must be < sum(num_scheduled_tokens) = 8"),
        "{m}"
    );
}

#[test]
fn default_split_point_that_empties_a_slice() {
    // P < n: P / n = 0 and the first microbatch is empty.
    let m = invalid(&[1], 1, -1, 2, -1);
    assert!(m.contains("split_point = 0 (the default"), "{m}");
    assert!(m.contains("microbatch 0 empty"), "{m}");
    // Heavy padding: P / n at or past the scheduled tokens empties the last one (what the
    // decision's last_ubatch_empty rule prevents across ranks).
    let m = invalid(&[3], 8, -1, 2, -1);
    assert!(
        m.contains("split_point = 4 (the default num_tokens_padded / num_ubatches)"),
        "{m}"
    );
    assert!(m.contains("would be empty"), "{m}");
}

#[test]
fn all_zero_counts() {
    let m = invalid(&[0, 0], 4, -1, 2, -1);
    assert!(m.contains("would be empty"), "{m}");
}

#[test]
fn output_length_must_be_num_ubatches() {
    let counts = [4, 4];
    let inputs = SliceInputs {
        num_scheduled_tokens: &counts,
        num_tokens_padded: 8,
        num_requests_padded: -1,
        num_ubatches: 2,
        split_point: -1,
    };
    let mut three = [UbatchSlice::default(); 3];
    let e = make_ubatch_slices(&inputs, &mut three, None).unwrap_err();
    assert!(e.to_string().contains("slices holds 3 entries"), "{e}");
    let mut two = [UbatchSlice::default(); 2];
    let mut one = [UbatchSlice::default(); 1];
    let e = make_ubatch_slices(&inputs, &mut two, Some(&mut one)).unwrap_err();
    assert!(
        e.to_string().contains("padded_slices holds 1 entries"),
        "{e}"
    );
}

#[test]
fn long_batches_with_and_without_kept_block_sums() {
    // Long batches, around 2048 requests and past it: the walk skips whole 32-count blocks
    // and gives the naive model's slices.
    for r in [2047usize, 2048, 2049, 5000] {
        let counts = vec![1; r];
        let total = r as i32;
        let s = total / 3;
        let (slices, padded) = ok(&counts, total, -1, 3, -1);
        assert_eq!(
            slices,
            sl(&[
                (0, s, 0, s),
                (s, 2 * s, s, 2 * s),
                (2 * s, total, 2 * s, total)
            ]),
            "{r} requests"
        );
        assert_eq!(padded, slices);
        // A long prefill straddling the second split, zero-length requests around it: as
        // the naive model has it.
        let mut counts = vec![1; r];
        counts[2 * s as usize - 3] = 0;
        counts[2 * s as usize - 1] = 500;
        counts[r - 1] = 0;
        let total: i32 = counts.iter().sum();
        for split in [-1, s, 7] {
            let got = run(&counts, total + 9, -1, 3, split).ok();
            assert!(got.is_some(), "{r} requests, split {split}");
            assert_eq!(got, model(&counts, total + 9, -1, 3, split), "{r}, {split}");
        }
    }
}
