// Sparse merge of two k-sets, the step every butterfly round runs on both partners.
//
// Inputs: strictly ascending indices with their values. The union is formed with
// values summed at equal indices (merge_sum: commutative bit for bit), then the
// top k of the union by magnitude key, ties to the lower index, indices ascending.
// merge(a, b) and merge(b, a) are therefore bit-identical.
#pragma once
#include <cstddef>
#include <cstdint>
#include <algorithm>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "numeric.h"
#include "radix.h"

namespace gtopk {

template <class I>
void check_ascending(const I* idx, size_t n, const char* name) {
  for (size_t j = 1; j < n; ++j) {
    if (!(idx[j - 1] < idx[j])) {
      throw std::invalid_argument(std::string(name) + " indices must be strictly ascending");
    }
  }
}

// Union with sums. Output vectors are cleared first.
template <class T, class I>
void sparse_union(const I* ia, const T* va, size_t na, const I* ib, const T* vb, size_t nb, std::vector<I>& ui,
                  std::vector<T>& uv) {
  check_ascending<I>(ia, na, "first");
  check_ascending<I>(ib, nb, "second");
  ui.resize(na + nb);
  uv.resize(na + nb);
  // Branch-free two-pointer merge: the order of two random index sets is
  // unpredictable, so select with conditional moves instead of branches.
  size_t p = 0, q = 0, o = 0;
  while (p < na && q < nb) {
    const I a = ia[p], b = ib[q];
    const bool take_a = a <= b, take_b = b <= a;
    const T both = merge_sum<T>(va[p], vb[q]);
    ui[o] = take_a ? a : b;
    uv[o] = take_a ? (take_b ? both : va[p]) : vb[q];
    p += take_a;
    q += take_b;
    ++o;
  }
  ui.resize(o);
  uv.resize(o);
  for (; p < na; ++p) ui.push_back(ia[p]), uv.push_back(va[p]);
  for (; q < nb; ++q) ui.push_back(ib[q]), uv.push_back(vb[q]);
}

// Top-min(k, |union|) of the union. Returns the count written to out_idx/out_val
// (callers size them min(k, na + nb)).
template <class T, class I>
size_t merge_topk(const I* ia, const T* va, size_t na, const I* ib, const T* vb, size_t nb, size_t k, I* out_idx,
                  T* out_val) {
  if (k == 0) throw std::invalid_argument("k must be >= 1");
  // per-thread scratch, reused across calls (no page faults on the hot path)
  thread_local std::vector<I> ui;
  thread_local std::vector<T> uv;
  sparse_union<T, I>(ia, va, na, ib, vb, nb, ui, uv);
  const size_t n = ui.size();
  if (k >= n) {
    for (size_t j = 0; j < n; ++j) out_idx[j] = ui[j], out_val[j] = uv[j];
    return n;
  }
  using U = key_of<T>;
  thread_local std::vector<U> keys;
  keys.resize(n);
  for (size_t j = 0; j < n; ++j) keys[j] = mag_key<T>(uv[j]);
  const KthKey<U> kth_key = kth_largest_key<T>(keys.data(), n, k);
  const U kth = kth_key.key;
  size_t ties = kth_key.ties;
  size_t o = 0;
  for (size_t j = 0; j < n && o < k; ++j) {
    const U key = keys[j];
    if (key > kth || (key == kth && ties > 0)) {
      if (key == kth) --ties;
      out_idx[o] = ui[j];
      out_val[o] = uv[j];
      ++o;
    }
  }
  if (o != k) throw std::logic_error("gtopk: merge produced a wrong count");
  return k;
}

// mask[j] = 1 iff a[j] occurs in b; both strictly ascending.
template <class I>
void isin_sorted(const I* a, size_t na, const I* b, size_t nb, uint8_t* mask) {
  size_t q = 0;
  for (size_t j = 0; j < na; ++j) {
    while (q < nb && b[q] < a[j]) ++q;
    mask[j] = q < nb && b[q] == a[j];
  }
}

}  // namespace gtopk
