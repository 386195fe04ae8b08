// The host shared-memory group through the C API, one process per rank (fork): every rank's
// result checked against the host path (dp_make_slot of every rank's request, then
// dp_decide_slots) on the same requests, V1 and V2; VLLM_V2.md's worked examples, one test
// each; ranks with different settings failing together; an invalid request failing on every
// rank; a peer killed with SIGKILL, a peer that stops calling; a forked child, whose
// coordinate is refused and whose close leaves its parent's rank; bad arguments.
//
// Each rank of a case is a forked child that reports through its exit code (0: every check
// held; else the number of the first failed check) and prints what went wrong to stderr.
#include <dpcoord.h>
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "../common/v2_examples.h"

namespace {

std::string GroupName(const char* tag) {
  return "gt" + std::to_string(getpid()) + "-" + tag;
}

// Every rank's request at `step`, the same on every rank (seeded by the step).
std::vector<dp_batch_request> StepRequests(int dp_size, int step) {
  std::mt19937 rng(static_cast<unsigned>(step) * 2654435761u + 7u);
  const int32_t policy = static_cast<int32_t>(rng() % 2);
  const bool pad = rng() % 2 == 0;
  std::vector<dp_batch_request> reqs(static_cast<size_t>(dp_size));
  for (dp_batch_request& r : reqs) {
    dp_batch_request_init(&r);
    r.num_tokens_unpadded = static_cast<int32_t>(rng() % 1024);
    r.num_tokens_padded = r.num_tokens_unpadded + static_cast<int32_t>(rng() % 32);
    r.allow_microbatching = rng() % 4 != 0;
    r.allow_dp_padding = pad;
    r.uniform_decode = static_cast<int32_t>(rng() % 2);
    r.cudagraph_mode = static_cast<int32_t>(rng() % 3);
    r.pad_policy = policy;
    r.ubatch.enabled = true;
    r.ubatch.decode_token_threshold = 16;
    r.ubatch.prefill_token_threshold = 256;
    r.timeout_ms = 20000;
    r.step_id = step + 1;
  }
  return reqs;
}

// Runs `rank_body(rank)` in `dp_size` forked processes and returns their exit codes (a
// child killed by a signal reports 128 + the signal).
std::vector<int> RunRanks(int dp_size, const std::function<int(int)>& rank_body) {
  std::vector<pid_t> pids;
  for (int r = 0; r < dp_size; ++r) {
    const pid_t pid = fork();
    if (pid == 0) _exit(rank_body(r));
    pids.push_back(pid);
  }
  std::vector<int> codes;
  for (pid_t pid : pids) {
    int status = 0;
    waitpid(pid, &status, 0);
    codes.push_back(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
  }
  return codes;
}

#define RANK_CHECK(cond, code, ...)                                  \
  do {                                                               \
    if (!(cond)) {                                                   \
      fprintf(stderr, "rank check %d failed: %s: ", code, #cond);    \
      fprintf(stderr, __VA_ARGS__);                                  \
      fprintf(stderr, " (dp_last_error: %s)\n", dp_last_error());    \
      return code;                                                   \
    }                                                                \
  } while (0)

// The host path's answer for rank `rank` on every rank's request (`graphs`: the V2 table or
// NULL): dp_make_slot of each, then dp_decide_slots; `out` receives the array.
dp_status HostPath(const std::vector<dp_batch_request>& reqs, int rank, const dp_graphs* graphs,
                   std::vector<int32_t>* out, dp_batch_result* res) {
  dp_decide_options opts;
  dp_decide_options_init(&opts);
  opts.graphs = graphs;
  std::vector<dp_slot> slots(reqs.size());
  for (size_t r = 0; r < reqs.size(); ++r) dp_make_slot(&reqs[r], &opts, &slots[r]);
  out->assign(reqs.size(), -777);
  dp_batch_result_init(res);
  return dp_decide_slots(slots.data(), static_cast<int32_t>(reqs.size()), rank, &opts,
                         out->data(), res);
}

// The first field in which the group's result differs from the host path's ("" when none):
// every decided field, the straggler report aside (its times are each exchange's own).
std::string Differs(const dp_batch_result& got, const dp_batch_result& want,
                    const std::vector<int32_t>& want_array) {
  struct Field {
    const char* name;
    int64_t got, want;
  };
  const Field fields[] = {
      {"should_ubatch", got.should_ubatch, want.should_ubatch},
      {"should_dp_pad", got.should_dp_pad, want.should_dp_pad},
      {"has_num_tokens_after_padding", got.has_num_tokens_after_padding,
       want.has_num_tokens_after_padding},
      {"synced_cudagraph_mode", got.synced_cudagraph_mode, want.synced_cudagraph_mode},
      {"dp_rank", got.dp_rank, want.dp_rank},
      {"dp_size", got.dp_size, want.dp_size},
      {"num_tokens_after_padding_self", got.num_tokens_after_padding_self,
       want.num_tokens_after_padding_self},
      {"max_num_tokens_padded", got.max_num_tokens_padded, want.max_num_tokens_padded},
      {"min_num_tokens_unpadded", got.min_num_tokens_unpadded, want.min_num_tokens_unpadded},
      {"step_id", got.step_id, want.step_id},
      {"idle", got.idle, want.idle},
      {"local", got.local, want.local},
      {"eager", got.eager, want.eager},
      {"skip_drafts", got.skip_drafts, want.skip_drafts},
      {"graph_mode", got.graph_mode, want.graph_mode},
      {"graph_num_tokens", got.graph_num_tokens, want.graph_num_tokens},
      {"graph_num_reqs", got.graph_num_reqs, want.graph_num_reqs},
      {"graph_uniform_token_count", got.graph_uniform_token_count,
       want.graph_uniform_token_count},
      {"graph_max_query_len", got.graph_max_query_len, want.graph_max_query_len},
      {"num_ubatches", got.num_ubatches, want.num_ubatches},
      {"agreed_uniform_token_count", got.agreed_uniform_token_count,
       want.agreed_uniform_token_count},
      {"agreed_max_query_len", got.agreed_max_query_len, want.agreed_max_query_len},
      {"max_num_reqs", got.max_num_reqs, want.max_num_reqs},
      {"rules", got.rules, want.rules},
      {"device array", got.num_tokens_after_padding_device != nullptr, 0},
      {"last_rank in range", got.last_rank >= 0 && got.last_rank < got.dp_size, 1},
  };
  for (const Field& f : fields) {
    if (f.got != f.want) {
      return std::string(f.name) + " = " + std::to_string(f.got) + ", the host path gives " +
             std::to_string(f.want);
    }
  }
  if (got.has_num_tokens_after_padding) {
    for (int r = 0; r < got.dp_size; ++r) {
      if (got.num_tokens_after_padding[r] != want_array[static_cast<size_t>(r)]) {
        return "num_tokens_after_padding[" + std::to_string(r) + "] = " +
               std::to_string(got.num_tokens_after_padding[r]) + ", the host path gives " +
               std::to_string(want_array[static_cast<size_t>(r)]);
      }
    }
  }
  return "";
}

// One rank of `steps` steps, each checked against the host path on the same requests:
// `requests(step)` gives every rank's request, `graphs` the V2 table (set on the group from a
// handle the rank destroys at once: the group keeps its own reference).
int HostPathStepsRank(const std::string& name, int dp_size, int rank, int steps,
                      const std::function<std::vector<dp_batch_request>(int)>& requests,
                      const dp_graph_table* table) {
  dp_host_group* g = nullptr;
  dp_status s = dp_host_group_open(name.c_str(), dp_size, rank, 20000, &g);
  RANK_CHECK(s == DP_OK, 1, "open: %s", dp_status_string(s));
  dp_graphs* graphs = nullptr;
  if (table != nullptr) {
    dp_graphs* set = nullptr;
    RANK_CHECK(dp_graphs_create(table, &set) == DP_OK, 2, "dp_graphs_create");
    RANK_CHECK(dp_host_group_set_graphs(g, set) == DP_OK, 3, "set_graphs");
    RANK_CHECK(dp_graphs_destroy(set) == DP_OK, 4, "destroy");
    RANK_CHECK(dp_graphs_create(table, &graphs) == DP_OK, 5, "dp_graphs_create");
  }
  std::vector<int32_t> want_array;
  int ok = 0;
  for (int step = 0; step < steps; ++step) {
    const std::vector<dp_batch_request> reqs = requests(step);
    dp_batch_result want;
    const dp_status want_status = HostPath(reqs, rank, graphs, &want_array, &want);
    dp_batch_result got;
    dp_batch_result_init(&got);
    s = dp_host_group_coordinate(g, &reqs[static_cast<size_t>(rank)], &got);
    RANK_CHECK(s == want_status, 6, "step %d: %s, the host path gives %s", step,
               dp_status_string(s), dp_status_string(want_status));
    if (s != DP_OK) continue;
    ++ok;
    const std::string differs = Differs(got, want, want_array);
    RANK_CHECK(differs.empty(), 7, "step %d: %s", step, differs.c_str());
  }
  RANK_CHECK(ok > steps / 2, 8, "only %d of %d steps decided", ok, steps);
  RANK_CHECK(dp_graphs_destroy(graphs) == DP_OK, 9, "destroy");
  RANK_CHECK(dp_host_group_close(g) == DP_OK, 10, "close");
  return 0;
}

// Random V2 requests of one step under example table 0 (FULL_AND_PIECEWISE, 64 sequences):
// decodes, prefills, nothing; now and then a rank that needs eager.
std::vector<dp_batch_request> V2StepRequests(int dp_size, int step) {
  std::mt19937 rng(static_cast<unsigned>(step) * 2246822519u + 11u);
  const bool all_b = rng() % 2 == 0;
  std::vector<dp_batch_request> reqs(static_cast<size_t>(dp_size));
  for (dp_batch_request& r : reqs) {
    dp_batch_request_init(&r);
    r.rules = DP_RULES_VLLM_V2;
    const int32_t n = 1 + static_cast<int32_t>(rng() % 64);
    switch (rng() % 4) {
      case 0:  // uniform decode
        r.num_tokens_unpadded = n;
        r.num_reqs = n;
        r.uniform_token_count = 1;
        r.max_query_len = 1;
        break;
      case 1:  // prefill
        r.num_reqs = n;
        r.num_tokens_unpadded = n + static_cast<int32_t>(rng() % 300);
        break;
      case 2:  // nothing
        break;
      default:  // a larger prefill
        r.num_reqs = 1;
        r.num_tokens_unpadded = 1 + static_cast<int32_t>(rng() % 200);
    }
    r.allow_microbatching = all_b || rng() % 2 == 0;
    r.allow_skip_drafts = rng() % 2 == 0;
    r.need_eager = rng() % 20 == 0;
    r.timeout_ms = 20000;
    r.step_id = step + 1;
  }
  return reqs;
}

class HostGroupRanks : public ::testing::TestWithParam<int> {};

TEST_P(HostGroupRanks, EveryV1StepMatchesTheHostPath) {
  const int dp_size = GetParam();
  const std::string name = GroupName(("steps" + std::to_string(dp_size)).c_str());
  const std::vector<int> codes = RunRanks(dp_size, [&](int r) {
    return HostPathStepsRank(name, dp_size, r, 2000,
                             [&](int step) { return StepRequests(dp_size, step); }, nullptr);
  });
  for (int r = 0; r < dp_size; ++r) EXPECT_EQ(codes[r], 0) << "rank " << r;
  EXPECT_NE(access(("/dev/shm/dpcoord." + name).c_str(), F_OK), 0) << "the last rank out unlinks";
}

TEST_P(HostGroupRanks, EveryV2StepMatchesTheHostPath) {
  const int dp_size = GetParam();
  const std::string name = GroupName(("v2steps" + std::to_string(dp_size)).c_str());
  dp_graph_table table;
  dp_graph_table_init(&table);
  table.graphs = kV2Table0;
  table.num_graphs = static_cast<int32_t>(sizeof kV2Table0 / sizeof kV2Table0[0]);
  const std::vector<int> codes = RunRanks(dp_size, [&](int r) {
    return HostPathStepsRank(name, dp_size, r, 2000,
                             [&](int step) { return V2StepRequests(dp_size, step); }, &table);
  });
  for (int r = 0; r < dp_size; ++r) EXPECT_EQ(codes[r], 0) << "rank " << r;
}

INSTANTIATE_TEST_SUITE_P(DpSizes, HostGroupRanks, ::testing::Values(2, 4, 8));

TEST(HostGroup, InvalidRequestFailsEveryRankAndTheGroupGoesOn) {
  const std::string name = GroupName("invalid");
  const std::vector<int> codes = RunRanks(2, [&](int rank) {
    dp_host_group* g = nullptr;
    RANK_CHECK(dp_host_group_open(name.c_str(), 2, rank, 20000, &g) == DP_OK, 1, "open");
    dp_batch_request req;
    dp_batch_request_init(&req);
    req.num_tokens_unpadded = rank == 1 ? -3 : 10;
    dp_batch_result res;
    dp_batch_result_init(&res);
    dp_status s = dp_host_group_coordinate(g, &req, &res);
    RANK_CHECK(s == DP_ERR_INVALID_ARGUMENT, 2, "%s", dp_status_string(s));
    const std::string message = dp_last_error();
    RANK_CHECK(message.find(rank == 1 ? "-3" : "rank 1") != std::string::npos, 3, "%s",
               message.c_str());
    req.num_tokens_unpadded = 10 + rank;
    s = dp_host_group_coordinate(g, &req, &res);
    RANK_CHECK(s == DP_OK, 4, "%s", dp_status_string(s));
    RANK_CHECK(res.max_num_tokens_padded == 11 && res.min_num_tokens_unpadded == 10, 5, "decision");
    RANK_CHECK(dp_host_group_close(g) == DP_OK, 6, "close");
    return 0;
  });
  EXPECT_EQ(codes, (std::vector<int>{0, 0}));
}

TEST(HostGroup, PeerKilledIsPeerExitedNamingTheRank) {
  const std::string name = GroupName("killed");
  const std::vector<int> codes = RunRanks(2, [&](int rank) {
    dp_host_group* g = nullptr;
    RANK_CHECK(dp_host_group_open(name.c_str(), 2, rank, 20000, &g) == DP_OK, 1, "open");
    dp_batch_request req;
    dp_batch_request_init(&req);  // timeout_ms 0: waits forever, yet a dead peer ends it
    dp_batch_result res;
    dp_batch_result_init(&res);
    RANK_CHECK(dp_host_group_coordinate(g, &req, &res) == DP_OK, 2, "first step");
    if (rank == 1) kill(getpid(), SIGKILL);
    const dp_status s = dp_host_group_coordinate(g, &req, &res);
    RANK_CHECK(s == DP_ERR_PEER_EXITED, 3, "%s", dp_status_string(s));
    RANK_CHECK(std::string(dp_last_error()).find("rank 1") != std::string::npos, 4, "names it");
    RANK_CHECK(dp_host_group_coordinate(g, &req, &res) == DP_ERR_PEER_EXITED, 5, "fails fast");
    RANK_CHECK(dp_host_group_close(g) == DP_OK, 6, "close");
    return 0;
  });
  EXPECT_EQ(codes, (std::vector<int>{0, 128 + SIGKILL}));
  EXPECT_NE(access(("/dev/shm/dpcoord." + name).c_str(), F_OK), 0) << "the last rank out unlinks";
}

TEST(HostGroup, PeerThatStopsCallingIsTimeout) {
  const std::string name = GroupName("stops");
  const std::vector<int> codes = RunRanks(2, [&](int rank) {
    dp_host_group* g = nullptr;
    RANK_CHECK(dp_host_group_open(name.c_str(), 2, rank, 20000, &g) == DP_OK, 1, "open");
    dp_batch_request req;
    dp_batch_request_init(&req);
    req.timeout_ms = 200;
    dp_batch_result res;
    dp_batch_result_init(&res);
    if (rank == 1) {
      usleep(1000 * 1000);  // stops calling for a second
    } else {
      const dp_status s = dp_host_group_coordinate(g, &req, &res);
      RANK_CHECK(s == DP_ERR_TIMEOUT, 2, "%s", dp_status_string(s));
      RANK_CHECK(std::string(dp_last_error()).find("rank 1") != std::string::npos, 3, "names it");
    }
    // After the timeout the group is unusable on every rank, the late one included.
    const dp_status again = dp_host_group_coordinate(g, &req, &res);
    RANK_CHECK(again == DP_ERR_TIMEOUT, 4, "%s", dp_status_string(again));
    RANK_CHECK(dp_host_group_close(g) == DP_OK, 5, "close");
    return 0;
  });
  EXPECT_EQ(codes, (std::vector<int>{0, 0}));
}

// A rank that forks (a worker process, a subprocess launcher) and whose child uses the handle
// it inherited: its coordinate is refused, its close is local, and the parent's rank steps on.
TEST(HostGroup, CloseInAForkedChildLeavesTheParentsRank) {
  const std::string name = GroupName("forkclose");
  const std::vector<int> codes = RunRanks(2, [&](int rank) {
    dp_host_group* g = nullptr;
    RANK_CHECK(dp_host_group_open(name.c_str(), 2, rank, 20000, &g) == DP_OK, 1, "open");
    dp_batch_request req;
    dp_batch_request_init(&req);
    req.timeout_ms = 20000;
    dp_batch_result res;
    dp_batch_result_init(&res);
    RANK_CHECK(dp_host_group_coordinate(g, &req, &res) == DP_OK, 2, "step before the fork");
    if (rank == 0) {
      const pid_t child = fork();
      if (child == 0) {
        // The child may not step as its parent's rank; its close only unmaps.
        const dp_status stepped = dp_host_group_coordinate(g, &req, &res);
        const bool refused =
            stepped == DP_ERR_INVALID_ARGUMENT &&
            std::string(dp_last_error()).find("across fork") != std::string::npos;
        _exit(!refused ? 2 : dp_host_group_close(g) == DP_OK ? 0 : 1);
      }
      int status = 0;
      RANK_CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) &&
                     WEXITSTATUS(status) == 0,
                 3, "the child's coordinate refused and close (wait status %#x)", status);
    }
    for (int step = 0; step < 3; ++step) {
      const dp_status s = dp_host_group_coordinate(g, &req, &res);
      RANK_CHECK(s == DP_OK, 4, "step %d after the fork: %s", step, dp_status_string(s));
    }
    RANK_CHECK(dp_host_group_close(g) == DP_OK, 5, "close");
    return 0;
  });
  EXPECT_EQ(codes, (std::vector<int>{0, 0}));
  EXPECT_NE(access(("/dev/shm/dpcoord." + name).c_str(), F_OK), 0) << "the last rank out unlinks";
}

TEST(HostGroup, BadArgumentsAreInvalid) {
  dp_host_group* g = nullptr;
  EXPECT_EQ(dp_host_group_open(nullptr, 2, 0, 100, &g), DP_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(dp_host_group_open("a/b", 2, 0, 100, &g), DP_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(dp_last_error()).find("name"), std::string::npos);
  EXPECT_EQ(dp_host_group_open("ok", 0, 0, 100, &g), DP_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(dp_host_group_open("ok", 2, 2, 100, &g), DP_ERR_INVALID_ARGUMENT);
  EXPECT_NE(std::string(dp_last_error()).find("dp_rank = 2"), std::string::npos);
  EXPECT_EQ(dp_host_group_open("ok", 2, 0, 100, nullptr), DP_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(g, nullptr);
  EXPECT_EQ(dp_host_group_close(nullptr), DP_ERR_INVALID_ARGUMENT);
  dp_batch_result res;
  dp_batch_result_init(&res);
  EXPECT_EQ(dp_host_group_coordinate(nullptr, nullptr, &res), DP_ERR_INVALID_ARGUMENT);
  EXPECT_EQ(dp_host_group_set_graphs(nullptr, nullptr), DP_ERR_INVALID_ARGUMENT);
}

TEST(HostGroup, OneRankDecidesAlone) {
  dp_host_group* g = nullptr;
  ASSERT_EQ(dp_host_group_open(GroupName("solo").c_str(), 1, 0, 100, &g), DP_OK);
  dp_batch_request req;
  dp_batch_request_init(&req);
  req.num_tokens_unpadded = 7;
  req.cudagraph_mode = DP_CUDAGRAPH_FULL;
  dp_batch_result res;
  dp_batch_result_init(&res);
  ASSERT_EQ(dp_host_group_coordinate(g, &req, &res), DP_OK) << dp_last_error();
  EXPECT_FALSE(res.has_num_tokens_after_padding);
  EXPECT_EQ(res.num_tokens_after_padding_self, 7);
  EXPECT_EQ(res.synced_cudagraph_mode, DP_CUDAGRAPH_FULL);
  EXPECT_EQ(dp_host_group_close(g), DP_OK);
}

// VLLM_V2.md's worked examples through the group, one process per rank (cpp_tests/common:
// generated from the Rust examples, which hold every field to vLLM 0.34.0's own outputs): every
// rank's result and array must be the example's. The host group has no dead ranks (a peer that
// is gone is DP_ERR_PEER_EXITED), so the examples with a dead rank are not instantiated here;
// cpp_tests/cpu replays them on the host path.
dp_batch_request ExampleRequest(const V2Example& e, const V2Rank& k) {
  dp_batch_request req;
  dp_batch_request_init(&req);
  req.rules = DP_RULES_VLLM_V2;
  req.num_tokens_unpadded = k.num_tokens;
  req.num_reqs = k.num_reqs;
  req.uniform_token_count = k.uniform_token_count;
  req.max_query_len = k.max_query_len;
  req.allow_microbatching = k.allow_microbatching != 0;
  req.allow_skip_drafts = k.allow_skip_drafts != 0;
  req.need_eager = k.need_eager != 0;
  req.num_active_loras = k.num_active_loras;
  req.ubatch.enabled = e.ubatch[0] != 0;
  req.ubatch.num_ubatches = e.ubatch[1];
  req.ubatch.decode_token_threshold = e.ubatch[2];
  req.ubatch.prefill_token_threshold = e.ubatch[3];
  req.timeout_ms = 20000;
  req.step_id = 11;
  return req;
}

// One rank of example `e`: its request through the group with the example's table; the result
// must be the example's (descriptor, agreement, array).
int ExampleRank(const V2Example& e, const std::string& name, int rank) {
  const V2Rank& k = e.ranks[rank];
  dp_host_group* g = nullptr;
  RANK_CHECK(dp_host_group_open(name.c_str(), e.dp_size, rank, 20000, &g) == DP_OK, 1, "open");
  if (e.with_table) {
    dp_graph_table t;
    dp_graph_table_init(&t);
    t.graphs = e.graphs;
    t.num_graphs = e.num_graphs;
    t.decode_query_len = e.decode_query_len;
    dp_graphs* graphs = nullptr;
    RANK_CHECK(dp_graphs_create(&t, &graphs) == DP_OK, 2, "dp_graphs_create");
    RANK_CHECK(dp_host_group_set_graphs(g, graphs) == DP_OK, 3, "set_graphs");
    RANK_CHECK(dp_graphs_destroy(graphs) == DP_OK, 4, "destroy (the group keeps its own)");
  }
  const dp_batch_request req = ExampleRequest(e, k);
  dp_batch_result res;
  dp_batch_result_init(&res);
  const dp_status s = dp_host_group_coordinate(g, &req, &res);
  RANK_CHECK(s == DP_OK, 5, "%s", dp_status_string(s));
  const int32_t graph[6] = {res.graph_mode,          res.graph_num_tokens,
                            res.graph_num_reqs,      res.graph_uniform_token_count,
                            res.graph_max_query_len, res.num_ubatches};
  for (int i = 0; i < 6; ++i) {
    RANK_CHECK(graph[i] == k.graph[i], 6, "descriptor word %d = %d, the example has %d", i,
               graph[i], k.graph[i]);
  }
  const int32_t got[] = {res.idle,
                         res.eager,
                         res.skip_drafts,
                         res.should_dp_pad,
                         res.has_num_tokens_after_padding,
                         res.agreed_uniform_token_count,
                         res.agreed_max_query_len,
                         res.max_num_reqs,
                         res.num_tokens_after_padding_self,
                         res.max_num_tokens_padded,
                         res.rules,
                         static_cast<int32_t>(res.step_id)};
  const int32_t want[] = {k.idle,
                          k.eager,
                          k.skip_drafts,
                          k.padded,
                          k.has_array,
                          k.agreed_uniform_token_count,
                          k.agreed_max_query_len,
                          k.max_num_reqs,
                          k.num_tokens_self,
                          k.max_num_tokens,
                          DP_RULES_VLLM_V2,
                          11};
  for (size_t i = 0; i < sizeof got / sizeof got[0]; ++i) {
    RANK_CHECK(got[i] == want[i], 7, "agreement field %zu = %d, the example has %d", i, got[i],
               want[i]);
  }
  for (int r = 0; res.has_num_tokens_after_padding && r < e.dp_size; ++r) {
    RANK_CHECK(res.num_tokens_after_padding[r] == k.array[r], 8, "array[%d] = %d, want %d", r,
               res.num_tokens_after_padding[r], k.array[r]);
  }
  RANK_CHECK(res.last_rank >= 0 && res.last_rank < e.dp_size, 9, "last_rank %d", res.last_rank);
  RANK_CHECK(dp_host_group_close(g) == DP_OK, 10, "close");
  return 0;
}

// The examples whose ranks are all live.
std::vector<int> LiveExamples() {
  std::vector<int> live;
  for (int i = 0; i < static_cast<int>(sizeof kV2Examples / sizeof kV2Examples[0]); ++i) {
    bool all = true;
    for (int r = 0; r < kV2Examples[i].dp_size; ++r) all = all && kV2Examples[i].ranks[r].live;
    if (all) live.push_back(i);
  }
  return live;
}

class HostGroupV2Examples : public ::testing::TestWithParam<int> {};

TEST_P(HostGroupV2Examples, EveryRankGetsTheExamplesResult) {
  const V2Example& e = kV2Examples[GetParam()];
  const std::string name = GroupName(("v2ex" + std::to_string(GetParam())).c_str());
  const std::vector<int> codes =
      RunRanks(e.dp_size, [&](int r) { return ExampleRank(e, name, r); });
  for (int r = 0; r < e.dp_size; ++r) EXPECT_EQ(codes[r], 0) << e.name << ", rank " << r;
}

std::string ExampleName(const ::testing::TestParamInfo<int>& info) {
  std::string name = kV2Examples[info.param].name;
  for (char& c : name) {
    if (c == '/') c = '_';
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(VllmV2, HostGroupV2Examples, ::testing::ValuesIn(LiveExamples()),
                         ExampleName);

// Rank 2 passes another setting than ranks 0 and 1 (pad policy, num_ubatches, rule set, graph
// table): every rank fails with DP_ERR_INCONSISTENT_RANKS naming the setting, and the next
// step, with one setting everywhere, decides.
TEST(HostGroup, DifferingSettingsFailEveryRank) {
  const std::string name = GroupName("settings");
  const std::vector<int> codes = RunRanks(3, [&](int rank) {
    dp_host_group* g = nullptr;
    RANK_CHECK(dp_host_group_open(name.c_str(), 3, rank, 20000, &g) == DP_OK, 1, "open");
    dp_graph_table t0, t1;
    dp_graph_table_init(&t0);
    t0.graphs = kV2Table0;
    t0.num_graphs = static_cast<int32_t>(sizeof kV2Table0 / sizeof kV2Table0[0]);
    dp_graph_table_init(&t1);
    t1.graphs = kV2Table1;
    t1.num_graphs = static_cast<int32_t>(sizeof kV2Table1 / sizeof kV2Table1[0]);
    dp_graphs* graphs[2] = {nullptr, nullptr};
    RANK_CHECK(dp_graphs_create(&t0, &graphs[0]) == DP_OK, 2, "table 0");
    RANK_CHECK(dp_graphs_create(&t1, &graphs[1]) == DP_OK, 3, "table 1");
    dp_batch_request v1;
    dp_batch_request_init(&v1);
    v1.num_tokens_unpadded = 10 + rank;
    v1.timeout_ms = 20000;
    dp_batch_request v2 = v1;
    v2.rules = DP_RULES_VLLM_V2;
    v2.num_reqs = 2;
    const bool odd = rank == 2;
    struct Case {
      const char* needle;
      dp_batch_request req;
      const dp_graphs* table;
    };
    dp_batch_request pad = v1, ub = v1;
    pad.pad_policy = odd ? 1 : 0;
    ub.ubatch.enabled = true;
    ub.ubatch.num_ubatches = odd ? 3 : 2;
    const Case cases[] = {
        {"pad_policy differs: rank 0 has 0, rank 2 has 1", pad, nullptr},
        {"num_ubatches (0: microbatching disabled) differs: rank 0 has 2, rank 2 has 3", ub,
         nullptr},
        {"rules differs: rank 0 has 0, rank 2 has 1", odd ? v2 : v1, nullptr},
        {"graph table (hash) differs", v2, graphs[odd ? 1 : 0]},
    };
    for (const Case& c : cases) {
      RANK_CHECK(dp_host_group_set_graphs(g, c.table) == DP_OK, 4, "set_graphs");
      dp_batch_result res;
      dp_batch_result_init(&res);
      const dp_status s = dp_host_group_coordinate(g, &c.req, &res);
      RANK_CHECK(s == DP_ERR_INCONSISTENT_RANKS, 5, "%s: %s", c.needle, dp_status_string(s));
      RANK_CHECK(std::string(dp_last_error()).find(c.needle) != std::string::npos, 6,
                 "does not name \"%s\"", c.needle);
      RANK_CHECK(dp_host_group_set_graphs(g, nullptr) == DP_OK, 7, "set_graphs");
      RANK_CHECK(dp_host_group_coordinate(g, &v1, &res) == DP_OK, 8, "after %s", c.needle);
      RANK_CHECK(res.max_num_tokens_padded == 12, 9, "the decision after %s", c.needle);
    }
    for (dp_graphs* h : graphs) RANK_CHECK(dp_graphs_destroy(h) == DP_OK, 10, "destroy");
    RANK_CHECK(dp_host_group_close(g) == DP_OK, 11, "close");
    return 0;
  });
  EXPECT_EQ(codes, (std::vector<int>{0, 0, 0}));
}

}  // namespace
