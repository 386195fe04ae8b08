/* A fake NCCL (libnccl.so.2, version 2.28.3) for dpcoord's GPU-path tests, loaded through
 * DPCOORD_NCCL_LIBRARY. A communicator is made by the test (fake_nccl_comm) with one to four
 * ranks on device 0; ncclAllGather copies the send buffer into every rank's place of the
 * receive buffer at once (the other ranks send what this one sends, changed as
 * fake_nccl_peer says).
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
 *   fake_nccl_peer(first, count, value, mode)
 *                                 from now on, the other ranks' slots of every gather have
 *                                 words [first, first + count) set to value (mode 0) or
 *                                 increased by it (mode 2), then their checksum resealed; mode
 *                                 1 sets them and leaves the checksum (a damaged slot);
 *                                 first -1: no change
 *   fake_nccl_last_send()         the words the last gather sent (one slot)
 *   fake_nccl_last_recv()         the words it received (every rank's slot)
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "../../src/kernels/layout.h"

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
#define MAX_RANKS 4
static int peer_first = -1, peer_count, peer_mode;
static unsigned peer_value;
static unsigned last_send[SLOT_WORDS], last_recv[MAX_RANKS * SLOT_WORDS];
void fake_nccl_peer(int first, int count, unsigned value, int mode) {
  peer_first = first;
  peer_count = count;
  peer_value = value;
  peer_mode = mode;
}
const unsigned* fake_nccl_last_send(void) { return last_send; }
const unsigned* fake_nccl_last_recv(void) { return last_recv; }

/* Changes another rank's slot as fake_nccl_peer said. */
static void change_peer(unsigned* w) {
  if (peer_first < 0) return;
  for (int i = peer_first; i < peer_first + peer_count && i < SLOT_WORDS; i++)
    w[i] = peer_mode == 2 ? w[i] + peer_value : peer_value;
  if (peer_mode == 1) return;
  static const unsigned k[SLOT_WORDS] = {CHECK_WEIGHTS};
  unsigned sum = 0;
  for (int i = 0; i < SLOT_WORDS; i++)
    if (i != SLOT_CHECK) sum += k[i] * w[i];
  w[SLOT_CHECK] = CHECK_TARGET - sum;
}
#define MAX_NAMES 32
static struct { const char* name; long calls; } counts[MAX_NAMES];

void* fake_nccl_comm(int nranks, int rank) {
  if (nranks < 1 || nranks > MAX_RANKS) return NULL;
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
  if (rc == 0) {
    for (int r = 0; r < c->nranks; r++) {
      unsigned* w = (unsigned*)recv + (size_t)r * count;
      memcpy(w, send, count * 4);
      if (r != c->rank && count == SLOT_WORDS) change_peer(w);
    }
    if (count == SLOT_WORDS) {
      memcpy(last_send, send, sizeof last_send);
      memcpy(last_recv, recv, count * 4 * (size_t)c->nranks);
    }
  }
  __atomic_fetch_sub(&inside, 1, __ATOMIC_SEQ_CST);
  return rc;
}
