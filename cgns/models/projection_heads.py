"""The peer objectives' projection heads: ConVIRT's non-linear head and MGCA's heads with batch normalisation whose
statistics are those of the global batch (every rank's real rows), so that 2 ranks train exactly like 1 process.

ProjectionHead(in, hidden, out, batch_norm): Linear -> [BatchNorm] -> ReLU -> Linear -> [BatchNorm without affine].
forward(x [..., in], mask bool[...] or None) -> [..., out]; with a mask only the True rows are projected (and enter
the batch statistics), the others are returned as zeros.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.distributed.nn as dist_nn

from cgns.distributed import all_reduce_sum, is_distributed


def sum_over_ranks(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks WITH gradient (each rank's gradient returns to every rank); the tensor itself in one process.
    (cgns.distributed.all_reduce_sum is its no-gradient sibling.)"""
    return dist_nn.all_reduce(tensor) if is_distributed() else tensor


class GlobalBatchNorm(nn.Module):
    """BatchNorm1d over rows [N,C] whose batch statistics are the mean and (biased) variance of every rank's rows,
    differentiated through (a SyncBatchNorm that also runs on gloo and takes ragged row counts). Running statistics
    (momentum 0.1, unbiased variance) serve in eval mode, as nn.BatchNorm1d's do."""

    def __init__(self, dim: int, affine: bool = True, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(dim)) if affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if affine else None
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        if self.training:
            count = all_reduce_sum(torch.tensor(float(rows.shape[0]), device=rows.device))
            if float(count) < 2:
                raise ValueError(f"batch normalisation needs at least 2 rows over all ranks, got {int(count)}")
            mean = sum_over_ranks(rows.sum(dim=0)) / count                                   # [C]
            var = sum_over_ranks((rows - mean).square().sum(dim=0)) / count                  # [C]
            with torch.no_grad():
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
                unbiased = var.detach() * count / (count - 1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        normalised = (rows - mean) * torch.rsqrt(var + self.eps)
        if self.weight is not None:
            normalised = normalised * self.weight + self.bias
        return normalised


class ProjectionHead(nn.Module):
    """Linear(in, hidden) -> [GlobalBatchNorm] -> ReLU -> Linear(hidden, out) -> [GlobalBatchNorm, no affine].

    ConVIRT's g_v / g_u: batch_norm=False (ConVIRT, arXiv 2010.00747, section 2.3: one hidden layer, ReLU).
    MGCA's GlobalEmbedding / LocalEmbedding: batch_norm=True (HKU-MedAI/MGCA mgca/models/backbones/encoder.py).
    """

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, batch_norm: bool = False):
        super().__init__()
        self.first = nn.Linear(in_dim, hidden_dim)
        self.first_norm = GlobalBatchNorm(hidden_dim) if batch_norm else nn.Identity()
        self.second = nn.Linear(hidden_dim, out_dim)
        self.second_norm = GlobalBatchNorm(out_dim, affine=False) if batch_norm else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1]) if mask is None else x[mask]                      # [N,in]
        rows = self.second_norm(self.second(torch.relu(self.first_norm(self.first(rows)))))  # [N,out]
        if mask is None:
            return rows.view(*x.shape[:-1], rows.shape[-1])
        return rows.new_zeros(*mask.shape, rows.shape[-1]).index_put((mask,), rows)
