// The schema of the compiled ops, one for every device.
//
//   forward(family, mode, x, h0, c0?, w_ih, w_hh, b_ih?, b_hh?, w_peep?, w_proj?,
//           batch_sizes?, reverse, strategy="auto", poison=False, for_backward=True,
//           w_extra=None, zoneout_mask=None)
//       -> (out, h_n, c_n, workspace)            c_n is empty without a cell state;
//                                                workspace is empty without for_backward
//   backward(family, mode, grad_out, grad_hn, grad_cn?, x, h0, c0?, w_ih, w_hh,
//            b_ih?, b_hh?, w_peep?, w_proj?, batch_sizes?, reverse, out, workspace,
//            strategy="auto", poison=False, need_dx=True, need_dweights=True, w_extra=None,
//            zoneout_mask=None)
//       -> [dx, dh0, dc0, dw_ih, dw_hh, db_ih, db_hh, dw_peep, dw_proj(, dw_extra)]
//                                                empty where the input is absent or the
//                                                gradient was not asked for; dw_extra
//                                                only for a cell with extra weights
//   w_extra: the extra weights of the layer-normalised cells (gains and shift,
//   concatenated in the cell record's order: docs/design.md section 11), required for
//   those and None for every other cell; last, so that calls without it keep their form.
//   zoneout_mask: zoneout of h (fusedrnn/zoneout.py), the output's shape ([T, B, Hout] or
//   [N, Hout]): each step's output is m*h_new + (1-m)*h_prev, 1 = take the new value (a 0/1
//   draw in training, 1 - zoneout everywhere in evaluation); the backward takes the forward's
//   mask.  Not differentiable.  None: no zoneout (the same kernels and workspace as without the
//   argument).  With it, the workspace of an Elman RNN is one block wider (cell.h zoneout_blocks).
//   step(family, mode, x, h, c?, w_ih, w_hh, b_ih?, b_hh?, w_peep?) -> (h', c')
//       one time step of a cell (x [B, I], h and c [B, H]), differentiable: the
//       call a cell module makes (csrc/step_autograd.cpp); c' is empty outside LSTM
//   step_forward(family, mode, x, h, c?, w_ih, w_hh, b_ih?, b_hh?, w_peep?, for_backward)
//       -> (h', c', workspace)               the step's kernel, below autograd:
//                                            workspace [B, W] as forward's rows
//                                            (empty without for_backward)
//   step_backward(family, mode, grad_h, grad_c?, x, h, c?, w_ih, w_hh, b_ih?, b_hh?, w_peep?,
//                 h_new, workspace, need_dx, need_dweights)
//       -> [dx, dh, dc, dw_ih, dw_hh, db_ih, db_hh, dw_peep]
//                                            the step's gradients (as backward's)
//   forward_strategy(family, mode, x, h0, w_hh, w_proj?, steps) -> str
//   backward_strategy(family, mode, x, h0, w_hh, w_proj?, steps) -> str
//       what strategy="auto" runs for these sizes: the strategy's name, then
//       ": <why>" where it is not the device's fastest one
//
// Each device implements them for its dispatch key: csrc/cpu/ops.cpp (CPU),
// csrc/cuda/ops.cpp (CUDA; in the CUDA emulation build, the CPU key of its own
// namespace `fusedrnn_cuda_emulation`, as the CPU key of `fusedrnn_C` belongs to
// the CPU kernels).  Shapes and layouts: fusedrnn/backends/base.py; the checks
// every implementation runs: op_checks.h.  `strategy` names one of the
// device's strategies ("auto" chooses); `poison` fills every output and
// scratch buffer with NaN before the kernels write them (tests).
#pragma once

#include <torch/library.h>

namespace fusedrnn {

// Whether this build has the CUDA kernels (the op built_with_cuda; graph_ops.cpp).
constexpr bool built_with_cuda() {
#ifdef FUSEDRNN_WITH_CUDA
  return true;
#else
  return false;
#endif
}

namespace schema {

inline void define_ops(torch::Library& m) {
  m.def(
      "forward(str family, str mode, Tensor x, Tensor h0, Tensor? c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor? w_peep, Tensor? w_proj, Tensor? batch_sizes, bool reverse, str strategy=\"auto\", "
      "bool poison=False, bool for_backward=True, Tensor? w_extra=None, Tensor? zoneout_mask=None) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "backward(str family, str mode, Tensor grad_out, Tensor grad_hn, Tensor? grad_cn, Tensor x, Tensor h0, "
      "Tensor? c0, Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_peep, Tensor? w_proj, "
      "Tensor? batch_sizes, bool reverse, Tensor out, Tensor workspace, str strategy=\"auto\", bool poison=False, "
      "bool need_dx=True, bool need_dweights=True, Tensor? w_extra=None, Tensor? zoneout_mask=None) -> Tensor[]");
  m.def(
      "step(str family, str mode, Tensor x, Tensor h, Tensor? c, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor? w_peep) -> (Tensor, Tensor)");
  m.def(
      "step_forward(str family, str mode, Tensor x, Tensor h, Tensor? c, Tensor w_ih, Tensor w_hh, Tensor? b_ih, "
      "Tensor? b_hh, Tensor? w_peep, bool for_backward) -> (Tensor, Tensor, Tensor)");
  m.def(
      "step_backward(str family, str mode, Tensor grad_h, Tensor? grad_c, Tensor x, Tensor h, Tensor? c, "
      "Tensor w_ih, Tensor w_hh, Tensor? b_ih, Tensor? b_hh, Tensor? w_peep, Tensor h_new, Tensor workspace, "
      "bool need_dx, bool need_dweights) -> Tensor[]");
  m.def("forward_strategy(str family, str mode, Tensor x, Tensor h0, Tensor w_hh, Tensor? w_proj, int steps) -> str");
  m.def("backward_strategy(str family, str mode, Tensor x, Tensor h0, Tensor w_hh, Tensor? w_proj, int steps) -> str");
}

}  // namespace schema
}  // namespace fusedrnn
