/* A step loop on the dpcoord host group: every DP rank of one host agrees each step on
 * microbatching, DP padding and the CUDA-graph mode, with no GPU and no MPI.
 *
 * Run dp_size copies of this program on one host, one per rank (in any order):
 *   ./host_group_step_loop <group-name> <dp_size> <dp_rank> [steps]
 * The demo forks its own ranks when run with only a dp_size:
 *   ./host_group_step_loop 4
 */
#define _POSIX_C_SOURCE 200809L
#include <dpcoord.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static int run_rank(const char* name, int dp_size, int dp_rank, int steps) {
  dp_host_group* group = NULL;
  /* Collective: waits (up to 30 s) until every rank of the group has opened it. */
  dp_status s = dp_host_group_open(name, dp_size, dp_rank, 30000, &group);
  if (s != DP_OK) {
    fprintf(stderr, "rank %d: open: %s: %s\n", dp_rank, dp_status_string(s), dp_last_error());
    return 1;
  }
  for (int step = 1; step <= steps; ++step) {
    /* This rank's scheduler output for the step (here: made up). */
    dp_batch_request req;
    dp_batch_request_init(&req);
    req.num_tokens_unpadded = 512 + 64 * dp_rank + step % 7;
    req.num_tokens_padded = -1; /* no CUDA-graph bucket padding of its own */
    req.allow_microbatching = true;
    req.uniform_decode = 0;
    req.cudagraph_mode = DP_CUDAGRAPH_PIECEWISE;
    req.pad_policy = DP_PAD_POLICY_WHEN_CUDAGRAPH;
    req.ubatch.enabled = true;
    req.timeout_ms = 5000; /* a rank that stops calling fails every rank within 5 s */
    req.step_id = step;    /* ranks a step apart fail together instead of hanging */

    dp_batch_result res;
    dp_batch_result_init(&res);
    s = dp_host_group_coordinate(group, &req, &res);
    if (s == DP_ERR_INVALID_ARGUMENT || s == DP_ERR_INCONSISTENT_RANKS) {
      /* Every rank failed this step together; the group can go on. */
      fprintf(stderr, "rank %d step %d: %s\n", dp_rank, step, dp_last_error());
      continue;
    }
    if (s != DP_OK) {
      /* TIMEOUT, PEER_EXITED, INTERNAL: the group is unusable; close it and rebuild. */
      fprintf(stderr, "rank %d step %d: %s: %s\n", dp_rank, step, dp_status_string(s),
              dp_last_error());
      dp_host_group_close(group);
      return 1;
    }
    /* Run the step with the agreed values: pad to res.num_tokens_after_padding_self tokens,
     * split into microbatches when res.should_ubatch, use res.synced_cudagraph_mode. */
    if (dp_rank == 0 && step == steps) {
      printf("step %d: ubatch=%d dp_pad=%d graph_mode=%d tokens:", step, res.should_ubatch,
             res.should_dp_pad, res.synced_cudagraph_mode);
      for (int r = 0; res.has_num_tokens_after_padding && r < dp_size; ++r) {
        printf(" %d", res.num_tokens_after_padding[r]);
      }
      printf("\n");
    }
  }
  /* Local: leaves the group; the last rank out removes the shared-memory segment. */
  return dp_host_group_close(group) == DP_OK ? 0 : 1;
}

int main(int argc, char** argv) {
  if (argc >= 4) {
    return run_rank(argv[1], atoi(argv[2]), atoi(argv[3]), argc > 4 ? atoi(argv[4]) : 100);
  }
  /* Demo: fork dp_size ranks of a group named after this process. */
  const int dp_size = argc > 1 ? atoi(argv[1]) : 2;
  char name[64];
  snprintf(name, sizeof name, "example-%d", (int)getpid());
  for (int r = 0; r < dp_size; ++r) {
    if (fork() == 0) {
      const int rc = run_rank(name, dp_size, r, 100);
      fflush(stdout); /* _exit does not flush stdio */
      _exit(rc);
    }
  }
  int failed = 0;
  for (int r = 0; r < dp_size; ++r) {
    int status = 0;
    wait(&status);
    failed |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;
  }
  printf(failed ? "a rank failed\n" : "every rank agreed on every step\n");
  return failed;
}
