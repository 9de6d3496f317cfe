// Multiresolution hash encoding on the CPU (at::parallel_for), forward and backward.
//
// Forward and the input gradient are parallel over points. The table gradient is
// parallel over levels (each level owns a disjoint slice of the table), so it needs no
// atomics and is deterministic.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include <algorithm>

#include "hashgrid_common.h"

namespace {

using hashgrid::kMaxDims;
constexpr int64_t kMaxFeat = 8;

void check_inputs(const torch::Tensor& x, const torch::Tensor& table, const torch::Tensor& res, const torch::Tensor& offsets) {
  TORCH_CHECK(x.dim() == 2 && table.dim() == 2 && res.dim() == 2 && offsets.dim() == 1,
              "hash_encode: x [N,D], table [R,F], resolutions [L,D], offsets [L+1]");
  TORCH_CHECK(x.size(1) >= 1 && x.size(1) <= kMaxDims, "hash_encode: 1 to 4 input dimensions supported");
  TORCH_CHECK(res.size(1) == x.size(1) && offsets.size(0) == res.size(0) + 1, "hash_encode: resolutions must be [L, D], offsets [L + 1]");
  TORCH_CHECK(res.scalar_type() == torch::kLong && offsets.scalar_type() == torch::kLong, "hash_encode: resolutions and offsets must be int64");
  TORCH_CHECK(x.device().is_cpu() && table.device().is_cpu() && offsets.device().is_cpu(), "hash_encode (cpu backend): tensors must be on the CPU");
  TORCH_CHECK(table.size(1) <= kMaxFeat, "hash_encode (cpu): at most 8 features per level");
  TORCH_CHECK(table.size(0) <= hashgrid::kMaxRows, "hash_encode (cpu): at most 2^31 - 1 table rows");
}

// A cell's corners are random rows of a large table: each read is a cache miss. The kernels
// therefore work in batches: first every corner row of a batch (a point's levels, or a
// level's points) is located and prefetched, then the rows are used, by which time many
// misses are in flight at once instead of one after another.
#if defined(__GNUC__) || defined(__clang__)
#define HG_PREFETCH(ptr, write) __builtin_prefetch((ptr), (write))
#else
#define HG_PREFETCH(ptr, write)
#endif
constexpr int64_t kBatch = 8;

// Corner rows and weights of point x's cells on levels l0 .. l0 + count - 1, prefetched.
template <int dims, typename scalar_t, typename table_t>
struct PointLevels {
  int64_t count;
  int64_t rows[kBatch][1 << dims];
  scalar_t weights[kBatch][1 << dims];

  PointLevels(const scalar_t* x, const int64_t* res, int64_t l0, int64_t levels, const int64_t* offsets, const table_t* table, int64_t feat)
      : count(std::min(kBatch, levels - l0)) {
    for (int64_t j = 0; j < count; ++j) {
      const hashgrid::LevelCell<dims, scalar_t> p(x, res, l0 + j, offsets);
      for (int k = 0; k < (1 << dims); ++k) {
        rows[j][k] = p.corner_row(k, &weights[j][k]);
        HG_PREFETCH(table + rows[j][k] * feat, 0);
      }
    }
  }
};

template <int dims, typename scalar_t, typename table_t>
void forward_impl(const scalar_t* x, const table_t* table, const int64_t* res, const int64_t* offsets, scalar_t* out,
                  int64_t n, int64_t levels, int64_t feat) {
  at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      for (int64_t l0 = 0; l0 < levels; l0 += kBatch) {
        const PointLevels<dims, scalar_t, table_t> b(x + i * dims, res, l0, levels, offsets, table, feat);
        for (int64_t j = 0; j < b.count; ++j) {
          scalar_t acc[kMaxFeat] = {0, 0, 0, 0, 0, 0, 0, 0};  // in registers, not through `out`
          for (int k = 0; k < (1 << dims); ++k) {
            const table_t* row = table + b.rows[j][k] * feat;
            for (int64_t f = 0; f < feat; ++f) acc[f] += b.weights[j][k] * static_cast<scalar_t>(row[f]);
          }
          std::copy(acc, acc + feat, out + i * levels * feat + (l0 + j) * feat);
        }
      }
    }
  });
}

// grad_by_level is [L, N, F]: each level's pass reads its gradients contiguously.
// gtable need not be zeroed: each level's thread zeroes its slice just before scattering
// into it, while the slice is still in its cache (one pass over the table, not two).
template <int dims, typename scalar_t>
void backward_table_impl(const scalar_t* grad_by_level, const scalar_t* x, const int64_t* res, const int64_t* offsets, scalar_t* gtable,
                         int64_t n, int64_t levels, int64_t feat) {
  at::parallel_for(0, levels, 1, [&](int64_t begin, int64_t end) {
    int64_t rows[kBatch][1 << dims];
    scalar_t weights[kBatch][1 << dims];
    for (int64_t l = begin; l < end; ++l) {
      std::fill(gtable + offsets[l] * feat, gtable + offsets[l + 1] * feat, scalar_t(0));
      for (int64_t i0 = 0; i0 < n; i0 += kBatch) {
        const int64_t count = std::min(kBatch, n - i0);
        for (int64_t j = 0; j < count; ++j) {
          const hashgrid::LevelCell<dims, scalar_t> p(x + (i0 + j) * dims, res, l, offsets);
          for (int k = 0; k < (1 << dims); ++k) {
            rows[j][k] = p.corner_row(k, &weights[j][k]);
            HG_PREFETCH(gtable + rows[j][k] * feat, 1);
          }
        }
        for (int64_t j = 0; j < count; ++j) {
          const scalar_t* g = grad_by_level + (l * n + i0 + j) * feat;
          for (int k = 0; k < (1 << dims); ++k) {
            scalar_t* row = gtable + rows[j][k] * feat;
            for (int64_t f = 0; f < feat; ++f) row[f] += weights[j][k] * g[f];
          }
        }
      }
    }
  });
}

template <int dims, typename scalar_t, typename table_t>
void backward_input_impl(const scalar_t* grad, const scalar_t* x, const table_t* table, const int64_t* res, const int64_t* offsets,
                         scalar_t* gx, int64_t n, int64_t levels, int64_t feat) {
  at::parallel_for(0, n, 256, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      scalar_t acc[kMaxDims] = {0, 0, 0, 0};
      for (int64_t l0 = 0; l0 < levels; l0 += kBatch) {
        const PointLevels<dims, scalar_t, table_t> b(x + i * dims, res, l0, levels, offsets, table, feat);
        for (int64_t j = 0; j < b.count; ++j) {
          const hashgrid::LevelCell<dims, scalar_t> p(x + i * dims, res, l0 + j, offsets);  // again: arithmetic only
          const scalar_t* g = grad + i * levels * feat + (l0 + j) * feat;
          for (int k = 0; k < (1 << dims); ++k) {
            const table_t* row = table + b.rows[j][k] * feat;
            scalar_t dot = 0;
            for (int64_t f = 0; f < feat; ++f) dot += g[f] * static_cast<scalar_t>(row[f]);
            for (int d = 0; d < dims; ++d) {
              if (!p.inside[d]) continue;
              acc[d] += dot * p.weight_grad(k, d);
            }
          }
        }
      }
      for (int d = 0; d < dims; ++d) gx[i * dims + d] = acc[d];
    }
  });
}

torch::Tensor forward(torch::Tensor x, torch::Tensor table, torch::Tensor res, torch::Tensor offsets) {
  check_inputs(x, table, res, offsets);
  x = x.contiguous();
  table = table.contiguous();
  res = res.contiguous();
  offsets = offsets.contiguous();
  const int64_t n = x.size(0), levels = res.size(0), feat = table.size(1);
  auto out = torch::empty({n, levels * feat}, x.options());
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hash_encode_cpu_fwd", [&] {
    const bool half = table.scalar_type() == torch::kHalf;
    TORCH_CHECK(half || table.scalar_type() == x.scalar_type(), "hash_encode: table must be fp16 or match x's dtype");
    hashgrid::dispatch_dims(x.size(1), [&](auto d) {
      constexpr int D = decltype(d)::value;
      if (half) {
        forward_impl<D, scalar_t, at::Half>(x.data_ptr<scalar_t>(), table.data_ptr<at::Half>(), res.data_ptr<int64_t>(),
                                            offsets.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), n, levels, feat);
      } else {
        forward_impl<D, scalar_t, scalar_t>(x.data_ptr<scalar_t>(), table.data_ptr<scalar_t>(), res.data_ptr<int64_t>(),
                                            offsets.data_ptr<int64_t>(), out.data_ptr<scalar_t>(), n, levels, feat);
      }
    });
  });
  return out;
}

std::vector<torch::Tensor> backward(torch::Tensor grad, torch::Tensor x, torch::Tensor table, torch::Tensor res, torch::Tensor offsets,
                                    bool need_table, bool need_input) {
  check_inputs(x, table, res, offsets);
  grad = grad.contiguous();
  x = x.contiguous();
  table = table.contiguous();
  res = res.contiguous();
  offsets = offsets.contiguous();
  const int64_t n = x.size(0), levels = res.size(0), feat = table.size(1);
  torch::Tensor gtable, gx;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hash_encode_cpu_bwd", [&] {
    if (need_table) {
      // accumulate in x's precision, cast to the table's dtype at the end
      auto acc = torch::empty({table.size(0), feat}, x.options());  // zeroed per level by the kernel
      auto by_level = grad.view({n, levels, feat}).transpose(0, 1).contiguous();
      hashgrid::dispatch_dims(x.size(1), [&](auto d) {
        backward_table_impl<decltype(d)::value, scalar_t>(by_level.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), res.data_ptr<int64_t>(),
                                                          offsets.data_ptr<int64_t>(), acc.data_ptr<scalar_t>(), n, levels, feat);
      });
      gtable = acc.to(table.scalar_type());
    }
    if (need_input) {
      gx = torch::empty_like(x);
      hashgrid::dispatch_dims(x.size(1), [&](auto d) {
        constexpr int D = decltype(d)::value;
        if (table.scalar_type() == torch::kHalf) {
          backward_input_impl<D, scalar_t, at::Half>(grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), table.data_ptr<at::Half>(),
                                                     res.data_ptr<int64_t>(), offsets.data_ptr<int64_t>(), gx.data_ptr<scalar_t>(), n, levels, feat);
        } else {
          backward_input_impl<D, scalar_t, scalar_t>(grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), table.data_ptr<scalar_t>(),
                                                     res.data_ptr<int64_t>(), offsets.data_ptr<int64_t>(), gx.data_ptr<scalar_t>(), n, levels, feat);
        }
      });
    }
  });
  return {gtable, gx};
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("forward", &forward, "hash encoding forward (CPU)");
  m.def("backward", &backward, "hash encoding backward (CPU)");
}
