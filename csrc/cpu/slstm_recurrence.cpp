#include "slstm_recurrence.h"

#include <algorithm>

#include "buffers.h"
#include "dense_product.h"
#include "parallel.h"
#include "pointwise_dispatch.h"
#include "recurrent_product.h"
#include "rows.h"

namespace fusedrnn {
namespace cpu {

namespace {

// The heads of w_hh [4H, D] cut into work items: panels of L units of one head (the last of a head
// shorter where L does not divide D), all four gates each.  Items never span two heads, so an item's
// product reads one head's slice of h.
struct Heads {
  int64_t H, D, heads, L, blocks;  // blocks: panels per head
  Heads(int64_t H_, int64_t D_, int64_t L_) : H(H_), D(D_), heads(H_ / D_), L(L_), blocks((D_ + L_ - 1) / L_) {}
  int64_t items() const { return heads * blocks; }
  int64_t head(int64_t item) const { return item / blocks; }
  int64_t first_unit(int64_t item) const { return head(item) * D + (item % blocks) * L; }
  int64_t width(int64_t item) const { return std::min(L, D - (item % blocks) * L); }
  Block block(int64_t item, int64_t rows) const {
    const int64_t u0 = first_unit(item);
    return Block{rows, u0, u0 + width(item), H};
  }
};

// Panels per item and gate, [items][4][D][L] (recurrent_product.h's [C][K][L] per item), zero past the
// head's last unit.  Forward: panel (item, g)[j][l] = w_hh[g*H + u0 + l, j], the item's rows over the
// head's D inputs.  `transposed` (backward): [j][l] = w_hh[g*H + k*D + j, u0 - k*D + l], the head's rows
// j against the item's columns, for dh_prev = dA R.  One pass of our own (as pack_panels, and for double
// too), split over threads by item for a large weight.
template <typename T>
at::Tensor pack_heads(const at::Tensor& w_hh, const Heads& hd, bool transposed) {
  const int64_t D = hd.D, L = hd.L, H = hd.H;
  at::Tensor panels = at::empty({hd.items(), 4, D, L}, w_hh.options());
  const T* src = ptr<T>(w_hh);
  T* dst = ptr<T>(panels);
  const int nthreads = panels.numel() >= (int64_t(1) << 20) ? max_threads() : 1;
  run_parallel(nthreads, [&](int tid, int nt, Barrier&) {
    int64_t i0, i1;
    split_range(hd.items(), tid, nt, i0, i1);
    for (int64_t item = i0; item < i1; ++item) {
      const int64_t k0 = hd.head(item) * D, u0 = hd.first_unit(item), width = hd.width(item);
      for (int64_t g = 0; g < 4; ++g) {
        T* out = dst + (item * 4 + g) * D * L;
        for (int64_t j = 0; j < D; ++j) {
          for (int64_t l = 0; l < L; ++l) {
            T v = T(0);
            if (l < width) v = transposed ? src[(g * H + k0 + j) * D + (u0 - k0 + l)] : src[(g * H + u0 + l) * D + j];
            out[j * L + l] = v;
          }
        }
      }
    }
  });
  return panels;
}

// One term of a head's product: rows of a left operand (row r at lhs + r*ld, D columns) times D rows of
// C panels.
template <typename T>
struct Term {
  const T* lhs;
  int64_t ld;
  const T* panels;
};

// tile [n][C*L] = the sum over the terms of lhs rows [0, n) times their C panels.  float32: the fused
// strategies' micro-kernel; double: the same sums, a plain loop (float64 is for checking, not speed).
void head_product(Isa isa, int64_t, const Term<float>* terms, int nterms, int64_t n, int64_t K, int64_t C,
                  float* tile) {
  ProductTerm pt[4];
  for (int t = 0; t < nterms; ++t) pt[t] = ProductTerm{terms[t].lhs, terms[t].ld, K, terms[t].panels};
  product_tile(isa, pt, nterms, n, C, tile);
}

void head_product(Isa, int64_t L, const Term<double>* terms, int nterms, int64_t n, int64_t K, int64_t C,
                  double* tile) {
  const int64_t width = C * L;
  for (int64_t r = 0; r < n; ++r) {
    double* out = tile + r * width;
    std::fill(out, out + width, 0.0);
    for (int t = 0; t < nterms; ++t) {
      const double* lhs = terms[t].lhs + r * terms[t].ld;
      for (int64_t c = 0; c < C; ++c) {
        const double* panel = terms[t].panels + c * K * L;
        for (int64_t k = 0; k < K; ++k) {
          const double v = lhs[k];
          for (int64_t l = 0; l < L; ++l) out[c * L + l] += v * panel[k * L + l];
        }
      }
    }
  }
}

// Units per panel: a SIMD vector of floats (the micro-kernel's), 8 doubles.
int64_t panel_width(Isa isa, at::ScalarType dtype) { return dtype == at::kDouble ? 8 : panel_lanes(isa); }

// As the layer-normalised cells' recurrence: a team only where a step's product is worth waking it.
int recurrence_threads(int64_t batch, int64_t H, int64_t D) {
  return batch * 4 * H * D >= (int64_t(1) << 18) ? max_threads() : 1;
}

// ---------------------------------------------------------------------------
// forward
// ---------------------------------------------------------------------------

struct ForwardState {
  at::Tensor xp;      // [N, 4H] x W_ih^T + b_ih
  at::Tensor b_hh;    // [4H] (zeros without one: the pass adds it unconditionally)
  at::Tensor panels;  // pack_heads, forward
  at::Tensor out;     // [N, H]
  at::Tensor ws;      // [N, 7H] (undefined without a backward to feed)
  at::Tensor h0;      // [B, H]
  at::Tensor state;   // [B, 3H] c, n, m of each row's latest step (c0 on entry)
  at::Tensor tiles;   // [threads, B*4*L] each thread's product tile
};

template <typename T>
void forward_steps(const Steps& s, const Heads& hd, Isa isa, int threads, const ForwardState& f) {
  const int64_t H = hd.H, D = hd.D, L = hd.L, tile_size = f.tiles.size(1);
  const bool keep = f.ws.defined();
  const T *xp = ptr<T>(f.xp), *b_hh = ptr<T>(f.b_hh), *panels = ptr<T>(f.panels), *h0 = ptr<T>(f.h0);
  T *out = ptr<T>(f.out), *ws = ptr<T>(f.ws), *state = ptr<T>(f.state);
  run_parallel(threads, [&](int tid, int nt, Barrier& barrier) {
    T* tile = ptr<T>(f.tiles) + tid * tile_size;
    int64_t i0, i1;
    split_range(hd.items(), tid, nt, i0, i1);
    for (int64_t p = 0; p < s.count(); ++p) {
      const int64_t t = s.order[p], n = s.size[t], off = s.offset[t];
      for (int64_t item = i0; item < i1; ++item) {
        const Block blk = hd.block(item, n);
        const T* pan = panels + item * 4 * D * L;
        const int64_t k0 = hd.head(item) * D;
        // the head's slice of each row's previous h: the previous step's output rows, or h0 (rows.h)
        for_prev_segments<T>(s, p, blk, out, 0, H, h0, H, [&](const Block& sub, int64_t shift, View<const T> h) {
          const Term<T> term{h.p + k0, h.rs, pan};
          head_product(isa, L, &term, 1, sub.rows, D, 4, tile + shift * 4 * L);
        });
        SlstmForwardArgs<T> a;
        a.xp = cview(xp + off * 4 * H, 4 * H);
        a.hp = cview(static_cast<const T*>(tile), 4 * L);
        a.hp_gs = L;
        a.b_hh = b_hh;
        a.state = view(state, 3 * H);
        a.ws = keep ? view(ws + off * 7 * H, 7 * H) : View<T>();
        a.h = view(out + off * H, H);
        pw_slstm_forward_for(keep, blk, a);
      }
      barrier.wait();  // the next step's products read every unit's h
    }
  });
}

// ---------------------------------------------------------------------------
// backward
// ---------------------------------------------------------------------------

struct BackwardState {
  at::Tensor dout, ws, c0;  // [N, H], [N, 7H], [B, 3H]
  at::Tensor panels;        // pack_heads, transposed
  at::Tensor dA;            // [N, 4H]
  at::Tensor dh;            // [B, H] the carried gradient of h (grad_hn on entry, dh0 on return)
  at::Tensor dstate;        // [B, 3H] the same for (c, n, m)
  at::Tensor tiles;         // [threads, B*L]
};

// Step p's pass runs after the product of step p+1 (its dh), on the same items, in the same pass over
// them: each touches only the item's units of dh and dstate, so the one barrier per step is the one
// before the next product, which reads the whole head's dA of this step.
template <typename T>
void backward_steps(const Steps& s, const Heads& hd, Isa isa, int threads, const BackwardState& b) {
  const int64_t H = hd.H, D = hd.D, L = hd.L, tile_size = b.tiles.size(1);
  const T *dout = ptr<T>(b.dout), *ws = ptr<T>(b.ws), *c0 = ptr<T>(b.c0), *panels = ptr<T>(b.panels);
  T *dA = ptr<T>(b.dA), *dh = ptr<T>(b.dh), *dstate = ptr<T>(b.dstate);
  run_parallel(threads, [&](int tid, int nt, Barrier& barrier) {
    T* tile = ptr<T>(b.tiles) + tid * tile_size;
    int64_t i0, i1;
    split_range(hd.items(), tid, nt, i0, i1);
    for (int64_t p = s.count() - 1; p >= -1; --p) {
      for (int64_t item = i0; item < i1; ++item) {
        const int64_t k0 = hd.head(item) * D, u0 = hd.first_unit(item), width = hd.width(item);
        if (p + 1 < s.count()) {  // dh_prev of step p+1's rows = dA R, the item's units
          const int64_t t = s.order[p + 1], n = s.size[t], off = s.offset[t];
          Term<T> terms[4];
          for (int64_t g = 0; g < 4; ++g)
            terms[g] = Term<T>{dA + off * 4 * H + g * H + k0, 4 * H, panels + (item * 4 + g) * D * L};
          head_product(isa, L, terms, 4, n, D, 1, tile);
          for (int64_t r = 0; r < n; ++r) std::copy(tile + r * L, tile + r * L + width, dh + r * H + u0);
        }
        if (p < 0) continue;
        const int64_t t = s.order[p], off = s.offset[t];
        // each row's (c, n, m) before the step: the previous step's (c', n', m') in the workspace, or c0
        for_prev_segments<T>(s, p, hd.block(item, s.size[t]), ws, 4 * H, 7 * H, c0, 3 * H,
                             [&](const Block& sub, int64_t shift, View<const T> prev) {
          SlstmBackwardArgs<T> a;
          a.dout = cview(dout + (off + shift) * H, H);
          a.dh = cview(static_cast<const T*>(dh) + shift * H, H);
          a.dstate = view(dstate + shift * 3 * H, 3 * H);
          a.ws = cview(ws + (off + shift) * 7 * H, 7 * H);
          a.prev = prev;
          a.dA = view(dA + (off + shift) * 4 * H, 4 * H);
          pw_slstm_backward(sub, a);
        });
      }
      barrier.wait();  // the next product reads every unit's dA of this step
    }
  });
}

}  // namespace

ForwardOut slstm_sequence_forward(const Cell& cell, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                                  const LayerWeights& w, const Steps& s, bool poison, bool for_backward) {
  const int64_t H = h0.size(1), D = w.w_hh.size(1);
  const Isa isa = best_isa();
  const Heads hd(H, D, panel_width(isa, x.scalar_type()));
  const int threads = recurrence_threads(s.batch, H, D);
  ForwardState f;
  // b_hh is added in the pass, after the product, in the reference's order (folding it into the projection
  // would round differently: the reference's results, bitwise, where R h is zero)
  f.xp = linear(x, w.w_ih, w.b_ih).contiguous();
  f.b_hh = w.b_hh.defined() ? w.b_hh : at::zeros({4 * H}, x.options());
  f.out = empty_like_rows(x, {s.rows, H}, poison);
  if (for_backward) f.ws = empty_like_rows(x, {s.rows, cell.workspace_blocks() * H}, poison);
  f.h0 = h0.contiguous();
  f.state = c0.clone();
  f.tiles = empty_like_rows(x, {threads, std::max<int64_t>(s.batch, 1) * 4 * hd.L}, poison);
  const bool dbl = x.scalar_type() == at::kDouble;
  f.panels = dbl ? pack_heads<double>(w.w_hh, hd, false) : pack_heads<float>(w.w_hh, hd, false);
  if (dbl) {
    forward_steps<double>(s, hd, isa, threads, f);
  } else {
    forward_steps<float>(s, hd, isa, threads, f);
  }
  ForwardOut r;
  r.out = f.out;
  r.h_n = s.rows == 0 ? h0.clone() : frame::final_rows(f.out, s);  // new buffers: the backend's fresh_outputs
  r.c_n = f.state;  // each row's states after its own last step
  if (for_backward) r.workspace = f.ws;
  return r;
}

BackwardOut slstm_sequence_backward(const Cell& cell, const at::Tensor& grad_out, const at::Tensor& grad_hn,
                                    const at::Tensor& grad_cn, const at::Tensor& x, const at::Tensor& h0,
                                    const at::Tensor& c0, const LayerWeights& w, const Steps& s,
                                    const at::Tensor& out, const at::Tensor& workspace, bool poison, bool need_dx,
                                    bool need_dweights) {
  const int64_t H = h0.size(1), D = w.w_hh.size(1);
  const Isa isa = best_isa();
  const Heads hd(H, D, panel_width(isa, x.scalar_type()));
  const int threads = recurrence_threads(s.batch, H, D);
  BackwardState b;
  b.dout = grad_out;
  b.ws = workspace;
  b.c0 = c0.contiguous();
  b.dA = empty_like_rows(x, {s.rows, 4 * H}, poison);
  b.dh = grad_hn.clone();
  b.dstate = grad_cn.clone();
  b.tiles = empty_like_rows(x, {threads, std::max<int64_t>(s.batch, 1) * hd.L}, poison);
  const bool dbl = x.scalar_type() == at::kDouble;
  b.panels = dbl ? pack_heads<double>(w.w_hh, hd, true) : pack_heads<float>(w.w_hh, hd, true);
  if (dbl) {
    backward_steps<double>(s, hd, isa, threads, b);
  } else {
    backward_steps<float>(s, hd, isa, threads, b);
  }
  BackwardOut r;
  r.dh0 = b.dh;
  r.dc0 = b.dstate;
  if (need_dx) r.dx = linear(b.dA, w.w_ih.t(), at::Tensor());
  if (!need_dweights) return r;
  // one gradient for both sides (b_hh sits beside b_ih); dW_hh per head (frame::weight_gradients)
  const frame::GateGradients d{b.dA, b.dA, at::Tensor(), at::Tensor()};
  r.dw = frame::weight_gradients(cell, w, s, x, out, h0, c0, workspace, d,
                                 [](const at::Tensor& a, const at::Tensor& m) { return fixed_mm(a, m); });
  return r;
}

}  // namespace cpu
}  // namespace fusedrnn
