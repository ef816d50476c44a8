/* cpu_kernels.h and emu_kernels.h for x86-64-v4 (AVX-512), with full-width vectors in their loops too. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("arch=x86-64-v4,prefer-vector-width=512")
#define ISA _v4
#include "cpu_kernels.h"
#include "emu_kernels.h"
#endif
