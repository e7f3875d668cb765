// The selection's numeric plan: sample layout, threshold rank, candidate cap and
// histogram walk. Pure integer/float arithmetic, shared by the C++ and CUDA
// selections (GTOPK_HD) and exposed to Python so tests can check it on the CPU.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "numeric.h"

namespace gtopk {

constexpr size_t kSampleBlocks = 1024;   // blocks spread evenly over the input
constexpr size_t kSampleBlockLen = 64;   // contiguous elements per block
constexpr size_t kSampleSize = kSampleBlocks * kSampleBlockLen;
constexpr int kRadixBits = 11;           // digit width of the radix selects
constexpr size_t kDirectMax = size_t{1} << 12;  // no sample: rank every element up to this length

struct SamplePlan {
  bool use_sample;  // false: go straight to the histogram threshold
  size_t rank;      // threshold = rank-th largest sampled key (1-based)
  size_t cap;       // candidates above which the estimate is abandoned
};

// First element of sample block b (blocks spread over [0, m), the last ends at m).
GTOPK_HD size_t sample_block_start(size_t m, size_t b) {
  return static_cast<size_t>((static_cast<unsigned __int128>(m - kSampleBlockLen) * b) / (kSampleBlocks - 1));
}

// Expected sampled keys above the true k-th key: mu = S k / m. Taking the
// (2 mu + 4 sqrt(mu) + 16)-th sampled key leaves >= k elements above the
// threshold unless the sample is off by more than 4 standard deviations (and
// then the histogram fallback keeps the result exact, only slower).
GTOPK_HD SamplePlan plan_sample(size_t m, size_t k) {
  SamplePlan p{false, 0, 0};
  if (m < 16 * kSampleSize || k >= m) return p;
  const double mu = static_cast<double>(kSampleSize) * static_cast<double>(k) / static_cast<double>(m);
  const double r = std::ceil(2.0 * mu + 4.0 * std::sqrt(mu) + 16.0);
  if (r > static_cast<double>(kSampleSize / 8)) return p;  // dense: sampling saves nothing
  p.use_sample = true;
  p.rank = static_cast<size_t>(r);
  const double expected = static_cast<double>(m) * r / static_cast<double>(kSampleSize);
  p.cap = static_cast<size_t>(2.0 * expected) + k + 1024;
  return p;
}

// Highest bucket b such that the buckets >= b hold at least k elements
// (buckets above b hold fewer than k); *above, if given, receives how many they hold.
// Requires sum(hist) >= k.
template <class C>
GTOPK_HD size_t histogram_bucket(const C* hist, size_t nbuckets, size_t k, size_t* above = nullptr) {
  size_t acc = 0;
  for (size_t b = nbuckets; b-- > 0;) {
    if (acc + hist[b] >= k) {
      if (above != nullptr) *above = acc;
      return b;
    }
    acc += hist[b];
  }
  if (above != nullptr) *above = acc;
  return 0;
}

// ---- radix select of the k-th largest key, most significant digit first ----------------
// Shared by the CPU (radix.h) and the GPU (csrc/cuda/topk_kernels.h): each pass histograms
// one digit of the keys that share the prefix fixed so far, then radix_pick fixes that digit.

// Digit d (0 = most significant) of keys with `bits` significant bits: the key bits
// [shift, shift + width), width <= kRadixBits; `last` for the digit ending at bit 0.
struct RadixDigit {
  int shift;
  unsigned mask;  // (1 << width) - 1
  bool last;
};

GTOPK_HD RadixDigit radix_digit(int bits, int d) {
  const int top = bits - kRadixBits * (d + 1);
  const int width = top < 0 ? kRadixBits + top : kRadixBits;
  return RadixDigit{top < 0 ? 0 : top, (1u << width) - 1u, top <= 0};
}

// The answer of a radix select: the k-th largest key, and how many keys equal to it
// belong to the top k (the rest of the top k is strictly larger); what the tie rule
// "equal keys to the lower index" needs.
template <class U>
struct KthKey {
  U key;
  uint64_t ties;  // >= 1
};

// The select so far: keys matching `prefix` under `mask` are in play; the answer is the
// want-th largest of them (after the last digit: how many keys equal to it are in the top k).
template <class U>
struct RadixState {
  U prefix, mask;
  uint64_t want;
  GTOPK_HD KthKey<U> kth() const { return KthKey<U>{prefix, want}; }
};

// Fix digit dg from the histogram of its values over the keys in play.
template <class U, class C>
GTOPK_HD void radix_pick(const C* hist, RadixDigit dg, RadixState<U>& st) {
  size_t above = 0;
  const size_t b = histogram_bucket(hist, size_t{dg.mask} + 1, static_cast<size_t>(st.want), &above);
  st.want -= above;
  st.prefix = static_cast<U>(st.prefix | (static_cast<U>(b) << dg.shift));
  st.mask = static_cast<U>(st.mask | (static_cast<U>(dg.mask) << dg.shift));
}

}  // namespace gtopk
