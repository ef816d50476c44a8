/* Which copy of cpu_kernels.h this CPU runs: 4 = x86-64-v4 (AVX-512), 3 = x86-64-v3 (AVX2 and FMA),
 * 0 = the baseline copy (also the only one off x86-64 or without GCC). */
int native_isa(void) {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("x86-64-v4")) return 4;
    if (__builtin_cpu_supports("x86-64-v3")) return 3;
#endif
    return 0;
}
