// Multiresolution hash encoding on CUDA: forward, and one backward pass for the table
// gradient (atomics) and the input gradient. Per-level kernels put the level in blockIdx.y,
// so a block reads one level's table and the coarse levels stay in L2; features are
// feature-major [L * F, N], so a warp's 32 points write and read contiguous memory. The
// input dimension is a template parameter and feature loops unroll to kMaxFeat with a
// guard, so per-thread arrays live in registers, not local memory.
// Pure CUDA (no torch headers) so it compiles in seconds; hashgrid_cuda.cpp binds it.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "hashgrid_common.h"
#include "hashgrid_cuda.h"

namespace {

using hashgrid::kMaxDims;
constexpr int kMaxFeat = 8;

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t load(const scalar_t* p) { return static_cast<acc_t>(*p); }
template <>
__device__ __forceinline__ float load<__half, float>(const __half* p) { return __half2float(*p); }
template <>
__device__ __forceinline__ double load<__half, double>(const __half* p) { return static_cast<double>(__half2float(*p)); }

// One thread per (point, level); out is feature-major [L * F, N] (coalesced writes).
template <int dims, typename scalar_t, typename table_t>
__global__ void forward_kernel(const scalar_t* __restrict__ x, const table_t* __restrict__ table, const int64_t* __restrict__ res,
                               scalar_t* __restrict__ out, int64_t n, int64_t size, int64_t feat) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x, l = blockIdx.y;
  if (i >= n) return;
  const hashgrid::LevelCell<dims, scalar_t> p(x + i * dims, res, l, size);
  scalar_t acc[kMaxFeat] = {0, 0, 0, 0, 0, 0, 0, 0};
#pragma unroll
  for (int k = 0; k < (1 << dims); ++k) {
    scalar_t w;
    const table_t* row = table + p.corner_row(k, &w) * feat;
#pragma unroll
    for (int f = 0; f < kMaxFeat; ++f)
      if (f < feat) acc[f] += w * load<table_t, scalar_t>(row + f);
  }
#pragma unroll
  for (int f = 0; f < kMaxFeat; ++f)
    if (f < feat) out[(l * feat + f) * n + i] = acc[f];
}

// Adds w * g[0:feat] to a table row. sm_90 has 2-wide float atomics: half the operations.
__device__ __forceinline__ void scatter_add(float* row, const float* g, float w, int64_t feat) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if ((feat & 1) == 0) {
#pragma unroll
    for (int f = 0; f < kMaxFeat; f += 2)
      if (f < feat) atomicAdd(reinterpret_cast<float2*>(row + f), make_float2(w * g[f], w * g[f + 1]));
    return;
  }
#endif
#pragma unroll
  for (int f = 0; f < kMaxFeat; ++f)
    if (f < feat) atomicAdd(row + f, w * g[f]);
}
__device__ __forceinline__ void scatter_add(double* row, const double* g, double w, int64_t feat) {
#pragma unroll
  for (int f = 0; f < kMaxFeat; ++f)
    if (f < feat) atomicAdd(row + f, w * g[f]);
}

// One thread per (point, level), both gradients from one visit of the cell: the table
// gradient scattered with atomics into gtable (when not null), this level's share of
// d(out)/d(x) added atomically into gx (when not null). grad is feature-major [L * F, N].
template <int dims, typename scalar_t, typename table_t>
__global__ void backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x, const table_t* __restrict__ table,
                                const int64_t* __restrict__ res, scalar_t* __restrict__ gtable, scalar_t* __restrict__ gx, int64_t n,
                                int64_t size, int64_t feat) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x, l = blockIdx.y;
  if (i >= n) return;
  const hashgrid::LevelCell<dims, scalar_t> p(x + i * dims, res, l, size);
  scalar_t g[kMaxFeat];
#pragma unroll
  for (int f = 0; f < kMaxFeat; ++f) g[f] = f < feat ? grad[(l * feat + f) * n + i] : scalar_t(0);
  scalar_t acc[kMaxDims] = {0, 0, 0, 0};
#pragma unroll
  for (int k = 0; k < (1 << dims); ++k) {
    scalar_t w;
    const int64_t row = p.corner_row(k, &w);
    if (gtable != nullptr) scatter_add(gtable + row * feat, g, w, feat);
    if (gx != nullptr) {
      scalar_t dot = 0;
#pragma unroll
      for (int f = 0; f < kMaxFeat; ++f)
        if (f < feat) dot += g[f] * load<table_t, scalar_t>(table + row * feat + f);
#pragma unroll
      for (int d = 0; d < dims; ++d)
        if (p.inside[d]) acc[d] += dot * p.weight_grad(k, d);
    }
  }
  if (gx != nullptr) {
#pragma unroll
    for (int d = 0; d < dims; ++d) atomicAdd(gx + i * dims + d, acc[d]);
  }
}

constexpr int kThreads = 256;
inline unsigned blocks(int64_t work) { return static_cast<unsigned>((work + kThreads - 1) / kThreads); }
inline dim3 per_level(const hashgrid::Shape& s) { return dim3(blocks(s.n), static_cast<unsigned>(s.levels)); }

// Launches through hashgrid::dispatch_dims and reports the launch's error.
template <typename F>
cudaError_t with_dims(int dims, F&& launch) {
  return hashgrid::dispatch_dims(dims, launch) ? cudaGetLastError() : cudaErrorInvalidValue;
}

}  // namespace

namespace hashgrid {

template <typename scalar_t, typename table_t>
cudaError_t forward_cuda(const scalar_t* x, const table_t* table, const int64_t* res, scalar_t* out, const Shape& s, cudaStream_t stream) {
  if (s.n == 0) return cudaSuccess;
  return with_dims(s.dims, [&](auto d) {
    forward_kernel<decltype(d)::value, scalar_t, table_t><<<per_level(s), kThreads, 0, stream>>>(x, table, res, out, s.n, s.size, s.feat);
  });
}

template <typename scalar_t, typename table_t>
cudaError_t backward_cuda(const scalar_t* grad, const scalar_t* x, const table_t* table, const int64_t* res, scalar_t* gtable, scalar_t* gx,
                          const Shape& s, cudaStream_t stream) {
  if (s.n == 0 || (gtable == nullptr && gx == nullptr)) return cudaSuccess;
  return with_dims(s.dims, [&](auto d) {
    backward_kernel<decltype(d)::value, scalar_t, table_t><<<per_level(s), kThreads, 0, stream>>>(grad, x, table, res, gtable, gx, s.n, s.size,
                                                                                                  s.feat);
  });
}

#define HG_INSTANTIATE(S, T)                                                                                    \
  template cudaError_t forward_cuda<S, T>(const S*, const T*, const int64_t*, S*, const Shape&, cudaStream_t); \
  template cudaError_t backward_cuda<S, T>(const S*, const S*, const T*, const int64_t*, S*, S*, const Shape&, cudaStream_t);
HG_INSTANTIATE(float, float)
HG_INSTANTIATE(float, __half)
HG_INSTANTIATE(double, double)
HG_INSTANTIATE(double, __half)
#undef HG_INSTANTIATE

}  // namespace hashgrid
