// Set-up shared by the GPU examples (not part of dpcoord): error checks, the rank's
// environment, and the DP + coordination communicators. In an engine these come from your own
// launcher and your own NCCL set-up.
//
// Rank set-up from the environment (as dpcoord_gpu_launcher sets it): DPCOORD_RANK,
// DPCOORD_NRANKS, DPCOORD_DEVICE, DPCOORD_RENDEZVOUS (a shared directory for the ncclUniqueId).
#ifndef DPCOORD_GPU_EXAMPLE_COMMON_H
#define DPCOORD_GPU_EXAMPLE_COMMON_H

#include <cuda_runtime.h>
#include <dpcoord.h>
#include <nccl.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>

#define CUDA_CHECK(cmd)                                                            \
  do {                                                                             \
    cudaError_t e_ = (cmd);                                                        \
    if (e_ != cudaSuccess) {                                                       \
      std::fprintf(stderr, "%s:%d: CUDA failure '%s' in %s\n", __FILE__, __LINE__, \
                   cudaGetErrorString(e_), #cmd);                                  \
      std::exit(1);                                                                \
    }                                                                              \
  } while (0)

#define NCCL_CHECK(cmd)                                                            \
  do {                                                                             \
    ncclResult_t r_ = (cmd);                                                       \
    if (r_ != ncclSuccess) {                                                       \
      std::fprintf(stderr, "%s:%d: NCCL failure '%s' in %s\n", __FILE__, __LINE__, \
                   ncclGetErrorString(r_), #cmd);                                  \
      std::exit(1);                                                                \
    }                                                                              \
  } while (0)

#define DP_CHECK(cmd)                                                                         \
  do {                                                                                        \
    dp_status s_ = (cmd);                                                                     \
    if (s_ != DP_OK) {                                                                        \
      std::fprintf(stderr, "%s:%d: %s in %s: %s\n", __FILE__, __LINE__, dp_status_string(s_), \
                   #cmd, dp_last_error());                                                    \
      std::exit(1);                                                                           \
    }                                                                                         \
  } while (0)

namespace example {

inline int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr && *v != '\0' ? std::atoi(v) : fallback;
}

// This rank, bound to its GPU; false when there is no GPU (the example then does nothing).
struct Rank {
  int rank = 0;
  int nranks = 1;
  ncclComm_t dp_comm = nullptr;     // the engine's DP communicator
  ncclComm_t coord_comm = nullptr;  // reserved for coordination (ncclCommSplit of dp_comm)
};

inline bool SetUp(Rank& r) {
  r.rank = EnvInt("DPCOORD_RANK", 0);
  r.nranks = EnvInt("DPCOORD_NRANKS", 1);
  int ngpus = 0;
  if (cudaGetDeviceCount(&ngpus) != cudaSuccess || ngpus == 0) {
    std::printf("rank %d: no CUDA GPU: nothing to do\n", r.rank);
    return false;
  }
  CUDA_CHECK(cudaSetDevice(EnvInt("DPCOORD_DEVICE", r.rank % ngpus)));
  // Rank 0 creates the NCCL id and publishes it through a shared directory (write + rename
  // is atomic); the others poll for it.
  ncclUniqueId id;
  const char* dir = std::getenv("DPCOORD_RENDEZVOUS");
  if (r.nranks == 1 || dir == nullptr) {
    NCCL_CHECK(ncclGetUniqueId(&id));
  } else {
    const std::string path = std::string(dir) + "/example-nccl-id";
    if (r.rank == 0) {
      NCCL_CHECK(ncclGetUniqueId(&id));
      const std::string tmp = path + ".tmp";
      std::ofstream(tmp, std::ios::binary).write(reinterpret_cast<const char*>(&id), sizeof id);
      std::rename(tmp.c_str(), path.c_str());
    } else {
      bool got = false;
      for (int waited_ms = 0; waited_ms < 60000 && !got; waited_ms += 10) {
        std::ifstream in(path, std::ios::binary);
        got = static_cast<bool>(in.read(reinterpret_cast<char*>(&id), sizeof id));
        if (!got) std::this_thread::sleep_for(std::chrono::milliseconds(10));
      }
      if (!got) {
        std::fprintf(stderr, "rank %d: no NCCL id from rank 0 in %s\n", r.rank, path.c_str());
        std::exit(1);
      }
    }
  }
  NCCL_CHECK(ncclCommInitRank(&r.dp_comm, r.nranks, id, r.rank));
  // dpcoord's exchange is a collective: on a communicator of its own it can never be ordered
  // differently from the model's collectives on another stream (the deadlock SGLang hit).
  NCCL_CHECK(ncclCommSplit(r.dp_comm, /*color=*/0, /*key=*/r.rank, &r.coord_comm, nullptr));
  return true;
}

inline void TearDown(Rank& r) {
  NCCL_CHECK(ncclCommDestroy(r.coord_comm));
  NCCL_CHECK(ncclCommDestroy(r.dp_comm));
}

// Stand-in for the scheduler: this rank's tokens this step and its CUDA-graph bucket.
inline int32_t Tokens(int rank, int step) { return 8 + (rank * 5 + step * 3) % 120; }
inline int32_t Bucket(int32_t tokens) {
  int32_t b = 8;
  while (b < tokens) b *= 2;
  return b;
}

// What every rank must get: EXPLICIT padding, every rank allows it, so every entry of the
// tokens-after-padding array is the largest bucket across ranks.
inline int32_t ExpectedPadded(int nranks, int step) {
  int32_t m = 0;
  for (int r = 0; r < nranks; ++r) m = Bucket(Tokens(r, step)) > m ? Bucket(Tokens(r, step)) : m;
  return m;
}

}  // namespace example

#endif  // DPCOORD_GPU_EXAMPLE_COMMON_H
