"""Cross-rank pieces of the losses: gather rows with gradient, and means over every rank's items.

All of them fall through to plain single-process arithmetic when torch.distributed is not initialised.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.distributed as dist
import torch.distributed.nn as dist_nn


_local_only = [False]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and not _local_only[0]


@contextmanager
def local_losses():
    """Inside this block the losses issue no collectives (for a forward run on one rank only, e.g. rank-0
    evaluation); outside it every rank must call the model's forward together."""
    previous, _local_only[0] = _local_only[0], True
    try:
        yield
    finally:
        _local_only[0] = previous


def gather_rows(rows: torch.Tensor, with_grad: bool = True):
    """Every rank's rows, in rank order, and where this rank's rows start: rows [n,...] -> ([N,...], offset).

    Ranks may hold different n (sentences per batch vary): rows are padded to the largest n for the collective and
    the padding is cut off again. with_grad uses torch.distributed.nn.all_gather, whose backward returns to each rank
    the gradient that every rank's loss sends to its rows.
    """
    if not is_distributed():
        return rows, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    count = torch.tensor([rows.shape[0]], device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c) for c in counts]                          # a shape, so a host sync is unavoidable
    longest = max(sizes)
    padded = torch.cat([rows, rows.new_zeros(longest - rows.shape[0], *rows.shape[1:])]) if longest > rows.shape[0] \
        else rows
    if with_grad:
        parts = dist_nn.all_gather(padded)
    else:
        parts = [torch.empty_like(padded) for _ in range(world)]
        dist.all_gather(parts, padded.detach())
    gathered = torch.cat([part[:size] for part, size in zip(parts, sizes)])
    return gathered, sum(sizes[:rank])


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (no gradient): a new tensor, the input itself when single-process."""
    if not is_distributed():
        return tensor
    total = tensor.detach().clone()
    dist.all_reduce(total)
    return total


def global_mean(local_sum: torch.Tensor, local_count) -> torch.Tensor:
    """This rank's share of a mean over all ranks' items: world * local_sum / total_count.

    DDP averages gradients over the W ranks, so the shares give exactly the gradient of the mean over the global
    batch (as one process on the whole batch would), even when ranks hold different numbers of items. The value on
    one rank is its share; the mean over ranks is the global mean. An empty total gives 0.
    """
    count = torch.as_tensor(local_count, dtype=torch.float32, device=local_sum.device)
    if not is_distributed():
        return local_sum / count.clamp(min=1.0)
    return dist.get_world_size() * local_sum / all_reduce_sum(count).clamp(min=1.0)
