// Helpers shared by the CPU GoogleTest suite: a reference model of docs/ARCHITECTURE.md, "Semantics"
// (written from the contract, independently of the Rust code), record builders and
// byte-level "untouched" checks.
#ifndef DPCOORD_TEST_UTIL_H
#define DPCOORD_TEST_UTIL_H

#include <dpcoord.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>
#include "../common/poison.h"

namespace dpt {

// A status printed by name in assertion failures.
inline std::string Name(dp_status s) { return dp_status_string(s); }

// Status comparison that prints names and, on mismatch, this thread's dp_last_error().
inline ::testing::AssertionResult StatusEq(const char* expected_expr, const char* actual_expr,
                                           dp_status expected, dp_status actual) {
  if (expected == actual) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << actual_expr << " returned " << Name(actual) << ", expected " << Name(expected)
         << " (" << expected_expr << "); dp_last_error(): \"" << dp_last_error() << "\"";
}

// Both accept `<< message`, like every GoogleTest assertion.
#define EXPECT_STATUS(expected, expr) EXPECT_PRED_FORMAT2(::dpt::StatusEq, expected, expr)
#define ASSERT_STATUS(expected, expr) ASSERT_PRED_FORMAT2(::dpt::StatusEq, expected, expr)

// dp_last_error() of this thread contains every one of `parts`.
inline ::testing::AssertionResult LastErrorMentions(std::initializer_list<std::string> parts) {
  const std::string message = dp_last_error();
  for (const std::string& part : parts) {
    if (message.find(part) == std::string::npos) {
      return ::testing::AssertionFailure()
             << "dp_last_error() = \"" << message << "\" does not mention \"" << part << "\"";
    }
  }
  return ::testing::AssertionSuccess();
}

inline dp_batch_request DefaultRequest() {
  dp_batch_request req;
  std::memset(&req, 0x5A, sizeof req);  // init must overwrite every field
  dp_batch_request_init(&req);
  return req;
}

inline dp_rank_record Rec(int32_t unpadded, int32_t padded, int32_t attempt_ubatch,
                          int32_t attempt_dp_pad, int32_t mode) {
  dp_rank_record r;
  r.num_tokens_unpadded = unpadded;
  r.num_tokens_padded = padded;
  r.should_attempt_ubatch = attempt_ubatch;
  r.should_attempt_dp_pad = attempt_dp_pad;
  r.cudagraph_mode = mode;
  return r;
}

// Byte patterns for "outputs untouched on failure" (common/poison.h).
using dpcoord_test::IsPoisoned;
using dpcoord_test::Poisoned;

constexpr int32_t kPoison32 = static_cast<int32_t>(0xA5A5A5A5u);

// A result filled with the poison pattern whose struct_size is set as dp_batch_result_init
// sets it (a poisoned struct_size would claim a 2.7 GB newer struct).
inline dp_batch_result PoisonedResult() {
  dp_batch_result r = Poisoned<dp_batch_result>();
  r.struct_size = sizeof r;
  return r;
}

// Whether every byte of `r` after its struct_size still holds the poison pattern (chosen over
// the template for results). struct_size is the caller's input, which no call but
// dp_batch_result_init writes, so a Poisoned<dp_batch_result>() and a PoisonedResult() both
// count.
inline bool IsPoisoned(const dp_batch_result& r) {
  const dp_batch_result expected = PoisonedResult();
  const size_t after = sizeof r.struct_size;
  return std::memcmp(reinterpret_cast<const unsigned char*>(&r) + after,
                     reinterpret_cast<const unsigned char*>(&expected) + after,
                     sizeof r - after) == 0;
}

// The decision of docs/ARCHITECTURE.md ("Semantics", "The decision") for valid records
// (reference model).
struct Expected {
  bool inconsistent = false;  // DP_ERR_INCONSISTENT_RANKS
  bool should_ubatch = false;
  bool should_dp_pad = false;
  bool has_array = false;
  int32_t synced_mode = 0;
  int32_t self = 0;
  int32_t max_padded = 0;
  int32_t min_unpadded = 0;
  std::vector<int32_t> array;  // dp_size entries when has_array
};

inline Expected Reference(const std::vector<dp_rank_record>& recs, int32_t rank,
                          int32_t policy, int32_t n) {
  Expected e;
  const dp_rank_record& own = recs[static_cast<size_t>(rank)];
  if (recs.size() == 1) {
    e.synced_mode = own.cudagraph_mode;
    e.self = own.num_tokens_padded;
    e.max_padded = own.num_tokens_padded;
    e.min_unpadded = own.num_tokens_unpadded;
    return e;
  }
  int32_t min_unpadded = recs[0].num_tokens_unpadded, max_padded = recs[0].num_tokens_padded;
  int32_t min_mode = recs[0].cudagraph_mode;
  bool all_ubatch = true, all_pad = true, any_pad = false;
  for (const dp_rank_record& r : recs) {
    min_unpadded = std::min(min_unpadded, r.num_tokens_unpadded);
    max_padded = std::max(max_padded, r.num_tokens_padded);
    min_mode = std::min(min_mode, r.cudagraph_mode);
    all_ubatch = all_ubatch && r.should_attempt_ubatch == 1;
    all_pad = all_pad && r.should_attempt_dp_pad == 1;
    any_pad = any_pad || r.should_attempt_dp_pad == 1;
  }
  if (policy == DP_PAD_POLICY_EXPLICIT && any_pad && !all_pad) {
    e.inconsistent = true;
    return e;
  }
  const int64_t last_ubatch_empty_lhs =
      (static_cast<int64_t>(max_padded) / n) * (static_cast<int64_t>(n) - 1);
  const bool last_ubatch_empty = last_ubatch_empty_lhs >= min_unpadded;
  e.should_ubatch = all_ubatch && !last_ubatch_empty;
  e.should_dp_pad = policy == DP_PAD_POLICY_EXPLICIT ? all_pad : min_mode != DP_CUDAGRAPH_NONE;
  e.should_dp_pad = e.should_dp_pad || e.should_ubatch;
  e.has_array = true;
  e.synced_mode = min_mode;
  e.max_padded = max_padded;
  e.min_unpadded = min_unpadded;
  for (const dp_rank_record& r : recs) {
    e.array.push_back(e.should_dp_pad ? max_padded : r.num_tokens_padded);
  }
  e.self = e.array[static_cast<size_t>(rank)];
  return e;
}

// Compares a successful dp_decide_batch result (with an out array `array`) to the model.
inline ::testing::AssertionResult Matches(const Expected& e, const dp_batch_result& r,
                                          const int32_t* array, int32_t rank, int32_t size) {
  ::testing::AssertionResult fail = ::testing::AssertionFailure();
  bool ok = true;
#define DPT_CHECK(got, want)                                                      \
  if ((got) != (want)) {                                                          \
    ok = false;                                                                   \
    fail << #got << " = " << (got) << ", expected " << (want) << "; ";            \
  }
  DPT_CHECK(r.should_ubatch, e.should_ubatch);
  DPT_CHECK(r.should_dp_pad, e.should_dp_pad);
  DPT_CHECK(r.has_num_tokens_after_padding, e.has_array);
  DPT_CHECK(r.synced_cudagraph_mode, e.synced_mode);
  DPT_CHECK(r.dp_rank, rank);
  DPT_CHECK(r.dp_size, size);
  DPT_CHECK(r.num_tokens_after_padding_self, e.self);
  DPT_CHECK(r.max_num_tokens_padded, e.max_padded);
  DPT_CHECK(r.min_num_tokens_unpadded, e.min_unpadded);
  DPT_CHECK(r.num_tokens_after_padding, e.has_array ? array : nullptr);
  DPT_CHECK(r.num_tokens_after_padding_device, static_cast<const int32_t*>(nullptr));
  if (e.has_array && array != nullptr) {
    for (int32_t i = 0; i < size; ++i) {
      DPT_CHECK(array[i], e.array[static_cast<size_t>(i)]);
    }
  }
#undef DPT_CHECK
  if (ok) return ::testing::AssertionSuccess();
  return fail;
}

}  // namespace dpt

#endif  // DPCOORD_TEST_UTIL_H
