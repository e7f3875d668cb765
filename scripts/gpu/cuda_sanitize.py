"""Every kernel of the GPU path once, on small inputs, for compute-sanitizer (memcheck,
racecheck, synccheck) in scripts/gpu_check.sh: the sampled path, the fused residual pass,
the histogram fallback, the merge (union kept and cut to k), scatter and zero_at."""

from __future__ import annotations

import torch

from gtopk_mpi import cuda

m, k = 1_100_000, 1_100
g = torch.Generator(device="cuda").manual_seed(0)
x = torch.randn(m, device="cuda", generator=g)
r = torch.randn(m, device="cuda", generator=g)
a = cuda.select_topk(x, k)                      # sampled threshold
b = cuda.select_topk(x, k, residual=r)          # fused residual pass
cuda.select_topk(torch.full((m,), 0.5, device="cuda"), k)   # the sample misleads: histogram fallback
cuda.select_topk(x[:5000].contiguous(), 50)     # short: histogram path
cuda.merge_topk(*a, *b, k)                      # union cut to k
cuda.merge_topk(*a, *b, 4 * k)                  # union kept whole
dense = cuda.to_dense(*a, m)
torch.cuda.synchronize()
print("SANITIZE RUN OK", int(dense.count_nonzero()))
