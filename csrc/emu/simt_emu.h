// A CPU emulator of CUDA's execution model for the kernels of csrc/cuda (simt.h).
//
// launch() runs body() once per thread of a grid of 1-D blocks. Blocks run one after
// another; the threads of a block are coroutines (ucontext) that run until they reach a
// barrier (__syncthreads) or a warp collective (ballot, shfl), in a shuffled order fixed
// by a seed, so code that reads shared memory without the barrier that orders it tends
// to see stale values and fail. A barrier that not every live thread of the block
// reaches, a warp collective that not all 32 lanes reach, lanes that disagree on the
// collective, or an exception in a thread make launch() throw std::runtime_error naming
// the block and what each thread was doing. Shared memory (simt::shared<S>) is private
// to each block and starts as garbage (0xa5 bytes), as on a GPU. Atomics need nothing:
// coroutines switch only at barriers and collectives.
#pragma once
#include <cstdint>
#include <functional>

namespace simt_emu {

// Run body on grid x block threads (block a multiple of 32, at most 1024).
void launch(unsigned grid, unsigned block, const std::function<void()>& body, uint64_t seed = 1);

}  // namespace simt_emu
