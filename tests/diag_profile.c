/* A step loop to look at under a profiler (the README's NVTX section): two ranks, forked
 * from one process, on one GPU (each its own NCCL_HOSTID, sockets over loopback, as the GPU
 * suite runs them), each doing per step: the host path (dp_make_record + dp_decide_batch
 * over both ranks' records), the GPU path (dp_coordinate_batch on their NCCL communicator)
 * and, built with -DWITH_HOST_GROUP, the shared-memory host group.
 *
 * Build and record (on the GPU machine, next to libdpcoord.so):
 *   gcc -O2 -Iinclude tests/diag_profile.c -o diag_profile -L. -ldpcoord -lnccl -lcudart
 *   NCCL_SOCKET_IFNAME=lo nsys profile -t cuda,nvtx,osrt --trace-fork-before-exec=true \
 *       -o dpcoord ./diag_profile 50
 *   nsys stats --report nvtx_sum --report cuda_gpu_kern_sum dpcoord.nsys-rep
 *   nsys export --type sqlite -o dpcoord.sqlite dpcoord.nsys-rep
 *   python3 tests/diag_timeline.py dpcoord.sqlite     # one step as a text timeline
 */

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cuda_runtime.h>
#include <nccl.h>

#include "dpcoord.h"

#define RANKS 2

#define CHECK(what, ok)                                                              \
    do {                                                                             \
        if (!(ok)) {                                                                 \
            fprintf(stderr, "%s:%d %s failed: %s\n", __FILE__, __LINE__, what,       \
                    dp_last_error());                                                \
            exit(1);                                                                 \
        }                                                                            \
    } while (0)

static dp_batch_request request(int rank, int step) {
    dp_batch_request req;
    dp_batch_request_init(&req);
    req.num_tokens_unpadded = 32 + 16 * rank + step % 7;
    req.allow_microbatching = true;
    req.allow_dp_padding = true;
    req.uniform_decode = 1;
    req.cudagraph_mode = 2;
    req.ubatch.enabled = true;
    req.timeout_ms = 20000;
    req.step_id = step + 1;
    return req;
}

static void run_rank(int rank, ncclUniqueId id, int steps) {
    char host_id[32];
    snprintf(host_id, sizeof host_id, "dpcoord-profile-rank%d", rank);
    setenv("NCCL_HOSTID", host_id, 1);
    CHECK("cudaSetDevice", cudaSetDevice(0) == cudaSuccess);
    ncclComm_t comm;
    CHECK("ncclCommInitRank", ncclCommInitRank(&comm, RANKS, id, rank) == ncclSuccess);
    cudaStream_t stream;
    CHECK("cudaStreamCreate", cudaStreamCreate(&stream) == cudaSuccess);
#ifdef WITH_HOST_GROUP
    dp_host_group* group = NULL;
    CHECK("dp_host_group_open",
          dp_host_group_open("dpcoord-profile", RANKS, rank, 20000, &group) == DP_OK);
#endif
    for (int step = 0; step < steps; step++) {
        /* Host path: every rank's record (as an MPI allgather would bring them), decided. */
        dp_rank_record records[RANKS];
        for (int r = 0; r < RANKS; r++) {
            dp_batch_request req = request(r, step);
            CHECK("dp_make_record", dp_make_record(&req, &records[r]) == DP_OK);
        }
        int32_t tokens[RANKS];
        dp_batch_result host;
        dp_batch_result_init(&host);
        CHECK("dp_decide_batch",
              dp_decide_batch(records, RANKS, rank, DP_PAD_POLICY_EXPLICIT, 2, tokens, &host) ==
                  DP_OK);
        /* GPU path: the same decision over NCCL. */
        dp_batch_request req = request(rank, step);
        dp_batch_result gpu;
        dp_batch_result_init(&gpu);
        CHECK("dp_coordinate_batch",
              dp_coordinate_batch((struct ncclComm*)comm, (struct CUstream_st*)stream, &req,
                                  &gpu) == DP_OK);
        CHECK("the GPU decision equals the host's",
              gpu.should_ubatch == host.should_ubatch &&
                  gpu.num_tokens_after_padding_self == host.num_tokens_after_padding_self);
#ifdef WITH_HOST_GROUP
        dp_batch_result shm;
        dp_batch_result_init(&shm);
        CHECK("dp_host_group_coordinate", dp_host_group_coordinate(group, &req, &shm) == DP_OK);
#endif
    }
#ifdef WITH_HOST_GROUP
    CHECK("dp_host_group_close", dp_host_group_close(group) == DP_OK);
#endif
    CHECK("dp_release", dp_release((struct ncclComm*)comm) == DP_OK);
    ncclCommDestroy(comm);
    printf("rank %d: %d steps agreed\n", rank, steps);
}

int main(int argc, char** argv) {
    int steps = argc > 1 ? atoi(argv[1]) : 50;
    /* The parent touches neither NCCL nor dpcoord: rank 0 makes the NCCL id and hands it to
     * rank 1 through a pipe, so that each process's NVTX state is its own. */
    int pipe_fd[2];
    CHECK("pipe", pipe(pipe_fd) == 0);
    pid_t children[RANKS];
    for (int rank = 0; rank < RANKS; rank++) {
        children[rank] = fork();
        if (children[rank] == 0) {
            ncclUniqueId id;
            if (rank == 0) {
                CHECK("ncclGetUniqueId", ncclGetUniqueId(&id) == ncclSuccess);
                for (int peer = 1; peer < RANKS; peer++) {
                    CHECK("write", write(pipe_fd[1], &id, sizeof id) == sizeof id);
                }
            } else {
                CHECK("read", read(pipe_fd[0], &id, sizeof id) == sizeof id);
            }
            run_rank(rank, id, steps);
            exit(0);
        }
    }
    int failed = 0;
    for (int rank = 0; rank < RANKS; rank++) {
        int status = 0;
        waitpid(children[rank], &status, 0);
        failed |= !WIFEXITED(status) || WEXITSTATUS(status) != 0;
    }
    return failed;
}
