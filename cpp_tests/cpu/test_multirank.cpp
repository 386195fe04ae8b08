// A simulated multi-rank run of the host-transport path: one thread per rank, each makes its
// record from a seeded random request, the records are "allgathered" through shared memory
// (a barrier), every rank calls dp_decide_batch, and all ranks must reach the same decision
// (the reference model's).
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "test_util.h"

namespace {

// std::barrier is C++20; this is the C++17 equivalent (reusable).
class Barrier {
 public:
  explicit Barrier(int count) : count_(count) {}
  void Wait() {
    std::unique_lock<std::mutex> lock(mu_);
    const long generation = generation_;
    if (++arrived_ == count_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
    } else {
      cv_.wait(lock, [&] { return generation != generation_; });
    }
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  const int count_;
  int arrived_ = 0;
  long generation_ = 0;
};

// What every rank of one step shares: the same policy and microbatching configuration.
struct StepConfig {
  int32_t pad_policy;
  bool allow_dp_padding;  // identical across ranks unless `mixed_pad_flags`
  bool mixed_pad_flags;
  dp_ubatch_config ubatch;
  int32_t token_scale;  // ranks schedule between half of it and all of it (or, rarely, 0)
};

// Everything about a step follows from (seed, step): a failure message names them.
StepConfig StepConfigFor(uint32_t seed, int step) {
  std::mt19937 rng(seed * 7919u + static_cast<uint32_t>(step));
  // Thresholds from 4 = the largest num_ubatches: 0.2 requires both >= num_ubatches.
  std::uniform_int_distribution<int> bit(0, 1), n(2, 4), dec(4, 64), pre(4, 1024);
  StepConfig c;
  c.pad_policy = bit(rng);
  c.allow_dp_padding = bit(rng) == 1;
  c.mixed_pad_flags = false;
  c.ubatch.enabled = bit(rng) == 1 || bit(rng) == 1;  // mostly enabled
  c.ubatch.num_ubatches = n(rng);
  c.ubatch.decode_token_threshold = dec(rng);
  c.ubatch.prefill_token_threshold = pre(rng);
  const int32_t scales[] = {16, 128, 1024, 8192};
  c.token_scale = scales[std::uniform_int_distribution<int>(0, 3)(rng)];
  return c;
}

// Rank `rank`'s request at `step`: a function of (seed, step, rank) only.
dp_batch_request RequestFor(uint32_t seed, int step, int rank, const StepConfig& c) {
  std::mt19937 rng(seed ^ (static_cast<uint32_t>(step) * 2654435761u) ^
                   (static_cast<uint32_t>(rank) * 40503u));
  std::uniform_int_distribution<int> bit(0, 1), mode(0, 2), extra(0, 32), idle(0, 15),
      tokens(c.token_scale / 2, c.token_scale);
  dp_batch_request req;
  dp_batch_request_init(&req);
  req.num_tokens_unpadded = idle(rng) == 0 ? 0 : tokens(rng);
  req.num_tokens_padded = bit(rng) ? -1 : req.num_tokens_unpadded + extra(rng);
  req.allow_microbatching = bit(rng) == 1 || bit(rng) == 1;
  req.uniform_decode = bit(rng);
  if (!req.allow_microbatching && bit(rng) == 1) req.uniform_decode = -1;
  req.cudagraph_mode = mode(rng);
  req.pad_policy = c.pad_policy;
  req.ubatch = c.ubatch;
  req.allow_dp_padding = c.mixed_pad_flags ? (rank % 2 == 0) : c.allow_dp_padding;
  return req;
}

struct RankOutcome {
  dp_status status = DP_ERR_INTERNAL;
  dp_batch_result result{};
  std::vector<int32_t> array;
  std::string last_error;
};

// Runs `steps` steps on `ranks` threads; returns outcomes[step][rank] and the records.
void Simulate(uint32_t seed, int ranks, int steps, bool mixed_pad_flags,
              std::vector<std::vector<RankOutcome>>* outcomes,
              std::vector<std::vector<dp_rank_record>>* records) {
  outcomes->assign(static_cast<size_t>(steps), std::vector<RankOutcome>(static_cast<size_t>(ranks)));
  records->assign(static_cast<size_t>(steps), std::vector<dp_rank_record>(static_cast<size_t>(ranks)));
  Barrier barrier(ranks);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < ranks; ++rank) {
    threads.emplace_back([&, rank] {
      for (int step = 0; step < steps; ++step) {
        StepConfig c = StepConfigFor(seed, step);
        if (mixed_pad_flags) {
          c.pad_policy = DP_PAD_POLICY_EXPLICIT;
          c.mixed_pad_flags = true;
        }
        const dp_batch_request req = RequestFor(seed, step, rank, c);
        std::vector<dp_rank_record>& all = (*records)[static_cast<size_t>(step)];
        RankOutcome& out = (*outcomes)[static_cast<size_t>(step)][static_cast<size_t>(rank)];
        // Local step, then the "allgather": write own slot, wait for everyone.
        const dp_status made = dp_make_record(&req, &all[static_cast<size_t>(rank)]);
        barrier.Wait();
        if (made != DP_OK) {
          out.status = made;
          out.last_error = dp_last_error();
          barrier.Wait();
          continue;
        }
        out.array.assign(static_cast<size_t>(ranks), dpt::kPoison32);
        out.result = dpt::PoisonedResult();
        out.status = dp_decide_batch(all.data(), ranks, rank, c.pad_policy,
                                     c.ubatch.enabled ? c.ubatch.num_ubatches : 2,
                                     out.array.data(), &out.result);
        if (out.status != DP_OK) out.last_error = dp_last_error();
        barrier.Wait();  // nobody rewrites the records while another rank still reads them
      }
    });
  }
  for (std::thread& t : threads) t.join();
}

class MultiRank : public ::testing::TestWithParam<int> {};

TEST_P(MultiRank, EveryRankReachesTheSameDecision) {
  const int ranks = GetParam();
  const int steps = ranks >= 64 ? 25 : 100;
  for (uint32_t seed : {1u, 42u, 20251129u}) {
    std::vector<std::vector<RankOutcome>> outcomes;
    std::vector<std::vector<dp_rank_record>> records;
    Simulate(seed, ranks, steps, /*mixed_pad_flags=*/false, &outcomes, &records);
    int ubatched = 0, padded = 0;
    for (int step = 0; step < steps; ++step) {
      SCOPED_TRACE("seed " + std::to_string(seed) + ", step " + std::to_string(step) + ", " +
                   std::to_string(ranks) + " ranks");
      const StepConfig c = StepConfigFor(seed, step);
      const std::vector<RankOutcome>& o = outcomes[static_cast<size_t>(step)];
      for (int rank = 0; rank < ranks; ++rank) {
        const RankOutcome& mine = o[static_cast<size_t>(rank)];
        ASSERT_EQ(dpt::Name(DP_OK), dpt::Name(mine.status)) << "rank " << rank << ": "
                                                            << mine.last_error;
        const int32_t n = c.ubatch.enabled ? c.ubatch.num_ubatches : 2;
        const dpt::Expected e = dpt::Reference(records[static_cast<size_t>(step)], rank,
                                               c.pad_policy, n);
        ASSERT_TRUE(dpt::Matches(e, mine.result, mine.array.data(), rank, ranks))
            << "rank " << rank;
        // Agreement with rank 0 (beyond the model): identical arrays and shared scalars.
        const RankOutcome& first = o[0];
        EXPECT_EQ(mine.array, first.array);
        EXPECT_EQ(mine.result.should_ubatch, first.result.should_ubatch);
        EXPECT_EQ(mine.result.should_dp_pad, first.result.should_dp_pad);
        EXPECT_EQ(mine.result.synced_cudagraph_mode, first.result.synced_cudagraph_mode);
        EXPECT_EQ(mine.result.max_num_tokens_padded, first.result.max_num_tokens_padded);
        EXPECT_EQ(mine.result.min_num_tokens_unpadded, first.result.min_num_tokens_unpadded);
      }
      ubatched += o[0].result.should_ubatch ? 1 : 0;
      padded += o[0].result.should_dp_pad ? 1 : 0;
    }
    // The generated steps exercise both outcomes of the padding rule.
    EXPECT_GT(padded, 0) << "seed " << seed;
    EXPECT_LT(padded, steps) << "seed " << seed;
    if (ranks <= 4) {
      EXPECT_GT(ubatched, 0) << "seed " << seed;
    }
  }
}

TEST_P(MultiRank, DifferingPadFlagsUnderExplicitFailEveryRank) {
  const int ranks = GetParam();
  std::vector<std::vector<RankOutcome>> outcomes;
  std::vector<std::vector<dp_rank_record>> records;
  Simulate(7u, ranks, 5, /*mixed_pad_flags=*/true, &outcomes, &records);
  for (size_t step = 0; step < outcomes.size(); ++step) {
    for (int rank = 0; rank < ranks; ++rank) {
      const RankOutcome& mine = outcomes[step][static_cast<size_t>(rank)];
      EXPECT_EQ(dpt::Name(DP_ERR_INCONSISTENT_RANKS), dpt::Name(mine.status))
          << "step " << step << ", rank " << rank;
      EXPECT_NE(mine.last_error.find("should_attempt_dp_pad"), std::string::npos)
          << mine.last_error;
      EXPECT_TRUE(dpt::IsPoisoned(mine.result)) << "result written on failure";
      for (int32_t v : mine.array) EXPECT_EQ(v, dpt::kPoison32);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Ranks, MultiRank, ::testing::Values(2, 4, 8, 64),
                         [](const ::testing::TestParamInfo<int>& info) {
                           return std::to_string(info.param) + "ranks";
                         });

}  // namespace
