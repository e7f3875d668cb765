// Magnitude keys: an order-preserving unsigned integer view of |x|.
//
// For IEEE floats, clearing the sign bit leaves an unsigned integer that orders
// like |x| for every non-NaN value. Every NaN is mapped to one key just above
// +inf (kNaN), so NaN orders above every number (as torch.topk does) and all
// NaNs tie with each other; ties are broken by the lower index elsewhere.
//
// The header is plain C++ with GTOPK_HD on every function so the CUDA sources can
// share it (it expands to __host__ __device__ under nvcc).
#pragma once
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define GTOPK_HD __host__ __device__ __forceinline__
#else
#define GTOPK_HD inline
#endif

namespace gtopk {

#if !defined(__CUDACC__)
// float16 storage type on the host (GCC >= 12 and clang >= 15 on x86-64/aarch64).
// CUDA sources use their own 16-bit types (see csrc/cuda/kernels.cu).
using half_t = _Float16;
#endif

template <class T>
struct KeyTraits;

template <>
struct KeyTraits<float> {
  using U = uint32_t;
  static constexpr U kMask = 0x7fffffffu;
  static constexpr U kInf = 0x7f800000u;
  static constexpr int kBits = 31;  // significant bits of a key
};

template <>
struct KeyTraits<double> {
  using U = uint64_t;
  static constexpr U kMask = 0x7fffffffffffffffull;
  static constexpr U kInf = 0x7ff0000000000000ull;
  static constexpr int kBits = 63;
};

#if !defined(__CUDACC__)
template <>
struct KeyTraits<half_t> {
  using U = uint16_t;
  static constexpr U kMask = 0x7fffu;
  static constexpr U kInf = 0x7c00u;
  static constexpr int kBits = 15;
};
#endif

template <class T>
using key_t = typename KeyTraits<T>::U;

// Key of NaN: above +inf, the same for every NaN payload.
template <class T>
GTOPK_HD constexpr key_t<T> nan_key() {
  return static_cast<key_t<T>>(KeyTraits<T>::kInf + 1);
}

// |x| as an integer, NaN payloads not yet folded (every NaN is >= nan_key()).
// Comparisons `raw_key(x) >= t` are exact for any t <= nan_key().
template <class T>
GTOPK_HD key_t<T> raw_key(T x) {
  key_t<T> u;
  std::memcpy(&u, &x, sizeof(T));
  return static_cast<key_t<T>>(u & KeyTraits<T>::kMask);
}

// Raw key with every NaN folded onto nan_key(): a total order on magnitudes.
template <class T>
GTOPK_HD key_t<T> canon_key(key_t<T> raw) {
  return raw > KeyTraits<T>::kInf ? nan_key<T>() : raw;
}

template <class T>
GTOPK_HD key_t<T> mag_key(T x) {
  return canon_key<T>(raw_key<T>(x));
}

// a + b rounded once to T. float16 adds in float32 and rounds once, as NumPy does.
template <class T>
GTOPK_HD T add_values(T a, T b) {
  return a + b;
}
#if !defined(__CUDACC__)
template <>
GTOPK_HD half_t add_values<half_t>(half_t a, half_t b) {
  return static_cast<half_t>(static_cast<float>(a) + static_cast<float>(b));
}
#endif

// Sum used by the merge: commutative bit for bit. IEEE addition already is,
// except for the payload chosen when both operands are NaN; fold NaN to one value.
template <class T>
GTOPK_HD T merge_sum(T a, T b) {
  T s = add_values<T>(a, b);
  if (raw_key<T>(s) > KeyTraits<T>::kInf) {
    // canonical quiet NaN: exponent all ones, top mantissa bit set, sign clear
    const key_t<T> mantissa = static_cast<key_t<T>>(KeyTraits<T>::kMask ^ KeyTraits<T>::kInf);
    const key_t<T> q = static_cast<key_t<T>>(KeyTraits<T>::kInf | ((mantissa + 1) >> 1));
    std::memcpy(&s, &q, sizeof(T));
  }
  return s;
}

}  // namespace gtopk
