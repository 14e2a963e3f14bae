// The scheduler of the CUDA emulation (cuda_emulation.h has the model).
//
// A launch runs on the calling OS thread.  Every CUDA thread of a resident
// block is a fiber: its own stack (pooled), switched to with a few
// instructions (x86-64; ucontext elsewhere, far slower because it saves the
// signal mask with a system call).  The scheduler, on the caller's stack,
// resumes ready fibers in a fixed order; a fiber runs until it reaches a
// barrier, a warp collective or a yield, or exits, and then tells the
// scheduler which by a request field.  All bookkeeping (who waits where,
// when a barrier is complete, what is stuck) is the scheduler's: a fiber only
// ever writes its own request fields.  One block is resident at a time for a
// plain launch (its blocks are independent), every block for a cooperative
// one (grid.sync needs them all).
//
// Sanitizers.  Under AddressSanitizer the fiber switches are announced
// (__sanitizer_start/finish_switch_fiber) so it tracks the right stack.  Under
// ThreadSanitizer every fiber is a TSan fiber and switches carry no
// synchronisation (__tsan_switch_to_fiber_no_sync): the happens-before edges
// are exactly CUDA's, from each barrier (every arriving thread releases into
// the barrier's sync object, every released thread acquires it), each warp
// collective (per lane), and the launch itself (the host's writes before the
// kernel, the kernel's before the host continues).  So two threads of a block
// touching the same shared or global word with no barrier between them is a
// TSan report, as racecheck's would be on a GPU.  The scheduler's own fields
// that fibers read are relaxed atomics: no race reports, no extra edges.
#include "cuda_emulation.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define FUSEDRNN_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define FUSEDRNN_EMU_ASAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__)
#define FUSEDRNN_EMU_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define FUSEDRNN_EMU_TSAN 1
#endif
#endif

#ifdef FUSEDRNN_EMU_ASAN
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#endif
#ifdef FUSEDRNN_EMU_TSAN
#include <sanitizer/tsan_interface.h>
#endif

#if !defined(__x86_64__) || defined(FUSEDRNN_EMU_UCONTEXT)
#define FUSEDRNN_EMU_USE_UCONTEXT 1
#include <ucontext.h>
#endif

namespace fusedrnn {
namespace emu {

__thread ThreadContext* current_context = nullptr;

namespace {

// ---------------------------------------------------------------------------
// settings (environment, read once per launch: cheap next to a launch)
// ---------------------------------------------------------------------------

enum class Order { forward, reverse, shuffle };

struct Settings {
  Order order = Order::forward;
  uint64_t seed = 0;
  double timeout_s = 60.0;
  size_t stack_bytes = 0;
};

Settings read_settings() {
  Settings s;
  if (const char* v = getenv("FUSEDRNN_EMU_SCHEDULE")) {
    const std::string o(v);
    if (o == "reverse") {
      s.order = Order::reverse;
    } else if (o.rfind("shuffle", 0) == 0) {
      s.order = Order::shuffle;
      s.seed = o.size() > 8 ? strtoull(o.c_str() + 8, nullptr, 10) : 1;
    } else if (!o.empty() && o != "forward") {
      throw std::invalid_argument("FUSEDRNN_EMU_SCHEDULE must be forward, reverse or shuffle[:seed], got '" + o +
                                  "'");
    }
  }
  if (const char* v = getenv("FUSEDRNN_EMU_TIMEOUT")) s.timeout_s = atof(v);
#if defined(FUSEDRNN_EMU_ASAN) || defined(FUSEDRNN_EMU_TSAN)
  size_t kb = 512;  // sanitizers grow frames
#else
  size_t kb = 64;
#endif
  if (const char* v = getenv("FUSEDRNN_EMU_STACK_KB")) kb = strtoull(v, nullptr, 10);
  s.stack_bytes = std::max<size_t>(kb, 16) * 1024;
  return s;
}

// ---------------------------------------------------------------------------
// fiber stacks and the switch
// ---------------------------------------------------------------------------

#ifndef FUSEDRNN_EMU_USE_UCONTEXT
// fusedrnn_emu_switch(save, to): pushes the callee-saved registers and the
// floating-point control words, stores the stack pointer in *save, loads `to`
// and pops the same frame from it (System V x86-64).
extern "C" void fusedrnn_emu_switch(void** save, void* to);
extern "C" void fusedrnn_emu_fiber_entry();
asm(R"(
  .text
  .p2align 4
  .globl fusedrnn_emu_switch
  .hidden fusedrnn_emu_switch
  .type fusedrnn_emu_switch, @function
fusedrnn_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size fusedrnn_emu_switch, .-fusedrnn_emu_switch

  .p2align 4
  .globl fusedrnn_emu_fiber_entry
  .hidden fusedrnn_emu_fiber_entry
  .type fusedrnn_emu_fiber_entry, @function
fusedrnn_emu_fiber_entry:
  movq %r12, %rdi
  call fusedrnn_emu_fiber_main@PLT
  ud2
  .size fusedrnn_emu_fiber_entry, .-fusedrnn_emu_fiber_entry
)");
#endif

struct Thread;

// One fiber: its stack, mmap'd (pages committed as touched) with a guard page
// below so that an overflow faults instead of overwriting a neighbour, and its
// saved context.  A fiber runs one CUDA thread after another (fiber_main's
// loop): a thread that exits leaves it waiting for the next, so stacks are
// neither re-initialised nor unwound between launches (ThreadSanitizer's
// shadow call stack of a fiber that never returned would grow for ever).  One
// whose thread did not exit (a failed kernel) is unmapped instead.
struct Stack {
  void* base = nullptr;  // the mapping, guard page first
  size_t mapped = 0;
  char* bottom = nullptr;  // lowest usable address
  size_t size = 0;
  bool started = false;
  Thread* thread = nullptr;  // the CUDA thread it runs next
#ifdef FUSEDRNN_EMU_USE_UCONTEXT
  ucontext_t context;
#else
  void* sp = nullptr;
#endif
#ifdef FUSEDRNN_EMU_ASAN
  void* fake_stack = nullptr;
#endif
#ifdef FUSEDRNN_EMU_TSAN
  void* tsan_fiber = nullptr;
#endif
};

// ThreadSanitizer's happens-before edges (no-ops in other builds).
inline void tsan_release(void* p) {
#ifdef FUSEDRNN_EMU_TSAN
  __tsan_release(p);
#else
  (void)p;
#endif
}
inline void tsan_acquire(void* p) {
#ifdef FUSEDRNN_EMU_TSAN
  __tsan_acquire(p);
#else
  (void)p;
#endif
}

class StackPool {
 public:
  ~StackPool() {
    for (Stack* s : free_) release(s);
  }
  Stack* get(size_t size) {
    ++live_;
    while (!free_.empty()) {
      Stack* s = free_.back();
      free_.pop_back();
      if (s->size == size) return s;
      release(s);  // FUSEDRNN_EMU_STACK_KB changed
    }
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    auto* s = new Stack;
    s->mapped = size + page;
    s->base = mmap(nullptr, s->mapped, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (s->base == MAP_FAILED) {
      delete s;
      // each stack is two mappings (guard + stack): a cooperative grid of tens of
      // thousands of threads can reach vm.max_map_count (65530 by default)
      throw std::runtime_error("fusedrnn CUDA emulation: cannot map another fiber stack (" +
                               std::to_string(size / 1024) + " KB; " + std::to_string(live_) +
                               " in use): out of memory or of vm.max_map_count mappings");
    }
    mprotect(s->base, page, PROT_NONE);
    s->bottom = static_cast<char*>(s->base) + page;
    s->size = size;
#ifdef FUSEDRNN_EMU_TSAN
    s->tsan_fiber = __tsan_create_fiber(0);
#endif
    return s;
  }
  // A stack whose thread exited: its fiber waits for the next one.
  void put(Stack* s) {
    --live_;
    if (free_.size() >= kKeep) {  // a large cooperative grid once: do not hold its stacks for ever
      release(s);
      return;
    }
    free_.push_back(s);
  }
  // A stack whose thread never finished (a failed kernel): its frames are abandoned.
  void discard(Stack* s) {
    --live_;
    tsan_acquire(s);  // what its fiber wrote up to its last suspend (released there)
    release(s);
  }

 private:
  static constexpr size_t kKeep = 4096;  // stacks kept for the next launches

  static void release(Stack* s) {
#ifdef FUSEDRNN_EMU_ASAN
    // abandoned frames leave their redzones poisoned; the next mapping at this address must not inherit them
    ASAN_UNPOISON_MEMORY_REGION(s->bottom, s->size);
#endif
    munmap(s->base, s->mapped);
#ifdef FUSEDRNN_EMU_TSAN
    __tsan_destroy_fiber(s->tsan_fiber);
#endif
    delete s;
  }

  std::vector<Stack*> free_;
  size_t live_ = 0;
};

thread_local StackPool stack_pool;

// ---------------------------------------------------------------------------
// launch state
// ---------------------------------------------------------------------------

enum Request : int { kRunning = 0, kBarrier, kGridSync, kWarp, kYield, kExit, kFail };

struct Launch;
struct Block;
struct Warp;

// The sync object of a barrier generation: a byte whose address ThreadSanitizer
// keys on.  Two per barrier (by generation parity): a thread released from
// generation g acquires before anyone can release into g+2's object, so an
// acquire never takes in writes made after the barrier it passed.
struct SyncPair {
  char objects[2];
  void* of(uint64_t generation) { return &objects[generation & 1]; }
};


struct Thread : ThreadContext {
  Launch* launch = nullptr;
  Block* block = nullptr;
  Warp* warp = nullptr;
  unsigned linear = 0, lane = 0;
  Stack* stack = nullptr;  // the fiber running it
  // written by the fiber, read by the scheduler
  std::atomic<int> request{kRunning};
  std::atomic<uint64_t> generation{0};  // of the barrier it arrives at
  std::atomic<unsigned> c_mask{0};
  std::atomic<uint64_t> c_signature{0};
  std::atomic<void*> c_data{nullptr};
  std::atomic<WarpFn> c_fn{nullptr};
  std::atomic<const char*> c_what{nullptr};
  std::string error;  // with kFail, published by the release store of `request`
  // written by the scheduler, read by the fiber
  std::atomic<bool> executor{false};
  // the fiber's own
  unsigned loads = 0;
  char collective_arrive = 0, collective_done = 0;  // per-lane TSan sync objects of warp collectives
  bool exited = false;                              // scheduler's
};

struct Pending {  // a warp collective some lanes of the mask have reached
  unsigned mask = 0, arrived = 0;
  uint64_t signature = 0;
  WarpFn fn = nullptr;
  const char* what = nullptr;
  unsigned first_lane = 0;
};

struct Warp {
  Thread* lanes[32] = {};
  unsigned present = 0;  // lanes that exist (a partial last warp has fewer)
  unsigned exited = 0;
  std::vector<Pending> pending;
};

struct Block {
  uint3 index{0, 0, 0};
  uint64_t linear = 0;
  std::unique_ptr<Thread[]> threads;
  std::vector<Warp> warps;
  unsigned char* shared = nullptr;
  unsigned live = 0, exited = 0, arrived = 0;
  std::atomic<uint64_t> generation{0};
  SyncPair sync;
  ~Block() { free(shared); }
};

struct Launch {
  const char* name;
  dim3 grid, block;
  size_t smem;
  bool cooperative;
  const KernelBody* body;
  Settings settings;
  std::deque<Thread*> ready;
  std::vector<std::unique_ptr<Block>> resident;
  unsigned threads_per_block = 0;
  // grid barrier (cooperative launches)
  uint64_t grid_live = 0, grid_arrived = 0, grid_exited = 0;
  std::atomic<uint64_t> grid_generation{0};
  SyncPair grid_sync;
  char end_sync = 0;  // the kernel's writes before the host continues
  uint64_t shuffle_state = 0;
  // the scheduler's context
#ifdef FUSEDRNN_EMU_USE_UCONTEXT
  ucontext_t host_context;
#else
  void* host_sp = nullptr;
#endif
#ifdef FUSEDRNN_EMU_ASAN
  void* host_fake_stack = nullptr;
#endif
#ifdef FUSEDRNN_EMU_TSAN
  void* host_fiber = nullptr;
#endif
};

// The host's writes before a block starts (the kernel's inputs, the Thread
// structs) happen before its threads run: the host releases, each fiber
// acquires first thing.  Per OS thread, like the launches.
thread_local char start_sync = 0;

#ifdef FUSEDRNN_EMU_ASAN
// The scheduler's stack (the OS thread's), as AddressSanitizer reports it to a fiber it switches to.
thread_local const void* host_stack_bottom = nullptr;
thread_local size_t host_stack_size = 0;
#endif

std::string format_dim(const uint3& d) {
  return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}

std::string where(const Thread* t) {
  return "block " + format_dim(t->block_idx) + " thread " + format_dim(t->thread_idx);
}

std::string kernel_label(const Launch& L) {
  return std::string("kernel ") + L.name + " (grid " + format_dim(L.grid) + ", block " + format_dim(L.block) + ", " +
         std::to_string(L.smem) + " bytes of dynamic shared memory" + (L.cooperative ? ", cooperative" : "") + ")";
}

// ---------------------------------------------------------------------------
// switching
// ---------------------------------------------------------------------------

Thread* self() { return static_cast<Thread*>(__atomic_load_n(&current_context, __ATOMIC_RELAXED)); }

// scheduler -> fiber t
void resume(Launch& L, Thread* t) {
  __atomic_store_n(&current_context, static_cast<ThreadContext*>(t), __ATOMIC_RELAXED);
  t->request.store(kRunning, std::memory_order_relaxed);
  Stack* const s = t->stack;
#ifndef FUSEDRNN_EMU_USE_UCONTEXT
  void* const to = s->sp;  // read as the scheduler: after the TSan switch below, accesses count as t's
#endif
#ifdef FUSEDRNN_EMU_ASAN
  __sanitizer_start_switch_fiber(&L.host_fake_stack, s->bottom, s->size);
#endif
#ifdef FUSEDRNN_EMU_TSAN
  __tsan_switch_to_fiber(s->tsan_fiber, __tsan_switch_to_fiber_no_sync);
#endif
#ifdef FUSEDRNN_EMU_USE_UCONTEXT
  swapcontext(&L.host_context, &s->context);
#else
  fusedrnn_emu_switch(&L.host_sp, to);
#endif
#ifdef FUSEDRNN_EMU_ASAN
  __sanitizer_finish_switch_fiber(L.host_fake_stack, nullptr, nullptr);
#endif
  __atomic_store_n(&current_context, static_cast<ThreadContext*>(nullptr), __ATOMIC_RELAXED);
}

// fiber t -> scheduler, with `request` saying why; returns when resumed (for
// kExit: to run the fiber's next thread; never for kFail)
void suspend(Thread* t, int request) {
  Launch& L = *t->launch;
  Stack* const s = t->stack;
  // everything read from the launch and the thread before a finished thread's last release
#ifdef FUSEDRNN_EMU_TSAN
  void* const host_fiber = L.host_fiber;
#endif
  t->request.store(request, request == kFail ? std::memory_order_release : std::memory_order_relaxed);
  // the last touch of its Thread by a finished thread: the host frees it once it acquired this
  if (request == kExit || request == kFail) tsan_release(&L.end_sync);
  tsan_release(s);  // for the host, before it unmaps the stack of a thread that never finished (discard)
#ifdef FUSEDRNN_EMU_ASAN
  __sanitizer_start_switch_fiber(request == kFail ? nullptr : &s->fake_stack, host_stack_bottom, host_stack_size);
#endif
#ifdef FUSEDRNN_EMU_TSAN
  __tsan_switch_to_fiber(host_fiber, __tsan_switch_to_fiber_no_sync);
#endif
#ifdef FUSEDRNN_EMU_USE_UCONTEXT
  swapcontext(&s->context, &L.host_context);
#else
  fusedrnn_emu_switch(&s->sp, L.host_sp);  // L.host_sp read as the scheduler, which wrote it
#endif
#ifdef FUSEDRNN_EMU_ASAN
  __sanitizer_finish_switch_fiber(s->fake_stack, &host_stack_bottom, &host_stack_size);
#endif
}

}  // namespace

// A fiber's life: run its stack's thread, report the exit, wait for the next.
extern "C" __attribute__((visibility("hidden"), noreturn)) void fusedrnn_emu_fiber_main(void* stack) {
  Stack* const s = static_cast<Stack*>(stack);
#ifdef FUSEDRNN_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &host_stack_bottom, &host_stack_size);
#endif
  for (;;) {
    tsan_acquire(&start_sync);  // before the first look at its Thread, which the host just wrote
    Thread* t = s->thread;
    Launch& L = *t->launch;
    try {
      L.body->run(L.body->closure);
    } catch (const std::exception& e) {
      fail("the kernel threw %s", e.what());
    } catch (...) {
      fail("the kernel threw an exception");
    }
    suspend(t, kExit);
  }
}

namespace {

#ifdef FUSEDRNN_EMU_USE_UCONTEXT
void fiber_start_ucontext(unsigned hi, unsigned lo) {
  fusedrnn_emu_fiber_main(reinterpret_cast<Stack*>((static_cast<uintptr_t>(hi) << 32) | lo));
}
#endif

// Gives t a fiber: a waiting one from the pool, or a new one whose first
// switch enters fusedrnn_emu_fiber_main.
void start_fiber(Thread* t, size_t stack_bytes) {
  Stack* s = stack_pool.get(stack_bytes);
  s->thread = t;
  t->stack = s;
  if (s->started) return;
  s->started = true;
#ifdef FUSEDRNN_EMU_USE_UCONTEXT
  getcontext(&s->context);
  s->context.uc_stack.ss_sp = s->bottom;
  s->context.uc_stack.ss_size = s->size;
  s->context.uc_link = nullptr;
  const uintptr_t p = reinterpret_cast<uintptr_t>(s);
  makecontext(&s->context, reinterpret_cast<void (*)()>(&fiber_start_ucontext), 2, static_cast<unsigned>(p >> 32),
              static_cast<unsigned>(p & 0xffffffffu));
#else
  // the frame fusedrnn_emu_switch pops: control words, r15..r12, rbx, rbp, and
  // the return address (the entry stub, which passes r12 = s to fiber_main)
  uintptr_t top = reinterpret_cast<uintptr_t>(s->bottom + s->size) & ~uintptr_t(15);
  auto* frame = reinterpret_cast<uint64_t*>(top - 80);
  frame[0] = 0x1f80u | (uint64_t{0x037f} << 32);  // MXCSR default, x87 control word default
  frame[1] = frame[2] = frame[3] = 0;              // r15, r14, r13
  frame[4] = reinterpret_cast<uint64_t>(s);        // r12
  frame[5] = frame[6] = 0;                         // rbx, rbp
  frame[7] = reinterpret_cast<uint64_t>(&fusedrnn_emu_fiber_entry);
  s->sp = frame;
#endif
}

// ---------------------------------------------------------------------------
// the scheduler
// ---------------------------------------------------------------------------

class Scheduler {
 public:
  explicit Scheduler(Launch& L) : L_(L) {}

  ~Scheduler() {  // after a failure: what is left resident
    tsan_acquire(&L_.end_sync);
    for (auto& b : L_.resident) release_block(*b);
  }

  void run() {
#ifdef FUSEDRNN_EMU_TSAN
    L_.host_fiber = __tsan_get_current_fiber();
#endif
    const uint64_t blocks = 1ull * L_.grid.x * L_.grid.y * L_.grid.z;
    if (L_.cooperative) {
      for (uint64_t i = 0; i < blocks; ++i) add_block(i);
      tsan_release(&start_sync);
      L_.grid_live = blocks * L_.threads_per_block;
      std::vector<Thread*> all;
      for (auto& b : L_.resident)
        for (unsigned i = 0; i < L_.threads_per_block; ++i) all.push_back(&b->threads[i]);
      make_ready(all);
      schedule();
    } else {
      for (uint64_t i = 0; i < blocks; ++i) {  // one block at a time: nothing may make them wait on each other
        add_block(i);
        tsan_release(&start_sync);
        std::vector<Thread*> all;
        for (unsigned j = 0; j < L_.threads_per_block; ++j) all.push_back(&L_.resident.back()->threads[j]);
        make_ready(all);
        schedule();
        tsan_acquire(&L_.end_sync);  // the block's threads are done with what is freed now
        release_block(*L_.resident.back());
        L_.resident.clear();
      }
    }
    tsan_acquire(&L_.end_sync);
  }

 private:
  [[noreturn]] void fail_launch(const std::string& what) {
    throw std::runtime_error("fusedrnn CUDA emulation: " + kernel_label(L_) + ": " + what);
  }

  void add_block(uint64_t linear) {
    // resident first: if a stack cannot be had, the destructor returns those taken
    L_.resident.push_back(std::make_unique<Block>());
    Block* b = L_.resident.back().get();
    b->linear = linear;
    b->index = uint3{static_cast<unsigned>(linear % L_.grid.x), static_cast<unsigned>(linear / L_.grid.x % L_.grid.y),
                     static_cast<unsigned>(linear / (1ull * L_.grid.x * L_.grid.y))};
    if (L_.smem > 0) {
      void* p = nullptr;
      if (posix_memalign(&p, 256, L_.smem) != 0) throw std::bad_alloc();
      // what a GPU leaves in shared memory is garbage: NaN in every float and 16-bit float
      memset(p, 0xff, L_.smem);
      b->shared = static_cast<unsigned char*>(p);
    }
    const unsigned n = L_.threads_per_block;
    b->threads.reset(new Thread[n]);
    b->warps.resize((n + 31) / 32);
    b->live = n;
    for (unsigned i = 0; i < n; ++i) {
      Thread* t = &b->threads[i];
      t->thread_idx = uint3{i % L_.block.x, i / L_.block.x % L_.block.y, i / (L_.block.x * L_.block.y)};
      t->block_idx = b->index;
      t->block_dim = L_.block;
      t->grid_dim = L_.grid;
      t->shared = b->shared;
      t->shared_bytes = L_.smem;
      t->launch = &L_;
      t->block = b;
      t->linear = i;
      t->lane = i % 32;
      t->warp = &b->warps[i / 32];
      t->warp->lanes[t->lane] = t;
      t->warp->present |= 1u << t->lane;
      start_fiber(t, L_.settings.stack_bytes);
    }
  }

  void release_block(Block& b) {
    for (unsigned i = 0; i < L_.threads_per_block; ++i) {
      Thread& t = b.threads[i];
      if (t.stack == nullptr) continue;
      if (t.exited) {
        stack_pool.put(t.stack);
      } else {
        stack_pool.discard(t.stack);
      }
      t.stack = nullptr;
    }
  }

  // Queue threads released together, in the schedule's order: at the back, or
  // `ahead` of everything queued.  Threads released from a block barrier or a
  // warp collective go ahead, so a block runs as far as it can (up to a
  // grid.sync, or its end) before the other blocks move: a block that reads
  // what another block writes without a grid.sync between reads it too early,
  // as a thread that skips a __syncthreads reads its neighbours' data too early.
  void make_ready(std::vector<Thread*> group, bool ahead = false) {
    switch (L_.settings.order) {
      case Order::forward: break;
      case Order::reverse: std::reverse(group.begin(), group.end()); break;
      case Order::shuffle:
        for (size_t i = group.size(); i > 1; --i) {  // Fisher-Yates on a xorshift sequence
          uint64_t& s = L_.shuffle_state;
          s ^= s << 13, s ^= s >> 7, s ^= s << 17;
          std::swap(group[i - 1], group[s % i]);
        }
        break;
    }
    if (ahead) {
      L_.ready.insert(L_.ready.begin(), group.begin(), group.end());
    } else {
      L_.ready.insert(L_.ready.end(), group.begin(), group.end());
    }
  }

  // Runs the ready threads until none is left.  A kernel that spins (threads
  // yield, nothing completes) fails after FUSEDRNN_EMU_TIMEOUT seconds without
  // progress; a slow one (a sanitizer build) does not.
  void schedule() {
    using Clock = std::chrono::steady_clock;
    uint64_t switches = 0, seen = progress_;
    Clock::time_point since = Clock::now();
    while (!L_.ready.empty()) {
      Thread* t = L_.ready.front();
      L_.ready.pop_front();
      resume(L_, t);
      handle(t, t->request.load(std::memory_order_acquire));
      if ((++switches & 1023) != 0) continue;
      if (progress_ != seen) {
        seen = progress_, since = Clock::now();
      } else if (std::chrono::duration<double>(Clock::now() - since).count() > L_.settings.timeout_s) {
        char limit[32];
        snprintf(limit, sizeof(limit), "%g", L_.settings.timeout_s);
        fail_launch(std::string("no barrier, warp operation or thread exit completed for FUSEDRNN_EMU_TIMEOUT=") +
                    limit + " s (a spin-wait that never ends?); " + describe());
      }
    }
    for (auto& b : L_.resident)
      if (b->live > 0) fail_launch("deadlock: no thread can continue; " + describe());
  }

  void handle(Thread* t, int request) {
    Block& b = *t->block;
    switch (request) {
      case kYield: L_.ready.push_back(t); return;
      case kFail: fail_launch(t->error + " (" + where(t) + ")");
      case kExit: {
        ++progress_;
        t->exited = true;
        --b.live, ++b.exited;
        t->warp->exited |= 1u << t->lane;
        for (const Pending& p : t->warp->pending)
          if (p.mask >> t->lane & 1u)
            fail_launch(std::string("lane ") + std::to_string(t->lane) + " exited while lanes of its mask " +
                        hex(p.mask) + " wait in " + p.what + " (" + where(t) + ")");
        if (b.arrived > 0 && b.arrived == b.live) divergent_barrier(b);
        if (L_.cooperative) {
          --L_.grid_live, ++L_.grid_exited;
          if (L_.grid_arrived > 0 && L_.grid_arrived == L_.grid_live) divergent_grid_sync();
        }
        return;
      }
      case kBarrier: {
        waiting_[&b].push_back(t);
        if (++b.arrived == b.live) {
          if (b.exited > 0) divergent_barrier(b);
          ++progress_;
          b.arrived = 0;
          b.generation.fetch_add(1, std::memory_order_relaxed);
          std::vector<Thread*> group;
          group.swap(waiting_[&b]);
          std::sort(group.begin(), group.end(), [](Thread* x, Thread* y) { return x->linear < y->linear; });
          make_ready(group, /*ahead=*/true);
        }
        return;
      }
      case kGridSync: {
        if (!L_.cooperative)
          fail_launch("grid.sync() in a kernel not launched cooperatively (" + where(t) +
                      "): launch it with launch_cooperative");
        grid_waiting_.push_back(t);
        if (++L_.grid_arrived == L_.grid_live) {
          if (L_.grid_exited > 0) divergent_grid_sync();
          ++progress_;
          L_.grid_arrived = 0;
          L_.grid_generation.fetch_add(1, std::memory_order_relaxed);
          std::vector<Thread*> group;
          group.swap(grid_waiting_);
          std::sort(group.begin(), group.end(), [](Thread* x, Thread* y) {
            return x->block != y->block ? x->block->linear < y->block->linear : x->linear < y->linear;
          });
          make_ready(group);
        }
        return;
      }
      case kWarp: warp_arrive(t); return;
    }
    fail_launch("internal error: unknown request " + std::to_string(request));
  }

  static std::string hex(unsigned v) {
    char buf[16];
    snprintf(buf, sizeof(buf), "%#x", v);
    return buf;
  }

  void warp_arrive(Thread* t) {
    Warp& w = *t->warp;
    const unsigned mask = t->c_mask.load(std::memory_order_relaxed), bit = 1u << t->lane;
    const char* what = t->c_what.load(std::memory_order_relaxed);
    const uint64_t signature = t->c_signature.load(std::memory_order_relaxed);
    const WarpFn fn = t->c_fn.load(std::memory_order_relaxed);
    if (!(mask & bit))
      fail_launch(std::string(what) + " with mask " + hex(mask) + " that leaves out the calling lane " +
                  std::to_string(t->lane) + " (" + where(t) + ")");
    if (mask & ~w.present)
      fail_launch(std::string(what) + " with mask " + hex(mask) + " naming lanes the block does not have (" +
                  where(t) + ")");
    if (mask & w.exited)
      fail_launch(std::string(what) + " with mask " + hex(mask) + " naming lanes that have exited (" + where(t) +
                  ")");
    Pending* p = nullptr;
    for (Pending& q : w.pending) {
      if (q.mask == mask) {
        p = &q;
      } else if (q.mask & mask) {
        fail_launch(std::string("divergent warp-synchronous calls: lane ") + std::to_string(t->lane) + " calls " +
                    what + " with mask " + hex(mask) + " while lane " + std::to_string(q.first_lane) + " waits in " +
                    q.what + " with mask " + hex(q.mask) + " (" + where(t) + ")");
      }
    }
    if (p == nullptr) {
      w.pending.push_back(Pending{mask, 0, signature, fn, what, t->lane});
      p = &w.pending.back();
    } else if (p->fn != fn || p->signature != signature || strcmp(p->what, what) != 0) {
      fail_launch(std::string("divergent warp-synchronous calls: lane ") + std::to_string(t->lane) + " calls " +
                  what + " while lane " + std::to_string(p->first_lane) + " calls " + p->what +
                  (p->fn == fn ? " with other arguments" : "") + ", mask " + hex(mask) + " (" + where(t) + ")");
    }
    p->arrived |= bit;
    if (p->arrived != mask) return;
    ++progress_;
    // complete: the last lane to arrive runs the operation, then all continue
    std::vector<Thread*> group;
    for (int lane = 0; lane < 32; ++lane) {
      if (!(mask >> lane & 1u)) continue;
      w.lanes[lane]->executor.store(w.lanes[lane] == t, std::memory_order_relaxed);
      if (w.lanes[lane] != t) group.push_back(w.lanes[lane]);
    }
    w.pending.erase(w.pending.begin() + (p - w.pending.data()));
    make_ready(group, /*ahead=*/true);
    L_.ready.push_front(t);  // the executor runs first
  }

  [[noreturn]] void divergent_barrier(const Block& b) {
    fail_launch("__syncthreads() reached by " + std::to_string(b.arrived) + " threads of block " +
                format_dim(b.index) + " while " + std::to_string(b.exited) +
                " had exited: a barrier in divergent code (undefined on a GPU)");
  }

  [[noreturn]] void divergent_grid_sync() {
    fail_launch("grid.sync() reached by " + std::to_string(L_.grid_arrived) + " threads while " +
                std::to_string(L_.grid_exited) + " had exited: every thread of the grid must call it");
  }

  // Where every unfinished thread is, per block (first few blocks).
  std::string describe() {
    std::string out;
    int shown = 0;
    for (auto& b : L_.resident) {
      std::map<std::string, unsigned> counts;
      for (unsigned i = 0; i < L_.threads_per_block; ++i) {
        const Thread& t = b->threads[i];
        std::string state;
        switch (t.exited ? kExit : t.request.load(std::memory_order_relaxed)) {
          case kExit: state = "exited"; break;
          case kBarrier: state = "at __syncthreads"; break;
          case kGridSync: state = "at grid.sync"; break;
          case kWarp: state = std::string("in ") + t.c_what.load(std::memory_order_relaxed); break;
          default: state = "runnable"; break;
        }
        ++counts[state];
      }
      if (b->live == 0) continue;
      if (shown++ == 4) {
        out += "; ...";
        break;
      }
      out += (shown > 1 ? "; block " : "block ") + format_dim(b->index) + ":";
      for (auto& [state, n] : counts) out += " " + std::to_string(n) + " " + state + ",";
      out.pop_back();
    }
    return out;
  }

  Launch& L_;
  uint64_t progress_ = 0;  // barriers, warp collectives and thread exits completed
  std::map<Block*, std::vector<Thread*>> waiting_;
  std::vector<Thread*> grid_waiting_;
};

// ---------------------------------------------------------------------------
// runtime API state
// ---------------------------------------------------------------------------

thread_local cudaError_t last_error = cudaSuccess;

std::mutex attribute_mutex;
std::map<const void*, int>& max_dynamic_shared() {
  static std::map<const void*, int> m;
  return m;
}

int allowed_dynamic_shared(const void* func) {
  std::lock_guard<std::mutex> lock(attribute_mutex);
  auto it = max_dynamic_shared().find(func);
  return it != max_dynamic_shared().end() ? it->second : device_properties().shared_per_block;
}

cudaError_t set_error(cudaError_t e) {
  if (e != cudaSuccess) last_error = e;
  return e;
}

}  // namespace

DeviceProperties& device_properties() {
  static DeviceProperties p;
  return p;
}

void fail(const char* format, ...) {
  char buf[1024];
  va_list args;
  va_start(args, format);
  vsnprintf(buf, sizeof(buf), format, args);
  va_end(args);
  Thread* t = self();
  if (t == nullptr) throw std::runtime_error(std::string("fusedrnn CUDA emulation: ") + buf);
  t->error = buf;
  suspend(t, kFail);
  __builtin_trap();  // a failed thread is never resumed
}

void syncthreads() {
  Thread* t = self();
  if (t == nullptr) throw std::runtime_error("fusedrnn CUDA emulation: __syncthreads() outside a kernel");
  Block& b = *t->block;
  const uint64_t g = b.generation.load(std::memory_order_relaxed);
  tsan_release(b.sync.of(g));
  suspend(t, kBarrier);
  tsan_acquire(b.sync.of(g));
}

void grid_sync() {
  Thread* t = self();
  if (t == nullptr) throw std::runtime_error("fusedrnn CUDA emulation: grid.sync() outside a kernel");
  Launch& L = *t->launch;
  const uint64_t g = L.grid_generation.load(std::memory_order_relaxed);
  tsan_release(L.grid_sync.of(g));
  suspend(t, kGridSync);
  tsan_acquire(L.grid_sync.of(g));
}

void yield() {
  if (Thread* t = self()) suspend(t, kYield);
}

void count_load() {
  Thread* t = self();
  if (t != nullptr && (++t->loads & 4095) == 0) suspend(t, kYield);
}

void warp_collective(unsigned mask, const char* what, uint64_t signature, void* lane_data, WarpFn fn) {
  Thread* t = self();
  if (t == nullptr) throw std::runtime_error(std::string("fusedrnn CUDA emulation: ") + what + " outside a kernel");
  t->c_mask.store(mask, std::memory_order_relaxed);
  t->c_what.store(what, std::memory_order_relaxed);
  t->c_signature.store(signature, std::memory_order_relaxed);
  t->c_data.store(lane_data, std::memory_order_relaxed);
  t->c_fn.store(fn, std::memory_order_relaxed);
  tsan_release(&t->collective_arrive);
  suspend(t, kWarp);
  if (t->executor.load(std::memory_order_relaxed)) {
    void* data[32] = {};
    Warp& w = *t->warp;
    for (int lane = 0; lane < 32; ++lane) {
      if (!(mask >> lane & 1u)) continue;
      tsan_acquire(&w.lanes[lane]->collective_arrive);
      data[lane] = w.lanes[lane]->c_data.load(std::memory_order_relaxed);
    }
    fn(data, mask);
    for (int lane = 0; lane < 32; ++lane)
      if (mask >> lane & 1u) tsan_release(&w.lanes[lane]->collective_done);
  }
  tsan_acquire(&t->collective_done);
}

cudaError_t launch_kernel(const char* name, dim3 grid, dim3 block, size_t smem, bool cooperative, const void* func,
                          const KernelBody& body) {
  if (self() != nullptr) throw std::runtime_error("fusedrnn CUDA emulation: a kernel launched from a kernel");
  const DeviceProperties& dev = device_properties();
  const uint64_t threads = 1ull * block.x * block.y * block.z;
  const uint64_t blocks = 1ull * grid.x * grid.y * grid.z;
  if (threads == 0 || threads > static_cast<uint64_t>(dev.max_threads_per_block) || block.z > 64 || blocks == 0 ||
      grid.y > 65535 || grid.z > 65535)
    return set_error(cudaErrorInvalidConfiguration);
  if (smem > static_cast<size_t>(allowed_dynamic_shared(func))) return set_error(cudaErrorInvalidValue);
  if (cooperative) {
    int per_sm = 0;
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, func, static_cast<int>(threads), smem);
    if (!dev.cooperative_launch) return set_error(cudaErrorInvalidConfiguration);
    if (blocks > 1ull * per_sm * dev.multiprocessors) return set_error(cudaErrorCooperativeLaunchTooLarge);
  }
  Launch L;
  L.name = name;
  L.grid = grid;
  L.block = block;
  L.smem = smem;
  L.cooperative = cooperative;
  L.body = &body;
  L.settings = read_settings();
  L.shuffle_state = L.settings.seed * 0x9e3779b97f4a7c15ull + 1;
  L.threads_per_block = static_cast<unsigned>(threads);
  Scheduler(L).run();
  return cudaSuccess;
}

}  // namespace emu
}  // namespace fusedrnn

// ---------------------------------------------------------------------------
// the runtime API
// ---------------------------------------------------------------------------

using fusedrnn::emu::device_properties;

const char* cudaGetErrorString(cudaError_t error) {
  switch (error) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDeviceFunction: return "invalid device function";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
    case cudaErrorCooperativeLaunchTooLarge: return "too many blocks in cooperative launch";
  }
  return "unknown error";
}

cudaError_t cudaGetLastError() {
  const cudaError_t e = fusedrnn::emu::last_error;
  fusedrnn::emu::last_error = cudaSuccess;
  return e;
}

cudaError_t cudaPeekAtLastError() { return fusedrnn::emu::last_error; }

cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }  // launches run synchronously

cudaError_t cudaDeviceGetAttribute(int* value, cudaDeviceAttr attr, int device) {
  if (device != 0) return fusedrnn::emu::set_error(cudaErrorInvalidDevice);
  const auto& d = device_properties();
  switch (attr) {
    case cudaDevAttrMaxThreadsPerBlock: *value = d.max_threads_per_block; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlock: *value = d.shared_per_block; return cudaSuccess;
    case cudaDevAttrWarpSize: *value = 32; return cudaSuccess;
    case cudaDevAttrMultiProcessorCount: *value = d.multiprocessors; return cudaSuccess;
    case cudaDevAttrMaxThreadsPerMultiProcessor: *value = d.max_threads_per_multiprocessor; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerMultiprocessor: *value = d.shared_per_multiprocessor; return cudaSuccess;
    case cudaDevAttrCooperativeLaunch: *value = d.cooperative_launch; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *value = d.shared_per_block_optin; return cudaSuccess;
  }
  return fusedrnn::emu::set_error(cudaErrorInvalidValue);
}

cudaError_t cudaFuncSetAttribute(const void* func, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      value > device_properties().shared_per_block_optin)
    return fusedrnn::emu::set_error(cudaErrorInvalidValue);
  std::lock_guard<std::mutex> lock(fusedrnn::emu::attribute_mutex);
  fusedrnn::emu::max_dynamic_shared()[func] = value;
  return cudaSuccess;
}

// Blocks per SM limited by threads, the block count and shared memory (registers are not modelled).
cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* blocks, const void*, int block_size,
                                                          size_t dynamic_smem) {
  const auto& d = device_properties();
  if (block_size <= 0) return fusedrnn::emu::set_error(cudaErrorInvalidValue);
  int n = std::min(d.max_blocks_per_multiprocessor, d.max_threads_per_multiprocessor / block_size);
  const size_t per_block = dynamic_smem + d.reserved_shared_per_block;
  n = std::min<int>(n, static_cast<int>(d.shared_per_multiprocessor / per_block));
  *blocks = std::max(n, 0);
  return cudaSuccess;
}
