#include "recurrent_product.h"

#include <algorithm>

namespace fusedrnn {
namespace cpu {

namespace {

#define FUSEDRNN_ALWAYS_INLINE inline __attribute__((always_inline))

// R batch rows x CG panels of L lanes, accumulated in registers over all K.
template <int L, int CG, int R>
FUSEDRNN_ALWAYS_INLINE void tile_block(const float* lhs, int64_t ld_lhs, int64_t K, const float* panels,
                                       float* tile, int64_t ld_tile) {
  typedef float vec __attribute__((vector_size(L * sizeof(float)), aligned(sizeof(float))));
  // one pointer per row, kept in a register (R <= 8 leaves enough of the 16
  // general registers; with more rows GCC spills them and reloads one per FMA)
  const float* rows[R];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r) rows[r] = lhs + r * ld_lhs;
  vec acc[R][CG];
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < CG; ++c) acc[r][c] = vec{};
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
#pragma GCC unroll 32
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int c = 0; c < CG; ++c) *reinterpret_cast<vec*>(tile + r * ld_tile + c * L) = acc[r][c];
}

// The last (n mod R) rows: pick the block height at compile time.
template <int L, int CG, int R>
FUSEDRNN_ALWAYS_INLINE void tile_rows_tail(int64_t rows, const float* lhs, int64_t ld_lhs, int64_t K,
                                           const float* panels, float* tile, int64_t ld_tile) {
  if constexpr (R >= 1) {
    if (rows == R) {
      tile_block<L, CG, R>(lhs, ld_lhs, K, panels, tile, ld_tile);
    } else {
      tile_rows_tail<L, CG, R - 1>(rows, lhs, ld_lhs, K, panels, tile, ld_tile);
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

template <int L, int CG>
FUSEDRNN_ALWAYS_INLINE void product_group(const float* lhs, int64_t ld_lhs, int64_t n, int64_t K,
                                          const float* panels, float* tile, int64_t ld_tile) {
  constexpr int R = rows_per_block<L, CG>();
  int64_t r0 = 0;
  for (; r0 + R <= n; r0 += R)
    tile_block<L, CG, R>(lhs + r0 * ld_lhs, ld_lhs, K, panels, tile + r0 * ld_tile, ld_tile);
  if (r0 < n)
    tile_rows_tail<L, CG, R - 1>(n - r0, lhs + r0 * ld_lhs, ld_lhs, K, panels, tile + r0 * ld_tile, ld_tile);
}

// All C <= 4 panels at once (LSTM's four gates: 4 panels x 6 rows with
// AVX-512, so each row of the left operand is read once per unit block);
// wider products two panels at a time.
template <int L>
FUSEDRNN_ALWAYS_INLINE void product_tile_impl(const float* lhs, int64_t ld_lhs, int64_t n, int64_t K,
                                              const float* panels, int64_t C, float* tile) {
  const int64_t ld_tile = C * L;
  if (C == 4) {
    product_group<L, 4>(lhs, ld_lhs, n, K, panels, tile, ld_tile);
  } else if (C == 3) {
    product_group<L, 3>(lhs, ld_lhs, n, K, panels, tile, ld_tile);
  } else if (C == 1) {
    product_group<L, 1>(lhs, ld_lhs, n, K, panels, tile, ld_tile);
  } else {
    int64_t c = 0;
    for (; c + 2 <= C; c += 2)
      product_group<L, 2>(lhs, ld_lhs, n, K, panels + c * K * L, tile + c * L, ld_tile);
    if (c < C) product_group<L, 1>(lhs, ld_lhs, n, K, panels + c * K * L, tile + c * L, ld_tile);
  }
}

__attribute__((target("avx512f,avx512vl,avx2,fma"))) void product_tile_avx512(const float* lhs, int64_t ld_lhs,
                                                                                int64_t n, int64_t K,
                                                                                const float* panels, int64_t C,
                                                                                float* tile) {
  product_tile_impl<16>(lhs, ld_lhs, n, K, panels, C, tile);
}

__attribute__((target("avx2,fma"))) void product_tile_avx2(const float* lhs, int64_t ld_lhs, int64_t n, int64_t K,
                                                            const float* panels, int64_t C, float* tile) {
  product_tile_impl<8>(lhs, ld_lhs, n, K, panels, C, tile);
}

void product_tile_sse2(const float* lhs, int64_t ld_lhs, int64_t n, int64_t K, const float* panels, int64_t C,
                       float* tile) {
  product_tile_impl<4>(lhs, ld_lhs, n, K, panels, C, tile);
}

}  // namespace

Isa best_isa() {
  static const Isa isa = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl")) return Isa::avx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::avx2;
    return Isa::sse2;
  }();
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

at::Tensor pack_panels(const at::Tensor& w, int64_t blocks_c, int64_t lanes) {
  const int64_t U = w.size(0) / blocks_c;
  const int64_t K = w.size(1);
  const int64_t nblk = (U + lanes - 1) / lanes;
  // [C, U, K] -> pad U to nblk*L -> [C, nblk, L, K] -> [nblk, C, K, L]
  at::Tensor padded = w.reshape({blocks_c, U, K});
  if (nblk * lanes != U) padded = at::constant_pad_nd(padded, {0, 0, 0, nblk * lanes - U});
  return padded.reshape({blocks_c, nblk, lanes, K}).permute({1, 0, 3, 2}).contiguous();
}

void product_tile(Isa isa, const float* lhs, int64_t ld_lhs, int64_t n, int64_t K, const float* panels, int64_t C,
                  float* tile) {
  switch (isa) {
    case Isa::avx512: product_tile_avx512(lhs, ld_lhs, n, K, panels, C, tile); break;
    case Isa::avx2: product_tile_avx2(lhs, ld_lhs, n, K, panels, C, tile); break;
    default: product_tile_sse2(lhs, ld_lhs, n, K, panels, C, tile); break;
  }
}

}  // namespace cpu
}  // namespace fusedrnn
