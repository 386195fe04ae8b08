/* A fake CUDA driver (libcuda.so.1) for dpcoord's GPU-path tests: no GPU, one device, one
 * context. Memory is malloc, streams and events are counters, work runs at once on the host
 * (every stream is always idle, every event done), and cuLaunchKernel of dp_postprocess runs
 * the kernel's own checks and decision (the host-runnable part of src/kernels/postprocess.cu,
 * which tests/fake_gpu/mod.rs extracts into postprocess_logic.h) on one thread and publishes
 * the host block as the kernel does, sequence word last.
 *
 * Streams 0xCA97 (capturing a graph) and 0xD1 (of device 1) stand for streams the coordinator
 * cannot use.
 *
 * Told through the environment (read at cuInit):
 *   FAKE_CUDA_FAIL_ALLOC=k        the k-th allocation (1-based, any kind) fails
 *   FAKE_CUDA_BLOCK=name:nth:ms   the nth call of `name` sleeps ms milliseconds first
 *   FAKE_CUDA_NO_PUBLISH=1        cuLaunchKernel publishes nothing (an exchange that hangs)
 *   FAKE_CUDA_PUBLISH_DELAY_MS=n  cuLaunchKernel publishes from another thread n ms later
 * Read back by the test (dlsym):
 *   fake_cuda_live()              allocations not freed yet (memory, events, streams, modules)
 *   fake_cuda_allocations()       allocations made so far
 *   fake_cuda_calls(name)         calls of `name` so far
 *   fake_cuda_log()               every call on a stream, "name stream tid;" in order
 *   fake_cuda_postprocess(slots, n, rank, seq, out, host, table)
 *                                 what dp_postprocess writes for those slots (and that device
 *                                 graph table, or NULL), at once
 *   fake_cuda_last_table()        the table (device words) the last launch was given, or NULL
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "../../src/kernels/layout.h"

/* The kernel's checks and decision, compiled as C; the device table read directly. */
#define DP_FN static inline
#define DP_UNROLL
typedef struct Table {
  const unsigned* g;
} Table;
#define TABLE_PRESENT(t) ((t).g != NULL)
#define TABLE_WORD(t, i) ((t).g[(unsigned)(i)])
#include "postprocess_logic.h"

typedef int CUresult;
typedef unsigned long long CUdeviceptr;
#define CTX ((void*)0xC0C0)
#define KERNEL ((void*)0xF00D)
#define CAPTURING_STREAM ((void*)0xCA97)
/* A stream of a second device's context. */
#define OTHER_DEVICE_STREAM ((void*)0xD1)
#define OTHER_CTX ((void*)0xC1C1)

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static long live, allocations, fail_at = -1;
static char block_name[64];
static long block_nth, block_ms;
static int no_publish;
static long publish_delay_ms;
/* Delayed publishes not done yet: until then every stream is busy and every event pending. */
static int pending;
static __thread void* current;
static __thread void* stack[16];
static __thread int depth;

#define MAX_NAMES 64
static struct { const char* name; long calls; } counts[MAX_NAMES];
static char log_buf[1 << 16];
static size_t log_len;

static void sleep_ms(long ms) {
  struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};
  nanosleep(&t, NULL);
}

/* Counts a call of `name`; sleeps when it is the one FAKE_CUDA_BLOCK names. */
static void enter(const char* name) {
  long n = 0;
  pthread_mutex_lock(&lock);
  for (int i = 0; i < MAX_NAMES; i++) {
    if (!counts[i].name) counts[i].name = name;
    if (counts[i].name == name || !strcmp(counts[i].name, name)) {
      n = ++counts[i].calls;
      break;
    }
  }
  pthread_mutex_unlock(&lock);
  if (block_ms > 0 && n == block_nth && !strcmp(name, block_name)) sleep_ms(block_ms);
}

static void log_stream(const char* name, void* stream) {
  pthread_mutex_lock(&lock);
  if (log_len < sizeof log_buf - 64)
    log_len += (size_t)snprintf(log_buf + log_len, sizeof log_buf - log_len, "%s %p %ld;", name,
                                stream, (long)syscall(SYS_gettid));
  pthread_mutex_unlock(&lock);
}

/* 0 when the allocation may proceed (and is counted live), else an out-of-memory code. */
static CUresult allocate(void) {
  CUresult rc = 0;
  pthread_mutex_lock(&lock);
  allocations++;
  if (allocations == fail_at) rc = 2; /* CUDA_ERROR_OUT_OF_MEMORY */
  else live++;
  pthread_mutex_unlock(&lock);
  return rc;
}
static void release(void) {
  pthread_mutex_lock(&lock);
  live--;
  pthread_mutex_unlock(&lock);
}

long fake_cuda_live(void) { return live; }
long fake_cuda_allocations(void) { return allocations; }
long fake_cuda_calls(const char* name) {
  for (int i = 0; i < MAX_NAMES && counts[i].name; i++)
    if (!strcmp(counts[i].name, name)) return counts[i].calls;
  return 0;
}
const char* fake_cuda_log(void) { return log_buf; }

CUresult cuInit(unsigned flags) {
  (void)flags;
  const char* v = getenv("FAKE_CUDA_FAIL_ALLOC");
  if (v) fail_at = atol(v);
  v = getenv("FAKE_CUDA_BLOCK");
  if (v) sscanf(v, "%63[^:]:%ld:%ld", block_name, &block_nth, &block_ms);
  no_publish = getenv("FAKE_CUDA_NO_PUBLISH") != NULL;
  v = getenv("FAKE_CUDA_PUBLISH_DELAY_MS");
  if (v) publish_delay_ms = atol(v);
  enter("cuInit");
  return 0;
}
CUresult cuDriverGetVersion(int* v) { *v = 12040; return 0; }
CUresult cuGetErrorName(CUresult e, const char** s) { *s = e == 2 ? "CUDA_ERROR_OUT_OF_MEMORY" : "CUDA_ERROR_FAKE"; return 0; }
CUresult cuGetErrorString(CUresult e, const char** s) { (void)e; *s = "fake driver error"; return 0; }

CUresult cuCtxGetCurrent(void** c) { *c = current; return 0; }
CUresult cuCtxSetCurrent(void* c) { current = c; return 0; }
CUresult cuCtxPushCurrent_v2(void* c) {
  if (depth == 16) return 1;
  stack[depth++] = current;
  current = c;
  return 0;
}
CUresult cuCtxPopCurrent_v2(void** c) {
  if (depth == 0) return 201; /* CUDA_ERROR_INVALID_CONTEXT */
  if (c) *c = current;
  current = stack[--depth];
  return 0;
}
CUresult cuCtxGetDevice(int* d) { if (!current) return 201; *d = current == OTHER_CTX; return 0; }
CUresult cuCtxGetId(void* c, unsigned long long* id) { (void)c; *id = 1; return 0; }
CUresult cuStreamGetCtx(void* s, void** c) { *c = s == OTHER_DEVICE_STREAM ? OTHER_CTX : CTX; return 0; }
CUresult cuDeviceGet(int* d, int ordinal) { *d = ordinal; return ordinal == 0 ? 0 : 101; }
CUresult cuDeviceGetCount(int* n) { *n = 1; return 0; }
CUresult cuDeviceGetName(char* name, int len, int d) { (void)d; snprintf(name, (size_t)len, "fake"); return 0; }
CUresult cuDevicePrimaryCtxRetain(void** c, int d) { (void)d; *c = CTX; return 0; }

CUresult cuStreamSynchronize(void* s) { enter("cuStreamSynchronize"); log_stream("cuStreamSynchronize", s); return 0; }
CUresult cuStreamQuery(void* s) {
  enter("cuStreamQuery");
  log_stream("cuStreamQuery", s);
  return __atomic_load_n(&pending, __ATOMIC_SEQ_CST) ? 600 : 0; /* CUDA_ERROR_NOT_READY */
}
CUresult cuStreamIsCapturing(void* s, int* status) {
  enter("cuStreamIsCapturing");
  log_stream("cuStreamIsCapturing", s);
  *status = s == CAPTURING_STREAM ? 1 : 0;
  return 0;
}
CUresult cuStreamCreate(void** s, unsigned flags) {
  (void)flags;
  enter("cuStreamCreate");
  CUresult rc = allocate();
  if (rc) return rc;
  *s = malloc(1);
  return 0;
}
CUresult cuStreamDestroy_v2(void* s) { enter("cuStreamDestroy"); free(s); release(); return 0; }
CUresult cuStreamWaitEvent(void* s, void* e, unsigned flags) {
  (void)e; (void)flags;
  enter("cuStreamWaitEvent");
  log_stream("cuStreamWaitEvent", s);
  return 0;
}

CUresult cuMemAlloc_v2(CUdeviceptr* p, size_t bytes) {
  enter("cuMemAlloc");
  CUresult rc = allocate();
  if (rc) return rc;
  *p = (CUdeviceptr)(uintptr_t)malloc(bytes);
  return 0;
}
CUresult cuMemFree_v2(CUdeviceptr p) { enter("cuMemFree"); free((void*)(uintptr_t)p); release(); return 0; }
CUresult cuMemHostAlloc(void** p, size_t bytes, unsigned flags) {
  (void)flags;
  enter("cuMemHostAlloc");
  CUresult rc = allocate();
  if (rc) return rc;
  *p = malloc(bytes);
  return 0;
}
CUresult cuMemFreeHost(void* p) { enter("cuMemFreeHost"); free(p); release(); return 0; }
CUresult cuMemHostGetDevicePointer_v2(CUdeviceptr* d, void* p, unsigned flags) {
  (void)flags;
  *d = (CUdeviceptr)(uintptr_t)p;
  return 0;
}
CUresult cuMemsetD32_v2(CUdeviceptr p, unsigned v, size_t n) {
  for (size_t i = 0; i < n; i++) ((unsigned*)(uintptr_t)p)[i] = v;
  return 0;
}
CUresult cuMemcpyHtoDAsync_v2(CUdeviceptr d, const void* s, size_t bytes, void* stream) {
  enter("cuMemcpyHtoDAsync");
  log_stream("cuMemcpyHtoDAsync", stream);
  memcpy((void*)(uintptr_t)d, s, bytes);
  return 0;
}
CUresult cuMemcpyHtoD_v2(CUdeviceptr d, const void* s, size_t bytes) {
  enter("cuMemcpyHtoD");
  memcpy((void*)(uintptr_t)d, s, bytes);
  return 0;
}
CUresult cuMemcpyDtoH_v2(void* d, CUdeviceptr s, size_t bytes) {
  memcpy(d, (const void*)(uintptr_t)s, bytes);
  return 0;
}

CUresult cuEventCreate(void** e, unsigned flags) {
  (void)flags;
  enter("cuEventCreate");
  CUresult rc = allocate();
  if (rc) return rc;
  *e = malloc(1);
  return 0;
}
CUresult cuEventRecord(void* e, void* s) { (void)e; enter("cuEventRecord"); log_stream("cuEventRecord", s); return 0; }
CUresult cuEventQuery(void* e) {
  (void)e;
  enter("cuEventQuery");
  return __atomic_load_n(&pending, __ATOMIC_SEQ_CST) ? 600 : 0; /* CUDA_ERROR_NOT_READY */
}
CUresult cuEventDestroy_v2(void* e) { enter("cuEventDestroy"); free(e); release(); return 0; }

CUresult cuModuleLoadData(void** m, const void* image) {
  (void)image;
  enter("cuModuleLoadData");
  CUresult rc = allocate();
  if (rc) return rc;
  *m = malloc(1);
  return 0;
}
CUresult cuModuleGetFunction(void** f, void* m, const char* name) {
  (void)m;
  if (strcmp(name, "dp_postprocess")) return 500; /* CUDA_ERROR_NOT_FOUND */
  *f = KERNEL;
  return 0;
}
CUresult cuModuleUnload(void* m) { enter("cuModuleUnload"); free(m); release(); return 0; }

/* dp_postprocess on one thread: every slot's part folded in rank order (the kernel folds in
 * another order; every fold is associative and commutative), the verdict, then the kernel's
 * writes: the header, the array (OK) or the copy of the slots (otherwise), the sequence word
 * last. */
typedef struct post {
  const unsigned* slots;
  int n, rank;
  unsigned seq;
  int* out;
  int* host;
  const unsigned* table;
} post;

static const unsigned* last_table;
const unsigned* fake_cuda_last_table(void) { return last_table; }

static void publish(const post* p) {
  const int args_ok = p->n >= 1 && p->rank >= 0 && p->rank < p->n;
  const int n = args_ok ? p->n : 0;
  Partial acc = identity_partial();
  for (int r = 0; r < n; r++)
    acc = combine(acc, slot_partial(p->slots + r * SLOT_WORDS, p->slots, p->seq, r));
  static const unsigned none[SLOT_WORDS];
  const unsigned* own = args_ok ? p->slots + p->rank * SLOT_WORDS + SLOT_RECORD : none;
  Table t = {p->table};
  Verdict v = decide(acc, n > 0 ? p->slots : none, own, p->n, args_ok, t);
  for (int i = 1; i < HOST_HEADER_WORDS; i++) p->host[i] = header_word(&v, i);
  if (v.status == STATUS_OK) {
    for (int r = 0; r < n; r++)
      p->out[r] = p->host[HOST_HEADER_WORDS + r] = array_word(v.fill, p->slots + r * SLOT_WORDS);
  } else {
    for (int i = 0; i < n * SLOT_WORDS; i++) p->host[HOST_HEADER_WORDS + n + i] = (int)p->slots[i];
  }
  __atomic_thread_fence(__ATOMIC_SEQ_CST);
  __atomic_store_n(&p->host[HOST_SEQ], (int)p->seq, __ATOMIC_SEQ_CST);
}

/* The same, called by the test directly: dp_postprocess's outputs for the given slots. */
void fake_cuda_postprocess(const unsigned* slots, int n, int rank, unsigned seq, int* out,
                           int* host, const unsigned* table) {
  post p = {slots, n, rank, seq, out, host, table};
  publish(&p);
}

static void* publish_later(void* arg) {
  sleep_ms(publish_delay_ms);
  publish(arg);
  free(arg);
  __atomic_fetch_sub(&pending, 1, __ATOMIC_SEQ_CST);
  return NULL;
}

/* dp_postprocess(slots, dp_size, dp_rank, seq, device_out, host, table) */
CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by,
                        unsigned bz, unsigned shared, void* stream, void** params, void** extra) {
  (void)gx; (void)gy; (void)gz; (void)bx; (void)by; (void)bz; (void)shared; (void)extra;
  enter("cuLaunchKernel");
  log_stream("cuLaunchKernel", stream);
  if (f != KERNEL) return 400; /* CUDA_ERROR_INVALID_HANDLE */
  if (no_publish) return 0;
  post* p = malloc(sizeof *p);
  p->slots = (const unsigned*)(uintptr_t)*(CUdeviceptr*)params[0];
  p->n = *(int*)params[1];
  p->rank = *(int*)params[2];
  p->seq = *(unsigned*)params[3];
  p->out = (int*)(uintptr_t)*(CUdeviceptr*)params[4];
  p->host = (int*)(uintptr_t)*(CUdeviceptr*)params[5];
  p->table = (const unsigned*)(uintptr_t)*(CUdeviceptr*)params[6];
  last_table = p->table;
  if (publish_delay_ms > 0) {
    pthread_t t;
    __atomic_fetch_add(&pending, 1, __ATOMIC_SEQ_CST);
    pthread_create(&t, NULL, publish_later, p);
    pthread_detach(t);
    return 0;
  }
  publish(p);
  free(p);
  return 0;
}
