"""Everything cross-rank, in one place: torchrun set-up, collectives for the loop and the losses, seeding, RNG state,
and the resumable sampler. Every collective falls through to single-process arithmetic when torch.distributed is
not initialised (or inside `local_losses()`).

Launch with `torchrun --nproc_per_node=G train_pretrain.py ...` (nccl on GPU, gloo on CPU) or plain `python`.
"""
from __future__ import annotations

import os
import random
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.nn as dist_nn


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    is_main: bool


def init_distributed(device: str | None = None) -> DistInfo:
    """Join the process group described by torchrun's env (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT).

    Without those variables this is a single process on `device` (default: cuda when available, else cpu).
    Calling it again when the group already exists returns the same answer (tests spawn their own workers).
    """
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    want_cuda = torch.cuda.is_available() if device is None else str(device).startswith("cuda")
    if want_cuda and not torch.cuda.is_available():
        raise RuntimeError(f"--device {device}: CUDA is not available in this PyTorch build / machine")
    if want_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if want_cuda else "gloo", rank=rank, world_size=world_size,
                                device_id=dev if want_cuda else None)
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, is_main=rank == 0)


_local_only = [False]


def is_distributed() -> bool:
    """True when collectives are to be issued: a process group of more than one rank, outside `local_losses()`."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1 and not _local_only[0]


@contextmanager
def local_losses():
    """Inside this block nothing issues collectives (for a forward run on one rank only, e.g. rank-0 evaluation);
    outside it every rank must call the model's forward together."""
    previous, _local_only[0] = _local_only[0], True
    try:
        yield
    finally:
        _local_only[0] = previous


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    _host_groups.clear()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _all_reduce(tensor: torch.Tensor, op) -> torch.Tensor:
    if not is_distributed():
        return tensor
    reduced = tensor.detach().clone()
    dist.all_reduce(reduced, op=op)
    return reduced


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, no gradient: a new tensor (the input itself, untouched, in a single process)."""
    return _all_reduce(tensor, dist.ReduceOp.SUM)


def all_reduce_min(tensor: torch.Tensor) -> torch.Tensor:
    """Minimum over ranks, no gradient: a new tensor (the input itself in a single process)."""
    return _all_reduce(tensor, dist.ReduceOp.MIN)


_known_counts: list = [None]   # every rank's row counts of the batch being stepped (known_row_counts)
_host_groups: list = []        # the CPU (gloo) group that exchange_row_counts uses beside an nccl default group


def _host_group():
    """The group for collectives on host tensors: the default one under gloo, else one gloo group made the first
    time (by every rank at the same call, as new_group requires)."""
    if dist.get_backend() == "gloo":
        return None
    if not _host_groups:
        _host_groups.append(dist.new_group(backend="gloo"))
    return _host_groups[0]


def exchange_row_counts(counts: dict | None) -> dict | None:
    """Every rank's row counts of its batch, by kind: {kind: int} (this rank's, from the collate function, e.g.
    {'reports': B, 'sentences': n}) -> {kind: [count on rank 0, rank 1, ...]}; None -> None.

    Host integers all-gathered over a CPU (gloo) group, before the step's device work: no rank waits on its
    device. gather_rows inside known_row_counts(...) then needs no size exchange of its own."""
    if counts is None:
        return None
    if not is_distributed():
        return {kind: [int(n)] for kind, n in counts.items()}
    kinds = sorted(counts)
    local = torch.tensor([int(counts[kind]) for kind in kinds], dtype=torch.long)
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, local, group=_host_group())
    table = torch.stack(parts).tolist()                       # host tensors: nothing waits on a device
    return {kind: [row[i] for row in table] for i, kind in enumerate(kinds)}


@contextmanager
def known_row_counts(counts: dict | None):
    """Inside this block gather_rows(rows, kind=K) takes every rank's row count from counts[K] (what
    exchange_row_counts returned for the batch); None, or a kind it lacks, leaves gather_rows to exchange them."""
    previous, _known_counts[0] = _known_counts[0], counts
    try:
        yield
    finally:
        _known_counts[0] = previous


def _row_sizes(rows: torch.Tensor, kind: str | None, per_item: int = 1) -> list[int]:
    """Every rank's number of rows, rows [n,...] holding per_item rows per counted `kind` item (e.g. the patches of
    a report): from known_row_counts when it has `kind`, else all-gathered on the device and read back (a shape for
    the padding and the cut, so a host synchronisation on a GPU)."""
    known = _known_counts[0]
    if kind is not None and known is not None and kind in known:
        sizes = [per_item * n for n in known[kind]]
        if len(sizes) != dist.get_world_size() or sizes[dist.get_rank()] != rows.shape[0]:
            raise ValueError(f"{rows.shape[0]} rows of kind {kind!r} ({per_item} per item) on rank "
                             f"{dist.get_rank()}, but the batch's row counts say {known[kind]}")
        return sizes
    return _exchanged_row_sizes(rows)


def global_row_count(rows: torch.Tensor, kind: str | None = None, per_item: int = 1) -> int:
    """The number of rows over all ranks, a host integer: rows [n,...] on this rank, n = per_item x (this rank's
    count of `kind`, e.g. per_item patches per report). In one process n; under known_row_counts with `kind` the sum
    of the batch's counts (no device read); else all-gathered on the device and read back (a host synchronisation)."""
    if not is_distributed():
        return rows.shape[0]
    return sum(_row_sizes(rows, kind, per_item))


def _exchanged_row_sizes(rows: torch.Tensor) -> list[int]:
    """Every rank's rows.shape[0], all-gathered on rows' device and read back: a host synchronisation."""
    count = torch.tensor([rows.shape[0]], device=rows.device)
    counts = [torch.zeros_like(count) for _ in range(dist.get_world_size())]
    dist.all_gather(counts, count)
    return [int(c) for c in counts]


def gather_rows(rows: torch.Tensor, with_grad: bool = True, kind: str | None = None) -> tuple[torch.Tensor, int]:
    """Every rank's rows, in rank order, and where this rank's rows start: rows [n,...] -> ([N,...], offset).

    Ranks may hold different n (sentences per batch vary): rows are padded to the largest n for the collective and
    the padding is cut off again. That needs every rank's n on the host. kind ('reports', 'sentences': what the rows
    are) takes them from the batch's row counts (known_row_counts; the training step sets them from the collate
    function's counts, exchanged over a CPU group before the step); without them they are all-gathered on the
    device and read back, a host synchronisation (validation, evaluation, a loss called outside the step). A fixed
    maximum with padding kept to the end would avoid the exchange but multiply the gathered rows and the scores
    computed on them (every report's tokens could be a sentence). with_grad uses torch.distributed.nn.all_gather,
    whose backward returns to each rank the gradient that every rank's loss sends to its rows.
    """
    if not is_distributed():
        return rows, 0
    world, rank = dist.get_world_size(), dist.get_rank()
    sizes = _row_sizes(rows, kind)
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


def global_mean(local_sum: torch.Tensor, local_count) -> torch.Tensor:
    """This rank's share of a mean over all ranks' items: world * local_sum / total_count.

    DDP averages gradients over the W ranks, so the shares give exactly the gradient of the mean over the global
    batch (as one process on the whole batch would), even when ranks hold different numbers of items. The value on
    one rank is its share; the mean over ranks is the global mean. An empty total gives 0.
    """
    if isinstance(local_count, torch.Tensor):
        count = local_count.to(device=local_sum.device, dtype=torch.float32)
    else:  # a host number becomes a device fill, not a host-to-device copy (which would wait on the device)
        count = torch.full((), float(local_count), dtype=torch.float32, device=local_sum.device)
    if not is_distributed():
        return local_sum / count.clamp(min=1.0)
    return dist.get_world_size() * local_sum / all_reduce_sum(count).clamp(min=1.0)


def broadcast_object(obj, src: int = 0):
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def seed_for_model(seed: int) -> None:
    """Same seed on every rank, so every rank builds identical initial weights (DDP also broadcasts them)."""
    seed_everything(seed)


def seed_for_data(seed: int, rank: int) -> None:
    """seed + rank: each rank draws its own augmentation / masking randomness."""
    seed_everything(seed + rank)


def rng_state() -> dict:
    """Every RNG state this process draws from (restored for an exact resume), as tensors and plain numbers only,
    so that a checkpoint holding it loads with torch.load(weights_only=True):
        python: {version: int, state: int64 [625], gauss: float | None}    (random.getstate())
        numpy:  {kind: str, keys: int64 [624], pos: int, has_gauss: int, cached_gaussian: float}
        torch:  uint8 tensor; cuda: list of uint8 tensors (when available)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state = {"python": {"version": int(version), "state": torch.tensor(internal, dtype=torch.int64), "gauss": gauss},
             "numpy": {"kind": str(kind), "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what rng_state() returned (also the tuple / numpy-array form of checkpoints written before it)."""
    python, numpy_state = state["python"], state["numpy"]
    if isinstance(python, dict):
        python = (python["version"], tuple(int(v) for v in python["state"].tolist()), python["gauss"])
    random.setstate(python)
    if isinstance(numpy_state, dict):
        numpy_state = (numpy_state["kind"], numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                       numpy_state["has_gauss"], numpy_state["cached_gaussian"])
    np.random.set_state(numpy_state)
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def log_main(info: DistInfo | None, *message) -> None:
    """Print on rank 0 only (never patch print)."""
    if info is None or info.is_main:
        print(*message, flush=True)


class ResumableSampler(torch.utils.data.Sampler):
    """This rank's share of a seeded per-epoch permutation, able to start part-way into the epoch.

    Every rank sees `num_samples` items: the permutation is padded by wrapping (pad=True, so that every rank runs
    the same number of batches and collectives stay matched) or cut (pad=False). `set_epoch(e, start=i)` makes the
    next pass yield items i, i+1, ... of epoch e's share — the position an exact resume needs.
    The order depends only on (seed, epoch, world_size, rank), never on the global RNG.
    """

    def __init__(self, dataset_len: int, *, rank: int = 0, world_size: int = 1, shuffle: bool = True,
                 seed: int = 0, pad: bool = True):
        if dataset_len <= 0:
            raise ValueError("ResumableSampler: the dataset is empty")
        self.dataset_len, self.rank, self.world_size = dataset_len, rank, world_size
        self.shuffle, self.seed, self.pad = shuffle, seed, pad
        self.num_samples = -(-dataset_len // world_size) if pad else dataset_len // world_size
        if self.num_samples == 0:
            raise ValueError(f"ResumableSampler: {dataset_len} items cannot be split over {world_size} ranks")
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def indices(self) -> list[int]:
        """This rank's full list of dataset indices for the current epoch."""
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + 1_000_003 * self.epoch)
            order = torch.randperm(self.dataset_len, generator=generator).tolist()
        else:
            order = list(range(self.dataset_len))
        total = self.num_samples * self.world_size
        while len(order) < total:  # wrap-around padding
            order += order[: total - len(order)]
        return order[:total][self.rank::self.world_size]

    def __iter__(self):
        return iter(self.indices()[self.start:])

    def __len__(self) -> int:
        return self.num_samples - self.start
