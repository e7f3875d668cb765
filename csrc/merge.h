// Sparse merge of two k-sets, the step every butterfly round runs on both partners.
//
// Inputs: strictly ascending indices with their values and, optionally, 32-bit tags (the
// caller's bookkeeping: which entries hold its own contribution, a folded rank's, or one
// of its rounding errors). The union is formed with values summed at equal indices
// (merge_sum: commutative bit for bit) and tags OR-ed, then the top k of the union by
// magnitude key, ties to the lower index, indices ascending. merge(a, b) and merge(b, a)
// give bit-identical indices and values.
//
// On the critical path of every round. float32 / int32 merges take the AVX-512 form
// (merge_avx512.h: a bitonic merge network, 16 entries a step) or the AVX2 one
// (merge_avx2.h, 8 a step) on CPUs that have them; the scalar form here, for every other
// case, in three passes over memory that stays in cache: (1) the union, branch-free, as four
// independent merges of disjoint index ranges interleaved (their dependency chains overlap
// in the core), then closed up; (2) the k-th
// key: a threshold bracket from 1024 sampled keys, then an exact radix select over the
// keys inside the bracket only (over every key when the sample misleads); (3) one
// branch-free ordered write of the keys above it and the lowest-index ties.
#pragma once
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "merge_avx2.h"
#include "merge_avx512.h"
#include "numeric.h"
#include "radix.h"

namespace gtopk {

// Which form float32 / int32 merges (and settle's record lookups) take: the widest the CPU has
// (merge_avx512.h, merge_avx2.h), up to a cap that tests lower to check every form on one
// machine (_C.merge_form).
enum class MergeForm : int { kScalar = 0, kAvx2 = 1, kAvx512 = 2 };
inline std::atomic<int> g_merge_form_cap{static_cast<int>(MergeForm::kAvx512)};

inline MergeForm merge_form() {
  const int cap = g_merge_form_cap.load(std::memory_order_relaxed);
#ifdef GTOPK_HAVE_AVX512_MERGE
  if (cap >= static_cast<int>(MergeForm::kAvx512) && avx512::supported()) return MergeForm::kAvx512;
#endif
#ifdef GTOPK_HAVE_AVX2_MERGE
  if (cap >= static_cast<int>(MergeForm::kAvx2) && avx2::supported()) return MergeForm::kAvx2;
#endif
  (void)cap;
  return MergeForm::kScalar;
}

// The one ISA dispatch: f(Isa{}) with the kernel set of `form` (avx512::Isa, avx2::Isa: each
// with merge_topk<kTags> and add_record_errors for float32 / int32), then true; false for
// kScalar or a form this build lacks (the caller runs its scalar form).
template <class F>
bool with_simd(MergeForm form, F&& f) {
#ifdef GTOPK_HAVE_AVX512_MERGE
  if (form == MergeForm::kAvx512) {
    f(avx512::Isa{});
    return true;
  }
#endif
#ifdef GTOPK_HAVE_AVX2_MERGE
  if (form == MergeForm::kAvx2) {
    f(avx2::Isa{});
    return true;
  }
#endif
  (void)form, (void)f;
  return false;
}

// merge_form() for two ascending int32 index lists, or kScalar when an index falls outside
// [0, 2^31 - 1) (the SIMD forms' keys are index << 1 | side, below 2^32 - 2).
inline MergeForm merge_form_for(const int32_t* a, size_t na, const int32_t* b, size_t nb) {
  constexpr int32_t kTop = std::numeric_limits<int32_t>::max();
  const bool keyable = (na == 0 || (a[0] >= 0 && a[na - 1] < kTop)) && (nb == 0 || (b[0] >= 0 && b[nb - 1] < kTop));
  return keyable ? merge_form() : MergeForm::kScalar;
}

template <class I>
void check_ascending(const I* idx, size_t n, const char* name) {
  int bad = 0;
  for (size_t j = 1; j < n; ++j) bad |= idx[j - 1] >= idx[j];
  if (bad) throw std::invalid_argument(std::string(name) + " indices must be strictly ascending");
}

// Scratch of one thread, reused across calls (no page faults on the hot path).
template <class T, class I>
struct MergeScratch {
  std::vector<I> idx;
  std::vector<T> val;
  std::vector<uint32_t> tag;
  std::vector<key_of<T>> key;
};

// One output entry: a's or b's, chosen with bit masks (which set comes next is random: no
// branch for the predictor to guess wrong), or at an index both hold, their sum (rare
// between ranks' top-k sets, so that branch is predictable).
template <class T, class I, bool kTags>
inline void union_step(size_t& p, size_t& q, size_t& o, const I* ia, const T* va, const uint32_t* ta, const I* ib,
                       const T* vb, const uint32_t* tb, I* ui, T* uv, uint32_t* ut) {
  using B = key_of<T>;  // T's bits
  const I a = ia[p], b = ib[q];
  if (__builtin_expect(a == b, 0)) {
    ui[o] = a;
    uv[o] = merge_sum<T>(va[p], vb[q]);
    if constexpr (kTags) ut[o] = ta[p] | tb[q];
    ++p, ++q, ++o;
    return;
  }
  const bool take_a = a < b;
  const B pa = static_cast<B>(B{0} - B{take_a});
  uv[o] = Num<T>::from_bits(static_cast<B>((Num<T>::bits(va[p]) & pa) | (Num<T>::bits(vb[q]) & ~pa)));
  const I pick_a = static_cast<I>(I{0} - static_cast<I>(take_a));
  ui[o] = static_cast<I>((a & pick_a) | (b & ~pick_a));
  if constexpr (kTags) ut[o] = (ta[p] & (0u - take_a)) | (tb[q] & (0u - !take_a));
  p += take_a;
  q += !take_a;
  ++o;
}

// Finish one lane: the rest of a[p, pe) and b[q, qe) from o.
template <class T, class I, bool kTags>
void union_tail(size_t p, size_t pe, size_t q, size_t qe, size_t o, const I* ia, const T* va, const uint32_t* ta,
                const I* ib, const T* vb, const uint32_t* tb, I* ui, T* uv, uint32_t* ut, size_t* end) {
  while (p < pe && q < qe) union_step<T, I, kTags>(p, q, o, ia, va, ta, ib, vb, tb, ui, uv, ut);
  for (; p < pe; ++p, ++o) {
    ui[o] = ia[p], uv[o] = va[p];
    if constexpr (kTags) ut[o] = ta[p];
  }
  for (; q < qe; ++q, ++o) {
    ui[o] = ib[q], uv[o] = vb[q];
    if constexpr (kTags) ut[o] = tb[q];
  }
  *end = o;
}

// The union of a and b into (ui, uv, ut); returns its size. Four merges of disjoint index
// ranges (a split at its quartiles, b where those indices fall), interleaved step by step
// while all four run (their dependency chains overlap in the core), finished one by one,
// then moved together.
template <class T, class I, bool kTags>
size_t sparse_union(const I* ia, const T* va, const uint32_t* ta, size_t na, const I* ib, const T* vb,
                    const uint32_t* tb, size_t nb, I* ui, T* uv, uint32_t* ut) {
  size_t ea[4], eb[4];
  for (int l = 0; l < 4; ++l) {
    ea[l] = l == 3 ? na : na * (l + 1) / 4;
    eb[l] = l == 3 || ea[l] == na ? nb : static_cast<size_t>(std::lower_bound(ib, ib + nb, ia[ea[l]]) - ib);
  }
  const size_t b0 = 0, b1 = ea[0] + eb[0], b2 = ea[1] + eb[1], b3 = ea[2] + eb[2];
  size_t p0 = 0, q0 = 0, o0 = b0, p1 = ea[0], q1 = eb[0], o1 = b1;
  size_t p2 = ea[1], q2 = eb[1], o2 = b2, p3 = ea[2], q3 = eb[2], o3 = b3;
  while (p0 < ea[0] && q0 < eb[0] && p1 < ea[1] && q1 < eb[1] && p2 < ea[2] && q2 < eb[2] && p3 < ea[3] &&
         q3 < eb[3]) {
    union_step<T, I, kTags>(p0, q0, o0, ia, va, ta, ib, vb, tb, ui, uv, ut);
    union_step<T, I, kTags>(p1, q1, o1, ia, va, ta, ib, vb, tb, ui, uv, ut);
    union_step<T, I, kTags>(p2, q2, o2, ia, va, ta, ib, vb, tb, ui, uv, ut);
    union_step<T, I, kTags>(p3, q3, o3, ia, va, ta, ib, vb, tb, ui, uv, ut);
  }
  size_t ends[4];
  union_tail<T, I, kTags>(p0, ea[0], q0, eb[0], o0, ia, va, ta, ib, vb, tb, ui, uv, ut, &ends[0]);
  union_tail<T, I, kTags>(p1, ea[1], q1, eb[1], o1, ia, va, ta, ib, vb, tb, ui, uv, ut, &ends[1]);
  union_tail<T, I, kTags>(p2, ea[2], q2, eb[2], o2, ia, va, ta, ib, vb, tb, ui, uv, ut, &ends[2]);
  union_tail<T, I, kTags>(p3, ea[3], q3, eb[3], o3, ia, va, ta, ib, vb, tb, ui, uv, ut, &ends[3]);
  const size_t begins[4] = {b0, b1, b2, b3};
  size_t out = 0;
  for (int l = 0; l < 4; ++l) {
    const size_t len = ends[l] - begins[l];
    if (out != begins[l]) {
      std::memmove(ui + out, ui + begins[l], len * sizeof(I));
      std::memmove(uv + out, uv + begins[l], len * sizeof(T));
      if constexpr (kTags) std::memmove(ut + out, ut + begins[l], len * sizeof(uint32_t));
    }
    out += len;
  }
  return out;
}

// The k-th largest magnitude key of uv[0..n) (k < n) and how many keys equal to it are in
// the top k.
template <class T>
KthKey<key_of<T>> kth_key_of_union(const T* uv, size_t n, size_t k, std::vector<key_of<T>>& keys) {
  using U = key_of<T>;
  constexpr size_t kSample = 1024;
  keys.resize(n);
  if (n >= 8 * kSample) {
    U sample[kSample];
    for (size_t s = 0; s < kSample; ++s) sample[s] = mag_key<T>(uv[s * n / kSample]);
    const double r = static_cast<double>(k) * kSample / static_cast<double>(n);
    const double margin = 4.0 * std::sqrt(r * (1.0 - static_cast<double>(k) / static_cast<double>(n))) + 8.0;
    const size_t r_hi = r > margin ? static_cast<size_t>(r - margin) : 0;
    const size_t r_lo = std::min(kSample - 1, static_cast<size_t>(r + margin));
    std::nth_element(sample, sample + r_hi, sample + kSample, std::greater<U>());
    const U hi = r > margin ? sample[r_hi] : static_cast<U>(~U{0});  // a rank past the sample's top: no upper bound
    std::nth_element(sample + r_hi, sample + r_lo, sample + kSample, std::greater<U>());
    const U lo = r + margin < static_cast<double>(kSample - 1) ? sample[r_lo] : U{0};
    size_t above = 0, c = 0;
    for (size_t j = 0; j < n; ++j) {  // branch-free: keys inside [lo, hi] to the candidates
      const U key = mag_key<T>(uv[j]);
      above += key > hi;
      keys[c] = key;
      c += key >= lo && key <= hi;
    }
    if (above < k && above + c >= k) return kth_largest_key<T>(keys.data(), c, k - above);
  }
  for (size_t j = 0; j < n; ++j) keys[j] = mag_key<T>(uv[j]);
  return kth_largest_key<T>(keys.data(), n, k);
}

// Top-min(k, |union|) of the union; returns the count written (callers size the outputs
// min(k, na + nb)). Tags may be null (none on that side; out_tag may be null too).
template <class T, class I>
size_t merge_topk(const I* ia, const T* va, const uint32_t* ta, size_t na, const I* ib, const T* vb,
                  const uint32_t* tb, size_t nb, size_t k, I* out_idx, T* out_val, uint32_t* out_tag) {
  using U = key_of<T>;
  if (k == 0) throw std::invalid_argument("k must be >= 1");
  check_ascending<I>(ia, na, "first");
  check_ascending<I>(ib, nb, "second");
  const bool tagged = out_tag != nullptr;
  thread_local std::vector<uint32_t> zeros;
  const uint32_t* pta = ta;
  const uint32_t* ptb = tb;
  if (tagged && (!ta || !tb)) {  // a side without tags: zeros
    zeros.assign(std::max(na, nb), 0u);
    if (!pta) pta = zeros.data();
    if (!ptb) ptb = zeros.data();
  }
  if constexpr (std::is_same_v<T, float> && std::is_same_v<I, int32_t>) {
    size_t written = 0;
    if (with_simd(merge_form_for(ia, na, ib, nb), [&](auto isa) {
          using K = decltype(isa);
          written = tagged ? K::template merge_topk<true>(ia, va, pta, na, ib, vb, ptb, nb, k, out_idx, out_val, out_tag)
                           : K::template merge_topk<false>(ia, va, nullptr, na, ib, vb, nullptr, nb, k, out_idx,
                                                           out_val, nullptr);
        }))
      return written;
  }
  thread_local MergeScratch<T, I> s;
  s.idx.resize(na + nb);
  s.val.resize(na + nb);
  s.tag.resize(tagged ? na + nb : 0);
  const size_t n = tagged ? sparse_union<T, I, true>(ia, va, pta, na, ib, vb, ptb, nb, s.idx.data(), s.val.data(),
                                                     s.tag.data())
                          : sparse_union<T, I, false>(ia, va, nullptr, na, ib, vb, nullptr, nb, s.idx.data(),
                                                      s.val.data(), nullptr);
  const I* ui = s.idx.data();
  const T* uv = s.val.data();
  const uint32_t* ut = s.tag.data();
  if (k >= n) {
    std::copy(ui, ui + n, out_idx);
    std::copy(uv, uv + n, out_val);
    if (tagged) std::copy(ut, ut + n, out_tag);
    return n;
  }
  const KthKey<U> kth = kth_key_of_union<T>(uv, n, k, s.key);
  // keys above the k-th, then the lowest-index ties, in index order; branch-free, each
  // slot rewritten until an entry is kept (the loop ends on the k-th kept entry)
  uint64_t ties = kth.ties;
  size_t w = 0;
  for (size_t j = 0; w < k && j < n; ++j) {
    const U key = mag_key<T>(uv[j]);
    const uint64_t tie = static_cast<uint64_t>(key == kth.key) & static_cast<uint64_t>(ties != 0);
    out_idx[w] = ui[j];
    out_val[w] = uv[j];
    if (tagged) out_tag[w] = ut[j];
    ties -= tie;
    w += static_cast<uint64_t>(key > kth.key) | tie;
  }
  if (w != k) throw std::logic_error("gtopk: merge produced a wrong count");
  return k;
}

// out[j] = the tag of kept[j] in mine where flags[j], else 0 (mine and kept ascending; every
// flagged index of kept occurs in mine). False if one does not.
template <class I>
bool adopt_tags(const I* mine, const uint32_t* tags, size_t n_mine, const I* kept, const uint8_t* flags,
                size_t n_kept, uint32_t* out) {
  size_t q = 0;
  for (size_t j = 0; j < n_kept; ++j) {
    out[j] = 0;
    if (!flags[j]) continue;
    while (q < n_mine && mine[q] < kept[j]) ++q;
    if (q == n_mine || mine[q] != kept[j]) return false;
    out[j] = tags[q];
  }
  return true;
}

}  // namespace gtopk
