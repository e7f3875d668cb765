// Exact top-k selection by magnitude on the CPU.
//
// Contract (shared with the CUDA path and the NumPy reference in tests/):
//   * exactly min(k, m) entries, ordered by magnitude key (see numeric.h): NaN above
//     +inf above every finite value; equal keys go to the lower index;
//   * output indices ascending, values copied bit for bit.
//
// Algorithm, for m >> k (the gradient case):
//   1. estimate a threshold t from a sample of 1024 evenly spread blocks of 64
//      elements: t is the r-th largest sampled key, with r chosen so that the
//      number of elements >= t exceeds k with overwhelming probability;
//   2. one streaming pass keeps the (index, key) of every element with key >= t
//      (in the fused error-feedback form the same pass also writes r += x);
//   3. exact fix-up on the candidates: radix select (radix.h) finds the k-th largest key T,
//      then a scan in index order keeps keys > T and the first keys == T.
//   If the sample misleads (fewer than k or too many candidates), a histogram of
//   the top 11 key bits (the radix select's first digit) gives an exact bucket
//   threshold and step 2 is redone.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "numeric.h"
#include "radix.h"
#include "select_plan.h"

// The streaming pass is memory-bound only when vectorised with 256-bit compares;
// on x86-64 GCC builds an AVX2 clone next to the baseline one and picks at load time.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && !defined(__CUDACC__)
#define GTOPK_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define GTOPK_VECTOR_CLONES
#endif

namespace gtopk {

template <class T, class I>
struct Candidates {
  std::vector<I> idx;
  std::vector<key_of<T>> key;  // canonical keys
};

// Value the selection ranks: x[i], or residual[i] + x[i] in the fused form.
template <class T, bool kFused>
inline T acc_value(const T* x, const T* r, size_t i) {
  if constexpr (kFused) {
    return Num<T>::add(r[i], x[i]);
  } else {
    (void)r;
    return x[i];
  }
}

// Keys of the sample blocks (see select_plan.h for the layout).
template <class T, bool kFused>
std::vector<key_of<T>> sample_keys(const T* x, const T* r, size_t m) {
  std::vector<key_of<T>> s;
  s.reserve(kSampleBlocks * kSampleBlockLen);
  for (size_t b = 0; b < kSampleBlocks; ++b) {
    const size_t start = sample_block_start(m, b);
    for (size_t j = 0; j < kSampleBlockLen; ++j) s.push_back(mag_key<T>(acc_value<T, kFused>(x, r, start + j)));
  }
  return s;
}

// One streaming pass over [lo, hi): keep (i, key) with raw key >= t. In the fused
// form also store r[i] = r[i] + x[i] for every i. Returns false if more than `cap`
// candidates were found (the fused form still finishes writing r).
template <class T, class I, bool kFused>
GTOPK_VECTOR_CLONES bool filter_range(const T* __restrict x, T* __restrict r, size_t lo, size_t hi, key_of<T> t, size_t cap, Candidates<T, I>& out) {
  using U = key_of<T>;
  constexpr size_t W = 16;
  bool overflow = false;
  size_t i = lo;
  for (; i + W <= hi; i += W) {
    T a[W];
    U k[W];
    for (size_t j = 0; j < W; ++j) a[j] = acc_value<T, kFused>(x, r, i + j);
    if constexpr (kFused) {
      for (size_t j = 0; j < W; ++j) r[i + j] = a[j];
    }
    for (size_t j = 0; j < W; ++j) k[j] = raw_key<T>(a[j]);
    bool any = false;
    for (size_t j = 0; j < W; ++j) any |= k[j] >= t;
    if (any && !overflow) {
      for (size_t j = 0; j < W; ++j) {
        if (k[j] >= t) {
          out.idx.push_back(static_cast<I>(i + j));
          out.key.push_back(canon_key<T>(k[j]));
        }
      }
      if (out.idx.size() > cap) {
        overflow = true;
        if constexpr (!kFused) return false;
      }
    }
  }
  for (; i < hi; ++i) {
    const T a = acc_value<T, kFused>(x, r, i);
    if constexpr (kFused) r[i] = a;
    const U k = raw_key<T>(a);
    if (k >= t && !overflow) {
      out.idx.push_back(static_cast<I>(i));
      out.key.push_back(canon_key<T>(k));
      if (out.idx.size() > cap) overflow = true;
    }
  }
  return !overflow;
}

inline int clamp_threads(int threads, size_t m) {
#ifdef _OPENMP
  if (threads <= 0) threads = omp_get_max_threads();
#else
  threads = 1;
#endif
  // below ~256K elements per thread the fork/join costs more than it saves
  const size_t useful = std::max<size_t>(1, m / (size_t{1} << 18));
  return static_cast<int>(std::max<size_t>(1, std::min<size_t>(static_cast<size_t>(threads), useful)));
}

// Parallel filter over [0, m): per-thread candidate lists concatenated in index
// order. Returns false on overflow of any thread's share of `cap`.
template <class T, class I, bool kFused>
bool filter_all(const T* x, T* r, size_t m, key_of<T> t, size_t cap, int threads, Candidates<T, I>& out) {
  const int nt = clamp_threads(threads, m);
  if (nt == 1) {
    out.idx.reserve(std::min(cap, m) + 16);
    out.key.reserve(std::min(cap, m) + 16);
    return filter_range<T, I, kFused>(x, r, 0, m, t, cap, out);
  }
  std::vector<Candidates<T, I>> parts(nt);
  std::vector<char> ok(nt, 1);
  const size_t per_cap = cap / nt + cap / 4 + 64;
#pragma omp parallel num_threads(nt)
  {
#ifdef _OPENMP
    const int tid = omp_get_thread_num();
#else
    const int tid = 0;
#endif
    const size_t lo = (m * tid / nt) & ~size_t{15};
    const size_t hi = tid == nt - 1 ? m : (m * (tid + 1) / nt) & ~size_t{15};
    parts[tid].idx.reserve(std::min(per_cap, hi - lo) + 16);
    parts[tid].key.reserve(std::min(per_cap, hi - lo) + 16);
    ok[tid] = filter_range<T, I, kFused>(x, r, lo, hi, t, per_cap, parts[tid]);
  }
  size_t total = 0;
  for (int p = 0; p < nt; ++p) {
    if (!ok[p]) return false;
    total += parts[p].idx.size();
  }
  out.idx.reserve(total);
  out.key.reserve(total);
  for (int p = 0; p < nt; ++p) {
    out.idx.insert(out.idx.end(), parts[p].idx.begin(), parts[p].idx.end());
    out.key.insert(out.key.end(), parts[p].key.begin(), parts[p].key.end());
  }
  return true;
}

// Exact threshold from a histogram of the radix select's top digit of the keys of `a`:
// the lower edge of the bucket that holds the k-th largest key (as the GPU fallback).
template <class T>
key_of<T> histogram_threshold(const T* a, size_t m, size_t k, int threads) {
  const RadixDigit top = radix_digit(Num<T>::kBits, 0);
  const size_t buckets = size_t{top.mask} + 1;
  std::vector<uint64_t> hist(buckets, 0);
  const int nt = clamp_threads(threads, m);
#pragma omp parallel num_threads(nt)
  {
    std::vector<uint64_t> local(buckets, 0);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < static_cast<int64_t>(m); ++i) ++local[mag_key<T>(a[i]) >> top.shift];
#pragma omp critical
    for (size_t b = 0; b < local.size(); ++b) hist[b] += local[b];
  }
  const size_t bucket = histogram_bucket(hist.data(), buckets, k);
  return static_cast<key_of<T>>(static_cast<key_of<T>>(bucket) << top.shift);
}

// Keep the k best candidates (keys > T, then the lowest indices with key == T).
template <class T, class I>
void finish_from_candidates(const Candidates<T, I>& c, const T* a, size_t k, I* out_idx, T* out_val) {
  using U = key_of<T>;
  const size_t n = c.idx.size();
  const KthKey<U> kth_key = kth_largest_key<T>(c.key.data(), n, k);
  const U kth = kth_key.key;
  size_t ties = kth_key.ties;
  size_t o = 0;
  for (size_t j = 0; j < n && o < k; ++j) {
    const U key = c.key[j];
    if (key > kth || (key == kth && ties > 0)) {
      if (key == kth) --ties;
      out_idx[o] = c.idx[j];
      out_val[o] = a[c.idx[j]];
      ++o;
    }
  }
  if (o != k) throw std::logic_error("gtopk: selection produced a wrong count");
}

// Top-min(k, m) of x (kFused = false, r unused) or of r + x (kFused = true: the
// pass also leaves r[i] = r[i] + x[i] for all i). Writes min(k, m) entries.
template <class T, class I, bool kFused>
size_t select_topk(const T* x, T* r, size_t m, size_t k, int threads, I* out_idx, T* out_val) {
  if (k == 0) throw std::invalid_argument("k must be >= 1");
  const T* a = kFused ? r : x;  // where the ranked values live once the pass is done
  if (k >= m) {
    if constexpr (kFused) {
      for (size_t i = 0; i < m; ++i) r[i] = Num<T>::add(r[i], x[i]);
    }
    for (size_t i = 0; i < m; ++i) {
      out_idx[i] = static_cast<I>(i);
      out_val[i] = a[i];
    }
    return m;
  }
  Candidates<T, I> cand;
  bool fused_done = false;
  const SamplePlan plan = plan_sample(m, k);
  if (plan.use_sample) {
    std::vector<key_of<T>> s = sample_keys<T, kFused>(x, r, m);
    std::nth_element(s.begin(), s.begin() + (plan.rank - 1), s.end(), std::greater<key_of<T>>());
    const key_of<T> t = s[plan.rank - 1];
    const bool ok = filter_all<T, I, kFused>(x, r, m, t, plan.cap, threads, cand);
    fused_done = true;
    if (!ok || cand.idx.size() < k) {
      cand.idx.clear();
      cand.key.clear();
    }
  }
  if (cand.idx.empty()) {
    if (kFused && !fused_done) {
      const int nt = clamp_threads(threads, m);
#pragma omp parallel for num_threads(nt) schedule(static)
      for (int64_t i = 0; i < static_cast<int64_t>(m); ++i) r[i] = Num<T>::add(r[i], x[i]);
    }
    // Short inputs (merges, small layers): rank them all; else an exact bucket threshold.
    const key_of<T> t = m <= kDirectMax ? key_of<T>{0} : histogram_threshold<T>(a, m, k, threads);
    filter_all<T, I, false>(a, nullptr, m, t, m, threads, cand);
  }
  finish_from_candidates<T, I>(cand, a, k, out_idx, out_val);
  return k;
}

}  // namespace gtopk
