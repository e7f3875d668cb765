// Error feedback after an exchange: which residual entries the agreed set carried away, and the
// rounding errors that go back into the residual.
//
// The set's entries carry 32-bit tags (merge.h): bit `own` marks the entries holding this rank's
// contribution, other bits the rounding errors of one 16-bit encode each (an ErrorRecord:
// its indices, ascending, and the errors at them). settle() clears residual[i] where the result
// carries this rank's entry (no branch on the tags, which are data), then adds each record's
// errors, in order, at the entries tagged with its bit: what was sent and kept leaves the
// residual, what rounding lost comes back, so no gradient mass is lost.
#pragma once
#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "merge.h"
#include "numeric.h"

namespace gtopk {

template <class T, class I>
struct ErrorRecord {
  uint32_t bit;  // the tag bit of the entries these errors belong to
  const I* idx;  // ascending
  const T* err;
  size_t n;
};

// residual r: the dense residual; (ix, tg): the set's n indices (ascending) and tags. Writes
// the indices that carried this rank's entries to `carried`. False if an entry tagged with a
// record's bit has no error in that record.
template <class T, class I>
bool settle(T* r, const I* ix, const uint32_t* tg, size_t n, uint32_t own_bit, const ErrorRecord<T, I>* recs,
            size_t n_recs, std::vector<I>& carried) {
  using B = key_of<T>;
  carried.resize(n);
  size_t c = 0;
  for (size_t j = 0; j < n; ++j) {
    const I i = ix[j];
    const bool mine = (tg[j] & own_bit) != 0;
    const B keep = static_cast<B>(B{0} - static_cast<B>(!mine));
    r[i] = Num<T>::from_bits(static_cast<B>(Num<T>::bits(r[i]) & keep));
    carried[c] = i;
    c += mine;
  }
  carried.resize(c);
  // Each record: the set's indices holding its bit, compacted (no branch on the tags), then a
  // lookup of each in the record's indices (both ascending): r[i] + error goes to r[i] where
  // they match, else to a dummy. float32 / int32 lookups take the merge's SIMD form.
  thread_local std::vector<I> marked;
  marked.resize(n);
  bool missing = false;
  for (size_t q = 0; q < n_recs; ++q) {
    const ErrorRecord<T, I>& rec = recs[q];
    size_t nm = 0;
    for (size_t j = 0; j < n; ++j) {
      marked[nm] = ix[j];
      nm += (tg[j] & rec.bit) != 0;
    }
    if constexpr (std::is_same_v<T, float> && std::is_same_v<I, int32_t>) {
      bool found = true;
      if (with_simd(merge_form_for(marked.data(), nm, rec.idx, rec.n), [&](auto isa) {
            found = decltype(isa)::add_record_errors(marked.data(), nm, rec.idx, rec.err, rec.n, r);
          })) {
        missing |= !found;
        continue;
      }
    }
    size_t j = 0, at = 0;
    bool lost = false;  // a marked index the record has no error for
    T dummy;
    while (j < nm && at < rec.n) {
      const I i = marked[j], qi = rec.idx[at];
      lost |= i < qi;
      T* dst = i == qi ? r + i : &dummy;
      *dst = Num<T>::add(r[i], rec.err[at]);
      j += i <= qi;
      at += qi <= i;
    }
    missing |= lost || j < nm;
  }
  return !missing;
}

}  // namespace gtopk
