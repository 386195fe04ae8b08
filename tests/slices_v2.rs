//! V2 slicing (`make_ubatch_slices_v2`, vLLM 0.34.0's `create_ubatch_slices`): every worked
//! example of /work/shared/VLLM_V2.md sections 4-5 that has slices, the rules one by one, and
//! every error named.
//!
//! How each example's inputs are derived (VLLM_V2.md sections 2.9 and 4, `UBatchRunner.prepare`):
//! the counts are the rank's real per-request scheduled tokens (`T t / R r` with uniform count
//! u means R requests of u tokens); `P = num_tokens_after_padding = max(own T,
//! descriptor.num_tokens)`; `Rp = num_reqs_after_padding = descriptor.num_reqs or own R` (a
//! FULL graph's request count; a NONE descriptor carries the rank's own R); `n` is the
//! configuration's `num_ubatches`; `u` is the descriptor's uniform count on FULL, else the
//! agreed `DPSyncState.uniform_token_count` (0 for None).

use dpcoord::slices::UbatchSlice;
use dpcoord::ErrorKind;

mod slices_common;

use slices_common::{model, model_v2, run, run_v2, vllm_v1_lists};

/// VLLM_V2.md's `[req_start, req_stop, tok_start, tok_stop]` per slice.
fn sl(v: &[[i32; 4]]) -> Vec<UbatchSlice> {
    v.iter()
        .map(
            |&[request_begin, request_end, token_begin, token_end]| UbatchSlice {
                request_begin,
                request_end,
                token_begin,
                token_end,
            },
        )
        .collect()
}

/// The V2 slices of valid inputs, checked against the naive model of VLLM_V2.md section 4 too.
fn v2(counts: &[i32], p: i32, rp: i32, n: i32, u: i32) -> Vec<UbatchSlice> {
    let got = run_v2(counts, p, rp, n, u).expect("valid inputs");
    assert_eq!(Some(got.clone()), model_v2(counts, p, rp, n, u));
    got
}

/// The message of an invalid-argument failure of the V2 slicer.
fn invalid_v2(counts: &[i32], p: i32, rp: i32, n: i32, u: i32) -> String {
    match run_v2(counts, p, rp, n, u) {
        Err(e) if e.kind == ErrorKind::InvalidArgument => e.message,
        other => panic!("expected an invalid-argument error, got {other:?}"),
    }
}

/// `k` requests of `q` tokens each.
fn uniform(k: usize, q: i32) -> Vec<i32> {
    vec![q; k]
}

// ---- VLLM_V2.md section 5 ------------------------------------------------------------------

/// `ub-on` (example 9, E-dbo): r0 `32t/32r u1 BD`, r1 `40t/40r u1 BD` -> FULL 40t/40r u1 x2.
/// Both ranks: P = 40 (the graph), Rp = 40 (the graph's requests), n = 2, u = 1 (FULL: the
/// descriptor's), so the split is P / n = 20. Slices [[0,20,0,20],[20,40,20,40]] on both.
#[test]
fn ub_on() {
    let want = sl(&[[0, 20, 0, 20], [20, 40, 20, 40]]);
    assert_eq!(v2(&uniform(32, 1), 40, 40, 2, 1), want, "r0");
    assert_eq!(v2(&uniform(40, 1), 40, 40, 2, 1), want, "r1");
}

/// `ub-prefill-on` (example 10, E-dbo): r0 `512t/11r B` (mixed), r1 `700t/1r B` -> NONE 700t
/// x2 (eager microbatches). P = max(own T, 700) = 700 on both; Rp = own R (a NONE descriptor):
/// 11 and 1; n = 2; u = 0 (eager: the agreed uniform count, None since r0 has none); split 350.
/// The example does not give r0's per-request counts: its slices [[0,11,0,350],[10,11,350,700]]
/// say only that request 10 holds token 350 (cu[10] < 350 < 512), so two such batches are run.
/// r1: [[0,1,0,350],[0,1,350,700]].
#[test]
fn ub_prefill_on() {
    let r0 = sl(&[[0, 11, 0, 350], [10, 11, 350, 700]]);
    // Ten decodes and a 502-token prefill chunk; ten 34-token chunks and a 172-token one.
    let mut decodes = uniform(10, 1);
    decodes.push(502);
    let mut chunks = uniform(10, 34);
    chunks.push(172);
    for counts in [decodes, chunks] {
        assert_eq!(counts.iter().sum::<i32>(), 512);
        assert_eq!(v2(&counts, 700, 11, 2, 0), r0, "r0 {counts:?}");
    }
    assert_eq!(
        v2(&[700], 700, 1, 2, 0),
        sl(&[[0, 1, 0, 350], [0, 1, 350, 700]]),
        "r1"
    );
}

/// `ub-eager-fallback` (example 13, E-dbo): r0 `32t/32r u1 BD`, r1 `100t/100r u1 BD` -> the
/// FULL twin for 100 (104 tokens) fails 2 x min, so NONE 100t x2. r0: P = 100, Rp = own R =
/// 32 (NONE), n = 2, u = 1 (the agreed count); split 50. Its slices [[0,32,0,50],[31,32,50,100]]:
/// the second microbatch is all padding and holds request 31 with 0 tokens.
#[test]
fn ub_eager_fallback() {
    assert_eq!(
        v2(&uniform(32, 1), 100, 32, 2, 1),
        sl(&[[0, 32, 0, 50], [31, 32, 50, 100]])
    );
}

/// `ub-equal-2min` (example 13, E-dbo): r0 `32t/32r u1 BD`, r1 `64t/64r u1 BD` -> the twin is
/// 64 = 2 x 32, not below it: FULL 64t/64r u1 x2. r0: P = 64, Rp = 64 (the graph), n = 2, u = 1
/// (FULL); split 32. Slices [[0,32,0,32],[31,64,32,64]]: all padding again, under a FULL graph.
#[test]
fn ub_equal_2min() {
    assert_eq!(
        v2(&uniform(32, 1), 64, 64, 2, 1),
        sl(&[[0, 32, 0, 32], [31, 64, 32, 64]])
    );
}

/// `ub3-narrow` (example 15, E-ub3, n = 3): r0 `24t/24r u1`, r1 `48t/48r u1` -> FULL 48t/48r u1
/// x3. r0: P = 48, Rp = 48, n = 3, u = 1 (FULL); split 16. Slices
/// [[0,16,0,16],[16,25,16,32],[23,48,32,48]]: the third is all padding (the second's stop 25
/// is bisect_left past the real tokens, R + 1, kept since it is below Rp).
#[test]
fn ub3_narrow() {
    assert_eq!(
        v2(&uniform(24, 1), 48, 48, 3, 1),
        sl(&[[0, 16, 0, 16], [16, 25, 16, 32], [23, 48, 32, 48]])
    );
}

/// `spec4-ub` (example 16, E-dbo-spec4): r0 `36t/9r u4 q4 BD`, r1 `48t/12r u4 q4 BD` -> FULL
/// 48t/12r u4 x2. Both: P = 48, Rp = 12 (the graph), n = 2, u = 4 (FULL); the split is
/// (48 / (4 x 2)) x 4 = 24, 6 requests. Slices [[0,6,0,24],[6,12,24,48]] on both.
#[test]
fn spec4_ub() {
    let want = sl(&[[0, 6, 0, 24], [6, 12, 24, 48]]);
    assert_eq!(v2(&uniform(9, 4), 48, 12, 2, 4), want, "r0");
    assert_eq!(v2(&uniform(12, 4), 48, 12, 2, 4), want, "r1");
}

/// VLLM_V2.md section 4's direct case: counts [3,3,4], P 32, Rp 3, n 2, no uniform count. V2
/// gives [(0,3,0,16),(2,3,16,32)] where V1's padded list is [(0,4,0,16),(3,3,16,32)] (an empty
/// last slice, which V1's slicer refuses).
#[test]
fn direct_case_v2_against_v1() {
    assert_eq!(
        v2(&[3, 3, 4], 32, 3, 2, 0),
        sl(&[[0, 3, 0, 16], [2, 3, 16, 32]])
    );
    let (_, v1_padded) = vllm_v1_lists(&[3, 3, 4], 32, 3, &[16]);
    assert_eq!(v1_padded, [[0, 4, 0, 16], [3, 3, 16, 32]]);
    let e = run(&[3, 3, 4], 32, 3, 2, -1).unwrap_err();
    assert!(e.message.contains("would be empty"), "{e}");
    assert_eq!(model(&[3, 3, 4], 32, 3, 2, -1), None);
}

// ---- the rules of VLLM_V2.md section 4 -----------------------------------------------------

#[test]
fn uniform_count_splits_on_a_request_boundary() {
    // 11 requests of 4 tokens, P 44: (44 / 8) x 4 = 20, five whole requests a microbatch.
    let counts = uniform(11, 4);
    assert_eq!(
        v2(&counts, 44, 11, 2, 4),
        sl(&[[0, 5, 0, 20], [5, 11, 20, 44]])
    );
    // Without the uniform count (or with u = 1) the split is P / n = 22, inside request 5.
    let mid = sl(&[[0, 6, 0, 22], [5, 11, 22, 44]]);
    assert_eq!(v2(&counts, 44, 11, 2, 0), mid);
    assert_eq!(v2(&counts, 44, 11, 2, 1), mid);
    // u > 1 with P / (u n) = 0 falls back to P / n: 6 / 8 = 0, split 3.
    assert_eq!(v2(&[4, 2], 6, -1, 2, 4), sl(&[[0, 1, 0, 3], [0, 2, 3, 6]]));
    // The last takes the rest: 3 microbatches of u 4 over P 40: split (40 / 12) x 4 = 12.
    assert_eq!(
        v2(&uniform(10, 4), 40, -1, 3, 4),
        sl(&[[0, 3, 0, 12], [3, 6, 12, 24], [6, 10, 24, 40]])
    );
}

#[test]
fn slices_tile_the_padded_tokens_and_rp() {
    // The last runs to P and Rp; Rp = -1 is R.
    assert_eq!(
        v2(&[4, 4, 2], 13, 5, 2, 0),
        sl(&[[0, 2, 0, 6], [1, 5, 6, 13]])
    );
    assert_eq!(
        v2(&[4, 4, 2], 13, -1, 2, 0),
        sl(&[[0, 2, 0, 6], [1, 3, 6, 13]])
    );
}

#[test]
fn a_straddling_request_is_in_both_microbatches() {
    assert_eq!(
        v2(&[100], 100, -1, 2, 0),
        sl(&[[0, 1, 0, 50], [0, 1, 50, 100]])
    );
    assert_eq!(
        v2(&[1, 30, 1], 32, -1, 2, 0),
        sl(&[[0, 2, 0, 16], [1, 3, 16, 32]])
    );
}

#[test]
fn every_microbatch_but_the_first_in_padding() {
    // Two real tokens, P 40, n 4: splits 10, 20, 30, all past the real total, so every stop
    // is bisect_left past the end (R + 1), clamped to Rp. Each trailing microbatch holds
    // request R - 1.
    assert_eq!(
        v2(&[1, 1], 40, 8, 4, 0),
        sl(&[
            [0, 3, 0, 10],
            [1, 3, 10, 20],
            [1, 3, 20, 30],
            [1, 8, 30, 40]
        ])
    );
    // Rp = R clamps them to R.
    assert_eq!(
        v2(&[1, 1], 40, -1, 4, 0),
        sl(&[
            [0, 2, 0, 10],
            [1, 2, 10, 20],
            [1, 2, 20, 30],
            [1, 2, 30, 40]
        ])
    );
    // A split one past the real total (bisect_left past the end: R + 1, clamped to Rp).
    assert_eq!(
        v2(&[3, 3, 4], 22, -1, 2, 0),
        sl(&[[0, 3, 0, 11], [2, 3, 11, 22]])
    );
    assert_eq!(
        v2(&[3, 3, 4], 22, 6, 2, 0),
        sl(&[[0, 4, 0, 11], [2, 6, 11, 22]])
    );
    // A split exactly at the real total: the next microbatch is all padding.
    assert_eq!(
        v2(&[3, 3, 4], 20, -1, 2, 0),
        sl(&[[0, 3, 0, 10], [2, 3, 10, 20]])
    );
}

#[test]
fn zero_length_requests_follow_bisect_then_the_clamp() {
    // Leading zeros are skipped (bisect_right - 1).
    assert_eq!(
        v2(&[0, 0, 4], 4, -1, 2, 0),
        sl(&[[2, 3, 0, 2], [2, 3, 2, 4]])
    );
    // A zero-length request on the split belongs to neither side.
    assert_eq!(
        v2(&[2, 0, 0, 2], 4, -1, 2, 0),
        sl(&[[0, 1, 0, 2], [3, 4, 2, 4]])
    );
    // Trailing zeros at the real total, the split at it: the padding microbatch starts past
    // them (R), clamped to R - 1.
    assert_eq!(
        v2(&[2, 2, 0, 0], 8, -1, 2, 0),
        sl(&[[0, 2, 0, 4], [3, 4, 4, 8]])
    );
    // No real token at all: every microbatch is padding and begins at R - 1.
    assert_eq!(v2(&[0], 4, -1, 2, 0), sl(&[[0, 1, 0, 2], [0, 1, 2, 4]]));
    assert_eq!(
        v2(&[0, 0, 0], 6, 5, 3, 0),
        sl(&[[2, 4, 0, 2], [2, 4, 2, 4], [2, 5, 4, 6]])
    );
}

#[test]
fn long_batches_cross_the_walks_blocks() {
    for r in [31usize, 32, 33, 1000, 2049] {
        let mut counts = vec![1; r];
        counts[r / 2] = 300;
        let total: i32 = counts.iter().sum();
        for (p, n, u) in [(total, 2, 0), (total + 7, 3, 0), (2 * total, 4, 1)] {
            let got = run_v2(&counts, p, -1, n, u).ok();
            assert!(got.is_some(), "{r} requests, P {p}, n {n}");
            assert_eq!(got, model_v2(&counts, p, -1, n, u), "{r}, {p}, {n}");
        }
    }
}

#[test]
fn sums_are_64_bit() {
    let m = invalid_v2(&[i32::MAX, i32::MAX, 2], i32::MAX, -1, 2, 0);
    assert!(m.contains("sum(num_scheduled_tokens) = 4294967296"), "{m}");
    let half = i32::MAX / 2;
    assert_eq!(
        v2(&[i32::MAX - 1, 1], i32::MAX, -1, 2, 0),
        sl(&[[0, 1, 0, half], [0, 2, half, i32::MAX]])
    );
    // u x n past i32::MAX: no overflow, P / (u n) = 0 and the split is P / n.
    assert_eq!(
        v2(&[8], 8, -1, 2, i32::MAX),
        sl(&[[0, 1, 0, 4], [0, 1, 4, 8]])
    );
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
    let batch = dpcoord::slices::SliceBatch {
        num_scheduled_tokens: &[4, 4],
        num_tokens_padded: 8,
        num_requests_padded: -1,
        num_ubatches: 2,
    };
    assert!(dpcoord::slices::make_ubatch_slices_v2(&batch, -1, &mut slices).is_err());
    assert_eq!(slices, [sentinel; 2]);
}

// ---- every bad input names itself ----------------------------------------------------------

#[test]
fn empty_real_batch() {
    let m = invalid_v2(&[], 8, -1, 2, 0);
    assert!(m.contains("num_requests = 0 must be >= 1"), "{m}");
}

#[test]
fn padded_tokens_below_the_real_total() {
    let m = invalid_v2(&[5, 6], 10, -1, 2, 0);
    assert!(
        m.contains("sum(num_scheduled_tokens) = 11 must be <= num_tokens_padded = 10"),
        "{m}"
    );
    let m = invalid_v2(&[0], -1, -1, 2, 0);
    assert!(m.contains("num_tokens_padded = -1 must be >= 0"), "{m}");
}

#[test]
fn padded_requests_below_requests() {
    let m = invalid_v2(&[2, 2, 2], 6, 2, 2, 0);
    assert!(
        m.contains("num_requests_padded = 2 must be -1 (= num_requests) or >= num_requests = 3"),
        "{m}"
    );
    let m = invalid_v2(&[2, 2], 4, -2, 2, 0);
    assert!(m.contains("num_requests_padded = -2"), "{m}");
}

#[test]
fn fewer_than_two_microbatches() {
    for n in [1, 0, -3] {
        let m = invalid_v2(&[4, 4], 8, -1, n, 0);
        assert!(
            m.contains(&format!("num_ubatches = {n} must be >= 2")),
            "{m}"
        );
    }
}

#[test]
fn negative_count() {
    let m = invalid_v2(&[3, -2, 1], 8, -1, 2, 0);
    assert!(
        m.contains("num_scheduled_tokens[1] = -2 must be >= 0"),
        "{m}"
    );
}

#[test]
fn negative_uniform_token_count() {
    for u in [-1, i32::MIN] {
        let m = invalid_v2(&[4, 4], 8, -1, 2, u);
        assert!(
            m.contains(&format!("uniform_token_count = {u} must be >= 0 (0: none)")),
            "{m}"
        );
    }
}

#[test]
fn fewer_padded_tokens_than_microbatches() {
    // P / n = 0: microbatch 0 would be empty (vLLM's _slice_input_batch asserts against it).
    let m = invalid_v2(&[1], 1, -1, 2, 0);
    assert!(
        m.contains("num_tokens_padded = 1 must be >= num_ubatches = 2"),
        "{m}"
    );
    assert!(m.contains("microbatch 0 empty"), "{m}");
    let m = invalid_v2(&[0], 0, -1, 3, 4);
    assert!(
        m.contains("num_tokens_padded = 0 must be >= num_ubatches = 3"),
        "{m}"
    );
}

#[test]
fn output_length_must_be_num_ubatches() {
    let batch = dpcoord::slices::SliceBatch {
        num_scheduled_tokens: &[4, 4],
        num_tokens_padded: 8,
        num_requests_padded: -1,
        num_ubatches: 2,
    };
    let mut three = [UbatchSlice::default(); 3];
    let e = dpcoord::slices::make_ubatch_slices_v2(&batch, 0, &mut three).unwrap_err();
    assert!(
        e.message
            .contains("slices holds 3 entries, num_ubatches = 2 needed"),
        "{e}"
    );
}
