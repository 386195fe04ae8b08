//! Host path: `dp_decide_batch` through the C ABI entry point, at dp_size 1, 8, 64 and 1024,
//! with and without the per-rank output array (DESIGN.md section 5: under 2 us at 1024).
//!
//! Run: `cargo bench --bench decide -- --warm-up-time 1 --measurement-time 3`.

#![allow(missing_docs)] // criterion_group! generates undocumented items.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use dpcoord::ffi::{dp_batch_result, dp_decide_batch, dp_status, DP_PAD_POLICY_EXPLICIT};
use dpcoord::rules::{make_record, RankRecord, Request, UbatchConfig};

const DP_SIZES: [i32; 4] = [1, 8, 64, 1024];

/// A deterministic step's records: mostly decode ranks, some prefill, CUDA-graph modes mixed,
/// microbatching attempted where the thresholds allow it, every rank allowing DP padding (the
/// flags of a valid step are all equal under EXPLICIT).
fn step_records(dp_size: i32) -> Vec<RankRecord> {
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15 ^ dp_size as u64;
    let mut next = move |bound: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (state >> 33) % bound
    };
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
                timeout_ms: 0,
                step_id: 0,
            };
            make_record(&req).expect("a valid request")
        })
        .collect()
}

fn empty_result() -> dp_batch_result {
    dp_batch_result {
        struct_size: std::mem::size_of::<dp_batch_result>() as u32,
        should_ubatch: false,
        should_dp_pad: false,
        has_num_tokens_after_padding: false,
        synced_cudagraph_mode: 0,
        dp_rank: 0,
        dp_size: 0,
        num_tokens_after_padding_self: 0,
        max_num_tokens_padded: 0,
        min_num_tokens_unpadded: 0,
        num_tokens_after_padding: std::ptr::null(),
        num_tokens_after_padding_device: std::ptr::null(),
        step_id: 0,
    }
}

fn decide(c: &mut Criterion) {
    let mut group = c.benchmark_group("dp_decide_batch");
    for dp_size in DP_SIZES {
        let records = step_records(dp_size);
        let dp_rank = dp_size / 2;
        let mut out = vec![0i32; dp_size as usize];
        let mut result = empty_result();
        // The step is valid: check once outside the timing.
        let status = dp_decide_batch(
            records.as_ptr(),
            dp_size,
            dp_rank,
            DP_PAD_POLICY_EXPLICIT,
            2,
            out.as_mut_ptr(),
            &mut result,
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
                        black_box(&mut result),
                    )
                })
            });
        }
        black_box((&out, &result));
    }
    group.finish();
}

criterion_group!(benches, decide);
criterion_main!(benches);
