//! Property tests of the V2 slicer (`make_ubatch_slices_v2`) against the naive model written
//! from /work/shared/VLLM_V2.md section 4 (tests/slices_common: plain loops over stored
//! cumulative sums, not a copy of `src/slices/`), and the section's stated properties: the
//! slices tile `[0, P)`, request ranges are clamped, a straddling request is in both
//! microbatches, a microbatch in padding holds request `R - 1`, and without a uniform count V2
//! is V1's padded list, clamped.

mod slices_common;

use dpcoord::slices::UbatchSlice;
use proptest::prelude::*;
use slices_common::{batch, model_v2, ok_or_invalid, run, run_v2};

/// `(counts, P, Rp, n, u)`: uniform counts none, 1 and spec-decode sizes, rarely negative.
fn v2_inputs() -> impl Strategy<Value = (Vec<i32>, i32, i32, i32, i32)> {
    let u = prop_oneof![3 => Just(0), 2 => Just(1), 3 => 2..9i32, 1 => -3..0i32];
    (batch(), u).prop_map(|((counts, p, rp, n), u)| (counts, p, rp, n, u))
}

/// `cu[j]`, exact.
fn cu(counts: &[i32]) -> Vec<i64> {
    let mut v = vec![0i64];
    for &c in counts {
        v.push(v.last().unwrap() + i64::from(c));
    }
    v
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

    #[test]
    fn v2_equals_the_naive_model((counts, p, rp, n, u) in v2_inputs()) {
        prop_assert_eq!(
            ok_or_invalid(run_v2(&counts, p, rp, n, u)),
            model_v2(&counts, p, rp, n, u)
        );
    }

    #[test]
    fn v2_without_a_uniform_count_is_v1s_padded_list_clamped((counts, p, rp, n) in batch()) {
        // Where V1 accepts (no microbatch empty), V2 (u = 0) is its padded list, clamped.
        if let Some((_, padded)) = ok_or_invalid(run(&counts, p, rp, n, -1)) {
            let r = counts.len() as i32;
            let rp_count = if rp == -1 { r } else { rp };
            let clamped: Vec<UbatchSlice> = padded
                .iter()
                .map(|s| UbatchSlice {
                    request_begin: s.request_begin.min(r - 1),
                    request_end: s.request_end.min(rp_count),
                    ..*s
                })
                .collect();
            prop_assert_eq!(ok_or_invalid(run_v2(&counts, p, rp, n, 0)), Some(clamped));
        }
    }

    #[test]
    fn v2_slices_tile_clamp_and_straddle((counts, p, rp, n, u) in v2_inputs()) {
        if let Some(slices) = ok_or_invalid(run_v2(&counts, p, rp, n, u)) {
            let r = counts.len() as i32;
            let rp = if rp == -1 { r } else { rp };
            let cu = cu(&counts);
            let total = *cu.last().unwrap();
            // Tokens: consecutive from 0 to P; the first n - 1 of one width, the last at least it.
            prop_assert_eq!(slices[0].token_begin, 0);
            prop_assert_eq!(slices.last().unwrap().token_end, p);
            let width = slices[0].token_end;
            for (k, s) in slices.iter().enumerate() {
                let w = s.token_end - s.token_begin;
                let last = k + 1 == slices.len();
                prop_assert!(w == width || (last && w > width), "slice {} of width {}", k, w);
                // Requests: begins clamped to R - 1, ends to Rp, never empty.
                prop_assert!(0 <= s.request_begin && s.request_begin < r);
                prop_assert!(s.request_begin < s.request_end && s.request_end <= rp);
                // A microbatch in padding holds request R - 1 (none of whose tokens it has).
                if i64::from(s.token_begin) >= total {
                    prop_assert_eq!(s.request_begin, r - 1);
                }
            }
            prop_assert_eq!(slices.last().unwrap().request_end, rp);
            // A request holding a boundary strictly inside it is in both microbatches.
            for k in 0..slices.len() - 1 {
                let t = i64::from(slices[k].token_end);
                for j in 0..counts.len() {
                    if cu[j] < t && t < cu[j + 1] {
                        prop_assert_eq!(slices[k].request_end - 1, j as i32);
                        prop_assert_eq!(slices[k + 1].request_begin, j as i32);
                    }
                }
            }
        }
    }
}
