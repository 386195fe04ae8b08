//! Host path, through the C ABI entry points (criterion, medians), side by side in one run:
//!
//! - `host_decide_1024`: a bench-only floor that reads every word of the 1024 records once (a
//!   plain wrapping sum, in the same 8-record blocks the pass uses, so it vectorises as well
//!   as the compiler can), `dp_decide_batch` with and without the per-rank array, and
//!   `dp_decide_batch_with_options` with a mask of 4 dead ranks (plus step ids). Targets
//!   (docs/ARCHITECTURE.md ("Figures"), issue 10): dp_decide_batch <= 1.5x the floor, the mask path <= 1.2x
//!   the plain one.
//! - `slices_1024`: one pass over 1024 requests' counts (a plain sum: the floor) and, over the
//!   same counts, `dp_make_ubatch_slices` (2 and 4 microbatches), `dp_make_ubatch_slices_at`
//!   (2, the split point given as a list) and `dp_make_ubatch_slices_v2` (2 and 4, no uniform
//!   count; and 2 over a uniform spec-decode batch of 1024 x 4 tokens, split on a request
//!   boundary). Target: <= 2x the floor.
//! - `dp_decide_batch`: dp_size 1, 8, 64, 1024, with and without the array.
//!
//! Run: `cargo bench --bench decide -- --warm-up-time 1 --measurement-time 3`.

#![allow(missing_docs)] // criterion_group! generates undocumented items.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use dpcoord::ffi::{
    dp_batch_result, dp_batch_result_init, dp_decide_batch, dp_decide_batch_with_options,
    dp_decide_options, dp_decide_options_init, dp_make_ubatch_slices, dp_make_ubatch_slices_at,
    dp_make_ubatch_slices_v2, dp_status, DP_PAD_POLICY_EXPLICIT,
};
use dpcoord::rules::{make_record, RankRecord, Request, UbatchConfig};
use dpcoord::slices::UbatchSlice;

const DP_SIZES: [i32; 4] = [1, 8, 64, 1024];

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

/// A deterministic step's records: mostly decode ranks, some prefill, CUDA-graph modes mixed,
/// microbatching attempted where the thresholds allow it, every rank allowing DP padding (the
/// flags of a valid step are all equal under EXPLICIT).
fn step_records(dp_size: i32) -> Vec<RankRecord> {
    let mut next = lcg(dp_size as u64);
    (0..dp_size)
        .map(|_| {
            let decode = next(10) < 7;
            let unpadded = if decode {
                1 + next(256) as i32
            } else {
                512 + next(7_680) as i32
            };
            // CUDA-graph bucket: next multiple of 8 up to 512, else no graph (eager).
            let (padded, mode) = if unpadded <= 512 {
                ((unpadded + 7) / 8 * 8, if decode { 2 } else { 1 })
            } else {
                (unpadded, 0)
            };
            let req = Request {
                num_tokens_unpadded: unpadded,
                num_tokens_padded: padded,
                allow_microbatching: true,
                allow_dp_padding: true,
                uniform_decode: i32::from(decode),
                cudagraph_mode: mode,
                pad_policy: DP_PAD_POLICY_EXPLICIT,
                ubatch: UbatchConfig {
                    enabled: true,
                    ..UbatchConfig::default()
                },
                ..Request::default()
            };
            make_record(&req).expect("a valid request")
        })
        .collect()
}

fn result() -> dp_batch_result {
    let mut res = std::mem::MaybeUninit::<dp_batch_result>::zeroed();
    dp_batch_result_init(res.as_mut_ptr());
    // SAFETY: zeroed is valid for every field (integers, false, NULL), then initialised.
    unsafe { res.assume_init() }
}

/// The floor: every word of every record read once and summed (wrapping), in blocks of 8
/// records as the decision's pass reads them.
fn floor_sum(records: &[RankRecord]) -> i32 {
    let mut acc = [0i32; 40];
    let blocks = records.chunks_exact(8);
    let tail = blocks.remainder();
    for block in blocks {
        let mut words = [0i32; 40];
        for (k, r) in block.iter().enumerate() {
            words[5 * k..5 * k + 5].copy_from_slice(&r.to_words());
        }
        for (a, w) in acc.iter_mut().zip(words) {
            *a = a.wrapping_add(w);
        }
    }
    for r in tail {
        for (a, w) in acc.iter_mut().zip(r.to_words()) {
            *a = a.wrapping_add(w);
        }
    }
    acc.iter().fold(0, |a, &b| a.wrapping_add(b))
}

fn host_decide_1024(c: &mut Criterion) {
    const N: i32 = 1024;
    let records = step_records(N);
    let rank = N / 2;
    let mut out = vec![0i32; N as usize];
    let mut res = result();
    // The same records with 4 dead ranks whose slots hold garbage.
    let mut masked = records.clone();
    let mut live = vec![1u8; N as usize];
    for r in [3, 100, 101, 700] {
        live[r] = 0;
        masked[r] = RankRecord::from_words([-1; 5]);
    }
    let ids = vec![123i64; N as usize];
    let mut opts = std::mem::MaybeUninit::<dp_decide_options>::zeroed();
    dp_decide_options_init(opts.as_mut_ptr());
    // SAFETY: initialised by dp_decide_options_init just above.
    let mut opts = unsafe { opts.assume_init() };
    opts.active_ranks = live.as_ptr();
    let mut opts_ids = opts;
    opts_ids.step_ids = ids.as_ptr();
    // Every variant is valid: check once outside the timing.
    let plain = |out: *mut i32, res: &mut dp_batch_result| {
        dp_decide_batch(
            black_box(records.as_ptr()),
            black_box(N),
            black_box(rank),
            black_box(DP_PAD_POLICY_EXPLICIT),
            black_box(2),
            black_box(out),
            black_box(res),
        )
    };
    let with = |o: &dp_decide_options, out: *mut i32, res: &mut dp_batch_result| {
        dp_decide_batch_with_options(
            black_box(masked.as_ptr()),
            black_box(N),
            black_box(rank),
            black_box(o),
            black_box(out),
            black_box(res),
        )
    };
    assert_eq!(plain(out.as_mut_ptr(), &mut res), dp_status::DP_OK);
    assert_eq!(with(&opts, out.as_mut_ptr(), &mut res), dp_status::DP_OK);
    assert_eq!(
        with(&opts_ids, out.as_mut_ptr(), &mut res),
        dp_status::DP_OK
    );

    let mut group = c.benchmark_group("host_decide_1024");
    group.bench_function("floor_sum_of_every_word", |b| {
        b.iter(|| floor_sum(black_box(&records)))
    });
    let out_ptr = out.as_mut_ptr();
    group.bench_function("dp_decide_batch/with_array", |b| {
        b.iter(|| plain(out_ptr, &mut res))
    });
    group.bench_function("dp_decide_batch/without_array", |b| {
        b.iter(|| plain(std::ptr::null_mut(), &mut res))
    });
    group.bench_function("with_options_mask/with_array", |b| {
        b.iter(|| with(&opts, out_ptr, &mut res))
    });
    group.bench_function("with_options_mask/without_array", |b| {
        b.iter(|| with(&opts, std::ptr::null_mut(), &mut res))
    });
    group.bench_function("with_options_mask_step_ids/with_array", |b| {
        b.iter(|| with(&opts_ids, out_ptr, &mut res))
    });
    group.finish();
    black_box((&out, &res));
}

fn slices_1024(c: &mut Criterion) {
    const R: i32 = 1024;
    // A mixed batch: mostly decodes (1 token), some prefill chunks.
    let mut next = lcg(7);
    let counts: Vec<i32> = (0..R)
        .map(|_| {
            if next(10) < 8 {
                1
            } else {
                16 + next(512) as i32
            }
        })
        .collect();
    let total: i32 = counts.iter().sum();
    let padded_tokens = total + 16;
    let mut slices = [UbatchSlice::default(); 4];
    let mut padded = [UbatchSlice::default(); 4];
    let call = |n: i32, slices: &mut [UbatchSlice; 4], padded: &mut [UbatchSlice; 4]| {
        dp_make_ubatch_slices(
            black_box(counts.as_ptr()),
            black_box(R),
            black_box(padded_tokens),
            black_box(R + 8),
            black_box(n),
            black_box(-1),
            black_box(slices.as_mut_ptr()),
            black_box(padded.as_mut_ptr()),
        )
    };
    let split_at = [padded_tokens / 2];
    let call_at = |slices: &mut [UbatchSlice; 4], padded: &mut [UbatchSlice; 4]| {
        dp_make_ubatch_slices_at(
            black_box(counts.as_ptr()),
            black_box(R),
            black_box(padded_tokens),
            black_box(R + 8),
            black_box(2),
            black_box(split_at.as_ptr()),
            black_box(slices.as_mut_ptr()),
            black_box(padded.as_mut_ptr()),
        )
    };
    // V2: the mixed batch (no uniform count: split at P / n), and a spec-decode verification
    // batch (1024 requests of 4 tokens, uniform count 4: split on a request boundary).
    let uniform = vec![4i32; R as usize];
    let call_v2 = |counts: &[i32], p: i32, n: i32, u: i32, slices: &mut [UbatchSlice; 4]| {
        dp_make_ubatch_slices_v2(
            black_box(counts.as_ptr()),
            black_box(R),
            black_box(p),
            black_box(R + 8),
            black_box(n),
            black_box(u),
            black_box(slices.as_mut_ptr()),
        )
    };
    assert_eq!(call(2, &mut slices, &mut padded), dp_status::DP_OK);
    assert_eq!(call(4, &mut slices, &mut padded), dp_status::DP_OK);
    assert_eq!(call_at(&mut slices, &mut padded), dp_status::DP_OK);
    let v2_cases = [
        ("dp_make_ubatch_slices_v2/2", &counts, padded_tokens, 2, 0),
        ("dp_make_ubatch_slices_v2/4", &counts, padded_tokens, 4, 0),
        (
            "dp_make_ubatch_slices_v2/2_uniform_4",
            &uniform,
            4 * R + 16,
            2,
            4,
        ),
    ];
    for &(_, counts, p, n, u) in &v2_cases {
        assert_eq!(call_v2(counts, p, n, u, &mut slices), dp_status::DP_OK);
    }

    let mut group = c.benchmark_group("slices_1024");
    group.bench_function("floor_one_pass_over_counts", |b| {
        b.iter(|| {
            black_box(&counts)
                .iter()
                .fold(0i32, |a, &c| a.wrapping_add(c))
        })
    });
    for n in [2, 4] {
        group.bench_function(BenchmarkId::new("dp_make_ubatch_slices", n), |b| {
            b.iter(|| call(n, &mut slices, &mut padded))
        });
    }
    group.bench_function("dp_make_ubatch_slices_at/2", |b| {
        b.iter(|| call_at(&mut slices, &mut padded))
    });
    for &(name, counts, p, n, u) in &v2_cases {
        group.bench_function(name, |b| b.iter(|| call_v2(counts, p, n, u, &mut slices)));
    }
    group.finish();
    black_box((&slices, &padded));
}

fn decide_sizes(c: &mut Criterion) {
    let mut group = c.benchmark_group("dp_decide_batch");
    for dp_size in DP_SIZES {
        let records = step_records(dp_size);
        let dp_rank = dp_size / 2;
        let mut out = vec![0i32; dp_size as usize];
        let mut res = result();
        let status = dp_decide_batch(
            records.as_ptr(),
            dp_size,
            dp_rank,
            DP_PAD_POLICY_EXPLICIT,
            2,
            out.as_mut_ptr(),
            &mut res,
        );
        assert_eq!(status, dp_status::DP_OK);
        let out_ptr = out.as_mut_ptr();
        for (name, array) in [
            ("with_array", out_ptr),
            ("without_array", std::ptr::null_mut()),
        ] {
            group.bench_function(BenchmarkId::new(name, dp_size), |b| {
                b.iter(|| {
                    dp_decide_batch(
                        black_box(records.as_ptr()),
                        black_box(dp_size),
                        black_box(dp_rank),
                        black_box(DP_PAD_POLICY_EXPLICIT),
                        black_box(2),
                        black_box(array),
                        black_box(&mut res),
                    )
                })
            });
        }
        black_box((&out, &res));
    }
    group.finish();
}

criterion_group!(benches, host_decide_1024, slices_1024, decide_sizes);
criterion_main!(benches);
