"""Devices and processes: pick CUDA when present, join a ``torchrun`` process group, seed."""

from __future__ import annotations

import os
import random

import numpy as np
import torch
import torch.distributed as torch_dist


def select_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` as given, else ``cuda`` (this process's local GPU) when present, else ``cpu``.

    A requested CUDA device on a machine without one is an error that says so.
    """
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {device} was requested but CUDA is not available here; "
                               f"pass device='cpu' (or leave it unset to choose automatically)")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def get_dist_info() -> tuple[int, int]:
    """``(rank, world_size)`` of this process; ``(0, 1)`` outside a process group."""
    if torch_dist.is_available() and torch_dist.is_initialized():
        return torch_dist.get_rank(), torch_dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """True in the process that writes logs and checkpoints."""
    return get_dist_info()[0] == 0


def init_dist_from_env(backend: str | None = None) -> bool:
    """Join the process group that ``torchrun`` describes in the environment (``WORLD_SIZE`` >
    1); returns whether training is distributed. ``backend`` defaults to nccl on CUDA, else
    gloo."""
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return False
    if not torch_dist.is_initialized():
        backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        torch_dist.init_process_group(backend=backend)
    return True


def set_random_seed(seed: int, deterministic: bool = False) -> None:
    """Seed Python, NumPy and torch (every device); ``deterministic`` also asks cuDNN for
    deterministic kernels."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False


def reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    """The mean of ``tensor`` over all processes (itself outside a process group)."""
    _, world_size = get_dist_info()
    if world_size == 1:
        return tensor
    tensor = tensor.clone()
    torch_dist.all_reduce(tensor.div_(world_size), op=torch_dist.ReduceOp.SUM)
    return tensor
