/* The header compiled as C99 with -Wall -Wextra -Werror -pedantic, included twice, before
 * anything else (it must be self-contained). Also pins the ABI layout seen from C and the
 * C-only behaviours (enum values C++ cannot form), and links a host-path call from C. */
#include <dpcoord.h>
#include <dpcoord.h> /* twice: the include guard */

#include <stddef.h>
#include <stdio.h>
#include <string.h>

#define DPT_STATIC_ASSERT(name, cond) typedef char dpt_static_assert_##name[(cond) ? 1 : -1]

/* Callers pass NCCL's and CUDA's own handle types unchanged. */
typedef struct ncclComm* ncclComm_t;
typedef struct CUstream_st* cudaStream_t;

/* The 20-byte wire record: five int32_t in this order. */
DPT_STATIC_ASSERT(record_size, sizeof(dp_rank_record) == 20);
DPT_STATIC_ASSERT(record_0, offsetof(dp_rank_record, num_tokens_unpadded) == 0);
DPT_STATIC_ASSERT(record_1, offsetof(dp_rank_record, num_tokens_padded) == 4);
DPT_STATIC_ASSERT(record_2, offsetof(dp_rank_record, should_attempt_ubatch) == 8);
DPT_STATIC_ASSERT(record_3, offsetof(dp_rank_record, should_attempt_dp_pad) == 12);
DPT_STATIC_ASSERT(record_4, offsetof(dp_rank_record, cudagraph_mode) == 16);

/* The request: 0.1's 48 bytes, 0.2's step_id, then 0.3's fields (append-only). */
DPT_STATIC_ASSERT(ubatch_size, sizeof(dp_ubatch_config) == 16);
DPT_STATIC_ASSERT(ubatch_0, offsetof(dp_ubatch_config, enabled) == 0);
DPT_STATIC_ASSERT(ubatch_1, offsetof(dp_ubatch_config, num_ubatches) == 4);
DPT_STATIC_ASSERT(ubatch_2, offsetof(dp_ubatch_config, decode_token_threshold) == 8);
DPT_STATIC_ASSERT(ubatch_3, offsetof(dp_ubatch_config, prefill_token_threshold) == 12);
DPT_STATIC_ASSERT(request_size, sizeof(dp_batch_request) == 96);
DPT_STATIC_ASSERT(request_0, offsetof(dp_batch_request, struct_size) == 0);
DPT_STATIC_ASSERT(request_1, offsetof(dp_batch_request, num_tokens_unpadded) == 4);
DPT_STATIC_ASSERT(request_2, offsetof(dp_batch_request, num_tokens_padded) == 8);
DPT_STATIC_ASSERT(request_3, offsetof(dp_batch_request, allow_microbatching) == 12);
DPT_STATIC_ASSERT(request_4, offsetof(dp_batch_request, allow_dp_padding) == 13);
DPT_STATIC_ASSERT(request_5, offsetof(dp_batch_request, uniform_decode) == 16);
DPT_STATIC_ASSERT(request_6, offsetof(dp_batch_request, cudagraph_mode) == 20);
DPT_STATIC_ASSERT(request_7, offsetof(dp_batch_request, pad_policy) == 24);
DPT_STATIC_ASSERT(request_8, offsetof(dp_batch_request, ubatch) == 28);
DPT_STATIC_ASSERT(request_9, offsetof(dp_batch_request, timeout_ms) == 44);
DPT_STATIC_ASSERT(request_10, offsetof(dp_batch_request, step_id) == 48);
DPT_STATIC_ASSERT(request_11, offsetof(dp_batch_request, rules) == 56);
DPT_STATIC_ASSERT(request_12, offsetof(dp_batch_request, parent_step_id) == 64);
DPT_STATIC_ASSERT(request_13, offsetof(dp_batch_request, num_reqs) == 72);
DPT_STATIC_ASSERT(request_14, offsetof(dp_batch_request, uniform_token_count) == 76);
DPT_STATIC_ASSERT(request_15, offsetof(dp_batch_request, max_query_len) == 80);
DPT_STATIC_ASSERT(request_16, offsetof(dp_batch_request, num_active_loras) == 84);
DPT_STATIC_ASSERT(request_17, offsetof(dp_batch_request, allow_skip_drafts) == 88);
DPT_STATIC_ASSERT(request_18, offsetof(dp_batch_request, need_eager) == 89);

/* The result (LP64: 8-byte pointers): 0.2's leading struct_size, 0.1's fields, step_id, then
   0.3's fields. */
DPT_STATIC_ASSERT(result_size, sizeof(void*) != 8 || sizeof(dp_batch_result) == 128);
DPT_STATIC_ASSERT(result_0, offsetof(dp_batch_result, struct_size) == 0);
DPT_STATIC_ASSERT(result_1, offsetof(dp_batch_result, should_ubatch) == 4);
DPT_STATIC_ASSERT(result_2, offsetof(dp_batch_result, should_dp_pad) == 5);
DPT_STATIC_ASSERT(result_3, offsetof(dp_batch_result, has_num_tokens_after_padding) == 6);
DPT_STATIC_ASSERT(result_4, offsetof(dp_batch_result, synced_cudagraph_mode) == 8);
DPT_STATIC_ASSERT(result_5, offsetof(dp_batch_result, dp_rank) == 12);
DPT_STATIC_ASSERT(result_6, offsetof(dp_batch_result, dp_size) == 16);
DPT_STATIC_ASSERT(result_7, offsetof(dp_batch_result, num_tokens_after_padding_self) == 20);
DPT_STATIC_ASSERT(result_8, offsetof(dp_batch_result, max_num_tokens_padded) == 24);
DPT_STATIC_ASSERT(result_9, offsetof(dp_batch_result, min_num_tokens_unpadded) == 28);
DPT_STATIC_ASSERT(result_10,
                  sizeof(void*) != 8 || offsetof(dp_batch_result, num_tokens_after_padding) == 32);
DPT_STATIC_ASSERT(result_11, sizeof(void*) != 8 ||
                                 offsetof(dp_batch_result, num_tokens_after_padding_device) == 40);
DPT_STATIC_ASSERT(result_12, sizeof(void*) != 8 || offsetof(dp_batch_result, step_id) == 48);
DPT_STATIC_ASSERT(result_13, sizeof(void*) != 8 || offsetof(dp_batch_result, last_rank) == 56);
DPT_STATIC_ASSERT(result_14, sizeof(void*) != 8 || offsetof(dp_batch_result, arrival_skew_ns) == 64);
DPT_STATIC_ASSERT(result_15, sizeof(void*) != 8 || offsetof(dp_batch_result, idle) == 80);
DPT_STATIC_ASSERT(result_16, sizeof(void*) != 8 || offsetof(dp_batch_result, graph_mode) == 84);
DPT_STATIC_ASSERT(result_17, sizeof(void*) != 8 || offsetof(dp_batch_result, max_num_reqs) == 116);
DPT_STATIC_ASSERT(result_18, sizeof(void*) != 8 || offsetof(dp_batch_result, rules) == 120);

/* Status codes are numbered explicitly and never renumbered. */
DPT_STATIC_ASSERT(status_0, DP_OK == 0 && DP_ERR_INVALID_ARGUMENT == 1);
DPT_STATIC_ASSERT(status_1, DP_ERR_INCONSISTENT_RANKS == 2 && DP_ERR_CUDA == 3);
DPT_STATIC_ASSERT(status_2, DP_ERR_NCCL == 4 && DP_ERR_TIMEOUT == 5);
DPT_STATIC_ASSERT(status_3, DP_ERR_LIBRARY_UNAVAILABLE == 6 && DP_ERR_BUSY == 7);
DPT_STATIC_ASSERT(status_4, DP_ERR_INTERNAL == 8 && DP_ERR_CANCELLED == 9);
DPT_STATIC_ASSERT(status_5, DP_ERR_PEER_EXITED == 10 && DP_ERR_CORRUPT == 11);
DPT_STATIC_ASSERT(constants, DP_PAD_POLICY_EXPLICIT == 0 && DP_PAD_POLICY_WHEN_CUDAGRAPH == 1 &&
                                 DP_CUDAGRAPH_NONE == 0 && DP_CUDAGRAPH_PIECEWISE == 1 &&
                                 DP_CUDAGRAPH_FULL == 2);

/* Every signature, as C sees it (the init functions are the header's inlines). */
static void (*const p_init)(dp_batch_request*) = dp_batch_request_init;
static void (*const p_result_init)(dp_batch_result*) = dp_batch_result_init;
static void (*const p_init_sized)(dp_batch_request*, size_t) = dp_batch_request_init_sized;
static void (*const p_result_init_sized)(dp_batch_result*, size_t) = dp_batch_result_init_sized;
static dp_status (*const p_make)(const dp_batch_request*, dp_rank_record*) = dp_make_record;
static dp_status (*const p_decide)(const dp_rank_record*, int32_t, int32_t, int32_t, int32_t,
                                   int32_t*, dp_batch_result*) = dp_decide_batch;
static dp_status (*const p_coordinate)(ncclComm_t, cudaStream_t, const dp_batch_request*,
                                       dp_batch_result*) = dp_coordinate_batch;
static dp_status (*const p_release)(ncclComm_t) = dp_release;
static const char* (*const p_status_string)(dp_status) = dp_status_string;
static const char* (*const p_last_error)(void) = dp_last_error;
static const char* (*const p_version)(void) = dp_version;

static int failures = 0;

static void check(int ok, const char* what) {
  if (!ok) {
    fprintf(stderr, "FAILED: %s\n", what);
    ++failures;
  }
}

int main(void) {
  char version[32];
  dp_batch_request req;
  dp_rank_record rec;
  dp_batch_result res;
  dp_status s;

  snprintf(version, sizeof version, "%d.%d.%d", DPCOORD_VERSION_MAJOR, DPCOORD_VERSION_MINOR,
           DPCOORD_VERSION_PATCH);
  check(strcmp(p_version(), version) == 0, "dp_version() equals the version macros");

  /* Any value is accepted from C; unknown ones have a name too. */
  check(strcmp(p_status_string((dp_status)12), "DP_ERR_UNKNOWN") == 0, "status 12");
  check(strcmp(p_status_string(DP_ERR_PEER_EXITED), "DP_ERR_PEER_EXITED") == 0, "status 10");
  check(strcmp(p_status_string((dp_status)1000), "DP_ERR_UNKNOWN") == 0, "status 1000");
  check(strcmp(p_status_string((dp_status)0x7FFFFFFF), "DP_ERR_UNKNOWN") == 0, "status INT_MAX");
  check(strcmp(p_status_string((dp_status)-1), "DP_ERR_UNKNOWN") == 0, "status -1");
  check(strcmp(p_status_string(DP_ERR_TIMEOUT), "DP_ERR_TIMEOUT") == 0, "DP_ERR_TIMEOUT");

  /* The host path from C. */
  p_init(&req);
  check(req.struct_size == sizeof req, "struct_size");
  check(req.step_id == 0, "step_id defaults to 0 (unchecked)");
  p_result_init(&res);
  check(res.struct_size == sizeof res, "result struct_size");
  p_init_sized(&req, sizeof req);
  p_result_init_sized(&res, sizeof res);
  req.num_tokens_unpadded = 17;
  s = p_make(&req, &rec);
  check(s == DP_OK, "dp_make_record");
  check(rec.num_tokens_padded == 17, "padded defaults to unpadded");
  s = p_decide(&rec, 1, 0, DP_PAD_POLICY_EXPLICIT, 2, NULL, &res);
  check(s == DP_OK, "dp_decide_batch");
  check(res.num_tokens_after_padding_self == 17 && !res.has_num_tokens_after_padding,
        "dp_size 1 result");

  /* NULL communicators are refused; errors are reported through dp_last_error. */
  check(p_coordinate(NULL, NULL, &req, &res) == DP_ERR_INVALID_ARGUMENT, "coordinate(NULL)");
  check(p_release(NULL) == DP_ERR_INVALID_ARGUMENT, "release(NULL)");
  check(strstr(p_last_error(), "comm") != NULL, "dp_last_error names comm");

  if (failures == 0) printf("header_c: C%ld OK, dpcoord %s\n", (long)__STDC_VERSION__, p_version());
  return failures == 0 ? 0 : 1;
}
