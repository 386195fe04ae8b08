//! The post-processing kernels: CUDA C source `postprocess.cu`, compiled by
//! `scripts/gen_ptx.py` (NVRTC 12.0, `compute_70`) into the committed `postprocess.ptx`
//! (PTX ISA 8.0, target sm_70: loads on any sm_70+ GPU with any CUDA 12+ driver).
//!
//! `dp_pack_record` writes this rank's record into the send buffer (one thread);
//! `dp_postprocess` turns the allgathered records into the decision of [`crate::rules::decide`],
//! written to a device array and to a mapped pinned host block laid out as the `HOST_*`
//! constants say, `HOST_SEQ` last.
//!
//! Launch contract of `dp_postprocess`: one block of [`BLOCK_THREADS`] threads (any multiple
//! of 32 up to 1024 works), no dynamic shared memory (static: under 1 KiB), on the stream of
//! the allgather. `records` (5 * dp_size ints), the device array (dp_size ints) and the host
//! block ([`host_block_words`] ints, the device pointer of mapped pinned memory) must be
//! 4-byte aligned and must not overlap one another.

use std::ffi::CStr;

/// The committed PTX of both kernels.
pub const POSTPROCESS_PTX: &str = include_str!("postprocess.ptx");

/// The same PTX, NUL-terminated, as `cuModuleLoadData` wants it.
pub const POSTPROCESS_PTX_CSTR: &CStr =
    match CStr::from_bytes_with_nul(concat!(include_str!("postprocess.ptx"), "\0").as_bytes()) {
        Ok(ptx) => ptx,
        Err(_) => panic!("postprocess.ptx contains a NUL byte"),
    };

/// Entry point `dp_pack_record` (arguments in `postprocess.cu`): launch 1 block of 1 thread.
pub const PACK_RECORD_KERNEL: &CStr = c"dp_pack_record";

/// Entry point `dp_postprocess` (arguments in `postprocess.cu`): 1 block of [`BLOCK_THREADS`].
pub const POSTPROCESS_KERNEL: &CStr = c"dp_postprocess";

/// Threads per block of `dp_postprocess` (one block; any multiple of 32 up to 1024 works).
pub const BLOCK_THREADS: u32 = 256;

/// Largest dp_size the engine hands the kernel (its int indexing allows far more).
pub const MAX_DP_SIZE: usize = 65536;

/// `int32` words of one rank record (the wire format of `dp_rank_record`).
pub const RECORD_WORDS: usize = 5;

/// Host word: the call's sequence number, written last (poll it, then read the rest).
pub const HOST_SEQ: usize = 0;
/// Host word: one of the `STATUS_*` values.
pub const HOST_STATUS: usize = 1;
/// Host word: should_ubatch (0/1); 0 unless the status is OK.
pub const HOST_SHOULD_UBATCH: usize = 2;
/// Host word: should_dp_pad (0/1); 0 unless the status is OK.
pub const HOST_SHOULD_DP_PAD: usize = 3;
/// Host word: synced_cudagraph_mode; 0 unless the status is OK.
pub const HOST_SYNCED_CUDAGRAPH_MODE: usize = 4;
/// Host word: num_tokens_after_padding of `dp_rank`; 0 unless the status is OK.
pub const HOST_NUM_TOKENS_AFTER_PADDING_SELF: usize = 5;
/// Host word: max_num_tokens_padded; 0 unless the status is OK.
pub const HOST_MAX_NUM_TOKENS_PADDED: usize = 6;
/// Host word: min_num_tokens_unpadded; 0 unless the status is OK.
pub const HOST_MIN_NUM_TOKENS_UNPADDED: usize = 7;
/// Host words before the per-rank array (which is followed by the record copy).
pub const HOST_HEADER_WORDS: usize = 8;

/// First word of the per-rank num_tokens_after_padding array (written only on OK).
pub const fn host_array_offset() -> usize {
    HOST_HEADER_WORDS
}

/// First word of the copy of all records (written only when the status is not OK).
pub const fn host_records_offset(dp_size: usize) -> usize {
    HOST_HEADER_WORDS + dp_size
}

/// `int32` words of the host block for `dp_size` ranks: header, array, record copy.
pub const fn host_block_words(dp_size: usize) -> usize {
    HOST_HEADER_WORDS + (1 + RECORD_WORDS) * dp_size
}

/// Status word: the decision is valid and both arrays were written.
pub const STATUS_OK: i32 = 0;
/// Status word: some record (or argument) is invalid; rerun `rules::decide` on the copy.
pub const STATUS_INVALID_RECORD: i32 = 1;
/// Status word: EXPLICIT pad policy and the ranks' `should_attempt_dp_pad` flags differ.
pub const STATUS_INCONSISTENT: i32 = 2;
