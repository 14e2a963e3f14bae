// fusedrnn._C: the library the compiled kernels live in, free of Python.
//
// The kernels are dispatcher ops in the `fusedrnn_C` namespace, called from
// the Python backends through torch.ops.fusedrnn_C.*: their one schema is
// defined here (fusedrnn/op_schema.h), and implemented per dispatch key by
// csrc/cpu/ops.cpp (CPU) and csrc/cuda/ops.cpp (CUDA).  The ops a model's
// graph holds (fusedrnn::*) are graph_ops.cpp's.
//
// The library uses no Python: loaded into a process without an interpreter
// (a C++ program running an AOTInductor package, tests/test_graph_ops.py), it
// registers its ops all the same.  Python imports it as the module
// fusedrnn._C, which holds nothing (what the Python side asks of the build are
// the ops built_with_cuda and cell_layout); the one Python function that
// creating the module needs is declared weak, so it is null, and never called,
// where there is no interpreter.
#include <Python.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "fusedrnn/op_checks.h"
#include "fusedrnn/op_schema.h"

#pragma weak PyModule_Create2

namespace fusedrnn {
namespace {

// The C++ copy of the cell table (csrc/include/fusedrnn/cell.h, parse_cell),
// for tests/test_cell_table.py to compare with fusedrnn/cells.py:
// (gate blocks, workspace blocks, has a cell state).
std::tuple<int64_t, int64_t, bool> cell_layout(const std::string& family, const std::string& mode) {
  const Cell cell = checks::parse_cell(family, mode);
  return {cell.gates(), cell.workspace_blocks(), cell.has_cell_state()};
}

}  // namespace
}  // namespace fusedrnn

TORCH_LIBRARY_FRAGMENT(fusedrnn_C, m) {
  fusedrnn::schema::define_ops(m);
  m.def("built_with_cuda() -> bool", [] { return fusedrnn::built_with_cuda(); });
  m.def("cell_layout(str family, str mode) -> (int, int, bool)", &fusedrnn::cell_layout);
}

PyMODINIT_FUNC PyInit__C(void) {
  static PyModuleDef module = {PyModuleDef_HEAD_INIT, "_C",
                               "fusedrnn's compiled kernels: the ops are in torch.ops.fusedrnn_C and torch.ops.fusedrnn",
                               -1, nullptr};
  return PyModule_Create(&module);
}
