// ISA dispatch of the pointwise passes: each is compiled three times (AVX-512,
// AVX2, SSE2) for float, once for double.
//
// The gate math (sigmoid, tanh: clamps and selects) vectorises only when the
// compiler may evaluate both sides of a select, which GCC refuses under its
// default -ftrapping-math (an FP exception flag is not a result: values are
// unchanged).  Set for this whole file, before any include, so the
// always_inline kernels and their callers share one set of options (every
// file that instantiates a pass of pointwise.h sets it the same way).
#pragma GCC optimize("no-trapping-math")

#include "pointwise_dispatch.h"

#include "recurrent_product.h"

namespace fusedrnn {
namespace cpu {

#define FUSEDRNN_DISPATCH(NAME, ARGS, FN)                                                                 \
  static __attribute__((target("avx512f,avx512vl,avx2,fma"))) void NAME##_avx512(const Block& b, const ARGS<float>& a) { \
    FN(float)(b, a);                                                                                      \
  }                                                                                                       \
  static __attribute__((target("avx2,fma"))) void NAME##_avx2(const Block& b, const ARGS<float>& a) { FN(float)(b, a); } \
  static void NAME##_sse2(const Block& b, const ARGS<float>& a) { FN(float)(b, a); }                              \
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
#define INDRNN_FWD_TANH(T) indrnn_forward_block<T, false>
#define INDRNN_FWD_RELU(T) indrnn_forward_block<T, true>
#define INDRNN_BWD_TANH(T) indrnn_backward_block<T, false>
#define INDRNN_BWD_RELU(T) indrnn_backward_block<T, true>
#define ZONEOUT_FWD(T) zoneout_forward_block<T>
#define ZONEOUT_BWD(T) zoneout_backward_block<T>
#define LN_COLUMNS(T) layer_norm_columns_block<T, false>
#define LN_COLUMNS_IN_PLACE(T) layer_norm_columns_block<T, true>
#define LN_LSTM_FWD(T) ln_lstm_forward_block<T>
#define LN_LSTM_BWD(T) ln_lstm_backward_block<T>
#define LN_GRU_FWD(T) ln_gru_forward_block<T>
#define LN_GRU_BWD(T) ln_gru_backward_block<T>
#define SLSTM_FWD(T) slstm_forward_block<T, true>
#define SLSTM_FWD_INFERENCE(T) slstm_forward_block<T, false>
#define SLSTM_BWD(T) slstm_backward_block<T>

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
FUSEDRNN_DISPATCH(pw_indrnn_forward_tanh, IndrnnForwardArgs, INDRNN_FWD_TANH)
FUSEDRNN_DISPATCH(pw_indrnn_forward_relu, IndrnnForwardArgs, INDRNN_FWD_RELU)
FUSEDRNN_DISPATCH(pw_indrnn_backward_tanh, IndrnnBackwardArgs, INDRNN_BWD_TANH)
FUSEDRNN_DISPATCH(pw_indrnn_backward_relu, IndrnnBackwardArgs, INDRNN_BWD_RELU)
FUSEDRNN_DISPATCH(pw_zoneout_forward, ZoneoutForwardArgs, ZONEOUT_FWD)
FUSEDRNN_DISPATCH(pw_zoneout_backward, ZoneoutBackwardArgs, ZONEOUT_BWD)
FUSEDRNN_DISPATCH(pw_layer_norm_columns, LayerNormColumnsArgs, LN_COLUMNS)
FUSEDRNN_DISPATCH(pw_layer_norm_columns_in_place, LayerNormColumnsArgs, LN_COLUMNS_IN_PLACE)
FUSEDRNN_DISPATCH(pw_ln_lstm_forward, LnLstmForwardArgs, LN_LSTM_FWD)
FUSEDRNN_DISPATCH(pw_ln_lstm_backward, LnLstmBackwardArgs, LN_LSTM_BWD)
FUSEDRNN_DISPATCH(pw_ln_gru_forward, LnGruForwardArgs, LN_GRU_FWD)
FUSEDRNN_DISPATCH(pw_ln_gru_backward, LnGruBackwardArgs, LN_GRU_BWD)
FUSEDRNN_DISPATCH(pw_slstm_forward, SlstmForwardArgs, SLSTM_FWD)
FUSEDRNN_DISPATCH(pw_slstm_forward_inference, SlstmForwardArgs, SLSTM_FWD_INFERENCE)
FUSEDRNN_DISPATCH(pw_slstm_backward, SlstmBackwardArgs, SLSTM_BWD)

}  // namespace cpu
}  // namespace fusedrnn
