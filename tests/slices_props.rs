//! Property test: `make_ubatch_slices` against a naive model written from the docs/ARCHITECTURE.md text
//! (section 1, "Microbatch slices"): the cumulative sums stored in a vector, the split points
//! listed, `bisect_left` / `bisect_right` done with `partition_point`, every slice checked
//! for emptiness after the fact. A second implementation, not a copy of `src/slices.rs`.

mod slices_common;

use dpcoord::slices::UbatchSlice;
use proptest::prelude::*;
use slices_common::{counts, model, run};

fn library(
    counts: &[i32],
    p: i32,
    rp: i32,
    n: i32,
    s: i32,
) -> Option<(Vec<UbatchSlice>, Vec<UbatchSlice>)> {
    match run(counts, p, rp, n, s) {
        Ok(slices) => Some(slices),
        Err(e) => {
            assert_eq!(e.kind, dpcoord::ErrorKind::InvalidArgument, "{e}");
            None
        }
    }
}

/// `(counts, P, Rp, n, s)`: mostly valid inputs around the edges, some invalid ones.
fn inputs() -> impl Strategy<Value = (Vec<i32>, i32, i32, i32, i32)> {
    counts().prop_flat_map(|counts| {
        let sum: i64 = counts.iter().map(|&c| i64::from(c)).sum();
        let sum = sum.max(0) as i32;
        let r = counts.len() as i32;
        let p = prop_oneof![
            3 => Just(sum),
            4 => sum..sum + 20,
            1 => (sum - 3).max(-2)..sum + 1,
        ];
        let rp = prop_oneof![3 => Just(-1), 3 => r..r + 4, 1 => (r - 2).max(-3)..r + 1];
        let n = prop_oneof![6 => 2..5i32, 1 => 5..9i32, 1 => -1..2i32];
        let s = prop_oneof![4 => Just(-1), 4 => 0..sum + 3, 1 => -4..0i32];
        (Just(counts), p, rp, n, s)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    #[test]
    fn slices_equal_the_naive_model((counts, p, rp, n, s) in inputs()) {
        prop_assert_eq!(library(&counts, p, rp, n, s), model(&counts, p, rp, n, s));
    }

    #[test]
    fn valid_slices_tile_the_tokens((counts, p, rp, n, s) in inputs()) {
        if let Some((slices, padded)) = library(&counts, p, rp, n, s) {
            // Consecutive, starting at 0, ending at the scheduled and padded totals.
            let total: i32 = counts.iter().sum();
            prop_assert_eq!(slices[0].token_begin, 0);
            prop_assert_eq!(slices.last().unwrap().token_end, total);
            prop_assert_eq!(padded.last().unwrap().token_end, p);
            for w in slices.windows(2) {
                prop_assert_eq!(w[0].token_end, w[1].token_begin);
                // A request straddles iff the next slice begins inside the previous one.
                prop_assert!(w[1].request_begin >= w[0].request_end - 1);
            }
            // Every request with tokens lies in some slice.
            let mut begin = 0;
            for (j, &c) in counts.iter().enumerate() {
                let j = j as i32;
                if c > 0 {
                    prop_assert!(slices.iter().any(|s| s.request_begin <= j
                        && j < s.request_end
                        && s.token_begin < begin + c
                        && begin < s.token_end));
                }
                begin += c;
            }
        }
    }
}
