//! The coordinator's state rules without a GPU: a fake NCCL answers for a one-rank
//! communicator, so begin/poll/end/cancel/destroy run their host-only path.

use super::verdict::stale_error;
use super::*;
use crate::cuda::StreamHandle;

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
    let e = c.destroy().unwrap_err();
    assert_eq!(e.kind, ErrorKind::Busy);
    assert!(
        e.message
            .ends_with("on this coordinator; cancel it first (dp_coordinator_cancel)"),
        "{e}"
    );
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
    // It says what the sequence number detects, and that it does not detect a skipped call.
    assert!(e.message.contains("recreated"), "{e}");
    assert!(
        e.message
            .contains("aborted or completed on only some ranks"),
        "{e}"
    );
    assert!(
        e.message
            .contains("a rank that skipped a call is caught only by step ids"),
        "{e}"
    );
    let e = stale_error(2, 1, 5, &slot);
    assert_eq!(e.kind, ErrorKind::Nccl, "{e}");
    assert!(e.message.contains("aborted, partial or failed"), "{e}");
}

fn no_stream() -> StreamHandle {
    // SAFETY: NULL is the legacy default stream; the one-rank path never uses it.
    unsafe { StreamHandle::from_raw(std::ptr::null_mut()) }
}
