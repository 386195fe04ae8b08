/* The V2 rules with speculative decoding: two ranks agree in one exchange on the CUDA graph of
 * a verification step, the draft steps reuse that agreement with no exchange, a microbatched
 * verification batch splits on a request boundary. Both ranks run here; the "allgather" is an
 * array. Every status and agreed value is checked; a failure exits with status 1. */
#include "spec_decode.h"

#include <dpcoord.h>
#include <stdio.h>

#define CHECK(call) do { dp_status s_ = (call); if (s_ != DP_OK) return failed(#call, s_); } while (0)
#define EXPECT(cond) do { if (!(cond)) return failed("unexpected: " #cond, DP_OK); } while (0)

static int failed(const char* what, dp_status s) {
  fprintf(stderr, "%s: %s: %s\n", what, dp_status_string(s), s ? dp_last_error() : "");
  return 1;
}

/* Captured graphs: mode, tokens, requests (-1 none), uniform count (0 none), query bound (-1
 * none), microbatches, LoRAs. The target's FULL decode graphs of 1-8 requests of 2 tokens (1 +
 * 1 speculative) and PIECEWISE graphs; the drafter's FULL graphs of 1-8 one-token requests. */
static const dp_graph kTarget[] = {
    {DP_CUDAGRAPH_FULL, 2, 1, 2, -1, 1, 0}, {DP_CUDAGRAPH_FULL, 4, 2, 2, -1, 1, 0},
    {DP_CUDAGRAPH_FULL, 8, 4, 2, -1, 1, 0}, {DP_CUDAGRAPH_FULL, 16, 8, 2, -1, 1, 0},
    {DP_CUDAGRAPH_PIECEWISE, 16, -1, 0, -1, 1, 0}, {DP_CUDAGRAPH_PIECEWISE, 32, -1, 0, -1, 1, 0}};
static const dp_graph kDraft[] = {
    {DP_CUDAGRAPH_FULL, 1, 1, 1, -1, 1, 0}, {DP_CUDAGRAPH_FULL, 2, 2, 1, -1, 1, 0},
    {DP_CUDAGRAPH_FULL, 4, 4, 1, -1, 1, 0}, {DP_CUDAGRAPH_FULL, 8, 8, 1, -1, 1, 0}};

static dp_status graphs_of(const dp_graph* g, int32_t n, int32_t query_len, dp_graphs** out) {
  dp_graph_table t;
  dp_graph_table_init(&t);
  t.graphs = g;
  t.num_graphs = n;
  t.decode_query_len = query_len;
  return dp_graphs_create(&t, out); /* validated, indexed and hashed once */
}

int spec_decode(void) {
  dp_graphs *target = NULL, *draft = NULL;
  CHECK(graphs_of(kTarget, 6, 2, &target));
  CHECK(graphs_of(kDraft, 4, 1, &draft));
  dp_decide_options opts;
  dp_decide_options_init(&opts);
  opts.graphs = target;

  /* [readme:v2] */
  const int32_t reqs[2] = {3, 5}; /* rank 0 verifies 3 requests, rank 1 five: 2 tokens each */
  dp_batch_request req[2];
  dp_slot slots[2];
  for (int r = 0; r < 2; ++r) {
    dp_batch_request_init(&req[r]);
    req[r].rules = DP_RULES_VLLM_V2;
    req[r].num_reqs = reqs[r];
    req[r].num_tokens_unpadded = 2 * reqs[r];
    req[r].uniform_token_count = req[r].max_query_len = 2;
    req[r].step_id = 7;
    CHECK(dp_make_slot(&req[r], &opts, &slots[r])); /* then allgather the slots */
  }
  dp_batch_result res[2], draft_res;
  int32_t tokens[2][2], draft_tokens[2];
  for (int r = 0; r < 2; ++r) {
    dp_batch_result_init(&res[r]);
    CHECK(dp_decide_slots(slots, 2, r, &opts, tokens[r], &res[r]));
    /* Both run the FULL 8-request graph: 16 tokens, uniform count 2; 5 real requests at most. */
    EXPECT(res[r].graph_mode == DP_CUDAGRAPH_FULL && res[r].graph_num_tokens == 16);
    EXPECT(res[r].graph_num_reqs == 8 && res[r].max_num_reqs == 5 && tokens[r][1] == 16);

    dp_batch_request prefill = req[r]; /* the draft prefill over the target's padded batch */
    prefill.num_tokens_unpadded = 16;
    prefill.parent_step_id = 7; /* must be the target's step id */
    dp_batch_result_init(&draft_res);
    CHECK(dp_reuse_agreement(&res[r], &prefill, target, draft_tokens, &draft_res));
    EXPECT(draft_res.graph_num_tokens == 16 && draft_tokens[0] == 16);

    /* The draft decode: max_num_reqs x 1 token on every rank, in the drafter's graphs. */
    dp_batch_result_init(&draft_res);
    CHECK(dp_uniform_draft_agreement(&res[r], reqs[r], 1, draft, draft_tokens, &draft_res));
    EXPECT(draft_res.graph_num_tokens == 8 && draft_tokens[1] == 8);
  }
  /* Rank 1's verification batch in 2 microbatches of 8 tokens: split on a request boundary. */
  const int32_t counts[5] = {2, 2, 2, 2, 2};
  dp_ubatch_slice ub[2];
  CHECK(dp_make_ubatch_slices_v2(counts, 5, 16, 8, 2, 2, ub));
  EXPECT(ub[0].request_end == 4 && ub[1].request_begin == 4 && ub[1].token_begin == 8);
  /* Process-local warm-up only: as if every rank had sent rank 0's request. */
  dp_batch_result local;
  dp_batch_result_init(&local);
  CHECK(dp_decide_local(&req[0], 2, 0, &opts, NULL, &local));
  EXPECT(local.local && local.graph_num_tokens == 8);
  /* [/readme:v2] */

  printf("verification: FULL graph of %d tokens on both ranks; drafts with no exchange\n",
         res[0].graph_num_tokens);
  CHECK(dp_graphs_destroy(draft));
  CHECK(dp_graphs_destroy(target));
  return 0;
}
