//! Helpers shared by the FFI test binaries (tests/ffi.rs, tests/ffi_abi.rs).
#![allow(dead_code)]

use std::ffi::{c_char, CStr};

use dpcoord::ffi::{dp_batch_result, dp_last_error, dp_status, ncclComm};
use dpcoord::rules::RankRecord;

/// A value no successful call writes into an output field.
pub const SENTINEL: i32 = -777;
/// An address a successful call never writes into a result pointer field.
pub const SENTINEL_PTR: usize = 0xdead_bee0;

/// A record of sentinels: "untouched" when a call fails.
pub const SENTINEL_RECORD: RankRecord = RankRecord {
    num_tokens_unpadded: SENTINEL,
    num_tokens_padded: SENTINEL,
    should_attempt_ubatch: SENTINEL,
    should_attempt_dp_pad: SENTINEL,
    cudagraph_mode: SENTINEL,
};

/// A result of sentinels (every bool true, pointers [`SENTINEL_PTR`]) whose `struct_size` is
/// this library's, as `dp_batch_result_init` sets it.
pub fn sentinel_result() -> dp_batch_result {
    dp_batch_result {
        struct_size: std::mem::size_of::<dp_batch_result>() as u32,
        should_ubatch: true,
        should_dp_pad: true,
        has_num_tokens_after_padding: true,
        synced_cudagraph_mode: SENTINEL,
        dp_rank: SENTINEL,
        dp_size: SENTINEL,
        num_tokens_after_padding_self: SENTINEL,
        max_num_tokens_padded: SENTINEL,
        min_num_tokens_unpadded: SENTINEL,
        num_tokens_after_padding: SENTINEL_PTR as *const i32,
        num_tokens_after_padding_device: SENTINEL_PTR as *const i32,
        step_id: i64::from(SENTINEL),
        last_rank: SENTINEL,
        arrival_skew_ns: i64::from(SENTINEL),
        wait_ns: i64::from(SENTINEL),
        idle: true,
        local: true,
        eager: true,
        skip_drafts: true,
        graph_mode: SENTINEL,
        graph_num_tokens: SENTINEL,
        graph_num_reqs: SENTINEL,
        graph_uniform_token_count: SENTINEL,
        graph_max_query_len: SENTINEL,
        num_ubatches: SENTINEL,
        agreed_uniform_token_count: SENTINEL,
        agreed_max_query_len: SENTINEL,
        max_num_reqs: SENTINEL,
        rules: SENTINEL,
    }
}

/// A C string returned by the library, copied at once.
pub fn text(ptr: *const c_char) -> String {
    assert!(!ptr.is_null());
    // SAFETY: the library returns NUL-terminated strings valid until the next failing call on
    // this thread; it is copied at once.
    unsafe { CStr::from_ptr(ptr) }
        .to_str()
        .expect("UTF-8")
        .to_owned()
}

/// This thread's `dp_last_error()`.
pub fn last_error() -> String {
    text(dp_last_error())
}

/// Asserts `status` is `want` and the last error contains every needle.
pub fn assert_fails(status: dp_status, want: dp_status, needles: &[&str]) {
    assert_eq!(status, want, "last error: {}", last_error());
    let message = last_error();
    for needle in needles {
        assert!(
            message.contains(needle),
            "last error {message:?} does not contain {needle:?}"
        );
    }
}

/// A non-NULL communicator for argument checks that fail before the communicator is used:
/// NULLs and `struct_size` come first; an invalid request would join the exchange as the
/// invalid-request marker, but test processes find no NCCL (`.cargo/config.toml` points
/// `DPCOORD_NCCL_LIBRARY` at a missing file), so it comes back named. It points at zeroed
/// memory, never at a real `ncclComm`.
pub fn fake_comm() -> *mut ncclComm {
    static ZEROS: [u64; 512] = [0; 512];
    ZEROS.as_ptr() as *mut ncclComm
}

/// Runs `body` for the test named `test` (the test function calling this) in a child
/// process, this test binary re-run on that one test: a fault (SIGSEGV at a guard page, an
/// abort) then fails this test, naming the signal, instead of killing the whole test run.
pub fn in_child_process(test: &str, body: impl FnOnce()) {
    const CHILD: &str = "DPCOORD_TEST_CHILD";
    if std::env::var(CHILD).is_ok_and(|c| c == test) {
        body();
        return;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", test, "--nocapture", "--test-threads=1"])
        .env(CHILD, test)
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{test} failed in its child process ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        stdout.contains("1 passed"),
        "{test} did not run in the child:\n{stdout}"
    );
}
