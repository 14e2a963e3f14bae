#include "step.h"

#include <cstring>
#include <limits>
#include <vector>

#include "pointwise_dispatch.h"
#include "row_product.h"
#include "strategy.h"

namespace fusedrnn {
namespace cpu {

namespace {

// Per-thread scratch, grown on demand and never shrunk: the pre-activations
// and the other buffers of a step live only within the call, so allocating
// them as tensors (several ATen calls each) would cost more than the step's
// pointwise pass at decoder sizes.
struct Scratch {
  std::vector<float> pre, hp, hp_n, ws, bias, zeros;
  static float* sized(std::vector<float>& v, int64_t n) {
    if (static_cast<int64_t>(v.size()) < n) v.resize(n);
    return v.data();
  }
  // a buffer of n zeros (the "hidden product" of a pass whose product went into xp)
  const float* zero(int64_t n) {
    if (static_cast<int64_t>(zeros.size()) < n) zeros.assign(n, 0.0f);
    return zeros.data();
  }
};

Scratch& scratch() {
  static thread_local Scratch s;
  return s;
}

const float* data_or_null(const at::Tensor& t) { return t.defined() ? t.data_ptr<float>() : nullptr; }

bool float_contiguous(const at::Tensor& t) {
  return !t.defined() || (t.scalar_type() == at::kFloat && t.is_contiguous());
}

// The threads of one step's product (strategy.h's rule for a step of the
// fused kernels: one thread where a fork would cost more than the product).
// No cap by blocks here: row_product.h splits into its own fixed blocks and
// uses no more threads than it has blocks.
int product_threads(int64_t rows, int64_t columns, int64_t k) {
  constexpr int64_t kNoBlockCap = std::numeric_limits<int>::max();
  return threads_for_step(rows * columns * k, kNoBlockCap);
}

}  // namespace

bool step_kernel_runs(const at::Tensor& x, const at::Tensor& h, const at::Tensor& c, const at::Tensor& w_ih,
                      const at::Tensor& w_hh, const at::Tensor& b_ih, const at::Tensor& b_hh,
                      const at::Tensor& w_peep) {
  for (const at::Tensor* t : {&x, &h, &c, &w_ih, &w_hh, &b_ih, &b_hh, &w_peep})
    if (!float_contiguous(*t)) return false;
  const int64_t B = x.size(0);
  if (B == 0 || h.size(1) == 0) return false;
  // The product reads all weights once per tile of 4 rows (row_product.h).
  // Up to 4 rows that is one pass, the least any step can read; up to 16 rows,
  // 4 passes, cheap while the weights stay in a core's L2 (2 MiB here).
  // Larger batches amortise the packed kernels' packing instead (strategy.h).
  // Measured (one thread, I = H): 1.5-5.6x faster than the sequence op's
  // single step within these limits (benchmarks/RESULTS.md, "One step");
  // beyond them, at B = 32 and I = H = 256 (8 passes over 2 MiB), it took
  // 1.9x the time of one GEMM call per weight.
  const int64_t weight_bytes = (w_ih.numel() + w_hh.numel()) * static_cast<int64_t>(sizeof(float));
  return B <= 4 || (B <= 16 && weight_bytes <= (int64_t(2) << 20));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> step_kernel(const Cell& cell, const at::Tensor& x,
                                                            const at::Tensor& h, const at::Tensor& c,
                                                            const at::Tensor& w_ih, const at::Tensor& w_hh,
                                                            const at::Tensor& b_ih, const at::Tensor& b_hh,
                                                            const at::Tensor& w_peep, bool for_backward) {
  const int64_t B = x.size(0), I = x.size(1), H = h.size(1), G = cell.gates(), GH = G * H;
  const int64_t W = cell.workspace_blocks() * H;
  Scratch& sc = scratch();
  const float* xd = x.data_ptr<float>();
  const float* hd = h.data_ptr<float>();
  const float* wi = w_ih.data_ptr<float>();
  const float* wh = w_hh.data_ptr<float>();
  const float* bi = data_or_null(b_ih);
  const float* bh = data_or_null(b_hh);
  const int threads = product_threads(B, GH, I + H);

  at::Tensor h_new = at::empty({B, H}, x.options());
  at::Tensor c_new, workspace;
  if (for_backward && W > 0) workspace = at::empty({B, W}, x.options());
  // the passes write a workspace row even in inference where they read it back (GRU reset_before's k)
  float* ws = workspace.defined() ? workspace.data_ptr<float>() : Scratch::sized(sc.ws, B * std::max<int64_t>(W, 1));
  const Block block{B, 0, H, H};

  if (cell.family == Family::lstm || cell.family == Family::rnn) {
    // the whole pre-activation in one product: [x, h] times [W_ih; W_hh]^T plus both biases
    float* pre = Scratch::sized(sc.pre, B * GH);
    const RowTerm terms[2] = {{xd, I, wi, I, I}, {hd, H, wh, H, H}};
    row_product(terms, 2, B, GH, bi, bh, pre, GH, threads);
    if (cell.family == Family::rnn) {
      RnnForwardArgs<float> a;
      a.xp = cview<float>(pre, GH);
      a.hp = cview<float>(sc.zero(GH), 0);
      a.h = view(h_new.data_ptr<float>(), H);
      pw_rnn_forward(cell.relu, block, a);
    } else {
      c_new = at::empty({B, H}, x.options());
      std::memcpy(c_new.data_ptr<float>(), c.data_ptr<float>(), sizeof(float) * B * H);  // the pass updates c in place
      LstmForwardArgs<float> a;
      a.xp = cview<float>(pre, GH);
      a.hp = cview<float>(sc.zero(GH), 0);
      a.hp_gs = H;
      a.c = view(c_new.data_ptr<float>(), H);
      a.peep = w_peep.defined() ? w_peep.data_ptr<float>() : sc.zero(3 * H);
      a.ws = view(ws, W);
      a.m = view(h_new.data_ptr<float>(), H);
      pw_lstm_forward_for(workspace.defined(), w_peep.defined(), block, a);
    }
    return {h_new, c_new, workspace};
  }

  // GRU: the n gate keeps its input and hidden products apart (its hidden
  // bias b_hn goes with the hidden product); reset_before's n product reads
  // k = r*h, which the first pass writes.
  float* xp = Scratch::sized(sc.pre, B * GH);
  GruForwardArgs<float> a;
  a.xp = cview<float>(xp, GH);
  a.b_hn = bh ? bh + 2 * H : sc.zero(H);
  a.h_prev = cview(hd, H);
  a.ws = view(ws, W);
  a.h = view(h_new.data_ptr<float>(), H);
  a.hp_gs = H;
  const RowTerm input{xd, I, wi, I, I};
  if (cell.reset_after) {
    // r and z as one product of both terms (their biases both fold in), so each of their outputs is one
    // dot of I + H, summed across lanes once (row_product.h): xp's r, z blocks hold the whole
    // pre-activation and hp's are zero; the n gate's two products apart, into xp's and hp's n blocks
    const float* b_in = bi ? bi + 2 * H : nullptr;
    const RowTerm rz[2] = {input, {hd, H, wh, H, H}};
    row_product(rz, 2, B, 2 * H, bi, bh, xp, GH, threads);
    const RowTerm input_n{xd, I, wi + 2 * H * I, I, I};
    row_product(&input_n, 1, B, H, b_in, nullptr, xp + 2 * H, GH, threads);
    float* hp = Scratch::sized(sc.hp, B * GH);
    for (int64_t b = 0; b < B; ++b) std::memset(hp + b * GH, 0, sizeof(float) * 2 * H);
    const RowTerm hidden_n{hd, H, wh + 2 * H * H, H, H};
    row_product(&hidden_n, 1, B, H, nullptr, nullptr, hp + 2 * H, GH, threads);
    a.hp = cview<float>(hp, GH);
    pw_gru_forward_after_for(workspace.defined(), block, a);
  } else {
    // x W_ih^T with the folded bias (both biases for r and z, b_in for n); h W_hh^T for r and z; after the
    // first pass, the n gate's product of k = r*h, which that pass wrote into the workspace
    float* bias = Scratch::sized(sc.bias, GH);
    for (int64_t j = 0; j < GH; ++j) bias[j] = (bi ? bi[j] : 0.0f) + (bh && j < 2 * H ? bh[j] : 0.0f);
    row_product(&input, 1, B, GH, bias, nullptr, xp, GH, threads);
    float* hp = Scratch::sized(sc.hp, B * 2 * H);
    const RowTerm hidden{hd, H, wh, H, H};
    row_product(&hidden, 1, B, 2 * H, nullptr, nullptr, hp, 2 * H, threads);
    a.hp = cview<float>(hp, 2 * H);
    pw_gru_forward_gates(block, a);
    float* hp_n = Scratch::sized(sc.hp_n, B * H);
    const RowTerm reset{ws + 3 * H, W, wh + 2 * H * H, H, H};
    row_product(&reset, 1, B, H, nullptr, nullptr, hp_n, H, threads);
    a.hp = cview<float>(hp_n, H);
    pw_gru_forward_state(block, a);
  }
  return {h_new, c_new, workspace};
}

bool step_backward_kernel_runs(const Cell& cell, const at::Tensor& x, const at::Tensor& w_ih,
                               const at::Tensor& w_hh, const at::Tensor& w_peep) {
  const bool dependent = cell.family == Family::gru && !cell.reset_after;
  return !dependent && !w_peep.defined() && x.scalar_type() == at::kFloat && x.size(0) > 0 &&
         w_hh.size(0) > 0 && w_ih.is_contiguous() && w_hh.is_contiguous();
}

StepGradients step_backward_kernel(const Cell& cell, const at::Tensor& grad_h, const at::Tensor& grad_c,
                                   const at::Tensor& x, const at::Tensor& h, const at::Tensor& c,
                                   const at::Tensor& w_ih, const at::Tensor& w_hh, bool has_b_ih, bool has_b_hh,
                                   const at::Tensor& h_new, const at::Tensor& workspace, bool need_dx,
                                   bool need_dweights) {
  const int64_t B = x.size(0), I = x.size(1), H = h.size(1), G = cell.gates(), GH = G * H;
  const int64_t W = cell.workspace_blocks() * H;
  Scratch& sc = scratch();
  const int threads = product_threads(B, GH, I + H);
  const Block block{B, 0, H, H};
  const View<const float> dh_a = cview(grad_h.data_ptr<float>(), H), no_dh = cview(sc.zero(GH), 0);
  StepGradients g;
  g.dh = at::empty({B, H}, x.options());

  // the gate gradients: dA (the hidden side's apart for the GRU, whose n gate splits them)
  float* dA = Scratch::sized(sc.pre, B * GH);
  float* dA_h = dA;
  if (cell.family == Family::lstm) {
    g.dc = grad_c.clone();  // the pass turns the carried dc into dc_prev in place
    LstmBackwardArgs<float> a;
    a.dm_a = dh_a;
    a.dm_b = no_dh;
    a.dc = view(g.dc.data_ptr<float>(), H);
    a.ws = cview(workspace.data_ptr<float>(), W);
    a.c_prev = cview(c.data_ptr<float>(), H);
    a.peep = sc.zero(3 * H);
    a.dpeep = Scratch::sized(sc.bias, 3 * H);
    a.dA = view(dA, GH);
    pw_lstm_backward_for(false, block, a);
  } else if (cell.family == Family::gru) {
    dA_h = Scratch::sized(sc.hp, B * GH);
    GruBackwardArgs<float> a;
    a.dh_a = dh_a;
    a.dh_b = no_dh;
    a.ws = cview(workspace.data_ptr<float>(), W);
    a.h_prev = cview(h.data_ptr<float>(), H);
    a.dA_x = view(dA, GH);
    a.dA_h = view(dA_h, GH);
    a.dh_direct = view(Scratch::sized(sc.hp_n, B * H), H);
    pw_gru_backward_after(block, a);
  } else {
    RnnBackwardArgs<float> a;
    a.dh_a = dh_a;
    a.dh_b = no_dh;
    a.h = cview(h_new.data_ptr<float>(), H);
    a.dA = view(dA, GH);
    pw_rnn_backward(cell.relu, block, a);
  }

  // dh_prev = dA_h W_hh (+ the GRU's direct part dh*z), dx = dA W_ih
  float* dh_prev = g.dh.data_ptr<float>();
  broadcast_product(dA_h, GH, 1, B, GH, w_hh.data_ptr<float>(), H, H, dh_prev, H, threads);
  if (cell.family == Family::gru) {
    const float* direct = sc.hp_n.data();
    for (int64_t i = 0; i < B * H; ++i) dh_prev[i] += direct[i];
  }
  if (need_dx) {
    g.dx = at::empty({B, I}, x.options());
    broadcast_product(dA, GH, 1, B, GH, w_ih.data_ptr<float>(), I, I, g.dx.data_ptr<float>(), I, threads);
  }
  if (!need_dweights) return g;
  // dW_ih = dA^T x, dW_hh = dA_h^T h (dA read transposed), the biases' the column sums
  g.dw_ih = at::empty({GH, I}, x.options());
  g.dw_hh = at::empty({GH, H}, x.options());
  broadcast_product(dA, 1, GH, GH, B, x.data_ptr<float>(), I, I, g.dw_ih.data_ptr<float>(), I, threads);
  broadcast_product(dA_h, 1, GH, GH, B, h.data_ptr<float>(), H, H, g.dw_hh.data_ptr<float>(), H, threads);
  const auto column_sums = [&](const float* rows) {
    at::Tensor sums = at::empty({GH}, x.options());
    float* out = sums.data_ptr<float>();
    for (int64_t j = 0; j < GH; ++j) out[j] = rows[j];
    for (int64_t b = 1; b < B; ++b)
      for (int64_t j = 0; j < GH; ++j) out[j] += rows[b * GH + j];
    return sums;
  };
  if (has_b_ih) g.db_ih = column_sums(dA);
  if (has_b_hh) g.db_hh = column_sums(dA_h);
  return g;
}

}  // namespace cpu
}  // namespace fusedrnn
