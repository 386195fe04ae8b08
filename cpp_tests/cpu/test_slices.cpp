// dp_make_ubatch_slices: vLLM V1's maybe_create_ubatch_slices through the C API. The cases
// marked "vLLM" replay vllm-project/vllm's own tests (file and test named on each); the rest
// pin the rules of docs/ARCHITECTURE.md ("Semantics", microbatch slices) and every error it names.
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

// The same calls made from C (c_calls.c, compiled as C): the vLLM case and a refused input.
TEST(Slices, FromC) { EXPECT_EQ(dpt_c_slices(), 0) << "c_calls.c line of the failed check"; }

}  // namespace
