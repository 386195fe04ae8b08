use std::ffi::CStr;

use super::*;
use crate::error::{Error, ErrorKind};
use crate::rules::Request;

/// The calling thread's `dp_last_error`, as a String.
pub(crate) fn last_error() -> String {
    // SAFETY: dp_last_error returns a NUL-terminated thread-local string.
    unsafe { CStr::from_ptr(dp_last_error()) }
        .to_string_lossy()
        .into_owned()
}

#[test]
fn a_panic_inside_the_boundary_becomes_internal_with_its_message() {
    let status = boundary(|| panic!("boom at the boundary"));
    assert_eq!(status, dp_status::DP_ERR_INTERNAL);
    assert!(
        last_error().contains("boom at the boundary"),
        "{}",
        last_error()
    );
    let formatted = boundary(|| panic!("formatted {}", 42));
    assert_eq!(formatted, dp_status::DP_ERR_INTERNAL);
    assert!(last_error().contains("formatted 42"), "{}", last_error());
}

#[test]
fn every_error_kind_maps_to_the_status_of_its_code_and_name() {
    for &kind in ErrorKind::ALL {
        let error = Error::new(kind, "the message");
        let text = error.to_string();
        let status = boundary(|| Err(error));
        assert_eq!(status as u32, kind.code(), "{kind:?}");
        assert_eq!(status, dp_status::from(kind));
        assert_eq!(last_error(), text);
        // SAFETY: dp_status_string returns a static NUL-terminated string.
        let name = unsafe { CStr::from_ptr(dp_status_string(kind.code())) };
        assert_eq!(name, kind.status_name(), "{kind:?}");
        assert_eq!(format!("{status:?}").as_str(), name.to_str().unwrap());
    }
    assert_eq!(ErrorKind::ALL.len(), 11);
}

#[test]
fn a_message_with_a_nul_byte_is_kept_readable() {
    boundary(|| Err(Error::internal("before\0after")));
    assert!(last_error().contains("before\\0after"), "{}", last_error());
}

/// A request with no field at its default (and valid).
fn every_field_set() -> Request {
    Request {
        num_tokens_unpadded: 600,
        num_tokens_padded: 640,
        allow_microbatching: true,
        allow_dp_padding: true,
        uniform_decode: 0,
        cudagraph_mode: 2,
        pad_policy: 1,
        ubatch: crate::rules::UbatchConfig {
            enabled: true,
            num_ubatches: 3,
            decode_token_threshold: 40,
            prefill_token_threshold: 600,
        },
        timeout_ms: 1000,
        step_id: 9,
        // V1 (the default) with every V2 input set: V1 reads and range-checks them only.
        rules: crate::rules::DP_RULES_VLLM_V1,
        parent_step_id: 8,
        num_reqs: 12,
        uniform_token_count: 2,
        max_query_len: 64,
        num_active_loras: 1,
        allow_skip_drafts: true,
        need_eager: true,
    }
}

#[test]
fn every_request_field_round_trips_through_the_field_list() {
    let r = every_field_set();
    assert_ne!(r, Request::default());
    // 128 bytes, 8-aligned: a newer caller's struct.
    let mut buf = [u64::MAX; 16];
    let p = buf.as_mut_ptr().cast::<dp_batch_request>();
    // SAFETY: `buf` holds 128 writable bytes.
    unsafe { write_request(p, 128, &r) };
    assert_eq!(buf[15], u64::MAX, "written past sizeof");
    assert_eq!(read_request(p), Ok(r));
    assert_eq!(
        read_request(std::ptr::from_ref(&dp_batch_request::from(&r))),
        Ok(r)
    );
}

#[test]
fn a_0_1_request_reads_as_step_id_0() {
    let r = every_field_set();
    let mut buf = [u64::MAX; 7];
    let p = buf.as_mut_ptr().cast::<dp_batch_request>();
    // SAFETY: `buf` holds 56 writable bytes; only the first 48 are written.
    unsafe { write_request(p, REQUEST_MIN_SIZE, &r) };
    assert_eq!(buf[6], u64::MAX, "step_id written into a 0.1 request");
    let v0_1 = Request {
        step_id: 0,
        ..Request::default()
    };
    let want = Request {
        num_tokens_unpadded: r.num_tokens_unpadded,
        num_tokens_padded: r.num_tokens_padded,
        allow_microbatching: r.allow_microbatching,
        allow_dp_padding: r.allow_dp_padding,
        uniform_decode: r.uniform_decode,
        cudagraph_mode: r.cudagraph_mode,
        pad_policy: r.pad_policy,
        ubatch: r.ubatch,
        timeout_ms: r.timeout_ms,
        ..v0_1
    };
    assert_eq!(read_request(p), Ok(want));
}

#[test]
fn bad_contents_come_back_with_the_fields_read_and_the_first_fault() {
    let r = every_field_set();
    let mut c = dp_batch_request::from(&r);
    // SAFETY: `allow_dp_padding` is a one-byte C bool inside `c`; the byte 2 is what a C
    // caller can store, and the struct is only read as bytes afterwards.
    unsafe {
        std::ptr::from_mut(&mut c.allow_dp_padding)
            .cast::<u8>()
            .write(2)
    };
    c.num_tokens_unpadded = -5; // a later fault: the first one is kept
    let read = read_request_fields(&c).unwrap();
    let e = read.invalid.unwrap();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert!(
        e.message.contains("req->allow_dp_padding holds the byte 2"),
        "{e}"
    );
    // Every field after the bad byte was still read (the marker needs step_id and timeout_ms).
    assert_eq!((read.request.step_id, read.request.timeout_ms), (9, 1000));
    assert_eq!(read_request(&c), Err(e));
    // A range fault is named with the req-> prefix; a valid request has none.
    let mut c = dp_batch_request::from(&r);
    c.cudagraph_mode = 7;
    let e = read_request_fields(&c).unwrap().invalid.unwrap();
    assert!(e.message.starts_with("req->cudagraph_mode = 7"), "{e}");
    let ok = dp_batch_request::from(&r);
    assert!(read_request_fields(&ok).unwrap().invalid.is_none());
    // Only what cannot be read at all is an error of its own.
    assert!(read_request_fields(std::ptr::null()).is_err());
}

#[test]
fn the_host_decision_names_a_rank_that_sent_the_marker() {
    let good = crate::rules::RankRecord {
        num_tokens_unpadded: 4,
        num_tokens_padded: 4,
        ..Default::default()
    };
    let records = [good, crate::rules::RankRecord::MARKER, good];
    let e = crate::rules::decide(&records, 0, 0, 2, None).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument);
    assert!(
        e.message
            .contains("records[1] is the invalid-request marker"),
        "{e}"
    );
    // Any other invalid record keeps its own message.
    let bad = crate::rules::RankRecord {
        num_tokens_unpadded: -1,
        ..good
    };
    let e = crate::rules::decide(&[good, bad], 0, 0, 2, None).unwrap_err();
    assert!(
        e.message.contains("records[1].num_tokens_unpadded = -1"),
        "{e}"
    );
}
