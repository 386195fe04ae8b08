// dpcoord demo: four data-parallel ranks agree on one engine step, through the host-transport
// path (what a stack that exchanges on the CPU, e.g. with MPI, does):
//
//   every rank:  dp_make_record(&request, &records[my_rank])   local, validates the request
//   all ranks:   allgather the 20-byte records                 MPI_Allgather / Gloo / here: memory
//   every rank:  dp_decide_batch(records, ...)                 same records -> same decision
//
// The four ranks run one after another in this process; the "allgather" is a shared array.
// Build it against an installed dpcoord (examples/CMakeLists.txt):
//   cmake -S examples -B build/examples -DCMAKE_PREFIX_PATH=<prefix> && cmake --build build/examples
#include <dpcoord.h>

#include <cstdio>
#include <string>
#include <vector>

namespace {

constexpr int kRanks = 4;

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

// Runs one step on every rank; returns the status every rank got (DP_OK, or the error that
// every rank agreed on). Prints a table of inputs and decisions.
dp_status RunStep(int number, const Step& step) {
  std::printf("\nstep %d: %s\n", number, step.title);
  std::printf("  pad policy %s, microbatching %s\n",
              step.pad_policy == DP_PAD_POLICY_EXPLICIT ? "EXPLICIT" : "WHEN_CUDAGRAPH",
              step.microbatching ? "enabled (2 ubatches)" : "off");

  // 1. Local step on every rank: request -> record. An invalid request fails here, locally.
  std::vector<dp_rank_record> allgathered(kRanks);
  for (int r = 0; r < kRanks; ++r) {
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
  for (int r = 0; r < kRanks; ++r) {
    std::vector<int32_t> after(kRanks);
    dp_batch_result res;
    dp_batch_result_init(&res);  // struct_size: the library writes only what it holds
    const dp_status s = dp_decide_batch(allgathered.data(), kRanks, r, step.pad_policy,
                                        /*num_ubatches=*/2, after.data(), &res);
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
    std::printf("  every rank: microbatch %s, DP padding %s, CUDA graphs %s "
                "(max padded %d, min scheduled %d)\n",
                YesNo(first.should_ubatch), YesNo(first.should_dp_pad),
                ModeName(first.synced_cudagraph_mode), first.max_num_tokens_padded,
                first.min_num_tokens_unpadded);
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
        {112, 128, DP_CUDAGRAPH_FULL, 1, true}}},
      {"one long prefill; rank 1 runs eagerly (no CUDA graph)",
       DP_PAD_POLICY_WHEN_CUDAGRAPH, true,
       {{3000, -1, DP_CUDAGRAPH_PIECEWISE, 0, false},
        {40, 48, DP_CUDAGRAPH_NONE, 1, false},
        {64, 64, DP_CUDAGRAPH_FULL, 1, false},
        {36, 48, DP_CUDAGRAPH_FULL, 1, false}}},
      {"rank 3 is idle (dummy batch): no microbatching, every rank padded to the max",
       DP_PAD_POLICY_EXPLICIT, true,
       {{96, 96, DP_CUDAGRAPH_FULL, 1, true},
        {128, 128, DP_CUDAGRAPH_FULL, 1, true},
        {100, 128, DP_CUDAGRAPH_FULL, 1, true},
        {0, 0, DP_CUDAGRAPH_FULL, 1, true}}},
      {"misconfiguration: rank 2 does not allow DP padding",
       DP_PAD_POLICY_EXPLICIT, false,
       {{10, 16, DP_CUDAGRAPH_FULL, 1, true},
        {12, 16, DP_CUDAGRAPH_FULL, 1, true},
        {9, 16, DP_CUDAGRAPH_FULL, 1, false},
        {16, 16, DP_CUDAGRAPH_FULL, 1, true}}},
      {"bad request: rank 1's padded count is below its scheduled count",
       DP_PAD_POLICY_EXPLICIT, false,
       {{10, 16, DP_CUDAGRAPH_FULL, 1, true},
        {40, 32, DP_CUDAGRAPH_FULL, 1, true},
        {9, 16, DP_CUDAGRAPH_FULL, 1, true},
        {16, 16, DP_CUDAGRAPH_FULL, 1, true}}},
  };
  const dp_status expected[] = {DP_OK, DP_OK, DP_OK, DP_ERR_INCONSISTENT_RANKS,
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
  std::printf("\n%s\n", unexpected == 0 ? "demo finished: every step behaved as expected"
                                        : "demo FAILED");
  return unexpected == 0 ? 0 : 1;
}
