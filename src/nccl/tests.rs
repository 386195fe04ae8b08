//! The NCCL wrappers and the resolver, against the real dynamic linker and fake tables.

use super::*;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

// ---- resolution, against the real dynamic linker (no NCCL needed) ----

#[test]
fn sources_are_the_four_steps_in_order() {
    let s = sources(Some("/x/libnccl.so.2".into()));
    assert_eq!(s[0], Source::ProcessSymbols);
    assert_eq!(s[1], Source::AlreadyLoaded);
    assert_eq!(s[2], Source::EnvPath(Some("/x/libnccl.so.2".into())));
    assert_eq!(s[3], Source::Dlopen);
    assert_eq!(sources(Some("".into()))[2], Source::EnvPath(None));
    assert_eq!(sources(None)[2], Source::EnvPath(None));
}

#[test]
fn bad_env_path_names_all_four_steps_and_the_path() {
    // Holds on machines with NCCL installed too: a test process has not loaded NCCL, and
    // a set DPCOORD_NCCL_LIBRARY keeps step 4 from loading it.
    let bad = "/nonexistent/dpcoord-test/libnccl.so.2";
    let Err(Error {
        kind: ErrorKind::LibraryUnavailable,
        message: msg,
    }) = resolve(&sources(Some(bad.into())))
    else {
        panic!("expected LibraryUnavailable");
    };
    for needle in [
        "(1) process symbols: dlsym(RTLD_DEFAULT, \"ncclAllGather\"): ",
        "(2) already-loaded libnccl.so.2: not loaded",
        &format!("(3) DPCOORD_NCCL_LIBRARY={bad}: dlopen failed: {bad}: cannot open"),
        "(4) dlopen(libnccl.so.2): not tried: DPCOORD_NCCL_LIBRARY is set",
        "fix: link NCCL into the process",
        "or set DPCOORD_NCCL_LIBRARY",
    ] {
        assert!(msg.contains(needle), "missing {needle:?} in {msg}");
    }
}

#[test]
fn unset_env_is_reported_as_not_set() {
    let Err(Error {
        kind: ErrorKind::LibraryUnavailable,
        message: msg,
    }) = resolve(&[Source::ProcessSymbols, Source::EnvPath(None)])
    else {
        panic!("expected LibraryUnavailable");
    };
    assert!(msg.contains("(2) DPCOORD_NCCL_LIBRARY: not set;"), "{msg}");
}

#[test]
fn env_library_that_is_not_nccl_is_rejected_not_skipped() {
    let srcs = [Source::EnvPath(Some("libm.so.6".into())), Source::Dlopen];
    let Err(Error {
        kind: ErrorKind::LibraryUnavailable,
        message: msg,
    }) = resolve(&srcs)
    else {
        panic!("expected LibraryUnavailable");
    };
    assert!(
        msg.starts_with("DPCOORD_NCCL_LIBRARY=libm.so.6 is not a usable NCCL"),
        "{msg}"
    );
    assert!(
        msg.contains("required symbol ncclAllGather is missing"),
        "{msg}"
    );
    assert!(msg.contains("undefined symbol: ncclAllGather"), "{msg}");
}

#[test]
fn format_not_found_lists_attempts_in_order() {
    let msg = format_not_found(&[
        Attempt {
            step: "a".into(),
            why: "no".into(),
        },
        Attempt {
            step: "b".into(),
            why: "nope".into(),
        },
    ]);
    assert!(
        msg.starts_with("NCCL not found; tried: (1) a: no; (2) b: nope; fix: "),
        "{msg}"
    );
}

#[test]
fn nccl_is_found_or_unavailable() {
    // Never mutates the environment; whichever way this machine is set up.
    match nccl() {
        Ok(n) => assert!(n.version() > 0 && !n.origin().is_empty()),
        Err(Error {
            kind: ErrorKind::LibraryUnavailable,
            ..
        }) => {}
        Err(e) => panic!("unexpected {e}"),
    }
}

#[test]
fn version_string_reads_both_encodings() {
    assert_eq!(version_string(22803), "2.28.3");
    assert_eq!(version_string(2708), "2.7.8");
}

/// With a real NCCL at `DPCOORD_TEST_NCCL_LIBRARY`, resolve it and read a real error.
#[test]
#[ignore = "needs a real NCCL: set DPCOORD_TEST_NCCL_LIBRARY=<libnccl.so.2> and pass --ignored (scripts/test.sh does)"]
fn real_nccl_when_given() {
    let path = std::env::var_os("DPCOORD_TEST_NCCL_LIBRARY")
        .expect("DPCOORD_TEST_NCCL_LIBRARY names a real libnccl.so.2");
    let n = resolve(&[Source::EnvPath(Some(path))]).expect("resolve");
    assert!(n.version() >= 20000, "{}", n.version());
    assert!(n.sym.get_last_error.is_some());
    let mut out = 0;
    // SAFETY: ncclCommCount with a NULL comm is an argument error NCCL reports.
    let rc = unsafe { (n.sym.comm_count)(std::ptr::null_mut(), &mut out) };
    assert_ne!(rc, NCCL_SUCCESS);
    let e = n.failure("ncclCommCount", rc, std::ptr::null_mut());
    eprintln!(
        "origin: {} ({:?}); real error: {e}",
        n.origin(),
        n.library_path()
    );
    assert!(e.to_string().contains("ncclCommCount failed: "), "{e}");
}

// ---- wrappers, against a fake NCCL made of Rust functions ----

/// A fake communicator: the async state answered for the next `polls` queries, then 0.
struct FakeComm {
    state: AtomicI32,
    polls: AtomicI32,
}

fn fake_comm(state: i32, polls: i32) -> FakeComm {
    FakeComm {
        state: AtomicI32::new(state),
        polls: AtomicI32::new(polls),
    }
}

fn ptr(c: &FakeComm) -> CommHandle {
    CommHandle(c as *const FakeComm as CommPtr)
}

fn no_stream() -> StreamHandle {
    // SAFETY: NULL is the legacy default stream handle; the fake NCCL never uses it.
    unsafe { StreamHandle::from_raw(std::ptr::null_mut()) }
}

unsafe extern "C" fn fake_all_gather(
    _s: *const c_void,
    _r: *mut c_void,
    count: usize,
    dtype: c_int,
    _c: CommPtr,
    _st: StreamPtr,
) -> c_int {
    match (count, dtype) {
        (5, NCCL_INT32) => 0,
        (7, _) => NCCL_IN_PROGRESS,
        _ => 4,
    }
}
unsafe extern "C" fn fake_count(_c: CommPtr, out: *mut c_int) -> c_int {
    // SAFETY: out is the wrapper's valid out pointer.
    unsafe { *out = 4 };
    0
}
unsafe extern "C" fn fake_rank_fails(_c: CommPtr, _out: *mut c_int) -> c_int {
    5
}
unsafe extern "C" fn fake_async(c: CommPtr, out: *mut c_int) -> c_int {
    // SAFETY: tests pass a live FakeComm.
    let c = unsafe { &*(c as *const FakeComm) };
    let left = c.polls.fetch_sub(1, Ordering::SeqCst);
    let v = if left > 0 {
        c.state.load(Ordering::SeqCst)
    } else {
        0
    };
    // SAFETY: out is the wrapper's valid out pointer.
    unsafe { *out = v };
    0
}
unsafe extern "C" fn fake_error_string(code: c_int) -> *const c_char {
    match code {
        4 => c"invalid argument".as_ptr(),
        5 => c"invalid usage".as_ptr(),
        6 => c"remote process exited or there was a network error".as_ptr(),
        _ => c"unknown result code".as_ptr(),
    }
}
unsafe extern "C" fn fake_last_error(_c: CommPtr) -> *const c_char {
    c"peer 3 went away\n".as_ptr()
}
unsafe extern "C" fn fake_last_error_empty(_c: CommPtr) -> *const c_char {
    c"".as_ptr()
}

fn fake(last: Option<LastErrorFn>) -> Nccl {
    super::fake::nccl_with(Symbols {
        all_gather: fake_all_gather,
        comm_count: fake_count,
        comm_user_rank: fake_rank_fails,
        comm_cu_device: fake_count,
        comm_get_async_error: fake_async,
        get_error_string: fake_error_string,
        get_version: super::fake::version,
        get_last_error: last,
    })
}

#[test]
fn queries_return_values() {
    let n = fake(Some(fake_last_error));
    let c = fake_comm(0, 0);
    assert_eq!(n.comm_count(ptr(&c)), Ok(4));
    assert_eq!(n.comm_cu_device(ptr(&c)), Ok(4));
    assert_eq!(n.version(), 22803);
    assert_eq!(n.origin(), "fake");
}

#[test]
fn failure_names_function_text_code_and_last_error() {
    let n = fake(Some(fake_last_error));
    let c = fake_comm(0, 0);
    assert_eq!(
        n.comm_user_rank(ptr(&c)),
        Err(Error::new(
            ErrorKind::Nccl,
            "ncclCommUserRank failed: invalid usage (ncclResult_t 5, NCCL 2.28.3); \
             ncclGetLastError: peer 3 went away"
        ))
    );
}

#[test]
fn empty_or_missing_last_error_is_left_out() {
    let c = fake_comm(0, 0);
    let want = Err(Error::new(
        ErrorKind::Nccl,
        "ncclCommUserRank failed: invalid usage (ncclResult_t 5, NCCL 2.28.3)",
    ));
    assert_eq!(fake(None).comm_user_rank(ptr(&c)), want);
    assert_eq!(
        fake(Some(fake_last_error_empty)).comm_user_rank(ptr(&c)),
        want
    );
}

#[test]
fn null_comm_is_invalid_argument() {
    let n = fake(None);
    let null = CommHandle(std::ptr::null_mut());
    assert!(
        matches!(n.comm_count(null), Err(Error { kind: ErrorKind::InvalidArgument, message: m }) if m.contains("ncclCommCount"))
    );
    assert!(matches!(
        n.check_async_error(null),
        Err(Error {
            kind: ErrorKind::InvalidArgument,
            ..
        })
    ));
    assert!(matches!(
        n.all_gather_i32_until(1, 2, 5, null, no_stream(), None),
        Err(Error {
            kind: ErrorKind::InvalidArgument,
            ..
        })
    ));
}

#[test]
fn async_error_healthy_states_and_failure() {
    let n = fake(None);
    assert_eq!(n.check_async_error(ptr(&fake_comm(0, 1))), Ok(()));
    assert_eq!(
        n.check_async_error(ptr(&fake_comm(NCCL_IN_PROGRESS, 1))),
        Ok(())
    );
    let Err(Error {
        kind: ErrorKind::Nccl,
        message: m,
    }) = n.check_async_error(ptr(&fake_comm(6, 1)))
    else {
        panic!("expected Nccl error");
    };
    assert!(m.starts_with("ncclCommGetAsyncError reports the communicator failed: remote"));
    assert!(m.contains("(ncclResult_t 6, NCCL 2.28.3)"), "{m}");
    let Err(Error {
        kind: ErrorKind::Nccl,
        message: m,
    }) = n.check_async_error(ptr(&fake_comm(42, 1)))
    else {
        panic!("expected Nccl error");
    };
    assert!(m.contains("unknown result code (ncclResult_t 42"), "{m}");
}

#[test]
fn all_gather_success_failure_and_null_buffers() {
    let n = fake(None);
    let c = fake_comm(0, 0);
    let null = no_stream();
    assert_eq!(
        n.all_gather_i32_until(0x1000, 0x2000, 5, ptr(&c), null, None),
        Ok(())
    );
    let Err(Error {
        kind: ErrorKind::Nccl,
        message: m,
    }) = n.all_gather_i32_until(0x1000, 0x2000, 3, ptr(&c), null, None)
    else {
        panic!("expected Nccl error");
    };
    assert!(
        m.starts_with("ncclAllGather failed: invalid argument (ncclResult_t 4"),
        "{m}"
    );
    assert!(matches!(
        n.all_gather_i32_until(0, 0x2000, 5, ptr(&c), null, None),
        Err(Error {
            kind: ErrorKind::InvalidArgument,
            ..
        })
    ));
}

#[test]
fn all_gather_in_progress_waits_until_enqueued() {
    let n = fake(None);
    let c = fake_comm(NCCL_IN_PROGRESS, 3);
    assert_eq!(
        n.all_gather_i32_until(0x1000, 0x2000, 7, ptr(&c), no_stream(), None),
        Ok(())
    );
    assert!(
        c.polls.load(Ordering::SeqCst) < 0,
        "polled past the in-progress answers"
    );
}

#[test]
fn all_gather_in_progress_reports_async_failure_and_deadline() {
    let n = fake(None);
    let null = no_stream();
    let c = fake_comm(6, 1);
    assert!(matches!(
        n.all_gather_i32_until(1, 2, 7, ptr(&c), null, None),
        Err(Error {
            kind: ErrorKind::Nccl,
            ..
        })
    ));
    let c = fake_comm(NCCL_IN_PROGRESS, i32::MAX);
    let deadline = Some(Instant::now() + Duration::from_millis(5));
    assert!(matches!(
        n.all_gather_i32_until(1, 2, 7, ptr(&c), null, deadline),
        Err(Error { kind: ErrorKind::Timeout, message: m }) if m.contains("ncclAllGather")
    ));
}
