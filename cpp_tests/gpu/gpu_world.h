// The GPU suite's shared part (as nccl-tests' common.h): the world across processes, the
// suite's own collectives and verdict agreement, the host oracle, the result checks and the
// step generators. The tests live in one file per area (test_decisions.cpp, test_streams.cpp,
// test_split_phase.cpp, test_faults.cpp); main() and the world's set-up are in gpu_world.cpp.
//
// Started by dpcoord_gpu_launcher (see launcher.cpp), which sets DPCOORD_RANK, DPCOORD_NRANKS,
// DPCOORD_DEVICE, DPCOORD_RENDEZVOUS and the NCCL variables; run alone it is a one-rank world.
// Every rank runs every test, in the same order (the files' link order, then their order
// within a file), and every test makes the same sequence of collective calls on every rank.
// Checks that may differ between ranks are non-fatal (EXPECT), and wherever a local failure
// would change what a rank does next (a status), the ranks first agree on it through the
// suite's own communicator (as nccl-tests does), so that one rank's failure fails the test on
// every rank instead of leaving its peers hanging.
//
// Communicators: `boot` (the suite's: verdicts, barriers, splits) and `dp` (the one under
// test, ncclCommSplit of boot; aborted and re-split when a test leaves it broken). Each call's
// result is compared with dp_decide_batch on every rank's record, which every rank derives
// itself from (seed, step, rank): all scalars, the host array and the device array read back.
//
// Tunables (environment): DPCOORD_GPU_SEED (random steps' seed, default 20240611),
// DPCOORD_GPU_STEPS (random steps, default 256), DPCOORD_GPU_REPEAT (repeated calls, default
// 10000 with a GPU per rank, 2000 when ranks share GPUs), DPCOORD_GPU_REUSE_STEPS (steps of
// CoordinatorReuseAcrossManySteps, default max(DPCOORD_GPU_REPEAT, 10000); under a sanitizer
// DPCOORD_GPU_REPEAT), DPCOORD_GPU_GUARD_MS (timeout_ms put in requests so that a mismatched
// collective fails instead of hanging, default 30000), DPCOORD_GPU_WAIT_S (deadline of the
// suite's own collectives, default 120), DPCOORD_GPU_SANITIZER=1 (under compute-sanitizer:
// wall-clock bounds are not asserted), DPCOORD_GPU_VERBOSE=1 (a trace line around every
// collective, to find where a run hangs).
#ifndef DPCOORD_GPU_WORLD_H
#define DPCOORD_GPU_WORLD_H

#include <dpcoord.h>
#include <gtest/gtest.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <functional>
#include <string>
#include <type_traits>
#include <vector>

#include "../common/poison.h"
#include "gpu_util.h"

namespace dpg {

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
  TestKernels kernels;
  uint64_t seed = 20240611;
  int steps = 256;
  long repeat = 0;
  long reuse_steps = 0;
  int32_t guard_ms = 30000;
  double wait_s = 120;
  bool suspect = false;  // this rank saw a status that may leave `dp` out of step
  bool verbose = false;  // DPCOORD_GPU_VERBOSE=1: a line before and after every collective
};
extern World g;

constexpr size_t kCheckBytes = 1 << 16;
constexpr int kScratchInts = 1 << 16;
constexpr int32_t kPoisonArray = static_cast<int32_t>(0xA5A5A5A5u);

long EnvLong(const char* name, long fallback);

inline std::string Name(dp_status s) { return dp_status_string(s); }

// With DPCOORD_GPU_VERBOSE=1, says what this rank is about to do (to find where a run hangs).
void Trace(const char* what);

// Under compute-sanitizer (DPCOORD_GPU_SANITIZER=1) wall-clock bounds are not asserted.
bool Sanitized();

double MsSince(std::chrono::steady_clock::time_point t0);

using dpcoord_test::IsPoisoned;
using dpcoord_test::Poisoned;

}  // namespace dpg

#define EXPECT_STATUS(expected, expr)                         \
  do {                                                        \
    const dp_status dpg_got_ = (expr);                        \
    EXPECT_EQ(::dpg::Name(expected), ::dpg::Name(dpg_got_))   \
        << #expr << "; dp_last_error(): " << dp_last_error(); \
  } while (0)

namespace dpg {

// ---------------------------------------------------------------------------------------------
// The suite's own collectives, on `boot` and its stream, each bounded by WaitStream's deadline
// (which polls ncclCommGetAsyncError and aborts instead of hanging).
// ---------------------------------------------------------------------------------------------
template <typename T>
std::vector<T> AllGather(const T& mine) {
  static_assert(std::is_trivially_copyable<T>::value, "AllGather copies bytes");
  const size_t bytes = sizeof(T);
  if (bytes * static_cast<size_t>(g.nranks) > g.check_half) Die("AllGather: too many bytes");
  Trace("suite allgather");
  std::memcpy(g.check_host, &mine, bytes);
  CUDA_CHECK(
      cudaMemcpyAsync(g.check_dev, g.check_host, bytes, cudaMemcpyHostToDevice, g.check_stream));
  NCCL_CHECK(ncclAllGather(g.check_dev, g.check_dev + g.check_half, bytes, ncclUint8, g.boot,
                           g.check_stream));
  CUDA_CHECK(cudaMemcpyAsync(g.check_host + g.check_half, g.check_dev + g.check_half,
                             bytes * g.nranks, cudaMemcpyDeviceToHost, g.check_stream));
  WaitStream(g.check_stream, g.boot, "the suite's allgather on its own communicator", g.wait_s);
  Trace("suite allgather done");
  std::vector<T> all(g.nranks);
  std::memcpy(static_cast<void*>(all.data()), g.check_host + g.check_half, bytes * g.nranks);
  return all;
}

void Barrier();

// True on every rank iff `mine` is true on every rank.
bool AllTrue(bool mine);

// (Re)creates `dp` (ncclCommSplit of boot) when an abort left it null.
void EnsureDpComm();

// Aborts `dp` and forgets it. Every rank calls this at the same point (the decision to abort
// is always agreed).
void AbortDpComm(const char* why);

// A fresh communicator (ncclCommSplit of boot, every rank): NCCL connects lazily inside its
// first collective.
ncclComm_t FreshComm();

// dp_coordinator_create, which must succeed (suite plumbing).
dp_coordinator* CreateCoordinator(ncclComm_t comm);

// ---------------------------------------------------------------------------------------------
// Requests, the host oracle and result checks.
// ---------------------------------------------------------------------------------------------

// dp_batch_request_init over poison, with the guard timeout.
dp_batch_request BaseRequest();

struct Expected {
  dp_status status = DP_OK;
  dp_batch_result result{};
  std::vector<int32_t> array;
};

// dp_decide_batch on the records of `reqs` (reqs[r] is rank r's request), as rank `dp_rank`.
Expected Oracle(const std::vector<dp_batch_request>& reqs, int dp_rank);

// Reads `n` entries of a library-owned device array on `stream` (stream order).
std::vector<int32_t> ReadDevice(const int32_t* dev, int n, cudaStream_t stream);

// Compares a dp_coordinate_batch outcome with the oracle's (non-fatal checks) and returns a
// digest of everything every rank must agree on (status, scalars, arrays).
uint64_t CheckResult(const Expected& exp, dp_status st, const dp_batch_result& res,
                     cudaStream_t read_stream, int dp_size, int dp_rank);

// dp_coordinate_batch with a poisoned result; a status that may leave the communicator out of
// step marks this rank suspect (the fixture then aborts `dp` on every rank).
dp_status Coordinate(ncclComm_t comm, cudaStream_t stream, const dp_batch_request* req,
                     dp_batch_result* res);

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
             cudaStream_t stream);

// begin; `between` (stream and host work); poll; end; checked against the oracle and agreed
// across ranks (as RunStep). Returns false on every rank when the sequence must stop.
bool RunCoordinatorStep(dp_coordinator* c, const std::vector<dp_batch_request>& reqs,
                        cudaStream_t stream, const std::function<void()>& between);

// ---------------------------------------------------------------------------------------------
// Step generators: seeded random steps (every rank derives every rank's request from (seed,
// step, rank)) and the setters the deterministic cases use.
// ---------------------------------------------------------------------------------------------
uint64_t SplitMix(uint64_t x);

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

StepShape ShapeOf(uint64_t seed, int step, int dp_size);
dp_batch_request RequestOf(uint64_t seed, int step, int rank, const StepShape& s);

void Micro(dp_batch_request& q, int32_t uniform, int32_t n, int32_t decode_thr,
           int32_t prefill_thr);
void Tokens(dp_batch_request& q, int32_t unpadded, int32_t padded = -1);

// A host-mapped flag a spinning kernel waits on (holds a stream until let go).
struct StreamHold {
  unsigned* flag = nullptr;
  unsigned* flag_dev = nullptr;
  void Hold(cudaStream_t stream);
  // Lets the kernel end (no wait).
  void Let();
  // Waits for `stream` (deadline-bounded), checks the kernel did not time out, frees the flag.
  void Finish(cudaStream_t stream);
  void Release(cudaStream_t stream) {
    Let();
    Finish(stream);
  }
};

// ---------------------------------------------------------------------------------------------
// The fixture: skip without a GPU, (re)create the communicator under test, agree on the verdict.
// ---------------------------------------------------------------------------------------------
class Gpu : public ::testing::Test {
 protected:
  void SetUp() override;
  void TearDown() override;
};

}  // namespace dpg

// Skips the test, and returns from its body, unless the run has at least n ranks (a macro:
// GTEST_SKIP only returns from the function it is written in).
#define DPG_SKIP_UNLESS_RANKS(n)                                                              \
  do {                                                                                        \
    if (::dpg::g.nranks < (n)) {                                                              \
      GTEST_SKIP() << "needs >= " << (n) << " ranks (this run has " << ::dpg::g.nranks << ")"; \
    }                                                                                         \
  } while (0)

#endif  // DPCOORD_GPU_WORLD_H
