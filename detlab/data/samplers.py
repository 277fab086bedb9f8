"""Training order and per-sample randomness: samplers whose order is a function of
(seed, epoch), with a position (epoch, batch) to resume from, and a dataset wrapper whose
augmentations are a function of (seed, epoch, index).

``GroupSampler`` feeds one process; ``DistributedGroupSampler`` gives each of ``N`` processes
its slice of the batches ``GroupSampler`` would give one process at the global batch size, so a
run on ``N`` processes sees, step by step, the same images as a run on one.
``ClassAwareSampler`` draws images class by class (MMDetection's class-aware sampling, as the
OpenImages configs train), for one process or for ``N`` alike.

All of them can yield :class:`SampleKey` ``(index, epoch)`` instead of plain indices
(``with_epoch=True``): :class:`SeededDataset` reads the epoch from the key to seed each
sample's augmentations.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from detlab.dist import get_dist_info


class SampleKey(NamedTuple):
    """What a sampler with ``with_epoch=True`` yields: a dataset index and the epoch it is drawn
    for. The DataLoader passes it unchanged to ``dataset[key]``."""

    index: int
    epoch: int


def group_flags(dataset: Dataset) -> np.ndarray:
    """``(len(dataset),)`` int64 aspect-ratio groups of ``dataset`` (its ``flag``; all 0 when it
    has none)."""
    flag = getattr(dataset, "flag", None)
    if flag is None:
        return np.zeros(len(dataset), dtype=np.int64)
    flag = np.asarray(flag, dtype=np.int64)
    if flag.shape != (len(dataset),):
        raise ValueError(f"dataset.flag has shape {flag.shape} but the dataset has {len(dataset)} "
                         "samples; a dataset's flag holds one aspect-ratio group per sample")
    return flag


def grouped_length(flag: np.ndarray, batch_size: int) -> int:
    """Indices per epoch when each group is topped up to a multiple of ``batch_size``."""
    sizes = np.bincount(flag) if len(flag) else np.zeros(0, dtype=np.int64)
    return int((-(-sizes // batch_size) * batch_size).sum())


def group_order(flag: np.ndarray, batch_size: int, seed: int, epoch: int) -> np.ndarray:
    """The ``(grouped_length(flag, batch_size),)`` int64 indices of one epoch, MMDetection's
    ``GroupSampler`` way: each group shuffled and topped up with random members of its own to
    a multiple of ``batch_size``, cut into batches of ``batch_size``, and the batches of all
    groups shuffled together. A function of ``(flag, batch_size, seed, epoch)`` only."""
    rng = np.random.default_rng([seed, epoch])
    batches = []
    for group in np.unique(flag):
        members = rng.permutation(np.flatnonzero(flag == group))
        extra = -(-len(members) // batch_size) * batch_size - len(members)
        members = np.concatenate([members, rng.choice(members, extra)])
        batches.append(members.reshape(-1, batch_size))  # (batches of the group, batch_size)
    if not batches:
        return np.zeros(0, dtype=np.int64)
    batches = np.concatenate(batches)
    return batches[rng.permutation(len(batches))].reshape(-1).astype(np.int64)


def _checked_seed(seed: int | None) -> int:
    """``seed`` as an int >= 0; without one, draw one from NumPy's global generator (so that
    ``np.random.seed`` still rules)."""
    if seed is None:
        return int(np.random.randint(2**31))
    if int(seed) < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return int(seed)


class _EpochSampler(Sampler):
    """The epoch and position bookkeeping shared by the samplers here; a subclass gives
    ``_order(epoch)``, its indices of one epoch, ``len(self)`` of them."""

    def __init__(self, batch_size: int, seed: int | None, with_epoch: bool) -> None:
        if batch_size < 1:
            raise ValueError(f"samples_per_gpu must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.seed = _checked_seed(seed)
        self.with_epoch = with_epoch
        self.epoch = 0
        self.start_batch = 0

    @property
    def batches_per_epoch(self) -> int:
        """Batches of ``batch_size`` in one epoch (every batch is full)."""
        return len(self) // self.batch_size

    def set_epoch(self, epoch: int) -> None:
        """The next pass yields the whole order of ``epoch``."""
        self.set_position(epoch, 0)

    def set_position(self, epoch: int, start_batch: int) -> None:
        """The next pass yields the order of ``epoch`` after its first ``start_batch`` batches
        (``len(self) - start_batch * batch_size`` indices); the pass after it starts epoch
        ``epoch + 1`` from its first batch."""
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        if not 0 <= start_batch <= self.batches_per_epoch:
            raise ValueError(f"start_batch {start_batch} is outside the {self.batches_per_epoch} "
                             f"batches of an epoch; resume at a batch 0..{self.batches_per_epoch}"
                             " (the data, batch size or number of processes may have changed "
                             "since the checkpoint)")
        self.epoch, self.start_batch = int(epoch), int(start_batch)

    def _order(self, epoch: int) -> np.ndarray:
        raise NotImplementedError

    def __iter__(self) -> Iterator[int] | Iterator[SampleKey]:
        epoch, start = self.epoch, self.start_batch
        self.epoch, self.start_batch = epoch + 1, 0
        indices = self._order(epoch)[start * self.batch_size:].tolist()
        if self.with_epoch:
            return iter([SampleKey(i, epoch) for i in indices])
        return iter(indices)


class GroupSampler(_EpochSampler):
    """Shuffled indices whose every run of ``samples_per_gpu`` comes from one aspect-ratio group
    (``dataset.flag``), so that a batch pads little. Each group is topped up with repeated
    random members to a multiple of ``samples_per_gpu``, as in MMDetection (see
    :func:`group_order`).

    The order is a function of ``seed`` and the epoch only. Each pass uses the next epoch
    unless :meth:`set_epoch` or :meth:`set_position` says which one (and where to start).

    Args:
        dataset: anything with ``__len__`` (and ``flag``, else one group).
        samples_per_gpu: the batch size the groups are cut into.
        seed: without one, drawn from NumPy's global generator.
        with_epoch: yield :class:`SampleKey` ``(index, epoch)`` instead of ``index``.
    """

    def __init__(self, dataset: Dataset, samples_per_gpu: int = 1, seed: int | None = None,
                 with_epoch: bool = False) -> None:
        super().__init__(samples_per_gpu, seed, with_epoch)
        self.flag = group_flags(dataset)
        self.samples_per_gpu = samples_per_gpu
        self.num_samples = grouped_length(self.flag, samples_per_gpu)

    def _order(self, epoch: int) -> np.ndarray:
        return group_order(self.flag, self.samples_per_gpu, self.seed, epoch)

    def __len__(self) -> int:
        return self.num_samples


class DistributedGroupSampler(_EpochSampler):
    """This process's share of the batches of a run on ``num_replicas`` processes.

    With ``N = num_replicas`` processes of ``b = samples_per_gpu`` samples each, the global
    batch is ``B = N * b``. The global order of an epoch is the order of
    ``GroupSampler(dataset, samples_per_gpu=B, seed)`` for that epoch (batches of ``B`` from
    one aspect-ratio group), and process ``rank`` takes ``[rank * b, (rank + 1) * b)`` of
    each global batch. So the ``N`` processes together see at each step exactly the images one
    process sees at batch ``B``: a run repeats, batch for batch, when the number of processes
    changes but the global batch does not. MMDetection's ``DistributedGroupSampler`` (groups
    cut per process, then dealt out) does not promise this.

    Every process needs the same ``seed`` (``build_dataloader`` shares it); epochs, positions
    and ``len`` (``batches_per_epoch * b``) are per process, as in :class:`GroupSampler`.

    Args:
        dataset: anything with ``__len__`` (and ``flag``, else one group); the same on every
            process.
        samples_per_gpu: ``b``, the batch of one process.
        num_replicas, rank: ``N`` and this process's rank (default: the process group's).
        seed: the same on every process; without one, drawn from NumPy's global generator
            (then seed NumPy alike everywhere first).
        with_epoch: yield :class:`SampleKey` ``(index, epoch)`` instead of ``index``.
    """

    def __init__(self, dataset: Dataset, samples_per_gpu: int = 1,
                 num_replicas: int | None = None, rank: int | None = None,
                 seed: int | None = None, with_epoch: bool = False) -> None:
        super().__init__(samples_per_gpu, seed, with_epoch)
        group_rank, group_size = get_dist_info()
        self.num_replicas = group_size if num_replicas is None else num_replicas
        self.rank = group_rank if rank is None else rank
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is outside 0..{self.num_replicas - 1} "
                             f"(num_replicas={self.num_replicas})")
        self.flag = group_flags(dataset)
        self.samples_per_gpu = samples_per_gpu
        self.global_batch = self.num_replicas * samples_per_gpu
        self.num_samples = (grouped_length(self.flag, self.global_batch)
                            // self.num_replicas)

    def _order(self, epoch: int) -> np.ndarray:
        order = group_order(self.flag, self.global_batch, self.seed, epoch)
        shares = order.reshape(-1, self.num_replicas, self.samples_per_gpu)  # (steps, N, b)
        return shares[:, self.rank].reshape(-1)

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (f"DistributedGroupSampler(rank {self.rank} of {self.num_replicas}, "
                f"{self.samples_per_gpu} per process, seed {self.seed})")


# --------------------------------------------------------------------------------------------
# class-aware sampling
# --------------------------------------------------------------------------------------------


def class_cycle(rng: np.random.Generator, images: np.ndarray, count: int) -> np.ndarray:
    """The first ``count`` of an endless cycle through ``images``, each round of which is a
    new shuffle of all of them: ``(count,)`` int64."""
    rounds = -(-count // len(images))
    shuffles = rng.permuted(np.tile(images, (rounds, 1)), axis=1)  # (rounds, len(images))
    return shuffles.reshape(-1)[:count].astype(np.int64)


def class_aware_order(class_images: list[np.ndarray], total: int, num_sample_class: int,
                      seed: int, epoch: int) -> np.ndarray:
    """The ``(total,)`` int64 indices of one epoch of class-aware sampling.

    ``class_images[k]`` holds the (non-empty) dataset indices of the images of class ``k``.
    Classes are visited in rounds, each round a new shuffle of all ``K`` classes; a visit to
    class ``k`` takes the next ``num_sample_class`` images of ``k``'s own cycle
    (:func:`class_cycle`, reshuffled each time it is used up). The first ``total`` indices of
    ``ceil(total / (K * num_sample_class))`` rounds make the epoch, so with
    ``num_sample_class=1`` each class appears ``floor`` or ``ceil`` of ``total / K`` times.
    A function of ``(class_images, total, num_sample_class, seed, epoch)`` only.
    """
    rng = np.random.default_rng([seed, epoch])
    num_classes = len(class_images)
    rounds = -(-total // (num_classes * num_sample_class))
    visits = rng.permuted(np.tile(np.arange(num_classes), (rounds, 1)), axis=1)  # (rounds, K)
    slots = np.repeat(visits.reshape(-1), num_sample_class)[:total]  # (total,) class of each
    draws = np.bincount(slots, minlength=num_classes)  # (K,) images taken from each class
    picks = [class_cycle(rng, images, int(n))
             for images, n in zip(class_images, draws, strict=True)]
    order = np.empty(total, dtype=np.int64)
    # the slots of class 0 in epoch order, then those of class 1, ...: each gets its picks
    order[np.argsort(slots, kind="stable")] = np.concatenate([np.zeros(0, np.int64), *picks])
    return order


def class_images_of(dataset: Dataset) -> tuple[list[int], list[np.ndarray]]:
    """The labels that have images and, for each, its ``(n_k,)`` int64 image indices, from
    ``dataset.get_cat2imgs()`` (``{label: [indices]}``)."""
    if not callable(getattr(dataset, "get_cat2imgs", None)):
        raise TypeError(
            f"class-aware sampling needs dataset.get_cat2imgs() ({{label: [indices of the "
            f"images with that label]}}), and {type(dataset).__name__} has none; train on a "
            "dataset of CustomDataset's family (CocoDataset, VOCDataset, ...) without a "
            "wrapper, give the dataset a get_cat2imgs method, or drop "
            "data.train_dataloader.class_aware_sampler")
    cat2imgs = dataset.get_cat2imgs()
    labels, images = [], []
    for label in sorted(cat2imgs):
        members = np.asarray(cat2imgs[label], dtype=np.int64).reshape(-1)
        outside = members[(members < 0) | (members >= len(dataset))]
        if len(outside):
            raise ValueError(f"{type(dataset).__name__}.get_cat2imgs() gives class {label} the "
                             f"images {outside[:5].tolist()}, outside the {len(dataset)} "
                             "images of the dataset")
        if len(members):
            labels.append(int(label))
            images.append(members)
    if len(dataset) and not labels:
        raise ValueError(f"class-aware sampling found no class with an image in "
                         f"{type(dataset).__name__} (get_cat2imgs() is empty); check the "
                         "dataset's annotations and classes")
    return labels, images


class ClassAwareSampler(_EpochSampler):
    """Images drawn class by class, so that rare classes are seen as often as common ones
    (MMDetection's ``ClassAwareSampler``, which its OpenImages configs train with through
    ``data.train_dataloader.class_aware_sampler``).

    In each epoch the classes that have images are visited in rounds, each round a new
    shuffle of the classes, and each visit takes the next ``num_sample_class`` images of the
    class's own shuffled cycle of images (:func:`class_aware_order`). With ``N`` processes
    of ``b = samples_per_gpu``, an epoch has MMDetection's length:
    ``ceil(len(dataset) / (N * b)) * b`` indices per process, ``N`` times that in all.

    The split over processes is ``DistributedGroupSampler``'s, not MMDetection's (which
    hands each process a contiguous block of the epoch): each global batch of ``N * b``
    indices is cut into ``N`` slices of ``b``, process ``rank`` taking the slice ``rank``.
    So ``N`` processes together see at each step the batch one process sees at
    ``samples_per_gpu = N * b``. The order is a function of ``seed`` and the epoch only
    (MMDetection's of ``seed + epoch``), the same on every process.

    Args:
        dataset: a dataset with ``get_cat2imgs()`` (``{label: [image indices]}``) and
            ``__len__``; classes without an image are skipped.
        samples_per_gpu: ``b``, the batch of one process.
        num_replicas, rank: ``N`` and this process's rank (default: the process group's).
        seed: the same on every process; without one, drawn from NumPy's global generator.
        num_sample_class: images taken from a class at each visit (an int >= 1).
        with_epoch: yield :class:`SampleKey` ``(index, epoch)`` instead of ``index``.
    """

    def __init__(self, dataset: Dataset, samples_per_gpu: int = 1,
                 num_replicas: int | None = None, rank: int | None = None,
                 seed: int | None = None, num_sample_class: int = 1,
                 with_epoch: bool = False) -> None:
        super().__init__(samples_per_gpu, seed, with_epoch)
        if isinstance(num_sample_class, bool) or not isinstance(num_sample_class, int) \
                or num_sample_class < 1:
            raise ValueError(f"num_sample_class must be an int >= 1, got {num_sample_class!r}")
        group_rank, group_size = get_dist_info()
        self.num_replicas = group_size if num_replicas is None else num_replicas
        self.rank = group_rank if rank is None else rank
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {self.rank} is outside 0..{self.num_replicas - 1} "
                             f"(num_replicas={self.num_replicas})")
        self.samples_per_gpu = samples_per_gpu
        self.num_sample_class = num_sample_class
        self.labels, self.class_images = class_images_of(dataset)
        self.global_batch = self.num_replicas * samples_per_gpu
        self.num_samples = -(-len(dataset) // self.global_batch) * samples_per_gpu
        self.total_size = self.num_samples * self.num_replicas

    def _order(self, epoch: int) -> np.ndarray:
        if not self.total_size:
            return np.zeros(0, dtype=np.int64)
        order = class_aware_order(self.class_images, self.total_size, self.num_sample_class,
                                  self.seed, epoch)
        shares = order.reshape(-1, self.num_replicas, self.samples_per_gpu)  # (steps, N, b)
        return shares[:, self.rank].reshape(-1)

    def __len__(self) -> int:
        return self.num_samples

    def __repr__(self) -> str:
        return (f"ClassAwareSampler({len(self.labels)} classes, {self.num_sample_class} per "
                f"visit, rank {self.rank} of {self.num_replicas}, {self.samples_per_gpu} per "
                f"process, seed {self.seed})")



# --------------------------------------------------------------------------------------------
# per-sample randomness
# --------------------------------------------------------------------------------------------


def sample_seeds(seed: int, epoch: int, index: int) -> tuple[int, np.ndarray, int]:
    """Seeds of Python's ``random``, NumPy's global generator and torch's CPU generator for one
    sample, all from ``np.random.SeedSequence([seed, epoch, index])``."""
    words = np.random.SeedSequence([seed, epoch, index]).generate_state(6, np.uint32)
    python_seed = int(words[0]) << 32 | int(words[1])
    torch_seed = int(words[4]) << 32 | int(words[5])
    return python_seed, words[2:4], torch_seed


@contextmanager
def seeded_globals(seed: int, epoch: int, index: int) -> Iterator[None]:
    """Seed ``random``, ``np.random`` and torch's CPU generator for sample ``index`` of
    ``epoch`` (see :func:`sample_seeds`), and put their previous states back on the way out,
    so that whatever runs around it draws the same numbers as if it had not run. CUDA
    generators are neither seeded nor touched."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    python_seed, numpy_seed, torch_seed = sample_seeds(seed, epoch, index)
    random.seed(python_seed)
    np.random.seed(numpy_seed)
    torch.default_generator.manual_seed(torch_seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


class SeededDataset(Dataset):
    """``dataset`` whose samples, asked for by :class:`SampleKey` ``(index, epoch)``, are
    augmented the same way whoever asks: ``dataset[index]`` runs with ``random``,
    ``np.random`` and torch's CPU generator seeded from ``(seed, epoch, index)``
    (:func:`seeded_globals`), and the caller's generator states are restored afterwards.

    So the augmentations of a run are a function of the seed, the epoch and the index only --
    not of the loader worker, the number of workers, nor of what ran before (a resumed run
    repeats them). Whatever draws inside ``dataset[index]`` repeats too: the retry of a
    sample the pipeline dropped (``CustomDataset``) and the partners a mixing transform
    picks (``MultiImageMixDataset``). In a loader without workers, the main process's random
    streams (the model's and the training loop's) are left as they were.

    This departs on purpose from MMDetection, which seeds each loader worker once
    (``worker_init_fn``), so that its augmentations depend on the number of workers and on
    which worker loads which sample.

    A plain ``int`` key is passed through unseeded. Other attributes (``CLASSES``, ``flag``,
    ``evaluate``, ``cat_ids``, ...) are read from and written to ``dataset``.

    Args:
        dataset: any map-style dataset.
        seed: an int >= 0, the run's seed.
    """

    _OWN = frozenset({"dataset", "seed"})

    def __init__(self, dataset: Dataset, seed: int) -> None:
        if int(seed) < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        object.__setattr__(self, "dataset", dataset)
        object.__setattr__(self, "seed", int(seed))

    def __getitem__(self, key: SampleKey | tuple[int, int] | int) -> Any:
        if isinstance(key, tuple):
            index, epoch = key
            with seeded_globals(self.seed, epoch, index):
                return self.dataset[index]
        return self.dataset[key]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str) -> Any:
        # dunders (pickling's __setstate__, the loader's __getitems__) must not reach the
        # wrapped dataset: they would bypass the seeding
        if name in SeededDataset._OWN or name.startswith("__"):
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in SeededDataset._OWN:
            object.__setattr__(self, name, value)
        else:
            setattr(self.dataset, name, value)

    def __repr__(self) -> str:
        return f"SeededDataset({self.dataset!r}, seed={self.seed})"
