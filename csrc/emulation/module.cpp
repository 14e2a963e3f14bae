// fusedrnn._cuda_emulation: the CUDA kernels of csrc/cuda and their ATen
// wrapper compiled for the CPU emulation (csrc/emulation/cuda_emulation.h).
// Loading it registers the ops of csrc/include/fusedrnn/op_schema.h as
// torch.ops.fusedrnn_cuda_emulation.* for CPU tensors; fusedrnn/backends/cuda.py loads it
// under FUSEDRNN_CUDA_EMULATE=1.  The Python functions here describe the
// build, set the emulated device, and run the emulator's self-test kernels
// (selftest.cu) for tests/test_cuda_emulation.py.
#include <torch/extension.h>

#include "cuda_emulation.h"
#include "selftest.h"

namespace {

std::string sanitizer() {
#if defined(__SANITIZE_ADDRESS__)
  return "address";
#elif defined(__SANITIZE_THREAD__)
  return "thread";
#else
  return "";
#endif
}

std::string fiber_switch() {
#if !defined(__x86_64__) || defined(FUSEDRNN_EMU_UCONTEXT)
  return "ucontext";
#else
  return "x86-64 assembly";
#endif
}

pybind11::dict device_properties() {
  const auto& d = fusedrnn::emu::device_properties();
  pybind11::dict out;
  out["multiprocessors"] = d.multiprocessors;
  out["max_threads_per_block"] = d.max_threads_per_block;
  out["max_threads_per_multiprocessor"] = d.max_threads_per_multiprocessor;
  out["max_blocks_per_multiprocessor"] = d.max_blocks_per_multiprocessor;
  out["shared_per_block"] = d.shared_per_block;
  out["shared_per_block_optin"] = d.shared_per_block_optin;
  out["shared_per_multiprocessor"] = d.shared_per_multiprocessor;
  out["reserved_shared_per_block"] = d.reserved_shared_per_block;
  out["cooperative_launch"] = d.cooperative_launch;
  return out;
}

// Changes the named properties; returns the previous ones (to restore).
pybind11::dict set_device_properties(const pybind11::kwargs& changes) {
  pybind11::dict before = device_properties();
  auto& d = fusedrnn::emu::device_properties();
  for (auto item : changes) {
    const std::string key = pybind11::str(item.first);
    const int value = item.second.cast<int>();
    int* field = key == "multiprocessors"                  ? &d.multiprocessors
                 : key == "max_threads_per_block"          ? &d.max_threads_per_block
                 : key == "max_threads_per_multiprocessor" ? &d.max_threads_per_multiprocessor
                 : key == "max_blocks_per_multiprocessor"  ? &d.max_blocks_per_multiprocessor
                 : key == "shared_per_block"               ? &d.shared_per_block
                 : key == "shared_per_block_optin"         ? &d.shared_per_block_optin
                 : key == "shared_per_multiprocessor"      ? &d.shared_per_multiprocessor
                 : key == "reserved_shared_per_block"      ? &d.reserved_shared_per_block
                 : key == "cooperative_launch"             ? &d.cooperative_launch
                                                           : nullptr;
    TORCH_CHECK(field != nullptr, "fusedrnn._cuda_emulation: unknown device property '", key, "'");
    *field = value;
  }
  return before;
}

// ---------------------------------------------------------------------------
// the self-test kernels on tensors (shapes and dtypes checked here: the
// kernels trust their pointers)
// ---------------------------------------------------------------------------

namespace st = fusedrnn::emu::selftest;

void check(cudaError_t err, const char* what) {
  TORCH_CHECK(err == cudaSuccess, "fusedrnn._cuda_emulation: ", what, " launch failed: ", cudaGetErrorString(err));
}

void check_tensor(const at::Tensor& t, const char* name, at::ScalarType dtype, int64_t min_numel) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == dtype && t.is_contiguous(), "fusedrnn._cuda_emulation: ",
              name, " must be a contiguous CPU tensor of ", dtype, ", got ", t.scalar_type(), " on ", t.device());
  TORCH_CHECK(t.numel() >= min_numel, "fusedrnn._cuda_emulation: ", name, " needs at least ", min_numel,
              " elements, got ", t.numel());
}

at::Tensor block_sum(const at::Tensor& in, int64_t threads, bool sync, int64_t smem, bool opt_in) {
  TORCH_CHECK(threads > 0 && in.numel() % threads == 0, "block_sum: in must hold whole blocks of ", threads);
  TORCH_CHECK(smem >= threads * 4, "block_sum: smem must hold ", threads, " floats");
  check_tensor(in, "in", at::kFloat, 0);
  at::Tensor out = at::empty({in.numel() / threads}, in.options());
  check(st::block_sum(in.data_ptr<float>(), out.data_ptr<float>(), static_cast<unsigned>(out.numel()),
                      static_cast<unsigned>(threads), sync, static_cast<size_t>(smem), opt_in),
        "block_sum");
  return out;
}

void divergent_barrier(int64_t threads, int64_t split) {
  check(st::divergent_barrier(static_cast<unsigned>(threads), static_cast<unsigned>(split)), "divergent_barrier");
}

void deadlock(int64_t threads) { check(st::deadlock(static_cast<unsigned>(threads)), "deadlock"); }

at::Tensor grid_exchange(int64_t blocks, bool sync, bool cooperative) {
  at::Tensor slots = at::full({blocks}, -1, at::kInt), seen = at::full({blocks}, -1, at::kInt);
  check(st::grid_exchange(slots.data_ptr<int>(), seen.data_ptr<int>(), static_cast<unsigned>(blocks), sync,
                          cooperative),
        "grid_exchange");
  return seen;
}

at::Tensor warp_ops(const at::Tensor& in) {
  check_tensor(in, "in", at::kInt, 1);
  at::Tensor out = at::empty({in.numel(), st::kWarpResults}, in.options());
  check(st::warp_ops(in.data_ptr<int>(), out.data_ptr<int>(), static_cast<unsigned>(in.numel())), "warp_ops");
  return out;
}

void divergent_warp() { check(st::divergent_warp(), "divergent_warp"); }

// a, b: [16, ld] storage (row-major: rows of the matrix; column-major: its columns);
// c, d likewise in float32.  Offsets in elements, to test misaligned pointers.
void wmma(const at::Tensor& a, const at::Tensor& b, const at::Tensor& c, const at::Tensor& d, bool a_row, bool b_row,
          bool c_row, bool d_row, int64_t a_offset) {
  const auto dt = a.scalar_type();
  TORCH_CHECK(dt == at::kHalf || dt == at::kBFloat16, "wmma: a must be float16 or bfloat16");
  for (const auto* t : {&a, &b}) check_tensor(*t, "a/b", dt, 16 * 16);
  for (const auto* t : {&c, &d}) check_tensor(*t, "c/d", at::kFloat, 16 * 16);
  TORCH_CHECK(a.dim() == 2 && b.sizes() == a.sizes() && c.dim() == 2 && d.sizes() == c.sizes() && a.size(0) == 16 &&
                  c.size(0) == 16 && a_offset >= 0 && a_offset + 16 <= a.size(1),
              "wmma: a, b must be [16, lda], c, d [16, ldc]");
  check(st::wmma(dt == at::kHalf ? 1 : 2, a_row, b_row, c_row, d_row,
                 static_cast<const char*>(a.data_ptr()) + a_offset * a.element_size(), b.data_ptr(),
                 c.data_ptr<float>(), d.data_ptr<float>(), static_cast<unsigned>(a.size(1)),
                 static_cast<unsigned>(b.size(1)), static_cast<unsigned>(c.size(1))),
        "wmma");
}

std::tuple<int64_t, double, int64_t> atomics(int64_t threads) {
  at::Tensor counter = at::zeros({1}, at::kInt), flag = at::zeros({1}, at::kInt), seen = at::zeros({1}, at::kInt);
  at::Tensor fsum = at::zeros({1}, at::kFloat);
  check(st::atomics(counter.data_ptr<int>(), fsum.data_ptr<float>(), flag.data_ptr<int>(), seen.data_ptr<int>(),
                    static_cast<unsigned>(threads)),
        "atomics");
  return {counter.item<int>(), fsum.item<float>(), seen.item<int>()};
}

void spin_forever() {
  at::Tensor flag = at::zeros({1}, at::kInt);
  check(st::spin_forever(flag.data_ptr<int>()), "spin_forever");
}

int64_t read_shared(int64_t smem, int64_t index) {
  TORCH_CHECK(smem >= 0 && index >= 0, "read_shared: sizes must be non-negative");
  at::Tensor out = at::zeros({1}, at::kByte);
  check(st::read_shared(out.data_ptr<uint8_t>(), static_cast<size_t>(smem), static_cast<size_t>(index)),
        "read_shared");
  return out.item<uint8_t>();
}

// float32 -> (float16 bits, bfloat16 bits) as int16 tensors, by the kernels' conversions
std::tuple<at::Tensor, at::Tensor> narrow(const at::Tensor& in) {
  check_tensor(in, "in", at::kFloat, 0);
  at::Tensor h = at::empty(in.sizes(), at::kShort), b = at::empty(in.sizes(), at::kShort);
  check(st::narrow(in.data_ptr<float>(), reinterpret_cast<uint16_t*>(h.data_ptr<int16_t>()),
                   reinterpret_cast<uint16_t*>(b.data_ptr<int16_t>()), in.numel()),
        "narrow");
  return {h, b};
}

// (float16 bits, bfloat16 bits) -> float32
std::tuple<at::Tensor, at::Tensor> widen(const at::Tensor& h, const at::Tensor& b) {
  check_tensor(h, "half_bits", at::kShort, 0);
  check_tensor(b, "bfloat16_bits", at::kShort, h.numel());
  at::Tensor fh = at::empty(h.sizes(), at::kFloat), fb = at::empty(h.sizes(), at::kFloat);
  check(st::widen(reinterpret_cast<const uint16_t*>(h.data_ptr<int16_t>()),
                  reinterpret_cast<const uint16_t*>(b.data_ptr<int16_t>()), fh.data_ptr<float>(), fb.data_ptr<float>(),
                  h.numel()),
        "widen");
  return {fh, fb};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fusedrnn's CUDA kernels on the CPU emulation (ops in torch.ops.fusedrnn_C, CPU tensors)";
  m.def("sanitizer", &sanitizer, "'address', 'thread' or '' (how this build was instrumented)");
  m.def("fiber_switch", &fiber_switch, "how the emulator switches between CUDA threads");
  m.def("device_properties", &device_properties, "the emulated device");
  m.def("set_device_properties", &set_device_properties, "change the emulated device; returns the old properties");
  pybind11::module t = m.def_submodule("selftest", "the emulator's self-test kernels (csrc/emulation/selftest.cu)");
  t.def("block_sum", &block_sum);
  t.def("divergent_barrier", &divergent_barrier);
  t.def("deadlock", &deadlock);
  t.def("grid_exchange", &grid_exchange);
  t.def("warp_ops", &warp_ops);
  t.def("divergent_warp", &divergent_warp);
  t.def("wmma", &wmma);
  t.def("atomics", &atomics);
  t.def("spin_forever", &spin_forever);
  t.def("read_shared", &read_shared);
  t.def("narrow", &narrow);
  t.def("widen", &widen);
}
