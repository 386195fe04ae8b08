//! The GPU path over a fake NCCL and a fake CUDA driver (C libraries in `tests/fake_gpu/`,
//! loaded the way dpcoord loads the real ones), one child process per scenario: no leak when
//! `dp_coordinator_create` fails at any allocation; the watchdog protocol (`dp_cancel` until
//! `DP_OK`, then abort) at every point of the first `dp_coordinate_batch`; special streams
//! never used from another thread; a stream the coordinator cannot use still joins the
//! exchange; a timed-out first exchange frees its state once NCCL let go of it; the GPU
//! path's log lines and NVTX ranges; the slot `begin` sends; the kernel's checks and
//! decision (the fake driver runs the kernel's own logic) against `dp_decide_slots` on the
//! same slots, alone and through the coordinator; the straggler report and its INFO line.
//! The V2 rules: the kernel's V2 checks, decision and dispatch over the device graph table
//! against `dp_decide_slots` on thousands of random slot sets with tables built as vLLM builds
//! them (and a one-character change of the dispatch caught); `dp_coordinator_set_graphs`'s
//! states; V2 steps through the coordinator and `dp_coordinate_batch`; a rank with another
//! table.

mod diag_support;
mod fake_gpu;
mod v2_common;

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use dpcoord::ffi::*;
use fake_gpu::{layout, run, seal, tid, Fakes, CASE};

fn request(tokens: i32, timeout_ms: i32) -> dp_batch_request {
    let mut req = MaybeUninit::<dp_batch_request>::uninit();
    dp_batch_request_init(req.as_mut_ptr());
    // SAFETY: dp_batch_request_init wrote every field.
    let mut req = unsafe { req.assume_init() };
    req.num_tokens_unpadded = tokens;
    req.timeout_ms = timeout_ms;
    req
}

fn result() -> dp_batch_result {
    let mut res = MaybeUninit::<dp_batch_result>::uninit();
    dp_batch_result_init(res.as_mut_ptr());
    // SAFETY: dp_batch_result_init wrote every field.
    unsafe { res.assume_init() }
}

fn last_error() -> String {
    // SAFETY: dp_last_error returns a NUL-terminated thread-local string.
    unsafe { CStr::from_ptr(dp_last_error()) }
        .to_string_lossy()
        .into_owned()
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// A raw pointer that may cross threads (the fakes' handles are thread-safe).
#[derive(Clone, Copy)]
struct Raw(usize);
impl Raw {
    fn comm(self) -> *mut ncclComm {
        self.0 as *mut ncclComm
    }
    fn coordinator(self) -> *mut dp_coordinator {
        self.0 as *mut dp_coordinator
    }
}

fn stream(raw: usize) -> *mut CUstream_st {
    raw as *mut CUstream_st
}

/// `CLOCK_MONOTONIC` now, in ns (what a slot's arrival time is).
fn now_ns() -> i64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    assert_eq!(rc, 0);
    t.tv_sec * 1_000_000_000 + t.tv_nsec
}

/// `dp_make_slot`'s status and slot (written also when it refuses the request).
fn make_slot(req: &dp_batch_request) -> (dp_status, Vec<u32>) {
    let mut slot = MaybeUninit::<Slot>::zeroed();
    let st = dp_make_slot(req, std::ptr::null(), slot.as_mut_ptr());
    // SAFETY: zeroed, then written by dp_make_slot.
    (st, unsafe { slot.assume_init() }.opaque.to_vec())
}

/// `dp_decide_slots` over `n` slots given as words, as rank `rank`: status, message, result,
/// array.
fn decide_slots(
    words: &[u32],
    n: usize,
    rank: i32,
) -> (dp_status, String, dp_batch_result, Vec<i32>) {
    let slots: Vec<Slot> = words
        .chunks(layout("SLOT_WORDS"))
        .map(|w| Slot {
            opaque: w.try_into().unwrap(),
        })
        .collect();
    assert_eq!(slots.len(), n);
    let mut res = result();
    let mut out = vec![-7; n];
    let st = dp_decide_slots(
        slots.as_ptr(),
        n as i32,
        rank,
        std::ptr::null(),
        out.as_mut_ptr(),
        &mut res,
    );
    let message = if st == dp_status::DP_OK {
        String::new()
    } else {
        last_error()
    };
    (st, message, res, out)
}

/// The 64-bit value of two words (low, high).
fn join(lo: u32, hi: u32) -> i64 {
    ((u64::from(hi) << 32) | u64::from(lo)) as i64
}

/// A small deterministic generator (SplitMix64).
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn one_in(&mut self, n: usize) -> bool {
        self.below(n) == 0
    }
}

/// Polls `done` every millisecond for at most 10 s.
fn wait_for(what: &str, mut done: impl FnMut() -> bool) {
    let start = Instant::now();
    while !done() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "waited 10 s for {what}"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
#[ignore = "the body of the fake-library tests, run by them in a subprocess"]
fn child() {
    let fakes = Fakes::load();
    let case = env(CASE).expect("run by the tests below");
    match case.as_str() {
        // Create a two-rank coordinator; when that works, one exchange and destroy.
        "create" => {
            let comm = fakes.comm(2, 0).cast::<ncclComm>();
            let mut c: *mut dp_coordinator = std::ptr::null_mut();
            let status = dp_coordinator_create(comm, &mut c);
            println!("STATUS={}", status as u32);
            println!("LIVE={}", fakes.live());
            println!("ALLOCATIONS={}", fakes.allocations());
            if status == dp_status::DP_OK {
                assert_eq!(
                    dp_coordinator_begin(c, stream(0), &request(7, 5000)),
                    dp_status::DP_OK
                );
                let mut res = result();
                assert_eq!(
                    dp_coordinator_end(c, &mut res),
                    dp_status::DP_OK,
                    "{}",
                    last_error()
                );
                assert_eq!(res.num_tokens_after_padding_self, 7);
                assert_eq!(dp_coordinator_destroy(c), dp_status::DP_OK);
            } else {
                println!("ERROR={}", last_error());
                assert!(c.is_null());
            }
        }
        // A watchdog cancels a dp_coordinate_batch blocked at the point WATCH names
        // (`nccl|cuda:function:nth`), then aborts the communicator.
        "watchdog" => {
            let watch = env("WATCH").unwrap();
            let parts: Vec<&str> = watch.split(':').collect();
            let (lib, name, nth) = (parts[0], parts[1], parts[2].parse::<i64>().unwrap());
            let comm = Raw(fakes.comm(2, 0) as usize);
            let caller = std::thread::spawn(move || {
                let mut res = result();
                let status =
                    dp_coordinate_batch(comm.comm(), stream(0), &request(5, 10_000), &mut res);
                (status, last_error())
            });
            wait_for(&watch, || {
                let calls = match lib {
                    "nccl" => fakes.nccl_calls(name),
                    _ => fakes.cuda_calls(name),
                };
                calls >= nth
            });
            wait_for("dp_cancel to return DP_OK", || {
                match dp_cancel(comm.comm()) {
                    dp_status::DP_OK => true,
                    dp_status::DP_ERR_BUSY => false,
                    other => panic!("dp_cancel returned {other:?}: {}", last_error()),
                }
            });
            fakes.abort(comm.comm().cast());
            let (status, message) = caller.join().unwrap();
            println!("STATUS={}", status as u32);
            println!("ERROR={message}");
            println!("AFTER_ABORT={}", fakes.after_abort(comm.comm().cast()));
            assert_eq!(
                dp_release(comm.comm()),
                dp_status::DP_OK,
                "{}",
                last_error()
            );
        }
        // On stream STREAM: the first exchange (helper thread), `end` on another thread, a
        // second exchange cancelled and destroyed from a third; prints every call the fakes
        // saw on a stream and the id of the thread that called begin.
        "streams" => {
            let s = stream(usize::from_str_radix(&env("STREAM").unwrap(), 16).unwrap());
            let comm = fakes.comm(2, 0).cast::<ncclComm>();
            let mut c: *mut dp_coordinator = std::ptr::null_mut();
            assert_eq!(dp_coordinator_create(comm, &mut c), dp_status::DP_OK);
            let c = Raw(c as usize);
            assert_eq!(
                dp_coordinator_begin(c.coordinator(), s, &request(3, 5000)),
                dp_status::DP_OK,
                "{}",
                last_error()
            );
            let ended = std::thread::spawn(move || {
                let mut res = result();
                let st = dp_coordinator_end(c.coordinator(), &mut res);
                (st, last_error(), res.num_tokens_after_padding_self)
            })
            .join()
            .unwrap();
            assert_eq!(ended.0, dp_status::DP_OK, "{}", ended.1);
            assert_eq!(ended.2, 3);
            assert_eq!(
                dp_coordinator_begin(c.coordinator(), s, &request(4, 5000)),
                dp_status::DP_OK,
                "{}",
                last_error()
            );
            std::thread::spawn(move || {
                assert_eq!(
                    dp_coordinator_cancel(c.coordinator()),
                    dp_status::DP_OK,
                    "{}",
                    last_error()
                );
                assert_eq!(
                    dp_coordinator_destroy(c.coordinator()),
                    dp_status::DP_OK,
                    "{}",
                    last_error()
                );
            })
            .join()
            .unwrap();
            println!("BEGIN_TID={}", tid());
            println!("CUDA_LOG={}", fakes.cuda_log());
            println!("NCCL_LOG={}", fakes.nccl_log());
        }
        // begin on a stream the coordinator cannot use (STREAM: capturing, or another
        // device's) joins the exchange as the invalid-request marker; end names the stream.
        "unusable_stream" => {
            let s = stream(usize::from_str_radix(&env("STREAM").unwrap(), 16).unwrap());
            let comm = fakes.comm(2, 0).cast::<ncclComm>();
            let mut c: *mut dp_coordinator = std::ptr::null_mut();
            assert_eq!(dp_coordinator_create(comm, &mut c), dp_status::DP_OK);
            // Calls CUDA refuses from any thread while a global-mode capture is open (and
            // that invalidate it): none may run between begin and end.
            let unsafe_calls = || -> i64 {
                let names = ["cuEventQuery", "cuStreamQuery", "cuStreamSynchronize"];
                names.iter().map(|n| fakes.cuda_calls(n)).sum()
            };
            let before = unsafe_calls();
            println!(
                "BEGIN={}",
                dp_coordinator_begin(c, s, &request(3, 5000)) as u32
            );
            println!("BEGIN_ERROR={}", last_error());
            let mut res = result();
            println!("END={}", dp_coordinator_end(c, &mut res) as u32);
            println!("END_ERROR={}", last_error());
            println!("UNSAFE_CALLS={}", unsafe_calls() - before);
            println!("GATHERS={}", fakes.nccl_calls("ncclAllGather"));
            println!("CUDA_LOG={}", fakes.cuda_log());
            // Still usable on a good stream.
            assert_eq!(
                dp_coordinator_begin(c, stream(0), &request(3, 5000)),
                dp_status::DP_OK,
                "{}",
                last_error()
            );
            assert_eq!(
                dp_coordinator_end(c, &mut res),
                dp_status::DP_OK,
                "{}",
                last_error()
            );
            assert_eq!(dp_coordinator_destroy(c), dp_status::DP_OK);
        }
        // A first exchange that times out inside NCCL (FAKE_NCCL_BLOCK); the caller destroys
        // the coordinator and aborts; once NCCL let the helper go, the next create frees the
        // old state.
        "first_timeout" => {
            let comm = fakes.comm(2, 0);
            let mut c: *mut dp_coordinator = std::ptr::null_mut();
            assert_eq!(dp_coordinator_create(comm.cast(), &mut c), dp_status::DP_OK);
            let one = fakes.live();
            let st = dp_coordinator_begin(c, stream(0), &request(3, 50));
            assert_eq!(st, dp_status::DP_ERR_TIMEOUT, "{}", last_error());
            assert_eq!(
                dp_coordinator_destroy(c),
                dp_status::DP_OK,
                "{}",
                last_error()
            );
            fakes.abort(comm);
            // The fake lets the helper go after its 300 ms; then it has nothing left to do.
            wait_for("the helper to leave NCCL", || fakes.gathers_inside() == 0);
            std::thread::sleep(Duration::from_millis(20));
            let mut c2: *mut dp_coordinator = std::ptr::null_mut();
            assert_eq!(
                dp_coordinator_create(fakes.comm(2, 0).cast(), &mut c2),
                dp_status::DP_OK
            );
            println!("ONE={one}");
            println!("LIVE={}", fakes.live());
            assert_eq!(dp_coordinator_destroy(c2), dp_status::DP_OK);
        }
        // One step of a one-rank coordinator (decided locally), for the log and the ranges.
        "diag" => {
            let comm = fakes.comm(1, 0);
            let mut c: *mut dp_coordinator = std::ptr::null_mut();
            assert_eq!(dp_coordinator_create(comm.cast(), &mut c), dp_status::DP_OK);
            let mut req = request(64, 5000);
            req.cudagraph_mode = 2;
            req.step_id = 7;
            assert_eq!(dp_coordinator_begin(c, stream(0), &req), dp_status::DP_OK);
            let mut res = result();
            assert_eq!(dp_coordinator_end(c, &mut res), dp_status::DP_OK);
            assert_eq!(res.num_tokens_after_padding_self, 64);
            assert_eq!(dp_coordinator_destroy(c), dp_status::DP_OK);
            println!("COMM={comm:p}");
        }
        // The slot begin writes to the send buffer: dp_make_slot's for the same request, with
        // the exchange's sequence number and begin's time as its arrival; the marker for an
        // invalid request.
        "slot" => {
            let comm = fakes.comm(2, 0).cast::<ncclComm>();
            let mut c: *mut dp_coordinator = std::ptr::null_mut();
            assert_eq!(dp_coordinator_create(comm, &mut c), dp_status::DP_OK);
            let mut req = request(40, 5000);
            req.num_tokens_padded = 48;
            req.cudagraph_mode = 2;
            req.step_id = 12;
            req.parent_step_id = 11;
            req.allow_dp_padding = true;
            req.pad_policy = DP_PAD_POLICY_WHEN_CUDAGRAPH;
            req.ubatch.enabled = true;
            req.ubatch.num_ubatches = 3;
            let (seq, arrival, check) = (
                layout("SLOT_SEQ"),
                layout("SLOT_ARRIVAL"),
                layout("SLOT_CHECK"),
            );
            let mut res = result();
            for (exchange, mut q) in [req, req].into_iter().enumerate() {
                if exchange == 1 {
                    q.num_tokens_unpadded = -3; // refused: the marker joins
                }
                let t0 = now_ns();
                assert_eq!(dp_coordinator_begin(c, stream(0), &q), dp_status::DP_OK);
                let t1 = now_ns();
                let st = dp_coordinator_end(c, &mut res);
                let sent = fakes.last_send();
                let (made_st, made) = make_slot(&q);
                assert_eq!(st, made_st, "{}", last_error());
                assert_eq!(sent[seq], exchange as u32 + 1);
                let at = join(sent[arrival], sent[arrival + 1]);
                assert!(
                    (t0..=t1).contains(&at),
                    "arrival {at} outside begin's [{t0}, {t1}]"
                );
                for i in
                    (0..sent.len()).filter(|&i| ![seq, arrival, arrival + 1, check].contains(&i))
                {
                    assert_eq!(
                        sent[i], made[i],
                        "exchange {exchange}: word {i} differs from dp_make_slot's"
                    );
                }
                let mut resealed = sent.clone();
                seal(&mut resealed);
                assert_eq!(
                    resealed, sent,
                    "exchange {exchange}: the slot sent is not intact"
                );
            }
            let marker = fakes.last_send();
            let record = layout("SLOT_RECORD");
            assert!(marker[record..record + layout("SLOT_RECORD_WORDS")]
                .iter()
                .all(|&w| w == u32::MAX));
            assert_eq!(dp_coordinator_destroy(c), dp_status::DP_OK);
        }
        // Through the coordinator, a peer's slot changed on the way (FAKE_NCCL peer control):
        // end gives exactly what dp_decide_slots gives on the slots the gather delivered.
        "verdicts" => {
            let rec = layout("SLOT_RECORD");
            use dp_status::{
                DP_ERR_CORRUPT as CORRUPT, DP_ERR_INCONSISTENT_RANKS as INCONSISTENT,
                DP_ERR_INVALID_ARGUMENT as INVALID, DP_OK as OK,
            };
            // (name, peer word, words, value, fake_nccl_peer mode, status, message part)
            let cases: Vec<(&str, usize, i32, u32, i32, dp_status, &str)> =
                vec![
                ("damaged", rec, 1, 12345, 1, CORRUPT, "slots[1] fails its checksum"),
                ("marker", rec, 8, u32::MAX, 0, INVALID, "records[1] is the invalid-request"),
                (
                    "layout",
                    layout("SLOT_LAYOUT"),
                    1,
                    0x6470_0002,
                    0,
                    INCONSISTENT,
                    "the slot layout differs: rank 0 carries 0x64700003, rank 1 carries \
                     0x64700002",
                ),
                (
                    "rules",
                    layout("SLOT_RULES"),
                    1,
                    1,
                    0,
                    INCONSISTENT,
                    "rules differs: rank 0 has 0, rank 1 has 1",
                ),
                (
                    "pad_policy",
                    layout("SLOT_PAD_POLICY"),
                    1,
                    1,
                    0,
                    INCONSISTENT,
                    "pad_policy differs: rank 0 has 0, rank 1 has 1",
                ),
                (
                    "num_ubatches",
                    layout("SLOT_NUM_UBATCHES"),
                    1,
                    3,
                    0,
                    INCONSISTENT,
                    "num_ubatches (0: microbatching disabled) differs: rank 0 has 0, rank 1 has 3",
                ),
                (
                    "step_id",
                    layout("SLOT_STEP"),
                    1,
                    99,
                    0,
                    INCONSISTENT,
                    "rank 0 passed step_id 5, rank 1 passed step_id 99",
                ),
                (
                    "parent_step_id",
                    layout("SLOT_PARENT"),
                    1,
                    4,
                    0,
                    INCONSISTENT,
                    "rank 0 passed parent_step_id 0, rank 1 passed parent_step_id 4",
                ),
                (
                    "record",
                    rec + layout("REC_PADDED"),
                    1,
                    0,
                    0,
                    INVALID,
                    "records[1].num_tokens_padded = 0 must be >= num_tokens_unpadded = 40",
                ),
                (
                    "pad flags",
                    rec + layout("REC_ATTEMPT_DP_PAD"),
                    1,
                    1,
                    0,
                    INCONSISTENT,
                    "should_attempt_dp_pad (allow_dp_padding) differs",
                ),
                (
                    "stale",
                    layout("SLOT_SEQ"),
                    1,
                    77,
                    0,
                    INCONSISTENT,
                    "stale exchange: slots must carry this exchange's sequence number 1, but \
                     rank 1 carries 77",
                ),
                ("peer later", layout("SLOT_ARRIVAL") + 1, 1, 1, 2, OK, ""),
                ("unchanged", 0, 0, 0, -1, OK, ""),
            ];
            for (i, (name, first, count, value, mode, want, needle)) in
                cases.into_iter().enumerate()
            {
                let comm = fakes.comm(2, 0).cast::<ncclComm>();
                let mut req = request(40, 5000);
                req.step_id = 5;
                fakes.peer(if mode < 0 { -1 } else { first as i32 }, count, value, mode);
                let mut res = result();
                // Every other case through dp_coordinate_batch (the cached coordinator).
                let st = if i % 2 == 0 {
                    let mut c: *mut dp_coordinator = std::ptr::null_mut();
                    assert_eq!(dp_coordinator_create(comm, &mut c), dp_status::DP_OK);
                    assert_eq!(dp_coordinator_begin(c, stream(0), &req), dp_status::DP_OK);
                    let st = dp_coordinator_end(c, &mut res);
                    let message = last_error();
                    assert_eq!(dp_coordinator_destroy(c), dp_status::DP_OK);
                    (st, message)
                } else {
                    let st = dp_coordinate_batch(comm, stream(0), &req, &mut res);
                    let message = last_error();
                    assert_eq!(dp_release(comm), dp_status::DP_OK);
                    (st, message)
                };
                fakes.peer(-1, 0, 0, 0);
                let (st, message) = st;
                assert_eq!(st, want, "{name}: {message}");
                let gathered = fakes.last_recv(2);
                let (host_st, host_message, host_res, _) = decide_slots(&gathered, 2, 0);
                if st != dp_status::DP_OK {
                    assert!(message.contains(needle), "{name}: {message}");
                    if name != "stale" {
                        // One source of every message: rules::slots on the same slots.
                        assert_eq!((st, &message), (host_st, &host_message), "{name}");
                    }
                    continue;
                }
                assert_eq!(host_st, dp_status::DP_OK, "{name}: {host_message}");
                let fields = |r: &dp_batch_result| {
                    (
                        r.should_ubatch,
                        r.should_dp_pad,
                        r.synced_cudagraph_mode,
                        r.num_tokens_after_padding_self,
                        r.max_num_tokens_padded,
                        r.min_num_tokens_unpadded,
                        r.num_ubatches,
                        r.step_id,
                        r.last_rank,
                        r.arrival_skew_ns,
                    )
                };
                assert_eq!(fields(&res), fields(&host_res), "{name}");
                let (last, skew) = if name == "peer later" {
                    (1, 1i64 << 32)
                } else {
                    (0, 0)
                };
                assert_eq!((res.last_rank, res.arrival_skew_ns), (last, skew), "{name}");
                // The fake published at the launch, inside begin: end did not wait.
                assert_eq!(res.wait_ns, 0, "{name}");
            }
        }
        // INFO logs the rank that was last in most of the last 64 exchanges, once per change:
        // 40 exchanges with equal arrivals (rank 0, the lowest, is last), then 80 in which the
        // peer arrives 2^32 ns later.
        "straggler" => {
            let comm = fakes.comm(2, 0);
            let mut c: *mut dp_coordinator = std::ptr::null_mut();
            assert_eq!(dp_coordinator_create(comm.cast(), &mut c), dp_status::DP_OK);
            let mut res = result();
            for step in 1..=120 {
                if step == 41 {
                    fakes.peer(layout("SLOT_ARRIVAL") as i32 + 1, 1, 1, 2);
                }
                let mut req = request(8, 5000);
                req.step_id = step;
                assert_eq!(dp_coordinator_begin(c, stream(0), &req), dp_status::DP_OK);
                assert_eq!(
                    dp_coordinator_end(c, &mut res),
                    dp_status::DP_OK,
                    "{}",
                    last_error()
                );
                assert_eq!(res.last_rank, i32::from(step > 40));
            }
            assert_eq!(dp_coordinator_destroy(c), dp_status::DP_OK);
            println!("COMM={comm:p}");
        }
        // wait_ns: how long end waited (the fake publishes FAKE_CUDA_PUBLISH_DELAY_MS after
        // the launch); 0 when poll had seen the exchange finish.
        "wait" => {
            let comm = fakes.comm(2, 0).cast::<ncclComm>();
            let mut c: *mut dp_coordinator = std::ptr::null_mut();
            assert_eq!(dp_coordinator_create(comm, &mut c), dp_status::DP_OK);
            let mut res = result();
            assert_eq!(
                dp_coordinator_begin(c, stream(0), &request(3, 5000)),
                dp_status::DP_OK
            );
            let t = Instant::now();
            assert_eq!(
                dp_coordinator_end(c, &mut res),
                dp_status::DP_OK,
                "{}",
                last_error()
            );
            println!("ELAPSED_NS={}", t.elapsed().as_nanos());
            println!("WAIT_NS={}", res.wait_ns);
            assert_eq!(
                dp_coordinator_begin(c, stream(0), &request(3, 5000)),
                dp_status::DP_OK
            );
            wait_for("poll to say done", || {
                let mut done = false;
                assert_eq!(dp_coordinator_poll(c, &mut done), dp_status::DP_OK);
                done
            });
            assert_eq!(
                dp_coordinator_end(c, &mut res),
                dp_status::DP_OK,
                "{}",
                last_error()
            );
            println!("WAIT_AFTER_POLL_NS={}", res.wait_ns);
            assert_eq!(dp_coordinator_destroy(c), dp_status::DP_OK);
        }
        // The kernel's logic (the fake driver's dp_postprocess) against dp_decide_slots on
        // random slots: the same verdict, decision, array and straggler report.
        "logic" => logic(&fakes),
        // The same for V2 slots with random vLLM tables (v2 module below).
        "v2logic" => v2::logic(&fakes),
        "v2coordinator" => v2::coordinator(&fakes),
        "v2config" => v2::another_table(&fakes),
        other => panic!("unknown case {other}"),
    }
}

/// The statuses of layout.h, by the fault `dp_decide_slots` names (`None`: not a check of
/// the kernel's).
fn status_of(st: dp_status, message: &str) -> usize {
    let name = if st == dp_status::DP_OK {
        "STATUS_OK"
    } else if message.contains("fails its checksum") {
        "STATUS_CORRUPT"
    } else if message.contains("is the invalid-request marker") {
        "STATUS_MARKER"
    } else if message.contains("configurations differ") {
        "STATUS_CONFIG"
    } else if message.contains("step_ids differ across ranks") {
        "STATUS_STEP_IDS"
    } else if st == dp_status::DP_ERR_INVALID_ARGUMENT
        && (message.contains("records[")
            || message.contains("is not the one the slots were made")
            || message.contains("cfg."))
    {
        "STATUS_INVALID"
    } else if message.contains("should_attempt_dp_pad") {
        "STATUS_INCONSISTENT"
    } else {
        panic!("dp_decide_slots failed with a fault the kernel does not check: {st:?}: {message}")
    };
    layout(name)
}

fn logic(fakes: &Fakes) {
    let words = layout("SLOT_WORDS");
    let (seq_at, arrival_at, record, check) = (
        layout("SLOT_SEQ"),
        layout("SLOT_ARRIVAL"),
        layout("SLOT_RECORD"),
        layout("SLOT_CHECK"),
    );
    let h = |name| layout(name);
    let mut rng = Rng(0x00D9_C0DE_0003);
    let mut seen = std::collections::BTreeMap::<usize, usize>::new();
    let t0 = now_ns();
    for case in 0..6000 {
        let n = 1 + rng.below(6);
        let rank = rng.below(n) as i32;
        let explicit = rng.one_in(2);
        let enabled = rng.one_in(3) || !rng.one_in(2);
        let num_ubatches = 2 + rng.below(3) as i32;
        let pad_all = rng.one_in(2);
        let mut slots = Vec::with_capacity(n * words);
        for r in 0..n {
            let mut q = request(rng.below(3000) as i32, 5000);
            q.num_tokens_padded = if rng.one_in(2) {
                -1
            } else {
                q.num_tokens_unpadded + rng.below(64) as i32
            };
            q.allow_microbatching = !rng.one_in(4);
            q.uniform_decode = rng.below(2) as i32;
            q.cudagraph_mode = rng.below(3) as i32;
            q.pad_policy = if explicit {
                DP_PAD_POLICY_EXPLICIT
            } else {
                DP_PAD_POLICY_WHEN_CUDAGRAPH
            };
            q.allow_dp_padding = pad_all != rng.one_in(12);
            q.ubatch.enabled = enabled;
            q.ubatch.num_ubatches = num_ubatches;
            q.ubatch.decode_token_threshold = 4 + rng.below(64) as i32;
            q.ubatch.prefill_token_threshold = 4 + rng.below(1024) as i32;
            q.step_id = if rng.one_in(25) { 8 } else { 7 };
            q.parent_step_id = if rng.one_in(25) { 3 } else { 0 };
            if rng.one_in(40) {
                q.pad_policy ^= 1; // another setting: the configuration differs
            }
            if rng.one_in(40) {
                q.ubatch.num_ubatches += 1;
            }
            if rng.one_in(50) {
                q.cudagraph_mode = 3; // refused: the marker
            }
            let (_, mut slot) = make_slot(&q);
            // Arrivals: ties, near times, extremes (the skew saturates).
            let at: i64 = match rng.below(8) {
                0 => i64::MAX,
                1 => i64::MIN,
                2 | 3 => t0,
                _ => t0 + rng.below(1 << 20) as i64 - (1 << 19),
            };
            slot[arrival_at] = at as u32;
            slot[arrival_at + 1] = ((at as u64) >> 32) as u32;
            if r > 0 && rng.one_in(30) {
                let w = 1 + rng.below(layout("SLOT_DECODE_QUERY_LEN"));
                slot[w] ^= 1 + rng.below(1000) as u32; // a configuration word
            }
            if rng.one_in(30) {
                let w = record + rng.below(5);
                slot[w] = (rng.below(5) as i32 - 2) as u32; // maybe an invalid record
            }
            if rng.one_in(60) {
                slot[seq_at] = 1; // stale
            }
            seal(&mut slot);
            if rng.one_in(30) {
                let w = rng.below(words);
                slot[w] ^= 1 << rng.below(32); // damaged on the way
            }
            slots.extend(slot);
        }
        let (out, host) = fakes.postprocess(&slots, n, rank, 0, None);
        let status = host[h("HOST_STATUS")] as usize;
        let what = format!("case {case}: {n} ranks as rank {rank}");
        if (0..n).any(|r| slots[r * words + seq_at] != 0) {
            assert_eq!(status, h("STATUS_STALE"), "{what}");
            *seen.entry(status).or_default() += 1;
            continue;
        }
        let (st, message, res, array) = decide_slots(&slots, n, rank);
        assert_eq!(
            status,
            status_of(st, &message),
            "{what}: dp_decide_slots says {st:?}: {message}"
        );
        *seen.entry(status).or_default() += 1;
        // The kernel's copy of the slots lets the host name the fault; its words are the
        // slots.
        let copy = h("HOST_HEADER_WORDS") + n;
        if st != dp_status::DP_OK {
            let copied: Vec<u32> = host[copy..copy + n * words]
                .iter()
                .map(|&w| w as u32)
                .collect();
            assert_eq!(copied, slots, "{what}");
            continue;
        }
        let word = |name| host[h(name)];
        assert_eq!(
            (
                word("HOST_SHOULD_UBATCH") != 0,
                word("HOST_SHOULD_DP_PAD") != 0,
                word("HOST_SYNCED_CUDAGRAPH_MODE"),
                word("HOST_NUM_TOKENS_AFTER_PADDING_SELF"),
                word("HOST_MAX_NUM_TOKENS_PADDED"),
                word("HOST_MIN_NUM_TOKENS_UNPADDED"),
                word("HOST_NUM_UBATCHES"),
                word("HOST_LAST_RANK"),
                join(host[h("HOST_SKEW")] as u32, host[h("HOST_SKEW") + 1] as u32),
            ),
            (
                res.should_ubatch,
                res.should_dp_pad,
                res.synced_cudagraph_mode,
                res.num_tokens_after_padding_self,
                res.max_num_tokens_padded,
                res.min_num_tokens_unpadded,
                res.num_ubatches,
                res.last_rank,
                res.arrival_skew_ns,
            ),
            "{what}"
        );
        // The arrays: dp_decide_slots writes none for one rank (the kernel writes its own
        // tokens there).
        let want = if n == 1 {
            vec![res.num_tokens_after_padding_self]
        } else {
            array
        };
        assert_eq!(out, want, "{what}: device array");
        assert_eq!(
            host[h("HOST_HEADER_WORDS")..copy],
            want[..],
            "{what}: host array"
        );
    }
    let _ = check;
    for status in [
        "STATUS_OK",
        "STATUS_STALE",
        "STATUS_CORRUPT",
        "STATUS_MARKER",
        "STATUS_CONFIG",
        "STATUS_STEP_IDS",
        "STATUS_INVALID",
        "STATUS_INCONSISTENT",
    ] {
        assert!(
            seen.get(&layout(status)).copied().unwrap_or(0) >= 20,
            "{status} seen {:?} times: {seen:?}",
            seen.get(&layout(status))
        );
    }
    println!("SEEN={seen:?}");
}

fn status(run: &fake_gpu::Run) -> u32 {
    run.printed("STATUS").parse().unwrap()
}

/// Item 6 of issue 17: every allocation of create that fails leaves nothing allocated.
#[test]
fn create_that_fails_at_any_allocation_leaves_nothing_allocated() {
    let ok = run("create", &[]);
    assert_eq!(status(&ok), dp_status::DP_OK as u32, "{}", ok.stdout);
    let allocations: i64 = ok.printed("ALLOCATIONS").parse().unwrap();
    assert!(
        allocations >= 6,
        "create made only {allocations} allocations"
    );
    for k in 1..=allocations {
        let failed = run("create", &[("FAKE_CUDA_FAIL_ALLOC", k.to_string())]);
        assert_eq!(
            status(&failed),
            dp_status::DP_ERR_CUDA as u32,
            "allocation {k}: {}",
            failed.stdout
        );
        assert!(
            failed.printed("ERROR").contains("CUDA_ERROR_OUT_OF_MEMORY"),
            "{}",
            failed.stdout
        );
        assert_eq!(
            failed.printed("LIVE"),
            "0",
            "allocation {k} of {allocations} failed: the others leaked"
        );
    }
}

/// Item 3 of issue 17: at every point of a first dp_coordinate_batch, once dp_cancel returned
/// DP_OK no dpcoord thread calls NCCL on the communicator again, and the call fails.
#[test]
fn after_dp_cancel_returns_ok_nothing_touches_the_communicator() {
    let points: [(&str, &[(&str, &str)]); 8] = [
        (
            "nccl:ncclCommCount:1",
            &[("FAKE_NCCL_BLOCK", "ncclCommCount:1:300")],
        ),
        (
            "nccl:ncclCommUserRank:1",
            &[("FAKE_NCCL_BLOCK", "ncclCommUserRank:1:300")],
        ),
        (
            "nccl:ncclCommCuDevice:1",
            &[("FAKE_NCCL_BLOCK", "ncclCommCuDevice:1:300")],
        ),
        (
            "cuda:cuModuleLoadData:1",
            &[("FAKE_CUDA_BLOCK", "cuModuleLoadData:1:300")],
        ),
        (
            "nccl:ncclCommCount:2",
            &[("FAKE_NCCL_BLOCK", "ncclCommCount:2:300")],
        ),
        (
            "nccl:ncclCommUserRank:2",
            &[("FAKE_NCCL_BLOCK", "ncclCommUserRank:2:300")],
        ),
        (
            "nccl:ncclAllGather:1",
            &[("FAKE_NCCL_BLOCK", "ncclAllGather:1:300")],
        ),
        ("cuda:cuLaunchKernel:1", &[("FAKE_CUDA_NO_PUBLISH", "1")]),
    ];
    let mut failures = Vec::new();
    for (watch, block) in points {
        let mut vars: Vec<(&str, String)> = block.iter().map(|&(k, v)| (k, v.to_owned())).collect();
        vars.push(("WATCH", watch.to_owned()));
        let r = run("watchdog", &vars);
        let after = r.printed("AFTER_ABORT");
        if !after.is_empty() {
            failures.push(format!(
                "blocked at {watch}: called after the abort: {after}"
            ));
        }
        if status(&r) == dp_status::DP_OK as u32 {
            failures.push(format!(
                "blocked at {watch}: the cancelled call returned DP_OK"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

/// The special stream handles: NULL (legacy), cudaStreamLegacy, cudaStreamPerThread.
const SPECIAL: [&str; 3] = ["(nil)", "0x1", "0x2"];

/// Item 4 of issue 17: a special stream given to begin is used (by CUDA or NCCL) only on the
/// thread that called begin: not by the first exchange's helper thread, not by `end` on
/// another thread, not by cancel and destroy from a watchdog; and the helper's gather is
/// ordered after the caller's stream and before the post kernel (an event each way).
#[test]
fn a_special_stream_is_used_only_on_the_thread_that_called_begin() {
    for raw in ["0", "1", "2"] {
        let r = run(
            "streams",
            &[
                ("STREAM", raw.to_owned()),
                ("FAKE_CUDA_PUBLISH_DELAY_MS", "5".to_owned()),
            ],
        );
        let begin_tid = r.printed("BEGIN_TID");
        let mut wrong = std::collections::BTreeSet::new();
        for entry in r
            .printed("CUDA_LOG")
            .split(';')
            .chain(r.printed("NCCL_LOG").split(';'))
        {
            let words: Vec<&str> = entry.split_whitespace().collect();
            if let [name, stream, tid] = words[..] {
                if SPECIAL.contains(&stream) && tid != begin_tid {
                    wrong.insert(format!("{name} on {stream} from thread {tid}"));
                }
            }
        }
        assert!(
            wrong.is_empty(),
            "stream {raw}: begin ran on thread {begin_tid}, but {wrong:?}"
        );
        // The helper gathered on a stream of its own, between two waits on events.
        let nccl = r.printed("NCCL_LOG");
        let first = nccl.split(';').next().unwrap();
        assert!(
            !first.contains(&format!(" {begin_tid}")),
            "the first gather ran on the caller's thread: {nccl}"
        );
        let log = r.printed("CUDA_LOG");
        let waits = log.matches("cuStreamWaitEvent").count();
        assert!(
            waits >= 2,
            "stream {raw}: the helper's gather is not ordered by events: {log}"
        );
    }
}

/// Item 4 of issue 17: begin on a stream the coordinator cannot use (one capturing a CUDA
/// graph, one of another device) still joins the exchange, as the invalid-request marker,
/// on a stream the coordinator owns: begin returns DP_OK, end names the stream, nothing but
/// the checks ran on the unusable stream, and no query or synchronize ran at all (seen on an
/// H100: a query during the caller's global-mode capture is refused and ends the capture).
#[test]
fn an_unusable_stream_joins_the_exchange_as_the_marker() {
    for (raw, why) in [("ca97", "capturing a CUDA graph"), ("d1", "CUDA device 1")] {
        // The kernel publishes 30 ms late, so that end has to wait (and poll).
        let env = [
            ("STREAM", raw.to_owned()),
            ("FAKE_CUDA_PUBLISH_DELAY_MS", "30".to_owned()),
        ];
        let r = run("unusable_stream", &env);
        assert_eq!(
            r.printed("BEGIN"),
            "0",
            "stream {raw}: {}",
            r.printed("BEGIN_ERROR")
        );
        assert_eq!(
            r.printed("END"),
            (dp_status::DP_ERR_INVALID_ARGUMENT as u32).to_string()
        );
        let end = r.printed("END_ERROR");
        assert!(end.contains(why), "stream {raw}: {end}");
        assert_eq!(
            r.printed("GATHERS"),
            "1",
            "stream {raw}: the exchange did not happen"
        );
        let log = r.printed("CUDA_LOG");
        let used: Vec<&str> = log
            .split(';')
            .filter(|e| e.contains(&format!(" 0x{raw} ")) && !e.starts_with("cuStreamIsCapturing"))
            .collect();
        assert!(used.is_empty(), "stream {raw} was used: {used:?}");
        assert_eq!(
            r.printed("UNSAFE_CALLS"),
            "0",
            "stream {raw}: a stream or event query or a synchronize ran between begin and end \
             (CUDA refuses it during a global-mode capture, and it invalidates the capture)"
        );
    }
}

/// Item 7 of issue 17: the state of a first exchange that timed out inside NCCL is freed
/// once NCCL let the helper thread go (it was leaked for the life of the process).
#[test]
fn a_timed_out_first_exchange_is_freed_once_nccl_lets_go() {
    let r = run(
        "first_timeout",
        &[("FAKE_NCCL_BLOCK", "ncclAllGather:1:300".to_owned())],
    );
    assert_eq!(
        r.printed("LIVE"),
        r.printed("ONE"),
        "the timed-out coordinator's state is still allocated"
    );
}

/// The GPU path's lines and ranges, on a one-rank coordinator over the fake NCCL (no GPU
/// work: the step is decided locally).
#[test]
fn the_gpu_path_logs_info_and_trace_and_opens_ranges() {
    let dir = diag_support::scratch("gpu-path");
    let tool = diag_support::build_nvtx_tool(&dir);
    let events = dir.join("events.txt");
    let r = run(
        "diag",
        &[
            ("DPCOORD_DEBUG", "TRACE".to_owned()),
            ("NVTX_INJECTION64_PATH", tool.display().to_string()),
            ("DPCOORD_TEST_NVTX_OUT", events.display().to_string()),
        ],
    );
    let comm = r.printed("COMM");
    let lines: Vec<&str> = r
        .stderr
        .lines()
        .filter_map(|l| l.split_once(" dpcoord ").map(|(_, rest)| rest))
        .collect();
    assert_eq!(lines.len(), 2, "{}", r.stderr);
    let libs = fake_gpu::libraries().display();
    assert_eq!(
        lines[0],
        format!(
            "INFO [rank 0/1 comm {comm}] coordinator created: NCCL 2.28.3 from \
             {libs}/libnccl.so.2 (already-loaded libnccl.so.2), CUDA driver 12.4 from \
             {libs}/libcuda.so.1 (the process's libcuda.so.1 (dlopen RTLD_NOLOAD)), dpcoord {}",
            env!("CARGO_PKG_VERSION")
        )
    );
    assert_eq!(
        lines[1],
        format!(
            "TRACE [rank 0/1 comm {comm} step 7] dp_coordinator_end: ubatch 0 dp_pad 0 \
             cudagraph 2 tokens self 64 max 64 min 64"
        )
    );
    assert_eq!(
        std::fs::read_to_string(&events).unwrap(),
        "init\n\
         domain dpcoord\n\
         push dpcoord dp_coordinator_begin rank 0 step 7\n\
         pop dpcoord\n\
         push dpcoord dp_coordinator_end rank 0 step 7\n\
         pop dpcoord\n"
    );
}

/// The slot begin writes to the send buffer is `dp_make_slot`'s for the same request (the
/// library's one slot maker), with this exchange's sequence number, begin's time as its
/// arrival and an intact checksum; an invalid request sends the marker.
#[test]
fn begin_sends_the_slot_dp_make_slot_makes() {
    run("slot", &[]);
}

/// Items 1-3 of issue 17 on the GPU path: a peer's damaged slot, marker, other settings (each
/// configuration word, the slot layout), step ids, invalid record, pad flags, stale sequence
/// number: end (and dp_coordinate_batch) returns exactly what dp_decide_slots returns on the
/// slots the gather delivered; an accepted step has its decision and straggler report.
#[test]
fn every_verdict_is_what_dp_decide_slots_says_on_the_same_slots() {
    run("verdicts", &[]);
}

/// The kernel's own checks, decision, arrays and straggler report (its host-runnable part,
/// compiled into the fake driver) agree with dp_decide_slots on 6000 random slot sets with
/// every kind of fault, each verdict status reached at least 20 times.
#[test]
fn the_kernels_logic_is_dp_decide_slots_on_random_slots() {
    let r = run("logic", &[]);
    assert!(r.printed("SEEN").starts_with('{'), "{}", r.stdout);
}

/// The INFO line names the rank that was last in most of the last 64 exchanges, once per
/// change of that rank.
#[test]
fn info_logs_the_straggler_once_per_change() {
    let r = run("straggler", &[("DPCOORD_DEBUG", "INFO".to_owned())]);
    let comm = r.printed("COMM");
    let lines: Vec<&str> = r
        .stderr
        .lines()
        .filter_map(|l| l.split_once(" dpcoord ").map(|(_, rest)| rest))
        .filter(|l| l.contains("straggler"))
        .collect();
    let line = |step: i64, rank: i32, skew: i64| {
        format!(
            "INFO [rank 0/2 comm {comm} step {step}] straggler: rank {rank} arrived last in 33 \
             of the last 64 steps (this one's arrival skew: {skew} ns, between \
             CLOCK_MONOTONIC clocks: exact on one host)"
        )
    };
    assert_eq!(
        lines,
        [line(33, 0, 0), line(73, 1, 1 << 32)],
        "{}",
        r.stderr
    );
}

/// wait_ns is how long end waited for the exchange: within end's own time, and 0 once poll
/// saw it finish.
#[test]
fn wait_ns_is_how_long_end_waited() {
    let r = run("wait", &[("FAKE_CUDA_PUBLISH_DELAY_MS", "200".to_owned())]);
    let wait: i64 = r.printed("WAIT_NS").parse().unwrap();
    let elapsed: i64 = r.printed("ELAPSED_NS").parse().unwrap();
    assert!(
        wait > 0 && wait <= elapsed,
        "waited {wait} ns in an end of {elapsed} ns"
    );
    assert_eq!(r.printed("WAIT_AFTER_POLL_NS"), "0");
}

/// The V2 rules on the GPU path over the fakes.
mod v2 {
    use super::*;
    use crate::v2_common::{self, Built, CgMode, Dbo, Handle, Step, VllmCfg};
    use dpcoord::rules::{self, GraphTable, Request, V2Config, V2Record};

    /// A random vLLM configuration (the distribution of tests/rules_v2_props.rs's).
    fn random_cfg(rng: &mut Rng) -> VllmCfg {
        let seqs = 1 + rng.below(300) as i32;
        let k = rng.below(5) as i32;
        let sizes = |rng: &mut Rng, max: usize, n: usize| -> Vec<i32> {
            (0..1 + rng.below(n))
                .map(|_| 1 + rng.below(max) as i32)
                .collect()
        };
        VllmCfg {
            mode: CgMode::ALL[rng.below(5)],
            max_num_seqs: seqs,
            max_num_batched_tokens: (16 + rng.below(2033) as i32).max(seqs),
            num_spec: k,
            adaptive: k > 0 && rng.one_in(2),
            lora_cases: [vec![0], vec![0, 1, 2, 4], vec![0, 3], vec![0, 1, 8]][rng.below(4)]
                .clone(),
            dbo: (!rng.one_in(2)).then(|| {
                let n = 2 + rng.below(3) as i32;
                Dbo {
                    num_ubatches: n,
                    decode_threshold: (rng.below(65) as i32).max(n),
                    prefill_threshold: (rng.below(701) as i32).max(n),
                }
            }),
            prefill_sizes: rng.one_in(2).then(|| sizes(rng, 2048, 24)),
            decode_sizes: rng.one_in(2).then(|| sizes(rng, 300, 16)),
            max_decode_tokens: rng.one_in(2).then(|| 1 + rng.below(1024) as i32),
            eagle_draft: rng.one_in(2),
        }
    }

    /// Token counts where the rules turn: every graph's tokens, its half and the neighbours,
    /// the (raised) thresholds and their neighbours.
    fn turning_points(b: &Built) -> Vec<i32> {
        let mut v = vec![1, 2];
        for g in &b.graphs {
            v.extend([
                g.num_tokens,
                g.num_tokens + 1,
                g.num_tokens / 2,
                (g.num_tokens + 1) / 2,
            ]);
        }
        if let Some(d) = b.dbo {
            for t in [d.decode_threshold, d.prefill_threshold] {
                v.extend([t - 1, t, t + 1, 2 * t]);
            }
        }
        v.retain(|&t| t >= 1);
        v
    }

    /// One rank's step in the shapes a vLLM runner sends (tests/rules_v2_props.rs's kinds):
    /// decode, spec decode, the dummy batch, prefill, a PCP share, decodes at `focus` and at
    /// half of it, prefill at a turning point, zero.
    fn rank_step(rng: &mut Rng, dql: i32, turns: &[i32], all_b: bool, focus: i32) -> Step {
        let kind = if focus > 0 && !rng.one_in(5) {
            5 + rng.below(2)
        } else {
            rng.below(9)
        };
        let r = 1 + rng.below(320) as i32;
        let extra = rng.below(901) as i32;
        let q = [1, 2, 4, 5][rng.below(4)];
        let turn = turns[rng.below(turns.len())];
        let base = |t: i32, r: i32, u: i32, mql: i32, rng: &mut Rng| Step {
            t,
            r,
            u,
            q: mql,
            b: rng.one_in(2) || all_b,
            s: rng.one_in(2),
            e: rng.one_in(30),
            loras: if focus > 0 || !rng.one_in(4) {
                0
            } else {
                rng.below(10) as i32
            },
        };
        let at = |t: i32| (t / dql).max(1);
        match kind {
            0 => base(r * dql, r, dql, dql, rng),
            1 => base(r * q, r, q, q, rng),
            2 => base(dql, 1, dql, dql, rng),
            3 => base(
                r + extra,
                r,
                0,
                if extra % 3 == 0 { -1 } else { 1 + extra % 7 },
                rng,
            ),
            4 => base((r / 4).max(1), r, 1, 1, rng),
            5 => base(at(focus) * dql, at(focus), dql, dql, rng),
            6 => base(at(focus / 2) * dql, at(focus / 2), dql, dql, rng),
            7 => base(turn, 1 + (r - 1) % turn, 0, -1, rng),
            _ => base(0, 0, 0, -1, rng),
        }
    }

    /// `dp_decide_slots` with `opts`: status, message, result, array.
    fn decide(
        slots: &[Slot],
        rank: i32,
        opts: &dp_decide_options,
    ) -> (dp_status, String, dp_batch_result, Vec<i32>) {
        let n = slots.len();
        let mut res = result();
        let mut out = vec![-7; n];
        let st = dp_decide_slots(
            slots.as_ptr(),
            n as i32,
            rank,
            opts,
            out.as_mut_ptr(),
            &mut res,
        );
        let message = if st == dp_status::DP_OK {
            String::new()
        } else {
            last_error()
        };
        (st, message, res, out)
    }

    /// The V2 words of a result, in the kernel's host-block order.
    fn result_words(res: &dp_batch_result) -> Vec<(&'static str, i64)> {
        vec![
            ("HOST_SHOULD_UBATCH", i64::from(res.should_ubatch)),
            ("HOST_SHOULD_DP_PAD", i64::from(res.should_dp_pad)),
            ("HOST_SYNCED_CUDAGRAPH_MODE", i64::from(res.graph_mode)),
            (
                "HOST_NUM_TOKENS_AFTER_PADDING_SELF",
                i64::from(res.num_tokens_after_padding_self),
            ),
            (
                "HOST_MAX_NUM_TOKENS_PADDED",
                i64::from(res.max_num_tokens_padded),
            ),
            (
                "HOST_MIN_NUM_TOKENS_UNPADDED",
                i64::from(res.min_num_tokens_unpadded),
            ),
            ("HOST_NUM_UBATCHES", i64::from(res.num_ubatches)),
            ("HOST_LAST_RANK", i64::from(res.last_rank)),
            ("HOST_RULES", i64::from(res.rules)),
            ("HOST_IDLE", i64::from(res.idle)),
            ("HOST_EAGER", i64::from(res.eager)),
            ("HOST_SKIP_DRAFTS", i64::from(res.skip_drafts)),
            (
                "HOST_HAS_ARRAY",
                i64::from(res.has_num_tokens_after_padding),
            ),
            ("HOST_GRAPH_NUM_TOKENS", i64::from(res.graph_num_tokens)),
            ("HOST_GRAPH_NUM_REQS", i64::from(res.graph_num_reqs)),
            (
                "HOST_GRAPH_UNIFORM",
                i64::from(res.graph_uniform_token_count),
            ),
            (
                "HOST_GRAPH_MAX_QUERY_LEN",
                i64::from(res.graph_max_query_len),
            ),
            (
                "HOST_AGREED_UNIFORM",
                i64::from(res.agreed_uniform_token_count),
            ),
            (
                "HOST_AGREED_MAX_QUERY_LEN",
                i64::from(res.agreed_max_query_len),
            ),
            ("HOST_MAX_NUM_REQS", i64::from(res.max_num_reqs)),
        ]
    }

    /// The words a slot set of `n` ranks takes, one slot after another.
    fn words_of(slots: &[Slot]) -> Vec<u32> {
        slots.iter().flat_map(|s| s.opaque).collect()
    }

    /// The V2 record a slot carries.
    fn record_of(s: &Slot) -> V2Record {
        let r = |i: usize| s.opaque[layout("SLOT_RECORD") + i] as i32;
        V2Record {
            num_tokens: r(0),
            cg_mode: r(1),
            uniform_token_count: r(2),
            max_query_len: r(3),
            allow_ubatching: r(4),
            num_reqs: r(5),
            allow_skip_drafts: r(6),
            num_active_loras: r(7),
        }
    }

    /// Which V2 branch an accepted step took (for the coverage counts).
    fn branch(res: &dp_batch_result) -> &'static str {
        match () {
            _ if res.dp_size == 1 => "one rank",
            _ if res.idle => "idle",
            _ if res.num_ubatches > 1 && res.eager => "microbatched eager",
            _ if res.num_ubatches > 1 => "microbatched",
            _ if res.eager => "eager",
            _ if res.graph_mode == 0 => "NONE but not eager",
            _ => "padded to a graph",
        }
    }

    /// Steps aimed at the rare branches (VLLM_V2.md's examples, ranks repeated and shuffled):
    /// `none-not-eager` under E-wide-decode, `ub-eager-fallback` under E-dbo.
    fn targeted(rng: &mut Rng, wide: bool) -> Vec<Step> {
        let (a, b) = if wide {
            (v2_common::step(100, 100).u(1), v2_common::step(10, 1))
        } else {
            (
                v2_common::step(32, 32).u(1).b(),
                v2_common::step(100, 100).u(1).b(),
            )
        };
        let mut steps = vec![a, b];
        for _ in 0..rng.below(4) {
            steps.push(if rng.one_in(2) { a } else { b });
        }
        for i in (1..steps.len()).rev() {
            steps.swap(i, rng.below(i + 1));
        }
        steps
    }

    /// The kernel's V2 logic (the fake driver's dp_postprocess with a device table) against
    /// dp_decide_slots with the same table on random slot sets; its full agreement (the LoRA
    /// case too) against rules::decide_v2.
    pub(super) fn logic(fakes: &Fakes) {
        let words = layout("SLOT_WORDS");
        let h = |name| layout(name);
        let cases: usize = env("V2_CASES").map_or(4000, |v| v.parse().unwrap());
        let mut rng = Rng(0x00D9_C0DE_0002);
        let mut seen = std::collections::BTreeMap::<usize, usize>::new();
        let mut branches = std::collections::BTreeMap::<&str, usize>::new();
        let mut case = 0;
        while case < cases {
            // Now and then a configuration of the examples, for their rare branches.
            let aimed = match rng.below(8) {
                0 => Some(true),
                1 => Some(false),
                _ => None,
            };
            let cfg = match aimed {
                Some(true) => VllmCfg::e_wide_decode(),
                Some(false) => VllmCfg::e_dbo(),
                None => random_cfg(&mut rng),
            };
            let built = cfg.build();
            let table = built.table();
            let device = table.device_words();
            let handle = Handle::new(Some((&built.graphs[..], built.decode_query_len)));
            let turns = turning_points(&built);
            let twins: Vec<i32> = built
                .graphs
                .iter()
                .filter(|g| g.num_ubatches > 1)
                .map(|g| g.num_tokens)
                .collect();
            // Another table, for the kernel's copy that is not the slots' table.
            let other_cfg = random_cfg(&mut rng);
            let other_built = other_cfg.build();
            let other = other_built.table();
            let other_handle = Handle::new(Some((
                &other_built.graphs[..],
                other_built.decode_query_len,
            )));
            for _ in 0..5 {
                case += 1;
                let n = 1 + rng.below(8);
                let rank = rng.below(n) as i32;
                let with_table = !rng.one_in(6);
                let ub = built.dbo.is_some() && rng.one_in(2);
                let focus = if ub && !twins.is_empty() {
                    twins[rng.below(twins.len())]
                } else {
                    0
                };
                let mode = rng.below(3) as i32;
                let slot_handle = if with_table {
                    &handle
                } else {
                    &Handle(std::ptr::null_mut())
                };
                let make_opts = v2_common::options(slot_handle, None);
                let steps: Vec<Step> = match aimed {
                    Some(wide) if rng.one_in(2) => targeted(&mut rng, wide),
                    _ => {
                        let dql = if with_table {
                            built.decode_query_len
                        } else {
                            1
                        };
                        let idle = rng.one_in(25);
                        (0..n)
                            .map(|_| match idle {
                                true => v2_common::step(0, 0),
                                false => rank_step(&mut rng, dql, &turns, ub, focus),
                            })
                            .collect()
                    }
                };
                let n = steps.len();
                let rank = rank % n as i32;
                let mut reqs: Vec<Request> = Vec::with_capacity(n);
                let mut slots = Vec::with_capacity(n);
                for step in steps {
                    let mut q = Request {
                        cudagraph_mode: mode,
                        step_id: if rng.one_in(40) { 8 } else { 7 },
                        timeout_ms: 5000,
                        ..step.request(built.dbo)
                    };
                    if rng.one_in(60) {
                        q.num_reqs = -1; // refused: the marker
                    }
                    if rng.one_in(80) {
                        q.ubatch.enabled = !q.ubatch.enabled; // another configuration
                    }
                    let mut slot = Slot { opaque: [0; 24] };
                    let c = dp_batch_request::from(&q);
                    let _ = dp_make_slot(&c, &make_opts, &mut slot);
                    let w = &mut slot.opaque;
                    if rng.one_in(25) {
                        // A record word out of range, or a query bound of 0.
                        let i = rng.below(8);
                        w[layout("SLOT_RECORD") + i] = (rng.below(5) as i32 - 2) as u32;
                    }
                    if rng.one_in(30) {
                        w[layout("SLOT_RECORD") + 3] = 0;
                    }
                    if rng.one_in(80) {
                        w[layout("SLOT_SEQ")] = 1; // stale
                    }
                    let at: i64 = match rng.below(6) {
                        0 => i64::MAX,
                        1 => 0,
                        _ => 1_000_000 + rng.below(1000) as i64,
                    };
                    w[layout("SLOT_ARRIVAL")] = at as u64 as u32;
                    w[layout("SLOT_ARRIVAL") + 1] = ((at as u64) >> 32) as u32;
                    seal(w);
                    if rng.one_in(40) {
                        w[rng.below(words)] ^= 1 << rng.below(32); // damaged on the way
                    }
                    reqs.push(q);
                    slots.push(slot);
                }
                // The kernel's table: the slots' (or none), now and then another one.
                let (kernel_table, decide_handle) = match (with_table, rng.below(30)) {
                    (true, 0) => (Some(&other), &other_handle),
                    (true, 1) => (None, &Handle(std::ptr::null_mut())),
                    (false, 0) => (Some(&table), &handle),
                    (true, _) => (Some(&table), &handle),
                    (false, _) => (None, &Handle(std::ptr::null_mut())),
                };
                let other_words;
                let device_words = match kernel_table {
                    Some(t) if std::ptr::eq(t, &other) => {
                        other_words = other.device_words();
                        Some(&other_words[..])
                    }
                    Some(_) => Some(&device[..]),
                    None => None,
                };
                let flat = words_of(&slots);
                let (out, host) = fakes.postprocess(&flat, n, rank, 0, device_words);
                let status = host[h("HOST_STATUS")] as usize;
                let what = format!("case {case}: {n} ranks as rank {rank}, {cfg:?}, {reqs:?}");
                *seen.entry(status).or_default() += 1;
                if slots.iter().any(|s| s.opaque[layout("SLOT_SEQ")] != 0) {
                    assert_eq!(status, h("STATUS_STALE"), "{what}");
                    continue;
                }
                let opts = v2_common::options(decide_handle, None);
                let (st, message, res, array) = decide(&slots, rank, &opts);
                assert_eq!(
                    status,
                    status_of(st, &message),
                    "{what}: dp_decide_slots says {st:?}: {message}"
                );
                let copy = h("HOST_HEADER_WORDS") + n;
                if st != dp_status::DP_OK {
                    let copied: Vec<u32> = host[copy..copy + n * words]
                        .iter()
                        .map(|&w| w as u32)
                        .collect();
                    assert_eq!(copied, flat, "{what}");
                    continue;
                }
                if res.rules != rules::DP_RULES_VLLM_V2 {
                    continue; // a V1 slot set (its own test covers it)
                }
                *branches.entry(branch(&res)).or_default() += 1;
                for (name, want) in result_words(&res) {
                    assert_eq!(i64::from(host[h(name)]), want, "{what}: {name}");
                }
                assert_eq!(
                    join(host[h("HOST_SKEW")] as u32, host[h("HOST_SKEW") + 1] as u32),
                    res.arrival_skew_ns,
                    "{what}"
                );
                // The descriptor's LoRA case too: rules::decide_v2 on the same records.
                let records: Vec<V2Record> = slots.iter().map(record_of).collect();
                let t = kernel_table;
                let agreement = rules::decide_v2(
                    &records,
                    rank,
                    None,
                    &V2Config::of(&reqs[0], t.map(|t| t as &GraphTable)),
                    t,
                    None,
                )
                .expect("the host path accepted the step");
                assert_eq!(
                    host[h("HOST_GRAPH_LORAS")],
                    agreement.graph.num_active_loras,
                    "{what}"
                );
                // The arrays: dp_decide_slots's; with none (idle, one rank) each rank's tokens.
                let want = if res.has_num_tokens_after_padding {
                    array
                } else {
                    records.iter().map(|r| r.num_tokens).collect()
                };
                assert_eq!(out, want, "{what}: device array");
                assert_eq!(
                    host[h("HOST_HEADER_WORDS")..copy],
                    want[..],
                    "{what}: host array"
                );
            }
        }
        for status in [
            "STATUS_OK",
            "STATUS_STALE",
            "STATUS_CORRUPT",
            "STATUS_MARKER",
            "STATUS_CONFIG",
            "STATUS_STEP_IDS",
            "STATUS_INVALID",
        ] {
            assert!(
                seen.get(&layout(status)).copied().unwrap_or(0) >= 20 || cases < 4000,
                "{status} seen {:?} times: {seen:?}",
                seen.get(&layout(status))
            );
        }
        for b in [
            "one rank",
            "idle",
            "microbatched",
            "microbatched eager",
            "eager",
            "NONE but not eager",
            "padded to a graph",
        ] {
            assert!(
                branches.get(b).copied().unwrap_or(0) >= 10 || cases < 4000,
                "branch {b:?} taken {:?} times: {branches:?}",
                branches.get(b)
            );
        }
        println!("SEEN={seen:?}");
        println!("BRANCHES={branches:?}");
    }

    /// A two-rank coordinator's V2 steps (the fake NCCL gives the peer this rank's slot) and
    /// dp_coordinator_set_graphs's states; dp_coordinate_batch decides V2 without a table.
    pub(super) fn coordinator(fakes: &Fakes) {
        let built = VllmCfg::e_dbo().build();
        let graphs = (&built.graphs[..], built.decode_query_len);
        let table = built.table();
        let words = table.device_words();
        let comm = fakes.comm(2, 0).cast::<ncclComm>();
        let mut c: *mut dp_coordinator = std::ptr::null_mut();
        assert_eq!(dp_coordinator_create(comm, &mut c), dp_status::DP_OK);
        let live = fakes.live();
        // NULL coordinator; a table set, then its handle destroyed: the coordinator keeps its
        // own reference (and one device copy).
        let g = Handle::new(Some(graphs));
        assert_eq!(
            dp_coordinator_set_graphs(std::ptr::null_mut(), g.0),
            dp_status::DP_ERR_INVALID_ARGUMENT
        );
        assert!(last_error().contains('c'), "{}", last_error());
        assert_eq!(
            dp_coordinator_set_graphs(c, g.0),
            dp_status::DP_OK,
            "{}",
            last_error()
        );
        drop(g);
        assert_eq!(fakes.live(), live + 1, "one device copy of the table");
        // A uniform decode of 40 tokens on both ranks (E-dbo, microbatching allowed): FULL 40
        // x2, checked against dp_decide_slots on the slots the gather delivered, with the table.
        let v2 = |tokens: i32, b: bool| -> dp_batch_request {
            let step = v2_common::step(tokens, tokens).u(1);
            let step = if b { step.b() } else { step };
            let mut q = dp_batch_request::from(&step.request(built.dbo));
            q.timeout_ms = 5000;
            q.step_id = 3;
            q
        };
        let check = |res: &dp_batch_result, with: Option<(&[rules::Graph], i32)>| {
            let handle = Handle::new(with);
            let opts = v2_common::options(&handle, None);
            let gathered: Vec<Slot> = fakes
                .last_recv(2)
                .chunks(layout("SLOT_WORDS"))
                .map(|w| Slot {
                    opaque: w.try_into().unwrap(),
                })
                .collect();
            let (st, message, host, array) = decide(&gathered, 0, &opts);
            assert_eq!(st, dp_status::DP_OK, "{message}");
            assert_eq!(result_words(res), result_words(&host));
            assert_eq!(res.rules, rules::DP_RULES_VLLM_V2);
            assert_eq!(res.step_id, 3);
            assert!(res.has_num_tokens_after_padding);
            // SAFETY: the coordinator's host array of dp_size entries, valid until its next
            // begin.
            let got = unsafe { std::slice::from_raw_parts(res.num_tokens_after_padding, 2) };
            assert_eq!(got, &array[..]);
            // SAFETY: the fake's device memory is host memory; the exchange completed.
            let dev = unsafe { std::slice::from_raw_parts(res.num_tokens_after_padding_device, 2) };
            assert_eq!(dev, &array[..]);
        };
        let mut res = result();
        assert_eq!(
            dp_coordinator_begin(c, stream(0), &v2(40, true)),
            dp_status::DP_OK
        );
        // In flight: set_graphs is busy, and nothing changes.
        assert_eq!(
            dp_coordinator_set_graphs(c, std::ptr::null()),
            dp_status::DP_ERR_BUSY
        );
        assert!(last_error().contains("in flight"), "{}", last_error());
        assert_eq!(
            dp_coordinator_end(c, &mut res),
            dp_status::DP_OK,
            "{}",
            last_error()
        );
        check(&res, Some(graphs));
        assert_eq!(
            (
                res.graph_mode,
                res.graph_num_tokens,
                res.num_ubatches,
                res.eager
            ),
            (2, 40, 2, false),
            "E-dbo's twin for 40 tokens"
        );
        assert_eq!(
            fakes.last_table(words.len()).as_deref(),
            Some(&words[..]),
            "the kernel got the table's device form"
        );
        // Without microbatching: FULL 40, x1.
        assert_eq!(
            dp_coordinator_begin(c, stream(0), &v2(40, false)),
            dp_status::DP_OK
        );
        assert_eq!(
            dp_coordinator_end(c, &mut res),
            dp_status::DP_OK,
            "{}",
            last_error()
        );
        check(&res, Some(graphs));
        assert_eq!((res.graph_mode, res.num_ubatches), (2, 1));
        // NULL: no table; the device copy is freed; the step decides without one.
        assert_eq!(
            dp_coordinator_set_graphs(c, std::ptr::null()),
            dp_status::DP_OK
        );
        assert_eq!(fakes.live(), live, "the device copy was freed");
        assert_eq!(
            dp_coordinator_begin(c, stream(0), &v2(40, false)),
            dp_status::DP_OK
        );
        assert_eq!(
            dp_coordinator_end(c, &mut res),
            dp_status::DP_OK,
            "{}",
            last_error()
        );
        check(&res, None);
        assert!(
            fakes.last_table(1).is_none(),
            "no table given to the kernel"
        );
        // Set again, replaced: still one device copy.
        let g = Handle::new(Some(graphs));
        assert_eq!(dp_coordinator_set_graphs(c, g.0), dp_status::DP_OK);
        assert_eq!(dp_coordinator_set_graphs(c, g.0), dp_status::DP_OK);
        assert_eq!(fakes.live(), live + 1, "the replaced copy was freed");
        // A V1 step on the same coordinator ignores the table.
        assert_eq!(
            dp_coordinator_begin(c, stream(0), &request(9, 5000)),
            dp_status::DP_OK
        );
        assert_eq!(
            dp_coordinator_end(c, &mut res),
            dp_status::DP_OK,
            "{}",
            last_error()
        );
        assert_eq!((res.rules, res.num_tokens_after_padding_self), (0, 9));
        assert_eq!(dp_coordinator_destroy(c), dp_status::DP_OK);
        // dp_coordinate_batch: a V2 request, decided without a table.
        let comm2 = fakes.comm(2, 0).cast::<ncclComm>();
        let st = dp_coordinate_batch(comm2, stream(0), &v2(40, false), &mut res);
        assert_eq!(st, dp_status::DP_OK, "{}", last_error());
        check(&res, None);
        assert_eq!(dp_release(comm2), dp_status::DP_OK);
        // A one-rank coordinator (decided locally) with the table.
        let solo = fakes.comm(1, 0).cast::<ncclComm>();
        let mut c1: *mut dp_coordinator = std::ptr::null_mut();
        assert_eq!(dp_coordinator_create(solo, &mut c1), dp_status::DP_OK);
        assert_eq!(dp_coordinator_set_graphs(c1, g.0), dp_status::DP_OK);
        assert_eq!(
            dp_coordinator_begin(c1, stream(0), &v2(40, false)),
            dp_status::DP_OK
        );
        assert_eq!(
            dp_coordinator_end(c1, &mut res),
            dp_status::DP_OK,
            "{}",
            last_error()
        );
        assert_eq!(
            (
                res.graph_mode,
                res.graph_num_tokens,
                res.has_num_tokens_after_padding
            ),
            (2, 40, false)
        );
        assert_eq!(dp_coordinator_destroy(c1), dp_status::DP_OK);
    }

    /// A peer whose slot names another graph table: every rank fails with
    /// DP_ERR_INCONSISTENT_RANKS naming the graph table, as dp_decide_slots says.
    pub(super) fn another_table(fakes: &Fakes) {
        let built = VllmCfg::e_base().build();
        let other = VllmCfg::e_wide_decode().build().table();
        let g = Handle::new(Some((&built.graphs[..], built.decode_query_len)));
        let comm = fakes.comm(2, 0).cast::<ncclComm>();
        let mut c: *mut dp_coordinator = std::ptr::null_mut();
        assert_eq!(dp_coordinator_create(comm, &mut c), dp_status::DP_OK);
        assert_eq!(dp_coordinator_set_graphs(c, g.0), dp_status::DP_OK);
        fakes.peer(layout("SLOT_GRAPHS") as i32, 1, other.hash(), 0);
        let mut q = dp_batch_request::from(&v2_common::step(9, 9).u(1).request(None));
        q.timeout_ms = 5000;
        let mut res = result();
        assert_eq!(dp_coordinator_begin(c, stream(0), &q), dp_status::DP_OK);
        let st = dp_coordinator_end(c, &mut res);
        let message = last_error();
        fakes.peer(-1, 0, 0, 0);
        assert_eq!(st, dp_status::DP_ERR_INCONSISTENT_RANKS, "{message}");
        assert!(
            message.contains(&format!(
                "graph table (hash) differs: rank 0 has {}, rank 1 has {}",
                built.table().hash() as i32,
                other.hash() as i32
            )),
            "{message}"
        );
        let opts = v2_common::options(&g, None);
        let gathered: Vec<Slot> = fakes
            .last_recv(2)
            .chunks(layout("SLOT_WORDS"))
            .map(|w| Slot {
                opaque: w.try_into().unwrap(),
            })
            .collect();
        let (host_st, host_message, _, _) = decide(&gathered, 0, &opts);
        assert_eq!((st, &message), (host_st, &host_message));
        // The coordinator stays usable.
        assert_eq!(dp_coordinator_begin(c, stream(0), &q), dp_status::DP_OK);
        assert_eq!(
            dp_coordinator_end(c, &mut res),
            dp_status::DP_OK,
            "{}",
            last_error()
        );
        assert_eq!((res.graph_mode, res.graph_num_tokens), (2, 16));
        assert_eq!(dp_coordinator_destroy(c), dp_status::DP_OK);
    }
}

/// The kernel's V2 checks, decision and dispatch over the device table (its host-runnable
/// part in the fake driver) agree with dp_decide_slots with the same table on 4000 random
/// V2 slot sets over random vLLM-built tables (every fault, every branch), and its agreement
/// with rules::decide_v2 (the LoRA case too).
#[test]
fn the_kernels_v2_logic_is_dp_decide_slots_on_random_slots_and_tables() {
    let r = run("v2logic", &[]);
    assert!(r.printed("BRANCHES").starts_with('{'), "{}", r.stdout);
    println!(
        "statuses {}, branches {}",
        r.printed("SEEN"),
        r.printed("BRANCHES")
    );
}

/// A one-character change of the kernel's dispatch (two compatibility rules, the LoRA case
/// resolution) makes the random comparison fail: it tests the dispatch.
#[test]
fn a_one_character_change_of_the_kernels_dispatch_is_caught() {
    for (name, from, to) in [
        (
            "reqs",
            "(c.reqs == -1 || c.reqs >= reqs)",
            "(c.reqs == -1 || c.reqs > reqs)",
        ),
        ("loras", "if (c >= x) break;", "if (c > x) break;"),
        ("tokens", "c.tokens >= tokens;", "c.tokens > tokens;"),
    ] {
        let dir = fake_gpu::mutant_libraries(&format!("-mutant-{name}"), from, to);
        let (passed, r) = fake_gpu::run_with(&dir, "v2logic", &[]);
        assert!(!passed, "mutation {name} went unseen:\n{}", r.stdout);
        assert!(
            r.stdout.contains("panicked") || r.stderr.contains("panicked"),
            "mutation {name}: {}\n{}",
            r.stdout,
            r.stderr
        );
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// dp_coordinator_set_graphs: NULL coordinator refused, the handle destroyed after setting,
/// busy while an exchange is in flight, NULL removes the table (its device copy freed), a
/// replaced table leaves one copy; V2 steps through the coordinator (microbatched and not, with
/// and without the table) and through dp_coordinate_batch (no table) give what dp_decide_slots
/// gives on the gathered slots; a one-rank coordinator decides V2 locally with the table.
#[test]
fn set_graphs_states_and_v2_steps_through_the_coordinator() {
    run("v2coordinator", &[]);
}

/// A rank with another graph table: every rank fails the step with DP_ERR_INCONSISTENT_RANKS
/// naming the graph table (dp_decide_slots's message on the same slots); the next step works.
#[test]
fn a_rank_with_another_graph_table_fails_every_rank() {
    run("v2config", &[]);
}
