// dpcoord demo: four data-parallel ranks agree on one engine step, through the host-transport
// path (what a stack that exchanges on the CPU, e.g. with MPI, does):
//
//   every rank:  dp_make_record(&request, &records[my_rank])   local, validates the request
//   all ranks:   allgather the 20-byte records                 MPI_Allgather / Gloo / here: memory
//   every rank:  dp_decide_batch(records, ...)                 same records -> same decision
//   a step that microbatches: dp_make_ubatch_slices(...)       local: which requests/tokens
//                                                              go into each microbatch
//   a rank died: dp_decide_batch_with_options(records, ...,    its slot is neither read nor
//                &opts /* active_ranks */, ...)                 counted; the others go on
//   speculative decoding, V2 rules: spec_decode.c              the graph agreed in one
//                                                              exchange, drafts reuse it
//
// The four ranks run one after another in this process; the "allgather" is a shared array.
// Build it against an installed dpcoord (examples/CMakeLists.txt; scripts/demo.sh does this):
//   cmake -S examples -B build/demo -DCMAKE_PREFIX_PATH=<prefix>
//         -DDPCOORD_EXAMPLE_MPI=OFF -DDPCOORD_EXAMPLE_GPU=OFF
//   cmake --build build/demo --target dpcoord_demo
#include <dpcoord.h>

#include "spec_decode.h"

#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

namespace {

constexpr int kRanks = 4;
constexpr int kMaxRequests = 4;

// What one rank's scheduler decided for this step, before DP coordination.
struct RankInput {
  int32_t scheduled;      // num_tokens_unpadded
  int32_t padded;         // after the CUDA-graph bucket (-1: none)
  int32_t cudagraph_mode;
  int32_t uniform_decode;  // 1 decode only, 0 has prefill
  bool allow_dp_padding;
};

struct Step {
  const char* title;
  int32_t pad_policy;
  bool microbatching;  // DBO enabled and requested
  RankInput ranks[kRanks];
  bool dead[kRanks];  // a dead rank sends no record; the others decide without it
  // Tokens of each scheduled request (0 = no request), for the microbatch slices of a step
  // that microbatches; they add up to the rank's `scheduled`.
  int32_t requests[kRanks][kMaxRequests];
};

const char* ModeName(int32_t mode) {
  switch (mode) {
    case DP_CUDAGRAPH_NONE: return "NONE";
    case DP_CUDAGRAPH_PIECEWISE: return "PIECEWISE";
    case DP_CUDAGRAPH_FULL: return "FULL";
    default: return "?";
  }
}

const char* YesNo(bool b) { return b ? "yes" : "no"; }

dp_batch_request MakeRequest(const Step& step, const RankInput& in) {
  dp_batch_request req;
  dp_batch_request_init(&req);  // struct_size and defaults: always start here
  req.num_tokens_unpadded = in.scheduled;
  req.num_tokens_padded = in.padded;
  req.cudagraph_mode = in.cudagraph_mode;
  req.uniform_decode = in.uniform_decode;
  req.allow_dp_padding = in.allow_dp_padding;
  req.pad_policy = step.pad_policy;
  req.allow_microbatching = step.microbatching;
  req.ubatch.enabled = step.microbatching;  // 2 microbatches, thresholds 32 / 512 (defaults)
  return req;
}

// Every rank's microbatches for a step that microbatches: dp_make_ubatch_slices over its own
// requests and its agreed tokens after padding (local, no communication).
dp_status ShowSlices(const Step& step, const uint8_t* live,
                     const std::vector<dp_batch_result>& results) {
  std::printf("  microbatches (dp_make_ubatch_slices, split at tokens after padding / 2):\n");
  for (int r = 0; r < kRanks; ++r) {
    if (!live[r]) continue;
    int32_t count = 0;
    while (count < kMaxRequests && step.requests[r][count] > 0) ++count;
    dp_ubatch_slice slices[2], padded[2];
    const dp_status s =
        dp_make_ubatch_slices(step.requests[r], count, results[r].num_tokens_after_padding_self,
                              /*num_requests_padded=*/-1, /*num_ubatches=*/2,
                              /*split_point=*/-1, slices, padded);
    if (s != DP_OK) {
      std::printf("  rank %d: dp_make_ubatch_slices -> %s: %s\n", r, dp_status_string(s),
                  dp_last_error());
      return s;
    }
    std::printf("    rank %d, requests", r);
    for (int32_t i = 0; i < count; ++i) std::printf(" %d", step.requests[r][i]);
    std::printf(":");
    for (int k = 0; k < 2; ++k) {
      std::printf("  ubatch %d = requests [%d, %d) tokens [%d, %d)", k, slices[k].request_begin,
                  slices[k].request_end, slices[k].token_begin, slices[k].token_end);
    }
    std::printf("; padded to tokens [%d, %d)\n", padded[1].token_begin, padded[1].token_end);
  }
  std::printf("  (a request cut by the split is in both microbatches)\n");
  return DP_OK;
}

// Runs one step on every rank; returns the status every rank got (DP_OK, or the error that
// every rank agreed on). Prints a table of inputs and decisions.
dp_status RunStep(int number, const Step& step) {
  std::printf("\nstep %d: %s\n", number, step.title);
  std::printf("  pad policy %s, microbatching %s\n",
              step.pad_policy == DP_PAD_POLICY_EXPLICIT ? "EXPLICIT" : "WHEN_CUDAGRAPH",
              step.microbatching ? "enabled (2 ubatches)" : "off");

  // 1. Local step on every rank: request -> record. An invalid request fails here, locally.
  //    A dead rank sends nothing: its slot keeps whatever the buffer held (here 0xFF bytes).
  std::vector<dp_rank_record> allgathered(kRanks);
  std::memset(static_cast<void*>(allgathered.data()), 0xFF, sizeof(dp_rank_record) * kRanks);
  uint8_t live[kRanks];
  bool any_dead = false;
  for (int r = 0; r < kRanks; ++r) {
    live[r] = step.dead[r] ? 0 : 1;
    any_dead = any_dead || step.dead[r];
  }
  for (int r = 0; r < kRanks; ++r) {
    if (!live[r]) continue;
    const dp_batch_request req = MakeRequest(step, step.ranks[r]);
    const dp_status s = dp_make_record(&req, &allgathered[r]);
    if (s != DP_OK) {
      std::printf("  rank %d: dp_make_record -> %s\n           %s\n", r, dp_status_string(s),
                  dp_last_error());
      return s;
    }
  }
  // 2. The exchange: here the records already sit in one array; with MPI this is
  //    MPI_Allgather(&mine, 5, MPI_INT32_T, records, 5, MPI_INT32_T, comm).

  // 3. Every rank decides from the same records.
  std::printf("  rank | scheduled | padded | graph     | wants ubatch | allows pad || runs\n");
  std::printf("  -----+-----------+--------+-----------+--------------+------------++-------\n");
  dp_batch_result first{};
  std::vector<int32_t> first_array;
  dp_status agreed = DP_OK;
  std::string error_text;  // rank 0's dp_last_error(), shown after the table
  std::vector<dp_batch_result> results(kRanks);
  for (int r = 0; r < kRanks; ++r) {
    if (!live[r]) {
      std::printf("  %4d | dead: its slot is neither read nor counted\n", r);
      continue;
    }
    std::vector<int32_t> after(kRanks);
    dp_batch_result res;
    dp_batch_result_init(&res);  // struct_size: the library writes only what it holds
    dp_status s;
    if (any_dead) {
      dp_decide_options opts;
      dp_decide_options_init(&opts);  // EXPLICIT, 2 microbatches, every rank live, no step ids
      opts.pad_policy = step.pad_policy;
      opts.active_ranks = live;
      s = dp_decide_batch_with_options(allgathered.data(), kRanks, r, &opts, after.data(), &res);
    } else {
      s = dp_decide_batch(allgathered.data(), kRanks, r, step.pad_policy, /*num_ubatches=*/2,
                          after.data(), &res);
    }
    results[r] = res;
    const dp_rank_record& rec = allgathered[r];
    std::printf("  %4d | %9d | %6d | %-9s | %-12s | %-10s || ", r, rec.num_tokens_unpadded,
                rec.num_tokens_padded, ModeName(rec.cudagraph_mode),
                YesNo(rec.should_attempt_ubatch == 1), YesNo(rec.should_attempt_dp_pad == 1));
    if (s != DP_OK) {
      std::printf("%s\n", dp_status_string(s));
      if (r == 0) {
        agreed = s;
        error_text = dp_last_error();  // thread-local, valid until the next failing call
      } else if (s != agreed) {
        agreed = DP_ERR_INTERNAL;  // ranks disagree: must never happen
      }
      continue;
    }
    std::printf("%d\n", res.num_tokens_after_padding_self);
    if (r == 0) {
      first = res;
      first_array = after;
    } else if (agreed != DP_OK || res.should_ubatch != first.should_ubatch ||
               res.should_dp_pad != first.should_dp_pad ||
               res.synced_cudagraph_mode != first.synced_cudagraph_mode ||
               after != first_array) {
      agreed = DP_ERR_INTERNAL;
    }
  }
  if (agreed == DP_OK) {
    std::printf("  every %srank: microbatch %s, DP padding %s, CUDA graphs %s "
                "(max padded %d, min scheduled %d)\n",
                any_dead ? "live " : "", YesNo(first.should_ubatch), YesNo(first.should_dp_pad),
                ModeName(first.synced_cudagraph_mode), first.max_num_tokens_padded,
                first.min_num_tokens_unpadded);
    if (any_dead) {
      std::printf("  tokens after padding per rank:");
      for (int r = 0; r < kRanks; ++r) std::printf(" %d", first_array[r]);
      std::printf("  (a dead rank's entry: max padded when padding, else 0)\n");
    }
    if (first.should_ubatch && step.requests[0][0] > 0) {
      agreed = ShowSlices(step, live, results);
    }
  } else if (agreed != DP_ERR_INTERNAL) {
    std::printf("  every rank got %s: the step is refused everywhere, no rank hangs\n"
                "  dp_last_error(): %s\n",
                dp_status_string(agreed), error_text.c_str());
  }
  return agreed;
}

}  // namespace

int main() {
  std::printf("dpcoord %s demo: %d data-parallel ranks, host-transport path\n", dp_version(),
              kRanks);
  std::printf("(dp_make_record on each rank -> allgather of the records -> dp_decide_batch)\n");

  const Step steps[] = {
      {"decode, balanced; rank 2 only has a PIECEWISE graph for its size",
       DP_PAD_POLICY_EXPLICIT, true,
       {{96, 96, DP_CUDAGRAPH_FULL, 1, true},
        {120, 128, DP_CUDAGRAPH_FULL, 1, true},
        {80, 96, DP_CUDAGRAPH_PIECEWISE, 1, true},
        {112, 128, DP_CUDAGRAPH_FULL, 1, true}}, {}, {}},
      {"one long prefill; rank 1 runs eagerly (no CUDA graph)",
       DP_PAD_POLICY_WHEN_CUDAGRAPH, true,
       {{3000, -1, DP_CUDAGRAPH_PIECEWISE, 0, false},
        {40, 48, DP_CUDAGRAPH_NONE, 1, false},
        {64, 64, DP_CUDAGRAPH_FULL, 1, false},
        {36, 48, DP_CUDAGRAPH_FULL, 1, false}}, {}, {}},
      {"rank 3 is idle (dummy batch): no microbatching, every rank padded to the max",
       DP_PAD_POLICY_EXPLICIT, true,
       {{96, 96, DP_CUDAGRAPH_FULL, 1, true},
        {128, 128, DP_CUDAGRAPH_FULL, 1, true},
        {100, 128, DP_CUDAGRAPH_FULL, 1, true},
        {0, 0, DP_CUDAGRAPH_FULL, 1, true}}, {}, {}},
      {"prefills on every rank, balanced: all ranks microbatch; a prefill straddles the split",
       DP_PAD_POLICY_WHEN_CUDAGRAPH, true,
       {{1000, -1, DP_CUDAGRAPH_NONE, 0, false},
        {900, -1, DP_CUDAGRAPH_NONE, 0, false},
        {960, -1, DP_CUDAGRAPH_NONE, 0, false},
        {1024, -1, DP_CUDAGRAPH_NONE, 0, false}},
       {false, false, false, false},
       {{1, 1, 700, 298}, {600, 300}, {2, 958}, {512, 512}}},
      {"rank 2 died: the live ranks keep deciding without it",
       DP_PAD_POLICY_EXPLICIT, false,
       {{96, 96, DP_CUDAGRAPH_FULL, 1, true},
        {120, 128, DP_CUDAGRAPH_FULL, 1, true},
        {0, 0, DP_CUDAGRAPH_NONE, 1, true},
        {112, 128, DP_CUDAGRAPH_FULL, 1, true}},
       {false, false, true, false},
       {}},
      {"misconfiguration: rank 2 does not allow DP padding",
       DP_PAD_POLICY_EXPLICIT, false,
       {{10, 16, DP_CUDAGRAPH_FULL, 1, true},
        {12, 16, DP_CUDAGRAPH_FULL, 1, true},
        {9, 16, DP_CUDAGRAPH_FULL, 1, false},
        {16, 16, DP_CUDAGRAPH_FULL, 1, true}}, {}, {}},
      {"bad request: rank 1's padded count is below its scheduled count",
       DP_PAD_POLICY_EXPLICIT, false,
       {{10, 16, DP_CUDAGRAPH_FULL, 1, true},
        {40, 32, DP_CUDAGRAPH_FULL, 1, true},
        {9, 16, DP_CUDAGRAPH_FULL, 1, true},
        {16, 16, DP_CUDAGRAPH_FULL, 1, true}}, {}, {}},
  };
  const dp_status expected[] = {DP_OK, DP_OK, DP_OK, DP_OK, DP_OK, DP_ERR_INCONSISTENT_RANKS,
                                DP_ERR_INVALID_ARGUMENT};

  int unexpected = 0;
  for (int i = 0; i < static_cast<int>(sizeof steps / sizeof steps[0]); ++i) {
    const dp_status got = RunStep(i + 1, steps[i]);
    if (got != expected[i]) {
      std::printf("  UNEXPECTED: %s, expected %s\n", dp_status_string(got),
                  dp_status_string(expected[i]));
      ++unexpected;
    }
  }
  // The V2 rules with speculative decoding (examples/spec_decode.c): a verification step agreed
  // in one exchange, its draft prefill and draft decode reused with no exchange, V2 slices.
  std::printf("\nstep %d: speculative decoding under the V2 rules (examples/spec_decode.c)\n  ",
              static_cast<int>(sizeof steps / sizeof steps[0]) + 1);
  std::fflush(stdout);
  if (spec_decode() != 0) {
    std::printf("  UNEXPECTED: the V2 walk failed\n");
    ++unexpected;
  }
  std::printf("\n%s\n", unexpected == 0 ? "demo finished: every step behaved as expected"
                                        : "demo FAILED");
  return unexpected == 0 ? 0 : 1;
}
