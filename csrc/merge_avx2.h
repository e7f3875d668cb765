// merge_topk for float32 values and int32 indices in AVX2, for x86 CPUs without AVX-512 (Zen 2
// and 3, Intel client cores): the passes of merge_avx512.h, 8 entries a step. AVX2 has no
// expand or compress, so both are a permutation from a 256-entry table and a masked load or
// store; no pdep either (microcoded on Zen 2), so the partial tie block is a short bit loop.
// Bit-identical to the scalar form and to the AVX-512 one.
#pragma once
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__CUDACC__)
#define GTOPK_HAVE_AVX2_MERGE 1
#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <vector>

#include "merge_avx512.h"  // bracket(), kSentinel: the same sampling and key layout
#include "numeric.h"
#include "radix.h"

#define GTOPK_AVX2 __attribute__((target("avx2,bmi,popcnt")))

namespace gtopk::avx2 {

using avx512::head;
using avx512::kSentinel;

inline bool supported() {
  static const bool ok = [] {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("popcnt");
  }();
  return ok;
}

// For each 8-bit lane mask m: kCompress[m] lists m's lanes in order (then the others), and
// kExpand[m] gives lane l, when set in m, the rank of l among m's lanes.
struct Tables {
  alignas(32) std::array<std::array<int32_t, 8>, 256> compress{}, expand{};
  constexpr Tables() {
    for (int m = 0; m < 256; ++m) {
      int n = 0;
      for (int l = 0; l < 8; ++l)
        if (m >> l & 1) compress[m][n] = l, expand[m][l] = n++;
      for (int l = 0; l < 8; ++l)
        if (!(m >> l & 1)) compress[m][n++] = l;
    }
  }
};
inline constexpr Tables kTables{};

GTOPK_AVX2 inline __m256i lanes_of(uint32_t m) {  // -1 on the lanes set in m
  const __m256i bits = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(m)), bits), bits);
}

GTOPK_AVX2 inline __m256i first_n(uint32_t n) {  // -1 on lanes 0 .. n - 1
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

GTOPK_AVX2 inline uint32_t mask_of(__m256i v) {
  return static_cast<uint32_t>(_mm256_movemask_ps(_mm256_castsi256_ps(v)));
}

GTOPK_AVX2 inline __m256i load8(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }

GTOPK_AVX2 inline __m256i table(const std::array<int32_t, 8>& row) {
  return _mm256_load_si256(reinterpret_cast<const __m256i*>(row.data()));
}

// The next popcount(m) 32-bit words at p, spread onto the lanes set in m (zero elsewhere);
// `room`: how many words p may be read from (a masked load only near the end, see compress).
GTOPK_AVX2 inline __m256i expand(uint32_t m, const void* p, size_t room) {
  const __m256i packed = room >= 8 ? _mm256_loadu_si256(static_cast<const __m256i*>(p))
                                   : _mm256_maskload_epi32(static_cast<const int*>(p), first_n(_mm_popcnt_u32(m)));
  return _mm256_and_si256(_mm256_permutevar8x32_epi32(packed, table(kTables.expand[m])), lanes_of(m));
}

// The lanes set in m, in order, to p[0 .. popcount(m)); `room`: how many words p may take
// (a masked store only near the end: with masked loads and stores everywhere this form took
// 0.305 ms per k = 25,558 merge on a Zen 4, with whole-vector ones 0.139 ms).
GTOPK_AVX2 inline void compress(void* p, uint32_t m, __m256i v, size_t room) {
  const __m256i packed = _mm256_permutevar8x32_epi32(v, table(kTables.compress[m]));
  if (room >= 8)
    _mm256_storeu_si256(static_cast<__m256i*>(p), packed);
  else
    _mm256_maskstore_epi32(static_cast<int*>(p), first_n(_mm_popcnt_u32(m)), packed);
}

GTOPK_AVX2 inline __m256i min_max_blend(__m256i v, __m256i t, int hi_lanes) {
  const __m256i lo = _mm256_min_epu32(v, t), hi = _mm256_max_epu32(v, t);
  switch (hi_lanes) {  // _mm256_blend_epi32 needs a constant
    case 0xf0: return _mm256_blend_epi32(lo, hi, 0xf0);
    case 0xcc: return _mm256_blend_epi32(lo, hi, 0xcc);
    default: return _mm256_blend_epi32(lo, hi, 0xaa);
  }
}

// A bitonic sequence of 8 keys, sorted ascending.
GTOPK_AVX2 inline __m256i bitonic_sort8(__m256i v) {
  v = min_max_blend(v, _mm256_permute2x128_si256(v, v, 0x01), 0xf0);  // lanes i <-> i ^ 4
  v = min_max_blend(v, _mm256_shuffle_epi32(v, 0x4e), 0xcc);          // i <-> i ^ 2
  return min_max_blend(v, _mm256_shuffle_epi32(v, 0xb1), 0xaa);       // i <-> i ^ 1
}

// 8 keys (index << 1 | side) of idx[pos ..), sentinels past n.
GTOPK_AVX2 inline __m256i keys8(const int32_t* idx, size_t n, size_t pos, uint32_t side) {
  const size_t rem = pos < n ? n - pos : 0;
  const __m256i side_bit = _mm256_set1_epi32(static_cast<int>(side));
  if (rem >= 8) return _mm256_or_si256(_mm256_slli_epi32(load8(idx + pos), 1), side_bit);
  const __m256i live = first_n(static_cast<uint32_t>(rem));
  const __m256i key = _mm256_or_si256(_mm256_slli_epi32(_mm256_maskload_epi32(idx + pos, live), 1), side_bit);
  return _mm256_blendv_epi8(_mm256_set1_epi32(-1), key, live);
}

// merge_avx512.h's merge_order, 8 keys a step: out[0 .. na + nb) ascending, then sentinels up
// to 8 * (ceil(na / 8) + ceil(nb / 8)).
GTOPK_AVX2 inline void merge_order(const int32_t* ia, size_t na, const int32_t* ib, size_t nb, uint32_t* out) {
  const size_t blocks = (na + 7) / 8 + (nb + 7) / 8;
  if (blocks == 0) return;
  const __m256i reverse = _mm256_setr_epi32(7, 6, 5, 4, 3, 2, 1, 0);
  size_t pa = 0, pb = 0;
  const bool first_a = head(ia, na, 0, 0) < head(ib, nb, 0, 1);
  __m256i kept = first_a ? keys8(ia, na, 0, 0) : keys8(ib, nb, 0, 1);
  (first_a ? pa : pb) = 8;
  for (size_t s = 1; s < blocks; ++s) {
    const bool from_a = head(ia, na, pa, 0) < head(ib, nb, pb, 1);
    const __m256i next = keys8(from_a ? ia : ib, from_a ? na : nb, from_a ? pa : pb, from_a ? 0u : 1u);
    pa += from_a ? 8 : 0;
    pb += from_a ? 0 : 8;
    const __m256i r = _mm256_permutevar8x32_epi32(kept, reverse);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (s - 1) * 8), bitonic_sort8(_mm256_min_epu32(next, r)));
    kept = bitonic_sort8(_mm256_max_epu32(next, r));
  }
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + (blocks - 1) * 8), kept);
}

GTOPK_AVX2 inline __m256i mag_keys(__m256i v) {  // mag_key<float> of 8 values' bits
  return _mm256_min_epu32(_mm256_and_si256(v, _mm256_set1_epi32(0x7fffffff)), _mm256_set1_epi32(0x7f800001));
}

// merge_avx512.h's build_union, 8 slots a step.
template <bool kTags>
GTOPK_AVX2 size_t build_union(const uint32_t* order, size_t na, size_t nb, const float* va, const float* vb,
                              const uint32_t* ta, const uint32_t* tb, int32_t* ui, float* uv, uint32_t* ut) {
  const size_t n = na + nb;
  const __m256i one = _mm256_set1_epi32(1), none = _mm256_set1_epi32(-1);
  const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
  const __m256i quiet_nan = _mm256_set1_epi32(0x7fc00000);
  size_t p = 0, q = 0, shared = 0;
  for (size_t o = 0; o < n; o += 8) {
    const uint32_t live = n - o >= 8 ? 0xffu : (1u << (n - o)) - 1u;
    const __m256i key = load8(order + o);
    const __m256i idx = _mm256_srli_epi32(key, 1);
    const uint32_t side_b = mask_of(_mm256_cmpeq_epi32(_mm256_and_si256(key, one), one));
    const uint32_t dup_next = mask_of(_mm256_cmpeq_epi32(idx, _mm256_srli_epi32(load8(order + o + 1), 1)));
    const uint32_t hole = mask_of(_mm256_cmpeq_epi32(idx, _mm256_srli_epi32(load8(order + o - 1), 1)));
    const uint32_t ma = ~side_b & live, mb = ((side_b & ~hole) | dup_next) & live;
    const uint32_t real = ma | mb, both = ma & mb;
    const __m256i fa = expand(ma, va + p, na - p), fb = expand(mb, vb + q, nb - q);
    __m256i v = _mm256_blendv_epi8(fa, fb, lanes_of(mb & ~ma));
    if (both) {  // merge_sum: a NaN sum becomes the positive quiet NaN
      __m256i sum = _mm256_castps_si256(_mm256_add_ps(_mm256_castsi256_ps(fa), _mm256_castsi256_ps(fb)));
      sum = _mm256_blendv_epi8(sum, quiet_nan, _mm256_cmpgt_epi32(_mm256_and_si256(sum, abs_mask), inf));
      v = _mm256_blendv_epi8(v, sum, lanes_of(both));
    }
    // (ui, uv, ut have 8 slots of slack past n: whole stores)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(ui + o), _mm256_blendv_epi8(none, idx, lanes_of(real)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(uv + o), v);
    if constexpr (kTags)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(ut + o),
                          _mm256_or_si256(expand(ma, ta + p, na - p), expand(mb, tb + q, nb - q)));
    shared += _mm_popcnt_u32(both);
    p += _mm_popcnt_u32(ma);
    q += _mm_popcnt_u32(mb);
  }
  return shared;
}

using avx512::Candidates;

// The keys of the union's real entries (n slots) inside [lo, hi] to keys, and how many are above hi.
GTOPK_AVX2 inline Candidates candidates(const int32_t* ui, const float* uv, size_t n, uint32_t lo, uint32_t hi,
                                        uint32_t* keys) {
  const __m256i vlo = _mm256_set1_epi32(static_cast<int>(lo)), vhi = _mm256_set1_epi32(static_cast<int>(hi));
  size_t c = 0, above = 0;
  for (size_t o = 0; o < n; o += 8) {
    const __m256i live = first_n(static_cast<uint32_t>(std::min<size_t>(n - o, 8)));
    const __m256i idx = load8(ui + o);  // (8 slots of slack past n)
    const uint32_t real = mask_of(_mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_setzero_si256(), idx), live));
    const __m256i mag = mag_keys(load8(uv + o));
    const uint32_t not_below = mask_of(_mm256_cmpeq_epi32(_mm256_max_epu32(mag, vlo), mag));
    const uint32_t not_above = mask_of(_mm256_cmpeq_epi32(_mm256_min_epu32(mag, vhi), mag));
    const uint32_t in = real & not_below & not_above;
    compress(keys + c, in, mag, 8);  // (keys has 8 slots of slack)
    c += _mm_popcnt_u32(in);
    above += _mm_popcnt_u32(real & ~not_above);
  }
  return Candidates{c, above};
}

// The entries with keys above kth.key and the first kth.ties equal to it, in slot order, to out
// (at most cap); returns how many.
template <bool kTags>
GTOPK_AVX2 size_t write_top(const int32_t* ui, const float* uv, const uint32_t* ut, size_t n, KthKey<uint32_t> kth,
                            size_t cap, int32_t* out_idx, float* out_val, uint32_t* out_tag) {
  const __m256i t = _mm256_set1_epi32(static_cast<int>(kth.key));  // keys are below 2^31: signed compares
  uint64_t ties = kth.ties;
  size_t w = 0;
  for (size_t o = 0; o < n; o += 8) {
    const __m256i live = first_n(static_cast<uint32_t>(std::min<size_t>(n - o, 8)));
    const __m256i idx = load8(ui + o);  // (8 slots of slack past n)
    const __m256i v = load8(uv + o);
    const __m256i real = _mm256_andnot_si256(_mm256_cmpgt_epi32(_mm256_setzero_si256(), idx), live);
    const __m256i mag = mag_keys(v);
    uint32_t keep = mask_of(_mm256_and_si256(real, _mm256_cmpgt_epi32(mag, t)));
    uint32_t eq = mask_of(_mm256_and_si256(real, _mm256_cmpeq_epi32(mag, t)));
    for (; eq && ties; --ties) {  // the lowest-index ties, as many as the top k still takes
      keep |= eq & (0u - eq);
      eq &= eq - 1;
    }
    const size_t kept = _mm_popcnt_u32(keep);
    if (w + kept > cap) throw std::logic_error("gtopk: merge kept more than k entries");
    compress(out_idx + w, keep, idx, cap - w);
    compress(out_val + w, keep, v, cap - w);
    if constexpr (kTags) compress(out_tag + w, keep, load8(ut + o), cap - w);
    w += kept;
  }
  return w;
}

template <bool kTags>
inline constexpr avx512::Kernels<kTags> kKernels{8, &merge_order, &build_union<kTags>, &candidates,
                                                 &write_top<kTags>};

// merge_topk's contract (merge.h) for float32 / int32 inputs with indices in [0, 2^31 - 1).
template <bool kTags>
size_t merge_topk(const int32_t* ia, const float* va, const uint32_t* ta, size_t na, const int32_t* ib,
                  const float* vb, const uint32_t* tb, size_t nb, size_t k, int32_t* out_idx, float* out_val,
                  uint32_t* out_tag) {
  return avx512::merge_with<kTags>(kKernels<kTags>, ia, va, ta, na, ib, vb, tb, nb, k, out_idx, out_val, out_tag);
}

// avx512::add_record_errors, 8 keys a step: r[i] += err[j] for every index i of `marked`
// (ascending), j its position in `rec` (ascending); false if some marked index is not in rec.
GTOPK_AVX2 inline bool add_record_errors(const int32_t* marked, size_t nm, const int32_t* rec, const float* err,
                                         size_t nr, float* r) {
  thread_local std::vector<uint32_t> order;
  const size_t n = nm + nr;
  const uint32_t* keys = avx512::merged_order(order, 8, &merge_order, rec, nr, marked, nm);
  const __m256i one = _mm256_set1_epi32(1), iota = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i previous_lane = _mm256_setr_epi32(7, 0, 1, 2, 3, 4, 5, 6);
  int32_t last = -1;  // the position in rec of the last rec key seen (if it was lane 7)
  size_t p = 0;
  bool lost = false;
  alignas(32) int32_t at_i[8], at_j[8];
  for (size_t o = 0; o < n; o += 8) {
    const uint32_t live = n - o >= 8 ? 0xffu : (1u << (n - o)) - 1u;
    const __m256i key = load8(keys + o);
    const __m256i idx = _mm256_srli_epi32(key, 1);
    const uint32_t side_b = mask_of(_mm256_cmpeq_epi32(_mm256_and_si256(key, one), one)) & live;
    const uint32_t side_a = ~side_b & live;
    const uint32_t match = mask_of(_mm256_cmpeq_epi32(idx, _mm256_srli_epi32(load8(keys + o - 1), 1))) & side_b;
    lost |= match != side_b;
    // each rec key's position in rec (p + its rank among this block's rec keys); lane l of
    // partner: lane l - 1's (lane 0: the previous block's last)
    const __m256i pos = _mm256_permutevar8x32_epi32(_mm256_add_epi32(iota, _mm256_set1_epi32(static_cast<int>(p))),
                                                    table(kTables.expand[side_a]));
    const __m256i partner =
        _mm256_blend_epi32(_mm256_permutevar8x32_epi32(pos, previous_lane), _mm256_set1_epi32(last), 0x01);
    compress(at_i, match, idx, 8);
    compress(at_j, match, partner, 8);
    for (uint32_t t = 0, c = _mm_popcnt_u32(match); t < c; ++t) r[at_i[t]] = r[at_i[t]] + err[at_j[t]];
    p += _mm_popcnt_u32(side_a);
    last = _mm256_extract_epi32(pos, 7);
  }
  return !lost;
}

// This form's kernels, for merge.h's with_simd (the one ISA dispatch).
struct Isa {
  template <bool kTags>
  static constexpr auto merge_topk = &avx2::merge_topk<kTags>;
  static constexpr auto add_record_errors = &avx2::add_record_errors;
};

}  // namespace gtopk::avx2
#endif
