"""The peer objectives' projection heads: ConVIRT's non-linear head and MGCA's heads with batch normalisation whose
statistics are those of the global batch (every rank's real rows), so that 2 ranks train exactly like 1 process.

ProjectionHead(in, hidden, out, batch_norm): Linear -> [BatchNorm] -> ReLU -> Linear -> [BatchNorm without affine].
forward(x [..., in], mask bool[...] or None, rows long[n] or None, kind) -> [..., out]; with a mask only the True
rows are projected (and enter the batch statistics), the others are returned as zeros; `rows` (the flat indices of
the True entries, known on the host side: e.g. the collate's word_rows) selects them without reading the mask back
from the device. The global row count the statistics divide by comes from the batch's row counts of `kind`
(cgns.distributed.global_row_count), so that a training step waits on no device read.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.distributed.nn as dist_nn

from cgns.distributed import global_row_count, is_distributed
from cgns.losses.grounding import real_rows


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

    def forward(self, rows: torch.Tensor, count: int | None = None) -> torch.Tensor:
        """rows [N,C] -> [N,C]; count: the number of rows over all ranks (global_row_count; None: found here)."""
        if self.training:
            count = global_row_count(rows) if count is None else count
            if count < 2:
                raise ValueError(f"batch normalisation needs at least 2 rows over all ranks, got {count}")
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

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, rows: torch.Tensor | None = None,
                kind: str = "reports") -> torch.Tensor:
        """x [B,...,in] -> [B,...,out]. Without a mask every row is projected, `kind` naming what x's first
        dimension counts; with mask bool[B,...] the True rows only (rows long[n]: their flat indices, of kind
        `kind`), the others left zero."""
        flat = x.reshape(-1, x.shape[-1])                                                    # [B*...,in]
        if mask is None:
            selected, per_item = flat, flat.shape[0] // max(x.shape[0], 1)
        else:
            kind = kind if rows is not None else None             # rows found from the mask: counts exchanged
            (selected, rows), per_item = real_rows(x, mask, rows), 1
        count = global_row_count(selected, kind, per_item) if self.training else None
        out = self.first(selected)
        out = self.first_norm(out, count) if isinstance(self.first_norm, GlobalBatchNorm) else out
        out = self.second(torch.relu(out))
        out = self.second_norm(out, count) if isinstance(self.second_norm, GlobalBatchNorm) else out   # [n,out]
        if mask is None:
            return out.view(*x.shape[:-1], out.shape[-1])
        return out.new_zeros(flat.shape[0], out.shape[-1]).index_copy(0, rows, out).view(*mask.shape, -1)
