// The V2 rules on the GPU path (dp_coordinator_set_graphs, the kernel's V2 decision and
// dispatch): VLLM_V2.md's worked examples through the explicit coordinator, one process per
// rank, each on a fresh communicator; random V2 and V1 steps on the GPU path against the host
// path (dp_make_slot + dp_decide_slots on the same requests) at 2 and 4 ranks; the straggler
// report (last_rank, arrival_skew_ns, wait_ns) on a V2 step with a late rank.
#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

#include "gpu_world.h"

#include "../common/v2_examples.h"

namespace dpg {
namespace {

constexpr int kExamples = static_cast<int>(sizeof kV2Examples / sizeof kV2Examples[0]);

// A graph table handle for `e`'s table (nullptr when the example has none).
dp_graphs* GraphsOf(const V2Example& e) {
  if (!e.with_table) return nullptr;
  dp_graph_table t;
  dp_graph_table_init(&t);
  t.graphs = e.graphs;
  t.num_graphs = e.num_graphs;
  t.decode_query_len = e.decode_query_len;
  dp_graphs* h = nullptr;
  const dp_status st = dp_graphs_create(&t, &h);
  if (st != DP_OK) Die(std::string("dp_graphs_create: ") + dp_last_error());
  return h;
}

// Rank `k`'s V2 request under `e`'s microbatching configuration.
dp_batch_request ExampleRequest(const V2Example& e, const V2Rank& k, int64_t step_id) {
  dp_batch_request q = BaseRequest();
  q.rules = DP_RULES_VLLM_V2;
  q.num_tokens_unpadded = k.num_tokens;
  q.num_reqs = k.num_reqs;
  q.uniform_token_count = k.uniform_token_count;
  q.max_query_len = k.max_query_len;
  q.allow_microbatching = k.allow_microbatching != 0;
  q.allow_skip_drafts = k.allow_skip_drafts != 0;
  q.need_eager = k.need_eager != 0;
  q.num_active_loras = k.num_active_loras;
  q.ubatch.enabled = e.ubatch[0] != 0;
  q.ubatch.num_ubatches = e.ubatch[1];
  q.ubatch.decode_token_threshold = e.ubatch[2];
  q.ubatch.prefill_token_threshold = e.ubatch[3];
  q.step_id = step_id;
  return q;
}

// A communicator of the world ranks [0, n) (ncclCommSplit of boot, on every rank; nullptr on
// the others): fresh, NCCL connects inside its first collective.
ncclComm_t FreshCommOf(int n) {
  ncclComm_t c = nullptr;
  NCCL_CHECK(ncclCommSplit(g.boot, g.rank < n ? 0 : NCCL_SPLIT_NOCOLOR, g.rank, &c, nullptr));
  return c;
}

// Whether a status leaves the coordinator unusable (a failure mid-exchange).
bool Broken(dp_status st) {
  return st != DP_OK && st != DP_ERR_INVALID_ARGUMENT && st != DP_ERR_INCONSISTENT_RANKS;
}

// Destroys `c` and frees `comm` (aborted when an exchange on it failed mid-way: NCCL may hold
// work that never completes).
void Close(dp_coordinator* c, ncclComm_t comm, bool broken) {
  if (broken) NCCL_CHECK(ncclCommAbort(comm));
  EXPECT_STATUS(DP_OK, dp_coordinator_destroy(c));
  if (!broken) NCCL_CHECK(ncclCommDestroy(comm));
}

// The result's arrays (host, and the device one read back in stream order) equal `want`.
void ExpectArrays(const dp_batch_result& res, const std::vector<int32_t>& want, int n) {
  ASSERT_NE(nullptr, res.num_tokens_after_padding);
  ASSERT_NE(nullptr, res.num_tokens_after_padding_device);
  const std::vector<int32_t> host(res.num_tokens_after_padding, res.num_tokens_after_padding + n);
  EXPECT_EQ(want, host) << "host num_tokens_after_padding";
  EXPECT_EQ(want, ReadDevice(res.num_tokens_after_padding_device, n, g.stream))
      << "device num_tokens_after_padding (read back in stream order)";
}

// Every example whose ranks are all live and which fits this run's rank count: its ranks run
// it through a fresh communicator (begin/end on an explicit coordinator given the example's
// table) and must get the example's result. An example with a dead rank is skipped: the GPU
// path has no dead ranks (its communicator holds the live ranks only; vLLM's dead columns
// come from active_ranks, an option of the host path).
TEST_F(Gpu, V2ExamplesThroughTheGpuPath) {
  int ran = 0, dead = 0, too_wide = 0;
  for (int i = 0; i < kExamples; ++i) {
    const V2Example& e = kV2Examples[i];
    SCOPED_TRACE(e.name);
    bool any_dead = false;
    for (int r = 0; r < e.dp_size; ++r) any_dead |= !e.ranks[r].live;
    if (any_dead) {
      ++dead;
      continue;
    }
    if (e.dp_size > g.nranks) {
      ++too_wide;
      continue;
    }
    ncclComm_t comm = FreshCommOf(e.dp_size);
    if (comm != nullptr) {
      const V2Rank& k = e.ranks[g.rank];
      dp_coordinator* c = CreateCoordinator(comm);
      dp_graphs* graphs = GraphsOf(e);
      EXPECT_STATUS(DP_OK, dp_coordinator_set_graphs(c, graphs));
      EXPECT_STATUS(DP_OK, dp_graphs_destroy(graphs));  // the coordinator keeps its own
      const dp_batch_request q = ExampleRequest(e, k, 11);
      dp_batch_result res = Poisoned<dp_batch_result>();
      dp_status st = dp_coordinator_begin(c, g.stream, &q);
      if (st == DP_OK) st = dp_coordinator_end(c, &res);
      EXPECT_STATUS(DP_OK, st);
      if (st == DP_OK) {
        const int32_t graph[6] = {res.graph_mode,          res.graph_num_tokens,
                                  res.graph_num_reqs,      res.graph_uniform_token_count,
                                  res.graph_max_query_len, res.num_ubatches};
        for (int w = 0; w < 6; ++w) EXPECT_EQ(k.graph[w], graph[w]) << "descriptor word " << w;
        EXPECT_EQ(k.idle != 0, res.idle);
        EXPECT_EQ(k.eager != 0, res.eager);
        EXPECT_EQ(k.skip_drafts != 0, res.skip_drafts);
        EXPECT_EQ(k.padded != 0, res.should_dp_pad);
        EXPECT_EQ(k.has_array != 0, res.has_num_tokens_after_padding);
        EXPECT_EQ(k.agreed_uniform_token_count, res.agreed_uniform_token_count);
        EXPECT_EQ(k.agreed_max_query_len, res.agreed_max_query_len);
        EXPECT_EQ(k.max_num_reqs, res.max_num_reqs);
        EXPECT_EQ(k.num_tokens_self, res.num_tokens_after_padding_self);
        EXPECT_EQ(k.max_num_tokens, res.max_num_tokens_padded);
        EXPECT_EQ(DP_RULES_VLLM_V2, res.rules);
        EXPECT_EQ(11, res.step_id);
        EXPECT_FALSE(res.local);
        EXPECT_GE(res.last_rank, 0);
        EXPECT_LT(res.last_rank, e.dp_size);
        if (k.has_array) {
          ExpectArrays(res, std::vector<int32_t>(k.array, k.array + e.dp_size), e.dp_size);
        } else {
          EXPECT_EQ(nullptr, res.num_tokens_after_padding);
        }
      }
      Close(c, comm, Broken(st));
      ++ran;
    }
    if (!AllTrue(!HasFailure())) {
      ADD_FAILURE() << "stopping after " << e.name;
      break;
    }
  }
  std::printf(
      "V2 examples on the GPU path: %d run, %d skipped (a dead rank: the GPU path has no dead "
      "ranks), %d skipped (more ranks than this run's %d)\n",
      ran, dead, too_wide, g.nranks);
  RecordProperty("examples_run", ran);
}

// The tables of the examples (one per distinct table, with its configuration).
std::vector<const V2Example*> ExampleTables() {
  std::vector<const V2Example*> tables;
  for (int i = 0; i < kExamples; ++i) {
    const V2Example& e = kV2Examples[i];
    bool seen = !e.with_table;
    for (const V2Example* t : tables) seen |= t->graphs == e.graphs;
    if (!seen) tables.push_back(&e);
  }
  return tables;
}

// Rank `rank`'s V2 request of `step` under `e`'s configuration (every rank derives every
// rank's): decodes at the decode query length, spec-decode-like uniform counts, prefill
// chunks, the idle dummy, zero, need_eager; microbatching allowed by most; now and then an
// invalid request (num_reqs -1: every rank fails the step alike).
dp_batch_request V2RequestOf(uint64_t seed, int step, int rank, const V2Example& e) {
  Rng shape(SplitMix(seed ^ 0x2222) ^ SplitMix(static_cast<uint64_t>(step)));
  const bool all_micro = shape.Chance(50);
  const int32_t base = shape.Range(1, 600);
  Rng rng(SplitMix(seed ^ 0x2B2B) ^
          SplitMix((static_cast<uint64_t>(step) << 20) + static_cast<uint64_t>(rank) + 1));
  const int32_t dql = e.decode_query_len;
  dp_batch_request q = BaseRequest();
  q.rules = DP_RULES_VLLM_V2;
  q.ubatch.enabled = e.ubatch[0] != 0;
  q.ubatch.num_ubatches = e.ubatch[1];
  q.ubatch.decode_token_threshold = e.ubatch[2];
  q.ubatch.prefill_token_threshold = e.ubatch[3];
  q.allow_microbatching = all_micro || rng.Chance(50);
  q.allow_skip_drafts = rng.Chance(30);
  q.need_eager = rng.Chance(5);
  q.cudagraph_mode = rng.Range(0, 2);  // read only without a table
  int32_t t = 0, r = 0, u = 0, mql = -1;
  switch (rng.Range(0, 7)) {
    case 0:
    case 1:  // a decode
      r = rng.Range(1, 300);
      t = r * dql;
      u = mql = dql;
      break;
    case 2: {  // about the shared size, as decodes
      r = std::max(1, (base + rng.Range(-8, 8)) / dql);
      t = r * dql;
      u = mql = dql;
      break;
    }
    case 3: {  // a uniform count of 1..4
      const int32_t k = rng.Range(1, 4);
      r = rng.Range(1, 128);
      t = r * k;
      u = mql = k;
      break;
    }
    case 4:  // a prefill chunk
    case 5:
      t = rng.Range(1, 700);
      r = rng.Range(1, t);
      mql = rng.Chance(30) ? rng.Range(1, 8) : -1;
      break;
    case 6:  // the idle rank's dummy batch
      t = dql;
      r = 1;
      u = mql = dql;
      break;
    default:  // nothing scheduled
      break;
  }
  q.num_tokens_unpadded = t;
  q.num_reqs = r;
  q.uniform_token_count = u;
  q.max_query_len = mql;
  if (rng.Chance(2)) q.num_reqs = -1;  // refused: the invalid-request marker joins
  q.step_id = step + 1;
  return q;
}

// The host path on the same requests: every rank's dp_make_slot with the table, then this
// rank's dp_decide_slots. Status, result, array.
struct HostPath {
  dp_status status;
  dp_batch_result res;
  std::vector<int32_t> array;
};

HostPath HostPathOf(const std::vector<dp_batch_request>& reqs, int dp_rank, dp_graphs* graphs) {
  const int n = static_cast<int>(reqs.size());
  dp_decide_options opts;
  dp_decide_options_init(&opts);
  opts.graphs = graphs;
  std::vector<dp_slot> slots(static_cast<size_t>(n));
  for (int r = 0; r < n; ++r) dp_make_slot(&reqs[r], &opts, &slots[static_cast<size_t>(r)]);
  HostPath h{DP_OK, Poisoned<dp_batch_result>(), std::vector<int32_t>(n, kPoisonArray)};
  h.status = dp_decide_slots(slots.data(), n, dp_rank, &opts, h.array.data(), &h.res);
  return h;
}

// Every decision field of the GPU path's result equals the host path's (the straggler fields
// are the transports' own).
void ExpectSameDecision(const dp_batch_result& want, const dp_batch_result& got) {
  EXPECT_EQ(want.rules, got.rules);
  EXPECT_EQ(want.should_ubatch, got.should_ubatch);
  EXPECT_EQ(want.should_dp_pad, got.should_dp_pad);
  EXPECT_EQ(want.has_num_tokens_after_padding, got.has_num_tokens_after_padding);
  EXPECT_EQ(want.synced_cudagraph_mode, got.synced_cudagraph_mode);
  EXPECT_EQ(want.dp_rank, got.dp_rank);
  EXPECT_EQ(want.dp_size, got.dp_size);
  EXPECT_EQ(want.num_tokens_after_padding_self, got.num_tokens_after_padding_self);
  EXPECT_EQ(want.max_num_tokens_padded, got.max_num_tokens_padded);
  EXPECT_EQ(want.min_num_tokens_unpadded, got.min_num_tokens_unpadded);
  EXPECT_EQ(want.step_id, got.step_id);
  EXPECT_EQ(want.idle, got.idle);
  EXPECT_EQ(want.eager, got.eager);
  EXPECT_EQ(want.skip_drafts, got.skip_drafts);
  EXPECT_EQ(want.graph_mode, got.graph_mode);
  EXPECT_EQ(want.graph_num_tokens, got.graph_num_tokens);
  EXPECT_EQ(want.graph_num_reqs, got.graph_num_reqs);
  EXPECT_EQ(want.graph_uniform_token_count, got.graph_uniform_token_count);
  EXPECT_EQ(want.graph_max_query_len, got.graph_max_query_len);
  EXPECT_EQ(want.num_ubatches, got.num_ubatches);
  EXPECT_EQ(want.agreed_uniform_token_count, got.agreed_uniform_token_count);
  EXPECT_EQ(want.agreed_max_query_len, got.agreed_max_query_len);
  EXPECT_EQ(want.max_num_reqs, got.max_num_reqs);
}

// Random V2 steps over every example table (and without a table), and V1 steps, on the GPU
// path at 2 and 4 ranks (groups of world ranks on fresh communicators): each rank's result
// equals what dp_decide_slots gives it on the same requests, per step, arrays included.
TEST_F(Gpu, V2AndV1StepsMatchTheHostPathAt2And4Ranks) {
  DPG_SKIP_UNLESS_RANKS(2);
  const std::vector<const V2Example*> tables = ExampleTables();
  const int steps = std::max(8, g.steps / 8);  // per table: 32 by default, 8 sanitized
  for (int size : {2, 4}) {
    if (size > g.nranks) {
      std::printf("V2 against the host path: no run at %d ranks (this run has %d)\n", size,
                  g.nranks);
      continue;
    }
    SCOPED_TRACE(std::to_string(size) + " ranks");
    const int groups = g.nranks / size;
    const int group = g.rank / size;
    ncclComm_t comm = nullptr;
    NCCL_CHECK(ncclCommSplit(g.boot, group < groups ? group : NCCL_SPLIT_NOCOLOR, g.rank, &comm,
                             nullptr));
    int ran = 0, v2 = 0, failed_alike = 0, ubatched = 0, graphs = 0;
    if (comm != nullptr) {
      const int dp_rank = g.rank % size;
      dp_coordinator* c = CreateCoordinator(comm);
      // Every rank of a group makes the same calls whatever it finds (a rank that stopped
      // alone would leave its peers waiting); only a coordinator left unusable stops them, on
      // every rank. Results are compared until the first mismatch.
      bool go_on = true;
      bool broken = false;
      // Each example table, then no table (the request's own mode).
      for (size_t ti = 0; ti <= tables.size() && go_on; ++ti) {
        const V2Example& e = *tables[ti < tables.size() ? ti : 0];
        dp_graphs* table = ti < tables.size() ? GraphsOf(e) : nullptr;
        EXPECT_STATUS(DP_OK, dp_coordinator_set_graphs(c, table));
        for (int step = 0; step < steps && go_on; ++step) {
          const int key = static_cast<int>(ti) * 100000 + step;
          SCOPED_TRACE("table " + std::to_string(ti) + " step " + std::to_string(step));
          std::vector<dp_batch_request> reqs;
          const bool is_v1 = step % 4 == 3;
          const StepShape shape = ShapeOf(g.seed + 19, key, size);
          for (int r = 0; r < size; ++r) {
            reqs.push_back(is_v1 ? RequestOf(g.seed + 19, key, r, shape)
                                 : V2RequestOf(g.seed, key, r, e));
          }
          const HostPath want = HostPathOf(reqs, dp_rank, table);
          dp_batch_result res = Poisoned<dp_batch_result>();
          dp_status st = dp_coordinator_begin(c, g.stream, &reqs[dp_rank]);
          if (st == DP_OK) st = dp_coordinator_end(c, &res);
          ++ran;
          v2 += is_v1 ? 0 : 1;
          if (Broken(st)) {
            ADD_FAILURE() << Name(st) << ": " << dp_last_error();
            go_on = false;
            broken = true;
          } else if (!HasFailure()) {
            EXPECT_EQ(Name(want.status), Name(st)) << dp_last_error();
            if (st == DP_OK && want.status == DP_OK) {
              ExpectSameDecision(want.res, res);
              ubatched += res.should_ubatch ? 1 : 0;
              graphs += !is_v1 && res.graph_mode != DP_CUDAGRAPH_NONE ? 1 : 0;
              if (want.res.has_num_tokens_after_padding) ExpectArrays(res, want.array, size);
            } else if (st != DP_OK) {
              ++failed_alike;
              EXPECT_TRUE(IsPoisoned(res)) << "result written on failure";
            }
          }
        }
        EXPECT_STATUS(DP_OK, dp_graphs_destroy(table));
      }
      Close(c, comm, broken);
    }
    std::printf(
        "V2 against the host path at %d ranks: %d steps (%d V2, %d failed alike, %d "
        "microbatched, %d V2 on a graph)\n",
        size, ran, v2, failed_alike, ubatched, graphs);
    if (!AllTrue(!HasFailure())) return;
  }
}

// A V2 step in which the last world rank enters begin 50 ms after the others (after a
// warm-up step, so that NCCL's connection set-up is not in it): every rank reports it as
// last_rank, an arrival skew of at least 25 ms (CLOCK_MONOTONIC, one host), and the others
// waited (wait_ns) in end; the fields are in range on every step (under a sanitizer only
// that: its slowdown moves the ranks apart).
TEST_F(Gpu, V2StragglerReportIsFilled) {
  DPG_SKIP_UNLESS_RANKS(2);
  const int n = g.nranks;
  ncclComm_t comm = FreshComm();
  dp_coordinator* c = CreateCoordinator(comm);
  const V2Example& e = kV2Examples[0];
  dp_graphs* table = GraphsOf(e);
  EXPECT_STATUS(DP_OK, dp_coordinator_set_graphs(c, table));
  V2Rank k{};
  k.live = 1;
  k.num_tokens = 9 + g.rank;
  k.num_reqs = 9 + g.rank;
  k.uniform_token_count = 1;
  k.max_query_len = 1;
  dp_batch_result res = Poisoned<dp_batch_result>();
  bool broken = false;
  for (int step = 1; step <= 2; ++step) {
    const dp_batch_request q = ExampleRequest(e, k, step);
    if (step == 2 && g.rank == n - 1) std::this_thread::sleep_for(std::chrono::milliseconds(50));
    const auto t0 = std::chrono::steady_clock::now();
    dp_status st = dp_coordinator_begin(c, g.stream, &q);
    if (st == DP_OK) st = dp_coordinator_end(c, &res);
    const double ms = MsSince(t0);
    EXPECT_STATUS(DP_OK, st);
    broken |= Broken(st);
    if (st != DP_OK) break;
    EXPECT_GE(res.last_rank, 0);
    EXPECT_LT(res.last_rank, n);
    EXPECT_GE(res.arrival_skew_ns, 0);
    EXPECT_GE(res.wait_ns, 0);
    EXPECT_LE(static_cast<double>(res.wait_ns), ms * 1e6 + 1e6) << "waited longer than the call";
    if (step == 2 && !Sanitized()) {
      EXPECT_EQ(n - 1, res.last_rank);
      EXPECT_GE(res.arrival_skew_ns, 25 * 1000 * 1000);
      if (g.rank != n - 1) {
        EXPECT_GE(res.wait_ns, 15 * 1000 * 1000) << "this rank waited for the late one";
      }
    }
    if (step == 2) {
      std::printf("straggler step: last_rank %d, skew %.2f ms, waited %.2f ms\n", res.last_rank,
                  res.arrival_skew_ns / 1e6, res.wait_ns / 1e6);
    }
    EXPECT_EQ(DP_RULES_VLLM_V2, res.rules);
    EXPECT_EQ(DP_CUDAGRAPH_FULL, res.graph_mode);
  }
  EXPECT_STATUS(DP_OK, dp_graphs_destroy(table));
  Close(c, comm, broken);
}

}  // namespace
}  // namespace dpg
