//! `DPCOORD_DEBUG` through the C ABI: nothing written when off, one WARN line per failure with
//! exactly `dp_last_error`'s text, the line's prefix, `DPCOORD_DEBUG_FILE` with `%h`/`%p`,
//! stderr otherwise; a TRACE line and an NVTX range for a host decision. The library reads the environment once per process, so each case runs
//! the `child` test of this binary in a fresh process with its own environment.

use std::ffi::CStr;
use std::mem::MaybeUninit;
use std::path::{Path, PathBuf};

use dpcoord::ffi::*;
use dpcoord::rules::RankRecord;

/// What the child does, chosen by `DPCOORD_TEST_CASE`.
const CASE: &str = "DPCOORD_TEST_CASE";

#[test]
#[ignore = "the body of the DPCOORD_DEBUG tests, run by them in a subprocess"]
fn child() {
    let case = std::env::var(CASE).expect("run by the tests below with DPCOORD_TEST_CASE set");
    match case.as_str() {
        // One failing call: a field out of range.
        "fail" => {
            let mut req = MaybeUninit::<dp_batch_request>::uninit();
            dp_batch_request_init(req.as_mut_ptr());
            // SAFETY: dp_batch_request_init wrote every field.
            let mut req = unsafe { req.assume_init() };
            req.num_tokens_unpadded = -3;
            let mut record = RankRecord::from_words([0; 5]);
            let status = dp_make_record(&req, &mut record);
            assert_eq!(status, dp_status::DP_ERR_INVALID_ARGUMENT);
            // SAFETY: dp_last_error returns a NUL-terminated string valid until the next
            // failing call on this thread; it is copied at once.
            let message = unsafe { CStr::from_ptr(dp_last_error()) };
            println!("LAST_ERROR={}", message.to_str().unwrap());
        }
        // Successful local calls only.
        "succeed" => {
            let mut req = MaybeUninit::<dp_batch_request>::uninit();
            dp_batch_request_init(req.as_mut_ptr());
            // SAFETY: dp_batch_request_init wrote every field.
            let mut req = unsafe { req.assume_init() };
            req.num_tokens_unpadded = 64;
            let mut record = RankRecord::from_words([0; 5]);
            assert_eq!(dp_make_record(&req, &mut record), dp_status::DP_OK);
        }
        // A successful host decision over two ranks that microbatch and pad.
        "decide" => {
            let mut req = MaybeUninit::<dp_batch_request>::uninit();
            dp_batch_request_init(req.as_mut_ptr());
            // SAFETY: dp_batch_request_init wrote every field.
            let mut req = unsafe { req.assume_init() };
            req.allow_microbatching = true;
            req.allow_dp_padding = true;
            req.uniform_decode = 1;
            req.cudagraph_mode = 2;
            req.ubatch.enabled = true;
            let mut records = [RankRecord::from_words([0; 5]); 2];
            for (record, tokens) in records.iter_mut().zip([64, 96]) {
                req.num_tokens_unpadded = tokens;
                assert_eq!(dp_make_record(&req, record), dp_status::DP_OK);
            }
            let mut res = MaybeUninit::<dp_batch_result>::uninit();
            dp_batch_result_init(res.as_mut_ptr());
            let mut tokens = [0i32; 2];
            let status = dp_decide_batch(
                records.as_ptr(),
                2,
                1,
                DP_PAD_POLICY_EXPLICIT,
                2,
                tokens.as_mut_ptr(),
                res.as_mut_ptr(),
            );
            assert_eq!(status, dp_status::DP_OK);
            // SAFETY: dp_batch_result_init and the successful call wrote every field.
            let res = unsafe { res.assume_init() };
            assert!(res.should_ubatch && res.should_dp_pad);
            assert_eq!(tokens, [96, 96]);
        }
        other => panic!("unknown case {other}"),
    }
    println!("PID={}", std::process::id());
}

mod diag_support;
use diag_support::{build_nvtx_tool, rerun, scratch};

/// What a child run left behind.
struct Run {
    stdout: String,
    stderr: String,
}

impl Run {
    /// The value the child printed as `KEY=value` (libtest may put `test child ... ` first).
    fn printed(&self, key: &str) -> String {
        let prefix = format!("{key}=");
        self.stdout
            .lines()
            .find_map(|l| l.split_once(&prefix).map(|(_, value)| value))
            .unwrap_or_else(|| panic!("the child printed no {key}: {}", self.stdout))
            .to_owned()
    }
}

/// Runs `child` with `case` and exactly the diagnostics variables in `env`.
fn run(case: &str, env: &[(&str, &str)]) -> Run {
    let mut env = env.to_vec();
    env.push((CASE, case));
    let output = rerun("child", &env);
    Run {
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// The files in `dir`.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    found.sort();
    found
}

/// The lines of stderr that dpcoord wrote (libtest writes nothing there on success).
fn dpcoord_lines(text: &str) -> Vec<&str> {
    text.lines().filter(|l| l.contains(" dpcoord ")).collect()
}

/// The host name as the log prints it (up to the first dot).
fn host() -> String {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    name.trim().split('.').next().unwrap().to_owned()
}

/// Checks `line` is `host:pid:tid dpcoord LEVEL rest` for this host and `pid`; returns `rest`.
fn parse_line<'a>(line: &'a str, pid: &str, level: &str) -> &'a str {
    let (prefix, rest) = line
        .split_once(" dpcoord ")
        .unwrap_or_else(|| panic!("no ' dpcoord ' in {line:?}"));
    let parts: Vec<&str> = prefix.split(':').collect();
    assert_eq!(parts.len(), 3, "prefix {prefix:?} is not host:pid:tid");
    assert_eq!(parts[0], host(), "{line:?}");
    assert_eq!(parts[1], pid, "{line:?}");
    let tid: u32 = parts[2].parse().expect("the tid is a number");
    assert!(tid > 0, "{line:?}");
    rest.strip_prefix(level)
        .and_then(|r| r.strip_prefix(' '))
        .unwrap_or_else(|| panic!("{line:?} is not at level {level}"))
}

#[test]
fn off_writes_nothing_anywhere() {
    let dir = scratch("off");
    let file = dir.join("dp.log");
    for level in [None, Some(""), Some("VERSION"), Some("TRACEX")] {
        let mut env = vec![("DPCOORD_DEBUG_FILE", file.to_str().unwrap())];
        if let Some(level) = level {
            env.push(("DPCOORD_DEBUG", level));
        }
        let run = run("fail", &env);
        assert!(run.printed("LAST_ERROR").contains("num_tokens_unpadded"));
        assert!(dpcoord_lines(&run.stderr).is_empty(), "{:?}", run.stderr);
        assert!(
            files(&dir).is_empty(),
            "DPCOORD_DEBUG={level:?} wrote a file"
        );
    }
}

#[test]
fn warn_logs_a_failure_once_with_exactly_the_last_error() {
    for level in ["WARN", "info", "Trace"] {
        let run = run("fail", &[("DPCOORD_DEBUG", level)]);
        let lines = dpcoord_lines(&run.stderr);
        assert_eq!(lines.len(), 1, "DPCOORD_DEBUG={level}: {lines:?}");
        let message = parse_line(lines[0], &run.printed("PID"), "WARN");
        assert_eq!(message, run.printed("LAST_ERROR"));
        assert!(message.contains("num_tokens_unpadded = -3"), "{message}");
    }
}

#[test]
fn the_file_name_gets_the_host_and_the_pid() {
    let dir = scratch("file");
    let pattern = dir.join("dp.%h.%p.%%.log");
    let run = run(
        "fail",
        &[
            ("DPCOORD_DEBUG", "WARN"),
            ("DPCOORD_DEBUG_FILE", pattern.to_str().unwrap()),
        ],
    );
    let pid = run.printed("PID");
    let want = dir.join(format!("dp.{}.{pid}.%.log", host()));
    assert_eq!(files(&dir), vec![want.clone()]);
    assert!(dpcoord_lines(&run.stderr).is_empty(), "{:?}", run.stderr);
    let text = std::fs::read_to_string(&want).unwrap();
    assert!(text.ends_with('\n'));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 1, "{text:?}");
    assert_eq!(
        parse_line(lines[0], &pid, "WARN"),
        run.printed("LAST_ERROR")
    );
}

#[test]
fn a_file_that_cannot_be_opened_falls_back_to_stderr() {
    let dir = scratch("unwritable");
    let inside_a_file = dir.join("not-a-dir");
    std::fs::write(&inside_a_file, "").unwrap();
    let path = inside_a_file.join("dp.log");
    let run = run(
        "fail",
        &[
            ("DPCOORD_DEBUG", "WARN"),
            ("DPCOORD_DEBUG_FILE", path.to_str().unwrap()),
        ],
    );
    let lines = dpcoord_lines(&run.stderr);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].contains("DPCOORD_DEBUG_FILE") && lines[0].contains("stderr"));
    assert_eq!(
        parse_line(lines[1], &run.printed("PID"), "WARN"),
        run.printed("LAST_ERROR")
    );
}

#[test]
fn successful_calls_log_no_warning() {
    let run = run("succeed", &[("DPCOORD_DEBUG", "WARN")]);
    assert!(dpcoord_lines(&run.stderr).is_empty(), "{:?}", run.stderr);
}

#[test]
fn trace_logs_a_host_decision_with_rank_and_result() {
    let traced = run("decide", &[("DPCOORD_DEBUG", "TRACE")]);
    let lines = dpcoord_lines(&traced.stderr);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(
        parse_line(lines[0], &traced.printed("PID"), "TRACE"),
        "[rank 1/2] dp_decide_batch: ubatch 1 dp_pad 1 cudagraph 2 tokens self 96 max 96 min 64"
    );
    for level in ["WARN", "INFO"] {
        let quiet = run("decide", &[("DPCOORD_DEBUG", level)]);
        assert!(
            dpcoord_lines(&quiet.stderr).is_empty(),
            "{level}: {:?}",
            quiet.stderr
        );
    }
}

#[test]
fn a_profiler_sees_the_host_decision_as_a_range() {
    let dir = scratch("nvtx");
    let tool = build_nvtx_tool(&dir);
    let events = dir.join("events.txt");
    run(
        "decide",
        &[
            ("NVTX_INJECTION64_PATH", tool.to_str().unwrap()),
            ("DPCOORD_TEST_NVTX_OUT", events.to_str().unwrap()),
        ],
    );
    assert_eq!(
        std::fs::read_to_string(&events).unwrap(),
        "init\ndomain dpcoord\npush dpcoord dp_decide_batch rank 1\npop dpcoord\n"
    );
}

#[test]
fn without_a_profiler_nvtx_is_never_entered() {
    let dir = scratch("nvtx-none");
    // The tool is built but not named: nothing may load it, so it records nothing.
    build_nvtx_tool(&dir);
    let events = dir.join("events.txt");
    run(
        "decide",
        &[("DPCOORD_TEST_NVTX_OUT", events.to_str().unwrap())],
    );
    assert!(
        !events.exists(),
        "NVTX was entered with no profiler attached"
    );
}

#[test]
fn a_missing_tool_library_is_not_an_error() {
    let dir = scratch("nvtx-missing");
    let absent = dir.join("no-such-tool.so");
    let events = dir.join("events.txt");
    // The child's own assertions (a successful decision) hold with an unloadable tool.
    run(
        "decide",
        &[
            ("NVTX_INJECTION64_PATH", absent.to_str().unwrap()),
            ("DPCOORD_TEST_NVTX_OUT", events.to_str().unwrap()),
        ],
    );
    assert!(!events.exists());
}
