// Which cell a kernel call runs: the C++ twin of fusedrnn/cells.py's CellSpec.
//
// Framework-free, so the CPU code, the ATen wrappers and CUDA sources can all
// include it.
#pragma once

#include <stdint.h>

namespace fusedrnn {

// indrnn: IndRNN (Li et al. 2018), h' = act(W_ih x + b_ih + u*h + b_hh) with
// an element-wise recurrent weight u = w_hh [H] (the record's
// recurrent="diagonal"); the CPU and CUDA kernels run it (no product per step).
enum class Family { lstm, gru, rnn, indrnn };

struct Cell {
  Family family = Family::rnn;
  bool relu = false;        // rnn, indrnn: relu instead of tanh
  bool reset_after = true;  // gru: PyTorch's form
  int64_t gates() const { return family == Family::lstm ? 4 : family == Family::gru ? 3 : 1; }
  // indrnn keeps none: as for the Elman RNN, act' follows from the output h itself
  int64_t workspace_blocks() const { return family == Family::lstm ? 5 : family == Family::gru ? 4 : 0; }
  // Whether w_hh is a vector [G*H] applied element-wise (u*h) rather than a matrix [G*H, Hout]:
  // the hidden side then has no product, and every unit is independent of the others across time.
  bool diagonal() const { return family == Family::indrnn; }
};

}  // namespace fusedrnn
