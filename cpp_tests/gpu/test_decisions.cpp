// Decisions: dp_coordinate_batch against the host oracle (seeded random steps, deterministic
// edge cases at full rank count and at dp_size 1), inconsistent pad flags, invalid requests on
// every rank, and many repeated calls that must keep their arrays and allocate nothing.
#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "gpu_world.h"

namespace dpg {
namespace {

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
  if (count != 1) Die("ncclCommSplit by rank gave " + std::to_string(count) + " ranks");
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
  WaitStream(g.stream, nullptr, "the spinning kernel", g.wait_s);
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

TEST_F(Gpu, InconsistentPadFlagsFailEveryRank) {
  DPG_SKIP_UNLESS_RANKS(2);
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

}  // namespace
}  // namespace dpg
