// The CUDA kernels' per-(point, level) code (cuda_ext/csrc/hashgrid_kernels.h) run on the
// CPU, one point and level after another, with the same signatures as the native modules'
// forward/backward. tests/test_kernels.py checks it against the reference like any backend,
// so the CUDA path's feature-major layout and indexing are tested without a GPU.
#include <torch/extension.h>

#include "hashgrid_dispatch.h"
#include "hashgrid_kernels.h"

namespace {

// Calls f(scalar_t{}, table_t{}, dims, F) (the last two as integral constants) for x's
// dtype, the table's storage, the input dimension and the features per level.
template <typename Fn>
void dispatch(const torch::Tensor& x, const torch::Tensor& table, Fn&& f) {
  bool ok = false;
  hashgrid::dispatch_types(x, table, [&](auto scalar, auto stored) {
    hashgrid::dispatch_dims(x.size(1), [&](auto d) { ok = hashgrid::dispatch_feat(table.size(1), [&](auto ft) { f(scalar, stored, d, ft); }); });
  });
  TORCH_CHECK(ok, "cuda kernels on host: unsupported dims or features per level");
}

// The CUDA launch grid run on the host: f(i, l) for every level l and point i, one after
// another (so the kernels' atomic adds are plain adds).
template <typename Fn>
void each_point_level(int64_t levels, int64_t n, Fn&& f) {
  for (int64_t l = 0; l < levels; ++l)
    for (int64_t i = 0; i < n; ++i) f(i, l);
}

torch::Tensor forward(torch::Tensor x, torch::Tensor table, torch::Tensor res, torch::Tensor offsets) {
  x = x.contiguous();
  table = hashgrid::aligned_table(table);
  res = res.contiguous();
  offsets = offsets.contiguous();
  const int64_t n = x.size(0), levels = res.size(0), feat = table.size(1);
  auto out = torch::empty({levels * feat, n}, x.options());
  dispatch(x, table, [&](auto scalar, auto stored, auto d, auto ft) {
    using scalar_t = decltype(scalar);
    using table_t = decltype(stored);
    each_point_level(levels, n, [&](int64_t i, int64_t l) {
      hashgrid::encode_point_level<decltype(d)::value, decltype(ft)::value>(
          i, l, x.data_ptr<scalar_t>(), hashgrid::table_ptr<table_t>(table), res.data_ptr<int64_t>(), offsets.data_ptr<int64_t>(),
          out.data_ptr<scalar_t>(), n);
    });
  });
  return out.t();
}

std::vector<torch::Tensor> backward(torch::Tensor grad, torch::Tensor x, torch::Tensor table, torch::Tensor res, torch::Tensor offsets,
                                    bool need_table, bool need_input) {
  auto grad_fm = grad.t().contiguous();
  x = x.contiguous();
  table = hashgrid::aligned_table(table);
  res = res.contiguous();
  offsets = offsets.contiguous();
  const int64_t n = x.size(0), levels = res.size(0);
  torch::Tensor acc = need_table ? torch::zeros(table.sizes(), x.options()) : torch::Tensor();
  torch::Tensor gx = need_input ? torch::zeros_like(x) : torch::Tensor();
  dispatch(x, table, [&](auto scalar, auto stored, auto d, auto ft) {
    using scalar_t = decltype(scalar);
    using table_t = decltype(stored);
    each_point_level(levels, n, [&](int64_t i, int64_t l) {
      hashgrid::backward_point_level<decltype(d)::value, decltype(ft)::value>(
          i, l, grad_fm.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), hashgrid::table_ptr<table_t>(table), res.data_ptr<int64_t>(),
          offsets.data_ptr<int64_t>(), need_table ? acc.data_ptr<scalar_t>() : nullptr, need_input ? gx.data_ptr<scalar_t>() : nullptr, n);
    });
  });
  return {need_table ? acc.to(table.scalar_type()) : torch::Tensor(), gx};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "the CUDA kernels' forward, run on the CPU");
  m.def("backward", &backward, "the CUDA kernels' backward, run on the CPU");
}
