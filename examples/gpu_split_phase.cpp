// The GPU path, split-phase, on the model's own stream: dp_coordinator_begin enqueues the
// exchange and returns at once; the host prepares the step (and enqueues more model work)
// while the GPU reaches the exchange; dp_coordinator_end, called when the padded sizes are
// needed, waits for the decision. The host never waits behind the model's queued work.
//
//   gpu_split_phase [--steps N]   one process per rank (see gpu_example_common.h)
//
// Every status is checked: any failure prints it and exits with status 1.
#include <cstring>
#include <vector>

#include "gpu_example_common.h"  // the rank's GPU and communicators, CUDA_CHECK, the scheduler

namespace {

// Stand-in for the model (not dpcoord): its stream and a buffer its kernels write.
struct Model {
  cudaStream_t stream = nullptr;
  int32_t* activations = nullptr;
};
constexpr size_t kActivationBytes = 64 << 20;

// What the host and the GPU do between begin and end: the previous step's tail on the
// model's stream, input preparation on the host.
void PrepareStep(Model& model, int step) {
  CUDA_CHECK(cudaMemsetAsync(model.activations, step & 0xff, kActivationBytes, model.stream));
  volatile double host_work = 0;
  for (int i = 0; i < 20000; ++i) host_work = host_work + i * 0.5;
}

// Runs the agreed step; here: checks the decision, and reads the device array with a copy
// enqueued on the model's stream after end, as a model kernel would read it.
void RunModel(const example::Rank& me, int step, const dp_batch_result& res, Model& model) {
  const int32_t expect = me.nranks > 1 ? example::ExpectedPadded(me.nranks, step)
                                       : example::Bucket(example::Tokens(me.rank, step));
  bool ok = res.num_tokens_after_padding_self == expect && res.step_id == step;
  if (res.has_num_tokens_after_padding) {
    CUDA_CHECK(cudaMemcpyAsync(model.activations, res.num_tokens_after_padding_device,
                               sizeof(int32_t) * res.dp_size, cudaMemcpyDeviceToDevice,
                               model.stream));
    std::vector<int32_t> seen(res.dp_size);
    CUDA_CHECK(cudaMemcpyAsync(seen.data(), model.activations, sizeof(int32_t) * res.dp_size,
                               cudaMemcpyDeviceToHost, model.stream));
    CUDA_CHECK(cudaStreamSynchronize(model.stream));
    for (int32_t v : seen) ok = ok && v == expect;
  }
  if (!ok) {
    std::fprintf(stderr, "rank %d step %d: %d tokens (step id %lld), expected %d\n", me.rank,
                 step, res.num_tokens_after_padding_self, static_cast<long long>(res.step_id),
                 expect);
    std::exit(1);
  }
}

void Check(dp_status s, const char* call) {
  if (s == DP_OK) return;
  std::fprintf(stderr, "%s: %s: %s\n", call, dp_status_string(s), dp_last_error());
  // A server instead: after TIMEOUT, NCCL, CUDA or CANCELLED, ncclCommAbort the communicator
  // on every rank, dp_coordinator_destroy, and build both anew.
  std::exit(1);
}

// [readme:gpu]
// Every rank, every step: one exchange on me.coord_comm (a communicator reserved for
// dpcoord), enqueued on the model's stream.
void ServeSteps(const example::Rank& me, Model& model, int steps) {
  dp_coordinator* coord = nullptr;
  Check(dp_coordinator_create(me.coord_comm, &coord), "dp_coordinator_create");  // local, once
  for (int step = 1; step <= steps; ++step) {
    dp_batch_request req;  // this rank's scheduler output for the step
    dp_batch_request_init(&req);
    req.num_tokens_unpadded = example::Tokens(me.rank, step);
    req.num_tokens_padded = example::Bucket(req.num_tokens_unpadded);  // its CUDA-graph bucket
    req.cudagraph_mode = DP_CUDAGRAPH_FULL;
    req.allow_dp_padding = true;
    req.timeout_ms = 10000;  // a rank that stops calling: DP_ERR_TIMEOUT, never a hang
    req.step_id = step;      // ranks a step apart fail together
    Check(dp_coordinator_begin(coord, model.stream, &req), "dp_coordinator_begin");

    PrepareStep(model, step);  // host work, and more model work on model.stream

    dp_batch_result res;
    dp_batch_result_init(&res);
    Check(dp_coordinator_end(coord, &res), "dp_coordinator_end");  // waits, bounded
    // res.num_tokens_after_padding_device is written in model.stream order: a kernel
    // enqueued on it from here on reads this step's array.
    RunModel(me, step, res, model);
  }
  Check(dp_coordinator_destroy(coord), "dp_coordinator_destroy");
}
// [/readme:gpu]

}  // namespace

int main(int argc, char** argv) {
  int steps = 50;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::strcmp(argv[i], "--steps") == 0) steps = std::atoi(argv[i + 1]);
  }
  example::Rank me;
  if (!example::SetUp(me)) return 0;  // no GPU: nothing to do
  Model model;
  CUDA_CHECK(cudaStreamCreateWithFlags(&model.stream, cudaStreamNonBlocking));
  CUDA_CHECK(cudaMalloc(&model.activations, kActivationBytes));
  ServeSteps(me, model, steps);
  CUDA_CHECK(cudaStreamSynchronize(model.stream));
  CUDA_CHECK(cudaFree(model.activations));
  CUDA_CHECK(cudaStreamDestroy(model.stream));
  example::TearDown(me);
  std::printf("rank %d: %d split-phase steps, every decision as expected\n", me.rank, steps);
  return 0;
}
