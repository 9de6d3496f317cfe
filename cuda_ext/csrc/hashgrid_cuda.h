// Launchers of the CUDA hash-encoding kernels (defined in hashgrid_cuda.cu).
#pragma once
#include <cstdint>
#include <cuda_runtime.h>

namespace hashgrid {

struct Shape {
  int64_t n;       // points
  int dims;        // input dimensions (1..4)
  int64_t levels;  // L
  int64_t size;    // table rows per level (S)
  int64_t feat;    // features per level (F <= 8)
};

template <typename scalar_t, typename table_t>
cudaError_t forward_cuda(const scalar_t* x, const table_t* table, const int64_t* res, scalar_t* out, const Shape& s, cudaStream_t stream);

template <typename scalar_t>
cudaError_t backward_table_cuda(const scalar_t* grad, const scalar_t* x, const int64_t* res, scalar_t* gtable, const Shape& s, cudaStream_t stream);

template <typename scalar_t, typename table_t>
cudaError_t backward_input_cuda(const scalar_t* grad, const scalar_t* x, const table_t* table, const int64_t* res, scalar_t* gx, const Shape& s,
                                cudaStream_t stream);

}  // namespace hashgrid
