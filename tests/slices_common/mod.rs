//! Helpers shared by the slices test binaries (tests/slices.rs, tests/slices_props.rs).

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
