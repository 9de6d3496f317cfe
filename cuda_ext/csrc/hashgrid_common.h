// Index and weight helpers shared by the CPU and CUDA hash-encoding kernels.
// The layout and hashing match cuda_ext/reference.py exactly (the oracle in tests).
#pragma once
#include <cstdint>
#include <type_traits>

#ifdef __CUDACC__
#define HG_HD __host__ __device__ __forceinline__
#else
#define HG_HD inline
#endif

namespace hashgrid {

constexpr int kMaxDims = 4;
constexpr int64_t kMaxRows = (int64_t(1) << 31) - 1;  // table rows in all (32-bit vertex math within a level)

// Teschner et al.'s primes (the first is 1 so dimension 0 keeps coherence).
HG_HD int64_t prime(int d) {
  switch (d) {
    case 0: return 1;
    case 1: return 2654435761ll;
    case 2: return 805459861ll;
    default: return 3674653429ll;
  }
}

// Table layout: one [R, F] table, level l in rows offsets[l] .. offsets[l + 1] - 1, so each
// level has only the rows it can use (a coarse dense level needs (res + 1)^D, far fewer than
// a hashed level's 2^T). Vertex coordinates and in-level rows are 32-bit: resolutions stay
// far below 2^31 (float positions lose integer precision past 2^24 anyway) and R is below
// 2^31 (the bindings check). 64-bit integer arithmetic costs several instructions per
// operation on a GPU; only the level's first row is kept in 64 bits.

// Row within a level of integer vertex `c` on a level with resolution `res` (dense when
// it fits). Hashed rows match the reference (int64 products, XOR, non-negative modulo). For
// the usual power-of-two table the row depends only on the hash's low bits, so 32-bit
// products and a mask give the same row without a 64-bit division (slow on GPUs).
HG_HD int64_t vertex_row(const int32_t* c, const int32_t* res, int dims, int64_t table_size, bool dense) {
  if (dense) {
    int32_t idx = 0, stride = 1;
    for (int d = 0; d < dims; ++d) {
      idx += c[d] * stride;
      stride *= res[d] + 1;
    }
    return idx;
  }
  if ((table_size & (table_size - 1)) == 0 && table_size <= (int64_t(1) << 32)) {
    uint32_t h = static_cast<uint32_t>(c[0]);
    for (int d = 1; d < dims; ++d) h ^= static_cast<uint32_t>(c[d]) * static_cast<uint32_t>(prime(d));
    return static_cast<int64_t>(h & static_cast<uint32_t>(table_size - 1));
  }
  int64_t h = c[0] * prime(0);
  for (int d = 1; d < dims; ++d) h ^= c[d] * prime(d);
  const int64_t m = h % table_size;
  return m < 0 ? m + table_size : m;
}

// Cell corner and fractional position of x (clamped to [0, 1]) on one level.
template <typename scalar_t>
HG_HD void locate(const scalar_t* x, const int32_t* res, int dims, int32_t* cell, scalar_t* frac, bool* inside) {
  for (int d = 0; d < dims; ++d) {
    scalar_t v = x[d];
    inside[d] = v >= scalar_t(0) && v <= scalar_t(1);
    v = v < scalar_t(0) ? scalar_t(0) : (v > scalar_t(1) ? scalar_t(1) : v);
    scalar_t pos = v * static_cast<scalar_t>(res[d]);
    int32_t c = static_cast<int32_t>(pos);  // pos >= 0, so truncation == floor
    if (c > res[d] - 1) c = res[d] - 1;
    if (c < 0) c = 0;
    cell[d] = c;
    frac[d] = pos - static_cast<scalar_t>(c);
  }
}

// True when the level's (res + 1)^D vertices fit in the table: index it densely. Stops
// multiplying once the count passes the table size, so it cannot overflow.
HG_HD bool level_dense(const int32_t* res, int dims, int64_t table_size) {
  int64_t verts = 1;
  for (int d = 0; d < dims; ++d) {
    verts *= res[d] + 1;
    if (verts > table_size) return false;
  }
  return true;
}

// Corner k of a cell (bit d of k = upper side in dim d): writes its vertex to c and
// returns its multilinear interpolation weight.
template <typename scalar_t>
HG_HD scalar_t corner(int k, const int32_t* cell, const scalar_t* frac, int dims, int32_t* c) {
  scalar_t w = 1;
  for (int d = 0; d < dims; ++d) {
    const int bit = (k >> d) & 1;
    c[d] = cell[d] + bit;
    w *= bit ? frac[d] : scalar_t(1) - frac[d];
  }
  return w;
}

// d(weight of corner k) / d(x_d) on a level of resolution res.
template <typename scalar_t>
HG_HD scalar_t corner_weight_grad(int k, int d, const scalar_t* frac, const int32_t* res, int dims) {
  scalar_t dw = static_cast<scalar_t>(res[d]) * (((k >> d) & 1) ? scalar_t(1) : scalar_t(-1));
  for (int e = 0; e < dims; ++e) {
    if (e != d) dw *= ((k >> e) & 1) ? frac[e] : scalar_t(1) - frac[e];
  }
  return dw;
}

// One point's cell on one level: the set-up every kernel needs before visiting the cell's
// 2^dims corners.
template <int dims, typename scalar_t>
struct LevelCell {
  int32_t res[dims];  // this level's resolution per dimension
  int64_t base;       // first table row of this level
  int64_t size;       // table rows of this level
  bool dense;
  int32_t cell[dims];
  scalar_t frac[dims];
  bool inside[dims];  // x_d was in [0, 1]: clamped coordinates get no gradient

  HG_HD LevelCell(const scalar_t* x, const int64_t* resolutions, int64_t level, const int64_t* offsets)
      : base(offsets[level]), size(offsets[level + 1] - offsets[level]) {
    for (int d = 0; d < dims; ++d) res[d] = static_cast<int32_t>(resolutions[level * dims + d]);
    dense = level_dense(res, dims, size);
    locate(x, res, dims, cell, frac, inside);
  }

  // Table row of corner k (bit d of k = upper side in dim d); its weight goes to *weight.
  HG_HD int64_t corner_row(int k, scalar_t* weight) const {
    int32_t c[dims];
    *weight = corner(k, cell, frac, dims, c);
    return base + vertex_row(c, res, dims, size, dense);
  }

  // d(weight of corner k) / d(x_d).
  HG_HD scalar_t weight_grad(int k, int d) const { return corner_weight_grad(k, d, frac, res, dims); }
};

// Host side: calls launch(std::integral_constant<int, V>{}) for the V in Values equal to
// `value`, so kernels take it as a template parameter (loops unroll, per-thread arrays stay
// in registers). Returns false when no V matches.
template <int... Values, typename F>
inline bool dispatch_int(int64_t value, F&& launch) {
  return ((value == Values ? (launch(std::integral_constant<int, Values>{}), true) : false) || ...);
}

// The input dimension, 1 to 4.
template <typename F>
inline bool dispatch_dims(int64_t dims, F&& launch) {
  return dispatch_int<1, 2, 3, 4>(dims, launch);
}

// The features per level of the CUDA kernels, 1, 2, 4 or 8 (rows load as vectors, feature
// loops unroll).
template <typename F>
inline bool dispatch_feat(int64_t feat, F&& launch) {
  return dispatch_int<1, 2, 4, 8>(feat, launch);
}

}  // namespace hashgrid
