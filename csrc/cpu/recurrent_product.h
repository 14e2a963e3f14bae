// The per-step recurrent product of the fused CPU kernels, as a
// cache-resident micro-kernel.
//
// At small batch a per-step GEMM call (MKL addmm) loses to oneDNN's LSTM: it
// re-reads W_hh from wherever it is and splits a tiny problem over threads
// each step.  Instead, W_hh is packed once per call into "panels" of L hidden
// units (one SIMD vector) per gate block, and each thread owns a fixed set of
// unit blocks for the whole sequence, so its slice of W_hh stays in its own
// L2 cache across all steps and the gate math for its units runs right after
// its product, on data still in L1.
//
// Layouts (float32):
//   panels  [blocks][C][K][L]: panels[((blk*C + c)*K + k)*L + l] = W[c*U + blk*L + l, k]
//           for a weight W [C*U, K] of C stacked blocks of U rows (the gates);
//           rows past U are zero.
//   lhs     [n][ld]: the left operand, row-major (the batch rows of h_prev or
//           dA as the kernels wrote them: no transpose between steps).  Each
//           k broadcasts one element of each of the R rows of a register tile.
//   tile    [n][C*L]: tile[r*C*L + c*L + l] = sum_k lhs[r][k] * panel[c][k][l]
//
// The SIMD width is chosen at run time from the CPU (AVX-512, AVX2 or plain
// SSE2 vectors); the functions are compiled for each with GCC target
// attributes, so the build needs no -mavx flags.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>

namespace fusedrnn {
namespace cpu {

enum class Isa { sse2, avx2, avx512 };

// The widest the CPU has, capped by FUSEDRNN_CPU_ISA (avx2, sse2) for tests.
Isa best_isa();
const char* isa_name(Isa isa);
// Units per panel (float32 lanes of one vector).
int panel_lanes(Isa isa);

// Pack M [C*U, K] = w, or w^T if `transposed`, into panels of `lanes` units
// (w: 2-D float32, any strides, e.g. a narrowed block of gate rows).
//
// Packed in every call that uses them, never kept across calls: a cache keyed
// by the tensor's version counter (as before) misses writes that do not bump
// it (through .data or .numpy(), into a flat buffer that .data views, through
// another tensor on the same storage, from another process sharing the
// memory), and would then compute with stale weights.  Packing is one pass
// over the weight, against a pass per time step in the kernels; measured
// against the cache it replaced, it shows only at the smallest calls
// (benchmarks/RESULTS.md, "Packed weights").
at::Tensor pack_panels(const at::Tensor& w, int64_t blocks_c, int64_t lanes, bool transposed);

// One term of a product: rows of a left operand (row r at lhs + r*ld, K
// columns) times K rows of C panels ([C][K][L] from `panels`).
struct ProductTerm {
  const float* lhs;
  int64_t ld;
  int64_t K;
  const float* panels;
};

// tile = the sum over the terms of lhs rows [0, n) times their C panels: a
// product over the concatenation of the terms' K (the fused forward's
// [x_t, h_{t-1}] times [W_ih; W_hh]^T, from two separately packed weights).
void product_tile(Isa isa, const ProductTerm* terms, int nterms, int64_t n, int64_t C, float* tile);

// tile = lhs rows [0, n) times the C panels starting at `panels` (one term).
void product_tile(Isa isa, const float* lhs, int64_t ld_lhs, int64_t n, int64_t K, const float* panels, int64_t C,
                  float* tile);

}  // namespace cpu
}  // namespace fusedrnn
