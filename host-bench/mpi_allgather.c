/* Open MPI's MPI_Allgather of the slot + dp_decide_slots: the host path a caller builds with
 * MPI (dp_make_slot, MPI_Allgather of sizeof(dp_slot) bytes, dp_decide_slots: the same checked
 * slot, checks and decision as the host group's), timed per call exactly like
 * dpcoord-host-bench, samples of every rank pooled on rank 0.
 *
 *   mpicc -O2 mpi_allgather.c -I../include -L../target/release -ldpcoord -o mpi_allgather
 *   mpirun -np 4 --bind-to core ./mpi_allgather [iters] [warmup]
 */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "dpcoord.h"

static uint64_t now_ns(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static int cmp_u64(const void* a, const void* b) {
  uint64_t x = *(const uint64_t*)a, y = *(const uint64_t*)b;
  return x < y ? -1 : x > y;
}

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  int iters = argc > 1 ? atoi(argv[1]) : 20000;
  int warmup = argc > 2 ? atoi(argv[2]) : 2000;

  /* The request of dpcoord-host-bench (src/main.rs), field for field: both sides decide the same. */
  dp_batch_request req;
  dp_batch_request_init(&req);
  req.num_tokens_unpadded = 100 + rank;
  req.num_tokens_padded = 128;
  req.allow_microbatching = true;
  req.uniform_decode = 1;
  req.ubatch.enabled = true;
  req.cudagraph_mode = 2;
  req.pad_policy = DP_PAD_POLICY_WHEN_CUDAGRAPH;
  dp_batch_result res;
  dp_batch_result_init(&res);
  dp_slot slot;
  dp_slot* all = malloc(sizeof(dp_slot) * (size_t)size);
  int32_t* out = malloc(sizeof(int32_t) * (size_t)size);
  uint64_t* samples = malloc(sizeof(uint64_t) * (size_t)iters);

  for (int i = 0; i < warmup + iters; ++i) {
    uint64_t t0 = now_ns();
    dp_status s = dp_make_slot(&req, NULL, &slot);
    MPI_Allgather(&slot, (int)sizeof(dp_slot), MPI_BYTE, all, (int)sizeof(dp_slot), MPI_BYTE,
                  MPI_COMM_WORLD);
    if (s == DP_OK) s = dp_decide_slots(all, size, rank, NULL, out, &res);
    uint64_t dt = now_ns() - t0;
    if (s != DP_OK) {
      fprintf(stderr, "rank %d step %d: %s %s\n", rank, i, dp_status_string(s), dp_last_error());
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
    if (i >= warmup) samples[i - warmup] = dt;
  }
  if (!res.should_dp_pad || res.max_num_tokens_padded != 128) MPI_Abort(MPI_COMM_WORLD, 2);

  uint64_t* pooled = rank == 0 ? malloc(sizeof(uint64_t) * (size_t)iters * (size_t)size) : NULL;
  MPI_Gather(samples, iters, MPI_UINT64_T, pooled, iters, MPI_UINT64_T, 0, MPI_COMM_WORLD);
  if (rank == 0) {
    size_t n = (size_t)iters * (size_t)size;
    qsort(pooled, n, sizeof(uint64_t), cmp_u64);
    printf("mpi ranks=%d calls=%zu median_us=%.2f p99_us=%.2f\n", size, n,
           pooled[(size_t)((double)(n - 1) * 0.5 + 0.5)] / 1e3,
           pooled[(size_t)((double)(n - 1) * 0.99 + 0.5)] / 1e3);
  }
  MPI_Finalize();
  return 0;
}
