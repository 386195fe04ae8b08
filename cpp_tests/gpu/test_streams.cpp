// Streams: the device array in stream order for a kernel after the call, every kind of
// stream (NULL, legacy, per-thread, blocking and non-blocking user streams), a stream of
// another device, and a capturing stream (refused, the capture left intact).
#include <cstdio>
#include <string>
#include <vector>

#include "gpu_world.h"

namespace dpg {
namespace {

TEST_F(Gpu, DeviceArrayIsStreamOrderedForAKernelAfterTheCall) {
  // Each step's device array is consumed by a (deliberately slow) kernel enqueued right after
  // the call on the same stream, with no host synchronization until the end: the next call's
  // write must not overtake it.
  DPG_SKIP_UNLESS_RANKS(2);  // a one-rank communicator has no device array
  const int kSteps = 24;
  const int n = g.nranks;
  ASSERT_LE(kSteps * n, kScratchInts);
  CUDA_CHECK(cudaMemsetAsync(g.scratch_dev, 0xFF, sizeof(int32_t) * kSteps * n, g.stream));
  std::vector<std::vector<int32_t>> expected;
  bool all_ok = true;
  for (int step = 0; step < kSteps && all_ok; ++step) {
    std::vector<dp_batch_request> reqs(n, BaseRequest());
    for (int r = 0; r < n; ++r) {
      Tokens(reqs[r], 100 * step + 3 * r + 1, -1);
      reqs[r].allow_dp_padding = step % 3 == 0;
    }
    const Expected exp = Oracle(reqs, g.rank);
    dp_batch_result res;
    const dp_status st = Coordinate(g.dp, g.stream, &reqs[g.rank], &res);
    EXPECT_STATUS(DP_OK, st);
    const bool have_array = st == DP_OK && res.num_tokens_after_padding_device != nullptr;
    if (st == DP_OK) {
      EXPECT_NE(nullptr, res.num_tokens_after_padding_device);
    }
    if (have_array) {
      g.kernels.Consume(g.stream, res.num_tokens_after_padding_device, n, g.scratch_dev + step * n,
                        3, 1, 200 * 1000 /* 200 us */);
      expected.push_back(exp.array);
    }
    all_ok = AllTrue(st == DP_OK && have_array);
  }
  std::vector<int32_t> got(static_cast<size_t>(kSteps) * n);
  CUDA_CHECK(cudaMemcpyAsync(got.data(), g.scratch_dev, sizeof(int32_t) * got.size(),
                             cudaMemcpyDeviceToHost, g.stream));
  WaitStream(g.stream, nullptr, "the consumer kernels", g.wait_s);
  for (size_t step = 0; step < expected.size(); ++step) {
    for (int r = 0; r < n; ++r) {
      EXPECT_EQ(expected[step][r] * 3 + 1, got[step * n + r])
          << "step " << step << " rank " << r << ": the kernel after the call saw another value";
    }
  }
}

TEST_F(Gpu, StreamKinds) {
  cudaStream_t blocking = nullptr;
  CUDA_CHECK(cudaStreamCreate(&blocking));
  const struct {
    const char* name;
    cudaStream_t stream;
  } kinds[] = {{"NULL (legacy default stream)", nullptr},
               {"cudaStreamLegacy", cudaStreamLegacy},
               {"cudaStreamPerThread", cudaStreamPerThread},
               {"user stream (blocking)", blocking},
               {"user stream (non-blocking)", g.stream}};
  int index = 0;
  for (const auto& kind : kinds) {
    SCOPED_TRACE(kind.name);
    std::vector<dp_batch_request> reqs(g.nranks, BaseRequest());
    for (int r = 0; r < g.nranks; ++r) {
      Tokens(reqs[r], 17 * index + r, -1);
      reqs[r].allow_dp_padding = index % 2 == 1;
      reqs[r].cudagraph_mode = (index + r) % 3;
    }
    const Expected exp = Oracle(reqs, g.rank);
    dp_batch_result res;
    const dp_status st = Coordinate(g.dp, kind.stream, &reqs[g.rank], &res);
    CheckResult(exp, st, res, kind.stream, g.nranks, g.rank);
    // And a kernel on the same stream consumes the device array.
    if (st == DP_OK && res.num_tokens_after_padding_device != nullptr) {
      g.kernels.Consume(kind.stream, res.num_tokens_after_padding_device, g.nranks, g.scratch_dev,
                        2, 5, 0);
      const std::vector<int32_t> got = ReadDevice(g.scratch_dev, g.nranks, kind.stream);
      for (int r = 0; r < g.nranks; ++r) EXPECT_EQ(exp.array[r] * 2 + 5, got[r]) << "rank " << r;
    }
    ++index;
    if (!AllTrue(st == DP_OK && !g.suspect)) {
      ADD_FAILURE() << "stopping: a rank failed on " << kind.name;
      break;
    }
  }
  CUDA_CHECK(cudaStreamSynchronize(blocking));
  CUDA_CHECK(cudaStreamDestroy(blocking));
}

TEST_F(Gpu, StreamOfAnotherDeviceIsInvalid) {
  if (g.ngpus < 2) {
    GTEST_SKIP() << "needs >= 2 GPUs for a stream on another device than the communicator's "
                    "(this machine has "
                 << g.ngpus << ")";
  }
  const int other = (g.device + 1) % g.ngpus;
  cudaStream_t foreign = nullptr;
  CUDA_CHECK(cudaSetDevice(other));
  CUDA_CHECK(cudaStreamCreateWithFlags(&foreign, cudaStreamNonBlocking));
  CUDA_CHECK(cudaSetDevice(g.device));
  dp_batch_request q = BaseRequest();
  Tokens(q, 8);
  q.timeout_ms = 5000;  // a rank that wrongly enters the collective fails instead of hanging
  dp_batch_result res;
  const dp_status st = Coordinate(g.dp, foreign, &q, &res);
  EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, st);
  EXPECT_TRUE(IsPoisoned(res)) << "result written on failure";
  std::printf("stream on device %d, communicator on device %d: %s: %s\n", other, g.device,
              dp_status_string(st), dp_last_error());
  EXPECT_TRUE(AllTrue(st == DP_ERR_INVALID_ARGUMENT)) << "not every rank refused the stream";
  CUDA_CHECK(cudaStreamDestroy(foreign));
}

TEST_F(Gpu, CapturingStreamIsRefusedAndCaptureEndsCleanly) {
  cudaStream_t s = nullptr;
  CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
  const struct {
    const char* name;
    cudaStreamCaptureMode mode;
  } modes[] = {{"global", cudaStreamCaptureModeGlobal},
               {"thread-local", cudaStreamCaptureModeThreadLocal},
               {"relaxed", cudaStreamCaptureModeRelaxed}};
  for (const auto& m : modes) {
    SCOPED_TRACE(std::string("capture mode ") + m.name);
    dp_batch_request q = BaseRequest();
    Tokens(q, 64);
    q.timeout_ms = 5000;
    CUDA_CHECK(cudaStreamBeginCapture(s, m.mode));
    dp_batch_result res;
    const dp_status st = Coordinate(g.dp, s, &q, &res);
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(s, &graph);
    EXPECT_EQ(cudaSuccess, ended) << "ending the capture: " << cudaGetErrorString(ended)
                                  << " (did dp_coordinate_batch invalidate it?)";
    if (graph != nullptr) CUDA_CHECK(cudaGraphDestroy(graph));
    (void)cudaGetLastError();
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusActive;
    CUDA_CHECK(cudaStreamIsCapturing(s, &status));
    EXPECT_EQ(cudaStreamCaptureStatusNone, status);
    EXPECT_STATUS(DP_ERR_INVALID_ARGUMENT, st);
    EXPECT_TRUE(IsPoisoned(res)) << "result written on failure";
    if (!AllTrue(st == DP_ERR_INVALID_ARGUMENT)) {
      ADD_FAILURE() << "not every rank refused the capturing stream";
      g.suspect = true;  // a rank may have entered the collective
      break;
    }
  }
  // The same stream, no longer capturing, works.
  if (!g.suspect) {
    std::vector<dp_batch_request> reqs(g.nranks, BaseRequest());
    for (int r = 0; r < g.nranks; ++r) Tokens(reqs[r], 5 + r);
    RunStep(g.dp, g.rank, g.nranks, reqs, s);
  }
  CUDA_CHECK(cudaStreamDestroy(s));
}

}  // namespace
}  // namespace dpg
