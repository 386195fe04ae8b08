//! The C ABI called from Rust: NULL and `struct_size` checks, field validation, outputs left
//! untouched on failure, the thread-local last error, the string getters, and the layouts of
//! docs/ARCHITECTURE.md ("C API") pinned byte for byte. The byte-level growth, bool and
//! alignment rules are in tests/ffi_abi.rs.

mod ffi_common;

use std::mem::{align_of, offset_of, size_of, MaybeUninit};
use std::ptr::{null, null_mut};

use dpcoord::ffi::*;
use dpcoord::rules::{self, RankRecord};
use dpcoord::{Error, ErrorKind};
use ffi_common::{
    assert_fails, fake_comm, in_child_process, last_error, sentinel_result, text, SENTINEL,
    SENTINEL_RECORD,
};
use proptest::prelude::*;

/// Leaves a known message as the last error, so that a later check sees a fresh one.
fn poison_last_error() {
    let status = dp_decide_batch(null(), -12345, 0, 0, 2, null_mut(), &mut sentinel_result());
    assert_eq!(status, dp_status::DP_ERR_INVALID_ARGUMENT);
    assert!(last_error().contains("-12345"));
}

fn init_request() -> dp_batch_request {
    let mut req = MaybeUninit::<dp_batch_request>::uninit();
    dp_batch_request_init(req.as_mut_ptr());
    // SAFETY: dp_batch_request_init writes every field of a non-NULL request.
    unsafe { req.assume_init() }
}

/// A valid request that attempts microbatching.
fn ubatch_request(unpadded: i32) -> dp_batch_request {
    let mut req = init_request();
    req.num_tokens_unpadded = unpadded;
    req.allow_microbatching = true;
    req.uniform_decode = 1;
    req.ubatch.enabled = true;
    req
}

fn rec(unpadded: i32, padded: i32, ubatch: i32, dp_pad: i32, mode: i32) -> RankRecord {
    RankRecord {
        num_tokens_unpadded: unpadded,
        num_tokens_padded: padded,
        should_attempt_ubatch: ubatch,
        should_attempt_dp_pad: dp_pad,
        cudagraph_mode: mode,
    }
}

/// Every field of a result, comparable.
type ResultFields = (bool, bool, bool, [i32; 6], [usize; 2]);

fn fields(r: &dp_batch_result) -> ResultFields {
    (
        r.should_ubatch,
        r.should_dp_pad,
        r.has_num_tokens_after_padding,
        [
            r.synced_cudagraph_mode,
            r.dp_rank,
            r.dp_size,
            r.num_tokens_after_padding_self,
            r.max_num_tokens_padded,
            r.min_num_tokens_unpadded,
        ],
        [
            r.num_tokens_after_padding as usize,
            r.num_tokens_after_padding_device as usize,
        ],
    )
}

fn assert_untouched(r: &dp_batch_result) {
    assert_eq!(
        fields(r),
        fields(&sentinel_result()),
        "result written on failure"
    );
}

/// `dp_decide_batch` over a slice, with an optional array.
fn decide_ffi(
    records: &[RankRecord],
    dp_rank: i32,
    policy: i32,
    n: i32,
    out: Option<&mut [i32]>,
    result: &mut dp_batch_result,
) -> dp_status {
    let out_ptr = out.map_or(null_mut(), |o| o.as_mut_ptr());
    dp_decide_batch(
        records.as_ptr(),
        records.len() as i32,
        dp_rank,
        policy,
        n,
        out_ptr,
        result,
    )
}

// ---------------------------------------------------------------------------------------
// NULL pointers
// ---------------------------------------------------------------------------------------

#[test]
fn null_req_in_init_leaves_a_message() {
    poison_last_error();
    dp_batch_request_init(null_mut());
    let message = last_error();
    assert!(
        message.contains("req") && message.contains("NULL"),
        "{message:?}"
    );
}

#[test]
fn null_pointers_in_make_record() {
    let req = init_request();
    let mut out = SENTINEL_RECORD;
    poison_last_error();
    assert_fails(
        dp_make_record(null(), &mut out),
        dp_status::DP_ERR_INVALID_ARGUMENT,
        &["req", "NULL"],
    );
    assert_eq!(out, SENTINEL_RECORD);
    poison_last_error();
    assert_fails(
        dp_make_record(&req, null_mut()),
        dp_status::DP_ERR_INVALID_ARGUMENT,
        &["out", "NULL"],
    );
    poison_last_error();
    assert_fails(
        dp_make_record(null(), null_mut()),
        dp_status::DP_ERR_INVALID_ARGUMENT,
        &["NULL"],
    );
}

#[test]
fn null_pointers_in_decide_batch() {
    let records = [rec(1, 1, 0, 0, 0), rec(2, 2, 0, 0, 0)];
    let mut out = [SENTINEL; 2];
    let mut result = sentinel_result();
    poison_last_error();
    assert_fails(
        dp_decide_batch(null(), 2, 0, 0, 2, out.as_mut_ptr(), &mut result),
        dp_status::DP_ERR_INVALID_ARGUMENT,
        &["records", "NULL"],
    );
    assert_untouched(&result);
    assert_eq!(out, [SENTINEL; 2]);
    poison_last_error();
    assert_fails(
        dp_decide_batch(records.as_ptr(), 2, 0, 0, 2, out.as_mut_ptr(), null_mut()),
        dp_status::DP_ERR_INVALID_ARGUMENT,
        &["res", "NULL"],
    );
    assert_eq!(out, [SENTINEL; 2]);
    // The array is the one nullable pointer.
    assert_eq!(
        dp_decide_batch(records.as_ptr(), 2, 0, 0, 2, null_mut(), &mut result),
        dp_status::DP_OK
    );
}

#[test]
fn null_pointers_in_coordinate_batch() {
    let req = init_request();
    let mut result = sentinel_result();
    poison_last_error();
    assert_fails(
        dp_coordinate_batch(null_mut(), null_mut(), &req, &mut result),
        dp_status::DP_ERR_INVALID_ARGUMENT,
        &["comm", "NULL"],
    );
    assert_untouched(&result);
    poison_last_error();
    assert_fails(
        dp_coordinate_batch(fake_comm(), null_mut(), null(), &mut result),
        dp_status::DP_ERR_INVALID_ARGUMENT,
        &["req", "NULL"],
    );
    assert_untouched(&result);
    poison_last_error();
    assert_fails(
        dp_coordinate_batch(fake_comm(), null_mut(), &req, null_mut()),
        dp_status::DP_ERR_INVALID_ARGUMENT,
        &["res", "NULL"],
    );
}

#[test]
fn null_comm_in_release() {
    poison_last_error();
    assert_fails(
        dp_release(null_mut()),
        dp_status::DP_ERR_INVALID_ARGUMENT,
        &["comm", "NULL"],
    );
}

// ---------------------------------------------------------------------------------------
// dp_batch_request_init and struct_size
// ---------------------------------------------------------------------------------------

#[test]
fn init_writes_the_defaults_over_garbage() {
    let mut req = MaybeUninit::<dp_batch_request>::uninit();
    // SAFETY: writes bytes into memory we own; the struct is read only after init.
    unsafe {
        req.as_mut_ptr()
            .cast::<u8>()
            .write_bytes(0xA5, size_of::<dp_batch_request>())
    };
    dp_batch_request_init(req.as_mut_ptr());
    // SAFETY: init wrote every field.
    let req = unsafe { req.assume_init() };
    assert_eq!(req.struct_size as usize, size_of::<dp_batch_request>());
    assert_eq!(req.num_tokens_unpadded, 0);
    assert_eq!(req.num_tokens_padded, -1);
    assert!(!req.allow_microbatching);
    assert!(!req.allow_dp_padding);
    assert_eq!(req.uniform_decode, -1);
    assert_eq!(req.cudagraph_mode, DP_CUDAGRAPH_NONE);
    assert_eq!(req.pad_policy, DP_PAD_POLICY_EXPLICIT);
    assert!(!req.ubatch.enabled);
    assert_eq!(req.ubatch.num_ubatches, 2);
    assert_eq!(req.ubatch.decode_token_threshold, 32);
    assert_eq!(req.ubatch.prefill_token_threshold, 512);
    assert_eq!(req.timeout_ms, 0);
    let mut out = SENTINEL_RECORD;
    assert_eq!(dp_make_record(&req, &mut out), dp_status::DP_OK);
    assert_eq!(out, rec(0, 0, 0, 0, 0));
}

#[test]
fn struct_size_too_small_is_refused() {
    // The smallest request accepted is the 0.1 struct: everything before `step_id`.
    let first = offset_of!(dp_batch_request, step_id) as u32;
    assert_eq!(first, 48);
    for size in [0, 1, 4, first - 1] {
        let mut req = ubatch_request(100);
        req.struct_size = size;
        let mut out = SENTINEL_RECORD;
        poison_last_error();
        assert_fails(
            dp_make_record(&req, &mut out),
            dp_status::DP_ERR_INVALID_ARGUMENT,
            &[&format!("req->struct_size = {size}"), &first.to_string()],
        );
        assert_eq!(out, SENTINEL_RECORD);
        let mut result = sentinel_result();
        poison_last_error();
        assert_fails(
            dp_coordinate_batch(fake_comm(), null_mut(), &req, &mut result),
            dp_status::DP_ERR_INVALID_ARGUMENT,
            &[&format!("struct_size = {size}")],
        );
        assert_untouched(&result);
    }
}

/// A newer caller's request: this version's fields, then fields this library does not know.
#[repr(C)]
struct NewerRequest {
    base: dp_batch_request,
    newer_fields: [u32; 4],
}

#[test]
fn a_newer_callers_bigger_struct_is_accepted() {
    assert_eq!(
        size_of::<NewerRequest>(),
        size_of::<dp_batch_request>() + 16
    );
    let mut newer = MaybeUninit::<NewerRequest>::zeroed();
    let base = newer.as_mut_ptr().cast::<dp_batch_request>();
    dp_batch_request_init(base);
    // SAFETY: zeroed, then the prefix initialised by the library; all fields are valid.
    let mut newer = unsafe { newer.assume_init() };
    newer.base.struct_size = size_of::<NewerRequest>() as u32;
    newer.newer_fields = [u32::MAX, 7, 0xdead_beef, 1];
    newer.base.num_tokens_unpadded = 600;
    newer.base.num_tokens_padded = 640;
    newer.base.allow_microbatching = true;
    newer.base.uniform_decode = 0;
    newer.base.ubatch.enabled = true;
    newer.base.cudagraph_mode = DP_CUDAGRAPH_FULL;
    let mut out = SENTINEL_RECORD;
    assert_eq!(
        dp_make_record(&newer.base, &mut out),
        dp_status::DP_OK,
        "{}",
        last_error()
    );
    assert_eq!(out, rec(600, 640, 1, 0, 2));
    // The same request at this version's size gives the same record.
    let mut same = newer.base;
    same.struct_size = size_of::<dp_batch_request>() as u32;
    let mut out2 = SENTINEL_RECORD;
    assert_eq!(dp_make_record(&same, &mut out2), dp_status::DP_OK);
    assert_eq!(out, out2);
}

// ---------------------------------------------------------------------------------------
// dp_make_record: fields
// ---------------------------------------------------------------------------------------

#[test]
fn make_record_matches_plan() {
    for unpadded in [0, 31, 32, 511, 512, 100_000] {
        for uniform in [0, 1] {
            let mut req = ubatch_request(unpadded);
            req.uniform_decode = uniform;
            req.allow_dp_padding = unpadded % 2 == 0;
            req.cudagraph_mode = unpadded % 3;
            let mut out = SENTINEL_RECORD;
            assert_eq!(dp_make_record(&req, &mut out), dp_status::DP_OK);
            let want = rules::make_record(&rules::Request {
                num_tokens_unpadded: req.num_tokens_unpadded,
                num_tokens_padded: req.num_tokens_padded,
                allow_microbatching: req.allow_microbatching,
                allow_dp_padding: req.allow_dp_padding,
                uniform_decode: req.uniform_decode,
                cudagraph_mode: req.cudagraph_mode,
                pad_policy: req.pad_policy,
                ubatch: rules::UbatchConfig {
                    enabled: req.ubatch.enabled,
                    num_ubatches: req.ubatch.num_ubatches,
                    decode_token_threshold: req.ubatch.decode_token_threshold,
                    prefill_token_threshold: req.ubatch.prefill_token_threshold,
                },
                timeout_ms: req.timeout_ms,
                ..rules::Request::default()
            })
            .unwrap();
            assert_eq!(out, want);
        }
    }
}

#[test]
fn out_of_range_request_fields_are_named() {
    type Edit = fn(&mut dp_batch_request);
    let cases: [(Edit, &str); 12] = [
        (|r| r.num_tokens_unpadded = -1, "num_tokens_unpadded = -1"),
        (|r| r.num_tokens_padded = 99, "num_tokens_padded = 99"),
        (|r| r.num_tokens_padded = -2, "num_tokens_padded = -2"),
        (|r| r.uniform_decode = 2, "uniform_decode = 2"),
        (|r| r.uniform_decode = -1, "uniform_decode = -1"),
        (|r| r.cudagraph_mode = 3, "cudagraph_mode = 3"),
        (|r| r.cudagraph_mode = -1, "cudagraph_mode = -1"),
        (|r| r.pad_policy = 2, "pad_policy = 2"),
        (|r| r.ubatch.num_ubatches = 1, "num_ubatches = 1"),
        (
            |r| r.ubatch.decode_token_threshold = -1,
            "decode_token_threshold = -1",
        ),
        (
            |r| r.ubatch.prefill_token_threshold = -3,
            "prefill_token_threshold = -3",
        ),
        (|r| r.timeout_ms = i32::MIN, "timeout_ms = -2147483648"),
    ];
    for (edit, needle) in cases {
        let mut req = ubatch_request(100);
        edit(&mut req);
        let mut out = SENTINEL_RECORD;
        poison_last_error();
        assert_fails(
            dp_make_record(&req, &mut out),
            dp_status::DP_ERR_INVALID_ARGUMENT,
            &[needle],
        );
        assert_eq!(out, SENTINEL_RECORD, "{needle}");
    }
}

#[test]
fn coordinate_batch_names_an_invalid_field_when_no_marker_can_be_sent() {
    // docs/ARCHITECTURE.md: any field out of range is an invalid argument naming it. With a
    // NCCL, the request would join as the invalid-request marker; test processes find none
    // (fake_comm), so the call names the field and says no rank was told.
    for (edit, needle) in [
        (
            (|r| r.cudagraph_mode = 7) as fn(&mut dp_batch_request),
            "cudagraph_mode = 7",
        ),
        (|r| r.num_tokens_unpadded = -5, "num_tokens_unpadded = -5"),
        (|r| r.ubatch.num_ubatches = 0, "num_ubatches = 0"),
        (|r| r.timeout_ms = -1, "timeout_ms = -1"),
    ] {
        let mut req = ubatch_request(100);
        edit(&mut req);
        let mut result = sentinel_result();
        poison_last_error();
        assert_fails(
            dp_coordinate_batch(fake_comm(), null_mut(), &req, &mut result),
            dp_status::DP_ERR_INVALID_ARGUMENT,
            &[needle],
        );
        assert_untouched(&result);
    }
}

#[test]
fn release_of_a_communicator_never_seen_is_ok() {
    assert_eq!(dp_release(fake_comm()), dp_status::DP_OK);
}

// ---------------------------------------------------------------------------------------
// dp_decide_batch
// ---------------------------------------------------------------------------------------

#[test]
fn decide_batch_with_and_without_the_array() {
    let records = [
        rec(300, 310, 1, 0, 2),
        rec(400, 420, 1, 0, 1),
        rec(350, 352, 1, 0, 2),
    ];
    let mut out = [SENTINEL; 3];
    let mut result = sentinel_result();
    assert_eq!(
        decide_ffi(&records, 1, 0, 2, Some(&mut out), &mut result),
        dp_status::DP_OK
    );
    assert!(result.should_ubatch);
    assert!(result.should_dp_pad);
    assert!(result.has_num_tokens_after_padding);
    assert_eq!(result.synced_cudagraph_mode, 1);
    assert_eq!(result.dp_rank, 1);
    assert_eq!(result.dp_size, 3);
    assert_eq!(result.num_tokens_after_padding_self, 420);
    assert_eq!(result.max_num_tokens_padded, 420);
    assert_eq!(result.min_num_tokens_unpadded, 300);
    assert_eq!(result.num_tokens_after_padding, out.as_ptr());
    assert!(result.num_tokens_after_padding_device.is_null());
    assert_eq!(out, [420; 3]);

    let mut scalars_only = sentinel_result();
    assert_eq!(
        decide_ffi(&records, 1, 0, 2, None, &mut scalars_only),
        dp_status::DP_OK
    );
    assert!(!scalars_only.has_num_tokens_after_padding);
    assert!(scalars_only.num_tokens_after_padding.is_null());
    assert!(scalars_only.num_tokens_after_padding_device.is_null());
    let (a, b) = (fields(&result), fields(&scalars_only));
    assert_eq!((a.0, a.1, a.3), (b.0, b.1, b.3));
}

#[test]
fn decide_batch_dp_size_one_writes_no_array() {
    let records = [rec(5, 8, 1, 1, 2)];
    let mut out = [SENTINEL];
    let mut result = sentinel_result();
    assert_eq!(
        decide_ffi(&records, 0, 1, 2, Some(&mut out), &mut result),
        dp_status::DP_OK
    );
    assert_eq!(out, [SENTINEL]);
    assert_eq!(
        fields(&result),
        (false, false, false, [2, 0, 1, 8, 8, 5], [0, 0])
    );
}

#[test]
fn decide_batch_errors_name_the_argument_and_touch_nothing() {
    let good = [rec(5, 8, 1, 1, 2), rec(6, 8, 1, 1, 2), rec(7, 8, 1, 1, 2)];
    let mut bad_record = good;
    bad_record[2].should_attempt_ubatch = 5;
    let mut mixed = good;
    mixed[1].should_attempt_dp_pad = 0;
    let invalid = dp_status::DP_ERR_INVALID_ARGUMENT;
    // (records, dp_size, dp_rank, pad_policy, num_ubatches, status, needles)
    type Case<'a> = (
        &'a [RankRecord],
        i32,
        i32,
        i32,
        i32,
        dp_status,
        &'a [&'a str],
    );
    let cases: [Case; 11] = [
        (&good, 0, 0, 0, 2, invalid, &["dp_size = 0"]),
        (&good, -1, 0, 0, 2, invalid, &["dp_size = -1"]),
        (&good, i32::MIN, 0, 0, 2, invalid, &["dp_size"]),
        (&good, 3, 3, 0, 2, invalid, &["dp_rank = 3"]),
        (&good, 3, -1, 0, 2, invalid, &["dp_rank = -1"]),
        (&good, 3, 0, 2, 2, invalid, &["pad_policy = 2"]),
        (&good, 3, 0, -1, 2, invalid, &["pad_policy = -1"]),
        (&good, 3, 0, 0, 1, invalid, &["num_ubatches = 1"]),
        (&good, 3, 0, 1, 0, invalid, &["num_ubatches = 0"]),
        (
            &bad_record,
            3,
            0,
            0,
            2,
            invalid,
            &["records[2].should_attempt_ubatch = 5"],
        ),
        (
            &mixed,
            3,
            2,
            0,
            2,
            dp_status::DP_ERR_INCONSISTENT_RANKS,
            &["rank 0", "rank 1"],
        ),
    ];
    for (records, dp_size, dp_rank, policy, n, status, needles) in cases {
        for with_array in [true, false] {
            let mut out = [SENTINEL; 3];
            let out_ptr = if with_array {
                out.as_mut_ptr()
            } else {
                null_mut()
            };
            let mut result = sentinel_result();
            poison_last_error();
            assert_fails(
                dp_decide_batch(
                    records.as_ptr(),
                    dp_size,
                    dp_rank,
                    policy,
                    n,
                    out_ptr,
                    &mut result,
                ),
                status,
                needles,
            );
            assert_untouched(&result);
            assert_eq!(out, [SENTINEL; 3]);
        }
    }
}

#[test]
fn decide_batch_refuses_an_array_overlapping_the_records() {
    // One buffer of i32: 4 records (20 words) at words 4..24, arrays placed around them.
    let records = [
        rec(1, 2, 0, 0, 0),
        rec(3, 4, 0, 0, 0),
        rec(5, 6, 0, 0, 0),
        rec(7, 8, 0, 0, 0),
    ];
    let words: Vec<i32> = records
        .iter()
        .flat_map(|r| {
            [
                r.num_tokens_unpadded,
                r.num_tokens_padded,
                r.should_attempt_ubatch,
                r.should_attempt_dp_pad,
                r.cudagraph_mode,
            ]
        })
        .collect();
    let fresh = || {
        let mut buf = vec![SENTINEL; 4 + 20 + 4];
        buf[4..24].copy_from_slice(&words);
        buf
    };
    for (start, accepted) in [
        (0, true),
        (24, true),
        (1, false),
        (3, false),
        (4, false),
        (12, false),
        (20, false),
        (23, false),
    ] {
        let mut buf = fresh();
        let base = buf.as_mut_ptr();
        // SAFETY: both offsets stay inside `buf` (start + 4 <= 28); RankRecord is five i32.
        let (recs, out) = unsafe { (base.add(4).cast::<RankRecord>(), base.add(start)) };
        let mut result = sentinel_result();
        poison_last_error();
        let status = dp_decide_batch(recs, 4, 0, 0, 2, out, &mut result);
        if accepted {
            assert_eq!(status, dp_status::DP_OK, "start {start}: {}", last_error());
            assert_eq!(&buf[start..start + 4], &[2, 4, 6, 8]);
            assert_eq!(&buf[4..24], &words[..]);
            assert_eq!(result.num_tokens_after_padding, out.cast_const());
        } else {
            assert_fails(
                status,
                dp_status::DP_ERR_INVALID_ARGUMENT,
                &["num_tokens_after_padding", "overlaps", "records"],
            );
            assert_eq!(buf, fresh(), "start {start}: buffer written");
            assert_untouched(&result);
        }
    }
}

#[test]
fn hostile_values_return_statuses() {
    // Nothing here may crash or unwind: the worst values of every integer argument.
    let extremes = [i32::MIN, -1, 0, 1, 2, 3, i32::MAX];
    let mut req = init_request();
    for &v in &extremes {
        req.num_tokens_unpadded = v;
        req.num_tokens_padded = v;
        req.uniform_decode = v;
        req.cudagraph_mode = v.rem_euclid(4);
        req.pad_policy = v;
        req.ubatch.num_ubatches = v;
        req.ubatch.decode_token_threshold = v;
        req.ubatch.prefill_token_threshold = v;
        req.timeout_ms = v;
        let mut out = SENTINEL_RECORD;
        let status = dp_make_record(&req, &mut out);
        assert!(matches!(
            status,
            dp_status::DP_OK | dp_status::DP_ERR_INVALID_ARGUMENT
        ));
        for &w in &extremes {
            let records = [rec(v, w, v, w, v), rec(w, v, w, v, w)];
            let mut result = sentinel_result();
            let mut array = [SENTINEL; 2];
            let status = decide_ffi(
                &records,
                w.rem_euclid(3),
                v,
                w,
                Some(&mut array),
                &mut result,
            );
            assert!(matches!(
                status,
                dp_status::DP_OK
                    | dp_status::DP_ERR_INVALID_ARGUMENT
                    | dp_status::DP_ERR_INCONSISTENT_RANKS
            ));
            // A huge dp_size with an out-of-range rank is refused before any record is read.
            let status = dp_decide_batch(
                records.as_ptr(),
                i32::MAX,
                -1,
                0,
                2,
                null_mut(),
                &mut result,
            );
            assert_eq!(status, dp_status::DP_ERR_INVALID_ARGUMENT);
        }
    }
}

// ---------------------------------------------------------------------------------------
// Strings, version, error mapping
// ---------------------------------------------------------------------------------------

#[test]
fn status_strings() {
    let names = [
        "DP_OK",
        "DP_ERR_INVALID_ARGUMENT",
        "DP_ERR_INCONSISTENT_RANKS",
        "DP_ERR_CUDA",
        "DP_ERR_NCCL",
        "DP_ERR_TIMEOUT",
        "DP_ERR_LIBRARY_UNAVAILABLE",
        "DP_ERR_BUSY",
        "DP_ERR_INTERNAL",
        "DP_ERR_CANCELLED",
        "DP_ERR_PEER_EXITED",
        "DP_ERR_CORRUPT",
    ];
    for (code, name) in names.iter().enumerate() {
        assert_eq!(text(dp_status_string(code as u32)), *name);
        // Static: the same pointer every time.
        assert_eq!(dp_status_string(code as u32), dp_status_string(code as u32));
    }
    for code in [12, 13, 255, 1 << 31, u32::MAX] {
        assert_eq!(text(dp_status_string(code)), "DP_ERR_UNKNOWN");
    }
}

#[test]
fn version_matches_the_package_and_the_constants() {
    let version = text(dp_version());
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    assert_eq!(
        version,
        format!("{DPCOORD_VERSION_MAJOR}.{DPCOORD_VERSION_MINOR}.{DPCOORD_VERSION_PATCH}")
    );
    assert_eq!(dp_version(), dp_version());
}

#[test]
fn the_header_names_this_version_and_its_soname() {
    let header = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/include/dpcoord.h"))
        .expect("include/dpcoord.h");
    let (major, minor) = (DPCOORD_VERSION_MAJOR, DPCOORD_VERSION_MINOR);
    // cbindgen.toml's header text is written by hand: it must follow a version bump.
    assert_eq!(
        major, 0,
        "from 1.0 on the SONAME is libdpcoord.so.<major>: update this test"
    );
    for needle in [
        format!("C API {major}.{minor}"),
        format!("SONAME is libdpcoord.so.{major}.{minor}"),
        format!("#define DPCOORD_VERSION_MINOR {minor}"),
    ] {
        assert!(
            header.contains(&needle),
            "include/dpcoord.h lacks {needle:?}"
        );
    }
}

#[test]
fn every_error_maps_to_its_status() {
    let m = |e: Error| dp_status::from(e.kind);
    let s = String::new;
    assert_eq!(
        m(Error::new(ErrorKind::InvalidArgument, s())),
        dp_status::DP_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        m(Error::new(ErrorKind::InconsistentRanks, s())),
        dp_status::DP_ERR_INCONSISTENT_RANKS
    );
    assert_eq!(m(Error::new(ErrorKind::Cuda, s())), dp_status::DP_ERR_CUDA);
    assert_eq!(m(Error::new(ErrorKind::Nccl, s())), dp_status::DP_ERR_NCCL);
    assert_eq!(
        m(Error::new(ErrorKind::Timeout, s())),
        dp_status::DP_ERR_TIMEOUT
    );
    assert_eq!(
        m(Error::new(ErrorKind::LibraryUnavailable, s())),
        dp_status::DP_ERR_LIBRARY_UNAVAILABLE
    );
    assert_eq!(m(Error::new(ErrorKind::Busy, s())), dp_status::DP_ERR_BUSY);
    assert_eq!(
        m(Error::new(ErrorKind::Cancelled, s())),
        dp_status::DP_ERR_CANCELLED
    );
    assert_eq!(
        m(Error::new(ErrorKind::PeerExited, s())),
        dp_status::DP_ERR_PEER_EXITED
    );
    assert_eq!(
        m(Error::new(ErrorKind::Corrupt, s())),
        dp_status::DP_ERR_CORRUPT
    );
    // What a panic caught at the boundary becomes.
    assert_eq!(m(Error::internal(s())), dp_status::DP_ERR_INTERNAL);
}

// ---------------------------------------------------------------------------------------
// The last error
// ---------------------------------------------------------------------------------------

#[test]
fn last_error_is_thread_local() {
    use std::sync::Barrier;
    let barrier = Barrier::new(2);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            // Thread A fails first.
            assert_fails(
                dp_decide_batch(null(), 2, 5, 0, 2, null_mut(), &mut sentinel_result()),
                dp_status::DP_ERR_INVALID_ARGUMENT,
                &["dp_rank = 5"],
            );
            barrier.wait(); // B looks, then fails its own way.
            barrier.wait();
            assert!(last_error().contains("dp_rank = 5"), "{}", last_error());
            assert!(!last_error().contains("pad_policy"));
        });
        scope.spawn(|| {
            barrier.wait();
            assert_eq!(last_error(), "", "thread B sees thread A's failure");
            let mut result = sentinel_result();
            let records = [rec(1, 1, 0, 0, 0), rec(1, 1, 0, 0, 0)];
            assert_fails(
                decide_ffi(&records, 0, 9, 2, None, &mut result),
                dp_status::DP_ERR_INVALID_ARGUMENT,
                &["pad_policy = 9"],
            );
            barrier.wait();
        });
    });
}

#[test]
fn last_error_survives_successful_calls() {
    let records = [rec(1, 1, 0, 0, 0), rec(1, 1, 0, 0, 0)];
    let mut result = sentinel_result();
    assert_eq!(
        decide_ffi(&records, 0, 0, 1, None, &mut result),
        dp_status::DP_ERR_INVALID_ARGUMENT
    );
    let message = last_error();
    assert!(message.contains("num_ubatches = 1"));
    assert_eq!(
        decide_ffi(&records, 0, 0, 2, None, &mut result),
        dp_status::DP_OK
    );
    let mut out = SENTINEL_RECORD;
    assert_eq!(dp_make_record(&init_request(), &mut out), dp_status::DP_OK);
    assert_eq!(dp_status_string(0), dp_status_string(0));
    assert_eq!(last_error(), message);
}

#[test]
fn last_error_is_empty_on_a_fresh_thread() {
    std::thread::spawn(|| assert_eq!(last_error(), ""))
        .join()
        .unwrap();
}

/// A failing call made while the thread's thread-locals are being destroyed (from a C++
/// `thread_local` destructor, or a Rust one) must not abort the process: the last-error slot
/// is gone then, and the message is dropped instead. Runs in a child process, since a failure
/// here would kill the test binary.
#[test]
fn a_failure_during_thread_exit_does_not_abort() {
    in_child_process("a_failure_during_thread_exit_does_not_abort", || {
        struct FailsAtThreadExit;
        impl Drop for FailsAtThreadExit {
            fn drop(&mut self) {
                // A C++ thread_local whose destructor calls dp_release, say: it runs after
                // dpcoord's own thread-local last error has been destroyed.
                let status = dp_release(null_mut());
                assert_eq!(status, dp_status::DP_ERR_INVALID_ARGUMENT);
                let _ = dp_last_error();
            }
        }
        thread_local! { static AT_EXIT: FailsAtThreadExit = const { FailsAtThreadExit }; }
        std::thread::spawn(|| {
            AT_EXIT.with(|_| {});
            // The first failure creates dpcoord's thread-local after ours: it is destroyed
            // first.
            assert_eq!(dp_release(null_mut()), dp_status::DP_ERR_INVALID_ARGUMENT);
        })
        .join()
        .unwrap();
    });
}

// ---------------------------------------------------------------------------------------
// Layouts (docs/ARCHITECTURE.md, "C API")
// ---------------------------------------------------------------------------------------

#[test]
fn dp_batch_request_layout() {
    assert_eq!(size_of::<dp_batch_request>(), 96);
    assert_eq!(align_of::<dp_batch_request>(), 8);
    assert_eq!(offset_of!(dp_batch_request, struct_size), 0);
    assert_eq!(offset_of!(dp_batch_request, num_tokens_unpadded), 4);
    assert_eq!(offset_of!(dp_batch_request, num_tokens_padded), 8);
    assert_eq!(offset_of!(dp_batch_request, allow_microbatching), 12);
    assert_eq!(offset_of!(dp_batch_request, allow_dp_padding), 13);
    assert_eq!(offset_of!(dp_batch_request, uniform_decode), 16);
    assert_eq!(offset_of!(dp_batch_request, cudagraph_mode), 20);
    assert_eq!(offset_of!(dp_batch_request, pad_policy), 24);
    assert_eq!(offset_of!(dp_batch_request, ubatch), 28);
    assert_eq!(offset_of!(dp_batch_request, timeout_ms), 44);
    // 0.2: appended; the 0.1 struct ends here.
    assert_eq!(offset_of!(dp_batch_request, step_id), 48);
    // 0.3: appended; the 0.2 struct ends here (56 bytes).
    assert_eq!(offset_of!(dp_batch_request, rules), 56);
    assert_eq!(offset_of!(dp_batch_request, parent_step_id), 64);
    assert_eq!(offset_of!(dp_batch_request, num_reqs), 72);
    assert_eq!(offset_of!(dp_batch_request, uniform_token_count), 76);
    assert_eq!(offset_of!(dp_batch_request, max_query_len), 80);
    assert_eq!(offset_of!(dp_batch_request, num_active_loras), 84);
    assert_eq!(offset_of!(dp_batch_request, allow_skip_drafts), 88);
    assert_eq!(offset_of!(dp_batch_request, need_eager), 89);
}

#[test]
fn dp_ubatch_config_layout() {
    assert_eq!(size_of::<dp_ubatch_config>(), 16);
    assert_eq!(align_of::<dp_ubatch_config>(), 4);
    assert_eq!(offset_of!(dp_ubatch_config, enabled), 0);
    assert_eq!(offset_of!(dp_ubatch_config, num_ubatches), 4);
    assert_eq!(offset_of!(dp_ubatch_config, decode_token_threshold), 8);
    assert_eq!(offset_of!(dp_ubatch_config, prefill_token_threshold), 12);
}

#[test]
fn dp_rank_record_layout() {
    assert_eq!(size_of::<RankRecord>(), 20);
    assert_eq!(align_of::<RankRecord>(), 4);
    assert_eq!(offset_of!(RankRecord, num_tokens_unpadded), 0);
    assert_eq!(offset_of!(RankRecord, num_tokens_padded), 4);
    assert_eq!(offset_of!(RankRecord, should_attempt_ubatch), 8);
    assert_eq!(offset_of!(RankRecord, should_attempt_dp_pad), 12);
    assert_eq!(offset_of!(RankRecord, cudagraph_mode), 16);
}

#[test]
fn dp_batch_result_layout() {
    assert_eq!(size_of::<dp_batch_result>(), 128);
    assert_eq!(align_of::<dp_batch_result>(), 8);
    // 0.2: a leading struct_size (the one breaking change), then 0.1's fields, then step_id.
    assert_eq!(offset_of!(dp_batch_result, struct_size), 0);
    assert_eq!(offset_of!(dp_batch_result, should_ubatch), 4);
    assert_eq!(offset_of!(dp_batch_result, should_dp_pad), 5);
    assert_eq!(offset_of!(dp_batch_result, has_num_tokens_after_padding), 6);
    assert_eq!(offset_of!(dp_batch_result, synced_cudagraph_mode), 8);
    assert_eq!(offset_of!(dp_batch_result, dp_rank), 12);
    assert_eq!(offset_of!(dp_batch_result, dp_size), 16);
    assert_eq!(
        offset_of!(dp_batch_result, num_tokens_after_padding_self),
        20
    );
    assert_eq!(offset_of!(dp_batch_result, max_num_tokens_padded), 24);
    assert_eq!(offset_of!(dp_batch_result, min_num_tokens_unpadded), 28);
    assert_eq!(offset_of!(dp_batch_result, num_tokens_after_padding), 32);
    assert_eq!(
        offset_of!(dp_batch_result, num_tokens_after_padding_device),
        40
    );
    assert_eq!(offset_of!(dp_batch_result, step_id), 48);
    // 0.3: appended; the 0.2 struct ends here (56 bytes).
    assert_eq!(offset_of!(dp_batch_result, last_rank), 56);
    assert_eq!(offset_of!(dp_batch_result, arrival_skew_ns), 64);
    assert_eq!(offset_of!(dp_batch_result, wait_ns), 72);
    assert_eq!(offset_of!(dp_batch_result, idle), 80);
    assert_eq!(offset_of!(dp_batch_result, local), 81);
    assert_eq!(offset_of!(dp_batch_result, eager), 82);
    assert_eq!(offset_of!(dp_batch_result, skip_drafts), 83);
    assert_eq!(offset_of!(dp_batch_result, graph_mode), 84);
    assert_eq!(offset_of!(dp_batch_result, graph_num_tokens), 88);
    assert_eq!(offset_of!(dp_batch_result, graph_num_reqs), 92);
    assert_eq!(offset_of!(dp_batch_result, graph_uniform_token_count), 96);
    assert_eq!(offset_of!(dp_batch_result, graph_max_query_len), 100);
    assert_eq!(offset_of!(dp_batch_result, num_ubatches), 104);
    assert_eq!(offset_of!(dp_batch_result, agreed_uniform_token_count), 108);
    assert_eq!(offset_of!(dp_batch_result, agreed_max_query_len), 112);
    assert_eq!(offset_of!(dp_batch_result, max_num_reqs), 116);
    assert_eq!(offset_of!(dp_batch_result, rules), 120);
}

#[test]
fn dp_status_discriminants() {
    assert_eq!(size_of::<dp_status>(), 4);
    let all = [
        dp_status::DP_OK,
        dp_status::DP_ERR_INVALID_ARGUMENT,
        dp_status::DP_ERR_INCONSISTENT_RANKS,
        dp_status::DP_ERR_CUDA,
        dp_status::DP_ERR_NCCL,
        dp_status::DP_ERR_TIMEOUT,
        dp_status::DP_ERR_LIBRARY_UNAVAILABLE,
        dp_status::DP_ERR_BUSY,
        dp_status::DP_ERR_INTERNAL,
        dp_status::DP_ERR_CANCELLED,
        dp_status::DP_ERR_PEER_EXITED,
        dp_status::DP_ERR_CORRUPT,
    ];
    for (code, status) in all.into_iter().enumerate() {
        assert_eq!(status as u32, code as u32);
        assert_eq!(text(dp_status_string(status as u32)), format!("{status:?}"));
    }
}

#[test]
fn public_constants() {
    assert_eq!(
        (DP_PAD_POLICY_EXPLICIT, DP_PAD_POLICY_WHEN_CUDAGRAPH),
        (0, 1)
    );
    assert_eq!(
        (DP_CUDAGRAPH_NONE, DP_CUDAGRAPH_PIECEWISE, DP_CUDAGRAPH_FULL),
        (0, 1, 2)
    );
}

// ---------------------------------------------------------------------------------------
// The C path agrees with the Rust one
// ---------------------------------------------------------------------------------------

fn record_strategy() -> impl Strategy<Value = RankRecord> {
    (0..=600i32, 0..=40i32, 0..=1i32, 0..=1i32, 0..=2i32, 0..40u8).prop_map(
        |(u, extra, ub, pad, mode, corrupt)| {
            let mut r = rec(u, u + extra, ub, pad, mode);
            match corrupt {
                0 => r.num_tokens_padded = u - 1,
                1 => r.should_attempt_ubatch = 2,
                2 => r.cudagraph_mode = 3,
                _ => {}
            }
            r
        },
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn decide_batch_agrees_with_plan_decide(
        records in proptest::collection::vec(record_strategy(), 1..=32),
        all_pad in any::<Option<bool>>(),
        rank_seed in any::<u16>(),
        policy in 0..=1i32,
        n in 2..=5i32,
    ) {
        let mut records = records;
        if let Some(pad) = all_pad {
            for r in &mut records {
                r.should_attempt_dp_pad = i32::from(pad);
            }
        }
        let rank = i32::from(rank_seed) % records.len() as i32;
        let mut want_out = vec![SENTINEL; records.len()];
        let want = rules::decide(&records, rank, policy, n, Some(&mut want_out));
        let mut out = vec![SENTINEL; records.len()];
        let mut result = sentinel_result();
        let status = decide_ffi(&records, rank, policy, n, Some(&mut out), &mut result);
        prop_assert_eq!(&out, &want_out);
        match want {
            Ok(d) => {
                prop_assert_eq!(status, dp_status::DP_OK);
                let ptr = if d.has_num_tokens_after_padding { out.as_ptr() as usize } else { 0 };
                prop_assert_eq!(
                    fields(&result),
                    (
                        d.should_ubatch,
                        d.should_dp_pad,
                        d.has_num_tokens_after_padding,
                        [
                            d.synced_cudagraph_mode,
                            rank,
                            records.len() as i32,
                            d.num_tokens_after_padding_self,
                            d.max_num_tokens_padded,
                            d.min_num_tokens_unpadded,
                        ],
                        [ptr, 0],
                    )
                );
            }
            Err(e) => {
                prop_assert_eq!(status, dp_status::from(e.kind));
                prop_assert_eq!(format!("{e}"), last_error());
                prop_assert_eq!(fields(&result), fields(&sentinel_result()));
            }
        }
    }
}
