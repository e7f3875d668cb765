// Value types of the CUDA kernels: float, float16 and bfloat16 as bit patterns.
//
// Num<T> gives the magnitude key of a value (the same order-preserving unsigned view as
// keys.h: sign cleared, every NaN folded just above +inf), the addition the selection and
// the merge use (16-bit types add in float32 and round once to nearest even, as the CPU
// path does) and the merge's NaN canonicalisation. Under nvcc T is float, __half or
// __nv_bfloat16; in the host build (the emulator) float, _Float16 and bf16_t below.
#pragma once
#include <cstdint>
#include <cstring>

#include "simt.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace gtopk_cuda {

#if !defined(__CUDACC__)
using half_t = _Float16;
struct bf16_t {  // host bfloat16: storage only, arithmetic in float32
  uint16_t bits;
};
#endif

template <class T>
struct Num;

template <>
struct Num<float> {
  using U = uint32_t;
  static constexpr int kBits = 31;
  static constexpr U kInf = 0x7f800000u, kQuietNaN = 0x7fc00000u;
  GTOPK_DEV static U bits(float v) {
    U u;
    memcpy(&u, &v, sizeof u);
    return u;
  }
  GTOPK_DEV static float from_bits(U u) {
    float v;
    memcpy(&v, &u, sizeof v);
    return v;
  }
  GTOPK_DEV static float add(float a, float b) { return a + b; }
};

#if defined(__CUDACC__)
template <>
struct Num<__half> {
  using U = uint16_t;
  static constexpr int kBits = 15;
  static constexpr U kInf = 0x7c00u, kQuietNaN = 0x7e00u;
  GTOPK_DEV static U bits(__half v) { return __half_as_ushort(v); }
  GTOPK_DEV static __half from_bits(U u) { return __ushort_as_half(u); }
  GTOPK_DEV static __half add(__half a, __half b) { return __float2half_rn(__half2float(a) + __half2float(b)); }
};
template <>
struct Num<__nv_bfloat16> {
  using U = uint16_t;
  static constexpr int kBits = 15;
  static constexpr U kInf = 0x7f80u, kQuietNaN = 0x7fc0u;
  GTOPK_DEV static U bits(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }
  GTOPK_DEV static __nv_bfloat16 from_bits(U u) { return __ushort_as_bfloat16(u); }
  GTOPK_DEV static __nv_bfloat16 add(__nv_bfloat16 a, __nv_bfloat16 b) {
    return __float2bfloat16_rn(__bfloat162float(a) + __bfloat162float(b));
  }
};
#else
template <>
struct Num<half_t> {
  using U = uint16_t;
  static constexpr int kBits = 15;
  static constexpr U kInf = 0x7c00u, kQuietNaN = 0x7e00u;
  static U bits(half_t v) {
    U u;
    memcpy(&u, &v, sizeof u);
    return u;
  }
  static half_t from_bits(U u) {
    half_t v;
    memcpy(&v, &u, sizeof v);
    return v;
  }
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

template <class T>
using key_of = typename Num<T>::U;

// Magnitude key: |x| as an unsigned integer, every NaN folded onto kInf + 1.
template <class T>
GTOPK_DEV key_of<T> raw_key(T v) {
  return static_cast<key_of<T>>(Num<T>::bits(v) & ((key_of<T>{1} << Num<T>::kBits) - 1));
}
template <class T>
GTOPK_DEV key_of<T> mag_key(T v) {
  const key_of<T> r = raw_key<T>(v);
  return r > Num<T>::kInf ? static_cast<key_of<T>>(Num<T>::kInf + 1) : r;
}

// The merge's sum: a + b with a NaN result folded onto the positive quiet NaN, so that
// merge(a, b) and merge(b, a) agree bit for bit (and with keys.h's merge_sum).
template <class T>
GTOPK_DEV T merge_sum(T a, T b) {
  const T s = Num<T>::add(a, b);
  return raw_key<T>(s) > Num<T>::kInf ? Num<T>::from_bits(Num<T>::kQuietNaN) : s;
}

}  // namespace gtopk_cuda
