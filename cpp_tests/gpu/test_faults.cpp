// Faults: release and call again, and the fault tests on FRESH communicators (no warm-up
// call: NCCL connects lazily inside the first collective): one rank's invalid request, an
// absent peer (timeouts), a watchdog's cancel then abort.
#include <chrono>
#include <cstdio>
#include <string>
#include <thread>
#include <vector>

#include "gpu_world.h"

namespace dpg {
namespace {

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

// A rank that never calls, on a FRESH communicator (no warm-up: NCCL's lazy connect happens
// inside the first collective): the others get DP_ERR_TIMEOUT within timeout_ms + 100 ms.
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
      WaitStream(g.stream, nullptr, "the stream after the abort", g.wait_s);
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
}  // namespace dpg
