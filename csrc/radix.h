// Exact k-th largest magnitude key by radix select (most significant digit first).
//
// Each pass histograms one 11-bit digit of the keys that share the prefix found
// so far, then fixes that digit: ceil(kBits / 11) passes over the keys, no
// sorting, no data movement. Also reports how many keys equal to the k-th one
// belong to the top k (the rest of the top k is strictly larger), which is what
// the tie rule "equal keys to the lower index" needs.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "keys.h"
#include "select_plan.h"

namespace gtopk {

constexpr int kRadixBits = 11;

template <class U>
struct KthKey {
  U key;         // the k-th largest key
  size_t ties;   // how many keys == key are inside the top k (>= 1)
};

// keys: n canonical keys (< 2^kBits), 1 <= k <= n.
template <class T>
KthKey<key_t<T>> kth_largest_key(const key_t<T>* keys, size_t n, size_t k) {
  using U = key_t<T>;
  U prefix = 0, prefix_mask = 0;
  size_t want = k;  // rank of the answer among keys matching the prefix
  std::vector<uint32_t> hist(size_t{1} << kRadixBits);
  for (int shift = KeyTraits<T>::kBits - kRadixBits;; shift -= kRadixBits) {
    const int s = shift < 0 ? 0 : shift;
    const int width = shift < 0 ? kRadixBits + shift : kRadixBits;
    const U digit_mask = static_cast<U>((U{1} << width) - 1);
    std::fill(hist.begin(), hist.end(), 0u);
    for (size_t j = 0; j < n; ++j) {
      const U key = keys[j];
      if ((key & prefix_mask) == prefix) ++hist[(key >> s) & digit_mask];
    }
    size_t above = 0;
    const size_t b = histogram_bucket(hist.data(), size_t{digit_mask} + 1, want, &above);
    want -= above;
    prefix = static_cast<U>(prefix | (static_cast<U>(b) << s));
    prefix_mask = static_cast<U>(prefix_mask | (static_cast<U>(digit_mask) << s));
    if (s == 0) return {prefix, want};
  }
}

}  // namespace gtopk
