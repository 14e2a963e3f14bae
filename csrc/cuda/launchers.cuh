// The host-side entry points of the CUDA kernels (csrc/cuda/*.cu), shared by
// the kernels and their ATen side (sequence.cpp).
//
// Framework-free on purpose (docs/design.md section 5): raw pointers, sizes and a
// stream only, so the kernels compile with bare nvcc and the wrapper with g++.
// Every launcher returns the cudaError_t of its launch (cudaGetLastError right
// after it); the wrapper turns anything but cudaSuccess into a RuntimeError.
//
// Conventions of every argument struct below:
//  * a matrix is (pointer, leading dimension): element (row b, column j) at
//    p[b * ld + j]; pointers are already offset to the first row of the step
//    and, where a struct says so, to a column block;
//  * `float*` arrays are float32 (pre-activations, states, gradients: the
//    compute dtype); `void*` arrays hold the storage dtype `dtype` (x's dtype:
//    the outputs `out` and `workspace`, which are rounded once, as the
//    reference rounds them);
//  * H is the hidden size; the gate blocks of a [rows, G*H] matrix are H apart;
//    `n` is the number of rows of the step (batch_sizes[t]).
#pragma once

#include <cuda_runtime_api.h>
#include <stddef.h>
#include <stdint.h>

namespace fusedrnn {
namespace cuda {

enum class DType : int { f32 = 0, f16 = 1, bf16 = 2 };

// The rows a state comes from before a step, in the backward (as
// fusedrnn.reference.previous_states): rows [0, carried) are rows of the step
// processed just before (`rows`, storage dtype), the others [carried, n) start
// from the initial state (`initial`, float32).
struct PrevRows {
  const void* rows = nullptr;
  int64_t rows_ld = 0;
  int64_t carried = 0;
  const float* initial = nullptr;
  int64_t initial_ld = 0;
};

// ---------------------------------------------------------------------------
// per-step strategy, forward: one launch per step after the recurrent product
// hp = h_prev W_hh^T (cuBLAS, in the wrapper).  xp = x W_ih^T + folded biases.
// ---------------------------------------------------------------------------

struct LstmForwardStep {
  int64_t n = 0, H = 0;
  const float* xp = nullptr; int64_t xp_ld = 0;  // [n, 4H]
  const float* hp = nullptr; int64_t hp_ld = 0;  // [n, 4H]
  float* c = nullptr;                             // [n, H] cell state: c_prev in, c' out
  const float* peep = nullptr;                    // [3H] (i, f, o) or null
  void* ws = nullptr; int64_t ws_ld = 0;          // [n, 5H]: i f g o c'
  float* m = nullptr; int64_t m_ld = 0;           // o*tanh(c'), float32: the state, or the projection's input
  void* out = nullptr; int64_t out_ld = 0;        // the output rows (null with a projection)
};

struct GruForwardStep {
  int64_t n = 0, H = 0;
  const float* xp = nullptr; int64_t xp_ld = 0;   // [n, 3H]: b_ih + b_hh folded into r, z; b_ih only into n
  const float* hp = nullptr; int64_t hp_ld = 0;   // reset_after: [n, 3H]; reset_before gates: [n, 2H]; state: [n, H] (the n-gate product)
  const float* b_hn = nullptr;                    // [H] or null
  float* h = nullptr; int64_t h_ld = 0;           // [n, H] state: h_prev in, h' out (gates phase: read only)
  float* rzk = nullptr; int64_t rzk_ld = 0;       // reset_before only: [n, 3H] float32 r, z, k = r*h between the phases
  void* ws = nullptr; int64_t ws_ld = 0;          // [n, 4H]: r z n k
  void* out = nullptr; int64_t out_ld = 0;        // [n, H]
};

struct RnnForwardStep {
  int64_t n = 0, H = 0;
  bool relu = false;
  const float* xp = nullptr; int64_t xp_ld = 0;
  const float* hp = nullptr; int64_t hp_ld = 0;
  float* h = nullptr; int64_t h_ld = 0;           // new state
  void* out = nullptr; int64_t out_ld = 0;
};

cudaError_t lstm_forward_step(DType dtype, const LstmForwardStep& a, cudaStream_t stream);
cudaError_t gru_forward_step_reset_after(DType dtype, const GruForwardStep& a, cudaStream_t stream);
cudaError_t gru_forward_step_gates(DType dtype, const GruForwardStep& a, cudaStream_t stream);  // reset_before phase 1
cudaError_t gru_forward_step_state(DType dtype, const GruForwardStep& a, cudaStream_t stream);  // reset_before phase 2
cudaError_t rnn_forward_step(DType dtype, const RnnForwardStep& a, cudaStream_t stream);

// ---------------------------------------------------------------------------
// per-step strategy, backward: one launch per step (reversed), then the
// product dh_prev = dA W_hh (cuBLAS, in the wrapper).  The gradient of a
// step's output rows is dout + dh (dout null: dh alone).
// ---------------------------------------------------------------------------

struct LstmBackwardStep {
  int64_t n = 0, H = 0;
  const void* dout = nullptr; int64_t dout_ld = 0;  // [n, H] storage dtype, null with a projection
  const float* dh = nullptr; int64_t dh_ld = 0;     // [n, H]: dh state, or dm = (dout + dh) W_proj
  float* dc = nullptr;                               // [n, H] in (from later steps) and out (to c_prev)
  const void* ws = nullptr; int64_t ws_ld = 0;       // [n, 5H]
  PrevRows c_prev;                                   // previous cell state
  const float* peep = nullptr;                       // [3H] or null
  float* dA = nullptr; int64_t dA_ld = 0;            // [n, 4H] gate pre-activation gradients
};

struct GruBackwardStep {
  int64_t n = 0, H = 0;
  const void* dout = nullptr; int64_t dout_ld = 0;
  const float* dh = nullptr; int64_t dh_ld = 0;
  const void* ws = nullptr; int64_t ws_ld = 0;       // [n, 4H]: r z n k
  PrevRows h_prev;
  float* dA_x = nullptr; int64_t dA_x_ld = 0;        // [n, 3H] input side
  float* dA_h = nullptr; int64_t dA_h_ld = 0;        // [n, 3H] hidden side (reset_after)
  float* dh_direct = nullptr;                        // [n, H]: dh_prev through z*h (+ dk*r, reset_before)
  const float* dk = nullptr; int64_t dk_ld = 0;      // reset_before r phase: dk = da_n W_hn, [n, H]
};

struct RnnBackwardStep {
  int64_t n = 0, H = 0;
  bool relu = false;
  const void* dout = nullptr; int64_t dout_ld = 0;
  const float* dh = nullptr; int64_t dh_ld = 0;
  const void* out = nullptr; int64_t out_ld = 0;     // the step's outputs h'
  float* dA = nullptr; int64_t dA_ld = 0;
};

cudaError_t lstm_backward_step(DType dtype, const LstmBackwardStep& a, cudaStream_t stream);
cudaError_t gru_backward_step_reset_after(DType dtype, const GruBackwardStep& a, cudaStream_t stream);
cudaError_t gru_backward_step_zn(DType dtype, const GruBackwardStep& a, cudaStream_t stream);  // reset_before: z, n
cudaError_t gru_backward_step_r(DType dtype, const GruBackwardStep& a, cudaStream_t stream);   // reset_before: r
cudaError_t rnn_backward_step(DType dtype, const RnnBackwardStep& a, cudaStream_t stream);

// ---------------------------------------------------------------------------
// persistent strategy, forward: one cooperative launch for all steps.
// Each block owns `units` hidden units and keeps the W_hh rows of all their
// gates in shared memory for the whole sequence (with a projection, also
// `units` rows of W_proj); h is exchanged through a float32 double buffer in
// global memory, one grid barrier per step (two for GRU reset_before and
// LSTM with a projection, whose second product needs every unit's r*h or
// o*tanh(c) first).
// ---------------------------------------------------------------------------

enum class PersistentCell : int {
  lstm = 0,
  gru_reset_after = 1,
  rnn_tanh = 2,
  rnn_relu = 3,
  gru_reset_before = 4,
  lstm_projection = 5,
};

struct PersistentPlan {
  bool ok = false;
  int blocks = 0, threads = 0, units = 0;
  size_t shared_bytes = 0;
  int64_t k_chunk = 0;     // backward: the columns of the product's operand staged at once
  char reason[200] = {0};  // why not, when !ok
};

// Whether the persistent forward can run B rows of hidden size H (state and
// output size P: the projection size, else H) on `device` (weight slices fit
// in shared memory and the cooperative grid fits on the device), and with
// which launch geometry.  Queries the device; no launch.
PersistentPlan plan_persistent_forward(PersistentCell cell, DType dtype, int64_t B, int64_t H, int64_t P,
                                       int device);

struct PersistentForward {
  int64_t B = 0, H = 0, P = 0, steps = 0;  // P: the size of h and out (the projection size, else H)
  const int32_t* step_rows = nullptr;    // device [steps]: rows of each step, in processing order
  const int64_t* step_offset = nullptr;  // device [steps]: first row of each step, in processing order
  const float* xp = nullptr;             // [N, G*H], biases folded (not b_hn)
  const void* w_hh = nullptr;            // [G*H, P] storage dtype
  const void* w_proj = nullptr;          // LSTM with a projection: [P, H] storage dtype
  const float* b_hn = nullptr;           // GRU: [H] or null
  const float* peep = nullptr;           // LSTM: [3H] or null
  const float* h0 = nullptr;             // [B, P]
  const float* c0 = nullptr;             // LSTM: [B, H]
  float* h_exchange = nullptr;           // [2, B, P] scratch; the wrapper copies h0 into half 0
  float* mid_exchange = nullptr;         // [B, H] scratch: GRU reset_before's r*h, the projection's o*tanh(c)
  void* out = nullptr;                   // [N, P]
  void* ws = nullptr;                    // [N, W], or [B, W] without keep_workspace
  bool keep_workspace = true;            // false (inference): each step overwrites rows [0, n) of ws
  float* c_n = nullptr;                  // LSTM: [B, H], each row's cell state after its last step
};

cudaError_t persistent_forward(PersistentCell cell, DType dtype, const PersistentPlan& plan,
                               const PersistentForward& a, cudaStream_t stream);

// ---------------------------------------------------------------------------
// persistent strategy, backward: one cooperative launch for all steps
// (reversed).  Each block owns `units` hidden units and keeps the W_hh columns
// of them (and the W_proj columns, with a projection) in shared memory; the
// gate gradients dA go through global memory, one grid barrier per step (two
// for GRU reset_before and LSTM with a projection).  Writes dA_x (and dA_h,
// dH) for the weight gradients the wrapper computes after it.
// ---------------------------------------------------------------------------

PersistentPlan plan_persistent_backward(PersistentCell cell, DType dtype, int64_t B, int64_t H, int64_t P,
                                        int device);

struct PersistentBackward {
  int64_t B = 0, H = 0, P = 0, steps = 0, k_chunk = 0;  // k_chunk: the plan's
  const int32_t* step_rows = nullptr;         // device [steps], in processing order (as the forward's)
  const int64_t* step_offset = nullptr;       // device [steps]
  const int32_t* step_carried = nullptr;      // device [steps]: rows whose state before the step is the previous step's
  const int64_t* step_prev_offset = nullptr;  // device [steps]: first row of the previous step
  const void* dout = nullptr;                 // [N, P] storage dtype: the gradient of out
  const void* out = nullptr;                  // [N, P]
  const void* ws = nullptr;                   // [N, W]
  const void* w_hh = nullptr;                 // [G*H, P] storage dtype
  const void* w_proj = nullptr;               // [P, H] storage dtype, or null
  const float* peep = nullptr;                // [3H] or null
  const float* h0 = nullptr;                  // [B, P]
  const float* c0 = nullptr;                  // LSTM: [B, H]
  const float* dh_n = nullptr;                // [B, P]: the gradient of h_n
  const float* dc_n = nullptr;                // LSTM: [B, H]
  float* dA_x = nullptr;                      // [N, G*H] gate gradients, input side
  float* dA_h = nullptr;                      // GRU reset_after: [N, G*H] hidden side
  float* dH = nullptr;                        // projection: [N, P] dout + dh, the gradient of each output row
  float* dh0 = nullptr;                       // [B, P]
  float* dc0 = nullptr;                       // LSTM: [B, H]
};

cudaError_t persistent_backward(PersistentCell cell, DType dtype, const PersistentPlan& plan,
                                const PersistentBackward& a, cudaStream_t stream);

// ---------------------------------------------------------------------------
// IndRNN (a diagonal recurrent weight u: h' = act(xp + u*h)): no product per
// step, so one launch per sequence, forward and backward (diagonal.cu), a
// thread per (batch row, unit) carrying its state through every step.  Rows
// beyond a step's row count are inactive there and keep their value: h0 until
// a reversed sequence starts, the last step's h after a sequence ends (h_n);
// the backward's dh likewise (dh0 after a row's first step).
// ---------------------------------------------------------------------------

struct DiagonalForward {
  int64_t B = 0, H = 0, steps = 0;
  bool relu = false;
  const int32_t* step_rows = nullptr;    // device [steps], in processing order
  const int64_t* step_offset = nullptr;  // device [steps]
  const float* xp = nullptr;             // [N, H]: x W_ih^T + b_ih + b_hh
  const float* u = nullptr;              // [H]
  const float* h0 = nullptr;             // [B, H]
  void* out = nullptr;                   // [N, H] storage dtype
  float* h_n = nullptr;                  // [B, H]
};

struct DiagonalBackward {
  int64_t B = 0, H = 0, steps = 0;
  bool relu = false;
  const int32_t* step_rows = nullptr;    // device [steps], in processing order (as the forward's)
  const int64_t* step_offset = nullptr;  // device [steps]
  const void* dout = nullptr;            // [N, H] storage dtype
  const void* out = nullptr;             // [N, H] storage dtype: the forward's h' (act' follows from it)
  const float* u = nullptr;              // [H]
  const float* dh_n = nullptr;           // [B, H]
  float* dA = nullptr;                   // [N, H] pre-activation gradients
  float* dh0 = nullptr;                  // [B, H]
};

cudaError_t diagonal_forward(DType dtype, const DiagonalForward& a, cudaStream_t stream);
cudaError_t diagonal_backward(DType dtype, const DiagonalBackward& a, cudaStream_t stream);

}  // namespace cuda
}  // namespace fusedrnn
