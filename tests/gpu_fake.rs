//! The GPU path over a fake NCCL and a fake CUDA driver (C libraries in `tests/fake_gpu/`,
//! loaded the way dpcoord loads the real ones), one child process per scenario: no leak when
//! `dp_coordinator_create` fails at any allocation; the watchdog protocol (`dp_cancel` until
//! `DP_OK`, then abort) at every point of the first `dp_coordinate_batch`; special streams
//! never used from another thread; a stream the coordinator cannot use still joins the
//! exchange; a timed-out first exchange frees its state once NCCL let go of it; the GPU
//! path's log lines and NVTX ranges.

mod diag_support;
mod fake_gpu;

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use dpcoord::ffi::*;
use fake_gpu::{run, tid, Fakes, CASE};

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
            println!(
                "BEGIN={}",
                dp_coordinator_begin(c, s, &request(3, 5000)) as u32
            );
            println!("BEGIN_ERROR={}", last_error());
            let mut res = result();
            println!("END={}", dp_coordinator_end(c, &mut res) as u32);
            println!("END_ERROR={}", last_error());
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
        other => panic!("unknown case {other}"),
    }
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
/// on a stream the coordinator owns: begin returns DP_OK, end names the stream, and nothing
/// but the checks ran on the unusable stream.
#[test]
fn an_unusable_stream_joins_the_exchange_as_the_marker() {
    for (raw, why) in [("ca97", "capturing a CUDA graph"), ("d1", "CUDA device 1")] {
        let r = run("unusable_stream", &[("STREAM", raw.to_owned())]);
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
