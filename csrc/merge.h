// Sparse merge of two k-sets, the step every butterfly round runs on both partners.
//
// Inputs: strictly ascending indices with their values. The union is formed with
// values summed at equal indices (merge_sum: commutative bit for bit), then the
// top k of the union by magnitude key, ties to the lower index, indices ascending.
// merge(a, b) and merge(b, a) are therefore bit-identical.
#pragma once
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "keys.h"
#include "select.h"

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
  ui.clear();
  uv.clear();
  ui.reserve(na + nb);
  uv.reserve(na + nb);
  size_t p = 0, q = 0;
  while (p < na && q < nb) {
    if (ia[p] < ib[q]) {
      ui.push_back(ia[p]);
      uv.push_back(va[p++]);
    } else if (ib[q] < ia[p]) {
      ui.push_back(ib[q]);
      uv.push_back(vb[q++]);
    } else {
      ui.push_back(ia[p]);
      uv.push_back(merge_sum<T>(va[p++], vb[q++]));
    }
  }
  for (; p < na; ++p) ui.push_back(ia[p]), uv.push_back(va[p]);
  for (; q < nb; ++q) ui.push_back(ib[q]), uv.push_back(vb[q]);
}

// Top-min(k, |union|) of the union. Returns the count written to out_idx/out_val
// (callers size them min(k, na + nb)).
template <class T, class I>
size_t merge_topk(const I* ia, const T* va, size_t na, const I* ib, const T* vb, size_t nb, size_t k, I* out_idx,
                  T* out_val) {
  if (k == 0) throw std::invalid_argument("k must be >= 1");
  std::vector<I> ui;
  std::vector<T> uv;
  sparse_union<T, I>(ia, va, na, ib, vb, nb, ui, uv);
  const size_t n = ui.size();
  if (k >= n) {
    for (size_t j = 0; j < n; ++j) out_idx[j] = ui[j], out_val[j] = uv[j];
    return n;
  }
  // Rank positions in the union, then map back to indices (positions ascend with indices).
  std::vector<int64_t> pos(k);
  std::vector<T> vals(k);
  select_topk<T, int64_t, false>(uv.data(), nullptr, n, k, 1, pos.data(), vals.data());
  for (size_t j = 0; j < k; ++j) out_idx[j] = ui[static_cast<size_t>(pos[j])], out_val[j] = vals[j];
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
