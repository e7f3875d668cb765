// Sparse merge of two k-sets, the step every butterfly round runs on both partners.
//
// Inputs: strictly ascending indices with their values and, optionally, 32-bit tags (the
// caller's bookkeeping: which entries hold its own contribution, a folded rank's, or one
// of its rounding errors). The union is formed with values summed at equal indices
// (merge_sum: commutative bit for bit) and tags OR-ed, then the top k of the union by
// magnitude key, ties to the lower index, indices ascending. merge(a, b) and merge(b, a)
// give bit-identical indices and values.
//
// On the critical path of every round, so in few passes over memory that stays in cache:
// (1) the union, computing each entry's key and the histogram of the radix select's top
// digit on the way; (2) the k-th key: the top digit from that histogram, the remaining
// digits by radix select over only the keys in the chosen bucket; (3) one ordered write.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "numeric.h"
#include "radix.h"
#include "select_plan.h"

namespace gtopk {

template <class I>
void check_ascending(const I* idx, size_t n, const char* name) {
  for (size_t j = 1; j < n; ++j) {
    if (!(idx[j - 1] < idx[j])) {
      throw std::invalid_argument(std::string(name) + " indices must be strictly ascending");
    }
  }
}

// Scratch of one thread, reused across calls (no page faults on the hot path).
template <class T, class I>
struct MergeScratch {
  std::vector<I> idx;
  std::vector<T> val;
  std::vector<uint32_t> tag;
  std::vector<key_of<T>> key;
  std::vector<key_of<T>> cand;
};

// Top-min(k, |union|) of the union; returns the count written (callers size the outputs
// min(k, na + nb)). Tags may be null (none on that side; out_tag may be null too).
template <class T, class I>
size_t merge_topk(const I* ia, const T* va, const uint32_t* ta, size_t na, const I* ib, const T* vb,
                  const uint32_t* tb, size_t nb, size_t k, I* out_idx, T* out_val, uint32_t* out_tag) {
  using U = key_of<T>;
  if (k == 0) throw std::invalid_argument("k must be >= 1");
  check_ascending<I>(ia, na, "first");
  check_ascending<I>(ib, nb, "second");
  thread_local MergeScratch<T, I> s;
  const size_t cap = na + nb;
  s.idx.resize(cap);
  s.val.resize(cap);
  s.tag.resize(cap);
  s.key.resize(cap);
  const RadixDigit top = radix_digit(Num<T>::kBits, 0);
  uint32_t hist[size_t{1} << kRadixBits] = {};
  I* ui = s.idx.data();
  T* uv = s.val.data();
  uint32_t* ut = s.tag.data();
  U* uk = s.key.data();
  // (1) union, branch-free: the order of two random index sets is unpredictable
  size_t p = 0, q = 0, o = 0;
  while (p < na && q < nb) {
    const I a = ia[p], b = ib[q];
    const bool take_a = a <= b, take_b = b <= a;
    const T both = merge_sum<T>(va[p], vb[q]);
    const T v = take_a ? (take_b ? both : va[p]) : vb[q];
    const uint32_t tg = (take_a && ta ? ta[p] : 0u) | (take_b && tb ? tb[q] : 0u);
    const U key = mag_key<T>(v);
    ui[o] = take_a ? a : b;
    uv[o] = v;
    ut[o] = tg;
    uk[o] = key;
    ++hist[key >> top.shift];
    p += take_a;
    q += take_b;
    ++o;
  }
  for (; p < na; ++p, ++o) {
    ui[o] = ia[p], uv[o] = va[p], ut[o] = ta ? ta[p] : 0u, uk[o] = mag_key<T>(va[p]);
    ++hist[uk[o] >> top.shift];
  }
  for (; q < nb; ++q, ++o) {
    ui[o] = ib[q], uv[o] = vb[q], ut[o] = tb ? tb[q] : 0u, uk[o] = mag_key<T>(vb[q]);
    ++hist[uk[o] >> top.shift];
  }
  const size_t n = o;
  if (k >= n) {
    std::copy(ui, ui + n, out_idx);
    std::copy(uv, uv + n, out_val);
    if (out_tag) std::copy(ut, ut + n, out_tag);
    return n;
  }
  // (2) the k-th key: top digit from the histogram, the rest over that bucket's keys only
  RadixState<U> st{0, 0, k};
  radix_pick(hist, top, st);
  KthKey<U> kth = st.kth();
  if (!top.last) {
    s.cand.clear();
    for (size_t j = 0; j < n; ++j)
      if ((uk[j] & st.mask) == st.prefix) s.cand.push_back(uk[j]);
    kth = kth_largest_key_from<T>(s.cand.data(), s.cand.size(), st, 1);
  }
  // (3) keys above the k-th, then the lowest-index ties, in index order
  uint64_t ties = kth.ties;
  size_t w = 0;
  for (size_t j = 0; j < n && w < k; ++j) {
    const U key = uk[j];
    const bool tie = key == kth.key;
    if (key > kth.key || (tie && ties > 0)) {
      ties -= tie;
      out_idx[w] = ui[j];
      out_val[w] = uv[j];
      if (out_tag) out_tag[w] = ut[j];
      ++w;
    }
  }
  if (w != k) throw std::logic_error("gtopk: merge produced a wrong count");
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
