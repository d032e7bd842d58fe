// The attention kernels' visibility rule (causal, left padding, optional sliding window).
#ifndef SIZESPEC_ATTENTION_CUH
#define SIZESPEC_ATTENTION_CUH
#ifndef SIZESPEC_COMMON_CUH
#include "common.cuh"
#endif

// Query row qi sits at column c = off + qi of the padded layout; key j is visible when
// (j <= c && j + win >= c && j >= pad[b]) || j == c   (win = 0: no window).
DEV bool visible(int c, int j, int pad, int win) {
    return (j <= c && (win == 0 || j + win >= c) && j >= pad) || j == c;
}
#endif
