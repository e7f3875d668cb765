// merge_topk for float32 values and int32 indices (the butterfly's case) in AVX-512, chosen at
// run time on CPUs that have AVX-512 F/BW/VL and BMI2 (Zen 4, Ice Lake / Sapphire Rapids and
// later); the same result bit for bit as the scalar merge in merge.h, which every other CPU,
// dtype and index type runs.
//
// Passes of 16 entries per step, none with a branch that depends on the data:
//   1. the union's order: the keys (index << 1 | side) of a and b merged by a streaming
//      bitonic network (16 sorted keys out per step), a's entry just before b's at an index
//      both hold;
//   2. the union itself at slot p + q (p, q: entries of a and b consumed), values and tags
//      expanded from the inputs, a sum at a shared index followed by a hole (index -1);
//   3. a threshold bracket [lo, hi] from the keys of 1024 evenly spaced slots;
//   4. the keys inside the bracket compressed into a candidate list, the ones above counted,
//      then the k-th key by radix select over the candidates (over every key when the
//      bracket misleads);
//   5. the top k compressed out in index order: keys above the k-th, then the lowest-index ties.
// Compressed stores go through a register and a masked store (a compressing store to memory is
// microcoded on Zen 4, several times slower).
#pragma once
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define GTOPK_HAVE_AVX512_MERGE 1
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <stdexcept>
#include <vector>

#include "numeric.h"
#include "radix.h"

#define GTOPK_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,bmi,bmi2,popcnt")))

namespace gtopk::avx512 {

inline bool supported() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("bmi2") && __builtin_cpu_supports("popcnt");
  }();
  return ok;
}

// Keys past the end of an input: above every real key (indices < 2^31 - 1, so a real key is
// at most 2^32 - 3; the values pass reads the neighbours' index as 2^31 - 1, never a real one).
constexpr uint32_t kSentinel = 0xffffffffu;

GTOPK_AVX512 inline __mmask16 first_n(uint32_t n) { return static_cast<__mmask16>(_bzhi_u32(0xffffu, n)); }

// The next popcount(m) 32-bit words at p, spread onto the lanes set in m (zero elsewhere).
GTOPK_AVX512 inline __m512i expand(__mmask16 m, const void* p) {
  return _mm512_maskz_expand_epi32(m, _mm512_maskz_loadu_epi32(first_n(_mm_popcnt_u32(m)), p));
}

// The lanes set in m, in order, to p[0 .. popcount(m)).
GTOPK_AVX512 inline void compress(void* p, __mmask16 m, __m512i v) {
  _mm512_mask_storeu_epi32(p, first_n(_mm_popcnt_u32(m)), _mm512_maskz_compress_epi32(m, v));
}

// A bitonic sequence of 16 keys, sorted ascending.
GTOPK_AVX512 inline __m512i bitonic_sort16(__m512i v) {
  __m512i t = _mm512_shuffle_i32x4(v, v, 0x4e);  // lanes i <-> i ^ 8
  v = _mm512_mask_blend_epi32(0xff00, _mm512_min_epu32(v, t), _mm512_max_epu32(v, t));
  t = _mm512_shuffle_i32x4(v, v, 0xb1);  // i <-> i ^ 4
  v = _mm512_mask_blend_epi32(0xf0f0, _mm512_min_epu32(v, t), _mm512_max_epu32(v, t));
  t = _mm512_shuffle_epi32(v, _MM_PERM_BADC);  // i <-> i ^ 2
  v = _mm512_mask_blend_epi32(0xcccc, _mm512_min_epu32(v, t), _mm512_max_epu32(v, t));
  t = _mm512_shuffle_epi32(v, _MM_PERM_CDAB);  // i <-> i ^ 1
  return _mm512_mask_blend_epi32(0xaaaa, _mm512_min_epu32(v, t), _mm512_max_epu32(v, t));
}

// 16 keys (index << 1 | side) of idx[pos ..), sentinels past n.
GTOPK_AVX512 inline __m512i keys16(const int32_t* idx, size_t n, size_t pos, uint32_t side) {
  const size_t rem = pos < n ? n - pos : 0;
  const __mmask16 live = rem >= 16 ? __mmask16(0xffff) : first_n(static_cast<uint32_t>(rem));
  const __m512i x = _mm512_maskz_loadu_epi32(live, idx + pos);
  const __m512i key = _mm512_or_si512(_mm512_slli_epi32(x, 1), _mm512_set1_epi32(static_cast<int>(side)));
  return _mm512_mask_mov_epi32(_mm512_set1_epi32(-1), live, key);
}

// The key of idx[pos] (side 0 or 1), kSentinel past n (both forms' merge_order).
inline uint32_t head(const int32_t* idx, size_t n, size_t pos, uint32_t side) {
  return pos < n ? (static_cast<uint32_t>(idx[pos]) << 1) | side : kSentinel;
}

// Pass 2: the keys of a (side 0) and b (side 1) in ascending order to out[0 .. na + nb), then
// sentinels up to 16 * (ceil(na / 16) + ceil(nb / 16)). Each step merges the next block of 16
// (from the input whose next key is smaller) with the 16 largest kept so far: the smaller 16
// go out, the larger 16 are kept.
GTOPK_AVX512 inline void merge_order(const int32_t* ia, size_t na, const int32_t* ib, size_t nb, uint32_t* out) {
  const size_t blocks = (na + 15) / 16 + (nb + 15) / 16;
  if (blocks == 0) return;
  const __m512i reverse = _mm512_set_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  size_t pa = 0, pb = 0;
  const bool first_a = head(ia, na, 0, 0) < head(ib, nb, 0, 1);
  __m512i kept = first_a ? keys16(ia, na, 0, 0) : keys16(ib, nb, 0, 1);
  (first_a ? pa : pb) = 16;
  for (size_t s = 1; s < blocks; ++s) {
    const bool from_a = head(ia, na, pa, 0) < head(ib, nb, pb, 1);
    const __m512i next = keys16(from_a ? ia : ib, from_a ? na : nb, from_a ? pa : pb, from_a ? 0u : 1u);
    pa += from_a ? 16 : 0;
    pb += from_a ? 0 : 16;
    const __m512i r = _mm512_permutexvar_epi32(reverse, kept);  // next ++ reversed kept: bitonic
    _mm512_storeu_si512(out + (s - 1) * 16, bitonic_sort16(_mm512_min_epu32(next, r)));
    kept = bitonic_sort16(_mm512_max_epu32(next, r));
  }
  _mm512_storeu_si512(out + (blocks - 1) * 16, kept);
}

// Pass 2 over the merged keys order[0 .. n) (order[-1] and order[n .. n + 16] readable, not
// real keys): the union to slots 0 .. n of (ui, uv, ut); returns how many indices a and b share
// (holes).
template <bool kTags>
GTOPK_AVX512 size_t build_union(const uint32_t* order, size_t na, size_t nb, const float* va, const float* vb,
                                const uint32_t* ta, const uint32_t* tb, int32_t* ui, float* uv, uint32_t* ut) {
  const size_t n = na + nb;
  const __m512i one = _mm512_set1_epi32(1), none = _mm512_set1_epi32(-1);
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), inf = _mm512_set1_epi32(0x7f800000);
  const __m512i quiet_nan = _mm512_set1_epi32(0x7fc00000);
  size_t p = 0, q = 0, shared = 0;
  for (size_t o = 0; o < n; o += 16) {
    const __mmask16 live = n - o >= 16 ? __mmask16(0xffff) : first_n(static_cast<uint32_t>(n - o));
    const __m512i key = _mm512_loadu_si512(order + o);
    const __m512i idx = _mm512_srli_epi32(key, 1);
    const __m512i idx_next = _mm512_srli_epi32(_mm512_loadu_si512(order + o + 1), 1);
    const __mmask16 side_b = _mm512_test_epi32_mask(key, one);
    const __mmask16 dup_next = _mm512_cmpeq_epi32_mask(idx, idx_next);  // a's entry, b's follows
    const __mmask16 hole = _mm512_cmpeq_epi32_mask(idx, _mm512_srli_epi32(_mm512_loadu_si512(order + o - 1), 1));
    const __mmask16 ma = static_cast<__mmask16>(~side_b & live);
    const __mmask16 mb = static_cast<__mmask16>(((side_b & ~hole) | dup_next) & live);
    const __mmask16 real = ma | mb, both = ma & mb;
    const __m512 fa = _mm512_castsi512_ps(expand(ma, va + p)), fb = _mm512_castsi512_ps(expand(mb, vb + q));
    __m512 v = _mm512_mask_blend_ps(static_cast<__mmask16>(mb & ~ma), fa, fb);
    if (both) {  // merge_sum: a NaN sum becomes the positive quiet NaN
      __m512i sum = _mm512_castps_si512(_mm512_add_ps(fa, fb));
      sum = _mm512_mask_mov_epi32(sum, _mm512_cmpgt_epu32_mask(_mm512_and_si512(sum, abs_mask), inf), quiet_nan);
      v = _mm512_mask_blend_ps(both, v, _mm512_castsi512_ps(sum));
    }
    _mm512_mask_storeu_epi32(ui + o, live, _mm512_mask_mov_epi32(none, real, idx));
    _mm512_mask_storeu_ps(uv + o, live, v);
    if constexpr (kTags) _mm512_mask_storeu_epi32(ut + o, live, _mm512_or_si512(expand(ma, ta + p), expand(mb, tb + q)));
    shared += _mm_popcnt_u32(both);
    p += _mm_popcnt_u32(ma);
    q += _mm_popcnt_u32(mb);
  }
  return shared;
}

struct Candidates {
  size_t count, above;
};

// Pass 4: the keys of the union's real entries (n slots) inside [lo, hi] to keys, and how many
// are above hi.
GTOPK_AVX512 inline Candidates candidates(const int32_t* ui, const float* uv, size_t n, uint32_t lo, uint32_t hi,
                                          uint32_t* keys) {
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), nan_key = _mm512_set1_epi32(0x7f800001);
  const __m512i vlo = _mm512_set1_epi32(static_cast<int>(lo)), vhi = _mm512_set1_epi32(static_cast<int>(hi));
  size_t c = 0, above = 0;
  for (size_t o = 0; o < n; o += 16) {
    const __mmask16 live = n - o >= 16 ? __mmask16(0xffff) : first_n(static_cast<uint32_t>(n - o));
    const __mmask16 real = _mm512_mask_cmpge_epi32_mask(live, _mm512_maskz_loadu_epi32(live, ui + o),
                                                        _mm512_setzero_si512());
    const __m512i mag = _mm512_min_epu32(_mm512_and_si512(_mm512_maskz_loadu_epi32(live, uv + o), abs_mask), nan_key);
    const __mmask16 in = _mm512_mask_cmpge_epu32_mask(real, mag, vlo) & _mm512_cmple_epu32_mask(mag, vhi);
    compress(keys + c, in, mag);
    c += _mm_popcnt_u32(in);
    above += _mm_popcnt_u32(_mm512_mask_cmpgt_epu32_mask(real, mag, vhi));
  }
  return Candidates{c, above};
}

// Pass 5: the entries with keys above kth.key and the first kth.ties equal to it, in slot
// order, to out (at most cap); returns how many.
template <bool kTags>
GTOPK_AVX512 size_t write_top(const int32_t* ui, const float* uv, const uint32_t* ut, size_t n, KthKey<uint32_t> kth,
                              size_t cap, int32_t* out_idx, float* out_val, uint32_t* out_tag) {
  const __m512i abs_mask = _mm512_set1_epi32(0x7fffffff), nan_key = _mm512_set1_epi32(0x7f800001);
  const __m512i t = _mm512_set1_epi32(static_cast<int>(kth.key));
  uint64_t ties = kth.ties;
  size_t w = 0;
  for (size_t o = 0; o < n; o += 16) {
    const __mmask16 live = n - o >= 16 ? __mmask16(0xffff) : first_n(static_cast<uint32_t>(n - o));
    const __m512i idx = _mm512_maskz_loadu_epi32(live, ui + o);
    const __m512i v = _mm512_maskz_loadu_epi32(live, uv + o);
    const __mmask16 real = _mm512_mask_cmpge_epi32_mask(live, idx, _mm512_setzero_si512());
    const __m512i mag = _mm512_min_epu32(_mm512_and_si512(v, abs_mask), nan_key);
    __mmask16 keep = _mm512_mask_cmpgt_epu32_mask(real, mag, t);
    const __mmask16 eq = _mm512_mask_cmpeq_epu32_mask(real, mag, t);
    if (eq && ties) {  // the lowest-index ties, as many as the top k still takes
      const uint32_t count = _mm_popcnt_u32(eq);
      keep |= count <= ties ? eq : static_cast<__mmask16>(_pdep_u32(_bzhi_u32(0xffffu, static_cast<uint32_t>(ties)), eq));
      ties -= std::min<uint64_t>(count, ties);
    }
    const size_t kept = _mm_popcnt_u32(keep);
    if (w + kept > cap) throw std::logic_error("gtopk: merge kept more than k entries");
    compress(out_idx + w, keep, idx);
    compress(out_val + w, keep, v);
    if constexpr (kTags) compress(out_tag + w, keep, _mm512_maskz_loadu_epi32(live, ut + o));
    w += kept;
  }
  return w;
}

// Pass 3: [lo, hi] such that the k-th largest key of the union's `real` entries (in n slots)
// very likely lies inside, from the keys of 1024 evenly spaced slots (holes left out).
inline std::pair<uint32_t, uint32_t> bracket(const int32_t* ui, const float* uv, size_t n, size_t real, size_t k) {
  constexpr size_t kSlots = 1024;
  uint32_t s[kSlots];
  size_t got = 0;
  for (size_t j = 0; j < kSlots; ++j) {
    const size_t o = j * n / kSlots;
    s[got] = mag_key<float>(uv[o]);
    got += ui[o] >= 0;
  }
  if (got == 0) return {0, kSentinel};
  const double nr = static_cast<double>(real), r = static_cast<double>(k) * static_cast<double>(got) / nr;
  const double margin = 4.0 * std::sqrt(r * (1.0 - static_cast<double>(k) / nr)) + 8.0;
  // ranks past the sample's ends leave that side of the bracket open
  const size_t r_hi = r > margin ? static_cast<size_t>(r - margin) : 0;
  const size_t r_lo = std::min(got - 1, static_cast<size_t>(r + margin));
  std::nth_element(s, s + r_hi, s + got, std::greater<uint32_t>());
  const uint32_t hi = r > margin ? s[r_hi] : kSentinel;
  std::nth_element(s + r_hi, s + r_lo, s + got, std::greater<uint32_t>());
  return {r + margin < static_cast<double>(got - 1) ? s[r_lo] : 0u, hi};
}

struct Scratch {
  std::vector<uint32_t> order, cand;
  std::vector<int32_t> idx;
  std::vector<float> val;
  std::vector<uint32_t> tag;
};

using MergeOrderFn = void (*)(const int32_t*, size_t, const int32_t*, size_t, uint32_t*);

// The keys of a (side 0) and b (side 1) in ascending order, by one form's merge_order with
// `lanes`-wide steps, in `order` (resized): returns a pointer p to the first key; p[-1] and
// at least 2 * lanes - 1 slots from p[na + nb] on hold kSentinel (no real key) for the
// passes' whole-vector reads of a key's neighbours.
inline const uint32_t* merged_order(std::vector<uint32_t>& order, size_t lanes, MergeOrderFn merge_order,
                                    const int32_t* a, size_t na, const int32_t* b, size_t nb) {
  const size_t padded = lanes * ((na + lanes - 1) / lanes + (nb + lanes - 1) / lanes);
  order.resize(padded + 2 * lanes);
  order[0] = kSentinel;
  std::fill(order.begin() + 1 + static_cast<std::ptrdiff_t>(padded), order.end(), kSentinel);
  merge_order(a, na, b, nb, order.data() + 1);
  return order.data() + 1;
}

// The kernels of one form (this file's, 16 lanes; merge_avx2.h's, 8) for merge_with.
template <bool kTags>
struct Kernels {
  size_t lanes;
  MergeOrderFn merge_order;
  size_t (*build_union)(const uint32_t*, size_t, size_t, const float*, const float*, const uint32_t*, const uint32_t*,
                        int32_t*, float*, uint32_t*);
  Candidates (*candidates)(const int32_t*, const float*, size_t, uint32_t, uint32_t, uint32_t*);
  size_t (*write_top)(const int32_t*, const float*, const uint32_t*, size_t, KthKey<uint32_t>, size_t, int32_t*,
                      float*, uint32_t*);
};

// merge_topk's contract (merge.h) for float32 / int32 inputs with indices in [0, 2^31 - 1);
// ta, tb non-null when out_tag is: the passes in order, with one form's kernels. The scratch
// has a vector's worth of slack past the union (whole-vector loads and stores where a masked
// one is slow).
template <bool kTags>
size_t merge_with(const Kernels<kTags>& f, const int32_t* ia, const float* va, const uint32_t* ta, size_t na,
                  const int32_t* ib, const float* vb, const uint32_t* tb, size_t nb, size_t k, int32_t* out_idx,
                  float* out_val, uint32_t* out_tag) {
  thread_local Scratch s;
  const size_t n = na + nb, lanes = f.lanes;
  const uint32_t* order = merged_order(s.order, lanes, f.merge_order, ia, na, ib, nb);
  s.idx.resize(n + lanes);
  s.val.resize(n + lanes);
  s.tag.resize(kTags ? n + lanes : 0);
  s.cand.resize(n + lanes);
  const size_t real =
      n - f.build_union(order, na, nb, va, vb, ta, tb, s.idx.data(), s.val.data(), s.tag.data());
  KthKey<uint32_t> kth{0, UINT64_MAX};  // k >= |union|: every entry
  if (k < real) {
    constexpr size_t kSampled = 8 * 1024;  // shorter unions rank every key
    const auto br = real >= kSampled ? bracket(s.idx.data(), s.val.data(), n, real, k)
                                     : std::pair<uint32_t, uint32_t>{0, kSentinel};
    Candidates c = f.candidates(s.idx.data(), s.val.data(), n, br.first, br.second, s.cand.data());
    if (c.above >= k || c.above + c.count < k)  // the sample misled: rank every key
      c = f.candidates(s.idx.data(), s.val.data(), n, 0, kSentinel, s.cand.data());
    kth = kth_largest_key<float>(s.cand.data(), c.count, k - c.above);
  }
  const size_t cap = std::min(k, real);
  const size_t w = f.write_top(s.idx.data(), s.val.data(), s.tag.data(), n, kth, cap, out_idx, out_val, out_tag);
  if (w != cap) throw std::logic_error("gtopk: merge produced a wrong count");
  return w;
}

template <bool kTags>
inline constexpr Kernels<kTags> kKernels{16, &merge_order, &build_union<kTags>, &candidates, &write_top<kTags>};

template <bool kTags>
size_t merge_topk(const int32_t* ia, const float* va, const uint32_t* ta, size_t na, const int32_t* ib,
                  const float* vb, const uint32_t* tb, size_t nb, size_t k, int32_t* out_idx, float* out_val,
                  uint32_t* out_tag) {
  return merge_with<kTags>(kKernels<kTags>, ia, va, ta, na, ib, vb, tb, nb, k, out_idx, out_val, out_tag);
}

// Error feedback's record lookup (settle.h): r[i] += err[j] for every index i of
// `marked` (ascending), where j is i's position in `rec` (ascending); false if some marked index
// is not in rec. The two lists merged by the network (rec side 0, marked side 1): a marked key
// right after the rec key of the same index is a match, and that rec key's position is the
// count of rec keys before it.
GTOPK_AVX512 inline bool add_record_errors(const int32_t* marked, size_t nm, const int32_t* rec, const float* err,
                                           size_t nr, float* r) {
  thread_local std::vector<uint32_t> order;
  const size_t n = nm + nr;
  const uint32_t* keys = merged_order(order, 16, &merge_order, rec, nr, marked, nm);
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
  __m512i last = _mm512_set1_epi32(-1);  // lane 15: the position in rec of the last rec key seen
  size_t p = 0;
  bool lost = false;
  int32_t at_i[16], at_j[16];
  for (size_t o = 0; o < n; o += 16) {
    const __mmask16 live = n - o >= 16 ? __mmask16(0xffff) : first_n(static_cast<uint32_t>(n - o));
    const __m512i key = _mm512_loadu_si512(keys + o);
    const __m512i idx = _mm512_srli_epi32(key, 1);
    const __m512i idx_prev = _mm512_srli_epi32(_mm512_loadu_si512(keys + o - 1), 1);
    const __mmask16 side_b = _mm512_mask_test_epi32_mask(live, key, one);
    const __mmask16 side_a = static_cast<__mmask16>(~side_b & live);
    const __mmask16 match = _mm512_mask_cmpeq_epi32_mask(side_b, idx, idx_prev);
    lost |= match != side_b;
    // each rec key's position in rec, carried onto the lanes after it (only matches read it)
    const __m512i pos = _mm512_mask_expand_epi32(_mm512_setzero_si512(), side_a,
                                                 _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int>(p))));
    const __m512i partner = _mm512_alignr_epi32(pos, last, 15);  // lane l: pos of lane l - 1
    const uint32_t c = _mm_popcnt_u32(match);
    compress(at_i, match, idx);
    compress(at_j, match, partner);
    for (uint32_t t = 0; t < c; ++t) r[at_i[t]] = r[at_i[t]] + err[at_j[t]];
    p += _mm_popcnt_u32(side_a);
    last = pos;
  }
  return !lost;
}

// This form's kernels, for merge.h's with_simd (the one ISA dispatch).
struct Isa {
  template <bool kTags>
  static constexpr auto merge_topk = &avx512::merge_topk<kTags>;
  static constexpr auto add_record_errors = &avx512::add_record_errors;
};

}  // namespace gtopk::avx512
#endif
