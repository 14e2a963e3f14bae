#include "parallel.h"

#include <ATen/Parallel.h>
#include <dlfcn.h>

#include <exception>
#include <mutex>
#include <thread>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FUSEDRNN_PAUSE() _mm_pause()
#else
#define FUSEDRNN_PAUSE() ((void)0)
#endif

namespace fusedrnn {
namespace cpu {

namespace {

using GompParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
using OmpInt = int (*)();

using MklSetThreadsLocal = int (*)(int);

struct OpenMpRuntime {
  GompParallel parallel = nullptr;
  OmpInt thread_num = nullptr;
  OmpInt num_threads = nullptr;
  MklSetThreadsLocal mkl_threads_local = nullptr;  // torch's MKL, where it has one
  bool usable() const { return parallel && thread_num && num_threads; }
};

// The runtime libtorch_cpu was linked against: dlsym on libtorch_cpu's handle
// searches its dependencies too, whatever file name the wheel gave libgomp.
const OpenMpRuntime& runtime() {
  static const OpenMpRuntime rt = [] {
    OpenMpRuntime r;
    Dl_info info;
    if (dladdr(reinterpret_cast<void*>(&at::get_num_threads), &info) == 0 || info.dli_fname == nullptr) {
      return r;
    }
    void* torch_lib = dlopen(info.dli_fname, RTLD_LAZY | RTLD_NOLOAD);
    if (torch_lib == nullptr) return r;
    r.parallel = reinterpret_cast<GompParallel>(dlsym(torch_lib, "GOMP_parallel"));
    r.thread_num = reinterpret_cast<OmpInt>(dlsym(torch_lib, "omp_get_thread_num"));
    r.num_threads = reinterpret_cast<OmpInt>(dlsym(torch_lib, "omp_get_num_threads"));
    // the C entry; the lower-case names are the Fortran one, taking an int*
    r.mkl_threads_local = reinterpret_cast<MklSetThreadsLocal>(dlsym(torch_lib, "MKL_Set_Num_Threads_Local"));
    return r;
  }();
  return rt;
}

struct Region {
  const RegionJob* job;
  Barrier* barrier;
  std::once_flag error_once;
  std::exception_ptr error;
};

void region_entry(void* data) {
  auto* region = static_cast<Region*>(data);
  const OpenMpRuntime& rt = runtime();
  // The runtime may grant fewer threads than asked (e.g. inside another
  // parallel region); every thread of the team sees the same count.
  const int nthreads = rt.num_threads();
  const int tid = rt.thread_num();
  region->barrier->set_threads(nthreads);
  try {
    (*region->job)(tid, nthreads, *region->barrier);
  } catch (...) {
    std::call_once(region->error_once, [&] { region->error = std::current_exception(); });
  }
}

}  // namespace

void Barrier::wait() {
  const int n = nthreads_.load(std::memory_order_relaxed);
  if (n <= 1) return;
  const uint32_t gen = generation_.load(std::memory_order_acquire);
  if (arrived_.fetch_add(1, std::memory_order_acq_rel) == n - 1) {
    arrived_.store(0, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_release);
    return;
  }
  // Spin (a step is microseconds), then yield: on an oversubscribed machine
  // the thread we wait for may need our core to get there.
  for (int spins = 0; generation_.load(std::memory_order_acquire) == gen; ++spins) {
    if (spins < 4096) {
      FUSEDRNN_PAUSE();
    } else {
      std::this_thread::yield();
    }
  }
}

SequentialBlas::SequentialBlas() {
  if (runtime().mkl_threads_local) previous_ = runtime().mkl_threads_local(1);
}

SequentialBlas::~SequentialBlas() {
  if (runtime().mkl_threads_local) runtime().mkl_threads_local(previous_);  // 0: back to the global setting
}

int max_threads() {
  return runtime().usable() ? std::max(1, at::get_num_threads()) : 1;
}

void run_parallel(int requested, const RegionJob& job) {
  const int wanted = std::max(1, std::min(requested, max_threads()));
  if (wanted == 1) {
    Barrier single(1);
    job(0, 1, single);
    return;
  }
  Barrier barrier(wanted);
  Region region{&job, &barrier, {}, nullptr};
  runtime().parallel(&region_entry, &region, static_cast<unsigned>(wanted), 0);
  if (region.error) std::rethrow_exception(region.error);
}

}  // namespace cpu
}  // namespace fusedrnn
