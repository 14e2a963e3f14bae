#include "rows.h"

namespace fusedrnn {
namespace cpu {

// Row ranges are copied as maximal runs (contiguous in both source and
// destination): with padded input that is two copies, not one per step (nor
// a gather of every row, as frame::previous_index would take).
at::Tensor previous_rows(const at::Tensor& rows, const at::Tensor& initial, const frame::Steps& s) {
  at::Tensor prev = at::empty({s.rows, rows.size(1)}, rows.options());
  struct Run {
    const at::Tensor* src;
    int64_t src0, dst0, n;
  } run{nullptr, 0, 0, 0};
  const auto flush = [&] {
    if (run.n > 0) prev.narrow(0, run.dst0, run.n).copy_(run.src->narrow(0, run.src0, run.n));
  };
  const auto add = [&](const at::Tensor& src, int64_t src0, int64_t dst0, int64_t n) {
    if (n == 0) return;
    if (run.src == &src && run.src0 + run.n == src0 && run.dst0 + run.n == dst0) {  // forward direction
      run.n += n;
      return;
    }
    if (run.src == &src && src0 + n == run.src0 && dst0 + n == run.dst0) {  // reverse direction
      run = Run{&src, src0, dst0, run.n + n};
      return;
    }
    flush();
    run = Run{&src, src0, dst0, n};
  };
  for (int64_t p = 0; p < s.count(); ++p) {
    const int64_t t = s.order[p], n = s.size[t], carried = s.carried(p);
    add(rows, s.prev_offset(p), s.offset[t], carried);
    add(initial, carried, s.offset[t] + carried, n - carried);
  }
  flush();
  return prev;
}

}  // namespace cpu
}  // namespace fusedrnn
