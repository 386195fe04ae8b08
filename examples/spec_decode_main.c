/* The spec_decode program: examples/spec_decode.c's walk through the V2 rules. */
#include "spec_decode.h"

int main(void) { return spec_decode(); }
