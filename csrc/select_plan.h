// The selection's numeric plan: sample layout, threshold rank, candidate cap and
// histogram walk. Pure integer/float arithmetic, shared by the C++ and CUDA
// selections (GTOPK_HD) and exposed to Python so tests can check it on the CPU.
#pragma once
#include <cmath>
#include <cstddef>
#include <cstdint>

#include "keys.h"

namespace gtopk {

constexpr size_t kSampleBlocks = 1024;   // blocks spread evenly over the input
constexpr size_t kSampleBlockLen = 64;   // contiguous elements per block
constexpr size_t kSampleSize = kSampleBlocks * kSampleBlockLen;
constexpr int kHistBits = 11;            // histogram fallback: top 11 key bits
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

}  // namespace gtopk
