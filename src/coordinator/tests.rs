//! The coordinator's state rules without a GPU: a fake NCCL answers for a one-rank
//! communicator, so begin/poll/end/cancel/destroy run their host-only path.

use super::*;
use crate::ffi::{self, dp_status};

fn one_rank_coordinator() -> Coordinator {
    Coordinator::with_nccl(nccl::fake::one_rank(), false)
}

fn request(tokens: i32, step_id: i64) -> Request {
    Request {
        num_tokens_unpadded: tokens,
        step_id,
        ..Request::default()
    }
}

#[test]
fn begin_end_on_one_rank_decides_locally() {
    let c = one_rank_coordinator();
    let stream = no_stream();
    c.begin(stream, &request(7, 3), None).unwrap();
    assert!(c.poll().unwrap());
    let o = c.end().unwrap();
    assert_eq!((o.dp_size, o.dp_rank, o.step_id), (1, 0, 3));
    assert_eq!(o.decision.num_tokens_after_padding_self, 7);
    assert!(o.host_array.is_null() && o.device_array == 0);
    c.destroy().unwrap();
}

#[test]
fn begin_twice_is_busy_and_end_without_begin_is_invalid() {
    let c = one_rank_coordinator();
    let e = c.end().unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    assert!(e.message.contains("no exchange in flight"), "{e}");
    let e = c.poll().unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    c.begin(no_stream(), &request(1, 0), None).unwrap();
    let e = c.begin(no_stream(), &request(1, 0), None).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Busy, "{e}");
    assert!(e.message.contains("already in flight"), "{e}");
    c.end().unwrap();
    // Usable again after end.
    c.begin(no_stream(), &request(2, 0), None).unwrap();
    assert_eq!(c.end().unwrap().decision.max_num_tokens_padded, 2);
}

#[test]
fn an_invalid_request_joins_and_end_names_it_then_the_coordinator_is_usable() {
    let c = one_rank_coordinator();
    c.begin(no_stream(), &request(-3, 0), None).unwrap();
    assert!(c.poll().unwrap());
    let e = c.end().unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    assert!(e.message.contains("num_tokens_unpadded = -3"), "{e}");
    // The boundary's verdict wins over the request's own fields.
    let why = Error::new(
        ErrorKind::InvalidArgument,
        "req->allow_dp_padding holds the byte 2",
    );
    c.begin(no_stream(), &request(3, 0), Some(&why)).unwrap();
    assert_eq!(c.end().unwrap_err(), why);
    c.begin(no_stream(), &request(3, 0), None).unwrap();
    assert_eq!(c.end().unwrap().decision.max_num_tokens_padded, 3);
}

#[test]
fn a_negative_timeout_fails_at_begin_and_nothing_is_in_flight() {
    let c = one_rank_coordinator();
    let req = Request {
        timeout_ms: -1,
        ..request(3, 0)
    };
    let e = c.begin(no_stream(), &req, None).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    assert!(e.message.contains("timeout_ms = -1"), "{e}");
    assert!(c
        .end()
        .unwrap_err()
        .message
        .contains("no exchange in flight"));
}

#[test]
fn a_second_thread_inside_gets_busy() {
    let c = one_rank_coordinator();
    let held = c.inner.lock().unwrap();
    std::thread::scope(|s| {
        let e = s
            .spawn(|| c.begin(no_stream(), &request(1, 0), None))
            .join()
            .unwrap();
        let e = e.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Busy, "{e}");
        assert!(e.message.contains("another thread"), "{e}");
        let e = s.spawn(|| c.poll()).join().unwrap().unwrap_err();
        assert_eq!(e.kind, ErrorKind::Busy, "{e}");
    });
    drop(held);
}

#[test]
fn cancel_with_nothing_in_flight_then_every_call_is_cancelled_and_destroy_works() {
    let c = one_rank_coordinator();
    c.cancel().unwrap();
    for e in [
        c.begin(no_stream(), &request(1, 0), None).unwrap_err(),
        c.poll().unwrap_err(),
        c.end().unwrap_err(),
    ] {
        assert_eq!(e.kind, ErrorKind::Cancelled, "{e}");
        assert!(e.message.contains("ncclCommAbort"), "{e}");
    }
    c.cancel().unwrap(); // twice is fine
    c.destroy().unwrap();
}

#[test]
fn cancel_waits_for_a_thread_inside_and_reports_one_that_stays() {
    let c = one_rank_coordinator();
    let inside = c.shared.enter().unwrap();
    let e = c.shared.cancel().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Busy, "{e}");
    drop(inside);
    c.shared.cancel().unwrap();
    c.shared.helper_inside.store(true, Ordering::SeqCst);
    let e = c.shared.cancel().unwrap_err();
    assert!(e.message.contains("only ncclCommAbort"), "{e}");
}

#[test]
fn destroy_while_a_thread_is_inside_is_busy_and_frees_nothing() {
    let c = one_rank_coordinator();
    let inside = c.shared.enter().unwrap();
    assert_eq!(c.destroy().unwrap_err().kind, ErrorKind::Busy);
    drop(inside);
    c.destroy().unwrap();
}

#[test]
fn a_never_used_coordinator_destroys_cleanly() {
    one_rank_coordinator().destroy().unwrap();
}

#[test]
fn send_path_knob_reads_host_device_or_refuses() {
    // Read through the parser, not the process environment (tests run in parallel).
    assert_eq!(SendPath::parse(None).unwrap(), SendPath::Host);
    assert_eq!(SendPath::parse(Some("host")).unwrap(), SendPath::Host);
    assert_eq!(SendPath::parse(Some("device")).unwrap(), SendPath::Device);
    let e = SendPath::parse(Some("gpu")).unwrap_err();
    assert!(e.message.contains("DPCOORD_SEND_BUFFER"), "{e}");
}

#[test]
fn stale_slots_name_the_ranks_and_tell_aborted_from_out_of_step() {
    let slots = [[5, 0], [4, 0]]; // rank 0 carries seq 5 (current), rank 1 carries 4
    let slot = |r: usize, i: usize| slots[r][i.min(1)];
    let e = stale_error(2, 0, 5, &slot);
    assert_eq!(e.kind, ErrorKind::InconsistentRanks, "{e}");
    assert!(e.message.contains("rank 1 carries 4"), "{e}");
    let e = stale_error(2, 1, 5, &slot);
    assert_eq!(e.kind, ErrorKind::Nccl, "{e}");
}

// ---- the C functions over a coordinator built here ----

fn c_request(tokens: i32) -> ffi::dp_batch_request {
    let mut q = std::mem::MaybeUninit::<ffi::dp_batch_request>::zeroed();
    ffi::dp_batch_request_init(q.as_mut_ptr());
    // SAFETY: initialised by dp_batch_request_init.
    let mut q = unsafe { q.assume_init() };
    q.num_tokens_unpadded = tokens;
    q
}

fn c_result() -> ffi::dp_batch_result {
    let mut r = std::mem::MaybeUninit::<ffi::dp_batch_result>::zeroed();
    ffi::dp_batch_result_init(r.as_mut_ptr());
    // SAFETY: initialised by dp_batch_result_init.
    unsafe { r.assume_init() }
}

#[test]
fn c_functions_refuse_nulls() {
    use ffi::*;
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
    use ffi::*;
    let c = crate::ffi::coordinator_into_raw(one_rank_coordinator());
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
    let message = crate::ffi::tests::last_error();
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
    if nccl::nccl().is_ok() {
        return;
    }
    let mut out: *mut ffi::dp_coordinator = std::ptr::null_mut();
    let st = ffi::dp_coordinator_create(0x1000 as *mut ffi::ncclComm, &mut out);
    assert_eq!(st, dp_status::DP_ERR_LIBRARY_UNAVAILABLE);
    assert!(out.is_null());
    let mut r = c_result();
    let q = c_request(1);
    let st = ffi::dp_coordinate_batch(
        0x2000 as *mut ffi::ncclComm,
        std::ptr::null_mut(),
        &q,
        &mut r,
    );
    assert_eq!(st, dp_status::DP_ERR_LIBRARY_UNAVAILABLE);
    // Nothing was cached for the failing call.
    assert!(!lock(&CACHE).contains_key(&0x2000));
}

#[test]
fn an_invalid_request_to_dp_coordinate_batch_without_nccl_names_the_field_and_caches_nothing() {
    // Only where no NCCL can be found (CI): the marker cannot be sent, the field is named.
    if nccl::nccl().is_ok() {
        return;
    }
    let mut r = c_result();
    let q = c_request(-3);
    let comm = 0x3000 as *mut ffi::ncclComm;
    let st = ffi::dp_coordinate_batch(comm, std::ptr::null_mut(), &q, &mut r);
    assert_eq!(st, dp_status::DP_ERR_INVALID_ARGUMENT);
    let message = crate::ffi::tests::last_error();
    assert!(
        message.contains("req->num_tokens_unpadded = -3"),
        "{message}"
    );
    assert!(message.contains("other ranks are not told"), "{message}");
    assert!(!lock(&CACHE).contains_key(&0x3000));
}

fn no_stream() -> StreamHandle {
    // SAFETY: NULL is the legacy default stream; the one-rank path never uses it.
    unsafe { StreamHandle::from_raw(std::ptr::null_mut()) }
}
