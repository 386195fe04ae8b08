/* The host path over MPI: every rank seals its request for the step in a slot, MPI_Allgather
 * exchanges the slots as bytes, and every rank decides the same step from the same slots.
 * Run: mpirun -n 2 ./host_path_mpi. Every status is checked; a failure exits with status 1. */
#include <dpcoord.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>

#define MPI_CHECK(call) do { if ((call) != MPI_SUCCESS) MPI_Abort(MPI_COMM_WORLD, 1); } while (0)

static int failed(const char* call, dp_status s) {
  fprintf(stderr, "%s: %s: %s\n", call, dp_status_string(s), dp_last_error());
  return 1;
}

int main(int argc, char** argv) {
  int dp_size = 0, dp_rank = 0, rc = 0;
  MPI_CHECK(MPI_Init(&argc, &argv));
  MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &dp_size));
  MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &dp_rank));
  dp_slot* slots = malloc(sizeof(dp_slot) * (size_t)dp_size);   /* every rank's, by rank */
  int32_t* tokens = malloc(sizeof(int32_t) * (size_t)dp_size);  /* each rank's, padded */
  if (slots == NULL || tokens == NULL) MPI_Abort(MPI_COMM_WORLD, 1);

  for (int64_t step = 1; step <= 3 && rc == 0; ++step) {
    dp_batch_request req; /* this rank's scheduler output for the step (here: made up) */
    dp_batch_request_init(&req);
    req.num_tokens_unpadded = 40 + 8 * dp_rank;
    req.num_tokens_padded = 64; /* its CUDA-graph bucket */
    req.cudagraph_mode = DP_CUDAGRAPH_FULL;
    req.allow_dp_padding = true;
    req.step_id = step; /* ranks a step apart fail together */

    /* A refused request still gets a slot, the invalid-request marker: exchange it anyway, so
     * that every rank's dp_decide_slots fails this step and none waits for this rank. */
    dp_slot mine;
    const dp_status made = dp_make_slot(&req, NULL, &mine);
    if (made != DP_OK) failed("dp_make_slot", made);
    const int bytes = (int)sizeof mine;
    MPI_CHECK(MPI_Allgather(&mine, bytes, MPI_BYTE, slots, bytes, MPI_BYTE, MPI_COMM_WORLD));

    dp_batch_result res;
    dp_batch_result_init(&res);
    const dp_status s = dp_decide_slots(slots, dp_size, dp_rank, NULL, tokens, &res);
    if (s != DP_OK) {
      rc = failed("dp_decide_slots", s); /* the same status on every rank */
    } else if (dp_rank == 0) {
      printf("step %d: every rank runs %d tokens, graph mode %d, last to arrive: rank %d\n",
             (int)res.step_id, res.num_tokens_after_padding_self, res.synced_cudagraph_mode,
             res.last_rank);
    }
  }
  free(slots);
  free(tokens);
  MPI_CHECK(MPI_Finalize());
  return rc;
}
