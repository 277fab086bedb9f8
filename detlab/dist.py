"""Devices and processes: pick CUDA when present, join a ``torchrun`` / slurm process group, seed
and keep the random states a resumed run needs."""

from __future__ import annotations

import contextlib
import os
import random
import subprocess
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist


def select_device(device: str | torch.device | None = None,
                  gpu_ids: Sequence[int] | None = None) -> torch.device:
    """``device`` as given, else ``cuda`` (``gpu_ids[0]``, or this process's local GPU) when
    present, else ``cpu``.

    A requested CUDA device on a machine without one is an error that says so; ``gpu_ids`` on a
    machine without CUDA are ignored (as MMDetection 2.28 runs on the CPU then).
    """
    if device is not None:
        device = torch.device(device)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise RuntimeError(f"device {device} was requested but CUDA is not available here; "
                               f"pass device='cpu' (or leave it unset to choose automatically)")
        return device
    if torch.cuda.is_available():
        if gpu_ids and not torch_dist.is_initialized():
            return torch.device("cuda", int(gpu_ids[0]))
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


LAUNCHERS = ("none", "pytorch", "slurm")


def launched_by() -> str:
    """Which launcher started this process, read from the environment: ``'pytorch'``
    (``torchrun`` sets ``WORLD_SIZE`` > 1), ``'slurm'`` (``srun`` with more than one task) or
    ``'none'``."""
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        return "pytorch"
    if int(os.environ.get("SLURM_NTASKS", 1)) > 1 and "SLURM_PROCID" in os.environ:
        return "slurm"
    return "none"


def _slurm_environment(port: int | None) -> None:
    """Translate srun's variables into torch.distributed's (MMDetection's ``slurm_train.sh``)."""
    node_list = os.environ["SLURM_NODELIST"]
    addr = subprocess.getoutput(f"scontrol show hostname {node_list} | head -n1").strip()
    os.environ.setdefault("MASTER_ADDR", addr or "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(port or 29500))
    os.environ["WORLD_SIZE"] = os.environ["SLURM_NTASKS"]
    os.environ["RANK"] = os.environ["SLURM_PROCID"]
    os.environ["LOCAL_RANK"] = os.environ.get("SLURM_LOCALID", "0")


def init_dist(launcher: str | None = None, dist_params: Mapping[str, Any] | None = None) -> bool:
    """Join the process group of ``launcher`` (``'pytorch'`` for ``torchrun``, ``'slurm'`` for
    ``srun``; default: the one the environment shows) and return whether the run is
    distributed. ``launcher='none'`` runs one process even under ``torchrun`` (with a
    warning). ``dist_params`` (``backend``, ``port``) as in MMDetection's configs."""
    params = dict(dist_params or {})
    found = launched_by()
    launcher = launcher or found
    if launcher not in LAUNCHERS:
        raise ValueError(f"launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    if launcher == "none":
        if found != "none":
            warnings.warn(f"launcher='none' in a process started by {found} (world size "
                          f"{os.environ.get('WORLD_SIZE') or os.environ.get('SLURM_NTASKS')}): "
                          f"each process trains alone; pass --launcher {found}", stacklevel=2)
        return False
    if launcher == "slurm":
        _slurm_environment(params.get("port"))
    elif params.get("port") and "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(params["port"])
    if int(os.environ.get("WORLD_SIZE", 1)) <= 1:
        return False
    if not torch_dist.is_initialized():
        backend = params.get("backend") or "nccl"
        if backend == "nccl" and not torch.cuda.is_available():
            backend = "gloo"  # MMDetection's configs say nccl; without CUDA only gloo runs
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        torch_dist.init_process_group(backend=backend)
    return True


def init_dist_from_env(backend: str | None = None) -> bool:
    """Join the process group that the environment describes (``torchrun``, ``srun``)."""
    return init_dist(None, dict(backend=backend) if backend else None)


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of process ``src`` in every process (itself outside a process group)."""
    if get_dist_info()[1] == 1:
        return obj
    holder = [obj]
    torch_dist.broadcast_object_list(holder, src=src)
    return holder[0]


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


def random_states() -> dict[str, Any]:
    """Python's, NumPy's and torch's global random states, as plain data and tensors (so that a
    checkpoint holding them loads with ``weights_only=True``)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    states = {"python": random.getstate(),
              "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
              "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_random_states(states: Mapping[str, Any]) -> None:
    """Restore what :func:`random_states` returned."""
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = states["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(states["torch"])
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


@contextlib.contextmanager
def preserved_random_states():
    """Run a block (an evaluation, a validation pass) without moving the training's random
    streams, so that a resumed run, which skips that block, draws the same numbers."""
    states = random_states()
    try:
        yield
    finally:
        set_random_states(states)
