// Multiresolution hash encoding on CUDA: a forward kernel, and one backward kernel for the
// table gradient (atomics) and the input gradient. One thread per (point, level), the level
// in blockIdx.y, so a block reads one level's table and the coarse levels stay in L2. The
// per-thread work is in hashgrid_kernels.h (host+device, so tests also run it on the CPU).
// The input dimension and the features per level are template parameters, so per-thread
// arrays live in registers and table rows load as vectors.
// Pure CUDA (no torch headers) so it compiles in seconds; hashgrid_cuda.cpp binds it.
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "hashgrid_cuda.h"
#include "hashgrid_kernels.h"

namespace {

// One thread per (point, level), the level in blockIdx.y.
template <int dims, int F, typename scalar_t, typename table_t>
__global__ void forward_kernel(const scalar_t* __restrict__ x, const table_t* __restrict__ table, const int64_t* __restrict__ res,
                               const int64_t* __restrict__ offsets, scalar_t* __restrict__ out, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) hashgrid::encode_point_level<dims, F>(i, blockIdx.y, x, table, res, offsets, out, n);
}

template <int dims, int F, typename scalar_t, typename table_t>
__global__ void backward_kernel(const scalar_t* __restrict__ grad, const scalar_t* __restrict__ x, const table_t* __restrict__ table,
                                const int64_t* __restrict__ res, const int64_t* __restrict__ offsets, scalar_t* __restrict__ gtable,
                                scalar_t* __restrict__ gx, int64_t n) {
  const int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (i < n) hashgrid::backward_point_level<dims, F>(i, blockIdx.y, grad, x, table, res, offsets, gtable, gx, n);
}

constexpr int kThreads = 256;
inline unsigned blocks(int64_t work) { return static_cast<unsigned>((work + kThreads - 1) / kThreads); }
inline dim3 per_level(const hashgrid::Shape& s) { return dim3(blocks(s.n), static_cast<unsigned>(s.levels)); }

// Calls launch(dims, F) as integral constants and reports the launch's error.
template <typename Fn>
cudaError_t dispatched(const hashgrid::Shape& s, Fn&& launch) {
  bool ok = false;
  hashgrid::dispatch_dims(s.dims, [&](auto d) { ok = hashgrid::dispatch_feat(s.feat, [&](auto f) { launch(d, f); }); });
  return ok ? cudaGetLastError() : cudaErrorInvalidValue;
}

}  // namespace

namespace hashgrid {

template <typename scalar_t, typename table_t>
cudaError_t forward_cuda(const scalar_t* x, const table_t* table, const int64_t* res, const int64_t* offsets, scalar_t* out, const Shape& s,
                         cudaStream_t stream) {
  if (s.n == 0) return cudaSuccess;
  return dispatched(s, [&](auto d, auto f) {
    forward_kernel<decltype(d)::value, decltype(f)::value, scalar_t, table_t><<<per_level(s), kThreads, 0, stream>>>(x, table, res, offsets, out, s.n);
  });
}

template <typename scalar_t, typename table_t>
cudaError_t backward_cuda(const scalar_t* grad, const scalar_t* x, const table_t* table, const int64_t* res, const int64_t* offsets,
                          scalar_t* gtable, scalar_t* gx, const Shape& s, cudaStream_t stream) {
  if (s.n == 0 || (gtable == nullptr && gx == nullptr)) return cudaSuccess;
  return dispatched(s, [&](auto d, auto f) {
    backward_kernel<decltype(d)::value, decltype(f)::value, scalar_t, table_t><<<per_level(s), kThreads, 0, stream>>>(grad, x, table, res, offsets,
                                                                                                                       gtable, gx, s.n);
  });
}

#define HG_INSTANTIATE(S, T)                                                                                    \
  template cudaError_t forward_cuda<S, T>(const S*, const T*, const int64_t*, const int64_t*, S*, const Shape&, cudaStream_t); \
  template cudaError_t backward_cuda<S, T>(const S*, const S*, const T*, const int64_t*, const int64_t*, S*, S*, const Shape&, cudaStream_t);
HG_INSTANTIATE(float, float)
HG_INSTANTIATE(float, __half)
HG_INSTANTIATE(double, double)
HG_INSTANTIATE(double, __half)
#undef HG_INSTANTIATE

}  // namespace hashgrid
