// A parallel region on torch's own intra-op (OpenMP) thread pool, with a
// barrier usable inside it.
//
// Why not at::parallel_for: it is a header template that is only parallel in
// code compiled with -fopenmp, which this extension's build does not pass;
// compiled without it, at::parallel_for runs serially.  And a fused recurrent
// kernel wants one region for all time steps with a cheap barrier between
// steps, which at::parallel_for cannot express.  So we call the OpenMP
// runtime that libtorch_cpu already loaded (GOMP_parallel, the entry point
// `#pragma omp parallel` compiles to, also exported by LLVM's and Intel's
// runtimes), found through libtorch_cpu's own dependency tree.  Same threads
// as MKL and ATen use: no second pool competing for the cores.  Where no such
// runtime is found, the region runs on the calling thread alone.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>

namespace fusedrnn {
namespace cpu {

// Sense-free generation barrier for the threads of one region (spins; the
// team's threads are dedicated to the region while it runs).
class Barrier {
 public:
  explicit Barrier(int nthreads) : nthreads_(nthreads) {}
  void wait();
  // Every thread of the team stores the same count before its first wait.
  void set_threads(int nthreads) { nthreads_.store(nthreads, std::memory_order_relaxed); }

 private:
  std::atomic<int> nthreads_;
  std::atomic<int> arrived_{0};
  std::atomic<uint32_t> generation_{0};
};

// Calls job(tid, nthreads, barrier) once on each of up to `requested` threads
// (tid 0 is the caller) and returns when all have returned.  The job must not
// throw once it may wait on the barrier (all argument checks happen before).
using RegionJob = std::function<void(int tid, int nthreads, Barrier& barrier)>;
void run_parallel(int requested, const RegionJob& job);

// How many threads a region may use: torch.get_num_threads(), or 1 where no
// OpenMP runtime was found.
int max_threads();

// For the lifetime of this object, BLAS calls made on the calling thread run
// on that thread alone: MKL's thread-local setting (MKL_Set_Num_Threads_Local,
// which torch's MKL exports), restored after.  A no-op where torch has no MKL;
// inside a parallel region of two or more threads an OpenMP BLAS is
// sequential anyway.
class SequentialBlas {
 public:
  SequentialBlas();
  ~SequentialBlas();
  SequentialBlas(const SequentialBlas&) = delete;
  SequentialBlas& operator=(const SequentialBlas&) = delete;

 private:
  int previous_ = 0;
};

// Thread tid's share [begin, end) of `count` work items split into nthreads
// contiguous ranges.
inline void split_range(int64_t count, int tid, int nthreads, int64_t& begin, int64_t& end) {
  begin = count * tid / nthreads;
  end = count * (tid + 1) / nthreads;
}

// Split H units over the threads in multiples of `align` (so a unit falls in the
// same vector lane and tail whatever the thread count: the same bits), run
// fn(u0, u1) on each; one thread for less than 16384 elements of `work`, where
// waking a partner costs more than it saves.  The gemm strategy's per-step
// passes and IndRNN's whole-sequence recurrence (diagonal_recurrence.cpp).
template <typename F>
void parallel_units(int64_t H, int64_t work, int64_t align, const F& fn) {
  const int nthreads = work >= 16384 ? max_threads() : 1;
  const int64_t chunks = (H + align - 1) / align;
  run_parallel(nthreads, [&](int tid, int nt, Barrier&) {
    int64_t c0, c1;
    split_range(chunks, tid, nt, c0, c1);
    const int64_t u0 = c0 * align, u1 = c1 * align < H ? c1 * align : H;
    if (u0 < u1) fn(u0, u1);
  });
}

}  // namespace cpu
}  // namespace fusedrnn
