"""Run by tests/test_cuda_emulated.py under valgrind: every emulated kernel once on short
inputs, so that an out-of-bounds access in csrc/cuda/topk_kernels.h shows as an invalid
read or write in gtopk_mpi._cuda_emu (its scratch buffers have no slack)."""

import numpy as np

from gtopk_mpi import _cuda_emu as emu

rng = np.random.default_rng(0)
for m, k in [(5000, 50), (300, 299), (70, 3), (64, 64)]:
    x = rng.standard_normal(m).astype(np.float32)
    emu.select_topk(x, k)
    emu.select_topk(x.astype(np.float16), k, idx64=True)
    emu.select_topk(x, k, residual=rng.standard_normal(m).astype(np.float32))
    emu.select_topk(np.round(x), k, one_block_max=0)  # the finish on the whole grid
a = (np.sort(rng.choice(3000, 500, replace=False)).astype(np.int32), rng.standard_normal(500).astype(np.float32))
b = (np.sort(rng.choice(3000, 400, replace=False)).astype(np.int32), rng.standard_normal(400).astype(np.float32))
for k in (1, 300, 899, 3000):
    emu.merge_topk(*a, *b, k)
emu.merge_topk(*a, np.zeros(0, np.int32), np.zeros(0, np.float32), 10)
dense = np.zeros(3000, np.float32)
emu.scatter(a[0], a[1], dense)
emu.zero_at(b[0], dense)
print("MEMCHECK RUN OK")
