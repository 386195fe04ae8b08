//! The coordinator's state rules without a GPU: a fake NCCL answers for a one-rank
//! communicator, so begin/poll/end/cancel/destroy run their host-only path.

use super::verdict::{self, stale_error};
use super::*;
use crate::cuda::StreamHandle;
use crate::rules::{self, Agreement, Decision};
use crate::slot::Slot;

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

/// The V1 decision of an outcome.
fn v1(d: Decided) -> Decision {
    match d {
        Decided::V1(d) => d,
        Decided::V2(a) => panic!("a V1 step decided V2: {a}"),
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
    assert_eq!(v1(o.decision).num_tokens_after_padding_self, 7);
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
    assert_eq!(v1(c.end().unwrap().decision).max_num_tokens_padded, 2);
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
    assert_eq!(v1(c.end().unwrap().decision).max_num_tokens_padded, 3);
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
    // Rank 0 carries seq 5 (current), rank 1 carries 4.
    let slots = [slot_of(&request(1, 0), 5, 0), slot_of(&request(1, 0), 4, 0)];
    let e = stale_error(&slots, 0, 5);
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
    let e = stale_error(&slots, 1, 5);
    assert_eq!(e.kind, ErrorKind::Nccl, "{e}");
    assert!(e.message.contains("aborted, partial or failed"), "{e}");
}

fn slot_of(req: &Request, seq: u32, arrival_ns: i64) -> Slot {
    rules::slots::make(req, seq, arrival_ns, None).expect("a valid request")
}

#[test]
fn begin_sends_the_slot_rules_make_or_the_marker() {
    let req = Request {
        num_tokens_padded: 16,
        allow_dp_padding: true,
        cudagraph_mode: 2,
        pad_policy: rules::DP_PAD_POLICY_WHEN_CUDAGRAPH,
        parent_step_id: 4,
        ..request(9, 11)
    };
    let (slot, rejected) = own_slot(&req, None, 7, 123_456, None).unwrap();
    assert!(rejected.is_none());
    assert_eq!(slot, slot_of(&req, 7, 123_456));
    assert!(slot.intact());
    assert_eq!((slot.seq(), slot.arrival_ns()), (7, 123_456));
    // An invalid request, a refusal by the C boundary or an unusable stream: the marker,
    // with this exchange's sequence number and arrival time, and the reason.
    let why = Error::new(
        ErrorKind::InvalidArgument,
        "stream is capturing a CUDA graph",
    );
    for (req, refused, names) in [
        (request(-3, 0), None, "num_tokens_unpadded = -3"),
        (req, Some(why.clone()), "capturing"),
        (
            Request {
                rules: rules::DP_RULES_VLLM_V2,
                ..req
            },
            None,
            "num_tokens_padded = 16 must be -1 under rules = 1",
        ),
    ] {
        let (slot, rejected) = own_slot(&req, refused, 8, 99, None).unwrap();
        assert_eq!(slot, Slot::marker(8, 99));
        assert!(slot.intact() && slot.is_marker());
        let e = rejected.expect("the reason");
        assert!(e.message.contains(names), "{e}");
    }
    // A negative timeout cannot join (the wait would have no bound).
    let e = own_slot(
        &Request {
            timeout_ms: -1,
            ..request(3, 0)
        },
        None,
        1,
        0,
        None,
    )
    .unwrap_err();
    assert!(e.message.contains("timeout_ms = -1"), "{e}");
}

/// The host block as the kernel leaves it for `status` over `slots`: the status and, unless
/// OK, the copy of the slots.
fn block(status: i32, slots: &[Slot]) -> Vec<i32> {
    let n = slots.len();
    let mut w = vec![0; k::host_block_words(n)];
    w[k::HOST_STATUS] = status;
    let base = k::host_slots_offset(n);
    for (r, s) in slots.iter().enumerate() {
        for (i, &x) in s.opaque.iter().enumerate() {
            w[base + r * k::SLOT_WORDS + i] = x as i32;
        }
    }
    w
}

/// What `rules::slots` says about V1 `slots`, as rank `dp_rank`.
fn host_verdict(slots: &[Slot], dp_rank: i32) -> Result<Decision> {
    let checked = rules::slots::check(slots, None)?;
    rules::slots::decide_v1(slots, dp_rank, None, &checked, None)
}

#[test]
fn every_flagged_verdict_reads_as_the_error_rules_slots_gives() {
    let seq = 3;
    let base = Request {
        allow_dp_padding: true,
        step_id: 40,
        ..request(10, 40)
    };
    let three = |change: &dyn Fn(usize, &mut Request)| -> Vec<Slot> {
        (0..3)
            .map(|r| {
                let mut q = base;
                change(r, &mut q);
                slot_of(&q, seq, 1000 + r as i64)
            })
            .collect()
    };
    let reseal = |mut s: Slot, word: usize, value: u32| {
        s.opaque[word] = value;
        s.seal();
        s
    };
    let mut corrupt = three(&|_, _| {});
    corrupt[1].opaque[crate::slot::at::RECORD] ^= 1;
    let mut marker = three(&|_, _| {});
    marker[2] = Slot::marker(seq, 5);
    let mut invalid = three(&|_, _| {});
    invalid[1] = reseal(invalid[1], crate::slot::at::RECORD + 1, 3); // padded < unpadded
    let cases: Vec<(i32, Vec<Slot>, &str)> = vec![
        (k::STATUS_CORRUPT, corrupt, "slots[1] fails its checksum"),
        (
            k::STATUS_MARKER,
            marker,
            "records[2] is the invalid-request marker",
        ),
        (
            k::STATUS_CONFIG,
            three(&|r, q| {
                if r == 2 {
                    q.pad_policy = rules::DP_PAD_POLICY_WHEN_CUDAGRAPH;
                }
            }),
            "pad_policy differs: rank 0 has 0, rank 2 has 1",
        ),
        (
            k::STATUS_CONFIG,
            three(&|r, q| {
                q.ubatch.enabled = true;
                q.ubatch.num_ubatches = if r == 1 { 3 } else { 2 };
            }),
            "num_ubatches (0: microbatching disabled) differs: rank 0 has 2, rank 1 has 3",
        ),
        (
            k::STATUS_STEP_IDS,
            three(&|r, q| q.step_id = if r == 1 { 41 } else { 40 }),
            "rank 0 passed step_id 40, rank 1 passed step_id 41",
        ),
        (
            k::STATUS_STEP_IDS,
            three(&|r, q| q.parent_step_id = r as i64),
            "rank 0 passed parent_step_id 0, rank 1 passed parent_step_id 1",
        ),
        (
            k::STATUS_INVALID,
            invalid,
            "records[1].num_tokens_padded = 3",
        ),
        (
            k::STATUS_INCONSISTENT,
            three(&|r, q| q.allow_dp_padding = r != 1),
            "should_attempt_dp_pad (allow_dp_padding) differs",
        ),
    ];
    for (status, slots, names) in cases {
        let want = host_verdict(&slots, 0).expect_err("rules::slots refuses the slots");
        assert!(want.message.contains(names), "{want}");
        let words = block(status, &slots);
        let got =
            verdict::read(&|i| words[i], 3, 0, seq, None).expect_err("the verdict is an error");
        assert_eq!(got, want, "status {status}");
    }
    // A flag that rules::slots does not confirm is dpcoord's bug, said as such.
    let fine = three(&|_, _| {});
    let words = block(k::STATUS_CONFIG, &fine);
    let e = verdict::read(&|i| words[i], 3, 0, seq, None).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Internal, "{e}");
    assert!(e.message.contains("flagged status 4"), "{e}");
    // Stale: the transport's own message.
    let mut stale = three(&|_, _| {});
    stale[2] = reseal(stale[2], crate::slot::at::SEQ, seq - 1);
    let words = block(k::STATUS_STALE, &stale);
    let e = verdict::read(&|i| words[i], 3, 1, seq, None).unwrap_err();
    assert_eq!(e, stale_error(&stale, 1, seq));
    assert!(e.message.contains("rank 2 carries 2"), "{e}");
}

#[test]
fn an_accepted_verdict_reads_the_decision_and_the_straggler_report() {
    let mut w = vec![0; k::host_block_words(2)];
    w[k::HOST_STATUS] = k::STATUS_OK;
    w[k::HOST_SHOULD_UBATCH] = 1;
    w[k::HOST_SHOULD_DP_PAD] = 1;
    w[k::HOST_SYNCED_CUDAGRAPH_MODE] = 2;
    w[k::HOST_NUM_TOKENS_AFTER_PADDING_SELF] = 96;
    w[k::HOST_MAX_NUM_TOKENS_PADDED] = 96;
    w[k::HOST_MIN_NUM_TOKENS_UNPADDED] = 64;
    w[k::HOST_NUM_UBATCHES] = 3;
    w[k::HOST_LAST_RANK] = 1;
    let skew: i64 = (5 << 32) + 7;
    w[k::HOST_SKEW] = skew as i32;
    w[k::HOST_SKEW + 1] = (skew >> 32) as i32;
    let p = verdict::read(&|i| w[i], 2, 0, 9, None).unwrap();
    assert_eq!(
        v1(p.decided),
        Decision {
            should_ubatch: true,
            should_dp_pad: true,
            has_num_tokens_after_padding: true,
            synced_cudagraph_mode: 2,
            num_tokens_after_padding_self: 96,
            max_num_tokens_padded: 96,
            min_num_tokens_unpadded: 64,
            num_ubatches: 3,
        }
    );
    assert_eq!((p.last_rank, p.arrival_skew_ns), (1, skew));
    // The V2 words, by the rule set the kernel names.
    w[k::HOST_RULES] = rules::DP_RULES_VLLM_V2;
    for (i, v) in [
        (k::HOST_IDLE, 0),
        (k::HOST_EAGER, 0),
        (k::HOST_SKIP_DRAFTS, 1),
        (k::HOST_HAS_ARRAY, 1),
        (k::HOST_GRAPH_NUM_TOKENS, 96),
        (k::HOST_GRAPH_NUM_REQS, 48),
        (k::HOST_GRAPH_UNIFORM, 2),
        (k::HOST_GRAPH_MAX_QUERY_LEN, -1),
        (k::HOST_GRAPH_LORAS, 4),
        (k::HOST_AGREED_UNIFORM, 2),
        (k::HOST_AGREED_MAX_QUERY_LEN, 2),
        (k::HOST_MAX_NUM_REQS, 40),
    ] {
        w[i] = v;
    }
    let p = verdict::read(&|i| w[i], 2, 0, 9, None).unwrap();
    let want = Agreement {
        idle: false,
        graph: rules::Descriptor {
            mode: 2,
            num_tokens: 96,
            num_reqs: 48,
            uniform_token_count: 2,
            max_query_len: -1,
            num_ubatches: 3,
            num_active_loras: 4,
        },
        eager: false,
        uniform_token_count: 2,
        max_query_len: 2,
        max_num_reqs: 40,
        skip_drafts: true,
        has_array: true,
        padded: true,
        num_tokens_self: 96,
        max_num_tokens: 96,
        min_num_tokens: 64,
    };
    assert_eq!(p.decided, Decided::V2(want));
}

/// A V2 request with its table: the kernel's verdict on a table other than the slots' reads
/// as `rules::slots`' message, naming both hashes.
#[test]
fn a_flagged_v2_verdict_reads_as_rules_slots_message_with_the_table() {
    let table = rules::GraphTable::new(&[pw_graph(8)], 1).unwrap();
    let other = rules::GraphTable::new(&[pw_graph(16)], 1).unwrap();
    let slots: Vec<Slot> = (0..2)
        .map(|r| rules::slots::make(&v2_request(5 + r, 1), 2, 10, Some(&table)).expect("valid"))
        .collect();
    let words = block(k::STATUS_INVALID, &slots);
    let e = verdict::read(&|i| words[i], 2, 0, 2, Some(&other)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
    assert!(
        e.message.contains(&format!("{:#010x}", other.hash())) && e.message.contains("graph table"),
        "{e}"
    );
    // With the slots' own table rules::slots accepts them: a flag it does not confirm.
    let e = verdict::read(&|i| words[i], 2, 0, 2, Some(&table)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Internal, "{e}");
}

fn pw_graph(tokens: i32) -> rules::Graph {
    rules::Graph {
        mode: rules::DP_CUDAGRAPH_PIECEWISE,
        num_tokens: tokens,
        num_reqs: -1,
        uniform_token_count: 0,
        max_query_len: -1,
        num_ubatches: 1,
        num_active_loras: 0,
    }
}

/// A V2 request of `tokens` tokens and `reqs` requests.
fn v2_request(tokens: i32, reqs: i32) -> Request {
    Request {
        rules: rules::DP_RULES_VLLM_V2,
        num_reqs: reqs,
        ..request(tokens, 0)
    }
}

/// One rank, decided locally: a V2 step with the table set decides as `rules::slots` does
/// with that table; `set_graphs` is refused while an exchange is in flight and after a
/// cancel, and `None` removes the table.
#[test]
fn set_graphs_gives_one_rank_steps_their_table_and_is_refused_in_flight() {
    let c = one_rank_coordinator();
    let table = Arc::new(rules::GraphTable::new(&[pw_graph(8), pw_graph(32)], 1).unwrap());
    c.set_graphs(Some(Arc::clone(&table))).unwrap();
    let req = v2_request(5, 2);
    c.begin(no_stream(), &req, None).unwrap();
    let e = c.set_graphs(None).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Busy, "{e}");
    assert!(e.message.contains("in flight"), "{e}");
    let o = c.end().unwrap();
    let slot = rules::slots::make(&req, 1, 0, Some(&table)).unwrap();
    let checked = rules::slots::check(&[slot], None).unwrap();
    let want = rules::slots::decide_v2(&[slot], 0, None, &checked, Some(&table), None).unwrap();
    assert_eq!(o.decision, Decided::V2(want));
    assert_eq!(want.graph.num_tokens, 8, "PIECEWISE 8 for 5 tokens");
    // Without the table: the request's own mode (NONE), no graph.
    c.set_graphs(None).unwrap();
    c.begin(no_stream(), &req, None).unwrap();
    let Decided::V2(a) = c.end().unwrap().decision else {
        panic!("a V2 step");
    };
    assert_eq!((a.graph.mode, a.graph.num_tokens, a.eager), (0, 5, true));
    c.cancel().unwrap();
    let e = c.set_graphs(Some(table)).unwrap_err();
    assert_eq!(e.kind, ErrorKind::Cancelled, "{e}");
}

fn no_stream() -> StreamHandle {
    // SAFETY: NULL is the legacy default stream; the one-rank path never uses it.
    unsafe { StreamHandle::from_raw(std::ptr::null_mut()) }
}
