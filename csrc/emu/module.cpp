// gtopk_mpi._cuda_emu: the CUDA path's code (csrc/cuda/topk_kernels.h: kernels and the
// host sequence of launches) run on the CPU by the SIMT emulator, for tests on machines
// without a GPU. Same entry points and semantics as gtopk_mpi.cuda, on NumPy arrays:
// float32, float16, or bfloat16 passed as its uint16 bit patterns (bf16=True).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstring>
#include <deque>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "../cuda/topk_kernels.h"
#include "simt_emu.h"

namespace py = pybind11;
using gtopk_cuda::u64;

namespace {

// The Backend of topk_kernels.h on host memory: every launch runs to completion.
class EmuBackend {
 public:
  explicit EmuBackend(uint64_t seed) : seed_(seed) {}
  template <class X>
  X* alloc(size_t n) {
    const size_t bytes = std::max<size_t>(1, n * sizeof(X));  // exact: an overrun is caught by valgrind
    buffers_.emplace_back(new char[bytes]);
    std::memset(buffers_.back().get(), 0x5a, bytes);  // garbage, as cudaMalloc's
    return reinterpret_cast<X*>(buffers_.back().get());
  }
  void zero(void* p, size_t bytes) { std::memset(p, 0, bytes); }
  void to_host(void* dst, const void* src, size_t bytes) { std::memcpy(dst, src, bytes); }
  template <class K, class... A>
  void launch(unsigned grid, unsigned block, A... args) {
    if (block > K::kMaxThreads) throw std::logic_error("launch with more threads than the kernel's launch bound");
    ++launches_;
    simt_emu::launch(grid, block, [&] { K::run(args...); }, seed_ + launches_);
  }
  size_t launches() const { return launches_; }

 private:
  uint64_t seed_;
  size_t launches_ = 0;
  std::vector<std::unique_ptr<char[]>> buffers_;
};

size_t g_last_launches = 0;  // kernels the last select_topk / merge_topk launched

using gtopk::DType;

DType kind_of(const py::array& a, bool bf16, const char* name) {
  if (bf16) {
    if (!py::isinstance<py::array_t<uint16_t>>(a) || a.dtype().kind() != 'u' || a.itemsize() != 2)
      throw py::value_error(std::string(name) + ": bfloat16 values travel as uint16 bit patterns");
    return DType::kBFloat16;
  }
  if (a.dtype().is(py::dtype::of<float>())) return DType::kFloat32;
  if (a.dtype().kind() == 'f' && a.itemsize() == 2) return DType::kFloat16;
  throw py::value_error(std::string(name) + ": dtype must be float32 or float16 (or uint16 with bf16=True)");
}

std::vector<py::ssize_t> shape1(u64 n) { return {static_cast<py::ssize_t>(n)}; }

void check_1d(const py::array& a, const char* name) {
  if (a.ndim() != 1) throw py::value_error(std::string(name) + " must be 1-D");
  if (!(a.flags() & py::array::c_style)) throw py::value_error(std::string(name) + " must be contiguous");
}

template <class F>
auto with_type(DType kind, F&& f) {
  switch (kind) {
    case DType::kFloat32: return f(float{});
    case DType::kFloat16: return f(gtopk::half_t{});
    default: return f(gtopk::bf16_t{});
  }
}

py::tuple select_topk(py::array x, int64_t k, py::object residual, bool bf16, bool idx64, uint64_t seed,
                      int64_t one_block_max) {
  check_1d(x, "x");
  const DType kind = kind_of(x, bf16, "x");
  if (k < 1) throw py::value_error("k must be >= 1, got " + std::to_string(k));
  py::array r;
  const bool has_r = !residual.is_none();
  if (has_r) {
    r = residual.cast<py::array>();
    check_1d(r, "residual");
    if (!r.dtype().is(x.dtype()) || r.size() != x.size() || !r.writeable())
      throw py::value_error("residual must be a writable array matching x");
  }
  const u64 m = static_cast<u64>(x.size()), n = std::min<u64>(m, static_cast<u64>(k));
  py::array out_idx = idx64 ? py::array(py::dtype::of<int64_t>(), shape1(n)) : py::array(py::dtype::of<int32_t>(), shape1(n));
  py::array out_val(x.dtype(), shape1(n));
  with_type(kind, [&](auto tag) {
    using T = decltype(tag);
    const T* xp = static_cast<const T*>(x.data());
    T* rp = has_r ? static_cast<T*>(r.mutable_data()) : nullptr;
    T* ov = static_cast<T*>(out_val.mutable_data());
    EmuBackend be(seed);
    const u64 limit = one_block_max < 0 ? gtopk_cuda::kOneBlockMax : static_cast<u64>(one_block_max);
    if (idx64) {
      gtopk_cuda::select_topk<EmuBackend, T, int64_t>(be, xp, rp, m, static_cast<u64>(k),
                                                       static_cast<int64_t*>(out_idx.mutable_data()), ov, limit);
    } else {
      gtopk_cuda::select_topk<EmuBackend, T, int32_t>(be, xp, rp, m, static_cast<u64>(k),
                                                       static_cast<int32_t*>(out_idx.mutable_data()), ov, limit);
    }
    g_last_launches = be.launches();
    return 0;
  });
  return py::make_tuple(out_idx, out_val);
}

py::tuple merge_topk(py::array_t<int32_t, py::array::c_style> ia, py::array va, py::array_t<int32_t, py::array::c_style> ib,
                     py::array vb, int64_t k, bool bf16, uint64_t seed) {
  check_1d(va, "val_a");
  check_1d(vb, "val_b");
  const DType kind = kind_of(va, bf16, "val_a");
  if (kind_of(vb, bf16, "val_b") != kind) throw py::value_error("val_a and val_b differ in dtype");
  if (ia.size() != va.size() || ib.size() != vb.size()) throw py::value_error("indices and values differ in length");
  if (k < 1) throw py::value_error("k must be >= 1, got " + std::to_string(k));
  const u64 na = static_cast<u64>(ia.size()), nb = static_cast<u64>(ib.size());
  const u64 cap = std::min<u64>(static_cast<u64>(k), na + nb);
  py::array_t<int32_t> out_idx(shape1(cap));
  py::array out_val(va.dtype(), shape1(cap));
  const u64 n = with_type(kind, [&](auto tag) {
    using T = decltype(tag);
    EmuBackend be(seed);
    const u64 written = gtopk_cuda::merge_topk<EmuBackend, T, int32_t>(
        be, ia.data(), static_cast<const T*>(va.data()), na, ib.data(), static_cast<const T*>(vb.data()), nb,
        static_cast<u64>(k), out_idx.mutable_data(), static_cast<T*>(out_val.mutable_data()));
    g_last_launches = be.launches();
    return written;
  });
  return py::make_tuple(out_idx[py::slice(0, n, 1)], out_val[py::slice(0, n, 1)]);
}

void scatter(py::array_t<int32_t, py::array::c_style> idx, py::array val, py::array dense, bool bf16) {
  check_1d(val, "val");
  check_1d(dense, "dense");
  const DType kind = kind_of(val, bf16, "val");
  if (!dense.dtype().is(val.dtype()) || !dense.writeable()) throw py::value_error("dense must be writable, like val");
  with_type(kind, [&](auto tag) {
    using T = decltype(tag);
    EmuBackend be(1);
    gtopk_cuda::scatter<EmuBackend, T, int32_t>(be, idx.data(), static_cast<const T*>(val.data()),
                                                 static_cast<u64>(idx.size()), static_cast<T*>(dense.mutable_data()));
    return 0;
  });
}

void zero_at(py::array_t<int32_t, py::array::c_style> idx, py::array residual, bool bf16) {
  check_1d(residual, "residual");
  const DType kind = kind_of(residual, bf16, "residual");
  with_type(kind, [&](auto tag) {
    using T = decltype(tag);
    EmuBackend be(1);
    gtopk_cuda::zero_at<EmuBackend, T, int32_t>(be, idx.data(), static_cast<u64>(idx.size()),
                                                 static_cast<T*>(residual.mutable_data()));
    return 0;
  });
}

// A kernel that breaks the rules, to show the emulator reports it instead of hanging.
void divergent_barrier() {
  simt_emu::launch(1, 64, [] {
    if (simt::thread_idx() < 32) simt::sync();
  });
}

}  // namespace

PYBIND11_MODULE(_cuda_emu, mod) {
  mod.doc() = "The CUDA kernels of gtopk_mpi run by a CPU SIMT emulator (tests without a GPU)";
  mod.def("select_topk", &select_topk, py::arg("x"), py::arg("k"), py::arg("residual") = py::none(),
          py::arg("bf16") = false, py::arg("idx64") = false, py::arg("seed") = 1, py::arg("one_block_max") = -1,
          "gtopk_mpi.cuda.select_topk's code on the emulator (residual updated in place). one_block_max:\n"
          "candidates beyond which the selection finishes on the whole grid (default: the library's).");
  mod.def("merge_topk", &merge_topk, py::arg("idx_a"), py::arg("val_a"), py::arg("idx_b"), py::arg("val_b"),
          py::arg("k"), py::arg("bf16") = false, py::arg("seed") = 1,
          "gtopk_mpi.cuda.merge_topk's code on the emulator (int32 indices).");
  mod.def("scatter", &scatter, py::arg("idx"), py::arg("val"), py::arg("dense"), py::arg("bf16") = false);
  mod.def("zero_at", &zero_at, py::arg("idx"), py::arg("residual"), py::arg("bf16") = false);
  mod.def("divergent_barrier", &divergent_barrier, "Launch a kernel whose barrier half the block skips.");
  mod.def("last_launches", [] { return g_last_launches; },
          "Kernels launched by the last select_topk or merge_topk (which path the selection took).");
  mod.attr("tile") = gtopk_cuda::kTile;
}
