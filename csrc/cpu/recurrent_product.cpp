#include "recurrent_product.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "parallel.h"

namespace fusedrnn {
namespace cpu {

namespace {

#define FUSEDRNN_ALWAYS_INLINE inline __attribute__((always_inline))

// R batch rows x CG panels of L lanes, from row r0 and panel c0 of every
// term, accumulated in registers over all terms and all their K.
template <int L, int CG, int R>
FUSEDRNN_ALWAYS_INLINE void tile_block(const ProductTerm* terms, int nterms, int64_t r0, int64_t c0, float* tile,
                                       int64_t ld_tile) {
  typedef float vec __attribute__((vector_size(L * sizeof(float)), aligned(sizeof(float))));
  vec acc[R][CG];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < CG; ++c) acc[r][c] = vec{};
  for (int term = 0; term < nterms; ++term) {
    const int64_t K = terms[term].K, ld = terms[term].ld;
    const float* panels = terms[term].panels + c0 * K * L;
    // one pointer per row, kept in a register (R <= 8 leaves enough of the 16
    // general registers; with more rows GCC spills them and reloads one per FMA)
    const float* rows[R];
#pragma GCC unroll 32
    for (int r = 0; r < R; ++r) rows[r] = terms[term].lhs + (r0 + r) * ld;
    for (int64_t k = 0; k < K; ++k) {
      vec w[CG];
#pragma GCC unroll 4
      for (int c = 0; c < CG; ++c) w[c] = *reinterpret_cast<const vec*>(panels + (c * K + k) * L);
#pragma GCC unroll 32
      for (int r = 0; r < R; ++r) {
        const float hr = rows[r][k];
#pragma GCC unroll 4
        for (int c = 0; c < CG; ++c) acc[r][c] += hr * w[c];
      }
    }
  }
  float* out = tile + r0 * ld_tile + c0 * L;
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < CG; ++c) *reinterpret_cast<vec*>(out + r * ld_tile + c * L) = acc[r][c];
}

// The last (n mod R) rows: pick the block height at compile time.
template <int L, int CG, int R>
FUSEDRNN_ALWAYS_INLINE void tile_rows_tail(int64_t rows, const ProductTerm* terms, int nterms, int64_t r0,
                                           int64_t c0, float* tile, int64_t ld_tile) {
  if constexpr (R >= 1) {
    if (rows == R) {
      tile_block<L, CG, R>(terms, nterms, r0, c0, tile, ld_tile);
    } else {
      tile_rows_tail<L, CG, R - 1>(rows, terms, nterms, r0, c0, tile, ld_tile);
    }
  }
}

// Register budget: 32 vector registers with AVX-512, 16 otherwise; keep
// accumulators <= 24 (resp. 12) so panels and the broadcast fit beside them,
// and rows <= 8 (one general register each for the row pointers).
template <int L, int CG>
constexpr int rows_per_block() {
  constexpr int budget = L == 16 ? 24 : 12;
  return std::min(8, budget / CG);
}

// Panels [c0, c0 + CG) for all n rows.
template <int L, int CG>
FUSEDRNN_ALWAYS_INLINE void product_group(const ProductTerm* terms, int nterms, int64_t n, int64_t c0, float* tile,
                                          int64_t ld_tile) {
  constexpr int R = rows_per_block<L, CG>();
  int64_t r0 = 0;
  for (; r0 + R <= n; r0 += R) tile_block<L, CG, R>(terms, nterms, r0, c0, tile, ld_tile);
  if (r0 < n) tile_rows_tail<L, CG, R - 1>(n - r0, terms, nterms, r0, c0, tile, ld_tile);
}

// Four panels (LSTM's gates of one unit block) go through together, so each
// row of the left operand is read once per block; but at R4 rows per register
// block (6 with AVX-512), a short last block (n mod R4 <= R4/2 rows after
// full ones) would stream all four panels again for a few rows, latency-bound.
// Two panels at a time take 8 rows per block instead.  Measured in isolation
// (one core, AVX-512, K = 256..1024): pairs faster at n = 8 and 32, four at
// once as fast or faster at the other n tried (benchmarks/RESULTS.md, AMD EPYC
// section, "What changed since the previous table": the four gate panels).
template <int L>
bool four_panels_at_once(int64_t n) {
  constexpr int R4 = rows_per_block<L, 4>();
  const int64_t tail = n % R4;
  return n <= R4 || tail == 0 || tail > R4 / 2;
}

// All C panels: four at once (see above), three at once (GRU), else in pairs.
template <int L>
FUSEDRNN_ALWAYS_INLINE void product_tile_impl(const ProductTerm* terms, int nterms, int64_t n, int64_t C,
                                              float* tile) {
  const int64_t ld_tile = C * L;
  if (C == 4 && four_panels_at_once<L>(n)) {
    product_group<L, 4>(terms, nterms, n, 0, tile, ld_tile);
  } else if (C == 3) {
    product_group<L, 3>(terms, nterms, n, 0, tile, ld_tile);
  } else if (C == 1) {
    product_group<L, 1>(terms, nterms, n, 0, tile, ld_tile);
  } else {
    int64_t c = 0;
    for (; c + 2 <= C; c += 2) product_group<L, 2>(terms, nterms, n, c, tile, ld_tile);
    if (c < C) product_group<L, 1>(terms, nterms, n, c, tile, ld_tile);
  }
}

__attribute__((target("avx512f,avx512vl,avx2,fma"))) void product_tile_avx512(const ProductTerm* terms, int nterms,
                                                                                int64_t n, int64_t C, float* tile) {
  product_tile_impl<16>(terms, nterms, n, C, tile);
}

__attribute__((target("avx2,fma"))) void product_tile_avx2(const ProductTerm* terms, int nterms, int64_t n, int64_t C,
                                                            float* tile) {
  product_tile_impl<8>(terms, nterms, n, C, tile);
}

void product_tile_sse2(const ProductTerm* terms, int nterms, int64_t n, int64_t C, float* tile) {
  product_tile_impl<4>(terms, nterms, n, C, tile);
}

Isa detected_isa() {
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")) return Isa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
  return Isa::sse2;
}

// FUSEDRNN_CPU_ISA=avx2|sse2 (or avx512) caps the vector width, so that the
// kernels a machine without AVX-512 runs are tested on one that has it.  It
// can only lower the ISA (asking for more than the CPU has keeps what it has);
// an unknown name is ignored, as the choice happens once, outside any call.
Isa chosen_isa() {
  const Isa detected = detected_isa();
  const char* cap = std::getenv("FUSEDRNN_CPU_ISA");
  if (cap == nullptr) return detected;
  for (Isa isa : {Isa::sse2, Isa::avx2, Isa::avx512})
    if (std::strcmp(cap, isa_name(isa)) == 0) return std::min(isa, detected);
  return detected;
}

// One panel [K][L]: out[k*L + l] = first[l*rs + k*ks] for the `live` rows l
// (zero beyond).  k outer, the L lanes inner and unrolled: the stores are
// whole vectors, the loads contiguous when rs == 1 (W^T of a row-major W) and
// gathered otherwise (faster than l outer: benchmarks/RESULTS.md, "Packed
// weights").
template <int L>
FUSEDRNN_ALWAYS_INLINE void pack_panel_impl(const float* __restrict__ first, int64_t rs, int64_t ks, int64_t K,
                                            int64_t live, float* __restrict__ out) {
  if (live == L) {
    for (int64_t k = 0; k < K; ++k)
#pragma GCC unroll 16
      for (int l = 0; l < L; ++l) out[k * L + l] = first[l * rs + k * ks];
  } else {
    for (int64_t k = 0; k < K; ++k)
      for (int l = 0; l < L; ++l) out[k * L + l] = l < live ? first[l * rs + k * ks] : 0.0f;
  }
}

__attribute__((target("avx512f,avx512vl,avx2,fma"))) void pack_panel_avx512(const float* first, int64_t rs,
                                                                              int64_t ks, int64_t K, int64_t live,
                                                                              float* out) {
  pack_panel_impl<16>(first, rs, ks, K, live, out);
}

__attribute__((target("avx2,fma"))) void pack_panel_avx2(const float* first, int64_t rs, int64_t ks, int64_t K,
                                                         int64_t live, float* out) {
  pack_panel_impl<8>(first, rs, ks, K, live, out);
}

void pack_panel(const float* first, int64_t rs, int64_t ks, int64_t K, int64_t live, int64_t lanes, float* out) {
  const Isa isa = best_isa();
  if (lanes == 16 && isa == Isa::avx512) {
    pack_panel_avx512(first, rs, ks, K, live, out);
  } else if (lanes == 8 && isa != Isa::sse2) {
    pack_panel_avx2(first, rs, ks, K, live, out);
  } else if (lanes == 4) {
    pack_panel_impl<4>(first, rs, ks, K, live, out);
  } else {
    for (int64_t k = 0; k < K; ++k)
      for (int64_t l = 0; l < lanes; ++l) out[k * lanes + l] = l < live ? first[l * rs + k * ks] : 0.0f;
  }
}

}  // namespace

Isa best_isa() {
  static const Isa isa = chosen_isa();
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::avx512: return "avx512";
    case Isa::avx2: return "avx2";
    default: return "sse2";
  }
}

int panel_lanes(Isa isa) {
  switch (isa) {
    case Isa::avx512: return 16;
    case Isa::avx2: return 8;
    default: return 4;
  }
}

at::Tensor pack_panels(const at::Tensor& w, int64_t blocks_c, int64_t lanes, bool transposed) {
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == at::kFloat, "fusedrnn_C: pack_panels takes a 2-D float32 weight");
  // the matrix packed, M [C*U, K]: element (row, k) at src[row*rs + k*ks], whatever w's strides
  const int64_t rows = w.size(transposed ? 1 : 0), K = w.size(transposed ? 0 : 1);
  const int64_t rs = w.stride(transposed ? 1 : 0), ks = w.stride(transposed ? 0 : 1);
  const int64_t U = rows / blocks_c, L = lanes;
  const int64_t nblk = (U + L - 1) / L;
  at::Tensor panels = at::empty({nblk, blocks_c, K, L}, w.options());
  const float* src = w.data_ptr<float>();
  float* dst = panels.data_ptr<float>();
  // A pass of our own rather than ATen's permuted copy, which splits so small
  // a job over the intra-op threads that on a busy 2-core machine it cost far
  // more than this pass (benchmarks/RESULTS.md, "Packed weights").  Large
  // weights are split over our threads by unit block.
  const int nthreads = panels.numel() >= (int64_t(1) << 20) ? max_threads() : 1;
  run_parallel(nthreads, [&](int tid, int nt, Barrier&) {
    int64_t b0, b1;
    split_range(nblk, tid, nt, b0, b1);
    for (int64_t blk = b0; blk < b1; ++blk)
      for (int64_t c = 0; c < blocks_c; ++c)
        pack_panel(src + (c * U + blk * L) * rs, rs, ks, K, std::min(L, U - blk * L), L,
                   dst + (blk * blocks_c + c) * K * L);
  });
  return panels;
}

void product_tile(Isa isa, const ProductTerm* terms, int nterms, int64_t n, int64_t C, float* tile) {
  switch (isa) {
    case Isa::avx512: product_tile_avx512(terms, nterms, n, C, tile); break;
    case Isa::avx2: product_tile_avx2(terms, nterms, n, C, tile); break;
    default: product_tile_sse2(terms, nterms, n, C, tile); break;
  }
}

void product_tile(Isa isa, const float* lhs, int64_t ld_lhs, int64_t n, int64_t K, const float* panels, int64_t C,
                  float* tile) {
  const ProductTerm term{lhs, ld_lhs, K, panels};
  product_tile(isa, &term, 1, n, C, tile);
}

}  // namespace cpu
}  // namespace fusedrnn
