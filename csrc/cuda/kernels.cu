// The CUDA build of the GPU path: topk_kernels.h (kernels and the host sequence of
// launches, shared with the CPU emulator in csrc/emu) on a CudaBackend that allocates
// from the stream-ordered pool and launches on the caller's stream; the C interface of
// cuda_api.h with float32 / float16 / bfloat16 and int32 / int64 indices.
#include <cuda_runtime.h>

#include <cstdio>
#include <mutex>
#include <stdexcept>
#include <vector>

#include "../cuda_api.h"
#include "topk_kernels.h"

namespace gtopk_cuda {
namespace {

struct Failure {
  cudaError_t code;
  const char* where;
};

#define GTOPK_CHECK(expr)                            \
  do {                                               \
    cudaError_t e_ = (expr);                         \
    if (e_ != cudaSuccess) throw Failure{e_, #expr}; \
  } while (0)

template <class K, class... A>
__global__ void __launch_bounds__(K::kMaxThreads) kernel_entry(A... args) {
  K::run(args...);
}

// Keep freed scratch in the device's pool between calls (the selection of a 25M-entry
// gradient takes ~100 MB of scratch every step).
void keep_pool_memory() {
  static std::mutex mu;
  static bool done[64] = {};
  int dev = 0;
  GTOPK_CHECK(cudaGetDevice(&dev));
  std::lock_guard<std::mutex> lock(mu);
  if (dev < 0 || dev >= 64 || done[dev]) return;
  cudaMemPool_t pool;
  GTOPK_CHECK(cudaDeviceGetDefaultMemPool(&pool, dev));
  uint64_t keep = ~uint64_t{0};
  GTOPK_CHECK(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep));
  done[dev] = true;
}

class CudaBackend {
 public:
  explicit CudaBackend(cudaStream_t s) : s_(s) { keep_pool_memory(); }
  ~CudaBackend() {
    for (void* p : ptrs_) cudaFreeAsync(p, s_);
  }
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  template <class X>
  X* alloc(size_t n) {
    void* p = nullptr;
    GTOPK_CHECK(cudaMallocAsync(&p, n * sizeof(X) + 16, s_));
    ptrs_.push_back(p);
    return static_cast<X*>(p);
  }
  void zero(void* p, size_t bytes) { GTOPK_CHECK(cudaMemsetAsync(p, 0, bytes, s_)); }
  void to_host(void* dst, const void* src, size_t bytes) {
    GTOPK_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, s_));
    GTOPK_CHECK(cudaStreamSynchronize(s_));
  }
  template <class K, class... A>
  void launch(unsigned grid, unsigned block, A... args) {
    if (block > K::kMaxThreads) throw std::logic_error("launch with more threads than the kernel's launch bound");
    kernel_entry<K, A...><<<grid, block, 0, s_>>>(args...);
    GTOPK_CHECK(cudaGetLastError());
  }

 private:
  cudaStream_t s_;
  std::vector<void*> ptrs_;
};

// Run f(backend) and turn failures into the C interface's codes and messages.
template <class F>
int guarded(void* stream, char* err, size_t errlen, F&& f) {
  auto say = [&](const char* text) {
    if (err != nullptr && errlen > 0) snprintf(err, errlen, "%s", text);
  };
  try {
    CudaBackend be(static_cast<cudaStream_t>(stream));
    f(be);
    return kOk;
  } catch (const Failure& e) {
    if (err != nullptr && errlen > 0) snprintf(err, errlen, "%s: %s", e.where, cudaGetErrorString(e.code));
    return static_cast<int>(e.code);
  } catch (const std::invalid_argument& e) {
    say(e.what());
    return kBadInput;
  } catch (const std::exception& e) {
    say(e.what());
    return kInternal;
  }
}

template <class F>
void with_types(int dtype, bool idx64, F&& f) {
  auto idx = [&](auto tag) {
    if (idx64) {
      f(tag, int64_t{});
    } else {
      f(tag, int32_t{});
    }
  };
  switch (static_cast<gtopk::DType>(dtype)) {
    case gtopk::DType::kFloat32: idx(float{}); break;
    case gtopk::DType::kFloat16: idx(__half{}); break;
    case gtopk::DType::kBFloat16: idx(__nv_bfloat16{}); break;
    default: throw std::invalid_argument("unsupported dtype code");
  }
}

}  // namespace

int select_topk(int dtype, const void* x, void* residual, int64_t m, int64_t k, bool idx64, void* out_idx,
                void* out_val, void* stream, char* err, size_t errlen) {
  return guarded(stream, err, errlen, [&](CudaBackend& be) {
    with_types(dtype, idx64, [&](auto t, auto i) {
      using T = decltype(t);
      using I = decltype(i);
      gtopk_cuda::select_topk<CudaBackend, T, I>(be, static_cast<const T*>(x), static_cast<T*>(residual),
                                                 static_cast<u64>(m), static_cast<u64>(k), static_cast<I*>(out_idx),
                                                 static_cast<T*>(out_val));
    });
  });
}

int merge_topk(int dtype, bool idx64, const void* idx_a, const void* val_a, int64_t na, const void* idx_b,
               const void* val_b, int64_t nb, int64_t k, void* out_idx, void* out_val, int64_t* out_n, void* stream,
               char* err, size_t errlen) {
  return guarded(stream, err, errlen, [&](CudaBackend& be) {
    with_types(dtype, idx64, [&](auto t, auto i) {
      using T = decltype(t);
      using I = decltype(i);
      *out_n = static_cast<int64_t>(gtopk_cuda::merge_topk<CudaBackend, T, I>(
          be, static_cast<const I*>(idx_a), static_cast<const T*>(val_a), static_cast<u64>(na),
          static_cast<const I*>(idx_b), static_cast<const T*>(val_b), static_cast<u64>(nb), static_cast<u64>(k),
          static_cast<I*>(out_idx), static_cast<T*>(out_val)));
    });
  });
}

int scatter(int dtype, bool idx64, const void* idx, const void* val, int64_t n, void* dense, void* stream, char* err,
            size_t errlen) {
  return guarded(stream, err, errlen, [&](CudaBackend& be) {
    with_types(dtype, idx64, [&](auto t, auto i) {
      using T = decltype(t);
      using I = decltype(i);
      gtopk_cuda::scatter<CudaBackend, T, I>(be, static_cast<const I*>(idx), static_cast<const T*>(val),
                                             static_cast<u64>(n), static_cast<T*>(dense));
    });
  });
}

int zero_at(int dtype, bool idx64, const void* idx, int64_t n, void* residual, void* stream, char* err,
            size_t errlen) {
  return guarded(stream, err, errlen, [&](CudaBackend& be) {
    with_types(dtype, idx64, [&](auto t, auto i) {
      using T = decltype(t);
      using I = decltype(i);
      gtopk_cuda::zero_at<CudaBackend, T, I>(be, static_cast<const I*>(idx), static_cast<u64>(n),
                                             static_cast<T*>(residual));
    });
  });
}

}  // namespace gtopk_cuda
