//! Call sites for `benches/diag.rs`: what a switched-off TRACE line and NVTX range cost next
//! to the same function without them.

use std::hint::black_box;

use crate::diag::{self, Ctx, Level};

/// The baseline: takes the arguments a call site has and does nothing with them.
#[inline(never)]
pub fn plain(rank: i32, step_id: i64, tokens: i32) {
    black_box((rank, step_id, tokens));
}

/// [`plain`] plus a TRACE line with a context and an argument.
#[inline(never)]
pub fn with_trace(rank: i32, step_id: i64, tokens: i32) {
    black_box((rank, step_id, tokens));
    diag::log!(
        Level::Trace,
        Ctx::new().rank(rank, 8).step(step_id),
        "dp_coordinator_end: tokens {tokens}"
    );
}

/// [`plain`] plus an NVTX range around it.
#[inline(never)]
pub fn with_range(rank: i32, step_id: i64, tokens: i32) {
    let _range = diag::range(c"dp_coordinator_begin", rank, step_id);
    black_box((rank, step_id, tokens));
}
