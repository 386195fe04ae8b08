// dp_make_ubatch_slices: vLLM V1's maybe_create_ubatch_slices through the C API. The cases
// marked "vLLM" replay vllm-project/vllm's own tests (file and test named on each); the rest
// pin the rules of docs/ARCHITECTURE.md ("Semantics", microbatch slices) and every error it names.
// dp_make_ubatch_slices_at (V1 with a list of split points) and dp_make_ubatch_slices_v2 (vLLM
// 0.34.0's create_ubatch_slices): VLLM_V2.md's worked examples, each test named after one, and an
// error of each.
#include <cstdint>
#include <string>
#include <vector>

#include "c_calls.h"
#include "test_util.h"

using dpt::LastErrorMentions;

namespace {

struct Slice {
  int32_t request_begin, request_end, token_begin, token_end;
};

bool operator==(const dp_ubatch_slice& a, const Slice& b) {
  return a.request_begin == b.request_begin && a.request_end == b.request_end &&
         a.token_begin == b.token_begin && a.token_end == b.token_end;
}

std::string Text(int32_t rb, int32_t re, int32_t tb, int32_t te) {
  return "{requests [" + std::to_string(rb) + ", " + std::to_string(re) + "), tokens [" +
         std::to_string(tb) + ", " + std::to_string(te) + ")}";
}

struct Outcome {
  dp_status status;
  std::vector<dp_ubatch_slice> slices, padded;
};

Outcome Make(const std::vector<int32_t>& counts, int32_t p, int32_t rp, int32_t n, int32_t s) {
  Outcome o;
  o.slices.assign(static_cast<size_t>(n), dpt::Poisoned<dp_ubatch_slice>());
  o.padded.assign(static_cast<size_t>(n), dpt::Poisoned<dp_ubatch_slice>());
  o.status = dp_make_ubatch_slices(counts.data(), static_cast<int32_t>(counts.size()), p, rp, n,
                                   s, o.slices.data(), o.padded.data());
  return o;
}

::testing::AssertionResult SlicesAre(const std::vector<dp_ubatch_slice>& got,
                                     const std::vector<Slice>& want) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << got.size() << " slices, expected " << want.size();
  }
  for (size_t k = 0; k < got.size(); ++k) {
    if (!(got[k] == want[k])) {
      return ::testing::AssertionFailure()
             << "slice " << k << " is "
             << Text(got[k].request_begin, got[k].request_end, got[k].token_begin,
                     got[k].token_end)
             << ", expected "
             << Text(want[k].request_begin, want[k].request_end, want[k].token_begin,
                     want[k].token_end);
    }
  }
  return ::testing::AssertionSuccess();
}

// Both outputs untouched (the poison pattern) after a failing call.
bool Untouched(const Outcome& o) {
  for (const auto& s : o.slices)
    if (!dpt::IsPoisoned(s)) return false;
  for (const auto& s : o.padded)
    if (!dpt::IsPoisoned(s)) return false;
  return true;
}

// --- vLLM: tests/v1/attention/test_attention_splitting.py -------------------------------------

// test_prefill_split_across_ubatches[[32, 40]-[8, 8]-12-2-1]: "split in the middle of request 1"
TEST(VllmSlices, PrefillSplitInTheMiddleOfRequest1) {
  Outcome o = Make({8, 8}, 16, 2, 2, 12);
  ASSERT_STATUS(DP_OK, o.status);
  EXPECT_TRUE(SlicesAre(o.slices, {{0, 2, 0, 12}, {1, 2, 12, 16}}));
  EXPECT_TRUE(SlicesAre(o.padded, {{0, 2, 0, 12}, {1, 2, 12, 16}}));
  // The test's assertions: 12 and 4 tokens, 2 and 1 requests.
  EXPECT_EQ(o.slices[0].token_end - o.slices[0].token_begin, 12);
  EXPECT_EQ(o.slices[1].token_end - o.slices[1].token_begin, 4);
  EXPECT_EQ(o.slices[0].request_end - o.slices[0].request_begin, 2);
  EXPECT_EQ(o.slices[1].request_end - o.slices[1].request_begin, 1);
}

// test_prefill_split_across_ubatches[[32, 40]-[8, 8]-4-1-2]: "split inside the first request"
TEST(VllmSlices, PrefillSplitInsideTheFirstRequest) {
  Outcome o = Make({8, 8}, 16, 2, 2, 4);
  ASSERT_STATUS(DP_OK, o.status);
  EXPECT_TRUE(SlicesAre(o.slices, {{0, 1, 0, 4}, {0, 2, 4, 16}}));
  EXPECT_TRUE(SlicesAre(o.padded, {{0, 1, 0, 4}, {0, 2, 4, 16}}));
}

// test_split_attn_metadata_decode_batch: BATCH_SPECS["large_decode"] (32 one-token decodes)
// split at the midpoint, requests and tokens alike: the default split point P / 2.
TEST(VllmSlices, SplitAttnMetadataDecodeBatch) {
  Outcome o = Make(std::vector<int32_t>(32, 1), 32, -1, 2, -1);
  ASSERT_STATUS(DP_OK, o.status);
  EXPECT_TRUE(SlicesAre(o.slices, {{0, 16, 0, 16}, {16, 32, 16, 32}}));
}

// test_make_metadata_with_slice_decode_batch: BATCH_SPECS["small_decode"] (query_lens [1, 1])
// and UBatchSlice(slice(0, 1), slice(0, 1)): the first slice of the default split.
TEST(VllmSlices, MakeMetadataWithSliceDecodeBatch) {
  Outcome o = Make({1, 1}, 2, -1, 2, -1);
  ASSERT_STATUS(DP_OK, o.status);
  EXPECT_TRUE(SlicesAre(o.slices, {{0, 1, 0, 1}, {1, 2, 1, 2}}));
}

// --- vLLM: tests/v1/worker/test_ubatch_utils.py ------------------------------------------------

// test_split_attn_metadata_preserves_position_and_prefill_flags: query_start_loc [0, 3, 7, 9]
// and UBatchSlice(slice(1, 3), slice(3, 9)): the second slice of a split at 3.
TEST(VllmSlices, SplitAttnMetadataPreservesPositionAndPrefillFlags) {
  Outcome o = Make({3, 4, 2}, 9, -1, 2, 3);
  ASSERT_STATUS(DP_OK, o.status);
  EXPECT_TRUE(SlicesAre(o.slices, {{0, 1, 0, 3}, {1, 3, 3, 9}}));
}

// --- the rules ---------------------------------------------------------------------------------

TEST(Slices, DefaultSplitPointIsPaddedTokensOverN) {
  Outcome o = Make({4, 4, 2}, 13, 5, 2, -1);  // s = 13 / 2 = 6
  ASSERT_STATUS(DP_OK, o.status);
  EXPECT_TRUE(SlicesAre(o.slices, {{0, 2, 0, 6}, {1, 3, 6, 10}}));
  EXPECT_TRUE(SlicesAre(o.padded, {{0, 2, 0, 6}, {1, 5, 6, 13}}));
}

TEST(Slices, AStraddlingPrefillIsInBothSlices) {
  Outcome o = Make({1, 30, 1}, 32, -1, 2, -1);
  ASSERT_STATUS(DP_OK, o.status);
  EXPECT_TRUE(SlicesAre(o.slices, {{0, 2, 0, 16}, {1, 3, 16, 32}}));
}

TEST(Slices, SplitOnARequestBoundary) {
  Outcome o = Make({4, 4}, 8, -1, 2, 4);
  ASSERT_STATUS(DP_OK, o.status);
  EXPECT_TRUE(SlicesAre(o.slices, {{0, 1, 0, 4}, {1, 2, 4, 8}}));
}

TEST(Slices, ThreeAndFourMicrobatches) {
  Outcome three = Make({5, 5, 5}, 15, -1, 3, -1);
  ASSERT_STATUS(DP_OK, three.status);
  EXPECT_TRUE(SlicesAre(three.slices, {{0, 1, 0, 5}, {1, 2, 5, 10}, {2, 3, 10, 15}}));
  Outcome four = Make({3, 3, 3, 1}, 12, 6, 4, -1);
  ASSERT_STATUS(DP_OK, four.status);
  EXPECT_TRUE(SlicesAre(four.slices, {{0, 1, 0, 3}, {1, 2, 3, 6}, {2, 3, 6, 9}, {3, 4, 9, 10}}));
  EXPECT_TRUE(SlicesAre(four.padded, {{0, 1, 0, 3}, {1, 2, 3, 6}, {2, 3, 6, 9}, {3, 6, 9, 12}}));
  Outcome one_request = Make({12}, 12, -1, 4, -1);
  ASSERT_STATUS(DP_OK, one_request.status);
  EXPECT_TRUE(
      SlicesAre(one_request.slices, {{0, 1, 0, 3}, {0, 1, 3, 6}, {0, 1, 6, 9}, {0, 1, 9, 12}}));
}

TEST(Slices, ZeroLengthRequestsFollowBisect) {
  Outcome leading = Make({0, 0, 4}, 4, -1, 2, -1);
  ASSERT_STATUS(DP_OK, leading.status);
  EXPECT_TRUE(SlicesAre(leading.slices, {{2, 3, 0, 2}, {2, 3, 2, 4}}));
  Outcome on_split = Make({2, 0, 0, 0, 2}, 4, -1, 2, -1);
  ASSERT_STATUS(DP_OK, on_split.status);
  EXPECT_TRUE(SlicesAre(on_split.slices, {{0, 1, 0, 2}, {4, 5, 2, 4}}));
  Outcome trailing = Make({2, 2, 0, 0}, 4, -1, 2, -1);
  ASSERT_STATUS(DP_OK, trailing.status);
  EXPECT_TRUE(SlicesAre(trailing.slices, {{0, 1, 0, 2}, {1, 2, 2, 4}}));
  EXPECT_TRUE(SlicesAre(trailing.padded, {{0, 1, 0, 2}, {1, 4, 2, 4}}));
  Outcome inside = Make({1, 0, 1, 2}, 4, -1, 2, -1);
  ASSERT_STATUS(DP_OK, inside.status);
  EXPECT_TRUE(SlicesAre(inside.slices, {{0, 3, 0, 2}, {3, 4, 2, 4}}));
}

TEST(Slices, SumsAre64Bit) {
  Outcome o = Make({INT32_MAX, INT32_MAX, 2}, INT32_MAX, -1, 2, -1);
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, o.status);
  EXPECT_TRUE(LastErrorMentions({"sum(num_scheduled_tokens) = 4294967296"}));
  Outcome edge = Make({INT32_MAX - 1, 1}, INT32_MAX, -1, 2, -1);
  ASSERT_STATUS(DP_OK, edge.status);
  EXPECT_TRUE(
      SlicesAre(edge.slices, {{0, 1, 0, INT32_MAX / 2}, {0, 2, INT32_MAX / 2, INT32_MAX}}));
}

TEST(Slices, PaddedSlicesAreNullable) {
  const int32_t counts[] = {3, 5, 2};
  dp_ubatch_slice slices[2];
  ASSERT_STATUS(DP_OK, dp_make_ubatch_slices(counts, 3, 12, -1, 2, -1, slices, nullptr));
  EXPECT_TRUE(SlicesAre({slices[0], slices[1]}, {{0, 2, 0, 6}, {1, 3, 6, 10}}));
}

// --- every bad input is an invalid-argument error naming it; nothing is written ----------------

TEST(Slices, BadInputsAreNamed) {
  struct Case {
    std::vector<int32_t> counts;
    int32_t p, rp, n, s;
    std::vector<std::string> mentions;
  };
  const std::vector<Case> cases = {
      {{3, -2, 1}, 8, -1, 2, -1, {"num_scheduled_tokens[1] = -2"}},
      {{5, 6}, 10, -1, 2, -1, {"sum(num_scheduled_tokens) = 11", "num_tokens_padded = 10"}},
      {{0}, -1, -1, 2, -1, {"num_tokens_padded = -1"}},
      {{2, 2, 2}, 6, 2, 2, -1, {"num_requests_padded = 2", "num_requests = 3"}},
      {{4, 4}, 8, -1, 1, -1, {"num_ubatches = 1 must be >= 2"}},
      {{4, 4}, 8, -1, 2, 0, {"split_point = 0"}},
      {{4, 4}, 8, -1, 2, -2, {"split_point = -2"}},
      {{4, 4}, 8, -1, 2, 8, {"split_point = 8", "would be empty"}},
      {{1}, 1, -1, 2, -1, {"split_point = 0 (the default", "microbatch 0 empty"}},
      {{3}, 8, -1, 2, -1, {"split_point = 4 (the default", "would be empty"}},
      {{0, 0}, 4, -1, 2, -1, {"would be empty"}},
  };
  for (const Case& c : cases) {
    Outcome o = Make(c.counts, c.p, c.rp, c.n, c.s);
    EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, o.status) << c.mentions[0];
    for (const std::string& m : c.mentions) EXPECT_TRUE(LastErrorMentions({m}));
    EXPECT_TRUE(Untouched(o)) << c.mentions[0];
  }
}

TEST(Slices, PointersAndSizesAreChecked) {
  const int32_t counts[] = {4, 4};
  dp_ubatch_slice slices[2], padded[2];
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT,
                dp_make_ubatch_slices(counts, 0, 8, -1, 2, -1, slices, padded));
  EXPECT_TRUE(LastErrorMentions({"num_requests = 0"}));
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT,
                dp_make_ubatch_slices(nullptr, 2, 8, -1, 2, -1, slices, padded));
  EXPECT_TRUE(LastErrorMentions({"num_scheduled_tokens is NULL"}));
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT,
                dp_make_ubatch_slices(counts, 2, 8, -1, 2, -1, nullptr, padded));
  EXPECT_TRUE(LastErrorMentions({"slices is NULL"}));
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT,
                dp_make_ubatch_slices(counts, 2, 8, -1, 2, -1, slices, slices));
  EXPECT_TRUE(LastErrorMentions({"padded_slices overlaps slices"}));
}

// --- dp_make_ubatch_slices_v2: VLLM_V2.md sections 4-5 -------------------------------------------
//
// Inputs per example (VLLM_V2.md 2.9 and 4, UBatchRunner.prepare): counts = the rank's real
// per-request tokens (T t / R r with uniform count u: R requests of u tokens); P = max(own T,
// descriptor tokens); Rp = the descriptor's requests, or own R (NONE); n = num_ubatches; u = the
// descriptor's uniform count on FULL, else the agreed one (0: none). tests/slices_v2.rs says more.

std::vector<dp_ubatch_slice> V2(const std::vector<int32_t>& counts, int32_t p, int32_t rp,
                                int32_t n, int32_t u, dp_status* status) {
  std::vector<dp_ubatch_slice> slices(static_cast<size_t>(n), dpt::Poisoned<dp_ubatch_slice>());
  *status = dp_make_ubatch_slices_v2(counts.data(), static_cast<int32_t>(counts.size()), p, rp, n,
                                     u, slices.data());
  return slices;
}

// ub-on (example 9): r0 32t/32r u1, r1 40t/40r u1 -> FULL 40t/40r u1 x2: P 40, Rp 40, u 1.
TEST(V2SlicesExamples, UbOn) {
  dp_status s;
  EXPECT_TRUE(SlicesAre(V2(std::vector<int32_t>(32, 1), 40, 40, 2, 1, &s),
                        {{0, 20, 0, 20}, {20, 40, 20, 40}}));
  ASSERT_STATUS(DP_OK, s);
  EXPECT_TRUE(SlicesAre(V2(std::vector<int32_t>(40, 1), 40, 40, 2, 1, &s),
                        {{0, 20, 0, 20}, {20, 40, 20, 40}}));
  ASSERT_STATUS(DP_OK, s);
}

// ub-prefill-on (example 10): r0 512t/11r (mixed), r1 700t/1r -> NONE 700t x2 (eager): P 700,
// Rp = own R (11, 1), u 0. r0's counts are not given; its slices need only cu[10] < 350: ten
// decodes and a 502-token chunk.
TEST(V2SlicesExamples, UbPrefillOn) {
  std::vector<int32_t> r0(10, 1);
  r0.push_back(502);
  dp_status s;
  EXPECT_TRUE(SlicesAre(V2(r0, 700, 11, 2, 0, &s), {{0, 11, 0, 350}, {10, 11, 350, 700}}));
  ASSERT_STATUS(DP_OK, s);
  EXPECT_TRUE(SlicesAre(V2({700}, 700, 1, 2, 0, &s), {{0, 1, 0, 350}, {0, 1, 350, 700}}));
  ASSERT_STATUS(DP_OK, s);
}

// ub-eager-fallback (example 13): r0 32t/32r u1 with r1 100t/100r -> NONE 100t x2: r0's P 100,
// Rp 32 (own), u 1 (agreed). Its second microbatch is all padding: request 31, 0 tokens.
TEST(V2SlicesExamples, UbEagerFallback) {
  dp_status s;
  EXPECT_TRUE(SlicesAre(V2(std::vector<int32_t>(32, 1), 100, 32, 2, 1, &s),
                        {{0, 32, 0, 50}, {31, 32, 50, 100}}));
  ASSERT_STATUS(DP_OK, s);
}

// ub-equal-2min (example 13): r0 32t/32r u1 with r1 64t/64r -> FULL 64t/64r u1 x2: P 64, Rp 64.
TEST(V2SlicesExamples, UbEqual2Min) {
  dp_status s;
  EXPECT_TRUE(SlicesAre(V2(std::vector<int32_t>(32, 1), 64, 64, 2, 1, &s),
                        {{0, 32, 0, 32}, {31, 64, 32, 64}}));
  ASSERT_STATUS(DP_OK, s);
}

// ub3-narrow (example 15, n 3): r0 24t/24r u1 with r1 48t/48r -> FULL 48t/48r u1 x3: P 48, Rp 48.
TEST(V2SlicesExamples, Ub3Narrow) {
  dp_status s;
  EXPECT_TRUE(SlicesAre(V2(std::vector<int32_t>(24, 1), 48, 48, 3, 1, &s),
                        {{0, 16, 0, 16}, {16, 25, 16, 32}, {23, 48, 32, 48}}));
  ASSERT_STATUS(DP_OK, s);
}

// spec4-ub (example 16): r0 36t/9r u4, r1 48t/12r u4 -> FULL 48t/12r u4 x2: P 48, Rp 12, u 4;
// split (48 / 8) * 4 = 24, on a request boundary.
TEST(V2SlicesExamples, Spec4Ub) {
  dp_status s;
  EXPECT_TRUE(SlicesAre(V2(std::vector<int32_t>(9, 4), 48, 12, 2, 4, &s),
                        {{0, 6, 0, 24}, {6, 12, 24, 48}}));
  ASSERT_STATUS(DP_OK, s);
  EXPECT_TRUE(SlicesAre(V2(std::vector<int32_t>(12, 4), 48, 12, 2, 4, &s),
                        {{0, 6, 0, 24}, {6, 12, 24, 48}}));
  ASSERT_STATUS(DP_OK, s);
}

// Section 4's direct case: [3,3,4], P 32, Rp 3 -> V2 [(0,3,0,16),(2,3,16,32)]; V1's padded list
// would be [(0,4,0,16),(3,3,16,32)], with an empty last slice, which dp_make_ubatch_slices refuses.
TEST(V2SlicesExamples, DirectCase334) {
  dp_status s;
  EXPECT_TRUE(SlicesAre(V2({3, 3, 4}, 32, 3, 2, 0, &s), {{0, 3, 0, 16}, {2, 3, 16, 32}}));
  ASSERT_STATUS(DP_OK, s);
  Outcome v1 = Make({3, 3, 4}, 32, 3, 2, -1);
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, v1.status);
  EXPECT_TRUE(LastErrorMentions({"would be empty"}));
}

TEST(V2Slices, BadInputsAreNamed) {
  struct Case {
    std::vector<int32_t> counts;
    int32_t p, rp, n, u;
    std::string mention;
  };
  const std::vector<Case> cases = {
      {{4, 4}, 8, -1, 2, -1, "uniform_token_count = -1 must be >= 0"},
      {{5, 6}, 10, -1, 2, 0, "sum(num_scheduled_tokens) = 11 must be <= num_tokens_padded = 10"},
      {{2, 2, 2}, 6, 2, 2, 0, "num_requests_padded = 2"},
      {{3, -2}, 8, -1, 2, 0, "num_scheduled_tokens[1] = -2 must be >= 0"},
      {{4, 4}, 8, -1, 1, 0, "num_ubatches = 1 must be >= 2"},
      {{1}, 1, -1, 2, 0, "num_tokens_padded = 1 must be >= num_ubatches = 2"},
  };
  for (const Case& c : cases) {
    dp_status s;
    std::vector<dp_ubatch_slice> out = V2(c.counts, c.p, c.rp, c.n, c.u, &s);
    EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, s) << c.mention;
    EXPECT_TRUE(LastErrorMentions({c.mention}));
    for (const auto& slice : out) EXPECT_TRUE(dpt::IsPoisoned(slice)) << c.mention;
  }
  const int32_t counts[] = {4, 4};
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, dp_make_ubatch_slices_v2(counts, 0, 8, -1, 2, 0, nullptr));
  EXPECT_TRUE(LastErrorMentions({"num_requests = 0 must be >= 1"}));
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, dp_make_ubatch_slices_v2(counts, 2, 8, -1, 2, 0, nullptr));
  EXPECT_TRUE(LastErrorMentions({"slices is NULL"}));
}

// --- dp_make_ubatch_slices_at: V1 with a list of split points (vLLM 0.33+) -----------------------

Outcome MakeAt(const std::vector<int32_t>& counts, int32_t p, int32_t rp,
               const std::vector<int32_t>& points) {
  const auto n = static_cast<int32_t>(points.size() + 1);
  Outcome o;
  o.slices.assign(static_cast<size_t>(n), dpt::Poisoned<dp_ubatch_slice>());
  o.padded.assign(static_cast<size_t>(n), dpt::Poisoned<dp_ubatch_slice>());
  o.status = dp_make_ubatch_slices_at(counts.data(), static_cast<int32_t>(counts.size()), p, rp, n,
                                      points.data(), o.slices.data(), o.padded.data());
  return o;
}

// test_prefill_split_across_ubatches[[32, 40]-[8, 8]-12-2-1] with the split as the list [12].
TEST(AtSlices, VllmPrefillSplitInTheMiddleOfRequest1AsAList) {
  Outcome o = MakeAt({8, 8}, 16, 2, {12});
  ASSERT_STATUS(DP_OK, o.status);
  EXPECT_TRUE(SlicesAre(o.slices, {{0, 2, 0, 12}, {1, 2, 12, 16}}));
  EXPECT_TRUE(SlicesAre(o.padded, {{0, 2, 0, 12}, {1, 2, 12, 16}}));
}

TEST(AtSlices, UnevenPoints) {
  Outcome o = MakeAt({2, 3, 6}, 16, 4, {3, 10});
  ASSERT_STATUS(DP_OK, o.status);
  EXPECT_TRUE(SlicesAre(o.slices, {{0, 2, 0, 3}, {1, 3, 3, 10}, {2, 3, 10, 11}}));
  EXPECT_TRUE(SlicesAre(o.padded, {{0, 2, 0, 3}, {1, 3, 3, 10}, {2, 4, 10, 16}}));
}

TEST(AtSlices, BadPointsAreNamed) {
  struct Case {
    std::vector<int32_t> points;
    std::string mention;
  };
  const std::vector<Case> cases = {
      {{0, 40}, "split_points[0] = 0 must be > 0"},
      {{48, 40}, "split_points[1] = 40 must be > split_points[0] = 48"},
      {{10, 64}, "split_points[1] = 64 must be < num_tokens_padded = 64"},
      {{10, 60}, "split_points[1] = 60 must be < sum(num_scheduled_tokens) = 60"},
  };
  for (const Case& c : cases) {
    Outcome o = MakeAt({20, 20, 20}, 64, -1, c.points);
    EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, o.status) << c.mention;
    EXPECT_TRUE(LastErrorMentions({c.mention}));
    EXPECT_TRUE(Untouched(o)) << c.mention;
  }
  const int32_t counts[] = {4, 4};
  dp_ubatch_slice slices[2];
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT,
                dp_make_ubatch_slices_at(counts, 2, 8, -1, 2, nullptr, slices, nullptr));
  EXPECT_TRUE(LastErrorMentions({"split_points is NULL"}));
}

// The same calls made from C (c_calls.c, compiled as C): the vLLM case and a refused input.
TEST(Slices, FromC) { EXPECT_EQ(dpt_c_slices(), 0) << "c_calls.c line of the failed check"; }

}  // namespace
