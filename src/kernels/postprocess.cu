// dpcoord post-processing kernel (docs/ARCHITECTURE.md: the slot, the decision rules and the
// GPU path).
//
// Compiled to PTX by scripts/gen_ptx.py (NVRTC 12.0, compute_70); the PTX is committed as
// src/kernels/postprocess.ptx and loaded at run time with cuModuleLoadData. Edit this file,
// then run `python3 scripts/gen_ptx.py`; never edit the PTX.
//
// Only NVRTC's built-ins and the generated layout.h are used: plain int / unsigned int.

// The slot and host-block layout, the checksum, statuses, policies and modes: generated from
// the Rust constants of src/kernels/mod.rs and src/slot.rs (their one source).
#include "layout.h"

#define FULL_MASK 0xffffffffu
#define WARP_SIZE 32
#define MAX_WARPS (BLOCK_THREADS / WARP_SIZE)

static_assert(SLOT_WORDS % 4 == 0, "a slot is loaded as 16-byte vectors");

// How the part below is compiled: here, as device code; in the tests' fake CUDA driver, as C.
#define DP_FN __device__ __forceinline__
#define DP_UNROLL _Pragma("unroll")

// ==== BEGIN HOST-RUNNABLE: C and CUDA C++ alike; tests/fake_gpu compiles it into the fake
// driver's dp_postprocess (DP_FN and DP_UNROLL are its to define), so keep it plain C. ====

// What a slot can fail, one bit each, in the contract's order of checks (the first set bit
// of the ranks' union is the verdict), and what the decision needs to know.
#define FLAG_STALE 1          // the sequence number is not this exchange's
#define FLAG_CORRUPT 2        // the checksum fails
#define FLAG_MARKER 4         // the invalid-request marker (every record word -1)
#define FLAG_CONFIG 8         // configuration words differ from rank 0's
#define FLAG_STEP_IDS 16      // step id or parent step id differs from rank 0's
#define FLAG_INVALID 32       // the V1 record is invalid (rules.rs check_record)
#define FLAG_NOT_ALL_UBATCH 64  // should_attempt_ubatch != 1
#define MARKER_WORD 0xffffffffu  // every record word of the marker (-1)

// The aggregates over ranks: per slot, then folded per thread, per warp, per block.
typedef struct Partial {
  int flags;           // FLAG_* (OR)
  int min_unpadded;    // min
  int max_padded;      // max
  int min_mode;        // min
  int dp_pad_count;    // ranks with should_attempt_dp_pad == 1 (sum)
  int last_rank;       // the rank of `latest`, the lowest such on a tie
  long long earliest;  // min arrival time
  long long latest;    // max arrival time
} Partial;

// What thread 0 publishes besides the aggregates.
typedef struct Verdict {
  int status;  // STATUS_*
  int should_ubatch;
  int should_dp_pad;
  int num_ubatches;         // microbatches this step runs (1: none)
  long long arrival_skew;   // latest minus earliest arrival, saturated
} Verdict;

DP_FN Partial identity_partial(void) {
  Partial p;
  p.flags = 0;
  p.min_unpadded = 0x7fffffff;
  p.max_padded = 0;  // rules.rs starts from 0 too; valid records are >= 0
  p.min_mode = CUDAGRAPH_FULL;
  p.dp_pad_count = 0;
  p.last_rank = 0x7fffffff;
  p.earliest = 0x7fffffffffffffffll;
  p.latest = -0x7fffffffffffffffll - 1;
  return p;
}

DP_FN Partial combine(Partial a, Partial b) {
  a.flags |= b.flags;
  a.min_unpadded = b.min_unpadded < a.min_unpadded ? b.min_unpadded : a.min_unpadded;
  a.max_padded = b.max_padded > a.max_padded ? b.max_padded : a.max_padded;
  a.min_mode = b.min_mode < a.min_mode ? b.min_mode : a.min_mode;
  a.dp_pad_count += b.dp_pad_count;
  a.earliest = b.earliest < a.earliest ? b.earliest : a.earliest;
  const int later = b.latest > a.latest || (b.latest == a.latest && b.last_rank < a.last_rank);
  a.latest = later ? b.latest : a.latest;
  a.last_rank = later ? b.last_rank : a.last_rank;
  return a;
}

// One slot's part: `w` is rank `rank`'s slot, `base` rank 0's, `seq` this exchange's number.
// The checksum is one multiply-add per word: sum(K[i] * w[i]) == CHECK_TARGET (mod 2^32).
DP_FN Partial slot_partial(const unsigned int* w, const unsigned int* base, unsigned int seq,
                           int rank) {
  const unsigned int k[SLOT_WORDS] = {CHECK_WEIGHTS};
  unsigned int sum = 0;
  DP_UNROLL
  for (int i = 0; i < SLOT_WORDS; ++i) sum += k[i] * w[i];
  unsigned int record_and = MARKER_WORD;
  DP_UNROLL
  for (int i = 0; i < SLOT_RECORD_WORDS; ++i) record_and &= w[SLOT_RECORD + i];
  unsigned int config = 0;
  DP_UNROLL
  for (int i = SLOT_LAYOUT; i <= SLOT_DECODE_QUERY_LEN; ++i) config |= w[i] ^ base[i];
  const unsigned int ids = (w[SLOT_STEP] ^ base[SLOT_STEP]) |
                           (w[SLOT_STEP + 1] ^ base[SLOT_STEP + 1]) |
                           (w[SLOT_PARENT] ^ base[SLOT_PARENT]) |
                           (w[SLOT_PARENT + 1] ^ base[SLOT_PARENT + 1]);
  const int unpadded = (int)w[SLOT_RECORD + REC_UNPADDED];
  const int padded = (int)w[SLOT_RECORD + REC_PADDED];
  const int attempt_ubatch = (int)w[SLOT_RECORD + REC_ATTEMPT_UBATCH];
  const int attempt_dp_pad = (int)w[SLOT_RECORD + REC_ATTEMPT_DP_PAD];
  const int mode = (int)w[SLOT_RECORD + REC_MODE];
  // Same checks as rules.rs check_record.
  const int invalid = unpadded < 0 || padded < unpadded ||
                      (attempt_ubatch != 0 && attempt_ubatch != 1) ||
                      (attempt_dp_pad != 0 && attempt_dp_pad != 1) || mode < CUDAGRAPH_NONE ||
                      mode > CUDAGRAPH_FULL;
  Partial p;
  p.flags = (w[SLOT_SEQ] != seq ? FLAG_STALE : 0) | (sum != CHECK_TARGET ? FLAG_CORRUPT : 0) |
            (record_and == MARKER_WORD ? FLAG_MARKER : 0) | (config != 0 ? FLAG_CONFIG : 0) |
            (ids != 0 ? FLAG_STEP_IDS : 0) | (invalid ? FLAG_INVALID : 0) |
            (attempt_ubatch != 1 ? FLAG_NOT_ALL_UBATCH : 0);
  p.min_unpadded = unpadded;
  p.max_padded = padded;
  p.min_mode = mode;
  p.dp_pad_count = attempt_dp_pad == 1 ? 1 : 0;
  p.last_rank = rank;
  p.earliest = (long long)(((unsigned long long)w[SLOT_ARRIVAL + 1] << 32) | w[SLOT_ARRIVAL]);
  p.latest = p.earliest;
  return p;
}

// The verdict over every rank's aggregate `p` (rules/slots.rs check, then decide_v1 with the
// pad policy and num_ubatches of rank 0's slot `base`), for `dp_size` ranks.
DP_FN Verdict decide(Partial p, const unsigned int* base, int dp_size) {
  Verdict v;
  v.should_ubatch = 0;
  v.should_dp_pad = 0;
  v.num_ubatches = 1;
  // Saturated like rules.rs's saturating_sub (latest >= earliest, so the unsigned
  // difference is exact).
  const unsigned long long skew = (unsigned long long)p.latest - (unsigned long long)p.earliest;
  v.arrival_skew = skew > 0x7fffffffffffffffull ? 0x7fffffffffffffffll : (long long)skew;
  const int pad_policy = (int)base[SLOT_PAD_POLICY];
  const int n = base[SLOT_NUM_UBATCHES] == 0 ? DEFAULT_NUM_UBATCHES : (int)base[SLOT_NUM_UBATCHES];
  const int f = p.flags;
  if (f & FLAG_STALE) {
    v.status = STATUS_STALE;
  } else if (f & FLAG_CORRUPT) {
    v.status = STATUS_CORRUPT;
  } else if (f & FLAG_MARKER) {
    v.status = STATUS_MARKER;
  } else if (f & FLAG_CONFIG) {
    v.status = STATUS_CONFIG;
  } else if (f & FLAG_STEP_IDS) {
    v.status = STATUS_STEP_IDS;
  } else if (f & FLAG_INVALID) {
    v.status = STATUS_INVALID;
  } else if (dp_size >= 2 && pad_policy == PAD_POLICY_EXPLICIT && p.dp_pad_count != 0 &&
             p.dp_pad_count != dp_size) {
    v.status = STATUS_INCONSISTENT;
  } else {
    v.status = STATUS_OK;
    if (dp_size >= 2) {  // dp_size 1: rules.rs's early exit, no padding
      // last_ubatch_empty = (max_padded / n) * (n - 1) >= min_unpadded, in 64 bits.
      const long long nu = (long long)n;
      const int last_ubatch_empty =
          ((long long)p.max_padded / nu) * (nu - 1) >= (long long)p.min_unpadded;
      v.should_ubatch = !(f & FLAG_NOT_ALL_UBATCH) && !last_ubatch_empty;
      const int policy_pad = pad_policy == PAD_POLICY_EXPLICIT ? p.dp_pad_count == dp_size
                                                               : p.min_mode != CUDAGRAPH_NONE;
      v.should_dp_pad = policy_pad || v.should_ubatch;
      v.num_ubatches = v.should_ubatch ? n : 1;
    }
  }
  return v;
}

// Writes the header words of the host block but HOST_SEQ (`own_padded`: this rank's padded
// tokens).
DP_FN void publish_header(int* host, Partial p, Verdict v, int own_padded) {
  const int ok = v.status == STATUS_OK;
  host[HOST_STATUS] = v.status;
  host[HOST_SHOULD_UBATCH] = v.should_ubatch;
  host[HOST_SHOULD_DP_PAD] = v.should_dp_pad;
  host[HOST_SYNCED_CUDAGRAPH_MODE] = ok ? p.min_mode : 0;
  host[HOST_NUM_TOKENS_AFTER_PADDING_SELF] = ok ? (v.should_dp_pad ? p.max_padded : own_padded) : 0;
  host[HOST_MAX_NUM_TOKENS_PADDED] = ok ? p.max_padded : 0;
  host[HOST_MIN_NUM_TOKENS_UNPADDED] = ok ? p.min_unpadded : 0;
  host[HOST_NUM_UBATCHES] = v.num_ubatches;
  host[HOST_LAST_RANK] = ok ? p.last_rank : -1;
  host[HOST_SKEW] = ok ? (int)(unsigned int)v.arrival_skew : 0;
  host[HOST_SKEW + 1] = ok ? (int)(unsigned int)((unsigned long long)v.arrival_skew >> 32) : 0;
}

// ==== END HOST-RUNNABLE ====

// Butterfly reduction: every lane of the (full) warp ends with the warp's aggregate.
__device__ __forceinline__ Partial warp_reduce(Partial p) {
  DP_UNROLL
  for (int offset = WARP_SIZE / 2; offset > 0; offset /= 2) {
    Partial o;
    o.flags = __shfl_xor_sync(FULL_MASK, p.flags, offset);
    o.min_unpadded = __shfl_xor_sync(FULL_MASK, p.min_unpadded, offset);
    o.max_padded = __shfl_xor_sync(FULL_MASK, p.max_padded, offset);
    o.min_mode = __shfl_xor_sync(FULL_MASK, p.min_mode, offset);
    o.dp_pad_count = __shfl_xor_sync(FULL_MASK, p.dp_pad_count, offset);
    o.last_rank = __shfl_xor_sync(FULL_MASK, p.last_rank, offset);
    o.earliest = __shfl_xor_sync(FULL_MASK, p.earliest, offset);
    o.latest = __shfl_xor_sync(FULL_MASK, p.latest, offset);
    p = combine(p, o);
  }
  return p;
}

// Rank r's slot into registers (16-byte loads: every slot is 16-byte aligned).
__device__ __forceinline__ void load_slot(const unsigned int* __restrict__ slots, int r,
                                          unsigned int w[SLOT_WORDS]) {
  const uint4* v = reinterpret_cast<const uint4*>(slots + SLOT_WORDS * r);
  DP_UNROLL
  for (int j = 0; j < SLOT_WORDS / 4; ++j) {
    const uint4 x = v[j];
    w[4 * j] = x.x;
    w[4 * j + 1] = x.y;
    w[4 * j + 2] = x.z;
    w[4 * j + 3] = x.w;
  }
}

// Post-processes the allgathered slots: checks every slot (this exchange's sequence number
// `seq`, then the checksum, the marker, the configuration and the step ids against rank 0's),
// decides as rules/slots.rs decide_v1 with the slots' configuration, finds the straggler, and
// writes the decision to the device array `device_out` (dp_size ints) and to the mapped pinned
// host block `host`.
//
// Launch: ONE block; blockDim.x a multiple of 32 up to BLOCK_THREADS; no dynamic shared
// memory. Any dp_size >= 1 with HOST_HEADER_WORDS + (1 + SLOT_WORDS) * dp_size < 2^31;
// `slots` 16-byte aligned.
//
// Verdict, first that applies: STATUS_STALE (nothing of the exchange is used),
// STATUS_CORRUPT, STATUS_MARKER, STATUS_CONFIG, STATUS_STEP_IDS, STATUS_INVALID (also for an
// out-of-range dp_size or dp_rank, which the host validates anyway), STATUS_INCONSISTENT,
// STATUS_OK.
//
// Host block (int32 words, layout.h): HOST_SEQ (written last), HOST_STATUS, the decision and
// straggler words (only meaningful when OK), then [HOST_HEADER_WORDS, +dp_size):
// num_tokens_after_padding per rank (only when OK), then a copy of the slots (only when not
// OK; the host derives the exact message from it with rules::slots).
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
    dp_postprocess(const unsigned int* __restrict__ slots, int dp_size, int dp_rank,
                   unsigned int seq, int* __restrict__ device_out, int* __restrict__ host) {
  __shared__ Partial warp_partials[MAX_WARPS];
  __shared__ int decision[3];  // status, should_dp_pad, max_padded: warp 0 -> all

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
  const bool args_ok = dp_size >= 1 && dp_rank >= 0 && dp_rank < dp_size;
  const int n = args_ok ? dp_size : 0;  // slots this kernel may touch

  // 1. Per thread: ranks tid, tid + blockDim, ..., each against rank 0's slot.
  unsigned int base[SLOT_WORDS];
  if (n > 0) {
    load_slot(slots, 0, base);
  } else {
    DP_UNROLL
    for (int i = 0; i < SLOT_WORDS; ++i) base[i] = 0;
  }
  Partial p = identity_partial();
  for (int r = tid; r < n; r += nthreads) {
    unsigned int w[SLOT_WORDS];
    load_slot(slots, r, w);
    p = combine(p, slot_partial(w, base, seq, r));
  }

  // 2. Per warp; with several warps, warp 0 folds the warp aggregates (one warp needs no
  // shared memory: every lane holds the block's aggregate already).
  p = warp_reduce(p);
  if (nwarps > 1) {
    if (lane == 0) {
      warp_partials[warp] = p;
    }
    __syncthreads();
    if (warp == 0) {
      p = lane < nwarps ? warp_partials[lane] : identity_partial();
      p = warp_reduce(p);
    }
  }

  // 3. The verdict: warp 0's lanes hold the block's aggregate (so do all lanes of a lone
  // warp, which need no barrier to know it); thread 0 writes the header.
  Verdict v = decide(p, base, dp_size);
  if (!args_ok) {
    v.status = STATUS_INVALID;
  }
  if (tid == 0) {
    const int own_padded =
        args_ok ? (int)slots[SLOT_WORDS * dp_rank + SLOT_RECORD + REC_PADDED] : 0;
    publish_header(host, p, v, own_padded);
    decision[0] = v.status;
    decision[1] = v.should_dp_pad;
    decision[2] = p.max_padded;
  }
  int status, should_dp_pad, max_padded;
  if (nwarps > 1) {
    __syncthreads();
    status = decision[0];
    should_dp_pad = decision[1];
    max_padded = decision[2];
  } else {
    status = v.status;
    should_dp_pad = v.should_dp_pad;
    max_padded = p.max_padded;
  }

  // 4. The per-rank array (status OK) or the copy of the slots (otherwise).
  bool wrote = tid == 0;  // thread 0 wrote the header words
  if (status == STATUS_OK) {
    int* after_padding = host + HOST_HEADER_WORDS;
    for (int r = tid; r < n; r += nthreads) {
      const int v_r = should_dp_pad ? max_padded
                                    : (int)slots[SLOT_WORDS * r + SLOT_RECORD + REC_PADDED];
      device_out[r] = v_r;
      after_padding[r] = v_r;
      wrote = true;
    }
  } else {
    int* copy = host + HOST_HEADER_WORDS + n;
    for (int i = tid; i < SLOT_WORDS * n; i += nthreads) {
      copy[i] = (int)slots[i];
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
