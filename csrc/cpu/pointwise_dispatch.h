// The pointwise passes of pointwise.h as callable functions, dispatched on the
// CPU's vector width: each float pass is compiled three times (AVX-512, AVX2,
// SSE2; best_isa() picks one per call), each double pass once
// (pointwise_dispatch.cpp).  The strategies call these, never the always_inline
// templates themselves, so the ISA-specific code lives in one file.
#pragma once

#include "layer_norm_pointwise.h"
#include "pointwise.h"
#include "slstm_pointwise.h"

namespace fusedrnn {
namespace cpu {

#define FUSEDRNN_DECLARE_PASS(NAME, ARGS)        \
  void NAME(const Block& b, const ARGS<float>& a); \
  void NAME(const Block& b, const ARGS<double>& a);

FUSEDRNN_DECLARE_PASS(pw_lstm_forward, LstmForwardArgs)
FUSEDRNN_DECLARE_PASS(pw_lstm_forward_inference, LstmForwardArgs)
FUSEDRNN_DECLARE_PASS(pw_lstm_forward_peephole, LstmForwardArgs)
FUSEDRNN_DECLARE_PASS(pw_lstm_forward_inference_peephole, LstmForwardArgs)
FUSEDRNN_DECLARE_PASS(pw_gru_forward_after, GruForwardArgs)
FUSEDRNN_DECLARE_PASS(pw_gru_forward_after_inference, GruForwardArgs)
FUSEDRNN_DECLARE_PASS(pw_gru_forward_gates, GruForwardArgs)
FUSEDRNN_DECLARE_PASS(pw_gru_forward_state, GruForwardArgs)
FUSEDRNN_DECLARE_PASS(pw_rnn_forward_tanh, RnnForwardArgs)
FUSEDRNN_DECLARE_PASS(pw_rnn_forward_relu, RnnForwardArgs)
FUSEDRNN_DECLARE_PASS(pw_lstm_backward, LstmBackwardArgs)
FUSEDRNN_DECLARE_PASS(pw_lstm_backward_peephole, LstmBackwardArgs)
FUSEDRNN_DECLARE_PASS(pw_gru_backward_after, GruBackwardArgs)
FUSEDRNN_DECLARE_PASS(pw_gru_backward_zn, GruBackwardArgs)
FUSEDRNN_DECLARE_PASS(pw_rnn_backward_tanh, RnnBackwardArgs)
FUSEDRNN_DECLARE_PASS(pw_rnn_backward_relu, RnnBackwardArgs)
FUSEDRNN_DECLARE_PASS(pw_indrnn_forward_tanh, IndrnnForwardArgs)
FUSEDRNN_DECLARE_PASS(pw_indrnn_forward_relu, IndrnnForwardArgs)
FUSEDRNN_DECLARE_PASS(pw_indrnn_backward_tanh, IndrnnBackwardArgs)
FUSEDRNN_DECLARE_PASS(pw_indrnn_backward_relu, IndrnnBackwardArgs)
// zoneout's blend of the output and split of its gradient (calls with a zoneout_mask only)
FUSEDRNN_DECLARE_PASS(pw_zoneout_forward, ZoneoutForwardArgs)
FUSEDRNN_DECLARE_PASS(pw_zoneout_backward, ZoneoutBackwardArgs)
// the layer-normalised cells' whole-row passes (layer_norm_pointwise.h)
FUSEDRNN_DECLARE_PASS(pw_layer_norm_columns, LayerNormColumnsArgs)
FUSEDRNN_DECLARE_PASS(pw_layer_norm_columns_in_place, LayerNormColumnsArgs)
FUSEDRNN_DECLARE_PASS(pw_ln_lstm_forward, LnLstmForwardArgs)
FUSEDRNN_DECLARE_PASS(pw_ln_lstm_backward, LnLstmBackwardArgs)
FUSEDRNN_DECLARE_PASS(pw_ln_gru_forward, LnGruForwardArgs)
FUSEDRNN_DECLARE_PASS(pw_ln_gru_backward, LnGruBackwardArgs)
// sLSTM's gating and state update, and its derivative (slstm_pointwise.h)
FUSEDRNN_DECLARE_PASS(pw_slstm_forward, SlstmForwardArgs)
FUSEDRNN_DECLARE_PASS(pw_slstm_forward_inference, SlstmForwardArgs)
FUSEDRNN_DECLARE_PASS(pw_slstm_backward, SlstmBackwardArgs)

#undef FUSEDRNN_DECLARE_PASS

// The variant of a pass the call's options select.
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
template <typename T>
void pw_slstm_forward_for(bool keep_workspace, const Block& b, const SlstmForwardArgs<T>& a) {
  keep_workspace ? pw_slstm_forward(b, a) : pw_slstm_forward_inference(b, a);
}
template <typename T>
void pw_indrnn_forward(bool relu, const Block& b, const IndrnnForwardArgs<T>& a) {
  relu ? pw_indrnn_forward_relu(b, a) : pw_indrnn_forward_tanh(b, a);
}
template <typename T>
void pw_indrnn_backward(bool relu, const Block& b, const IndrnnBackwardArgs<T>& a) {
  relu ? pw_indrnn_backward_relu(b, a) : pw_indrnn_backward_tanh(b, a);
}

}  // namespace cpu
}  // namespace fusedrnn
