//! V1's slicer with a list of split points (`make_ubatch_slices_at`, vLLM 0.33+'s list form of
//! `maybe_create_ubatch_slices`'s `split_point`, /work/shared/VLLM_V2.md section 4, last
//! paragraph): the rules, the int form's cases given as lists, and every error named.
//!
//! vLLM checks only the list's length (an assert); everything else it would turn into negative,
//! inverted or empty slices. What is refused here, and why, is in each error test.

use dpcoord::slices::{make_ubatch_slices_at, SliceBatch, UbatchSlice};
use dpcoord::ErrorKind;

mod slices_common;

use slices_common::{model_at, run, run_at, Slices};

/// `(request_begin, request_end, token_begin, token_end)` per slice.
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

/// The two lists of valid inputs, checked against the naive model of VLLM_V2.md section 4 too.
fn at(counts: &[i32], p: i32, rp: i32, n: i32, points: &[i32]) -> Slices {
    let got = run_at(counts, p, rp, n, points).expect("valid inputs");
    assert_eq!(Some(got.clone()), model_at(counts, p, rp, n, points));
    got
}

/// The message of an invalid-argument failure.
fn invalid_at(counts: &[i32], p: i32, rp: i32, n: i32, points: &[i32]) -> String {
    match run_at(counts, p, rp, n, points) {
        Err(e) if e.kind == ErrorKind::InvalidArgument => e.message,
        other => panic!("expected an invalid-argument error, got {other:?}"),
    }
}

// ---- the rules ---------------------------------------------------------------------------------

/// vLLM tests/v1/attention/test_attention_splitting.py,
/// `test_prefill_split_across_ubatches[[32, 40]-[8, 8]-12-2-1]` with the split given as `[12]`:
/// the same slices as the int form.
#[test]
fn one_point_is_the_int_form() {
    let (slices, padded) = at(&[8, 8], 16, 2, 2, &[12]);
    assert_eq!(slices, sl(&[[0, 2, 0, 12], [1, 2, 12, 16]]));
    assert_eq!(padded, slices);
    assert_eq!(run(&[8, 8], 16, 2, 2, 12).unwrap(), (slices, padded));
}

#[test]
fn uneven_points() {
    // Boundaries 3 and 10 over [2, 3, 6] (cu 0, 2, 5, 11), P 16, Rp 4: request 1 straddles 3,
    // request 2 straddles 10.
    let (slices, padded) = at(&[2, 3, 6], 16, 4, 3, &[3, 10]);
    assert_eq!(slices, sl(&[[0, 2, 0, 3], [1, 3, 3, 10], [2, 3, 10, 11]]));
    assert_eq!(padded, sl(&[[0, 2, 0, 3], [1, 3, 3, 10], [2, 4, 10, 16]]));
    // Boundaries on request ends put each request in one microbatch.
    let (slices, _) = at(&[2, 3, 6], 11, -1, 3, &[2, 5]);
    assert_eq!(slices, sl(&[[0, 1, 0, 2], [1, 2, 2, 5], [2, 3, 5, 11]]));
    // One long request across four uneven microbatches.
    let (slices, _) = at(&[12], 12, -1, 4, &[1, 2, 10]);
    assert_eq!(
        slices,
        sl(&[[0, 1, 0, 1], [0, 1, 1, 2], [0, 1, 2, 10], [0, 1, 10, 12]])
    );
}

#[test]
fn zero_length_requests_follow_bisect() {
    let (slices, _) = at(&[0, 0, 4], 4, -1, 2, &[1]);
    assert_eq!(slices, sl(&[[2, 3, 0, 1], [2, 3, 1, 4]]));
    let (slices, padded) = at(&[2, 0, 0, 2, 0], 6, -1, 2, &[2]);
    assert_eq!(slices, sl(&[[0, 1, 0, 2], [3, 4, 2, 4]]));
    assert_eq!(padded, sl(&[[0, 1, 0, 2], [3, 5, 2, 6]]));
}

#[test]
fn evenly_spaced_points_equal_the_int_form() {
    let counts: Vec<i32> = (0..300).map(|i| [1, 0, 7, 1, 40][i % 5]).collect();
    let total: i32 = counts.iter().sum();
    for n in 2..6 {
        let p = total + 9;
        let s = p / n;
        let points: Vec<i32> = (1..n).map(|i| s * i).collect();
        assert_eq!(
            at(&counts, p, 310, n, &points),
            run(&counts, p, 310, n, -1).unwrap(),
            "n = {n}"
        );
    }
}

#[test]
fn padded_slices_are_optional() {
    let counts = [3, 5, 2];
    let batch = SliceBatch {
        num_scheduled_tokens: &counts,
        num_tokens_padded: 12,
        num_requests_padded: -1,
        num_ubatches: 2,
    };
    let mut slices = [UbatchSlice::default(); 2];
    make_ubatch_slices_at(&batch, &[4], &mut slices, None).unwrap();
    assert_eq!(slices.to_vec(), at(&counts, 12, -1, 2, &[4]).0);
}

#[test]
fn outputs_are_untouched_on_error() {
    let sentinel = UbatchSlice {
        request_begin: -7,
        request_end: -7,
        token_begin: -7,
        token_end: -7,
    };
    let (mut slices, mut padded) = ([sentinel; 3], [sentinel; 3]);
    let batch = SliceBatch {
        num_scheduled_tokens: &[20, 20, 20],
        num_tokens_padded: 64,
        num_requests_padded: -1,
        num_ubatches: 3,
    };
    let e = make_ubatch_slices_at(&batch, &[48, 40], &mut slices, Some(&mut padded));
    assert!(e.is_err());
    assert_eq!((slices, padded), ([sentinel; 3], [sentinel; 3]));
}

// ---- every bad input names itself ----------------------------------------------------------

#[test]
fn wrong_number_of_points() {
    // vLLM's own check (assert len(split_point) == num_ubatches - 1).
    let m = invalid_at(&[4, 4], 8, -1, 2, &[2, 4]);
    assert!(
        m.contains("split_points holds 2 entries, num_ubatches - 1 = 1 needed"),
        "{m}"
    );
    let m = invalid_at(&[4, 4], 8, -1, 3, &[2]);
    assert!(
        m.contains("split_points holds 1 entries, num_ubatches - 1 = 2"),
        "{m}"
    );
}

#[test]
fn first_point_not_positive() {
    // vLLM: slice(0, 0) (or a negative width) for microbatch 0.
    for v in [0, -5, i32::MIN] {
        let m = invalid_at(&[4, 4], 8, -1, 2, &[v]);
        assert!(
            m.contains(&format!(
                "split_points[0] = {v} must be > 0: microbatch 0 would be empty"
            )),
            "{m}"
        );
    }
}

#[test]
fn points_not_strictly_increasing() {
    // vLLM: a negative-width token slice (its padded sum still telescopes to P, so its own
    // assert passes).
    let m = invalid_at(&[20, 20, 20], 64, -1, 3, &[48, 40]);
    assert!(
        m.contains(
            "split_points[1] = 40 must be > split_points[0] = 48: microbatch 1 would be empty"
        ),
        "{m}"
    );
    let m = invalid_at(&[20, 20, 20], 64, -1, 4, &[10, 20, 20]);
    assert!(
        m.contains("split_points[2] = 20 must be > split_points[1] = 20"),
        "{m}"
    );
}

#[test]
fn point_at_or_past_the_padded_tokens() {
    // vLLM: the padded last slice [point, P) would be empty or inverted.
    let m = invalid_at(&[20, 20, 20], 64, -1, 3, &[10, 64]);
    assert!(
        m.contains(
            "split_points[1] = 64 must be < num_tokens_padded = 64: microbatch 2 would hold no token"
        ),
        "{m}"
    );
    let m = invalid_at(&[2], 8, -1, 2, &[i32::MAX]);
    assert!(
        m.contains(&format!(
            "split_points[0] = {} must be < num_tokens_padded = 8",
            i32::MAX
        )),
        "{m}"
    );
}

#[test]
fn point_at_or_past_the_scheduled_tokens() {
    // vLLM: the unpadded last slice [point, total) would be empty or inverted, and a microbatch
    // after such a point would hold no scheduled token.
    let m = invalid_at(&[4, 4, 2], 16, -1, 2, &[10]);
    assert!(
        m.contains("split_points[0] = 10 must be < sum(num_scheduled_tokens) = 10"),
        "{m}"
    );
    assert!(m.contains("microbatch 1 (the last) would be empty"), "{m}");
    let m = invalid_at(&[4, 4, 2], 16, -1, 3, &[11, 12]);
    assert!(
        m.contains(
            "split_points[0] = 11 must be < sum(num_scheduled_tokens) = 10: microbatches 1 to 2 \
             would hold no scheduled token"
        ),
        "{m}"
    );
    // All zero counts: any point is past them.
    let m = invalid_at(&[0, 0], 4, -1, 2, &[2]);
    assert!(m.contains("sum(num_scheduled_tokens) = 0"), "{m}");
}

#[test]
fn the_batch_checks_of_the_int_form() {
    /// counts, P, Rp, n, split points, the message's part.
    type Case<'a> = (&'a [i32], i32, i32, i32, &'a [i32], &'a str);
    let cases: [Case; 6] = [
        (&[], 8, -1, 2, &[4], "num_requests = 0 must be >= 1"),
        (&[4, 4], 8, -1, 1, &[], "num_ubatches = 1 must be >= 2"),
        (
            &[4, 4],
            -1,
            -1,
            2,
            &[4],
            "num_tokens_padded = -1 must be >= 0",
        ),
        (&[4, 4], 8, 1, 2, &[4], "num_requests_padded = 1 must be -1"),
        (
            &[4, -1],
            8,
            -1,
            2,
            &[2],
            "num_scheduled_tokens[1] = -1 must be >= 0",
        ),
        (
            &[5, 6],
            10,
            -1,
            2,
            &[4],
            "sum(num_scheduled_tokens) = 11 must be <= num_tokens_padded = 10",
        ),
    ];
    for (counts, p, rp, n, points, needle) in cases {
        let m = invalid_at(counts, p, rp, n, points);
        assert!(m.contains(needle), "{m}");
    }
}

#[test]
fn output_lengths_must_be_num_ubatches() {
    let batch = SliceBatch {
        num_scheduled_tokens: &[4, 4],
        num_tokens_padded: 8,
        num_requests_padded: -1,
        num_ubatches: 2,
    };
    let mut three = [UbatchSlice::default(); 3];
    let e = make_ubatch_slices_at(&batch, &[4], &mut three, None).unwrap_err();
    assert!(e.message.contains("slices holds 3 entries"), "{e}");
    let (mut two, mut one) = ([UbatchSlice::default(); 2], [UbatchSlice::default(); 1]);
    let e = make_ubatch_slices_at(&batch, &[4], &mut two, Some(&mut one)).unwrap_err();
    assert!(e.message.contains("padded_slices holds 1 entries"), "{e}");
}
