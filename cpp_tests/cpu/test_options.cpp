// dp_decide_options and dp_decide_batch_with_options (0.2): dead slots with vLLM V1's
// neutralize_dead_dp_columns semantics (vllm/v1/worker/dp_utils.py), step ids compared over
// live ranks, both pad policies, and dp_decide_batch as the same decision without options.
#include <cstdint>
#include <cstring>
#include <vector>

#include "c_calls.h"
#include "test_util.h"

using dpt::LastErrorMentions;
using dpt::PoisonedResult;
using dpt::Rec;

namespace {

// A record no live rank could send: every field out of range.
const dp_rank_record kGarbage = Rec(INT32_MIN, -9, 5, -3, 77);

dp_decide_options Options() {
  dp_decide_options o;
  std::memset(&o, 0x5A, sizeof o);  // init must overwrite every field
  dp_decide_options_init(&o);
  return o;
}

struct Decided {
  dp_status status;
  dp_batch_result res;
  std::vector<int32_t> out;
};

Decided Decide(const std::vector<dp_rank_record>& records, int32_t rank,
               const dp_decide_options& opts) {
  Decided d{DP_OK, PoisonedResult(), std::vector<int32_t>(records.size(), dpt::kPoison32)};
  d.status = dp_decide_batch_with_options(records.data(), static_cast<int32_t>(records.size()),
                                          rank, &opts, d.out.data(), &d.res);
  return d;
}

TEST(DecideOptions, InitWritesTheDefaults) {
  dp_decide_options o = Options();
  EXPECT_EQ(o.struct_size, sizeof(dp_decide_options));
  EXPECT_EQ(o.pad_policy, DP_PAD_POLICY_EXPLICIT);
  EXPECT_EQ(o.num_ubatches, 2);
  EXPECT_EQ(o.active_ranks, nullptr);
  EXPECT_EQ(o.step_ids, nullptr);
}

TEST(DecideOptions, DeadSlotGarbageIsNeverRead) {
  const std::vector<dp_rank_record> records = {Rec(600, 608, 1, 1, 2), kGarbage,
                                               Rec(700, 704, 1, 1, 1), kGarbage};
  const uint8_t live[] = {1, 0, 1, 0};
  dp_decide_options o = Options();
  o.active_ranks = live;
  Decided d = Decide(records, 2, o);
  ASSERT_STATUS(DP_OK, d.status);
  EXPECT_TRUE(d.res.should_ubatch);  // dead slots vote yes
  EXPECT_TRUE(d.res.should_dp_pad);
  EXPECT_EQ(d.res.synced_cudagraph_mode, 1);
  EXPECT_EQ(d.res.max_num_tokens_padded, 704);
  EXPECT_EQ(d.res.min_num_tokens_unpadded, 600);
  EXPECT_EQ(d.out, (std::vector<int32_t>{704, 704, 704, 704}));
  EXPECT_TRUE(d.res.has_num_tokens_after_padding);
  EXPECT_EQ(d.res.num_tokens_after_padding, d.out.data());
  EXPECT_EQ(d.res.step_id, 0);
  // The same records with every rank live: the garbage is named, nothing written.
  Decided all = Decide(records, 2, Options());
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, all.status);
  EXPECT_TRUE(LastErrorMentions({"records[1]"}));
  EXPECT_TRUE(dpt::IsPoisoned(all.res));
}

TEST(DecideOptions, DeadSlotIsZeroWhenNotPadding) {
  const std::vector<dp_rank_record> records = {Rec(10, 16, 0, 0, 0), kGarbage,
                                               Rec(20, 24, 0, 0, 0)};
  const uint8_t live[] = {1, 0, 1};
  dp_decide_options o = Options();
  o.active_ranks = live;
  Decided d = Decide(records, 0, o);
  ASSERT_STATUS(DP_OK, d.status);
  EXPECT_FALSE(d.res.should_dp_pad);
  EXPECT_EQ(d.out, (std::vector<int32_t>{16, 0, 24}));
}

TEST(DecideOptions, DeadSlotTakesNoPartInModeOrPadFlags) {
  const std::vector<dp_rank_record> records = {Rec(8, 8, 0, 0, 2), Rec(8, 8, 0, 1, 0),
                                               Rec(9, 16, 0, 0, 1)};
  const uint8_t live[] = {1, 0, 1};
  dp_decide_options o = Options();
  o.active_ranks = live;
  o.pad_policy = DP_PAD_POLICY_WHEN_CUDAGRAPH;
  Decided cg = Decide(records, 0, o);
  ASSERT_STATUS(DP_OK, cg.status);
  EXPECT_EQ(cg.res.synced_cudagraph_mode, 1);  // the dead NONE does not count
  EXPECT_TRUE(cg.res.should_dp_pad);
  EXPECT_EQ(cg.out, (std::vector<int32_t>{16, 16, 16}));
  o.pad_policy = DP_PAD_POLICY_EXPLICIT;
  Decided ex = Decide(records, 2, o);
  ASSERT_STATUS(DP_OK, ex.status);  // the dead slot's differing pad flag is not compared
  EXPECT_FALSE(ex.res.should_dp_pad);
  EXPECT_EQ(ex.out, (std::vector<int32_t>{8, 0, 16}));
  Decided live_all = Decide(records, 2, Options());
  EXPECT_STATUS(DP_ERR_INCONSISTENT_RANKS, live_all.status);
  EXPECT_TRUE(LastErrorMentions({"rank 1 has 1", "rank 0 has 0"}));
}

TEST(DecideOptions, StepIdsAgreeOverLiveRanks) {
  const std::vector<dp_rank_record> records(3, Rec(10, 16, 0, 0, 1));
  const int64_t same[] = {41, 41, 41};
  dp_decide_options o = Options();
  o.step_ids = same;
  Decided d = Decide(records, 1, o);
  ASSERT_STATUS(DP_OK, d.status);
  EXPECT_EQ(d.res.step_id, 41);
  const int64_t ahead[] = {41, 42, 41};
  o.step_ids = ahead;
  Decided bad = Decide(records, 1, o);
  EXPECT_STATUS(DP_ERR_INCONSISTENT_RANKS, bad.status);
  EXPECT_TRUE(LastErrorMentions({"rank 0 passed step_id 41", "rank 1 passed step_id 42"}));
  EXPECT_TRUE(dpt::IsPoisoned(bad.res));
  const uint8_t live[] = {1, 0, 1};
  o.active_ranks = live;  // the rank a step ahead is dead: not compared
  Decided dead = Decide(records, 0, o);
  ASSERT_STATUS(DP_OK, dead.status);
  EXPECT_EQ(dead.res.step_id, 41);
  const int64_t unchecked[] = {0, 0, 0};
  o.step_ids = unchecked;
  EXPECT_EQ(Decide(records, 0, o).res.step_id, 0);
  const int64_t negative[] = {3, 3, -1};
  o.step_ids = negative;
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, Decide(records, 0, o).status);
  EXPECT_TRUE(LastErrorMentions({"step_ids[2] = -1"}));
}

TEST(DecideOptions, CallingRankMustBeLiveAndBytesZeroOrOne) {
  const std::vector<dp_rank_record> records(3, Rec(1, 1, 0, 0, 0));
  const uint8_t dead_self[] = {1, 0, 1};
  dp_decide_options o = Options();
  o.active_ranks = dead_self;
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, Decide(records, 1, o).status);
  EXPECT_TRUE(LastErrorMentions({"active_ranks[1] = 0", "dp_rank = 1"}));
  const uint8_t bad_byte[] = {1, 2, 1};
  o.active_ranks = bad_byte;
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, Decide(records, 0, o).status);
  EXPECT_TRUE(LastErrorMentions({"active_ranks[1] = 2"}));
}

TEST(DecideOptions, SizeAndPointersAreChecked) {
  const std::vector<dp_rank_record> records(2, Rec(1, 1, 0, 0, 0));
  dp_batch_result res = PoisonedResult();
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT,
                dp_decide_batch_with_options(records.data(), 2, 0, nullptr, nullptr, &res));
  EXPECT_TRUE(LastErrorMentions({"opts is NULL"}));
  dp_decide_options o = Options();
  o.struct_size = 16;
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT,
                dp_decide_batch_with_options(records.data(), 2, 0, &o, nullptr, &res));
  EXPECT_TRUE(LastErrorMentions({"opts->struct_size = 16"}));
  EXPECT_TRUE(dpt::IsPoisoned(res));
}

// dp_decide_batch is the options call with default options (every rank live, unchecked).
TEST(DecideOptions, PlainDecideIsTheOptionsDecide) {
  const std::vector<dp_rank_record> records = {Rec(600, 608, 1, 1, 2), Rec(520, 520, 1, 1, 0),
                                               Rec(900, 904, 1, 1, 2)};
  for (int32_t policy : {DP_PAD_POLICY_EXPLICIT, DP_PAD_POLICY_WHEN_CUDAGRAPH}) {
    for (int32_t n : {2, 3, 4}) {
      std::vector<int32_t> plain_out(3, dpt::kPoison32);
      dp_batch_result plain = PoisonedResult();
      ASSERT_STATUS(DP_OK, dp_decide_batch(records.data(), 3, 1, policy, n, plain_out.data(),
                                           &plain));
      dp_decide_options o = Options();
      o.pad_policy = policy;
      o.num_ubatches = n;
      Decided d = Decide(records, 1, o);
      ASSERT_STATUS(DP_OK, d.status);
      EXPECT_EQ(plain_out, d.out);
      EXPECT_EQ(plain.should_ubatch, d.res.should_ubatch);
      EXPECT_EQ(plain.should_dp_pad, d.res.should_dp_pad);
      EXPECT_EQ(plain.synced_cudagraph_mode, d.res.synced_cudagraph_mode);
      EXPECT_EQ(plain.num_tokens_after_padding_self, d.res.num_tokens_after_padding_self);
      EXPECT_EQ(plain.max_num_tokens_padded, d.res.max_num_tokens_padded);
      EXPECT_EQ(plain.min_num_tokens_unpadded, d.res.min_num_tokens_unpadded);
      EXPECT_EQ(plain.step_id, d.res.step_id);
    }
  }
}

// The options call made from C (c_calls.c, compiled as C), through the header's C inline
// dp_decide_options_init: a dead rank holding garbage, step ids, and the refusal without the mask.
TEST(DecideOptions, FromC) {
  EXPECT_EQ(dpt_c_dead_rank(), 0) << "c_calls.c line of the failed check";
}

}  // namespace
