// gtopk_mpi._C: NumPy bindings of the CPU kernels (selection: select.h, merge with tags: merge.h,
// settle: settle.h, the wire's payloads: codec.h) and the C entry points of the CUDA kernels.
// Bindings only marshal: check and convert arrays, release the GIL, call the header's function.
// Every kernel releases the GIL; results are returned as NumPy arrays that own the
// kernel's buffers (no copy).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "codec.h"
#include "merge.h"
#include "select.h"
#include "select_plan.h"
#include "settle.h"
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

// f(T{}, I{}) for the value type dt (float16/32/64) and the index type (int32 when i32, else
// int64): the one place the kernels' type pairs are spelled out.
template <class F>
auto with_types(DType dt, bool i32, F&& f) {
  const auto with_index = [&](auto value) { return i32 ? f(value, int32_t{}) : f(value, int64_t{}); };
  switch (dt) {
    case DType::kFloat16: return with_index(half_t{});
    case DType::kFloat32: return with_index(float{});
    case DType::kFloat64: return with_index(double{});
    default: break;
  }
  throw py::value_error("unreachable dtype");
}

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
  return with_types(dt, i32, [&](auto t, auto i) {
    return select_typed<decltype(t), decltype(i), kFused>(x, r, static_cast<size_t>(k), threads);
  });
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

const uint32_t* tags_of(const py::object& t, size_t n, const char* name) {
  if (t.is_none()) return nullptr;
  const auto a = py::cast<py::array_t<uint32_t, py::array::c_style>>(t);
  if (static_cast<size_t>(a.size()) != n) throw py::value_error(std::string(name) + " must have one tag per entry");
  return a.data();
}

template <class T, class I>
py::tuple merge_typed(const py::array& ia, const py::array& va, const py::object& ta, const py::array& ib,
                      const py::array& vb, const py::object& tb, size_t k) {
  const size_t na = static_cast<size_t>(ia.size()), nb = static_cast<size_t>(ib.size());
  const size_t cap = std::min(k, na + nb);
  const bool tagged = !ta.is_none() || !tb.is_none();
  const uint32_t* pta = tags_of(ta, na, "tags_a");
  const uint32_t* ptb = tags_of(tb, nb, "tags_b");
  std::vector<I> idx(cap);
  std::vector<T> val(cap);
  std::vector<uint32_t> tag(tagged ? cap : 0);
  size_t n;
  {
    py::gil_scoped_release nogil;
    n = gtopk::merge_topk<T, I>(static_cast<const I*>(ia.data()), static_cast<const T*>(va.data()), pta, na,
                                static_cast<const I*>(ib.data()), static_cast<const T*>(vb.data()), ptb, nb, k,
                                idx.data(), val.data(), tagged ? tag.data() : nullptr);
  }
  idx.resize(n);
  val.resize(n);
  if (!tagged) return py::make_tuple(own(std::move(idx)), own(std::move(val)));
  tag.resize(n);
  return py::make_tuple(own(std::move(idx)), own(std::move(val)), own(std::move(tag)));
}

py::tuple merge_topk(const py::array& ia, const py::array& va, const py::array& ib, const py::array& vb, int64_t k,
                     const py::object& ta, const py::object& tb) {
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
  return with_types(value_dtype(va, "val_a"), i32, [&](auto t, auto i) {
    return merge_typed<decltype(t), decltype(i)>(ia, va, ta, ib, vb, tb, kk);
  });
}

// ---- wire codecs (codec.h) ----------------------------------------------------------------
gtopk::ValueCode value_code_of(int code) {
  if (code < 0 || code > static_cast<int>(gtopk::ValueCode::kFP16))
    throw py::value_error("value_code: expected 0 (raw), 1 (bf16) or 2 (fp16), got " + std::to_string(code));
  return static_cast<gtopk::ValueCode>(code);
}

// Returns (payload uint8, index_bytes, scale, packed, decoded or None, errors or None): see codec.h.
py::tuple encode_entries(const py::array& idx, const py::array& val, int value_code, int pack, bool rounded) {
  check_1d_contiguous(idx, "indices");
  check_1d_contiguous(val, "values");
  const size_t n = static_cast<size_t>(idx.size());
  if (static_cast<size_t>(val.size()) != n) throw py::value_error("indices and values differ in length");
  const int inum = idx.dtype().num();
  if (inum != kNpyInt32 && inum != kNpyInt64) throw py::value_error("indices must be int32 or int64");
  const gtopk::ValueCode code = value_code_of(value_code);
  if (code != gtopk::ValueCode::kRaw && val.dtype().num() != kNpyFloat)
    throw py::value_error("16-bit wire values are encoded from float32 values");
  const size_t itemsize = static_cast<size_t>(val.itemsize());
  std::vector<uint8_t> out(gtopk::max_payload_bytes(n, static_cast<size_t>(idx.itemsize()),
                                                    gtopk::wire_value_bytes(code, itemsize)));
  std::vector<float> back(rounded && code != gtopk::ValueCode::kRaw ? n : 0), err(back.size());
  gtopk::PayloadLayout l;
  {
    py::gil_scoped_release nogil;
    float* pb = back.empty() ? nullptr : back.data();
    float* pe = back.empty() ? nullptr : err.data();
    l = inum == kNpyInt32 ? gtopk::encode_payload(static_cast<const int32_t*>(idx.data()), val.data(), n, itemsize,
                                                  code, pack, out.data(), pb, pe)
                          : gtopk::encode_payload(static_cast<const int64_t*>(idx.data()), val.data(), n, itemsize,
                                                  code, pack, out.data(), pb, pe);
  }
  out.resize(l.index_bytes + n * gtopk::wire_value_bytes(code, itemsize));
  if (back.empty()) return py::make_tuple(own(std::move(out)), l.index_bytes, l.scale, l.packed, py::none(), py::none());
  return py::make_tuple(own(std::move(out)), l.index_bytes, l.scale, l.packed, own(std::move(back)),
                        own(std::move(err)));
}

// The inverse: (indices, values: float32 for 16-bit codes, else `dtype`); see codec.h.
py::tuple decode_entries(const py::array& body, size_t n, bool packed, size_t index_bytes, bool idx64, int value_code,
                         int scale, const py::dtype& dtype, uint64_t limit, size_t tail) {
  check_1d_contiguous(body, "body");
  const gtopk::ValueCode code = value_code_of(value_code);
  const size_t itemsize = static_cast<size_t>(dtype.itemsize());
  const size_t have = static_cast<size_t>(body.size()) * static_cast<size_t>(body.itemsize());
  const gtopk::PayloadLayout l{index_bytes, packed, scale};
  std::vector<int64_t> idx64v(idx64 ? n : 0);
  std::vector<int32_t> idx32v(idx64 ? 0 : n);
  std::vector<uint8_t> raw(code == gtopk::ValueCode::kRaw ? n * itemsize : 0);
  std::vector<float> vals(code == gtopk::ValueCode::kRaw ? 0 : n);
  {
    py::gil_scoped_release nogil;
    const auto* in = static_cast<const uint8_t*>(body.data());
    if (idx64) {
      gtopk::decode_payload(in, have, n, l, itemsize, code, limit, tail, idx64v.data(), raw.data(), vals.data());
    } else {
      gtopk::decode_payload(in, have, n, l, itemsize, code, limit, tail, idx32v.data(), raw.data(), vals.data());
    }
  }
  py::object idx = idx64 ? own(std::move(idx64v)) : own(std::move(idx32v));
  py::object val = code == gtopk::ValueCode::kRaw ? own(std::move(raw)).attr("view")(dtype) : own(std::move(vals));
  return py::make_tuple(idx, val);
}

// ---- error feedback after an exchange (settle.h) ------------------------------------------
template <class T, class I>
py::array settle_typed(py::array& residual, const py::array& idx, const py::array& tags, uint32_t own_bit,
                       const py::list& errors) {
  std::vector<gtopk::ErrorRecord<T, I>> recs;
  for (const auto& item : errors) {
    const py::tuple rec = item.cast<py::tuple>();
    const py::array ir = rec[1].cast<py::array>();
    const py::array er = rec[2].cast<py::array>();
    if (ir.dtype().num() != idx.dtype().num() || er.dtype().num() != residual.dtype().num() || ir.size() != er.size())
      throw py::value_error("settle: an error record does not match the set");
    recs.push_back({rec[0].cast<uint32_t>(), static_cast<const I*>(ir.data()), static_cast<const T*>(er.data()),
                    static_cast<size_t>(ir.size())});
  }
  std::vector<I> carried;
  bool ok;
  {
    py::gil_scoped_release nogil;
    ok = gtopk::settle<T, I>(static_cast<T*>(residual.mutable_data()), static_cast<const I*>(idx.data()),
                             static_cast<const uint32_t*>(tags.data()), static_cast<size_t>(idx.size()), own_bit,
                             recs.data(), recs.size(), carried);
  }
  if (!ok) throw py::value_error("settle: a tagged entry has no error record");
  return own(std::move(carried));
}

py::array settle(py::array residual, const py::array& idx, const py::array& tags, uint32_t own_bit,
                 const py::list& errors) {
  check_1d_contiguous(residual, "residual");
  check_1d_contiguous(idx, "indices");
  check_1d_contiguous(tags, "tags");
  if (!residual.writeable()) throw py::value_error("residual must be writeable");
  if (tags.dtype().num() != py::dtype::of<uint32_t>().num() || tags.size() != idx.size())
    throw py::value_error("tags must be uint32, one per entry");
  const bool i32 = idx.dtype().num() == kNpyInt32;
  if (!i32 && idx.dtype().num() != kNpyInt64) throw py::value_error("indices must be int32 or int64");
  return with_types(value_dtype(residual, "residual"), i32, [&](auto t, auto i) {
    return settle_typed<decltype(t), decltype(i)>(residual, idx, tags, own_bit, errors);
  });
}

py::array adopt_tags(const py::array& mine, const py::array& tags, const py::array& kept, const py::array& flags) {
  for (const auto& [arr, name] : {std::pair{&mine, "mine"}, {&tags, "tags"}, {&kept, "kept"}, {&flags, "flags"}})
    check_1d_contiguous(*arr, name);
  const int inum = mine.dtype().num();
  if (inum != kept.dtype().num() || (inum != kNpyInt32 && inum != kNpyInt64))
    throw py::value_error("indices must both be int32 or both int64");
  if (tags.dtype().num() != py::dtype::of<uint32_t>().num() || tags.size() != mine.size())
    throw py::value_error("tags must be uint32, one per entry of mine");
  if (flags.itemsize() != 1 || flags.size() != kept.size()) throw py::value_error("flags must be one byte per entry of kept");
  std::vector<uint32_t> out(static_cast<size_t>(kept.size()));
  bool ok;
  {
    py::gil_scoped_release nogil;
    const auto* t = static_cast<const uint32_t*>(tags.data());
    const auto* f = static_cast<const uint8_t*>(flags.data());
    ok = inum == kNpyInt32
             ? gtopk::adopt_tags(static_cast<const int32_t*>(mine.data()), t, mine.size(),
                                 static_cast<const int32_t*>(kept.data()), f, kept.size(), out.data())
             : gtopk::adopt_tags(static_cast<const int64_t*>(mine.data()), t, mine.size(),
                                 static_cast<const int64_t*>(kept.data()), f, kept.size(), out.data());
  }
  if (!ok) throw py::value_error("adopt_tags: a flagged entry is not in this rank's set");
  return own(std::move(out));
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
  mod.doc() = "gtopk_mpi native kernels: exact top-k selection, sparse merge with survivor tags, settle, wire codec";
  py::enum_<DType>(mod, "DType", "Value and index types, numbered as in message headers (csrc/numeric.h).")
      .value("float16", DType::kFloat16)
      .value("float32", DType::kFloat32)
      .value("float64", DType::kFloat64)
      .value("int32", DType::kInt32)
      .value("int64", DType::kInt64)
      .value("bfloat16", DType::kBFloat16);
  py::enum_<gtopk::ValueCode>(mod, "ValueCode", "How a message's values travel (header value_code; csrc/codec.h).")
      .value("raw", gtopk::ValueCode::kRaw)
      .value("bf16", gtopk::ValueCode::kBF16)
      .value("fp16", gtopk::ValueCode::kFP16);
  mod.def("select_topk", &select_topk, py::arg("x"), py::arg("k"), py::arg("threads") = 1,
          "Exact top-min(k, len(x)) of a 1-D float16/32/64 array by |value| (NaN first, ties to the lower index).\n"
          "Returns (indices ascending: int32 if len(x) < 2**31 else int64, values).");
  mod.def("select_topk_ef", &select_topk_ef, py::arg("residual"), py::arg("x"), py::arg("k"), py::arg("threads") = 1,
          "Fused error feedback: residual += x in place (one pass), then the top-k of the new residual.");
  mod.def("merge_topk", &merge_topk, py::arg("idx_a"), py::arg("val_a"), py::arg("idx_b"), py::arg("val_b"),
          py::arg("k"), py::arg("tags_a") = py::none(), py::arg("tags_b") = py::none(),
          "Union of two index-ascending sparse sets, values summed at equal indices (uint32 tags OR-ed), then\n"
          "top-k by |value|. Returns (indices, values), or (indices, values, tags) when tags are given.");
  mod.def(
      "malloc_keep",
      [](int64_t mmap_threshold, int64_t trim_threshold) {
#if defined(__GLIBC__)
        const int64_t top = std::numeric_limits<int>::max();
        if (mmap_threshold < 0 || mmap_threshold > top || trim_threshold < 0 || trim_threshold > top) return false;
        return mallopt(M_MMAP_THRESHOLD, static_cast<int>(mmap_threshold)) == 1 &&
               mallopt(M_TRIM_THRESHOLD, static_cast<int>(trim_threshold)) == 1;
#else
        (void)mmap_threshold, (void)trim_threshold;
        return false;
#endif
      },
      py::arg("mmap_threshold"), py::arg("trim_threshold"),
      "glibc's M_MMAP_THRESHOLD (blocks from this size up get pages of their own, unmapped when freed)\n"
      "and M_TRIM_THRESHOLD (free memory at the heap's top beyond this goes back to the kernel), in bytes.\n"
      "False where not glibc.");
  mod.def(
      "merge_form",
      [](const py::object& cap) {
        static const char* const names[] = {"scalar", "avx2", "avx512"};
        const std::string was = names[static_cast<int>(gtopk::merge_form())];
        if (!cap.is_none()) {
          const std::string want = py::cast<std::string>(cap);
          const auto* at = std::find(std::begin(names), std::end(names), want);
          if (at == std::end(names)) throw py::value_error("merge_form: expected scalar, avx2 or avx512, got " + want);
          gtopk::g_merge_form_cap.store(static_cast<int>(at - std::begin(names)));
        }
        return was;
      },
      py::arg("cap") = py::none(),
      "The form float32 / int32 merges (and settle's record lookups) take on this CPU: avx512, avx2 or\n"
      "scalar; with `cap`, the widest allowed from now on (tests check every form on one machine).\n"
      "Returns the form in effect before the call.");
  mod.def("encode_entries", &encode_entries, py::arg("indices"), py::arg("values"), py::arg("value_code"),
          py::arg("pack") = -1, py::arg("rounded") = false,
          "Wire payload of a sparse set: indices raw or as packed gaps (pack: 1, 0, -1 = whichever is smaller),\n"
          "values raw or 16-bit (value_code 1: bfloat16, 2: float16 scaled by 2^scale). Returns (payload uint8,\n"
          "index_bytes, scale, packed, decoded, errors): with `rounded` and a 16-bit code, the float32 values the\n"
          "receiver decodes and values - decoded (0 where not finite), else None, None.");
  mod.def("decode_entries", &decode_entries, py::arg("body"), py::arg("count"), py::arg("packed"),
          py::arg("index_bytes"), py::arg("idx64"), py::arg("value_code"), py::arg("scale"), py::arg("dtype"),
          py::arg("limit"), py::arg("tail") = 0,
          "Inverse of encode_entries: (indices, values) of a payload (16-bit values come back as float32).");
  mod.def("settle", &settle, py::arg("residual"), py::arg("indices"), py::arg("tags"), py::arg("own_bit"),
          py::arg("errors"),
          "Error feedback after an exchange: residual = 0 where the result carries this rank's entries (tag `own`),\n"
          "then += each (bit, indices, errors) record at the entries tagged `bit`. Returns the carried indices.");
  mod.def("adopt_tags", &adopt_tags, py::arg("mine"), py::arg("tags"), py::arg("kept"), py::arg("flags"),
          "uint32 tags over kept: where flags, the tag of the same index in mine (both ascending), else 0.");
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
