//! Helpers shared by the slices test binaries (tests/slices*.rs): the library calls, and naive
//! second implementations, not copies of `src/slices/`:
//!
//! - [`model`], written from the docs/ARCHITECTURE.md text ("Semantics", "Microbatch slices"):
//!   the cumulative sums stored in a vector, the split points listed, `bisect_left` /
//!   `bisect_right` done with `partition_point`, every slice checked for emptiness after the
//!   fact.
//! - [`vllm_v1_lists`], [`model_at`] and [`model_v2`], written from /work/shared/VLLM_V2.md
//!   section 4 with plain loops: the cumulative sums stored, each bisect a count over them,
//!   the V2 split, the padded list and the clamp applied one after another, and emptiness
//!   checked at the end (vLLM's `_slice_input_batch` asserts every slice non-empty).
#![allow(dead_code)]

use dpcoord::slices::{
    make_ubatch_slices, make_ubatch_slices_at, make_ubatch_slices_v2, SliceBatch, SliceInputs,
    UbatchSlice,
};
use dpcoord::{Error, ErrorKind};
use proptest::prelude::*;

/// The slices and the padded slices.
pub type Slices = (Vec<UbatchSlice>, Vec<UbatchSlice>);

/// `make_ubatch_slices` over counts, `P`, `Rp`, `n` and the split point, both outputs sized
/// `n` (at most 64: a larger `n` is refused before the outputs are used, or they are too short).
pub fn run(counts: &[i32], p: i32, rp: i32, n: i32, s: i32) -> Result<Slices, Error> {
    let len = n.clamp(0, 64) as usize;
    let mut slices = vec![UbatchSlice::default(); len];
    let mut padded = vec![UbatchSlice::default(); len];
    let inputs = SliceInputs {
        num_scheduled_tokens: counts,
        num_tokens_padded: p,
        num_requests_padded: rp,
        num_ubatches: n,
        split_point: s,
    };
    make_ubatch_slices(&inputs, &mut slices, Some(&mut padded))?;
    Ok((slices, padded))
}

/// The model's answer: `None` where docs/ARCHITECTURE.md calls the input bad, else (slices, padded).
pub fn model(
    counts: &[i32],
    p: i32,
    rp: i32,
    n: i32,
    s: i32,
) -> Option<(Vec<UbatchSlice>, Vec<UbatchSlice>)> {
    let r = counts.len() as i64;
    if r < 1 || n < 2 || counts.iter().any(|&c| c < 0) {
        return None;
    }
    let rp = if rp == -1 { r } else { i64::from(rp) };
    if rp < r {
        return None;
    }
    let mut cu = vec![0i64];
    for &c in counts {
        cu.push(cu.last().unwrap() + i64::from(c));
    }
    let total = *cu.last().unwrap();
    if total > i64::from(p) {
        return None;
    }
    let s = match s {
        -1 => i64::from(p) / i64::from(n),
        s if s < 0 => return None,
        s => i64::from(s),
    };
    let mut points: Vec<i64> = (1..i64::from(n)).map(|i| s * i).collect();
    points.push(total);
    let bisect_left = |x: i64| cu.partition_point(|&v| v < x) as i64;
    let bisect_right = |x: i64| cu.partition_point(|&v| v <= x) as i64;
    let mut slices = Vec::new();
    let mut start = 0i64;
    for &end in &points {
        slices.push((bisect_right(start) - 1, bisect_left(end), start, end));
        start = end;
    }
    let mut padded = slices.clone();
    let last = padded.last_mut().unwrap();
    last.1 = rp;
    last.3 = i64::from(p);
    let empty = |v: &[(i64, i64, i64, i64)]| v.iter().any(|&(rb, re, tb, te)| rb >= re || tb >= te);
    if empty(&slices) || empty(&padded) {
        return None;
    }
    let to_c = |v: Vec<(i64, i64, i64, i64)>| {
        v.into_iter()
            .map(|(rb, re, tb, te)| UbatchSlice {
                request_begin: i32::try_from(rb).unwrap(),
                request_end: i32::try_from(re).unwrap(),
                token_begin: i32::try_from(tb).unwrap(),
                token_end: i32::try_from(te).unwrap(),
            })
            .collect::<Vec<_>>()
    };
    Some((to_c(slices), to_c(padded)))
}

/// `make_ubatch_slices_at` over counts, `P`, `Rp`, `n` and the split points, both outputs sized
/// `n` (at most 64, as in [`run`]).
pub fn run_at(counts: &[i32], p: i32, rp: i32, n: i32, points: &[i32]) -> Result<Slices, Error> {
    let len = n.clamp(0, 64) as usize;
    let mut slices = vec![UbatchSlice::default(); len];
    let mut padded = vec![UbatchSlice::default(); len];
    let batch = SliceBatch {
        num_scheduled_tokens: counts,
        num_tokens_padded: p,
        num_requests_padded: rp,
        num_ubatches: n,
    };
    make_ubatch_slices_at(&batch, points, &mut slices, Some(&mut padded))?;
    Ok((slices, padded))
}

/// `make_ubatch_slices_v2` over counts, `P`, `Rp`, `n` and the uniform count, the output sized
/// `n` (at most 64, as in [`run`]).
pub fn run_v2(counts: &[i32], p: i32, rp: i32, n: i32, u: i32) -> Result<Vec<UbatchSlice>, Error> {
    let mut slices = vec![UbatchSlice::default(); n.clamp(0, 64) as usize];
    let batch = SliceBatch {
        num_scheduled_tokens: counts,
        num_tokens_padded: p,
        num_requests_padded: rp,
        num_ubatches: n,
    };
    make_ubatch_slices_v2(&batch, u, &mut slices)?;
    Ok(slices)
}

/// `[request_begin, request_end, token_begin, token_end]`, wide, as VLLM_V2.md writes slices.
pub type Wide = [i64; 4];

/// VLLM_V2.md section 4, step 2: V1's `maybe_create_ubatch_slices` for the token boundaries
/// `points` (then the real total), as written, with no check: (the list, the padded list).
/// Slices may be empty or inverted, and request indices may lie past `R`.
pub fn vllm_v1_lists(counts: &[i32], p: i64, rp: i64, points: &[i64]) -> (Vec<Wide>, Vec<Wide>) {
    // cu[0] = 0, cu[j + 1] = cu[j] + counts[j].
    let mut cu = vec![0i64];
    let mut running = 0i64;
    for &c in counts {
        running += i64::from(c);
        cu.push(running);
    }
    // searchsorted(cu, x, side="left"): how many entries are < x; "right": how many are <= x.
    let left = |x: i64| {
        let mut k = 0i64;
        for &v in &cu {
            if v < x {
                k += 1;
            }
        }
        k
    };
    let right = |x: i64| {
        let mut k = 0i64;
        for &v in &cu {
            if v <= x {
                k += 1;
            }
        }
        k
    };
    let mut ends = points.to_vec();
    ends.push(running);
    let mut list = Vec::new();
    let mut start = 0i64;
    for end in ends {
        list.push([right(start) - 1, left(end), start, end]);
        start = end;
    }
    let mut padded = list.clone();
    let last = padded.len() - 1;
    padded[last][1] = rp;
    padded[last][3] = p;
    (list, padded)
}

/// Whether any slice is empty or inverted (requests or tokens).
fn any_empty(list: &[Wide]) -> bool {
    list.iter().any(|s| s[0] >= s[1] || s[2] >= s[3])
}

/// The shared input rules of VLLM_V2.md section 4 / DESIGN 1c: `Some((R, Rp, total))`, or
/// `None` where an input is out of range.
fn batch_rules(counts: &[i32], p: i32, rp: i32, n: i32) -> Option<(i64, i64, i64)> {
    let r = counts.len() as i64;
    if r < 1 || n < 2 || p < 0 {
        return None;
    }
    let mut total = 0i64;
    for &c in counts {
        if c < 0 {
            return None;
        }
        total += i64::from(c);
    }
    let rp = if rp == -1 { r } else { i64::from(rp) };
    if rp < r || total > i64::from(p) {
        return None;
    }
    Some((r, rp, total))
}

fn to_slices(list: &[Wide]) -> Vec<UbatchSlice> {
    list.iter()
        .map(|s| UbatchSlice {
            request_begin: i32::try_from(s[0]).unwrap(),
            request_end: i32::try_from(s[1]).unwrap(),
            token_begin: i32::try_from(s[2]).unwrap(),
            token_end: i32::try_from(s[3]).unwrap(),
        })
        .collect()
}

/// The list form of `split_point` (VLLM_V2.md section 4, last paragraph): exactly `n - 1`
/// boundaries, V1's two lists, refused (`None`) where either list has an empty slice.
pub fn model_at(counts: &[i32], p: i32, rp: i32, n: i32, points: &[i32]) -> Option<Slices> {
    let (_, rp, _) = batch_rules(counts, p, rp, n)?;
    if points.len() as i64 != i64::from(n) - 1 {
        return None;
    }
    let points: Vec<i64> = points.iter().map(|&v| i64::from(v)).collect();
    let (list, padded) = vllm_v1_lists(counts, i64::from(p), rp, &points);
    if any_empty(&list) || any_empty(&padded) {
        return None;
    }
    Some((to_slices(&list), to_slices(&padded)))
}

/// VLLM_V2.md section 4: the split (`(P / (u n)) u` when u > 1 and that is > 0, else `P / n`),
/// V1's padded list, each request range clamped to `[min(start, R-1), min(stop, Rp))`;
/// refused (`None`) on a bad input or an empty slice.
pub fn model_v2(counts: &[i32], p: i32, rp: i32, n: i32, u: i32) -> Option<Vec<UbatchSlice>> {
    let (r, rp, _) = batch_rules(counts, p, rp, n)?;
    if u < 0 {
        return None;
    }
    let (p, n, u) = (i64::from(p), i64::from(n), i64::from(u));
    let mut split = p / n;
    if u > 1 && p / (u * n) > 0 {
        split = p / (u * n) * u;
    }
    let points: Vec<i64> = (1..n).map(|i| split * i).collect();
    let (_, padded) = vllm_v1_lists(counts, p, rp, &points);
    let clamped: Vec<Wide> = padded
        .iter()
        .map(|s| [s[0].min(r - 1), s[1].min(rp), s[2], s[3]])
        .collect();
    if any_empty(&clamped) {
        return None;
    }
    Some(to_slices(&clamped))
}

/// Counts with many zeros and short requests (where bisect's edge cases live), sometimes a
/// long prefill, rarely a negative one; long enough lists to cross the walk's blocks.
pub fn counts() -> impl Strategy<Value = Vec<i32>> {
    let valid = prop_oneof![
        4 => Just(0),
        6 => 1..4i32,
        3 => 4..40i32,
        1 => 40..5000i32,
    ];
    let short = prop_oneof![
        9 => prop::collection::vec(valid.clone(), 0..8),
        6 => prop::collection::vec(valid.clone(), 8..80),
        // Around 2048 requests: the block sums kept by the summing pass, and not.
        1 => prop::collection::vec(valid, 2000..2100),
    ];
    // Rarely, one count made negative.
    (
        short,
        prop::option::weighted(0.07, (any::<prop::sample::Index>(), -3..0i32)),
    )
        .prop_map(|(mut v, negative)| {
            if let (Some((at, c)), false) = (negative, v.is_empty()) {
                let j = at.index(v.len());
                v[j] = c;
            }
            v
        })
}

/// `(counts, P, Rp, n)`: P from no padding to heavy padding (where V2's trailing microbatches
/// lie entirely in padding), some inputs out of range.
pub fn batch() -> impl Strategy<Value = (Vec<i32>, i32, i32, i32)> {
    counts().prop_flat_map(|counts| {
        let sum: i64 = counts.iter().map(|&c| i64::from(c)).sum();
        let sum = sum.max(0) as i32;
        let r = counts.len() as i32;
        let p = prop_oneof![
            3 => Just(sum),
            4 => sum..sum + 20,
            3 => sum..3 * sum + 10,
            1 => (sum - 3).max(-2)..sum + 1,
        ];
        let rp = prop_oneof![3 => Just(-1), 3 => r..r + 40, 1 => (r - 2).max(-3)..r + 1];
        let n = prop_oneof![6 => 2..5i32, 1 => 5..9i32, 1 => -1..2i32];
        (Just(counts), p, rp, n)
    })
}

/// `Some` output, or `None` for an invalid-argument error (any other error fails the test).
pub fn ok_or_invalid<T>(r: Result<T, Error>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(e) => {
            assert_eq!(e.kind, ErrorKind::InvalidArgument, "{e}");
            None
        }
    }
}
