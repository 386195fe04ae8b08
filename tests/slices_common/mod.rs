//! Helpers shared by the slices test binaries (tests/slices.rs, tests/slices_props.rs): the
//! library call, and a naive model written from the docs/ARCHITECTURE.md text ("Semantics", "Microbatch
//! slices"): the cumulative sums stored in a vector, the split points listed, `bisect_left` /
//! `bisect_right` done with `partition_point`, every slice checked for emptiness after the
//! fact. A second implementation, not a copy of `src/slices.rs`.
#![allow(dead_code)]

use dpcoord::slices::{make_ubatch_slices, SliceInputs, UbatchSlice};
use dpcoord::Error;

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
