// The gemm strategy (strategy.h): per step, ATen's BLAS into a preallocated
// buffer (in fixed tiles, so the bits do not depend on the thread count:
// dense_product.h), then the pointwise pass split over hidden units.  Any
// cell, any dtype; best at large batch, where the per-step GEMM is efficient.
#pragma once

#include "buffers.h"
#include "fusedrnn/cell.h"
#include "fusedrnn/sequence_frame.h"

namespace fusedrnn {
namespace cpu {

// The recurrence of the forward, given f.xp (the input projection of every
// row) and f's states; float or double (f.out's dtype).
void gemm_forward(const Cell& cell, const frame::LayerWeights& w, const frame::Steps& s, ForwardBuffers& f,
                  bool poison);

// The recurrence of the backward: bb's dA_x / dA_h rows and carried states;
// float or double (bb.dA_x's dtype).
void gemm_backward(const Cell& cell, const frame::LayerWeights& w, const frame::Steps& s, BackwardBuffers& bb,
                   bool poison);

}  // namespace cpu
}  // namespace fusedrnn
