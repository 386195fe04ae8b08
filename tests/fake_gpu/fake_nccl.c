/* A fake NCCL (libnccl.so.2, version 2.28.3) for dpcoord's GPU-path tests, loaded through
 * DPCOORD_NCCL_LIBRARY. A communicator is made by the test (fake_nccl_comm) with one or two
 * ranks on device 0; ncclAllGather copies the send buffer into every rank's place of the
 * receive buffer at once (the other rank sends what this one sends).
 *
 * Told through the environment:
 *   FAKE_NCCL_BLOCK=name:nth:ms   the nth call of `name` sleeps ms milliseconds first, then
 *                                 answers as usual (a call entered after the abort fails)
 * Read back and driven by the test (dlsym):
 *   fake_nccl_comm(nranks, rank)  a new communicator
 *   fake_nccl_abort(comm)         marks it aborted (what ncclCommAbort would do)
 *   fake_nccl_after_abort(comm)   the calls made on it after the mark, "name;" each
 *   fake_nccl_calls(name)         calls of `name` so far, on any communicator
 *   fake_nccl_log()               every ncclAllGather, "ncclAllGather stream tid;" in order
 *   fake_nccl_inside()            ncclAllGather calls not returned yet
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

typedef struct fake_comm {
  int nranks, rank;
  volatile int aborted;
  char after[4096];
} fake_comm;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static char block_name[64];
static long block_nth, block_ms;
static int configured;
static char log_buf[1 << 14];
static size_t log_len;
const char* fake_nccl_log(void) { return log_buf; }
static long inside;
long fake_nccl_inside(void) { return __atomic_load_n(&inside, __ATOMIC_SEQ_CST); }
#define MAX_NAMES 32
static struct { const char* name; long calls; } counts[MAX_NAMES];

void* fake_nccl_comm(int nranks, int rank) {
  fake_comm* c = calloc(1, sizeof *c);
  c->nranks = nranks;
  c->rank = rank;
  return c;
}
void fake_nccl_abort(void* comm) { __atomic_store_n(&((fake_comm*)comm)->aborted, 1, __ATOMIC_SEQ_CST); }
const char* fake_nccl_after_abort(void* comm) { return ((fake_comm*)comm)->after; }
long fake_nccl_calls(const char* name) {
  for (int i = 0; i < MAX_NAMES && counts[i].name; i++)
    if (!strcmp(counts[i].name, name)) return counts[i].calls;
  return 0;
}

/* Counts a call; records it when the communicator was aborted before it (and then returns
 * nonzero: the call fails); sleeps when it is the call FAKE_NCCL_BLOCK names. */
static int enter(const char* name, fake_comm* c) {
  long n = 0;
  pthread_mutex_lock(&lock);
  if (!configured) {
    const char* v = getenv("FAKE_NCCL_BLOCK");
    if (v) sscanf(v, "%63[^:]:%ld:%ld", block_name, &block_nth, &block_ms);
    configured = 1;
  }
  for (int i = 0; i < MAX_NAMES; i++) {
    if (!counts[i].name) counts[i].name = name;
    if (!strcmp(counts[i].name, name)) {
      n = ++counts[i].calls;
      break;
    }
  }
  int aborted = c && __atomic_load_n(&c->aborted, __ATOMIC_SEQ_CST);
  if (aborted) {
    size_t len = strlen(c->after);
    snprintf(c->after + len, sizeof c->after - len, "%s;", name);
  }
  pthread_mutex_unlock(&lock);
  if (!aborted && block_ms > 0 && n == block_nth && !strcmp(name, block_name)) {
    struct timespec t = {block_ms / 1000, (block_ms % 1000) * 1000000L};
    nanosleep(&t, NULL);
  }
  return aborted;
}

#define NCCL_INTERNAL_ERROR 3
#define NCCL_INVALID_ARGUMENT 4

int ncclGetVersion(int* v) { *v = 22803; return 0; }
const char* ncclGetErrorString(int code) { return code == 3 ? "internal error (fake: aborted)" : "fake error"; }
const char* ncclGetLastError(void* comm) { (void)comm; return ""; }

static int query(const char* name, void* comm, int* out, int value) {
  if (!comm) return NCCL_INVALID_ARGUMENT;
  if (enter(name, comm)) return NCCL_INTERNAL_ERROR;
  *out = value;
  return 0;
}
int ncclCommCount(void* comm, int* n) { return query("ncclCommCount", comm, n, comm ? ((fake_comm*)comm)->nranks : 0); }
int ncclCommUserRank(void* comm, int* r) { return query("ncclCommUserRank", comm, r, comm ? ((fake_comm*)comm)->rank : 0); }
int ncclCommCuDevice(void* comm, int* d) { return query("ncclCommCuDevice", comm, d, 0); }
int ncclCommGetAsyncError(void* comm, int* e) { return query("ncclCommGetAsyncError", comm, e, 0); }

int ncclAllGather(const void* send, void* recv, size_t count, int type, void* comm, void* stream) {
  if (!comm || type != 2) return NCCL_INVALID_ARGUMENT;
  fake_comm* c = comm;
  pthread_mutex_lock(&lock);
  if (log_len < sizeof log_buf - 64)
    log_len += (size_t)snprintf(log_buf + log_len, sizeof log_buf - log_len, "ncclAllGather %p %ld;",
                                stream, (long)syscall(SYS_gettid));
  pthread_mutex_unlock(&lock);
  __atomic_fetch_add(&inside, 1, __ATOMIC_SEQ_CST);
  int rc = enter("ncclAllGather", c) ? NCCL_INTERNAL_ERROR : 0;
  if (rc == 0)
    for (int r = 0; r < c->nranks; r++) memcpy((int*)recv + (size_t)r * count, send, count * 4);
  __atomic_fetch_sub(&inside, 1, __ATOMIC_SEQ_CST);
  return rc;
}
