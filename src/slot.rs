//! The wire: the 20-byte record of the 0.1 host path (`dp_rank_record`), the V2 record, and
//! the **slot** (`dp_slot`), the one fixed-size unit every 0.3 transport exchanges per rank
//! (docs/ARCHITECTURE.md, "One slot on every wire"), laid out once for Rust and the
//! post-processing kernel (`kernels` generates the kernel's `layout.h` from these constants),
//! with its checksum and the safe casts between it and words.
//!
//! A slot is 24 `uint32_t` words (96 bytes, no padding byte):
//!
//! | word | field |
//! |---|---|
//! | 0 | sequence number (the coordinator's or group's call count; 0 on the host path) |
//! | 1-8 | the configuration: layout tag, rule set, pad policy, microbatches, the two V2 thresholds, the graph table's hash, the decode query length (every live rank must carry the same eight words) |
//! | 9-10, 11-12 | step id, parent step id (low word first) |
//! | 13-14 | arrival time: `CLOCK_MONOTONIC` ns when the rank entered the exchange |
//! | 15-22 | the record: V1's five words then three zeros, or the eight V2 words |
//! | 23 | checksum |
//!
//! **Checksum**: the words `w[0..24]` of an intact slot satisfy
//! `sum(K[i] * w[i]) == CHECK_TARGET (mod 2^32)` with `K[i] = CHECK_GOLDEN * (2i + 1)` for
//! `i < 23` and `K[23] = 1`; the maker sets `w[23]` so that it holds. Every `K[i]` is odd, so a
//! change of any one word always breaks it; a random change of several words goes unseen with
//! probability 2^-32. A weighted sum rather than a serial hash: the reader's check is one
//! multiply-add per word with no dependency between words (it vectorises on the host and is a
//! short loop in the kernel), and an all-zero slot fails it (the target is not 0).

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

const _: () = assert!(std::mem::size_of::<RankRecord>() == 4 * RECORD_WORDS);

/// `int32` words of one slot.
pub(crate) const SLOT3_WORDS: usize = 24;

/// The word index of every slot field (one source for Rust and `layout.h`).
pub(crate) mod at {
    /// The sequence number.
    pub(crate) const SEQ: usize = 0;
    /// The layout tag ([`super::LAYOUT_TAG`]): first of the configuration words.
    pub(crate) const LAYOUT: usize = 1;
    /// The rule set (`DP_RULES_*`).
    pub(crate) const RULES: usize = 2;
    /// The pad policy (V1; 0 under V2).
    pub(crate) const PAD_POLICY: usize = 3;
    /// `num_ubatches` when microbatching is enabled, else 0.
    pub(crate) const NUM_UBATCHES: usize = 4;
    /// V2 with microbatching enabled: the decode threshold, else 0.
    pub(crate) const DECODE_THRESHOLD: usize = 5;
    /// V2 with microbatching enabled: the prefill threshold, else 0.
    pub(crate) const PREFILL_THRESHOLD: usize = 6;
    /// V2: the graph table's hash (0: no table); V1: 0.
    pub(crate) const GRAPHS: usize = 7;
    /// V2: the decode query length (the table's, 1 without one); V1: 0. Last configuration word.
    pub(crate) const DECODE_QUERY_LEN: usize = 8;
    /// The step id, low word (the high word follows).
    pub(crate) const STEP: usize = 9;
    /// The parent step id, low word (the high word follows).
    pub(crate) const PARENT: usize = 11;
    /// The arrival time in ns, low word (the high word follows).
    pub(crate) const ARRIVAL: usize = 13;
    /// The first record word.
    pub(crate) const RECORD: usize = 15;
    /// Record words in a slot.
    pub(crate) const RECORD_LEN: usize = 8;
    /// The checksum word (the last).
    pub(crate) const CHECK: usize = 23;
}

/// Word [`at::LAYOUT`] of every 0.3 slot: `"dp"` and the layout version 3. A peer with another
/// layout is named as such.
pub(crate) const LAYOUT_TAG: u32 = 0x6470_0003;
/// The multiplier of the checksum weights (see the module docs).
pub(crate) const CHECK_GOLDEN: u32 = 0x9E37_79B1;
/// What the weighted sum of an intact slot's words comes to (see the module docs).
pub(crate) const CHECK_TARGET: u32 = 0x6470_7333;

const _: () = assert!(at::RECORD + at::RECORD_LEN == at::CHECK && at::CHECK + 1 == SLOT3_WORDS);

/// One rank's slot: exchange `sizeof(dp_slot)` bytes per rank (e.g. `MPI_Allgather`) and hand
/// every rank's slot, indexed by rank, to `dp_decide_slots`. Opaque: write it only with
/// `dp_make_slot`; a slot whose bytes changed on the way fails its checksum.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Pod, Zeroable)]
pub struct Slot {
    /// The slot's words (see docs/ARCHITECTURE.md, "One slot on every wire").
    pub opaque: [u32; 24],
}

/// The configuration words of a slot (words 1-8): every live rank must carry the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Settings {
    /// `DP_RULES_*`.
    pub(crate) rules: i32,
    /// V1's pad policy; 0 under V2.
    pub(crate) pad_policy: i32,
    /// `num_ubatches` when microbatching is enabled, else 0.
    pub(crate) num_ubatches: i32,
    /// V2 with microbatching enabled: the decode threshold, else 0.
    pub(crate) decode_threshold: i32,
    /// V2 with microbatching enabled: the prefill threshold, else 0.
    pub(crate) prefill_threshold: i32,
    /// V2: the graph table's hash, 0 without a table; V1: 0.
    pub(crate) graphs: u32,
    /// V2: the decode query length; V1: 0.
    pub(crate) decode_query_len: i32,
}

impl Settings {
    /// `(name, word)` of every configuration word after the layout tag, in slot order.
    pub(crate) fn named_words(&self) -> [(&'static str, u32); 7] {
        [
            ("rules", self.rules as u32),
            ("pad_policy", self.pad_policy as u32),
            (
                "num_ubatches (0: microbatching disabled)",
                self.num_ubatches as u32,
            ),
            (
                "ubatch.decode_token_threshold",
                self.decode_threshold as u32,
            ),
            (
                "ubatch.prefill_token_threshold",
                self.prefill_threshold as u32,
            ),
            ("graph table (hash)", self.graphs),
            ("decode_query_len", self.decode_query_len as u32),
        ]
    }
}

/// The checksum weight of word `i`.
const fn weight(i: usize) -> u32 {
    if i == at::CHECK {
        1
    } else {
        CHECK_GOLDEN.wrapping_mul(2 * i as u32 + 1)
    }
}

/// Every word's checksum weight.
pub(crate) const WEIGHTS: [u32; SLOT3_WORDS] = {
    let mut k = [0u32; SLOT3_WORDS];
    let mut i = 0;
    while i < SLOT3_WORDS {
        k[i] = weight(i);
        i += 1;
    }
    k
};

/// Every word's checksum weight `K[i]` (see the module docs): what the kernel's `layout.h`
/// carries (generated by its test-only writer).
#[cfg(test)]
pub(crate) const fn check_weights() -> [u32; SLOT3_WORDS] {
    WEIGHTS
}

/// `sum(K[i] * w[i])` over every word (mod 2^32).
#[inline(always)]
fn weighted_sum(w: &[u32; SLOT3_WORDS]) -> u32 {
    w.iter()
        .zip(WEIGHTS)
        .fold(0u32, |acc, (&x, k)| acc.wrapping_add(x.wrapping_mul(k)))
}

/// The 64-bit value of two words (low, high): a step id, an arrival time.
pub(crate) fn join64(lo: u32, hi: u32) -> i64 {
    ((u64::from(hi) << 32) | u64::from(lo)) as i64
}

impl Slot {
    /// A sealed slot: the given fields, then the checksum.
    pub(crate) fn new(
        seq: u32,
        settings: &Settings,
        step_id: i64,
        parent_step_id: i64,
        arrival_ns: i64,
        record: [i32; 8],
    ) -> Slot {
        let mut w = [0u32; SLOT3_WORDS];
        w[at::SEQ] = seq;
        w[at::LAYOUT] = LAYOUT_TAG;
        for (i, (_, v)) in settings.named_words().into_iter().enumerate() {
            w[at::RULES + i] = v;
        }
        for (at, v) in [
            (at::STEP, step_id),
            (at::PARENT, parent_step_id),
            (at::ARRIVAL, arrival_ns),
        ] {
            w[at] = v as u64 as u32;
            w[at + 1] = ((v as u64) >> 32) as u32;
        }
        for (dst, v) in w[at::RECORD..at::CHECK].iter_mut().zip(record) {
            *dst = v as u32;
        }
        let mut slot = Slot { opaque: w };
        slot.seal();
        slot
    }

    /// The invalid-request marker: what a rank whose request is invalid exchanges, so that
    /// every rank fails the step together and none waits for it (every record word -1, no
    /// configuration; its sequence number and arrival time are real).
    pub(crate) fn marker(seq: u32, arrival_ns: i64) -> Slot {
        let none = Settings {
            rules: 0,
            pad_policy: 0,
            num_ubatches: 0,
            decode_threshold: 0,
            prefill_threshold: 0,
            graphs: 0,
            decode_query_len: 0,
        };
        Slot::new(seq, &none, 0, 0, arrival_ns, [-1; 8])
    }

    /// Sets the checksum word so that the slot is intact.
    pub(crate) fn seal(&mut self) {
        self.opaque[at::CHECK] = 0;
        let sum = weighted_sum(&self.opaque);
        self.opaque[at::CHECK] = CHECK_TARGET.wrapping_sub(sum);
    }

    /// The slot's words as three 8-word vectors (words 0-7, 8-15, 16-23), as the readers'
    /// vectorised pass takes them.
    #[inline(always)]
    pub(crate) fn thirds(&self) -> &[[u32; 8]; 3] {
        bytemuck::cast_ref(&self.opaque)
    }

    /// Whether the checksum holds.
    #[inline(always)]
    pub(crate) fn intact(&self) -> bool {
        weighted_sum(&self.opaque) == CHECK_TARGET
    }

    /// The sequence number.
    pub(crate) fn seq(&self) -> u32 {
        self.opaque[at::SEQ]
    }

    /// The layout tag word.
    pub(crate) fn layout(&self) -> u32 {
        self.opaque[at::LAYOUT]
    }

    /// The configuration words after the layout tag.
    pub(crate) fn settings(&self) -> Settings {
        let w = |i: usize| self.opaque[i];
        Settings {
            rules: w(at::RULES) as i32,
            pad_policy: w(at::PAD_POLICY) as i32,
            num_ubatches: w(at::NUM_UBATCHES) as i32,
            decode_threshold: w(at::DECODE_THRESHOLD) as i32,
            prefill_threshold: w(at::PREFILL_THRESHOLD) as i32,
            graphs: w(at::GRAPHS),
            decode_query_len: w(at::DECODE_QUERY_LEN) as i32,
        }
    }

    /// The configuration words (1-8) as one array, for comparing slots.
    #[inline(always)]
    pub(crate) fn config_words(&self) -> &[u32] {
        &self.opaque[at::LAYOUT..=at::DECODE_QUERY_LEN]
    }

    /// The step id.
    pub(crate) fn step_id(&self) -> i64 {
        join64(self.opaque[at::STEP], self.opaque[at::STEP + 1])
    }

    /// The parent step id.
    pub(crate) fn parent_step_id(&self) -> i64 {
        join64(self.opaque[at::PARENT], self.opaque[at::PARENT + 1])
    }

    /// The arrival time (ns of `CLOCK_MONOTONIC`).
    pub(crate) fn arrival_ns(&self) -> i64 {
        join64(self.opaque[at::ARRIVAL], self.opaque[at::ARRIVAL + 1])
    }

    /// The eight record words.
    #[inline(always)]
    pub(crate) fn record(&self) -> [i32; 8] {
        std::array::from_fn(|i| self.opaque[at::RECORD + i] as i32)
    }

    /// The V1 record (the first five record words).
    #[inline(always)]
    pub(crate) fn v1_record(&self) -> RankRecord {
        let r = self.record();
        RankRecord::from_words([r[0], r[1], r[2], r[3], r[4]])
    }

    /// Whether this is the invalid-request marker (every record word -1).
    #[inline(always)]
    pub(crate) fn is_marker(&self) -> bool {
        self.record() == [-1; 8]
    }
}

/// Now, in ns of `CLOCK_MONOTONIC` (shared by the processes of one host): a slot's arrival time.
pub(crate) fn now_ns() -> i64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec
        .saturating_mul(1_000_000_000)
        .saturating_add(t.tv_nsec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            rules: 1,
            pad_policy: 0,
            num_ubatches: 2,
            decode_threshold: 32,
            prefill_threshold: 512,
            graphs: 0xdead_beef,
            decode_query_len: 4,
        }
    }

    #[test]
    fn a_slot_round_trips_every_field_and_is_intact() {
        let s = Slot::new(
            7,
            &settings(),
            -5,
            i64::MAX,
            1 << 40,
            [1, 2, 3, 4, 5, 6, 7, 8],
        );
        assert!(s.intact());
        assert_eq!(s.opaque[at::SEQ], 7);
        assert_eq!(s.layout(), LAYOUT_TAG);
        assert_eq!(s.settings(), settings());
        assert_eq!(
            (s.step_id(), s.parent_step_id(), s.arrival_ns()),
            (-5, i64::MAX, 1 << 40)
        );
        assert_eq!(s.record(), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(s.v1_record(), RankRecord::from_words([1, 2, 3, 4, 5]));
        assert!(!s.is_marker());
        assert!(Slot::marker(3, 9).is_marker() && Slot::marker(3, 9).intact());
        assert_eq!(std::mem::size_of::<Slot>(), 96);
    }

    #[test]
    fn any_change_of_one_word_breaks_the_checksum() {
        let s = Slot::new(7, &settings(), 11, 0, 99, [1, 2, 3, 4, 5, 0, 0, 0]);
        for i in 0..SLOT3_WORDS {
            for delta in [1u32, 2, 0x8000_0000, 0xffff_ffff, 12345] {
                let mut t = s;
                t.opaque[i] = t.opaque[i].wrapping_add(delta);
                assert!(!t.intact(), "word {i} + {delta:#x} went unseen");
            }
        }
        assert!(!Slot::zeroed().intact(), "an all-zero slot must fail");
    }

    #[test]
    fn record_words_are_the_fields_in_order() {
        let r = [RankRecord::from_words([1, 2, 3, 4, 5]), RankRecord::MARKER];
        assert_eq!(RankRecord::words(&r), &[1, 2, 3, 4, 5, -1, -1, -1, -1, -1]);
        assert_eq!(r[0].to_words()[REC_MODE], 5);
    }
}
