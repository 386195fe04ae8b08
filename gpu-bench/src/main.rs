//! `dpcoord-gpu-bench`: the GPU-path benchmark of DESIGN.md section 5.
//!
//! ```text
//! dpcoord-gpu-bench --ranks N [--iters 10000] [--warmup 1000] [--csv FILE]
//!                   [--deadline-s 300] [--variants a,b,...]
//! ```
//!
//! Rank 0 (this process) spawns ranks 1..N-1 as child processes of the same binary
//! (`DPCOORD_BENCH_RANK`, `DPCOORD_BENCH_DIR`, `DPCOORD_BENCH_DEADLINE_MS`), writes the NCCL
//! unique id into a temporary directory (atomically: write, then rename) and supervises the
//! children: a child that fails, or the deadline, ends the whole run and kills every child.
//! Each rank binds GPU `rank % device_count` (several ranks on one GPU get
//! `NCCL_HOSTID=rank<R>` and `NCCL_SOCKET_IFNAME=lo`; `NCCL_NVLS_ENABLE=0` always), builds a
//! communicator with [`nccl::Harness`], then every rank runs every variant in the same order,
//! with a barrier (a bare allgather + synchronize) between variants.
//!
//! Each call is timed with `std::time::Instant` around the call only (host wall time: the
//! latency a caller sees); inputs are prepared and results CHECKED outside the timed region.
//! Every rank derives every rank's request from (step, rank), so each checks its result
//! against `rules::decide` on all records; a mismatch aborts the run. Rank 0 prints median,
//! p99 and min per variant (its own samples, plus every rank's median) and appends CSV rows
//! `ranks,variant,iters,median_us,p99_us,min_us,gpus,ranks_share_gpu`.
//!
//! Safe Rust only: the driver and NCCL are reached through `dpcoord::cuda` / `dpcoord::nccl`.
#![forbid(unsafe_code)]

mod stages;

use std::fmt;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dpcoord::cuda::{self, DeviceBuffer, DevicePtr};
use dpcoord::ffi::{self, dp_batch_request, dp_batch_result, dp_status};
use dpcoord::kernels::RECORD_WORDS;
use dpcoord::nccl::{self, CommPtr, Nccl, UniqueId};
use dpcoord::rules::{self, Decision, RankRecord, Request, UbatchConfig};
use dpcoord::{coordinator, Error};

const ENV_RANK: &str = "DPCOORD_BENCH_RANK";
const ENV_DIR: &str = "DPCOORD_BENCH_DIR";
const ENV_DEADLINE: &str = "DPCOORD_BENCH_DEADLINE_MS";
const ID_FILE: &str = "nccl-unique-id";
const CSV_HEADER: &str = "ranks,variant,iters,median_us,p99_us,min_us,gpus,ranks_share_gpu";
/// `timeout_ms` of every request: long enough for loopback sockets, short of a hang.
const REQUEST_TIMEOUT_MS: i32 = 60_000;

const USAGE: &str = "usage: dpcoord-gpu-bench --ranks N [--iters 10000] [--warmup 1000] \
[--csv FILE] [--deadline-s 300] [--variants a,b,...] [--list]";

// ---------------------------------------------------------------------------------------
// Errors

/// A failure of the benchmark: the text says what and where.
#[derive(Debug)]
pub struct Fail(pub String);

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail(format!("{:?}: {e}", dp_status::from(e.kind)))
    }
}

impl From<std::io::Error> for Fail {
    fn from(e: std::io::Error) -> Self {
        Fail(format!("I/O error: {e}"))
    }
}

/// Returns early with a [`Fail`] built from a format string.
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::Fail(format!($($arg)*))) };
}
pub(crate) use bail;

pub type Res<T> = Result<T, Fail>;

// ---------------------------------------------------------------------------------------
// Command line

#[derive(Debug, Clone)]
struct Args {
    ranks: usize,
    iters: usize,
    warmup: usize,
    csv: Option<PathBuf>,
    deadline_s: u64,
    variants: Option<Vec<String>>,
    list: bool,
}

impl Args {
    fn parse() -> Res<Args> {
        let mut a = Args {
            ranks: 0,
            iters: 10_000,
            warmup: 1_000,
            csv: None,
            deadline_s: 300,
            variants: None,
            list: false,
        };
        let mut it = std::env::args().skip(1);
        while let Some(flag) = it.next() {
            if flag == "--list" {
                a.list = true;
                continue;
            }
            if flag == "-h" || flag == "--help" {
                println!("{USAGE}");
                std::process::exit(0);
            }
            let Some(value) = it.next() else {
                bail!("{flag} needs a value\n{USAGE}");
            };
            let number = |v: &str| {
                v.parse::<u64>()
                    .map_err(|_| Fail(format!("{flag} = {v:?} is not a number\n{USAGE}")))
            };
            match flag.as_str() {
                "--ranks" => a.ranks = number(&value)? as usize,
                "--iters" => a.iters = number(&value)? as usize,
                "--warmup" => a.warmup = number(&value)? as usize,
                "--deadline-s" => a.deadline_s = number(&value)?,
                "--csv" => a.csv = Some(PathBuf::from(value)),
                "--variants" => {
                    a.variants = Some(value.split(',').map(|s| s.trim().to_string()).collect())
                }
                _ => bail!("unknown argument {flag:?}\n{USAGE}"),
            }
        }
        if a.list {
            return Ok(a);
        }
        if a.ranks == 0 {
            bail!("--ranks N (N >= 1) is required\n{USAGE}");
        }
        if a.ranks > 1024 {
            bail!(
                "--ranks {} is more than this benchmark spawns (1024)",
                a.ranks
            );
        }
        if a.iters == 0 {
            bail!("--iters must be >= 1");
        }
        if let Some(v) = &a.variants {
            let known = variant_names(a.ranks.max(1));
            for name in v {
                if !known.iter().any(|k| k == name || base_name(k) == name) {
                    bail!("unknown variant {name:?}; known: {}", known.join(", "));
                }
            }
        }
        Ok(a)
    }
}

// ---------------------------------------------------------------------------------------
// Requests: every rank's request of a step, derived from (step, rank) alone

/// One step's requests of all ranks, their records, and the shared decision parameters.
pub struct StepPlan {
    pub requests: Vec<Request>,
    pub records: Vec<RankRecord>,
    pub pad_policy: i32,
    pub num_ubatches: i32,
}

/// splitmix64: a small, well-mixed deterministic generator step.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Realistic requests: mostly decode batches (1..256 tokens, padded to a CUDA-graph bucket
/// of 8, FULL graphs), some prefill / mixed batches (64..4159 tokens, PIECEWISE or NONE),
/// some idle ranks (0 tokens); microbatching configured on 3 steps in 4 (2 microbatches, 3
/// on 1 step in 8); pad policy EXPLICIT with `allow_dp_padding` agreed by all ranks.
pub fn step_plan(step: u64, n: usize) -> Res<StepPlan> {
    let h = mix(step ^ 0xD9C0_0D00_0000_0000);
    let ubatch = UbatchConfig {
        enabled: h % 4 != 0,
        num_ubatches: if (h >> 8) % 8 == 0 { 3 } else { 2 },
        decode_token_threshold: rules::DEFAULT_DECODE_TOKEN_THRESHOLD,
        prefill_token_threshold: rules::DEFAULT_PREFILL_TOKEN_THRESHOLD,
    };
    let allow_dp_padding = (h >> 16) % 3 != 0;
    let mut requests = Vec::with_capacity(n);
    let mut records = Vec::with_capacity(n);
    for rank in 0..n as u64 {
        let g = mix(h ^ (rank + 1).wrapping_mul(0xA24B_AED4_963E_E407));
        let kind = g % 16;
        let r = (g >> 8) as i32 & 0x7fff_ffff;
        let (tokens, uniform_decode) = match kind {
            0 => (0, 1),
            1 | 2 => (64 + r % 4096, 0),
            _ => (1 + r % 256, 1),
        };
        let (padded, mode) = if uniform_decode == 1 && tokens > 0 {
            let bucket = (tokens + 7) / 8 * 8;
            let mode = if (g >> 40) % 10 == 0 { 1 } else { 2 };
            (bucket, mode)
        } else if tokens == 0 {
            (-1, 2)
        } else {
            (-1, if tokens > 2048 { 0 } else { 1 })
        };
        let req = Request {
            num_tokens_unpadded: tokens,
            num_tokens_padded: padded,
            allow_microbatching: (g >> 48) % 8 != 0,
            allow_dp_padding,
            uniform_decode,
            cudagraph_mode: mode,
            pad_policy: rules::PAD_POLICY_EXPLICIT,
            ubatch,
            timeout_ms: REQUEST_TIMEOUT_MS,
            step_id: 0,
        };
        records.push(rules::make_record(&req)?);
        requests.push(req);
    }
    let num_ubatches = requests[0].effective_num_ubatches();
    Ok(StepPlan {
        requests,
        records,
        pad_policy: rules::PAD_POLICY_EXPLICIT,
        num_ubatches,
    })
}

/// The decision `rules::decide` reaches on `records` for `rank`, and the per-rank array the
/// GPU path returns (`should_dp_pad ? max padded : own padded`, also for one rank).
pub struct Expected {
    pub decision: Decision,
    pub array: Vec<i32>,
}

pub fn expect(records: &[RankRecord], rank: usize, pad_policy: i32, nub: i32) -> Res<Expected> {
    let decision = rules::decide(records, rank as i32, pad_policy, nub, None)?;
    let array = records
        .iter()
        .map(|r| {
            if decision.should_dp_pad {
                decision.max_num_tokens_padded
            } else {
                r.num_tokens_padded
            }
        })
        .collect();
    Ok(Expected { decision, array })
}

/// What a call returned, in one shape for every path.
pub struct Observed {
    pub should_ubatch: bool,
    pub should_dp_pad: bool,
    pub synced_cudagraph_mode: i32,
    pub num_tokens_after_padding_self: i32,
    pub max_num_tokens_padded: i32,
    pub min_num_tokens_unpadded: i32,
    /// (where, values) of every array the call returned.
    pub arrays: Vec<(&'static str, Vec<i32>)>,
}

/// Compares `got` with `want`; the error names the variant, step, field and both values.
pub fn compare(variant: &str, step: u64, got: &Observed, want: &Expected) -> Res<()> {
    let d = &want.decision;
    let scalars = [
        (
            "should_ubatch",
            i32::from(got.should_ubatch),
            i32::from(d.should_ubatch),
        ),
        (
            "should_dp_pad",
            i32::from(got.should_dp_pad),
            i32::from(d.should_dp_pad),
        ),
        (
            "synced_cudagraph_mode",
            got.synced_cudagraph_mode,
            d.synced_cudagraph_mode,
        ),
        (
            "num_tokens_after_padding_self",
            got.num_tokens_after_padding_self,
            d.num_tokens_after_padding_self,
        ),
        (
            "max_num_tokens_padded",
            got.max_num_tokens_padded,
            d.max_num_tokens_padded,
        ),
        (
            "min_num_tokens_unpadded",
            got.min_num_tokens_unpadded,
            d.min_num_tokens_unpadded,
        ),
    ];
    for (field, g, w) in scalars {
        if g != w {
            bail!("WRONG RESULT: {variant}, step {step:#x}: {field} = {g}, rules::decide says {w}");
        }
    }
    for (place, values) in &got.arrays {
        if values != &want.array {
            bail!(
                "WRONG RESULT: {variant}, step {step:#x}: {place} num_tokens_after_padding = \
                 {values:?}, rules::decide says {:?}",
                want.array
            );
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Per-rank context

/// Everything one rank's variants use.
pub struct Ctx {
    pub n: usize,
    pub rank: usize,
    pub nccl: &'static Nccl,
    pub comm: CommPtr,
    pub stream: cuda::Stream,
    pub kit: stages::Kit,
    ag_send: DeviceBuffer,
    ag_recv: DeviceBuffer,
    ar_send: DeviceBuffer,
    ar_recv: DeviceBuffer,
    x_send: DeviceBuffer,
    x_recv: DeviceBuffer,
    /// The name of the variant being run (for error messages).
    pub variant: String,
}

impl Ctx {
    fn new(n: usize, rank: usize, nccl: &'static Nccl, comm: CommPtr) -> Res<Ctx> {
        let stream = cuda::Stream::new()?;
        let kit = stages::Kit::new(n, rank, stream.as_ptr())?;
        let ctx = Ctx {
            n,
            rank,
            nccl,
            comm,
            kit,
            ag_send: DeviceBuffer::new(RECORD_WORDS)?,
            ag_recv: DeviceBuffer::new(RECORD_WORDS * n)?,
            ar_send: DeviceBuffer::new(RECORD_WORDS * n)?,
            ar_recv: DeviceBuffer::new(RECORD_WORDS * n)?,
            x_send: DeviceBuffer::new(RECORD_WORDS)?,
            x_recv: DeviceBuffer::new(RECORD_WORDS * n)?,
            stream,
            variant: String::new(),
        };
        // vLLM's [5, dp] matrix: zero everywhere but this rank's slot (written per step).
        for r in 0..n {
            let zero = RankRecord::default();
            ctx.kit
                .write_words(slot(ctx.ar_send.ptr(), r), &zero.to_words(), ctx.s())?;
        }
        cuda::synchronize(ctx.s())?;
        Ok(ctx)
    }

    /// The dedicated stream's handle.
    pub fn s(&self) -> cuda::StreamPtr {
        self.stream.as_ptr()
    }

    /// Allgathers five int32 per rank (on the dedicated stream, then synchronises): the
    /// barrier between variants and the way ranks share their figures.
    fn exchange(&self, values: [i32; RECORD_WORDS]) -> Res<Vec<[i32; RECORD_WORDS]>> {
        self.kit.write_words(self.x_send.ptr(), &values, self.s())?;
        self.nccl.all_gather_i32(
            self.x_send.ptr(),
            self.x_recv.ptr(),
            RECORD_WORDS,
            self.comm,
            self.s(),
        )?;
        cuda::synchronize(self.s())?;
        let mut flat = vec![0; RECORD_WORDS * self.n];
        cuda::copy_to_host(self.x_recv.ptr(), &mut flat)?;
        Ok(flat
            .chunks_exact(RECORD_WORDS)
            .map(|c| [c[0], c[1], c[2], c[3], c[4]])
            .collect())
    }
}

/// The device address of rank `r`'s record in a buffer of records.
pub fn slot(base: DevicePtr, r: usize) -> DevicePtr {
    base + (r * RECORD_WORDS * 4) as u64
}

/// The records' words, flattened.
pub fn flat_words(records: &[RankRecord]) -> Vec<i32> {
    records.iter().flat_map(RankRecord::to_words).collect()
}

/// Nanoseconds since `t0`, as a sample.
pub fn since(t0: Instant) -> u64 {
    t0.elapsed().as_nanos() as u64
}

// ---------------------------------------------------------------------------------------
// Variants

/// One timed step: prepares (untimed), calls (timed), checks (untimed); returns the ns.
pub type StepFn = fn(&mut Ctx, u64) -> Res<u64>;
/// Checks once, before the variant, that the device accepts what it uses.
pub type ProbeFn = fn(&mut Ctx) -> Res<()>;

pub struct Variant {
    pub name: String,
    pub step: StepFn,
    pub probe: Option<ProbeFn>,
}

/// The variants in the order every rank runs them.
fn variants(n: usize) -> Vec<Variant> {
    let early = if n == 1 { "_early_exit" } else { "" };
    let v = |name: &str, step: StepFn, probe: Option<ProbeFn>| Variant {
        name: name.to_string(),
        step,
        probe,
    };
    vec![
        v("bare_allgather_sync", bare_allgather_sync, None),
        v("bare_allreduce_sync", bare_allreduce_sync, None),
        v("dpcoord_forced_exchange", dpcoord_forced_exchange, None),
        v(
            &format!("dpcoord_default_stream{early}"),
            dpcoord_default_stream,
            None,
        ),
        v(
            &format!("dpcoord_dedicated_stream{early}"),
            dpcoord_dedicated_stream,
            None,
        ),
        v("stage_pack_kernel_sync", stages::pack_kernel_sync, None),
        v(
            "stage_pack_memops_sync",
            stages::pack_memops_sync,
            Some(stages::probe_write_value),
        ),
        v(
            "stage_pack_batch_memop_sync",
            stages::pack_batch_memop_sync,
            Some(stages::probe_batch_memop),
        ),
        v("stage_post_kernel_spin", stages::post_kernel_spin, None),
        v("stage_post_kernel_sync", stages::post_kernel_sync, None),
        v(
            "stage_post_kernel_event_sync",
            stages::post_kernel_event_sync,
            None,
        ),
        v("pipeline_spin", stages::pipeline_spin, None),
        v("pipeline_event_sync", stages::pipeline_event_sync, None),
        v("pipeline_stream_sync", stages::pipeline_stream_sync, None),
        v(
            "pipeline_memop_spin",
            stages::pipeline_memop_spin,
            Some(stages::probe_batch_memop),
        ),
        v("pipeline_host_decide", stages::pipeline_host_decide, None),
        v("stage_call_checks", stages::call_checks, None),
        v("stage_capture_check", stages::capture_check, None),
    ]
}

fn variant_names(n: usize) -> Vec<String> {
    variants(n).into_iter().map(|v| v.name).collect()
}

/// A name without the `_early_exit` label (what `--variants` may name).
fn base_name(name: &str) -> &str {
    name.strip_suffix("_early_exit").unwrap_or(name)
}

/// Floor: `ncclAllGather` of this rank's 5 int32 + `cuStreamSynchronize`.
fn bare_allgather_sync(ctx: &mut Ctx, step: u64) -> Res<u64> {
    let p = step_plan(step, ctx.n)?;
    ctx.kit
        .write_words(ctx.ag_send.ptr(), &p.records[ctx.rank].to_words(), ctx.s())?;
    cuda::synchronize(ctx.s())?;
    let t0 = Instant::now();
    ctx.nccl.all_gather_i32(
        ctx.ag_send.ptr(),
        ctx.ag_recv.ptr(),
        RECORD_WORDS,
        ctx.comm,
        ctx.s(),
    )?;
    cuda::synchronize(ctx.s())?;
    let ns = since(t0);
    check_exchanged(
        ctx,
        ctx.ag_recv.ptr(),
        &p.records,
        "bare_allgather_sync",
        step,
    )?;
    Ok(ns)
}

/// Checks that a bare exchange left every rank's record, in rank order, at `recv`.
fn check_exchanged(
    ctx: &Ctx,
    recv: DevicePtr,
    records: &[RankRecord],
    variant: &str,
    step: u64,
) -> Res<()> {
    let mut got = vec![0; RECORD_WORDS * ctx.n];
    cuda::copy_to_host(recv, &mut got)?;
    let want = flat_words(records);
    if got != want {
        bail!("WRONG RESULT: {variant}, step {step:#x}: exchanged {got:?}, expected {want:?}");
    }
    Ok(())
}

/// vLLM's exchange: `ncclAllReduce` (sum) of the `[5, dp]` int32 matrix + synchronize.
fn bare_allreduce_sync(ctx: &mut Ctx, step: u64) -> Res<u64> {
    let p = step_plan(step, ctx.n)?;
    ctx.kit.write_words(
        slot(ctx.ar_send.ptr(), ctx.rank),
        &p.records[ctx.rank].to_words(),
        ctx.s(),
    )?;
    cuda::synchronize(ctx.s())?;
    let harness = ctx.nccl.harness()?;
    let t0 = Instant::now();
    harness.all_reduce_sum_i32(
        ctx.nccl,
        (ctx.ar_send.ptr(), ctx.ar_recv.ptr()),
        RECORD_WORDS * ctx.n,
        ctx.comm,
        ctx.s(),
    )?;
    cuda::synchronize(ctx.s())?;
    let ns = since(t0);
    check_exchanged(
        ctx,
        ctx.ar_recv.ptr(),
        &p.records,
        "bare_allreduce_sync",
        step,
    )?;
    Ok(ns)
}

/// `coordinator::coordinate(.., force_exchange = true)` on the dedicated stream: the full GPU
/// path even on a one-rank communicator (DESIGN.md section 5's bench-only entry point).
fn dpcoord_forced_exchange(ctx: &mut Ctx, step: u64) -> Res<u64> {
    let p = step_plan(step, ctx.n)?;
    let req = p.requests[ctx.rank];
    let t0 = Instant::now();
    let out = coordinator::coordinate(ctx.comm, ctx.s(), &req, true)?;
    let ns = since(t0);
    let want = expect(&p.records, ctx.rank, p.pad_policy, p.num_ubatches)?;
    if out.dp_rank != ctx.rank as i32 || out.dp_size != ctx.n as i32 {
        bail!(
            "WRONG RESULT: {}, step {step:#x}: dp_rank/dp_size = {}/{}, expected {}/{}",
            ctx.variant,
            out.dp_rank,
            out.dp_size,
            ctx.rank,
            ctx.n
        );
    }
    if !out.decision.has_num_tokens_after_padding || out.device_array == 0 {
        bail!(
            "WRONG RESULT: {}, step {step:#x}: the forced exchange returned no arrays",
            ctx.variant
        );
    }
    let arrays = read_arrays(
        ctx,
        out.host_array as usize as DevicePtr,
        out.device_array,
        ctx.s(),
    )?;
    let d = out.decision;
    let got = Observed {
        should_ubatch: d.should_ubatch,
        should_dp_pad: d.should_dp_pad,
        synced_cudagraph_mode: d.synced_cudagraph_mode,
        num_tokens_after_padding_self: d.num_tokens_after_padding_self,
        max_num_tokens_padded: d.max_num_tokens_padded,
        min_num_tokens_unpadded: d.min_num_tokens_unpadded,
        arrays,
    };
    compare(&ctx.variant, step, &got, &want)?;
    Ok(ns)
}

/// `dp_coordinate_batch` (the C entry point) on the legacy default stream (NULL).
fn dpcoord_default_stream(ctx: &mut Ctx, step: u64) -> Res<u64> {
    ffi_step(ctx, step, std::ptr::null_mut())
}

/// `dp_coordinate_batch` (the C entry point) on the dedicated non-blocking stream.
fn dpcoord_dedicated_stream(ctx: &mut Ctx, step: u64) -> Res<u64> {
    let s = ctx.s();
    ffi_step(ctx, step, s)
}

fn c_request(r: &Request) -> dp_batch_request {
    dp_batch_request::from(r)
}

fn empty_result() -> dp_batch_result {
    dp_batch_result {
        struct_size: std::mem::size_of::<dp_batch_result>() as u32,
        should_ubatch: false,
        should_dp_pad: false,
        has_num_tokens_after_padding: false,
        synced_cudagraph_mode: -1,
        dp_rank: -1,
        dp_size: -1,
        num_tokens_after_padding_self: -1,
        max_num_tokens_padded: -1,
        min_num_tokens_unpadded: -1,
        num_tokens_after_padding: std::ptr::null(),
        num_tokens_after_padding_device: std::ptr::null(),
        step_id: -1,
    }
}

fn ffi_step(ctx: &mut Ctx, step: u64, stream: cuda::StreamPtr) -> Res<u64> {
    let p = step_plan(step, ctx.n)?;
    let req = c_request(&p.requests[ctx.rank]);
    let mut res = empty_result();
    let comm: *mut ffi::ncclComm = ctx.comm.cast();
    let t0 = Instant::now();
    let status = ffi::dp_coordinate_batch(comm, stream.cast(), &req, &mut res);
    let ns = since(t0);
    if status != dp_status::DP_OK {
        bail!(
            "{}: dp_coordinate_batch returned {status:?} at step {step:#x} (rank {}); the \
             forced-exchange variant reports the same failures with their full text",
            ctx.variant,
            ctx.rank
        );
    }
    let want = expect(&p.records, ctx.rank, p.pad_policy, p.num_ubatches)?;
    if res.dp_rank != ctx.rank as i32 || res.dp_size != ctx.n as i32 {
        bail!(
            "WRONG RESULT: {}, step {step:#x}: dp_rank/dp_size = {}/{}, expected {}/{}",
            ctx.variant,
            res.dp_rank,
            res.dp_size,
            ctx.rank,
            ctx.n
        );
    }
    let arrays = if ctx.n == 1 {
        // The early exit: no exchange and no arrays (DESIGN.md section 1).
        if res.has_num_tokens_after_padding
            || !res.num_tokens_after_padding.is_null()
            || !res.num_tokens_after_padding_device.is_null()
        {
            bail!(
                "WRONG RESULT: {}, step {step:#x}: dp_size 1 returned arrays",
                ctx.variant
            );
        }
        Vec::new()
    } else {
        if !res.has_num_tokens_after_padding
            || res.num_tokens_after_padding.is_null()
            || res.num_tokens_after_padding_device.is_null()
        {
            bail!(
                "WRONG RESULT: {}, step {step:#x}: dp_size {} returned no arrays",
                ctx.variant,
                ctx.n
            );
        }
        read_arrays(
            ctx,
            res.num_tokens_after_padding as usize as DevicePtr,
            res.num_tokens_after_padding_device as usize as DevicePtr,
            stream,
        )?
    };
    let got = Observed {
        should_ubatch: res.should_ubatch,
        should_dp_pad: res.should_dp_pad,
        synced_cudagraph_mode: res.synced_cudagraph_mode,
        num_tokens_after_padding_self: res.num_tokens_after_padding_self,
        max_num_tokens_padded: res.max_num_tokens_padded,
        min_num_tokens_unpadded: res.min_num_tokens_unpadded,
        arrays,
    };
    compare(&ctx.variant, step, &got, &want)?;
    Ok(ns)
}

/// Reads a result's host array (through unified addressing) and, once `stream` is
/// synchronised, its device array.
fn read_arrays(
    ctx: &Ctx,
    host: DevicePtr,
    device: DevicePtr,
    stream: cuda::StreamPtr,
) -> Res<Vec<(&'static str, Vec<i32>)>> {
    let mut host_values = vec![0; ctx.n];
    cuda::copy_unified_to_host(host, &mut host_values)?;
    cuda::synchronize(stream)?;
    let mut device_values = vec![0; ctx.n];
    cuda::copy_to_host(device, &mut device_values)?;
    Ok(vec![("host", host_values), ("device", device_values)])
}

// ---------------------------------------------------------------------------------------
// Running the variants

/// One variant's figures on one rank, in ns.
#[derive(Debug, Clone, Copy)]
struct Stats {
    median: u64,
    p99: u64,
    min: u64,
}

fn stats(samples: &mut [u64]) -> Stats {
    samples.sort_unstable();
    let n = samples.len();
    let p99_index = ((n as f64) * 0.99).ceil() as usize;
    Stats {
        median: samples[n / 2],
        p99: samples[p99_index.clamp(1, n) - 1],
        min: samples[0],
    }
}

/// What rank 0 reports for one variant.
struct Row {
    variant: String,
    iters: usize,
    /// None: the device refused what the variant uses (`note` says why).
    stats: Option<Stats>,
    per_rank_median_ns: Vec<i64>,
    note: String,
}

fn clamp_i32(ns: u64) -> i32 {
    ns.min(i32::MAX as u64) as i32
}

fn run_variants(ctx: &mut Ctx, args: &Args) -> Res<Vec<Row>> {
    let mut rows = Vec::new();
    for (index, v) in variants(ctx.n).into_iter().enumerate() {
        if let Some(only) = &args.variants {
            if !only.iter().any(|o| o == &v.name || o == base_name(&v.name)) {
                continue;
            }
        }
        ctx.variant = v.name.clone();
        // Barrier, and a check that every rank is at the same variant.
        let at = ctx.exchange([index as i32, 0, 0, 0, 0])?;
        if at.iter().any(|a| a[0] != index as i32) {
            bail!(
                "ranks disagree on the variant: {:?}",
                at.iter().map(|a| a[0]).collect::<Vec<_>>()
            );
        }
        let refused = match v.probe {
            Some(probe) => probe(ctx).err(),
            None => None,
        };
        let votes = ctx.exchange([i32::from(refused.is_some()), 0, 0, 0, 0])?;
        if votes.iter().any(|x| x[0] != 0) {
            let note = match refused {
                Some(why) => format!("refused by the device: {why}"),
                None => "refused by the device on another rank".to_string(),
            };
            if ctx.rank == 0 {
                println!("  {:<40} REFUSED: {note}", v.name);
            }
            rows.push(Row {
                variant: v.name,
                iters: 0,
                stats: None,
                per_rank_median_ns: Vec::new(),
                note,
            });
            continue;
        }
        let mut samples = Vec::with_capacity(args.iters);
        let base = ((index as u64 + 1) << 40) ^ ((ctx.n as u64) << 56);
        for i in 0..(args.warmup + args.iters) {
            let ns = (v.step)(ctx, base + i as u64)?;
            if i >= args.warmup {
                samples.push(ns);
            }
        }
        let s = stats(&mut samples);
        let all = ctx.exchange([
            clamp_i32(s.median),
            clamp_i32(s.p99),
            clamp_i32(s.min),
            0,
            0,
        ])?;
        let per_rank: Vec<i64> = all.iter().map(|a| i64::from(a[0])).collect();
        if ctx.rank == 0 {
            println!(
                "  {:<40} median {:>10.2} us  p99 {:>10.2} us  min {:>10.2} us  per-rank medians {}",
                v.name,
                s.median as f64 / 1e3,
                s.p99 as f64 / 1e3,
                s.min as f64 / 1e3,
                per_rank
                    .iter()
                    .map(|&m| format!("{:.2}", m as f64 / 1e3))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
        }
        rows.push(Row {
            variant: v.name,
            iters: args.iters,
            stats: Some(s),
            per_rank_median_ns: per_rank,
            note: String::new(),
        });
    }
    Ok(rows)
}

/// Everything one rank does once it has the unique id; rank 0 gets the rows back.
fn run_rank(args: &Args, rank: usize, gpus: usize, id: UniqueId) -> Res<Vec<Row>> {
    let device = (rank % gpus) as i32;
    cuda::bind_device(device)?;
    let nccl = nccl::nccl()?;
    let harness = nccl.harness()?;
    let comm = harness.init_rank(nccl, args.ranks as i32, id, rank as i32)?;
    if rank == 0 {
        println!(
            "communicator ready: {} ranks; NCCL {} ({}{})",
            args.ranks,
            nccl.version(),
            nccl.origin(),
            nccl.library_path()
                .map(|p| format!(", {p}"))
                .unwrap_or_default()
        );
    }
    let outcome = (|| {
        let mut ctx = Ctx::new(args.ranks, rank, nccl, comm)?;
        let rows = run_variants(&mut ctx, args)?;
        cuda::synchronize(ctx.s())?;
        Ok(rows)
    })();
    // Tear down in order: dpcoord's cached state, then the communicator.
    let released = ffi::dp_release(comm.cast());
    if outcome.is_ok() {
        if released != dp_status::DP_OK {
            bail!("dp_release returned {released:?}");
        }
        harness.destroy(nccl, comm)?;
    }
    outcome
}

// ---------------------------------------------------------------------------------------
// Processes

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The NCCL environment of `rank`: one GPU per rank, or loopback sockets between ranks
/// sharing a GPU (each its own NCCL_HOSTID); NVLink SHARP off.
fn nccl_env(rank: usize, share: bool) -> Vec<(String, String)> {
    let mut env = Vec::new();
    if std::env::var_os("NCCL_NVLS_ENABLE").is_none() {
        env.push(("NCCL_NVLS_ENABLE".into(), "0".into()));
    }
    if share {
        env.push(("NCCL_HOSTID".into(), format!("rank{rank}")));
        if std::env::var_os("NCCL_SOCKET_IFNAME").is_none() {
            env.push(("NCCL_SOCKET_IFNAME".into(), "lo".into()));
        }
    }
    env
}

/// Rank 0's view of its children: a thread that ends the whole run when one fails or the
/// deadline passes.
struct Supervisor {
    children: Arc<Mutex<Vec<(usize, Child)>>>,
    done: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    dir: PathBuf,
}

fn kill_all(children: &Mutex<Vec<(usize, Child)>>) {
    let mut list = children.lock().unwrap_or_else(|e| e.into_inner());
    for (_, child) in list.iter_mut() {
        let _ = child.kill();
    }
    for (_, child) in list.iter_mut() {
        let _ = child.wait();
    }
    list.clear();
}

impl Supervisor {
    fn start(dir: PathBuf, deadline_ms: u64) -> Supervisor {
        let children: Arc<Mutex<Vec<(usize, Child)>>> = Arc::new(Mutex::new(Vec::new()));
        let done = Arc::new(AtomicBool::new(false));
        let (c, d, dir2) = (Arc::clone(&children), Arc::clone(&done), dir.clone());
        let thread = std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(20));
            if d.load(Ordering::Acquire) {
                return;
            }
            let failure = {
                let mut list = c.lock().unwrap_or_else(|e| e.into_inner());
                let mut failure = None;
                list.retain_mut(|(rank, child)| match child.try_wait() {
                    Ok(Some(status)) if status.success() => false,
                    Ok(Some(status)) => {
                        failure.get_or_insert(format!("rank {rank} failed ({status})"));
                        false
                    }
                    Ok(None) => true,
                    Err(e) => {
                        failure.get_or_insert(format!("rank {rank}: cannot poll: {e}"));
                        true
                    }
                });
                failure
            };
            let failure = failure.or_else(|| {
                (now_ms() >= deadline_ms).then(|| {
                    "the deadline (--deadline-s) passed: some rank is stuck (in a collective?)"
                        .to_string()
                })
            });
            if let Some(why) = failure {
                eprintln!("dpcoord-gpu-bench: aborting the run: {why}; killing every rank");
                kill_all(&c);
                let _ = std::fs::remove_dir_all(&dir2);
                let _ = std::io::stdout().flush();
                // Rank 0's main thread may be blocked inside NCCL: end the process now.
                std::process::abort();
            }
        });
        Supervisor {
            children,
            done,
            thread: Some(thread),
            dir,
        }
    }

    fn add(&self, rank: usize, child: Child) {
        self.children
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((rank, child));
    }

    /// Waits for the children to exit (the watcher still enforces the deadline).
    fn finish(mut self) -> Res<()> {
        loop {
            let left = self
                .children
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len();
            if left == 0 {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop();
        Ok(())
    }

    fn stop(&mut self) {
        self.done.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        // Failure paths: no child may outlive rank 0.
        self.stop();
        kill_all(&self.children);
    }
}

fn rank0(args: &Args) -> Res<()> {
    // Driver and NCCL first: a clear error before anything is spawned.
    let gpus = cuda::device_count()? as usize;
    if gpus == 0 {
        bail!("DP_ERR_LIBRARY_UNAVAILABLE: the CUDA driver reports no GPU");
    }
    let share = args.ranks > gpus;
    for (k, v) in nccl_env(0, share) {
        std::env::set_var(k, v);
    }
    let nccl = nccl::nccl()?;
    let harness = nccl.harness()?;
    let used = gpus.min(args.ranks);
    println!(
        "dpcoord-gpu-bench: ranks {} on {used} GPU(s) of {gpus} ({}), {}; iters {}, warmup {}; \
         NCCL_NVLS_ENABLE={}",
        args.ranks,
        cuda::device_name(0).unwrap_or_else(|e| format!("name unknown: {e}")),
        if share {
            "ranks SHARE GPUs: NCCL_HOSTID per rank, loopback sockets (correct, slow)"
        } else {
            "one GPU per rank"
        },
        args.iters,
        args.warmup,
        std::env::var("NCCL_NVLS_ENABLE").unwrap_or_default()
    );

    let deadline_ms = now_ms() + args.deadline_s * 1000;
    let dir = std::env::temp_dir().join(format!(
        "dpcoord-gpu-bench-{}-{}",
        std::process::id(),
        now_ms()
    ));
    std::fs::create_dir(&dir)?;
    let sup = Supervisor::start(dir.clone(), deadline_ms);
    let exe = std::env::current_exe()?;
    for r in 1..args.ranks {
        let mut cmd = Command::new(&exe);
        cmd.args(std::env::args_os().skip(1))
            .env(ENV_RANK, r.to_string())
            .env(ENV_DIR, &dir)
            .env(ENV_DEADLINE, deadline_ms.to_string());
        for (k, v) in nccl_env(r, share) {
            cmd.env(k, v);
        }
        let child = cmd
            .spawn()
            .map_err(|e| Fail(format!("cannot spawn rank {r} ({}): {e}", exe.display())))?;
        sup.add(r, child);
    }
    let id = harness.unique_id(nccl)?;
    let tmp = dir.join(format!("{ID_FILE}.tmp"));
    std::fs::write(&tmp, id.internal)?;
    std::fs::rename(&tmp, dir.join(ID_FILE))?;

    let rows = run_rank(args, 0, gpus, id)?;
    sup.finish()?;
    if let Some(csv) = &args.csv {
        write_csv(csv, args, &rows, used, share)?;
        println!("appended {} rows to {}", rows.len(), csv.display());
    }
    print_table(args, &rows, used, share);
    Ok(())
}

fn child(args: &Args, rank: usize) -> Res<()> {
    let dir = PathBuf::from(
        std::env::var_os(ENV_DIR).ok_or_else(|| Fail(format!("{ENV_DIR} is not set")))?,
    );
    let deadline_ms: u64 = std::env::var(ENV_DEADLINE)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Fail(format!("{ENV_DEADLINE} is not set")))?;
    // Watchdog: a child never outlives its parent or the deadline.
    let parent = std::os::unix::process::parent_id();
    std::thread::spawn(move || loop {
        std::thread::sleep(Duration::from_millis(100));
        if std::os::unix::process::parent_id() != parent {
            eprintln!("dpcoord-gpu-bench rank {rank}: rank 0 is gone; aborting");
            std::process::abort();
        }
        if now_ms() >= deadline_ms + 2_000 {
            eprintln!("dpcoord-gpu-bench rank {rank}: past the deadline; aborting");
            std::process::abort();
        }
    });
    let gpus = cuda::device_count()? as usize;
    if gpus == 0 {
        bail!("the CUDA driver reports no GPU");
    }
    let id = read_id(&dir.join(ID_FILE), deadline_ms)?;
    run_rank(args, rank, gpus, id).map(|_| ())
}

fn read_id(path: &Path, deadline_ms: u64) -> Res<UniqueId> {
    loop {
        match std::fs::read(path) {
            Ok(bytes) => {
                let internal: [u8; 128] = bytes.as_slice().try_into().map_err(|_| {
                    Fail(format!(
                        "{} holds {} bytes, not 128",
                        path.display(),
                        bytes.len()
                    ))
                })?;
                return Ok(UniqueId { internal });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e.into()),
        }
        if now_ms() >= deadline_ms {
            bail!(
                "no NCCL unique id at {} before the deadline",
                path.display()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

// ---------------------------------------------------------------------------------------
// Output

fn us(ns: u64) -> String {
    format!("{:.3}", ns as f64 / 1e3)
}

fn write_csv(path: &Path, args: &Args, rows: &[Row], gpus: usize, share: bool) -> Res<()> {
    let fresh = std::fs::metadata(path)
        .map(|m| m.len() == 0)
        .unwrap_or(true);
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    if fresh {
        writeln!(f, "{CSV_HEADER}")?;
    }
    for r in rows {
        let (median, p99, min) = match r.stats {
            Some(s) => (us(s.median), us(s.p99), us(s.min)),
            None => (String::new(), String::new(), String::new()),
        };
        writeln!(
            f,
            "{},{},{},{median},{p99},{min},{gpus},{}",
            args.ranks,
            r.variant,
            r.iters,
            u8::from(share)
        )?;
    }
    Ok(())
}

fn find<'a>(rows: &'a [Row], name: &str) -> Option<&'a Stats> {
    rows.iter()
        .find(|r| r.variant == name)
        .and_then(|r| r.stats.as_ref())
}

fn print_table(args: &Args, rows: &[Row], gpus: usize, share: bool) {
    println!();
    println!(
        "ranks {} | GPUs {gpus} | ranks share a GPU: {} | iters {} (after {} warm-up) | \
         host wall time per call, rank 0's samples",
        args.ranks,
        if share {
            "yes (loopback sockets)"
        } else {
            "no"
        },
        args.iters,
        args.warmup
    );
    println!(
        "{:<40} {:>7} {:>12} {:>12} {:>12}  per-rank median (us)",
        "variant", "iters", "median_us", "p99_us", "min_us"
    );
    for r in rows {
        match r.stats {
            Some(s) => println!(
                "{:<40} {:>7} {:>12} {:>12} {:>12}  {}",
                r.variant,
                r.iters,
                us(s.median),
                us(s.p99),
                us(s.min),
                r.per_rank_median_ns
                    .iter()
                    .map(|&m| us(m.max(0) as u64))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
            None => println!("{:<40} {:>7} {}", r.variant, 0, r.note),
        }
    }
    let dpcoord = if args.ranks == 1 {
        "dpcoord_forced_exchange"
    } else {
        "dpcoord_dedicated_stream"
    };
    if let (Some(d), Some(b)) = (find(rows, dpcoord), find(rows, "bare_allgather_sync")) {
        println!(
            "{dpcoord} - bare_allgather_sync = {:+.2} us (median; target <= 8 us on one H200), \
             ratio {:.3} (target <= 1.25 across GPUs)",
            (d.median as f64 - b.median as f64) / 1e3,
            d.median as f64 / b.median as f64
        );
    }
}

fn main() -> ExitCode {
    let rank: usize = std::env::var(ENV_RANK)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let args = match Args::parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("dpcoord-gpu-bench: {e}");
            return ExitCode::from(2);
        }
    };
    if args.list {
        for name in variant_names(args.ranks.max(1)) {
            println!("{name}");
        }
        return ExitCode::SUCCESS;
    }
    let outcome = if rank == 0 {
        rank0(&args)
    } else {
        child(&args, rank)
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dpcoord-gpu-bench rank {rank}: error: {e}");
            // 3: no CUDA driver / GPU / NCCL here (the script tells that apart from a failure).
            if e.0.contains("DP_ERR_LIBRARY_UNAVAILABLE") {
                ExitCode::from(3)
            } else {
                ExitCode::from(1)
            }
        }
    }
}
