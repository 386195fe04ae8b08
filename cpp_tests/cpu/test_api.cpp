// dp_status_string, dp_version, dp_last_error, and the argument checks of the collective
// entry points (whose GPU behaviour the GPU suite tests).
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>

#include "test_util.h"

using dpt::DefaultRequest;
using dpt::LastErrorMentions;

namespace {

TEST(StatusString, EveryCode) {
  const struct {
    dp_status status;
    int value;
    const char* name;
  } codes[] = {
      {DP_OK, 0, "DP_OK"},
      {DP_ERR_INVALID_ARGUMENT, 1, "DP_ERR_INVALID_ARGUMENT"},
      {DP_ERR_INCONSISTENT_RANKS, 2, "DP_ERR_INCONSISTENT_RANKS"},
      {DP_ERR_CUDA, 3, "DP_ERR_CUDA"},
      {DP_ERR_NCCL, 4, "DP_ERR_NCCL"},
      {DP_ERR_TIMEOUT, 5, "DP_ERR_TIMEOUT"},
      {DP_ERR_LIBRARY_UNAVAILABLE, 6, "DP_ERR_LIBRARY_UNAVAILABLE"},
      {DP_ERR_BUSY, 7, "DP_ERR_BUSY"},
      {DP_ERR_INTERNAL, 8, "DP_ERR_INTERNAL"},
      {DP_ERR_CANCELLED, 9, "DP_ERR_CANCELLED"},
      {DP_ERR_PEER_EXITED, 10, "DP_ERR_PEER_EXITED"},
      {DP_ERR_CORRUPT, 11, "DP_ERR_CORRUPT"},
  };
  for (const auto& c : codes) {
    EXPECT_EQ(static_cast<int>(c.status), c.value) << c.name << " was renumbered";
    ASSERT_NE(dp_status_string(c.status), nullptr);
    EXPECT_STREQ(dp_status_string(c.status), c.name);
    // Static: the same pointer every time.
    EXPECT_EQ(dp_status_string(c.status), dp_status_string(c.status));
  }
}

TEST(StatusString, UnknownCode) {
  // Values a C++ enum of this range can hold; larger ones are tested from C (header_c.c).
  for (int v : {12, 13, 15}) {
    ASSERT_NE(dp_status_string(static_cast<dp_status>(v)), nullptr);
    EXPECT_STREQ(dp_status_string(static_cast<dp_status>(v)), "DP_ERR_UNKNOWN") << v;
  }
}

TEST(Version, MatchesTheMacros) {
  char expected[64];
  std::snprintf(expected, sizeof expected, "%d.%d.%d", DPCOORD_VERSION_MAJOR,
                DPCOORD_VERSION_MINOR, DPCOORD_VERSION_PATCH);
  ASSERT_NE(dp_version(), nullptr);
  EXPECT_STREQ(dp_version(), expected);
  EXPECT_EQ(dp_version(), dp_version());
}

TEST(Version, MatchesTheCMakePackage) {
  EXPECT_STREQ(dp_version(), DPCOORD_PACKAGE_VERSION);
}

TEST(LastError, EmptyOnAFreshThread) {
  std::string seen = "(not run)";
  std::thread([&seen] {
    const char* e = dp_last_error();
    seen = e == nullptr ? "(null)" : e;
  }).join();
  EXPECT_EQ(seen, "");
}

TEST(LastError, NamesTheFieldAndValue) {
  dp_batch_request req = DefaultRequest();
  req.num_tokens_unpadded = -1;
  dp_rank_record rec;
  ASSERT_STATUS(DP_ERR_INVALID_ARGUMENT, dp_make_record(&req, &rec));
  EXPECT_TRUE(LastErrorMentions({"num_tokens_unpadded", "-1"}));
}

TEST(LastError, SurvivesSuccessfulCalls) {
  dp_batch_request req = DefaultRequest();
  req.cudagraph_mode = 7;
  dp_rank_record rec;
  ASSERT_STATUS(DP_ERR_INVALID_ARGUMENT, dp_make_record(&req, &rec));
  const std::string failure = dp_last_error();
  req.cudagraph_mode = 1;
  ASSERT_STATUS(DP_OK, dp_make_record(&req, &rec));
  dp_batch_result r;
  dp_batch_result_init(&r);
  ASSERT_STATUS(DP_OK, dp_decide_batch(&rec, 1, 0, 0, 2, nullptr, &r));
  EXPECT_EQ(std::string(dp_last_error()), failure);
  EXPECT_TRUE(LastErrorMentions({"cudagraph_mode", "7"}));
}

TEST(LastError, ReplacedByTheNextFailure) {
  dp_batch_request req = DefaultRequest();
  req.timeout_ms = -9;
  dp_rank_record rec;
  ASSERT_STATUS(DP_ERR_INVALID_ARGUMENT, dp_make_record(&req, &rec));
  EXPECT_TRUE(LastErrorMentions({"timeout_ms", "-9"}));
  req.timeout_ms = 0;
  req.pad_policy = 5;
  ASSERT_STATUS(DP_ERR_INVALID_ARGUMENT, dp_make_record(&req, &rec));
  EXPECT_TRUE(LastErrorMentions({"pad_policy", "5"}));
  EXPECT_EQ(std::string(dp_last_error()).find("timeout_ms"), std::string::npos);
}

TEST(LastError, IsThreadLocal) {
  dp_batch_request req = DefaultRequest();
  req.num_tokens_padded = -3;
  dp_rank_record rec;
  ASSERT_STATUS(DP_ERR_INVALID_ARGUMENT, dp_make_record(&req, &rec));
  std::string other_before, other_after;
  std::thread([&] {
    other_before = dp_last_error();
    dp_batch_request r2 = DefaultRequest();
    r2.uniform_decode = 9;
    dp_rank_record rec2;
    (void)dp_make_record(&r2, &rec2);
    other_after = dp_last_error();
  }).join();
  EXPECT_EQ(other_before, "");
  EXPECT_NE(other_after.find("uniform_decode"), std::string::npos) << other_after;
  EXPECT_TRUE(LastErrorMentions({"num_tokens_padded", "-3"}));  // ours is unchanged
}

// --- dp_coordinate_batch / dp_release: NULL arguments ------------------------------------
// Only NULL (and invalid-request) cases: what they return for real communicators is the
// GPU suite's business. `FakeComm` is never dereferenced: NULLs are refused first, and an
// invalid request, which would join the exchange as the invalid-request marker, finds no
// NCCL here (ctest sets DPCOORD_NCCL_LIBRARY to a missing file) and comes back named.

ncclComm* FakeComm() {
  static char storage[64];
  return reinterpret_cast<ncclComm*>(storage);
}

TEST(CoordinateBatch, NullCommunicator) {
  const dp_batch_request req = DefaultRequest();
  dp_batch_result r = dpt::PoisonedResult();
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, dp_coordinate_batch(nullptr, nullptr, &req, &r));
  EXPECT_TRUE(LastErrorMentions({"comm"}));
  EXPECT_TRUE(dpt::IsPoisoned(r));
}

TEST(CoordinateBatch, EverythingNull) {
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, dp_coordinate_batch(nullptr, nullptr, nullptr, nullptr));
}

TEST(CoordinateBatch, NullRequest) {
  dp_batch_result r = dpt::PoisonedResult();
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, dp_coordinate_batch(FakeComm(), nullptr, nullptr, &r));
  EXPECT_TRUE(LastErrorMentions({"req"}));
  EXPECT_TRUE(dpt::IsPoisoned(r));
}

TEST(CoordinateBatch, NullResult) {
  const dp_batch_request req = DefaultRequest();
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, dp_coordinate_batch(FakeComm(), nullptr, &req, nullptr));
  EXPECT_TRUE(LastErrorMentions({"res", "NULL"}));
}

TEST(CoordinateBatch, InvalidRequestIsNamedWhenNoMarkerCanBeSent) {
  dp_batch_request req = DefaultRequest();
  req.num_tokens_unpadded = -1;
  dp_batch_result r = dpt::PoisonedResult();
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, dp_coordinate_batch(FakeComm(), nullptr, &req, &r));
  EXPECT_TRUE(LastErrorMentions({"num_tokens_unpadded", "-1", "other ranks are not told"}));
  EXPECT_TRUE(dpt::IsPoisoned(r));
  req = DefaultRequest();
  req.struct_size = 4;
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, dp_coordinate_batch(FakeComm(), nullptr, &req, &r));
  EXPECT_TRUE(LastErrorMentions({"struct_size"}));
  EXPECT_TRUE(dpt::IsPoisoned(r));
}

TEST(Release, NullCommunicator) {
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, dp_release(nullptr));
  EXPECT_TRUE(LastErrorMentions({"comm"}));
}

}  // namespace
