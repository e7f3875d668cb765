// gtopk_mpi._C: NumPy bindings of the CPU kernels (selection, merge, survivor mask).
// Every kernel releases the GIL; results are returned as NumPy arrays that own the
// kernel's buffers (no copy).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "merge.h"
#include "select.h"
#include "select_plan.h"
#ifdef GTOPK_WITH_CUDA
#include "cuda_api.h"
#endif

namespace py = pybind11;
using gtopk::DType;
using gtopk::half_t;

namespace {

constexpr int kNpyHalf = 23, kNpyFloat = 11, kNpyDouble = 12, kNpyInt32 = 5, kNpyInt64 = 7;  // NumPy's type numbers

DType value_dtype(const py::array& a, const char* name) {
  switch (a.dtype().num()) {
    case kNpyHalf: return DType::kFloat16;
    case kNpyFloat: return DType::kFloat32;
    case kNpyDouble: return DType::kFloat64;
    default:
      throw py::value_error(std::string(name) + ": unsupported dtype " + py::str(a.dtype()).cast<std::string>() +
                            " (expected float16, float32 or float64)");
  }
}

void check_1d_contiguous(const py::array& a, const char* name) {
  if (a.ndim() != 1) throw py::value_error(std::string(name) + ": expected a 1-D array, got " +
                                           std::to_string(a.ndim()) + " dimensions");
  if (a.size() > 1 && a.strides(0) != a.itemsize()) throw py::value_error(std::string(name) + ": array must be contiguous");
}

template <class T>
py::dtype dtype_of() {
  if constexpr (std::is_same_v<T, half_t>) return py::dtype("float16");
  else return py::dtype::of<T>();
}

// NumPy array that takes ownership of a vector's buffer.
template <class T>
py::array own(std::vector<T>&& v) {
  auto* heap = new std::vector<T>(std::move(v));
  py::capsule base(heap, [](void* p) { delete static_cast<std::vector<T>*>(p); });
  return py::array(dtype_of<T>(), {static_cast<py::ssize_t>(heap->size())}, {static_cast<py::ssize_t>(sizeof(T))},
                   heap->data(), base);
}

bool fits_int32(size_t m) { return m <= static_cast<size_t>(std::numeric_limits<int32_t>::max()); }

template <class T, class I, bool kFused>
py::tuple select_typed(const py::array& x, py::array* r, size_t k, int threads) {
  const size_t m = static_cast<size_t>(x.size());
  const size_t n = std::min(k, m);
  std::vector<I> idx(n);
  std::vector<T> val(n);
  const T* xp = static_cast<const T*>(x.data());
  T* rp = r ? static_cast<T*>(r->mutable_data()) : nullptr;
  {
    py::gil_scoped_release nogil;
    gtopk::select_topk<T, I, kFused>(xp, rp, m, k, threads, idx.data(), val.data());
  }
  return py::make_tuple(own(std::move(idx)), own(std::move(val)));
}

template <bool kFused>
py::tuple select_dispatch(const py::array& x, py::array* r, int64_t k, int threads) {
  check_1d_contiguous(x, "x");
  if (k < 1) throw py::value_error("k must be >= 1, got " + std::to_string(k));
  const DType dt = value_dtype(x, "x");
  const bool i32 = fits_int32(static_cast<size_t>(x.size()));
#define GTOPK_CASE(T)                                                                    \
  return i32 ? select_typed<T, int32_t, kFused>(x, r, static_cast<size_t>(k), threads) \
             : select_typed<T, int64_t, kFused>(x, r, static_cast<size_t>(k), threads)
  switch (dt) {
    case DType::kFloat16: GTOPK_CASE(half_t);
    case DType::kFloat32: GTOPK_CASE(float);
    case DType::kFloat64: GTOPK_CASE(double);
    default: break;
  }
#undef GTOPK_CASE
  throw py::value_error("unreachable dtype");
}

py::tuple select_topk(const py::array& x, int64_t k, int threads) { return select_dispatch<false>(x, nullptr, k, threads); }

py::tuple select_topk_ef(py::array residual, const py::array& x, int64_t k, int threads) {
  check_1d_contiguous(residual, "residual");
  if (!residual.writeable()) throw py::value_error("residual: array must be writeable");
  if (residual.size() != x.size()) throw py::value_error("residual: length " + std::to_string(residual.size()) +
                                                         " differs from x's " + std::to_string(x.size()));
  if (residual.dtype().num() != x.dtype().num()) throw py::value_error("residual: dtype differs from x's");
  return select_dispatch<true>(x, &residual, k, threads);
}

template <class T, class I>
py::tuple merge_typed(const py::array& ia, const py::array& va, const py::array& ib, const py::array& vb, size_t k) {
  const size_t na = static_cast<size_t>(ia.size()), nb = static_cast<size_t>(ib.size());
  const size_t cap = std::min(k, na + nb);
  std::vector<I> idx(cap);
  std::vector<T> val(cap);
  size_t n;
  {
    py::gil_scoped_release nogil;
    n = gtopk::merge_topk<T, I>(static_cast<const I*>(ia.data()), static_cast<const T*>(va.data()), na,
                                static_cast<const I*>(ib.data()), static_cast<const T*>(vb.data()), nb, k, idx.data(),
                                val.data());
  }
  idx.resize(n);
  val.resize(n);
  return py::make_tuple(own(std::move(idx)), own(std::move(val)));
}

py::tuple merge_topk(const py::array& ia, const py::array& va, const py::array& ib, const py::array& vb, int64_t k) {
  check_1d_contiguous(ia, "idx_a");
  check_1d_contiguous(va, "val_a");
  check_1d_contiguous(ib, "idx_b");
  check_1d_contiguous(vb, "val_b");
  if (k < 1) throw py::value_error("k must be >= 1, got " + std::to_string(k));
  if (ia.size() != va.size() || ib.size() != vb.size()) throw py::value_error("indices and values differ in length");
  if (va.dtype().num() != vb.dtype().num()) throw py::value_error("val_a and val_b differ in dtype");
  const int inum = ia.dtype().num();
  if (inum != ib.dtype().num() || (inum != kNpyInt32 && inum != kNpyInt64))
    throw py::value_error("indices must both be int32 or both int64");
  const bool i32 = inum == kNpyInt32;
  const size_t kk = static_cast<size_t>(k);
#define GTOPK_CASE(T) return i32 ? merge_typed<T, int32_t>(ia, va, ib, vb, kk) : merge_typed<T, int64_t>(ia, va, ib, vb, kk)
  switch (value_dtype(va, "val_a")) {
    case DType::kFloat16: GTOPK_CASE(half_t);
    case DType::kFloat32: GTOPK_CASE(float);
    case DType::kFloat64: GTOPK_CASE(double);
    default: break;
  }
#undef GTOPK_CASE
  throw py::value_error("unreachable dtype");
}

py::array isin_sorted(const py::array& a, const py::array& b) {
  check_1d_contiguous(a, "a");
  check_1d_contiguous(b, "b");
  const int inum = a.dtype().num();
  if (inum != b.dtype().num() || (inum != kNpyInt32 && inum != kNpyInt64))
    throw py::value_error("indices must both be int32 or both int64");
  std::vector<uint8_t> mask(static_cast<size_t>(a.size()));
  {
    py::gil_scoped_release nogil;
    if (inum == kNpyInt32)
      gtopk::isin_sorted<int32_t>(static_cast<const int32_t*>(a.data()), a.size(), static_cast<const int32_t*>(b.data()),
                                  b.size(), mask.data());
    else
      gtopk::isin_sorted<int64_t>(static_cast<const int64_t*>(a.data()), a.size(), static_cast<const int64_t*>(b.data()),
                                  b.size(), mask.data());
  }
  return own(std::move(mask)).attr("view")("bool");
}

py::dict sample_plan(int64_t m, int64_t k) {
  const gtopk::SamplePlan p = gtopk::plan_sample(static_cast<size_t>(m), static_cast<size_t>(k));
  py::dict d;
  d["use_sample"] = p.use_sample;
  d["rank"] = p.rank;
  d["cap"] = p.cap;
  py::list starts;
  if (p.use_sample)
    for (size_t b = 0; b < gtopk::kSampleBlocks; ++b) starts.append(gtopk::sample_block_start(static_cast<size_t>(m), b));
  d["block_starts"] = starts;
  d["block_len"] = gtopk::kSampleBlockLen;
  return d;
}

#ifdef GTOPK_WITH_CUDA
// CUDA entry points: device pointers and the stream arrive as integers (torch's
// data_ptr() / cuda_stream, or CuPy's). Bad input becomes ValueError, the rest RuntimeError.
void cuda_check(int code, const char* err) {
  if (code == gtopk_cuda::kBadInput) throw py::value_error(err);
  if (code != 0) throw std::runtime_error(std::string("gtopk_mpi CUDA: ") + err);
}

void cuda_select_topk(int dtype, uintptr_t x, uintptr_t residual, int64_t m, int64_t k, bool idx64, uintptr_t out_idx,
                      uintptr_t out_val, uintptr_t stream) {
  if (k < 1) throw py::value_error("k must be >= 1, got " + std::to_string(k));
  char err[512] = {0};
  int code;
  {
    py::gil_scoped_release nogil;
    code = gtopk_cuda::select_topk(dtype, reinterpret_cast<const void*>(x), reinterpret_cast<void*>(residual), m, k,
                                   idx64, reinterpret_cast<void*>(out_idx), reinterpret_cast<void*>(out_val),
                                   reinterpret_cast<void*>(stream), err, sizeof(err));
  }
  cuda_check(code, err);
}

int64_t cuda_merge_topk(int dtype, bool idx64, uintptr_t ia, uintptr_t va, int64_t na, uintptr_t ib, uintptr_t vb,
                        int64_t nb, int64_t k, uintptr_t out_idx, uintptr_t out_val, uintptr_t stream) {
  if (k < 1) throw py::value_error("k must be >= 1, got " + std::to_string(k));
  char err[512] = {0};
  int64_t n = 0;
  int code;
  {
    py::gil_scoped_release nogil;
    code = gtopk_cuda::merge_topk(dtype, idx64, reinterpret_cast<const void*>(ia), reinterpret_cast<const void*>(va),
                                  na, reinterpret_cast<const void*>(ib), reinterpret_cast<const void*>(vb), nb, k,
                                  reinterpret_cast<void*>(out_idx), reinterpret_cast<void*>(out_val), &n,
                                  reinterpret_cast<void*>(stream), err, sizeof(err));
  }
  cuda_check(code, err);
  return n;
}

void cuda_scatter(int dtype, bool idx64, uintptr_t idx, uintptr_t val, int64_t n, uintptr_t dense, uintptr_t stream) {
  char err[512] = {0};
  cuda_check(gtopk_cuda::scatter(dtype, idx64, reinterpret_cast<const void*>(idx), reinterpret_cast<const void*>(val),
                                 n, reinterpret_cast<void*>(dense), reinterpret_cast<void*>(stream), err, sizeof(err)),
             err);
}

void cuda_zero_at(int dtype, bool idx64, uintptr_t idx, int64_t n, uintptr_t residual, uintptr_t stream) {
  char err[512] = {0};
  cuda_check(gtopk_cuda::zero_at(dtype, idx64, reinterpret_cast<const void*>(idx), n,
                                 reinterpret_cast<void*>(residual), reinterpret_cast<void*>(stream), err, sizeof(err)),
             err);
}
#endif

}  // namespace

PYBIND11_MODULE(_C, mod) {
  mod.doc() = "gtopk_mpi native CPU kernels: exact top-k selection, sparse merge, survivor masks";
  py::enum_<DType>(mod, "DType", "Value and index types, numbered as in message headers (csrc/numeric.h).")
      .value("float16", DType::kFloat16)
      .value("float32", DType::kFloat32)
      .value("float64", DType::kFloat64)
      .value("int32", DType::kInt32)
      .value("int64", DType::kInt64)
      .value("bfloat16", DType::kBFloat16);
  mod.def("select_topk", &select_topk, py::arg("x"), py::arg("k"), py::arg("threads") = 1,
          "Exact top-min(k, len(x)) of a 1-D float16/32/64 array by |value| (NaN first, ties to the lower index).\n"
          "Returns (indices ascending: int32 if len(x) < 2**31 else int64, values).");
  mod.def("select_topk_ef", &select_topk_ef, py::arg("residual"), py::arg("x"), py::arg("k"), py::arg("threads") = 1,
          "Fused error feedback: residual += x in place (one pass), then the top-k of the new residual.");
  mod.def("merge_topk", &merge_topk, py::arg("idx_a"), py::arg("val_a"), py::arg("idx_b"), py::arg("val_b"),
          py::arg("k"),
          "Union of two index-ascending sparse sets, values summed at equal indices, then top-k by |value|.");
  mod.def("isin_sorted", &isin_sorted, py::arg("a"), py::arg("b"),
          "Boolean mask over a: a[j] occurs in b (both strictly ascending).");
  mod.def("sample_plan", &sample_plan, py::arg("m"), py::arg("k"),
          "The selection's sampling plan for length m and k (shared with the CUDA path).");
#ifdef GTOPK_WITH_CUDA
  mod.attr("has_cuda") = true;
  mod.def("cuda_select_topk", &cuda_select_topk, "CUDA selection on device pointers (see gtopk_mpi.cuda)");
  mod.def("cuda_merge_topk", &cuda_merge_topk, "CUDA merge on device pointers (see gtopk_mpi.cuda)");
  mod.def("cuda_scatter", &cuda_scatter, "dense[idx] = val on the device");
  mod.def("cuda_zero_at", &cuda_zero_at, "residual[idx] = 0 on the device");
#else
  mod.attr("has_cuda") = false;
#endif
}
