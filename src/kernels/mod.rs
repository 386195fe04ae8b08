//! The post-processing kernel: CUDA C source `postprocess.cu`, compiled by
//! `scripts/gen_ptx.py` (NVRTC 12.0, `compute_70`) into the committed `postprocess.ptx`
//! (PTX ISA 8.0, target sm_70: loads on any sm_70+ GPU with any CUDA 12+ driver).
//!
//! The constants below are the **one source** of the wire, host-block and device-table
//! layout, of the checksum and of the status, policy and mode numbers: `layout.h` (which the
//! kernel includes) is generated from them by [`layout_header`], and a test fails when the
//! committed file differs (`DPCOORD_BLESS=1 cargo test --lib kernels` rewrites it; then run
//! `scripts/gen_ptx.py`). The slot's own layout and checksum come from [`crate::slot`], the
//! device graph table's (`TABLE_*`) from `rules::graphs`' device form.
//!
//! Wire: each rank contributes one [`crate::slot::Slot`] of [`SLOT_WORDS`] words (sequence
//! number, configuration, step ids, arrival time, record, checksum); `ncclAllGather` lays the
//! slots out by rank. `dp_postprocess` checks every slot in the contract's order (this
//! exchange's sequence number, then what `rules::slots::check` checks: checksum, marker,
//! configuration, step ids), decides as `rules::slots::decide_v1` or `decide_v2` (by the
//! slots' rule set, with the configuration they carry; V2 with vLLM's dispatch over the device
//! graph table: a few loads, its directories prefetched into shared memory with the slots),
//! finds the straggler, and writes the decision to a device array and to a mapped pinned host
//! block laid out as the `HOST_*` constants say (one warp store for the header), `HOST_SEQ`
//! last.
//!
//! The checks and the decision are written in the common subset of C and CUDA C++, between
//! two marker lines of `postprocess.cu`: the tests' fake CUDA driver (`tests/fake_gpu`)
//! compiles exactly that text with the host's C compiler and runs it as its `dp_postprocess`,
//! so the kernel's arithmetic is compared with `rules::slots` where there is no GPU.
//!
//! Launch contract of `dp_postprocess`: one block of a multiple of 32 threads up to
//! [`BLOCK_THREADS`], no dynamic shared memory, on the stream of the allgather. The slots
//! (`SLOT_WORDS * dp_size` words, 16-byte aligned), the device array (`dp_size` ints) and the
//! host block ([`host_block_words`] ints, the device pointer of mapped pinned memory) must not
//! overlap one another; the device table is NULL or `GraphTable::device_words` of the
//! slots' table, 16-byte aligned, at least [`TABLE_PREFETCH_WORDS`] words.

use std::ffi::CStr;

use crate::rules::{self, graphs::device as table};
use crate::slot::{self, at};

/// The committed PTX of the kernel.
#[cfg(test)]
pub(crate) const POSTPROCESS_PTX: &str = include_str!("postprocess.ptx");

/// The same PTX, NUL-terminated, as `cuModuleLoadData` wants it.
pub(crate) const POSTPROCESS_PTX_CSTR: &CStr =
    match CStr::from_bytes_with_nul(concat!(include_str!("postprocess.ptx"), "\0").as_bytes()) {
        Ok(ptx) => ptx,
        Err(_) => panic!("postprocess.ptx contains a NUL byte"),
    };

/// Entry point `dp_postprocess` (arguments in `postprocess.cu`): 1 block of [`BLOCK_THREADS`].
pub(crate) const POSTPROCESS_KERNEL: &CStr = c"dp_postprocess";

/// Largest dp_size the coordinator hands the kernel (its int indexing allows far more).
pub(crate) const MAX_DP_SIZE: usize = 65536;

/// Declares the layout constants once and the `#define` list of `layout.h` from the same
/// names and values.
macro_rules! layout {
    ($($(#[$doc:meta])* $name:ident: $ty:ty = $value:expr;)*) => {
        // layout.h names every slot word; the kernel and the host read only some.
        $($(#[$doc])* #[allow(dead_code)] pub(crate) const $name: $ty = $value;)*
        /// `(name, C literal)` of every layout constant, in declaration order.
        #[cfg(test)]
        pub(crate) fn layout() -> Vec<(&'static str, String)> {
            vec![$((stringify!($name), CLiteral::c_literal($name))),*]
        }
    };
}

layout! {
    /// Threads per block of `dp_postprocess`: its launch bound (one block; any multiple of 32
    /// up to this works).
    BLOCK_THREADS: u32 = 256;

    /// Words of one slot.
    SLOT_WORDS: usize = slot::SLOT3_WORDS;
    /// Slot word: the sequence number.
    SLOT_SEQ: usize = at::SEQ;
    /// Slot word: the layout tag, the first configuration word.
    SLOT_LAYOUT: usize = at::LAYOUT;
    /// Slot word: the rule set.
    SLOT_RULES: usize = at::RULES;
    /// Slot word: the pad policy.
    SLOT_PAD_POLICY: usize = at::PAD_POLICY;
    /// Slot word: `num_ubatches` (0: microbatching disabled).
    SLOT_NUM_UBATCHES: usize = at::NUM_UBATCHES;
    /// Slot word: the V2 decode threshold.
    SLOT_DECODE_THRESHOLD: usize = at::DECODE_THRESHOLD;
    /// Slot word: the V2 prefill threshold.
    SLOT_PREFILL_THRESHOLD: usize = at::PREFILL_THRESHOLD;
    /// Slot word: the V2 graph table's hash.
    SLOT_GRAPHS: usize = at::GRAPHS;
    /// Slot word: the V2 decode query length, the last configuration word.
    SLOT_DECODE_QUERY_LEN: usize = at::DECODE_QUERY_LEN;
    /// Slot words: the step id (low word, then high).
    SLOT_STEP: usize = at::STEP;
    /// Slot words: the parent step id (low word, then high).
    SLOT_PARENT: usize = at::PARENT;
    /// Slot words: the arrival time in ns (low word, then high).
    SLOT_ARRIVAL: usize = at::ARRIVAL;
    /// Slot words: the record.
    SLOT_RECORD: usize = at::RECORD;
    /// Record words in a slot.
    SLOT_RECORD_WORDS: usize = at::RECORD_LEN;
    /// Slot word: the checksum.
    SLOT_CHECK: usize = at::CHECK;
    /// What the weighted sum of an intact slot's words comes to (the weights are
    /// `CHECK_WEIGHTS`, written after these constants).
    CHECK_TARGET: u32 = slot::CHECK_TARGET;

    /// Record word: num_tokens_unpadded.
    REC_UNPADDED: usize = slot::REC_UNPADDED;
    /// Record word: num_tokens_padded.
    REC_PADDED: usize = slot::REC_PADDED;
    /// Record word: should_attempt_ubatch.
    REC_ATTEMPT_UBATCH: usize = slot::REC_ATTEMPT_UBATCH;
    /// Record word: should_attempt_dp_pad.
    REC_ATTEMPT_DP_PAD: usize = slot::REC_ATTEMPT_DP_PAD;
    /// Record word: cudagraph_mode.
    REC_MODE: usize = slot::REC_MODE;

    /// Host word: the exchange's sequence number, written last (poll it, then read the rest).
    HOST_SEQ: usize = 0;
    /// Host word: one of the `STATUS_*` values.
    HOST_STATUS: usize = 1;
    /// Host word: should_ubatch (0/1; V2: the graph runs several microbatches).
    HOST_SHOULD_UBATCH: usize = 2;
    /// Host word: should_dp_pad (0/1; V2: every rank runs the graph's tokens).
    HOST_SHOULD_DP_PAD: usize = 3;
    /// Host word: synced_cudagraph_mode (V2: the descriptor's mode).
    HOST_SYNCED_CUDAGRAPH_MODE: usize = 4;
    /// Host word: num_tokens_after_padding of `dp_rank`.
    HOST_NUM_TOKENS_AFTER_PADDING_SELF: usize = 5;
    /// Host word: max_num_tokens_padded (V2: the largest live `num_tokens`).
    HOST_MAX_NUM_TOKENS_PADDED: usize = 6;
    /// Host word: min_num_tokens_unpadded (V2: the smallest live `num_tokens`).
    HOST_MIN_NUM_TOKENS_UNPADDED: usize = 7;
    /// Host word: the microbatches this step runs (1 when not microbatching).
    HOST_NUM_UBATCHES: usize = 8;
    /// Host word: the rank with the latest arrival time, the lowest such on a tie.
    HOST_LAST_RANK: usize = 9;
    /// Host words: latest minus earliest arrival time in ns, low word then high.
    HOST_SKEW: usize = 10;
    /// Host word: the rule set decided (`DP_RULES_*`); the words below are V2's (0 for V1).
    HOST_RULES: usize = 12;
    /// Host word: V2 `idle` (0/1).
    HOST_IDLE: usize = 13;
    /// Host word: V2 `eager` (0/1).
    HOST_EAGER: usize = 14;
    /// Host word: V2 `skip_drafts` (0/1).
    HOST_SKIP_DRAFTS: usize = 15;
    /// Host word: V2, the agreement has a per-rank array (0/1).
    HOST_HAS_ARRAY: usize = 16;
    /// Host word: V2 descriptor tokens.
    HOST_GRAPH_NUM_TOKENS: usize = 17;
    /// Host word: V2 descriptor requests (-1 = none).
    HOST_GRAPH_NUM_REQS: usize = 18;
    /// Host word: V2 descriptor uniform count (0 = none).
    HOST_GRAPH_UNIFORM: usize = 19;
    /// Host word: V2 descriptor query bound (-1 = none).
    HOST_GRAPH_MAX_QUERY_LEN: usize = 20;
    /// Host word: V2 descriptor LoRA case.
    HOST_GRAPH_LORAS: usize = 21;
    /// Host word: V2 agreed uniform count (0 = none or disagreed).
    HOST_AGREED_UNIFORM: usize = 22;
    /// Host word: V2 agreed query bound (-1 = none).
    HOST_AGREED_MAX_QUERY_LEN: usize = 23;
    /// Host word: V2 largest live request count.
    HOST_MAX_NUM_REQS: usize = 24;
    /// Host words before the per-rank array (which is followed by the slot copy); one warp
    /// writes them with one store.
    HOST_HEADER_WORDS: usize = 25;

    /// Status word: the decision is valid and both arrays were written.
    STATUS_OK: i32 = 0;
    /// Status word: some slot does not carry this exchange's sequence number (an aborted or
    /// partial collective, or a recreated coordinator): nothing of this exchange is trusted.
    STATUS_STALE: i32 = 1;
    /// Status word: some slot fails its checksum.
    STATUS_CORRUPT: i32 = 2;
    /// Status word: some rank sent the invalid-request marker.
    STATUS_MARKER: i32 = 3;
    /// Status word: some slot's configuration words differ from rank 0's.
    STATUS_CONFIG: i32 = 4;
    /// Status word: some slot's step id or parent step id differs from rank 0's.
    STATUS_STEP_IDS: i32 = 5;
    /// Status word: some record (or the launch's dp_size or dp_rank) is invalid.
    STATUS_INVALID: i32 = 6;
    /// Status word: EXPLICIT pad policy and the ranks' `should_attempt_dp_pad` flags differ.
    STATUS_INCONSISTENT: i32 = 7;

    /// `pad_policy` EXPLICIT (`DP_PAD_POLICY_EXPLICIT`); any other is WHEN_CUDAGRAPH, as in
    /// the host's decision.
    PAD_POLICY_EXPLICIT: i32 = rules::DP_PAD_POLICY_EXPLICIT;
    /// `num_ubatches` of a slot that carries 0 (microbatching disabled).
    DEFAULT_NUM_UBATCHES: i32 = rules::DEFAULT_NUM_UBATCHES;
    /// `cudagraph_mode` NONE (`DP_CUDAGRAPH_NONE`).
    CUDAGRAPH_NONE: i32 = rules::DP_CUDAGRAPH_NONE;
    /// `cudagraph_mode` FULL (`DP_CUDAGRAPH_FULL`), the largest mode.
    CUDAGRAPH_FULL: i32 = rules::DP_CUDAGRAPH_FULL;
    /// `cudagraph_mode` PIECEWISE (`DP_CUDAGRAPH_PIECEWISE`).
    CUDAGRAPH_PIECEWISE: i32 = rules::DP_CUDAGRAPH_PIECEWISE;
    /// `rules` V1 (`DP_RULES_VLLM_V1`).
    RULES_VLLM_V1: i32 = rules::DP_RULES_VLLM_V1;
    /// `rules` V2 (`DP_RULES_VLLM_V2`); any other rule-set word decides V1, as on the host.
    RULES_VLLM_V2: i32 = rules::DP_RULES_VLLM_V2;

    /// Words of the device table (`rules::graphs`' device form) that warp 0 copies into
    /// shared memory at the kernel's start (its header and, for any usual table, its
    /// directories); the coordinator's copy of a table holds at least this many words.
    TABLE_PREFETCH_WORDS: usize = 256;
    /// Table header word: the table's hash.
    TABLE_HASH: usize = table::HASH;
    /// Table header word: the number of graphs.
    TABLE_NUM_GRAPHS: usize = table::NUM_GRAPHS;
    /// Table header word: the number of LoRA cases.
    TABLE_LORA_COUNT: usize = table::LORA_COUNT;
    /// Table header word: where the LoRA cases are.
    TABLE_LORA_AT: usize = table::LORA_AT;
    /// Table header word: the number of token directory entries.
    TABLE_TOKEN_COUNT: usize = table::TOKEN_COUNT;
    /// Table header word: where the token directory is.
    TABLE_TOKEN_AT: usize = table::TOKEN_AT;
    /// Table header word: the number of decode directory entries.
    TABLE_DECODE_COUNT: usize = table::DECODE_COUNT;
    /// Table header word: where the decode directory is.
    TABLE_DECODE_AT: usize = table::DECODE_AT;
    /// Words of one directory entry.
    TABLE_DIR_WORDS: usize = table::DIR_WORDS;
    /// Directory word: the block's uniform count (0: a token block).
    TABLE_DIR_UNIFORM: usize = table::DIR_UNIFORM;
    /// Directory word: the block's LoRA case.
    TABLE_DIR_LORAS: usize = table::DIR_LORAS;
    /// Directory word: the block's num_ubatches.
    TABLE_DIR_UBATCHES: usize = table::DIR_UBATCHES;
    /// Directory word: the block's largest key.
    TABLE_DIR_MAX_KEY: usize = table::DIR_MAX_KEY;
    /// Directory word: entries indexed by the key itself below this.
    TABLE_DIR_DENSE_LEN: usize = table::DIR_DENSE_LEN;
    /// Directory word: where the block's entries are.
    TABLE_DIR_ENTRIES_AT: usize = table::DIR_ENTRIES_AT;
    /// Directory word: the number of keys.
    TABLE_DIR_NUM_KEYS: usize = table::DIR_NUM_KEYS;
    /// Directory word: where the keys are.
    TABLE_DIR_KEYS_AT: usize = table::DIR_KEYS_AT;
    /// Words of one entry.
    TABLE_ENTRY_WORDS: usize = table::ENTRY_WORDS;
    /// Entry word: the first FULL candidate's tokens (0: none).
    TABLE_E_TOKENS: usize = table::E_TOKENS;
    /// Entry word: its requests.
    TABLE_E_REQS: usize = table::E_REQS;
    /// Entry word: its uniform count.
    TABLE_E_UNIFORM: usize = table::E_UNIFORM;
    /// Entry word: its query bound.
    TABLE_E_MQL: usize = table::E_MQL;
    /// Entry word: the number of further FULL candidates.
    TABLE_E_REST_COUNT: usize = table::E_REST_COUNT;
    /// Entry word: where they are.
    TABLE_E_REST_AT: usize = table::E_REST_AT;
    /// Entry word: the PIECEWISE size (0: none).
    TABLE_E_PIECEWISE: usize = table::E_PIECEWISE;
    /// Words of one further FULL candidate (tokens, requests, uniform count, query bound).
    TABLE_REST_WORDS: usize = table::REST_WORDS;
}

// One warp writes the header, lane i word i (the kernel static_asserts it too).
const _: () = assert!(HOST_HEADER_WORDS <= 32);

/// First word of the per-rank num_tokens_after_padding array (written only on OK).
pub(crate) const fn host_array_offset() -> usize {
    HOST_HEADER_WORDS
}

/// First word of the copy of all slots (written only when the status is not OK).
pub(crate) const fn host_slots_offset(dp_size: usize) -> usize {
    HOST_HEADER_WORDS + dp_size
}

/// `int32` words of the host block for `dp_size` ranks: header, array, slot copy.
pub(crate) const fn host_block_words(dp_size: usize) -> usize {
    HOST_HEADER_WORDS + (1 + SLOT_WORDS) * dp_size
}

/// The text of `layout.h`: one `#define` per layout constant, from [`layout`] (unsigned ones
/// with a `u` suffix), then `CHECK_WEIGHTS`, the checksum weight of every slot word in order,
/// as the initialiser of an `unsigned int[SLOT_WORDS]`.
#[cfg(test)]
pub(crate) fn layout_header() -> String {
    let mut s = String::from(
        "// GENERATED FILE: do not edit. The wire and host-block layout of the post-processing\n\
         // kernel, from the constants of src/kernels/mod.rs and src/slot.rs (their one source);\n\
         // regenerate with `DPCOORD_BLESS=1 cargo test --lib kernels`, then\n\
         // `python3 scripts/gen_ptx.py`.\n\
         #ifndef DPCOORD_KERNEL_LAYOUT_H\n#define DPCOORD_KERNEL_LAYOUT_H\n",
    );
    for (name, value) in layout() {
        s.push_str(&format!("#define {name} {value}\n"));
    }
    let weights: Vec<String> = slot::check_weights()
        .iter()
        .map(|k| format!("{k:#010x}u"))
        .collect();
    s.push_str(&format!("#define CHECK_WEIGHTS {}\n", weights.join(", ")));
    s.push_str("#endif  // DPCOORD_KERNEL_LAYOUT_H\n");
    s
}

/// A layout constant as C writes it (an unsigned one with its `u` suffix).
#[cfg(test)]
trait CLiteral {
    fn c_literal(self) -> String;
}

#[cfg(test)]
impl CLiteral for usize {
    fn c_literal(self) -> String {
        self.to_string()
    }
}

#[cfg(test)]
impl CLiteral for i32 {
    fn c_literal(self) -> String {
        self.to_string()
    }
}

#[cfg(test)]
impl CLiteral for u32 {
    fn c_literal(self) -> String {
        format!("{self}u")
    }
}

#[cfg(test)]
mod tests;
