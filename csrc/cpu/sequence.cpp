// Forward and backward through time for one layer-direction.
//
// Work split (DESIGN.md section 3):
//  * the input projection Xp = X W_ih^T + b_ih (+ b_hh where it can be folded
//    in) as large GEMMs (dense_product.h): all steps at once for the gemm
//    strategy, a ~2 MiB chunk of steps at a time for the fused one (so that
//    the gate pass reads Xp from cache); the folded strategy instead adds
//    x_t W_ih^T to each step's product (fold_input_projection says when);
//  * per step, the recurrent product and ONE fused pointwise pass;
//  * backward: per step one fused pointwise pass and one product with W_hh,
//    then dW_ih, dW_hh, dX and the biases as single GEMMs over all steps.
//  * every result is bitwise the same with any number of threads: work is
//    split by output element, never a sum over threads (the GEMMs included,
//    dense_product.h); tests/test_thread_count.py.
//
// Strategies for the per-step product:
//  * gemm:  ATen's BLAS into a preallocated buffer (in fixed tiles, so the
//           bits do not depend on the thread count: dense_product.h), then the
//           pointwise pass split over hidden units.  Any cell, any dtype;
//           best at large batch, where the per-step GEMM is efficient.
//  * fused: float32 only, every cell.  One
//           parallel region for the whole sequence: each thread owns a fixed
//           set of hidden-unit blocks, keeps the packed W_hh rows of its units
//           (all gates) in its own cache, computes their product with the
//           micro-kernel of recurrent_product.h and applies the gate math on
//           the tile while it is in L1; one barrier per step.  The backward
//           does the same with W_hh^T (its units are the columns of W_hh).
//           The micro-kernel reads h_prev (dA in the backward) where the
//           previous step wrote it, row-major: no transpose between steps.
//  * folded: fused, LSTM and RNN, with x_t W_ih^T as a second term of the
//           same register tile (W_ih packed like W_hh), so no Xp buffer.
// Two dependent products per step, with a barrier between them: GRU
// reset_before (r, z first; then the n gate's product of k = r*h, and in the
// backward dk = da_n W_hn after the z, n pass) and
// LSTMP (proj_size): in the forward, after the gate pass and a barrier, each
// thread projects its share of the P output units (h = m W_hr^T, the same
// micro-kernel over packed W_hr), then the step's barrier; the backward
// mirrors it (dout + dh over the P units, a barrier, dm = that times W_hr over
// the H units, the pointwise pass, the step's barrier).
// The gate math (sigmoid, tanh: clamps and selects) vectorises only when the
// compiler may evaluate both sides of a select, which GCC refuses under its
// default -ftrapping-math (an FP exception flag is not a result: values are
// unchanged).  Set for this whole file, before any include, so the
// always_inline kernels and their callers share one set of options.
#pragma GCC optimize("no-trapping-math")

#include "sequence.h"

#include <algorithm>
#include <limits>
#include <sstream>

#include "dense_product.h"
#include "parallel.h"
#include "pointwise.h"
#include "recurrent_product.h"

namespace fusedrnn {
namespace cpu {

// ---------------------------------------------------------------------------
// ISA dispatch of the pointwise passes: each is compiled three times (AVX-512,
// AVX2, SSE2) for float, once for double.
// ---------------------------------------------------------------------------

namespace {

#define FUSEDRNN_DISPATCH(NAME, ARGS, FN)                                                                 \
  __attribute__((target("avx512f,avx512vl,avx2,fma"))) void NAME##_avx512(const Block& b, const ARGS<float>& a) { \
    FN(float)(b, a);                                                                                      \
  }                                                                                                       \
  __attribute__((target("avx2,fma"))) void NAME##_avx2(const Block& b, const ARGS<float>& a) { FN(float)(b, a); } \
  void NAME##_sse2(const Block& b, const ARGS<float>& a) { FN(float)(b, a); }                              \
  void NAME(const Block& b, const ARGS<float>& a) {                                                       \
    switch (best_isa()) {                                                                                 \
      case Isa::avx512: NAME##_avx512(b, a); break;                                                       \
      case Isa::avx2: NAME##_avx2(b, a); break;                                                           \
      default: NAME##_sse2(b, a); break;                                                                  \
    }                                                                                                     \
  }                                                                                                       \
  void NAME(const Block& b, const ARGS<double>& a) { FN(double)(b, a); }

#define LSTM_FWD(T) lstm_forward_block<T, true, false>
#define LSTM_FWD_INFERENCE(T) lstm_forward_block<T, false, false>
#define LSTM_FWD_PEEPHOLE(T) lstm_forward_block<T, true, true>
#define LSTM_FWD_INFERENCE_PEEPHOLE(T) lstm_forward_block<T, false, true>
#define GRU_FWD_AFTER(T) gru_forward_reset_after_block<T>
#define GRU_FWD_AFTER_INFERENCE(T) gru_forward_reset_after_block<T, false>
#define GRU_FWD_GATES(T) gru_forward_reset_before_gates<T>
#define GRU_FWD_STATE(T) gru_forward_reset_before_state<T>
#define RNN_FWD_TANH(T) rnn_forward_block<T, false>
#define RNN_FWD_RELU(T) rnn_forward_block<T, true>
#define LSTM_BWD(T) lstm_backward_block<T, false>
#define LSTM_BWD_PEEPHOLE(T) lstm_backward_block<T, true>
#define GRU_BWD_AFTER(T) gru_backward_reset_after_block<T>
#define GRU_BWD_ZN(T) gru_backward_reset_before_zn<T>
#define RNN_BWD_TANH(T) rnn_backward_block<T, false>
#define RNN_BWD_RELU(T) rnn_backward_block<T, true>

FUSEDRNN_DISPATCH(pw_lstm_forward, LstmForwardArgs, LSTM_FWD)
FUSEDRNN_DISPATCH(pw_lstm_forward_inference, LstmForwardArgs, LSTM_FWD_INFERENCE)
FUSEDRNN_DISPATCH(pw_lstm_forward_peephole, LstmForwardArgs, LSTM_FWD_PEEPHOLE)
FUSEDRNN_DISPATCH(pw_lstm_forward_inference_peephole, LstmForwardArgs, LSTM_FWD_INFERENCE_PEEPHOLE)
FUSEDRNN_DISPATCH(pw_gru_forward_after, GruForwardArgs, GRU_FWD_AFTER)
FUSEDRNN_DISPATCH(pw_gru_forward_after_inference, GruForwardArgs, GRU_FWD_AFTER_INFERENCE)
FUSEDRNN_DISPATCH(pw_gru_forward_gates, GruForwardArgs, GRU_FWD_GATES)
FUSEDRNN_DISPATCH(pw_gru_forward_state, GruForwardArgs, GRU_FWD_STATE)
FUSEDRNN_DISPATCH(pw_rnn_forward_tanh, RnnForwardArgs, RNN_FWD_TANH)
FUSEDRNN_DISPATCH(pw_rnn_forward_relu, RnnForwardArgs, RNN_FWD_RELU)
FUSEDRNN_DISPATCH(pw_lstm_backward, LstmBackwardArgs, LSTM_BWD)
FUSEDRNN_DISPATCH(pw_lstm_backward_peephole, LstmBackwardArgs, LSTM_BWD_PEEPHOLE)
FUSEDRNN_DISPATCH(pw_gru_backward_after, GruBackwardArgs, GRU_BWD_AFTER)
FUSEDRNN_DISPATCH(pw_gru_backward_zn, GruBackwardArgs, GRU_BWD_ZN)
FUSEDRNN_DISPATCH(pw_rnn_backward_tanh, RnnBackwardArgs, RNN_BWD_TANH)
FUSEDRNN_DISPATCH(pw_rnn_backward_relu, RnnBackwardArgs, RNN_BWD_RELU)

template <typename T>
void pw_lstm_forward_for(bool keep_workspace, bool peephole, const Block& b, const LstmForwardArgs<T>& a) {
  if (peephole) {
    keep_workspace ? pw_lstm_forward_peephole(b, a) : pw_lstm_forward_inference_peephole(b, a);
  } else {
    keep_workspace ? pw_lstm_forward(b, a) : pw_lstm_forward_inference(b, a);
  }
}
template <typename T>
void pw_lstm_backward_for(bool peephole, const Block& b, const LstmBackwardArgs<T>& a) {
  peephole ? pw_lstm_backward_peephole(b, a) : pw_lstm_backward(b, a);
}
template <typename T>
void pw_gru_forward_after_for(bool keep_workspace, const Block& b, const GruForwardArgs<T>& a) {
  keep_workspace ? pw_gru_forward_after(b, a) : pw_gru_forward_after_inference(b, a);
}
template <typename T>
void pw_rnn_forward(bool relu, const Block& b, const RnnForwardArgs<T>& a) {
  relu ? pw_rnn_forward_relu(b, a) : pw_rnn_forward_tanh(b, a);
}
template <typename T>
void pw_rnn_backward(bool relu, const Block& b, const RnnBackwardArgs<T>& a) {
  relu ? pw_rnn_backward_relu(b, a) : pw_rnn_backward_tanh(b, a);
}

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

template <typename T>
View<T> view(T* p, int64_t rs) {
  View<T> v;
  v.p = p;
  v.rs = rs;
  return v;
}
template <typename T>
View<const T> cview(const T* p, int64_t rs) {
  return view<const T>(p, rs);
}
template <typename T>
View<T> shifted(View<T> v, int64_t rows) {
  v.p += rows * v.rs;
  return v;
}

template <typename T>
T* ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

at::Tensor empty_like_rows(const at::Tensor& like, at::IntArrayRef shape, bool poison) {
  at::Tensor t = at::empty(shape, like.options());
  if (poison) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

// Bias folded into the input projection: b_ih + b_hh, except the GRU n-gate's
// hidden bias, which sits inside r*(W_hn h + b_hn) (reset_after) or after the
// n-gate product (reset_before) and is added in the pointwise pass.
at::Tensor folded_bias(const Cell& cell, const LayerTensors& w, int64_t H) {
  if (!w.b_ih.defined() && !w.b_hh.defined()) return at::Tensor();
  at::Tensor bias = w.b_ih.defined() ? w.b_ih.clone() : at::zeros_like(w.b_hh);
  if (w.b_hh.defined()) {
    const int64_t folded = cell.family == Family::gru ? 2 * H : bias.size(0);
    bias.narrow(0, 0, folded).add_(w.b_hh.narrow(0, 0, folded));
  }
  return bias;
}

at::Tensor input_projection(const Cell& cell, const at::Tensor& x, const LayerTensors& w, int64_t H) {
  return linear(x, w.w_ih, folded_bias(cell, w, H));
}

at::Tensor hidden_bias_n(const LayerTensors& w, int64_t H, const at::TensorOptions& opts) {
  return w.b_hh.defined() ? w.b_hh.narrow(0, 2 * H, H).contiguous() : at::zeros({H}, opts);
}

// The pointwise passes read the hidden-side product relative to their block's
// first unit (the fused kernels' tile holds only that block); a [rows, G*H]
// GEMM result holds every unit, so a block starting at u0 gets it shifted.
template <typename Args>
Args with_product_at_unit(Args a, int64_t u0) {
  a.hp.p += u0;
  return a;
}

// Rows [0, n) of a product tile (row stride ld_tile), their first `width`
// units, into dst (row stride ld_dst): where a second product's units go.
void copy_tile_rows(const float* tile, int64_t ld_tile, int64_t n, int64_t width, float* dst, int64_t ld_dst) {
  for (int64_t b = 0; b < n; ++b) std::copy(tile + b * ld_tile, tile + b * ld_tile + width, dst + b * ld_dst);
}

// Split H units over the threads in multiples of `align`, run fn(u0, u1) on each.
template <typename F>
void parallel_units(int64_t H, int64_t work, int64_t align, const F& fn) {
  const int nthreads = work >= 16384 ? max_threads() : 1;
  const int64_t chunks = (H + align - 1) / align;
  run_parallel(nthreads, [&](int tid, int nt, Barrier&) {
    int64_t c0, c1;
    split_range(chunks, tid, nt, c0, c1);
    const int64_t u0 = c0 * align, u1 = std::min(H, c1 * align);
    if (u0 < u1) fn(u0, u1);
  });
}

// The rows of step t whose previous state is the previous processed step's
// row (the first `carried`), and those that start from the initial state.
struct PrevSplit {
  int64_t carried;      // rows [0, carried) come from step `prev`
  int64_t prev_offset;  // first row of that step, or -1 at the first step
};
PrevSplit prev_split(const Steps& s, int64_t p) {
  const int64_t t = s.order[p];
  if (p == 0) return {0, -1};
  const int64_t tp = s.order[p - 1];
  return {std::min(s.size[t], s.size[tp]), s.offset[tp]};
}

// Calls fn(sub_block, row_shift, prev_view) for the rows of step p whose
// previous state is row `carried` of the previous step and for those that
// start from the initial state (only in the reverse direction of packed input).
template <typename T, typename F>
void for_prev_segments(const Steps& s, int64_t p, const Block& blk, const T* prev_rows, int64_t prev_col,
                       int64_t prev_ld, const T* initial, int64_t init_ld, const F& fn) {
  const PrevSplit ps = prev_split(s, p);
  const int64_t n = blk.rows;
  if (ps.carried > 0) {
    Block sub = blk;
    sub.rows = ps.carried;
    fn(sub, int64_t(0), cview(prev_rows + ps.prev_offset * prev_ld + prev_col, prev_ld));
  }
  if (ps.carried < n) {
    Block sub = blk;
    sub.rows = n - ps.carried;
    fn(sub, ps.carried, cview(initial + ps.carried * init_ld, init_ld));
  }
}

// Each row's state from before its step: rows [N, D] -> [N, D] (the reference's previous_states).
// Row ranges are copied as maximal runs (contiguous in both source and
// destination): with padded input that is two copies, not one per step.
at::Tensor previous_rows(const at::Tensor& rows, const at::Tensor& initial, const Steps& s) {
  at::Tensor prev = at::empty({s.rows, rows.size(1)}, rows.options());
  struct Run {
    const at::Tensor* src;
    int64_t src0, dst0, n;
  } run{nullptr, 0, 0, 0};
  const auto flush = [&] {
    if (run.n > 0) prev.narrow(0, run.dst0, run.n).copy_(run.src->narrow(0, run.src0, run.n));
  };
  const auto add = [&](const at::Tensor& src, int64_t src0, int64_t dst0, int64_t n) {
    if (n == 0) return;
    if (run.src == &src && run.src0 + run.n == src0 && run.dst0 + run.n == dst0) {  // forward direction
      run.n += n;
      return;
    }
    if (run.src == &src && src0 + n == run.src0 && dst0 + n == run.dst0) {  // reverse direction
      run = Run{&src, src0, dst0, run.n + n};
      return;
    }
    flush();
    run = Run{&src, src0, dst0, n};
  };
  for (int64_t p = 0; p < s.count(); ++p) {
    const int64_t t = s.order[p], n = s.size[t];
    const PrevSplit ps = prev_split(s, p);
    add(rows, ps.prev_offset, s.offset[t], ps.carried);
    add(initial, ps.carried, s.offset[t] + ps.carried, n - ps.carried);
  }
  flush();
  return prev;
}

// Each sequence's last row in processing order (its final state).
at::Tensor last_rows(const Steps& s) {
  std::vector<int64_t> last(s.batch, 0);
  for (int64_t p = 0; p < s.count(); ++p) {
    const int64_t t = s.order[p];
    for (int64_t b = 0; b < s.size[t]; ++b) last[b] = s.offset[t] + b;
  }
  return at::tensor(last, at::TensorOptions().dtype(at::kLong));
}

// Threads for the fused region: one per unit block at most, and one in all
// for tiny steps, where a barrier per step (worse: a descheduled partner on a
// busy machine) costs more than the step's product of `step_macs` MACs.
int threads_for_step(int64_t step_macs, int64_t blocks) {
  if (step_macs < (int64_t(1) << 17)) return 1;
  return static_cast<int>(std::min<int64_t>(max_threads(), blocks));
}

// Whether the fused forward computes the input projection inside its per-step
// product ([x_t, h_{t-1}] times [W_ih; W_hh]^T, two terms of one register
// tile) rather than as a GEMM over a chunk of steps: the micro-kernel runs
// near the core's FMA peak (113 of 116 GFLOP/s per core measured here), the
// GEMM at 80-87% of it, and the gate pass then reads no projected-input
// buffer.  But each step then streams W_ih's panels too, so only while both
// packed weights stay in the last-level cache and a step has rows enough to
// reuse them.  Measured (LSTM inference, 2 threads, Zen 4 with 32 MiB L3),
// folded vs chunked GEMM: 7-17% faster from B = 4 with up to 18 MiB of
// panels, and 4% at B = 2 with I <= H; 14% slower at B = 1, 30% slower at
// B = 2 with I = 4096, H = 128 (the input product, nearly all the work, turns
// from a compute-bound GEMM into a per-step stream of W_ih); 7-13% slower at
// B = 16..32 with 24-48 MiB of panels; even at B = 64 with 32 MiB.  Not for
// the GRU, whose n gate keeps the input and hidden products apart (r scales
// only the hidden one).
bool fold_input_projection(const Cell& cell, int64_t batch, int64_t input_size, int64_t hidden_size,
                           int64_t state_size) {
  constexpr int64_t kMaxPanelBytes = int64_t(20) << 20;
  if (cell.family == Family::gru || batch < 2) return false;
  if (batch < 4 && input_size > hidden_size) return false;
  const int64_t panel_bytes = cell.gates() * hidden_size * (input_size + state_size) * int64_t(sizeof(float));
  return panel_bytes <= kMaxPanelBytes;
}

// The fused kernels are float32 (float16/bfloat16 run in float32 inside);
// double takes the gemm strategy.
bool fused_supported(const Cell&, at::ScalarType dtype) {
  return dtype == at::kFloat;
}

}  // namespace

// ---------------------------------------------------------------------------

Steps::Steps(const std::vector<int64_t>& sizes, bool reverse) : size(sizes) {
  offset.resize(size.size());
  for (size_t t = 0; t < size.size(); ++t) {
    offset[t] = rows;
    rows += size[t];
  }
  batch = size.empty() ? 0 : size[0];
  order.resize(size.size());
  for (size_t i = 0; i < size.size(); ++i) order[i] = reverse ? static_cast<int64_t>(size.size() - 1 - i) : static_cast<int64_t>(i);
}

Strategy choose_strategy(const Cell& cell, const LayerTensors& w, const Steps& steps, at::ScalarType dtype) {
  if (!fused_supported(cell, dtype)) return Strategy::gemm;
  // One step (a cell call): packing W_hh would cost as much as the step.
  if (steps.count() < 2) return Strategy::gemm;
  // Measured on the issue-4 shapes (B = 8, 32, 64; 2 threads, AVX-512): the
  // fused kernel beat the per-step MKL GEMM at all of them (2.7x at B=64,
  // H=1024 for LSTM), so no batch cut-off yet.
  const int64_t H = w.w_hh.size(0) / cell.gates();
  return fold_input_projection(cell, steps.batch, w.w_ih.size(1), H, w.w_hh.size(1)) ? Strategy::folded
                                                                                     : Strategy::fused;
}

// The strategy to run: `automatic` resolved, a forced one checked.
static Strategy resolve_strategy(Strategy strategy, const Cell& cell, const LayerTensors& w, const Steps& s,
                                 at::ScalarType dtype) {
  if (strategy == Strategy::automatic) return choose_strategy(cell, w, s, dtype);
  TORCH_CHECK(strategy == Strategy::gemm || fused_supported(cell, dtype),
              "fusedrnn_C: the fused strategies run float32 only (float16/bfloat16 are computed in float32)");
  TORCH_CHECK(strategy != Strategy::folded || cell.family != Family::gru,
              "fusedrnn_C: the folded strategy supports LSTM and RNN only (the GRU's n gate keeps its input product "
              "apart)");
  return strategy;
}

std::string describe() {
  std::ostringstream s;
  s << "isa=" << isa_name(best_isa()) << " threads=" << max_threads() << " linear=" << linear_library();
  return s.str();
}

// ===========================================================================
// forward
// ===========================================================================

namespace {

struct ForwardBuffers {
  at::Tensor xp, out, ws, h_state, c_state, peep, b_hn;
  int64_t H, Hout, G, W;
  // Without a backward to feed (inference), the workspace is one step's rows,
  // rewritten every step: the passes still use it within the step (GRU
  // reset_before reads r*h back), but nothing streams T*B*W values to memory.
  bool keep_workspace = true;
  int64_t ws_row(int64_t step_offset) const { return keep_workspace ? step_offset : 0; }
};

template <typename T>
void gemm_forward(const Cell& cell, const LayerTensors& w, const Steps& s, ForwardBuffers& f, bool poison) {
  const int64_t H = f.H, Hout = f.Hout, G = f.G, GH = G * H, W = f.W, B = s.batch;
  const bool reset_before = cell.family == Family::gru && !cell.reset_after;
  at::Tensor hp = empty_like_rows(f.xp, {B, reset_before ? 2 * H : GH}, poison);
  at::Tensor hp_n = reset_before ? empty_like_rows(f.xp, {B, H}, poison) : at::Tensor();
  at::Tensor mbuf = w.w_proj.defined() ? empty_like_rows(f.xp, {B, H}, poison) : at::Tensor();
  at::Tensor w_rec = reset_before ? w.w_hh.narrow(0, 0, 2 * H) : w.w_hh;
  const T* xp = ptr<T>(f.xp);
  T* out = ptr<T>(f.out);
  T* ws = ptr<T>(f.ws);
  const T* hs = ptr<T>(f.h_state);
  for (int64_t p = 0; p < s.count(); ++p) {
    const int64_t t = s.order[p], n = s.size[t], off = s.offset[t];
    at::Tensor h_prev = f.h_state.narrow(0, 0, n);
    at::Tensor hp_rows = hp.narrow(0, 0, n);
    fixed_mm_out(hp_rows, h_prev, w_rec.t());
    const T* hpp = ptr<T>(hp);
    if (cell.family == Family::lstm) {
      LstmForwardArgs<T> a;
      a.xp = cview(xp + off * GH, GH);
      a.hp = cview(hpp, GH);
      a.hp_gs = H;
      a.c = view(ptr<T>(f.c_state), H);
      a.peep = ptr<T>(f.peep);
      a.ws = view(ws + f.ws_row(off) * W, W);
      a.m = mbuf.defined() ? view(ptr<T>(mbuf), H) : view(out + off * Hout, Hout);
      parallel_units(H, n * GH, 16, [&](int64_t u0, int64_t u1) {
        pw_lstm_forward_for(f.keep_workspace, w.w_peep.defined(), Block{n, u0, u1, H}, with_product_at_unit(a, u0));
      });
      if (mbuf.defined()) {
        at::Tensor out_rows = f.out.narrow(0, off, n);
        fixed_mm_out(out_rows, mbuf.narrow(0, 0, n), w.w_proj.t());
      }
    } else if (cell.family == Family::gru) {
      GruForwardArgs<T> a;
      a.xp = cview(xp + off * GH, GH);
      a.b_hn = ptr<T>(f.b_hn);
      a.h_prev = cview(hs, Hout);
      a.ws = view(ws + f.ws_row(off) * W, W);
      a.h = view(out + off * Hout, Hout);
      if (cell.reset_after) {
        a.hp = cview(hpp, GH);
        a.hp_gs = H;
        parallel_units(H, n * GH, 16, [&](int64_t u0, int64_t u1) {
          pw_gru_forward_after_for(f.keep_workspace, Block{n, u0, u1, H}, with_product_at_unit(a, u0));
        });
      } else {
        a.hp = cview(hpp, 2 * H);
        a.hp_gs = H;
        parallel_units(H, n * GH, 16, [&](int64_t u0, int64_t u1) {
          pw_gru_forward_gates(Block{n, u0, u1, H}, with_product_at_unit(a, u0));
        });
        at::Tensor hp_n_rows = hp_n.narrow(0, 0, n);
        fixed_mm_out(hp_n_rows, f.ws.narrow(0, f.ws_row(off), n).narrow(1, 3 * H, H),
                     w.w_hh.narrow(0, 2 * H, H).t());
        a.hp = cview(ptr<T>(hp_n), H);
        parallel_units(H, n * GH, 16, [&](int64_t u0, int64_t u1) {
          pw_gru_forward_state(Block{n, u0, u1, H}, with_product_at_unit(a, u0));
        });
      }
    } else {
      RnnForwardArgs<T> a;
      a.xp = cview(xp + off * GH, GH);
      a.hp = cview(hpp, GH);
      a.h = view(out + off * Hout, Hout);
      parallel_units(H, n * GH, 16, [&](int64_t u0, int64_t u1) {
        pw_rnn_forward(cell.relu, Block{n, u0, u1, H}, with_product_at_unit(a, u0));
      });
    }
    h_prev.copy_(f.out.narrow(0, off, n));  // after the pass, which may read h_prev
  }
}

// `fold`: the input projection inside the per-step product (Strategy::folded).
void fused_forward(const Cell& cell, const LayerTensors& w, const Steps& s, ForwardBuffers& f, const at::Tensor& x,
                   const at::Tensor& h0, bool fold) {
  // S: the width of the recurrent state (P with an LSTM projection, else H)
  const int64_t H = f.H, S = f.Hout, G = f.G, GH = G * H, W = f.W, B = s.batch, I = x.size(1);
  const Isa isa = best_isa();
  const int64_t L = panel_lanes(isa);
  const int64_t nblk = (H + L - 1) / L;
  // GRU reset_before: the step's first product covers the r and z gates only;
  // the n gate's, k W_hn^T with k = r*h, follows once all of k is written (a
  // second barrier)
  const bool reset_before = cell.family == Family::gru && !cell.reset_after;
  const int64_t G1 = reset_before ? 2 : G;  // gates of the first product
  const at::Tensor panels = pack_panels(reset_before ? w.w_hh.narrow(0, 0, 2 * H) : w.w_hh, G1, L, false);
  const at::Tensor n_panels = reset_before ? pack_panels(w.w_hh.narrow(0, 2 * H, H), 1, L, false) : at::Tensor();
  const float* npan = ptr<float>(n_panels);
  // LSTMP: h = m W_hr^T, a second product per step over the P output units,
  // after all of m is written (a second barrier); m lives in a [B, H] scratch
  const bool project = w.w_proj.defined();
  const int64_t nblk_p = (S + L - 1) / L;
  const at::Tensor proj_panels = project ? pack_panels(w.w_proj, 1, L, false) : at::Tensor();
  const float* ppan = ptr<float>(proj_panels);
  const at::Tensor m_rows = project ? at::empty({B, H}, x.options()) : at::Tensor();
  float* mbuf = ptr<float>(m_rows);
  const float* pan = ptr<float>(panels);
  const float* h0p = ptr<float>(h0);
  const float* xs = ptr<float>(x);
  float* out = ptr<float>(f.out);
  float* ws = ptr<float>(f.ws);
  const int64_t T = s.count();
  const int nthreads = threads_for_step(B * G * H * S, nblk);
  at::Tensor bias = folded_bias(cell, w, H);
  const at::Tensor x_panels = fold ? pack_panels(w.w_ih, G, L, false) : at::Tensor();
  const float* xpan = ptr<float>(x_panels);
  if (fold && !bias.defined()) bias = at::zeros({GH}, x.options());
  // steps [p0, p1); unfolded, their input projection rows are xp[(off - r0) * GH ...]
  const auto fused_forward_steps = [&](int64_t p0, int64_t p1, const float* xp, int64_t r0) {
    run_parallel(nthreads, [&](int tid, int nt, Barrier& barrier) {
      int64_t blk0, blk1;
      split_range(nblk, tid, nt, blk0, blk1);
      // RNN (one gate): two adjacent unit blocks per product, whose panels are
      // adjacent, so the micro-kernel runs with C = 2 panels (2 panel loads per
      // 12 broadcasts instead of 1 per 16); tile row = the units of both blocks.
      const int64_t per_product = G == 1 ? 2 : 1;
      std::vector<float> tile(static_cast<size_t>(B * std::max<int64_t>(G * per_product, 2) * L));
      int64_t pblk0 = 0, pblk1 = 0;
      split_range(nblk_p, tid, nt, pblk0, pblk1);
      for (int64_t p = p0; p < p1; ++p) {
        const int64_t t = s.order[p], n = s.size[t], off = s.offset[t];
        // the gate passes add "xp" to the tile: the projected input rows, or
        // folded, the bias alone (one row, stride 0)
        const View<const float> xp_rows = fold ? cview(ptr<float>(bias), 0) : cview(xp + (off - r0) * GH, GH);
        // a GRU pass's arguments for the rows from `shift` (h_prev's segment) and its product tile
        const auto gru_args = [&](int64_t shift, View<const float> h_prev, View<const float> hp) {
          GruForwardArgs<float> a;
          a.xp = shifted(xp_rows, shift);
          a.hp = hp;
          a.hp_gs = L;
          a.b_hn = ptr<float>(f.b_hn);
          a.h_prev = h_prev;
          a.ws = view(ws + (f.ws_row(off) + shift) * W, W);
          a.h = view(out + (off + shift) * H, H);
          return a;
        };
        for (int64_t blk = blk0; blk < blk1; blk += per_product) {
          const int64_t nb = std::min(per_product, blk1 - blk);
          const int64_t u0 = blk * L, u1 = std::min(H, (blk + nb) * L);
          const Block block{n, u0, u1, H};
          // the product's left operands: folded, x_t's rows; then h_prev, read
          // where it lies: the previous step's output rows, then (reverse
          // direction of packed input) h0's rows for the sequences that start
          // at this step
          for_prev_segments<float>(s, p, block, out, 0, S, h0p, S,
                                   [&](const Block& sub, int64_t shift, View<const float> h_prev) {
            ProductTerm terms[2];
            int nterms = 0;
            if (fold) terms[nterms++] = ProductTerm{xs + (off + shift) * I, I, I, xpan + blk * G * I * L};
            terms[nterms++] = ProductTerm{h_prev.p, h_prev.rs, S, pan + blk * G1 * S * L};
            product_tile(isa, terms, nterms, sub.rows, G1 * nb, tile.data() + shift * G1 * L * nb);
          });
          if (cell.family == Family::lstm) {
            LstmForwardArgs<float> a;
            a.xp = xp_rows;
            a.hp = cview(tile.data(), G * L);
            a.hp_gs = L;
            a.c = view(ptr<float>(f.c_state), H);
            a.peep = ptr<float>(f.peep);
            a.ws = view(ws + f.ws_row(off) * W, W);
            a.m = project ? view(mbuf, H) : view(out + off * H, H);
            pw_lstm_forward_for(f.keep_workspace, w.w_peep.defined(), block, a);
          } else if (cell.family == Family::gru) {
            for_prev_segments<float>(s, p, block, out, 0, H, h0p, H,
                                     [&](const Block& sub, int64_t shift, View<const float> h_prev) {
              const GruForwardArgs<float> a = gru_args(shift, h_prev, cview(tile.data() + shift * G1 * L, G1 * L));
              if (reset_before) {
                pw_gru_forward_gates(sub, a);
              } else {
                pw_gru_forward_after_for(f.keep_workspace, sub, a);
              }
            });
          } else {
            RnnForwardArgs<float> a;
            a.xp = xp_rows;
            a.hp = cview(tile.data(), nb * L);
            a.h = view(out + off * H, H);
            pw_rnn_forward(cell.relu, block, a);
          }
        }
        if (reset_before) {
          barrier.wait();  // all of k
          const float* k_rows = ws + f.ws_row(off) * W + 3 * H;
          for (int64_t blk = blk0; blk < blk1; ++blk) {
            const int64_t u0 = blk * L, u1 = std::min(H, u0 + L);
            product_tile(isa, k_rows, W, n, H, npan + blk * H * L, 1, tile.data());
            for_prev_segments<float>(s, p, Block{n, u0, u1, H}, out, 0, H, h0p, H,
                                     [&](const Block& sub, int64_t shift, View<const float> h_prev) {
              pw_gru_forward_state(sub, gru_args(shift, h_prev, cview(tile.data() + shift * L, L)));
            });
          }
        }
        if (project) {
          barrier.wait();  // all of m
          for (int64_t pb = pblk0; pb < pblk1; pb += 2) {
            const int64_t nb = std::min<int64_t>(2, pblk1 - pb), q0 = pb * L, q1 = std::min(S, (pb + nb) * L);
            product_tile(isa, mbuf, H, n, H, ppan + pb * H * L, nb, tile.data());
            copy_tile_rows(tile.data(), nb * L, n, q1 - q0, out + off * S + q0, S);
          }
        }
        barrier.wait();
      }
    });
  };
  if (fold) {
    fused_forward_steps(0, T, nullptr, 0);
    return;
  }
  // Otherwise the input projection runs a chunk of steps at a time, right
  // before their recurrence, into buffers of about 2 MiB: the pointwise passes
  // then read it from cache rather than DRAM, and no [T*B, G*H] buffer is
  // allocated (and page-faulted in) per call.  A chunk is whole steps, whose
  // rows are contiguous in x in either direction.
  const int64_t chunk_rows = std::max<int64_t>(256, (int64_t(2) << 20) / (GH * int64_t(sizeof(float))));
  for (int64_t p0 = 0, p1 = 0; p0 < T; p0 = p1) {
    int64_t rows = 0;
    do {
      rows += s.size[s.order[p1++]];
    } while (p1 < T && rows + s.size[s.order[p1]] <= chunk_rows);
    const int64_t r0 = std::min(s.offset[s.order[p0]], s.offset[s.order[p1 - 1]]);
    const at::Tensor xp_chunk = linear(x.narrow(0, r0, rows), w.w_ih, bias);
    fused_forward_steps(p0, p1, ptr<float>(xp_chunk), r0);
  }
}

}  // namespace

ForwardOut sequence_forward(const Cell& cell, const at::Tensor& x, const at::Tensor& h0, const at::Tensor& c0,
                            const LayerTensors& w, const Steps& s, Strategy strategy, bool poison,
                            bool for_backward) {
  ForwardBuffers f;
  f.keep_workspace = for_backward;
  f.G = cell.gates();
  f.H = w.w_hh.size(0) / f.G;
  f.Hout = w.w_hh.size(1);
  f.W = cell.workspace_blocks() * f.H;
  const int64_t ws_rows = for_backward ? s.rows : s.batch;
  if (poison) {  // the kernels must write every element they hand back
    f.out = empty_like_rows(x, {s.rows, f.Hout}, true);
    f.ws = empty_like_rows(x, {ws_rows, f.W}, true);
  } else {
    f.out = at::empty({s.rows, f.Hout}, x.options());
    f.ws = at::empty({ws_rows, f.W}, x.options());
  }
  f.h_state = h0.clone();
  if (cell.family == Family::lstm) {
    f.c_state = c0.clone();
    f.peep = w.w_peep.defined() ? w.w_peep : at::zeros({3 * f.H}, x.options());
  }
  if (cell.family == Family::gru) f.b_hn = hidden_bias_n(w, f.H, x.options());
  strategy = resolve_strategy(strategy, cell, w, s, x.scalar_type());
  ForwardOut r;
  if (strategy != Strategy::gemm) {
    fused_forward(cell, w, s, f, x, h0, strategy == Strategy::folded);
    r.h_n = f.out.index_select(0, last_rows(s));
  } else {
    f.xp = input_projection(cell, x, w, f.H);
    if (x.scalar_type() == at::kDouble) {
      gemm_forward<double>(cell, w, s, f, poison);
    } else {
      gemm_forward<float>(cell, w, s, f, poison);
    }
    r.h_n = f.h_state;
  }
  if (s.rows == 0) r.h_n = h0.clone();
  r.out = f.out;
  r.c_n = f.c_state;
  r.workspace = for_backward ? f.ws : at::Tensor();
  return r;
}

// ===========================================================================
// backward
// ===========================================================================

namespace {

struct BackwardBuffers {
  at::Tensor dout, ws, out, h0, c0;
  at::Tensor dA_x, dA_h, dh_state, dc_state, dh_direct, dpeep, peep, dH_total;
  bool peephole = false;
  int64_t H, Hout, G, W;
};

// The pointwise backward of step p for rows [0, n) and units [u0, u1); the
// results go to the row-major buffers of BackwardBuffers.
template <typename T>
void step_backward_pointwise(const Cell& cell, const Steps& s, int64_t p, BackwardBuffers& bb, const Block& blk,
                             View<const T> dh_a, View<const T> dh_b) {
  const int64_t H = bb.H, GH = bb.G * H, W = bb.W, off = s.offset[s.order[p]];
  const T* ws = ptr<T>(bb.ws) + off * W;
  if (cell.family == Family::lstm) {
    for_prev_segments<T>(s, p, blk, ptr<T>(bb.ws), 4 * H, W, ptr<T>(bb.c0), H,
                         [&](const Block& sub, int64_t shift, View<const T> c_prev) {
      LstmBackwardArgs<T> a;
      a.dm_a = shifted(dh_a, shift);
      a.dm_b = shifted(dh_b, shift);
      a.dc = shifted(view(ptr<T>(bb.dc_state), H), shift);
      a.ws = cview(ws + shift * W, W);
      a.c_prev = c_prev;
      a.peep = ptr<T>(bb.peep);
      a.dpeep = ptr<T>(bb.dpeep);
      a.dA = view(ptr<T>(bb.dA_x) + (off + shift) * GH, GH);
      pw_lstm_backward_for(bb.peephole, sub, a);
    });
  } else if (cell.family == Family::gru) {
    for_prev_segments<T>(s, p, blk, ptr<T>(bb.out), 0, bb.Hout, ptr<T>(bb.h0), bb.Hout,
                         [&](const Block& sub, int64_t shift, View<const T> h_prev) {
      GruBackwardArgs<T> a;
      a.dh_a = shifted(dh_a, shift);
      a.dh_b = shifted(dh_b, shift);
      a.ws = cview(ws + shift * W, W);
      a.h_prev = h_prev;
      a.dA_x = view(ptr<T>(bb.dA_x) + (off + shift) * GH, GH);
      a.dA_h = view(ptr<T>(bb.dA_h) + (off + shift) * GH, GH);
      a.dh_direct = shifted(view(ptr<T>(bb.dh_direct), H), shift);
      if (cell.reset_after) {
        pw_gru_backward_after(sub, a);
      } else {
        pw_gru_backward_zn(sub, a);
      }
    });
  } else {
    RnnBackwardArgs<T> a;
    a.dh_a = dh_a;
    a.dh_b = dh_b;
    a.h = cview(ptr<T>(bb.out) + off * bb.Hout, bb.Hout);
    a.dA = view(ptr<T>(bb.dA_x) + off * GH, GH);
    pw_rnn_backward(cell.relu, blk, a);
  }
}

// GRU reset_before, once dk = da_n W_hn is known: the r gate's gradient (dA_x's
// r block) and dh_direct += dk*r.  Row b, unit u of dk at dk_rows.row(b)[u].
template <typename T>
void step_backward_reset_gate(const Steps& s, int64_t p, BackwardBuffers& bb, const Block& blk,
                              View<const T> dk_rows) {
  const int64_t H = bb.H, GH = bb.G * H, off = s.offset[s.order[p]];
  const T* ws = ptr<T>(bb.ws) + off * bb.W;
  for_prev_segments<T>(s, p, blk, ptr<T>(bb.out), 0, bb.Hout, ptr<T>(bb.h0), bb.Hout,
                       [&](const Block& sub, int64_t shift, View<const T> h_prev) {
    GruBackwardArgs<T> a;
    a.ws = cview(ws + shift * bb.W, bb.W);
    a.h_prev = h_prev;
    a.dA_x = view(ptr<T>(bb.dA_x) + (off + shift) * GH, GH);
    a.dh_direct = shifted(view(ptr<T>(bb.dh_direct), H), shift);
    gru_backward_reset_before_r<T>(sub, a, shifted(dk_rows, shift));
  });
}

template <typename T>
void gemm_backward(const Cell& cell, const LayerTensors& w, const Steps& s, BackwardBuffers& bb, bool poison) {
  const int64_t H = bb.H, Hout = bb.Hout, G = bb.G, GH = G * H, B = s.batch;
  const bool proj = w.w_proj.defined();
  at::Tensor dm = proj ? empty_like_rows(bb.ws, {B, H}, poison) : at::Tensor();
  at::Tensor zeros_bh = proj ? at::zeros({B, H}, bb.ws.options()) : at::Tensor();
  at::Tensor dk = (cell.family == Family::gru && !cell.reset_after) ? empty_like_rows(bb.ws, {B, H}, poison) : at::Tensor();
  const T* dout = ptr<T>(bb.dout);
  for (int64_t p = s.count() - 1; p >= 0; --p) {
    const int64_t t = s.order[p], n = s.size[t], off = s.offset[t];
    at::Tensor dh_rows = bb.dh_state.narrow(0, 0, n);
    View<const T> dh_a = cview(dout + off * Hout, Hout), dh_b = cview(ptr<T>(bb.dh_state), Hout);
    if (proj) {  // dm = (dout + dh) W_proj
      at::Tensor total = bb.dH_total.narrow(0, off, n);
      at::add_out(total, bb.dout.narrow(0, off, n), dh_rows);
      at::Tensor dm_rows = dm.narrow(0, 0, n);
      fixed_mm_out(dm_rows, total, w.w_proj);
      dh_a = cview(ptr<T>(dm), H);
      dh_b = cview(ptr<T>(zeros_bh), H);
    }
    auto pointwise = [&](int64_t u0, int64_t u1) {
      step_backward_pointwise<T>(cell, s, p, bb, Block{n, u0, u1, H}, dh_a, dh_b);
    };
    parallel_units(H, n * GH, 16, pointwise);
    at::Tensor dA_x_rows = bb.dA_x.narrow(0, off, n);
    if (cell.family == Family::gru) {
      at::Tensor direct = bb.dh_direct.narrow(0, 0, n);
      if (cell.reset_after) {
        fixed_mm_out(dh_rows, bb.dA_h.narrow(0, off, n), w.w_hh, direct);
      } else {
        // dk = da_n W_hn, then the r-gate gradient and dh += dk*r, then the r,z product
        at::Tensor dk_rows = dk.narrow(0, 0, n);
        fixed_mm_out(dk_rows, dA_x_rows.narrow(1, 2 * H, H), w.w_hh.narrow(0, 2 * H, H));
        parallel_units(H, n * H, 16, [&](int64_t u0, int64_t u1) {
          step_backward_reset_gate<T>(s, p, bb, Block{n, u0, u1, H}, cview(ptr<T>(dk), H));
        });
        fixed_mm_out(dh_rows, dA_x_rows.narrow(1, 0, 2 * H), w.w_hh.narrow(0, 0, 2 * H), direct);
      }
    } else {
      fixed_mm_out(dh_rows, dA_x_rows, w.w_hh);
    }
  }
}

void fused_backward(const Cell& cell, const LayerTensors& w, const Steps& s, BackwardBuffers& bb) {
  // S: the width of the recurrent state (P with an LSTM projection, else H)
  const int64_t H = bb.H, S = bb.Hout, G = bb.G, GH = G * H, B = s.batch;
  const Isa isa = best_isa();
  const int64_t L = panel_lanes(isa);
  const int64_t nblk = (H + L - 1) / L, nblk_s = (S + L - 1) / L;
  // dh_prev = dA W_hh: the units of the product are W_hh's S columns.  GRU
  // reset_before: only the r, z rows (K = 2H; the n gate reaches h through
  // dk*r, in dh_direct), and dk = da_n W_hn over the H units once all of the
  // step's da_n is written (a second barrier)
  const bool reset_before = cell.family == Family::gru && !cell.reset_after;
  const int64_t K = reset_before ? 2 * H : GH;
  const at::Tensor panels = pack_panels(reset_before ? w.w_hh.narrow(0, 0, 2 * H) : w.w_hh, 1, L, true);
  const float* pan = ptr<float>(panels);
  const at::Tensor n_panels = reset_before ? pack_panels(w.w_hh.narrow(0, 2 * H, H), 1, L, true) : at::Tensor();
  const float* npan = ptr<float>(n_panels);
  // LSTMP: dm = (dout + dh) W_hr, units the H columns of W_hr, after all of
  // the step's dout + dh (kept in dH_total for dW_hr) is written
  const bool project = w.w_proj.defined();
  const at::Tensor proj_panels = project ? pack_panels(w.w_proj, 1, L, true) : at::Tensor();
  const float* ppan = ptr<float>(proj_panels);
  const at::Tensor dm_rows = project ? at::empty({B, H}, bb.dh_state.options()) : at::Tensor();
  const at::Tensor zero_row = project ? at::zeros({H}, bb.dh_state.options()) : at::Tensor();
  float* dm = ptr<float>(dm_rows);
  float* dH_total = ptr<float>(bb.dH_total);
  float* dh = ptr<float>(bb.dh_state);
  const float* direct = ptr<float>(bb.dh_direct);
  const float* dout = ptr<float>(bb.dout);
  const float* dA_h = ptr<float>(bb.dA_h);
  const int64_t T = s.count();
  const int nthreads = threads_for_step(B * G * H * S, std::max(nblk, nblk_s));
  run_parallel(nthreads, [&](int tid, int nt, Barrier& barrier) {
    int64_t blk0, blk1, sblk0, sblk1;
    split_range(nblk, tid, nt, blk0, blk1);
    split_range(nblk_s, tid, nt, sblk0, sblk1);
    // Unit blocks go two at a time through the product: adjacent blocks'
    // panels are adjacent, so they read as one product of C = 2 panels, whose
    // micro-kernel loads 2 panel vectors per 12 broadcasts instead of 1 per 16.
    constexpr int64_t kPair = 2;
    std::vector<float> tile(static_cast<size_t>(B * kPair * L));
    // dh[b, u] for the rows of the step processed before (in backward order),
    // state units of the `nb` blocks from `blk`: the product of that step's dA
    // rows (where the pointwise pass wrote them) with W_hh
    auto carry = [&](int64_t q, int64_t blk, int64_t nb) {
      const int64_t n_prev = s.size[s.order[q]];
      const int64_t u0 = blk * L, u1 = std::min(S, (blk + nb) * L), ld = nb * L;
      product_tile(isa, dA_h + s.offset[s.order[q]] * GH, GH, n_prev, K, pan + blk * K * L, nb, tile.data());
      for (int64_t b = 0; b < n_prev; ++b)
        for (int64_t u = u0; u < u1; ++u)
          dh[b * S + u] = tile[b * ld + (u - u0)] + (direct ? direct[b * H + u] : 0.0f);
    };
    // the pointwise pass of step p over this thread's hidden units
    auto pointwise = [&](int64_t p, int64_t pair, int64_t nb, View<const float> dh_a, View<const float> dh_b) {
      const int64_t n = s.size[s.order[p]];
      for (int64_t blk = pair; blk < pair + nb; ++blk) {
        const int64_t u0 = blk * L, u1 = std::min(H, u0 + L);
        step_backward_pointwise<float>(cell, s, p, bb, Block{n, u0, u1, H}, dh_a, dh_b);
      }
    };
    for (int64_t p = T - 1; p >= 0; --p) {
      const int64_t t = s.order[p], n = s.size[t], off = s.offset[t];
      if (!project) {
        for (int64_t pair = blk0; pair < blk1; pair += kPair) {
          const int64_t nb = std::min(kPair, blk1 - pair);
          if (p < T - 1) carry(p + 1, pair, nb);
          pointwise(p, pair, nb, cview(dout + off * H, H), cview(dh, H));
        }
        if (reset_before) {
          barrier.wait();  // all of da_n
          for (int64_t pair = blk0; pair < blk1; pair += kPair) {
            const int64_t nb = std::min(kPair, blk1 - pair), ld = nb * L;
            product_tile(isa, dA_h + off * GH + 2 * H, GH, n, H, npan + pair * H * L, nb, tile.data());
            const int64_t u0 = pair * L, u1 = std::min(H, (pair + nb) * L);
            step_backward_reset_gate<float>(s, p, bb, Block{n, u0, u1, H}, cview(tile.data() - u0, ld));
          }
        }
      } else {
        for (int64_t pair = sblk0; pair < sblk1; pair += kPair) {
          const int64_t nb = std::min(kPair, sblk1 - pair);
          if (p < T - 1) carry(p + 1, pair, nb);
          const int64_t q0 = pair * L, q1 = std::min(S, (pair + nb) * L);
          for (int64_t b = 0; b < n; ++b)
            for (int64_t q = q0; q < q1; ++q) dH_total[(off + b) * S + q] = dout[(off + b) * S + q] + dh[b * S + q];
        }
        barrier.wait();  // all of dout + dh
        for (int64_t pair = blk0; pair < blk1; pair += kPair) {
          const int64_t nb = std::min(kPair, blk1 - pair);
          const int64_t u0 = pair * L, u1 = std::min(H, (pair + nb) * L), ld = nb * L;
          product_tile(isa, dH_total + off * S, S, n, S, ppan + pair * S * L, nb, tile.data());
          copy_tile_rows(tile.data(), ld, n, u1 - u0, dm + u0, H);
          pointwise(p, pair, nb, cview(dm, H), cview(ptr<float>(zero_row), 0));
        }
      }
      barrier.wait();
    }
    if (T > 0) {
      const int64_t c0 = project ? sblk0 : blk0, c1 = project ? sblk1 : blk1;
      for (int64_t pair = c0; pair < c1; pair += kPair) carry(0, pair, std::min(kPair, c1 - pair));
    }
  });
}

}  // namespace

BackwardOut sequence_backward(const Cell& cell, const at::Tensor& grad_out, const at::Tensor& grad_hn,
                              const at::Tensor& grad_cn, const at::Tensor& x, const at::Tensor& h0,
                              const at::Tensor& c0, const LayerTensors& w, const Steps& s,
                              const at::Tensor& out, const at::Tensor& workspace, Strategy strategy, bool poison,
                              bool need_dx, bool need_dweights) {
  BackwardBuffers bb;
  bb.G = cell.gates();
  bb.H = w.w_hh.size(0) / bb.G;
  bb.Hout = w.w_hh.size(1);
  bb.W = cell.workspace_blocks() * bb.H;
  const int64_t H = bb.H, GH = bb.G * H;
  bb.dout = grad_out;
  bb.ws = workspace;
  bb.out = out;
  bb.h0 = h0;
  bb.c0 = c0;
  bb.dA_x = empty_like_rows(x, {s.rows, GH}, poison);
  bb.dA_h = (cell.family == Family::gru && cell.reset_after) ? empty_like_rows(x, {s.rows, GH}, poison) : bb.dA_x;
  bb.dh_state = grad_hn.clone();
  if (cell.family == Family::lstm) {
    bb.dc_state = grad_cn.clone();
    bb.peephole = w.w_peep.defined();
    bb.peep = bb.peephole ? w.w_peep : at::zeros({3 * H}, x.options());
    bb.dpeep = at::zeros({3 * H}, x.options());
    if (w.w_proj.defined()) bb.dH_total = empty_like_rows(x, {s.rows, bb.Hout}, poison);
  }
  if (cell.family == Family::gru) bb.dh_direct = empty_like_rows(x, {s.batch, H}, poison);

  // folded or not, the fused backward is the same
  if (resolve_strategy(strategy, cell, w, s, x.scalar_type()) != Strategy::gemm) {
    fused_backward(cell, w, s, bb);
  } else if (x.scalar_type() == at::kDouble) {
    gemm_backward<double>(cell, w, s, bb, poison);
  } else {
    gemm_backward<float>(cell, w, s, bb, poison);
  }

  // input and weight gradients: single products over all steps, each skipped
  // where nobody asked for it (dX of a first layer, the weights of a frozen one)
  BackwardOut r;
  r.dh0 = bb.dh_state;
  r.dc0 = bb.dc_state;
  if (need_dx) r.dx = linear(bb.dA_x, w.w_ih.t(), at::Tensor());
  if (!need_dweights) return r;
  r.dw.w_ih = fixed_mm(bb.dA_x.t(), x);
  const at::Tensor h_prev = previous_rows(out, h0, s);
  if (cell.family == Family::gru && !cell.reset_after) {
    const at::Tensor k = workspace.narrow(1, 3 * H, H);
    r.dw.w_hh = at::cat({fixed_mm(bb.dA_h.narrow(1, 0, 2 * H).t(), h_prev),
                         fixed_mm(bb.dA_h.narrow(1, 2 * H, H).t(), k)});
  } else {
    r.dw.w_hh = fixed_mm(bb.dA_h.t(), h_prev);
  }
  if (w.b_ih.defined()) r.dw.b_ih = bb.dA_x.sum(0);
  if (w.b_hh.defined()) {
    // one buffer serves both sides outside GRU reset_after: sum it once
    const bool same = bb.dA_h.is_same(bb.dA_x) && r.dw.b_ih.defined();
    r.dw.b_hh = same ? r.dw.b_ih.clone() : bb.dA_h.sum(0);
  }
  if (w.w_peep.defined()) r.dw.w_peep = bb.dpeep;
  if (w.w_proj.defined()) {
    const at::Tensor m = workspace.narrow(1, 3 * H, H) * workspace.narrow(1, 4 * H, H).tanh();
    r.dw.w_proj = fixed_mm(bb.dH_total.t(), m);
  }
  return r;
}

}  // namespace cpu
}  // namespace fusedrnn
