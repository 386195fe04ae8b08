//! The GPU path over a fake NCCL and a fake CUDA driver (C libraries in `tests/fake_gpu/`,
//! loaded the way dpcoord loads the real ones), one child process per scenario: no leak when
//! `dp_coordinator_create` fails at any allocation; the watchdog protocol (`dp_cancel` until
//! `DP_OK`, then abort) at every point of the first `dp_coordinate_batch`; special streams
//! never used from another thread; a stream the coordinator cannot use still joins the
//! exchange; a timed-out first exchange frees its state once NCCL let go of it.

mod fake_gpu;

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use dpcoord::ffi::*;
use fake_gpu::{run, Fakes, CASE};

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
