//! The host group's per-call latency across processes on one host: one process per rank,
//! each timing every `dp_host_group_coordinate` of a step loop; the samples of every rank are
//! pooled and the median and p99 printed (its Open MPI counterpart is `mpi_allgather.c`;
//! `run.sh` runs both, side by side).
//!
//! `dpcoord-host-bench [--ranks 2,4,8] [--iters 20000] [--warmup 2000] [--pin]`
//! (`--pin` puts rank r on CPU r).

use std::ffi::CString;
use std::mem::MaybeUninit;
use std::process::{Command, Stdio};
use std::time::Instant;

use dpcoord::ffi::*;

const ROLE_ENV: &str = "DPCOORD_HOST_BENCH_RANK";

fn main() {
    if let Ok(role) = std::env::var(ROLE_ENV) {
        rank_main(&role);
        return;
    }
    let args: Vec<String> = std::env::args().collect();
    let value = |flag: &str, default: &str| {
        args.iter()
            .position(|a| a == flag)
            .map_or(default.to_string(), |i| args[i + 1].clone())
    };
    let ranks: Vec<usize> = value("--ranks", "2,4,8")
        .split(',')
        .map(|r| r.parse().expect("--ranks: comma-separated counts"))
        .collect();
    let iters: usize = value("--iters", "20000").parse().expect("--iters");
    let warmup: usize = value("--warmup", "2000").parse().expect("--warmup");
    let pin = args.iter().any(|a| a == "--pin");
    for n in ranks {
        let name = format!("bench{}-{n}", std::process::id());
        let children: Vec<_> = (0..n)
            .map(|r| {
                Command::new(std::env::current_exe().unwrap())
                    .env(
                        ROLE_ENV,
                        format!("{name} {n} {r} {iters} {warmup} {}", u8::from(pin)),
                    )
                    .stdout(Stdio::piped())
                    .spawn()
                    .expect("spawn a rank")
            })
            .collect();
        let mut samples: Vec<u64> = Vec::with_capacity(n * iters);
        for (r, child) in children.into_iter().enumerate() {
            let out = child.wait_with_output().expect("rank output");
            assert!(out.status.success(), "rank {r} failed: {:?}", out.status);
            samples.extend(
                String::from_utf8_lossy(&out.stdout)
                    .split_ascii_whitespace()
                    .map(|s| s.parse::<u64>().expect("a sample in ns")),
            );
        }
        samples.sort_unstable();
        let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize] as f64 / 1e3;
        println!(
            "hostgroup ranks={n} calls={} median_us={:.2} p99_us={:.2} pin={}",
            samples.len(),
            at(0.5),
            at(0.99),
            u8::from(pin)
        );
    }
}

/// One rank: open, warm up, time `iters` steps, print every sample (ns), close.
fn rank_main(role: &str) {
    let w: Vec<&str> = role.split(' ').collect();
    let (name, n, r) = (
        w[0],
        w[1].parse::<i32>().unwrap(),
        w[2].parse::<i32>().unwrap(),
    );
    let (iters, warmup) = (
        w[3].parse::<usize>().unwrap(),
        w[4].parse::<usize>().unwrap(),
    );
    if w[5] == "1" {
        pin_to_cpu(r as usize);
    }
    let cname = CString::new(name).unwrap();
    let mut g = std::ptr::null_mut();
    let s = dp_host_group_open(cname.as_ptr(), n, r, 60_000, &mut g);
    assert_eq!(s, dp_status::DP_OK, "open");
    let mut req = MaybeUninit::<dp_batch_request>::uninit();
    dp_batch_request_init(req.as_mut_ptr());
    // SAFETY: dp_batch_request_init wrote every field.
    let mut req = unsafe { req.assume_init() };
    req.num_tokens_unpadded = 100 + r;
    req.num_tokens_padded = 128;
    req.allow_microbatching = true;
    req.uniform_decode = 1;
    req.ubatch.enabled = true;
    req.cudagraph_mode = 2;
    req.pad_policy = DP_PAD_POLICY_WHEN_CUDAGRAPH;
    req.timeout_ms = 10_000;
    let mut res = MaybeUninit::<dp_batch_result>::uninit();
    dp_batch_result_init(res.as_mut_ptr());
    // SAFETY: dp_batch_result_init wrote every field.
    let mut res = unsafe { res.assume_init() };
    let mut samples = vec![0u64; iters];
    for i in 0..warmup + iters {
        req.step_id = i as i64 + 1;
        let t0 = Instant::now();
        let s = dp_host_group_coordinate(g, &req, &mut res);
        let dt = t0.elapsed().as_nanos() as u64;
        assert_eq!(s, dp_status::DP_OK, "step {i}");
        if i >= warmup {
            samples[i - warmup] = dt;
        }
    }
    assert!(n == 1 || (res.should_dp_pad && res.max_num_tokens_padded == 128));
    assert_eq!(dp_host_group_close(g), dp_status::DP_OK);
    let text: Vec<String> = samples.iter().map(u64::to_string).collect();
    println!("{}", text.join(" "));
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET and sched_setaffinity only
    // touch it and this process's affinity.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu % libc::CPU_SETSIZE as usize, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}
