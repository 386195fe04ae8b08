//! What `DPCOORD_DEBUG` and the NVTX ranges cost: a TRACE call site and a range next to the
//! same function without them, and the C ABI's success and failure paths (the failure path
//! carries the WARN hook). The library reads its environment once per process, so the
//! levels are compared across runs:
//!
//! ```text
//! cargo bench --features testing --bench diag                          # off
//! DPCOORD_DEBUG=TRACE DPCOORD_DEBUG_FILE=/dev/null \
//!     cargo bench --features testing --bench diag                      # on
//! ```
//!
//! Each benchmark's name carries the level it ran at (`off`, `WARN`, `INFO`, `TRACE`).

#![allow(missing_docs)] // criterion_group! generates undocumented items.

use std::hint::black_box;
use std::mem::MaybeUninit;

use criterion::{criterion_group, criterion_main, Criterion};
use dpcoord::ffi::{dp_batch_request, dp_batch_request_init, dp_make_record, dp_status};
use dpcoord::rules::RankRecord;
use dpcoord::testing::diag_sites as bench;

/// A benchmarked function: the arguments a call site has (rank, step id, tokens).
type CallSite = fn(i32, i64, i32);

/// The level this run's environment selects, as it appears in the benchmarks' names.
fn level() -> String {
    match std::env::var("DPCOORD_DEBUG") {
        Ok(v)
            if ["WARN", "INFO", "TRACE"]
                .iter()
                .any(|l| v.eq_ignore_ascii_case(l)) =>
        {
            v.to_ascii_uppercase()
        }
        _ => "off".to_owned(),
    }
}

fn request(unpadded: i32) -> dp_batch_request {
    let mut req = MaybeUninit::<dp_batch_request>::uninit();
    dp_batch_request_init(req.as_mut_ptr());
    // SAFETY: dp_batch_request_init writes every field of a non-NULL request.
    let mut req = unsafe { req.assume_init() };
    req.num_tokens_unpadded = unpadded;
    req
}

fn call_sites(c: &mut Criterion) {
    let level = level();
    let mut group = c.benchmark_group(format!("diag/{level}"));
    let sites: [(&str, CallSite); 3] = [
        ("plain", bench::plain),
        ("trace_site", bench::with_trace),
        ("nvtx_range", bench::with_range),
    ];
    for (name, site) in sites {
        group.bench_function(name, |b| {
            let mut step = 0i64;
            b.iter(|| {
                step += 1;
                site(black_box(3), black_box(step), black_box(96));
            })
        });
    }
    let ok = request(64);
    let bad = request(-3);
    let mut record = RankRecord::from_words([0; 5]);
    group.bench_function("dp_make_record_ok", |b| {
        b.iter(|| {
            let status = dp_make_record(black_box(&ok), &mut record);
            assert_eq!(status, dp_status::DP_OK);
        })
    });
    group.bench_function("dp_make_record_failing", |b| {
        b.iter(|| {
            let status = dp_make_record(black_box(&bad), &mut record);
            assert_eq!(status, dp_status::DP_ERR_INVALID_ARGUMENT);
        })
    });
    group.finish();
}

criterion_group!(benches, call_sites);
criterion_main!(benches);
