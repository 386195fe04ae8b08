//! The wire: the 20-byte record of the host path (`dp_rank_record`) and the slot the GPU path
//! exchanges, laid out once for Rust and the post-processing kernel (`kernels` generates the
//! kernel's `layout.h` from these constants), with the safe casts between them and words.

use bytemuck::{Pod, Zeroable};

/// One rank's contribution to the exchange: five `int32_t`, the wire format.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct RankRecord {
    /// Tokens this rank schedules this step.
    pub num_tokens_unpadded: i32,
    /// Tokens including non-DP padding (>= unpadded).
    pub num_tokens_padded: i32,
    /// 1 if this rank wants to microbatch, else 0.
    pub should_attempt_ubatch: i32,
    /// 1 if this rank allows DP padding, else 0.
    pub should_attempt_dp_pad: i32,
    /// This rank's CUDA-graph mode (0 NONE, 1 PIECEWISE, 2 FULL).
    pub cudagraph_mode: i32,
}

impl RankRecord {
    /// The invalid-request marker (-1 in every word): what a rank whose request is invalid
    /// exchanges instead of a record, so that every rank fails the step together and none
    /// waits for it. The GPU path and the host group send it themselves; a caller of the host
    /// path sends it (see the README). No valid request makes it.
    pub(crate) const MARKER: RankRecord = RankRecord {
        num_tokens_unpadded: -1,
        num_tokens_padded: -1,
        should_attempt_ubatch: -1,
        should_attempt_dp_pad: -1,
        cudagraph_mode: -1,
    };

    /// The records as their wire words, `5 * records.len()` of them (record `r`'s field `f`
    /// is word `5 * r + f`): the flat view the decision pass reads with vector loads. A
    /// layout cast, no copy.
    pub(crate) fn words(records: &[RankRecord]) -> &[i32] {
        bytemuck::cast_slice(records)
    }

    /// The five wire words, in record order.
    pub fn to_words(&self) -> [i32; 5] {
        [
            self.num_tokens_unpadded,
            self.num_tokens_padded,
            self.should_attempt_ubatch,
            self.should_attempt_dp_pad,
            self.cudagraph_mode,
        ]
    }

    /// The record whose wire words are `w`.
    pub fn from_words(w: [i32; 5]) -> Self {
        let [num_tokens_unpadded, num_tokens_padded, should_attempt_ubatch, should_attempt_dp_pad, cudagraph_mode] =
            w;
        Self {
            num_tokens_unpadded,
            num_tokens_padded,
            should_attempt_ubatch,
            should_attempt_dp_pad,
            cudagraph_mode,
        }
    }
}

/// One rank's inputs under the V2 rules (docs/ARCHITECTURE.md, "The V2 rule set"): vLLM
/// 0.34.0's seven exchanged rows (`VLLM_V2.md` section 1.1) plus the rank's LoRA count, which
/// only the rank itself reads (it selects its graph family). Eight `int32_t` words.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct V2Record {
    /// Row 0: the step's tokens, not yet padded to a graph (>= 0).
    pub num_tokens: i32,
    /// Row 1: the mode of the rank's own graph dispatch (0 NONE, 1 PIECEWISE, 2 FULL).
    pub cg_mode: i32,
    /// Row 2: the uniform query length, 0 = none.
    pub uniform_token_count: i32,
    /// Row 3: the query-length bound, -1 = none.
    pub max_query_len: i32,
    /// Row 4: 1 if this rank allows microbatching (and it is enabled), else 0.
    pub allow_ubatching: i32,
    /// Row 5: the rank's request count (>= 0).
    pub num_reqs: i32,
    /// Row 6: 1 if this rank allows skipping drafts, else 0.
    pub allow_skip_drafts: i32,
    /// The rank's active LoRA count (local: never read from another rank's record).
    pub num_active_loras: i32,
}

/// `int32` words of one rank record (the wire format of `dp_rank_record`).
pub(crate) const RECORD_WORDS: usize = 5;
/// Record word: num_tokens_unpadded.
pub(crate) const REC_UNPADDED: usize = 0;
/// Record word: num_tokens_padded.
pub(crate) const REC_PADDED: usize = 1;
/// Record word: should_attempt_ubatch.
pub(crate) const REC_ATTEMPT_UBATCH: usize = 2;
/// Record word: should_attempt_dp_pad.
pub(crate) const REC_ATTEMPT_DP_PAD: usize = 3;
/// Record word: cudagraph_mode.
pub(crate) const REC_MODE: usize = 4;

/// Slot word: the coordinator's sequence number of this exchange (never 0).
pub(crate) const SLOT_SEQ: usize = 0;
/// Slot word: low 32 bits of the request's step id.
pub(crate) const SLOT_STEP_LO: usize = 1;
/// Slot word: high 32 bits of the request's step id.
pub(crate) const SLOT_STEP_HI: usize = 2;
/// Slot word: the first of the five record words.
pub(crate) const SLOT_RECORD: usize = 3;
/// `int32` words of one rank's slot on the wire (32 bytes).
pub(crate) const SLOT_WORDS: usize = 8;

const _: () = assert!(std::mem::size_of::<RankRecord>() == 4 * RECORD_WORDS);
const _: () = assert!(SLOT_RECORD + RECORD_WORDS == SLOT_WORDS);

/// One rank's slot: sequence number, step id, record.
pub(crate) fn slot_words(seq: u32, step_id: i64, record: [i32; RECORD_WORDS]) -> [i32; SLOT_WORDS] {
    let mut w = [0i32; SLOT_WORDS];
    w[SLOT_SEQ] = seq as i32;
    w[SLOT_STEP_LO] = step_id as u64 as u32 as i32;
    w[SLOT_STEP_HI] = ((step_id as u64) >> 32) as u32 as i32;
    w[SLOT_RECORD..SLOT_RECORD + RECORD_WORDS].copy_from_slice(&record);
    w
}

/// The step id of two words (low, high).
pub(crate) fn step_id_of(lo: i32, hi: i32) -> i64 {
    ((u64::from(hi as u32) << 32) | u64::from(lo as u32)) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_round_trip_the_step_id() {
        for id in [
            0i64,
            1,
            7,
            -1,
            i64::MAX,
            i64::MIN,
            0x1_0000_0000,
            0xffff_ffff,
        ] {
            let w = slot_words(9, id, [1, 2, 3, 4, 5]);
            assert_eq!(step_id_of(w[SLOT_STEP_LO], w[SLOT_STEP_HI]), id);
            assert_eq!(w[SLOT_SEQ], 9);
            assert_eq!(&w[SLOT_RECORD..], &[1, 2, 3, 4, 5]);
        }
    }

    #[test]
    fn record_words_are_the_fields_in_order() {
        let r = [RankRecord::from_words([1, 2, 3, 4, 5]), RankRecord::MARKER];
        assert_eq!(RankRecord::words(&r), &[1, 2, 3, 4, 5, -1, -1, -1, -1, -1]);
        assert_eq!(r[0].to_words()[REC_MODE], 5);
    }
}
