// The GPU suite: dp_coordinate_batch over real NCCL communicators, one process per rank.
//
// Started by dpcoord_gpu_launcher (see launcher.cpp), which sets DPCOORD_RANK, DPCOORD_NRANKS,
// DPCOORD_DEVICE, DPCOORD_RENDEZVOUS and the NCCL variables; run alone it is a one-rank world.
// Every rank runs every test, in the same order, and every test makes the same sequence of
// collective calls on every rank. Checks that may differ between ranks are non-fatal (EXPECT),
// and wherever a local failure would change what a rank does next (a status), the ranks first
// agree on it through the suite's own communicator (as nccl-tests does), so that one rank's
// failure fails the test on every rank instead of leaving its peers hanging.
//
// Communicators: `boot` (the suite's: verdicts, barriers, splits) and `dp` (the one under
// test, ncclCommSplit of boot; aborted and re-split when a test leaves it broken). Each call's
// result is compared with dp_decide_batch on every rank's record, which every rank derives
// itself from (seed, step, rank): all scalars, the host array and the device array read back.
//
// Tunables (environment): DPCOORD_GPU_SEED (random steps' seed, default 20240611),
// DPCOORD_GPU_STEPS (random steps, default 256), DPCOORD_GPU_REPEAT (repeated calls, default
// 10000 with a GPU per rank, 2000 when ranks share GPUs), DPCOORD_GPU_GUARD_MS (timeout_ms put
// in requests so that a mismatched collective fails instead of hanging, default 30000),
// DPCOORD_GPU_WAIT_S (deadline of the suite's own collectives, default 120),
// DPCOORD_GPU_VERBOSE=1 (a trace line around every collective, to find where a run hangs).
#include <dpcoord.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include "gpu_util.h"
#include "../common/poison.h"

namespace {

// ---------------------------------------------------------------------------------------------
// The world: this rank, its GPU and communicators.
// ---------------------------------------------------------------------------------------------
struct World {
  int rank = 0;
  int nranks = 1;
  int device = -1;
  int ngpus = 0;
  bool shared = false;      // ranks share GPUs (NCCL over loopback sockets)
  std::string skip_reason;  // non-empty: no usable GPU, every test skips with it
  ncclComm_t boot = nullptr;
  ncclComm_t dp = nullptr;  // null after an abort until the next test re-splits it
  cudaStream_t check_stream = nullptr;
  cudaStream_t stream = nullptr;  // the tests' default stream: a non-blocking user stream
  char* check_dev = nullptr;
  char* check_host = nullptr;    // pinned
  int32_t* read_host = nullptr;  // pinned, for device-array read-back
  int32_t* scratch_dev = nullptr;
  size_t check_half = 0;
  dpg::TestKernels kernels;
  uint64_t seed = 20240611;
  int steps = 256;
  long repeat = 0;
  int32_t guard_ms = 30000;
  double wait_s = 120;
  bool suspect = false;  // this rank saw a status that may leave `dp` out of step
  bool verbose = false;  // DPCOORD_GPU_VERBOSE=1: a line before and after every collective
};
World g;

constexpr size_t kCheckBytes = 1 << 16;
constexpr int kScratchInts = 1 << 16;
constexpr int32_t kPoisonArray = static_cast<int32_t>(0xA5A5A5A5u);

long EnvLong(const char* name, long fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 0);
  if (end == v || *end != '\0') dpg::Die(std::string("bad ") + name + "=" + v);
  return x;
}

std::string Name(dp_status s) { return dp_status_string(s); }

// With DPCOORD_GPU_VERBOSE=1, says what this rank is about to do (to find where a run hangs).
void Trace(const char* what) {
  if (g.verbose) std::printf("trace: %s\n", what);
}

#define EXPECT_STATUS(expected, expr)                         \
  do {                                                        \
    const dp_status dpg_got_ = (expr);                        \
    EXPECT_EQ(Name(expected), Name(dpg_got_))                 \
        << #expr << "; dp_last_error(): " << dp_last_error(); \
  } while (0)

using dpcoord_test::IsPoisoned;
using dpcoord_test::Poisoned;

// ---------------------------------------------------------------------------------------------
// The suite's own collectives, on `boot` and its stream, each bounded by WaitStream's deadline.
// ---------------------------------------------------------------------------------------------
template <typename T>
std::vector<T> AllGather(const T& mine) {
  static_assert(std::is_trivially_copyable<T>::value, "AllGather copies bytes");
  const size_t bytes = sizeof(T);
  if (bytes * static_cast<size_t>(g.nranks) > g.check_half) dpg::Die("AllGather: too many bytes");
  Trace("suite allgather");
  std::memcpy(g.check_host, &mine, bytes);
  CUDA_CHECK(
      cudaMemcpyAsync(g.check_dev, g.check_host, bytes, cudaMemcpyHostToDevice, g.check_stream));
  NCCL_CHECK(ncclAllGather(g.check_dev, g.check_dev + g.check_half, bytes, ncclUint8, g.boot,
                           g.check_stream));
  CUDA_CHECK(cudaMemcpyAsync(g.check_host + g.check_half, g.check_dev + g.check_half,
                             bytes * g.nranks, cudaMemcpyDeviceToHost, g.check_stream));
  dpg::WaitStream(g.check_stream, g.boot, "the suite's allgather on its own communicator",
                  g.wait_s);
  Trace("suite allgather done");
  std::vector<T> all(g.nranks);
  std::memcpy(static_cast<void*>(all.data()), g.check_host + g.check_half, bytes * g.nranks);
  return all;
}

void Barrier() { AllGather<int32_t>(0); }

// True on every rank iff `mine` is true on every rank.
bool AllTrue(bool mine) {
  for (int32_t v : AllGather<int32_t>(mine ? 1 : 0)) {
    if (v == 0) return false;
  }
  return true;
}

void EnsureDpComm() {
  if (g.dp != nullptr) return;
  NCCL_CHECK(ncclCommSplit(g.boot, 0, g.rank, &g.dp, nullptr));
  int count = 0, user_rank = -1;
  NCCL_CHECK(ncclCommCount(g.dp, &count));
  NCCL_CHECK(ncclCommUserRank(g.dp, &user_rank));
  if (count != g.nranks || user_rank != g.rank) dpg::Die("ncclCommSplit gave an odd communicator");
}

// Every rank calls this at the same point (the decision to abort is always agreed).
void AbortDpComm(const char* why) {
  if (g.dp == nullptr) return;
  std::printf("aborting the communicator under test: %s\n", why);
  NCCL_CHECK(ncclCommAbort(g.dp));
  const dp_status st = dp_release(g.dp);
  if (st != DP_OK) {
    std::printf("dp_release after ncclCommAbort: %s: %s\n", dp_status_string(st), dp_last_error());
  }
  g.dp = nullptr;
}

// ---------------------------------------------------------------------------------------------
// Requests, the host oracle and result checks.
// ---------------------------------------------------------------------------------------------
dp_batch_request BaseRequest() {
  dp_batch_request q = Poisoned<dp_batch_request>();
  dp_batch_request_init(&q);
  q.timeout_ms = g.guard_ms;
  return q;
}

struct Expected {
  dp_status status = DP_OK;
  dp_batch_result result{};
  std::vector<int32_t> array;
};

// dp_decide_batch on the records of `reqs` (reqs[r] is rank r's request), as rank `dp_rank`.
Expected Oracle(const std::vector<dp_batch_request>& reqs, int dp_rank) {
  Expected e;
  const int n = static_cast<int>(reqs.size());
  std::vector<dp_rank_record> records(n);
  for (int r = 0; r < n; ++r) {
    e.status = dp_make_record(&reqs[r], &records[r]);
    if (e.status != DP_OK) return e;
  }
  const dp_batch_request& own = reqs[dp_rank];
  const int32_t num_ubatches = own.ubatch.enabled ? own.ubatch.num_ubatches : 2;
  e.array.assign(n, kPoisonArray);
  e.result = Poisoned<dp_batch_result>();
  e.status = dp_decide_batch(records.data(), n, dp_rank, own.pad_policy, num_ubatches,
                             e.array.data(), &e.result);
  return e;
}

uint64_t Fnv(uint64_t h, int64_t v) {
  for (int i = 0; i < 8; ++i) {
    h ^= static_cast<uint64_t>(v >> (8 * i)) & 0xFF;
    h *= 1099511628211ull;
  }
  return h;
}

// Reads `n` entries of a library-owned device array on `stream` (stream order).
std::vector<int32_t> ReadDevice(const int32_t* dev, int n, cudaStream_t stream) {
  std::fill(g.read_host, g.read_host + n, kPoisonArray);
  CUDA_CHECK(
      cudaMemcpyAsync(g.read_host, dev, sizeof(int32_t) * n, cudaMemcpyDeviceToHost, stream));
  dpg::WaitStream(stream, nullptr, "reading the device array back", g.wait_s);
  return std::vector<int32_t>(g.read_host, g.read_host + n);
}

// Compares a dp_coordinate_batch outcome with the oracle's (non-fatal checks) and returns a
// digest of everything every rank must agree on (status, scalars, arrays).
uint64_t CheckResult(const Expected& exp, dp_status st, const dp_batch_result& res,
                     cudaStream_t read_stream, int dp_size, int dp_rank) {
  uint64_t h = Fnv(1469598103934665603ull, st);
  EXPECT_EQ(Name(exp.status), Name(st)) << "dp_last_error(): " << dp_last_error();
  if (st != exp.status) return h;
  if (st != DP_OK) {
    EXPECT_TRUE(IsPoisoned(res)) << "dp_coordinate_batch wrote its result on failure";
    EXPECT_STRNE("", dp_last_error()) << "no dp_last_error() message after " << Name(st);
    return h;
  }
  const dp_batch_result& x = exp.result;
  EXPECT_EQ(x.should_ubatch, res.should_ubatch);
  EXPECT_EQ(x.should_dp_pad, res.should_dp_pad);
  EXPECT_EQ(x.has_num_tokens_after_padding, res.has_num_tokens_after_padding);
  EXPECT_EQ(x.synced_cudagraph_mode, res.synced_cudagraph_mode);
  EXPECT_EQ(dp_rank, res.dp_rank);
  EXPECT_EQ(dp_size, res.dp_size);
  EXPECT_EQ(x.num_tokens_after_padding_self, res.num_tokens_after_padding_self);
  EXPECT_EQ(x.max_num_tokens_padded, res.max_num_tokens_padded);
  EXPECT_EQ(x.min_num_tokens_unpadded, res.min_num_tokens_unpadded);
  for (int64_t v : {int64_t{res.should_ubatch}, int64_t{res.should_dp_pad},
                    int64_t{res.has_num_tokens_after_padding}, int64_t{res.synced_cudagraph_mode},
                    int64_t{res.dp_size}, int64_t{res.max_num_tokens_padded},
                    int64_t{res.min_num_tokens_unpadded}}) {
    h = Fnv(h, v);
  }
  if (dp_size == 1) {
    EXPECT_FALSE(res.has_num_tokens_after_padding) << "dp_size 1 has no per-rank array";
    EXPECT_EQ(nullptr, res.num_tokens_after_padding);
    EXPECT_EQ(nullptr, res.num_tokens_after_padding_device);
    return h;
  }
  EXPECT_TRUE(res.has_num_tokens_after_padding);
  EXPECT_NE(nullptr, res.num_tokens_after_padding);
  EXPECT_NE(nullptr, res.num_tokens_after_padding_device);
  if (res.num_tokens_after_padding != nullptr) {
    const std::vector<int32_t> host(res.num_tokens_after_padding,
                                    res.num_tokens_after_padding + dp_size);
    EXPECT_EQ(exp.array, host) << "host num_tokens_after_padding";
    for (int32_t v : host) h = Fnv(h, v);
  }
  if (res.num_tokens_after_padding_device != nullptr) {
    const std::vector<int32_t> dev =
        ReadDevice(res.num_tokens_after_padding_device, dp_size, read_stream);
    EXPECT_EQ(exp.array, dev) << "device num_tokens_after_padding (read back in stream order)";
    for (int32_t v : dev) h = Fnv(h, v);
  }
  return h;
}

// dp_coordinate_batch with a poisoned result; a status that may leave the communicator out of
// step marks this rank suspect (the fixture then aborts `dp` on every rank).
dp_status Coordinate(ncclComm_t comm, cudaStream_t stream, const dp_batch_request* req,
                     dp_batch_result* res) {
  *res = Poisoned<dp_batch_result>();
  Trace("dp_coordinate_batch");
  const dp_status st = dp_coordinate_batch(comm, stream, req, res);
  Trace("dp_coordinate_batch done");
  if (st != DP_OK && st != DP_ERR_INVALID_ARGUMENT && st != DP_ERR_INCONSISTENT_RANKS) {
    g.suspect = true;
    std::printf("dp_coordinate_batch returned %s: %s\n", dp_status_string(st), dp_last_error());
  }
  return st;
}

// What one rank reports after a step, gathered from every rank.
struct StepReport {
  int32_t status;
  int32_t suspect;
  uint64_t digest;
};

// Runs one collective step on `comm` (all ranks, each with reqs[its dp rank]) and checks it
// against the oracle; then all ranks compare reports. Returns false (on every rank) when the
// sequence must stop: a status other than the oracle's somewhere, or a suspect rank.
bool RunStep(ncclComm_t comm, int dp_rank, int dp_size, const std::vector<dp_batch_request>& reqs,
             cudaStream_t stream) {
  const Expected exp = Oracle(reqs, dp_rank);
  dp_batch_result res;
  const dp_status st = Coordinate(comm, stream, &reqs[dp_rank], &res);
  const uint64_t digest = CheckResult(exp, st, res, stream, dp_size, dp_rank);
  const StepReport mine{static_cast<int32_t>(st), g.suspect ? 1 : 0, digest};
  const std::vector<StepReport> all = AllGather(mine);
  bool go_on = true;
  for (int r = 0; r < g.nranks; ++r) {
    if (all[r].suspect != 0 || all[r].status != exp.status) go_on = false;
    // Every rank of one communicator must reach the same decision; with one-rank
    // communicators (dp_size 1) each rank has its own, so only statuses are compared.
    if (dp_size == g.nranks) {
      EXPECT_EQ(digest, all[r].digest) << "rank " << r << " reached a different decision ("
                                       << Name(static_cast<dp_status>(all[r].status)) << ")";
    }
  }
  return go_on;
}

// ---------------------------------------------------------------------------------------------
// Seeded random steps: every rank derives every rank's request from (seed, step, rank).
// ---------------------------------------------------------------------------------------------
uint64_t SplitMix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

class Rng {
 public:
  explicit Rng(uint64_t state) : s_(state) {}
  uint64_t Next() { return s_ = SplitMix(s_); }
  int32_t Range(int32_t lo, int32_t hi) {  // inclusive
    return lo + static_cast<int32_t>(Next() % static_cast<uint64_t>(int64_t{hi} - lo + 1));
  }
  bool Chance(int percent) { return Range(0, 99) < percent; }
  template <typename T, size_t N>
  T Pick(const T (&items)[N]) {
    return items[Range(0, static_cast<int32_t>(N) - 1)];
  }

 private:
  uint64_t s_;
};

// What all ranks share in one step.
struct StepShape {
  int32_t pad_policy;
  dp_ubatch_config ubatch;
  bool pad_all;
  int32_t odd_pad_rank;  // >= 0: this rank flips allow_dp_padding (EXPLICIT: inconsistent)
  int32_t common_mode;   // -1: per rank
  int32_t common_uniform;
  bool all_micro;
  int32_t token_style;
  int32_t base;
};

StepShape ShapeOf(uint64_t seed, int step, int dp_size) {
  Rng rng(SplitMix(seed) ^ SplitMix(0x5EED0000ull + static_cast<uint64_t>(step)));
  StepShape s;
  s.pad_policy = rng.Chance(50) ? DP_PAD_POLICY_EXPLICIT : DP_PAD_POLICY_WHEN_CUDAGRAPH;
  s.ubatch.enabled = rng.Chance(70);
  const int32_t kUbatches[] = {2, 2, 2, 3, 4};
  // Thresholds >= 4, the largest num_ubatches (0.2: both must be >= num_ubatches).
  const int32_t kDecode[] = {4, 16, 32, 64};
  const int32_t kPrefill[] = {4, 128, 512, 1024};
  s.ubatch.num_ubatches = rng.Pick(kUbatches);
  s.ubatch.decode_token_threshold = rng.Pick(kDecode);
  s.ubatch.prefill_token_threshold = rng.Pick(kPrefill);
  s.pad_all = rng.Chance(50);
  s.odd_pad_rank = (dp_size > 1 && rng.Chance(8)) ? rng.Range(0, dp_size - 1) : -1;
  s.common_mode = rng.Chance(40) ? rng.Range(0, 2) : -1;
  s.common_uniform = rng.Chance(60) ? rng.Range(0, 1) : -1;
  s.all_micro = rng.Chance(50);
  s.token_style = rng.Range(0, 4);
  s.base = rng.Range(0, 2048);
  return s;
}

dp_batch_request RequestOf(uint64_t seed, int step, int rank, const StepShape& s) {
  Rng rng(SplitMix(seed ^ 0xA5A5A5A5ull) ^
          SplitMix((static_cast<uint64_t>(step) << 20) + static_cast<uint64_t>(rank) + 1));
  dp_batch_request q = BaseRequest();
  q.pad_policy = s.pad_policy;
  q.ubatch = s.ubatch;
  q.allow_microbatching = s.all_micro || rng.Chance(50);
  q.uniform_decode = s.common_uniform >= 0 ? s.common_uniform : rng.Range(0, 1);
  if (!q.allow_microbatching && rng.Chance(30)) q.uniform_decode = -1;
  const int32_t threshold =
      q.uniform_decode == 1 ? s.ubatch.decode_token_threshold : s.ubatch.prefill_token_threshold;
  int32_t unpadded = 0;
  int32_t padded = -1;
  switch (s.token_style) {
    case 0:
      unpadded = rng.Range(0, 64);
      break;
    case 1:  // at the microbatching threshold's edge
      unpadded = std::max(0, threshold + rng.Range(-1, 1));
      break;
    case 2:
      unpadded = rng.Range(0, 16384);
      break;
    case 3:  // the same on every rank
      unpadded = s.base;
      break;
    default: {  // at the edge of "last microbatch empty": max(padded)/n*(n-1) vs min(unpadded)
      const int32_t n = s.ubatch.num_ubatches;
      if (rank == 0) {
        unpadded = s.base;
        padded = s.base;
      } else {
        unpadded = s.base + rng.Range(0, 8);
        padded = std::max(unpadded, s.base * n / (n - 1) + rng.Range(-2, 2));
      }
    }
  }
  if (s.token_style != 4) {
    const int32_t kBuckets[] = {8, 16, 64};
    const int pick = rng.Range(0, 99);
    if (pick < 35) {
      padded = -1;
    } else if (pick < 55) {
      padded = unpadded;
    } else {
      const int32_t b = rng.Pick(kBuckets);
      padded = (unpadded + b - 1) / b * b + (rng.Chance(10) ? rng.Range(0, 32) : 0);
    }
  }
  q.num_tokens_unpadded = unpadded;
  q.num_tokens_padded = padded;
  q.allow_dp_padding = s.pad_policy == DP_PAD_POLICY_EXPLICIT ? s.pad_all : rng.Chance(50);
  if (rank == s.odd_pad_rank) q.allow_dp_padding = !q.allow_dp_padding;
  q.cudagraph_mode = s.common_mode >= 0 ? s.common_mode : rng.Range(0, 2);
  q.timeout_ms = rng.Chance(25) ? 0 : g.guard_ms;  // 0: the wait-forever path
  return q;
}

// ---------------------------------------------------------------------------------------------
// Deterministic edge cases (rank r of n ranks).
// ---------------------------------------------------------------------------------------------
void Micro(dp_batch_request& q, int32_t uniform, int32_t n, int32_t decode_thr,
           int32_t prefill_thr) {
  q.allow_microbatching = true;
  q.uniform_decode = uniform;
  q.ubatch.enabled = true;
  q.ubatch.num_ubatches = n;
  q.ubatch.decode_token_threshold = decode_thr;
  q.ubatch.prefill_token_threshold = prefill_thr;
}

void Tokens(dp_batch_request& q, int32_t unpadded, int32_t padded = -1) {
  q.num_tokens_unpadded = unpadded;
  q.num_tokens_padded = padded;
}

struct Scenario {
  const char* name;
  std::function<void(int r, int n, dp_batch_request& q)> make;
  // Expectations of the contract itself for dp_size n >= 2 (on top of the oracle's).
  std::function<void(const dp_batch_result& res, int r, int n)> check;
  bool larger_struct = false;  // pass the request inside a larger, zero-padded struct
};

std::vector<Scenario> Scenarios() {
  std::vector<Scenario> s;
  s.push_back({"explicit_no_padding",
               [](int r, int, dp_batch_request& q) { Tokens(q, 10 * (r + 1)); },
               [](const dp_batch_result& res, int r, int) {
                 EXPECT_FALSE(res.should_dp_pad);
                 EXPECT_EQ(10 * (r + 1), res.num_tokens_after_padding_self);
               }});
  s.push_back({"explicit_all_pad",
               [](int r, int, dp_batch_request& q) {
                 Tokens(q, 10 * (r + 1));
                 q.allow_dp_padding = true;
               },
               [](const dp_batch_result& res, int, int n) {
                 EXPECT_TRUE(res.should_dp_pad);
                 EXPECT_EQ(10 * n, res.num_tokens_after_padding_self);
                 EXPECT_EQ(10, res.min_num_tokens_unpadded);
               }});
  s.push_back({"when_cudagraph_all_full",
               [](int r, int, dp_batch_request& q) {
                 Tokens(q, 7 + r);
                 q.pad_policy = DP_PAD_POLICY_WHEN_CUDAGRAPH;
                 q.cudagraph_mode = DP_CUDAGRAPH_FULL;
               },
               [](const dp_batch_result& res, int, int n) {
                 EXPECT_TRUE(res.should_dp_pad);
                 EXPECT_EQ(DP_CUDAGRAPH_FULL, res.synced_cudagraph_mode);
                 EXPECT_EQ(7 + n - 1, res.num_tokens_after_padding_self);
               }});
  s.push_back({"when_cudagraph_last_rank_none",
               [](int r, int n, dp_batch_request& q) {
                 Tokens(q, 7 + r);
                 q.pad_policy = DP_PAD_POLICY_WHEN_CUDAGRAPH;
                 q.allow_dp_padding = true;  // ignored by this policy
                 q.cudagraph_mode = r == n - 1 ? DP_CUDAGRAPH_NONE : DP_CUDAGRAPH_FULL;
               },
               [](const dp_batch_result& res, int r, int) {
                 EXPECT_FALSE(res.should_dp_pad);
                 EXPECT_EQ(DP_CUDAGRAPH_NONE, res.synced_cudagraph_mode);
                 EXPECT_EQ(7 + r, res.num_tokens_after_padding_self);
               }});
  s.push_back({"mode_mix_piecewise_full",
               [](int r, int, dp_batch_request& q) {
                 Tokens(q, 3 * r);
                 q.pad_policy = DP_PAD_POLICY_WHEN_CUDAGRAPH;
                 q.cudagraph_mode = r % 2 == 0 ? DP_CUDAGRAPH_PIECEWISE : DP_CUDAGRAPH_FULL;
               },
               [](const dp_batch_result& res, int, int) {
                 EXPECT_EQ(DP_CUDAGRAPH_PIECEWISE, res.synced_cudagraph_mode);
                 EXPECT_TRUE(res.should_dp_pad);
               }});
  s.push_back({"decode_threshold_exact",
               [](int, int, dp_batch_request& q) {
                 Micro(q, 1, 2, 32, 512);
                 Tokens(q, 32);
               },
               [](const dp_batch_result& res, int, int) {
                 EXPECT_TRUE(res.should_ubatch);
                 EXPECT_TRUE(res.should_dp_pad) << "microbatching forces DP padding";
               }});
  s.push_back({"decode_threshold_minus_one_on_last_rank",
               [](int r, int n, dp_batch_request& q) {
                 Micro(q, 1, 2, 32, 512);
                 Tokens(q, r == n - 1 ? 31 : 32);
               },
               [](const dp_batch_result& res, int, int) {
                 EXPECT_FALSE(res.should_ubatch);
                 EXPECT_FALSE(res.should_dp_pad);
               }});
  s.push_back({"prefill_threshold_exact",
               [](int, int, dp_batch_request& q) {
                 Micro(q, 0, 2, 32, 512);
                 Tokens(q, 512);
               },
               [](const dp_batch_result& res, int, int) { EXPECT_TRUE(res.should_ubatch); }});
  s.push_back({"prefill_threshold_minus_one_on_first_rank",
               [](int r, int, dp_batch_request& q) {
                 Micro(q, 0, 2, 32, 512);
                 Tokens(q, r == 0 ? 511 : 512);
               },
               [](const dp_batch_result& res, int, int) { EXPECT_FALSE(res.should_ubatch); }});
  s.push_back({"last_ubatch_empty_n2",  // 200 / 2 >= 100
               [](int r, int, dp_batch_request& q) {
                 Micro(q, 1, 2, 2, 2);
                 if (r == 0)
                   Tokens(q, 100);
                 else
                   Tokens(q, 150, 200);
               },
               [](const dp_batch_result& res, int, int) {
                 EXPECT_FALSE(res.should_ubatch);
                 EXPECT_EQ(100, res.min_num_tokens_unpadded);
               }});
  s.push_back({"last_ubatch_not_empty_n2",  // 199 / 2 = 99 < 100
               [](int r, int, dp_batch_request& q) {
                 Micro(q, 1, 2, 2, 2);
                 if (r == 0)
                   Tokens(q, 100);
                 else
                   Tokens(q, 150, 199);
               },
               [](const dp_batch_result& res, int, int) {
                 EXPECT_TRUE(res.should_ubatch);
                 EXPECT_TRUE(res.should_dp_pad);
                 EXPECT_EQ(199, res.num_tokens_after_padding_self);
               }});
  s.push_back({"last_ubatch_empty_n3",  // 90 / 3 * 2 = 60 >= 60
               [](int r, int, dp_batch_request& q) {
                 Micro(q, 0, 3, 3, 3);
                 if (r == 0)
                   Tokens(q, 60);
                 else
                   Tokens(q, 80, 90);
               },
               [](const dp_batch_result& res, int, int) { EXPECT_FALSE(res.should_ubatch); }});
  s.push_back({"last_ubatch_not_empty_n3",  // 89 / 3 * 2 = 58 < 60
               [](int r, int, dp_batch_request& q) {
                 Micro(q, 0, 3, 3, 3);
                 if (r == 0)
                   Tokens(q, 60);
                 else
                   Tokens(q, 80, 89);
               },
               [](const dp_batch_result& res, int, int) { EXPECT_TRUE(res.should_ubatch); }});
  s.push_back({"threshold_at_its_floor",  // thresholds = num_ubatches = 2: 2 >= 2, 2 / 2 < 2
               [](int, int, dp_batch_request& q) {
                 Micro(q, 1, 2, 2, 2);
                 Tokens(q, 2);
               },
               [](const dp_batch_result& res, int, int) {
                 EXPECT_TRUE(res.should_ubatch);
                 EXPECT_EQ(2, res.max_num_tokens_padded);
               }});
  s.push_back({"zero_tokens_below_threshold",  // 0 < 2: nobody attempts
               [](int, int, dp_batch_request& q) {
                 Micro(q, 1, 2, 2, 2);
                 Tokens(q, 0);
               },
               [](const dp_batch_result& res, int, int) {
                 EXPECT_FALSE(res.should_ubatch);
                 EXPECT_EQ(0, res.max_num_tokens_padded);
               }});
  s.push_back({"one_rank_declines_microbatching",
               [](int r, int n, dp_batch_request& q) {
                 Micro(q, 1, 2, 2, 2);
                 Tokens(q, 64);
                 if (r == n - 1) q.allow_microbatching = false;
               },
               [](const dp_batch_result& res, int, int) { EXPECT_FALSE(res.should_ubatch); }});
  s.push_back({"ubatch_disabled_fields_ignored",
               [](int r, int, dp_batch_request& q) {
                 Tokens(q, 1000 + r);
                 q.allow_microbatching = true;
                 q.uniform_decode = 0;
                 q.ubatch.enabled = false;
                 q.ubatch.num_ubatches = 0;
                 q.ubatch.decode_token_threshold = -1;
                 q.ubatch.prefill_token_threshold = -1;
               },
               [](const dp_batch_result& res, int, int) { EXPECT_FALSE(res.should_ubatch); }});
  s.push_back({"uniform_unknown_without_microbatching",
               [](int r, int, dp_batch_request& q) {
                 Tokens(q, 5 + r, 16);
                 q.allow_microbatching = false;
                 q.uniform_decode = -1;
                 q.allow_dp_padding = true;
               },
               [](const dp_batch_result& res, int, int) {
                 EXPECT_TRUE(res.should_dp_pad);
                 EXPECT_EQ(16, res.num_tokens_after_padding_self);
               }});
  s.push_back({"huge_counts",
               [](int r, int n, dp_batch_request& q) {
                 Tokens(q, 1 << 30, r == n - 1 ? INT32_MAX : -1);
                 q.allow_dp_padding = true;
               },
               [](const dp_batch_result& res, int, int) {
                 EXPECT_EQ(INT32_MAX, res.max_num_tokens_padded);
                 EXPECT_EQ(INT32_MAX, res.num_tokens_after_padding_self);
               }});
  s.push_back({"wait_forever_timeout_zero",
               [](int r, int, dp_batch_request& q) {
                 Tokens(q, r);
                 q.timeout_ms = 0;
               },
               nullptr});
  Scenario larger{"larger_struct_size", [](int r, int, dp_batch_request& q) { Tokens(q, 2 * r); },
                  nullptr};
  larger.larger_struct = true;
  s.push_back(larger);
  return s;
}

// Runs `sc` on `comm` (rank dp_rank of dp_size; the request is that of world rank `as_rank` of
// `as_n`). Returns false (on every rank) when the sequence must stop.
bool RunScenario(const Scenario& sc, ncclComm_t comm, int dp_rank, int dp_size, int as_rank,
                 int as_n, cudaStream_t stream) {
  SCOPED_TRACE(std::string("scenario ") + sc.name + " at dp_size " + std::to_string(dp_size));
  std::vector<dp_batch_request> reqs;
  if (dp_size == 1) {
    reqs.resize(1, BaseRequest());
    sc.make(as_rank, as_n, reqs[0]);
  } else {
    reqs.resize(dp_size, BaseRequest());
    for (int r = 0; r < dp_size; ++r) sc.make(r, dp_size, reqs[r]);
  }
  // A caller compiled against a later, larger dp_batch_request: the tail must be ignored.
  struct Larger {
    dp_batch_request req;
    unsigned char tail[32];
  } larger;
  std::memset(&larger, 0, sizeof larger);
  larger.req = reqs[dp_rank];
  larger.req.struct_size = static_cast<uint32_t>(sizeof larger);
  const dp_batch_request* call_req = sc.larger_struct ? &larger.req : nullptr;

  const Expected exp = Oracle(reqs, dp_rank);
  EXPECT_EQ("DP_OK", Name(exp.status)) << "the oracle rejects the scenario: " << dp_last_error();
  dp_batch_result res;
  const dp_status st =
      Coordinate(comm, stream, call_req != nullptr ? call_req : &reqs[dp_rank], &res);
  const uint64_t digest = CheckResult(exp, st, res, stream, dp_size, dp_rank);
  if (st == DP_OK && dp_size >= 2 && sc.check) sc.check(res, dp_rank, dp_size);
  if (st == DP_OK && dp_size == 1) {
    EXPECT_FALSE(res.should_ubatch);
    EXPECT_FALSE(res.should_dp_pad);
    EXPECT_EQ(reqs[0].cudagraph_mode, res.synced_cudagraph_mode);
    const int32_t padded =
        reqs[0].num_tokens_padded == -1 ? reqs[0].num_tokens_unpadded : reqs[0].num_tokens_padded;
    EXPECT_EQ(padded, res.num_tokens_after_padding_self);
    EXPECT_EQ(padded, res.max_num_tokens_padded);
    EXPECT_EQ(reqs[0].num_tokens_unpadded, res.min_num_tokens_unpadded);
  }
  const StepReport mine{static_cast<int32_t>(st), g.suspect ? 1 : 0, digest};
  bool go_on = true;
  for (const StepReport& other : AllGather(mine)) {
    if (other.suspect != 0 || other.status != DP_OK) go_on = false;
    if (dp_size == g.nranks) {
      EXPECT_EQ(digest, other.digest) << "ranks disagree";
    }
  }
  return go_on;
}

// ---------------------------------------------------------------------------------------------
// The fixture: skip without a GPU, (re)create the communicator under test, agree on the verdict.
// ---------------------------------------------------------------------------------------------
class Gpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!g.skip_reason.empty()) GTEST_SKIP() << g.skip_reason;
    g.suspect = false;
    EnsureDpComm();
  }

  void TearDown() override {
    if (!g.skip_reason.empty()) return;
    struct Verdict {
      int32_t failed;
      int32_t suspect;
    };
    const Verdict mine{HasFailure() ? 1 : 0, g.suspect ? 1 : 0};
    const std::vector<Verdict> all = AllGather(mine);
    std::string failed_ranks;
    bool any_suspect = false;
    for (int r = 0; r < g.nranks; ++r) {
      if (all[r].failed != 0) failed_ranks += " " + std::to_string(r);
      any_suspect = any_suspect || all[r].suspect != 0;
    }
    if (!failed_ranks.empty() && !HasFailure()) {
      ADD_FAILURE() << "this test failed on rank(s)" << failed_ranks << " (see their output)";
    }
    if (any_suspect) AbortDpComm("a rank saw a status that may leave it out of step");
  }

  static void SkipUnlessRanks(int n) {
    if (g.nranks < n) {
      GTEST_SKIP() << "needs >= " << n << " ranks (this run has " << g.nranks << ")";
    }
  }
};

// ---------------------------------------------------------------------------------------------
// The tests (this order on every rank; the timeout test last, since it aborts `dp`).
// ---------------------------------------------------------------------------------------------
TEST_F(Gpu, RandomStepsMatchHostDecision) {
  std::printf("random steps: seed %" PRIu64 ", %d steps, %d ranks\n", g.seed, g.steps, g.nranks);
  RecordProperty("seed", std::to_string(g.seed));
  RecordProperty("steps", g.steps);
  int ran = 0, inconsistent = 0, ubatched = 0, padded = 0;
  for (int step = 0; step < g.steps; ++step) {
    SCOPED_TRACE("seed " + std::to_string(g.seed) + " step " + std::to_string(step));
    const StepShape shape = ShapeOf(g.seed, step, g.nranks);
    std::vector<dp_batch_request> reqs;
    for (int r = 0; r < g.nranks; ++r) reqs.push_back(RequestOf(g.seed, step, r, shape));
    const Expected exp = Oracle(reqs, g.rank);
    if (exp.status == DP_ERR_INCONSISTENT_RANKS) ++inconsistent;
    if (exp.status == DP_OK && exp.result.should_ubatch) ++ubatched;
    if (exp.status == DP_OK && exp.result.should_dp_pad) ++padded;
    ++ran;
    if (!RunStep(g.dp, g.rank, g.nranks, reqs, g.stream)) {
      ADD_FAILURE() << "stopping at step " << step << ": a rank got an unexpected status";
      break;
    }
    if (HasFailure()) break;  // the first mismatch is the useful one
  }
  std::printf("random steps: %d run (%d inconsistent-ranks, %d microbatched, %d padded)\n", ran,
              inconsistent, ubatched, padded);
}

TEST_F(Gpu, EdgeCasesAtFullRankCount) {
  for (const Scenario& sc : Scenarios()) {
    if (!RunScenario(sc, g.dp, g.rank, g.nranks, g.rank, g.nranks, g.stream)) {
      ADD_FAILURE() << "stopping after scenario " << sc.name;
      break;
    }
  }
}

TEST_F(Gpu, DpSizeOneDoesNoGpuWork) {
  ncclComm_t solo = nullptr;
  NCCL_CHECK(ncclCommSplit(g.boot, g.rank, 0, &solo, nullptr));  // one rank per color
  int count = 0;
  NCCL_CHECK(ncclCommCount(solo, &count));
  if (count != 1) dpg::Die("ncclCommSplit by rank gave " + std::to_string(count) + " ranks");
  for (const Scenario& sc : Scenarios()) {
    if (!RunScenario(sc, solo, 0, 1, g.rank, g.nranks, g.stream)) {
      ADD_FAILURE() << "stopping after scenario " << sc.name;
      break;
    }
  }
  // With a kernel holding the stream, the call must return at once: no work on the stream,
  // no wait for it (it would time out, or hang, if it waited).
  unsigned* flag = nullptr;
  CUDA_CHECK(
      cudaHostAlloc(reinterpret_cast<void**>(&flag), 2 * sizeof(unsigned), cudaHostAllocMapped));
  flag[0] = 0;
  flag[1] = 0;
  unsigned* flag_dev = nullptr;
  CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&flag_dev), flag, 0));
  g.kernels.SpinUntil(g.stream, flag_dev, 20ull * 1000 * 1000 * 1000, flag_dev + 1);
  dp_batch_request q = BaseRequest();
  Tokens(q, 42, 48);
  q.timeout_ms = 2000;
  dp_batch_result res;
  const auto t0 = std::chrono::steady_clock::now();
  const dp_status st = Coordinate(solo, g.stream, &q, &res);
  const double ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const cudaError_t busy = cudaStreamQuery(g.stream);
  reinterpret_cast<volatile unsigned*>(flag)[0] = 1;
  dpg::WaitStream(g.stream, nullptr, "the spinning kernel", g.wait_s);
  EXPECT_STATUS(DP_OK, st);
  EXPECT_EQ(cudaErrorNotReady, busy) << "the stream was idle right after the call";
  EXPECT_LT(ms, 1000.0) << "dp_size 1 call waited for the stream";
  EXPECT_EQ(0u, flag[1]) << "the spinning kernel timed out";
  if (st == DP_OK) {
    EXPECT_FALSE(res.has_num_tokens_after_padding);
    EXPECT_EQ(nullptr, res.num_tokens_after_padding_device);
    EXPECT_EQ(48, res.num_tokens_after_padding_self);
  }
  CUDA_CHECK(cudaFreeHost(flag));
  EXPECT_STATUS(DP_OK, dp_release(solo));
  NCCL_CHECK(ncclCommDestroy(solo));
}

TEST_F(Gpu, DeviceArrayIsStreamOrderedForAKernelAfterTheCall) {
  // Each step's device array is consumed by a (deliberately slow) kernel enqueued right after
  // the call on the same stream, with no host synchronization until the end: the next call's
  // write must not overtake it.
  SkipUnlessRanks(2);  // a one-rank communicator has no device array
  const int kSteps = 24;
  const int n = g.nranks;
  ASSERT_LE(kSteps * n, kScratchInts);
  CUDA_CHECK(cudaMemsetAsync(g.scratch_dev, 0xFF, sizeof(int32_t) * kSteps * n, g.stream));
  std::vector<std::vector<int32_t>> expected;
  bool all_ok = true;
  for (int step = 0; step < kSteps && all_ok; ++step) {
    std::vector<dp_batch_request> reqs(n, BaseRequest());
    for (int r = 0; r < n; ++r) {
      Tokens(reqs[r], 100 * step + 3 * r + 1, -1);
      reqs[r].allow_dp_padding = step % 3 == 0;
    }
    const Expected exp = Oracle(reqs, g.rank);
    dp_batch_result res;
    const dp_status st = Coordinate(g.dp, g.stream, &reqs[g.rank], &res);
    EXPECT_STATUS(DP_OK, st);
    const bool have_array = st == DP_OK && res.num_tokens_after_padding_device != nullptr;
    if (st == DP_OK) {
      EXPECT_NE(nullptr, res.num_tokens_after_padding_device);
    }
    if (have_array) {
      g.kernels.Consume(g.stream, res.num_tokens_after_padding_device, n, g.scratch_dev + step * n,
                        3, 1, 200 * 1000 /* 200 us */);
      expected.push_back(exp.array);
    }
    all_ok = AllTrue(st == DP_OK && have_array);
  }
  std::vector<int32_t> got(static_cast<size_t>(kSteps) * n);
  CUDA_CHECK(cudaMemcpyAsync(got.data(), g.scratch_dev, sizeof(int32_t) * got.size(),
                             cudaMemcpyDeviceToHost, g.stream));
  dpg::WaitStream(g.stream, nullptr, "the consumer kernels", g.wait_s);
  for (size_t step = 0; step < expected.size(); ++step) {
    for (int r = 0; r < n; ++r) {
      EXPECT_EQ(expected[step][r] * 3 + 1, got[step * n + r])
          << "step " << step << " rank " << r << ": the kernel after the call saw another value";
    }
  }
}

TEST_F(Gpu, StreamKinds) {
  cudaStream_t blocking = nullptr;
  CUDA_CHECK(cudaStreamCreate(&blocking));
  const struct {
    const char* name;
    cudaStream_t stream;
  } kinds[] = {{"NULL (legacy default stream)", nullptr},
               {"cudaStreamLegacy", cudaStreamLegacy},
               {"cudaStreamPerThread", cudaStreamPerThread},
               {"user stream (blocking)", blocking},
               {"user stream (non-blocking)", g.stream}};
  int index = 0;
  for (const auto& kind : kinds) {
    SCOPED_TRACE(kind.name);
    std::vector<dp_batch_request> reqs(g.nranks, BaseRequest());
    for (int r = 0; r < g.nranks; ++r) {
      Tokens(reqs[r], 17 * index + r, -1);
      reqs[r].allow_dp_padding = index % 2 == 1;
      reqs[r].cudagraph_mode = (index + r) % 3;
    }
    const Expected exp = Oracle(reqs, g.rank);
    dp_batch_result res;
    const dp_status st = Coordinate(g.dp, kind.stream, &reqs[g.rank], &res);
    CheckResult(exp, st, res, kind.stream, g.nranks, g.rank);
    // And a kernel on the same stream consumes the device array.
    if (st == DP_OK && res.num_tokens_after_padding_device != nullptr) {
      g.kernels.Consume(kind.stream, res.num_tokens_after_padding_device, g.nranks, g.scratch_dev,
                        2, 5, 0);
      const std::vector<int32_t> got = ReadDevice(g.scratch_dev, g.nranks, kind.stream);
      for (int r = 0; r < g.nranks; ++r) EXPECT_EQ(exp.array[r] * 2 + 5, got[r]) << "rank " << r;
    }
    ++index;
    if (!AllTrue(st == DP_OK && !g.suspect)) {
      ADD_FAILURE() << "stopping: a rank failed on " << kind.name;
      break;
    }
  }
  CUDA_CHECK(cudaStreamSynchronize(blocking));
  CUDA_CHECK(cudaStreamDestroy(blocking));
}

TEST_F(Gpu, StreamOfAnotherDeviceIsInvalid) {
  if (g.ngpus < 2) {
    GTEST_SKIP() << "needs >= 2 GPUs for a stream on another device than the communicator's "
                    "(this machine has "
                 << g.ngpus << ")";
  }
  const int other = (g.device + 1) % g.ngpus;
  cudaStream_t foreign = nullptr;
  CUDA_CHECK(cudaSetDevice(other));
  CUDA_CHECK(cudaStreamCreateWithFlags(&foreign, cudaStreamNonBlocking));
  CUDA_CHECK(cudaSetDevice(g.device));
  dp_batch_request q = BaseRequest();
  Tokens(q, 8);
  q.timeout_ms = 5000;  // a rank that wrongly enters the collective fails instead of hanging
  dp_batch_result res;
  const dp_status st = Coordinate(g.dp, foreign, &q, &res);
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, st);
  EXPECT_TRUE(IsPoisoned(res)) << "result written on failure";
  std::printf("stream on device %d, communicator on device %d: %s: %s\n", other, g.device,
              dp_status_string(st), dp_last_error());
  EXPECT_TRUE(AllTrue(st == DP_ERR_INVALID_ARGUMENT)) << "not every rank refused the stream";
  CUDA_CHECK(cudaStreamDestroy(foreign));
}

TEST_F(Gpu, CapturingStreamIsRefusedAndCaptureEndsCleanly) {
  cudaStream_t s = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const struct {
    const char* name;
    cudaStreamCaptureMode mode;
  } modes[] = {{"global", cudaStreamCaptureModeGlobal},
               {"thread-local", cudaStreamCaptureModeThreadLocal},
               {"relaxed", cudaStreamCaptureModeRelaxed}};
  for (const auto& m : modes) {
    SCOPED_TRACE(std::string("capture mode ") + m.name);
    dp_batch_request q = BaseRequest();
    Tokens(q, 64);
    q.timeout_ms = 5000;
    CUDA_CHECK(cudaStreamBeginCapture(s, m.mode));
    dp_batch_result res;
    const dp_status st = Coordinate(g.dp, s, &q, &res);
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(s, &graph);
    EXPECT_EQ(cudaSuccess, ended) << "ending the capture: " << cudaGetErrorString(ended)
                                  << " (did dp_coordinate_batch invalidate it?)";
    if (graph != nullptr) CUDA_CHECK(cudaGraphDestroy(graph));
    (void)cudaGetLastError();
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusActive;
    CUDA_CHECK(cudaStreamIsCapturing(s, &status));
    EXPECT_EQ(cudaStreamCaptureStatusNone, status);
    EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, st);
    EXPECT_TRUE(IsPoisoned(res)) << "result written on failure";
    if (!AllTrue(st == DP_ERR_INVALID_ARGUMENT)) {
      ADD_FAILURE() << "not every rank refused the capturing stream";
      g.suspect = true;  // a rank may have entered the collective
      break;
    }
  }
  // The same stream, no longer capturing, works.
  if (!g.suspect) {
    std::vector<dp_batch_request> reqs(g.nranks, BaseRequest());
    for (int r = 0; r < g.nranks; ++r) Tokens(reqs[r], 5 + r);
    RunStep(g.dp, g.rank, g.nranks, reqs, s);
  }
  CUDA_CHECK(cudaStreamDestroy(s));
}

TEST_F(Gpu, InconsistentPadFlagsFailEveryRank) {
  SkipUnlessRanks(2);
  for (int variant = 0; variant < 2; ++variant) {
    SCOPED_TRACE(variant == 0 ? "only rank 0 allows DP padding" : "all but rank 0 allow it");
    std::vector<dp_batch_request> reqs(g.nranks, BaseRequest());
    for (int r = 0; r < g.nranks; ++r) {
      Tokens(reqs[r], 10 + r);
      reqs[r].allow_dp_padding = (r == 0) == (variant == 0);
    }
    const Expected exp = Oracle(reqs, g.rank);
    EXPECT_STATUS(DP_ERR_INCONSISTENT_RANKS, exp.status);
    dp_batch_result res;
    const dp_status st = Coordinate(g.dp, g.stream, &reqs[g.rank], &res);
    EXPECT_STATUS(DP_ERR_INCONSISTENT_RANKS, st);
    EXPECT_TRUE(IsPoisoned(res)) << "result written on failure";
    EXPECT_STRNE("", dp_last_error());
    const std::vector<int32_t> statuses = AllGather<int32_t>(st);
    for (int r = 0; r < g.nranks; ++r) {
      EXPECT_EQ("DP_ERR_INCONSISTENT_RANKS", Name(static_cast<dp_status>(statuses[r])))
          << "rank " << r;
    }
    if (g.suspect || !AllTrue(st == DP_ERR_INCONSISTENT_RANKS)) return;
    // The same flags under WHEN_CUDAGRAPH are fine (the policy ignores them).
    for (auto& q : reqs) {
      q.pad_policy = DP_PAD_POLICY_WHEN_CUDAGRAPH;
      q.cudagraph_mode = DP_CUDAGRAPH_PIECEWISE;
    }
    if (!RunStep(g.dp, g.rank, g.nranks, reqs, g.stream)) return;
  }
}

// Every rank's request invalid (a shared configuration error): every rank gets its own field
// named. Field values join the exchange as the invalid-request marker; what cannot be exchanged
// (a negative timeout_ms, a bad struct_size, NULLs) fails before any communication.
TEST_F(Gpu, InvalidRequestOnEveryRankFailsEveryRank) {
  struct Case {
    const char* name;
    const char* mentions;
    std::function<void(dp_batch_request&)> mutate;
  };
  const Case cases[] = {
      {"unpadded -1", "num_tokens_unpadded", [](dp_batch_request& q) { Tokens(q, -1); }},
      {"padded below unpadded", "num_tokens_padded", [](dp_batch_request& q) { Tokens(q, 10, 5); }},
      {"padded -2", "num_tokens_padded", [](dp_batch_request& q) { Tokens(q, 0, -2); }},
      {"uniform_decode -1 with microbatching", "uniform_decode",
       [](dp_batch_request& q) {
         q.allow_microbatching = true;
         q.uniform_decode = -1;
       }},
      {"uniform_decode 2", "uniform_decode", [](dp_batch_request& q) { q.uniform_decode = 2; }},
      {"cudagraph_mode 3", "cudagraph_mode", [](dp_batch_request& q) { q.cudagraph_mode = 3; }},
      {"cudagraph_mode -1", "cudagraph_mode", [](dp_batch_request& q) { q.cudagraph_mode = -1; }},
      {"pad_policy 2", "pad_policy", [](dp_batch_request& q) { q.pad_policy = 2; }},
      {"num_ubatches 1", "num_ubatches", [](dp_batch_request& q) { Micro(q, 1, 1, 32, 512); }},
      {"decode threshold -1", "decode_token_threshold",
       [](dp_batch_request& q) { Micro(q, 1, 2, -1, 512); }},
      {"prefill threshold -1", "prefill_token_threshold",
       [](dp_batch_request& q) { Micro(q, 0, 2, 32, -1); }},
      {"timeout_ms -1", "timeout_ms", [](dp_batch_request& q) { q.timeout_ms = -1; }},
      {"struct_size 0", "struct_size", [](dp_batch_request& q) { q.struct_size = 0; }},
      {"struct_size 4", "struct_size", [](dp_batch_request& q) { q.struct_size = 4; }},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    dp_batch_request q = BaseRequest();
    Tokens(q, 16);
    c.mutate(q);
    if (q.timeout_ms > 0) q.timeout_ms = 5000;  // a rank left waiting fails with TIMEOUT
    dp_batch_result res;
    const dp_status st = Coordinate(g.dp, g.stream, &q, &res);
    EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, st);
    EXPECT_TRUE(IsPoisoned(res)) << "result written on failure";
    const std::string message = dp_last_error();
    EXPECT_NE(std::string::npos, message.find(c.mentions))
        << "dp_last_error() = \"" << message << "\" does not name " << c.mentions;
    if (!AllTrue(st == DP_ERR_INVALID_ARGUMENT && !g.suspect)) {
      ADD_FAILURE() << "stopping: a rank did not refuse " << c.name;
      return;
    }
  }
  // NULL arguments.
  dp_batch_request q = BaseRequest();
  dp_batch_result res = Poisoned<dp_batch_result>();
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, dp_coordinate_batch(g.dp, g.stream, nullptr, &res));
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, dp_coordinate_batch(g.dp, g.stream, &q, nullptr));
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, dp_coordinate_batch(nullptr, g.stream, &q, &res));
  EXPECT_TRUE(IsPoisoned(res));
  if (!AllTrue(!HasFailure())) return;
  // Every rank joined the same exchanges (or none): the next valid call lines up everywhere.
  std::vector<dp_batch_request> reqs(g.nranks, BaseRequest());
  for (int r = 0; r < g.nranks; ++r) Tokens(reqs[r], 30 + r);
  RunStep(g.dp, g.rank, g.nranks, reqs, g.stream);
}

TEST_F(Gpu, RepeatedCallsKeepPointersAndDoNotAllocate) {
  const long repeat = g.repeat;
  std::printf("repeated calls: %ld per rank (%s)\n", repeat,
              g.shared ? "ranks share GPUs: NCCL over loopback sockets" : "one GPU per rank");
  RecordProperty("repeat", std::to_string(repeat));
  const int n = g.nranks;
  auto request = [&](long i, int r) {
    dp_batch_request q = BaseRequest();
    Micro(q, 1, 2, 32, 512);
    Tokens(q, static_cast<int32_t>((i * 7 + r * 13) % 4096));
    q.allow_dp_padding = true;
    q.cudagraph_mode = DP_CUDAGRAPH_FULL;
    return q;
  };
  std::vector<dp_batch_request> reqs(n);
  // Warm-up: the first call per communicator may allocate; so may the suite's own barrier.
  for (int r = 0; r < n; ++r) reqs[r] = request(repeat, r);
  if (!RunStep(g.dp, g.rank, n, reqs, g.stream)) {
    ADD_FAILURE() << "warm-up call failed";
    return;
  }
  dp_batch_result first;
  const dp_status st0 = Coordinate(g.dp, g.stream, &reqs[g.rank], &first);
  ASSERT_TRUE(AllTrue(st0 == DP_OK)) << "second warm-up call failed";
  Barrier();
  Barrier();
  size_t free_before = 0, free_after = 0, total = 0;
  CUDA_CHECK(cudaMemGetInfo(&free_before, &total));
  Barrier();
  long done = 0;
  bool ok = true;
  const auto t0 = std::chrono::steady_clock::now();
  for (long i = 0; i < repeat && ok; ++i) {
    for (int r = 0; r < n; ++r) reqs[r] = request(i, r);
    const Expected exp = Oracle(reqs, g.rank);
    dp_batch_result res;
    const dp_status st = Coordinate(g.dp, g.stream, &reqs[g.rank], &res);
    if (st != DP_OK) {
      ADD_FAILURE() << "call " << i << ": " << Name(st) << ": " << dp_last_error();
      ok = false;
      break;
    }
    ++done;
    if (res.num_tokens_after_padding != first.num_tokens_after_padding ||
        res.num_tokens_after_padding_device != first.num_tokens_after_padding_device) {
      ADD_FAILURE() << "call " << i << ": the result arrays moved (host "
                    << static_cast<const void*>(first.num_tokens_after_padding) << " -> "
                    << static_cast<const void*>(res.num_tokens_after_padding) << ", device "
                    << static_cast<const void*>(first.num_tokens_after_padding_device) << " -> "
                    << static_cast<const void*>(res.num_tokens_after_padding_device) << ")";
      ok = false;
    }
    const bool deep = i % 1000 == 0 || i == repeat - 1;  // the device read-back syncs: not always
    if (deep) {
      SCOPED_TRACE("call " + std::to_string(i));
      CheckResult(exp, st, res, g.stream, n, g.rank);
    } else if (res.should_ubatch != exp.result.should_ubatch ||
               res.should_dp_pad != exp.result.should_dp_pad ||
               res.num_tokens_after_padding_self != exp.result.num_tokens_after_padding_self ||
               res.max_num_tokens_padded != exp.result.max_num_tokens_padded ||
               res.min_num_tokens_unpadded != exp.result.min_num_tokens_unpadded ||
               res.synced_cudagraph_mode != exp.result.synced_cudagraph_mode ||
               (n > 1 && res.num_tokens_after_padding != nullptr &&
                !std::equal(exp.array.begin(), exp.array.end(), res.num_tokens_after_padding))) {
      SCOPED_TRACE("call " + std::to_string(i));
      CheckResult(exp, st, res, g.stream, n, g.rank);  // reports the difference
    }
    if (HasFailure()) ok = false;
  }
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::printf("repeated calls: %ld done in %.2f s (%.1f us per call)\n", done, seconds,
              done > 0 ? 1e6 * seconds / done : 0.0);
  // A rank that stopped early leaves its peers in their next call, which times out
  // (guard timeout) and stops them too; then all agree here.
  const bool all_ok = AllTrue(ok);
  Barrier();
  CUDA_CHECK(cudaMemGetInfo(&free_after, &total));
  Barrier();
  if (all_ok) {
    EXPECT_EQ(free_before, free_after)
        << "device memory changed across " << repeat << " calls (free bytes before/after)";
  }
}

TEST_F(Gpu, ReleaseThenCallAgain) {
  std::vector<dp_batch_request> reqs(g.nranks, BaseRequest());
  for (int r = 0; r < g.nranks; ++r) {
    Tokens(reqs[r], 11 * (r + 1));
    reqs[r].allow_dp_padding = true;
  }
  if (!RunStep(g.dp, g.rank, g.nranks, reqs, g.stream)) return;
  EXPECT_STATUS(DP_OK, dp_release(g.dp));
  EXPECT_STATUS(DP_OK, dp_release(g.dp));  // a second release (now unknown) is harmless
  if (!AllTrue(!HasFailure())) return;
  for (int r = 0; r < g.nranks; ++r) reqs[r].allow_dp_padding = false;
  if (!RunStep(g.dp, g.rank, g.nranks, reqs, g.stream)) return;
  // A communicator dpcoord never saw (a made-up pointer value: it must not be dereferenced).
  ncclComm_t never_seen = reinterpret_cast<ncclComm_t>(static_cast<uintptr_t>(0x7e570000ull));
  EXPECT_STATUS(DP_OK, dp_release(never_seen));
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, dp_release(nullptr));
  if (!AllTrue(!HasFailure())) return;
  RunStep(g.dp, g.rank, g.nranks, reqs, g.stream);
}

// ---------------------------------------------------------------------------------------------
// The explicit coordinator (dp_coordinator_*): split-phase, states, faults on fresh
// communicators (no warm-up call), step ids, reuse.
// ---------------------------------------------------------------------------------------------

// A fresh communicator (ncclCommSplit of boot, every rank): NCCL connects lazily inside its
// first collective.
ncclComm_t FreshComm() {
  ncclComm_t c = nullptr;
  NCCL_CHECK(ncclCommSplit(g.boot, 0, g.rank, &c, nullptr));
  return c;
}

dp_coordinator* CreateCoordinator(ncclComm_t comm) {
  dp_coordinator* c = nullptr;
  const dp_status st = dp_coordinator_create(comm, &c);
  if (st != DP_OK) dpg::Die(std::string("dp_coordinator_create: ") + dp_last_error());
  return c;
}

// Under compute-sanitizer (DPCOORD_GPU_SANITIZER=1) wall-clock bounds are not asserted.
bool Sanitized() { return EnvLong("DPCOORD_GPU_SANITIZER", 0) != 0; }

double MsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// A host-mapped flag a spinning kernel waits on (holds a stream until released).
struct StreamHold {
  unsigned* flag = nullptr;
  unsigned* flag_dev = nullptr;
  void Hold(cudaStream_t stream) {
    CUDA_CHECK(cudaHostAlloc(reinterpret_cast<void**>(&flag), 2 * sizeof(unsigned),
                             cudaHostAllocMapped));
    flag[0] = flag[1] = 0;
    CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&flag_dev), flag, 0));
    g.kernels.SpinUntil(stream, flag_dev, 20ull * 1000 * 1000 * 1000, flag_dev + 1);
  }
  void Release(cudaStream_t stream) {
    reinterpret_cast<volatile unsigned*>(flag)[0] = 1;
    dpg::WaitStream(stream, nullptr, "the spinning kernel", g.wait_s);
    EXPECT_EQ(0u, flag[1]) << "the spinning kernel timed out";
    CUDA_CHECK(cudaFreeHost(flag));
  }
};

// begin; `between` (stream and host work); poll; end; checked against the oracle and agreed
// across ranks (as RunStep). Returns false on every rank when the sequence must stop.
bool RunCoordinatorStep(dp_coordinator* c, const std::vector<dp_batch_request>& reqs,
                        cudaStream_t stream, const std::function<void()>& between) {
  const Expected exp = Oracle(reqs, g.rank);
  dp_batch_result res = Poisoned<dp_batch_result>();
  dp_status st = dp_coordinator_begin(c, stream, &reqs[g.rank]);
  if (st == DP_OK) {
    if (between) between();
    bool done = false;
    EXPECT_STATUS(DP_OK, dp_coordinator_poll(c, &done));
    st = dp_coordinator_end(c, &res);
  }
  if (st != DP_OK && st != DP_ERR_INVALID_ARGUMENT && st != DP_ERR_INCONSISTENT_RANKS) {
    std::printf("coordinator step: %s: %s\n", dp_status_string(st), dp_last_error());
  }
  const uint64_t digest = CheckResult(exp, st, res, stream, g.nranks, g.rank);
  const StepReport mine{static_cast<int32_t>(st), 0, digest};
  bool go_on = true;
  const std::vector<StepReport> all = AllGather(mine);
  for (int r = 0; r < g.nranks; ++r) {
    if (all[r].status != exp.status) go_on = false;
    EXPECT_EQ(digest, all[r].digest) << "rank " << r << " reached a different decision";
  }
  return go_on;
}

TEST_F(Gpu, CoordinatorSplitPhaseWithHostAndStreamWorkBetween) {
  dp_coordinator* c = CreateCoordinator(g.dp);
  const int n = g.nranks;
  int ran = 0;
  for (int step = 0; step < 64; ++step) {
    SCOPED_TRACE("step " + std::to_string(step));
    const StepShape shape = ShapeOf(g.seed + 7, step, n);
    std::vector<dp_batch_request> reqs;
    for (int r = 0; r < n; ++r) reqs.push_back(RequestOf(g.seed + 7, step, r, shape));
    // Between begin and end: a slow kernel on the same stream (the model's next layer) and
    // host work (the scheduler's), neither touching dpcoord's arrays.
    auto between = [&] {
      g.kernels.Consume(g.stream, g.scratch_dev, 64, g.scratch_dev + 1024, 1, step,
                        50 * 1000 /* 50 us */);
      const auto t0 = std::chrono::steady_clock::now();
      while (MsSince(t0) < 0.2) {
      }
    };
    if (!RunCoordinatorStep(c, reqs, g.stream, between)) {
      ADD_FAILURE() << "stopping at step " << step;
      break;
    }
    ++ran;
    if (HasFailure()) break;
  }
  std::printf("split-phase steps: %d\n", ran);
  EXPECT_STATUS(DP_OK, dp_coordinator_destroy(c));
}

TEST_F(Gpu, CoordinatorPollNeverBlocksAndStatesAreChecked) {
  dp_coordinator* c = CreateCoordinator(g.dp);
  dp_batch_result res = Poisoned<dp_batch_result>();
  bool done = true;
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, dp_coordinator_end(c, &res));  // end without begin
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, dp_coordinator_poll(c, &done));
  EXPECT_TRUE(IsPoisoned(res));
  std::vector<dp_batch_request> reqs(g.nranks, BaseRequest());
  for (int r = 0; r < g.nranks; ++r) {
    Tokens(reqs[r], 17 + r);
    reqs[r].allow_dp_padding = true;
  }
  const Expected exp = Oracle(reqs, g.rank);
  // The stream is held by a spinning kernel: begin must return at once, poll must say "not
  // done" without waiting, and a second begin is BUSY.
  StreamHold hold;
  hold.Hold(g.stream);
  const auto t0 = std::chrono::steady_clock::now();
  const dp_status began = dp_coordinator_begin(c, g.stream, &reqs[g.rank]);
  const double begin_ms = MsSince(t0);
  EXPECT_STATUS(DP_OK, began);
  EXPECT_STATUS(DP_ERR_BUSY, dp_coordinator_begin(c, g.stream, &reqs[g.rank]));
  done = true;
  EXPECT_STATUS(DP_OK, dp_coordinator_poll(c, &done));
  EXPECT_FALSE(done) << "poll said done while the stream is still held";
  const cudaError_t busy = cudaStreamQuery(g.stream);
  EXPECT_EQ(cudaErrorNotReady, busy) << "begin waited for the stream";
  std::printf("begin behind a held stream returned after %.2f ms\n", begin_ms);
  hold.Release(g.stream);
  const auto t1 = std::chrono::steady_clock::now();
  done = false;
  while (!done && MsSince(t1) < 30000) {
    if (dp_coordinator_poll(c, &done) != DP_OK) break;
  }
  EXPECT_TRUE(done);
  const dp_status st = dp_coordinator_end(c, &res);
  const uint64_t digest = CheckResult(exp, st, res, g.stream, g.nranks, g.rank);
  for (const StepReport& other : AllGather(StepReport{static_cast<int32_t>(st), 0, digest})) {
    EXPECT_EQ(digest, other.digest);
  }
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, dp_coordinator_end(c, &res));  // already ended
  EXPECT_STATUS(DP_OK, dp_coordinator_destroy(c));
}

TEST_F(Gpu, CoordinatorDifferentStepIdsFailEveryRankNamingThem) {
  SkipUnlessRanks(2);
  dp_coordinator* c = CreateCoordinator(g.dp);
  dp_batch_request q = BaseRequest();
  Tokens(q, 5 + g.rank);
  q.step_id = g.rank == g.nranks - 1 ? 101 : 100;
  dp_batch_result res = Poisoned<dp_batch_result>();
  dp_status st = dp_coordinator_begin(c, g.stream, &q);
  if (st == DP_OK) st = dp_coordinator_end(c, &res);
  const std::string msg = dp_last_error();
  EXPECT_STATUS(DP_ERR_INCONSISTENT_RANKS, st);
  EXPECT_NE(std::string::npos, msg.find("step_id 100")) << msg;
  EXPECT_NE(std::string::npos, msg.find("step_id 101")) << msg;
  EXPECT_TRUE(IsPoisoned(res));
  ASSERT_TRUE(AllTrue(st == DP_ERR_INCONSISTENT_RANKS));
  // The exchange itself completed on every rank: the coordinator stays usable.
  q.step_id = 102;
  st = dp_coordinator_begin(c, g.stream, &q);
  if (st == DP_OK) st = dp_coordinator_end(c, &res);
  EXPECT_STATUS(DP_OK, st);
  if (st == DP_OK) {
    EXPECT_EQ(102, res.step_id);
  }
  AllTrue(st == DP_OK);
  EXPECT_STATUS(DP_OK, dp_coordinator_destroy(c));
}

TEST_F(Gpu, CoordinatorRankThatSkipsOneCallIsCaughtByStepIds) {
  SkipUnlessRanks(2);
  dp_coordinator* c = CreateCoordinator(g.dp);
  const int skipper = g.nranks - 1;
  std::vector<dp_status> got;
  // Steps 1..6; the skipper misses step 3 (so calls 4 while the others call 3), then the others
  // skip their step 4 to catch up (what a caller's recovery does).
  for (int64_t step = 1; step <= 6; ++step) {
    if (g.rank == skipper && step == 3) continue;
    if (g.rank != skipper && step == 4) continue;
    dp_batch_request q = BaseRequest();
    Tokens(q, 40 + g.rank);
    q.step_id = step;
    dp_batch_result res = Poisoned<dp_batch_result>();
    dp_status st = dp_coordinator_begin(c, g.stream, &q);
    if (st == DP_OK) st = dp_coordinator_end(c, &res);
    if (st != DP_OK) std::printf("step %lld: %s: %s\n", static_cast<long long>(step),
                                 dp_status_string(st), dp_last_error());
    got.push_back(st);
  }
  const std::vector<dp_status> want = {DP_OK, DP_OK, DP_ERR_INCONSISTENT_RANKS, DP_OK, DP_OK};
  ASSERT_EQ(want.size(), got.size());
  for (size_t i = 0; i < want.size(); ++i) EXPECT_STATUS(want[i], got[i]);
  AllTrue(!HasFailure());
  EXPECT_STATUS(DP_OK, dp_coordinator_destroy(c));
}

TEST_F(Gpu, CoordinatorDestroyWhileWorkIsPending) {
  std::vector<dp_batch_request> reqs(g.nranks, BaseRequest());
  for (int r = 0; r < g.nranks; ++r) Tokens(reqs[r], 3 + r);
  for (int round = 0; round < 3; ++round) {
    dp_coordinator* c = CreateCoordinator(g.dp);
    StreamHold hold;
    hold.Hold(g.stream);
    EXPECT_STATUS(DP_OK, dp_coordinator_begin(c, g.stream, &reqs[g.rank]));
    const auto t0 = std::chrono::steady_clock::now();
    EXPECT_STATUS(DP_OK, dp_coordinator_destroy(c));  // the exchange is still queued
    if (!Sanitized()) {
      EXPECT_LT(MsSince(t0), 1000.0) << "destroy waited for the pending work";
    }
    hold.Release(g.stream);  // the exchange and its kernel now run, into retired memory
  }
  // A new coordinator after those works (every rank's sequence starts afresh together).
  dp_coordinator* c = CreateCoordinator(g.dp);
  EXPECT_TRUE(RunCoordinatorStep(c, reqs, g.stream, nullptr));
  EXPECT_STATUS(DP_OK, dp_coordinator_destroy(c));
}

TEST_F(Gpu, CoordinatorReuseAcrossManySteps) {
  // 10 000 steps (also when ranks share a GPU over sockets: about 25 s); the sanitizers' runs
  // keep their small DPCOORD_GPU_REPEAT.
  const long repeat = Sanitized() ? g.repeat : std::max(g.repeat, 10000L);
  const int n = g.nranks;
  dp_coordinator* c = CreateCoordinator(g.dp);
  long done = 0;
  bool ok = true;
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<dp_batch_request> reqs(n);
  for (long i = 0; i < repeat && ok; ++i) {
    for (int r = 0; r < n; ++r) {
      dp_batch_request q = BaseRequest();
      Micro(q, 1, 2, 32, 512);
      Tokens(q, static_cast<int32_t>((i * 7 + r * 13) % 4096));
      q.allow_dp_padding = i % 5 != 0;
      q.cudagraph_mode = static_cast<int32_t>((i + r) % 3);
      q.step_id = i + 1;
      reqs[r] = q;
    }
    const Expected exp = Oracle(reqs, g.rank);  // dp_decide_batch on every rank's record
    dp_batch_result res = Poisoned<dp_batch_result>();
    dp_status st = dp_coordinator_begin(c, g.stream, &reqs[g.rank]);
    if (st == DP_OK) st = dp_coordinator_end(c, &res);
    if (st != DP_OK) {
      ADD_FAILURE() << "step " << i << ": " << Name(st) << ": " << dp_last_error();
      ok = false;
      break;
    }
    ++done;
    const bool same = res.should_ubatch == exp.result.should_ubatch &&
                      res.should_dp_pad == exp.result.should_dp_pad &&
                      res.num_tokens_after_padding_self == exp.result.num_tokens_after_padding_self &&
                      res.max_num_tokens_padded == exp.result.max_num_tokens_padded &&
                      res.min_num_tokens_unpadded == exp.result.min_num_tokens_unpadded &&
                      res.synced_cudagraph_mode == exp.result.synced_cudagraph_mode &&
                      res.step_id == i + 1 &&
                      (n == 1 || std::equal(exp.array.begin(), exp.array.end(),
                                            res.num_tokens_after_padding));
    if (!same || i % 1000 == 0 || i == repeat - 1) {
      SCOPED_TRACE("step " + std::to_string(i));
      EXPECT_EQ(i + 1, res.step_id);
      CheckResult(exp, st, res, g.stream, n, g.rank);  // the device array read back too
    }
    if (HasFailure()) ok = false;
  }
  std::printf("coordinator reuse: %ld steps in %.2f s, each checked against dp_decide_batch\n",
              done, MsSince(t0) / 1000.0);
  EXPECT_TRUE(AllTrue(ok));
  EXPECT_EQ(repeat, done);
  EXPECT_STATUS(DP_OK, dp_coordinator_destroy(c));
}

// A rank that never calls, on a FRESH communicator (no warm-up: NCCL's lazy connect happens
// inside the first collective): the others get DP_ERR_TIMEOUT within timeout_ms + 100 ms.
// One rank's invalid request joins as the invalid-request marker: every rank's call fails at
// once with DP_ERR_INVALID_ARGUMENT (that rank names its field, the others name that rank), no
// rank waits for a timeout, and the next step succeeds everywhere. The explicit coordinator
// starts on a fresh communicator (no warm-up: the first exchange carries a marker), then the
// cached form on `dp`, with a C bool byte of 2.
TEST_F(Gpu, CoordinatorInvalidRequestOnOneRankFailsEveryRankAtOnce) {
  SkipUnlessRanks(2);
  ncclComm_t fresh = FreshComm();
  dp_coordinator* c = CreateCoordinator(fresh);
  for (int bad = 0; bad < 2 * g.nranks; ++bad) {
    const bool cached = bad >= g.nranks;
    const int bad_rank = bad % g.nranks;
    SCOPED_TRACE(std::string(cached ? "dp_coordinate_batch" : "dp_coordinator_begin/end") +
                 ", invalid request on rank " + std::to_string(bad_rank));
    dp_batch_request q = BaseRequest();
    Tokens(q, 20 + g.rank);
    q.step_id = 10 + bad;
    q.timeout_ms = 10000;  // a rank left waiting would fail with DP_ERR_TIMEOUT
    if (g.rank == bad_rank) {
      if (cached) {
        reinterpret_cast<unsigned char*>(&q.allow_dp_padding)[0] = 2;
      } else {
        q.cudagraph_mode = 7;
      }
    }
    dp_batch_result res = Poisoned<dp_batch_result>();
    dp_status st = DP_OK;
    const auto t0 = std::chrono::steady_clock::now();
    if (cached) {
      st = Coordinate(g.dp, g.stream, &q, &res);
    } else {
      st = dp_coordinator_begin(c, g.stream, &q);
      if (st != DP_OK) ADD_FAILURE() << "begin: " << Name(st) << ": " << dp_last_error();
      if (st == DP_OK) st = dp_coordinator_end(c, &res);
    }
    const double ms = MsSince(t0);
    const std::string msg = dp_last_error();
    EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, st);
    const std::string want =
        g.rank != bad_rank ? "records[" + std::to_string(bad_rank) + "] is the invalid-request marker"
        : cached           ? "req->allow_dp_padding holds the byte 2"
                           : "req->cudagraph_mode = 7";
    EXPECT_NE(std::string::npos, msg.find(want)) << msg;
    EXPECT_TRUE(IsPoisoned(res)) << "result written on failure";
    if (!Sanitized()) {
      EXPECT_LT(ms, 5000.0) << "a rank waited for the invalid one";
    }
    ASSERT_TRUE(AllTrue(st == DP_ERR_INVALID_ARGUMENT && !g.suspect));
    // The step completed on every rank: the next one succeeds.
    q = BaseRequest();
    Tokens(q, 30 + g.rank);
    q.step_id = 100 + bad;
    if (cached) {
      st = Coordinate(g.dp, g.stream, &q, &res);
    } else {
      st = dp_coordinator_begin(c, g.stream, &q);
      if (st == DP_OK) st = dp_coordinator_end(c, &res);
    }
    EXPECT_STATUS(DP_OK, st);
    if (st == DP_OK) {
      EXPECT_EQ(100 + bad, res.step_id);
      EXPECT_EQ(30 + g.nranks - 1, res.max_num_tokens_padded);
      EXPECT_EQ(30 + g.rank, res.num_tokens_after_padding_self);
    }
    ASSERT_TRUE(AllTrue(st == DP_OK));
  }
  EXPECT_STATUS(DP_OK, dp_coordinator_destroy(c));
  Barrier();
  NCCL_CHECK(ncclCommDestroy(fresh));
}

TEST_F(Gpu, CoordinatorFreshCommunicatorAbsentPeerTimesOut) {
  SkipUnlessRanks(2);
  constexpr int32_t kTimeoutMs = 500;
  constexpr double kSlackMs = 100;
  ncclComm_t fresh = FreshComm();
  const int absent = g.nranks - 1;
  dp_coordinator* c = CreateCoordinator(fresh);
  if (g.rank != absent) {
    dp_batch_request q = BaseRequest();
    Tokens(q, 9);
    q.timeout_ms = kTimeoutMs;
    dp_batch_result res = Poisoned<dp_batch_result>();
    const auto t0 = std::chrono::steady_clock::now();
    dp_status st = dp_coordinator_begin(c, g.stream, &q);
    const char* where = "begin";
    if (st == DP_OK) {
      st = dp_coordinator_end(c, &res);
      where = "end";
    }
    const double ms = MsSince(t0);
    std::printf("fresh communicator, rank %d absent: %s from %s after %.1f ms: %s\n", absent,
                dp_status_string(st), where, ms, dp_last_error());
    EXPECT_STATUS(DP_ERR_TIMEOUT, st);
    EXPECT_GE(ms, kTimeoutMs) << "returned before timeout_ms";
    if (!Sanitized()) {
      EXPECT_LE(ms, kTimeoutMs + kSlackMs) << "returned later than timeout_ms + 100 ms";
    }
    EXPECT_TRUE(IsPoisoned(res));
    // Later calls fail fast, naming the first failure.
    const auto t1 = std::chrono::steady_clock::now();
    EXPECT_STATUS(DP_ERR_TIMEOUT, dp_coordinator_begin(c, g.stream, &q));
    if (!Sanitized()) {
      EXPECT_LT(MsSince(t1), 50.0);
    }
    const dp_status cancelled = dp_coordinator_cancel(c);
    std::printf("cancel after the timeout: %s: %s\n", dp_status_string(cancelled),
                cancelled == DP_OK ? "" : dp_last_error());
    EXPECT_TRUE(cancelled == DP_OK || cancelled == DP_ERR_BUSY) << Name(cancelled);
  }
  Barrier();  // the absent rank stays until the others have timed out
  NCCL_CHECK(ncclCommAbort(fresh));  // frees a helper left inside NCCL's connect
  EXPECT_STATUS(DP_OK, dp_coordinator_destroy(c));  // never calls NCCL: fine after the abort
}

// A watchdog thread cancels a wait, then aborts the communicator: never DP_OK, and the
// waiting thread never touches the communicator after the abort (sanitizers run this).
// Twice: in the first call's connect wait (fresh communicator) and in end's wait after a
// good step.
TEST_F(Gpu, CoordinatorWatchdogCancelsThenAbortsDuringAWait) {
  SkipUnlessRanks(2);
  const int absent = g.nranks - 1;
  for (int warm = 0; warm <= 1; ++warm) {
    SCOPED_TRACE(warm ? "wait in end, after a good step" : "wait in the first begin");
    ncclComm_t fresh = FreshComm();
    dp_coordinator* c = CreateCoordinator(fresh);
    dp_batch_request q = BaseRequest();
    Tokens(q, 12 + g.rank);
    q.timeout_ms = 0;  // wait forever: only cancel ends it
    if (warm) {
      std::vector<dp_batch_request> reqs(g.nranks, q);
      for (int r = 0; r < g.nranks; ++r) Tokens(reqs[r], 12 + r);
      reqs[g.rank].timeout_ms = g.guard_ms;
      ASSERT_TRUE(RunCoordinatorStep(c, reqs, g.stream, nullptr));
    }
    if (g.rank != absent) {
      dp_status cancel_status = DP_OK;
      std::thread watchdog([&] {
        std::this_thread::sleep_for(std::chrono::milliseconds(300));
        cancel_status = dp_coordinator_cancel(c);
        NCCL_CHECK(ncclCommAbort(fresh));
      });
      dp_batch_result res = Poisoned<dp_batch_result>();
      dp_status st = dp_coordinator_begin(c, g.stream, &q);
      if (st == DP_OK) st = dp_coordinator_end(c, &res);
      watchdog.join();
      std::printf("watchdog: the wait returned %s (%s); cancel said %s\n", dp_status_string(st),
                  dp_last_error(), dp_status_string(cancel_status));
      EXPECT_STATUS(DP_ERR_CANCELLED, st);
      EXPECT_TRUE(IsPoisoned(res));
      EXPECT_TRUE(cancel_status == DP_OK || (!warm && cancel_status == DP_ERR_BUSY))
          << Name(cancel_status);
      EXPECT_STATUS(DP_ERR_CANCELLED, dp_coordinator_begin(c, g.stream, &q));
      // The stream may hold the aborted collective's kernels: wait until they are gone.
      dpg::WaitStream(g.stream, nullptr, "the stream after the abort", g.wait_s);
    }
    Barrier();
    if (g.rank == absent) NCCL_CHECK(ncclCommAbort(fresh));
    EXPECT_STATUS(DP_OK, dp_coordinator_destroy(c));
    if (HasFailure()) break;
  }
}

// The cached form on a FRESH communicator (no warm-up: NCCL's lazy connect happens inside the
// first collective): a rank that never calls gives the others DP_ERR_TIMEOUT within
// timeout_ms + 100 ms; then abort and dp_release.
TEST_F(Gpu, TimeoutWhenARankNeverCalls) {
  SkipUnlessRanks(2);
  constexpr int32_t kTimeoutMs = 500;
  constexpr double kSlackMs = 100;
  ncclComm_t fresh = FreshComm();
  const int absent = g.nranks - 1;
  if (g.rank != absent) {
    dp_batch_request q = BaseRequest();
    Tokens(q, 9 + g.rank);
    q.timeout_ms = kTimeoutMs;
    dp_batch_result res = Poisoned<dp_batch_result>();
    const auto t0 = std::chrono::steady_clock::now();
    const dp_status st = dp_coordinate_batch(fresh, g.stream, &q, &res);
    const double ms = MsSince(t0);
    std::printf("with rank %d absent: %s after %.1f ms: %s\n", absent, dp_status_string(st), ms,
                dp_last_error());
    EXPECT_STATUS(DP_ERR_TIMEOUT, st);
    EXPECT_GE(ms, kTimeoutMs) << "returned before timeout_ms";
    if (!Sanitized()) {
      EXPECT_LE(ms, kTimeoutMs + kSlackMs)
          << "returned later than timeout_ms + " << kSlackMs << " ms";
    }
    EXPECT_TRUE(IsPoisoned(res)) << "result written on failure";
    const dp_status cancelled = dp_cancel(fresh);
    EXPECT_TRUE(cancelled == DP_OK || cancelled == DP_ERR_BUSY) << Name(cancelled);
  } else {
    std::printf("skipping the call (the absent rank)\n");
  }
  // The absent rank waits here until the others have timed out (it must not abort earlier:
  // its peers would then see a broken connection, not a timeout).
  Barrier();
  NCCL_CHECK(ncclCommAbort(fresh));
  EXPECT_STATUS(DP_OK, dp_release(fresh));  // after the abort: dpcoord never calls NCCL here
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// main: rank set-up from the launcher's environment, then the tests, then an orderly teardown.
// ---------------------------------------------------------------------------------------------
namespace {

ncclUniqueId Rendezvous() {
  ncclUniqueId id;
  if (g.nranks == 1) {
    NCCL_CHECK(ncclGetUniqueId(&id));
    return id;
  }
  const char* dir = std::getenv("DPCOORD_RENDEZVOUS");
  if (dir == nullptr || *dir == '\0') dpg::Die("DPCOORD_RENDEZVOUS is not set (use the launcher)");
  const std::string path = std::string(dir) + "/nccl-unique-id";
  if (g.rank == 0) {
    NCCL_CHECK(ncclGetUniqueId(&id));
    const std::string tmp = path + ".tmp." + std::to_string(getpid());
    {
      std::ofstream out(tmp, std::ios::binary);
      out.write(reinterpret_cast<const char*>(&id), sizeof id);
      if (!out) dpg::Die("cannot write " + tmp);
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) dpg::Die("cannot rename " + tmp);  // atomic
    return id;
  }
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(120);
  for (;;) {
    std::ifstream in(path, std::ios::binary);
    if (in) {
      in.read(reinterpret_cast<char*>(&id), sizeof id);
      if (in.gcount() == static_cast<std::streamsize>(sizeof id)) return id;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      dpg::Die("no NCCL unique id from rank 0 in " + path + " after 120 s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

void SetUpWorld() {
  g.rank = static_cast<int>(EnvLong("DPCOORD_RANK", 0));
  g.nranks = static_cast<int>(EnvLong("DPCOORD_NRANKS", 1));
  dpg::MessageRank() = g.rank;
  if (g.nranks < 1 || g.rank < 0 || g.rank >= g.nranks) dpg::Die("bad DPCOORD_RANK/DPCOORD_NRANKS");
  g.seed = static_cast<uint64_t>(EnvLong("DPCOORD_GPU_SEED", 20240611));
  g.steps = static_cast<int>(EnvLong("DPCOORD_GPU_STEPS", 256));
  g.guard_ms = static_cast<int32_t>(EnvLong("DPCOORD_GPU_GUARD_MS", 30000));
  g.wait_s = static_cast<double>(EnvLong("DPCOORD_GPU_WAIT_S", 120));
  g.verbose = EnvLong("DPCOORD_GPU_VERBOSE", 0) != 0;

  const cudaError_t e = cudaGetDeviceCount(&g.ngpus);
  if (e != cudaSuccess) {
    g.ngpus = 0;
    g.skip_reason = std::string("no CUDA GPU: cudaGetDeviceCount: ") + cudaGetErrorString(e);
  } else if (g.ngpus == 0) {
    g.skip_reason = "no CUDA GPU: cudaGetDeviceCount found 0 devices";
  }
  if (!g.skip_reason.empty()) {
    std::printf("%s: every test skips\n", g.skip_reason.c_str());
    return;
  }
  g.device = static_cast<int>(EnvLong("DPCOORD_DEVICE", g.rank % g.ngpus));
  g.shared = g.nranks > g.ngpus;
  g.repeat = EnvLong("DPCOORD_GPU_REPEAT", g.shared ? 2000 : 10000);
  if (g.shared) {
    // Several ranks on one GPU: NCCL accepts it only as separate "hosts" (over loopback).
    // The launcher sets these; here for a hand-started run.
    setenv("NCCL_HOSTID", ("rank" + std::to_string(g.rank)).c_str(), 0);
    setenv("NCCL_SOCKET_IFNAME", "lo", 0);
  }
  setenv("NCCL_NVLS_ENABLE", "0", 0);
  CUDA_CHECK(cudaSetDevice(g.device));
  CUDA_CHECK(cudaFree(nullptr));  // the primary context, current on this thread
  g.kernels.Load();
  CUDA_CHECK(cudaStreamCreateWithFlags(&g.check_stream, cudaStreamNonBlocking));
  CUDA_CHECK(cudaStreamCreateWithFlags(&g.stream, cudaStreamNonBlocking));
  CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&g.check_dev), kCheckBytes));
  CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&g.check_host), kCheckBytes));
  CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&g.read_host), sizeof(int32_t) * 4096));
  CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&g.scratch_dev), sizeof(int32_t) * kScratchInts));
  // Initialised: tests' stand-in kernels read it (compute-sanitizer's initcheck watches).
  CUDA_CHECK(cudaMemset(g.scratch_dev, 0, sizeof(int32_t) * kScratchInts));
  g.check_half = kCheckBytes / 2;

  int nccl_version = 0;
  NCCL_CHECK(ncclGetVersion(&nccl_version));
  const ncclUniqueId id = Rendezvous();
  NCCL_CHECK(ncclCommInitRank(&g.boot, g.nranks, id, g.rank));
  EnsureDpComm();
  std::printf("rank %d of %d on GPU %d of %d (%s), NCCL %d, dpcoord %s\n", g.rank, g.nranks,
              g.device, g.ngpus,
              g.shared ? "ranks share GPUs: loopback sockets" : "one GPU per rank", nccl_version,
              dp_version());
  std::fflush(stdout);
}

void TearDownWorld() {
  if (!g.skip_reason.empty()) return;
  if (g.dp != nullptr) {
    const dp_status st = dp_release(g.dp);
    if (st != DP_OK) std::printf("dp_release: %s: %s\n", dp_status_string(st), dp_last_error());
    NCCL_CHECK(ncclCommDestroy(g.dp));
    g.dp = nullptr;
  }
  Barrier();  // nobody destroys `boot` while a peer still needs it
  NCCL_CHECK(ncclCommDestroy(g.boot));
  CUDA_CHECK(cudaFree(g.check_dev));
  CUDA_CHECK(cudaFree(g.scratch_dev));
  CUDA_CHECK(cudaFreeHost(g.check_host));
  CUDA_CHECK(cudaFreeHost(g.read_host));
  CUDA_CHECK(cudaStreamDestroy(g.check_stream));
  CUDA_CHECK(cudaStreamDestroy(g.stream));
}

}  // namespace

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);  // lines interleave sanely under the launcher
  ::testing::InitGoogleTest(&argc, argv);
  SetUpWorld();
  const int rc = RUN_ALL_TESTS();
  TearDownWorld();
  std::fflush(stdout);
  return rc;
}
