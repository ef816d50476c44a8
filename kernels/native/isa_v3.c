/* cpu_kernels.h and emu_kernels.h for x86-64-v3 (AVX2 and FMA): most AMD laptops before Zen 4. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#pragma GCC target("arch=x86-64-v3")
#define ISA _v3
#include "cpu_kernels.h"
#include "emu_kernels.h"
#endif
