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

constexpr int kMaxFeat = 8;  // feature loops unroll to this with a guard: arrays stay in registers

template <typename stored_t, typename acc_t>
HG_HD acc_t load(const stored_t* p) { return static_cast<acc_t>(*p); }
template <>
HG_HD float load<__half, float>(const __half* p) { return __half2float(*p); }
template <>
HG_HD double load<__half, double>(const __half* p) { return static_cast<double>(__half2float(*p)); }

template <typename scalar_t>
HG_HD void atomic_add(scalar_t* p, scalar_t v) {
#ifdef __CUDA_ARCH__
  atomicAdd(p, v);
#else
  *p += v;
#endif
}

// Adds w * g[0:feat] to a table row. sm_90 has 2-wide float atomics: half the operations.
template <typename scalar_t>
HG_HD void scatter_add(scalar_t* row, const scalar_t* g, scalar_t w, int64_t feat) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if constexpr (std::is_same_v<scalar_t, float>) {
    if ((feat & 1) == 0) {
      HG_UNROLL
      for (int f = 0; f < kMaxFeat; f += 2)
        if (f < feat) atomicAdd(reinterpret_cast<float2*>(row + f), make_float2(w * g[f], w * g[f + 1]));
      return;
    }
  }
#endif
  HG_UNROLL
  for (int f = 0; f < kMaxFeat; ++f)
    if (f < feat) atomic_add(row + f, w * g[f]);
}

// Features of point i on level l into the feature-major out.
template <int dims, typename scalar_t, typename table_t>
HG_HD void encode_point_level(int64_t i, int64_t l, const scalar_t* __restrict__ x, const table_t* __restrict__ table,
                              const int64_t* __restrict__ res, scalar_t* __restrict__ out, int64_t n, int64_t size, int64_t feat) {
  const LevelCell<dims, scalar_t> p(x + i * dims, res, l, size);
  scalar_t acc[kMaxFeat] = {0, 0, 0, 0, 0, 0, 0, 0};
  HG_UNROLL
  for (int k = 0; k < (1 << dims); ++k) {
    scalar_t w;
    const table_t* row = table + p.corner_row(k, &w) * feat;
    HG_UNROLL
    for (int f = 0; f < kMaxFeat; ++f)
      if (f < feat) acc[f] += w * load<table_t, scalar_t>(row + f);
  }
  HG_UNROLL
  for (int f = 0; f < kMaxFeat; ++f)
    if (f < feat) out[(l * feat + f) * n + i] = acc[f];
}

// Both gradients from one visit of point i's cell on level l: the table gradient added into
// gtable (when not null), this level's share of d(out)/d(x) added into gx (when not null).
// grad is feature-major.
template <int dims, typename scalar_t, typename table_t>
HG_HD void backward_point_level(int64_t i, int64_t l, const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                const table_t* __restrict__ table, const int64_t* __restrict__ res, scalar_t* __restrict__ gtable,
                                scalar_t* __restrict__ gx, int64_t n, int64_t size, int64_t feat) {
  const LevelCell<dims, scalar_t> p(x + i * dims, res, l, size);
  scalar_t g[kMaxFeat];
  HG_UNROLL
  for (int f = 0; f < kMaxFeat; ++f) g[f] = f < feat ? grad[(l * feat + f) * n + i] : scalar_t(0);
  scalar_t acc[kMaxDims] = {0, 0, 0, 0};
  HG_UNROLL
  for (int k = 0; k < (1 << dims); ++k) {
    scalar_t w;
    const int64_t row = p.corner_row(k, &w);
    if (gtable != nullptr) scatter_add(gtable + row * feat, g, w, feat);
    if (gx != nullptr) {
      scalar_t dot = 0;
      HG_UNROLL
      for (int f = 0; f < kMaxFeat; ++f)
        if (f < feat) dot += g[f] * load<table_t, scalar_t>(table + row * feat + f);
      HG_UNROLL
      for (int d = 0; d < dims; ++d)
        if (p.inside[d]) acc[d] += dot * p.weight_grad(k, d);
    }
  }
  if (gx != nullptr) {
    HG_UNROLL
    for (int d = 0; d < dims; ++d) atomic_add(gx + i * dims + d, acc[d]);
  }
}

}  // namespace hashgrid
