// A dedicated coordination stream whose device array the model's stream consumes.
//
// The exchange runs on its own stream, so neither the host nor the exchange waits for the
// model's queued work. The model's stream reads the device array only after
// cudaStreamWaitEvent on an event recorded behind the exchange, and the next begin waits
// (on the GPU) for that read, since the array is rewritten by the next exchange.
//
//   gpu_dedicated_stream [--steps N]   (one process per rank; see gpu_example_common.h)
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
  cudaStream_t model_stream, coord_stream;
  CUDA_CHECK(cudaStreamCreateWithFlags(&model_stream, cudaStreamNonBlocking));
  CUDA_CHECK(cudaStreamCreateWithFlags(&coord_stream, cudaStreamNonBlocking));
  cudaEvent_t decided, consumed;
  CUDA_CHECK(cudaEventCreateWithFlags(&decided, cudaEventDisableTiming));
  CUDA_CHECK(cudaEventCreateWithFlags(&consumed, cudaEventDisableTiming));
  int32_t* activations = nullptr;  // stand-in for the model's buffers
  CUDA_CHECK(cudaMalloc(&activations, 64 << 20));
  int32_t* padded_sizes = nullptr;  // the model's own copy of each step's array
  CUDA_CHECK(cudaMalloc(&padded_sizes, sizeof(int32_t) * me.nranks * steps));

  dp_coordinator* coord = nullptr;
  DP_CHECK(dp_coordinator_create(me.coord_comm, &coord));
  dp_batch_request req;
  dp_batch_request_init(&req);
  req.pad_policy = DP_PAD_POLICY_EXPLICIT;
  req.allow_dp_padding = true;
  req.timeout_ms = 10000;

  int wrong = 0;
  bool have_arrays = false;
  for (int step = 0; step < steps; ++step) {
    req.num_tokens_unpadded = example::Tokens(me.rank, step);
    req.num_tokens_padded = example::Bucket(req.num_tokens_unpadded);
    req.step_id = step + 1;
    // The previous step's array must have been read before the next exchange rewrites it.
    if (step > 0) CUDA_CHECK(cudaStreamWaitEvent(coord_stream, consumed, 0));
    DP_CHECK(dp_coordinator_begin(coord, coord_stream, &req));
    dp_batch_result res;
    dp_batch_result_init(&res);
    DP_CHECK(dp_coordinator_end(coord, &res));  // no wait for model_stream's work
    const int32_t expect = me.nranks > 1 ? example::ExpectedPadded(me.nranks, step)
                                         : req.num_tokens_padded;
    if (res.num_tokens_after_padding_self != expect) ++wrong;

    // The model's stream consumes the device array after the exchange, in GPU order.
    have_arrays = res.has_num_tokens_after_padding;
    if (have_arrays) {
      CUDA_CHECK(cudaEventRecord(decided, coord_stream));
      CUDA_CHECK(cudaStreamWaitEvent(model_stream, decided, 0));
      CUDA_CHECK(cudaMemcpyAsync(padded_sizes + step * me.nranks,
                                 res.num_tokens_after_padding_device,
                                 sizeof(int32_t) * me.nranks, cudaMemcpyDeviceToDevice,
                                 model_stream));
    }
    CUDA_CHECK(cudaEventRecord(consumed, model_stream));
    // Then the model's long work of this step: the next exchange does not wait for it (it
    // waits only for the copy above).
    CUDA_CHECK(cudaMemsetAsync(activations, step & 0xff, 64 << 20, model_stream));
  }
  CUDA_CHECK(cudaStreamSynchronize(model_stream));
  if (have_arrays) {
    std::vector<int32_t> seen(static_cast<size_t>(me.nranks) * steps);
    CUDA_CHECK(cudaMemcpy(seen.data(), padded_sizes, sizeof(int32_t) * seen.size(),
                          cudaMemcpyDeviceToHost));
    for (int step = 0; step < steps; ++step) {
      for (int r = 0; r < me.nranks; ++r) {
        wrong += seen[step * me.nranks + r] != example::ExpectedPadded(me.nranks, step);
      }
    }
  }
  DP_CHECK(dp_coordinator_destroy(coord));
  CUDA_CHECK(cudaFree(padded_sizes));
  CUDA_CHECK(cudaFree(activations));
  CUDA_CHECK(cudaEventDestroy(decided));
  CUDA_CHECK(cudaEventDestroy(consumed));
  CUDA_CHECK(cudaStreamDestroy(coord_stream));
  CUDA_CHECK(cudaStreamDestroy(model_stream));
  example::TearDown(me);
  std::printf("rank %d: %d dedicated-stream steps, %d wrong\n", me.rank, steps, wrong);
  return wrong == 0 ? 0 : 1;
}
