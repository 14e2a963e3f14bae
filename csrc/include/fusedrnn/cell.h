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
// layer_norm_lstm, layer_norm_gru: haste's LayerNormLSTM / LayerNormGRU (fusedrnn/cells.py), the
// LSTM's and GRU's gate blocks with both pre-activations normalised over their whole G*H row, gains
// and shift in w_extra (extra_blocks() * H); the CPU kernels run them (layer_norm_recurrence.h), the
// CUDA ones refuse them.
// slstm: xLSTM's sLSTM as FlashRNN computes it (fusedrnn/cells.py), gates [i, f, z, o], states h and
// (c, n, m) carried as one cell state of 3 blocks, w_hh block-diagonal by heads ([4H, H/heads]); the CPU
// kernels run it (slstm_recurrence.h), the CUDA ones refuse it.
enum class Family { lstm, gru, rnn, indrnn, layer_norm_lstm, layer_norm_gru, slstm };

struct Cell {
  Family family = Family::rnn;
  bool relu = false;        // rnn, indrnn: relu instead of tanh
  bool reset_after = true;  // gru: PyTorch's form
  bool lstm_like() const { return family == Family::lstm || family == Family::layer_norm_lstm; }
  bool gru_like() const { return family == Family::gru || family == Family::layer_norm_gru; }
  int64_t gates() const { return lstm_like() || family == Family::slstm ? 4 : gru_like() ? 3 : 1; }
  // [i, f, g, o, c'] / [r, z, n, k]; indrnn keeps none: as for the Elman RNN, act' follows from the output h;
  // slstm [ĩ, f̃, z, o, c', n', m'] (the record's workspace, fusedrnn/cells.py)
  int64_t workspace_blocks() const { return lstm_like() ? 5 : gru_like() ? 4 : family == Family::slstm ? 7 : 0; }
  // Zoneout (a zoneout_mask: the output h is m*h_new + (1-m)*h_prev) adds one block after those,
  // h_new, for the Elman RNN and IndRNN: their backward takes act' from h_new, which the output no
  // longer holds.  The other cells' backward reads their gates, never h_new: the same workspace.
  int64_t zoneout_blocks() const { return family == Family::rnn || family == Family::indrnn ? 1 : 0; }
  int64_t workspace_blocks(bool zoneout) const { return workspace_blocks() + (zoneout ? zoneout_blocks() : 0); }
  // The cells whose CPU kernels take a zoneout_mask: every cell above but sLSTM (a family added later says
  // so here).
  bool runs_zoneout() const {
    return family == Family::lstm || family == Family::gru || family == Family::rnn || family == Family::indrnn ||
           layer_norm();
  }
  bool has_cell_state() const { return lstm_like() || family == Family::slstm; }
  // Width of the cell state (c0, c_n) in units of H: sLSTM carries c, n, m concatenated (the record's
  // CellSpec.cell_state_blocks).
  int64_t cell_state_blocks() const { return family == Family::slstm ? 3 : has_cell_state() ? 1 : 0; }
  // The layer-normalised cells: each row of a pre-activation is normalised over all of its units, so no
  // kernel can split a row's units over threads without a reduction between them.
  bool layer_norm() const { return family == Family::layer_norm_lstm || family == Family::layer_norm_gru; }
  // Length of w_extra in units of H: [γ_ih (G), γ_hh (G)] (+ [γ_c, β_c] for the LSTM); 0 without extras.
  int64_t extra_blocks() const { return layer_norm() ? 2 * gates() + (has_cell_state() ? 2 : 0) : 0; }
  // Whether w_hh is a vector [G*H] applied element-wise (u*h) rather than a matrix [G*H, Hout]:
  // the hidden side then has no product, and every unit is independent of the others across time.
  bool diagonal() const { return family == Family::indrnn; }
  // Whether w_hh holds only the diagonal blocks of a block-diagonal R, [G*H, H/heads] (sLSTM's heads):
  // unit k*D + d of each gate reads only h[k*D:(k+1)*D], and the number of heads is H / w_hh.size(1).
  bool block_diagonal() const { return family == Family::slstm; }
};

}  // namespace fusedrnn
