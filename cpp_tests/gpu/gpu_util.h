// Plumbing of the GPU suite: error-checking macros in the style of NVIDIA/nccl-tests
// (file:line plus the library's own error string), a deadline-bounded stream wait that watches
// ncclCommGetAsyncError, and the suite's own test kernels, shipped as PTX and launched through
// the CUDA driver API loaded at run time (no nvcc needed to build, no libcuda needed to link).
#ifndef DPCOORD_GPU_UTIL_H
#define DPCOORD_GPU_UTIL_H

#include <cuda_runtime.h>
#include <dlfcn.h>
#include <nccl.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <thread>

#if !defined(NCCL_VERSION_CODE) || NCCL_VERSION_CODE < 21800
#error "the dpcoord GPU suite needs NCCL >= 2.18 (ncclCommSplit)"
#endif

namespace dpg {

// This process's rank, for messages ("rank -1" before it is known).
inline int& MessageRank() {
  static int rank = -1;
  return rank;
}

// Ends the process after an infrastructure failure (not a dpcoord failure): the peers then
// fail too, or hang until the launcher's deadline, which names them.
[[noreturn]] inline void Die(const std::string& message) {
  std::fprintf(stderr, "rank %d: FATAL: %s\n", MessageRank(), message.c_str());
  std::fflush(stdout);
  std::fflush(stderr);
  _exit(3);
}

inline std::string Where(const char* file, int line) {
  return std::string(file) + ":" + std::to_string(line);
}

}  // namespace dpg

// CUDA runtime call that must succeed (suite plumbing).
#define CUDA_CHECK(cmd)                                                                           \
  do {                                                                                            \
    const cudaError_t dpg_e_ = (cmd);                                                             \
    if (dpg_e_ != cudaSuccess) {                                                                  \
      ::dpg::Die(::dpg::Where(__FILE__, __LINE__) + ": CUDA failure '" +                          \
                 cudaGetErrorString(dpg_e_) + "' (" + cudaGetErrorName(dpg_e_) + ") in " + #cmd); \
    }                                                                                             \
  } while (0)

// NCCL call that must succeed (suite plumbing).
#define NCCL_CHECK(cmd)                                                                        \
  do {                                                                                         \
    const ncclResult_t dpg_r_ = (cmd);                                                         \
    if (dpg_r_ != ncclSuccess) {                                                               \
      ::dpg::Die(::dpg::Where(__FILE__, __LINE__) + ": NCCL failure '" +                       \
                 ncclGetErrorString(dpg_r_) + "' in " + #cmd + ": " + ncclGetLastError(NULL)); \
    }                                                                                          \
  } while (0)

// CUDA runtime call whose failure is a test failure (the test goes on).
#define EXPECT_CUDA(cmd)                                                                           \
  do {                                                                                             \
    const cudaError_t dpg_e_ = (cmd);                                                              \
    EXPECT_EQ(cudaSuccess, dpg_e_)                                                                 \
        << ::dpg::Where(__FILE__, __LINE__) << ": " << #cmd << ": " << cudaGetErrorString(dpg_e_); \
  } while (0)

namespace dpg {

// Waits for `stream` with a deadline, polling ncclCommGetAsyncError(comm) as nccl-tests'
// testStreamSynchronize does; a hang or an asynchronous NCCL error ends the process.
inline void WaitStream(cudaStream_t stream, ncclComm_t comm, const char* what, double deadline_s) {
  const auto start = std::chrono::steady_clock::now();
  for (;;) {
    const cudaError_t q = cudaStreamQuery(stream);
    if (q == cudaSuccess) return;
    if (q != cudaErrorNotReady) {
      Die(std::string(what) + ": cudaStreamQuery: " + cudaGetErrorString(q));
    }
    if (comm != nullptr) {
      ncclResult_t async = ncclSuccess;
      NCCL_CHECK(ncclCommGetAsyncError(comm, &async));
      if (async != ncclSuccess && async != ncclInProgress) {
        Die(std::string(what) + ": NCCL asynchronous error '" + ncclGetErrorString(async) +
            "': " + ncclGetLastError(comm));
      }
    }
    const std::chrono::duration<double> waited = std::chrono::steady_clock::now() - start;
    if (waited.count() > deadline_s) {
      if (comm != nullptr) ncclCommAbort(comm);
      Die(std::string(what) + ": not finished after " + std::to_string(deadline_s) +
          " s (is a peer rank gone?)");
    }
    std::this_thread::sleep_for(std::chrono::microseconds(50));
  }
}

// ---------------------------------------------------------------------------------------------
// Test kernels. Written in CUDA C (below), compiled once with NVRTC 12.0
// (--gpu-architecture=compute_70) and tidied by hand: the .version is lowered to 7.0 (nothing
// here needs more) so any CUDA 11+ driver JIT-compiles it for any sm_70+ GPU; ptxas accepts it
// for sm_70 and sm_90.
//
//   __device__ unsigned long long now_ns() {
//     unsigned long long t; asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t)); return t; }
//   // dst[i] = src[i] * mul + add, after spinning delay_ns (so that a producer which ignored
//   // stream order would overwrite src before this kernel reads it).
//   extern "C" __global__ void dpt_consume(const int* src, int n, int* dst, int mul, int add,
//                                          unsigned long long delay_ns) {
//     if (delay_ns != 0) { unsigned long long t0 = now_ns(); while (now_ns() - t0 < delay_ns) {} }
//     for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = src[i] * mul + add;
//   }
//   // Spins until *flag != 0 (host-mapped memory), or max_ns passed (then *timed_out = 1).
//   extern "C" __global__ void dpt_spin_until(const volatile unsigned* flag,
//                                             unsigned long long max_ns, unsigned* timed_out) {
//     unsigned long long t0 = now_ns();
//     while (*flag == 0) { if (now_ns() - t0 > max_ns) { *timed_out = 1; return; } }
//   }
// ---------------------------------------------------------------------------------------------
inline const char* TestKernelsPtx() {
  return R"PTX(
.version 7.0
.target sm_70
.address_size 64

.visible .entry dpt_consume(
	.param .u64 src,
	.param .u32 n,
	.param .u64 dst,
	.param .u32 mul,
	.param .u32 add,
	.param .u64 delay_ns
)
{
	.reg .pred 	%p<5>;
	.reg .b32 	%r<11>;
	.reg .b64 	%rd<13>;

	ld.param.u64 	%rd4, [src];
	ld.param.u32 	%r5, [n];
	ld.param.u64 	%rd5, [dst];
	ld.param.u32 	%r6, [mul];
	ld.param.u32 	%r7, [add];
	ld.param.u64 	%rd6, [delay_ns];
	setp.eq.s64 	%p1, %rd6, 0;
	@%p1 bra 	CONSUME_COPY;
	mov.u64 	%rd7, %globaltimer;
CONSUME_DELAY:
	mov.u64 	%rd8, %globaltimer;
	sub.s64 	%rd9, %rd8, %rd7;
	setp.lt.u64 	%p2, %rd9, %rd6;
	@%p2 bra 	CONSUME_DELAY;
CONSUME_COPY:
	mov.u32 	%r10, %tid.x;
	setp.ge.s32 	%p3, %r10, %r5;
	@%p3 bra 	CONSUME_DONE;
	mov.u32 	%r2, %ntid.x;
	cvta.to.global.u64 	%rd2, %rd5;
	cvta.to.global.u64 	%rd3, %rd4;
CONSUME_LOOP:
	mul.wide.s32 	%rd10, %r10, 4;
	add.s64 	%rd11, %rd3, %rd10;
	ld.global.u32 	%r8, [%rd11];
	mad.lo.s32 	%r9, %r8, %r6, %r7;
	add.s64 	%rd12, %rd2, %rd10;
	st.global.u32 	[%rd12], %r9;
	add.s32 	%r10, %r10, %r2;
	setp.lt.s32 	%p4, %r10, %r5;
	@%p4 bra 	CONSUME_LOOP;
CONSUME_DONE:
	ret;
}

.visible .entry dpt_spin_until(
	.param .u64 flag,
	.param .u64 max_ns,
	.param .u64 timed_out
)
{
	.reg .pred 	%p<3>;
	.reg .b32 	%r<3>;
	.reg .b64 	%rd<10>;

	ld.param.u64 	%rd6, [flag];
	ld.param.u64 	%rd4, [max_ns];
	ld.param.u64 	%rd7, [timed_out];
	cvta.to.global.u64 	%rd1, %rd7;
	cvta.to.global.u64 	%rd2, %rd6;
	mov.u64 	%rd5, %globaltimer;
SPIN_LOOP:
	ld.volatile.global.u32 	%r1, [%rd2];
	setp.ne.s32 	%p1, %r1, 0;
	@%p1 bra 	SPIN_DONE;
	mov.u64 	%rd8, %globaltimer;
	sub.s64 	%rd9, %rd8, %rd5;
	setp.le.u64 	%p2, %rd9, %rd4;
	@%p2 bra 	SPIN_LOOP;
	mov.u32 	%r2, 1;
	st.global.u32 	[%rd1], %r2;
SPIN_DONE:
	ret;
}
)PTX";
}

// The few driver-API entry points the kernels need, from libcuda.so.1 at run time. The runtime's
// cudaLibraryLoadData would do, but only from CUDA 12.5's runtime on (CI builds against 12.4).
// The driver's types are declared here, ABI-identical to cuda.h's, so no cuda.h is needed.
class TestKernels {
 public:
  // Loads the PTX into the current context (the device's primary context: call after
  // cudaSetDevice + cudaFree(0)). Ends the process on failure.
  void Load() {
    void* lib = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (lib == nullptr) Die(std::string("dlopen(libcuda.so.1): ") + dlerror());
    Sym(lib, "cuGetErrorString", get_error_string_);
    Sym(lib, "cuModuleLoadData", module_load_data_);
    Sym(lib, "cuModuleGetFunction", module_get_function_);
    Sym(lib, "cuLaunchKernel", launch_kernel_);
    Check(module_load_data_(&module_, TestKernelsPtx()), "cuModuleLoadData(test kernels PTX)");
    Check(module_get_function_(&consume_, module_, "dpt_consume"),
          "cuModuleGetFunction(dpt_consume)");
    Check(module_get_function_(&spin_, module_, "dpt_spin_until"),
          "cuModuleGetFunction(dpt_spin_until)");
  }

  // dst[i] = src[i] * mul + add (i < n), one block, after a device-side delay of delay_ns.
  void Consume(cudaStream_t stream, const int32_t* src, int n, int32_t* dst, int mul, int add,
               unsigned long long delay_ns) {
    void* args[] = {&src, &n, &dst, &mul, &add, &delay_ns};
    Check(launch_kernel_(consume_, 1, 1, 1, 128, 1, 1, 0, stream, args, nullptr),
          "cuLaunchKernel(dpt_consume)");
  }

  // One thread spinning until *flag_dev != 0 or max_ns; then *timed_out_dev = 1 on timeout.
  void SpinUntil(cudaStream_t stream, const unsigned* flag_dev, unsigned long long max_ns,
                 unsigned* timed_out_dev) {
    void* args[] = {&flag_dev, &max_ns, &timed_out_dev};
    Check(launch_kernel_(spin_, 1, 1, 1, 1, 1, 1, 0, stream, args, nullptr),
          "cuLaunchKernel(dpt_spin_until)");
  }

 private:
  using CUresult = int;
  using CUmodule = struct CUmod_st*;
  using CUfunction = struct CUfunc_st*;

  template <typename F>
  static void Sym(void* lib, const char* name, F& out) {
    out = reinterpret_cast<F>(dlsym(lib, name));
    if (out == nullptr) Die(std::string("libcuda.so.1 lacks ") + name);
  }
  void Check(CUresult r, const char* what) {
    if (r == 0) return;
    const char* text = nullptr;
    if (get_error_string_ == nullptr || get_error_string_(r, &text) != 0 || text == nullptr) {
      text = "unknown error";
    }
    Die(std::string(what) + ": CUDA driver error " + std::to_string(r) + " '" + text + "'");
  }

  CUresult (*get_error_string_)(CUresult, const char**) = nullptr;
  CUresult (*module_load_data_)(CUmodule*, const void*) = nullptr;
  CUresult (*module_get_function_)(CUfunction*, CUmodule, const char*) = nullptr;
  CUresult (*launch_kernel_)(CUfunction, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                             unsigned, cudaStream_t, void**, void**) = nullptr;
  CUmodule module_ = nullptr;
  CUfunction consume_ = nullptr;
  CUfunction spin_ = nullptr;
};

}  // namespace dpg

#endif  // DPCOORD_GPU_UTIL_H
