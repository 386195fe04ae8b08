//! The post-processing kernel: CUDA C source `postprocess.cu`, compiled by
//! `scripts/gen_ptx.py` (NVRTC 12.0, `compute_70`) into the committed `postprocess.ptx`
//! (PTX ISA 8.0, target sm_70: loads on any sm_70+ GPU with any CUDA 12+ driver).
//!
//! The constants below are the **one source** of the wire and host-block layout and of the
//! status, policy and mode numbers: `layout.h` (which the kernel includes) is generated from
//! them by [`layout_header`], and a test fails when the committed file differs
//! (`DPCOORD_BLESS=1 cargo test --lib kernels` rewrites it; then run `scripts/gen_ptx.py`).
//!
//! Wire: each rank contributes one slot of [`SLOT_WORDS`] int32 (the coordinator's sequence
//! number, the step id as two words, the five record words); `ncclAllGather` lays the slots
//! out by rank. `dp_postprocess` checks every slot (sequence number, step id) and turns the
//! records into the decision of [`crate::rules::decide`], written to a device array and to a
//! mapped pinned host block laid out as the `HOST_*` constants say, `HOST_SEQ` last.
//!
//! Launch contract of `dp_postprocess`: one block of [`BLOCK_THREADS`] threads (any multiple
//! of 32 up to 1024 works), no dynamic shared memory, on the stream of the allgather. The slots
//! (`SLOT_WORDS * dp_size` ints), the device array (`dp_size` ints) and the host block
//! ([`host_block_words`] ints, the device pointer of mapped pinned memory) must be 4-byte
//! aligned and must not overlap one another.

use std::ffi::CStr;

use crate::{rules, slot};

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

/// Threads per block of `dp_postprocess` (one block; any multiple of 32 up to 1024 works).
pub(crate) const BLOCK_THREADS: u32 = 256;

/// Largest dp_size the coordinator hands the kernel (its int indexing allows far more).
pub(crate) const MAX_DP_SIZE: usize = 65536;

/// Declares the layout constants once and the `#define` list of `layout.h` from the same
/// names and values.
macro_rules! layout {
    ($($(#[$doc:meta])* $name:ident: $ty:ty = $value:expr;)*) => {
        // The kernel uses every one of them; the host only some.
        $($(#[$doc])* #[allow(dead_code)] pub(crate) const $name: $ty = $value;)*
        /// `(name, value)` of every layout constant, in declaration order.
        #[cfg(test)]
        pub(crate) const LAYOUT: &[(&str, i64)] = &[$((stringify!($name), $name as i64)),*];
    };
}

layout! {
    /// `int32` words of one rank record (the wire format of `dp_rank_record`).
    RECORD_WORDS: usize = slot::RECORD_WORDS;
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

    /// Slot word: the sequence number.
    SLOT_SEQ: usize = slot::SLOT_SEQ;
    /// Slot word: low 32 bits of the step id.
    SLOT_STEP_LO: usize = slot::SLOT_STEP_LO;
    /// Slot word: high 32 bits of the step id.
    SLOT_STEP_HI: usize = slot::SLOT_STEP_HI;
    /// Slot word: the first record word.
    SLOT_RECORD: usize = slot::SLOT_RECORD;
    /// `int32` words of one rank's slot on the wire.
    SLOT_WORDS: usize = slot::SLOT_WORDS;

    /// Host word: the exchange's sequence number, written last (poll it, then read the rest).
    HOST_SEQ: usize = 0;
    /// Host word: one of the `STATUS_*` values.
    HOST_STATUS: usize = 1;
    /// Host word: should_ubatch (0/1); 0 unless the status is OK.
    HOST_SHOULD_UBATCH: usize = 2;
    /// Host word: should_dp_pad (0/1); 0 unless the status is OK.
    HOST_SHOULD_DP_PAD: usize = 3;
    /// Host word: synced_cudagraph_mode; 0 unless the status is OK.
    HOST_SYNCED_CUDAGRAPH_MODE: usize = 4;
    /// Host word: num_tokens_after_padding of `dp_rank`; 0 unless the status is OK.
    HOST_NUM_TOKENS_AFTER_PADDING_SELF: usize = 5;
    /// Host word: max_num_tokens_padded; 0 unless the status is OK.
    HOST_MAX_NUM_TOKENS_PADDED: usize = 6;
    /// Host word: min_num_tokens_unpadded; 0 unless the status is OK.
    HOST_MIN_NUM_TOKENS_UNPADDED: usize = 7;
    /// Host word: low 32 bits of the agreed step id (0 when unchecked).
    HOST_STEP_LO: usize = 8;
    /// Host word: high 32 bits of the agreed step id.
    HOST_STEP_HI: usize = 9;
    /// Host words before the per-rank array (which is followed by the slot copy).
    HOST_HEADER_WORDS: usize = 10;

    /// Status word: the decision is valid and both arrays were written.
    STATUS_OK: i32 = 0;
    /// Status word: some record (or argument) is invalid; rerun `rules::decide` on the copy.
    STATUS_INVALID_RECORD: i32 = 1;
    /// Status word: EXPLICIT pad policy and the ranks' `should_attempt_dp_pad` flags differ.
    STATUS_INCONSISTENT: i32 = 2;
    /// Status word: some slot does not carry this exchange's sequence number (an aborted or
    /// partial collective, or a rank a call behind): nothing of this exchange is trusted.
    STATUS_STALE: i32 = 3;
    /// Status word: some rank passed a non-zero step id and the ranks' ids differ.
    STATUS_STEP_MISMATCH: i32 = 4;

    /// `pad_policy` EXPLICIT (`DP_PAD_POLICY_EXPLICIT`).
    PAD_POLICY_EXPLICIT: i32 = rules::DP_PAD_POLICY_EXPLICIT;
    /// `pad_policy` WHEN_CUDAGRAPH (`DP_PAD_POLICY_WHEN_CUDAGRAPH`).
    PAD_POLICY_WHEN_CUDAGRAPH: i32 = rules::DP_PAD_POLICY_WHEN_CUDAGRAPH;
    /// `cudagraph_mode` NONE (`DP_CUDAGRAPH_NONE`).
    CUDAGRAPH_NONE: i32 = rules::DP_CUDAGRAPH_NONE;
    /// `cudagraph_mode` FULL (`DP_CUDAGRAPH_FULL`), the largest mode.
    CUDAGRAPH_FULL: i32 = rules::DP_CUDAGRAPH_FULL;
}

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

/// The text of `layout.h`: one `#define` per layout constant, from [`LAYOUT`].
#[cfg(test)]
pub(crate) fn layout_header() -> String {
    let mut s = String::from(
        "// GENERATED FILE: do not edit. The wire and host-block layout of the post-processing\n\
         // kernel, from the constants of src/kernels/mod.rs (their one source); regenerate with\n\
         // `DPCOORD_BLESS=1 cargo test --lib kernels`, then `python3 scripts/gen_ptx.py`.\n\
         #ifndef DPCOORD_KERNEL_LAYOUT_H\n#define DPCOORD_KERNEL_LAYOUT_H\n",
    );
    for (name, value) in LAYOUT {
        s.push_str(&format!("#define {name} {value}\n"));
    }
    s.push_str("#endif  // DPCOORD_KERNEL_LAYOUT_H\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn committed_layout_header_is_generated_from_the_rust_constants() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/kernels/layout.h");
        let want = layout_header();
        if std::env::var_os("DPCOORD_BLESS").is_some() {
            std::fs::write(&path, &want).expect("write layout.h");
        }
        let got = std::fs::read_to_string(&path).expect("src/kernels/layout.h exists");
        assert_eq!(
            got, want,
            "src/kernels/layout.h differs from the constants of src/kernels/mod.rs: run \
             `DPCOORD_BLESS=1 cargo test --lib kernels`, then `python3 scripts/gen_ptx.py`"
        );
    }

    #[test]
    fn the_kernel_uses_no_layout_number_of_its_own() {
        // Every layout name the kernel uses comes from layout.h: none is #defined in the .cu.
        let cu = include_str!("postprocess.cu");
        for (name, _) in LAYOUT {
            assert!(
                !cu.contains(&format!("#define {name} ")),
                "postprocess.cu defines {name} itself; it must come from layout.h"
            );
        }
        assert!(cu.contains("#include \"layout.h\""));
    }

    #[test]
    fn the_host_block_holds_header_array_and_slots() {
        assert_eq!(host_block_words(3), HOST_HEADER_WORDS + 3 + 3 * SLOT_WORDS);
        assert_eq!(host_slots_offset(3), HOST_HEADER_WORDS + 3);
    }

    #[test]
    fn the_ptx_defines_the_entry_point() {
        let name = POSTPROCESS_KERNEL.to_str().unwrap();
        assert_eq!(
            POSTPROCESS_PTX
                .matches(&format!(".visible .entry {name}("))
                .count(),
            1
        );
        assert_eq!(POSTPROCESS_PTX_CSTR.to_bytes(), POSTPROCESS_PTX.as_bytes());
    }
}
