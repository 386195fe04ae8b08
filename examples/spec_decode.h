/* examples/spec_decode.c: the V2 rules with speculative decoding, run as one function (the
 * spec_decode program and the demo's last step call it). Returns 0 when every call and every
 * agreed value is as expected, else 1 after printing what went wrong. */
#ifndef DPCOORD_EXAMPLES_SPEC_DECODE_H
#define DPCOORD_EXAMPLES_SPEC_DECODE_H
#ifdef __cplusplus
extern "C" {
#endif
int spec_decode(void);
#ifdef __cplusplus
}
#endif
#endif
