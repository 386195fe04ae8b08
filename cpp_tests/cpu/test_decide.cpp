// dp_decide_batch: every rule of docs/ARCHITECTURE.md, "Semantics", "The decision".
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "test_util.h"

using dpt::LastErrorMentions;
using dpt::Rec;

namespace {

constexpr int32_t kExplicit = DP_PAD_POLICY_EXPLICIT;
constexpr int32_t kWhenCudagraph = DP_PAD_POLICY_WHEN_CUDAGRAPH;

// One successful decision with an out array, checked against the reference model.
struct Decided {
  dp_batch_result result;
  std::vector<int32_t> array;
};

Decided DecideOk(const std::vector<dp_rank_record>& recs, int32_t rank, int32_t policy,
                 int32_t n = 2) {
  Decided d;
  d.result = dpt::PoisonedResult();
  d.array.assign(recs.size(), dpt::kPoison32);
  const int32_t size = static_cast<int32_t>(recs.size());
  const dp_status s =
      dp_decide_batch(recs.data(), size, rank, policy, n, d.array.data(), &d.result);
  EXPECT_EQ(dpt::Name(DP_OK), dpt::Name(s)) << dp_last_error();
  if (s == DP_OK) {
    EXPECT_TRUE(dpt::Matches(dpt::Reference(recs, rank, policy, n), d.result, d.array.data(),
                             rank, size));
  }
  return d;
}

// A failing call: the status, and neither the result nor the array touched.
void DecideFails(dp_status expected, const std::vector<dp_rank_record>& recs, int32_t size,
                 int32_t rank, int32_t policy, int32_t n) {
  dp_batch_result result = dpt::PoisonedResult();
  std::vector<int32_t> array(recs.empty() ? 1 : recs.size(), dpt::kPoison32);
  EXPECT_STATUS(expected, dp_decide_batch(recs.empty() ? nullptr : recs.data(), size, rank,
                                          policy, n, array.data(), &result));
  EXPECT_TRUE(dpt::IsPoisoned(result)) << "result written on failure";
  for (int32_t v : array) EXPECT_EQ(v, dpt::kPoison32) << "array written on failure";
}

// --- synced CUDA-graph mode ------------------------------------------------------------------

TEST(Decide, SyncedModeIsTheMinimum) {
  EXPECT_EQ(DecideOk({Rec(1, 1, 0, 0, 2), Rec(1, 1, 0, 0, 1), Rec(1, 1, 0, 0, 2)}, 0, kExplicit)
                .result.synced_cudagraph_mode,
            1);
  EXPECT_EQ(DecideOk({Rec(1, 1, 0, 0, 2), Rec(1, 1, 0, 0, 2)}, 1, kExplicit)
                .result.synced_cudagraph_mode,
            2);
  EXPECT_EQ(DecideOk({Rec(1, 1, 0, 0, 0), Rec(1, 1, 0, 0, 2)}, 1, kExplicit)
                .result.synced_cudagraph_mode,
            0);
}

// --- microbatching ---------------------------------------------------------------------------

// Two ranks: rank 0 has `min_unpadded` tokens, rank 1 has `max_padded` (padded = unpadded).
std::vector<dp_rank_record> UbatchPair(int32_t min_unpadded, int32_t max_padded) {
  return {Rec(min_unpadded, min_unpadded, 1, 0, 0), Rec(max_padded, max_padded, 1, 0, 0)};
}

TEST(Decide, UbatchBoundaryForTwoThreeFourUbatches) {
  for (int32_t n : {2, 3, 4}) {
    for (int32_t max_padded : {100, 101, 102, 103, 1000, 1023}) {
      const int32_t boundary = (max_padded / n) * (n - 1);  // last ubatch empty at >= this
      SCOPED_TRACE("n=" + std::to_string(n) + " max_padded=" + std::to_string(max_padded));
      // min_unpadded == boundary: the last microbatch would be empty -> no microbatching.
      EXPECT_FALSE(DecideOk(UbatchPair(boundary, max_padded), 0, kExplicit, n)
                       .result.should_ubatch);
      // one more token: microbatching.
      EXPECT_TRUE(DecideOk(UbatchPair(boundary + 1, max_padded), 0, kExplicit, n)
                      .result.should_ubatch);
    }
  }
}

TEST(Decide, UbatchBoundaryUsesIntegerDivision) {
  // max_padded 101, n 3: (101 / 3) * 2 = 66, while 101 * 2 / 3 = 67.33.
  EXPECT_TRUE(DecideOk(UbatchPair(67, 101), 0, kExplicit, 3).result.should_ubatch);
  EXPECT_FALSE(DecideOk(UbatchPair(66, 101), 0, kExplicit, 3).result.should_ubatch);
  // n 2 is vLLM's max_padded // 2 >= min_unpadded: 101 // 2 = 50.
  EXPECT_FALSE(DecideOk(UbatchPair(50, 101), 0, kExplicit, 2).result.should_ubatch);
  EXPECT_TRUE(DecideOk(UbatchPair(51, 101), 0, kExplicit, 2).result.should_ubatch);
}

TEST(Decide, UbatchBoundaryUsesMaxPaddedAndMinUnpadded) {
  // Rank 0: 60 unpadded padded to 200; rank 1: 100 / 100. max_padded 200, min_unpadded 60.
  const std::vector<dp_rank_record> recs = {Rec(60, 200, 1, 0, 0), Rec(100, 100, 1, 0, 0)};
  EXPECT_FALSE(DecideOk(recs, 0, kExplicit, 2).result.should_ubatch);  // 100 >= 60
  const std::vector<dp_rank_record> recs2 = {Rec(101, 200, 1, 0, 0), Rec(150, 150, 1, 0, 0)};
  EXPECT_TRUE(DecideOk(recs2, 0, kExplicit, 2).result.should_ubatch);  // 100 < 101
}

TEST(Decide, UbatchNeedsEveryRankToAttempt) {
  for (int32_t odd_rank = 0; odd_rank < 4; ++odd_rank) {
    std::vector<dp_rank_record> recs(4, Rec(1000, 1000, 1, 0, 0));
    EXPECT_TRUE(DecideOk(recs, 0, kExplicit).result.should_ubatch);
    recs[static_cast<size_t>(odd_rank)].should_attempt_ubatch = 0;
    EXPECT_FALSE(DecideOk(recs, 0, kExplicit).result.should_ubatch) << "odd rank " << odd_rank;
  }
}

TEST(Decide, UbatchWithZeroTokensIsNeverChosen) {
  // min_unpadded 0: (max / n) * (n - 1) >= 0 always holds.
  EXPECT_FALSE(DecideOk(UbatchPair(0, 0), 0, kExplicit).result.should_ubatch);
  EXPECT_FALSE(DecideOk(UbatchPair(0, 4096), 0, kExplicit).result.should_ubatch);
}

TEST(Decide, UbatchForcesPadding) {
  // EXPLICIT with no rank asking for padding, and WHEN_CUDAGRAPH with mode NONE: both pad.
  const std::vector<dp_rank_record> recs = {Rec(600, 600, 1, 0, 0), Rec(800, 1024, 1, 0, 0)};
  for (int32_t policy : {kExplicit, kWhenCudagraph}) {
    const Decided d = DecideOk(recs, 0, policy);
    EXPECT_TRUE(d.result.should_ubatch);
    EXPECT_TRUE(d.result.should_dp_pad);
    EXPECT_EQ(d.array, (std::vector<int32_t>{1024, 1024}));
    EXPECT_EQ(d.result.num_tokens_after_padding_self, 1024);
  }
}

// --- padding: EXPLICIT ---------------------------------------------------------------------

TEST(Decide, ExplicitAllPad) {
  const Decided d =
      DecideOk({Rec(10, 16, 0, 1, 0), Rec(30, 32, 0, 1, 0), Rec(5, 8, 0, 1, 0)}, 2, kExplicit);
  EXPECT_TRUE(d.result.should_dp_pad);
  EXPECT_EQ(d.array, (std::vector<int32_t>{32, 32, 32}));
  EXPECT_EQ(d.result.num_tokens_after_padding_self, 32);
  EXPECT_EQ(d.result.max_num_tokens_padded, 32);
  EXPECT_EQ(d.result.min_num_tokens_unpadded, 5);
}

TEST(Decide, ExplicitNonePad) {
  const Decided d =
      DecideOk({Rec(10, 16, 0, 0, 2), Rec(30, 32, 0, 0, 2), Rec(5, 8, 0, 0, 2)}, 2, kExplicit);
  EXPECT_FALSE(d.result.should_dp_pad);
  EXPECT_EQ(d.array, (std::vector<int32_t>{16, 32, 8}));  // each its own padded count
  EXPECT_EQ(d.result.num_tokens_after_padding_self, 8);
  EXPECT_EQ(d.result.max_num_tokens_padded, 32);
  EXPECT_EQ(d.result.min_num_tokens_unpadded, 5);
}

TEST(Decide, ExplicitMixedFlagsFailEveryRank) {
  const std::vector<dp_rank_record> recs = {Rec(10, 16, 0, 1, 0), Rec(30, 32, 0, 0, 0),
                                            Rec(5, 8, 0, 1, 0)};
  for (int32_t rank = 0; rank < 3; ++rank) {
    DecideFails(DP_ERR_INCONSISTENT_RANKS, recs, 3, rank, kExplicit, 2);
    EXPECT_TRUE(LastErrorMentions({"should_attempt_dp_pad"}));
  }
}

TEST(Decide, ExplicitMixedFlagsFailEvenWhenUbatchWouldForcePadding) {
  const std::vector<dp_rank_record> recs = {Rec(600, 600, 1, 1, 0), Rec(800, 800, 1, 0, 0)};
  DecideFails(DP_ERR_INCONSISTENT_RANKS, recs, 2, 0, kExplicit, 2);
  DecideFails(DP_ERR_INCONSISTENT_RANKS, recs, 2, 1, kExplicit, 2);
}

// --- padding: WHEN_CUDAGRAPH ---------------------------------------------------------------

TEST(Decide, WhenCudagraphPadsIffMinModeIsNotNone) {
  // Pad flags all set, min mode NONE: no padding.
  Decided d = DecideOk({Rec(10, 10, 0, 1, 2), Rec(20, 24, 0, 1, 0)}, 0, kWhenCudagraph);
  EXPECT_FALSE(d.result.should_dp_pad);
  EXPECT_EQ(d.array, (std::vector<int32_t>{10, 24}));
  // Pad flags all clear, min mode PIECEWISE: padding.
  d = DecideOk({Rec(10, 10, 0, 0, 2), Rec(20, 24, 0, 0, 1)}, 0, kWhenCudagraph);
  EXPECT_TRUE(d.result.should_dp_pad);
  EXPECT_EQ(d.array, (std::vector<int32_t>{24, 24}));
  // FULL everywhere: padding.
  d = DecideOk({Rec(10, 10, 0, 0, 2), Rec(20, 24, 0, 0, 2)}, 1, kWhenCudagraph);
  EXPECT_TRUE(d.result.should_dp_pad);
}

TEST(Decide, WhenCudagraphIgnoresMixedPadFlags) {
  Decided d = DecideOk({Rec(10, 10, 0, 1, 1), Rec(20, 24, 0, 0, 1)}, 1, kWhenCudagraph);
  EXPECT_TRUE(d.result.should_dp_pad);
  d = DecideOk({Rec(10, 10, 0, 1, 0), Rec(20, 24, 0, 0, 1)}, 1, kWhenCudagraph);
  EXPECT_FALSE(d.result.should_dp_pad);
}

// --- the per-rank array and the scalars ----------------------------------------------------

TEST(Decide, PerRankArrayAndSelfForEveryRank) {
  const std::vector<dp_rank_record> recs = {Rec(3, 4, 0, 0, 1), Rec(9, 12, 0, 0, 1),
                                            Rec(0, 0, 0, 0, 1), Rec(7, 7, 0, 0, 1)};
  for (int32_t rank = 0; rank < 4; ++rank) {
    const Decided d = DecideOk(recs, rank, kExplicit);
    EXPECT_EQ(d.array, (std::vector<int32_t>{4, 12, 0, 7}));
    EXPECT_EQ(d.result.num_tokens_after_padding_self, d.array[static_cast<size_t>(rank)]);
    EXPECT_EQ(d.result.dp_rank, rank);
    EXPECT_EQ(d.result.dp_size, 4);
    EXPECT_EQ(d.result.max_num_tokens_padded, 12);
    EXPECT_EQ(d.result.min_num_tokens_unpadded, 0);
    EXPECT_TRUE(d.result.has_num_tokens_after_padding);
    EXPECT_EQ(d.result.num_tokens_after_padding, d.array.data());
    EXPECT_EQ(d.result.num_tokens_after_padding_device, nullptr);
  }
}

TEST(Decide, NullArrayFillsOnlyTheScalars) {
  const std::vector<dp_rank_record> recs = {Rec(3, 4, 0, 1, 1), Rec(9, 12, 0, 1, 1)};
  dp_batch_result r = dpt::PoisonedResult();
  ASSERT_STATUS(DP_OK, dp_decide_batch(recs.data(), 2, 0, kExplicit, 2, nullptr, &r));
  EXPECT_FALSE(r.has_num_tokens_after_padding);
  EXPECT_EQ(r.num_tokens_after_padding, nullptr);
  EXPECT_EQ(r.num_tokens_after_padding_device, nullptr);
  EXPECT_TRUE(r.should_dp_pad);
  EXPECT_EQ(r.num_tokens_after_padding_self, 12);
  EXPECT_EQ(r.max_num_tokens_padded, 12);
  EXPECT_EQ(r.min_num_tokens_unpadded, 3);
  EXPECT_EQ(r.synced_cudagraph_mode, 1);
  EXPECT_EQ(r.dp_rank, 0);
  EXPECT_EQ(r.dp_size, 2);
}

TEST(Decide, RecordsAreNotModified) {
  const std::vector<dp_rank_record> recs = {Rec(3, 4, 1, 1, 1), Rec(90, 120, 1, 1, 2)};
  std::vector<dp_rank_record> copy = recs;
  std::vector<int32_t> out(2);
  dp_batch_result r;
  dp_batch_result_init(&r);
  ASSERT_STATUS(DP_OK, dp_decide_batch(copy.data(), 2, 1, kExplicit, 2, out.data(), &r));
  EXPECT_EQ(std::memcmp(copy.data(), recs.data(), sizeof(dp_rank_record) * 2), 0);
}

// --- dp_size == 1: vLLM's early exit -------------------------------------------------------

TEST(Decide, SingleRankNoExchange) {
  // Wants microbatching (with plenty of tokens), padding, FULL graphs: none of it is synced.
  for (int32_t policy : {kExplicit, kWhenCudagraph}) {
    const dp_rank_record own = Rec(700, 768, 1, 1, 2);
    int32_t array[1] = {dpt::kPoison32};
    dp_batch_result r = dpt::PoisonedResult();
    ASSERT_STATUS(DP_OK, dp_decide_batch(&own, 1, 0, policy, 2, array, &r));
    EXPECT_FALSE(r.should_ubatch);
    EXPECT_FALSE(r.should_dp_pad);
    EXPECT_FALSE(r.has_num_tokens_after_padding);
    EXPECT_EQ(r.num_tokens_after_padding, nullptr);
    EXPECT_EQ(r.num_tokens_after_padding_device, nullptr);
    EXPECT_EQ(array[0], dpt::kPoison32) << "the array must be left untouched";
    EXPECT_EQ(r.synced_cudagraph_mode, 2);
    EXPECT_EQ(r.num_tokens_after_padding_self, 768);
    EXPECT_EQ(r.max_num_tokens_padded, 768);
    EXPECT_EQ(r.min_num_tokens_unpadded, 700);
    EXPECT_EQ(r.dp_rank, 0);
    EXPECT_EQ(r.dp_size, 1);
  }
}

TEST(Decide, SingleRankOwnModeAndNullArray) {
  for (int32_t mode = 0; mode <= 2; ++mode) {
    const dp_rank_record own = Rec(5, 5, 0, 0, mode);
    dp_batch_result r = dpt::PoisonedResult();
    ASSERT_STATUS(DP_OK, dp_decide_batch(&own, 1, 0, kWhenCudagraph, 2, nullptr, &r));
    EXPECT_EQ(r.synced_cudagraph_mode, mode);
    EXPECT_FALSE(r.should_dp_pad);
    EXPECT_FALSE(r.has_num_tokens_after_padding);
    EXPECT_EQ(r.num_tokens_after_padding, nullptr);
  }
}

TEST(Decide, SingleRankStillValidatesItsRecord) {
  DecideFails(DP_ERR_INVALID_ARGUMENT, {Rec(5, 4, 0, 0, 0)}, 1, 0, kExplicit, 2);
  EXPECT_TRUE(LastErrorMentions({"num_tokens_padded", "4"}));
}

// --- every dp_size from 1 to 1024 against the reference model ------------------------------

TEST(Decide, EveryDpSizeFrom1To1024) {
  std::mt19937 rng(20240611u);
  for (int32_t size = 1; size <= 1024; ++size) {
    std::uniform_int_distribution<int32_t> tokens(0, 4096), extra(0, 64), bit(0, 1), mode(0, 2),
        ranks(0, size - 1), nub(2, 4);
    const int32_t policy = bit(rng);
    const int32_t pad_flag = bit(rng);  // same on every rank: consistent under EXPLICIT
    const bool all_ubatch = bit(rng) == 1;
    std::vector<dp_rank_record> recs;
    for (int32_t r = 0; r < size; ++r) {
      const int32_t u = tokens(rng);
      recs.push_back(Rec(u, u + extra(rng), all_ubatch ? 1 : bit(rng), pad_flag, mode(rng)));
    }
    const int32_t rank = ranks(rng);
    SCOPED_TRACE("dp_size " + std::to_string(size));
    DecideOk(recs, rank, policy, nub(rng));
    if (::testing::Test::HasFailure()) break;
  }
}

// --- invalid arguments ---------------------------------------------------------------------

struct BadRecord {
  const char* name;
  dp_rank_record record;  // placed at rank 1 of 3
  const char* field;
  const char* value;
};

void PrintTo(const BadRecord& bad, std::ostream* os) { *os << bad.name; }

const BadRecord kBadRecords[] = {
    {"unpadded_negative", Rec(-1, 0, 0, 0, 0), "num_tokens_unpadded", "-1"},
    {"padded_below_unpadded", Rec(10, 9, 0, 0, 0), "num_tokens_padded", "9"},
    {"padded_minus_one", Rec(0, -1, 0, 0, 0), "num_tokens_padded", "-1"},
    {"attempt_ubatch_two", Rec(1, 1, 2, 0, 0), "should_attempt_ubatch", "2"},
    {"attempt_ubatch_negative", Rec(1, 1, -1, 0, 0), "should_attempt_ubatch", "-1"},
    {"attempt_dp_pad_two", Rec(1, 1, 0, 2, 0), "should_attempt_dp_pad", "2"},
    {"attempt_dp_pad_negative", Rec(1, 1, 0, -1, 0), "should_attempt_dp_pad", "-1"},
    {"mode_three", Rec(1, 1, 0, 0, 3), "cudagraph_mode", "3"},
    {"mode_negative", Rec(1, 1, 0, 0, -1), "cudagraph_mode", "-1"},
};

class DecideBadRecord : public ::testing::TestWithParam<BadRecord> {};

TEST_P(DecideBadRecord, Rejected) {
  const BadRecord& bad = GetParam();
  const std::vector<dp_rank_record> recs = {Rec(1, 1, 0, 0, 0), bad.record, Rec(1, 1, 0, 0, 0)};
  for (int32_t policy : {kExplicit, kWhenCudagraph}) {
    DecideFails(DP_ERR_INVALID_ARGUMENT, recs, 3, 0, policy, 2);
    EXPECT_TRUE(LastErrorMentions({bad.field, bad.value}));
  }
}

INSTANTIATE_TEST_SUITE_P(Each, DecideBadRecord, ::testing::ValuesIn(kBadRecords),
                         [](const ::testing::TestParamInfo<BadRecord>& info) {
                           return std::string(info.param.name);
                         });

const std::vector<dp_rank_record> kTwo = {Rec(1, 1, 0, 0, 0), Rec(2, 2, 0, 0, 0)};

TEST(DecideArgs, DpSizeBelowOne) {
  DecideFails(DP_ERR_INVALID_ARGUMENT, kTwo, 0, 0, kExplicit, 2);
  EXPECT_TRUE(LastErrorMentions({"dp_size", "0"}));
  DecideFails(DP_ERR_INVALID_ARGUMENT, kTwo, -1, 0, kExplicit, 2);
  EXPECT_TRUE(LastErrorMentions({"dp_size", "-1"}));
  DecideFails(DP_ERR_INVALID_ARGUMENT, kTwo, INT32_MIN, 0, kExplicit, 2);
  EXPECT_TRUE(LastErrorMentions({"dp_size"}));
}

TEST(DecideArgs, DpRankOutOfRange) {
  DecideFails(DP_ERR_INVALID_ARGUMENT, kTwo, 2, -1, kExplicit, 2);
  EXPECT_TRUE(LastErrorMentions({"dp_rank", "-1"}));
  DecideFails(DP_ERR_INVALID_ARGUMENT, kTwo, 2, 2, kExplicit, 2);
  EXPECT_TRUE(LastErrorMentions({"dp_rank", "2"}));
  DecideFails(DP_ERR_INVALID_ARGUMENT, kTwo, 1, 1, kExplicit, 2);
  EXPECT_TRUE(LastErrorMentions({"dp_rank", "1"}));
}

TEST(DecideArgs, UnknownPadPolicy) {
  DecideFails(DP_ERR_INVALID_ARGUMENT, kTwo, 2, 0, 2, 2);
  EXPECT_TRUE(LastErrorMentions({"pad_policy", "2"}));
  DecideFails(DP_ERR_INVALID_ARGUMENT, kTwo, 2, 0, -1, 2);
  EXPECT_TRUE(LastErrorMentions({"pad_policy", "-1"}));
}

TEST(DecideArgs, NumUbatchesBelowTwo) {
  for (int32_t n : {1, 0, -2}) {
    DecideFails(DP_ERR_INVALID_ARGUMENT, kTwo, 2, 0, kExplicit, n);
    EXPECT_TRUE(LastErrorMentions({"num_ubatches", std::to_string(n)}));
  }
  // Also with dp_size == 1, where the number is otherwise unused.
  DecideFails(DP_ERR_INVALID_ARGUMENT, {Rec(1, 1, 0, 0, 0)}, 1, 0, kExplicit, 1);
  EXPECT_TRUE(LastErrorMentions({"num_ubatches"}));
}

TEST(DecideArgs, NullRecords) {
  DecideFails(DP_ERR_INVALID_ARGUMENT, {}, 1, 0, kExplicit, 2);
  EXPECT_TRUE(LastErrorMentions({"records"}));
}

TEST(DecideArgs, NullResult) {
  std::vector<int32_t> array(2, dpt::kPoison32);
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT,
                dp_decide_batch(kTwo.data(), 2, 0, kExplicit, 2, array.data(), nullptr));
  EXPECT_TRUE(LastErrorMentions({"res", "NULL"}));
  EXPECT_EQ(array, (std::vector<int32_t>{dpt::kPoison32, dpt::kPoison32}));
}

// Records and the out array carved from one int32 buffer, the array at `out_offset` int32s
// from the records' start.
dp_status DecideInBuffer(std::vector<int32_t>* buffer, size_t records_at, size_t out_at,
                         dp_batch_result* r) {
  const dp_rank_record recs[2] = {Rec(1, 1, 0, 0, 0), Rec(2, 2, 0, 0, 0)};
  std::memcpy(buffer->data() + records_at, recs, sizeof recs);
  return dp_decide_batch(reinterpret_cast<const dp_rank_record*>(buffer->data() + records_at),
                         2, 0, kExplicit, 2, buffer->data() + out_at, r);
}

TEST(DecideArgs, OutArrayOverlappingRecordsIsRefused) {
  // Records occupy int32 [2, 12); the array needs 2 int32s.
  for (size_t out_at : {size_t{1}, size_t{2}, size_t{6}, size_t{11}}) {
    std::vector<int32_t> buffer(16, 0);
    dp_batch_result r = dpt::PoisonedResult();
    EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, DecideInBuffer(&buffer, 2, out_at, &r))
        << "array at int32 " << out_at;
    EXPECT_TRUE(LastErrorMentions({"overlap"}));
    EXPECT_TRUE(dpt::IsPoisoned(r));
  }
}

TEST(DecideArgs, OutArrayAdjacentToRecordsIsFine) {
  for (size_t out_at : {size_t{0}, size_t{12}}) {  // just before, just after
    std::vector<int32_t> buffer(16, 0);
    dp_batch_result r;
    dp_batch_result_init(&r);
    EXPECT_STATUS(DP_OK, DecideInBuffer(&buffer, 2, out_at, &r)) << "array at int32 " << out_at;
    EXPECT_EQ(buffer[out_at], 1);
    EXPECT_EQ(buffer[out_at + 1], 2);
  }
}

}  // namespace
