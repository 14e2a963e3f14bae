// fusedrnn._C: the Python module the compiled kernels live in.
//
// The kernels are dispatcher ops in the `fusedrnn_C` namespace, called from
// the Python backends through torch.ops.fusedrnn_C.*: their one schema is
// defined here (fusedrnn/op_schema.h), and implemented per dispatch key by
// csrc/cpu/ops.cpp (CPU) and csrc/cuda/ops.cpp (CUDA).  Besides, this file
// makes `import fusedrnn._C` load the shared library (which runs those
// registrations) and reports how it was built.
#include <torch/extension.h>

#include <tuple>

#include "fusedrnn/op_checks.h"
#include "fusedrnn/op_schema.h"

namespace fusedrnn {

// The C++ copy of the cell table (csrc/include/fusedrnn/cell.h, parse_cell),
// for tests/test_cell_table.py to compare with fusedrnn/cells.py:
// (gate blocks, workspace blocks, has a cell state).
std::tuple<int64_t, int64_t, bool> cell_layout(const std::string& family, const std::string& mode) {
  const Cell cell = checks::parse_cell(family, mode);
  return {cell.gates(), cell.workspace_blocks(), cell.family == Family::lstm};
}

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
  m.def("cell_layout", &fusedrnn::cell_layout, "(gates, workspace blocks, has cell state) of a cell, as the kernels see it");
}

TORCH_LIBRARY_FRAGMENT(fusedrnn_C, m) { fusedrnn::schema::define_ops(m); }
