#include "row_product.h"

#include <algorithm>
#include <cstring>

#include "parallel.h"

namespace fusedrnn {
namespace cpu {

namespace {

#define FUSEDRNN_ALWAYS_INLINE inline __attribute__((always_inline))

// L float lanes, loadable from any float address (GCC drops the attribute of an alias template, so a member typedef)
template <int L>
struct VecOf {
  typedef float type __attribute__((vector_size(L * sizeof(float)), aligned(sizeof(float))));
};
template <int L>
using Vec = typename VecOf<L>::type;

// The sum of a vector's lanes, halving it (GCC turns the copies into lane extracts).
template <int L>
FUSEDRNN_ALWAYS_INLINE float lane_sum(Vec<L> v) {
  if constexpr (L == 2) {  // (a one-lane vector_size type is a plain float, not subscriptable)
    return v[0] + v[1];
  } else {
    Vec<L / 2> lo, hi;
    std::memcpy(&lo, &v, sizeof lo);
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
    return lane_sum<L / 2>(lo + hi);
  }
}

// Integer lanes matching Vec<L>, for shuffle masks.
template <int L>
struct MaskOf {
  typedef int32_t type __attribute__((vector_size(L * sizeof(int32_t))));
};

// One level of a transposing reduction: vectors a, b -> one whose chunks of c lanes alternate between
// a's and b's, each the sum of a chunk and its neighbour c lanes on (lo + hi).
template <int L, int c>
FUSEDRNN_ALWAYS_INLINE Vec<L> fold_pair(Vec<L> a, Vec<L> b) {
  typename MaskOf<L>::type lo, hi;
#pragma GCC unroll 16
  for (int i = 0; i < L; ++i) {
    const int g = i / c;
    lo[i] = (g & 1) * L + (g >> 1) * 2 * c + i % c;
    hi[i] = lo[i] + c;
  }
  return __builtin_shuffle(a, b, lo) + __builtin_shuffle(a, b, hi);
}

// The lane sums of L vectors of L lanes at once, as one vector: log2(L) levels of fold_pair (L - 1
// vector additions and twice as many shuffles, against L * log2(L) additions and extracts for
// L separate lane_sum calls).  The levels leave lane i with the sum of v[bitrev(i)]: the caller passes
// its vectors in bit-reversed order and gets the sums in its own.
template <int L, int c = L / 2>
FUSEDRNN_ALWAYS_INLINE void fold_level(Vec<L>* v, int count) {
  if constexpr (c >= 1) {
#pragma GCC unroll 16
    for (int i = 0; i < count / 2; ++i) v[i] = fold_pair<L, c>(v[2 * i], v[2 * i + 1]);
    fold_level<L, c / 2>(v, count / 2);
  }
}

constexpr int bit_reversed(int i, int bits) {
  int r = 0;
  for (int b = 0; b < bits; ++b) r |= ((i >> b) & 1) << (bits - 1 - b);
  return r;
}

constexpr int log2_of(int n) { return n <= 1 ? 0 : 1 + log2_of(n / 2); }

// JR weight rows from j0 times BR operand rows from b0, over every term.
template <int L, int JR, int BR>
FUSEDRNN_ALWAYS_INLINE void dot_tile(const RowTerm* terms, int nterms, int64_t j0, int64_t b0, const float* bias0,
                                     const float* bias1, float* out, int64_t ldo) {
  Vec<L> acc[JR][BR];
  float tail[JR][BR];
#pragma GCC unroll 4
  for (int r = 0; r < JR; ++r)
#pragma GCC unroll 4
    for (int s = 0; s < BR; ++s) {
      acc[r][s] = Vec<L>{};
      tail[r][s] = 0.0f;
    }
  for (int term = 0; term < nterms; ++term) {
    const RowTerm& t = terms[term];
    const float* w[JR];
    const float* a[BR];
#pragma GCC unroll 4
    for (int r = 0; r < JR; ++r) w[r] = t.w + (j0 + r) * t.ldw;
#pragma GCC unroll 4
    for (int s = 0; s < BR; ++s) a[s] = t.a + (b0 + s) * t.lda;
    int64_t k = 0;
    for (; k + L <= t.K; k += L) {
      Vec<L> wv[JR];
#pragma GCC unroll 4
      for (int r = 0; r < JR; ++r) wv[r] = *reinterpret_cast<const Vec<L>*>(w[r] + k);
#pragma GCC unroll 4
      for (int s = 0; s < BR; ++s) {
        const Vec<L> av = *reinterpret_cast<const Vec<L>*>(a[s] + k);
#pragma GCC unroll 4
        for (int r = 0; r < JR; ++r) acc[r][s] += wv[r] * av;
      }
    }
    for (; k < t.K; ++k)
#pragma GCC unroll 4
      for (int r = 0; r < JR; ++r)
#pragma GCC unroll 4
        for (int s = 0; s < BR; ++s) tail[r][s] += w[r][k] * a[s][k];
  }
  if constexpr (JR * BR == L && L >= 8) {
    // a whole tile: its JR * BR = L lane sums in one transposing reduction, tile element (r, s) at lane s*JR + r
    Vec<L> v[L];
#pragma GCC unroll 16
    for (int q = 0; q < L; ++q) {
      const int p = bit_reversed(q, log2_of(L));
      v[q] = acc[p % JR][p / JR];
    }
    fold_level<L>(v, L);
#pragma GCC unroll 4
    for (int r = 0; r < JR; ++r) {
      const int64_t j = j0 + r;
      const float bias = (bias0 ? bias0[j] : 0.0f) + (bias1 ? bias1[j] : 0.0f);
#pragma GCC unroll 4
      for (int s = 0; s < BR; ++s) out[(b0 + s) * ldo + j] = bias + (v[0][s * JR + r] + tail[r][s]);
    }
  } else {
#pragma GCC unroll 4
    for (int r = 0; r < JR; ++r) {
      const int64_t j = j0 + r;
      const float bias = (bias0 ? bias0[j] : 0.0f) + (bias1 ? bias1[j] : 0.0f);
#pragma GCC unroll 4
      for (int s = 0; s < BR; ++s) out[(b0 + s) * ldo + j] = bias + (lane_sum<L>(acc[r][s]) + tail[r][s]);
    }
  }
}

// The last (n mod BR) operand rows: the tile height picked at compile time.
template <int L, int JR, int BR>
FUSEDRNN_ALWAYS_INLINE void dot_tile_rows(int64_t rows, const RowTerm* terms, int nterms, int64_t j0, int64_t b0,
                                          const float* bias0, const float* bias1, float* out, int64_t ldo) {
  if constexpr (BR >= 1) {
    if (rows == BR) {
      dot_tile<L, JR, BR>(terms, nterms, j0, b0, bias0, bias1, out, ldo);
    } else {
      dot_tile_rows<L, JR, BR - 1>(rows, terms, nterms, j0, b0, bias0, bias1, out, ldo);
    }
  }
}

// Weight rows [j_begin, j_end) for all n operand rows.
template <int L, int JR, int BR>
FUSEDRNN_ALWAYS_INLINE void dot_columns(const RowTerm* terms, int nterms, int64_t n, int64_t j_begin, int64_t j_end,
                                        const float* bias0, const float* bias1, float* out, int64_t ldo) {
  int64_t j = j_begin;
  for (; j + JR <= j_end; j += JR) {
    int64_t b = 0;
    for (; b + BR <= n; b += BR) dot_tile<L, JR, BR>(terms, nterms, j, b, bias0, bias1, out, ldo);
    if (b < n) dot_tile_rows<L, JR, BR - 1>(n - b, terms, nterms, j, b, bias0, bias1, out, ldo);
  }
  for (; j < j_end; ++j) {
    int64_t b = 0;
    for (; b + BR <= n; b += BR) dot_tile<L, 1, BR>(terms, nterms, j, b, bias0, bias1, out, ldo);
    if (b < n) dot_tile_rows<L, 1, BR - 1>(n - b, terms, nterms, j, b, bias0, bias1, out, ldo);
  }
}

// Register budget: JR x BR accumulators plus JR weight vectors and one operand
// vector: 4 x 4 + 5 of AVX-512's 32 registers, 4 x 2 + 5 of AVX2's 16.  Taller
// tiles that read the weights fewer times lost (one thread, LSTM, B = 8..16,
// I = H = 64..256): 2 x 8 took 1.6-1.7x the time of 4 x 4, 1 x 16 1.7-2.5x.
__attribute__((target("avx512f,avx512vl,avx2,fma"))) void dot_columns_avx512(
    const RowTerm* terms, int nterms, int64_t n, int64_t j0, int64_t j1, const float* bias0, const float* bias1,
    float* out, int64_t ldo) {
  dot_columns<16, 4, 4>(terms, nterms, n, j0, j1, bias0, bias1, out, ldo);
}

__attribute__((target("avx2,fma"))) void dot_columns_avx2(const RowTerm* terms, int nterms, int64_t n, int64_t j0,
                                                          int64_t j1, const float* bias0, const float* bias1,
                                                          float* out, int64_t ldo) {
  dot_columns<8, 4, 2>(terms, nterms, n, j0, j1, bias0, bias1, out, ldo);
}

void dot_columns_sse2(const RowTerm* terms, int nterms, int64_t n, int64_t j0, int64_t j1, const float* bias0,
                      const float* bias1, float* out, int64_t ldo) {
  dot_columns<4, 4, 2>(terms, nterms, n, j0, j1, bias0, bias1, out, ldo);
}

void dot_columns_for_isa(const RowTerm* terms, int nterms, int64_t n, int64_t j0, int64_t j1, const float* bias0,
                         const float* bias1, float* out, int64_t ldo) {
  switch (best_isa()) {
    case Isa::avx512: return dot_columns_avx512(terms, nterms, n, j0, j1, bias0, bias1, out, ldo);
    case Isa::avx2: return dot_columns_avx2(terms, nterms, n, j0, j1, bias0, bias1, out, ldo);
    default: return dot_columns_sse2(terms, nterms, n, j0, j1, bias0, bias1, out, ldo);
  }
}

// R rows from r0 times CG vectors of columns from col0, over all K.
template <int L, int R, int CG>
FUSEDRNN_ALWAYS_INLINE void broadcast_tile(const float* a, int64_t ars, int64_t acs, int64_t r0, int64_t K,
                                           const float* w, int64_t ldw, int64_t col0, float* out, int64_t ldo) {
  Vec<L> acc[R][CG];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int c = 0; c < CG; ++c) acc[r][c] = Vec<L>{};
  const float* rows[R];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) rows[r] = a + (r0 + r) * ars;
  for (int64_t k = 0; k < K; ++k) {
    Vec<L> wv[CG];
#pragma GCC unroll 2
    for (int c = 0; c < CG; ++c) wv[c] = *reinterpret_cast<const Vec<L>*>(w + k * ldw + col0 + c * L);
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const float ar = rows[r][k * acs];
#pragma GCC unroll 2
      for (int c = 0; c < CG; ++c) acc[r][c] += ar * wv[c];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int c = 0; c < CG; ++c) *reinterpret_cast<Vec<L>*>(out + (r0 + r) * ldo + col0 + c * L) = acc[r][c];
}

template <int L, int R, int CG>
FUSEDRNN_ALWAYS_INLINE void broadcast_tile_rows(int64_t rows, const float* a, int64_t ars, int64_t acs, int64_t r0,
                                                int64_t K, const float* w, int64_t ldw, int64_t col0, float* out,
                                                int64_t ldo) {
  if constexpr (R >= 1) {
    if (rows == R) {
      broadcast_tile<L, R, CG>(a, ars, acs, r0, K, w, ldw, col0, out, ldo);
    } else {
      broadcast_tile_rows<L, R - 1, CG>(rows, a, ars, acs, r0, K, w, ldw, col0, out, ldo);
    }
  }
}

// Rows [r_begin, r_end) of the CG vectors of columns from col0.
template <int L, int R, int CG>
FUSEDRNN_ALWAYS_INLINE void broadcast_columns(const float* a, int64_t ars, int64_t acs, int64_t r_begin,
                                              int64_t r_end, int64_t K, const float* w, int64_t ldw, int64_t col0,
                                              float* out, int64_t ldo) {
  int64_t r = r_begin;
  for (; r + R <= r_end; r += R) broadcast_tile<L, R, CG>(a, ars, acs, r, K, w, ldw, col0, out, ldo);
  if (r < r_end) broadcast_tile_rows<L, R - 1, CG>(r_end - r, a, ars, acs, r, K, w, ldw, col0, out, ldo);
}

// Rows [r_begin, r_end): the columns in tiles of two vectors, then one, then the last ones (fewer than a
// vector) one by one, each element summed over k in order.  (No lambdas in here: a lambda is a function
// of its own, compiled without the caller's target attribute, and would run these vectors emulated.)
template <int L, int R>
FUSEDRNN_ALWAYS_INLINE void broadcast_rows(const float* a, int64_t ars, int64_t acs, int64_t r_begin, int64_t r_end,
                                           int64_t K, const float* w, int64_t ldw, int64_t N, float* out,
                                           int64_t ldo) {
  int64_t col = 0;
  for (; col + 2 * L <= N; col += 2 * L)
    broadcast_columns<L, R, 2>(a, ars, acs, r_begin, r_end, K, w, ldw, col, out, ldo);
  for (; col + L <= N; col += L) broadcast_columns<L, R, 1>(a, ars, acs, r_begin, r_end, K, w, ldw, col, out, ldo);
  for (; col < N; ++col)
    for (int64_t r = r_begin; r < r_end; ++r) {
      float sum = 0.0f;
      for (int64_t k = 0; k < K; ++k) sum += a[r * ars + k * acs] * w[k * ldw + col];
      out[r * ldo + col] = sum;
    }
}

// Registers: R x 2 accumulators, 2 weight vectors and a broadcast: 6 x 2 + 3 of AVX-512's 32, 4 x 2 + 3 of 16.
__attribute__((target("avx512f,avx512vl,avx2,fma"))) void broadcast_rows_avx512(
    const float* a, int64_t ars, int64_t acs, int64_t r0, int64_t r1, int64_t K, const float* w, int64_t ldw,
    int64_t N, float* out, int64_t ldo) {
  broadcast_rows<16, 6>(a, ars, acs, r0, r1, K, w, ldw, N, out, ldo);
}

__attribute__((target("avx2,fma"))) void broadcast_rows_avx2(const float* a, int64_t ars, int64_t acs, int64_t r0,
                                                             int64_t r1, int64_t K, const float* w, int64_t ldw,
                                                             int64_t N, float* out, int64_t ldo) {
  broadcast_rows<8, 4>(a, ars, acs, r0, r1, K, w, ldw, N, out, ldo);
}

void broadcast_rows_sse2(const float* a, int64_t ars, int64_t acs, int64_t r0, int64_t r1, int64_t K, const float* w,
                         int64_t ldw, int64_t N, float* out, int64_t ldo) {
  broadcast_rows<4, 4>(a, ars, acs, r0, r1, K, w, ldw, N, out, ldo);
}

void broadcast_rows_for_isa(const float* a, int64_t ars, int64_t acs, int64_t r0, int64_t r1, int64_t K,
                            const float* w, int64_t ldw, int64_t N, float* out, int64_t ldo) {
  switch (best_isa()) {
    case Isa::avx512: return broadcast_rows_avx512(a, ars, acs, r0, r1, K, w, ldw, N, out, ldo);
    case Isa::avx2: return broadcast_rows_avx2(a, ars, acs, r0, r1, K, w, ldw, N, out, ldo);
    default: return broadcast_rows_sse2(a, ars, acs, r0, r1, K, w, ldw, N, out, ldo);
  }
}

// Split `count` items over up to `threads` threads in fixed blocks of `block` (the same blocks whoever
// runs them), calling fn(begin, end) for each thread's range.
template <typename F>
void in_fixed_blocks(int64_t count, int64_t block, int threads, const F& fn) {
  const int64_t blocks = (count + block - 1) / block;
  const int nthreads = static_cast<int>(std::min<int64_t>(std::max(threads, 1), blocks));
  if (nthreads <= 1) {
    fn(int64_t(0), count);
    return;
  }
  run_parallel(nthreads, [&](int tid, int nt, Barrier&) {
    int64_t b0, b1;
    split_range(blocks, tid, nt, b0, b1);
    const int64_t begin = b0 * block, end = std::min(count, b1 * block);
    if (begin < end) fn(begin, end);
  });
}

}  // namespace

void broadcast_product(const float* a, int64_t ars, int64_t acs, int64_t n, int64_t K, const float* w, int64_t ldw,
                       int64_t N, float* out, int64_t ldo, int threads) {
  if (n <= 0 || N <= 0) return;
  // blocks of 48 rows: a multiple of every ISA's tile height (6 and 4)
  in_fixed_blocks(n, 48, threads, [&](int64_t r0, int64_t r1) {
    broadcast_rows_for_isa(a, ars, acs, r0, r1, K, w, ldw, N, out, ldo);
  });
}

void row_product(const RowTerm* terms, int nterms, int64_t n, int64_t N, const float* bias0, const float* bias1,
                 float* out, int64_t ldo, int threads) {
  if (n <= 0 || N <= 0) return;
  // blocks of 64 columns: fixed by N alone, so each element is computed the same way whoever computes it
  in_fixed_blocks(N, 64, threads, [&](int64_t j0, int64_t j1) {
    dot_columns_for_isa(terms, nterms, n, j0, j1, bias0, bias1, out, ldo);
  });
}

}  // namespace cpu
}  // namespace fusedrnn
