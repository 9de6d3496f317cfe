// Launchers of the CUDA hash-encoding kernels (defined in hashgrid_cuda.cu).
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace hashgrid {

struct Shape {
  int64_t n;       // points
  int dims;        // input dimensions (1..4)
  int64_t levels;  // L
  int64_t rows;    // table rows, all levels (R)
  int64_t feat;    // features per level (1, 2, 4 or 8)
};

// Features are feature-major on the GPU: out and grad are [L * F, N] (row l * F + f holds
// feature f of level l for every point), so each level's writes and reads are coalesced.
template <typename scalar_t, typename table_t>
cudaError_t forward_cuda(const scalar_t* x, const table_t* table, const int64_t* res, const int64_t* offsets, scalar_t* out, const Shape& s,
                         cudaStream_t stream);

// One pass for both gradients; gtable (an accumulator in scalar_t, zeroed) or gx (zeroed)
// may be null when that gradient is not needed.
template <typename scalar_t, typename table_t>
cudaError_t backward_cuda(const scalar_t* grad, const scalar_t* x, const table_t* table, const int64_t* res, const int64_t* offsets,
                          scalar_t* gtable, scalar_t* gx, const Shape& s, cudaStream_t stream);

}  // namespace hashgrid
