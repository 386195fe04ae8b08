// The GPU suite's shared part: the world's set-up and teardown, main(), and the definitions
// behind gpu_world.h (the suite's collectives, the oracle, the result checks, the step
// generators, the fixture's verdict agreement). See gpu_world.h for what the suite is and for
// its tunables.
#include "gpu_world.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

namespace dpg {

World g;

long EnvLong(const char* name, long fallback) {
  const char* v = std::getenv(name);
  if (v == nullptr || *v == '\0') return fallback;
  char* end = nullptr;
  const long x = std::strtol(v, &end, 0);
  if (end == v || *end != '\0') Die(std::string("bad ") + name + "=" + v);
  return x;
}

void Trace(const char* what) {
  if (g.verbose) std::printf("trace: %s\n", what);
}

bool Sanitized() { return EnvLong("DPCOORD_GPU_SANITIZER", 0) != 0; }

double MsSince(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

// ---------------------------------------------------------------------------------------------
// The suite's collectives and communicators.
// ---------------------------------------------------------------------------------------------
void Barrier() { AllGather<int32_t>(0); }

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
  if (count != g.nranks || user_rank != g.rank) Die("ncclCommSplit gave an odd communicator");
}

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

ncclComm_t FreshComm() {
  ncclComm_t c = nullptr;
  NCCL_CHECK(ncclCommSplit(g.boot, 0, g.rank, &c, nullptr));
  return c;
}

dp_coordinator* CreateCoordinator(ncclComm_t comm) {
  dp_coordinator* c = nullptr;
  const dp_status st = dp_coordinator_create(comm, &c);
  if (st != DP_OK) Die(std::string("dp_coordinator_create: ") + dp_last_error());
  return c;
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

namespace {

uint64_t Fnv(uint64_t h, int64_t v) {
  for (int i = 0; i < 8; ++i) {
    h ^= static_cast<uint64_t>(v >> (8 * i)) & 0xFF;
    h *= 1099511628211ull;
  }
  return h;
}

}  // namespace

// Reads `n` entries of a library-owned device array on `stream` (stream order).
std::vector<int32_t> ReadDevice(const int32_t* dev, int n, cudaStream_t stream) {
  std::fill(g.read_host, g.read_host + n, kPoisonArray);
  CUDA_CHECK(
      cudaMemcpyAsync(g.read_host, dev, sizeof(int32_t) * n, cudaMemcpyDeviceToHost, stream));
  WaitStream(stream, nullptr, "reading the device array back", g.wait_s);
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

// ---------------------------------------------------------------------------------------------
// Step generators.
// ---------------------------------------------------------------------------------------------
uint64_t SplitMix(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

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

void Micro(dp_batch_request& q, int32_t uniform, int32_t n, int32_t decode_thr,
           int32_t prefill_thr) {
  q.allow_microbatching = true;
  q.uniform_decode = uniform;
  q.ubatch.enabled = true;
  q.ubatch.num_ubatches = n;
  q.ubatch.decode_token_threshold = decode_thr;
  q.ubatch.prefill_token_threshold = prefill_thr;
}

void Tokens(dp_batch_request& q, int32_t unpadded, int32_t padded) {
  q.num_tokens_unpadded = unpadded;
  q.num_tokens_padded = padded;
}

// ---------------------------------------------------------------------------------------------
// StreamHold and the fixture.
// ---------------------------------------------------------------------------------------------
void StreamHold::Hold(cudaStream_t stream) {
  CUDA_CHECK(
      cudaHostAlloc(reinterpret_cast<void**>(&flag), 2 * sizeof(unsigned), cudaHostAllocMapped));
  flag[0] = flag[1] = 0;
  CUDA_CHECK(cudaHostGetDevicePointer(reinterpret_cast<void**>(&flag_dev), flag, 0));
  g.kernels.SpinUntil(stream, flag_dev, 20ull * 1000 * 1000 * 1000, flag_dev + 1);
}

void StreamHold::Let() { reinterpret_cast<volatile unsigned*>(flag)[0] = 1; }

void StreamHold::Finish(cudaStream_t stream) {
  WaitStream(stream, nullptr, "the spinning kernel", g.wait_s);
  EXPECT_EQ(0u, flag[1]) << "the spinning kernel timed out";
  CUDA_CHECK(cudaFreeHost(flag));
}

void Gpu::SetUp() {
  if (!g.skip_reason.empty()) GTEST_SKIP() << g.skip_reason;
  g.suspect = false;
  EnsureDpComm();
}

void Gpu::TearDown() {
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
  if (dir == nullptr || *dir == '\0') Die("DPCOORD_RENDEZVOUS is not set (use the launcher)");
  const std::string path = std::string(dir) + "/nccl-unique-id";
  if (g.rank == 0) {
    NCCL_CHECK(ncclGetUniqueId(&id));
    const std::string tmp = path + ".tmp." + std::to_string(getpid());
    {
      std::ofstream out(tmp, std::ios::binary);
      out.write(reinterpret_cast<const char*>(&id), sizeof id);
      if (!out) Die("cannot write " + tmp);
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) Die("cannot rename " + tmp);  // atomic
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
      Die("no NCCL unique id from rank 0 in " + path + " after 120 s");
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

void SetUpWorld() {
  g.rank = static_cast<int>(EnvLong("DPCOORD_RANK", 0));
  g.nranks = static_cast<int>(EnvLong("DPCOORD_NRANKS", 1));
  MessageRank() = g.rank;
  if (g.nranks < 1 || g.rank < 0 || g.rank >= g.nranks) Die("bad DPCOORD_RANK/DPCOORD_NRANKS");
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
  g.reuse_steps = EnvLong("DPCOORD_GPU_REUSE_STEPS", std::max(g.repeat, 10000L));
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
}  // namespace dpg

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);  // lines interleave sanely under the launcher
  ::testing::InitGoogleTest(&argc, argv);
  dpg::SetUpWorld();
  const int rc = RUN_ALL_TESTS();
  dpg::TearDownWorld();
  std::fflush(stdout);
  return rc;
}
