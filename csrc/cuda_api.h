// C interface of the CUDA kernels (csrc/cuda/kernels.cu), called by module.cpp when the
// extension is built with GTOPK_WITH_CUDA. Pointers are device pointers; `stream` is a
// cudaStream_t (the caller's current stream); `dtype` a gtopk::DType (float16, bfloat16
// or float32). Each returns an ApiStatus or a cudaError_t (> 0), and on error writes a
// message to err (errlen bytes). The code is csrc/cuda/topk_kernels.h.
#pragma once
#include <cstddef>
#include <cstdint>

namespace gtopk_cuda {

// kBadInput: the message names the bad argument; kInternal: a broken invariant.
enum ApiStatus : int { kOk = 0, kBadInput = -1, kInternal = -2 };

// Exact top-min(k, m) of x (or of residual + x when residual != nullptr, which is then
// left holding residual + x), by magnitude, NaN first, ties to the lower index; indices
// ascending (int32, or int64 when idx64), values copied. Same semantics as the CPU path.
int select_topk(int dtype, const void* x, void* residual, int64_t m, int64_t k, bool idx64, void* out_idx,
                void* out_val, void* stream, char* err, size_t errlen);

// Union of two index-ascending sets (sums at equal indices), then top-k; *out_n entries
// written (out arrays sized min(k, na + nb)). Bit-identical to the CPU merge.
int merge_topk(int dtype, bool idx64, const void* idx_a, const void* val_a, int64_t na, const void* idx_b,
               const void* val_b, int64_t nb, int64_t k, void* out_idx, void* out_val, int64_t* out_n, void* stream,
               char* err, size_t errlen);

// dense[idx[j]] = val[j] for j < n (dense is not cleared first).
int scatter(int dtype, bool idx64, const void* idx, const void* val, int64_t n, void* dense, void* stream, char* err,
            size_t errlen);

// residual[idx[j]] = 0 for j < n.
int zero_at(int dtype, bool idx64, const void* idx, int64_t n, void* residual, void* stream, char* err,
            size_t errlen);

}  // namespace gtopk_cuda
