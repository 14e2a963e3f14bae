// How the CPU kernels address their arrays: rows of a 2-D array as (pointer,
// row stride) with unit stride 1, and the rows and units one pointwise call
// covers (pointwise.h).
#pragma once

#include <cstdint>

namespace fusedrnn {
namespace cpu {

// Rows of a 2-D array: element (row b, unit u) at p[b*rs + u].
template <typename T>
struct View {
  T* p = nullptr;
  int64_t rs = 0;
  T* row(int64_t b) const { return p + b * rs; }
};

#define FUSEDRNN_R __restrict__

// The rows and units one call covers; `u0` is the first unit (for "hp").
struct Block {
  int64_t rows;
  int64_t u0, u1;
  int64_t H;  // hidden size: distance between gate blocks of xp / ws / dA
};

template <typename T>
View<T> view(T* p, int64_t rs) {
  View<T> v;
  v.p = p;
  v.rs = rs;
  return v;
}
template <typename T>
View<const T> cview(const T* p, int64_t rs) {
  return view<const T>(p, rs);
}
// The same array from row `rows` on.
template <typename T>
View<T> shifted(View<T> v, int64_t rows) {
  v.p += rows * v.rs;
  return v;
}

}  // namespace cpu
}  // namespace fusedrnn
