// Torch binding of the CUDA hash-encoding kernels: checks, dtype dispatch, streams.
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <cuda_fp16.h>

#include "hashgrid_cuda.h"

namespace {

hashgrid::Shape shape_of(const torch::Tensor& x, const torch::Tensor& table, const torch::Tensor& res) {
  TORCH_CHECK(x.dim() == 2 && table.dim() == 3 && res.dim() == 2, "hash_encode: x [N,D], table [L,S,F], resolutions [L,D]");
  TORCH_CHECK(x.size(1) >= 1 && x.size(1) <= 4, "hash_encode: 1 to 4 input dimensions supported");
  TORCH_CHECK(table.size(2) <= 8, "hash_encode (cuda): at most 8 features per level");
  TORCH_CHECK(table.size(0) <= 65535, "hash_encode (cuda): at most 65535 levels");
  TORCH_CHECK(res.size(0) == table.size(0) && res.size(1) == x.size(1), "hash_encode: resolutions must be [L, D]");
  TORCH_CHECK(res.scalar_type() == torch::kLong, "hash_encode: resolutions must be int64");
  TORCH_CHECK(x.is_cuda() && table.is_cuda() && res.is_cuda(), "hash_encode (cuda backend): tensors must be on a CUDA device");
  TORCH_CHECK(table.scalar_type() == torch::kHalf || table.scalar_type() == x.scalar_type(),
              "hash_encode: table must be fp16 or match x's dtype");
  return {x.size(0), static_cast<int>(x.size(1)), table.size(0), table.size(1), table.size(2)};
}

void check(cudaError_t err) { TORCH_CHECK(err == cudaSuccess, "hash_encode (cuda): ", cudaGetErrorString(err)); }

torch::Tensor forward(torch::Tensor x, torch::Tensor table, torch::Tensor res) {
  x = x.contiguous();
  table = table.contiguous();
  res = res.contiguous();
  const auto s = shape_of(x, table, res);
  auto out = torch::empty({s.n, s.levels * s.feat}, x.options());
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hash_encode_cuda_fwd", [&] {
    if (table.scalar_type() == torch::kHalf) {
      check(hashgrid::forward_cuda<scalar_t, __half>(x.data_ptr<scalar_t>(), reinterpret_cast<const __half*>(table.data_ptr<at::Half>()),
                                                     res.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), s, stream));
    } else {
      check(hashgrid::forward_cuda<scalar_t, scalar_t>(x.data_ptr<scalar_t>(), table.data_ptr<scalar_t>(), res.data_ptr<int64_t>(),
                                                       out.data_ptr<scalar_t>(), s, stream));
    }
  });
  return out;
}

std::vector<torch::Tensor> backward(torch::Tensor grad, torch::Tensor x, torch::Tensor table, torch::Tensor res, bool need_table,
                                    bool need_input) {
  grad = grad.contiguous();
  x = x.contiguous();
  table = table.contiguous();
  res = res.contiguous();
  const auto s = shape_of(x, table, res);
  auto stream = at::cuda::getCurrentCUDAStream();
  torch::Tensor gtable, gx;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hash_encode_cuda_bwd", [&] {
    if (need_table) {
      auto acc = torch::zeros({s.levels, s.size, s.feat}, x.options());
      check(hashgrid::backward_table_cuda<scalar_t>(grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), res.data_ptr<int64_t>(),
                                                    acc.data_ptr<scalar_t>(), s, stream));
      gtable = acc.to(table.scalar_type());
    }
    if (need_input) {
      gx = torch::zeros_like(x);  // the kernel adds each level's share
      if (table.scalar_type() == torch::kHalf) {
        check(hashgrid::backward_input_cuda<scalar_t, __half>(grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                                                              reinterpret_cast<const __half*>(table.data_ptr<at::Half>()),
                                                              res.data_ptr<int64_t>(), gx.data_ptr<scalar_t>(), s, stream));
      } else {
        check(hashgrid::backward_input_cuda<scalar_t, scalar_t>(grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), table.data_ptr<scalar_t>(),
                                                                res.data_ptr<int64_t>(), gx.data_ptr<scalar_t>(), s, stream));
      }
    }
  });
  return {gtable, gx};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "hash encoding forward (CUDA)");
  m.def("backward", &backward, "hash encoding backward (CUDA)");
}
