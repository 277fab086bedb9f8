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

if TYPE_CHECKING:
    import pandas as pd

    from detlab.config import Config


def lr_schedule(cfg: Config | Mapping[str, Any], iters_per_epoch: int,
                max_epochs: int | None = None) -> pd.DataFrame:
    """The learning rate of each training iteration as the config's ``lr_config`` sets it
    (warmup included), computed by the very hook training uses, on a stand-in trainer.

    Args:
        cfg: a config with ``optimizer.lr`` and ``lr_config``.
        iters_per_epoch: iterations in an epoch (images / ``data.samples_per_gpu``, rounded up).
        max_epochs: the run's length (default ``runner.max_epochs``).

    Returns:
        A DataFrame with ``iter`` (from 0), ``epoch`` (from 1) and ``lr``.
    """
    import pandas as pd

    from detlab.engine.hooks import build_lr_hook
    from detlab.engine.trainer import _max_epochs

    epochs = int(max_epochs or _max_epochs(cfg))
    hook = build_lr_hook(dict(cfg["lr_config"]))
    group = {"lr": float(cfg["optimizer"]["lr"])}
    trainer = SimpleNamespace(optimizer=SimpleNamespace(param_groups=[group]), epoch=0, iter=0,
                              max_epochs=epochs, iters_per_epoch=int(iters_per_epoch),
                              max_iters=epochs * int(iters_per_epoch))
    hook.before_run(trainer)
    rows = []
    for step in range(trainer.max_iters):
        trainer.iter, trainer.epoch = step, step // trainer.iters_per_epoch
        hook.before_train_iter(trainer)
        rows.append((step, trainer.epoch + 1, group["lr"]))
    return pd.DataFrame(rows, columns=["iter", "epoch", "lr"])


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

