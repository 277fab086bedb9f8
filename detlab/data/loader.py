"""From samples to batches: ``collate`` into a ``Batch``, samplers, and ``build_dataloader``."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from detlab.data.masks import masks_to_bool_tensor
from detlab.engine.dist import get_dist_info
from detlab.structures import Batch

# --------------------------------------------------------------------------------------------
# collate
# --------------------------------------------------------------------------------------------


def pad_images(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """``(C, h_i, w_i)`` images -> one ``(B, C, H, W)`` float tensor, each image top-left and
    padded with zeros at the bottom and right to the largest ``H`` and ``W``."""
    channels = {img.shape[0] for img in images}
    if len(channels) != 1:
        raise ValueError(f"images of one batch must have the same channels, got {channels}")
    height = max(img.shape[1] for img in images)
    width = max(img.shape[2] for img in images)
    dtype = images[0].dtype if images[0].is_floating_point() else torch.float32
    out = images[0].new_zeros((len(images), channels.pop(), height, width), dtype=dtype)
    for i, img in enumerate(images):
        out[i, :, :img.shape[1], :img.shape[2]] = img
    return out


def _image_of(sample: dict[str, Any], index: int) -> torch.Tensor:
    img = sample.get("img")
    if not isinstance(img, torch.Tensor) or img.ndim != 3:
        kind = type(img).__name__ if not isinstance(img, torch.Tensor) else f"{img.ndim}-D tensor"
        raise TypeError(f"sample {index} has an 'img' of type {kind}; collate needs a C x H x W "
                        "tensor: end the pipeline with DefaultFormatBundle (or ImageToTensor) "
                        "and Collect")
    if "img_metas" not in sample:
        raise KeyError(f"sample {index} has no 'img_metas'; end the pipeline with Collect")
    return img


def _pad_planes(planes: torch.Tensor, shape: tuple[int, int], value: int,
                index: int, what: str) -> torch.Tensor:
    """``(k, h, w)`` planes padded at the bottom and right to ``shape`` ``(H, W)``."""
    h, w = planes.shape[-2:]
    if h > shape[0] or w > shape[1]:
        raise ValueError(f"sample {index} has {what} of {h} x {w}, larger than its batch's "
                         f"images ({shape[0]} x {shape[1]}); pad or resize the {what} with "
                         "the image (Resize / Pad handle mask_fields and seg_fields)")
    out = planes.new_full((planes.shape[0], *shape), value)
    out[:, :h, :w] = planes
    return out


def _masks_of(sample: dict[str, Any], shape: tuple[int, int], index: int) -> torch.Tensor:
    """``(n, H, W)`` bool masks of a sample (mask objects, arrays or tensors)."""
    masks = masks_to_bool_tensor(sample["gt_masks"])
    if masks.ndim != 3:
        raise ValueError(f"sample {index} has gt_masks of shape {tuple(masks.shape)}; "
                         "expected (n, h, w)")
    return _pad_planes(masks, shape, False, index, "masks")


def _semantic_seg_of(sample: dict[str, Any], shape: tuple[int, int], index: int
                     ) -> torch.Tensor:
    """``(H, W)`` int64 semantic map padded with 255 (ignored)."""
    seg = torch.as_tensor(np.asarray(sample["gt_semantic_seg"])
                          if not isinstance(sample["gt_semantic_seg"], torch.Tensor)
                          else sample["gt_semantic_seg"])
    seg = seg.reshape(-1, *seg.shape[-2:])[:1].to(torch.int64)
    return _pad_planes(seg, shape, 255, index, "semantic maps")[0]


def _target_of(sample: dict[str, Any], shape: tuple[int, int], index: int
               ) -> dict[str, torch.Tensor]:
    """The ground truth of a training sample, ``{}`` for a test sample."""
    if "gt_bboxes" not in sample:
        return {}
    boxes = torch.as_tensor(sample["gt_bboxes"], dtype=torch.float32).reshape(-1, 4)
    labels = sample.get("gt_labels", torch.zeros(len(boxes), dtype=torch.int64))
    ignore = sample.get("gt_bboxes_ignore", torch.zeros(0, 4))
    target = dict(boxes=boxes, labels=torch.as_tensor(labels, dtype=torch.int64).reshape(-1),
                  boxes_ignore=torch.as_tensor(ignore, dtype=torch.float32).reshape(-1, 4))
    if sample.get("gt_masks") is not None:
        target["masks"] = _masks_of(sample, shape, index)
        if len(target["masks"]) != len(boxes):
            raise ValueError(f"sample {index} has {len(boxes)} boxes but "
                             f"{len(target['masks'])} masks")
    if sample.get("gt_semantic_seg") is not None:
        target["semantic_seg"] = _semantic_seg_of(sample, shape, index)
    return target


def _collate_one(samples: Sequence[dict[str, Any]]) -> Batch:
    images = pad_images([_image_of(s, i) for i, s in enumerate(samples)])
    shape = tuple(images.shape[-2:])
    metas = [dict(s["img_metas"], batch_input_shape=shape) for s in samples]
    return Batch(images, [_target_of(s, shape, i) for i, s in enumerate(samples)], metas)


def collate(samples: Sequence[dict[str, Any]]) -> Batch | list[Batch]:
    """Samples (outputs of a pipeline ending with ``Collect``) -> a :class:`Batch`.

    ``images`` are padded at the bottom and right to the largest height and width; ``targets``
    hold ``boxes`` (float32 xyxy), ``labels`` (int64), ``boxes_ignore`` (``(k, 4)``, maybe
    empty) for training samples -- plus ``masks`` (``(n, H, W)`` bool, one per box, padded
    with False to the batch's ``H x W``) when the sample has ``gt_masks`` (mask objects,
    arrays or tensors) and ``semantic_seg`` (``(H, W)`` int64, padded with 255) when it has
    ``gt_semantic_seg`` -- and are ``{}`` for test samples; ``metas`` are the ``img_metas``
    plus ``batch_input_shape`` ``(H, W)``.

    Samples of ``MultiScaleFlipAug`` (each key a list over augmentations) give a Batch when
    there is one augmentation, else a list of Batch, one per augmentation.
    """
    if not samples:
        raise ValueError("collate needs at least one sample")
    if not isinstance(samples[0].get("img"), list):
        return _collate_one(samples)
    counts = {len(s["img"]) for s in samples}
    if len(counts) != 1:
        raise ValueError(f"test samples have different numbers of augmentations: {counts}")
    batches = [_collate_one([{k: v[a] for k, v in s.items()} for s in samples])
               for a in range(counts.pop())]
    return batches[0] if len(batches) == 1 else batches


# --------------------------------------------------------------------------------------------
# samplers
# --------------------------------------------------------------------------------------------


class GroupSampler(Sampler[int]):
    """Shuffled indices whose every run of ``samples_per_gpu`` comes from one aspect-ratio group
    (``dataset.flag``), so that a batch pads little. Each group is topped up with repeated
    random indices to a multiple of ``samples_per_gpu``, as in MMDetection.

    The order depends on ``seed`` and the epoch only: each pass uses the next epoch unless
    :meth:`set_epoch` says which one.
    """

    def __init__(self, dataset: Dataset, samples_per_gpu: int = 1, seed: int | None = None) -> None:
        flag = getattr(dataset, "flag", None)
        self.flag = (np.zeros(len(dataset), dtype=np.int64) if flag is None
                     else np.asarray(flag, dtype=np.int64))
        self.samples_per_gpu = samples_per_gpu
        # without a seed, draw one from NumPy's global generator, so np.random.seed still rules
        self.seed = int(np.random.randint(2**31)) if seed is None else int(seed)
        self.epoch = 0
        sizes = np.bincount(self.flag) if len(self.flag) else np.zeros(0, dtype=np.int64)
        self.num_samples = int(sum(-(-int(n) // samples_per_gpu) * samples_per_gpu
                                   for n in sizes))

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` for the next pass."""
        self.epoch = epoch

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        per = self.samples_per_gpu
        chunks = []
        for group in np.unique(self.flag):
            members = rng.permutation(np.flatnonzero(self.flag == group))
            extra = -(-len(members) // per) * per - len(members)
            members = np.concatenate([members, rng.choice(members, extra)])
            chunks += np.split(members, len(members) // per)
        order = rng.permutation(len(chunks))
        indices = np.concatenate([chunks[i] for i in order]) if chunks else np.zeros(0)
        return iter(indices.astype(np.int64).tolist())

    def __len__(self) -> int:
        return self.num_samples


# --------------------------------------------------------------------------------------------
# data loader
# --------------------------------------------------------------------------------------------


def worker_init_fn(worker_id: int, num_workers: int = 1, rank: int = 0) -> None:
    """Seed NumPy and ``random`` in a loader worker from torch's seed of that worker.

    torch seeds each worker with ``base_seed + worker_id``, ``base_seed`` drawn from the
    loader's generator (seeded with ``seed + rank`` by :func:`build_dataloader`) at each epoch:
    workers differ from each other and from epoch to epoch, and the whole run repeats for a
    seed. Without this, forked workers would share one NumPy state and augment alike.
    """
    worker_seed = (torch.initial_seed() + num_workers * rank) % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def build_dataloader(dataset: Dataset, samples_per_gpu: int, workers_per_gpu: int,
                     num_gpus: int = 1, dist: bool = False, shuffle: bool = True,
                     seed: int | None = None, drop_last: bool = False, pin_memory: bool = False,
                     persistent_workers: bool = False, **kwargs: Any) -> DataLoader:
    """A DataLoader of ``dataset`` that yields :class:`Batch` (see :func:`collate`).

    Args:
        samples_per_gpu, workers_per_gpu: batch size and loader processes per GPU (process).
        num_gpus: GPUs fed by this one process (not distributed).
        dist: shard the data over the processes of ``torch.distributed`` through a
            ``DistributedSampler`` (its epoch must be set by the caller each epoch).
        shuffle: shuffle (grouped by aspect ratio when not distributed).
        seed: makes the order and the workers' random streams repeat.
        drop_last, pin_memory, persistent_workers, kwargs: DataLoader's.
    """
    rank, world_size = get_dist_info()
    if dist:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                     shuffle=shuffle, seed=seed or 0, drop_last=drop_last)
        batch_size, num_workers = samples_per_gpu, workers_per_gpu
    else:
        sampler = GroupSampler(dataset, samples_per_gpu, seed) if shuffle else None
        batch_size, num_workers = num_gpus * samples_per_gpu, num_gpus * workers_per_gpu
    generator = None if seed is None else torch.Generator().manual_seed(seed + rank)
    init = partial(worker_init_fn, num_workers=num_workers, rank=rank)
    return DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        collate_fn=collate, pin_memory=pin_memory, drop_last=drop_last, worker_init_fn=init,
        generator=generator, persistent_workers=persistent_workers and num_workers > 0, **kwargs)

