#include "panel_cache.h"

#include <c10/util/intrusive_ptr.h>

#include <list>
#include <mutex>
#include <vector>

#include "recurrent_product.h"

namespace fusedrnn {
namespace cpu {

namespace {

struct Entry {
  c10::weak_intrusive_ptr<c10::StorageImpl> storage;  // weak: keeps the address from being reused
  const void* data;
  int64_t version;
  std::vector<int64_t> sizes, strides;
  int64_t blocks_c, lanes;
  bool transposed;
  at::Tensor panels;

  bool matches(const at::Tensor& w, int64_t c, int64_t l, bool t) const {
    return !storage.expired() && storage._unsafe_get_target() == w.storage().unsafeGetStorageImpl() &&
           data == w.data_ptr() && version == w._version() && sizes == w.sizes().vec() &&
           strides == w.strides().vec() && blocks_c == c && lanes == l && transposed == t;
  }
};

constexpr size_t kEntries = 16;  // a few layers x directions x (W_ih, W_hh, W_hh^T)
constexpr int64_t kMaxBytes = int64_t(64) << 20;  // the packed copies the cache may hold in all

std::mutex& cache_mutex() {
  static std::mutex m;
  return m;
}

std::list<Entry>& entries() {  // most recently used first
  static std::list<Entry> e;
  return e;
}

at::Tensor pack(const at::Tensor& w, int64_t blocks_c, int64_t lanes, bool transposed) {
  return pack_panels(transposed ? w.t().contiguous() : w, blocks_c, lanes);
}

}  // namespace

at::Tensor cached_panels(const at::Tensor& w, int64_t blocks_c, int64_t lanes, bool transposed) {
  if (w.is_inference()) return pack(w, blocks_c, lanes, transposed);  // no version counter to trust
  {
    std::lock_guard<std::mutex> lock(cache_mutex());
    auto& list = entries();
    for (auto it = list.begin(); it != list.end(); ++it) {
      if (it->matches(w, blocks_c, lanes, transposed)) {
        list.splice(list.begin(), list, it);
        return list.front().panels;
      }
    }
  }
  // packed outside the lock (concurrent callers may pack the same weight twice; both results are equal)
  at::Tensor panels = pack(w, blocks_c, lanes, transposed);
  Entry e{w.storage().getWeakStorageImpl(), w.data_ptr(), w._version(), w.sizes().vec(), w.strides().vec(),
          blocks_c, lanes, transposed, panels};
  std::lock_guard<std::mutex> lock(cache_mutex());
  auto& list = entries();
  list.remove_if([](const Entry& old) { return old.storage.expired(); });  // weights that are gone
  list.push_front(std::move(e));
  int64_t bytes = 0;
  size_t index = 0;
  for (auto it = list.begin(); it != list.end(); ++index) {  // the newest entry stays whatever its size
    bytes += static_cast<int64_t>(it->panels.nbytes());
    const bool keep = index == 0 || (index < kEntries && bytes <= kMaxBytes);
    it = keep ? std::next(it) : list.erase(it);
  }
  return panels;
}

}  // namespace cpu
}  // namespace fusedrnn
