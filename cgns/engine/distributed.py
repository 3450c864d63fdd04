"""One short torch.distributed set-up: reads torchrun's environment, falls through to a single process.

Launch with `torchrun --nproc_per_node=G train_pretrain.py ...` (nccl on GPU, gloo on CPU) or plain `python`.
"""
from __future__ import annotations

import os
import random
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist


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


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks in place (a no-op in a single process); returns the tensor."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_min(tensor: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def all_gather_cat(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate [n_r, ...] tensors of every rank along dim 0 (ranks may hold different n_r). No gradient."""
    if not is_distributed():
        return tensor
    world = dist.get_world_size()
    size = torch.tensor([tensor.shape[0]], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    # all_gather needs equal shapes: pad to the longest, cut back afterwards
    padded = tensor.new_zeros((longest, *tensor.shape[1:]))
    padded[: tensor.shape[0]] = tensor
    parts = [torch.zeros_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([part[: int(n.item())] for part, n in zip(parts, sizes)])


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
    """Every RNG state this process draws from (restored for an exact resume)."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
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
