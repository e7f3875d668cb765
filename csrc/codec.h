// Wire codecs of the sparse messages: compact indices and 16-bit values.
//
// Indices (strictly ascending, int32 or int64) travel as gaps g0 = i0, gj = ij - i(j-1) - 1
// (so a gap is >= 0), in blocks of 32: one byte w (the bit width of the block's largest
// gap, 0..64), then the block's gaps in w bits each, least significant bit first, the block
// padded to a whole byte. A sorted k-subset of m indices costs about log2(m/k) + 2 bits per
// entry this way (ResNet-50 at density 0.001: ~12 bits), against 32 raw; one outlier gap
// widens only its own block.
//
// Values: bfloat16 (float32's range, 8 significant bits, round to nearest even) or float16
// after scaling by a power of two 2^s chosen per message so that the largest magnitude
// lands near float16's top (no underflow of small gradients; the scaling itself is exact).
// Decoding gives float32. NaN stays NaN (canonical quiet), infinities stay infinite.
//
// A payload (what follows a message's header) is the indices (raw, or packed gaps) then the
// values (raw in their dtype, or 16-bit per ValueCode); encode_payload / decode_payload below
// are the whole value side of the wire, exported to Python once (_C.ValueCode, _C.encode_entries).
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "numeric.h"

namespace gtopk {

constexpr size_t kGapBlock = 32;

inline unsigned bit_width(uint64_t v) { return v == 0 ? 0u : 64u - static_cast<unsigned>(__builtin_clzll(v)); }

// An upper bound of encode_indices' output for n indices.
inline size_t max_packed_bytes(size_t n) { return n * 8 + (n + kGapBlock - 1) / kGapBlock; }

// Writes the packed gaps of n strictly ascending, non-negative indices to out (at most
// max_packed_bytes(n) bytes); returns the bytes written.
template <class I>
size_t encode_indices(const I* idx, size_t n, uint8_t* out) {
  uint8_t* o = out;
  uint64_t prev = ~uint64_t{0};  // so that g0 = i0
  uint64_t gaps[kGapBlock];
  bool bad = false;
  for (size_t b = 0; b < n; b += kGapBlock) {
    const size_t len = n - b < kGapBlock ? n - b : kGapBlock;
    uint64_t all = 0;
    for (size_t j = 0; j < len; ++j) {
      const I i = idx[b + j];
      const uint64_t cur = static_cast<uint64_t>(i);
      bad |= i < 0 || (b + j > 0 && cur <= prev);
      gaps[j] = cur - prev - 1;
      all |= gaps[j];
      prev = cur;
    }
    const unsigned w = bit_width(all);
    *o++ = static_cast<uint8_t>(w);
    if (w <= 32) {  // 64-bit accumulator, 32 bits out at a time
      uint64_t acc = 0;
      unsigned have = 0;
      for (size_t j = 0; j < len; ++j) {
        acc |= gaps[j] << have;
        have += w;
        if (have >= 32) {
          const uint32_t word = static_cast<uint32_t>(acc);
          std::memcpy(o, &word, 4);
          o += 4;
          acc >>= 32;
          have -= 32;
        }
      }
      for (; have > 0; have = have > 8 ? have - 8 : 0, acc >>= 8) *o++ = static_cast<uint8_t>(acc);
    } else {  // wide gaps (int64 indices): a 128-bit accumulator
      unsigned __int128 acc = 0;
      unsigned have = 0;
      for (size_t j = 0; j < len; ++j) {
        acc |= static_cast<unsigned __int128>(gaps[j]) << have;
        have += w;
        while (have >= 64) {
          const uint64_t word = static_cast<uint64_t>(acc);
          std::memcpy(o, &word, 8);
          o += 8;
          acc >>= 64;
          have -= 64;
        }
      }
      for (; have > 0; have = have > 8 ? have - 8 : 0, acc >>= 8) *o++ = static_cast<uint8_t>(acc);
    }
  }
  if (bad) throw std::invalid_argument("indices must be non-negative and strictly ascending");
  return static_cast<size_t>(o - out);
}

// Reads n indices from nbytes of packed gaps. Throws on a truncated or malformed buffer
// or an index that does not fit I or is >= limit.
template <class I>
void decode_indices(const uint8_t* in, size_t nbytes, size_t n, uint64_t limit, I* idx) {
  const uint8_t* p = in;
  const uint8_t* end = in + nbytes;
  uint64_t prev = ~uint64_t{0};
  uint8_t block[kGapBlock * 8 + 16];  // one block, padded so that 8-byte reads stay inside
  for (size_t b = 0; b < n; b += kGapBlock) {
    const size_t len = n - b < kGapBlock ? n - b : kGapBlock;
    if (p >= end) throw std::invalid_argument("packed indices: buffer too short");
    const unsigned w = *p++;
    if (w > 64) throw std::invalid_argument("packed indices: bad block width");
    const size_t block_bytes = (len * w + 7) / 8;
    if (static_cast<size_t>(end - p) < block_bytes) throw std::invalid_argument("packed indices: buffer too short");
    std::memcpy(block, p, block_bytes);
    std::memset(block + block_bytes, 0, 16);
    const uint64_t mask = w == 64 ? ~uint64_t{0} : (uint64_t{1} << w) - 1;
    uint64_t cur = prev;
    bool bad = false;
    for (size_t j = 0, bit = 0; j < len; ++j, bit += w) {
      uint64_t word;
      std::memcpy(&word, block + bit / 8, 8);
      uint64_t gap = (word >> (bit % 8)) & mask;
      if (w + bit % 8 > 64) {  // widths above 57 bits: the gap spills into a ninth byte
        gap |= (static_cast<uint64_t>(block[bit / 8 + 8]) << (64 - bit % 8)) & mask;
      }
      const uint64_t next = cur + 1 + gap;
      bad |= next < cur + 1 || next >= limit;
      cur = next;
      idx[b + j] = static_cast<I>(cur);
    }
    if (bad) throw std::invalid_argument("packed indices: index out of range");
    prev = cur;
    p += block_bytes;
  }
  if (p != end) throw std::invalid_argument("packed indices: trailing bytes");
}

// ---- values ---------------------------------------------------------------------------

inline uint16_t to_bf16(float f) {  // round to nearest even; NaN -> canonical quiet NaN
  const uint32_t u = Num<float>::bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return 0x7fc0u;
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

inline float from_bf16(uint16_t b) { return Num<float>::from_bits(static_cast<uint32_t>(b) << 16); }

// The power-of-two scale exponent for float16: the largest finite magnitude times 2^s
// stays below 2^15 (half of float16's range), s in [-24, 40] (0 for an empty or all-zero set).
inline int fp16_scale(const float* v, size_t n) {
  float top = 0.0f;
  for (size_t j = 0; j < n; ++j) {
    const float a = std::fabs(v[j]);
    if (a > top && a <= 3.4028235e38f) top = a;
  }
  if (top == 0.0f) return 0;
  int e = 0;
  std::frexp(top, &e);  // top = f * 2^e, f in [0.5, 1)
  const int s = 15 - e;
  return s < -24 ? -24 : s > 40 ? 40 : s;
}

// v * 2^scale rounded to float16 (nearest even); the multiplication by a power of two is
// exact, so this rounds once.
inline void encode_fp16(const float* v, size_t n, int scale, uint16_t* out) {
  const float up = std::ldexp(1.0f, scale);
  for (size_t j = 0; j < n; ++j) {
    const half_t h = static_cast<half_t>(v[j] * up);
    out[j] = std::isnan(v[j]) ? uint16_t{0x7e00u} : Num<half_t>::bits(h);
  }
}

inline void decode_fp16(const uint16_t* in, size_t n, int scale, float* out) {
  const float down = std::ldexp(1.0f, -scale);
  for (size_t j = 0; j < n; ++j) out[j] = static_cast<float>(Num<half_t>::from_bits(in[j])) * down;
}

// ---- payloads -------------------------------------------------------------------------

// How a message's values travel (the header's value_code). The 16-bit codes take float32 values.
enum class ValueCode : int { kRaw = 0, kBF16 = 1, kFP16 = 2 };

inline size_t wire_value_bytes(ValueCode code, size_t itemsize) { return code == ValueCode::kRaw ? itemsize : 2; }

struct PayloadLayout {
  size_t index_bytes = 0;  // the bytes of the index part
  bool packed = false;     // indices as packed gaps (else raw)
  int scale = 0;           // kFP16: values travel as v * 2^scale
};

// The most bytes encode_payload writes for n entries of an index type of isize bytes.
inline size_t max_payload_bytes(size_t n, size_t isize, size_t vsize) {
  const size_t raw = n * isize, packed = max_packed_bytes(n);
  return (raw > packed ? raw : packed) + n * vsize;
}

// Writes the payload of n entries (idx ascending; val: n values of itemsize bytes, float32 for
// the 16-bit codes) to out (max_payload_bytes); pack: 1 packed, 0 raw, -1 whichever is
// smaller. back and err (n floats each, or null): the float32 values the receiver will decode
// and the rounding errors val - back (0 where not finite: an infinity or NaN travels as
// itself); only for a 16-bit code. Returns the layout; the payload is index_bytes +
// n * wire_value_bytes(code, itemsize) bytes.
template <class I>
PayloadLayout encode_payload(const I* idx, const void* val, size_t n, size_t itemsize, ValueCode code, int pack,
                             uint8_t* out, float* back, float* err) {
  PayloadLayout l;
  const size_t raw_ibytes = n * sizeof(I);
  l.index_bytes = raw_ibytes;
  if (pack != 0) {
    const size_t pb = encode_indices(idx, n, out);
    l.packed = pack == 1 || pb < raw_ibytes;
    if (l.packed) l.index_bytes = pb;
  }
  if (!l.packed) std::memcpy(out, idx, raw_ibytes);
  uint8_t* vo = out + l.index_bytes;
  if (code == ValueCode::kRaw) {
    std::memcpy(vo, val, n * itemsize);
    return l;
  }
  const float* vf = static_cast<const float*>(val);
  std::vector<uint16_t> hv(n);
  if (code == ValueCode::kBF16) {
    for (size_t j = 0; j < n; ++j) hv[j] = to_bf16(vf[j]);
    if (back)
      for (size_t j = 0; j < n; ++j) back[j] = from_bf16(hv[j]);
  } else {
    l.scale = fp16_scale(vf, n);
    encode_fp16(vf, n, l.scale, hv.data());
    if (back) decode_fp16(hv.data(), n, l.scale, back);
  }
  std::memcpy(vo, hv.data(), 2 * n);
  if (back)
    for (size_t j = 0; j < n; ++j) {
      const float e = vf[j] - back[j];
      err[j] = std::isfinite(e) ? e : 0.0f;
    }
  return l;
}

// The inverse, from a payload of `have` bytes holding exactly these n entries plus `tail`
// bytes: idx (n, each < limit), and the values: raw (n * itemsize bytes) for kRaw, else
// float32 vals. Throws std::invalid_argument on a size that does not match the layout or
// malformed packed indices.
template <class I>
void decode_payload(const uint8_t* in, size_t have, size_t n, const PayloadLayout& l, size_t itemsize,
                    ValueCode code, uint64_t limit, size_t tail, I* idx, uint8_t* raw, float* vals) {
  const size_t vsize = wire_value_bytes(code, itemsize);
  if ((!l.packed && l.index_bytes != n * sizeof(I)) || have != l.index_bytes + n * vsize + tail)
    throw std::invalid_argument("message size does not match its header");
  if (l.packed) {
    decode_indices(in, l.index_bytes, n, limit, idx);
  } else {
    std::memcpy(idx, in, l.index_bytes);
  }
  const uint8_t* vi = in + l.index_bytes;
  if (code == ValueCode::kRaw) {
    std::memcpy(raw, vi, n * vsize);
    return;
  }
  std::vector<uint16_t> h(n);
  std::memcpy(h.data(), vi, 2 * n);
  if (code == ValueCode::kBF16) {
    for (size_t j = 0; j < n; ++j) vals[j] = from_bf16(h[j]);
  } else {
    decode_fp16(h.data(), n, l.scale, vals);
  }
}

}  // namespace gtopk
