// The SIMT primitives the kernels of topk_kernels.h are written against.
//
// Under nvcc they are CUDA's own (threadIdx, __syncthreads, __ballot_sync, ...). In a
// host build they are served by the emulator of csrc/emu/simt_emu.cpp, which runs every
// thread of a block as a coroutine on the CPU, so the same kernel source is tested
// without a GPU (tests/test_cuda_emulated.py). Kernels may use only what is declared
// here; warp-wide calls are made by all 32 lanes of a warp together (full mask).
#pragma once
#include <cstddef>
#include <cstdint>

#if defined(__CUDACC__)
#define GTOPK_DEV __device__ __forceinline__
#define GTOPK_UNROLL _Pragma("unroll")

namespace simt {
constexpr unsigned kWarp = 32;
GTOPK_DEV unsigned thread_idx() { return threadIdx.x; }
GTOPK_DEV unsigned block_idx() { return blockIdx.x; }
GTOPK_DEV unsigned block_dim() { return blockDim.x; }
GTOPK_DEV unsigned grid_dim() { return gridDim.x; }
GTOPK_DEV void sync() { __syncthreads(); }
GTOPK_DEV bool sync_or(bool p) { return __syncthreads_or(p) != 0; }
GTOPK_DEV unsigned ballot(bool p) { return __ballot_sync(0xffffffffu, p); }
GTOPK_DEV unsigned long long shfl_up(unsigned long long v, unsigned d) { return __shfl_up_sync(0xffffffffu, v, d); }
GTOPK_DEV unsigned long long shfl(unsigned long long v, unsigned src) { return __shfl_sync(0xffffffffu, v, src); }
GTOPK_DEV unsigned match_any(unsigned v) { return __match_any_sync(0xffffffffu, v); }
GTOPK_DEV int popc(unsigned v) { return __popc(v); }
GTOPK_DEV unsigned lowest_lane(unsigned mask) { return static_cast<unsigned>(__ffs(mask) - 1); }
GTOPK_DEV void atomic_add(unsigned* p, unsigned v) { atomicAdd(p, v); }
GTOPK_DEV void atomic_add(unsigned long long* p, unsigned long long v) { atomicAdd(p, v); }
// One instance per type S in each block's shared memory.
template <class S>
__device__ S& shared() {
  __shared__ S s;
  return s;
}
}  // namespace simt

#else  // host build: the emulator
#include <typeinfo>
#define GTOPK_DEV inline
#define GTOPK_UNROLL

namespace simt {
constexpr unsigned kWarp = 32;
unsigned thread_idx();
unsigned block_idx();
unsigned block_dim();
unsigned grid_dim();
void sync();
bool sync_or(bool p);
unsigned ballot(bool p);
unsigned long long shfl_up(unsigned long long v, unsigned d);
unsigned long long shfl(unsigned long long v, unsigned src);
unsigned match_any(unsigned v);  // mask of the lanes whose v equals this lane's
inline int popc(unsigned v) { return __builtin_popcount(v); }
inline unsigned lowest_lane(unsigned mask) { return static_cast<unsigned>(__builtin_ffs(static_cast<int>(mask)) - 1); }
// coroutines never interleave inside a call: a plain add is atomic here
inline void atomic_add(unsigned* p, unsigned v) { *p += v; }
inline void atomic_add(unsigned long long* p, unsigned long long v) { *p += v; }
void* shared_storage(const std::type_info& type, size_t bytes, size_t align);
template <class S>
S& shared() {
  return *static_cast<S*>(shared_storage(typeid(S), sizeof(S), alignof(S)));
}
}  // namespace simt
#endif
