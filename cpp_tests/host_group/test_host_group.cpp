// The host shared-memory group through the C API, one process per rank (fork): every rank's
// result checked against dp_decide_batch on the same records, an invalid request failing on
// every rank, a peer killed with SIGKILL, a peer that stops calling, a forked child closing
// its inherited handle, bad arguments.
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

// One rank of `steps` random steps, each checked against dp_decide_batch on the records
// dp_make_record makes of every rank's request.
int RandomStepsRank(const std::string& name, int dp_size, int rank, int steps) {
  dp_host_group* g = nullptr;
  dp_status s = dp_host_group_open(name.c_str(), dp_size, rank, 20000, &g);
  RANK_CHECK(s == DP_OK, 1, "open: %s", dp_status_string(s));
  std::vector<dp_rank_record> records(static_cast<size_t>(dp_size));
  std::vector<int32_t> want_tokens(static_cast<size_t>(dp_size));
  for (int step = 0; step < steps; ++step) {
    const std::vector<dp_batch_request> reqs = StepRequests(dp_size, step);
    for (int r = 0; r < dp_size; ++r) {
      RANK_CHECK(dp_make_record(&reqs[r], &records[r]) == DP_OK, 2, "record %d", r);
    }
    dp_batch_result want;
    dp_batch_result_init(&want);
    const dp_status want_status =
        dp_decide_batch(records.data(), dp_size, rank, reqs[0].pad_policy,
                        reqs[0].ubatch.num_ubatches, want_tokens.data(), &want);
    dp_batch_result got;
    dp_batch_result_init(&got);
    s = dp_host_group_coordinate(g, &reqs[rank], &got);
    RANK_CHECK(s == want_status, 3, "step %d: %s, want %s", step, dp_status_string(s),
               dp_status_string(want_status));
    if (s != DP_OK) continue;
    RANK_CHECK(got.should_ubatch == want.should_ubatch && got.should_dp_pad == want.should_dp_pad &&
                   got.synced_cudagraph_mode == want.synced_cudagraph_mode &&
                   got.num_tokens_after_padding_self == want.num_tokens_after_padding_self &&
                   got.max_num_tokens_padded == want.max_num_tokens_padded &&
                   got.min_num_tokens_unpadded == want.min_num_tokens_unpadded &&
                   got.step_id == step + 1 && got.num_tokens_after_padding_device == nullptr,
               4, "step %d: a different decision", step);
    RANK_CHECK(got.has_num_tokens_after_padding && got.num_tokens_after_padding != nullptr, 5,
               "step %d: no host array", step);
    for (int r = 0; r < dp_size; ++r) {
      RANK_CHECK(got.num_tokens_after_padding[r] == want_tokens[r], 6, "step %d rank %d", step, r);
    }
  }
  RANK_CHECK(dp_host_group_close(g) == DP_OK, 7, "close");
  return 0;
}

class HostGroupRanks : public ::testing::TestWithParam<int> {};

TEST_P(HostGroupRanks, EveryStepMatchesDecideBatch) {
  const int dp_size = GetParam();
  const std::string name = GroupName(("steps" + std::to_string(dp_size)).c_str());
  const std::vector<int> codes =
      RunRanks(dp_size, [&](int r) { return RandomStepsRank(name, dp_size, r, 2000); });
  for (int r = 0; r < dp_size; ++r) EXPECT_EQ(codes[r], 0) << "rank " << r;
  EXPECT_NE(access(("/dev/shm/dpcoord." + name).c_str(), F_OK), 0) << "the last rank out unlinks";
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

// A rank that forks (a worker process, a subprocess launcher) and whose child closes the
// handle it inherited: the child's close is local, and the parent's rank steps on.
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
      if (child == 0) _exit(dp_host_group_close(g) == DP_OK ? 0 : 1);
      int status = 0;
      RANK_CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) &&
                     WEXITSTATUS(status) == 0,
                 3, "the child's close (wait status %#x)", status);
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

}  // namespace
