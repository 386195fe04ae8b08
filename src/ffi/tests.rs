use std::ffi::CStr;

use super::*;
use crate::coordinator::{self, Coordinator};
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

// ---- the GPU path's C functions over a fake one-rank NCCL ----

fn one_rank_coordinator() -> Coordinator {
    Coordinator::with_nccl(crate::nccl::fake::one_rank(), false)
}

fn c_request(tokens: i32) -> dp_batch_request {
    let mut q = std::mem::MaybeUninit::<dp_batch_request>::zeroed();
    dp_batch_request_init(q.as_mut_ptr());
    // SAFETY: initialised by dp_batch_request_init.
    let mut q = unsafe { q.assume_init() };
    q.num_tokens_unpadded = tokens;
    q
}

fn c_result() -> dp_batch_result {
    let mut r = std::mem::MaybeUninit::<dp_batch_result>::zeroed();
    dp_batch_result_init(r.as_mut_ptr());
    // SAFETY: initialised by dp_batch_result_init.
    unsafe { r.assume_init() }
}

#[test]
fn c_functions_refuse_nulls() {
    let mut out: *mut dp_coordinator = std::ptr::null_mut();
    assert_eq!(
        dp_coordinator_create(std::ptr::null_mut(), &mut out),
        dp_status::DP_ERR_INVALID_ARGUMENT
    );
    assert!(out.is_null());
    let fake = 0x1000 as *mut ncclComm;
    assert_eq!(
        dp_coordinator_create(fake, std::ptr::null_mut()),
        dp_status::DP_ERR_INVALID_ARGUMENT
    );
    let q = c_request(1);
    let mut r = c_result();
    let mut done = false;
    let null = std::ptr::null_mut();
    assert_eq!(
        dp_coordinator_begin(null, std::ptr::null_mut(), &q),
        dp_status::DP_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        dp_coordinator_poll(null, &mut done),
        dp_status::DP_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        dp_coordinator_end(null, &mut r),
        dp_status::DP_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        dp_coordinator_cancel(null),
        dp_status::DP_ERR_INVALID_ARGUMENT
    );
    assert_eq!(dp_coordinator_destroy(null), dp_status::DP_OK);
    assert_eq!(
        dp_cancel(std::ptr::null_mut()),
        dp_status::DP_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        dp_release(std::ptr::null_mut()),
        dp_status::DP_ERR_INVALID_ARGUMENT
    );
    let misaligned = 0x1001 as *mut dp_coordinator;
    assert_eq!(
        dp_coordinator_cancel(misaligned),
        dp_status::DP_ERR_INVALID_ARGUMENT
    );
    // A communicator dpcoord never saw: cancel and release are harmless, never touch it.
    assert_eq!(dp_cancel(0x7e57_0000 as *mut ncclComm), dp_status::DP_OK);
    assert_eq!(dp_release(0x7e57_0000 as *mut ncclComm), dp_status::DP_OK);
}

#[test]
fn c_coordinator_states_over_a_one_rank_communicator() {
    let c = dp_coordinator::into_raw(one_rank_coordinator());
    let mut r = c_result();
    let mut done = true;
    let null = std::ptr::null_mut();
    assert_eq!(
        dp_coordinator_end(c, &mut r),
        dp_status::DP_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        dp_coordinator_poll(c, &mut done),
        dp_status::DP_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        dp_coordinator_poll(c, std::ptr::null_mut()),
        dp_status::DP_ERR_INVALID_ARGUMENT
    );
    let q = c_request(5);
    assert_eq!(
        dp_coordinator_begin(c, null, std::ptr::null()),
        dp_status::DP_ERR_INVALID_ARGUMENT
    );
    assert_eq!(dp_coordinator_begin(c, null, &q), dp_status::DP_OK);
    assert_eq!(dp_coordinator_begin(c, null, &q), dp_status::DP_ERR_BUSY);
    done = false;
    assert_eq!(dp_coordinator_poll(c, &mut done), dp_status::DP_OK);
    assert!(done);
    // A result struct smaller than 0.2's is refused before anything is consumed.
    let mut small = c_result();
    small.struct_size = 8;
    assert_eq!(
        dp_coordinator_end(c, &mut small),
        dp_status::DP_ERR_INVALID_ARGUMENT
    );
    assert_eq!(dp_coordinator_end(c, &mut r), dp_status::DP_OK);
    assert_eq!((r.dp_size, r.num_tokens_after_padding_self), (1, 5));
    assert!(!r.has_num_tokens_after_padding && r.num_tokens_after_padding.is_null());
    // Bad contents join (begin OK) and end names them; the result stays untouched.
    let mut bad = c_request(5);
    bad.cudagraph_mode = 9;
    assert_eq!(dp_coordinator_begin(c, null, &bad), dp_status::DP_OK);
    let mut untouched = c_result();
    untouched.step_id = 77;
    assert_eq!(
        dp_coordinator_end(c, &mut untouched),
        dp_status::DP_ERR_INVALID_ARGUMENT
    );
    let message = last_error();
    assert!(message.contains("req->cudagraph_mode = 9"), "{message}");
    assert_eq!(untouched.step_id, 77);
    // What cannot be exchanged fails at begin: a bad struct_size, a negative timeout.
    bad = c_request(5);
    bad.struct_size = 4;
    assert_eq!(
        dp_coordinator_begin(c, null, &bad),
        dp_status::DP_ERR_INVALID_ARGUMENT
    );
    bad = c_request(5);
    bad.timeout_ms = -2;
    assert_eq!(
        dp_coordinator_begin(c, null, &bad),
        dp_status::DP_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        dp_coordinator_end(c, &mut r),
        dp_status::DP_ERR_INVALID_ARGUMENT
    ); // nothing in flight
    assert_eq!(dp_coordinator_cancel(c), dp_status::DP_OK);
    assert_eq!(
        dp_coordinator_begin(c, null, &q),
        dp_status::DP_ERR_CANCELLED
    );
    assert_eq!(dp_coordinator_destroy(c), dp_status::DP_OK);
}

#[test]
fn without_nccl_create_is_library_unavailable() {
    // Only where no NCCL can be found (CI); elsewhere, NCCL is found.
    if crate::nccl::nccl().is_ok() {
        return;
    }
    let mut out: *mut dp_coordinator = std::ptr::null_mut();
    let st = dp_coordinator_create(0x1000 as *mut ncclComm, &mut out);
    assert_eq!(st, dp_status::DP_ERR_LIBRARY_UNAVAILABLE);
    assert!(out.is_null());
    let mut r = c_result();
    let q = c_request(1);
    let st = dp_coordinate_batch(0x2000 as *mut ncclComm, std::ptr::null_mut(), &q, &mut r);
    assert_eq!(st, dp_status::DP_ERR_LIBRARY_UNAVAILABLE);
    // Nothing was cached for the failing call.
    assert!(!coordinator::is_cached(0x2000));
}

#[test]
fn an_invalid_request_to_dp_coordinate_batch_without_nccl_names_the_field_and_caches_nothing() {
    // Only where no NCCL can be found (CI): the marker cannot be sent, the field is named.
    if crate::nccl::nccl().is_ok() {
        return;
    }
    let mut r = c_result();
    let q = c_request(-3);
    let comm = 0x3000 as *mut ncclComm;
    let st = dp_coordinate_batch(comm, std::ptr::null_mut(), &q, &mut r);
    assert_eq!(st, dp_status::DP_ERR_INVALID_ARGUMENT);
    let message = last_error();
    assert!(
        message.contains("req->num_tokens_unpadded = -3"),
        "{message}"
    );
    assert!(message.contains("other ranks are not told"), "{message}");
    assert!(!coordinator::is_cached(0x3000));
}
