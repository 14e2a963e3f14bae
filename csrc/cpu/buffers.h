// The tensors one sequence call works on, set up by sequence.cpp and handed
// to the strategy that runs it (gemm_strategy.h, fused_strategy.h), and the
// small helpers every strategy uses to reach them.
#pragma once

#include <ATen/ATen.h>

#include <limits>

namespace fusedrnn {
namespace cpu {

template <typename T>
T* ptr(const at::Tensor& t) {
  return t.defined() ? t.data_ptr<T>() : nullptr;
}

// An uninitialised buffer like `like`; with `poison`, NaN-filled, so that an
// element the kernels fail to write shows in the results (tests).
inline at::Tensor empty_like_rows(const at::Tensor& like, at::IntArrayRef shape, bool poison) {
  at::Tensor t = at::empty(shape, like.options());
  if (poison) t.fill_(std::numeric_limits<double>::quiet_NaN());
  return t;
}

struct ForwardBuffers {
  at::Tensor xp, out, ws, h_state, c_state, peep, b_hn;
  // zoneout: the [N, Hout] mask rows (undefined without zoneout); the output rows are blended after
  // each step's pass, and an Elman RNN keeps h_new in its workspace's last block (W grows by H)
  at::Tensor mask;
  int64_t H, Hout, G, W;
  // Without a backward to feed (inference), the workspace is one step's rows,
  // rewritten every step: the passes still use it within the step (GRU
  // reset_before reads r*h back), but nothing streams T*B*W values to memory.
  bool keep_workspace = true;
  int64_t ws_row(int64_t step_offset) const { return keep_workspace ? step_offset : 0; }
};

struct BackwardBuffers {
  at::Tensor dout, ws, out, h0, c0;
  at::Tensor dA_x, dA_h, dh_state, dc_state, dh_direct, dpeep, peep, dH_total;
  // zoneout: the mask rows, and dh_keep [B, Hout], each step's (1-m)*dh, which flows to dh_prev besides
  // the recurrent product (both undefined without zoneout)
  at::Tensor mask, dh_keep;
  bool peephole = false;
  int64_t H, Hout, G, W;
};

}  // namespace cpu
}  // namespace fusedrnn
