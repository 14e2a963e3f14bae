// The product of a few rows with weights as they lie in memory: the latency
// path of one time step at a small batch (step.h).
//
// The fused kernels pack W_hh (and W_ih, folded) into panels once per call
// (recurrent_product.h), which pays off over the time steps of a sequence.
// A single step reads each weight once: packing would double its memory
// traffic, and a cell step at B = 1..16 is that traffic plus a few
// microseconds of arithmetic.  So here each output element is a dot product
// of a row of the left operand with a row of W (both unit-stride along k),
// computed in registers for a tile of JR weight rows x BR operand rows, the
// vector lanes along k summed once at the end.
//
// Layouts (float32): a term's left operand `a` [n][lda] (row b at a + b*lda,
// K columns) and weight `w` [N][ldw] (row j at w + j*ldw, K columns: W_ih or
// W_hh as torch stores them, or a block of their rows).
//
// Threads: the N output columns are split over the threads by fixed blocks,
// each element summed by one thread in one order, so the result is bitwise the
// same with any number of threads (tests/test_thread_count.py).
#pragma once

#include <cstdint>

#include "recurrent_product.h"

namespace fusedrnn {
namespace cpu {

// One term of the product: rows of `a` times rows of `w`, over K.
struct RowTerm {
  const float* a;
  int64_t lda;
  const float* w;
  int64_t ldw;
  int64_t K;
};

// out[b*ldo + j] = bias0[j] + bias1[j] + sum over the terms of dot(a row b, w row j), for b < n, j < N
// (bias0/bias1 may be null: no bias).  Up to `threads` threads.
void row_product(const RowTerm* terms, int nterms, int64_t n, int64_t N, const float* bias0, const float* bias1,
                 float* out, int64_t ldo, int threads);

// out[r*ldo + col] = sum over k < K of a(r, k) * w[k*ldw + col], for r < n and col < N, where
// a(r, k) = a[r*ars + k*acs]: the products of a step's backward, each row of the
// right operand read as contiguous vectors and the left operand broadcast, so
// neither is packed nor transposed: dx = dA W_ih and dh = dA W_hh (a = dA,
// w = the weight's G*H rows), dW_ih = dA^T x and dW_hh = dA^T h (a = dA read
// transposed, w = the B rows of x or h).  Rows split over up to `threads`
// threads in fixed blocks (bitwise the same with any number of threads).
void broadcast_product(const float* a, int64_t ars, int64_t acs, int64_t n, int64_t K, const float* w, int64_t ldw,
                       int64_t N, float* out, int64_t ldo, int threads);

}  // namespace cpu
}  // namespace fusedrnn
