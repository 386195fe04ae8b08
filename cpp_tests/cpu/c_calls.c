/* The 0.2 host calls made from C (compiled as C by the CPU suite): dp_make_ubatch_slices on a
 * vLLM case and dp_decide_batch_with_options with a dead rank, through the header's C inline
 * dp_decide_options_init. Each returns 0, or the line of the first failed check; the GoogleTest
 * cases in test_slices.cpp and test_options.cpp assert 0. */
#include <dpcoord.h>
#include <string.h>

#include "c_calls.h"

#define DPT_CHECK_C(cond)       \
  do {                          \
    if (!(cond)) return __LINE__; \
  } while (0)

/* vLLM tests/v1/attention/test_attention_splitting.py,
 * test_prefill_split_across_ubatches[[32, 40]-[8, 8]-12-2-1], padded to P = 20, Rp = 4. */
int dpt_c_slices(void) {
  const int32_t counts[2] = {8, 8};
  dp_ubatch_slice slices[2];
  dp_ubatch_slice padded[2];
  memset(slices, 0xA5, sizeof slices);
  DPT_CHECK_C(dp_make_ubatch_slices(counts, 2, 16, -1, 2, 12, slices, NULL) == DP_OK);
  DPT_CHECK_C(slices[0].request_begin == 0 && slices[0].request_end == 2);
  DPT_CHECK_C(slices[0].token_begin == 0 && slices[0].token_end == 12);
  DPT_CHECK_C(slices[1].request_begin == 1 && slices[1].request_end == 2);
  DPT_CHECK_C(slices[1].token_begin == 12 && slices[1].token_end == 16);
  DPT_CHECK_C(dp_make_ubatch_slices(counts, 2, 20, 4, 2, -1, slices, padded) == DP_OK);
  DPT_CHECK_C(slices[1].token_begin == 10 && slices[1].token_end == 16);
  DPT_CHECK_C(padded[1].request_end == 4 && padded[1].token_end == 20);
  /* A bad input is named and writes nothing. */
  memset(slices, 0xA5, sizeof slices);
  DPT_CHECK_C(dp_make_ubatch_slices(counts, 2, 15, -1, 2, -1, slices, NULL) ==
              DP_ERR_INVALID_ARGUMENT);
  DPT_CHECK_C(strstr(dp_last_error(), "sum(num_scheduled_tokens) = 16") != NULL);
  DPT_CHECK_C(slices[0].request_begin == (int32_t)0xA5A5A5A5);
  return 0;
}

/* Four ranks, rank 2 dead with garbage in its slot, step ids checked. */
int dpt_c_dead_rank(void) {
  dp_rank_record records[4];
  const uint8_t live[4] = {1, 1, 0, 1};
  const int64_t ids[4] = {7, 7, 99, 7};
  int32_t after[4];
  dp_decide_options opts;
  dp_batch_result res;
  int r;
  for (r = 0; r < 4; ++r) {
    records[r].num_tokens_unpadded = 100 + 10 * r;
    records[r].num_tokens_padded = 160;
    records[r].should_attempt_ubatch = 0;
    records[r].should_attempt_dp_pad = 1;
    records[r].cudagraph_mode = DP_CUDAGRAPH_FULL;
  }
  memset(&records[2], 0xFF, sizeof records[2]);
  dp_decide_options_init(&opts);
  DPT_CHECK_C(opts.struct_size == sizeof opts);
  DPT_CHECK_C(opts.pad_policy == DP_PAD_POLICY_EXPLICIT && opts.num_ubatches == 2);
  DPT_CHECK_C(opts.active_ranks == NULL && opts.step_ids == NULL);
  opts.active_ranks = live;
  opts.step_ids = ids;
  dp_batch_result_init(&res);
  DPT_CHECK_C(dp_decide_batch_with_options(records, 4, 3, &opts, after, &res) == DP_OK);
  DPT_CHECK_C(res.should_dp_pad && !res.should_ubatch);
  DPT_CHECK_C(res.min_num_tokens_unpadded == 100 && res.max_num_tokens_padded == 160);
  DPT_CHECK_C(res.step_id == 7);
  for (r = 0; r < 4; ++r) DPT_CHECK_C(after[r] == 160);
  /* The dead rank made live: its garbage is refused, naming it. */
  opts.active_ranks = NULL;
  opts.step_ids = NULL;
  DPT_CHECK_C(dp_decide_batch_with_options(records, 4, 3, &opts, after, &res) ==
              DP_ERR_INVALID_ARGUMENT);
  DPT_CHECK_C(strstr(dp_last_error(), "records[2]") != NULL);
  return 0;
}
