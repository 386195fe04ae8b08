// dp_batch_request_init and dp_make_record: docs/ARCHITECTURE.md, "Semantics", "The request"
// and "The local step".
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <ostream>
#include <string>
#include <vector>

#include "test_util.h"

using dpt::DefaultRequest;
using dpt::LastErrorMentions;

namespace {

TEST(RequestInit, Defaults) {
  const dp_batch_request req = DefaultRequest();
  EXPECT_EQ(req.struct_size, sizeof(dp_batch_request));
  EXPECT_EQ(req.num_tokens_unpadded, 0);
  EXPECT_EQ(req.num_tokens_padded, -1);
  EXPECT_FALSE(req.allow_microbatching);
  EXPECT_FALSE(req.allow_dp_padding);
  EXPECT_EQ(req.uniform_decode, -1);
  EXPECT_EQ(req.cudagraph_mode, DP_CUDAGRAPH_NONE);
  EXPECT_EQ(req.pad_policy, DP_PAD_POLICY_EXPLICIT);
  EXPECT_FALSE(req.ubatch.enabled);
  EXPECT_EQ(req.ubatch.num_ubatches, 2);
  EXPECT_EQ(req.ubatch.decode_token_threshold, 32);
  EXPECT_EQ(req.ubatch.prefill_token_threshold, 512);
  EXPECT_EQ(req.timeout_ms, 0);
  EXPECT_EQ(req.step_id, 0);
}

TEST(RequestInit, DefaultsAreAValidRequest) {
  const dp_batch_request req = DefaultRequest();
  dp_rank_record rec = dpt::Poisoned<dp_rank_record>();
  ASSERT_STATUS(DP_OK, dp_make_record(&req, &rec));
  EXPECT_EQ(rec.num_tokens_unpadded, 0);
  EXPECT_EQ(rec.num_tokens_padded, 0);
  EXPECT_EQ(rec.should_attempt_ubatch, 0);
  EXPECT_EQ(rec.should_attempt_dp_pad, 0);
  EXPECT_EQ(rec.cudagraph_mode, 0);
}

TEST(RequestInit, NullIsIgnoredAndReported) {
  dp_batch_request_init(nullptr);  // must not crash
  EXPECT_TRUE(LastErrorMentions({"req"}));
}

TEST(WireFormat, RecordIsFiveInt32InOrder) {
  static_assert(sizeof(dp_rank_record) == 20, "the record is the 20-byte wire format");
  EXPECT_EQ(offsetof(dp_rank_record, num_tokens_unpadded), 0u);
  EXPECT_EQ(offsetof(dp_rank_record, num_tokens_padded), 4u);
  EXPECT_EQ(offsetof(dp_rank_record, should_attempt_ubatch), 8u);
  EXPECT_EQ(offsetof(dp_rank_record, should_attempt_dp_pad), 12u);
  EXPECT_EQ(offsetof(dp_rank_record, cudagraph_mode), 16u);
}

// --- dp_make_record: the record ---------------------------------------------------------------

dp_rank_record MakeOk(const dp_batch_request& req) {
  dp_rank_record rec = dpt::Poisoned<dp_rank_record>();
  const dp_status s = dp_make_record(&req, &rec);
  EXPECT_EQ(dpt::Name(DP_OK), dpt::Name(s)) << dp_last_error();
  return rec;
}

// Microbatching configured and requested, thresholds at their defaults (32 / 512).
dp_batch_request UbatchRequest(int32_t unpadded, int32_t uniform_decode) {
  dp_batch_request req = DefaultRequest();
  req.allow_microbatching = true;
  req.ubatch.enabled = true;
  req.uniform_decode = uniform_decode;
  req.num_tokens_unpadded = unpadded;
  return req;
}

TEST(MakeRecord, CopiesFieldsInWireOrder) {
  dp_batch_request req = DefaultRequest();
  req.num_tokens_unpadded = 7;
  req.num_tokens_padded = 8;
  req.allow_dp_padding = true;
  req.cudagraph_mode = DP_CUDAGRAPH_FULL;
  req.pad_policy = DP_PAD_POLICY_WHEN_CUDAGRAPH;
  req.timeout_ms = 1000;
  const dp_rank_record rec = MakeOk(req);
  EXPECT_EQ(rec.num_tokens_unpadded, 7);
  EXPECT_EQ(rec.num_tokens_padded, 8);
  EXPECT_EQ(rec.should_attempt_ubatch, 0);
  EXPECT_EQ(rec.should_attempt_dp_pad, 1);
  EXPECT_EQ(rec.cudagraph_mode, DP_CUDAGRAPH_FULL);
}

TEST(MakeRecord, PaddedMinusOneDefaultsToUnpadded) {
  dp_batch_request req = DefaultRequest();
  req.num_tokens_unpadded = 123;
  EXPECT_EQ(MakeOk(req).num_tokens_padded, 123);
  req.num_tokens_padded = 123;  // equal is legal
  EXPECT_EQ(MakeOk(req).num_tokens_padded, 123);
  req.num_tokens_padded = 128;
  EXPECT_EQ(MakeOk(req).num_tokens_padded, 128);
}

TEST(MakeRecord, AllowDpPaddingBecomesAttemptDpPad) {
  dp_batch_request req = DefaultRequest();
  req.allow_dp_padding = false;
  EXPECT_EQ(MakeOk(req).should_attempt_dp_pad, 0);
  req.allow_dp_padding = true;
  EXPECT_EQ(MakeOk(req).should_attempt_dp_pad, 1);
}

TEST(MakeRecord, EveryCudagraphModeIsCopied) {
  dp_batch_request req = DefaultRequest();
  for (int32_t mode = 0; mode <= 2; ++mode) {
    req.cudagraph_mode = mode;
    EXPECT_EQ(MakeOk(req).cudagraph_mode, mode);
  }
}

TEST(MakeRecord, DecodeThresholdEdges) {
  EXPECT_EQ(MakeOk(UbatchRequest(32, 1)).should_attempt_ubatch, 1);  // == threshold attempts
  EXPECT_EQ(MakeOk(UbatchRequest(31, 1)).should_attempt_ubatch, 0);  // threshold - 1 does not
  EXPECT_EQ(MakeOk(UbatchRequest(33, 1)).should_attempt_ubatch, 1);
}

TEST(MakeRecord, PrefillThresholdEdges) {
  EXPECT_EQ(MakeOk(UbatchRequest(512, 0)).should_attempt_ubatch, 1);
  EXPECT_EQ(MakeOk(UbatchRequest(511, 0)).should_attempt_ubatch, 0);
  EXPECT_EQ(MakeOk(UbatchRequest(513, 0)).should_attempt_ubatch, 1);
}

TEST(MakeRecord, UniformDecodeSelectsTheThreshold) {
  // 100 tokens: above the decode threshold (32), below the prefill one (512).
  EXPECT_EQ(MakeOk(UbatchRequest(100, 1)).should_attempt_ubatch, 1);
  EXPECT_EQ(MakeOk(UbatchRequest(100, 0)).should_attempt_ubatch, 0);
}

TEST(MakeRecord, CustomThresholdsAtTheirEdges) {
  dp_batch_request req = UbatchRequest(0, 1);
  req.ubatch.decode_token_threshold = 7;
  req.ubatch.prefill_token_threshold = 9;
  for (int32_t t = 5; t <= 10; ++t) {
    req.num_tokens_unpadded = t;
    req.uniform_decode = 1;
    EXPECT_EQ(MakeOk(req).should_attempt_ubatch, t >= 7 ? 1 : 0) << "decode, " << t << " tokens";
    req.uniform_decode = 0;
    EXPECT_EQ(MakeOk(req).should_attempt_ubatch, t >= 9 ? 1 : 0) << "prefill, " << t << " tokens";
  }
}

// 0.2's threshold rule: with microbatching enabled both thresholds must be >= num_ubatches
// (vLLM's config rejects lower ones: they allow an empty first microbatch).
TEST(MakeRecord, LowestThresholdIsNumUbatches) {
  dp_batch_request req = UbatchRequest(2, 1);
  req.ubatch.decode_token_threshold = 2;
  req.ubatch.prefill_token_threshold = 2;
  EXPECT_EQ(MakeOk(req).should_attempt_ubatch, 1);
  req.num_tokens_unpadded = 1;
  EXPECT_EQ(MakeOk(req).should_attempt_ubatch, 0);
}

TEST(MakeRecord, ThresholdsBelowNumUbatchesAreRefused) {
  struct Case {
    int32_t num_ubatches, decode, prefill;
    const char* field;
    const char* bound;
  };
  const Case cases[] = {
      {2, 1, 512, "ubatch.decode_token_threshold = 1", "ubatch.num_ubatches = 2"},
      {2, 32, 0, "ubatch.prefill_token_threshold = 0", "ubatch.num_ubatches = 2"},
      {4, 3, 512, "ubatch.decode_token_threshold = 3", "ubatch.num_ubatches = 4"},
      {4, 32, 3, "ubatch.prefill_token_threshold = 3", "ubatch.num_ubatches = 4"},
  };
  for (const Case& c : cases) {
    dp_batch_request req = UbatchRequest(100, 1);
    req.ubatch.num_ubatches = c.num_ubatches;
    req.ubatch.decode_token_threshold = c.decode;
    req.ubatch.prefill_token_threshold = c.prefill;
    dp_rank_record out{};
    EXPECT_EQ(dp_make_record(&req, &out), DP_ERR_INVALID_ARGUMENT) << c.field;
    EXPECT_TRUE(LastErrorMentions({c.field, c.bound}));
  }
}

TEST(MakeRecord, AttemptNeedsBothAllowAndEnabled) {
  dp_batch_request req = UbatchRequest(4096, 1);
  EXPECT_EQ(MakeOk(req).should_attempt_ubatch, 1);
  req.allow_microbatching = false;
  EXPECT_EQ(MakeOk(req).should_attempt_ubatch, 0);
  req.allow_microbatching = true;
  req.ubatch.enabled = false;
  EXPECT_EQ(MakeOk(req).should_attempt_ubatch, 0);
}

TEST(MakeRecord, ThresholdUsesUnpaddedTokens) {
  dp_batch_request req = UbatchRequest(31, 1);
  req.num_tokens_padded = 64;  // padding does not count towards the threshold
  EXPECT_EQ(MakeOk(req).should_attempt_ubatch, 0);
}

TEST(MakeRecord, DisabledUbatchIgnoresItsFields) {
  dp_batch_request req = DefaultRequest();
  req.ubatch.enabled = false;
  req.ubatch.num_ubatches = 0;
  req.ubatch.decode_token_threshold = -5;
  req.ubatch.prefill_token_threshold = -7;
  req.allow_microbatching = false;
  EXPECT_EQ(MakeOk(req).should_attempt_ubatch, 0);
  req.ubatch.num_ubatches = -1;
  EXPECT_EQ(MakeOk(req).should_attempt_ubatch, 0);
  req.ubatch.num_ubatches = 1;
  EXPECT_EQ(MakeOk(req).should_attempt_ubatch, 0);
}

TEST(MakeRecord, EnabledUbatchAcceptsNumUbatchesFromTwo) {
  dp_batch_request req = UbatchRequest(100, 1);
  for (int32_t n : {2, 3, 4, 32}) {  // up to the default decode threshold (32)
    req.ubatch.num_ubatches = n;
    EXPECT_EQ(MakeOk(req).should_attempt_ubatch, 1) << "num_ubatches " << n;
  }
  // More microbatches need thresholds at least as large (0.2's threshold rule).
  req.ubatch.num_ubatches = 64;
  req.ubatch.decode_token_threshold = 64;
  req.ubatch.prefill_token_threshold = 64;
  EXPECT_EQ(MakeOk(req).should_attempt_ubatch, 1) << "num_ubatches 64";
}

TEST(MakeRecord, UniformDecodeUnknownIsLegalOnlyWithoutMicrobatching) {
  dp_batch_request req = DefaultRequest();
  req.uniform_decode = -1;
  req.num_tokens_unpadded = 4096;
  req.ubatch.enabled = true;
  req.allow_microbatching = false;
  EXPECT_EQ(MakeOk(req).should_attempt_ubatch, 0);

  req.allow_microbatching = true;
  dp_rank_record rec = dpt::Poisoned<dp_rank_record>();
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, dp_make_record(&req, &rec));
  EXPECT_TRUE(LastErrorMentions({"uniform_decode", "-1"}));
  EXPECT_TRUE(dpt::IsPoisoned(rec));
}

TEST(MakeRecord, StructSizeLargerThanKnownIsAccepted) {
  // A caller compiled against a newer header: a bigger struct whose prefix is this one.
  struct Bigger {
    dp_batch_request base;
    int32_t future_fields[8];
  } big;
  std::memset(&big, 0, sizeof big);
  big.base = DefaultRequest();
  big.base.struct_size = sizeof big;
  big.base.num_tokens_unpadded = 5;
  dp_rank_record rec = dpt::Poisoned<dp_rank_record>();
  ASSERT_STATUS(DP_OK, dp_make_record(&big.base, &rec));
  EXPECT_EQ(rec.num_tokens_padded, 5);
}

// --- dp_make_record: every range error ----------------------------------------------------------

struct BadField {
  const char* name;     // what the case changes
  void (*mutate)(dp_batch_request*);
  const char* field;    // must appear in dp_last_error()
  const char* value;    // must appear in dp_last_error()
};

const BadField kBadFields[] = {
    {"unpadded_negative", [](dp_batch_request* r) { r->num_tokens_unpadded = -1; },
     "num_tokens_unpadded", "-1"},
    {"unpadded_int_min", [](dp_batch_request* r) { r->num_tokens_unpadded = INT32_MIN; },
     "num_tokens_unpadded", "-2147483648"},
    {"padded_minus_two", [](dp_batch_request* r) { r->num_tokens_padded = -2; },
     "num_tokens_padded", "-2"},
    {"padded_below_unpadded",
     [](dp_batch_request* r) {
       r->num_tokens_unpadded = 10;
       r->num_tokens_padded = 9;
     },
     "num_tokens_padded", "9"},
    {"uniform_decode_two", [](dp_batch_request* r) { r->uniform_decode = 2; }, "uniform_decode",
     "2"},
    {"uniform_decode_minus_two", [](dp_batch_request* r) { r->uniform_decode = -2; },
     "uniform_decode", "-2"},
    {"uniform_unknown_with_ubatch",
     [](dp_batch_request* r) {
       r->allow_microbatching = true;
       r->uniform_decode = -1;
     },
     "uniform_decode", "-1"},
    {"cudagraph_mode_minus_one", [](dp_batch_request* r) { r->cudagraph_mode = -1; },
     "cudagraph_mode", "-1"},
    {"cudagraph_mode_three", [](dp_batch_request* r) { r->cudagraph_mode = 3; }, "cudagraph_mode",
     "3"},
    {"pad_policy_minus_one", [](dp_batch_request* r) { r->pad_policy = -1; }, "pad_policy", "-1"},
    {"pad_policy_two", [](dp_batch_request* r) { r->pad_policy = 2; }, "pad_policy", "2"},
    {"num_ubatches_one",
     [](dp_batch_request* r) {
       r->ubatch.enabled = true;
       r->ubatch.num_ubatches = 1;
     },
     "num_ubatches", "1"},
    {"num_ubatches_zero",
     [](dp_batch_request* r) {
       r->ubatch.enabled = true;
       r->ubatch.num_ubatches = 0;
     },
     "num_ubatches", "0"},
    {"num_ubatches_negative",
     [](dp_batch_request* r) {
       r->ubatch.enabled = true;
       r->ubatch.num_ubatches = -3;
     },
     "num_ubatches", "-3"},
    {"decode_threshold_negative",
     [](dp_batch_request* r) {
       r->ubatch.enabled = true;
       r->ubatch.decode_token_threshold = -1;
     },
     "decode_token_threshold", "-1"},
    {"prefill_threshold_negative",
     [](dp_batch_request* r) {
       r->ubatch.enabled = true;
       r->ubatch.prefill_token_threshold = -4;
     },
     "prefill_token_threshold", "-4"},
    {"timeout_negative", [](dp_batch_request* r) { r->timeout_ms = -1; }, "timeout_ms", "-1"},
    {"step_id_negative", [](dp_batch_request* r) { r->step_id = -1; }, "req->step_id", "-1"},
    {"struct_size_zero", [](dp_batch_request* r) { r->struct_size = 0; }, "struct_size", "0"},
    {"struct_size_one_short_of_0_1",
     [](dp_batch_request* r) { r->struct_size = offsetof(dp_batch_request, step_id) - 1; },
     "req->struct_size", nullptr},
};

void PrintTo(const BadField& bad, std::ostream* os) { *os << bad.name; }

class MakeRecordBadField : public ::testing::TestWithParam<BadField> {};

TEST_P(MakeRecordBadField, Rejected) {
  const BadField& bad = GetParam();
  dp_batch_request req = DefaultRequest();
  bad.mutate(&req);
  dp_rank_record rec = dpt::Poisoned<dp_rank_record>();
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, dp_make_record(&req, &rec));
  if (bad.value != nullptr) {
    EXPECT_TRUE(LastErrorMentions({bad.field, bad.value}));
  } else {
    // The smallest size accepted is the 0.1 request: everything before step_id.
    EXPECT_TRUE(LastErrorMentions({bad.field, std::to_string(offsetof(dp_batch_request, step_id) - 1),
                                   std::to_string(offsetof(dp_batch_request, step_id))}));
  }
  EXPECT_TRUE(dpt::IsPoisoned(rec)) << "the record was written on failure";
}

INSTANTIATE_TEST_SUITE_P(Each, MakeRecordBadField, ::testing::ValuesIn(kBadFields),
                         [](const ::testing::TestParamInfo<BadField>& info) {
                           return std::string(info.param.name);
                         });

TEST(MakeRecord, NullRequest) {
  dp_rank_record rec = dpt::Poisoned<dp_rank_record>();
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, dp_make_record(nullptr, &rec));
  EXPECT_TRUE(LastErrorMentions({"req"}));
  EXPECT_TRUE(dpt::IsPoisoned(rec));
}

TEST(MakeRecord, NullOut) {
  const dp_batch_request req = DefaultRequest();
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, dp_make_record(&req, nullptr));
  EXPECT_TRUE(LastErrorMentions({"out"}));
}

TEST(MakeRecord, RequestIsNotModified) {
  dp_batch_request req = DefaultRequest();
  req.num_tokens_unpadded = 3;
  const dp_batch_request before = req;
  dp_rank_record rec;
  ASSERT_STATUS(DP_OK, dp_make_record(&req, &rec));
  EXPECT_EQ(std::memcmp(&before, &req, sizeof req), 0);
}

}  // namespace
