// fusedrnn._C: the Python module the compiled kernels live in.
//
// The kernels themselves are registered as dispatcher ops in the
// `fusedrnn_C` namespace by the files under csrc/cpu and csrc/cuda
// (TORCH_LIBRARY_FRAGMENT), and called from the Python backends through
// torch.ops.fusedrnn_C.*.  This file only makes `import fusedrnn._C` load the
// shared library (which runs those registrations) and reports how it was built.
#include <torch/extension.h>

namespace fusedrnn {

bool built_with_cuda() {
#ifdef FUSEDRNN_WITH_CUDA
  return true;
#else
  return false;
#endif
}

}  // namespace fusedrnn

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fusedrnn compiled kernels (ops in torch.ops.fusedrnn_C)";
  m.def("built_with_cuda", &fusedrnn::built_with_cuda, "True when the CUDA kernels were compiled in");
}
