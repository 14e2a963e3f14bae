// The gate math of every fusedrnn cell, written once for the CPU and the GPU.
//
// Each function here works on one element (one batch row, one hidden unit):
// the C++ CPU kernels call them inside loops over contiguous hidden units that
// the compiler vectorises, and the CUDA kernels call them per thread.  Only
// arithmetic, comparisons and selects appear, no library calls for float, so
// the loops vectorise and the CPU tests exercise the very formulas the GPU runs.
//
// Equations and gate order: fusedrnn/cells.py (PyTorch's convention).
//
// Numerics (tests/test_nonfinite.py holds them to torch.nn's results):
//  * NaN propagates through every function, and +-inf gives torch's limits:
//    sigmoid(+inf) = 1, sigmoid(-inf) = 0, tanh(+-inf) = +-1, relu(inf) = inf,
//    relu(NaN) = NaN.  Selects are written `x < lo ? lo : x` (false for NaN, so
//    NaN passes); never std::max/fmaxf or max intrinsics, which drop a NaN.
//  * float: exp's argument is clamped so that it stays finite (sigmoid's to
//    [-88, 88], tanh's to [-40, 40]); sigmoid is exactly 0 below -88.72, where
//    torch's 1/(1 + exp(-x)) is 0 because exp overflows, so a saturated gate's
//    derivative y*(1-y) is exactly 0 as torch's is (the earlier floor of
//    1.8e-35, times weights of 1e30, let gradient through closed gates).
//    exp is a Cephes-style polynomial (relative error < 2e-7); tanh uses the
//    Cephes polynomial (relative error < 1e-7) for |x| < 0.625, where
//    1 - exp(-2x) would cancel.  No branches on the sign: straight-line code
//    that the CPU loops vectorise (measured: less time per LSTM element
//    than the earlier exp(-|x|) form with its sign selects).
//  * double uses the C library (exact to 1 ulp), so float64 tests can ask for 1e-10.
//  * backward formulas use the saved activations (y*(1-y), 1-y*y), and leave
//    out the terms torch's graph does not have (peepholes when absent): 0*inf
//    is NaN, so a product with a zero weight is not the same as no product.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define FUSEDRNN_HOST_DEVICE __host__ __device__
#else
#define FUSEDRNN_HOST_DEVICE
#endif

#if defined(__CUDA_ARCH__) || defined(__HIP_DEVICE_COMPILE__)
#define FUSEDRNN_INLINE __forceinline__
#else
#define FUSEDRNN_INLINE inline __attribute__((always_inline))
#endif

#include <math.h>
#include <stdint.h>
#include <string.h>

namespace fusedrnn {
namespace gate_math {

#define FUSEDRNN_GM FUSEDRNN_HOST_DEVICE FUSEDRNN_INLINE

FUSEDRNN_GM float bits_to_float(int32_t bits) {
#if defined(__CUDA_ARCH__)
  return __int_as_float(bits);
#else
  return __builtin_bit_cast(float, bits);
#endif
}

// exp(x) for x in [-88, 88] (callers clamp): Cephes expf.  n = round(x/ln2)
// through floor(x*log2(e) + 1/2), r = x - n*ln2 in [-ln2/2, ln2/2] (Cody-Waite,
// ln2 in two parts), a degree-6 polynomial for exp(r) (relative error < 2e-7),
// and the power of two 2^n built from its exponent bits (n in [-127, 127]:
// never inf; n = -127, only for x < -87.3, builds 0, so exp there is 0 instead
// of below 1.2e-38, which 1 + exp cannot tell apart).
FUSEDRNN_GM float exp_clamped(float x) {
  const float nf = floorf(x * 1.44269504088896341f + 0.5f);
  float r = x - nf * 0.693359375f;
  r = r - nf * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  return y * bits_to_float((static_cast<int32_t>(nf) + 127) << 23);
}

// Clamp written as two selects (NaN passes through both: x < lo and x > hi are false).
template <typename T>
FUSEDRNN_GM T clamp_(T x, T lo, T hi) {
  x = x < lo ? lo : x;
  return x > hi ? hi : x;
}

// sigmoid = 1/(1 + exp(-x)) with x clamped to [-88, 88], where exp is still
// a normal float (sigmoid(-88) = 6e-39, a subnormal result), and exactly 0
// below -88.72 (= -log(FLT_MAX)): there torch's 1/(1 + exp(-x)) is 0, exp(-x)
// having overflowed.  One exp, one division, one select, no branch: the
// vectorised loops run it as straight code.  NaN passes the clamp and the
// select (comparisons with NaN are false).
FUSEDRNN_GM float sigmoid(float x) {
  const float s = 1.0f / (1.0f + exp_clamped(-clamp_(x, -88.0f, 88.0f)));
  return x < -88.7228394f ? 0.0f : s;
}
FUSEDRNN_GM double sigmoid(double x) {
  // from e = exp(-|x|) in (0, 1]: never overflows, exact to a few ulp
  const double e = ::exp(-(x < 0.0 ? -x : x));
  const double s = 1.0 / (1.0 + e);
  return x >= 0.0 ? s : e * s;
}

FUSEDRNN_GM float tanh_(float x) {
  // |x| >= 0.625: (1 - e)/(1 + e) with e = exp(-2x), x clamped to [-40, 40]
  // (tanh(40) is 1 in float); no cancellation there, since |1 - e| >= 0.7.
  const float e = exp_clamped(-2.0f * clamp_(x, -40.0f, 40.0f));
  const float big = (1.0f - e) / (1.0f + e);
  // |x| < 0.625: odd polynomial (Cephes tanhf, relative error < 1e-7), where
  // 1 - e would cancel.
  const float z = x * x;
  float p = -5.70498872745e-3f;
  p = p * z + 2.06390887954e-2f;
  p = p * z - 5.37397155531e-2f;
  p = p * z + 1.33314422036e-1f;
  p = p * z - 3.33332819422e-1f;
  const float small = p * z * x + x;
  return z < 0.390625f ? small : big;  // 0.390625 = 0.625^2
}
FUSEDRNN_GM double tanh_(double x) { return ::tanh(x); }

// NaN stays NaN (`x > 0 ? x : 0` would make it 0, torch.relu does not).
template <typename T>
FUSEDRNN_GM T relu(T x) { return x < T(0) ? T(0) : x; }

// Derivatives from the activation's output.
template <typename T>
FUSEDRNN_GM T sigmoid_grad(T y) { return y * (T(1) - y); }
template <typename T>
FUSEDRNN_GM T tanh_grad(T y) { return T(1) - y * y; }
// relu's backward as torch's threshold_backward: 0 where y <= 0, else dy
// itself (for y = NaN too), a select rather than dy * (0 or 1), which would
// turn an infinite dy into NaN where y <= 0.
template <typename T>
FUSEDRNN_GM T relu_backward(T dy, T y) { return y <= T(0) ? T(0) : dy; }

// ---------------------------------------------------------------------------
// LSTM (peepholes p_i, p_f, p_o are 0 when absent)
// ---------------------------------------------------------------------------

template <typename T>
struct LstmForward {
  T i, f, g, o, c, m;  // gate activations, new cell state, m = o*tanh(c) (h before projection)
};

// kPeephole false ignores p_i, p_f, p_o.  Not only three fewer FMAs: without
// the peephole o no longer waits for c', and the CPU's vectorised loop then
// overlaps o's exp with the others (measured: less time per element).
template <typename T, bool kPeephole = true>
FUSEDRNN_GM LstmForward<T> lstm_forward(T a_i, T a_f, T a_g, T a_o, T c_prev, T p_i, T p_f, T p_o) {
  LstmForward<T> r;
  if constexpr (kPeephole) {
    a_i += p_i * c_prev;
    a_f += p_f * c_prev;
  }
  r.i = sigmoid(a_i);
  r.f = sigmoid(a_f);
  r.g = tanh_(a_g);
  r.c = r.f * c_prev + r.i * r.g;
  if constexpr (kPeephole) a_o += p_o * r.c;
  r.o = sigmoid(a_o);
  r.m = r.o * tanh_(r.c);
  return r;
}

template <typename T>
struct LstmBackward {
  T da_i, da_f, da_g, da_o, dc_prev;
};

// dm: gradient of m = o*tanh(c'); dc: gradient of c' from the later steps.
// kPeephole false ignores p_i, p_f, p_o: without peepholes torch's graph has
// no da_o*p_o term, and with p_o = 0 an infinite da_o would make it NaN.
template <typename T, bool kPeephole = true>
FUSEDRNN_GM LstmBackward<T> lstm_backward(T dm, T dc, T i, T f, T g, T o, T c, T c_prev, T p_i, T p_f, T p_o) {
  LstmBackward<T> r;
  const T tc = tanh_(c);
  r.da_o = dm * tc * sigmoid_grad(o);
  T dc_total = dc + dm * o * tanh_grad(tc);
  if constexpr (kPeephole) dc_total += r.da_o * p_o;
  r.da_i = dc_total * g * sigmoid_grad(i);
  r.da_f = dc_total * c_prev * sigmoid_grad(f);
  r.da_g = dc_total * i * tanh_grad(g);
  r.dc_prev = dc_total * f;
  if constexpr (kPeephole) r.dc_prev += r.da_i * p_i + r.da_f * p_f;
  return r;
}

// ---------------------------------------------------------------------------
// GRU, PyTorch's convention h' = (1-z)*n + z*h
// ---------------------------------------------------------------------------

template <typename T>
struct GruForward {
  T r, z, n, h;
};

// reset_after: x_n = W_in x + b_in, k = W_hn h + b_hn.
template <typename T>
FUSEDRNN_GM GruForward<T> gru_forward_reset_after(T a_r, T a_z, T x_n, T k, T h_prev) {
  GruForward<T> out;
  out.r = sigmoid(a_r);
  out.z = sigmoid(a_z);
  out.n = tanh_(x_n + out.r * k);
  out.h = (T(1) - out.z) * out.n + out.z * h_prev;
  return out;
}

// reset_before, second phase: a_n = W_in x + b_in + W_hn (r*h) + b_hn.
template <typename T>
FUSEDRNN_GM GruForward<T> gru_forward_reset_before(T r, T z, T a_n, T h_prev) {
  GruForward<T> out;
  out.r = r;
  out.z = z;
  out.n = tanh_(a_n);
  out.h = (T(1) - z) * out.n + z * h_prev;
  return out;
}

template <typename T>
struct GruBackward {
  T da_z, da_n, dh_direct;  // dh_direct: the part of dh_prev through z*h
};

template <typename T>
FUSEDRNN_GM GruBackward<T> gru_backward_common(T dh, T z, T n, T h_prev) {
  GruBackward<T> out;
  out.da_z = dh * (h_prev - n) * sigmoid_grad(z);
  out.da_n = dh * (T(1) - z) * tanh_grad(n);
  out.dh_direct = dh * z;
  return out;
}

// reset_after: gradient of a_r (both sides) given k = W_hn h + b_hn.
template <typename T>
FUSEDRNN_GM T gru_da_r_reset_after(T da_n, T r, T k) { return da_n * k * sigmoid_grad(r); }

// reset_before: gradient of a_r given dk, the gradient of k = r*h.
template <typename T>
FUSEDRNN_GM T gru_da_r_reset_before(T dk, T r, T h_prev) { return dk * h_prev * sigmoid_grad(r); }

// ---------------------------------------------------------------------------
// Elman RNN
// ---------------------------------------------------------------------------

template <typename T>
FUSEDRNN_GM T rnn_forward(T a, bool use_relu) { return use_relu ? relu(a) : tanh_(a); }

template <typename T>
FUSEDRNN_GM T rnn_backward(T dh, T h, bool use_relu) { return use_relu ? relu_backward(dh, h) : dh * tanh_grad(h); }

// Zoneout (fusedrnn/zoneout.py): the state a step passes on, m*h_new + (1-m)*h_prev, in the reference's
// order of operations; with a 0/1 mask it is h_new or h_prev exactly (finite values).
template <typename T>
FUSEDRNN_GM T zoneout(T m, T h_new, T h_prev) { return m * h_new + (T(1) - m) * h_prev; }

#undef FUSEDRNN_GM

}  // namespace gate_math
}  // namespace fusedrnn
