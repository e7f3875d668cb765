// Numeric semantics shared by every kernel: the CPU path (csrc/*.h), the CUDA kernels
// (csrc/cuda) and their CPU emulator (csrc/emu). One place states:
//
//   * DType: the value and index types, numbered as the wire format and Python see them
//     (exported as gtopk_mpi._C.DType);
//   * Num<T>: the bit layout of each value type (float16, bfloat16, float32, float64) and
//     its addition: 16-bit types add in float32 and round once to nearest even, as NumPy
//     and the GPU do;
//   * magnitude keys: an order-preserving unsigned view of |x| (sign cleared) with every
//     NaN folded onto one key just above +inf, so NaN ranks above every number (as
//     torch.topk does) and all NaNs tie; ties go to the lower index elsewhere;
//   * merge_sum: the merge's addition, commutative bit for bit (a NaN result becomes the
//     positive quiet NaN), so merge(a, b) and merge(b, a) agree.
//
// Under nvcc the 16-bit types are CUDA's __half and __nv_bfloat16; in host builds they are
// _Float16 (GCC >= 12, clang >= 15) and bf16_t (storage only, arithmetic in float32).
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#define GTOPK_HD __host__ __device__ __forceinline__
#else
#define GTOPK_HD inline
#endif

namespace gtopk {

enum class DType : uint8_t { kFloat16 = 1, kFloat32 = 2, kFloat64 = 3, kInt32 = 4, kInt64 = 5, kBFloat16 = 6 };

#if !defined(__CUDACC__)
using half_t = _Float16;
struct bf16_t {
  uint16_t bits;
};
#endif

template <class U, class T>
GTOPK_HD U bits_of(T v) {
  U u;
  memcpy(&u, &v, sizeof u);
  return u;
}

template <class T, class U>
GTOPK_HD T of_bits(U u) {
  T v;
  memcpy(&v, &u, sizeof v);
  return v;
}

template <class T>
struct Num;

template <>
struct Num<float> {
  using U = uint32_t;
  static constexpr int kBits = 31;  // bits of a magnitude key
  static constexpr U kInf = 0x7f800000u, kQuietNaN = 0x7fc00000u;
  GTOPK_HD static U bits(float v) { return bits_of<U>(v); }
  GTOPK_HD static float from_bits(U u) { return of_bits<float>(u); }
  GTOPK_HD static float add(float a, float b) { return a + b; }
};

template <>
struct Num<double> {
  using U = uint64_t;
  static constexpr int kBits = 63;
  static constexpr U kInf = 0x7ff0000000000000ull, kQuietNaN = 0x7ff8000000000000ull;
  GTOPK_HD static U bits(double v) { return bits_of<U>(v); }
  GTOPK_HD static double from_bits(U u) { return of_bits<double>(u); }
  GTOPK_HD static double add(double a, double b) { return a + b; }
};

#if defined(__CUDACC__)
template <>
struct Num<__half> {
  using U = uint16_t;
  static constexpr int kBits = 15;
  static constexpr U kInf = 0x7c00u, kQuietNaN = 0x7e00u;
  __device__ __forceinline__ static U bits(__half v) { return __half_as_ushort(v); }
  __device__ __forceinline__ static __half from_bits(U u) { return __ushort_as_half(u); }
  __device__ __forceinline__ static __half add(__half a, __half b) {
    return __float2half_rn(__half2float(a) + __half2float(b));
  }
};

template <>
struct Num<__nv_bfloat16> {
  using U = uint16_t;
  static constexpr int kBits = 15;
  static constexpr U kInf = 0x7f80u, kQuietNaN = 0x7fc0u;
  __device__ __forceinline__ static U bits(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }
  __device__ __forceinline__ static __nv_bfloat16 from_bits(U u) { return __ushort_as_bfloat16(u); }
  __device__ __forceinline__ static __nv_bfloat16 add(__nv_bfloat16 a, __nv_bfloat16 b) {
    return __float2bfloat16_rn(__bfloat162float(a) + __bfloat162float(b));
  }
};
#else
template <>
struct Num<half_t> {
  using U = uint16_t;
  static constexpr int kBits = 15;
  static constexpr U kInf = 0x7c00u, kQuietNaN = 0x7e00u;
  static U bits(half_t v) { return bits_of<U>(v); }
  static half_t from_bits(U u) { return of_bits<half_t>(u); }
  static half_t add(half_t a, half_t b) { return static_cast<half_t>(static_cast<float>(a) + static_cast<float>(b)); }
};

template <>
struct Num<bf16_t> {
  using U = uint16_t;
  static constexpr int kBits = 15;
  static constexpr U kInf = 0x7f80u, kQuietNaN = 0x7fc0u;
  static U bits(bf16_t v) { return v.bits; }
  static bf16_t from_bits(U u) { return bf16_t{u}; }
  static float to_float(bf16_t v) { return Num<float>::from_bits(static_cast<uint32_t>(v.bits) << 16); }
  static bf16_t from_float(float f) {  // round to nearest even, as __float2bfloat16_rn
    const uint32_t u = Num<float>::bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{0x7fffu};  // NaN, as CUDA's conversion returns
    return bf16_t{static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16)};
  }
  static bf16_t add(bf16_t a, bf16_t b) { return from_float(to_float(a) + to_float(b)); }
};
#endif

// The unsigned integer type of T's magnitude keys.
template <class T>
using key_of = typename Num<T>::U;

// Key of NaN: just above +inf, the same for every NaN payload.
template <class T>
GTOPK_HD constexpr key_of<T> nan_key() {
  return static_cast<key_of<T>>(Num<T>::kInf + 1);
}

// |x| as an integer, NaN payloads not yet folded (every NaN is >= nan_key()), so a
// comparison `raw_key(x) >= t` is exact for any t <= nan_key().
template <class T>
GTOPK_HD key_of<T> raw_key(T x) {
  return static_cast<key_of<T>>(Num<T>::bits(x) & ((key_of<T>{1} << Num<T>::kBits) - 1));
}

// A raw key with every NaN folded onto nan_key(): a total order on magnitudes.
template <class T>
GTOPK_HD key_of<T> canon_key(key_of<T> raw) {
  return raw > Num<T>::kInf ? nan_key<T>() : raw;
}

template <class T>
GTOPK_HD key_of<T> mag_key(T x) {
  return canon_key<T>(raw_key<T>(x));
}

// The merge's sum: a + b, a NaN result folded onto the positive quiet NaN.
template <class T>
GTOPK_HD T merge_sum(T a, T b) {
  const T s = Num<T>::add(a, b);
  return raw_key<T>(s) > Num<T>::kInf ? Num<T>::from_bits(Num<T>::kQuietNaN) : s;
}

}  // namespace gtopk
