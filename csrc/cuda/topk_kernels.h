// The GPU selection, merge and scatter: kernels and the host code that sequences them.
//
// Written once against simt.h (the SIMT primitives) and a Backend (memory, launches,
// copies), so that kernels.cu runs this code on a GPU and csrc/emu runs the very same
// code on the CPU's SIMT emulator for the tests. Semantics are the CPU path's exactly:
// top-k by magnitude key, NaN above inf, ties to the lower index, indices ascending;
// nothing that decides a value depends on the order of atomics or of blocks, so results
// are deterministic and equal to the CPU's bit for bit.
//
// Selection of k of m (k < m), m >= 16 * 65536 and k small enough for a sample:
//   1. SampleThreshold (1 block): the rank-th largest key of the same 1024 x 64 sample
//      the CPU uses (select_plan.h) by block radix select; t stays on the device.
//   2. FilterTiles (m / 4096 blocks): one pass; each block keeps, in index order, the
//      indices with key >= t of its 4096-element tile (ballot + popc per warp, a scan of
//      the 128 warp counts: warp-aggregated, order-preserving compaction). The fused
//      error-feedback form reads x and r, writes r = r + x and ranks that, in the same pass.
//   3. ScanTiles (1 block) + GatherCandidates (a warp per tile): the candidates packed in
//      index order with their values; abandoned when more than the plan's cap.
//   4. FinishTopk (1 block): radix select of the k-th key on the candidates only, then
//      keys above it and the first (lowest-index) ties, written in index order.
//   One status word comes back to the host; if the sample misled (fewer than k or more
//   than cap candidates), an exact threshold from a 2048-bucket histogram of all keys
//   replaces it and steps 2-4 run again (also the path for short inputs). Candidate
//   sets too large for one block (inputs whose k-th key most elements share: constant,
//   fewer than k nonzeros) finish on the whole GPU instead (finish_many: a grid-wide
//   radix select, then an ordered write by tiles).
// Merge (1 block): merge-path union of the two index-ascending sets (sums at equal
// indices), then FinishTopk's radix select and ordered write on the union.
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <stdexcept>

#include "../select_plan.h"
#include "../numeric.h"
#include "simt.h"

namespace gtopk_cuda {

using gtopk::KthKey;
using gtopk::key_of;
using gtopk::mag_key;
using gtopk::merge_sum;
using gtopk::Num;
using gtopk::raw_key;
using u64 = unsigned long long;

constexpr unsigned kTileThreads = 256;  // FilterTiles / GatherCandidates blocks: 8 warps
constexpr unsigned kTileItems = 16;     // elements per thread in a tile
constexpr size_t kTile = size_t{kTileThreads} * kTileItems;
constexpr unsigned kTileWarps = kTileThreads / simt::kWarp;
constexpr unsigned kBlockThreads = 1024;  // the single-block kernels
constexpr unsigned kStreamThreads = 256;  // grid-stride kernels
using gtopk::kRadixBits;                  // the radix selects' digits: select_plan.h
// Loads a thread issues before using any of them in the one-block loops: a single block
// has too few warps to hide memory latency one load at a time.
constexpr unsigned kBatch = 8;
constexpr unsigned kRadixBuckets = 1u << kRadixBits;

// What a selection or merge reports back to the host in State::status.
enum KernelStatus : int { kDone = 0, kSampleMisled = 1, kFirstNotAscending = 2, kSecondNotAscending = 3 };

// Device-side state of one selection or merge; `status` comes back to the host.
template <class U>
struct State {
  U t;           // candidate threshold (a magnitude key)
  u64 total;     // candidates found (selection) / entries written (merge)
  u64 hist_count;  // elements >= t when t came from the histogram
  int status;    // a KernelStatus
};

// ---- block-level routines (every thread of the block calls them) --------------------

// Exclusive prefix sum of v over the block's threads, in thread order; *total gets the sum.
GTOPK_DEV u64 block_exclusive_scan(u64 v, u64* total) {
  struct ScanShared {
    u64 warp_sum[32];
  };
  ScanShared& sh = simt::shared<ScanShared>();
  const unsigned tid = simt::thread_idx(), lane = tid % simt::kWarp, warp = tid / simt::kWarp;
  const unsigned nwarps = simt::block_dim() / simt::kWarp;
  u64 incl = v;
  for (unsigned d = 1; d < simt::kWarp; d *= 2) {
    const u64 y = simt::shfl_up(incl, d);
    if (lane >= d) incl += y;
  }
  if (lane == simt::kWarp - 1) sh.warp_sum[warp] = incl;
  simt::sync();
  if (warp == 0) {
    u64 s = lane < nwarps ? sh.warp_sum[lane] : 0;
    for (unsigned d = 1; d < simt::kWarp; d *= 2) {
      const u64 y = simt::shfl_up(s, d);
      if (lane >= d) s += y;
    }
    sh.warp_sum[lane] = s;  // inclusive over warps
  }
  simt::sync();
  const u64 base = warp > 0 ? sh.warp_sum[warp - 1] : 0;
  *total = sh.warp_sum[nwarps - 1];
  simt::sync();  // warp_sum may be reused by the next call
  return base + incl - v;
}


// Count one key in a shared histogram (bucket kRadixBuckets: none). All 32 lanes call it
// together; lanes with the same bucket combine (match_any) into one atomic, which matters
// because the top digit of near-equal magnitudes falls in a handful of buckets.
template <class C>
GTOPK_DEV void warp_count(C* hist, unsigned bucket) {
  const unsigned peers = simt::match_any(bucket);
  if (bucket < kRadixBuckets && simt::lowest_lane(peers) == simt::thread_idx() % simt::kWarp)
    simt::atomic_add(&hist[bucket], static_cast<C>(simt::popc(peers)));
}

// The bucket of key for digit dg, or kRadixBuckets when the key is not in play.
template <class U>
GTOPK_DEV unsigned radix_bucket(U key, bool valid, gtopk::RadixDigit dg, const gtopk::RadixState<U>& st) {
  return valid && (key & st.mask) == st.prefix ? static_cast<unsigned>((key >> dg.shift) & dg.mask) : kRadixBuckets;
}

// k-th largest magnitude key of vals[0..n) (1 <= k <= n): the radix select of select_plan.h
// (radix_digit / radix_pick, as the CPU's radix.h) by one block.
// C counts a bucket: 32-bit shared atomics are the fast ones, so unsigned unless n >= 2^32.
template <class T, class C>
GTOPK_DEV KthKey<key_of<T>> block_kth_counted(const T* vals, u64 n, u64 k) {
  using U = key_of<T>;
  struct KthShared {
    C hist[kRadixBuckets];
    gtopk::RadixState<U> st;
  };
  KthShared& sh = simt::shared<KthShared>();
  const unsigned tid = simt::thread_idx(), nt = simt::block_dim(), lane = tid % simt::kWarp;
  if (tid == 0) sh.st = gtopk::RadixState<U>{0, 0, k};
  for (int d = 0;; ++d) {
    const gtopk::RadixDigit dg = gtopk::radix_digit(Num<T>::kBits, d);
    for (unsigned b = tid; b < kRadixBuckets; b += nt) sh.hist[b] = 0;
    simt::sync();
    const gtopk::RadixState<U> st = sh.st;
    // whole warps go round the loop together (the bound is the warp's first lane's)
    for (u64 base = tid - lane; base < n; base += u64{nt} * kBatch) {
      U keys[kBatch];
      GTOPK_UNROLL
      for (unsigned q = 0; q < kBatch; ++q) {
        const u64 j = base + lane + u64{q} * nt;
        keys[q] = j < n ? mag_key<T>(vals[j]) : U{0};
      }
      GTOPK_UNROLL
      for (unsigned q = 0; q < kBatch; ++q)
        warp_count(sh.hist, radix_bucket(keys[q], base + lane + u64{q} * nt < n, dg, st));
    }
    simt::sync();
    if (tid == 0) gtopk::radix_pick(sh.hist, dg, sh.st);
    simt::sync();
    if (dg.last) break;
  }
  const KthKey<U> out = sh.st.kth();
  simt::sync();  // sh may be reused by the next call
  return out;
}

template <class T>
GTOPK_DEV KthKey<key_of<T>> block_kth(const T* vals, u64 n, u64 k) {
  return n >> 32 == 0 ? block_kth_counted<T, unsigned>(vals, n, k) : block_kth_counted<T, u64>(vals, n, k);
}

// Top k of (idx, val)[0..n), n > k, given in ascending index order: keys above the k-th,
// then the lowest-index ties, written to out in index order.
template <class T, class I>
GTOPK_DEV void block_finish(const I* idx, const T* val, u64 n, u64 k, I* out_idx, T* out_val) {
  using U = key_of<T>;
  const KthKey<U> kth = block_kth<T>(val, n, k);
  const unsigned tid = simt::thread_idx(), nt = simt::block_dim();
  const u64 chunk = (n + nt - 1) / nt;
  const u64 lo = std::min<u64>(n, tid * chunk), hi = std::min<u64>(n, lo + chunk);
  u64 greater = 0, equal = 0;
  for (u64 j0 = lo; j0 < hi; j0 += kBatch) {
    U keys[kBatch];
    GTOPK_UNROLL
    for (unsigned q = 0; q < kBatch; ++q) keys[q] = j0 + q < hi ? mag_key<T>(val[j0 + q]) : U{0};
    GTOPK_UNROLL
    for (unsigned q = 0; q < kBatch; ++q) {
      const bool in = j0 + q < hi;
      greater += in && keys[q] > kth.key;
      equal += in && keys[q] == kth.key;
    }
  }
  u64 equal_total = 0, written_total = 0;
  const u64 equal_before = block_exclusive_scan(equal, &equal_total);
  const u64 take = equal_before >= kth.ties ? 0 : std::min<u64>(equal, kth.ties - equal_before);
  u64 pos = block_exclusive_scan(greater + take, &written_total);
  u64 taken = 0;
  for (u64 j0 = lo; j0 < hi; j0 += kBatch) {
    T v[kBatch];
    I at[kBatch];
    GTOPK_UNROLL
    for (unsigned q = 0; q < kBatch; ++q) {
      if (j0 + q < hi) {
        v[q] = val[j0 + q];
        at[q] = idx[j0 + q];
      }
    }
    GTOPK_UNROLL
    for (unsigned q = 0; q < kBatch; ++q) {
      if (j0 + q >= hi) break;
      const U key = mag_key<T>(v[q]);
      const bool tie = key == kth.key;
      if (key > kth.key || (tie && taken < take)) {
        taken += tie;
        out_idx[pos] = at[q];
        out_val[pos] = v[q];
        ++pos;
      }
    }
  }
}

// How many of a's entries come first among the first d of the merged order (a first on ties).
template <class I>
GTOPK_DEV u64 merge_path(const I* a, u64 na, const I* b, u64 nb, u64 d) {
  u64 lo = d > nb ? d - nb : 0, hi = d < na ? d : na;
  while (lo < hi) {
    const u64 mid = (lo + hi) / 2;
    if (a[mid] <= b[d - mid - 1]) {
      lo = mid + 1;
    } else {
      hi = mid;
    }
  }
  return lo;
}

// Exclusive scan, in place, of a tile's kTileItems x kTileWarps per-(item, warp) counts,
// in index order (item-major); returns the tile's total. Every thread of a kTileThreads
// block calls it after writing its counts (the barriers are inside).
GTOPK_DEV unsigned tile_exclusive_scan(unsigned* counts) {
  struct TileTotal {
    unsigned total;
  };
  TileTotal& sh = simt::shared<TileTotal>();
  const unsigned lane = simt::thread_idx() % simt::kWarp, warp = simt::thread_idx() / simt::kWarp;
  simt::sync();
  if (warp == 0) {  // 128 counts, 4 per lane
    constexpr unsigned kPer = kTileItems * kTileWarps / simt::kWarp;
    unsigned c[kPer], sum = 0;
    for (unsigned q = 0; q < kPer; ++q) sum += c[q] = counts[lane * kPer + q];
    u64 incl = sum;
    for (unsigned d = 1; d < simt::kWarp; d *= 2) {
      const u64 y = simt::shfl_up(incl, d);
      if (lane >= d) incl += y;
    }
    unsigned run_sum = static_cast<unsigned>(incl) - sum;
    for (unsigned q = 0; q < kPer; ++q) {
      counts[lane * kPer + q] = run_sum;
      run_sum += c[q];
    }
    if (lane == simt::kWarp - 1) sh.total = run_sum;
  }
  simt::sync();
  return sh.total;
}

// ---- kernels: structs whose static run() is one thread's body ------------------------
// kMaxThreads: the block size it is launched with (the launch bound of its CUDA kernel).

template <class T, class I>
struct AllOfIt {  // k >= m: every index (and in the fused form r = r + x first)
  static constexpr unsigned kMaxThreads = kStreamThreads;
  GTOPK_DEV static void run(const T* x, T* r, u64 m, I* out_idx, T* out_val) {
    for (u64 i = simt::block_idx() * u64{simt::block_dim()} + simt::thread_idx(); i < m;
         i += u64{simt::grid_dim()} * simt::block_dim()) {
      T v = x[i];
      if (r != nullptr) {
        v = Num<T>::add(r[i], v);
        r[i] = v;
      }
      out_idx[i] = static_cast<I>(i);
      out_val[i] = v;
    }
  }
};

template <class T>
struct AddInPlace {  // r = r + x
  static constexpr unsigned kMaxThreads = kStreamThreads;
  GTOPK_DEV static void run(const T* x, T* r, u64 m) {
    for (u64 i = simt::block_idx() * u64{simt::block_dim()} + simt::thread_idx(); i < m;
         i += u64{simt::grid_dim()} * simt::block_dim())
      r[i] = Num<T>::add(r[i], x[i]);
  }
};

template <class T>
struct SampleThreshold {  // 1 block of kBlockThreads; r != nullptr: rank r + x (r not written)
  static constexpr unsigned kMaxThreads = kBlockThreads;
  GTOPK_DEV static void run(const T* x, const T* r, u64 m, u64 rank, T* sample, State<key_of<T>>* st) {
    const unsigned nt = simt::block_dim();
    for (u64 base = simt::thread_idx(); base < gtopk::kSampleSize; base += u64{nt} * kBatch) {
      T v[kBatch];
      GTOPK_UNROLL
      for (unsigned q = 0; q < kBatch; ++q) {
        const u64 j = base + u64{q} * nt;
        if (j >= gtopk::kSampleSize) break;
        const u64 i = gtopk::sample_block_start(m, j / gtopk::kSampleBlockLen) + j % gtopk::kSampleBlockLen;
        v[q] = r != nullptr ? Num<T>::add(r[i], x[i]) : x[i];
      }
      GTOPK_UNROLL
      for (unsigned q = 0; q < kBatch; ++q)
        if (base + u64{q} * nt < gtopk::kSampleSize) sample[base + u64{q} * nt] = v[q];
    }
    simt::sync();
    const KthKey<key_of<T>> kth = block_kth<T>(sample, gtopk::kSampleSize, rank);
    if (simt::thread_idx() == 0) st->t = kth.key;
  }
};

template <class T, class I, bool kFused>
struct FilterTiles {  // m / kTile blocks of kTileThreads
  static constexpr unsigned kMaxThreads = kTileThreads;
  GTOPK_DEV static void run(const T* x, T* r, u64 m, const State<key_of<T>>* st, I* tile_cand, unsigned* tile_count) {
    struct FilterShared {
      unsigned offset[kTileItems * kTileWarps];  // (item, warp) in index order
    };
    FilterShared& sh = simt::shared<FilterShared>();
    const key_of<T> t = st->t;
    const unsigned tid = simt::thread_idx(), lane = tid % simt::kWarp, warp = tid / simt::kWarp;
    const u64 base = u64{simt::block_idx()} * kTile;
    T v[kTileItems];
    for (unsigned j = 0; j < kTileItems; ++j) {  // all loads first: memory-level parallelism
      const u64 i = base + u64{j} * kTileThreads + tid;
      if (i < m) v[j] = kFused ? Num<T>::add(r[i], x[i]) : x[i];
    }
    unsigned ballots[kTileItems];
    for (unsigned j = 0; j < kTileItems; ++j) {
      const u64 i = base + u64{j} * kTileThreads + tid;
      bool keep = false;
      if (i < m) {
        if (kFused) r[i] = v[j];
        keep = raw_key<T>(v[j]) >= t;  // exact for any t <= the NaN key
      }
      ballots[j] = simt::ballot(keep);
      if (lane == 0) sh.offset[j * kTileWarps + warp] = static_cast<unsigned>(simt::popc(ballots[j]));
    }
    const unsigned total = tile_exclusive_scan(sh.offset);
    const unsigned below = (1u << lane) - 1u;
    for (unsigned j = 0; j < kTileItems; ++j) {
      if ((ballots[j] >> lane) & 1u) {
        const unsigned o = sh.offset[j * kTileWarps + warp] + static_cast<unsigned>(simt::popc(ballots[j] & below));
        tile_cand[base + o] = static_cast<I>(base + u64{j} * kTileThreads + tid);
      }
    }
    if (tid == 0) tile_count[simt::block_idx()] = total;
  }
};

template <class U>
struct ScanTiles {  // 1 block of kBlockThreads: tile_off = exclusive scan of tile_count
  static constexpr unsigned kMaxThreads = kBlockThreads;
  GTOPK_DEV static void run(const unsigned* tile_count, u64 ntiles, u64* tile_off, State<U>* st) {
    const unsigned tid = simt::thread_idx(), nt = simt::block_dim();
    const u64 chunk = (ntiles + nt - 1) / nt;
    const u64 lo = std::min<u64>(ntiles, tid * chunk), hi = std::min<u64>(ntiles, lo + chunk);
    u64 sum = 0;
    for (u64 b = lo; b < hi; ++b) sum += tile_count[b];
    u64 total = 0;
    u64 off = block_exclusive_scan(sum, &total);
    for (u64 b = lo; b < hi; ++b) {
      tile_off[b] = off;
      off += tile_count[b];
    }
    if (tid == 0) st->total = total;
  }
};

template <class T, class I>
struct GatherCandidates {  // a warp per tile, kTileThreads per block; nothing when > cap
  static constexpr unsigned kMaxThreads = kTileThreads;
  GTOPK_DEV static void run(const I* tile_cand, const unsigned* tile_count, const u64* tile_off, u64 ntiles,
                            const T* a, u64 cap, const State<key_of<T>>* st, I* cand_idx, T* cand_val) {
    if (st->total > cap) return;
    const u64 tile = u64{simt::block_idx()} * kTileWarps + simt::thread_idx() / simt::kWarp;
    if (tile >= ntiles) return;
    const u64 off = tile_off[tile];
    for (unsigned q = simt::thread_idx() % simt::kWarp; q < tile_count[tile]; q += simt::kWarp) {
      const I i = tile_cand[tile * kTile + q];
      cand_idx[off + q] = i;
      cand_val[off + q] = a[i];
    }
  }
};

template <class T, class I>
struct FinishTopk {  // 1 block of kBlockThreads
  static constexpr unsigned kMaxThreads = kBlockThreads;
  GTOPK_DEV static void run(const I* cand_idx, const T* cand_val, u64 k, u64 cap, State<key_of<T>>* st, I* out_idx,
                            T* out_val) {
    const u64 n = st->total;
    if (n < k || n > cap) {
      if (simt::thread_idx() == 0) st->status = kSampleMisled;
      return;
    }
    block_finish<T, I>(cand_idx, cand_val, n, k, out_idx, out_val);
    if (simt::thread_idx() == 0) st->status = kDone;
  }
};

template <class T>
struct HistogramThreshold {  // thread 0 of 1 warp: t = lower edge of the top-digit bucket holding the k-th key
  static constexpr unsigned kMaxThreads = simt::kWarp;
  GTOPK_DEV static void run(const u64* hist, u64 k, State<key_of<T>>* st) {
    if (simt::thread_idx() != 0) return;
    const int shift = gtopk::radix_digit(Num<T>::kBits, 0).shift;
    size_t above = 0;
    const size_t b = gtopk::histogram_bucket(hist, kRadixBuckets, static_cast<size_t>(k), &above);
    st->t = static_cast<key_of<T>>(static_cast<key_of<T>>(b) << shift);
    st->hist_count = above + hist[b];
  }
};

template <class T, class I>
struct MergeTopk {  // 1 block of kBlockThreads; union scratch ui/uv of na + nb entries
  static constexpr unsigned kMaxThreads = kBlockThreads;
  GTOPK_DEV static void run(const I* ia, const T* va, u64 na, const I* ib, const T* vb, u64 nb, u64 k, I* ui, T* uv,
                            I* out_idx, T* out_val, State<key_of<T>>* st) {
    const unsigned tid = simt::thread_idx(), nt = simt::block_dim();
    bool bad_a = false, bad_b = false;
    for (u64 j = tid; j + 1 < na; j += nt) bad_a |= !(ia[j] < ia[j + 1]);
    for (u64 j = tid; j + 1 < nb; j += nt) bad_b |= !(ib[j] < ib[j + 1]);
    bad_a = simt::sync_or(bad_a);
    bad_b = simt::sync_or(bad_b);
    if (bad_a || bad_b) {
      if (tid == 0) st->status = bad_a ? kFirstNotAscending : kSecondNotAscending;
      return;
    }
    const u64 n = na + nb, chunk = (n + nt - 1) / nt;
    const u64 d0 = std::min<u64>(n, tid * chunk), d1 = std::min<u64>(n, d0 + chunk);
    const u64 i0 = merge_path<I>(ia, na, ib, nb, d0);
    u64 count = 0;
    {
      u64 i = i0, j = d0 - i0;
      for (u64 d = d0; d < d1; ++d) {
        if (i < na && (j >= nb || ia[i] <= ib[j])) {
          ++count, ++i;
        } else {
          count += !(i > 0 && ia[i - 1] == ib[j]);  // equal to an a entry: summed there
          ++j;
        }
      }
    }
    u64 nu = 0;
    u64 pos = block_exclusive_scan(count, &nu);
    const bool direct = nu <= k;
    I* wi = direct ? out_idx : ui;
    T* wv = direct ? out_val : uv;
    {
      u64 i = i0, j = d0 - i0;
      for (u64 d = d0; d < d1; ++d) {
        if (i < na && (j >= nb || ia[i] <= ib[j])) {
          wi[pos] = ia[i];
          wv[pos] = j < nb && ib[j] == ia[i] ? merge_sum<T>(va[i], vb[j]) : va[i];
          ++pos, ++i;
        } else {
          if (!(i > 0 && ia[i - 1] == ib[j])) {
            wi[pos] = ib[j];
            wv[pos] = vb[j];
            ++pos;
          }
          ++j;
        }
      }
    }
    if (!direct) {
      simt::sync();  // the union is written (global memory, visible to the block after the barrier)
      block_finish<T, I>(ui, uv, nu, k, out_idx, out_val);
    }
    if (tid == 0) {
      st->total = direct ? nu : k;
      st->status = kDone;
    }
  }
};

// ---- the top k of many candidates: the same steps spread over the whole GPU ----------
// For candidate sets too large for one block (inputs whose k-th key most elements share):
// radix select with a grid-wide histogram per digit, then an ordered write by tiles.

template <class U>
struct KthStart {  // 1 warp: nothing fixed yet, want k
  static constexpr unsigned kMaxThreads = simt::kWarp;
  GTOPK_DEV static void run(gtopk::RadixState<U>* rs, u64 k) {
    if (simt::thread_idx() == 0) *rs = gtopk::RadixState<U>{0, 0, k};
  }
};

template <class T>
struct RadixHistogram {  // grid-stride; adds digit dg of the keys in play (*rs) to hist
  static constexpr unsigned kMaxThreads = kStreamThreads;
  GTOPK_DEV static void run(const T* vals, u64 n, const gtopk::RadixState<key_of<T>>* rs, gtopk::RadixDigit dg,
                            u64* hist) {
    struct RadixShared {
      unsigned h[kRadixBuckets];
    };
    RadixShared& sh = simt::shared<RadixShared>();
    const unsigned tid = simt::thread_idx(), nt = simt::block_dim(), lane = tid % simt::kWarp;
    for (unsigned b = tid; b < kRadixBuckets; b += nt) sh.h[b] = 0;
    simt::sync();
    const gtopk::RadixState<key_of<T>> st = *rs;
    const u64 stride = u64{simt::grid_dim()} * nt;
    for (u64 base = simt::block_idx() * u64{nt} + tid - lane; base < n; base += stride) {  // whole warps
      const u64 j = base + lane;
      warp_count(sh.h, radix_bucket(j < n ? mag_key<T>(vals[j]) : key_of<T>{0}, j < n, dg, st));
    }
    simt::sync();
    for (unsigned b = tid; b < kRadixBuckets; b += nt)
      if (sh.h[b] != 0) simt::atomic_add(&hist[b], u64{sh.h[b]});
  }
};

template <class U>
struct RadixPick {  // 1 warp: fix digit dg (radix_pick), clear the histogram
  static constexpr unsigned kMaxThreads = simt::kWarp;
  GTOPK_DEV static void run(u64* hist, gtopk::RadixDigit dg, gtopk::RadixState<U>* rs) {
    if (simt::thread_idx() == 0) gtopk::radix_pick(hist, dg, *rs);
    simt::sync();
    for (unsigned b = simt::thread_idx(); b < kRadixBuckets; b += simt::block_dim()) hist[b] = 0;
  }
};

template <class T>
struct TileTies {  // a block per tile of candidates: how many keys above / equal to the k-th
  static constexpr unsigned kMaxThreads = kTileThreads;
  GTOPK_DEV static void run(const T* val, u64 n, const gtopk::RadixState<key_of<T>>* ks, unsigned* tile_greater,
                            unsigned* tile_equal) {
    struct TiesShared {
      unsigned greater, equal;
    };
    TiesShared& sh = simt::shared<TiesShared>();
    const unsigned tid = simt::thread_idx();
    const key_of<T> kth = ks->prefix;
    if (tid == 0) sh.greater = sh.equal = 0;
    simt::sync();
    const u64 base = u64{simt::block_idx()} * kTile;
    unsigned greater = 0, equal = 0;
    for (unsigned j = 0; j < kTileItems; ++j) {
      const u64 i = base + u64{j} * kTileThreads + tid;
      if (i < n) {
        const key_of<T> key = mag_key<T>(val[i]);
        greater += key > kth;
        equal += key == kth;
      }
    }
    simt::atomic_add(&sh.greater, greater);  // counts: any order gives the same sums
    simt::atomic_add(&sh.equal, equal);
    simt::sync();
    if (tid == 0) {
      tile_greater[simt::block_idx()] = sh.greater;
      tile_equal[simt::block_idx()] = sh.equal;
    }
  }
};

template <class U>
struct ScanTies {  // 1 block: ties before each tile, and where each tile's output starts
  static constexpr unsigned kMaxThreads = kBlockThreads;
  GTOPK_DEV static void run(const unsigned* tile_greater, const unsigned* tile_equal, u64 ntiles,
                            const gtopk::RadixState<U>* ks, u64* eq_before, u64* out_off) {
    const unsigned tid = simt::thread_idx(), nt = simt::block_dim();
    const u64 want = ks->want, chunk = (ntiles + nt - 1) / nt;
    const u64 lo = std::min<u64>(ntiles, tid * chunk), hi = std::min<u64>(ntiles, lo + chunk);
    u64 equal = 0, total = 0;
    for (u64 t = lo; t < hi; ++t) equal += tile_equal[t];
    u64 ties = block_exclusive_scan(equal, &total);
    u64 written = 0;
    for (u64 t = lo; t < hi; ++t) {
      const u64 take = ties >= want ? 0 : std::min<u64>(tile_equal[t], want - ties);
      eq_before[t] = ties;
      out_off[t] = tile_greater[t] + take;  // this tile's output count, for now
      written += out_off[t];
      ties += tile_equal[t];
    }
    u64 off = block_exclusive_scan(written, &total);
    for (u64 t = lo; t < hi; ++t) {
      const u64 count = out_off[t];
      out_off[t] = off;
      off += count;
    }
  }
};

template <class T, class I>
struct TileWrite {  // a block per tile: keys above the k-th and the first ties, in index order
  static constexpr unsigned kMaxThreads = kTileThreads;
  GTOPK_DEV static void run(const I* idx, const T* val, u64 n, const gtopk::RadixState<key_of<T>>* ks, const u64* eq_before,
                            const u64* out_off, I* out_idx, T* out_val) {
    struct WriteShared {
      unsigned ties[kTileItems * kTileWarps];
      unsigned kept[kTileItems * kTileWarps];
    };
    WriteShared& sh = simt::shared<WriteShared>();
    const unsigned tid = simt::thread_idx(), lane = tid % simt::kWarp, warp = tid / simt::kWarp;
    const unsigned below = (1u << lane) - 1u;
    const key_of<T> kth = ks->prefix;
    const u64 want = ks->want, tile = simt::block_idx(), base = tile * kTile;
    T v[kTileItems];
    unsigned tie_ballot[kTileItems], keep_ballot[kTileItems];
    for (unsigned j = 0; j < kTileItems; ++j) {
      const u64 i = base + u64{j} * kTileThreads + tid;
      if (i < n) v[j] = val[i];
    }
    for (unsigned j = 0; j < kTileItems; ++j) {
      const u64 i = base + u64{j} * kTileThreads + tid;
      tie_ballot[j] = simt::ballot(i < n && mag_key<T>(v[j]) == kth);
      if (lane == 0) sh.ties[j * kTileWarps + warp] = static_cast<unsigned>(simt::popc(tie_ballot[j]));
    }
    tile_exclusive_scan(sh.ties);
    for (unsigned j = 0; j < kTileItems; ++j) {
      const u64 i = base + u64{j} * kTileThreads + tid;
      bool keep = false;
      if (i < n) {
        const key_of<T> key = mag_key<T>(v[j]);
        const u64 rank = eq_before[tile] + sh.ties[j * kTileWarps + warp] +
                         static_cast<unsigned>(simt::popc(tie_ballot[j] & below));
        keep = key > kth || (key == kth && rank < want);
      }
      keep_ballot[j] = simt::ballot(keep);
      if (lane == 0) sh.kept[j * kTileWarps + warp] = static_cast<unsigned>(simt::popc(keep_ballot[j]));
    }
    tile_exclusive_scan(sh.kept);
    for (unsigned j = 0; j < kTileItems; ++j) {
      if ((keep_ballot[j] >> lane) & 1u) {
        const u64 i = base + u64{j} * kTileThreads + tid;
        const u64 pos = out_off[tile] + sh.kept[j * kTileWarps + warp] +
                        static_cast<unsigned>(simt::popc(keep_ballot[j] & below));
        out_idx[pos] = idx[i];
        out_val[pos] = v[j];
      }
    }
  }
};

template <class T, class I>
struct Scatter {  // dense[idx[j]] = val[j]
  static constexpr unsigned kMaxThreads = kStreamThreads;
  GTOPK_DEV static void run(const I* idx, const T* val, u64 n, T* dense) {
    for (u64 j = simt::block_idx() * u64{simt::block_dim()} + simt::thread_idx(); j < n;
         j += u64{simt::grid_dim()} * simt::block_dim())
      dense[idx[j]] = val[j];
  }
};

template <class T, class I>
struct ZeroAt {  // residual[idx[j]] = 0
  static constexpr unsigned kMaxThreads = kStreamThreads;
  GTOPK_DEV static void run(const I* idx, u64 n, T* residual) {
    for (u64 j = simt::block_idx() * u64{simt::block_dim()} + simt::thread_idx(); j < n;
         j += u64{simt::grid_dim()} * simt::block_dim())
      residual[idx[j]] = Num<T>::from_bits(0);
  }
};

// ---- host side: the sequence of launches ---------------------------------------------
// Backend: alloc<X>(n) (scratch, freed with the backend), zero(p, bytes), launch<K>(grid,
// block, args...) (K::run on every thread, in stream order; block <= K::kMaxThreads),
// to_host(dst, src, bytes) (waits for the launches before it).

inline unsigned grid_for(u64 n) {
  const u64 blocks = (n + kStreamThreads - 1) / kStreamThreads;
  return static_cast<unsigned>(std::clamp<u64>(blocks, 1, 4096));
}

// Candidates with key >= st->t (st->total of them), packed in index order into cand_idx /
// cand_val (nothing when more than cap). In the fused form (r != nullptr) the same pass
// leaves r = r + x.
template <class B, class T, class I>
void filter_and_gather(B& be, const T* x, T* r, u64 m, u64 cap, State<key_of<T>>* st, I* cand_idx, T* cand_val) {
  const u64 ntiles = (m + kTile - 1) / kTile;
  I* tile_cand = be.template alloc<I>(m);
  unsigned* tile_count = be.template alloc<unsigned>(ntiles);
  u64* tile_off = be.template alloc<u64>(ntiles);
  const unsigned grid = static_cast<unsigned>(ntiles);
  if (r != nullptr) {
    be.template launch<FilterTiles<T, I, true>>(grid, kTileThreads, x, r, m, st, tile_cand, tile_count);
  } else {
    be.template launch<FilterTiles<T, I, false>>(grid, kTileThreads, x, r, m, st, tile_cand, tile_count);
  }
  be.template launch<ScanTiles<key_of<T>>>(1, kBlockThreads, tile_count, ntiles, tile_off, st);
  const T* a = r != nullptr ? r : x;  // the ranked values, once the pass is done
  be.template launch<GatherCandidates<T, I>>(static_cast<unsigned>((ntiles + kTileWarps - 1) / kTileWarps),
                                             kTileThreads, tile_cand, tile_count, tile_off, ntiles, a, cap, st,
                                             cand_idx, cand_val);
}

// Top k of n candidates (index order) with the whole GPU: a grid-wide radix select, then
// an ordered write by tiles. For n too large for FinishTopk's one block.
template <class B, class T, class I>
void finish_many(B& be, const I* cand_idx, const T* cand_val, u64 n, u64 k, I* out_idx, T* out_val) {
  using U = key_of<T>;
  gtopk::RadixState<U>* ks = be.template alloc<gtopk::RadixState<U>>(1);
  u64* hist = be.template alloc<u64>(kRadixBuckets);
  be.zero(hist, kRadixBuckets * sizeof(u64));
  be.template launch<KthStart<U>>(1, simt::kWarp, ks, k);
  const unsigned grid = std::min<unsigned>(grid_for(n), 1024);
  for (int d = 0;; ++d) {
    const gtopk::RadixDigit dg = gtopk::radix_digit(Num<T>::kBits, d);
    be.template launch<RadixHistogram<T>>(grid, kStreamThreads, cand_val, n, ks, dg, hist);
    be.template launch<RadixPick<U>>(1, simt::kWarp, hist, dg, ks);
    if (dg.last) break;
  }
  const u64 ntiles = (n + kTile - 1) / kTile;
  unsigned* tile_greater = be.template alloc<unsigned>(ntiles);
  unsigned* tile_equal = be.template alloc<unsigned>(ntiles);
  u64* eq_before = be.template alloc<u64>(ntiles);
  u64* out_off = be.template alloc<u64>(ntiles);
  be.template launch<TileTies<T>>(static_cast<unsigned>(ntiles), kTileThreads, cand_val, n, ks, tile_greater,
                                  tile_equal);
  be.template launch<ScanTies<U>>(1, kBlockThreads, tile_greater, tile_equal, ntiles, ks, eq_before, out_off);
  be.template launch<TileWrite<T, I>>(static_cast<unsigned>(ntiles), kTileThreads, cand_idx, cand_val, n, ks,
                                      eq_before, out_off, out_idx, out_val);
}

// Candidates at most this many go to FinishTopk's one block; more to finish_many.
constexpr u64 kOneBlockMax = u64{1} << 18;

// Top-min(k, m) of x, or of r + x when r != nullptr (r then holds r + x everywhere).
// one_block_max: see kOneBlockMax (tests lower it to reach finish_many with short inputs).
template <class B, class T, class I>
void select_topk(B& be, const T* x, T* r, u64 m, u64 k, I* out_idx, T* out_val, u64 one_block_max = kOneBlockMax) {
  using U = key_of<T>;
  if (k < 1) throw std::invalid_argument("k must be >= 1");
  if (m == 0) return;
  if (k >= m) {
    be.template launch<AllOfIt<T, I>>(grid_for(m), kStreamThreads, x, r, m, out_idx, out_val);
    return;
  }
  State<U>* st = be.template alloc<State<U>>(1);
  be.zero(st, sizeof(State<U>));
  const gtopk::SamplePlan plan = gtopk::plan_sample(m, k);
  if (plan.use_sample) {  // the plan's cap (a few k) is well within one block's reach
    T* sample = be.template alloc<T>(gtopk::kSampleSize);
    be.template launch<SampleThreshold<T>>(1, kBlockThreads, x, r, m, static_cast<u64>(plan.rank), sample, st);
    const u64 cap = std::min<u64>(plan.cap, m);
    I* cand_idx = be.template alloc<I>(cap);
    T* cand_val = be.template alloc<T>(cap);
    filter_and_gather<B, T, I>(be, x, r, m, cap, st, cand_idx, cand_val);
    be.template launch<FinishTopk<T, I>>(1, kBlockThreads, cand_idx, cand_val, k, cap, st, out_idx, out_val);
    State<U> h{};
    be.to_host(&h, st, sizeof h);
    if (h.status == kDone) return;
  } else if (r != nullptr) {
    be.template launch<AddInPlace<T>>(grid_for(m), kStreamThreads, x, r, m);
  }
  // The sample misled, or there was none: an exact bucket threshold over every key.
  const T* a = r != nullptr ? r : x;
  u64* hist = be.template alloc<u64>(kRadixBuckets);
  be.zero(hist, kRadixBuckets * sizeof(u64));
  gtopk::RadixState<U>* everything = be.template alloc<gtopk::RadixState<U>>(1);  // nothing fixed: all keys
  be.zero(everything, sizeof(gtopk::RadixState<U>));
  be.template launch<RadixHistogram<T>>(std::min<unsigned>(grid_for(m), 1024), kStreamThreads, a, m, everything,
                                        gtopk::radix_digit(Num<T>::kBits, 0), hist);
  be.template launch<HistogramThreshold<T>>(1, simt::kWarp, hist, k, st);
  State<U> h{};
  be.to_host(&h, st, sizeof h);
  const u64 n = h.hist_count;  // exactly the keys >= t
  I* cand_idx = be.template alloc<I>(n);
  T* cand_val = be.template alloc<T>(n);
  filter_and_gather<B, T, I>(be, a, static_cast<T*>(nullptr), m, n, st, cand_idx, cand_val);
  if (n > one_block_max) {
    finish_many<B, T, I>(be, cand_idx, cand_val, n, k, out_idx, out_val);
    return;
  }
  be.template launch<FinishTopk<T, I>>(1, kBlockThreads, cand_idx, cand_val, k, n, st, out_idx, out_val);
  be.to_host(&h, st, sizeof h);
  if (h.status != kDone) throw std::logic_error("gtopk CUDA: the exact threshold did not yield k candidates");
}

// Union of two index-ascending sets (sums at equal indices), then top-k. Returns the
// entries written: min(k, |union|).
template <class B, class T, class I>
u64 merge_topk(B& be, const I* ia, const T* va, u64 na, const I* ib, const T* vb, u64 nb, u64 k, I* out_idx,
               T* out_val) {
  using U = key_of<T>;
  if (k < 1) throw std::invalid_argument("k must be >= 1");
  if (na + nb == 0) return 0;
  State<U>* st = be.template alloc<State<U>>(1);
  be.zero(st, sizeof(State<U>));
  I* ui = be.template alloc<I>(na + nb);
  T* uv = be.template alloc<T>(na + nb);
  be.template launch<MergeTopk<T, I>>(1, kBlockThreads, ia, va, na, ib, vb, nb, k, ui, uv, out_idx, out_val, st);
  State<U> h{};
  be.to_host(&h, st, sizeof h);
  if (h.status == kFirstNotAscending) throw std::invalid_argument("first indices must be strictly ascending");
  if (h.status == kSecondNotAscending) throw std::invalid_argument("second indices must be strictly ascending");
  return h.total;
}

template <class B, class T, class I>
void scatter(B& be, const I* idx, const T* val, u64 n, T* dense) {
  if (n > 0) be.template launch<Scatter<T, I>>(grid_for(n), kStreamThreads, idx, val, n, dense);
}

template <class B, class T, class I>
void zero_at(B& be, const I* idx, u64 n, T* residual) {
  if (n > 0) be.template launch<ZeroAt<T, I>>(grid_for(n), kStreamThreads, idx, n, residual);
}

}  // namespace gtopk_cuda
