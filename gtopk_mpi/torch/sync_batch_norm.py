"""SyncBatchNorm: batch normalization with statistics over the whole global batch.

In training mode each rank sums x and x^2 over its local batch per channel; one
differentiable allreduce (Sum) of [sum, sum of squares, count] gives the global
mean and biased variance, so gradients flow to every rank's inputs as in one big
batch. Running statistics use the unbiased global variance. In eval mode, or on
one rank, it is plain BatchNorm.
"""

from __future__ import annotations

import torch
from torch.nn.modules.batchnorm import _BatchNorm

from .mpi_ops import Sum, allreduce, size


class SyncBatchNorm(_BatchNorm):
    """Drop-in for torch.nn.BatchNorm1d/2d/3d (any input with channels in dim 1)."""

    def _check_input_dim(self, input: torch.Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(input)
        if not self.training or size() == 1:
            return super().forward(input)
        c = input.shape[1]
        dims = [0, *range(2, input.dim())]
        count = torch.tensor([input.numel() / c], dtype=input.dtype)
        stats = allreduce(torch.cat([input.sum(dims), (input * input).sum(dims), count]), op=Sum)
        n = stats[-1]
        mean = stats[:c] / n
        var = stats[c : 2 * c] / n - mean * mean
        if self.track_running_stats:
            assert self.num_batches_tracked is not None and self.running_mean is not None
            assert self.running_var is not None  # all three exist when track_running_stats
            with torch.no_grad():
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.detach() * m)
                self.running_var.mul_(1 - m).add_(var.detach() * (n / (n - 1)) * m)
        shape = (1, c) + (1,) * (input.dim() - 2)
        y = (input - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y
