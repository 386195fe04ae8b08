// GENERATED FILE: do not edit. The wire and host-block layout of the post-processing
// kernel, from the constants of src/kernels/mod.rs (their one source); regenerate with
// `DPCOORD_BLESS=1 cargo test --lib kernels`, then `python3 scripts/gen_ptx.py`.
#ifndef DPCOORD_KERNEL_LAYOUT_H
#define DPCOORD_KERNEL_LAYOUT_H
#define RECORD_WORDS 5
#define REC_UNPADDED 0
#define REC_PADDED 1
#define REC_ATTEMPT_UBATCH 2
#define REC_ATTEMPT_DP_PAD 3
#define REC_MODE 4
#define SLOT_SEQ 0
#define SLOT_STEP_LO 1
#define SLOT_STEP_HI 2
#define SLOT_RECORD 3
#define SLOT_WORDS 8
#define HOST_SEQ 0
#define HOST_STATUS 1
#define HOST_SHOULD_UBATCH 2
#define HOST_SHOULD_DP_PAD 3
#define HOST_SYNCED_CUDAGRAPH_MODE 4
#define HOST_NUM_TOKENS_AFTER_PADDING_SELF 5
#define HOST_MAX_NUM_TOKENS_PADDED 6
#define HOST_MIN_NUM_TOKENS_UNPADDED 7
#define HOST_STEP_LO 8
#define HOST_STEP_HI 9
#define HOST_HEADER_WORDS 10
#define STATUS_OK 0
#define STATUS_INVALID_RECORD 1
#define STATUS_INCONSISTENT 2
#define STATUS_STALE 3
#define STATUS_STEP_MISMATCH 4
#define PAD_POLICY_EXPLICIT 0
#define PAD_POLICY_WHEN_CUDAGRAPH 1
#define CUDAGRAPH_NONE 0
#define CUDAGRAPH_FULL 2
#endif  // DPCOORD_KERNEL_LAYOUT_H
