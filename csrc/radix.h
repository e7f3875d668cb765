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
#include <algorithm>

#include "numeric.h"
#include "select_plan.h"

namespace gtopk {

// Continue a radix select from state st at digit `first` over the keys still in play
// (keys not matching st's prefix are skipped); returns the k-th key and its ties.
template <class T>
KthKey<key_of<T>> kth_largest_key_from(const key_of<T>* keys, size_t n, RadixState<key_of<T>> st, int first) {
  using U = key_of<T>;
  uint32_t hist[size_t{1} << kRadixBits];
  for (int d = first;; ++d) {
    const RadixDigit dg = radix_digit(Num<T>::kBits, d);
    std::fill(hist, hist + (size_t{1} << kRadixBits), 0u);
    for (size_t j = 0; j < n; ++j) {
      const U key = keys[j];
      if ((key & st.mask) == st.prefix) ++hist[(key >> dg.shift) & dg.mask];
    }
    radix_pick(hist, dg, st);
    if (dg.last) return st.kth();
  }
}

// keys: n canonical keys (< 2^kBits), 1 <= k <= n.
template <class T>
KthKey<key_of<T>> kth_largest_key(const key_of<T>* keys, size_t n, size_t k) {
  return kth_largest_key_from<T>(keys, n, RadixState<key_of<T>>{0, 0, k}, 0);
}

}  // namespace gtopk
