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

#include "numeric.h"
#include "select_plan.h"

namespace gtopk {

// keys: n canonical keys (< 2^kBits), 1 <= k <= n.
template <class T>
KthKey<key_of<T>> kth_largest_key(const key_of<T>* keys, size_t n, size_t k) {
  using U = key_of<T>;
  RadixState<U> st{0, 0, k};
  std::vector<uint32_t> hist(size_t{1} << kRadixBits);
  for (int d = 0;; ++d) {
    const RadixDigit dg = radix_digit(Num<T>::kBits, d);
    std::fill(hist.begin(), hist.end(), 0u);
    for (size_t j = 0; j < n; ++j) {
      const U key = keys[j];
      if ((key & st.mask) == st.prefix) ++hist[(key >> dg.shift) & dg.mask];
    }
    radix_pick(hist.data(), dg, st);
    if (dg.last) return st.kth();
  }
}

}  // namespace gtopk
