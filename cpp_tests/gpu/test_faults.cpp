// Faults: release and call again, and the fault tests on FRESH communicators (no warm-up
// call: NCCL connects lazily inside the first collective): one rank's invalid request, one
// rank's other setting (pad_policy, num_ubatches), an absent peer (timeouts), a watchdog's
// cancel then abort (explicit coordinator and dp_coordinate_batch).
#include <atomic>
#include <chrono>
#include <cstdio>
#include <functional>
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
  DPG_SKIP_UNLESS_RANKS(2);
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

// One rank with another setting that the slot's configuration word carries (DESIGN 1a), on
// the FIRST exchange of a FRESH communicator: every rank's step fails with
// DP_ERR_INCONSISTENT_RANKS naming the setting, within a few seconds (timeout_ms is 10 s: a
// rank left waiting would say DP_ERR_TIMEOUT), and never a decision each rank made with its
// own setting. The exchange completed, so the next step with equal settings succeeds with the
// oracle's decision. First the explicit coordinator (the last rank differs), then the
// coordinator dp_coordinate_batch keeps for the same communicator (its first exchange; rank 0
// differs). The requests make the two settings decide differently, so a path that ignores the
// difference gives DP_OK with different decisions, which fails here.
void SettingDifferenceFailsEveryRank(const char* mentions,
                                     const std::function<void(int r, dp_batch_request&)>& make,
                                     const std::function<void(dp_batch_request&)>& differ) {
  const int n = g.nranks;
  ncclComm_t fresh = FreshComm();
  dp_coordinator* c = CreateCoordinator(fresh);
  bool ok = true;
  for (int form = 0; form < 2 && ok; ++form) {
    const bool cached = form == 1;
    const int odd = cached ? 0 : n - 1;
    SCOPED_TRACE(std::string(cached ? "dp_coordinate_batch" : "dp_coordinator_begin/end") +
                 ", rank " + std::to_string(odd) + " differs");
    std::vector<dp_batch_request> reqs(n, BaseRequest());
    for (int r = 0; r < n; ++r) {
      make(r, reqs[r]);
      reqs[r].step_id = 10 * form + 1;
      reqs[r].timeout_ms = 10000;
    }
    differ(reqs[odd]);
    dp_batch_result res = Poisoned<dp_batch_result>();
    const auto t0 = std::chrono::steady_clock::now();
    dp_status st = DP_OK;
    if (cached) {
      st = Coordinate(fresh, g.stream, &reqs[g.rank], &res);
    } else {
      st = dp_coordinator_begin(c, g.stream, &reqs[g.rank]);
      if (st != DP_OK) ADD_FAILURE() << "begin: " << Name(st) << ": " << dp_last_error();
      if (st == DP_OK) st = dp_coordinator_end(c, &res);
    }
    const double ms = MsSince(t0);
    const std::string msg = st == DP_OK ? "" : dp_last_error();
    std::printf("%s, rank %d differs: %s after %.1f ms%s%s\n",
                cached ? "dp_coordinate_batch" : "coordinator", odd, dp_status_string(st), ms,
                msg.empty() ? "" : ": ", msg.c_str());
    if (st == DP_OK) {
      std::printf("  decided with this rank's own setting: should_ubatch %d, should_dp_pad %d, "
                  "self %d, max %d\n",
                  static_cast<int>(res.should_ubatch), static_cast<int>(res.should_dp_pad),
                  res.num_tokens_after_padding_self, res.max_num_tokens_padded);
    }
    EXPECT_STATUS(DP_ERR_INCONSISTENT_RANKS, st);
    EXPECT_NE(std::string::npos, msg.find(mentions))
        << "dp_last_error() = \"" << msg << "\" does not name " << mentions;
    EXPECT_TRUE(IsPoisoned(res)) << "result written on failure";
    if (!Sanitized()) {
      EXPECT_LT(ms, 5000.0) << "a rank waited (for a timeout?)";
    }
    ok = AllTrue(st == DP_ERR_INCONSISTENT_RANKS && !g.suspect);
    if (!ok) {
      ADD_FAILURE() << "not every rank got DP_ERR_INCONSISTENT_RANKS (see each rank's line)";
      break;
    }
    // Equal settings again: the coordinator is still usable.
    for (int r = 0; r < n; ++r) {
      make(r, reqs[r]);
      reqs[r].step_id = 10 * form + 2;
    }
    ok = cached ? RunStep(fresh, g.rank, n, reqs, g.stream)
                : RunCoordinatorStep(c, reqs, g.stream, nullptr);
    if (!ok) ADD_FAILURE() << "the step with equal settings after it failed";
  }
  if (ok) {
    EXPECT_STATUS(DP_OK, dp_coordinator_destroy(c));
    EXPECT_STATUS(DP_OK, dp_release(fresh));
    Barrier();
    NCCL_CHECK(ncclCommDestroy(fresh));
    return;
  }
  // Agreed on every rank: free whatever waits inside NCCL, then let the stream drain.
  dp_coordinator_cancel(c);
  dp_cancel(fresh);
  NCCL_CHECK(ncclCommAbort(fresh));
  WaitStream(g.stream, nullptr, "the stream after the abort", g.wait_s);
  EXPECT_STATUS(DP_OK, dp_coordinator_destroy(c));
  EXPECT_STATUS(DP_OK, dp_release(fresh));
}

// EXPLICIT on every rank but one, which passes WHEN_CUDAGRAPH: with FULL graphs and no rank
// allowing DP padding, EXPLICIT would not pad and WHEN_CUDAGRAPH would.
TEST_F(Gpu, CoordinatorPadPolicyDifferenceFailsEveryRank) {
  DPG_SKIP_UNLESS_RANKS(2);
  SettingDifferenceFailsEveryRank(
      "pad_policy differs",
      [](int r, dp_batch_request& q) {
        Tokens(q, 10 + r);
        q.pad_policy = DP_PAD_POLICY_EXPLICIT;
        q.allow_dp_padding = false;
        q.cudagraph_mode = DP_CUDAGRAPH_FULL;
      },
      [](dp_batch_request& q) { q.pad_policy = DP_PAD_POLICY_WHEN_CUDAGRAPH; });
}

// Microbatching enabled everywhere, num_ubatches 2 on every rank but one, which uses 4: with
// max(padded) 100 and min(unpadded) 60, 2 microbatches split (100 / 2 = 50 < 60) and 4 would
// leave the last one empty (100 / 4 * 3 = 75 >= 60).
TEST_F(Gpu, CoordinatorNumUbatchesDifferenceFailsEveryRank) {
  DPG_SKIP_UNLESS_RANKS(2);
  SettingDifferenceFailsEveryRank(
      "num_ubatches",
      [](int r, dp_batch_request& q) {
        Micro(q, 1, 2, 32, 512);
        if (r == 0) {
          Tokens(q, 60, 60);
        } else {
          Tokens(q, 64, 100);
        }
      },
      [](dp_batch_request& q) { q.ubatch.num_ubatches = 4; });
}

// A rank that never calls, on a FRESH communicator (no warm-up: NCCL's lazy connect happens
// inside the first collective): the others get DP_ERR_TIMEOUT within timeout_ms + 100 ms.
TEST_F(Gpu, CoordinatorFreshCommunicatorAbsentPeerTimesOut) {
  DPG_SKIP_UNLESS_RANKS(2);
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
  DPG_SKIP_UNLESS_RANKS(2);
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
  DPG_SKIP_UNLESS_RANKS(2);
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


// A watchdog cancels the FIRST dp_coordinate_batch on a FRESH communicator while a peer never
// calls, so the call is inside the cached coordinator's creation or inside NCCL's lazy connect
// on dpcoord's helper thread (timeout_ms 0: only the cancel can end it). dp_cancel returns
// DP_OK, or DP_ERR_BUSY saying dpcoord's helper thread is inside NCCL (which only
// ncclCommAbort frees); on any other DP_ERR_BUSY it is called again. Then the watchdog aborts
// the communicator and, once the call returned, releases it (dp_release). The call returns an
// error, never DP_OK, within 5 s of the cancel; no hang (a hard deadline ends the process,
// saying so), no crash (the sanitizers run this). Twice, on a fresh communicator each: the
// cancel 50 ms after the call started (perhaps still creating the coordinator) and 500 ms
// after (inside the connect).
TEST_F(Gpu, WatchdogCancelsFirstCachedCallOnFreshCommunicator) {
  DPG_SKIP_UNLESS_RANKS(2);
  constexpr double kCancelBoundMs = 5000;
  const double cancel_tries_ms = Sanitized() ? 60000 : kCancelBoundMs;  // creation is slow there
  const int absent = g.nranks - 1;
  for (const int delay_ms : {50, 500}) {
    SCOPED_TRACE("cancel " + std::to_string(delay_ms) + " ms after the call started");
    ncclComm_t fresh = FreshComm();
    if (g.rank != absent) {
      dp_batch_request q = BaseRequest();
      Tokens(q, 12 + g.rank);
      q.timeout_ms = 0;  // wait forever: only the cancel ends it
      dp_batch_result res = Poisoned<dp_batch_result>();
      dp_status st = DP_OK;
      std::string call_error;
      std::atomic<int> phase{0};  // 1: calling, 2: returned
      std::chrono::steady_clock::time_point returned_at;
      std::thread caller([&] {
        phase = 1;
        st = dp_coordinate_batch(fresh, g.stream, &q, &res);
        call_error = dp_last_error();
        returned_at = std::chrono::steady_clock::now();
        phase = 2;
      });
      while (phase.load() == 0) std::this_thread::yield();
      std::this_thread::sleep_for(std::chrono::milliseconds(delay_ms));
      const bool returned_early = phase.load() == 2;

      // The watchdog: cancel until it says the communicator may be aborted.
      const auto cancel_start = std::chrono::steady_clock::now();
      dp_status cancelled = DP_OK;
      std::string cancel_error;
      int tries = 0;
      bool helper_in_nccl = false;
      for (;;) {
        ++tries;
        cancelled = dp_cancel(fresh);
        cancel_error = cancelled == DP_OK ? "" : dp_last_error();
        helper_in_nccl = cancelled == DP_ERR_BUSY &&
                         cancel_error.find("helper thread") != std::string::npos &&
                         cancel_error.find("ncclCommAbort") != std::string::npos;
        if (cancelled != DP_ERR_BUSY || helper_in_nccl) break;
        if (MsSince(cancel_start) > cancel_tries_ms) break;
      }
      std::printf("watchdog: dp_cancel %s after %d call(s), %.1f ms%s%s\n",
                  dp_status_string(cancelled), tries, MsSince(cancel_start),
                  cancel_error.empty() ? "" : ": ", cancel_error.c_str());
      EXPECT_FALSE(returned_early) << "the call returned before the cancel (" << Name(st)
                                   << ": " << call_error << "): nothing was cancelled";
      const bool may_abort = cancelled == DP_OK || helper_in_nccl;
      if (!may_abort) {
        Die("dp_cancel returned " + Name(cancelled) + " (" + cancel_error + ") for " +
            std::to_string(MsSince(cancel_start)) +
            " ms: it never allowed ncclCommAbort, and the call may still be inside NCCL");
      }
      NCCL_CHECK(ncclCommAbort(fresh));
      const auto aborted_at = std::chrono::steady_clock::now();
      while (phase.load() != 2) {
        if (MsSince(aborted_at) > 1000 * g.wait_s) {
          Die("the cancelled dp_coordinate_batch did not return " + std::to_string(g.wait_s) +
              " s after dp_cancel and ncclCommAbort (hung)");
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));
      }
      caller.join();
      const double return_ms =
          std::chrono::duration<double, std::milli>(returned_at - cancel_start).count();
      std::printf("the first call returned %s %.1f ms after the first cancel: %s\n",
                  dp_status_string(st), return_ms, call_error.c_str());
      EXPECT_NE("DP_OK", Name(st)) << "the cancelled call returned DP_OK";
      EXPECT_TRUE(IsPoisoned(res)) << "result written by the cancelled call";
      EXPECT_FALSE(call_error.empty()) << "no dp_last_error() message after " << Name(st);
      if (!Sanitized()) {
        EXPECT_LT(return_ms, kCancelBoundMs) << "the call returned late after the cancel";
      }
      EXPECT_STATUS(DP_OK, dp_release(fresh));  // after the abort: never calls NCCL
      // Nothing dpcoord enqueued may be left running on the caller's stream.
      WaitStream(g.stream, nullptr, "the stream after the abort", g.wait_s);
    } else {
      std::printf("not calling (the absent rank)\n");
    }
    Barrier();  // the absent rank stays until the others are done
    if (g.rank == absent) {
      NCCL_CHECK(ncclCommAbort(fresh));
      EXPECT_STATUS(DP_OK, dp_release(fresh));  // never used with dpcoord: fine
    }
    if (!AllTrue(!HasFailure())) break;
  }
}

}  // namespace
}  // namespace dpg
