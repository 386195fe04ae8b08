// The header compiled as C++ (built twice: C++11 and C++17) with -Wall -Wextra -Werror
// -pedantic, included twice, before anything else. Pins what C++ callers rely on.
#include <dpcoord.h>
#include <dpcoord.h>  // twice: the include guard

#include <cstddef>
#include <cstdio>
#include <cstring>
#include <type_traits>

// Callers pass NCCL's and CUDA's own handle types unchanged (as nccl.h / cuda_runtime_api.h
// declare them).
typedef struct ncclComm* ncclComm_t;
typedef struct CUstream_st* cudaStream_t;

static_assert(std::is_standard_layout<dp_rank_record>::value, "C layout");
static_assert(std::is_trivially_copyable<dp_rank_record>::value, "memcpy-able wire record");
static_assert(std::is_standard_layout<dp_batch_request>::value, "C layout");
static_assert(std::is_trivially_copyable<dp_batch_request>::value, "C layout");
static_assert(std::is_standard_layout<dp_batch_result>::value, "C layout");
static_assert(std::is_trivially_copyable<dp_batch_result>::value, "C layout");
static_assert(sizeof(dp_rank_record) == 20, "the 20-byte wire record");
static_assert(sizeof(dp_batch_request) == 96, "the 0.3 request layout");
static_assert(offsetof(dp_batch_request, timeout_ms) == 44, "the 0.1 fields are unchanged");
static_assert(offsetof(dp_batch_request, step_id) == 48, "0.2 appends step_id");
static_assert(offsetof(dp_batch_request, rules) == 56, "0.3 appends its fields after step_id");
static_assert(alignof(dp_batch_request) == 8, "int64_t step_id");
static_assert(sizeof(void*) != 8 || sizeof(dp_batch_result) == 128, "the 0.3 result layout");
static_assert(sizeof(void*) != 8 || offsetof(dp_batch_result, last_rank) == 56,
              "0.3 appends its fields after step_id");
static_assert(offsetof(dp_batch_result, struct_size) == 0, "0.2: the result starts with its size");
static_assert(DP_OK == 0 && DP_ERR_INTERNAL == 8 && DP_ERR_PEER_EXITED == 10, "status numbering");

// Every signature, with C linkage, as C++ sees it.
extern "C" {
typedef void init_fn(dp_batch_request*);
typedef dp_status make_fn(const dp_batch_request*, dp_rank_record*);
typedef dp_status decide_fn(const dp_rank_record*, int32_t, int32_t, int32_t, int32_t, int32_t*,
                            dp_batch_result*);
typedef dp_status coordinate_fn(ncclComm_t, cudaStream_t, const dp_batch_request*,
                                dp_batch_result*);
typedef dp_status release_fn(ncclComm_t);
typedef const char* status_string_fn(dp_status);
typedef const char* text_fn(void);
}
static init_fn* const p_init = &dp_batch_request_init;
static make_fn* const p_make = &dp_make_record;
static decide_fn* const p_decide = &dp_decide_batch;
static coordinate_fn* const p_coordinate = &dp_coordinate_batch;
static release_fn* const p_release = &dp_release;
static status_string_fn* const p_status_string = &dp_status_string;
static text_fn* const p_last_error = &dp_last_error;
static text_fn* const p_version = &dp_version;

int main() {
  int failures = 0;
  dp_batch_request req;
  p_init(&req);
  req.num_tokens_unpadded = 3;
  dp_rank_record recs[2];
  if (p_make(&req, &recs[0]) != DP_OK) ++failures;
  recs[1] = recs[0];
  int32_t after[2] = {0, 0};
  dp_batch_result res;
  dp_batch_result_init(&res);
  if (res.struct_size != sizeof res) ++failures;
  if (p_decide(recs, 2, 1, DP_PAD_POLICY_EXPLICIT, 2, after, &res) != DP_OK) ++failures;
  if (res.num_tokens_after_padding != after || after[1] != 3) ++failures;
  if (p_coordinate(nullptr, nullptr, &req, &res) != DP_ERR_INVALID_ARGUMENT) ++failures;
  if (p_release(nullptr) != DP_ERR_INVALID_ARGUMENT) ++failures;
  if (std::strcmp(p_status_string(DP_ERR_BUSY), "DP_ERR_BUSY") != 0) ++failures;
  if (std::strstr(p_last_error(), "comm") == nullptr) ++failures;
  if (failures != 0) {
    std::fprintf(stderr, "header_cxx: %d check(s) failed\n", failures);
    return 1;
  }
  std::printf("header_cxx: C++%ld OK, dpcoord %s\n", static_cast<long>(__cplusplus),
              p_version());
  return 0;
}
