/* C functions of c_calls.c, called by the GoogleTest cases: 0 on success, else the failing line. */
#ifndef DPCOORD_TEST_C_CALLS_H
#define DPCOORD_TEST_C_CALLS_H

#ifdef __cplusplus
extern "C" {
#endif

int dpt_c_slices(void);
int dpt_c_dead_rank(void);

#ifdef __cplusplus
}
#endif

#endif /* DPCOORD_TEST_C_CALLS_H */
