// Argument checks shared by the ATen wrappers of every compiled backend
// (csrc/cpu/ops.cpp, csrc/cuda/ops.cpp): one op schema (op_schema.h), one set of checks.
//
// Every failure is a TORCH_CHECK, i.e. a Python RuntimeError naming the
// argument, never a crash.  Shapes and layouts: fusedrnn/backends/base.py.
// The device and dtype of x itself are the caller's to check (they differ
// per backend); every other tensor must match x's device and dtype.
//
// Uses ATen: include from .cpp files only, never from .cu files.
#pragma once

#include <ATen/ATen.h>

#include <string>
#include <vector>

#include "fusedrnn/cell.h"

namespace fusedrnn {
namespace checks {

inline bool defined(const c10::optional<at::Tensor>& t) { return t.has_value() && t->defined(); }

inline Cell parse_cell(const std::string& family, const std::string& mode) {
  Cell cell;
  if (family == "lstm") {
    TORCH_CHECK(mode == "lstm", "fusedrnn_C: mode of an lstm cell must be 'lstm', got '", mode, "'");
    cell.family = Family::lstm;
  } else if (family == "gru") {
    TORCH_CHECK(mode == "reset_after" || mode == "reset_before",
                "fusedrnn_C: mode of a gru cell must be 'reset_after' or 'reset_before', got '", mode, "'");
    cell.family = Family::gru;
    cell.reset_after = mode == "reset_after";
  } else if (family == "indrnn") {
    TORCH_CHECK(mode == "relu" || mode == "tanh", "fusedrnn_C: mode of an indrnn cell must be 'relu' or 'tanh', got '",
                mode, "'");
    cell.family = Family::indrnn;
    cell.relu = mode == "relu";
  } else if (family == "layer_norm_lstm" || family == "layer_norm_gru") {
    TORCH_CHECK(mode == family, "fusedrnn_C: mode of a ", family, " cell must be '", family, "', got '", mode, "'");
    cell.family = family == "layer_norm_lstm" ? Family::layer_norm_lstm : Family::layer_norm_gru;
  } else if (family == "slstm") {
    TORCH_CHECK(mode == "slstm", "fusedrnn_C: mode of an slstm cell must be 'slstm', got '", mode, "'");
    cell.family = Family::slstm;
  } else {
    TORCH_CHECK(family == "rnn", "fusedrnn_C: family must be 'lstm', 'gru', 'rnn', 'indrnn', 'layer_norm_lstm', "
                "'layer_norm_gru' or 'slstm', got '", family, "'");
    TORCH_CHECK(mode == "tanh" || mode == "relu", "fusedrnn_C: mode of an rnn cell must be 'tanh' or 'relu', got '",
                mode, "'");
    cell.relu = mode == "relu";
  }
  return cell;
}

inline void check_tensor(const at::Tensor& t, const char* name, const at::Tensor& x, at::IntArrayRef shape) {
  TORCH_CHECK(t.device() == x.device(), "fusedrnn_C: ", name, " must be on ", x.device(), " like x, got ", t.device());
  TORCH_CHECK(t.scalar_type() == x.scalar_type(), "fusedrnn_C: ", name, " has dtype ", t.scalar_type(),
              " but x has dtype ", x.scalar_type(), "; all must match");
  TORCH_CHECK(t.sizes() == shape, "fusedrnn_C: ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.is_contiguous(), "fusedrnn_C: ", name, " must be contiguous");
}

inline void check_optional(const c10::optional<at::Tensor>& t, const char* name, const at::Tensor& x,
                           at::IntArrayRef shape) {
  if (defined(t)) check_tensor(*t, name, x, shape);
}

// The checked geometry of one call.
struct Geometry {
  Cell cell;
  int64_t G = 0, H = 0, Hout = 0, I = 0, T = 0, B = 0, N = 0;
  bool packed = false;
  std::vector<int64_t> sizes;  // rows active at each step
};

inline Geometry check_call(const std::string& family, const std::string& mode, const at::Tensor& x,
                           const at::Tensor& h0, const c10::optional<at::Tensor>& c0, const at::Tensor& w_ih,
                           const at::Tensor& w_hh, const c10::optional<at::Tensor>& b_ih,
                           const c10::optional<at::Tensor>& b_hh, const c10::optional<at::Tensor>& w_peep,
                           const c10::optional<at::Tensor>& w_proj, const c10::optional<at::Tensor>& batch_sizes,
                           const c10::optional<at::Tensor>& w_extra = c10::nullopt) {
  Geometry g;
  g.cell = parse_cell(family, mode);
  g.G = g.cell.gates();
  TORCH_CHECK(x.is_contiguous(), "fusedrnn_C: x must be contiguous");
  g.packed = defined(batch_sizes);
  TORCH_CHECK(x.dim() == (g.packed ? 2 : 3), "fusedrnn_C: x must be ",
              g.packed ? "2-D packed rows [N, input_size] with batch_sizes" : "3-D [T, B, input_size]", ", got ",
              x.dim(), "-D");
  // w_hh: a matrix [G*H, Hout], or the element-wise vector [G*H] of a diagonal cell (IndRNN's u)
  const int64_t w_hh_dim = g.cell.diagonal() ? 1 : 2;
  TORCH_CHECK(w_ih.dim() == 2 && w_hh.dim() == w_hh_dim, "fusedrnn_C: w_ih must be 2-D and w_hh ", w_hh_dim,
              "-D (", family, " cell), got ", w_ih.dim(), "-D and ", w_hh.dim(), "-D");
  TORCH_CHECK(w_hh.size(0) % g.G == 0 && w_hh.size(0) > 0, "fusedrnn_C: w_hh must have ", g.G,
              "*hidden_size rows for a ", family, " cell, got ", w_hh.size(0));
  g.H = w_hh.size(0) / g.G;
  g.Hout = g.cell.diagonal() || g.cell.block_diagonal() ? g.H : w_hh.size(1);
  // a block-diagonal w_hh [G*H, H/heads] holds each head's block: its width must divide H
  TORCH_CHECK(!g.cell.block_diagonal() || (w_hh.size(1) > 0 && g.H % w_hh.size(1) == 0), "fusedrnn_C: w_hh of a ",
              family, " cell must be [", g.G, "*hidden_size, hidden_size/num_heads] (each head's block), got ",
              w_hh.sizes(), ": its width must divide hidden_size ", g.H);
  g.I = x.size(-1);
  const bool proj = defined(w_proj);
  TORCH_CHECK(g.cell.family == Family::lstm || !(proj || defined(w_peep)),
              "fusedrnn_C: w_peep and w_proj exist only for lstm cells");
  TORCH_CHECK(proj || g.Hout == g.H, "fusedrnn_C: w_hh must have shape [", g.G * g.H, ", ", g.H, "] without w_proj, got ",
              w_hh.sizes());
  check_tensor(w_ih, "w_ih", x, {g.G * g.H, g.I});
  if (g.cell.diagonal()) {
    check_tensor(w_hh, "w_hh", x, {g.G * g.H});
  } else if (g.cell.block_diagonal()) {
    check_tensor(w_hh, "w_hh", x, {g.G * g.H, w_hh.size(1)});
  } else {
    check_tensor(w_hh, "w_hh", x, {g.G * g.H, g.Hout});
  }
  check_optional(b_ih, "b_ih", x, {g.G * g.H});
  check_optional(b_hh, "b_hh", x, {g.G * g.H});
  check_optional(w_peep, "w_peep", x, {3 * g.H});
  check_optional(w_proj, "w_proj", x, {g.Hout, g.H});
  // the layer-normalised cells' gains and shift, concatenated in the record's order (fusedrnn/cells.py)
  if (g.cell.extra_blocks() > 0) {
    TORCH_CHECK(defined(w_extra), "fusedrnn_C: w_extra is required for a ", family, " cell (", g.cell.extra_blocks(),
                "*hidden_size gains and shifts)");
    check_tensor(*w_extra, "w_extra", x, {g.cell.extra_blocks() * g.H});
  } else {
    TORCH_CHECK(!defined(w_extra), "fusedrnn_C: w_extra must be None for a ", family, " cell");
  }
  TORCH_CHECK(h0.dim() == 2, "fusedrnn_C: h0 must be 2-D [batch, hidden], got ", h0.dim(), "-D");
  if (g.packed) {
    const at::Tensor& bs = *batch_sizes;
    TORCH_CHECK(bs.device().is_cpu() && bs.scalar_type() == at::kLong && bs.dim() == 1 && bs.is_contiguous(),
                "fusedrnn_C: batch_sizes must be a contiguous 1-D int64 CPU tensor, got ", bs.scalar_type(), " ",
                bs.sizes(), " on ", bs.device());
    TORCH_CHECK(bs.numel() > 0, "fusedrnn_C: batch_sizes must not be empty");
    const int64_t* p = bs.data_ptr<int64_t>();
    g.sizes.assign(p, p + bs.numel());
    g.B = h0.size(0);
    TORCH_CHECK(g.sizes[0] == g.B, "fusedrnn_C: batch_sizes[0] (", g.sizes[0], ") must equal the batch of h0 (", g.B,
                ")");
    int64_t total = 0;
    for (size_t t = 0; t < g.sizes.size(); ++t) {
      TORCH_CHECK(g.sizes[t] >= 1 && (t == 0 || g.sizes[t] <= g.sizes[t - 1]),
                  "fusedrnn_C: batch_sizes must be >= 1 and non-increasing, got ", bs);
      total += g.sizes[t];
    }
    TORCH_CHECK(total == x.size(0), "fusedrnn_C: batch_sizes sum to ", total, " but x has ", x.size(0), " rows");
    g.T = static_cast<int64_t>(g.sizes.size());
    g.N = total;
  } else {
    g.T = x.size(0);
    g.B = x.size(1);
    g.sizes.assign(g.T, g.B);
    g.N = g.T * g.B;
  }
  check_tensor(h0, "h0", x, {g.B, g.Hout});
  if (g.cell.has_cell_state()) {
    TORCH_CHECK(defined(c0), "fusedrnn_C: c0 is required (a ", family, " cell has a cell state)");
    check_tensor(*c0, "c0", x, {g.B, g.cell.cell_state_blocks() * g.H});  // sLSTM: c, n, m concatenated
  } else {
    TORCH_CHECK(!defined(c0), "fusedrnn_C: c0 must be None for a ", family, " cell");
  }
  return g;
}

// zoneout_mask (op_schema.h), where given: the output's shape, x's dtype and device, and a cell whose
// kernels take it.  Returns whether the call has zoneout.
inline bool check_zoneout_mask(const Geometry& g, const std::string& family, const at::Tensor& x,
                               const c10::optional<at::Tensor>& zoneout_mask) {
  if (!defined(zoneout_mask)) return false;
  TORCH_CHECK(g.cell.runs_zoneout(), "fusedrnn_C: zoneout_mask is not supported for a ", family,
              " cell (no zoneout kernels for it yet)");
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
  shape.push_back(g.Hout);
  check_tensor(*zoneout_mask, "zoneout_mask", x, shape);
  return true;
}

// The extra arguments of a backward call: the upstream gradients and what the forward returned
// (its workspace one block wider for an Elman RNN with zoneout: cell.h zoneout_blocks).
inline void check_backward_call(const Geometry& g, const at::Tensor& x, const at::Tensor& grad_out,
                                const at::Tensor& grad_hn, const c10::optional<at::Tensor>& grad_cn,
                                const at::Tensor& out, const at::Tensor& workspace, bool zoneout = false) {
  std::vector<int64_t> out_shape(x.sizes().begin(), x.sizes().end() - 1);
  std::vector<int64_t> ws_shape = out_shape;
  out_shape.push_back(g.Hout);
  ws_shape.push_back(g.cell.workspace_blocks(zoneout) * g.H);
  check_tensor(grad_out, "grad_out", x, out_shape);
  check_tensor(out, "out", x, out_shape);
  check_tensor(workspace, "workspace", x, ws_shape);
  check_tensor(grad_hn, "grad_hn", x, {g.B, g.Hout});
  if (g.cell.has_cell_state()) {
    TORCH_CHECK(defined(grad_cn), "fusedrnn_C: grad_cn is required for a cell with a cell state");
    check_tensor(*grad_cn, "grad_cn", x, {g.B, g.cell.cell_state_blocks() * g.H});
  }
}

// The sizes of a strategy query (forward_strategy / backward_strategy).
struct QuerySizes {
  Cell cell;
  int64_t B = 0, H = 0, P = 0, steps = 0;
};

inline QuerySizes check_strategy_query(const std::string& family, const std::string& mode, const at::Tensor& h0,
                                       const at::Tensor& w_hh, const c10::optional<at::Tensor>& w_proj,
                                       int64_t steps) {
  QuerySizes q;
  q.cell = parse_cell(family, mode);
  const bool diagonal = q.cell.diagonal();
  TORCH_CHECK(w_hh.dim() == (diagonal ? 1 : 2) && w_hh.size(0) > 0 && w_hh.size(0) % q.cell.gates() == 0,
              "fusedrnn_C: w_hh must be [", q.cell.gates(), diagonal ? "*hidden_size], got " : "*hidden_size, hidden], got ",
              w_hh.sizes());
  TORCH_CHECK(h0.dim() == 2, "fusedrnn_C: h0 must be 2-D [batch, hidden], got ", h0.dim(), "-D");
  // the state's width: IndRNN's units, sLSTM's hidden size (w_hh holds its heads' blocks), else w_hh's columns
  const int64_t state = diagonal || q.cell.block_diagonal() ? w_hh.size(0) / q.cell.gates() : w_hh.size(1);
  TORCH_CHECK(h0.size(1) == state, "fusedrnn_C: h0 has ", h0.size(1), " columns but w_hh has ", state,
              diagonal || q.cell.block_diagonal() ? " units" : " columns");
  TORCH_CHECK(q.cell.family == Family::lstm || !defined(w_proj), "fusedrnn_C: w_proj exists only for lstm cells");
  TORCH_CHECK(steps >= 0, "fusedrnn_C: steps must be >= 0, got ", steps);
  q.B = h0.size(0), q.H = w_hh.size(0) / q.cell.gates(), q.P = h0.size(1), q.steps = steps;
  return q;
}

}  // namespace checks
}  // namespace fusedrnn
