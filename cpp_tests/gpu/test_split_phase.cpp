// Split phase: the explicit coordinator (dp_coordinator_begin / poll / end) with host and
// stream work between begin and end, its states, step ids across ranks, destroy with work
// pending, and reuse across many steps.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "gpu_world.h"

namespace dpg {
namespace {

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
  DPG_SKIP_UNLESS_RANKS(2);
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
  DPG_SKIP_UNLESS_RANKS(2);
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
  // 10 000 steps by default (DPCOORD_GPU_REUSE_STEPS; when 4 ranks share a GPU over sockets
  // they take about 140 s); the sanitizers' runs keep their small DPCOORD_GPU_REPEAT.
  const long repeat = Sanitized() ? g.repeat : g.reuse_steps;
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


// The first exchange of a fresh coordinator on a FRESH communicator (no warm-up: dpcoord runs
// NCCL's first collective, with its lazy connect, on a helper thread) begun on
// cudaStreamPerThread, and ended on another thread than begin: cudaStreamPerThread means the
// per-thread stream of the thread that calls begin, so the exchange is ordered after the work
// queued there (a held stream keeps it unfinished: poll says "not done") and the device array
// is written there (read back on it). Every rank gets DP_OK with the oracle's decision; then
// more steps the same way, held again at step 3.
TEST_F(Gpu, CoordinatorFirstExchangeOnPerThreadStreamEndsOnAnotherThread) {
  constexpr int kSteps = 6;
  const int n = g.nranks;
  ncclComm_t fresh = FreshComm();
  dp_coordinator* c = CreateCoordinator(fresh);
  StreamHold held;
  bool holding = false;  // `held` spins (or was let go and not yet waited for)
  bool ok = true;
  int ran = 0;
  for (int step = 0; step < kSteps && ok; ++step) {
    SCOPED_TRACE("step " + std::to_string(step) + " (step 0: the first exchange)");
    std::vector<dp_batch_request> reqs(n, BaseRequest());
    for (int r = 0; r < n; ++r) {
      Tokens(reqs[r], 20 + 7 * step + r, step % 2 == 0 ? 64 + r : -1);
      reqs[r].allow_dp_padding = step % 2 == 0;
      reqs[r].cudagraph_mode = (step + r) % 3;
      reqs[r].step_id = step + 1;
    }
    const Expected exp = Oracle(reqs, g.rank);
    holding = n >= 2 && (step == 0 || step == 3);  // dp_size 1 does no GPU work
    if (holding) held.Hold(cudaStreamPerThread);
    const auto t0 = std::chrono::steady_clock::now();
    const dp_status began = dp_coordinator_begin(c, cudaStreamPerThread, &reqs[g.rank]);
    const double begin_ms = MsSince(t0);
    const std::string begin_error = began == DP_OK ? "" : dp_last_error();
    if (holding && began == DP_OK) {
      bool done = true;
      EXPECT_STATUS(DP_OK, dp_coordinator_poll(c, &done));
      EXPECT_FALSE(done) << "poll said done while this thread's stream is held: the exchange "
                            "was not ordered after the work queued on cudaStreamPerThread";
      EXPECT_EQ(cudaErrorNotReady, cudaStreamQuery(cudaStreamPerThread))
          << "begin waited for this thread's stream";
    }
    dp_batch_result res = Poisoned<dp_batch_result>();
    dp_status ended = DP_ERR_INTERNAL;
    std::string end_error;
    std::thread ender;
    if (began == DP_OK) {
      ender = std::thread([&] {
        ended = dp_coordinator_end(c, &res);  // bounded by timeout_ms (the guard)
        if (ended != DP_OK) end_error = dp_last_error();
      });
    }
    if (holding) held.Let();
    if (ender.joinable()) ender.join();
    const dp_status st = began == DP_OK ? ended : began;
    std::printf("per-thread stream, step %d%s: begin %s after %.2f ms%s%s; end on another "
                "thread: %s%s%s\n",
                step, holding ? " (held)" : "", dp_status_string(began), begin_ms,
                begin_error.empty() ? "" : ": ", begin_error.c_str(),
                began == DP_OK ? dp_status_string(ended) : "not called",
                end_error.empty() ? "" : ": ", end_error.c_str());
    EXPECT_EQ("DP_OK", Name(st))
        << (began != DP_OK ? "begin: " + begin_error : "end: " + end_error);
    // Every rank agrees on the statuses before anyone waits for the stream (behind a failed
    // exchange it may stay busy until the abort below).
    ok = AllTrue(st == DP_OK);
    if (!ok) {
      ADD_FAILURE() << "stopping at step " << step << ": a rank's exchange failed";
      break;
    }
    if (holding) held.Finish(cudaStreamPerThread);
    holding = false;
    const uint64_t digest = CheckResult(exp, st, res, cudaStreamPerThread, n, g.rank);
    EXPECT_EQ(step + 1, res.step_id);
    for (const StepReport& other : AllGather(StepReport{static_cast<int32_t>(st), 0, digest})) {
      EXPECT_EQ(digest, other.digest) << "the ranks reached different decisions";
    }
    ++ran;
    ok = AllTrue(!HasFailure());
  }
  std::printf("per-thread stream: %d of %d steps checked\n", ran, kSteps);
  if (ok) {
    EXPECT_STATUS(DP_OK, dp_coordinator_destroy(c));
    Barrier();
    NCCL_CHECK(ncclCommDestroy(fresh));
    return;
  }
  // Agreed on every rank: free whatever waits inside NCCL, then let the stream drain.
  const dp_status cancelled = dp_coordinator_cancel(c);
  std::printf("cancel: %s%s%s\n", dp_status_string(cancelled), cancelled == DP_OK ? "" : ": ",
              cancelled == DP_OK ? "" : dp_last_error());
  NCCL_CHECK(ncclCommAbort(fresh));
  if (holding) {
    held.Finish(cudaStreamPerThread);
  } else {
    WaitStream(cudaStreamPerThread, nullptr, "this thread's stream after the abort", g.wait_s);
  }
  EXPECT_STATUS(DP_OK, dp_coordinator_destroy(c));
}

}  // namespace
}  // namespace dpg
