//! Property tests of V1's list form (`make_ubatch_slices_at`) against the naive model written
//! from /work/shared/VLLM_V2.md section 4 (tests/slices_common: plain loops over stored
//! cumulative sums, not a copy of `src/slices/`), and: evenly spaced points give the int form.

mod slices_common;

use proptest::prelude::*;
use slices_common::{batch, model_at, ok_or_invalid, run, run_at};

/// `(counts, P, Rp, n, points)`: mostly increasing points inside the scheduled tokens, some
/// at or past them or past P, some out of order or repeated, rarely the wrong number.
fn at_inputs() -> impl Strategy<Value = (Vec<i32>, i32, i32, i32, Vec<i32>)> {
    batch().prop_flat_map(|(counts, p, rp, n)| {
        let sum = counts.iter().map(|&c| i64::from(c)).sum::<i64>().max(0) as i32;
        let len = (n - 1).max(0) as usize;
        let len = prop_oneof![12 => Just(len), 1 => 0..len + 2];
        let point = prop_oneof![8 => 1..sum.max(1) + 1, 1 => -2..p.max(0) + 3];
        let points = len.prop_flat_map(move |len| prop::collection::vec(point.clone(), len));
        (Just((counts, p, rp, n)), points, any::<bool>()).prop_map(
            |((counts, p, rp, n), mut points, sorted)| {
                if sorted {
                    points.sort_unstable();
                }
                (counts, p, rp, n, points)
            },
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn at_equals_the_naive_model((counts, p, rp, n, points) in at_inputs()) {
        prop_assert_eq!(
            ok_or_invalid(run_at(&counts, p, rp, n, &points)),
            model_at(&counts, p, rp, n, &points)
        );
    }

    #[test]
    fn evenly_spaced_points_are_the_int_form((counts, p, rp, n) in batch(), s in -1..40i32) {
        // The int form's split (-1: P / n; 0 stands for -1 here) and its points s, 2s, ...,
        // (n-1)s (all below 2^31: s < 40, n < 9, or (P / n) (n - 1) < P).
        let s = if s == 0 { -1 } else { s };
        let split = if s == -1 { p.max(0) / n.max(1) } else { s };
        let points: Vec<i32> = (1..n.max(1)).map(|i| split * i).collect();
        prop_assert_eq!(
            ok_or_invalid(run_at(&counts, p, rp, n, &points)),
            ok_or_invalid(run(&counts, p, rp, n, s))
        );
    }
}
