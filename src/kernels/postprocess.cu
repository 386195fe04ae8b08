// dpcoord post-processing kernel (docs/ARCHITECTURE.md: the decision rules and the GPU path).
//
// Compiled to PTX by scripts/gen_ptx.py (NVRTC 12.0, compute_70); the PTX is committed as
// src/kernels/postprocess.ptx and loaded at run time with cuModuleLoadData. Edit this file,
// then run `python3 scripts/gen_ptx.py`; never edit the PTX.
//
// Only NVRTC's built-ins and the generated layout.h are used: plain int / unsigned int.

// The wire and host-block layout, statuses, policies and modes: generated from the Rust
// constants of src/kernels/mod.rs (their one source).
#include "layout.h"

#define INT_MAX_VALUE 0x7fffffff
#define FULL_MASK 0xffffffffu
#define WARP_SIZE 32
#define MAX_WARPS 32  // 1024 threads

// The aggregates of rules.rs's decide, one partial per thread, then per warp, then per block.
struct Partial {
    int invalid;         // 1 if some record is invalid (OR)
    int not_all_ubatch;  // 1 if some rank has should_attempt_ubatch != 1 (OR)
    int min_unpadded;    // min
    int max_padded;      // max
    int min_mode;        // min
    int dp_pad_count;    // number of ranks with should_attempt_dp_pad == 1 (sum)
    int stale;           // 1 if some slot does not carry this exchange's sequence number (OR)
    int step_mismatch;   // 1 if some slot's step id differs from slot 0's (OR)
};

__device__ __forceinline__ Partial identity_partial() {
    Partial p;
    p.invalid = 0;
    p.not_all_ubatch = 0;
    p.min_unpadded = INT_MAX_VALUE;
    p.max_padded = 0;  // rules.rs starts from 0 too; valid records are >= 0
    p.min_mode = CUDAGRAPH_FULL;
    p.dp_pad_count = 0;
    p.stale = 0;
    p.step_mismatch = 0;
    return p;
}

__device__ __forceinline__ Partial combine(Partial a, Partial b) {
    a.invalid |= b.invalid;
    a.not_all_ubatch |= b.not_all_ubatch;
    a.min_unpadded = min(a.min_unpadded, b.min_unpadded);
    a.max_padded = max(a.max_padded, b.max_padded);
    a.min_mode = min(a.min_mode, b.min_mode);
    a.dp_pad_count += b.dp_pad_count;
    a.stale |= b.stale;
    a.step_mismatch |= b.step_mismatch;
    return a;
}

// Butterfly reduction: every lane of the (full) warp ends with the warp's aggregate.
__device__ __forceinline__ Partial warp_reduce(Partial p) {
    for (int offset = WARP_SIZE / 2; offset > 0; offset /= 2) {
        Partial o;
        o.invalid = __shfl_xor_sync(FULL_MASK, p.invalid, offset);
        o.not_all_ubatch = __shfl_xor_sync(FULL_MASK, p.not_all_ubatch, offset);
        o.min_unpadded = __shfl_xor_sync(FULL_MASK, p.min_unpadded, offset);
        o.max_padded = __shfl_xor_sync(FULL_MASK, p.max_padded, offset);
        o.min_mode = __shfl_xor_sync(FULL_MASK, p.min_mode, offset);
        o.dp_pad_count = __shfl_xor_sync(FULL_MASK, p.dp_pad_count, offset);
        o.stale = __shfl_xor_sync(FULL_MASK, p.stale, offset);
        o.step_mismatch = __shfl_xor_sync(FULL_MASK, p.step_mismatch, offset);
        p = combine(p, o);
    }
    return p;
}

// Post-processes the allgathered slots: checks that every slot carries this exchange's
// sequence number `seq` and that the step ids agree, then computes the decision of rules.rs
// `decide`, written to the device array `device_out` (dp_size ints) and to the mapped pinned
// host block `host`.
//
// Launch: ONE block; blockDim.x a multiple of 32 in 32..1024 (the host uses 256); no dynamic
// shared memory. Any dp_size >= 1 with HOST_HEADER_WORDS + (1 + SLOT_WORDS) * dp_size < 2^31.
//
// Verdict, first that applies: STATUS_STALE (a slot's sequence word is not `seq`: an aborted
// or partial collective, or a rank a call behind; nothing of the exchange is used),
// STATUS_STEP_MISMATCH, STATUS_INVALID_RECORD (also for out-of-range dp_size, dp_rank,
// pad_policy, num_ubatches, which the host validates anyway), STATUS_INCONSISTENT, STATUS_OK.
//
// Host block (int32 words, layout.h): HOST_SEQ (written last), HOST_STATUS, the decision
// words (0 unless OK), the agreed step id, then [HOST_HEADER_WORDS, +dp_size):
// num_tokens_after_padding per rank (only when OK), then a copy of the slots (only when not
// OK; the host derives the exact message from it).
extern "C" __global__ void __launch_bounds__(1024)
    dp_postprocess(const int* __restrict__ slots, int dp_size, int dp_rank, int pad_policy,
                   int num_ubatches, unsigned int seq, int* __restrict__ device_out,
                   int* __restrict__ host) {
    __shared__ Partial warp_partials[MAX_WARPS];
    __shared__ int decision[3];  // status, should_dp_pad, max_padded: thread 0 -> all

    // A stray second block would race with the first on every output: only block 0 works.
    // The condition is uniform across the block, so no barrier below is skipped by a subset.
    if (blockIdx.x != 0) {
        return;
    }
    const int tid = (int)threadIdx.x;
    const int nthreads = (int)blockDim.x;
    const int lane = (int)(threadIdx.x % WARP_SIZE);
    const int warp = (int)(threadIdx.x / WARP_SIZE);
    const int nwarps = (int)(blockDim.x / WARP_SIZE);
    const int n = dp_size > 0 ? dp_size : 0;  // slots this kernel may touch
    const int step0_lo = n > 0 ? slots[SLOT_STEP_LO] : 0;
    const int step0_hi = n > 0 ? slots[SLOT_STEP_HI] : 0;

    // 1. Per thread: ranks tid, tid + blockDim, ...
    Partial p = identity_partial();
    for (int r = tid; r < n; r += nthreads) {
        const int* slot = slots + SLOT_WORDS * r;
        const int* rec = slot + SLOT_RECORD;
        const int unpadded = rec[REC_UNPADDED];
        const int padded = rec[REC_PADDED];
        const int attempt_ubatch = rec[REC_ATTEMPT_UBATCH];
        const int attempt_dp_pad = rec[REC_ATTEMPT_DP_PAD];
        const int mode = rec[REC_MODE];
        // Same checks as rules.rs check_record.
        const bool bad = unpadded < 0 || padded < unpadded ||
                         (attempt_ubatch != 0 && attempt_ubatch != 1) ||
                         (attempt_dp_pad != 0 && attempt_dp_pad != 1) || mode < CUDAGRAPH_NONE ||
                         mode > CUDAGRAPH_FULL;
        p.invalid |= bad ? 1 : 0;
        p.not_all_ubatch |= attempt_ubatch != 1 ? 1 : 0;
        p.min_unpadded = min(p.min_unpadded, unpadded);
        p.max_padded = max(p.max_padded, padded);
        p.min_mode = min(p.min_mode, mode);
        p.dp_pad_count += attempt_dp_pad == 1 ? 1 : 0;
        p.stale |= (unsigned int)slot[SLOT_SEQ] != seq ? 1 : 0;
        p.step_mismatch |= (slot[SLOT_STEP_LO] != step0_lo || slot[SLOT_STEP_HI] != step0_hi) ? 1 : 0;
    }

    // 2. Per warp, then per block: warp 0 folds the nwarps warp aggregates.
    p = warp_reduce(p);
    if (lane == 0) {
        warp_partials[warp] = p;
    }
    __syncthreads();
    if (warp == 0) {
        p = lane < nwarps ? warp_partials[lane] : identity_partial();
        p = warp_reduce(p);

        // 3. The verdict and decision (rules.rs decide), by thread 0, which writes the scalar
        // words.
        if (lane == 0) {
            int status = STATUS_OK;
            int should_ubatch = 0;
            int should_dp_pad = 0;
            const bool args_ok = dp_size >= 1 && dp_rank >= 0 && dp_rank < dp_size &&
                                 (pad_policy == PAD_POLICY_EXPLICIT ||
                                  pad_policy == PAD_POLICY_WHEN_CUDAGRAPH) &&
                                 num_ubatches >= 2;
            if (p.stale) {
                status = STATUS_STALE;
            } else if (p.step_mismatch) {
                status = STATUS_STEP_MISMATCH;
            } else if (!args_ok || p.invalid) {
                status = STATUS_INVALID_RECORD;
            } else if (pad_policy == PAD_POLICY_EXPLICIT && p.dp_pad_count != 0 &&
                       p.dp_pad_count != dp_size) {
                status = STATUS_INCONSISTENT;
            } else if (dp_size >= 2) {  // dp_size == 1: rules.rs's early exit, no padding
                // last_ubatch_empty = (max_padded / n) * (n - 1) >= min_unpadded, in 64 bits.
                const long long nu = (long long)num_ubatches;
                const bool last_ubatch_empty =
                    ((long long)p.max_padded / nu) * (nu - 1) >= (long long)p.min_unpadded;
                should_ubatch = (!p.not_all_ubatch && !last_ubatch_empty) ? 1 : 0;
                const int policy_pad = pad_policy == PAD_POLICY_EXPLICIT
                                           ? (p.dp_pad_count == dp_size ? 1 : 0)
                                           : (p.min_mode != CUDAGRAPH_NONE ? 1 : 0);
                should_dp_pad = (policy_pad || should_ubatch) ? 1 : 0;
            }
            const bool ok = status == STATUS_OK;
            host[HOST_STATUS] = status;
            host[HOST_SHOULD_UBATCH] = should_ubatch;
            host[HOST_SHOULD_DP_PAD] = should_dp_pad;
            host[HOST_SYNCED_CUDAGRAPH_MODE] = ok ? p.min_mode : 0;
            host[HOST_NUM_TOKENS_AFTER_PADDING_SELF] =
                ok ? (should_dp_pad ? p.max_padded
                                    : slots[SLOT_WORDS * dp_rank + SLOT_RECORD + REC_PADDED])
                   : 0;
            host[HOST_MAX_NUM_TOKENS_PADDED] = ok ? p.max_padded : 0;
            host[HOST_MIN_NUM_TOKENS_UNPADDED] = ok ? p.min_unpadded : 0;
            host[HOST_STEP_LO] = ok ? step0_lo : 0;
            host[HOST_STEP_HI] = ok ? step0_hi : 0;
            decision[0] = status;
            decision[1] = should_dp_pad;
            decision[2] = p.max_padded;
        }
    }
    __syncthreads();
    const int status = decision[0];
    const int should_dp_pad = decision[1];
    const int max_padded = decision[2];

    // 4. The per-rank array (status OK) or the copy of the slots (otherwise).
    bool wrote = tid == 0;  // thread 0 wrote the scalar words
    if (status == STATUS_OK) {
        int* after_padding = host + HOST_HEADER_WORDS;
        for (int r = tid; r < n; r += nthreads) {
            const int v = should_dp_pad ? max_padded
                                        : slots[SLOT_WORDS * r + SLOT_RECORD + REC_PADDED];
            device_out[r] = v;
            after_padding[r] = v;
            wrote = true;
        }
    } else {
        int* copy = host + HOST_HEADER_WORDS + n;
        for (int i = tid; i < SLOT_WORDS * n; i += nthreads) {
            copy[i] = slots[i];
            wrote = true;
        }
    }

    // 5. Publish: every write above reaches the system before seq does. membar.sys makes a
    // thread's earlier writes performed (visible to the host) before it goes on, so each
    // writer fences its own writes before the barrier, and thread 0 stores seq after it.
    if (wrote) {
        __threadfence_system();
    }
    __syncthreads();
    if (tid == 0) {
        *(volatile unsigned int*)(host + HOST_SEQ) = seq;
    }
}
