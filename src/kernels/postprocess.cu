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

static_assert(HOST_HEADER_WORDS <= WARP_SIZE, "one warp writes the host block's header");
static_assert(TABLE_PREFETCH_WORDS == 8 * WARP_SIZE, "each lane of warp 0 prefetches 8 words");

// How the part below is compiled: here, as device code; in the tests' fake CUDA driver, as C.
#define DP_FN __device__ __forceinline__
#define DP_UNROLL _Pragma("unroll")

// The device graph table (rules::graphs' device form, NULL: no table) as the part below reads
// it: word i from warp 0's shared-memory copy of the first TABLE_PREFETCH_WORDS words, or from
// global memory through the read-only cache.
typedef struct Table {
  const unsigned* g;  // the table in device memory (NULL: none)
  const unsigned* s;  // its first TABLE_PREFETCH_WORDS words, in shared memory
} Table;
#define TABLE_PRESENT(t) ((t).g != 0)
#define TABLE_WORD(t, i) \
  ((unsigned)(i) < TABLE_PREFETCH_WORDS ? (t).s[(unsigned)(i)] : __ldg((t).g + (unsigned)(i)))

// ==== BEGIN HOST-RUNNABLE: C and CUDA C++ alike; tests/fake_gpu compiles it into the fake
// driver's dp_postprocess (DP_FN, DP_UNROLL, Table, TABLE_PRESENT and TABLE_WORD are its to
// define), so keep it plain C. ====

// What a slot can fail, one bit each, in the contract's order of checks (the first set bit
// of the ranks' union is the verdict), and what the decision needs to know.
#define FLAG_STALE 1          // the sequence number is not this exchange's
#define FLAG_CORRUPT 2        // the checksum fails
#define FLAG_MARKER 4         // the invalid-request marker (every record word -1)
#define FLAG_CONFIG 8         // configuration words differ from rank 0's
#define FLAG_STEP_IDS 16      // step id or parent step id differs from rank 0's
#define FLAG_INVALID 32       // a record word is out of its range (V1: rules/v1.rs check_record;
                              // V2: rules/v2/pass.rs LO..HI)
#define FLAG_NOT_ALL_UBATCH 64  // should_attempt_ubatch (V2: allow_ubatching) != 1
#define FLAG_U_DIFFERS 128      // V2: the uniform count differs from rank 0's
#define FLAG_MQL_NONE 256       // V2: a query bound is -1 (none)
#define FLAG_MQL_ZERO 512       // V2: a query bound is 0
#define FLAG_NOT_ALL_SKIP 1024  // V2: allow_skip_drafts != 1
#define MARKER_WORD 0xffffffffu  // every record word of the marker (-1)
#define INT_LOWEST (-0x7fffffff - 1)

// The aggregates over ranks: per slot, then folded per thread, per warp, per block. V2 reads
// min_unpadded / max_padded as the smallest / largest num_tokens.
typedef struct Partial {
  int flags;           // FLAG_* (OR)
  int min_unpadded;    // min
  int max_padded;      // max
  int min_mode;        // min
  int dp_pad_count;    // V1: ranks with should_attempt_dp_pad == 1 (sum)
  int max_mql;         // V2: the largest query bound (max)
  int max_reqs;        // V2: the largest request count (max)
  int last_rank;       // the rank of `latest`, the lowest such on a tie
  long long earliest;  // min arrival time
  long long latest;    // max arrival time
} Partial;

// A V2 descriptor (rules::graphs::Descriptor).
typedef struct Desc {
  int mode, tokens, reqs, uniform, mql, ubatches, loras;
} Desc;

// What the arrays hold for rank r: `value` on every rank, or word `row` of rank r's record.
typedef struct Fill {
  int all, value, row;
} Fill;

// Everything the kernel publishes (the host block's header words, the arrays' fill).
typedef struct Verdict {
  int status;  // STATUS_*; every other field is 0 (last_rank -1) unless STATUS_OK
  int rules;   // RULES_VLLM_V1 or RULES_VLLM_V2
  int should_ubatch, should_dp_pad, mode, self, max_tokens, min_tokens, num_ubatches;
  int last_rank;
  long long arrival_skew;  // latest minus earliest arrival, saturated
  int idle, eager, skip_drafts, has_array;  // V2
  Desc graph;                               // V2
  int agreed_uniform, agreed_mql, max_num_reqs;  // V2
  Fill fill;
} Verdict;

DP_FN Partial identity_partial(void) {
  Partial p;
  p.flags = 0;
  p.min_unpadded = 0x7fffffff;
  p.max_padded = 0;  // rules starts from 0 too; valid records are >= 0
  p.min_mode = CUDAGRAPH_FULL;
  p.dp_pad_count = 0;
  p.max_mql = INT_LOWEST;
  p.max_reqs = 0;
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
  a.max_mql = b.max_mql > a.max_mql ? b.max_mql : a.max_mql;
  a.max_reqs = b.max_reqs > a.max_reqs ? b.max_reqs : a.max_reqs;
  a.earliest = b.earliest < a.earliest ? b.earliest : a.earliest;
  const int later = b.latest > a.latest || (b.latest == a.latest && b.last_rank < a.last_rank);
  a.latest = later ? b.latest : a.latest;
  a.last_rank = later ? b.last_rank : a.last_rank;
  return a;
}

// One slot's part: `w` is rank `rank`'s slot, `base` rank 0's, `seq` this exchange's number.
// The checksum is one multiply-add per word: sum(K[i] * w[i]) == CHECK_TARGET (mod 2^32).
// The record is read by the rule set of rank 0's slot (any other is a configuration fault).
DP_FN Partial slot_partial(const unsigned* w, const unsigned* base, unsigned seq, int rank) {
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
  const int v2 = (int)base[SLOT_RULES] == RULES_VLLM_V2;
  const int r0 = (int)w[SLOT_RECORD + 0], r1 = (int)w[SLOT_RECORD + 1];
  const int r2 = (int)w[SLOT_RECORD + 2], r3 = (int)w[SLOT_RECORD + 3];
  const int r4 = (int)w[SLOT_RECORD + 4], r5 = (int)w[SLOT_RECORD + 5];
  const int r6 = (int)w[SLOT_RECORD + 6], r7 = (int)w[SLOT_RECORD + 7];
  // V1 (rules/v1.rs check_record): unpadded, padded, attempt_ubatch, attempt_dp_pad, mode.
  const int invalid_v1 = r0 < 0 || r1 < r0 || (r2 != 0 && r2 != 1) || (r3 != 0 && r3 != 1) ||
                         r4 < CUDAGRAPH_NONE || r4 > CUDAGRAPH_FULL;
  // V2 (rules/v2/pass.rs LO..HI): tokens, mode, uniform, query bound, ubatching, requests,
  // skip drafts, LoRA count. A bound of 0 is judged on the aggregates, as there.
  const int invalid_v2 = r0 < 0 || r1 < CUDAGRAPH_NONE || r1 > CUDAGRAPH_FULL || r2 < 0 ||
                         r3 < -1 || (r4 != 0 && r4 != 1) || r5 < 0 || (r6 != 0 && r6 != 1) ||
                         r7 < 0;
  const int rules_flags =
      v2 ? (invalid_v2 ? FLAG_INVALID : 0) | (r4 != 1 ? FLAG_NOT_ALL_UBATCH : 0) |
               (r2 != (int)base[SLOT_RECORD + 2] ? FLAG_U_DIFFERS : 0) |
               (r3 == -1 ? FLAG_MQL_NONE : 0) | (r3 == 0 ? FLAG_MQL_ZERO : 0) |
               (r6 != 1 ? FLAG_NOT_ALL_SKIP : 0)
         : (invalid_v1 ? FLAG_INVALID : 0) | (r2 != 1 ? FLAG_NOT_ALL_UBATCH : 0);
  Partial p;
  p.flags = (w[SLOT_SEQ] != seq ? FLAG_STALE : 0) | (sum != CHECK_TARGET ? FLAG_CORRUPT : 0) |
            (record_and == MARKER_WORD ? FLAG_MARKER : 0) | (config != 0 ? FLAG_CONFIG : 0) |
            (ids != 0 ? FLAG_STEP_IDS : 0) | rules_flags;
  p.min_unpadded = r0;
  p.max_padded = v2 ? r0 : r1;
  p.min_mode = v2 ? r1 : r4;
  p.dp_pad_count = !v2 && r3 == 1 ? 1 : 0;
  p.max_mql = v2 ? r3 : INT_LOWEST;
  p.max_reqs = v2 ? r5 : 0;
  p.last_rank = rank;
  p.earliest = (long long)(((unsigned long long)w[SLOT_ARRIVAL + 1] << 32) | w[SLOT_ARRIVAL]);
  p.latest = p.earliest;
  return p;
}

// ---- V2: vLLM's CudaGraphManager.dispatch over the device table (rules/graphs.rs dispatch,
// on the layout of rules/graphs/device.rs) ----

DP_FN Desc desc_none(int tokens, int reqs, int loras, int ubatches) {
  Desc d;
  d.mode = CUDAGRAPH_NONE;
  d.tokens = tokens;
  d.reqs = reqs;
  d.uniform = 0;
  d.mql = -1;
  d.ubatches = ubatches;
  d.loras = loras;
  return d;
}

// rules/v2.rs untabled: without a table, `mode` over the inputs the caller dispatches on.
DP_FN Desc untabled(int mode, int tokens, int reqs, int uniform, int mql, int loras) {
  Desc d = desc_none(tokens, reqs, loras, 1);
  if (mode != CUDAGRAPH_NONE) {
    d.mode = mode;
    d.reqs = -1;
    d.uniform = uniform;
    d.mql = mql;
  }
  return d;
}

// _resolve_effective_loras: the smallest LoRA case >= x, clamped to the largest; x <= 0, or a
// table without LoRA cases, unchanged.
DP_FN int effective_loras(Table tab, int x) {
  const int count = (int)TABLE_WORD(tab, TABLE_LORA_COUNT);
  if (x <= 0 || count == 0) return x;
  const unsigned at = TABLE_WORD(tab, TABLE_LORA_AT);
  int c = x;
  for (int i = 0; i < count; ++i) {
    c = (int)TABLE_WORD(tab, at + (unsigned)i);
    if (c >= x) break;
  }
  return c;
}

// The directory entry (of the list at header words count_word, at_word) keyed (uniform,
// loras, ubatches), or 0.
DP_FN unsigned find_dir(Table tab, unsigned count_word, unsigned at_word, int uniform, int loras,
                        int ubatches) {
  const int count = (int)TABLE_WORD(tab, count_word);
  const unsigned at = TABLE_WORD(tab, at_word);
  for (int i = 0; i < count; ++i) {
    const unsigned d = at + (unsigned)i * TABLE_DIR_WORDS;
    if ((int)TABLE_WORD(tab, d + TABLE_DIR_UNIFORM) == uniform &&
        (int)TABLE_WORD(tab, d + TABLE_DIR_LORAS) == loras &&
        (int)TABLE_WORD(tab, d + TABLE_DIR_UBATCHES) == ubatches) {
      return d;
    }
  }
  return 0;
}

// The entry of block `dir` for key x >= 1 (the smallest key >= x), or 0 above its largest key.
DP_FN unsigned find_entry(Table tab, unsigned dir, int x) {
  if (x > (int)TABLE_WORD(tab, dir + TABLE_DIR_MAX_KEY)) return 0;
  const int dense = (int)TABLE_WORD(tab, dir + TABLE_DIR_DENSE_LEN);
  unsigned index = (unsigned)x;
  if (x >= dense) {  // binary search of the keys (a table with sizes past the dense bound)
    const unsigned keys = TABLE_WORD(tab, dir + TABLE_DIR_KEYS_AT);
    unsigned lo = 0, hi = TABLE_WORD(tab, dir + TABLE_DIR_NUM_KEYS);
    while (lo < hi) {
      const unsigned mid = lo + (hi - lo) / 2;
      if ((int)TABLE_WORD(tab, keys + mid) < x) {
        lo = mid + 1;
      } else {
        hi = mid;
      }
    }
    index = (unsigned)dense + lo;
  }
  return TABLE_WORD(tab, dir + TABLE_DIR_ENTRIES_AT) + index * TABLE_ENTRY_WORDS;
}

// A FULL candidate: tokens (0: none), requests, uniform count, query bound.
typedef struct Cand {
  int tokens, reqs, uniform, mql;
} Cand;

DP_FN Cand load_cand(Table tab, unsigned at) {
  Cand c;
  c.tokens = at != 0 ? (int)TABLE_WORD(tab, at + TABLE_E_TOKENS) : 0;
  c.reqs = at != 0 ? (int)TABLE_WORD(tab, at + TABLE_E_REQS) : 0;
  c.uniform = at != 0 ? (int)TABLE_WORD(tab, at + TABLE_E_UNIFORM) : 0;
  c.mql = at != 0 ? (int)TABLE_WORD(tab, at + TABLE_E_MQL) : -1;
  return c;
}

// _is_compatible, for a candidate of the query's LoRA case and microbatches (the block's).
DP_FN int fits(Cand c, int reqs, int tokens, int uniform, int mql) {
  return c.tokens > 0 && (c.uniform == 0 || c.uniform == uniform) &&
         (c.mql == -1 || (mql != -1 && c.mql >= mql)) && (c.reqs == -1 || c.reqs >= reqs) &&
         c.tokens >= tokens;
}

DP_FN Desc desc_full(Cand c, int ubatches, int loras) {
  Desc d;
  d.mode = CUDAGRAPH_FULL;
  d.tokens = c.tokens;
  d.reqs = c.reqs;
  d.uniform = c.uniform;
  d.mql = c.mql;
  d.ubatches = ubatches;
  d.loras = loras;
  return d;
}

// dispatch(num_reqs, num_tokens, uniform_token_count, num_active_loras, max_query_len,
// num_ubatches): the decode table's entry (with a uniform count), then the FULL candidates of
// the smallest FULL size, then the smallest PIECEWISE size; the first compatible wins, else
// NONE with the batch's own shape. Both entries are located before either is read, so that
// their loads are in flight together.
DP_FN Desc dispatch(Table tab, int reqs, int tokens, int uniform, int loras, int mql,
                    int ubatches) {
  const int l = effective_loras(tab, loras);
  const int u = uniform > 0 ? uniform : 0;
  const int q = mql < 0 ? -1 : mql;
  if (tokens <= 0 || TABLE_WORD(tab, TABLE_NUM_GRAPHS) == 0) {
    return desc_none(tokens, reqs, l, ubatches);
  }
  unsigned dec = 0;
  if (u > 0) {
    const unsigned dir = find_dir(tab, TABLE_DECODE_COUNT, TABLE_DECODE_AT, u, l, ubatches);
    if (dir != 0) dec = find_entry(tab, dir, (int)(((long long)tokens + u - 1) / u));
  }
  const unsigned dir = find_dir(tab, TABLE_TOKEN_COUNT, TABLE_TOKEN_AT, 0, l, ubatches);
  const unsigned tok = dir != 0 ? find_entry(tab, dir, tokens) : 0;
  const Cand d = load_cand(tab, dec);
  const Cand f = load_cand(tab, tok);
  const int more = tok != 0 ? (int)TABLE_WORD(tab, tok + TABLE_E_REST_COUNT) : 0;
  const unsigned rest = tok != 0 ? TABLE_WORD(tab, tok + TABLE_E_REST_AT) : 0;
  const int piecewise = tok != 0 ? (int)TABLE_WORD(tab, tok + TABLE_E_PIECEWISE) : 0;
  if (fits(d, reqs, tokens, u, q)) return desc_full(d, ubatches, l);
  if (fits(f, reqs, tokens, u, q)) return desc_full(f, ubatches, l);
  for (int i = 0; i < more; ++i) {
    const Cand c = load_cand(tab, rest + (unsigned)i * TABLE_REST_WORDS);
    if (fits(c, reqs, tokens, u, q)) return desc_full(c, ubatches, l);
  }
  if (piecewise > 0) return untabled(CUDAGRAPH_PIECEWISE, piecewise, -1, 0, -1, l);
  return desc_none(tokens, reqs, l, ubatches);
}

// ---- the verdict ----

DP_FN Verdict empty_verdict(int status) {
  Verdict v;
  v.status = status;
  v.rules = RULES_VLLM_V1;
  v.should_ubatch = 0;
  v.should_dp_pad = 0;
  v.mode = 0;
  v.self = 0;
  v.max_tokens = 0;
  v.min_tokens = 0;
  v.num_ubatches = 0;
  v.last_rank = -1;
  v.arrival_skew = 0;
  v.idle = 0;
  v.eager = 0;
  v.skip_drafts = 0;
  v.has_array = 0;
  v.graph = desc_none(0, 0, 0, 0);
  v.agreed_uniform = 0;
  v.agreed_mql = 0;
  v.max_num_reqs = 0;
  v.fill.all = 0;
  v.fill.value = 0;
  v.fill.row = 0;
  return v;
}

// V2's checks after the common ones, as rules/slots.rs decide_v2: the kernel's table is the
// one the slots name (their hash; 0: none), the configuration is legal (V2Config::check), the
// records are in range (rules/v2/pass.rs, a bound of 0 judged on the aggregates).
DP_FN int v2_status(Partial p, const unsigned* base, Table tab) {
  const unsigned hash = TABLE_PRESENT(tab) ? TABLE_WORD(tab, TABLE_HASH) : 0u;
  const int n = (int)base[SLOT_NUM_UBATCHES];
  const int f = p.flags;
  if (hash != base[SLOT_GRAPHS]) return STATUS_INVALID;
  if ((int)base[SLOT_DECODE_QUERY_LEN] < 1 || (n != 0 && n < 2)) return STATUS_INVALID;
  if ((f & FLAG_INVALID) || ((f & FLAG_MQL_ZERO) && (!(f & FLAG_MQL_NONE) || p.max_mql == 0))) {
    return STATUS_INVALID;
  }
  return STATUS_OK;
}

// rules/slots.rs decide_v1 (dp_size 1: the early exit, no padding). `own` is this rank's
// record.
DP_FN void decide_v1(Verdict* v, Partial p, const unsigned* base, const unsigned* own,
                     int dp_size) {
  const int pad_policy = (int)base[SLOT_PAD_POLICY];
  const int n = base[SLOT_NUM_UBATCHES] == 0 ? DEFAULT_NUM_UBATCHES : (int)base[SLOT_NUM_UBATCHES];
  v->num_ubatches = 1;
  if (dp_size >= 2) {
    // last_ubatch_empty = (max_padded / n) * (n - 1) >= min_unpadded, in 64 bits.
    const long long nu = (long long)n;
    const int last_ubatch_empty =
        ((long long)p.max_padded / nu) * (nu - 1) >= (long long)p.min_unpadded;
    v->should_ubatch = !(p.flags & FLAG_NOT_ALL_UBATCH) && !last_ubatch_empty;
    const int policy_pad = pad_policy == PAD_POLICY_EXPLICIT ? p.dp_pad_count == dp_size
                                                             : p.min_mode != CUDAGRAPH_NONE;
    v->should_dp_pad = policy_pad || v->should_ubatch;
    v->num_ubatches = v->should_ubatch ? n : 1;
  }
  v->mode = p.min_mode;
  v->self = v->should_dp_pad ? p.max_padded : (int)own[REC_PADDED];
  v->max_tokens = p.max_padded;
  v->min_tokens = p.min_unpadded;
  v->fill.all = v->should_dp_pad;
  v->fill.value = p.max_padded;
  v->fill.row = REC_PADDED;
}

// rules/v2.rs decide_many (dp_size >= 2) and decide_one, on the aggregates, this rank's own
// record `own` and the configuration of rank 0's slot.
DP_FN void decide_v2(Verdict* v, Partial p, const unsigned* base, const unsigned* own,
                     int dp_size, Table tab) {
  const int t = (int)own[0], mode = (int)own[1], u = (int)own[2], mql = (int)own[3];
  const int reqs = (int)own[5], loras = (int)own[7];
  const int has = TABLE_PRESENT(tab);
  const int f = p.flags;
  const int n_word = (int)base[SLOT_NUM_UBATCHES];
  const int synced_uniform = (f & FLAG_U_DIFFERS) ? 0 : (int)base[SLOT_RECORD + 2];
  const int synced_mql = (f & FLAG_MQL_NONE) ? -1 : p.max_mql;
  // Which branch decides, and the one dispatch it asks (inlined once): with a table, over
  // it; without, rules/v2.rs untabled.
  Desc g = desc_none(t, reqs, loras, 1);
  int ask = 0, ubatch = 0, idle = 0, eager = 0, padded = 0, has_array = 1, self = t;
  int q_tokens = t, q_uniform = u, q_mql = mql, q_ubatches = 1, q_mode = mode;
  v->rules = RULES_VLLM_V2;
  v->agreed_uniform = synced_uniform;
  v->agreed_mql = synced_mql;
  v->max_num_reqs = p.max_reqs;
  v->skip_drafts = !(f & FLAG_NOT_ALL_SKIP);
  v->max_tokens = p.max_padded;
  v->min_tokens = p.min_unpadded;
  if (dp_size == 1) {
    // decide_one: the own descriptor, no array; the agreement holds the own values.
    ask = mode != CUDAGRAPH_NONE;
    idle = t == 0;
    has_array = 0;
    v->agreed_uniform = u;
    v->agreed_mql = mql;
    v->max_num_reqs = reqs;
    v->skip_drafts = (int)own[6] == 1;
    v->max_tokens = t;
    v->min_tokens = t;
  } else if (p.max_padded == 0) {
    // 2.4: all idle.
    g = desc_none(0, 0, 0, 1);
    idle = 1;
    has_array = 0;
    self = 0;
  } else {
    const int t_star = p.max_padded;
    q_tokens = t_star;
    q_uniform = synced_uniform;
    // 2.5: microbatching (the mode row ignored), with the derived uniform_decode.
    if (!(f & FLAG_NOT_ALL_UBATCH) && n_word != 0) {
      const int uniform_decode = synced_uniform == (int)base[SLOT_DECODE_QUERY_LEN];
      const int threshold = uniform_decode ? (int)base[SLOT_DECODE_THRESHOLD]
                                           : (int)base[SLOT_PREFILL_THRESHOLD];
      ubatch = p.min_unpadded >= threshold;
    }
    if (ubatch) {
      ask = 1;
      padded = 1;
      q_mql = -1;
      q_ubatches = n_word;
    } else if (p.min_mode == CUDAGRAPH_NONE) {
      // 2.6: every rank eager and unpadded (its own tokens).
      eager = 1;
    } else {
      // 2.7: the agreed graph for T* ("NONE but not eager" when there is none).
      ask = 1;
      padded = 1;
      q_mql = synced_mql;
      q_mode = p.min_mode;
    }
  }
  if (ask) {
    g = has ? dispatch(tab, reqs, q_tokens, q_uniform, loras, q_mql, q_ubatches)
            : untabled(q_mode, q_tokens, reqs, q_uniform, q_mql, loras);
  }
  if (ubatch) {
    if (!has || 2ll * p.min_unpadded < (long long)g.tokens) {
      g = desc_none(q_tokens, reqs, 0, q_ubatches);  // no table, or the 2 x min fallback
    }
    eager = g.mode == CUDAGRAPH_NONE;
  }
  if (dp_size == 1) {
    eager = !idle && g.mode == CUDAGRAPH_NONE;
  }
  if (padded) {
    self = g.tokens;
  }
  v->graph = g;
  v->idle = idle;
  v->eager = eager;
  v->has_array = has_array;
  v->should_ubatch = g.ubatches > 1;
  v->should_dp_pad = padded;
  v->mode = g.mode;
  v->self = self;
  v->num_ubatches = g.ubatches;
  // Padded: every slot the graph's tokens; else each rank's own tokens (also where there is
  // no array: dp_size 1, idle).
  v->fill.all = padded;
  v->fill.value = g.tokens;
  v->fill.row = 0;
}

// The verdict over every rank's aggregate `p` (rules/slots.rs check, then decide_v1 or
// decide_v2 by rank 0's slot's rule set and with its configuration) for `dp_size` ranks, as the
// rank whose record is `own`; `args_ok` 0: the launch's dp_size or dp_rank is out of range.
DP_FN Verdict decide(Partial p, const unsigned* base, const unsigned* own, int dp_size,
                     int args_ok, Table tab) {
  const int f = p.flags;
  const int v2 = (int)base[SLOT_RULES] == RULES_VLLM_V2;
  int status;
  if (!args_ok) {
    status = STATUS_INVALID;
  } else if (f & FLAG_STALE) {
    status = STATUS_STALE;
  } else if (f & FLAG_CORRUPT) {
    status = STATUS_CORRUPT;
  } else if (f & FLAG_MARKER) {
    status = STATUS_MARKER;
  } else if (f & FLAG_CONFIG) {
    status = STATUS_CONFIG;
  } else if (f & FLAG_STEP_IDS) {
    status = STATUS_STEP_IDS;
  } else if (v2) {
    status = v2_status(p, base, tab);
  } else if (f & FLAG_INVALID) {
    status = STATUS_INVALID;
  } else if (dp_size >= 2 && (int)base[SLOT_PAD_POLICY] == PAD_POLICY_EXPLICIT &&
             p.dp_pad_count != 0 && p.dp_pad_count != dp_size) {
    status = STATUS_INCONSISTENT;
  } else {
    status = STATUS_OK;
  }
  Verdict v = empty_verdict(status);
  if (status != STATUS_OK) return v;
  // Saturated like rules' saturating_sub (latest >= earliest, so the unsigned difference is
  // exact).
  const unsigned long long skew = (unsigned long long)p.latest - (unsigned long long)p.earliest;
  v.arrival_skew = skew > 0x7fffffffffffffffull ? 0x7fffffffffffffffll : (long long)skew;
  v.last_rank = p.last_rank;
  if (v2) {
    decide_v2(&v, p, base, own, dp_size, tab);
  } else {
    decide_v1(&v, p, base, own, dp_size);
  }
  return v;
}

// Host block header word i (1 <= i < HOST_HEADER_WORDS; HOST_SEQ is written apart, last).
DP_FN int header_word(const Verdict* v, int i) {
  int x = 0;
  x = i == HOST_STATUS ? v->status : x;
  x = i == HOST_SHOULD_UBATCH ? v->should_ubatch : x;
  x = i == HOST_SHOULD_DP_PAD ? v->should_dp_pad : x;
  x = i == HOST_SYNCED_CUDAGRAPH_MODE ? v->mode : x;
  x = i == HOST_NUM_TOKENS_AFTER_PADDING_SELF ? v->self : x;
  x = i == HOST_MAX_NUM_TOKENS_PADDED ? v->max_tokens : x;
  x = i == HOST_MIN_NUM_TOKENS_UNPADDED ? v->min_tokens : x;
  x = i == HOST_NUM_UBATCHES ? v->num_ubatches : x;
  x = i == HOST_LAST_RANK ? v->last_rank : x;
  x = i == HOST_SKEW ? (int)(unsigned)v->arrival_skew : x;
  x = i == HOST_SKEW + 1 ? (int)(unsigned)((unsigned long long)v->arrival_skew >> 32) : x;
  x = i == HOST_RULES ? v->rules : x;
  x = i == HOST_IDLE ? v->idle : x;
  x = i == HOST_EAGER ? v->eager : x;
  x = i == HOST_SKIP_DRAFTS ? v->skip_drafts : x;
  x = i == HOST_HAS_ARRAY ? v->has_array : x;
  x = i == HOST_GRAPH_NUM_TOKENS ? v->graph.tokens : x;
  x = i == HOST_GRAPH_NUM_REQS ? v->graph.reqs : x;
  x = i == HOST_GRAPH_UNIFORM ? v->graph.uniform : x;
  x = i == HOST_GRAPH_MAX_QUERY_LEN ? v->graph.mql : x;
  x = i == HOST_GRAPH_LORAS ? v->graph.loras : x;
  x = i == HOST_AGREED_UNIFORM ? v->agreed_uniform : x;
  x = i == HOST_AGREED_MAX_QUERY_LEN ? v->agreed_mql : x;
  x = i == HOST_MAX_NUM_REQS ? v->max_num_reqs : x;
  return x;
}

// The arrays' word for the rank whose slot is `slot` (an accepted step only).
DP_FN int array_word(Fill fill, const unsigned* slot) {
  return fill.all ? fill.value : (int)slot[SLOT_RECORD + fill.row];
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
    o.max_mql = __shfl_xor_sync(FULL_MASK, p.max_mql, offset);
    o.max_reqs = __shfl_xor_sync(FULL_MASK, p.max_reqs, offset);
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
// decides as rules/slots.rs decide_v1 or decide_v2 (by the slots' rule set, with their
// configuration and, for V2, the device graph table `table`), finds the straggler, and writes
// the decision to the device array `device_out` (dp_size ints) and to the mapped pinned host
// block `host`.
//
// Launch: ONE block; blockDim.x a multiple of 32 up to BLOCK_THREADS; no dynamic shared
// memory. Any dp_size >= 1 with HOST_HEADER_WORDS + (1 + SLOT_WORDS) * dp_size < 2^31;
// `slots` 16-byte aligned; `table` NULL (no graph table) or rules::graphs' device form of the
// table, 16-byte aligned and at least TABLE_PREFETCH_WORDS words long.
//
// Verdict, first that applies: STATUS_INVALID for an out-of-range dp_size or dp_rank (which
// the host validates anyway), STATUS_STALE (nothing of the exchange is used),
// STATUS_CORRUPT, STATUS_MARKER, STATUS_CONFIG, STATUS_STEP_IDS, then V1: STATUS_INVALID,
// STATUS_INCONSISTENT; V2: STATUS_INVALID (the table is not the slots', the configuration or
// a record is out of range); STATUS_OK.
//
// Host block (int32 words, layout.h): HOST_SEQ (written last), the header (status, decision,
// straggler words; only HOST_STATUS is meaningful unless OK), then [HOST_HEADER_WORDS,
// +dp_size): the per-rank array (only when OK), then a copy of the slots (only when not OK;
// the host derives the exact message from it with rules::slots).
//
// Time: warp 0 starts loading the table's first TABLE_PREFETCH_WORDS words with the slots,
// so a V2 dispatch over a usual table reads its directories from shared memory and costs one
// round of global loads (its entries).
extern "C" __global__ void __launch_bounds__(BLOCK_THREADS)
    dp_postprocess(const unsigned int* __restrict__ slots, int dp_size, int dp_rank,
                   unsigned int seq, int* __restrict__ device_out, int* __restrict__ host,
                   const unsigned int* __restrict__ table) {
  __shared__ Partial warp_partials[MAX_WARPS];
  __shared__ unsigned int table_head[TABLE_PREFETCH_WORDS];
  __shared__ int decision[4];  // status, fill: warp 0 -> all

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

  // 0. Warp 0: the table's first words (8 per lane), in flight while the slots load.
  const bool prefetch = warp == 0 && table != nullptr;
  uint4 head0 = make_uint4(0, 0, 0, 0), head1 = head0;
  if (prefetch) {
    const uint4* src = reinterpret_cast<const uint4*>(table) + 2 * lane;
    head0 = __ldg(src);
    head1 = __ldg(src + 1);
  }

  // 1. Per thread: ranks tid, tid + blockDim, ..., each against rank 0's slot; warp 0 also
  // reads this rank's record.
  unsigned int base[SLOT_WORDS];
  unsigned int own[SLOT_RECORD_WORDS];
  if (n > 0) {
    load_slot(slots, 0, base);
  } else {
    DP_UNROLL
    for (int i = 0; i < SLOT_WORDS; ++i) base[i] = 0;
  }
  DP_UNROLL
  for (int i = 0; i < SLOT_RECORD_WORDS; ++i) {
    own[i] = warp == 0 && n > 0 ? slots[SLOT_WORDS * dp_rank + SLOT_RECORD + i] : 0u;
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

  // 3. Warp 0, every lane alike: the verdict; then lane i writes header word i (one store).
  Verdict v = empty_verdict(STATUS_INVALID);
  bool wrote = false;
  if (warp == 0) {
    if (prefetch) {
      uint4* dst = reinterpret_cast<uint4*>(table_head) + 2 * lane;
      dst[0] = head0;
      dst[1] = head1;
    }
    __syncwarp();
    Table tab;
    tab.g = table;
    tab.s = table_head;
    v = decide(p, base, own, dp_size, args_ok ? 1 : 0, tab);
    if (lane >= 1 && lane < HOST_HEADER_WORDS) {
      host[lane] = header_word(&v, lane);
      wrote = true;
    }
    if (lane == 0 && nwarps > 1) {
      decision[0] = v.status;
      decision[1] = v.fill.all;
      decision[2] = v.fill.value;
      decision[3] = v.fill.row;
    }
  }
  int status = v.status;
  Fill fill = v.fill;
  if (nwarps > 1) {
    __syncthreads();
    status = decision[0];
    fill.all = decision[1];
    fill.value = decision[2];
    fill.row = decision[3];
  }

  // 4. The per-rank array (status OK) or the copy of the slots (otherwise).
  if (status == STATUS_OK) {
    int* after_padding = host + HOST_HEADER_WORDS;
    for (int r = tid; r < n; r += nthreads) {
      const int v_r = array_word(fill, slots + SLOT_WORDS * r);
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
