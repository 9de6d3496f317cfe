// Torch-side helpers for calling the CUDA kernels' code: dtype dispatch and table pointers.
// Shared by the CUDA binding (hashgrid_cuda.cpp) and the tests' CPU run of the same code
// (tests/csrc/cuda_kernels_on_host.cpp).
#pragma once
#include <torch/extension.h>
#include <cuda_fp16.h>

#include <type_traits>

namespace hashgrid {

// Pointer to a table's data as the kernels' table_t (fp16 storage or x's dtype).
template <typename table_t>
const table_t* table_ptr(const torch::Tensor& table) {
  if constexpr (std::is_same_v<table_t, __half>) {
    return reinterpret_cast<const __half*>(table.data_ptr<at::Half>());
  } else {
    return table.data_ptr<table_t>();
  }
}

// The table, contiguous and 16-byte aligned, as the kernels' vector row loads need (a fresh
// allocation is; a view into another tensor may not be, and is then copied).
inline torch::Tensor aligned_table(const torch::Tensor& table) {
  auto t = table.contiguous();
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0 ? t : t.clone();
}

// Calls f(scalar_t{}, table_t{}) for x's dtype and the table's storage (fp16 or x's dtype).
template <typename F>
void dispatch_types(const torch::Tensor& x, const torch::Tensor& table, F&& f) {
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "hash_encode", [&] {
    if (table.scalar_type() == torch::kHalf) {
      f(scalar_t{}, __half{});
    } else {
      f(scalar_t{}, scalar_t{});
    }
  });
}

}  // namespace hashgrid
