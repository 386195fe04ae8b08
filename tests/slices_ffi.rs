//! The slicers through the C ABI (`dp_make_ubatch_slices`, `_at`, `_v2`): a vLLM case each, the
//! nullable padded slices, the pointer and overlap checks, outputs untouched on error.

mod ffi_common;

use dpcoord::ffi::{
    dp_make_ubatch_slices, dp_make_ubatch_slices_at, dp_make_ubatch_slices_v2, dp_status,
};
use dpcoord::slices::UbatchSlice;
use ffi_common::{assert_fails, last_error, SENTINEL};

const UNTOUCHED: UbatchSlice = UbatchSlice {
    request_begin: SENTINEL,
    request_end: SENTINEL,
    token_begin: SENTINEL,
    token_end: SENTINEL,
};

fn s(request_begin: i32, request_end: i32, token_begin: i32, token_end: i32) -> UbatchSlice {
    UbatchSlice {
        request_begin,
        request_end,
        token_begin,
        token_end,
    }
}

/// vLLM tests/v1/attention/test_attention_splitting.py,
/// `test_prefill_split_across_ubatches[[32, 40]-[8, 8]-12-2-1]`, through the C ABI, with a
/// padded step (P = 20, Rp = 4) to see both outputs.
#[test]
fn slices_and_padded_slices() {
    let counts = [8, 8];
    let mut slices = [UNTOUCHED; 2];
    let mut padded = [UNTOUCHED; 2];
    let status = dp_make_ubatch_slices(
        counts.as_ptr(),
        2,
        16,
        2,
        2,
        12,
        slices.as_mut_ptr(),
        padded.as_mut_ptr(),
    );
    assert_eq!(status, dp_status::DP_OK, "{}", last_error());
    assert_eq!(slices, [s(0, 2, 0, 12), s(1, 2, 12, 16)]);
    assert_eq!(padded, slices);
    let status = dp_make_ubatch_slices(
        counts.as_ptr(),
        2,
        20,
        4,
        2,
        -1,
        slices.as_mut_ptr(),
        padded.as_mut_ptr(),
    );
    assert_eq!(status, dp_status::DP_OK, "{}", last_error());
    assert_eq!(slices, [s(0, 2, 0, 10), s(1, 2, 10, 16)]);
    assert_eq!(padded, [s(0, 2, 0, 10), s(1, 4, 10, 20)]);
    // padded_slices is nullable.
    let mut three = [UNTOUCHED; 3];
    let status = dp_make_ubatch_slices(
        [5, 5, 5].as_ptr(),
        3,
        15,
        -1,
        3,
        -1,
        three.as_mut_ptr(),
        std::ptr::null_mut(),
    );
    assert_eq!(status, dp_status::DP_OK, "{}", last_error());
    assert_eq!(three, [s(0, 1, 0, 5), s(1, 2, 5, 10), s(2, 3, 10, 15)]);
}

#[test]
fn bad_arguments_are_named_and_write_nothing() {
    let counts = [4, 4];
    let mut slices = [UNTOUCHED; 2];
    let mut padded = [UNTOUCHED; 2];
    let (out, pad) = (slices.as_mut_ptr(), padded.as_mut_ptr());
    let c = counts.as_ptr();
    let odd: *const i32 = c.cast::<u8>().wrapping_add(1).cast();
    let null_out = std::ptr::null_mut();
    #[allow(clippy::type_complexity)]
    let cases: [(
        (
            *const i32,
            i32,
            i32,
            i32,
            i32,
            i32,
            *mut UbatchSlice,
            *mut UbatchSlice,
        ),
        &[&str],
    ); 10] = [
        (
            (c, 0, 8, -1, 2, -1, out, pad),
            &["num_requests = 0 must be >= 1"],
        ),
        (
            (c, 2, 8, -1, 1, -1, out, pad),
            &["num_ubatches = 1 must be >= 2"],
        ),
        (
            (std::ptr::null(), 2, 8, -1, 2, -1, out, pad),
            &["num_scheduled_tokens is NULL"],
        ),
        ((c, 2, 8, -1, 2, -1, null_out, pad), &["slices is NULL"]),
        (
            (odd, 2, 8, -1, 2, -1, out, pad),
            &["num_scheduled_tokens", "aligned"],
        ),
        (
            (c, 2, 7, -1, 2, -1, out, pad),
            &["sum(num_scheduled_tokens) = 8"],
        ),
        ((c, 2, 8, 1, 2, -1, out, pad), &["num_requests_padded = 1"]),
        ((c, 2, 8, -1, 2, 0, out, pad), &["split_point = 0"]),
        ((c, 2, 8, -1, 2, 8, out, pad), &["would be empty"]),
        (
            (c, 2, 8, -1, 2, -1, out, out),
            &["padded_slices overlaps slices"],
        ),
    ];
    for ((counts, r, p, rp, n, sp, o, po), needles) in cases {
        let status = dp_make_ubatch_slices(counts, r, p, rp, n, sp, o, po);
        assert_fails(status, dp_status::DP_ERR_INVALID_ARGUMENT, needles);
    }
    assert_eq!(slices, [UNTOUCHED; 2]);
    assert_eq!(padded, [UNTOUCHED; 2]);
}

/// vLLM's `test_prefill_split_across_ubatches[[32, 40]-[8, 8]-12-2-1]` with the split given as
/// the list `[12]`, padded (P 20, Rp 4); then three microbatches at uneven points, no padded
/// slices.
#[test]
fn at_slices_and_padded_slices() {
    let counts = [8, 8];
    let mut slices = [UNTOUCHED; 2];
    let mut padded = [UNTOUCHED; 2];
    let status = dp_make_ubatch_slices_at(
        counts.as_ptr(),
        2,
        20,
        4,
        2,
        [12].as_ptr(),
        slices.as_mut_ptr(),
        padded.as_mut_ptr(),
    );
    assert_eq!(status, dp_status::DP_OK, "{}", last_error());
    assert_eq!(slices, [s(0, 2, 0, 12), s(1, 2, 12, 16)]);
    assert_eq!(padded, [s(0, 2, 0, 12), s(1, 4, 12, 20)]);
    let mut three = [UNTOUCHED; 3];
    let status = dp_make_ubatch_slices_at(
        [2, 3, 6].as_ptr(),
        3,
        11,
        -1,
        3,
        [3, 10].as_ptr(),
        three.as_mut_ptr(),
        std::ptr::null_mut(),
    );
    assert_eq!(status, dp_status::DP_OK, "{}", last_error());
    assert_eq!(three, [s(0, 2, 0, 3), s(1, 3, 3, 10), s(2, 3, 10, 11)]);
}

/// VLLM_V2.md `ub-eager-fallback` (r0: 32 one-token requests, P 100, Rp 32, n 2, u 1) and
/// `spec4-ub` (r0: 9 requests of 4 tokens, P 48, Rp 12, n 2, u 4); tests/slices_v2.rs derives
/// the inputs.
#[test]
fn v2_slices() {
    let mut slices = [UNTOUCHED; 2];
    let status = dp_make_ubatch_slices_v2([1; 32].as_ptr(), 32, 100, 32, 2, 1, slices.as_mut_ptr());
    assert_eq!(status, dp_status::DP_OK, "{}", last_error());
    assert_eq!(slices, [s(0, 32, 0, 50), s(31, 32, 50, 100)]);
    let status = dp_make_ubatch_slices_v2([4; 9].as_ptr(), 9, 48, 12, 2, 4, slices.as_mut_ptr());
    assert_eq!(status, dp_status::DP_OK, "{}", last_error());
    assert_eq!(slices, [s(0, 6, 0, 24), s(6, 12, 24, 48)]);
}

#[test]
fn at_bad_arguments_are_named_and_write_nothing() {
    // One buffer: counts at [0, 3), split points at [3, 5), slices after them.
    let mut buf = [20i32, 20, 20, 16, 40, 0, 0];
    let base = buf.as_mut_ptr();
    let c = base.cast_const();
    let points = base.wrapping_add(3).cast_const();
    let mut slices = [UNTOUCHED; 3];
    let mut padded = [UNTOUCHED; 3];
    let (out, pad) = (slices.as_mut_ptr(), padded.as_mut_ptr());
    let odd: *const i32 = points.cast::<u8>().wrapping_add(1).cast();
    // Slices laid over the split points (and over the counts).
    let over_points: *mut UbatchSlice = base.wrapping_add(3).cast();
    let over_counts: *mut UbatchSlice = base.cast();
    let bad = [20, 16].as_ptr();
    #[allow(clippy::type_complexity)]
    let cases: [(
        (
            *const i32,
            i32,
            i32,
            *const i32,
            *mut UbatchSlice,
            *mut UbatchSlice,
        ),
        &[&str],
    ); 9] = [
        (
            (c, 0, 64, points, out, pad),
            &["num_requests = 0 must be >= 1"],
        ),
        (
            (c, 3, 64, std::ptr::null(), out, pad),
            &["split_points is NULL"],
        ),
        ((c, 3, 64, odd, out, pad), &["split_points", "aligned"]),
        (
            (c, 3, 64, points, std::ptr::null_mut(), pad),
            &["slices is NULL"],
        ),
        (
            (c, 3, 64, points, over_counts, pad),
            &["slices overlaps num_scheduled_tokens"],
        ),
        (
            (c, 3, 64, points, out, over_points),
            &["padded_slices overlaps split_points"],
        ),
        (
            (c, 3, 64, points, out, out),
            &["padded_slices overlaps slices"],
        ),
        (
            (c, 3, 64, bad, out, pad),
            &["split_points[1] = 16 must be > split_points[0] = 20"],
        ),
        (
            (c, 3, 50, points, out, pad),
            &["sum(num_scheduled_tokens) = 60 must be <= num_tokens_padded = 50"],
        ),
    ];
    for ((counts, r, p, sp, o, po), needles) in cases {
        let status = dp_make_ubatch_slices_at(counts, r, p, -1, 3, sp, o, po);
        assert_fails(status, dp_status::DP_ERR_INVALID_ARGUMENT, needles);
    }
    assert_eq!(slices, [UNTOUCHED; 3]);
    assert_eq!(padded, [UNTOUCHED; 3]);
    assert_eq!(buf, [20, 20, 20, 16, 40, 0, 0]);
}

#[test]
fn v2_bad_arguments_are_named_and_write_nothing() {
    let mut buf = [4i32, 4, 0, 0, 0, 0, 0, 0, 0, 0];
    let c = buf.as_ptr();
    let over_counts: *mut UbatchSlice = buf.as_mut_ptr().cast();
    let mut slices = [UNTOUCHED; 2];
    let out = slices.as_mut_ptr();
    let odd: *mut UbatchSlice = out.cast::<u8>().wrapping_add(2).cast();
    #[allow(clippy::type_complexity)]
    let cases: [(
        (*const i32, i32, i32, i32, i32, i32, *mut UbatchSlice),
        &[&str],
    ); 9] = [
        ((c, 0, 8, -1, 2, 0, out), &["num_requests = 0 must be >= 1"]),
        ((c, 2, 8, -1, 1, 0, out), &["num_ubatches = 1 must be >= 2"]),
        (
            (std::ptr::null(), 2, 8, -1, 2, 0, out),
            &["num_scheduled_tokens is NULL"],
        ),
        (
            (c, 2, 8, -1, 2, 0, std::ptr::null_mut()),
            &["slices is NULL"],
        ),
        ((c, 2, 8, -1, 2, 0, odd), &["slices", "aligned"]),
        (
            (c, 2, 8, -1, 2, 0, over_counts),
            &["slices overlaps num_scheduled_tokens"],
        ),
        (
            (c, 2, 7, -1, 2, 0, out),
            &["sum(num_scheduled_tokens) = 8 must be <= num_tokens_padded = 7"],
        ),
        ((c, 2, 8, 1, 2, 0, out), &["num_requests_padded = 1"]),
        (
            (c, 2, 8, -1, 2, -4, out),
            &["uniform_token_count = -4 must be >= 0"],
        ),
    ];
    for ((counts, r, p, rp, n, u, o), needles) in cases {
        let status = dp_make_ubatch_slices_v2(counts, r, p, rp, n, u, o);
        assert_fails(status, dp_status::DP_ERR_INVALID_ARGUMENT, needles);
    }
    assert_eq!(slices, [UNTOUCHED; 2]);
    assert_eq!(buf, [4, 4, 0, 0, 0, 0, 0, 0, 0, 0]);
}
