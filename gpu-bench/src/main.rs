//! dpcoord-gpu-bench: dpcoord's GPU path against the bare collective, on the GPU machine.
//!
//! Ranks follow the GoogleTest suite's launcher convention (`cpp_tests/gpu/launcher.cpp`):
//! `DPCOORD_RANK`, `DPCOORD_NRANKS`, `DPCOORD_DEVICE` and `DPCOORD_RENDEZVOUS` (rank 0 writes
//! the NCCL unique id there); run alone it is a one-rank world. So one rank on one H200:
//!
//!     dpcoord-gpu-bench [--iters 10000] [--warmup 1000] [--csv FILE] [--variants a,b]
//!
//! and N ranks: `dpcoord_gpu_launcher --ranks N -- dpcoord-gpu-bench ...`.
//!
//! Every variant runs on every rank in the same order, each iteration timed on the host
//! (wall clock around the call, which includes waiting for the GPU), medians reported by rank
//! 0. Every dpcoord result is checked against `rules::decide` (V2: `rules::decide_v2`) on
//! every rank's record (each rank derives all records from (step, rank), the generator
//! `torch_reference.py` shares); a mismatch fails the run. Variants (the send path of each says where NCCL reads the slot):
//! - `bare_allgather_sync`: `ncclAllGather` of the 96-byte slot, device buffers, +
//!   `cuStreamSynchronize`: the floor.
//! - `bare_allgather_hostsend_sync`: the same with the send buffer in mapped pinned memory.
//! - `stage_post_kernel_spin`: the post kernel alone on gathered slots + host spin.
//! - `stage_hostsend_allgather_post_spin`: host write of the slot into mapped memory,
//!   allgather, post kernel, spin: the library's sequence without its checks.
//! - `stage_enqueue_allgather_launch_host_time`: the host time of that sequence's enqueue
//!   alone (a bare `ncclAllGather` enqueue + one kernel launch: what `begin` is held to).
//! - `dpcoord_forced_host_send`: `dp_coordinate_batch` end to end (C request read, begin,
//!   end, C result written) on a coordinator that runs the GPU path even at one rank, host
//!   send path (the default).
//! - `dpcoord_forced_device_send`: the same, `DPCOORD_SEND_BUFFER=device` path.
//! - `dpcoord_forced_v1_v2_slot`: two rows from one loop, the same forced exchange (host send
//!   path) alternating step by step (the order flips every step) between a V1 request and a
//!   V2 request on a coordinator given a vLLM-style graph table (`dp_coordinator_set_graphs`:
//!   102 graphs, FULL_AND_PIECEWISE defaults for 512 sequences, decode query length 1), so the
//!   V2 slot (its dispatch on the host and in the kernel) is compared with the V1 slot in one
//!   run: `dpcoord_forced_v1_slot` and `dpcoord_forced_v2_slot`. Every V2 result is checked
//!   against `rules::decide_v2` with the same table.
//! - `dpcoord_begin_host_time`: `begin` alone (its host time); the end is untimed.
//! - `dpcoord_end_after_finished`: `end` once the exchange has finished (poll said so).
//! - `dp_coordinate_batch`: the exported C function on the communicator (at one rank: its
//!   early exit, no GPU work).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use dpcoord::ffi::{self, dp_batch_request, dp_batch_result, dp_status};
use dpcoord::rules::{self, Decision, Graph, GraphTable, RankRecord, V2Config};
use dpcoord::testing::{
    self, CommHandle, DeviceWords, ForcedCoordinator, Harness, MappedWords, PostKit, SendPath,
    Stream, StreamHandle, UniqueId, SLOT_WORDS,
};

type Res<T> = Result<T, String>;

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

const SPIN_LIMIT: Duration = Duration::from_secs(30);
const REQUEST_TIMEOUT_MS: i32 = 30_000;

struct Args {
    iters: usize,
    warmup: usize,
    csv: Option<PathBuf>,
    variants: Option<Vec<String>>,
}

fn parse_args() -> Res<Args> {
    let mut a = Args {
        iters: 10_000,
        warmup: 1_000,
        csv: None,
        variants: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--iters" => a.iters = value()?.parse().map_err(err)?,
            "--warmup" => a.warmup = value()?.parse().map_err(err)?,
            "--csv" => a.csv = Some(value()?.into()),
            "--variants" => a.variants = Some(value()?.split(',').map(String::from).collect()),
            other => return Err(format!("unknown argument {other}")),
        }
    }
    Ok(a)
}

fn env_usize(name: &str, default: usize) -> Res<usize> {
    match std::env::var(name) {
        Ok(v) if !v.is_empty() => v.parse().map_err(|_| format!("bad {name}={v}")),
        _ => Ok(default),
    }
}

// ---- requests: the same generator as torch_reference.py (splitmix64 over (step, rank)) ----

fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Every rank's request for `step` (a C request, as an engine passes it): mostly decode
/// batches padded to a bucket of 8, some prefill, some idle ranks; microbatching on 3 steps
/// in 4; EXPLICIT padding agreed by all.
fn step_requests(step: u64, n: usize) -> Vec<dp_batch_request> {
    let h = mix(step ^ 0xD9C0_0D00_0000_0000);
    (0..n as u64)
        .map(|rank| {
            let g = mix(h ^ (rank + 1).wrapping_mul(0xA24B_AED4_963E_E407));
            let r = (g >> 8) as i32 & 0x7fff_ffff;
            let (tokens, uniform_decode) = match g % 16 {
                0 => (0, 1),
                1 | 2 => (64 + r % 4096, 0),
                _ => (1 + r % 256, 1),
            };
            let (padded, mode) = if uniform_decode == 1 && tokens > 0 {
                (
                    (tokens + 7) / 8 * 8,
                    if (g >> 40) % 10 == 0 { 1 } else { 2 },
                )
            } else if tokens == 0 {
                (-1, 2)
            } else {
                (-1, if tokens > 2048 { 0 } else { 1 })
            };
            let mut q = std::mem::MaybeUninit::<dp_batch_request>::zeroed();
            ffi::dp_batch_request_init(q.as_mut_ptr());
            // SAFETY: initialised by dp_batch_request_init.
            let defaults = unsafe { q.assume_init() };
            dp_batch_request {
                num_tokens_unpadded: tokens,
                num_tokens_padded: padded,
                allow_microbatching: (g >> 48) % 8 != 0,
                allow_dp_padding: (h >> 16) % 3 != 0,
                uniform_decode,
                cudagraph_mode: mode,
                pad_policy: rules::DP_PAD_POLICY_EXPLICIT,
                ubatch: ffi::dp_ubatch_config {
                    enabled: h % 4 != 0,
                    num_ubatches: if (h >> 8) % 8 == 0 { 3 } else { 2 },
                    decode_token_threshold: rules::DEFAULT_DECODE_TOKEN_THRESHOLD,
                    prefill_token_threshold: rules::DEFAULT_PREFILL_TOKEN_THRESHOLD,
                },
                timeout_ms: REQUEST_TIMEOUT_MS,
                step_id: step as i64 + 1,
                ..defaults
            }
        })
        .collect()
}

/// `dp_make_record` of a C request (the C API's own reading of it).
fn record_of(q: &dp_batch_request) -> Res<RankRecord> {
    let mut r = RankRecord::default();
    match ffi::dp_make_record(q, &mut r) {
        dp_status::DP_OK => Ok(r),
        st => Err(format!("dp_make_record: {st:?}: {}", last_error())),
    }
}

fn num_ubatches(q: &dp_batch_request) -> i32 {
    if q.ubatch.enabled {
        q.ubatch.num_ubatches
    } else {
        2
    }
}

/// The decision and per-rank array rules::decide gives (the GPU path's array is
/// `should_dp_pad ? max padded : own padded`, also at one rank).
fn expected(reqs: &[dp_batch_request], rank: usize) -> Res<(Decision, Vec<i32>)> {
    let records: Vec<RankRecord> = reqs.iter().map(record_of).collect::<Res<_>>()?;
    let r = &reqs[0];
    let d =
        rules::decide(&records, rank as i32, r.pad_policy, num_ubatches(r), None).map_err(err)?;
    let array = records
        .iter()
        .map(|x| {
            if d.should_dp_pad {
                d.max_num_tokens_padded
            } else {
                x.num_tokens_padded
            }
        })
        .collect();
    Ok((d, array))
}

fn check(
    variant: &str,
    step: u64,
    got: &dp_batch_result,
    reqs: &[dp_batch_request],
    rank: usize,
) -> Res<()> {
    let (d, array) = expected(reqs, rank)?;
    let pairs = [
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
            "self",
            got.num_tokens_after_padding_self,
            d.num_tokens_after_padding_self,
        ),
        (
            "max_padded",
            got.max_num_tokens_padded,
            d.max_num_tokens_padded,
        ),
        (
            "min_unpadded",
            got.min_num_tokens_unpadded,
            d.min_num_tokens_unpadded,
        ),
    ];
    for (field, g, w) in pairs {
        if g != w {
            return Err(format!(
                "WRONG RESULT: {variant}, step {step}: {field} = {g}, rules::decide says {w}"
            ));
        }
    }
    if got.step_id != reqs[0].step_id {
        return Err(format!(
            "WRONG RESULT: {variant}, step {step}: step_id {}",
            got.step_id
        ));
    }
    if got.has_num_tokens_after_padding {
        // SAFETY: the library's host array of dp_size entries, valid until the next call.
        let host = unsafe { std::slice::from_raw_parts(got.num_tokens_after_padding, reqs.len()) };
        if host != array.as_slice() {
            return Err(format!(
                "WRONG RESULT: {variant}, step {step}: array {host:?}, want {array:?}"
            ));
        }
    }
    Ok(())
}

/// The graph table of the V2 variant: vLLM 0.34.0's default capture sizes for
/// FULL_AND_PIECEWISE, 512 sequences, 2048 batched tokens, no speculation (sizes 1, 2, 4, then
/// every 8 up to 248, then every 16 up to 512): a PIECEWISE graph of each size and a FULL
/// uniform-decode graph of each request count, 102 graphs.
fn vllm_graphs() -> Vec<Graph> {
    let mut sizes = vec![1, 2, 4];
    sizes.extend((8..256).step_by(8));
    sizes.extend((256..=512).step_by(16));
    let graph = |mode, t, r, u| Graph {
        mode,
        num_tokens: t,
        num_reqs: r,
        uniform_token_count: u,
        max_query_len: -1,
        num_ubatches: 1,
        num_active_loras: 0,
    };
    sizes
        .iter()
        .map(|&n| graph(rules::DP_CUDAGRAPH_FULL, n, n, 1))
        .chain(
            sizes
                .iter()
                .map(|&t| graph(rules::DP_CUDAGRAPH_PIECEWISE, t, -1, 0)),
        )
        .collect()
}

/// `graphs` as a C graph table handle (`dp_graphs_create`, as a C caller makes it).
fn graphs_handle(graphs: &[Graph]) -> Res<*mut ffi::dp_graphs> {
    let mut t = std::mem::MaybeUninit::<ffi::dp_graph_table>::zeroed();
    ffi::dp_graph_table_init(t.as_mut_ptr());
    // SAFETY: initialised by dp_graph_table_init.
    let mut t = unsafe { t.assume_init() };
    t.graphs = graphs.as_ptr();
    t.num_graphs = graphs.len() as i32;
    t.decode_query_len = 1;
    let mut h = std::ptr::null_mut();
    match ffi::dp_graphs_create(&t, &mut h) {
        dp_status::DP_OK => Ok(h),
        st => Err(format!("dp_graphs_create: {st:?}: {}", last_error())),
    }
}

/// Every rank's V2 request for `step`: mostly uniform decodes (the decode table), some
/// prefill chunks (the PIECEWISE sizes, a few above them: eager), a few idle.
fn v2_step_requests(step: u64, n: usize) -> Vec<rules::Request> {
    let h = mix(step ^ 0x0002_D9C0_0D00_0000);
    (0..n as u64)
        .map(|rank| {
            let g = mix(h ^ (rank + 1).wrapping_mul(0xA24B_AED4_963E_E407));
            let r = (g >> 8) as i32 & 0x7fff_ffff;
            let (tokens, reqs, uniform, mql) = match g % 10 {
                0 => (0, 0, 0, -1),
                1 | 2 => {
                    let t = 1 + r % 600;
                    (t, 1 + (r >> 12) % t, 0, -1)
                }
                _ => {
                    let t = 1 + r % 512;
                    (t, t, 1, 1)
                }
            };
            rules::Request {
                rules: rules::DP_RULES_VLLM_V2,
                num_tokens_unpadded: tokens,
                num_reqs: reqs,
                uniform_token_count: uniform,
                max_query_len: mql,
                allow_skip_drafts: (g >> 40) % 4 == 0,
                timeout_ms: REQUEST_TIMEOUT_MS,
                step_id: step as i64 + 1,
                ..rules::Request::default()
            }
        })
        .collect()
}

/// A V2 result against `rules::decide_v2` over every rank's record with `table`.
fn check_v2(
    step: u64,
    got: &dp_batch_result,
    reqs: &[rules::Request],
    rank: usize,
    table: &GraphTable,
) -> Res<()> {
    let records: Vec<rules::V2Record> = reqs
        .iter()
        .map(|q| rules::make_v2_record(q, Some(table)).map_err(err))
        .collect::<Res<_>>()?;
    let cfg = V2Config::of(&reqs[0], Some(table));
    let mut array = vec![0; reqs.len()];
    let a = rules::decide_v2(
        &records,
        rank as i32,
        None,
        &cfg,
        Some(table),
        Some(&mut array),
    )
    .map_err(err)?;
    let pairs = [
        ("graph_mode", got.graph_mode, a.graph.mode),
        ("graph_num_tokens", got.graph_num_tokens, a.graph.num_tokens),
        ("graph_num_reqs", got.graph_num_reqs, a.graph.num_reqs),
        (
            "graph_uniform_token_count",
            got.graph_uniform_token_count,
            a.graph.uniform_token_count,
        ),
        (
            "graph_max_query_len",
            got.graph_max_query_len,
            a.graph.max_query_len,
        ),
        ("num_ubatches", got.num_ubatches, a.graph.num_ubatches),
        ("idle", i32::from(got.idle), i32::from(a.idle)),
        ("eager", i32::from(got.eager), i32::from(a.eager)),
        (
            "skip_drafts",
            i32::from(got.skip_drafts),
            i32::from(a.skip_drafts),
        ),
        (
            "agreed_uniform_token_count",
            got.agreed_uniform_token_count,
            a.uniform_token_count,
        ),
        (
            "agreed_max_query_len",
            got.agreed_max_query_len,
            a.max_query_len,
        ),
        ("max_num_reqs", got.max_num_reqs, a.max_num_reqs),
        ("self", got.num_tokens_after_padding_self, a.num_tokens_self),
        (
            "should_dp_pad",
            i32::from(got.should_dp_pad),
            i32::from(a.padded),
        ),
        (
            "has_array",
            i32::from(got.has_num_tokens_after_padding),
            i32::from(a.has_array),
        ),
    ];
    for (field, g, w) in pairs {
        if g != w {
            return Err(format!(
                "WRONG RESULT: V2, step {step}: {field} = {g}, rules::decide_v2 says {w}"
            ));
        }
    }
    if got.has_num_tokens_after_padding {
        // SAFETY: the library's host array of dp_size entries, valid until the next call.
        let host = unsafe { std::slice::from_raw_parts(got.num_tokens_after_padding, reqs.len()) };
        if host != array.as_slice() {
            return Err(format!(
                "WRONG RESULT: V2, step {step}: array {host:?}, want {array:?}"
            ));
        }
    }
    Ok(())
}

fn c_result() -> dp_batch_result {
    let mut r = std::mem::MaybeUninit::<dp_batch_result>::zeroed();
    ffi::dp_batch_result_init(r.as_mut_ptr());
    // SAFETY: initialised by dp_batch_result_init.
    unsafe { r.assume_init() }
}

// ---- one rank's world ----

struct World {
    rank: usize,
    n: usize,
    device: i32,
    harness: Harness,
    comm: CommHandle,
    stream: Stream,
    send: DeviceWords,
    recv: DeviceWords,
    send_host: MappedWords,
}

fn rendezvous(h: &Harness, rank: usize, n: usize) -> Res<UniqueId> {
    if n == 1 {
        return h.unique_id().map_err(err);
    }
    let dir = std::env::var("DPCOORD_RENDEZVOUS").map_err(|_| {
        "DPCOORD_RENDEZVOUS is not set (run under dpcoord_gpu_launcher)".to_string()
    })?;
    let path = Path::new(&dir).join("nccl-unique-id");
    if rank == 0 {
        let id = h.unique_id().map_err(err)?;
        let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
        std::fs::write(&tmp, id.internal).map_err(err)?;
        std::fs::rename(&tmp, &path).map_err(err)?;
        return Ok(id);
    }
    let start = Instant::now();
    loop {
        if let Ok(bytes) = std::fs::read(&path) {
            if bytes.len() == 128 {
                let mut id = UniqueId { internal: [0; 128] };
                id.internal.copy_from_slice(&bytes);
                return Ok(id);
            }
        }
        if start.elapsed() > Duration::from_secs(120) {
            return Err(format!("no unique id in {} after 120 s", path.display()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl World {
    fn new() -> Res<World> {
        let rank = env_usize("DPCOORD_RANK", 0)?;
        let n = env_usize("DPCOORD_NRANKS", 1)?;
        let gpus = testing::device_count().map_err(err)? as usize;
        if gpus == 0 {
            return Err("no CUDA device".into());
        }
        let device = env_usize("DPCOORD_DEVICE", rank % gpus)? as i32;
        testing::bind_device(device).map_err(err)?;
        let harness = Harness::new().map_err(err)?;
        let id = rendezvous(&harness, rank, n)?;
        let comm = harness.init_rank(n as i32, id, rank as i32).map_err(err)?;
        Ok(World {
            rank,
            n,
            device,
            stream: Stream::new().map_err(err)?,
            send: DeviceWords::new(SLOT_WORDS).map_err(err)?,
            recv: DeviceWords::new(SLOT_WORDS * n).map_err(err)?,
            send_host: MappedWords::new(SLOT_WORDS).map_err(err)?,
            harness,
            comm,
        })
    }

    fn s(&self) -> StreamHandle {
        self.stream.handle()
    }

    /// A bare allgather + sync: every rank reaches this point before going on.
    fn barrier(&self) -> Res<()> {
        self.harness
            .all_gather(
                self.send.ptr(),
                self.recv.ptr(),
                SLOT_WORDS,
                self.comm,
                self.s(),
            )
            .map_err(err)?;
        testing::synchronize(self.s()).map_err(err)
    }
}

fn since(t0: Instant) -> u64 {
    t0.elapsed().as_nanos() as u64
}

/// One variant: per step, prepare (untimed), run (returns the timed ns), check (untimed).
type StepFn<'a> = Box<dyn FnMut(&World, u64) -> Res<u64> + 'a>;

/// A variant timed in several rows at once: per step, one ns per row.
type RowsFn<'a> = Box<dyn FnMut(&World, u64) -> Res<Vec<u64>> + 'a>;

/// The rows a variant reports (one, its own name, unless it times several things at once).
fn rows_of(name: &str) -> Vec<&str> {
    match name {
        "dpcoord_forced_v1_v2_slot" => vec!["dpcoord_forced_v1_slot", "dpcoord_forced_v2_slot"],
        _ => vec![name],
    }
}

/// A variant's step as one timing per row.
fn rows_variant<'a>(w: &'a World, name: &'a str) -> Res<Option<RowsFn<'a>>> {
    if name == "dpcoord_forced_v1_v2_slot" {
        return v1_v2_slot(w).map(Some);
    }
    Ok(variant(w, name)?.map(|mut step| -> RowsFn<'a> {
        Box::new(move |w: &World, s| step(w, s).map(|ns| vec![ns]))
    }))
}

/// `dpcoord_forced_v1_v2_slot`: a V1 and a V2 forced exchange per step, in alternating order.
fn v1_v2_slot<'a>(w: &'a World) -> Res<RowsFn<'a>> {
    let (rank, n) = (w.rank, w.n);
    let v1 = ForcedCoordinator::new(w.comm, SendPath::Host).map_err(err)?;
    let v2 = ForcedCoordinator::new(w.comm, SendPath::Host).map_err(err)?;
    let graphs = vllm_graphs();
    let table = GraphTable::new(&graphs, 1).map_err(err)?;
    let handle = graphs_handle(&graphs)?;
    let set = v2.set_graphs(handle).map_err(err);
    // The coordinator keeps its own reference.
    ffi::dp_graphs_destroy(handle);
    set?;
    Ok(Box::new(move |w: &World, step| {
        let v1_reqs = step_requests(step, n);
        let v2_reqs = v2_step_requests(step, n);
        let v2_own = dp_batch_request::from(&v2_reqs[rank]);
        let mut ns = [0u64; 2];
        let order: [usize; 2] = if step % 2 == 0 { [0, 1] } else { [1, 0] };
        for which in order {
            let (c, q) = match which {
                0 => (&v1, &v1_reqs[rank]),
                _ => (&v2, &v2_own),
            };
            let mut res = c_result();
            let t0 = Instant::now();
            let st = c.coordinate_batch(w.s(), q, &mut res);
            ns[which] = since(t0);
            if st != dp_status::DP_OK {
                return Err(format!("v1_v2_slot ({which}): {st:?}: {}", last_error()));
            }
            match which {
                0 => check("dpcoord_forced_v1_slot", step, &res, &v1_reqs, rank)?,
                _ => check_v2(step, &res, &v2_reqs, rank, &table)?,
            }
        }
        Ok(ns.to_vec())
    }))
}

fn variant<'a>(w: &'a World, name: &'a str) -> Res<Option<StepFn<'a>>> {
    let rank = w.rank;
    let n = w.n;
    Ok(Some(match name {
        "bare_allgather_sync" => Box::new(move |w: &World, _| {
            let t0 = Instant::now();
            w.harness
                .all_gather(w.send.ptr(), w.recv.ptr(), SLOT_WORDS, w.comm, w.s())
                .map_err(err)?;
            testing::synchronize(w.s()).map_err(err)?;
            Ok(since(t0))
        }),
        "bare_allgather_hostsend_sync" => Box::new(move |w: &World, step| {
            let slot =
                testing::slot_words(&step_requests(step, n)[rank], step as u32 + 1).map_err(err)?;
            let t0 = Instant::now();
            w.send_host.store(0, &slot);
            w.harness
                .all_gather(
                    w.send_host.device_ptr(),
                    w.recv.ptr(),
                    SLOT_WORDS,
                    w.comm,
                    w.s(),
                )
                .map_err(err)?;
            testing::synchronize(w.s()).map_err(err)?;
            let ns = since(t0);
            let mut got = [0i32; SLOT_WORDS];
            w.recv.read(&mut got[..]).map_err(err)?;
            if got[0] as u32 != step as u32 + 1 {
                return Err(format!(
                    "bare_allgather_hostsend_sync: slot seq {} != {}",
                    got[0],
                    step + 1
                ));
            }
            Ok(ns)
        }),
        "stage_post_kernel_spin"
        | "stage_hostsend_allgather_post_spin"
        | "stage_enqueue_allgather_launch_host_time" => {
            let kit = PostKit::new(n as i32, rank as i32).map_err(err)?;
            let _ = w;
            let host_only = name == "stage_enqueue_allgather_launch_host_time";
            let full = host_only || name == "stage_hostsend_allgather_post_spin";
            let staging = MappedWords::new(SLOT_WORDS * n).map_err(err)?;
            let mut seq = 0u32;
            Box::new(move |w: &World, step| {
                seq = seq.wrapping_add(1).max(1);
                let reqs = step_requests(step, n);
                let slots: Vec<[i32; SLOT_WORDS]> = reqs
                    .iter()
                    .map(|r| testing::slot_words(r, seq).map_err(err))
                    .collect::<Res<_>>()?;
                let t0;
                if full {
                    t0 = Instant::now();
                    w.send_host.store(0, &slots[rank]);
                    w.harness
                        .all_gather(
                            w.send_host.device_ptr(),
                            kit.slots.ptr(),
                            SLOT_WORDS,
                            w.comm,
                            w.s(),
                        )
                        .map_err(err)?;
                } else {
                    for (r, s) in slots.iter().enumerate() {
                        staging.store(r * SLOT_WORDS, s);
                    }
                    staging
                        .copy_to_device_async(0, SLOT_WORDS * n, kit.slots.ptr(), w.s())
                        .map_err(err)?;
                    testing::synchronize(w.s()).map_err(err)?;
                    t0 = Instant::now();
                }
                kit.launch(w.s(), seq).map_err(err)?;
                let enqueued = since(t0);
                kit.spin(seq, SPIN_LIMIT).map_err(err)?;
                let ns = if host_only { enqueued } else { since(t0) };
                let (status, words) = kit.verdict();
                let (d, _) = expected(&reqs, rank)?;
                let want = [
                    i32::from(d.should_ubatch),
                    i32::from(d.should_dp_pad),
                    d.synced_cudagraph_mode,
                    d.num_tokens_after_padding_self,
                    d.max_num_tokens_padded,
                    d.min_num_tokens_unpadded,
                ];
                if status != testing::STATUS_OK || words != want {
                    return Err(format!("WRONG RESULT: {name}-kernel, step {step}: status {status}, {words:?} != {want:?}"));
                }
                testing::synchronize(w.s()).map_err(err)?;
                Ok(ns)
            })
        }
        "dpcoord_forced_host_send" | "dpcoord_forced_device_send" => {
            let path = if name.ends_with("device_send") {
                SendPath::Device
            } else {
                SendPath::Host
            };
            let c = ForcedCoordinator::new(w.comm, path).map_err(err)?;
            let label = name.to_string();
            Box::new(move |w: &World, step| {
                let reqs = step_requests(step, n);
                let q = reqs[rank];
                let mut res = c_result();
                let t0 = Instant::now();
                let st = c.coordinate_batch(w.s(), &q, &mut res);
                let ns = since(t0);
                if st != dp_status::DP_OK {
                    return Err(format!("{label}: {st:?}: {}", last_error()));
                }
                check(&label, step, &res, &reqs, rank)?;
                Ok(ns)
            })
        }
        "dpcoord_begin_host_time" | "dpcoord_end_after_finished" => {
            let c = ForcedCoordinator::new(w.comm, SendPath::Host).map_err(err)?;
            let time_end = name == "dpcoord_end_after_finished";
            let label = name.to_string();
            Box::new(move |w: &World, step| {
                let reqs = step_requests(step, n);
                let t0 = Instant::now();
                c.begin(w.s(), &reqs[rank]).map_err(err)?;
                let begin_ns = since(t0);
                let spin = Instant::now();
                while !c.poll().map_err(err)? {
                    if spin.elapsed() > SPIN_LIMIT {
                        return Err(format!("{label}: poll never said done"));
                    }
                    std::hint::spin_loop();
                }
                let t1 = Instant::now();
                let o = c.end().map_err(err)?;
                let end_ns = since(t1);
                check(&label, step, &testing::outcome_result(&o), &reqs, rank)?;
                Ok(if time_end { end_ns } else { begin_ns })
            })
        }
        "dp_coordinate_batch" => Box::new(move |w: &World, step| {
            let reqs = step_requests(step, n);
            let q = reqs[rank];
            let mut res = c_result();
            let t0 = Instant::now();
            let st = ffi::dp_coordinate_batch(
                w.comm.as_raw().cast(),
                w.s().as_raw().cast(),
                &q,
                &mut res,
            );
            let ns = since(t0);
            if st != dp_status::DP_OK {
                return Err(format!("dp_coordinate_batch: {st:?}: {}", last_error()));
            }
            check("dp_coordinate_batch", step, &res, &reqs, rank)?;
            Ok(ns)
        }),
        _ => return Ok(None),
    }))
}

fn last_error() -> String {
    // SAFETY: dp_last_error returns a NUL-terminated thread-local string.
    unsafe { std::ffi::CStr::from_ptr(ffi::dp_last_error()) }
        .to_string_lossy()
        .into_owned()
}

const VARIANTS: &[&str] = &[
    "bare_allgather_sync",
    "bare_allgather_hostsend_sync",
    "stage_post_kernel_spin",
    "stage_hostsend_allgather_post_spin",
    "stage_enqueue_allgather_launch_host_time",
    "dpcoord_forced_host_send",
    "dpcoord_forced_device_send",
    "dpcoord_forced_v1_v2_slot",
    "dpcoord_begin_host_time",
    "dpcoord_end_after_finished",
    "dp_coordinate_batch",
    // Again at the end: the floor twice in one run shows the run-to-run spread.
    "bare_allgather_sync",
];

struct Row {
    name: String,
    iters: usize,
    min: f64,
    p10: f64,
    median: f64,
    p90: f64,
    p99: f64,
}

fn stats(name: &str, mut ns: Vec<u64>) -> Row {
    ns.sort_unstable();
    let q = |f: f64| ns[((ns.len() - 1) as f64 * f).round() as usize] as f64 / 1000.0;
    Row {
        name: name.to_string(),
        iters: ns.len(),
        min: q(0.0),
        p10: q(0.1),
        median: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
    }
}

fn run() -> Res<()> {
    let args = parse_args()?;
    let w = World::new()?;
    // Untimed warm-up of the GPU and NCCL (clocks ramp up; the first variant must not pay
    // it). A count, not a time: every rank must make the same number of collective calls.
    for _ in 0..if w.n == 1 { 100_000 } else { 100 } {
        w.barrier()?;
    }
    let mut rows = Vec::new();
    for (i, &name) in VARIANTS.iter().enumerate() {
        if args
            .variants
            .as_ref()
            .is_some_and(|v| !v.iter().any(|x| x == name))
        {
            continue;
        }
        let Some(mut step) = rows_variant(&w, name)? else {
            return Err(format!("unknown variant {name}"));
        };
        let names = rows_of(name);
        w.barrier()?;
        let mut samples = vec![Vec::with_capacity(args.iters); names.len()];
        for s in 0..(args.warmup + args.iters) as u64 {
            let ns = step(&w, s + 1_000_000 * i as u64)?;
            if s as usize >= args.warmup {
                for (row, ns) in samples.iter_mut().zip(ns) {
                    row.push(ns);
                }
            }
        }
        drop(step);
        w.barrier()?;
        for (row, samples) in names.into_iter().zip(samples) {
            rows.push(stats(row, samples));
        }
    }
    if w.rank == 0 {
        print_table(&w, &rows, args.csv.as_deref())?;
    }
    testing::synchronize(w.s()).map_err(err)?;
    w.barrier()?;
    w.harness.destroy(w.comm).map_err(err)?;
    Ok(())
}

fn print_table(w: &World, rows: &[Row], csv: Option<&Path>) -> Res<()> {
    let floor = rows
        .iter()
        .find(|r| r.name == "bare_allgather_sync")
        .map(|r| r.median);
    let device = testing::device_name(w.device).unwrap_or_else(|e| e.to_string());
    let mut out = String::new();
    writeln!(
        out,
        "dpcoord-gpu-bench: {} rank(s), device {} ({device}), NCCL {} from {}",
        w.n,
        w.device,
        w.harness.version(),
        w.harness.origin()
    )
    .ok();
    writeln!(
        out,
        "{:<38} {:>7} {:>9} {:>9} {:>9} {:>8}",
        "variant", "iters", "p10_us", "median_us", "p90_us", "x_bare"
    )
    .ok();
    for r in rows {
        let ratio = floor.map_or(String::from("-"), |f| format!("{:.3}", r.median / f));
        writeln!(
            out,
            "{:<38} {:>7} {:>9.2} {:>9.2} {:>9.2} {:>8}",
            r.name, r.iters, r.p10, r.median, r.p90, ratio
        )
        .ok();
    }
    print!("{out}");
    if let Some(path) = csv {
        // The columns plot.py reads, then the quantiles of this table.
        let mut text = String::from(
            "ranks,variant,iters,median_us,p99_us,min_us,gpus,ranks_share_gpu,p10_us,p90_us\n",
        );
        let gpus = testing::device_count().unwrap_or(0) as usize;
        for r in rows {
            writeln!(
                text,
                "{},{},{},{:.3},{:.3},{:.3},{},{},{:.3},{:.3}",
                w.n,
                r.name,
                r.iters,
                r.median,
                r.p99,
                r.min,
                gpus,
                u8::from(w.n > gpus),
                r.p10,
                r.p90
            )
            .ok();
        }
        std::fs::write(path, text).map_err(err)?;
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("dpcoord-gpu-bench: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
