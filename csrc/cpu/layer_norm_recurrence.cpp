#include "layer_norm_recurrence.h"

#include <ATen/ThreadLocalState.h>

#include <algorithm>

#include "buffers.h"
#include "dense_product.h"
#include "parallel.h"
#include "pointwise_dispatch.h"

namespace fusedrnn {
namespace cpu {

namespace {

// w_extra's vectors, in the cell record's order (fusedrnn/cells.py): [γ_ih (G*H), γ_hh (G*H)], then
// for the LSTM [γ_c (H), β_c (H)]; and the biases, zeros where the layer has none.
struct Extras {
  at::Tensor gain_ih, gain_hh, gain_c, shift_c, b_ih, b_hh;
};

Extras extras_of(const Cell& cell, const LayerWeights& w, int64_t H) {
  const int64_t GH = cell.gates() * H;
  Extras e;
  e.gain_ih = w.w_extra.narrow(0, 0, GH);
  e.gain_hh = w.w_extra.narrow(0, GH, GH);
  if (cell.has_cell_state()) {
    e.gain_c = w.w_extra.narrow(0, 2 * GH, H);
    e.shift_c = w.w_extra.narrow(0, 2 * GH + H, H);
  }
  // the passes add the bias unconditionally: one loop, no optional stream
  e.b_ih = w.b_ih.defined() ? w.b_ih : at::zeros({GH}, w.w_ih.options());
  e.b_hh = w.b_hh.defined() ? w.b_hh : at::zeros({GH}, w.w_ih.options());
  return e;
}

// The block of a row pass over `rows` whole rows (layer_norm_pointwise.h).
Block rows_block(int64_t rows, int64_t H) { return Block{rows, 0, H, H}; }

// The recurrence runs in one parallel region for all its steps, a team started once rather than twice
// per step (the product, then the pass): per step each thread takes its tiles of the product (fixed by
// the shape: FixedProduct) and its rows of the pass, a barrier between them.  Threads: as fixed_mm_out
// gives one step's product (one for small ones, where a team costs more than the work).
int recurrence_threads(int64_t batch, int64_t GH, int64_t K) {
  return batch * GH * K >= (int64_t(1) << 18) ? max_threads() : 1;
}

// Thread tid's tiles of a product.
void product_share(const FixedProduct& product, int tid, int nt) {
  int64_t i0, i1;
  split_range(product.tiles(), tid, nt, i0, i1);
  for (int64_t i = i0; i < i1; ++i) product.tile(i);
}

// ---------------------------------------------------------------------------
// forward
// ---------------------------------------------------------------------------

struct ForwardState {
  at::Tensor xa;       // [N, G*H] x W_ih^T (the passes normalise each row as they read it)
  at::Tensor hp;       // [B, G*H] one step's h W_hh^T
  at::Tensor out;      // [N, H]
  at::Tensor ws;       // [N, W], or one step's rows [B, W] without a backward to feed
  at::Tensor h_state;  // [B, H] each row's latest h (h0 on entry)
  at::Tensor c_state;  // [B, H] the same for c (LSTM)
  at::Tensor mask;     // [N, H] zoneout's (undefined without zoneout)
  bool keep_workspace;
};

// One step's row pass, for its rows [r0, r1) (`off`: the step's first row of the sequence).
template <typename T>
void forward_rows(const Cell& cell, const Extras& e, const ForwardState& f, int64_t H, int64_t off, int64_t r0,
                  int64_t r1) {
  const int64_t GH = cell.gates() * H, W = cell.workspace_blocks() * H;
  const int64_t ws_row = (f.keep_workspace ? off : 0) + r0;
  const NormalisedRows<T> input{cview(ptr<T>(f.xa) + (off + r0) * GH, GH), ptr<T>(e.gain_ih), ptr<T>(e.b_ih)};
  const NormalisedRows<T> hidden{cview(ptr<T>(f.hp) + r0 * GH, GH), ptr<T>(e.gain_hh), ptr<T>(e.b_hh)};
  const View<T> ws = view(ptr<T>(f.ws) + ws_row * W, W), h = view(ptr<T>(f.out) + (off + r0) * H, H);
  if (cell.has_cell_state()) {
    LnLstmForwardArgs<T> a;
    a.input = input;
    a.hidden = hidden;
    a.gain_c = ptr<T>(e.gain_c);
    a.shift_c = ptr<T>(e.shift_c);
    a.c = view(ptr<T>(f.c_state) + r0 * H, H);
    a.ws = ws;
    a.h = h;
    pw_ln_lstm_forward(rows_block(r1 - r0, H), a);
  } else {
    LnGruForwardArgs<T> a;
    a.input = input;
    a.hidden = hidden;
    a.h_prev = cview(ptr<T>(f.h_state) + r0 * H, H);
    a.ws = ws;
    a.h = h;
    pw_ln_gru_forward(rows_block(r1 - r0, H), a);
  }
}

template <typename T>
void forward_steps(const Cell& cell, const LayerWeights& w, const Extras& e, const Steps& s, ForwardState& f) {
  const int64_t H = f.h_state.size(1), GH = cell.gates() * H;
  const at::Tensor w_t = w.w_hh.t();
  const at::ThreadLocalState caller_state;  // the ATen calls of the tiles run as the caller's would
  run_parallel(recurrence_threads(s.batch, GH, H), [&](int tid, int nt, Barrier& barrier) {
    at::ThreadLocalStateGuard same_state(caller_state);
    for (int64_t p = 0; p < s.count(); ++p) {
      const int64_t t = s.order[p], n = s.size[t], off = s.offset[t];
      // h_state's first n rows are the step's previous states (in either direction: rows that start
      // from h0 at their own last step, in the reverse direction of packed input, still hold it)
      product_share(FixedProduct(f.hp.narrow(0, 0, n), f.h_state.narrow(0, 0, n), w_t), tid, nt);
      barrier.wait();
      int64_t r0, r1;
      split_range(n, tid, nt, r0, r1);
      if (r0 < r1) {
        forward_rows<T>(cell, e, f, H, off, r0, r1);
        if (f.mask.defined()) {  // zoneout: the output rows blended with h_prev in place (h_state's rows)
          ZoneoutForwardArgs<T> z;
          z.mask = cview(ptr<T>(f.mask) + (off + r0) * H, H);
          z.h_new = cview(ptr<T>(f.out) + (off + r0) * H, H);
          z.h_prev = cview(ptr<T>(f.h_state) + r0 * H, H);
          z.h = view(ptr<T>(f.out) + (off + r0) * H, H);
          pw_zoneout_forward(rows_block(r1 - r0, H), z);
        }
        // the thread's rows of the new state, after the pass, which reads h_prev (GRU)
        const T* h_new = ptr<T>(f.out) + (off + r0) * H;
        std::copy(h_new, h_new + (r1 - r0) * H, ptr<T>(f.h_state) + r0 * H);
      }
      barrier.wait();  // the next step's product reads every row's new state
    }
  });
}

// ---------------------------------------------------------------------------
// backward
// ---------------------------------------------------------------------------

struct BackwardState {
  at::Tensor dout, ws;         // [N, H], [N, W]
  at::Tensor h_prev, c_prev;   // [N, H] each row's previous states (c: LSTM)
  at::Tensor xa;               // [N, G*H] x W_ih^T, recomputed: undefined if nobody wants the input side
  at::Tensor terms_x;          // [N, kTerms] the input side's normalisation backward's terms
  at::Tensor hp;               // [N, G*H] h_prev W_hh^T, recomputed
  at::Tensor dA_x, dA_h;       // [N, G*H] dX̂ and dĤ (the same tensor for the LSTM)
  at::Tensor dhp;              // [N, G*H] the gradient of hp
  at::Tensor terms_h;          // [N, kTerms] the hidden side's normalisation backward's terms
  at::Tensor dy_c, terms_c;    // [N, H] the gradient of LN(c'), [N, kTerms] its terms (LSTM)
  at::Tensor dh_state;         // [B, H] the carried gradient of h (grad_hn on entry, dh0 on return)
  at::Tensor dc_state;         // [B, H] the same for c (LSTM)
  at::Tensor dh_direct;        // [B, H] dh z (GRU)
  // zoneout (undefined without): the mask [N, H]; dh_keep [B, H], each step's (1-m)*(dout + dh), which
  // reaches dh_prev besides the product; a zero row, the pass's dout once dh holds m*(dout + dh)
  at::Tensor mask, dh_keep, zero_row;
};

// One step's row pass backward, for its rows [r0, r1).
template <typename T>
void backward_rows(const Cell& cell, const Extras& e, const BackwardState& b, int64_t H, int64_t off, int64_t r0,
                   int64_t r1) {
  const int64_t GH = cell.gates() * H, W = cell.workspace_blocks() * H, row = off + r0;
  LayerNormInputBackward<T> input;
  input.xa = cview(ptr<T>(b.xa) + row * GH, GH);
  input.gain = ptr<T>(e.gain_ih);
  input.terms = b.xa.defined() ? view(ptr<T>(b.terms_x) + row * layer_norm::kTerms, layer_norm::kTerms) : View<T>();
  LayerNormHiddenBackward<T> hidden;
  hidden.hp = cview(ptr<T>(b.hp) + row * GH, GH);
  hidden.gain = ptr<T>(e.gain_hh);
  hidden.dhp = view(ptr<T>(b.dhp) + row * GH, GH);
  hidden.terms = view(ptr<T>(b.terms_h) + row * layer_norm::kTerms, layer_norm::kTerms);
  const View<const T> dh_a = b.mask.defined() ? cview(ptr<T>(b.zero_row), 0) : cview(ptr<T>(b.dout) + row * H, H);
  const View<const T> dh_b = cview(ptr<T>(b.dh_state) + r0 * H, H);
  const View<const T> ws = cview(ptr<T>(b.ws) + row * W, W);
  if (cell.has_cell_state()) {
    LnLstmBackwardArgs<T> a;
    a.dh_a = dh_a;
    a.dh_b = dh_b;
    a.dc = view(ptr<T>(b.dc_state) + r0 * H, H);
    a.ws = ws;
    a.c_prev = cview(ptr<T>(b.c_prev) + row * H, H);
    a.gain_c = ptr<T>(e.gain_c);
    a.shift_c = ptr<T>(e.shift_c);
    a.dy_c = view(ptr<T>(b.dy_c) + row * H, H);
    a.terms_c = view(ptr<T>(b.terms_c) + row * layer_norm::kTerms, layer_norm::kTerms);
    a.dA = view(ptr<T>(b.dA_x) + row * GH, GH);
    a.input = input;
    a.hidden = hidden;
    pw_ln_lstm_backward(rows_block(r1 - r0, H), a);
  } else {
    LnGruBackwardArgs<T> a;
    a.dh_a = dh_a;
    a.dh_b = dh_b;
    a.ws = ws;
    a.h_prev = cview(ptr<T>(b.h_prev) + row * H, H);
    a.dA_x = view(ptr<T>(b.dA_x) + row * GH, GH);
    a.dA_h = view(ptr<T>(b.dA_h) + row * GH, GH);
    a.dh_direct = view(ptr<T>(b.dh_direct) + r0 * H, H);
    a.input = input;
    a.hidden = hidden;
    pw_ln_gru_backward(rows_block(r1 - r0, H), a);
  }
}

template <typename T>
void backward_steps(const Cell& cell, const LayerWeights& w, const Extras& e, const Steps& s, BackwardState& b) {
  const int64_t H = b.dh_state.size(1), GH = cell.gates() * H;
  const at::ThreadLocalState caller_state;  // the ATen calls of the tiles run as the caller's would
  run_parallel(recurrence_threads(s.batch, GH, H), [&](int tid, int nt, Barrier& barrier) {
    at::ThreadLocalStateGuard same_state(caller_state);
    for (int64_t p = s.count() - 1; p >= 0; --p) {
      const int64_t t = s.order[p], n = s.size[t], off = s.offset[t];
      int64_t r0, r1;
      split_range(n, tid, nt, r0, r1);
      if (r0 < r1 && b.mask.defined()) {  // zoneout: dh = m*(dout + dh) for the pass, dh_keep = (1-m)*(...)
        ZoneoutBackwardArgs<T> z;
        z.mask = cview(ptr<T>(b.mask) + (off + r0) * H, H);
        z.dh_a = cview(ptr<T>(b.dout) + (off + r0) * H, H);
        z.dh_b = cview(ptr<T>(b.dh_state) + r0 * H, H);
        z.cell = view(ptr<T>(b.dh_state) + r0 * H, H);
        z.keep = view(ptr<T>(b.dh_keep) + r0 * H, H);
        pw_zoneout_backward(rows_block(r1 - r0, H), z);
      }
      if (r0 < r1) backward_rows<T>(cell, e, b, H, off, r0, r1);
      if (r0 < r1 && b.mask.defined() && b.dh_direct.defined()) {  // the GRU's direct term takes dh_keep too
        T* direct = ptr<T>(b.dh_direct) + r0 * H;
        const T* keep = ptr<T>(b.dh_keep) + r0 * H;
        for (int64_t i = 0; i < (r1 - r0) * H; ++i) direct[i] += keep[i];
      }
      barrier.wait();  // every row's pass has read the carried gradient the product overwrites
      // dh_prev = dHa W_hh (+ dh z for the GRU; + dh_keep with zoneout: the LSTM's only direct term)
      const at::Tensor& add = b.dh_direct.defined() ? b.dh_direct : b.dh_keep;
      const at::Tensor direct = add.defined() ? add.narrow(0, 0, n) : at::Tensor();
      product_share(FixedProduct(b.dh_state.narrow(0, 0, n), b.dhp.narrow(0, off, n), w.w_hh, direct), tid, nt);
      barrier.wait();  // the next step's pass reads every row's dh_prev
    }
  });
}

// ---------------------------------------------------------------------------
// after the backward's recurrence
// ---------------------------------------------------------------------------

// The column pass (layer_norm_columns_block): dgain = Σ dy v̂ and dshift = Σ dy over the rows, for the
// normalised rows v (the `width` columns from v_col of each row), and with `in_place` v's own gradient
// over v.  Threads split the columns (multiples of 16: the same vector lanes with any thread count).
template <typename T>
void column_pass(const at::Tensor& dy, const at::Tensor& v, int64_t v_col, const at::Tensor& terms,
                 const at::Tensor& gain, bool in_place, const at::Tensor& dgain, const at::Tensor& dshift) {
  const int64_t rows = dy.size(0), width = dy.size(1);
  parallel_units(width, rows * width, 16, [&](int64_t u0, int64_t u1) {
    LayerNormColumnsArgs<T> a;
    a.dy = cview(ptr<T>(dy), width);
    a.v = view(ptr<T>(v) + v_col, v.size(1));
    a.terms = cview(ptr<T>(terms), layer_norm::kTerms);
    a.gain = ptr<T>(gain);
    a.dgain = ptr<T>(dgain);
    a.dshift = ptr<T>(dshift);
    const Block blk{rows, u0, u1, width};
    in_place ? pw_layer_norm_columns_in_place(blk, a) : pw_layer_norm_columns(blk, a);
  });
}

}  // namespace

ForwardOut layer_norm_sequence_forward(const Cell& cell, const at::Tensor& x, const at::Tensor& h0,
                                       const at::Tensor& c0, const LayerWeights& w, const Steps& s, bool poison,
                                       bool for_backward, const at::Tensor& zoneout_mask) {
  const int64_t H = h0.size(1), GH = cell.gates() * H, W = cell.workspace_blocks() * H;
  const Extras e = extras_of(cell, w, H);
  ForwardState f;
  f.keep_workspace = for_backward;
  f.mask = zoneout_mask;
  f.xa = linear(x, w.w_ih, at::Tensor()).contiguous();
  f.hp = empty_like_rows(x, {s.batch, GH}, poison);
  f.out = empty_like_rows(x, {s.rows, H}, poison);
  f.ws = empty_like_rows(x, {for_backward ? s.rows : s.batch, W}, poison);
  f.h_state = h0.clone();
  if (cell.has_cell_state()) f.c_state = c0.clone();
  if (x.scalar_type() == at::kDouble) {
    forward_steps<double>(cell, w, e, s, f);
  } else {
    forward_steps<float>(cell, w, e, s, f);
  }
  ForwardOut r;
  r.out = f.out;
  r.h_n = f.h_state;  // each row's state after its own last step
  r.c_n = f.c_state;
  if (for_backward) r.workspace = f.ws;
  return r;
}

BackwardOut layer_norm_sequence_backward(const Cell& cell, const at::Tensor& grad_out, const at::Tensor& grad_hn,
                                         const at::Tensor& grad_cn, const at::Tensor& x, const at::Tensor& h0,
                                         const at::Tensor& c0, const LayerWeights& w, const Steps& s,
                                         const at::Tensor& out, const at::Tensor& workspace, bool poison,
                                         bool need_dx, bool need_dweights, const at::Tensor& zoneout_mask) {
  const int64_t H = h0.size(1), GH = cell.gates() * H;
  const bool lstm = cell.has_cell_state();
  const Extras e = extras_of(cell, w, H);
  BackwardState b;
  if (zoneout_mask.defined()) {
    b.mask = zoneout_mask;
    b.dh_keep = empty_like_rows(x, {s.batch, H}, poison);
    b.zero_row = at::zeros({H}, x.options());
  }
  b.dout = grad_out;
  b.ws = workspace;
  b.h_prev = frame::previous_rows(out, h0, s);
  if (lstm) b.c_prev = frame::previous_rows(workspace.narrow(1, 4 * H, H), c0, s);
  // the products the statistics came from (the workspace keeps none); the pass writes the input side's
  // terms, and the column pass after the loop turns x W_ih^T into dXa in place
  b.hp = linear(b.h_prev, w.w_hh, at::Tensor()).contiguous();
  if (need_dx || need_dweights) {
    b.xa = linear(x, w.w_ih, at::Tensor()).contiguous();
    b.terms_x = empty_like_rows(x, {s.rows, layer_norm::kTerms}, poison);
  }
  b.dA_x = empty_like_rows(x, {s.rows, GH}, poison);
  b.dA_h = lstm ? b.dA_x : empty_like_rows(x, {s.rows, GH}, poison);
  b.dhp = empty_like_rows(x, {s.rows, GH}, poison);
  b.terms_h = empty_like_rows(x, {s.rows, layer_norm::kTerms}, poison);
  b.dh_state = grad_hn.clone();
  if (lstm) {
    b.dy_c = empty_like_rows(x, {s.rows, H}, poison);
    b.terms_c = empty_like_rows(x, {s.rows, layer_norm::kTerms}, poison);
    b.dc_state = grad_cn.clone();
  } else {
    b.dh_direct = empty_like_rows(x, {s.batch, H}, poison);
  }
  const bool dbl = x.scalar_type() == at::kDouble;
  if (dbl) {
    backward_steps<double>(cell, w, e, s, b);
  } else {
    backward_steps<float>(cell, w, e, s, b);
  }

  BackwardOut r;
  r.dh0 = b.dh_state;
  r.dc0 = b.dc_state;
  if (!need_dx && !need_dweights) return r;
  // The column passes: dXa over x W_ih^T, and the gains', the shift's and the biases' gradients, straight
  // into their tensors.
  const at::Tensor& dxa = b.xa;
  const at::Tensor dextra = empty_like_rows(x, {cell.extra_blocks() * H}, poison);  // w_extra's layout
  const at::Tensor db_x = empty_like_rows(x, {GH}, poison), db_h = empty_like_rows(x, {GH}, poison);
  const auto passes = [&](auto zero) {
    using T = decltype(zero);
    column_pass<T>(b.dA_x, dxa, 0, b.terms_x, e.gain_ih, true, dextra.narrow(0, 0, GH), db_x);
    if (!need_dweights) return;
    column_pass<T>(b.dA_h, b.hp, 0, b.terms_h, e.gain_hh, false, dextra.narrow(0, GH, GH), db_h);
    if (lstm) {
      column_pass<T>(b.dy_c, workspace, 4 * H, b.terms_c, e.gain_c, false, dextra.narrow(0, 2 * GH, H),
                     dextra.narrow(0, 2 * GH + H, H));
    }
  };
  if (dbl) {
    passes(double(0));
  } else {
    passes(float(0));
  }
  if (need_dx) r.dx = linear(dxa, w.w_ih.t(), at::Tensor());
  if (!need_dweights) return r;
  r.dw.w_ih = fixed_mm(dxa.t(), x);
  r.dw.w_hh = fixed_mm(b.dhp.t(), b.h_prev);
  if (w.b_ih.defined()) r.dw.b_ih = db_x;
  if (w.b_hh.defined()) r.dw.b_hh = db_h;  // Σ dĤ: for the LSTM, the same sums as db_x
  r.dw.w_extra = dextra;
  return r;
}

}  // namespace cpu
}  // namespace fusedrnn
