// The aie_api for the kernels: AMD's headers when compiling for the AIE (Peano defines __AIENGINE__),
// the project's host implementation of the same subset otherwise (aie_host.h says what it assumes).
#pragma once
#if defined(__AIENGINE__)
#include <aie_api/aie.hpp>
#else
#include "aie_host.h"
#endif
