"""From samples to batches: ``collate`` into a ``Batch``, and ``build_dataloader``.

The samplers and the per-sample seeding live in :mod:`detlab.data.samplers` (re-exported
here).
"""

from __future__ import annotations

import random
import signal
from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from detlab.config import ConfigError, did_you_mean
from detlab.data.masks import masks_to_bool_tensor
from detlab.data.samplers import (  # noqa: F401  (re-exported)
    ClassAwareSampler,
    DistributedGroupSampler,
    GroupSampler,
    SampleKey,
    SeededDataset,
)
from detlab.dist import get_dist_info
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
    """The ground truth of a training sample, ``{}`` for a test sample; plus the sample's
    ``proposals`` (``(n, 4)``, from ``LoadProposals``) when it has them."""
    proposals = {} if sample.get("proposals") is None else {
        "proposals": torch.as_tensor(np.asarray(sample["proposals"]), dtype=torch.float32)}
    if "gt_bboxes" not in sample:
        return proposals
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
    return {**target, **proposals}


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
# data loader
# --------------------------------------------------------------------------------------------


def worker_init_fn(worker_id: int, num_workers: int = 1, rank: int = 0) -> None:
    """Prepare a loader worker: ignore SIGINT, and seed NumPy and ``random`` from torch's seed
    of the worker.

    A Ctrl-C reaches every process of the terminal's group; the main process handles it (and
    shuts the workers down), so the workers ignore it rather than each print a traceback.

    torch seeds each worker with ``base_seed + worker_id``, ``base_seed`` drawn from the
    loader's generator (seeded with ``seed + rank`` by :func:`build_dataloader`) at each epoch:
    workers differ from each other and from epoch to epoch, and the whole run repeats for a
    seed and a number of workers (MMDetection's seeding). Without this, forked workers would
    share one NumPy state and augment alike. A training loader of :func:`build_dataloader`
    seeds each sample instead (:class:`SeededDataset`), which does not depend on the workers.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker_seed = (torch.initial_seed() + num_workers * rank) % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)


def _shared_seed(dist: bool, world_size: int) -> int:
    """A new seed from NumPy's global generator; in a distributed run, rank 0's for all."""
    seed = [int(np.random.randint(2**31))]
    if dist and world_size > 1:
        torch_dist.broadcast_object_list(seed, src=0)
    return seed[0]


CLASS_AWARE_KEYS = ("num_sample_class",)
_CLASS_AWARE_PATH = "data.train_dataloader.class_aware_sampler"


def class_aware_setting(class_aware_sampler: Mapping[str, Any] | None, shuffle: bool
                        ) -> int | None:
    """``num_sample_class`` of a ``class_aware_sampler`` dict (default 1), None without one;
    a ConfigError for an unknown key, a bad value, or a loader that does not train."""
    if class_aware_sampler is None:
        return None
    if not isinstance(class_aware_sampler, Mapping):
        raise ConfigError(f"{_CLASS_AWARE_PATH} must be a dict such as "
                          f"dict(num_sample_class=1), got {class_aware_sampler!r}")
    for key in class_aware_sampler:
        if key not in CLASS_AWARE_KEYS:
            raise ConfigError(f"{_CLASS_AWARE_PATH}.{key} is not a class-aware sampling "
                              f"setting.{did_you_mean(str(key), CLASS_AWARE_KEYS)} It takes: "
                              f"{', '.join(CLASS_AWARE_KEYS)}.")
    if not shuffle:
        raise ConfigError("class_aware_sampler orders training data (shuffle=True); set it in "
                          "data.train_dataloader only, not for a test or validation loader")
    count = class_aware_sampler.get("num_sample_class", 1)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ConfigError(f"{_CLASS_AWARE_PATH}.num_sample_class must be an int >= 1 (images "
                          f"drawn from a class at each visit), got {count!r}")
    return count


def _sampler(dataset: Dataset, batch_size: int, dist: bool, shuffle: bool, seed: int | None,
             drop_last: bool, with_epoch: bool, rank: int, world_size: int,
             num_sample_class: int | None = None) -> Sampler | None:
    """The sampler of :func:`build_dataloader` (None: the dataset's order)."""
    if num_sample_class is not None:
        replicas, this_rank = (world_size, rank) if dist else (1, 0)
        return ClassAwareSampler(dataset, batch_size, replicas, this_rank, seed,
                                 num_sample_class, with_epoch)
    if shuffle and dist:
        return DistributedGroupSampler(dataset, batch_size, world_size, rank, seed, with_epoch)
    if shuffle:
        return GroupSampler(dataset, batch_size, seed, with_epoch)
    if dist:  # testing: padded to a multiple of world_size, results gathered by the caller
        return DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=False,
                                  drop_last=drop_last)
    return None


def build_dataloader(dataset: Dataset, samples_per_gpu: int, workers_per_gpu: int,
                     num_gpus: int = 1, dist: bool = False, shuffle: bool = True,
                     seed: int | None = None, drop_last: bool = False, pin_memory: bool = False,
                     persistent_workers: bool = False, per_sample_seed: bool | None = None,
                     class_aware_sampler: Mapping[str, Any] | None = None,
                     **kwargs: Any) -> DataLoader:
    """A DataLoader of ``dataset`` that yields :class:`Batch` (see :func:`collate`).

    Training (``shuffle=True``) batches come from one aspect-ratio group each
    (:class:`GroupSampler`; :class:`DistributedGroupSampler` when ``dist``, whose processes
    together see the batches of one process at the global batch). Their order is a function
    of the seed and the epoch, and each sample's augmentations of the seed, the epoch and its
    index (:class:`SeededDataset`), whatever the number of workers. The engine sets the epoch
    with ``loader.sampler.set_epoch(epoch)``, or resumes mid-epoch with
    ``loader.sampler.set_position(epoch, start_batch)``.

    With ``class_aware_sampler=dict(num_sample_class=k)`` (``data.train_dataloader`` of
    MMDetection's OpenImages configs) training draws images class by class instead
    (:class:`ClassAwareSampler`, ``k`` images a class visit, in one process or ``N``); the
    dataset needs ``get_cat2imgs()``, as every dataset of :class:`CustomDataset`'s family has.

    Args:
        samples_per_gpu, workers_per_gpu: batch size and loader processes per GPU (process).
        num_gpus: GPUs fed by this one process (not distributed).
        dist: shard the data over the processes of ``torch.distributed``; for testing
            (``shuffle=False``) through torch's ``DistributedSampler`` (padded; the caller
            gathers the results).
        shuffle: training order (shuffled, grouped, seeded) rather than the dataset's.
        seed: the run's seed (>= 0). Training without one draws one from NumPy's global
            generator (rank 0's in a distributed run); either way it is ``loader.seed``.
        drop_last, pin_memory, persistent_workers, kwargs: DataLoader's.
        per_sample_seed: seed each sample (default: when training); False seeds each worker
            from the loader's generator instead, as MMDetection (:func:`worker_init_fn`).
        class_aware_sampler: ``dict(num_sample_class=k)`` for class-aware sampling
            (training only); None for the aspect-ratio groups.

    ``loader.dataset`` is ``dataset``, or its :class:`SeededDataset` wrapper, which forwards
    ``CLASSES``, ``flag``, ``evaluate`` and the rest to it. ``len(loader)`` is the number of
    batches an epoch of this process.
    """
    per_sample_seed = shuffle if per_sample_seed is None else per_sample_seed
    num_sample_class = class_aware_setting(class_aware_sampler, shuffle)
    if per_sample_seed and not shuffle:
        raise ValueError("per_sample_seed needs shuffle=True (a training loader); leave it "
                         "unset for a test loader")
    rank, world_size = get_dist_info()
    if shuffle and seed is None:
        seed = _shared_seed(dist, world_size)
    if dist:
        batch_size, num_workers = samples_per_gpu, workers_per_gpu
    else:
        batch_size, num_workers = num_gpus * samples_per_gpu, num_gpus * workers_per_gpu
    sampler = _sampler(dataset, batch_size, dist, shuffle, seed, drop_last, per_sample_seed,
                       rank, world_size, num_sample_class)
    if per_sample_seed:
        dataset = SeededDataset(dataset, seed)
    # the loader's own generator: drawing the workers' base seed leaves torch's global one alone
    generator = torch.Generator().manual_seed((seed or 0) + rank)
    init = partial(worker_init_fn, num_workers=num_workers, rank=rank)
    loader = DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
        collate_fn=collate, pin_memory=pin_memory, drop_last=drop_last, worker_init_fn=init,
        generator=generator, persistent_workers=persistent_workers and num_workers > 0, **kwargs)
    loader.seed = seed
    return loader
