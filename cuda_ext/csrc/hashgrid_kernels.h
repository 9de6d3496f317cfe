// The CUDA hash-encoding kernels' work for one (point i, level l), as host+device code:
// hashgrid_cuda.cu runs it one thread each, and the tests run the very same code on the
// CPU (tests/csrc/cuda_kernels_on_host.cpp), so the CUDA path's layout and indexing are
// checked on machines without a GPU. On the host an atomic add is a plain add (the test
// visits points and levels one after another).
//
// Features are feature-major: out and grad are [L * F, N] (row l * F + f holds feature f
// of level l for every point), so a warp's 32 consecutive points write and read
// contiguous memory.
#pragma once
#include <cuda_fp16.h>

#include "hashgrid_common.h"

#ifdef __CUDA_ARCH__  // device compilation only: host compilers warn about the pragma
#define HG_UNROLL _Pragma("unroll")
#else
#define HG_UNROLL
#endif

namespace hashgrid {

// One table row of F features, aligned so that it loads as one vector instruction (up to
// 16 bytes, more as several): tables are allocated aligned, and rows are F elements apart.
template <typename T, int F>
struct alignas(sizeof(T) * F < 16 ? sizeof(T) * F : 16) Row {
  T v[F];
};

// Byte alignment a table's pointer needs for Row<T, F> loads (the bindings check it).
template <typename T, int F>
constexpr size_t row_alignment() { return alignof(Row<T, F>); }

template <typename acc_t, typename stored_t>
HG_HD acc_t to_acc(stored_t v) { return static_cast<acc_t>(v); }
template <>
HG_HD float to_acc<float, __half>(__half v) { return __half2float(v); }
template <>
HG_HD double to_acc<double, __half>(__half v) { return static_cast<double>(__half2float(v)); }

// Row `row` of the table, converted to the accumulation type.
template <int F, typename scalar_t, typename table_t>
HG_HD void load_row(const table_t* __restrict__ table, int64_t row, scalar_t* v) {
  const Row<table_t, F> r = reinterpret_cast<const Row<table_t, F>*>(table)[row];
  HG_UNROLL
  for (int f = 0; f < F; ++f) v[f] = to_acc<scalar_t>(r.v[f]);
}

// Adds w * g[0:F] to table row `row`. sm_90 has 2- and 4-wide float atomics: F/2 or F/4
// operations instead of F.
template <int F, typename scalar_t>
HG_HD void scatter_add(scalar_t* __restrict__ gtable, int64_t row, const scalar_t* g, scalar_t w) {
  scalar_t* p = gtable + row * F;
#ifdef __CUDA_ARCH__
#if __CUDA_ARCH__ >= 900
  if constexpr (std::is_same_v<scalar_t, float> && F % 4 == 0) {
    HG_UNROLL
    for (int f = 0; f < F; f += 4)
      atomicAdd(reinterpret_cast<float4*>(p + f), make_float4(w * g[f], w * g[f + 1], w * g[f + 2], w * g[f + 3]));
    return;
  } else if constexpr (std::is_same_v<scalar_t, float> && F == 2) {
    atomicAdd(reinterpret_cast<float2*>(p), make_float2(w * g[0], w * g[1]));
    return;
  }
#endif
  HG_UNROLL
  for (int f = 0; f < F; ++f) atomicAdd(p + f, w * g[f]);
#else
  for (int f = 0; f < F; ++f) p[f] += w * g[f];  // the host test visits one (point, level) at a time
#endif
}

// Features of point i on level l into the feature-major out.
template <int dims, int F, typename scalar_t, typename table_t>
HG_HD void encode_point_level(int64_t i, int64_t l, const scalar_t* __restrict__ x, const table_t* __restrict__ table,
                              const int64_t* __restrict__ res, const int64_t* __restrict__ offsets, scalar_t* __restrict__ out, int64_t n) {
  const LevelCell<dims, scalar_t> p(x + i * dims, res, l, offsets);
  scalar_t acc[F] = {};
  HG_UNROLL
  for (int k = 0; k < (1 << dims); ++k) {
    scalar_t w, v[F];
    load_row<F>(table, p.corner_row(k, &w), v);
    HG_UNROLL
    for (int f = 0; f < F; ++f) acc[f] += w * v[f];
  }
  scalar_t* o = out + l * F * n + i;
  HG_UNROLL
  for (int f = 0; f < F; ++f) o[f * n] = acc[f];
}

// Both gradients from one visit of point i's cell on level l: the table gradient added into
// gtable (when not null), this level's share of d(out)/d(x) added into gx (when not null).
// grad is feature-major.
template <int dims, int F, typename scalar_t, typename table_t>
HG_HD void backward_point_level(int64_t i, int64_t l, const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                const table_t* __restrict__ table, const int64_t* __restrict__ res, const int64_t* __restrict__ offsets,
                                scalar_t* __restrict__ gtable, scalar_t* __restrict__ gx, int64_t n) {
  const LevelCell<dims, scalar_t> p(x + i * dims, res, l, offsets);
  const scalar_t* gi = grad + l * F * n + i;
  scalar_t g[F];
  HG_UNROLL
  for (int f = 0; f < F; ++f) g[f] = gi[f * n];
  scalar_t acc[dims] = {};
  HG_UNROLL
  for (int k = 0; k < (1 << dims); ++k) {
    scalar_t w;
    const int64_t row = p.corner_row(k, &w);
    if (gtable != nullptr) scatter_add<F>(gtable, row, g, w);
    if (gx != nullptr) {
      scalar_t v[F], dot = 0;
      load_row<F>(table, row, v);
      HG_UNROLL
      for (int f = 0; f < F; ++f) dot += g[f] * v[f];
      HG_UNROLL
      for (int d = 0; d < dims; ++d)
        if (p.inside[d]) acc[d] += dot * p.weight_grad(k, d);
    }
  }
  if (gx != nullptr) {
    HG_UNROLL
    for (int d = 0; d < dims; ++d) {
#ifdef __CUDA_ARCH__
      atomicAdd(gx + i * dims + d, acc[d]);
#else
      gx[i * dims + d] += acc[d];
#endif
    }
  }
}

}  // namespace hashgrid
