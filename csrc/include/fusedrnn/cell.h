// Which cell a kernel call runs: the C++ twin of fusedrnn/cells.py's CellSpec.
//
// Framework-free, so the CPU code, the ATen wrappers and CUDA sources can all
// include it.
#pragma once

#include <stdint.h>

namespace fusedrnn {

enum class Family { lstm, gru, rnn };

struct Cell {
  Family family = Family::rnn;
  bool relu = false;        // rnn: relu instead of tanh
  bool reset_after = true;  // gru: PyTorch's form
  int64_t gates() const { return family == Family::lstm ? 4 : family == Family::gru ? 3 : 1; }
  int64_t workspace_blocks() const { return family == Family::lstm ? 5 : family == Family::gru ? 4 : 0; }
};

}  // namespace fusedrnn
