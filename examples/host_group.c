/* The host group: the DP ranks of one host agree on every step through shared memory (no GPU,
 * no MPI). One process per rank, in any order: ./host_group engine0 2 0 & ./host_group engine0 2 1
 * Every status is checked; a failure exits with status 1. */
#include <dpcoord.h>
#include <stdio.h>
#include <stdlib.h>

static int failed(const char* call, dp_status s) {
  fprintf(stderr, "%s: %s: %s\n", call, dp_status_string(s), dp_last_error());
  return 1;
}

int main(int argc, char** argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s <group name> <dp_size> <dp_rank>\n", argv[0]);
    return 2;
  }
  const int32_t dp_size = atoi(argv[2]), dp_rank = atoi(argv[3]);

  /* Collective: waits, at most 30 s, until every rank of the group joined. */
  dp_host_group* group = NULL;
  dp_status s = dp_host_group_open(argv[1], dp_size, dp_rank, 30000, &group);
  if (s != DP_OK) return failed("dp_host_group_open", s);

  for (int64_t step = 1; step <= 100 && s == DP_OK; ++step) {
    dp_batch_request req; /* this rank's scheduler output for the step (here: made up) */
    dp_batch_request_init(&req);
    req.num_tokens_unpadded = (int32_t)(24 + 16 * dp_rank + step % 7);
    req.cudagraph_mode = DP_CUDAGRAPH_PIECEWISE;
    req.pad_policy = DP_PAD_POLICY_WHEN_CUDAGRAPH;
    req.timeout_ms = 5000; /* a rank that stops calling fails every rank, never hangs one */
    req.step_id = step;    /* ranks a step apart fail together */

    dp_batch_result res;
    dp_batch_result_init(&res);
    s = dp_host_group_coordinate(group, &req, &res);
    if (s != DP_OK) {
      failed("dp_host_group_coordinate", s);
    } else if (dp_rank == 0 && step % 50 == 0) {
      printf("step %d: every rank runs %d tokens, graph mode %d, microbatches: %s\n",
             (int)step, res.num_tokens_after_padding_self, res.synced_cudagraph_mode,
             res.should_ubatch ? "yes" : "no");
    }
  }

  /* Local; always frees. The last rank out removes the shared-memory segment. */
  const dp_status closed = dp_host_group_close(group);
  if (closed != DP_OK) return failed("dp_host_group_close", closed);
  return s == DP_OK ? 0 : 1;
}
