// CUDA top-k selection, sparse merge and scatter with the CPU path's exact semantics.
//
// Selection (see select_plan.h, shared with the CPU): a threshold t is the rank-th
// largest key of the same 1024 x 64 sample the CPU uses (sorted on the device; t never
// leaves the device); one stable, order-preserving DeviceSelect pass keeps the indices
// with key >= t; the exact fix-up sorts only those candidates by key, descending and
// stable (so equal keys keep index order: ties go to the lower index), keeps the first
// k and sorts those indices ascending. If the sample misleads (fewer than k, or more
// than the plan's cap), every index is a candidate. Nothing that decides a value uses
// atomics: results are deterministic and equal to the CPU's bit for bit.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <thrust/iterator/counting_iterator.h>

#include <cub/cub.cuh>
#include <cstdio>
#include <cstring>

#include "../cuda_api.h"
#include "../select_plan.h"

namespace gtopk_cuda {
namespace {

// ---- magnitude keys of the device types (same order as keys.h) ----------------------
template <class T>
struct DevKey;
template <>
struct DevKey<float> {
  using U = uint32_t;
  static constexpr U kMask = 0x7fffffffu, kInf = 0x7f800000u;
  __device__ static U raw(float v) { return __float_as_uint(v) & kMask; }
  __device__ static float add(float a, float b) { return a + b; }
  __device__ static float nan() { return __uint_as_float(0x7fc00000u); }
};
template <>
struct DevKey<__half> {
  using U = uint16_t;
  static constexpr U kMask = 0x7fffu, kInf = 0x7c00u;
  __device__ static U raw(__half v) { return static_cast<U>(__half_as_ushort(v) & kMask); }
  __device__ static __half add(__half a, __half b) { return __float2half_rn(__half2float(a) + __half2float(b)); }
  __device__ static __half nan() { return __ushort_as_half(0x7e00u); }
};
template <>
struct DevKey<__nv_bfloat16> {
  using U = uint16_t;
  static constexpr U kMask = 0x7fffu, kInf = 0x7f80u;
  __device__ static U raw(__nv_bfloat16 v) { return static_cast<U>(__bfloat16_as_ushort(v) & kMask); }
  __device__ static __nv_bfloat16 add(__nv_bfloat16 a, __nv_bfloat16 b) {
    return __float2bfloat16_rn(__bfloat162float(a) + __bfloat162float(b));
  }
  __device__ static __nv_bfloat16 nan() { return __ushort_as_bfloat16(0x7fc0u); }
};

template <class T>
__device__ typename DevKey<T>::U canon_key(T v) {
  const auto r = DevKey<T>::raw(v);
  return r > DevKey<T>::kInf ? static_cast<typename DevKey<T>::U>(DevKey<T>::kInf + 1) : r;
}

template <class T>
__device__ T merge_sum(T a, T b) {
  const T s = DevKey<T>::add(a, b);
  return DevKey<T>::raw(s) > DevKey<T>::kInf ? DevKey<T>::nan() : s;
}

// ---- small kernels -----------------------------------------------------------------
template <class T>
__global__ void ef_add(T* r, const T* x, int64_t m) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < m; i += int64_t(gridDim.x) * blockDim.x)
    r[i] = DevKey<T>::add(r[i], x[i]);
}

template <class T>
__global__ void sample_keys(const T* a, int64_t m, typename DevKey<T>::U* out) {
  const size_t b = blockIdx.x, j = threadIdx.x;  // kSampleBlocks blocks of kSampleBlockLen threads
  out[b * gtopk::kSampleBlockLen + j] = canon_key(a[gtopk::sample_block_start(static_cast<size_t>(m), b) + j]);
}

template <class T>
struct AtLeast {  // key(a[i]) >= *t
  const T* a;
  const typename DevKey<T>::U* t;
  __device__ bool operator()(int64_t i) const { return canon_key(a[i]) >= *t; }
};

template <class T, class I>
__global__ void gather_keys(const T* a, const I* idx, int64_t n, typename DevKey<T>::U* keys) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < n; j += int64_t(gridDim.x) * blockDim.x)
    keys[j] = canon_key(a[idx[j]]);
}

template <class T, class I>
__global__ void gather_values(const T* a, const I* idx, int64_t n, T* out) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < n; j += int64_t(gridDim.x) * blockDim.x)
    out[j] = a[idx[j]];
}

template <class I>
__global__ void iota(I* out, int64_t n) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < n; j += int64_t(gridDim.x) * blockDim.x)
    out[j] = static_cast<I>(j);
}

template <class T, class I>
__global__ void scatter_kernel(const I* idx, const T* val, int64_t n, T* dense) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < n; j += int64_t(gridDim.x) * blockDim.x)
    dense[idx[j]] = val[j];
}

template <class T, class I>
__global__ void zero_kernel(const I* idx, int64_t n, T* residual) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < n; j += int64_t(gridDim.x) * blockDim.x)
    residual[idx[j]] = T(0.0f);
}

template <class T>
struct MergeSum {
  __device__ T operator()(const T& a, const T& b) const { return merge_sum(a, b); }
};

inline unsigned grid_for(int64_t n) {
  const int64_t blocks = (n + 255) / 256;
  return static_cast<unsigned>(blocks < 4096 ? (blocks > 0 ? blocks : 1) : 4096);
}

// ---- error handling and scratch memory ------------------------------------------------
struct Failure {
  cudaError_t code;
  const char* where;
};

#define GTOPK_CHECK(expr)                                           \
  do {                                                              \
    cudaError_t e_ = (expr);                                        \
    if (e_ != cudaSuccess) throw Failure{e_, #expr};                \
  } while (0)

class Scratch {  // stream-ordered allocations released together
 public:
  explicit Scratch(cudaStream_t s) : s_(s) {}
  ~Scratch() {
    for (void* p : ptrs_) cudaFreeAsync(p, s_);
  }
  template <class T>
  T* get(size_t n) {
    void* p = nullptr;
    GTOPK_CHECK(cudaMallocAsync(&p, n * sizeof(T) + 16, s_));
    ptrs_[count_++] = p;
    return static_cast<T*>(p);
  }

 private:
  cudaStream_t s_;
  void* ptrs_[32] = {};
  int count_ = 0;
};

// ---- selection ----------------------------------------------------------------------
// Top-k of a[0..m) into out_idx (ascending) / out_val. k < m.
template <class T, class I>
void select_core(const T* a, int64_t m, int64_t k, I* out_idx, T* out_val, cudaStream_t s) {
  using U = typename DevKey<T>::U;
  Scratch mem(s);
  I* cand = mem.get<I>(m);
  int64_t* d_count = mem.get<int64_t>(1);
  int64_t count = 0;
  const gtopk::SamplePlan plan = gtopk::plan_sample(static_cast<size_t>(m), static_cast<size_t>(k));
  thrust::counting_iterator<int64_t> first(0);
  size_t bytes = 0;
  bool have = false;
  if (plan.use_sample) {
    U* sample = mem.get<U>(gtopk::kSampleSize);
    U* sorted = mem.get<U>(gtopk::kSampleSize);
    sample_keys<T><<<gtopk::kSampleBlocks, gtopk::kSampleBlockLen, 0, s>>>(a, m, sample);
    GTOPK_CHECK(cudaGetLastError());
    cub::DeviceRadixSort::SortKeysDescending(nullptr, bytes, sample, sorted, int(gtopk::kSampleSize), 0,
                                             int(sizeof(U) * 8), s);
    void* tmp = mem.get<char>(bytes);
    GTOPK_CHECK(cub::DeviceRadixSort::SortKeysDescending(tmp, bytes, sample, sorted, int(gtopk::kSampleSize), 0,
                                                         int(sizeof(U) * 8), s));
    AtLeast<T> pred{a, sorted + (plan.rank - 1)};  // the threshold stays on the device
    size_t sel_bytes = 0;
    cub::DeviceSelect::If(nullptr, sel_bytes, first, cand, d_count, m, pred, s);
    void* sel_tmp = mem.get<char>(sel_bytes);
    GTOPK_CHECK(cub::DeviceSelect::If(sel_tmp, sel_bytes, first, cand, d_count, m, pred, s));
    GTOPK_CHECK(cudaMemcpyAsync(&count, d_count, sizeof(count), cudaMemcpyDeviceToHost, s));
    GTOPK_CHECK(cudaStreamSynchronize(s));
    have = count >= k && static_cast<size_t>(count) <= plan.cap;
  }
  if (!have) {  // every index is a candidate
    iota<I><<<grid_for(m), 256, 0, s>>>(cand, m);
    GTOPK_CHECK(cudaGetLastError());
    count = m;
  }
  U* keys = mem.get<U>(count);
  U* keys_sorted = mem.get<U>(count);
  I* cand_sorted = mem.get<I>(count);
  gather_keys<T, I><<<grid_for(count), 256, 0, s>>>(a, cand, count, keys);
  GTOPK_CHECK(cudaGetLastError());
  bytes = 0;
  cub::DeviceRadixSort::SortPairsDescending(nullptr, bytes, keys, keys_sorted, cand, cand_sorted, count, 0,
                                            int(sizeof(U) * 8), s);
  void* tmp = mem.get<char>(bytes);
  GTOPK_CHECK(cub::DeviceRadixSort::SortPairsDescending(tmp, bytes, keys, keys_sorted, cand, cand_sorted, count, 0,
                                                        int(sizeof(U) * 8), s));
  bytes = 0;
  cub::DeviceRadixSort::SortKeys(nullptr, bytes, cand_sorted, out_idx, k, 0, int(sizeof(I) * 8), s);
  void* tmp2 = mem.get<char>(bytes);
  GTOPK_CHECK(cub::DeviceRadixSort::SortKeys(tmp2, bytes, cand_sorted, out_idx, k, 0, int(sizeof(I) * 8), s));
  gather_values<T, I><<<grid_for(k), 256, 0, s>>>(a, out_idx, k, out_val);
  GTOPK_CHECK(cudaGetLastError());
}

template <class T, class I>
void select_typed(const void* x, void* residual, int64_t m, int64_t k, void* out_idx, void* out_val,
                  cudaStream_t s) {
  const T* a = static_cast<const T*>(x);
  if (residual != nullptr) {
    ef_add<T><<<grid_for(m), 256, 0, s>>>(static_cast<T*>(residual), a, m);
    GTOPK_CHECK(cudaGetLastError());
    a = static_cast<const T*>(residual);
  }
  if (k >= m) {
    iota<I><<<grid_for(m), 256, 0, s>>>(static_cast<I*>(out_idx), m);
    GTOPK_CHECK(cudaGetLastError());
    GTOPK_CHECK(cudaMemcpyAsync(out_val, a, m * sizeof(T), cudaMemcpyDeviceToDevice, s));
    return;
  }
  select_core<T, I>(a, m, k, static_cast<I*>(out_idx), static_cast<T*>(out_val), s);
}

// ---- merge ----------------------------------------------------------------------------
template <class T, class I>
int64_t merge_typed(const void* ia, const void* va, int64_t na, const void* ib, const void* vb, int64_t nb,
                    int64_t k, void* out_idx, void* out_val, cudaStream_t s) {
  Scratch mem(s);
  const int64_t n = na + nb;
  I* idx = mem.get<I>(n);
  T* val = mem.get<T>(n);
  I* idx_sorted = mem.get<I>(n);
  T* val_sorted = mem.get<T>(n);
  I* uidx = mem.get<I>(n);
  T* uval = mem.get<T>(n);
  int64_t* d_nu = mem.get<int64_t>(1);
  GTOPK_CHECK(cudaMemcpyAsync(idx, ia, na * sizeof(I), cudaMemcpyDeviceToDevice, s));
  GTOPK_CHECK(cudaMemcpyAsync(idx + na, ib, nb * sizeof(I), cudaMemcpyDeviceToDevice, s));
  GTOPK_CHECK(cudaMemcpyAsync(val, va, na * sizeof(T), cudaMemcpyDeviceToDevice, s));
  GTOPK_CHECK(cudaMemcpyAsync(val + na, vb, nb * sizeof(T), cudaMemcpyDeviceToDevice, s));
  size_t bytes = 0;
  cub::DeviceRadixSort::SortPairs(nullptr, bytes, idx, idx_sorted, val, val_sorted, n, 0, int(sizeof(I) * 8), s);
  void* tmp = mem.get<char>(bytes);
  GTOPK_CHECK(cub::DeviceRadixSort::SortPairs(tmp, bytes, idx, idx_sorted, val, val_sorted, n, 0,
                                              int(sizeof(I) * 8), s));
  bytes = 0;
  cub::DeviceReduce::ReduceByKey(nullptr, bytes, idx_sorted, uidx, val_sorted, uval, d_nu, MergeSum<T>(), n, s);
  void* tmp2 = mem.get<char>(bytes);
  GTOPK_CHECK(cub::DeviceReduce::ReduceByKey(tmp2, bytes, idx_sorted, uidx, val_sorted, uval, d_nu, MergeSum<T>(),
                                             n, s));
  int64_t nu = 0;
  GTOPK_CHECK(cudaMemcpyAsync(&nu, d_nu, sizeof(nu), cudaMemcpyDeviceToHost, s));
  GTOPK_CHECK(cudaStreamSynchronize(s));
  if (k >= nu) {
    GTOPK_CHECK(cudaMemcpyAsync(out_idx, uidx, nu * sizeof(I), cudaMemcpyDeviceToDevice, s));
    GTOPK_CHECK(cudaMemcpyAsync(out_val, uval, nu * sizeof(T), cudaMemcpyDeviceToDevice, s));
    return nu;
  }
  int64_t* pos = mem.get<int64_t>(k);
  T* vals = mem.get<T>(k);
  select_core<T, int64_t>(uval, nu, k, pos, vals, s);  // positions ascend with indices
  gather_values<I, int64_t><<<grid_for(k), 256, 0, s>>>(uidx, pos, k, static_cast<I*>(out_idx));
  GTOPK_CHECK(cudaGetLastError());
  GTOPK_CHECK(cudaMemcpyAsync(out_val, vals, k * sizeof(T), cudaMemcpyDeviceToDevice, s));
  return k;
}

int report(const Failure& f, char* err, size_t errlen) {
  if (err != nullptr && errlen > 0) snprintf(err, errlen, "%s: %s", f.where, cudaGetErrorString(f.code));
  return static_cast<int>(f.code);
}

template <template <class, class> class F, class... Args>
void dispatch(int dtype, bool idx64, Args... args) {
  switch (dtype) {
    case kF32: idx64 ? F<float, int64_t>::run(args...) : F<float, int32_t>::run(args...); break;
    case kF16: idx64 ? F<__half, int64_t>::run(args...) : F<__half, int32_t>::run(args...); break;
    case kBF16:
      idx64 ? F<__nv_bfloat16, int64_t>::run(args...) : F<__nv_bfloat16, int32_t>::run(args...);
      break;
    default: throw Failure{cudaErrorInvalidValue, "unsupported dtype"};
  }
}

template <class T, class I>
struct SelectOp {
  static void run(const void* x, void* r, int64_t m, int64_t k, void* oi, void* ov, cudaStream_t s) {
    select_typed<T, I>(x, r, m, k, oi, ov, s);
  }
};
template <class T, class I>
struct MergeOp {
  static void run(const void* ia, const void* va, int64_t na, const void* ib, const void* vb, int64_t nb, int64_t k,
                  void* oi, void* ov, int64_t* on, cudaStream_t s) {
    *on = merge_typed<T, I>(ia, va, na, ib, vb, nb, k, oi, ov, s);
  }
};
template <class T, class I>
struct ScatterOp {
  static void run(const void* idx, const void* val, int64_t n, void* dense, cudaStream_t s) {
    scatter_kernel<T, I><<<grid_for(n), 256, 0, s>>>(static_cast<const I*>(idx), static_cast<const T*>(val), n,
                                                    static_cast<T*>(dense));
    GTOPK_CHECK(cudaGetLastError());
  }
};
template <class T, class I>
struct ZeroOp {
  static void run(const void* idx, int64_t n, void* residual, cudaStream_t s) {
    zero_kernel<T, I><<<grid_for(n), 256, 0, s>>>(static_cast<const I*>(idx), n, static_cast<T*>(residual));
    GTOPK_CHECK(cudaGetLastError());
  }
};

}  // namespace

int select_topk(int dtype, const void* x, void* residual, int64_t m, int64_t k, bool idx64, void* out_idx,
                void* out_val, void* stream, char* err, size_t errlen) {
  try {
    dispatch<SelectOp>(dtype, idx64, x, residual, m, k, out_idx, out_val, static_cast<cudaStream_t>(stream));
    return 0;
  } catch (const Failure& f) {
    return report(f, err, errlen);
  }
}

int merge_topk(int dtype, bool idx64, const void* idx_a, const void* val_a, int64_t na, const void* idx_b,
               const void* val_b, int64_t nb, int64_t k, void* out_idx, void* out_val, int64_t* out_n, void* stream,
               char* err, size_t errlen) {
  try {
    dispatch<MergeOp>(dtype, idx64, idx_a, val_a, na, idx_b, val_b, nb, k, out_idx, out_val, out_n,
                      static_cast<cudaStream_t>(stream));
    return 0;
  } catch (const Failure& f) {
    return report(f, err, errlen);
  }
}

int scatter(int dtype, bool idx64, const void* idx, const void* val, int64_t n, void* dense, void* stream, char* err,
            size_t errlen) {
  try {
    dispatch<ScatterOp>(dtype, idx64, idx, val, n, dense, static_cast<cudaStream_t>(stream));
    return 0;
  } catch (const Failure& f) {
    return report(f, err, errlen);
  }
}

int zero_at(int dtype, bool idx64, const void* idx, int64_t n, void* residual, void* stream, char* err,
            size_t errlen) {
  try {
    dispatch<ZeroOp>(dtype, idx64, idx, n, residual, static_cast<cudaStream_t>(stream));
    return 0;
  } catch (const Failure& f) {
    return report(f, err, errlen);
  }
}

}  // namespace gtopk_cuda
