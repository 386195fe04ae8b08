//! The GPU path over a fake NCCL and a fake CUDA driver (C libraries in `tests/fake_gpu/`,
//! loaded the way dpcoord loads the real ones), one child process per scenario: no leak when
//! `dp_coordinator_create` fails at any allocation.

mod fake_gpu;

use std::ffi::CStr;
use std::mem::MaybeUninit;

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

fn stream(raw: usize) -> *mut CUstream_st {
    raw as *mut CUstream_st
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
