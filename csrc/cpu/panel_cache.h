// Packed W_hh panels (recurrent_product.h), cached across calls.
//
// Packing W_hh (or W_hh^T for the backward) costs a pass over the weight and a
// fresh allocation per call; at inference, and in every call between two
// optimizer steps, the weight has not changed.  Entries are keyed by the
// weight's TensorImpl (held weakly: the address cannot be reused while the
// entry exists), its version counter (bumped by every in-place change,
// optimizer steps included), its data pointer and shape, and the packing.
// Tensors without a version counter (created under torch.inference_mode) are
// packed every time.  At most 8 entries and 64 MiB of packed copies are kept
// (least recently used evicted first; entries of freed weights dropped),
// shared by all threads under a mutex.
#pragma once

#include <ATen/ATen.h>

namespace fusedrnn {
namespace cpu {

// pack_panels(transposed ? w.t().contiguous() : w, blocks_c, lanes), from the cache when possible.
at::Tensor cached_panels(const at::Tensor& w, int64_t blocks_c, int64_t lanes, bool transposed);

}  // namespace cpu
}  // namespace fusedrnn
