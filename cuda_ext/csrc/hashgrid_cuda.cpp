// Torch binding of the CUDA hash-encoding kernels: checks, dtype dispatch, streams.
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <cuda_fp16.h>

#include "hashgrid_common.h"
#include "hashgrid_cuda.h"
#include "hashgrid_dispatch.h"

namespace {

hashgrid::Shape shape_of(const torch::Tensor& x, const torch::Tensor& table, const torch::Tensor& res, const torch::Tensor& offsets) {
  TORCH_CHECK(x.dim() == 2 && table.dim() == 2 && res.dim() == 2 && offsets.dim() == 1,
              "hash_encode: x [N,D], table [R,F], resolutions [L,D], offsets [L+1]");
  TORCH_CHECK(x.size(1) >= 1 && x.size(1) <= 4, "hash_encode: 1 to 4 input dimensions supported");
  TORCH_CHECK(hashgrid::dispatch_feat(table.size(1), [](auto) {}), "hash_encode (cuda): 1, 2, 4 or 8 features per level");
  TORCH_CHECK(table.size(0) <= hashgrid::kMaxRows, "hash_encode (cuda): at most 2^31 - 1 table rows");
  TORCH_CHECK(res.size(0) <= 65535, "hash_encode (cuda): at most 65535 levels");
  TORCH_CHECK(res.size(1) == x.size(1) && offsets.size(0) == res.size(0) + 1, "hash_encode: resolutions must be [L, D], offsets [L + 1]");
  TORCH_CHECK(res.scalar_type() == torch::kLong && offsets.scalar_type() == torch::kLong, "hash_encode: resolutions and offsets must be int64");
  TORCH_CHECK(x.is_cuda() && table.is_cuda() && res.is_cuda() && offsets.is_cuda(), "hash_encode (cuda backend): tensors must be on a CUDA device");
  TORCH_CHECK(table.scalar_type() == torch::kHalf || table.scalar_type() == x.scalar_type(),
              "hash_encode: table must be fp16 or match x's dtype");
  return {x.size(0), static_cast<int>(x.size(1)), res.size(0), table.size(0), table.size(1)};
}

void check(cudaError_t err) { TORCH_CHECK(err == cudaSuccess, "hash_encode (cuda): ", cudaGetErrorString(err)); }

// Returns [N, L * F] as a view of the kernel's feature-major [L * F, N] result: a Linear
// layer reads it without a copy (cuBLAS takes the transpose).
torch::Tensor forward(torch::Tensor x, torch::Tensor table, torch::Tensor res, torch::Tensor offsets) {
  x = x.contiguous();
  table = hashgrid::aligned_table(table);
  res = res.contiguous();
  offsets = offsets.contiguous();
  const auto s = shape_of(x, table, res, offsets);
  auto out = torch::empty({s.levels * s.feat, s.n}, x.options());
  auto stream = at::cuda::getCurrentCUDAStream();
  hashgrid::dispatch_types(x, table, [&](auto scalar, auto stored) {
    using scalar_t = decltype(scalar);
    using table_t = decltype(stored);
    check(hashgrid::forward_cuda<scalar_t, table_t>(x.data_ptr<scalar_t>(), hashgrid::table_ptr<table_t>(table), res.data_ptr<int64_t>(),
                                                    offsets.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), s, stream));
  });
  return out.t();
}

std::vector<torch::Tensor> backward(torch::Tensor grad, torch::Tensor x, torch::Tensor table, torch::Tensor res, torch::Tensor offsets,
                                    bool need_table, bool need_input) {
  auto grad_fm = grad.t().contiguous();  // feature-major [L * F, N]; no copy when grad came back in forward's layout
  x = x.contiguous();
  table = hashgrid::aligned_table(table);
  res = res.contiguous();
  offsets = offsets.contiguous();
  const auto s = shape_of(x, table, res, offsets);
  // the table gradient accumulates in x's precision and is cast to the table's dtype after
  torch::Tensor acc = need_table ? torch::zeros({s.rows, s.feat}, x.options()) : torch::Tensor();
  torch::Tensor gx = need_input ? torch::zeros_like(x) : torch::Tensor();  // the kernel adds each level's share
  auto stream = at::cuda::getCurrentCUDAStream();
  hashgrid::dispatch_types(x, table, [&](auto scalar, auto stored) {
    using scalar_t = decltype(scalar);
    using table_t = decltype(stored);
    check(hashgrid::backward_cuda<scalar_t, table_t>(grad_fm.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), hashgrid::table_ptr<table_t>(table),
                                                     res.data_ptr<int64_t>(), offsets.data_ptr<int64_t>(), need_table ? acc.data_ptr<scalar_t>() : nullptr,
                                                     need_input ? gx.data_ptr<scalar_t>() : nullptr, s, stream));
  });
  return {need_table ? acc.to(table.scalar_type()) : torch::Tensor(), gx};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "hash encoding forward (CUDA)");
  m.def("backward", &backward, "hash encoding backward (CUDA)");
}
