// Stand-in for the CUDA toolkit header <cooperative_groups.h> in the CPU emulation build: the
// emulation header has everything the kernels use (csrc/emulation/cuda_emulation.h).
#pragma once
#include "../cuda_emulation.h"
