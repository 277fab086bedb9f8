"""Small helpers of the teaching notebooks (``notebooks/02_*`` ... ``08_*``): what a notebook cell
would otherwise spell out in more than a few lines, kept here so that the cells stay short.

- :func:`lr_schedule`: the learning rate a config's ``lr_config`` gives at every iteration,
  computed by the LR hook itself, before any training;
- :func:`checkpoint_summary`: what a checkpoint file holds;
- :func:`panning_frames` and :func:`write_video`: a short video made of dataset images, to try
  video inference on.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    import pandas as pd

    from detlab.config import Config


def lr_schedule(cfg: Config | Mapping[str, Any], iters_per_epoch: int,
                max_epochs: int | None = None) -> pd.DataFrame:
    """The learning rate of each training iteration as the config's ``lr_config`` sets it
    (warmup included), computed by the very hooks training uses, on a stand-in trainer that
    calls them as the run will (by epochs, or by iterations for ``runner.max_iters``).

    Args:
        cfg: a config with ``optimizer`` and ``lr_config`` (and maybe ``momentum_config``).
        iters_per_epoch: iterations in an epoch (images / ``data.samples_per_gpu``, rounded up).
        max_epochs: the run's length in epochs (default: the config's ``runner``).

    Returns:
        A DataFrame with ``iter`` (from 0), ``epoch`` (from 1) and ``lr`` (of the optimizer's
        first parameter group), plus ``momentum`` when the config has a ``momentum_config``.
    """
    import logging

    import pandas as pd
    import torch

    from detlab.config import Config
    from detlab.engine.hooks import build_lr_hook
    from detlab.engine.hooks.momentum_updater import build_momentum_hook
    from detlab.engine.optim import build_optimizer
    from detlab.engine.setup import run_length

    cfg = cfg if isinstance(cfg, Config) else Config(dict(cfg))
    length = dict(max_epochs=int(max_epochs)) if max_epochs else run_length(cfg)
    per_epoch, by_epoch = int(iters_per_epoch), "max_epochs" in length
    max_iters = length["max_epochs"] * per_epoch if by_epoch else length["max_iters"]
    hooks = [build_lr_hook(cfg["lr_config"], default_by_epoch=by_epoch)]
    if cfg.get("momentum_config"):
        hooks.append(build_momentum_hook(cfg["momentum_config"]))
    optimizer = build_optimizer(torch.nn.Linear(1, 1, bias=False), cfg["optimizer"])
    trainer = SimpleNamespace(optimizer=optimizer, epoch=0, iter=0, inner_iter=0,
                              by_epoch=by_epoch, iters_per_epoch=per_epoch, max_iters=max_iters,
                              max_epochs=-(-max_iters // per_epoch),
                              logger=logging.getLogger("detlab"))
    for hook in hooks:
        hook.before_run(trainer)
        if not by_epoch:
            hook.before_epoch(trainer)  # an iteration-based run announces one epoch only
    rows = []
    for step in range(max_iters):
        trainer.iter, (trainer.epoch, trainer.inner_iter) = step, divmod(step, per_epoch)
        for hook in hooks:
            if by_epoch and trainer.inner_iter == 0:
                hook.before_train_epoch(trainer)
        for hook in hooks:
            hook.before_train_iter(trainer)
        group = optimizer.param_groups[0]
        momentum = group["betas"][0] if "betas" in group else group.get("momentum")
        rows.append((step, trainer.epoch + 1, group["lr"], momentum))
    table = pd.DataFrame(rows, columns=["iter", "epoch", "lr", "momentum"])
    return table if len(hooks) > 1 else table.drop(columns="momentum")


def checkpoint_summary(path: str | os.PathLike) -> dict[str, Any]:
    """What a detlab checkpoint holds: its top-level keys, the ``meta`` it was saved with
    (``epoch``, ``iter``, ``CLASSES`` ...), its number of tensors and parameters, and its size
    in MB. Read with ``weights_only=True``."""
    import torch

    checkpoint = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    state = checkpoint.get("state_dict", {})
    return dict(keys=sorted(checkpoint), meta=dict(checkpoint.get("meta", {})),
                tensors=len(state), parameters=int(sum(t.numel() for t in state.values())),
                megabytes=round(os.path.getsize(path) / 2**20, 2))


def compare_weights(a: str | os.PathLike, b: str | os.PathLike) -> dict[str, Any]:
    """How far apart the weights of two checkpoints are: ``identical`` (every tensor equal, bit
    for bit), ``tensors`` (how many), ``differing`` (how many differ) and ``max_abs_diff``."""
    from detlab.checkpoint import read_checkpoint

    first, second = read_checkpoint(a)["state_dict"], read_checkpoint(b)["state_dict"]
    if first.keys() != second.keys():
        raise ValueError(f"{a} and {b} hold different tensors: "
                         f"{sorted(set(first) ^ set(second))[:5]}")
    differing = [k for k in first if not torch.equal(first[k], second[k])]
    gaps = [float((first[k].double() - second[k].double()).abs().max()) for k in differing]
    return dict(identical=not differing, tensors=len(first), differing=len(differing),
                max_abs_diff=max(gaps, default=0.0))


def panning_frames(images: Sequence[str | os.PathLike | np.ndarray], num_frames: int = 24,
                   size: int | None = None) -> list[np.ndarray]:
    """Frames of a camera panning across ``images`` put side by side: each frame is a
    ``size x size`` window (default the images' height) sliding from the left end to the right
    end of the strip. Images are RGB arrays or paths; they are resized to a common height.

    Returns ``num_frames`` ``H x W x 3`` uint8 RGB arrays (an even side, as video codecs want).
    """
    from PIL import Image

    pictures = [Image.open(p).convert("RGB") if not isinstance(p, np.ndarray)
                else Image.fromarray(p) for p in images]
    if not pictures:
        raise ValueError("panning_frames needs at least one image")
    height = pictures[0].height
    strip = np.concatenate([np.asarray(p.resize((max(1, round(p.width * height / p.height)),
                                                 height))) for p in pictures], axis=1)
    side = min(size or height, height, strip.shape[1])
    side -= side % 2
    starts = np.linspace(0, strip.shape[1] - side, num_frames).round().astype(int)
    return [np.ascontiguousarray(strip[:side, s:s + side]) for s in starts]


def write_video(frames: Sequence[np.ndarray], path: str | os.PathLike, fps: int = 8,
                codec: str = "mpeg4") -> str:
    """Write ``H x W x 3`` uint8 RGB frames (all the same even size) to a video file with
    PyAV; returns the path."""
    import av

    path = os.fspath(path)
    if not frames:
        raise ValueError("write_video needs at least one frame")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    height, width = frames[0].shape[:2]
    with av.open(path, mode="w") as container:
        stream = container.add_stream(codec, rate=int(fps))
        stream.height, stream.width, stream.pix_fmt = height, width, "yuv420p"
        for rgb in frames:
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(rgb), format="rgb24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():  # flush the frames the encoder still holds
            container.mux(packet)
    return path


def count_video_frames(path: str | os.PathLike) -> int:
    """The number of frames of a video file (decoded with PyAV)."""
    import av

    with av.open(os.fspath(path)) as container:
        return sum(1 for _ in container.decode(video=0))

