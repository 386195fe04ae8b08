// Split-phase on the model's stream: begin early, end late.
//
// dp_coordinator_begin enqueues the exchange on the model's stream and returns at once; the
// host goes on preparing the step (and may enqueue more model work) while the GPU reaches
// the exchange; dp_coordinator_end, called only when the padded sizes are needed, waits for
// the decision. The host never sits behind the model's queued work in between.
//
//   gpu_split_phase [--steps N]      (one process per rank; see gpu_example_common.h)
#include <cstring>
#include <vector>

#include "gpu_example_common.h"

int main(int argc, char** argv) {
  int steps = 50;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--steps") == 0) steps = std::atoi(argv[i + 1]);
  }
  example::Rank me;
  if (!example::SetUp(me)) return 0;
  cudaStream_t model_stream;
  CUDA_CHECK(cudaStreamCreateWithFlags(&model_stream, cudaStreamNonBlocking));
  int32_t* activations = nullptr;  // stand-in for the model's buffers
  CUDA_CHECK(cudaMalloc(&activations, 64 << 20));

  // One coordinator per communicator, created once, owned by the engine.
  dp_coordinator* coord = nullptr;
  DP_CHECK(dp_coordinator_create(me.coord_comm, &coord));

  dp_batch_request req;
  dp_batch_request_init(&req);  // struct_size and every default
  req.pad_policy = DP_PAD_POLICY_EXPLICIT;
  req.allow_dp_padding = true;
  req.cudagraph_mode = DP_CUDAGRAPH_FULL;
  req.timeout_ms = 10000;  // bounded: a rank that stops calling gives DP_ERR_TIMEOUT

  int wrong = 0;
  for (int step = 0; step < steps; ++step) {
    // The scheduler has produced this step's batch: begin right away, on the model's stream.
    req.num_tokens_unpadded = example::Tokens(me.rank, step);
    req.num_tokens_padded = example::Bucket(req.num_tokens_unpadded);
    req.step_id = step + 1;  // catches a rank a step ahead or behind
    DP_CHECK(dp_coordinator_begin(coord, model_stream, &req));

    // Meanwhile: the previous step's tail on the GPU, input preparation on the host.
    CUDA_CHECK(cudaMemsetAsync(activations, step & 0xff, 64 << 20, model_stream));
    volatile double host_work = 0;
    for (int i = 0; i < 20000; ++i) host_work = host_work + i * 0.5;

    // Late: the padded sizes are needed now.
    dp_batch_result res;
    dp_batch_result_init(&res);
    DP_CHECK(dp_coordinator_end(coord, &res));
    const int32_t expect = me.nranks > 1 ? example::ExpectedPadded(me.nranks, step)
                                         : req.num_tokens_padded;
    if (res.num_tokens_after_padding_self != expect || res.step_id != step + 1) {
      std::fprintf(stderr, "rank %d step %d: padded %d, expected %d (step_id %lld)\n", me.rank,
                   step, res.num_tokens_after_padding_self, expect,
                   static_cast<long long>(res.step_id));
      ++wrong;
    }
    // The device array is written in model_stream order: a kernel (here a copy) enqueued
    // after end on the same stream reads this step's values.
    if (res.has_num_tokens_after_padding) {
      CUDA_CHECK(cudaMemcpyAsync(activations, res.num_tokens_after_padding_device,
                                 sizeof(int32_t) * res.dp_size, cudaMemcpyDeviceToDevice,
                                 model_stream));
      std::vector<int32_t> seen(res.dp_size);
      CUDA_CHECK(cudaMemcpyAsync(seen.data(), activations, sizeof(int32_t) * res.dp_size,
                                 cudaMemcpyDeviceToHost, model_stream));
      CUDA_CHECK(cudaStreamSynchronize(model_stream));
      for (int32_t v : seen) wrong += v != expect;
    }
  }
  DP_CHECK(dp_coordinator_destroy(coord));
  CUDA_CHECK(cudaStreamSynchronize(model_stream));
  CUDA_CHECK(cudaFree(activations));
  CUDA_CHECK(cudaStreamDestroy(model_stream));
  example::TearDown(me);
  std::printf("rank %d: %d split-phase steps, %d wrong\n", me.rank, steps, wrong);
  return wrong == 0 ? 0 : 1;
}
