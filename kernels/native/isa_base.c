/* cpu_kernels.h for the compiler's default target: any CPU, and the only copy off x86-64. */
#define ISA _base
#include "cpu_kernels.h"
