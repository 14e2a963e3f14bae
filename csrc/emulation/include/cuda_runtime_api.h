// Stand-in for the CUDA toolkit header <cuda_runtime_api.h> in the CPU emulation build: the
// emulation header has everything the kernels use (csrc/emulation/cuda_emulation.h).
#pragma once
#include "../cuda_emulation.h"
