//! The V2 rules' host cost through the Rust API (criterion, medians), side by side in one run:
//!
//! - `v2_dispatch`: `GraphTable::dispatch` over vLLM's E-dbo table (FULL_AND_PIECEWISE, 256
//!   seqs, DBO: 115 graphs), four queries a call (a decode, a microbatched twin, a mixed batch,
//!   a miss above every size); divide by 4 for one dispatch.
//! - `v2_vs_v1_decide/{8,1024}`: V1's `decide_with_options` over the records of a deterministic
//!   step, next to `decide_v2` over the V2 records of the same step with the E-dbo table, both
//!   writing the per-rank array: `mixed` (decodes and prefills; some prefills above every
//!   graph, so the eager branch), `decode` (decodes only: the padded branch, one dispatch).
//!   Each is timed twice, compiled for the baseline target and under AVX2 (`avx2/...`), the
//!   way the C entry points run `decide_with_options` (`src/ffi/decide.rs`).
//!
//! - `slots/{8,1024}`: the C host path over slots: a bench-only floor that reads every word of
//!   the same slots once (a plain wrapping sum), `dp_decide_slots` over V1 slots of the
//!   `decode` step, and over V2 slots of the same step with the E-dbo table (`dp_graphs`),
//!   each writing the array. Targets (docs/ARCHITECTURE.md, "Figures"): V2 within 1.5x of V1,
//!   and the decision within 1.5x of the floor at 1024 ranks.
//!
//! Run: `cargo bench --bench v2 -- --warm-up-time 1 --measurement-time 3`.

#![allow(missing_docs)] // criterion_group! generates undocumented items.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use dpcoord::ffi::{
    dp_batch_request, dp_batch_result, dp_batch_result_init, dp_decide_options,
    dp_decide_options_init, dp_decide_slots, dp_graph_table, dp_graph_table_init, dp_graphs_create,
    dp_graphs_destroy, dp_make_slot, dp_status, Slot,
};
use dpcoord::rules::{
    decide_v2, decide_with_options, make_record, make_v2_record, Agreement, DecideOptions,
    Decision, GraphTable, RankRecord, Request, UbatchConfig, V2Config, V2Record,
    DP_PAD_POLICY_WHEN_CUDAGRAPH, DP_RULES_VLLM_V2,
};

/// A deterministic pseudo-random sequence (no dependency, same numbers every run).
fn lcg(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15 ^ seed;
    move |bound: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % bound
    }
}

/// vLLM's E-dbo table (`VLLM_V2.md` section 5): decode graphs of 1, 2, 4, 8, ..., 248, 256
/// requests (q = 1) with microbatched twins from 32 tokens, PIECEWISE graphs of 1, 2, 4,
/// 8, ..., 248, then every 16 to 512 (tests/v2_common builds the same table from the
/// configuration; tests/rules_v2_examples checks its dispatches).
fn e_dbo_table() -> GraphTable {
    GraphTable::new(&e_dbo_graphs(), 1).expect("vLLM's table")
}

/// The graphs of [`e_dbo_table`].
fn e_dbo_graphs() -> Vec<dpcoord::rules::Graph> {
    let mut sizes: Vec<i32> = vec![1, 2, 4];
    sizes.extend((8..256).step_by(8));
    sizes.extend((256..=512).step_by(16));
    let mut graphs = Vec::new();
    for &n in sizes.iter().filter(|&&s| s <= 256) {
        let g = dpcoord::rules::Graph {
            mode: 2,
            num_tokens: n,
            num_reqs: n,
            uniform_token_count: 1,
            max_query_len: -1,
            num_ubatches: 1,
            num_active_loras: 0,
        };
        graphs.push(g);
        if n >= 32 {
            graphs.push(dpcoord::rules::Graph {
                num_ubatches: 2,
                ..g
            });
        }
    }
    for &t in &sizes {
        graphs.push(dpcoord::rules::Graph {
            mode: 1,
            num_tokens: t,
            num_reqs: -1,
            uniform_token_count: 0,
            max_query_len: -1,
            num_ubatches: 1,
            num_active_loras: 0,
        });
    }
    graphs
}

const DBO: UbatchConfig = UbatchConfig {
    enabled: true,
    num_ubatches: 2,
    decode_token_threshold: 32,
    prefill_token_threshold: 512,
};

/// One step's requests: `decode_share` in 10 decodes (1-256 requests of one token), the rest
/// prefills (600-8191 tokens over 1-64 requests); everyone allows microbatching.
fn step(dp: i32, decode_share: u64) -> Vec<(i32, i32, bool)> {
    let mut next = lcg(dp as u64);
    (0..dp)
        .map(|_| {
            if next(10) < decode_share {
                let r = 1 + next(256) as i32;
                (r, r, true)
            } else {
                (600 + next(7_592) as i32, 1 + next(64) as i32, false)
            }
        })
        .collect()
}

/// The V1 records of a step (padded to the next multiple of 8 up to 512, FULL for decodes,
/// PIECEWISE for the rest; eager above 512).
fn v1_records(step: &[(i32, i32, bool)]) -> Vec<RankRecord> {
    step.iter()
        .map(|&(t, _, decode)| {
            let (padded, mode) = if t <= 512 {
                ((t + 7) / 8 * 8, if decode { 2 } else { 1 })
            } else {
                (t, 0)
            };
            make_record(&Request {
                num_tokens_unpadded: t,
                num_tokens_padded: padded,
                allow_microbatching: true,
                uniform_decode: i32::from(decode),
                cudagraph_mode: mode,
                pad_policy: DP_PAD_POLICY_WHEN_CUDAGRAPH,
                ubatch: DBO,
                ..Request::default()
            })
            .expect("a valid request")
        })
        .collect()
}

fn v2_request(t: i32, r: i32, decode: bool) -> Request {
    Request {
        rules: DP_RULES_VLLM_V2,
        num_tokens_unpadded: t,
        num_reqs: r,
        uniform_token_count: i32::from(decode),
        max_query_len: if decode { 1 } else { -1 },
        allow_microbatching: true,
        ubatch: DBO,
        ..Request::default()
    }
}

fn v2_records(step: &[(i32, i32, bool)], table: &GraphTable) -> Vec<V2Record> {
    step.iter()
        .map(|&(t, r, d)| make_v2_record(&v2_request(t, r, d), Some(table)).expect("valid"))
        .collect()
}

#[inline(always)]
fn v1(records: &[RankRecord], rank: i32, out: &mut [i32]) -> Decision {
    let opts = DecideOptions::new(DP_PAD_POLICY_WHEN_CUDAGRAPH, 2);
    decide_with_options(records, rank, &opts, Some(out))
        .expect("valid")
        .0
}

#[inline(always)]
fn v2(
    records: &[V2Record],
    rank: i32,
    cfg: &V2Config,
    table: &GraphTable,
    out: &mut [i32],
) -> Agreement {
    decide_v2(records, rank, None, cfg, Some(table), Some(out)).expect("valid")
}

/// [`v1`] compiled for AVX2.
///
/// # Safety
/// Only on a CPU with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn v1_avx2(records: &[RankRecord], rank: i32, out: &mut [i32]) -> Decision {
    v1(records, rank, out)
}

/// [`v2`] compiled for AVX2.
///
/// # Safety
/// Only on a CPU with AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn v2_avx2(
    records: &[V2Record],
    rank: i32,
    cfg: &V2Config,
    table: &GraphTable,
    out: &mut [i32],
) -> Agreement {
    v2(records, rank, cfg, table, out)
}

fn v2_dispatch(c: &mut Criterion) {
    let table = e_dbo_table();
    let queries = [
        (9, 9, 1, 1, 1),
        (64, 100, 1, -1, 2),
        (11, 300, 0, -1, 1),
        (1, 5000, 0, -1, 1),
    ];
    let mut group = c.benchmark_group("v2_dispatch");
    group.bench_function("e_dbo_115_graphs/4_queries", |b| {
        b.iter(|| {
            for &(r, t, u, mql, n) in black_box(&queries) {
                black_box(table.dispatch(r, t, u, 0, mql, n));
            }
        })
    });
    group.finish();
}

fn v2_vs_v1_decide(c: &mut Criterion) {
    let table = e_dbo_table();
    let cfg = V2Config::of(&v2_request(1, 1, true), Some(&table));
    #[cfg(target_arch = "x86_64")]
    let avx2 = std::arch::is_x86_feature_detected!("avx2");
    let mut group = c.benchmark_group("v2_vs_v1_decide");
    for dp in [8, 1024] {
        let rank = dp / 2;
        for (name, share) in [("mixed", 7), ("decode", 10)] {
            let s = step(dp, share);
            let r1 = v1_records(&s);
            let r2 = v2_records(&s, &table);
            let mut out = vec![0i32; dp as usize];
            let a = v2(&r2, rank, &cfg, &table, &mut out);
            eprintln!(
                "v2_vs_v1_decide/{dp}/{name}: eager {} padded {} graph {:?}",
                a.eager, a.padded, a.graph
            );
            group.bench_with_input(BenchmarkId::new(format!("v1_{name}"), dp), &dp, |b, _| {
                b.iter(|| v1(black_box(&r1), rank, &mut out))
            });
            group.bench_with_input(BenchmarkId::new(format!("v2_{name}"), dp), &dp, |b, _| {
                b.iter(|| v2(black_box(&r2), rank, &cfg, &table, &mut out))
            });
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                let id = |v: &str| BenchmarkId::new(format!("avx2/{v}_{name}"), dp);
                group.bench_with_input(id("v1"), &dp, |b, _| {
                    b.iter(|| {
                        // SAFETY: the CPU supports AVX2, checked at run time above.
                        unsafe { v1_avx2(black_box(&r1), rank, &mut out) }
                    })
                });
                group.bench_with_input(id("v2"), &dp, |b, _| {
                    b.iter(|| {
                        // SAFETY: the CPU supports AVX2, checked at run time above.
                        unsafe { v2_avx2(black_box(&r2), rank, &cfg, &table, &mut out) }
                    })
                });
            }
        }
    }
    group.finish();
}

/// Every rank's slot of `step` under the V1 or the V2 rules (V2 with `opts`' table).
fn slots_of(step: &[(i32, i32, bool)], v2: bool, opts: &dp_decide_options) -> Vec<Slot> {
    step.iter()
        .map(|&(t, r, decode)| {
            let req = if v2 {
                v2_request(t, r, decode)
            } else {
                let (padded, mode) = if t <= 512 {
                    ((t + 7) / 8 * 8, if decode { 2 } else { 1 })
                } else {
                    (t, 0)
                };
                Request {
                    num_tokens_unpadded: t,
                    num_tokens_padded: padded,
                    allow_microbatching: true,
                    uniform_decode: i32::from(decode),
                    cudagraph_mode: mode,
                    pad_policy: DP_PAD_POLICY_WHEN_CUDAGRAPH,
                    ubatch: DBO,
                    ..Request::default()
                }
            };
            let mut slot = Slot { opaque: [0; 24] };
            let status = dp_make_slot(&dp_batch_request::from(&req), opts, &mut slot);
            assert_eq!(status, dp_status::DP_OK);
            slot
        })
        .collect()
}

/// The bench-only floor: every word of the slots read once (a plain wrapping sum).
#[inline(never)]
fn floor_sum(slots: &[Slot]) -> u32 {
    slots
        .iter()
        .flat_map(|s| s.opaque.iter())
        .fold(0u32, |a, &w| a.wrapping_add(w))
}

fn slots(c: &mut Criterion) {
    let graphs = e_dbo_graphs();
    let mut t = std::mem::MaybeUninit::<dp_graph_table>::zeroed();
    dp_graph_table_init(t.as_mut_ptr());
    // SAFETY: initialised by dp_graph_table_init.
    let mut t = unsafe { t.assume_init() };
    t.graphs = graphs.as_ptr();
    t.num_graphs = graphs.len() as i32;
    let mut handle = std::ptr::null_mut();
    assert_eq!(dp_graphs_create(&t, &mut handle), dp_status::DP_OK);
    let mut opts = std::mem::MaybeUninit::<dp_decide_options>::zeroed();
    dp_decide_options_init(opts.as_mut_ptr());
    // SAFETY: initialised by dp_decide_options_init.
    let mut opts = unsafe { opts.assume_init() };
    let no_table = opts;
    opts.graphs = handle;
    let mut group = c.benchmark_group("slots");
    for dp in [8, 1024] {
        let rank = dp / 2;
        let s = step(dp, 10);
        let v1 = slots_of(&s, false, &no_table);
        let v2 = slots_of(&s, true, &opts);
        let mut out = vec![0i32; dp as usize];
        let mut res = std::mem::MaybeUninit::<dp_batch_result>::zeroed();
        dp_batch_result_init(res.as_mut_ptr());
        // SAFETY: initialised by dp_batch_result_init.
        let mut res = unsafe { res.assume_init() };
        group.bench_with_input(
            BenchmarkId::new("floor_sum_of_every_word", dp),
            &dp,
            |b, _| b.iter(|| floor_sum(black_box(&v1))),
        );
        for (name, slots, o) in [("v1", &v1, &no_table), ("v2", &v2, &opts)] {
            let status = dp_decide_slots(slots.as_ptr(), dp, rank, o, out.as_mut_ptr(), &mut res);
            assert_eq!(status, dp_status::DP_OK);
            group.bench_with_input(
                BenchmarkId::new(format!("dp_decide_slots/{name}"), dp),
                &dp,
                |b, _| {
                    b.iter(|| {
                        dp_decide_slots(
                            black_box(slots.as_ptr()),
                            dp,
                            rank,
                            o,
                            out.as_mut_ptr(),
                            &mut res,
                        )
                    })
                },
            );
        }
    }
    group.finish();
    assert_eq!(dp_graphs_destroy(handle), dp_status::DP_OK);
}

criterion_group!(benches, v2_dispatch, v2_vs_v1_decide, slots);
criterion_main!(benches);
