/* Prints the path of the libdpcoord this process loaded, then a host-path call. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>

#include <dpcoord.h>

int main(void) {
  Dl_info info;
  dp_batch_request req;
  dp_rank_record rec;
  if (dladdr((void*)&dp_version, &info) == 0 || info.dli_fname == NULL) {
    fprintf(stderr, "dladdr failed\n");
    return 1;
  }
  printf("loaded: %s\n", info.dli_fname);
  dp_batch_request_init(&req);
  req.num_tokens_unpadded = 1;
  if (dp_make_record(&req, &rec) != DP_OK) {
    fprintf(stderr, "dp_make_record: %s\n", dp_last_error());
    return 1;
  }
  printf("dpcoord %s works from the relocated prefix\n", dp_version());
  return 0;
}
