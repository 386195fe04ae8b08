// VLLM_V2.md's worked examples through the C host path: every exchanged step of every example
// (cpp_tests/common/v2_examples.h, generated from tests/rules_v2_examples.rs, which holds each
// to vLLM 0.34.0's own outputs), on every rank: dp_graphs_create, dp_make_slot, the slots
// gathered, dp_decide_slots; each rank's result and array must be the example's. The test of
// each step is named after its example.
#include <cstdint>
#include <string>
#include <vector>

#include "test_util.h"

#include "../common/v2_examples.h"

namespace {

constexpr int32_t kUntouched = -777;

// The case's request for rank `r`.
dp_batch_request RequestOf(const V2Example& e, const V2Rank& k, int64_t step_id) {
  dp_batch_request req;
  dp_batch_request_init(&req);
  req.rules = DP_RULES_VLLM_V2;
  req.num_tokens_unpadded = k.num_tokens;
  req.num_reqs = k.num_reqs;
  req.uniform_token_count = k.uniform_token_count;
  req.max_query_len = k.max_query_len;
  req.allow_microbatching = k.allow_microbatching != 0;
  req.allow_skip_drafts = k.allow_skip_drafts != 0;
  req.need_eager = k.need_eager != 0;
  req.num_active_loras = k.num_active_loras;
  req.ubatch.enabled = e.ubatch[0] != 0;
  req.ubatch.num_ubatches = e.ubatch[1];
  req.ubatch.decode_token_threshold = e.ubatch[2];
  req.ubatch.prefill_token_threshold = e.ubatch[3];
  req.step_id = step_id;
  return req;
}

class V2Examples : public ::testing::TestWithParam<int> {};

TEST_P(V2Examples, HostPathGivesEveryRankTheExamplesResult) {
  const V2Example& e = kV2Examples[GetParam()];
  SCOPED_TRACE(e.name);
  dp_graphs* graphs = nullptr;
  if (e.with_table) {
    dp_graph_table t;
    dp_graph_table_init(&t);
    t.graphs = e.graphs;
    t.num_graphs = e.num_graphs;
    t.decode_query_len = e.decode_query_len;
    ASSERT_STATUS(DP_OK, dp_graphs_create(&t, &graphs));
  }
  std::vector<uint8_t> live(static_cast<size_t>(e.dp_size));
  bool any_dead = false;
  for (int r = 0; r < e.dp_size; ++r) {
    live[static_cast<size_t>(r)] = e.ranks[r].live ? 1 : 0;
    any_dead |= !e.ranks[r].live;
  }
  dp_decide_options opts;
  dp_decide_options_init(&opts);
  opts.graphs = graphs;
  opts.active_ranks = any_dead ? live.data() : nullptr;
  std::vector<dp_slot> slots(static_cast<size_t>(e.dp_size), dpt::Poisoned<dp_slot>());
  for (int r = 0; r < e.dp_size; ++r) {
    if (!e.ranks[r].live) continue;  // a dead rank sends nothing: its slot is garbage
    const dp_batch_request req = RequestOf(e, e.ranks[r], 11);
    ASSERT_STATUS(DP_OK, dp_make_slot(&req, &opts, &slots[static_cast<size_t>(r)]));
  }
  for (int r = 0; r < e.dp_size; ++r) {
    const V2Rank& k = e.ranks[r];
    if (!k.live) continue;
    SCOPED_TRACE("rank " + std::to_string(r));
    dp_batch_result res;
    dp_batch_result_init(&res);
    std::vector<int32_t> out(static_cast<size_t>(e.dp_size), kUntouched);
    ASSERT_STATUS(DP_OK,
                  dp_decide_slots(slots.data(), e.dp_size, r, &opts, out.data(), &res));
    const int32_t graph[6] = {res.graph_mode,          res.graph_num_tokens,
                              res.graph_num_reqs,      res.graph_uniform_token_count,
                              res.graph_max_query_len, res.num_ubatches};
    for (int i = 0; i < 6; ++i) EXPECT_EQ(graph[i], k.graph[i]) << "descriptor word " << i;
    EXPECT_EQ(res.idle, k.idle != 0);
    EXPECT_EQ(res.eager, k.eager != 0);
    EXPECT_EQ(res.skip_drafts, k.skip_drafts != 0);
    EXPECT_EQ(res.should_dp_pad, k.padded != 0);
    EXPECT_EQ(res.has_num_tokens_after_padding, k.has_array != 0);
    EXPECT_EQ(res.agreed_uniform_token_count, k.agreed_uniform_token_count);
    EXPECT_EQ(res.agreed_max_query_len, k.agreed_max_query_len);
    EXPECT_EQ(res.max_num_reqs, k.max_num_reqs);
    EXPECT_EQ(res.num_tokens_after_padding_self, k.num_tokens_self);
    EXPECT_EQ(res.max_num_tokens_padded, k.max_num_tokens);
    EXPECT_EQ(res.rules, DP_RULES_VLLM_V2);
    EXPECT_EQ(res.step_id, 11);
    for (int i = 0; i < e.dp_size; ++i) EXPECT_EQ(out[static_cast<size_t>(i)], k.array[i]) << "array[" << i << "]";
  }
  ASSERT_STATUS(DP_OK, dp_graphs_destroy(graphs));
}

std::string NameOf(const ::testing::TestParamInfo<int>& info) {
  std::string name = kV2Examples[info.param].name;
  for (char& c : name) {
    if (c == '/') c = '_';
  }
  return name;
}

INSTANTIATE_TEST_SUITE_P(VllmV2, V2Examples,
                         ::testing::Range(0, static_cast<int>(sizeof kV2Examples /
                                                              sizeof kV2Examples[0])),
                         NameOf);

}  // namespace
