/* cpu_kernels.h and emu_kernels.h for the default target: any CPU, and the only copy off x86-64. */
#define ISA _base
#include "cpu_kernels.h"
#include "emu_kernels.h"
