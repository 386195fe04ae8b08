//! No allocation on the hot path: `dp_decide_batch`, `dp_decide_batch_with_options` (mask and
//! step ids) and the slicers (`dp_make_ubatch_slices`, `_at`, `_v2`) allocate nothing after
//! their first call, counted by a global allocator (per thread, so other tests' threads do not
//! count).

mod alloc_common;

use dpcoord::ffi::{
    dp_batch_result, dp_batch_result_init, dp_decide_batch, dp_decide_batch_with_options,
    dp_decide_options, dp_decide_options_init, dp_make_ubatch_slices, dp_make_ubatch_slices_at,
    dp_make_ubatch_slices_v2, dp_status, DP_PAD_POLICY_EXPLICIT,
};
use dpcoord::rules::RankRecord;
use dpcoord::slices::UbatchSlice;

use alloc_common::allocations_after_first;

fn records(n: usize) -> Vec<RankRecord> {
    (0..n)
        .map(|i| RankRecord {
            num_tokens_unpadded: 600 + (i % 7) as i32,
            num_tokens_padded: 608 + (i % 7) as i32,
            should_attempt_ubatch: 1,
            should_attempt_dp_pad: 1,
            cudagraph_mode: 2,
        })
        .collect()
}

#[test]
fn decide_allocates_nothing() {
    let recs = records(1024);
    let mut out = vec![0i32; 1024];
    let mut res = std::mem::MaybeUninit::<dp_batch_result>::zeroed();
    dp_batch_result_init(res.as_mut_ptr());
    let n = allocations_after_first(|| {
        let s = dp_decide_batch(
            recs.as_ptr(),
            1024,
            5,
            DP_PAD_POLICY_EXPLICIT,
            2,
            out.as_mut_ptr(),
            res.as_mut_ptr(),
        );
        assert_eq!(s, dp_status::DP_OK);
    });
    assert_eq!(n, 0, "dp_decide_batch allocated");
}

#[test]
fn decide_with_options_allocates_nothing() {
    let mut recs = records(1024);
    let mut live = vec![1u8; 1024];
    for r in [3, 100, 101, 700] {
        live[r] = 0;
        recs[r] = RankRecord::from_words([-1; 5]);
    }
    let ids = vec![77i64; 1024];
    let mut opts = std::mem::MaybeUninit::<dp_decide_options>::zeroed();
    dp_decide_options_init(opts.as_mut_ptr());
    // SAFETY: initialised by dp_decide_options_init just above.
    let mut opts = unsafe { opts.assume_init() };
    opts.active_ranks = live.as_ptr();
    opts.step_ids = ids.as_ptr();
    let mut out = vec![0i32; 1024];
    let mut res = std::mem::MaybeUninit::<dp_batch_result>::zeroed();
    dp_batch_result_init(res.as_mut_ptr());
    let n = allocations_after_first(|| {
        let s = dp_decide_batch_with_options(
            recs.as_ptr(),
            1024,
            5,
            &opts,
            out.as_mut_ptr(),
            res.as_mut_ptr(),
        );
        assert_eq!(s, dp_status::DP_OK);
    });
    assert_eq!(n, 0, "dp_decide_batch_with_options allocated");
}

#[test]
fn slices_allocate_nothing() {
    let counts: Vec<i32> = (0..1024).map(|i| 1 + (i % 5) * 40).collect();
    let total: i32 = counts.iter().sum();
    let mut slices = [UbatchSlice::default(); 4];
    let mut padded = [UbatchSlice::default(); 4];
    let n = allocations_after_first(|| {
        let s = dp_make_ubatch_slices(
            counts.as_ptr(),
            1024,
            total + 8,
            1030,
            4,
            -1,
            slices.as_mut_ptr(),
            padded.as_mut_ptr(),
        );
        assert_eq!(s, dp_status::DP_OK);
    });
    assert_eq!(n, 0, "dp_make_ubatch_slices allocated");
}

#[test]
fn slices_at_allocate_nothing() {
    let counts: Vec<i32> = (0..1024).map(|i| 1 + (i % 5) * 40).collect();
    let total: i32 = counts.iter().sum();
    let points = [total / 5, total / 2, total - 3];
    let mut slices = [UbatchSlice::default(); 4];
    let mut padded = [UbatchSlice::default(); 4];
    let n = allocations_after_first(|| {
        let s = dp_make_ubatch_slices_at(
            counts.as_ptr(),
            1024,
            total + 8,
            1030,
            4,
            points.as_ptr(),
            slices.as_mut_ptr(),
            padded.as_mut_ptr(),
        );
        assert_eq!(s, dp_status::DP_OK);
    });
    assert_eq!(n, 0, "dp_make_ubatch_slices_at allocated");
}

#[test]
fn slices_v2_allocate_nothing() {
    let counts: Vec<i32> = (0..1024).map(|i| 1 + (i % 5) * 40).collect();
    let total: i32 = counts.iter().sum();
    let uniform = vec![4i32; 1024];
    let mut slices = [UbatchSlice::default(); 4];
    // A mixed batch with its last microbatch in padding, and a uniform spec-decode batch.
    let n = allocations_after_first(|| {
        for (counts, p, u) in [(&counts, 2 * total, 0), (&uniform, 4096 + 64, 4)] {
            let s =
                dp_make_ubatch_slices_v2(counts.as_ptr(), 1024, p, 1030, 4, u, slices.as_mut_ptr());
            assert_eq!(s, dp_status::DP_OK);
        }
    });
    assert_eq!(n, 0, "dp_make_ubatch_slices_v2 allocated");
}
