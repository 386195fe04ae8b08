// A serving engine's step loop with dpcoord: copy this into your engine.
//
// One process per data-parallel (DP) rank, each with its own GPU (or, for a test on one GPU,
// several ranks per GPU over NCCL's loopback sockets; see the launcher). Per step, every rank
// calls dp_coordinate_batch once, with its own scheduler output, and all ranks get the same
// decision: microbatch or not, tokens after DP padding for every rank, the CUDA-graph mode.
//
//   example_step_loop [--steps N]
// Rank set-up from the environment (as dpcoord_gpu_launcher sets it): DPCOORD_RANK,
// DPCOORD_NRANKS, DPCOORD_DEVICE, DPCOORD_RENDEZVOUS (a shared directory for the ncclUniqueId).
// In an engine these come from your own launcher (torchrun-style RANK/WORLD_SIZE, MPI, ...).
#include <cstring>

#include "gpu_example_common.h"  // CUDA_CHECK, NCCL_CHECK, the rank's set-up (examples/)

namespace {

// Stand-in for the scheduler: how many tokens this rank runs this step, and its CUDA-graph
// bucket (the padded count the graph was captured for).
struct SchedulerOutput {
  int32_t num_tokens;
  int32_t graph_bucket;
  bool only_decodes;
};

SchedulerOutput Schedule(int rank, int step) {
  SchedulerOutput s;
  s.only_decodes = step % 4 != 0;  // a prefill every 4th step
  s.num_tokens = s.only_decodes ? 8 + (rank * 5 + step) % 56 : 300 + 97 * rank + step;
  int32_t bucket = 8;
  while (bucket < s.num_tokens) bucket *= 2;
  s.graph_bucket = bucket <= 512 ? bucket : s.num_tokens;  // no graph above 512 tokens
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  int steps = 20;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--steps") == 0) steps = std::atoi(argv[i + 1]);
  }
  // 1. The DP communicator (the engine's: its collectives run on model_stream), and
  // 2. a communicator reserved for coordination, split from the DP one (same ranks, same
  //    order). Why: dp_coordinate_batch is a collective. If it shared a communicator with the
  //    model's own collectives but ran on another stream, two ranks could enqueue the two
  //    collectives in different orders and deadlock (SGLang hit exactly this). On its own
  //    communicator the ordering question does not arise. (See gpu_example_common.h.)
  example::Rank me;
  if (!example::SetUp(me)) return 0;
  const int rank = me.rank;
  const int nranks = me.nranks;
  ncclComm_t dp_comm = me.dp_comm;
  ncclComm_t coord_comm = me.coord_comm;
  cudaStream_t model_stream;
  CUDA_CHECK(cudaStreamCreateWithFlags(&model_stream, cudaStreamNonBlocking));

  // 3. The request template: set once, then per step only the per-step fields.
  dp_batch_request req;
  dp_batch_request_init(&req);                    // sets struct_size and every default
  req.pad_policy = DP_PAD_POLICY_WHEN_CUDAGRAPH;  // pad whenever all ranks run a CUDA graph
  req.ubatch.enabled = true;                      // dual-batch overlap configured
  req.ubatch.num_ubatches = 2;
  req.ubatch.decode_token_threshold = 32;
  req.ubatch.prefill_token_threshold = 512;
  req.timeout_ms = 10000;  // never hang on a dead peer: fail the step instead

  int32_t* tokens_per_rank_dev = nullptr;  // where the model wants the per-rank counts
  CUDA_CHECK(cudaMalloc(&tokens_per_rank_dev, sizeof(int32_t) * nranks));

  int exit_code = 0;
  for (int step = 0; step < steps; ++step) {
    const SchedulerOutput s = Schedule(rank, step);
    req.num_tokens_unpadded = s.num_tokens;
    req.num_tokens_padded = s.graph_bucket;
    req.uniform_decode = s.only_decodes ? 1 : 0;
    req.allow_microbatching = true;
    req.cudagraph_mode = s.num_tokens <= 512 ? DP_CUDAGRAPH_FULL : DP_CUDAGRAPH_NONE;

    dp_batch_result res;
    dp_batch_result_init(&res);                   // 0.2: the result has a struct_size too
    const dp_status st = dp_coordinate_batch(coord_comm, model_stream, &req, &res);
    if (st == DP_ERR_TIMEOUT || st == DP_ERR_NCCL) {
      // A peer is gone or the communicator is broken: abort it (never destroy: that waits),
      // free dpcoord's state, and let the engine's fault handling take over.
      std::fprintf(stderr, "rank %d step %d: %s: %s: aborting\n", rank, step, dp_status_string(st),
                   dp_last_error());
      ncclCommAbort(coord_comm);
      dp_release(coord_comm);
      coord_comm = nullptr;
      exit_code = 1;
      break;
    }
    if (st != DP_OK) {
      // DP_ERR_INCONSISTENT_RANKS (ranks disagree on the pad policy's flags: a configuration
      // mismatch) and DP_ERR_INVALID_ARGUMENT (some rank's request was invalid: it joined as
      // the invalid-request marker) reach every rank alike, so all stop the same way.
      std::fprintf(stderr, "rank %d step %d: %s: %s\n", rank, step, dp_status_string(st),
                   dp_last_error());
      exit_code = 1;
      break;
    }

    // The decision, identical on every rank.
    const int32_t run_tokens = res.num_tokens_after_padding_self;  // pad the batch to this
    const int32_t graph_mode = res.synced_cudagraph_mode;          // capture/replay this mode
    if (res.has_num_tokens_after_padding) {
      // Stream-ordered: the device array is ready for anything enqueued on model_stream after
      // the call; copy it (it is only valid until the next call on coord_comm).
      CUDA_CHECK(cudaMemcpyAsync(tokens_per_rank_dev, res.num_tokens_after_padding_device,
                                 sizeof(int32_t) * nranks, cudaMemcpyDeviceToDevice, model_stream));
    }
    if (rank == 0 && (step < 4 || step == steps - 1)) {
      std::printf("step %d: ubatch %d, dp_pad %d, graph mode %d, tokens %d (max %d, min %d)\n",
                  step, res.should_ubatch, res.should_dp_pad, graph_mode, run_tokens,
                  res.max_num_tokens_padded, res.min_num_tokens_unpadded);
    }
    // ... run the model: res.should_ubatch ? two microbatches : one batch of run_tokens ...
  }

  CUDA_CHECK(cudaStreamSynchronize(model_stream));
  CUDA_CHECK(cudaFree(tokens_per_rank_dev));
  // 4. Tear-down: dp_release before ncclCommDestroy (its cached state lives on the device of
  //    the communicator; the communicator pointer is its key).
  if (coord_comm != nullptr) {
    dp_release(coord_comm);
    NCCL_CHECK(ncclCommDestroy(coord_comm));
  }
  NCCL_CHECK(ncclCommDestroy(dp_comm));
  CUDA_CHECK(cudaStreamDestroy(model_stream));
  if (rank == 0 && exit_code == 0)
    std::printf("example_step_loop: %d steps on %d ranks: OK\n", steps, nranks);
  return exit_code;
}
