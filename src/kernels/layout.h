// GENERATED FILE: do not edit. The wire and host-block layout of the post-processing
// kernel, from the constants of src/kernels/mod.rs and src/slot.rs (their one source);
// regenerate with `DPCOORD_BLESS=1 cargo test --lib kernels`, then
// `python3 scripts/gen_ptx.py`.
#ifndef DPCOORD_KERNEL_LAYOUT_H
#define DPCOORD_KERNEL_LAYOUT_H
#define BLOCK_THREADS 256u
#define SLOT_WORDS 24
#define SLOT_SEQ 0
#define SLOT_LAYOUT 1
#define SLOT_RULES 2
#define SLOT_PAD_POLICY 3
#define SLOT_NUM_UBATCHES 4
#define SLOT_DECODE_THRESHOLD 5
#define SLOT_PREFILL_THRESHOLD 6
#define SLOT_GRAPHS 7
#define SLOT_DECODE_QUERY_LEN 8
#define SLOT_STEP 9
#define SLOT_PARENT 11
#define SLOT_ARRIVAL 13
#define SLOT_RECORD 15
#define SLOT_RECORD_WORDS 8
#define SLOT_CHECK 23
#define CHECK_TARGET 1685091123u
#define REC_UNPADDED 0
#define REC_PADDED 1
#define REC_ATTEMPT_UBATCH 2
#define REC_ATTEMPT_DP_PAD 3
#define REC_MODE 4
#define HOST_SEQ 0
#define HOST_STATUS 1
#define HOST_SHOULD_UBATCH 2
#define HOST_SHOULD_DP_PAD 3
#define HOST_SYNCED_CUDAGRAPH_MODE 4
#define HOST_NUM_TOKENS_AFTER_PADDING_SELF 5
#define HOST_MAX_NUM_TOKENS_PADDED 6
#define HOST_MIN_NUM_TOKENS_UNPADDED 7
#define HOST_NUM_UBATCHES 8
#define HOST_LAST_RANK 9
#define HOST_SKEW 10
#define HOST_HEADER_WORDS 12
#define STATUS_OK 0
#define STATUS_STALE 1
#define STATUS_CORRUPT 2
#define STATUS_MARKER 3
#define STATUS_CONFIG 4
#define STATUS_STEP_IDS 5
#define STATUS_INVALID 6
#define STATUS_INCONSISTENT 7
#define PAD_POLICY_EXPLICIT 0
#define DEFAULT_NUM_UBATCHES 2
#define CUDAGRAPH_NONE 0
#define CUDAGRAPH_FULL 2
#define CHECK_WEIGHTS 0x9e3779b1u, 0xdaa66d13u, 0x17156075u, 0x538453d7u, 0x8ff34739u, 0xcc623a9bu, 0x08d12dfdu, 0x4540215fu, 0x81af14c1u, 0xbe1e0823u, 0xfa8cfb85u, 0x36fbeee7u, 0x736ae249u, 0xafd9d5abu, 0xec48c90du, 0x28b7bc6fu, 0x6526afd1u, 0xa195a333u, 0xde049695u, 0x1a7389f7u, 0x56e27d59u, 0x935170bbu, 0xcfc0641du, 0x00000001u
#endif  // DPCOORD_KERNEL_LAYOUT_H
