//! The host shared-memory group across real processes: this test binary re-runs itself as
//! each rank (`DPCOORD_HG_ROLE` names the role), so every rank is its own process.
//!
//! Covered: 2, 4 and 8 ranks over 10 000 random V1 steps each, and random V2 steps (vLLM's
//! configurations of VLLM_V2.md, with and without their graph table) at 2 and 3 ranks, every
//! result checked against the host path (`dp_make_slot` of every rank's request, then
//! `dp_decide_slots`) on the same requests (invalid and unreadable requests, differing pad
//! flags, settings, step ids and parent step ids mixed in); a rank with another pad policy,
//! microbatching, rule set, graph table or V2 threshold; a writer corrupting record words while
//! three ranks step (over 100 000 steps: never two different DP_OK decisions, only
//! DP_ERR_CORRUPT); the straggler report and its INFO line; `set_graphs` while another thread
//! steps; a peer killed with SIGKILL, a peer that closes, a peer that stops calling; fail-fast
//! after a failure; the last rank out unlinks; a stale segment is reclaimed, and so is one
//! whose creator died between two header stores; two groups run side by side; bad names, sizes
//! and ranks; segments owned by another user, with another mode, dp_size or layout version,
//! truncated or with a bad header; a FIFO, a directory or a symbolic link at the segment path;
//! a member whose pid names a live process with another start time (a reused pid); ranks in
//! another pid namespace (`unshare`, root only) refused, and a group inside one working; a
//! forked child (its coordinate refused, its close local); a forked child's log lines; and a
//! hostile process hammering garbage into each header, member and slot field in turn.
//!
//! `harness = false`: `cargo test --test host_group [filter]`.

use std::ffi::{c_char, CStr, CString};
use std::mem::MaybeUninit;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::ptr::{null, null_mut};
use std::time::{Duration, Instant};

use dpcoord::ffi::*;
use dpcoord::rules::{Request, UbatchConfig, DP_RULES_VLLM_V2};
use v2_common::{Built, Handle, Step, VllmCfg};

mod v2_common;

const ROLE_ENV: &str = "DPCOORD_HG_ROLE";
/// The test binary's pid, passed to every process it starts: group names stay unique where a
/// process's own pid is not (in a new pid namespace every first process is pid 1).
const RUN_ENV: &str = "DPCOORD_HG_RUN";
/// How long any multi-process case may take before its ranks are killed and it fails.
const HANG_GUARD: Duration = Duration::from_secs(120);

// ---------------------------------------------------------------------------------------------
// The C API, wrapped
// ---------------------------------------------------------------------------------------------

fn last_error() -> String {
    // SAFETY: dp_last_error returns a NUL-terminated thread-local string, copied at once.
    unsafe { CStr::from_ptr(dp_last_error()) }
        .to_string_lossy()
        .into_owned()
}

struct Group(*mut dp_host_group);

impl Group {
    fn open(
        name: &str,
        dp_size: i32,
        dp_rank: i32,
        timeout_ms: i32,
    ) -> Result<Group, (dp_status, String)> {
        let c = CString::new(name).unwrap();
        let mut g = null_mut();
        match dp_host_group_open(c.as_ptr(), dp_size, dp_rank, timeout_ms, &mut g) {
            dp_status::DP_OK => {
                assert!(!g.is_null());
                Ok(Group(g))
            }
            s => {
                assert!(g.is_null(), "out written on failure");
                Err((s, last_error()))
            }
        }
    }

    /// One step; `req = None` passes a NULL request.
    fn step(&mut self, req: Option<&dp_batch_request>) -> Got {
        let mut res = init_result();
        let p = req.map_or(null(), |r| r as *const _);
        let s = dp_host_group_coordinate(self.0, p, &mut res);
        let tokens = if s == dp_status::DP_OK && res.has_num_tokens_after_padding {
            // SAFETY: on DP_OK with the flag set the library points at dp_size entries, valid
            // until the next call on this group.
            unsafe {
                std::slice::from_raw_parts(res.num_tokens_after_padding, res.dp_size as usize)
            }
            .to_vec()
        } else {
            Vec::new()
        };
        let msg = if s == dp_status::DP_OK {
            String::new()
        } else {
            last_error()
        };
        (s, res, tokens, msg)
    }

    fn close(self) -> dp_status {
        let s = dp_host_group_close(self.0);
        std::mem::forget(self);
        s
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        dp_host_group_close(self.0);
    }
}

fn init_result() -> dp_batch_result {
    let mut res = MaybeUninit::<dp_batch_result>::uninit();
    dp_batch_result_init(res.as_mut_ptr());
    // SAFETY: dp_batch_result_init writes every field of a non-NULL result.
    unsafe { res.assume_init() }
}

fn c_request(r: &Request) -> dp_batch_request {
    dp_batch_request::from(r)
}

/// Every rank's C request (`None`: a NULL request).
fn c_requests(reqs: &[Option<Request>]) -> Vec<Option<dp_batch_request>> {
    reqs.iter().map(|r| r.as_ref().map(c_request)).collect()
}

fn shm_file(name: &str) -> String {
    format!("/dev/shm/dpcoord.{name}")
}

/// This run of the test binary: the pid of the process that runs the cases.
fn run_id() -> u32 {
    std::env::var(RUN_ENV)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(std::process::id)
}

/// A name no other run of this binary uses.
fn unique(tag: &str) -> String {
    format!("t{}-{tag}", run_id())
}

// ---------------------------------------------------------------------------------------------
// Random steps: every rank derives every rank's request from (seed, step), so each can check
// its result against rules::decide on exactly the records the group exchanged.
// ---------------------------------------------------------------------------------------------

struct Rng(u64);

impl Rng {
    fn new(seed: u64, step: u64) -> Rng {
        Rng(seed ^ step.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

/// What every rank passes at `step`: `None` is a NULL request.
fn step_requests(
    seed: u64,
    step: u64,
    dp_size: usize,
    faults: bool,
    timeout_ms: i32,
) -> Vec<Option<Request>> {
    let mut rng = Rng::new(seed, step);
    let pad_policy = rng.below(2) as i32;
    let enabled = rng.chance(70);
    let ubatch = UbatchConfig {
        enabled,
        num_ubatches: 2 + rng.below(3) as i32,
        decode_token_threshold: 4 + rng.below(40) as i32,
        prefill_token_threshold: 4 + rng.below(600) as i32,
    };
    let same_pad = rng.chance(75) || !faults;
    let shared_pad = rng.chance(50);
    let step_id = if rng.chance(15) { 0 } else { step as i64 + 1 };
    let parent_step_id = if rng.chance(20) { step as i64 } else { 0 };
    let mut reqs: Vec<Option<Request>> = (0..dp_size)
        .map(|_| {
            let unpadded = rng.below(2048) as i32;
            let padded = if rng.chance(30) {
                -1
            } else {
                unpadded + rng.below(64) as i32
            };
            let allow_ubatch = rng.chance(80);
            Some(Request {
                num_tokens_unpadded: unpadded,
                num_tokens_padded: padded,
                allow_microbatching: allow_ubatch,
                allow_dp_padding: if same_pad { shared_pad } else { rng.chance(50) },
                uniform_decode: if allow_ubatch {
                    rng.below(2) as i32
                } else {
                    rng.below(3) as i32 - 1
                },
                cudagraph_mode: rng.below(3) as i32,
                pad_policy,
                ubatch,
                timeout_ms,
                step_id,
                parent_step_id,
                ..Request::default()
            })
        })
        .collect();
    if faults {
        let victim = rng.below(dp_size as u64) as usize;
        match rng.below(100) {
            0 => reqs[victim] = None,
            1 | 2 => {
                if let Some(r) = reqs[victim].as_mut() {
                    r.num_tokens_unpadded = -1 - rng.below(5) as i32;
                }
            }
            3 | 4 => {
                if let Some(r) = reqs[victim].as_mut() {
                    r.step_id += 1;
                }
            }
            // Settings that every rank must share (the slots' configuration words).
            5 => {
                if let Some(r) = reqs[victim].as_mut() {
                    r.pad_policy = 1 - r.pad_policy;
                }
            }
            6 => {
                if let Some(r) = reqs[victim].as_mut() {
                    r.ubatch.enabled = true;
                    r.ubatch.num_ubatches += 1;
                }
            }
            7 => {
                if let Some(r) = reqs[victim].as_mut() {
                    r.parent_step_id += 1;
                }
            }
            _ => {}
        }
    }
    reqs
}

/// What one step gave a rank: the status, the result, the array it points at (empty when
/// none) and, on failure, the message.
type Got = (dp_status, dp_batch_result, Vec<i32>, String);

/// What rank `me` must get at one step: the host path's answer on the same requests and graph
/// table (`dp_make_slot` of every rank's request, NULL for `None`, then `dp_decide_slots` as
/// rank `me`).
fn expected(reqs: &[Option<dp_batch_request>], me: usize, graphs: *const dp_graphs) -> Got {
    let n = reqs.len();
    let mut opts = MaybeUninit::<dp_decide_options>::uninit();
    dp_decide_options_init(opts.as_mut_ptr());
    // SAFETY: dp_decide_options_init writes every field of a non-NULL struct.
    let mut opts = unsafe { opts.assume_init() };
    opts.graphs = graphs;
    let slots: Vec<Slot> = reqs
        .iter()
        .map(|r| {
            let mut slot = Slot { opaque: [0; 24] };
            // A refused request writes the invalid-request marker, as the group publishes it.
            dp_make_slot(r.as_ref().map_or(null(), |r| r), &opts, &mut slot);
            slot
        })
        .collect();
    let mut res = init_result();
    let mut out = vec![-777; n];
    let s = dp_decide_slots(
        slots.as_ptr(),
        n as i32,
        me as i32,
        &opts,
        out.as_mut_ptr(),
        &mut res,
    );
    let tokens = if s == dp_status::DP_OK && res.has_num_tokens_after_padding {
        out
    } else {
        Vec::new()
    };
    let msg = if s == dp_status::DP_OK {
        String::new()
    } else {
        last_error()
    };
    (s, res, tokens, msg)
}

/// The fields of a result that every transport decides alike: all but the straggler report
/// and the array pointers (the arrays are compared by content).
fn decided(r: &dp_batch_result) -> impl PartialEq + std::fmt::Debug + std::hash::Hash {
    (
        (
            r.should_ubatch,
            r.should_dp_pad,
            r.has_num_tokens_after_padding,
            r.synced_cudagraph_mode,
            r.dp_rank,
            r.dp_size,
        ),
        (
            r.num_tokens_after_padding_self,
            r.max_num_tokens_padded,
            r.min_num_tokens_unpadded,
            r.step_id,
            r.rules,
        ),
        (r.idle, r.local, r.eager, r.skip_drafts),
        [
            r.graph_mode,
            r.graph_num_tokens,
            r.graph_num_reqs,
            r.graph_uniform_token_count,
            r.graph_max_query_len,
            r.num_ubatches,
        ],
        (
            r.agreed_uniform_token_count,
            r.agreed_max_query_len,
            r.max_num_reqs,
        ),
        r.num_tokens_after_padding_device.is_null(),
    )
}

/// A digest of what a step decided for every rank alike (the status, the decided fields but
/// the rank's own, the array), for comparing ranks.
fn digest(got: &Got) -> u64 {
    use std::hash::{Hash, Hasher};
    // The fields that hold the rank's own values (its number, its tokens, and V2's per-rank
    // descriptor fields); the array holds every rank's tokens.
    let shared = dp_batch_result {
        dp_rank: 0,
        num_tokens_after_padding_self: 0,
        graph_num_tokens: 0,
        graph_num_reqs: 0,
        ..got.1
    };
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (got.0 as u32, decided(&shared), &got.2).hash(&mut h);
    h.finish()
}

/// Checks one step's outcome against the host path's; `Err` says how it differs.
fn check_step(got: &Got, want: &Got) -> Result<(), String> {
    let ((status, res, tokens, msg), (want_status, want_res, want_tokens, want_msg)) = (got, want);
    if status != want_status {
        return Err(format!(
            "status {status:?} ({msg}), the host path gives {want_status:?} ({want_msg})"
        ));
    }
    if *status != dp_status::DP_OK {
        return Ok(());
    }
    if decided(res) != decided(want_res) || tokens != want_tokens {
        return Err(format!(
            "result {:?} tokens {tokens:?}, the host path gives {:?} tokens {want_tokens:?}",
            decided(res),
            decided(want_res)
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Ranks as processes
// ---------------------------------------------------------------------------------------------

/// Starts this binary as one rank running `role` (space-separated words).
fn spawn(role: &str) -> Child {
    spawn_with(role, &[])
}

/// `spawn` with more environment variables.
fn spawn_with(role: &str, env: &[(&str, &str)]) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env(ROLE_ENV, role)
        .env(RUN_ENV, run_id().to_string())
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn a rank")
}

struct Outcome {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Waits for every child, killing all of them (and failing) past the hang guard.
fn wait_all(children: Vec<Child>) -> Vec<Outcome> {
    let start = Instant::now();
    let mut children: Vec<Option<Child>> = children.into_iter().map(Some).collect();
    let mut done: Vec<Option<Outcome>> = children.iter().map(|_| None).collect();
    while done.iter().any(Option::is_none) {
        for (i, slot) in children.iter_mut().enumerate() {
            if let Some(child) = slot {
                if child.try_wait().unwrap().is_some() {
                    let out = slot.take().unwrap().wait_with_output().unwrap();
                    done[i] = Some(Outcome {
                        status: out.status,
                        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                    });
                }
            }
        }
        if start.elapsed() > HANG_GUARD {
            for child in children.iter_mut().flatten() {
                let _ = child.kill();
            }
            panic!("ranks still running after {HANG_GUARD:?}: a hang");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    done.into_iter().map(Option::unwrap).collect()
}

fn assert_ok(outcomes: &[Outcome]) {
    for (r, o) in outcomes.iter().enumerate() {
        assert!(
            o.status.success(),
            "rank {r} failed ({:?}):\n{}\n{}",
            o.status,
            o.stdout,
            o.stderr
        );
    }
}

fn killed_by(o: &Outcome, signal: i32) -> bool {
    use std::os::unix::process::ExitStatusExt;
    o.status.signal() == Some(signal)
}

fn child_main(role: &str) {
    let w: Vec<&str> = role.split(' ').collect();
    let (name, dp_size, me) = (
        w[1],
        w[2].parse::<usize>().unwrap(),
        w[3].parse::<usize>().unwrap(),
    );
    let arg = |i: usize| w[4 + i].parse::<u64>().unwrap();
    match w[0] {
        "steps" => rank_steps(name, dp_size, me, arg(0), arg(1), arg(2) == 1),
        "leave" => rank_leave(name, dp_size, me, w[4], arg(1)),
        "survive" => rank_survive(name, dp_size, me, w[4], arg(1), w[6], &w[7..].join(" ")),
        "hammer" => hammer(name, dp_size, arg(0) as usize, arg(1) as usize),
        "hostile" => rank_hostile(name, dp_size, me, arg(0)),
        "forkclose" => rank_fork_close(name, dp_size, me),
        "forklog" => rank_fork_log(name),
        "nscases" => in_pid_namespace(w[4] == "1"),
        "expect" => rank_expect(name, dp_size, me, arg(0) as i32, w[5], &w[6..].join(" ")),
        "tamper" => rank_tamper(name, dp_size, me, arg(0) as usize, arg(1) as usize),
        "corrupter" => corrupter(name, dp_size, arg(0)),
        "v2steps" => rank_v2_steps(name, dp_size, me, arg(0)),
        "settings" => rank_settings(name, dp_size, me),
        "straggler" => rank_straggler(name, dp_size, me),
        "busy" => rank_busy(name, dp_size, me),
        "corrupted" => rank_corrupted(name, dp_size, me, arg(0), w[5]),
        other => panic!("unknown role {other}"),
    }
}

fn open_or_die(name: &str, dp_size: usize, me: usize, timeout_ms: i32) -> Group {
    Group::open(name, dp_size as i32, me as i32, timeout_ms)
        .unwrap_or_else(|(s, m)| panic!("rank {me}: open failed: {s:?} {m}"))
}

/// Random steps, each checked; then close.
fn rank_steps(name: &str, dp_size: usize, me: usize, seed: u64, steps: u64, faults: bool) {
    let mut g = open_or_die(name, dp_size, me, 60_000);
    let mut ok = 0;
    for step in 0..steps {
        let reqs = c_requests(&step_requests(seed, step, dp_size, faults, 60_000));
        let got = g.step(reqs[me].as_ref());
        if let Err(e) = check_step(&got, &expected(&reqs, me, null())) {
            panic!("rank {me} step {step}: {e}");
        }
        ok += usize::from(got.0 == dp_status::DP_OK);
    }
    assert_eq!(g.close(), dp_status::DP_OK);
    println!("rank {me}: {steps} steps, {ok} DP_OK");
}

/// A few good steps, then leaves the group by `how`: `kill` (SIGKILL itself), `close`
/// (closes, then stays alive `hold_ms`), `stop` (stops calling for `hold_ms`, then one more
/// step that must fail, then close).
fn rank_leave(name: &str, dp_size: usize, me: usize, how: &str, hold_ms: u64) {
    let mut g = open_or_die(name, dp_size, me, 60_000);
    good_steps(&mut g, dp_size, me, 5);
    match how {
        "kill" => {
            // SAFETY: sends SIGKILL to this very process: a rank dying mid-run.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            unreachable!("SIGKILL returned");
        }
        "close" => {
            assert_eq!(g.close(), dp_status::DP_OK);
            std::thread::sleep(Duration::from_millis(hold_ms));
        }
        "late" => {
            // Calls again long after a peer died: the group already failed.
            std::thread::sleep(Duration::from_millis(hold_ms));
            let req = c_request(&Request::default());
            let (s, _, _, msg) = g.step(Some(&req));
            assert_eq!(s, dp_status::DP_ERR_PEER_EXITED, "{msg}");
            assert!(msg.contains("rank 0 saw rank 2 exit"), "{msg}");
            assert_eq!(g.close(), dp_status::DP_OK);
        }
        "stop" => {
            std::thread::sleep(Duration::from_millis(hold_ms));
            let req = c_request(&Request::default());
            let (s, _, _, msg) = g.step(Some(&req));
            assert_eq!(
                s,
                dp_status::DP_ERR_TIMEOUT,
                "the late rank fails with the group: {msg}"
            );
            assert!(msg.contains(&format!("rank {me}")), "{msg}");
            assert_eq!(g.close(), dp_status::DP_OK);
        }
        other => panic!("unknown way to leave: {other}"),
    }
}

/// `n` steps with the same valid request on every rank; all must succeed.
fn good_steps(g: &mut Group, dp_size: usize, me: usize, n: u64) {
    good_steps_from(g, dp_size, me, 0, n);
}

/// Good steps `from..from + n` (each step's requests are the same on every rank).
fn good_steps_from(g: &mut Group, dp_size: usize, me: usize, from: u64, n: u64) {
    for step in from..from + n {
        let reqs = c_requests(&step_requests(7, step, dp_size, false, 60_000));
        let got = g.step(reqs[me].as_ref());
        check_step(&got, &expected(&reqs, me, null()))
            .unwrap_or_else(|e| panic!("rank {me} step {step}: {e}"));
    }
}

/// Steps (timeout `timeout_ms`, 0 = forever) until one fails: it must be `want` naming rank
/// `peer`; then every later call fails fast with the same status, and close frees.
fn rank_survive(
    name: &str,
    dp_size: usize,
    me: usize,
    want: &str,
    timeout_ms: u64,
    peer: &str,
    needle: &str,
) {
    let mut g = open_or_die(name, dp_size, me, 60_000);
    good_steps(&mut g, dp_size, me, 5);
    let want = match want {
        "exited" => dp_status::DP_ERR_PEER_EXITED,
        "timeout" => dp_status::DP_ERR_TIMEOUT,
        other => panic!("unknown status {other}"),
    };
    let mut req = c_request(&Request::default());
    req.timeout_ms = timeout_ms as i32;
    let (s, _, _, msg) = g.step(Some(&req));
    assert_eq!(s, want, "rank {me}: {msg}");
    assert!(
        msg.contains(needle),
        "rank {me}: {msg:?} does not contain {needle:?}"
    );
    assert!(
        msg.contains(&format!("rank {peer}")),
        "rank {me}: {msg:?} does not name rank {peer}"
    );
    for _ in 0..3 {
        let (again, _, _, msg2) = g.step(Some(&req));
        assert_eq!(again, want, "fail fast: {msg2}");
        assert!(msg2.contains("unusable after an earlier failure"), "{msg2}");
    }
    assert_eq!(g.close(), dp_status::DP_OK);
    println!("rank {me}: {msg}");
}

/// Five good steps; then rank 0 forks a child whose coordinate on the inherited handle is
/// refused (DP_ERR_INVALID_ARGUMENT) and which closes it and exits, and both ranks step five
/// more and close: the child left the parent's rank alone.
fn rank_fork_close(name: &str, dp_size: usize, me: usize) {
    let mut g = open_or_die(name, dp_size, me, 60_000);
    good_steps(&mut g, dp_size, me, 5);
    if me == 0 {
        // SAFETY: fork of this single-threaded process; the child only closes and _exits.
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
        if child == 0 {
            // The child may not step as the parent's rank; it may close (unmap) the handle.
            let req = c_request(&Request::default());
            let mut res = init_result();
            let stepped = dp_host_group_coordinate(g.0, &req, &mut res);
            let refused = stepped == dp_status::DP_ERR_INVALID_ARGUMENT
                && last_error().contains("inherited the handle across fork");
            let closed = dp_host_group_close(g.0) == dp_status::DP_OK;
            let code = if !refused { 2 } else { i32::from(!closed) };
            // SAFETY: ends the child at once, running none of the parent's destructors.
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked; `status` outlives the call.
        assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the child's dp_host_group_coordinate was not refused (exit 2) or its \
             dp_host_group_close failed (exit 1): wait status {status:#x}"
        );
        assert!(
            std::path::Path::new(&shm_file(name)).exists(),
            "the child's close unlinked the segment"
        );
    }
    good_steps_from(&mut g, dp_size, me, 5, 5);
    assert_eq!(g.close(), dp_status::DP_OK);
    println!("rank {me}: 10 steps around a fork");
}

/// An open that must fail with `want` (`invalid`, `timeout`, `exited`) and a message holding
/// `needle`; prints this process's pid namespace first (`pidns=<inode>`).
fn rank_expect(name: &str, dp_size: usize, me: usize, timeout_ms: i32, want: &str, needle: &str) {
    println!("pidns={}", own_identity().1);
    let want = match want {
        "invalid" => dp_status::DP_ERR_INVALID_ARGUMENT,
        "timeout" => dp_status::DP_ERR_TIMEOUT,
        "exited" => dp_status::DP_ERR_PEER_EXITED,
        other => panic!("unknown status {other}"),
    };
    match Group::open(name, dp_size as i32, me as i32, timeout_ms) {
        Ok(mut g) => {
            let mut req = c_request(&Request::default());
            req.timeout_ms = 1_000;
            let (s, _, _, msg) = g.step(Some(&req));
            panic!(
                "rank {me}: open succeeded (then a step gave {s:?}: {msg}); want {want:?} \
                 naming {needle:?}"
            );
        }
        Err((s, m)) => {
            assert_eq!(s, want, "rank {me}: {m}");
            assert!(
                m.contains(needle),
                "rank {me}: {m:?} does not contain {needle:?}"
            );
            println!("rank {me}: {s:?} {m}");
        }
    }
}

/// Opens one-rank group `<name>a` (a log line in this process's file), forks a child that
/// opens and closes `<name>b` (a log line that must go to the child's file, with the child's
/// pid and thread id), and prints the child's pid. Runs with DPCOORD_DEBUG=INFO and a
/// DPCOORD_DEBUG_FILE with `%p`.
fn rank_fork_log(name: &str) {
    let first = open_or_die(&format!("{name}a"), 1, 0, 10_000);
    // SAFETY: fork of this single-threaded process; the child opens and closes a group and
    // _exits.
    let child = unsafe { libc::fork() };
    assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
    if child == 0 {
        let ok = Group::open(&format!("{name}b"), 1, 0, 10_000).map(Group::close);
        // SAFETY: ends the child at once, running none of the parent's destructors.
        unsafe { libc::_exit(i32::from(ok != Ok(dp_status::DP_OK))) };
    }
    let mut status = 0;
    // SAFETY: waits for the child just forked; `status` outlives the call.
    assert_eq!(unsafe { libc::waitpid(child, &mut status, 0) }, child);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    assert_eq!(first.close(), dp_status::DP_OK);
    println!("child={child}");
}

/// Writes garbage into `[offset, offset + len)` of the group's segment, over and over, until
/// killed: a hostile (or crashed, half-writing) process with access to the segment.
fn hammer(name: &str, dp_size: usize, offset: usize, len: usize) {
    let path = shm_file(name);
    let want = segment_size(dp_size) as u64;
    let file = loop {
        if let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        {
            if f.metadata().map(|m| m.len()).unwrap_or(0) == want {
                break f;
            }
        }
        std::thread::sleep(Duration::from_micros(100));
    };
    use std::os::fd::AsRawFd;
    // SAFETY: maps the segment file of `want` bytes (checked) shared, read-write.
    let p = unsafe {
        libc::mmap(
            null_mut(),
            want as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    let garbage = [0xA5u8; 8];
    let mut started = false;
    loop {
        // Whole words, as a process writing the field would (bytes written one at a time
        // would leave plausible values half-way, which no check can tell from a real one).
        let at = p.cast::<u8>().wrapping_add(offset);
        // SAFETY: inside the mapping (offset + len <= want, by the field table) and aligned
        // for the field's width (the table's offsets are the fields'); volatile so every write
        // happens.
        unsafe {
            match len {
                8 => std::ptr::write_volatile(at.cast::<u64>(), u64::from_ne_bytes(garbage)),
                _ => std::ptr::write_volatile(at.cast::<u32>(), 0xA5A5_A5A5),
            }
        }
        if !started {
            // Tells the ranks the garbage is there (they wait for it before their steps).
            std::fs::write(format!("{path}.hammering"), b"").unwrap();
            started = true;
        }
    }
}

/// Five good steps; then rank 1 lets rank 0 publish step 6 and wait for it, overwrites
/// `[offset, offset + len)` of the segment with garbage, and calls; every rank must fail step 6
/// (not hang, not succeed), and print its status.
fn rank_tamper(name: &str, dp_size: usize, me: usize, offset: usize, len: usize) {
    let mut g = open_or_die(name, dp_size, me, 10_000);
    good_steps(&mut g, dp_size, me, 5);
    if me == 1 {
        std::thread::sleep(Duration::from_millis(100));
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(shm_file(name))
            .unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&[0xA5u8; 8][..len], offset as u64).unwrap();
    }
    let mut req = c_request(
        step_requests(7, 5, dp_size, false, 5_000)[me]
            .as_ref()
            .unwrap(),
    );
    req.timeout_ms = 5_000;
    let (s, _, _, msg) = g.step(Some(&req));
    assert_ne!(
        s,
        dp_status::DP_OK,
        "rank {me}: garbage at offset {offset} went unnoticed"
    );
    assert_ne!(
        s,
        dp_status::DP_ERR_TIMEOUT,
        "rank {me}: a timeout instead of naming the garbage: {msg}"
    );
    println!("rank {me}: {s:?} {msg}");
    assert_eq!(g.close(), dp_status::DP_OK);
}

/// Valid, consistent steps under a hammer: every DP_OK must be the right decision; errors
/// are counted (printed as `errors=N`).
fn rank_hostile(name: &str, dp_size: usize, me: usize, steps: u64) {
    let mut g = match Group::open(name, dp_size as i32, me as i32, 3_000) {
        Ok(g) => g,
        Err((s, m)) => {
            assert_ne!(s, dp_status::DP_OK);
            println!("open failed: {s:?} {m}\nerrors=1");
            return;
        }
    };
    let marker = format!("{}.hammering", shm_file(name));
    let waited = Instant::now();
    while !std::path::Path::new(&marker).exists() {
        assert!(
            waited.elapsed() < Duration::from_secs(20),
            "the hammer never started"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut errors = 0;
    for step in 0..steps {
        let reqs = c_requests(&step_requests(11, step, dp_size, false, 2_000));
        let got = g.step(reqs[me].as_ref());
        if got.0 == dp_status::DP_OK {
            check_step(&got, &expected(&reqs, me, null())).unwrap_or_else(|e| {
                panic!("rank {me} step {step}: a wrong DP_OK under garbage: {e}")
            });
        } else {
            errors += 1;
            if errors == 1 {
                println!("first error: {:?} {}", got.0, got.3);
            }
        }
    }
    g.close();
    println!("errors={errors}");
}

// ---------------------------------------------------------------------------------------------
// V2 through the group, settings the ranks must share, the straggler report
// ---------------------------------------------------------------------------------------------

/// The vLLM configurations the V2 steps cycle through, with or without their graph table.
fn v2_phases() -> Vec<(VllmCfg, bool)> {
    vec![
        (VllmCfg::e_base(), true),
        (VllmCfg::e_dbo(), true),
        (VllmCfg::e_dbo_spec4(), true),
        (VllmCfg::e_varlen(), true),
        (VllmCfg::e_ub3(), true),
        (VllmCfg::e_base(), false),
        (VllmCfg::e_dbo(), false),
    ]
}

/// Steps of one V2 phase (one configuration).
const V2_PHASE_STEPS: u64 = 300;

/// One rank's V2 step in the shapes a vLLM runner sends (decode, spec decode, the dummy batch,
/// prefill, a PCP share, a prefill at a graph's size, nothing), with random flags and LoRA
/// count; `all_b`: every rank allows microbatching.
fn v2_step(rng: &mut Rng, built: &Built, all_b: bool) -> Step {
    let dql = built.decode_query_len;
    let r = 1 + rng.below(80) as i32;
    let extra = rng.below(300) as i32;
    let q = [1, 2, 4, 5][rng.below(4) as usize];
    let turn = match built.graphs.len() {
        0 => 1 + extra,
        n => built.graphs[rng.below(n as u64) as usize].num_tokens + rng.below(2) as i32,
    };
    let base = |t, r, u, mql, rng: &mut Rng| Step {
        t,
        r,
        u,
        q: mql,
        b: all_b || rng.chance(50),
        s: rng.chance(50),
        e: rng.chance(3),
        loras: if rng.chance(95) {
            0
        } else {
            rng.below(9) as i32
        },
    };
    match rng.below(8) {
        0 | 1 => base(r * dql, r, dql, dql, rng),
        2 => base(r * q, r, q, q, rng),
        3 => base(dql, 1, dql, dql, rng),
        4 => {
            let mql = if extra % 3 == 0 { -1 } else { 1 + extra % 7 };
            base(r + extra, r, 0, mql, rng)
        }
        5 => base((r / 4).max(1), r, 1, 1, rng),
        6 => base(turn, 1 + (r - 1) % turn, 0, -1, rng),
        _ => base(0, 0, 0, -1, rng),
    }
}

/// Every rank's V2 request at `step` of a phase with `built`'s configuration: `None` is a NULL
/// request; now and then a rank a step ahead.
fn v2_requests(seed: u64, step: u64, dp_size: usize, built: &Built) -> Vec<Option<Request>> {
    let mut rng = Rng::new(seed, step);
    let all_b = rng.chance(60);
    let step_id = step as i64 + 1;
    let mut reqs: Vec<Option<Request>> = (0..dp_size)
        .map(|_| {
            let mut r = v2_step(&mut rng, built, all_b).request(built.dbo);
            // The mode of a rank's own batch where there is no table.
            r.cudagraph_mode = 1 + rng.below(2) as i32;
            r.step_id = step_id;
            r.timeout_ms = 60_000;
            Some(r)
        })
        .collect();
    let victim = rng.below(dp_size as u64) as usize;
    match rng.below(100) {
        0 => reqs[victim] = None,
        1 => {
            if let Some(r) = reqs[victim].as_mut() {
                r.step_id += 1;
            }
        }
        _ => {}
    }
    reqs
}

/// A graph table handle for a phase (`None`: the phase runs without a table).
fn phase_table(built: &Built, with_table: bool) -> Handle {
    Handle::new(with_table.then_some((&built.graphs[..], built.decode_query_len)))
}

/// Random V2 steps through every phase, each checked against the host path with the same
/// table. The group gets the phase's table from a handle destroyed right after
/// `dp_host_group_set_graphs` (the group keeps its own reference).
fn rank_v2_steps(name: &str, dp_size: usize, me: usize, seed: u64) {
    let mut g = open_or_die(name, dp_size, me, 60_000);
    let (mut ok, mut reached) = (0, [0usize; 4]);
    for (phase, (cfg, with_table)) in v2_phases().into_iter().enumerate() {
        let built = cfg.build();
        let set = phase_table(&built, with_table);
        assert_eq!(
            dp_host_group_set_graphs(g.0, set.0),
            dp_status::DP_OK,
            "{}",
            last_error()
        );
        drop(set);
        let host = phase_table(&built, with_table);
        for step in 0..V2_PHASE_STEPS {
            let at = phase as u64 * V2_PHASE_STEPS + step;
            let reqs = c_requests(&v2_requests(seed, at, dp_size, &built));
            let got = g.step(reqs[me].as_ref());
            if let Err(e) = check_step(&got, &expected(&reqs, me, host.0)) {
                panic!("rank {me} phase {phase} ({cfg:?}, table {with_table}) step {step}: {e}");
            }
            if got.0 == dp_status::DP_OK {
                let r = &got.1;
                assert_eq!(r.rules, DP_RULES_VLLM_V2);
                let kind = [r.num_ubatches > 1, r.eager, r.idle, r.graph_mode == 2];
                for (n, hit) in reached.iter_mut().zip(kind) {
                    *n += usize::from(hit);
                }
                ok += 1;
            }
        }
    }
    assert_eq!(g.close(), dp_status::DP_OK);
    println!("rank {me}: {ok} DP_OK; microbatched, eager, idle, FULL: {reached:?}");
    assert!(
        reached.iter().all(|&n| n > 0),
        "the steps reach every kind of decision"
    );
}

/// Random V2 steps (the VLLM_V2.md configurations, with and without their table) across
/// processes: every rank gets exactly the host path's result, step by step.
fn v2_steps_match_the_host_path() {
    for dp_size in [2, 3] {
        let name = unique(&format!("v2steps{dp_size}"));
        let children = (0..dp_size)
            .map(|r| spawn(&format!("v2steps {name} {dp_size} {r} 77")))
            .collect();
        assert_ok(&wait_all(children));
        assert!(!std::path::Path::new(&shm_file(&name)).exists());
    }
}

/// A V2 request of `t` tokens in `r` requests with the microbatching config of `built`.
fn v2_request(t: i32, r: i32, built: &Built) -> Request {
    Request {
        timeout_ms: 20_000,
        ..v2_common::step(t, r).request(built.dbo)
    }
}

/// Each step: rank 2 passes a setting that ranks 0 and 1 do not: every rank fails with
/// DP_ERR_INCONSISTENT_RANKS naming the setting and ranks 0 and 2; the next step, with the
/// same settings everywhere, decides.
fn rank_settings(name: &str, dp_size: usize, me: usize) {
    let mut g = open_or_die(name, dp_size, me, 20_000);
    let v1 = Request {
        num_tokens_unpadded: 10 + me as i32,
        timeout_ms: 20_000,
        ..Request::default()
    };
    let (base, dbo, other) = (
        VllmCfg::e_base().build(),
        VllmCfg::e_dbo().build(),
        VllmCfg::e_varlen().build(),
    );
    let enabled = UbatchConfig {
        enabled: true,
        ..UbatchConfig::default()
    };
    let ub3 = UbatchConfig {
        num_ubatches: 3,
        ..enabled
    };
    let with_threshold = |mut r: Request, t: i32| {
        r.ubatch.decode_token_threshold = t;
        r
    };
    // (setting, the good ranks' request and table, rank 2's, what the message names)
    type Side<'a> = (Request, Option<&'a Built>);
    let cases: Vec<(&str, Side, Side, &str)> = vec![
        (
            "pad_policy",
            (v1, None),
            (
                Request {
                    pad_policy: 1,
                    ..v1
                },
                None,
            ),
            "pad_policy differs: rank 0 has 0, rank 2 has 1",
        ),
        (
            "num_ubatches",
            (
                Request {
                    ubatch: enabled,
                    ..v1
                },
                None,
            ),
            (Request { ubatch: ub3, ..v1 }, None),
            "num_ubatches (0: microbatching disabled) differs: rank 0 has 2, rank 2 has 3",
        ),
        (
            "microbatching enabled",
            (
                Request {
                    ubatch: enabled,
                    ..v1
                },
                None,
            ),
            (v1, None),
            "num_ubatches (0: microbatching disabled) differs: rank 0 has 2, rank 2 has 0",
        ),
        (
            "rule set",
            (v1, None),
            (v2_request(10, 2, &base), Some(&base)),
            "rules differs: rank 0 has 0, rank 2 has 1",
        ),
        (
            "graph table",
            (v2_request(10, 2, &base), Some(&base)),
            (v2_request(10, 2, &other), Some(&other)),
            "graph table (hash) differs",
        ),
        (
            "a table against none",
            (v2_request(10, 2, &base), Some(&base)),
            (v2_request(10, 2, &base), None),
            "graph table (hash) differs",
        ),
        (
            "V2 decode threshold",
            (v2_request(10, 2, &dbo), Some(&dbo)),
            (with_threshold(v2_request(10, 2, &dbo), 40), Some(&dbo)),
            "ubatch.decode_token_threshold differs",
        ),
    ];
    for (setting, good, odd, needle) in cases {
        let (req, built) = if me == 2 { odd } else { good };
        let table = built.map_or(Handle(null_mut()), |b| phase_table(b, true));
        assert_eq!(dp_host_group_set_graphs(g.0, table.0), dp_status::DP_OK);
        let (s, _, _, msg) = g.step(Some(&c_request(&req)));
        assert_eq!(
            s,
            dp_status::DP_ERR_INCONSISTENT_RANKS,
            "rank {me}, {setting}: {msg}"
        );
        assert!(
            msg.contains(needle) && msg.contains("rank 0") && msg.contains("rank 2"),
            "rank {me}, {setting}: {msg:?} does not name {needle:?} and ranks 0 and 2"
        );
        assert_eq!(dp_host_group_set_graphs(g.0, null()), dp_status::DP_OK);
        let (s, res, _, msg) = g.step(Some(&c_request(&v1)));
        assert_eq!(s, dp_status::DP_OK, "rank {me}, after {setting}: {msg}");
        assert_eq!(res.max_num_tokens_padded, 12, "rank {me}, after {setting}");
    }
    assert_eq!(g.close(), dp_status::DP_OK);
}

/// A rank with another pad policy, num_ubatches, microbatching, rule set, graph table or V2
/// threshold: every rank fails with DP_ERR_INCONSISTENT_RANKS naming it, and the group goes
/// on.
fn differing_settings_fail_every_rank() {
    let name = unique("settings");
    let children = (0..3)
        .map(|r| spawn(&format!("settings {name} 3 {r}")))
        .collect();
    assert_ok(&wait_all(children));
}

/// How long the straggler sleeps before it coordinates.
const STRAGGLER_SLEEP: Duration = Duration::from_millis(2);

/// Rank 2 arrives last in 40 steps, then rank 1 in 70: a straggler waits until every other
/// rank published the step (their sequence numbers, read from the segment file), sleeps
/// `STRAGGLER_SLEEP`, then coordinates. Every rank's result names it as `last_rank`, with an
/// arrival skew of at least the sleep, and the others waited at least that long.
fn rank_straggler(name: &str, dp_size: usize, me: usize) {
    use std::os::unix::fs::FileExt;
    let mut g = open_or_die(name, dp_size, me, 20_000);
    let file = std::fs::File::open(shm_file(name)).unwrap();
    let sleep_ns = STRAGGLER_SLEEP.as_nanos() as i64;
    let req = Request {
        num_tokens_unpadded: 10,
        timeout_ms: 20_000,
        ..Request::default()
    };
    let mut k = 0u64;
    for (straggler, steps) in [(2, 40), (1, 70)] {
        for _ in 0..steps {
            k += 1;
            if me == straggler {
                for r in (0..dp_size).filter(|&r| r != me) {
                    let at = buf_offset(dp_size, r, (k & 1) as usize) as u64;
                    let published = || {
                        let mut word = [0u8; 4];
                        file.read_exact_at(&mut word, at).unwrap();
                        u64::from(u32::from_le_bytes(word)) == k
                    };
                    while !published() {
                        std::thread::sleep(Duration::from_micros(50));
                    }
                }
                std::thread::sleep(STRAGGLER_SLEEP);
            }
            let (s, res, _, msg) = g.step(Some(&c_request(&req)));
            assert_eq!(s, dp_status::DP_OK, "rank {me} step {k}: {msg}");
            assert_eq!(res.last_rank, straggler as i32, "rank {me} step {k}");
            assert!(
                res.arrival_skew_ns >= sleep_ns,
                "rank {me} step {k}: skew {} ns",
                res.arrival_skew_ns
            );
            assert!(
                me == straggler || res.wait_ns >= sleep_ns,
                "rank {me} step {k}: waited {} ns",
                res.wait_ns
            );
        }
    }
    assert_eq!(g.close(), dp_status::DP_OK);
}

/// The straggler report: the rank that arrives last is `last_rank`, the skew at least its
/// delay; and with DPCOORD_DEBUG=INFO every rank logs a rank last in most of the last 64
/// steps once per change of that rank: rank 2 at its 33rd step of 40, rank 1 at its 33rd.
fn the_straggler_is_reported() {
    let name = unique("straggler");
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let pattern = dir.join("log.%p");
    let env = [
        ("DPCOORD_DEBUG", "INFO"),
        ("DPCOORD_DEBUG_FILE", pattern.to_str().unwrap()),
    ];
    let children: Vec<Child> = (0..3)
        .map(|r| spawn_with(&format!("straggler {name} 3 {r}"), &env))
        .collect();
    let pids: Vec<u32> = children.iter().map(Child::id).collect();
    assert_ok(&wait_all(children));
    for (r, pid) in pids.iter().enumerate() {
        let path = dir.join(format!("log.{pid}"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (files: {:?})", path.display(), ls(&dir)));
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("straggler:")).collect();
        assert_eq!(lines.len(), 2, "rank {r}: {lines:#?}");
        for (line, rank) in lines.iter().zip([2, 1]) {
            assert!(
                line.contains(&format!(
                    "straggler: rank {rank} arrived last in 33 of the last 64 steps"
                )) && line.contains(&format!("group {name}")),
                "rank {r}: {line}"
            );
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Rank 0 steps on a thread while rank 1 holds back: `dp_host_group_set_graphs` on the same
/// handle is DP_ERR_BUSY and changes nothing; once the step completed, it works.
fn rank_busy(name: &str, dp_size: usize, me: usize) {
    let mut g = open_or_die(name, dp_size, me, 20_000);
    let go = format!("{}.go", shm_file(name));
    let req = c_request(&Request {
        num_tokens_unpadded: 5,
        timeout_ms: 20_000,
        ..Request::default()
    });
    if me == 1 {
        while !std::path::Path::new(&go).exists() {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(g.step(Some(&req)).0, dp_status::DP_OK);
    } else {
        let table = phase_table(&VllmCfg::e_base().build(), true);
        let handle = g.0 as usize;
        let stepping = std::thread::spawn(move || {
            let mut res = init_result();
            loop {
                // Busy while the main thread is inside set_graphs: then again.
                match dp_host_group_coordinate(handle as *mut dp_host_group, &req, &mut res) {
                    dp_status::DP_ERR_BUSY => std::thread::yield_now(),
                    s => return s,
                }
            }
        });
        let start = Instant::now();
        loop {
            match dp_host_group_set_graphs(g.0, table.0) {
                dp_status::DP_ERR_BUSY => break,
                dp_status::DP_OK => assert!(start.elapsed() < Duration::from_secs(10)),
                s => panic!("set_graphs: {s:?} {}", last_error()),
            }
        }
        assert!(last_error().contains("another thread is inside"));
        std::fs::write(&go, b"").unwrap();
        assert_eq!(stepping.join().unwrap(), dp_status::DP_OK);
        assert_eq!(dp_host_group_set_graphs(g.0, table.0), dp_status::DP_OK);
        std::fs::remove_file(&go).unwrap();
    }
    assert_eq!(g.close(), dp_status::DP_OK);
}

fn set_graphs_while_stepping_is_busy() {
    let name = unique("busy");
    let children = (0..2)
        .map(|r| spawn(&format!("busy {name} 2 {r}")))
        .collect();
    assert_ok(&wait_all(children));
}

// ---------------------------------------------------------------------------------------------
// A writer corrupting record words while three ranks step
// ---------------------------------------------------------------------------------------------

/// Groups (epochs) the corruption case opens one after the other: a group that failed is
/// closed, and the ranks open the next.
const CORRUPT_EPOCHS: u64 = 60;
/// The most steps of one epoch.
const CORRUPT_EPOCH_STEPS: u64 = 2_000;
/// The corrupter leaves each epoch's first steps alone, so every epoch has at least this many:
/// `CORRUPT_EPOCHS * CORRUPT_QUIET_STEPS` >= 100 000 steps in all.
const CORRUPT_QUIET_STEPS: u64 = 1_700;

/// The segment of group `name` (of `len` bytes), mapped shared and read-write once it exists
/// with that size; `None` once `give_up` holds.
fn map_segment(name: &str, len: usize, give_up: impl Fn() -> bool) -> Option<*mut u8> {
    let path = shm_file(name);
    let file = loop {
        if let Ok(f) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        {
            if f.metadata().map(|m| m.len()).unwrap_or(0) == len as u64 {
                break f;
            }
        }
        if give_up() {
            return None;
        }
        std::thread::sleep(Duration::from_micros(100));
    };
    use std::os::fd::AsRawFd;
    // SAFETY: maps the segment file of `len` bytes (checked) shared, read-write.
    let p = unsafe {
        libc::mmap(
            null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(p, libc::MAP_FAILED);
    Some(p.cast())
}

/// The newest buffer of rank `r` in a mapped segment: (its parity, the step it holds).
fn newest_buf(map: *mut u8, dp_size: usize, r: usize) -> (usize, u64) {
    let step = |p: usize| {
        // SAFETY: `map` maps a whole segment of `dp_size` ranks, and the buffer lies in it.
        unsafe { buf_step(map.add(buf_offset(dp_size, r, p))) }
    };
    let (a, b) = (step(0), step(1));
    if a >= b {
        (0, a)
    } else {
        (1, b)
    }
}

/// The corrupter: for each epoch's group `<base>e<epoch>`, waits until rank 0 passed the quiet
/// steps, then writes a plausible random value (a token count, a flag, a mode) into a random
/// record word of a random rank's newest buffer, every 0-300 us, until the next epoch's
/// segment appears; runs until killed.
fn corrupter(base: &str, dp_size: usize, epochs: u64) {
    let len = segment_size(dp_size);
    let mut rng = Rng::new(0xC0, u64::from(std::process::id()));
    for e in 0..epochs {
        let next = shm_file(&format!("{base}e{}", e + 1));
        let moved_on = || std::path::Path::new(&next).exists();
        let Some(map) = map_segment(&format!("{base}e{e}"), len, moved_on) else {
            continue;
        };
        while !moved_on() && newest_buf(map, dp_size, 0).1 < CORRUPT_QUIET_STEPS {
            std::thread::sleep(Duration::from_micros(200));
        }
        while !moved_on() {
            let r = rng.below(dp_size as u64) as usize;
            let (p, _) = newest_buf(map, dp_size, r);
            let i = rng.below(5) as usize;
            let value = match i {
                0 | 1 => rng.below(2048),
                2 | 3 => rng.below(2),
                _ => rng.below(3),
            } as u32;
            // SAFETY: a record word of a buffer inside the mapping, aligned; volatile so that
            // the write happens.
            unsafe {
                let at = map.add(buf_offset(dp_size, r, p) + record_word_offset(i));
                std::ptr::write_volatile(at.cast::<u32>(), value);
            }
            std::thread::sleep(Duration::from_micros(rng.below(300)));
        }
        // SAFETY: unmaps the mapping made above; nothing points into it any more.
        unsafe { libc::munmap(map.cast(), len) };
    }
}

/// A rank of the corruption case: epochs of valid, consistent V1 steps; an epoch ends at its
/// last step or at a status that ends the group. Every step is written to `out` as
/// `epoch step status digest right` (`right`: 1 unless a DP_OK differs from the host path's).
fn rank_corrupted(base: &str, dp_size: usize, me: usize, epochs: u64, out: &str) {
    use std::io::Write;
    let mut log = std::io::BufWriter::new(std::fs::File::create(out).unwrap());
    for e in 0..epochs {
        let mut g = open_or_die(&format!("{base}e{e}"), dp_size, me, 20_000);
        for step in 0..CORRUPT_EPOCH_STEPS {
            let reqs = c_requests(&step_requests(100 + e, step, dp_size, false, 20_000));
            let got = g.step(reqs[me].as_ref());
            // Against the host path every fourth step (its calls cost more than the step).
            let right = got.0 != dp_status::DP_OK
                || step % 4 != 0
                || check_step(&got, &expected(&reqs, me, null())).is_ok();
            writeln!(
                log,
                "{e} {step} {} {:016x} {}",
                got.0 as u32,
                digest(&got),
                u8::from(right)
            )
            .unwrap();
            let ends_the_group = matches!(
                got.0,
                dp_status::DP_ERR_CORRUPT
                    | dp_status::DP_ERR_TIMEOUT
                    | dp_status::DP_ERR_PEER_EXITED
                    | dp_status::DP_ERR_INTERNAL
            );
            if ends_the_group {
                break;
            }
        }
        g.close();
    }
}

/// A writer corrupts record words at random while three ranks step (V1): every step is either
/// the same DP_OK decision on every rank that got DP_OK, and the host path's, or
/// DP_ERR_CORRUPT; over at least 100 000 steps, in groups that the ranks reopen after each
/// corruption was found.
fn corrupted_record_words_never_decide_differently() {
    let base = unique("corrupt");
    let dir = std::env::temp_dir().join(&base);
    std::fs::create_dir_all(&dir).unwrap();
    let mut corrupter = spawn(&format!("corrupter {base} 3 0 {CORRUPT_EPOCHS}"));
    let files: Vec<String> = (0..3)
        .map(|r| dir.join(format!("rank{r}")).to_str().unwrap().to_owned())
        .collect();
    let ranks = (0..3)
        .map(|r| {
            spawn(&format!(
                "corrupted {base} 3 {r} {CORRUPT_EPOCHS} {}",
                files[r]
            ))
        })
        .collect();
    let outcomes = wait_all(ranks);
    let _ = corrupter.kill();
    let _ = corrupter.wait();
    assert_ok(&outcomes);
    // (epoch, step) -> every rank's (rank, status, digest, right).
    type Outcomes = Vec<(usize, u32, String, bool)>;
    let mut steps: std::collections::BTreeMap<(u64, u64), Outcomes> = Default::default();
    for (r, file) in files.iter().enumerate() {
        for line in std::fs::read_to_string(file).unwrap().lines() {
            let w: Vec<&str> = line.split(' ').collect();
            steps
                .entry((w[0].parse().unwrap(), w[1].parse().unwrap()))
                .or_default()
                .push((r, w[2].parse().unwrap(), w[3].to_owned(), w[4] == "1"));
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
    let (ok, corrupt) = (dp_status::DP_OK as u32, dp_status::DP_ERR_CORRUPT as u32);
    // Steps with different DP_OK decisions across ranks, with a DP_OK unlike the host path's,
    // with another status than DP_OK or DP_ERR_CORRUPT: (count, the first three).
    let mut faults: [(&str, usize, Vec<String>); 3] = [
        ("different DP_OK decisions across ranks", 0, Vec::new()),
        ("a DP_OK unlike the host path's", 0, Vec::new()),
        ("a status other than DP_OK or DP_ERR_CORRUPT", 0, Vec::new()),
    ];
    let (mut mixed, mut failed) = (0, 0);
    for (at, ranks) in &steps {
        let oks: Vec<&String> = ranks.iter().filter(|x| x.1 == ok).map(|x| &x.2).collect();
        let kinds = [
            oks.windows(2).any(|w| w[0] != w[1]),
            ranks.iter().any(|x| x.1 == ok && !x.3),
            ranks.iter().any(|x| x.1 != ok && x.1 != corrupt),
        ];
        for (fault, hit) in faults.iter_mut().zip(kinds) {
            if hit {
                fault.1 += 1;
                if fault.2.len() < 3 {
                    fault.2.push(format!(
                        "epoch {} step {}: (rank, status, digest, as the host path) {ranks:?}",
                        at.0, at.1
                    ));
                }
            }
        }
        if ranks.iter().any(|x| x.1 == corrupt) {
            failed += 1;
            mixed += usize::from(!oks.is_empty());
        }
    }
    println!(
        "    {} steps in {CORRUPT_EPOCHS} groups; {failed} failed with DP_ERR_CORRUPT ({mixed} \
         of them DP_OK on another rank)",
        steps.len()
    );
    let found: Vec<String> = faults
        .iter()
        .filter(|f| f.1 > 0)
        .map(|(what, n, first)| format!("{n} steps with {what}; the first: {first:#?}"))
        .collect();
    assert!(found.is_empty(), "{}", found.join("\n"));
    assert!(steps.len() >= 100_000, "only {} steps", steps.len());
    assert!(failed > 0, "the corrupter was never noticed");
}

// ---------------------------------------------------------------------------------------------
// The cases
// ---------------------------------------------------------------------------------------------

fn random_steps(dp_size: usize, steps: u64) {
    let name = unique(&format!("steps{dp_size}"));
    let children = (0..dp_size)
        .map(|r| spawn(&format!("steps {name} {dp_size} {r} 42 {steps} 1")))
        .collect();
    let outcomes = wait_all(children);
    assert_ok(&outcomes);
    assert!(
        !std::path::Path::new(&shm_file(&name)).exists(),
        "the last rank out unlinks"
    );
}

fn random_steps_2_ranks() {
    random_steps(2, 10_000);
}

fn random_steps_4_ranks() {
    random_steps(4, 10_000);
}

fn random_steps_8_ranks() {
    random_steps(8, 10_000);
}

fn two_groups_never_interfere() {
    let (a, b) = (unique("groupA"), unique("groupB"));
    let mut children = Vec::new();
    for r in 0..2 {
        children.push(spawn(&format!("steps {a} 2 {r} 1 2000 1")));
        children.push(spawn(&format!("steps {b} 3 {r} 2 2000 1")));
    }
    children.push(spawn(&format!("steps {b} 3 2 2 2000 1")));
    assert_ok(&wait_all(children));
}

/// Ranks start at different times; open waits for the late one.
fn open_waits_for_late_ranks() {
    let name = unique("late");
    let first = spawn(&format!("steps {name} 3 2 5 50 0"));
    std::thread::sleep(Duration::from_millis(300));
    let second = spawn(&format!("steps {name} 3 0 5 50 0"));
    std::thread::sleep(Duration::from_millis(300));
    let third = spawn(&format!("steps {name} 3 1 5 50 0"));
    assert_ok(&wait_all(vec![first, second, third]));
}

fn peer_killed_is_peer_exited(timeout_ms: u64) {
    let name = unique(&format!("kill{timeout_ms}"));
    let children = vec![
        spawn(&format!("survive {name} 3 0 exited {timeout_ms} 2")),
        spawn(&format!("survive {name} 3 1 exited {timeout_ms} 2")),
        spawn(&format!("leave {name} 3 2 kill 0")),
    ];
    let o = wait_all(children);
    assert_ok(&o[..2]);
    assert!(
        killed_by(&o[2], libc::SIGKILL),
        "rank 2: {:?} {}",
        o[2].status,
        o[2].stderr
    );
    assert!(
        !std::path::Path::new(&shm_file(&name)).exists(),
        "the last live rank out unlinks"
    );
}

fn peer_killed_wait_forever() {
    peer_killed_is_peer_exited(0);
}

fn peer_killed_with_timeout() {
    peer_killed_is_peer_exited(30_000);
}

/// Rank 2 dies while rank 1 is busy elsewhere: rank 0 finds the dead rank itself (not only
/// once the slow rank arrives), and the slow rank, when it calls, fails with the group.
fn peer_killed_behind_a_slow_rank() {
    let name = unique("behind");
    let children = vec![
        spawn(&format!(
            "survive {name} 3 0 exited 0 2 exited (rank 0 waits"
        )),
        spawn(&format!("leave {name} 3 1 late 2000")),
        spawn(&format!("leave {name} 3 2 kill 0")),
    ];
    let o = wait_all(children);
    assert_ok(&o[..2]);
    assert!(killed_by(&o[2], libc::SIGKILL));
}

/// Rank 0 survives (`survive` arguments) what rank 1 does (`leave` arguments); then the
/// segment is gone.
fn two_rank_fault(tag: &str, survive: &str, leave: &str) {
    let name = unique(tag);
    let children = vec![
        spawn(&format!("survive {name} 2 0 {survive}")),
        spawn(&format!("leave {name} 2 1 {leave}")),
    ];
    assert_ok(&wait_all(children));
    assert!(!std::path::Path::new(&shm_file(&name)).exists());
}

fn peer_closes_is_peer_exited() {
    two_rank_fault("close", "exited 0 1", "close 500");
}

/// Rank 1 stops calling: rank 0 times out naming it, and rank 1, when it calls again, fails
/// with the group (the timeout is in the segment), so both fail together.
fn peer_stops_is_timeout() {
    two_rank_fault("stop", "timeout 300 1", "stop 1500");
}

/// Starts this binary as `role` in a new pid namespace: `unshare --pid --fork`, with
/// `--mount-proc` (a /proc of its own, as a container has) or without (the parent's /proc).
fn spawn_in_new_pid_ns(role: &str, mount_proc: bool) -> Child {
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork"]);
    if mount_proc {
        cmd.arg("--mount-proc");
    }
    cmd.arg(std::env::current_exe().unwrap())
        .env(ROLE_ENV, role)
        .env(RUN_ENV, run_id().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run unshare (util-linux) for a pid namespace: {e}"))
}

/// Whether this run can make pid namespaces. As root it must: CI runs as root, where a
/// missing or refused `unshare` fails the case, loudly, and never skips it. Not root, the case
/// reports itself not run, with the reason.
fn pid_namespaces_or_skip(case: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("    ({case} needs root for unshare --pid: NOT RUN)");
        return false;
    }
    let out = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .output()
        .unwrap_or_else(|e| panic!("{case}: cannot run unshare (util-linux) as root: {e}"));
    assert!(
        out.status.success(),
        "{case}: `unshare --pid --fork --mount-proc true` fails as root ({:?}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

/// Waits until member `r` of group `name` has joined (its state in the segment file).
fn wait_joined(name: &str, r: usize) {
    let at = 128 + MEMBER_BYTES * r + 4;
    let start = Instant::now();
    loop {
        if let Ok(bytes) = std::fs::read(shm_file(name)) {
            if bytes.get(at..at + 4) == Some(&1u32.to_le_bytes()[..]) {
                return;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "rank {r} of {name} never joined"
        );
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// The pid namespace an `expect` rank printed.
fn printed_pid_ns(o: &Outcome) -> u64 {
    o.stdout
        .lines()
        .find_map(|l| l.strip_prefix("pidns="))
        .unwrap_or_else(|| panic!("no pidns line: {}\n{}", o.stdout, o.stderr))
        .parse()
        .unwrap()
}

/// Ranks in two pid namespaces that share /dev/shm (containers with a shared memory volume)
/// never form one group: the rank that comes second is refused with DP_ERR_INVALID_ARGUMENT
/// saying so, and the group of the first is left alone (not unlinked as stale); both ways
/// round.
fn pid_namespaces_never_mix() -> bool {
    if !pid_namespaces_or_skip("pid_namespaces_never_mix") {
        return false;
    }
    let own_ns = own_identity().1;
    // A group of this namespace; a rank of a new one is refused; the group still forms.
    let name = unique("nsmix");
    let first = spawn(&format!("steps {name} 2 0 9 50 0"));
    wait_joined(&name, 0);
    let foreign = spawn_in_new_pid_ns(
        &format!("expect {name} 2 1 5000 invalid pid namespace"),
        true,
    );
    let o = wait_all(vec![foreign]);
    assert_ok(&o);
    assert_ne!(
        printed_pid_ns(&o[0]),
        own_ns,
        "unshare made no new pid namespace"
    );
    let second = spawn(&format!("steps {name} 2 1 9 50 0"));
    assert_ok(&wait_all(vec![first, second]));
    assert!(!std::path::Path::new(&shm_file(&name)).exists());
    // A group of a new namespace; a rank of this one is refused; the first times out alone.
    let name = unique("nsmix2");
    let first = spawn_in_new_pid_ns(
        &format!("expect {name} 2 0 3000 timeout did not join"),
        true,
    );
    wait_joined(&name, 0);
    let refused = spawn(&format!("expect {name} 2 1 5000 invalid pid namespace"));
    let o = wait_all(vec![first, refused]);
    assert_ok(&o);
    assert_ne!(printed_pid_ns(&o[0]), printed_pid_ns(&o[1]));
    assert!(!std::path::Path::new(&shm_file(&name)).exists());
    true
}

/// Runs inside a new pid namespace (as its first process, pid 1): a group of ranks of this
/// namespace steps, and a killed rank is reported while the others wait forever (timeout_ms
/// = 0), with /proc mounted for this namespace (`mount_proc`) or the parent's /proc.
fn in_pid_namespace(mount_proc: bool) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let nspid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    // With its own /proc this process shows one pid (1); with the parent's, two.
    let shown = nspid.split_whitespace().count() - 1;
    assert_eq!(shown, if mount_proc { 1 } else { 2 }, "{nspid}");
    assert_eq!(
        std::process::id(),
        1,
        "not the first process of a new pid namespace"
    );
    random_steps(2, 300);
    peer_killed_is_peer_exited(0);
    println!("in a new pid namespace ({nspid}): steps and a killed peer ok");
}

/// A group whose ranks all run in one new pid namespace works as on the host: random steps,
/// and a killed rank is DP_ERR_PEER_EXITED while the others wait with timeout_ms = 0 (no
/// hang); with the namespace's own /proc (as in a container) and with the parent's (where
/// /proc/<pid> does not name this namespace's processes, so start times are not compared).
fn pid_namespace_of_its_own_works() -> bool {
    if !pid_namespaces_or_skip("pid_namespace_of_its_own_works") {
        return false;
    }
    for mount_proc in [true, false] {
        let role = format!("nscases - 0 0 {}", u8::from(mount_proc));
        let o = wait_all(vec![spawn_in_new_pid_ns(&role, mount_proc)]);
        assert_ok(&o);
        assert!(o[0].stdout.contains("killed peer ok"), "{}", o[0].stdout);
    }
    true
}

/// A member entry that names a live process with another start time (its pid reused): at open
/// it is a stale segment, reclaimed; while a rank waits for the others to join it is a dead
/// peer, DP_ERR_PEER_EXITED naming the rank (never a peer that seems alive forever).
fn reused_pid_is_a_dead_member() {
    let (pid, ns, start) = own_identity();
    let reused = (pid, ns, start + 1);
    // This (live) process, with another start time, holds rank 0 of a one-rank group.
    let name = unique("reused");
    let mut img = segment_image(1);
    for (at, bytes) in member_bytes(0, reused, 1) {
        img[at..at + bytes.len()].copy_from_slice(&bytes);
    }
    write_segment(&name, &img, 0o600);
    let mut g = Group::open(&name, 1, 0, 2_000)
        .unwrap_or_else(|(s, m)| panic!("a reused pid is not reclaimed: {s:?} {m}"));
    good_steps(&mut g, 1, 0, 3);
    assert_eq!(g.close(), dp_status::DP_OK);
    assert!(!std::path::Path::new(&shm_file(&name)).exists());
    // Rank 0 waits for rank 1; rank 1's entry appears naming this process, with another start
    // time: a rank that joined and exited, its pid since reused.
    let name = unique("reused2");
    let rank0 = spawn(&format!(
        "expect {name} 2 0 20000 exited rank 1 (pid {pid}) exited before every rank joined; pid \
         {pid} now names another process"
    ));
    wait_joined(&name, 0);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(shm_file(&name))
        .unwrap();
    use std::os::unix::fs::FileExt;
    let [pid_at, state_at, ns_at, start_at] = member_bytes(1, reused, 1);
    for (at, bytes) in [pid_at, ns_at, start_at, state_at] {
        f.write_all_at(&bytes, at as u64).unwrap();
    }
    assert_ok(&wait_all(vec![rank0]));
    assert!(!std::path::Path::new(&shm_file(&name)).exists());
}

/// A forked child closes the handle it inherited: the parent's rank is untouched (no closed
/// state, no unlink) and keeps stepping with its peer.
fn close_in_a_forked_child() {
    let name = unique("forkclose");
    let children = (0..2)
        .map(|r| spawn(&format!("forkclose {name} 2 {r}")))
        .collect();
    assert_ok(&wait_all(children));
    assert!(!std::path::Path::new(&shm_file(&name)).exists());
}

/// After fork, the child's log lines carry its own pid and thread id and go to its own
/// DPCOORD_DEBUG_FILE (`%p`), not the parent's.
fn log_after_fork_names_the_child() {
    let name = unique("forklog");
    let dir = std::env::temp_dir().join(&name);
    std::fs::create_dir_all(&dir).unwrap();
    let pattern = dir.join("log.%p");
    let proc = spawn_with(
        &format!("forklog {name} 1 0"),
        &[
            ("DPCOORD_DEBUG", "INFO"),
            ("DPCOORD_DEBUG_FILE", pattern.to_str().unwrap()),
        ],
    );
    let parent = proc.id();
    let o = wait_all(vec![proc]);
    assert_ok(&o);
    let child: u32 = o[0]
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("child="))
        .expect("the child's pid")
        .parse()
        .unwrap();
    // Every line of `pid`'s file: written by `pid` on its main thread (tid = pid), and naming
    // group `<name><group>` (and not the other).
    let check = |pid: u32, group: &str, other: &str| {
        let path = dir.join(format!("log.{pid}"));
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{}: {e} (files: {:?})", path.display(), ls(&dir)));
        assert!(text.contains(&format!("group {name}{group}]")), "{text}");
        assert!(!text.contains(&format!("group {name}{other}]")), "{text}");
        for line in text.lines() {
            let mut fields = line.splitn(3, ':');
            let (_host, p, rest) = (fields.next(), fields.next(), fields.next().unwrap_or(""));
            let t = rest.split(' ').next();
            assert_eq!(
                (p, t),
                (Some(&*pid.to_string()), Some(&*pid.to_string())),
                "{line}"
            );
        }
    };
    check(parent, "a", "b");
    check(child, "b", "a");
    std::fs::remove_dir_all(&dir).unwrap();
}

fn ls(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Every process of a group killed: the segment stays, and the next open reclaims it.
fn stale_segment_is_reclaimed() {
    let name = unique("stale");
    let children = (0..2)
        .map(|r| spawn(&format!("leave {name} 2 {r} kill 0")))
        .collect();
    let o = wait_all(children);
    assert!(o.iter().all(|o| killed_by(o, libc::SIGKILL)));
    assert!(
        std::path::Path::new(&shm_file(&name)).exists(),
        "a killed group leaves its segment"
    );
    let children = (0..2)
        .map(|r| spawn(&format!("steps {name} 2 {r} 3 200 1")))
        .collect();
    assert_ok(&wait_all(children));
    assert!(!std::path::Path::new(&shm_file(&name)).exists());
}

fn open_times_out_and_unlinks() {
    let name = unique("alone");
    let (s, m) = Group::open(&name, 2, 0, 200)
        .err()
        .expect("nobody else joins");
    assert_eq!(s, dp_status::DP_ERR_TIMEOUT, "{m}");
    assert!(m.contains("[1]"), "names the missing rank: {m}");
    assert!(!std::path::Path::new(&shm_file(&name)).exists());
}

fn one_rank_group_decides_alone() {
    let name = unique("solo");
    let mut g = Group::open(&name, 1, 0, 1000).unwrap();
    let reqs = step_requests(3, 0, 1, false, 1000);
    let reqs = c_requests(&reqs);
    let got = g.step(reqs[0].as_ref());
    check_step(&got, &expected(&reqs, 0, null())).unwrap();
    assert!(!got.1.has_num_tokens_after_padding);
    assert_eq!(g.close(), dp_status::DP_OK);
    assert!(!std::path::Path::new(&shm_file(&name)).exists());
}

fn assert_open_fails(
    name: &str,
    dp_size: i32,
    dp_rank: i32,
    timeout_ms: i32,
    want: dp_status,
    needle: &str,
) {
    let (s, m) = Group::open(name, dp_size, dp_rank, timeout_ms)
        .err()
        .unwrap_or_else(|| panic!("open({name:?}, {dp_size}, {dp_rank}) succeeded"));
    assert_eq!(s, want, "{m}");
    assert!(m.contains(needle), "{m:?} does not contain {needle:?}");
}

fn bad_arguments_are_refused() {
    let long = "x".repeat(65);
    for bad in ["", "a/b", "a b", "über", "x\ny", long.as_str()] {
        assert_open_fails(
            bad,
            2,
            0,
            100,
            dp_status::DP_ERR_INVALID_ARGUMENT,
            "name = ",
        );
    }
    assert_open_fails(
        &"y".repeat(64),
        0,
        0,
        100,
        dp_status::DP_ERR_INVALID_ARGUMENT,
        "dp_size = 0",
    );
    let ok = unique("args");
    for (size, rank, needle) in [
        (0, 0, "dp_size = 0"),
        (-3, 0, "dp_size = -3"),
        (1025, 0, "dp_size = 1025"),
        (2, -1, "dp_rank = -1"),
        (2, 2, "dp_rank = 2"),
    ] {
        assert_open_fails(
            &ok,
            size,
            rank,
            100,
            dp_status::DP_ERR_INVALID_ARGUMENT,
            needle,
        );
    }
    assert_open_fails(
        &ok,
        2,
        0,
        -1,
        dp_status::DP_ERR_INVALID_ARGUMENT,
        "timeout_ms = -1",
    );
    let c = CString::new(ok.clone()).unwrap();
    assert_eq!(
        dp_host_group_open(null::<c_char>(), 2, 0, 100, &mut null_mut()),
        dp_status::DP_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        dp_host_group_open(c.as_ptr(), 2, 0, 100, null_mut()),
        dp_status::DP_ERR_INVALID_ARGUMENT
    );
    assert!(last_error().contains("out is NULL"));
    assert!(
        !std::path::Path::new(&shm_file(&ok)).exists(),
        "a refused open leaves no segment"
    );
    assert_eq!(
        dp_host_group_close(null_mut()),
        dp_status::DP_ERR_INVALID_ARGUMENT
    );
    let mut res = init_result();
    assert_eq!(
        dp_host_group_coordinate(null_mut(), null(), &mut res),
        dp_status::DP_ERR_INVALID_ARGUMENT
    );
    assert_eq!(
        dp_host_group_set_graphs(null_mut(), null()),
        dp_status::DP_ERR_INVALID_ARGUMENT
    );
    assert!(last_error().contains("g is NULL"), "{}", last_error());
}

/// Bytes of a segment of `dp_size` ranks: header, member table (whole 128-byte pairs), slots.
fn segment_size(dp_size: usize) -> usize {
    buf_offset(dp_size, dp_size, 0)
}

/// Bytes of one rank's slot in the segment: its two buffers (by step parity).
const SLOT_BYTES: usize = 256;
/// Bytes of one buffer: a 96-byte `dp_slot` in a 128-byte pair of cache lines.
const BUF_BYTES: usize = 128;

/// Where buffer `p` of rank `r` starts in a segment of `dp_size` ranks.
fn buf_offset(dp_size: usize, r: usize, p: usize) -> usize {
    128 + (MEMBER_BYTES * dp_size).div_ceil(128) * 128 + SLOT_BYTES * r + BUF_BYTES * p
}

/// Where record word `i` (0..8: V1's five words, then three zeros) lies in a buffer: slot
/// words 15..23.
fn record_word_offset(i: usize) -> usize {
    4 * (15 + i)
}

/// The step a buffer holds (its sequence number, slot word 0), read from a mapping of the
/// segment.
///
/// # Safety
/// `buf` points at a buffer inside a live mapping.
unsafe fn buf_step(buf: *const u8) -> u64 {
    // SAFETY: the caller's promise; the word is aligned (buffers are).
    u64::from(unsafe { std::ptr::read_volatile(buf.cast::<u32>()) })
}

/// The layout version the library writes.
const LAYOUT_VERSION: u32 = 3;
/// Bytes of a member entry: pid, state, pid namespace, start time (layout 2).
const MEMBER_BYTES: usize = 24;

/// This process as a member entry names it: (pid, pid namespace, start time), the namespace
/// being the inode of /proc/self/ns/pid and the start time field 22 of /proc/self/stat.
fn own_identity() -> (i32, u64, u64) {
    use std::os::unix::fs::MetadataExt;
    let ns = std::fs::metadata("/proc/self/ns/pid").unwrap().ino();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let after_command = &stat[stat.rfind(')').unwrap() + 1..];
    let start = after_command.split_whitespace().nth(22 - 3).unwrap();
    (std::process::id() as i32, ns, start.parse().unwrap())
}

/// The bytes of member entry `r`: (offset, bytes) of pid, state, pid_ns and start_time.
fn member_bytes(r: usize, id: (i32, u64, u64), state: u32) -> [(usize, Vec<u8>); 4] {
    let at = 128 + MEMBER_BYTES * r;
    [
        (at, id.0.to_le_bytes().to_vec()),
        (at + 4, state.to_le_bytes().to_vec()),
        (at + 8, id.1.to_le_bytes().to_vec()),
        (at + 16, id.2.to_le_bytes().to_vec()),
    ]
}

/// A segment image: a valid header for `dp_size` and rank 0 held by this (live) process.
fn segment_image(dp_size: usize) -> Vec<u8> {
    let mut img = vec![0u8; segment_size(dp_size)];
    let put = |img: &mut Vec<u8>, at: usize, bytes: &[u8]| {
        img[at..at + bytes.len()].copy_from_slice(bytes)
    };
    put(&mut img, 0, b"dpcoordH");
    put(&mut img, 8, &LAYOUT_VERSION.to_le_bytes());
    put(&mut img, 12, &(dp_size as u32).to_le_bytes());
    // SAFETY: geteuid has no preconditions.
    put(&mut img, 16, &unsafe { libc::geteuid() }.to_le_bytes());
    put(&mut img, 20, &(SLOT_BYTES as u32).to_le_bytes());
    put(&mut img, 24, &(segment_size(dp_size) as u64).to_le_bytes());
    for (at, bytes) in member_bytes(0, own_identity(), 1) {
        put(&mut img, at, &bytes);
    }
    img
}

fn write_segment(name: &str, bytes: &[u8], mode: u32) {
    let path = shm_file(name);
    let _ = std::fs::remove_file(&path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&path)
        .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    use std::io::Write;
    f.write_all(bytes).unwrap();
}

/// Segments that are not this group's: each open is refused, naming what is wrong, and the
/// segment is left alone.
fn foreign_segments_are_refused() {
    let name = unique("foreign");
    let img = segment_image(2);
    let invalid = dp_status::DP_ERR_INVALID_ARGUMENT;
    let cases: Vec<(&str, Vec<u8>, u32, i32, &str)> = vec![
        ("another dp_size", img.clone(), 0o600, 4, "dp_size 2"),
        (
            "truncated header",
            img[..40].to_vec(),
            0o600,
            2,
            "truncated",
        ),
        (
            "truncated slots",
            img[..200].to_vec(),
            0o600,
            2,
            "truncated",
        ),
        ("another mode", img.clone(), 0o644, 2, "mode 644"),
        (
            "rank already held",
            img.clone(),
            0o600,
            2,
            "already held by pid",
        ),
    ];
    // (what, offset, bytes written there, what the error names)
    let patches: [(&str, usize, &[u8], &str); 8] = [
        ("bad magic", 0, b"notours!", "magic"),
        ("layout version", 8, &7u32.to_le_bytes(), "layout version 7"),
        (
            "dp_size out of range",
            12,
            &5000u32.to_le_bytes(),
            "header.dp_size = 5000",
        ),
        (
            "owner_uid",
            16,
            &12345u32.to_le_bytes(),
            "owner_uid = 12345",
        ),
        ("slot_size", 20, &64u32.to_le_bytes(), "slot_size = 64"),
        (
            "segment_size",
            24,
            &999u64.to_le_bytes(),
            "segment_size = 999",
        ),
        (
            "member state",
            132,
            &9u32.to_le_bytes(),
            "member[0].state = 9",
        ),
        (
            "member pid",
            128,
            &(-5i32).to_le_bytes(),
            "member[0].pid = -5",
        ),
    ];
    let more = patches.iter().map(|&(what, at, bytes, needle)| {
        let mut v = img.clone();
        v[at..at + bytes.len()].copy_from_slice(bytes);
        (what, v, 0o600, 2, needle)
    });
    for (what, bytes, mode, dp_size, needle) in cases.into_iter().chain(more) {
        write_segment(&name, &bytes, mode);
        let rank = if what == "rank already held" { 0 } else { 1 };
        let (s, m) = Group::open(&name, dp_size, rank, 300)
            .err()
            .unwrap_or_else(|| panic!("{what}: open succeeded"));
        assert_eq!(s, invalid, "{what}: {m}");
        assert!(
            m.contains(needle),
            "{what}: {m:?} does not contain {needle:?}"
        );
        assert!(
            std::path::Path::new(&shm_file(&name)).exists(),
            "{what}: the segment is left alone"
        );
    }
    std::fs::remove_file(shm_file(&name)).unwrap();
}

/// A creator killed between two header stores (the magic, its last store, never written): the
/// next open reclaims the segment, whichever stores were done, and the group works.
fn unfinished_header_is_reclaimed() {
    let full = segment_image(2);
    // The stores of creation in order: layout_version, dp_size, owner_uid, slot_size,
    // segment_size (offsets 8..32); the magic (0..8) comes last.
    for done in [8, 12, 16, 20, 24, 32] {
        let name = unique(&format!("unfinished{done}"));
        let mut img = vec![0u8; full.len()];
        img[8..done].copy_from_slice(&full[8..done]);
        write_segment(&name, &img, 0o600);
        let mut g = Group::open(&name, 1, 0, 2_000)
            .unwrap_or_else(|(s, m)| panic!("header written up to byte {done}: {s:?} {m}"));
        good_steps(&mut g, 1, 0, 3);
        assert_eq!(g.close(), dp_status::DP_OK);
        assert!(!std::path::Path::new(&shm_file(&name)).exists());
    }
}

/// Something other than a regular file at the segment path (a FIFO, a directory, a symbolic
/// link): open is refused with DP_ERR_INVALID_ARGUMENT naming the path and what is there, and
/// leaves it alone.
fn non_regular_files_are_refused() {
    let name = unique("notafile");
    let path = shm_file(&name);
    let target = format!("{path}.target");
    write_segment(&format!("{name}.target"), &segment_image(2), 0o600);
    let makers: [(&str, &dyn Fn()); 3] = [
        ("a FIFO (named pipe)", &|| {
            let c = CString::new(path.clone()).unwrap();
            // SAFETY: mkfifo of a NUL-terminated path this test owns.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        }),
        ("a directory", &|| std::fs::create_dir(&path).unwrap()),
        ("a symbolic link", &|| {
            std::os::unix::fs::symlink(&target, &path).unwrap()
        }),
    ];
    for (what, make) in makers {
        make();
        let (s, m) = Group::open(&name, 2, 0, 300)
            .err()
            .unwrap_or_else(|| panic!("{what}: open succeeded"));
        assert_eq!(s, dp_status::DP_ERR_INVALID_ARGUMENT, "{what}: {m}");
        assert!(
            m.contains(&format!(
                "segment {path} is {what}, not a shared-memory file"
            )),
            "{what}: {m:?} does not say what is at {path}"
        );
        let still = std::fs::symlink_metadata(&path).expect("left alone");
        assert!(!still.file_type().is_file(), "{what}: replaced by a file");
        if still.is_dir() {
            std::fs::remove_dir(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
    std::fs::remove_file(&target).unwrap();
}

/// A segment owned by another user (made here as root, then handed over with fchown).
fn segment_of_another_user_is_refused() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("    (needs root to create a segment owned by another user: NOT RUN)");
        return false;
    }
    let name = unique("otheruser");
    write_segment(&name, &segment_image(2), 0o600);
    let path = CString::new(shm_file(&name)).unwrap();
    // SAFETY: chown of a file this test just created, to uid/gid 65534 (nobody).
    assert_eq!(unsafe { libc::chown(path.as_ptr(), 65534, 65534) }, 0);
    assert_open_fails(
        &name,
        2,
        1,
        300,
        dp_status::DP_ERR_INVALID_ARGUMENT,
        "owned by uid 65534",
    );
    std::fs::remove_file(shm_file(&name)).unwrap();
    true
}

/// Offsets of every field of a 2-rank segment (the layout of src/host_group/segment.rs, pinned by
/// its unit test): `(name, offset, length, read on every call)`; slot fields of rank `r` and
/// buffer `p`.
fn segment_fields() -> Vec<(String, usize, usize, bool)> {
    let mut fields: Vec<(String, usize, usize, bool)> = vec![
        ("header.magic".into(), 0, 8, true),
        ("header.layout_version".into(), 8, 4, true),
        ("header.dp_size".into(), 12, 4, true),
        ("header.owner_uid".into(), 16, 4, true),
        ("header.slot_size".into(), 20, 4, true),
        ("header.segment_size".into(), 24, 8, true),
        ("header.failure".into(), 32, 8, true),
        ("header.epoch".into(), 64, 4, false),
        ("header.sleepers".into(), 68, 4, false),
    ];
    for r in 0..2 {
        let m = 128 + MEMBER_BYTES * r;
        fields.push((format!("member[{r}].pid"), m, 4, true));
        fields.push((format!("member[{r}].state"), m + 4, 4, false));
        fields.push((format!("member[{r}].pid_ns"), m + 8, 8, true));
        fields.push((format!("member[{r}].start_time"), m + 16, 8, true));
    }
    // A word of each kind of the slot's fields (`dp_slot`'s layout, docs/ARCHITECTURE.md).
    let words = [
        (0, "sequence number"),
        (1, "layout tag"),
        (3, "pad_policy"),
        (9, "step_id"),
        (13, "arrival time"),
        (15, "record word 0"),
        (19, "record word 4"),
        (23, "checksum"),
    ];
    for r in 0..2 {
        for p in 0..2 {
            for (i, what) in words {
                fields.push((
                    format!("slot[{r}].bufs[{p}].words[{i}] ({what})"),
                    buf_offset(2, r, p) + 4 * i,
                    4,
                    false,
                ));
            }
        }
    }
    fields
}

/// Garbage written once into each field the next step reads (the header, and rank 0's
/// pid and buffer of step 6 while rank 0 waits at step 6): every rank fails that
/// step, naming it, instead of hanging or succeeding.
fn garbage_in_each_field_fails_the_step() {
    let fields = segment_fields();
    let read_next_step = |f: &str| {
        !f.contains("epoch")
            && !f.contains("sleepers")
            && !f.contains("state")
            && !["member[1]", "slot[1]", "bufs[1]"]
                .iter()
                .any(|other| f.contains(other))
    };
    for (i, (field, offset, len, _)) in fields
        .iter()
        .enumerate()
        .filter(|(_, f)| read_next_step(&f.0))
    {
        let name = unique(&format!("tamper{i}"));
        let ranks = (0..2)
            .map(|r| spawn(&format!("tamper {name} 2 {r} {offset} {len}")))
            .collect();
        let outcomes = wait_all(ranks);
        let _ = std::fs::remove_file(shm_file(&name));
        for (r, o) in outcomes.iter().enumerate() {
            assert!(
                o.status.success(),
                "{field}, rank {r}:\n{}\n{}",
                o.stdout,
                o.stderr
            );
        }
    }
}

/// Every header and slot field (both buffers) hammered with garbage by a hostile process
/// while two ranks run valid steps: never a crash, a hang, or a wrong DP_OK; garbage in the
/// fields no rank rewrites (the header, the pids) is always noticed.
fn garbage_hammered_into_every_field() {
    for (i, (field, offset, len, must_notice)) in segment_fields().iter().enumerate() {
        let name = unique(&format!("garbage{i}"));
        let mut hammer = spawn(&format!("hammer {name} 2 0 {offset} {len}"));
        let ranks = (0..2)
            .map(|r| spawn(&format!("hostile {name} 2 {r} 200")))
            .collect();
        let outcomes = wait_all(ranks);
        let _ = hammer.kill();
        let _ = hammer.wait();
        let _ = std::fs::remove_file(shm_file(&name));
        let _ = std::fs::remove_file(format!("{}.hammering", shm_file(&name)));
        assert_ok(&outcomes);
        let errors: usize = outcomes
            .iter()
            .map(|o| {
                o.stdout
                    .lines()
                    .find_map(|l| l.strip_prefix("errors="))
                    .unwrap()
                    .parse::<usize>()
                    .unwrap()
            })
            .sum();
        if *must_notice {
            assert!(
                errors > 0,
                "{field}: garbage went unnoticed:\n{}\n{}",
                outcomes[0].stdout,
                outcomes[1].stdout
            );
        }
    }
}

/// A case: one that always runs, or one that may report itself not run (false).
#[derive(Clone, Copy)]
enum Case {
    Always(fn()),
    AsRoot(fn() -> bool),
}

impl Case {
    fn run(self) -> bool {
        match self {
            Case::Always(case) => {
                case();
                true
            }
            Case::AsRoot(case) => case(),
        }
    }
}

fn main() {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        child_main(&role);
        return;
    }
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let cases: &[(&str, Case)] = &[
        (
            "bad_arguments_are_refused",
            Case::Always(bad_arguments_are_refused),
        ),
        (
            "foreign_segments_are_refused",
            Case::Always(foreign_segments_are_refused),
        ),
        (
            "non_regular_files_are_refused",
            Case::Always(non_regular_files_are_refused),
        ),
        (
            "unfinished_header_is_reclaimed",
            Case::Always(unfinished_header_is_reclaimed),
        ),
        (
            "one_rank_group_decides_alone",
            Case::Always(one_rank_group_decides_alone),
        ),
        (
            "open_times_out_and_unlinks",
            Case::Always(open_times_out_and_unlinks),
        ),
        (
            "open_waits_for_late_ranks",
            Case::Always(open_waits_for_late_ranks),
        ),
        ("random_steps_2_ranks", Case::Always(random_steps_2_ranks)),
        ("random_steps_4_ranks", Case::Always(random_steps_4_ranks)),
        ("random_steps_8_ranks", Case::Always(random_steps_8_ranks)),
        (
            "v2_steps_match_the_host_path",
            Case::Always(v2_steps_match_the_host_path),
        ),
        (
            "differing_settings_fail_every_rank",
            Case::Always(differing_settings_fail_every_rank),
        ),
        (
            "the_straggler_is_reported",
            Case::Always(the_straggler_is_reported),
        ),
        (
            "set_graphs_while_stepping_is_busy",
            Case::Always(set_graphs_while_stepping_is_busy),
        ),
        (
            "corrupted_record_words_never_decide_differently",
            Case::Always(corrupted_record_words_never_decide_differently),
        ),
        (
            "two_groups_never_interfere",
            Case::Always(two_groups_never_interfere),
        ),
        (
            "peer_killed_wait_forever",
            Case::Always(peer_killed_wait_forever),
        ),
        (
            "peer_killed_with_timeout",
            Case::Always(peer_killed_with_timeout),
        ),
        (
            "peer_killed_behind_a_slow_rank",
            Case::Always(peer_killed_behind_a_slow_rank),
        ),
        (
            "peer_closes_is_peer_exited",
            Case::Always(peer_closes_is_peer_exited),
        ),
        ("peer_stops_is_timeout", Case::Always(peer_stops_is_timeout)),
        (
            "stale_segment_is_reclaimed",
            Case::Always(stale_segment_is_reclaimed),
        ),
        (
            "close_in_a_forked_child",
            Case::Always(close_in_a_forked_child),
        ),
        (
            "reused_pid_is_a_dead_member",
            Case::Always(reused_pid_is_a_dead_member),
        ),
        (
            "log_after_fork_names_the_child",
            Case::Always(log_after_fork_names_the_child),
        ),
        (
            "garbage_in_each_field_fails_the_step",
            Case::Always(garbage_in_each_field_fails_the_step),
        ),
        (
            "garbage_hammered_into_every_field",
            Case::Always(garbage_hammered_into_every_field),
        ),
        // Report themselves not run (with the reason) when not root.
        (
            "segment_of_another_user_is_refused",
            Case::AsRoot(segment_of_another_user_is_refused),
        ),
        (
            "pid_namespaces_never_mix",
            Case::AsRoot(pid_namespaces_never_mix),
        ),
        (
            "pid_namespace_of_its_own_works",
            Case::AsRoot(pid_namespace_of_its_own_works),
        ),
    ];
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--list") {
        for (name, _) in cases {
            println!("{name}: test");
        }
        return;
    }
    if args.iter().any(|a| a == "--ignored") {
        println!("host_group: no ignored cases");
        return;
    }
    let mut failed = Vec::new();
    let mut passed = 0;
    let mut not_run = 0;
    let selected = |n: &str| filter.as_deref().map_or(true, |f| n.contains(f));
    for &(name, case) in cases.iter().filter(|(n, _)| selected(n)) {
        let start = Instant::now();
        match std::panic::catch_unwind(|| case.run()) {
            Ok(true) => {
                passed += 1;
                println!(
                    "test {name} ... ok ({:.1} s)",
                    start.elapsed().as_secs_f64()
                );
            }
            Ok(false) => not_run += 1,
            Err(_) => {
                failed.push(name);
                println!("test {name} ... FAILED");
            }
        }
    }
    println!(
        "host_group: {passed} passed, {} failed, {not_run} not run",
        failed.len()
    );
    if !failed.is_empty() {
        println!("failed: {failed:?}");
        std::process::exit(1);
    }
}
