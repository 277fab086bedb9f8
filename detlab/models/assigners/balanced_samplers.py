"""Libra R-CNN's balanced sampling (Pang et al., 2019) of R-CNN RoIs, as MMDetection 2.28 has it.

- :class:`CombinedSampler` -- positives drawn by one sampler, negatives by another (the config's
  ``pos_sampler`` / ``neg_sampler``, built with the combined sampler's ``num``,
  ``pos_fraction``, ``add_gt_as_proposals``).
- :class:`InstanceBalancedPosSampler` -- about the same number of positives per object.
- :class:`IoUBalancedNegSampler` -- negatives spread evenly over IoU bins (hard negatives, of
  larger IoU, are rare among random draws), plus a ``floor_fraction`` drawn below ``floor_thr``.

Every random draw is MMDetection's (``torch.randperm`` on the CPU generator over the candidates
in the same order). Where MMDetection gathers candidates through Python sets, the same set
operations are done here on Python ints, whose iteration order is the same as that of
MMDetection's numpy integers (equal hashes), so a seeded run draws the same RoIs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import torch

from detlab.config import ConfigError
from detlab.models.assigners.assign_result import AssignResult
from detlab.models.assigners.random_sampler import RandomSampler, random_choice
from detlab.models.assigners.sampling_result import SamplingResult
from detlab.registry import MODELS


def _choice(candidates: Iterable[int] | torch.Tensor, num: int,
            device: torch.device) -> torch.Tensor:
    """``num`` of ``candidates`` (a tensor, or ints in their iteration order) at random."""
    gallery = candidates if isinstance(candidates, torch.Tensor) \
        else torch.tensor(list(candidates), dtype=torch.long)
    return random_choice(gallery.to(device), num)


def _where(mask: torch.Tensor) -> set[int]:
    """The indices where ``mask`` holds, as a set filled in increasing order (MMDetection's
    ``set(np.where(mask)[0])``, whose iteration order the draws depend on)."""
    return set(torch.nonzero(mask).reshape(-1).tolist())


def _as_tensor(candidates: Iterable[int], device: torch.device) -> torch.Tensor:
    return torch.tensor(list(candidates), dtype=torch.long, device=device)


class _SplitSampler(RandomSampler):
    """A :class:`RandomSampler` whose positive and negative draws are separate methods
    (``_sample_pos`` / ``_sample_neg``, MMDetection's names) that subclasses replace."""

    def sample(self, assign_result: AssignResult, bboxes: torch.Tensor,
               gt_bboxes: torch.Tensor, gt_labels: torch.Tensor | None = None,
               **kwargs: Any) -> SamplingResult:
        """As :meth:`RandomSampler.sample`, each part drawn by its own method (extra keyword
        arguments, such as the image's ``feats``, are accepted and unused)."""
        bboxes = bboxes.reshape(-1, bboxes.shape[-1])[:, :4]
        gt_flags = bboxes.new_zeros((bboxes.shape[0],), dtype=torch.uint8)
        if self.add_gt_as_proposals and len(gt_bboxes) > 0:
            if gt_labels is None:
                raise ValueError(f"{type(self).__name__} with add_gt_as_proposals=True needs "
                                 f"gt_labels")
            bboxes = torch.cat([gt_bboxes, bboxes], dim=0)
            assign_result = assign_result.with_gts(gt_labels)
            gt_flags = torch.cat([bboxes.new_ones(gt_bboxes.shape[0], dtype=torch.uint8),
                                  gt_flags])
        pos_inds = self._sample_pos(assign_result, int(self.num * self.pos_fraction)).unique()
        num_neg = self.num - pos_inds.numel()
        if self.neg_pos_ub >= 0:
            num_neg = min(num_neg, int(self.neg_pos_ub * max(1, pos_inds.numel())))
        neg_inds = self._sample_neg(assign_result, num_neg).unique()
        return SamplingResult.from_indices(pos_inds, neg_inds, bboxes, gt_bboxes, assign_result,
                                           gt_flags)

    def _sample_pos(self, assign_result: AssignResult, num_expected: int) -> torch.Tensor:
        """Indices of at most ``num_expected`` positives (random ones)."""
        return self._sample(assign_result.gt_inds > 0, num_expected)

    def _sample_neg(self, assign_result: AssignResult, num_expected: int) -> torch.Tensor:
        """Indices of at most ``num_expected`` negatives (random ones)."""
        return self._sample(assign_result.gt_inds == 0, num_expected)


def _sampler_args(sampler: Any) -> dict[str, Any]:
    return dict(num=sampler.num, pos_fraction=sampler.pos_fraction,
                neg_pos_ub=sampler.neg_pos_ub, add_gt_as_proposals=sampler.add_gt_as_proposals)


@MODELS.register_module()
class CombinedSampler(_SplitSampler):
    """Positives from ``pos_sampler``, negatives from ``neg_sampler`` (Libra R-CNN:
    ``InstanceBalancedPosSampler`` and ``IoUBalancedNegSampler``).

    Args:
        num, pos_fraction, neg_pos_ub, add_gt_as_proposals: as :class:`RandomSampler`, also
            given to both samplers (their configs need only ``type`` and their own options).
        pos_sampler, neg_sampler: configs of samplers with ``_sample_pos`` / ``_sample_neg``.
        context: the RoI head (MMDetection passes it to every sampler; unused here).
    """

    def __init__(self, num: int, pos_fraction: float, pos_sampler: Mapping,
                 neg_sampler: Mapping, neg_pos_ub: float = -1,
                 add_gt_as_proposals: bool = True, context: Any = None) -> None:
        super().__init__(num, pos_fraction, neg_pos_ub, add_gt_as_proposals)
        self.pos_sampler = self._build_part(pos_sampler, "pos_sampler", "_sample_pos")
        self.neg_sampler = self._build_part(neg_sampler, "neg_sampler", "_sample_neg")

    def _build_part(self, cfg: Mapping, key: str, method: str) -> Any:
        sampler = MODELS.build(cfg, _path=f"model.train_cfg.rcnn.sampler.{key}",
                               **_sampler_args(self))
        if type(sampler) is RandomSampler:  # its random draws, split as the others'
            sampler = _SplitSampler(**_sampler_args(sampler))
        if not callable(getattr(sampler, method, None)):
            raise ConfigError(f"model.train_cfg.rcnn.sampler.{key}: {type(sampler).__name__} "
                              f"cannot be part of a CombinedSampler (it has no {method}); use "
                              f"InstanceBalancedPosSampler, IoUBalancedNegSampler or "
                              f"RandomSampler")
        return sampler

    def _sample_pos(self, assign_result: AssignResult, num_expected: int) -> torch.Tensor:
        return self.pos_sampler._sample_pos(assign_result, num_expected)

    def _sample_neg(self, assign_result: AssignResult, num_expected: int) -> torch.Tensor:
        return self.neg_sampler._sample_neg(assign_result, num_expected)

    def __repr__(self) -> str:
        return (f"CombinedSampler(num={self.num}, pos_fraction={self.pos_fraction}, "
                f"pos_sampler={self.pos_sampler!r}, neg_sampler={self.neg_sampler!r})")


@MODELS.register_module()
class InstanceBalancedPosSampler(_SplitSampler):
    """Positives balanced over objects: when there are more than wanted, up to
    ``round(num_expected / objects) + 1`` of each object's at random, topped up at random (or
    cut down at random) to ``num_expected``.

    The top-up draws from all the positives, those already taken included (MMDetection 2.28
    subtracts the taken ones as sets of tensors, which compare by identity, so nothing is
    subtracted); repeats are dropped afterwards, so fewer positives than wanted can result, as
    in MMDetection. The order of the top-up candidates is the positives' index order here
    (MMDetection's follows the tensors' memory addresses, which no seed fixes).
    """

    def __init__(self, num: int, pos_fraction: float, neg_pos_ub: float = -1,
                 add_gt_as_proposals: bool = True, context: Any = None) -> None:
        super().__init__(num, pos_fraction, neg_pos_ub, add_gt_as_proposals)

    def _sample_pos(self, assign_result: AssignResult, num_expected: int) -> torch.Tensor:
        gt_inds = assign_result.gt_inds
        pos_inds = torch.nonzero(gt_inds > 0).squeeze(1)
        if pos_inds.numel() <= num_expected:
            return pos_inds
        objects = gt_inds[pos_inds].unique()
        per_object = int(round(num_expected / float(len(objects))) + 1)
        sampled = []
        for obj in objects:
            inds = torch.nonzero(gt_inds == obj).squeeze(1)
            sampled.append(random_choice(inds, per_object) if len(inds) > per_object else inds)
        sampled_inds = torch.cat(sampled)
        if len(sampled_inds) < num_expected:
            extra = pos_inds
            num_extra = num_expected - len(sampled_inds)
            if len(extra) > num_extra:
                extra = random_choice(extra, num_extra)
            sampled_inds = torch.cat([sampled_inds, extra])
        elif len(sampled_inds) > num_expected:
            sampled_inds = random_choice(sampled_inds, num_expected)
        return sampled_inds

    def __repr__(self) -> str:
        return f"InstanceBalancedPosSampler(num={self.num}, pos_fraction={self.pos_fraction})"


@MODELS.register_module()
class IoUBalancedNegSampler(_SplitSampler):
    """Negatives balanced over their IoU with the ground truth (IoU-balanced sampling).

    When there are more negatives than wanted: ``1 - floor_fraction`` of them come from those
    of IoU at least ``floor_thr`` (above 0 with ``floor_thr=-1``), split evenly over
    ``num_bins`` equal IoU intervals up to the image's largest IoU; the rest at random from
    those below ``floor_thr``; any shortfall at random from the remaining negatives.

    As in MMDetection 2.28, ``floor_thr=-1`` becomes 0 after the first image: the first image
    has no floor set (its shortfall comes from every remaining negative), later ones take the
    negatives of IoU exactly 0 as the floor set.

    Args:
        num, pos_fraction, neg_pos_ub, add_gt_as_proposals: as :class:`RandomSampler`.
        floor_thr: IoU below which negatives are drawn at random (-1: none, see above).
        floor_fraction: the fraction of negatives drawn below ``floor_thr``.
        num_bins: IoU intervals balanced over (1: the IoU-sampled ones at random).
    """

    def __init__(self, num: int, pos_fraction: float, floor_thr: float = -1,
                 floor_fraction: float = 0, num_bins: int = 3, neg_pos_ub: float = -1,
                 add_gt_as_proposals: bool = True, context: Any = None) -> None:
        super().__init__(num, pos_fraction, neg_pos_ub, add_gt_as_proposals)
        if not (floor_thr >= 0 or floor_thr == -1):
            raise ConfigError(f"IoUBalancedNegSampler floor_thr must be >= 0 or -1 (no floor), "
                              f"got {floor_thr}")
        if not 0 <= floor_fraction <= 1:
            raise ConfigError(f"IoUBalancedNegSampler floor_fraction must be in [0, 1], got "
                              f"{floor_fraction}")
        if num_bins < 1:
            raise ConfigError(f"IoUBalancedNegSampler num_bins must be >= 1, got {num_bins}")
        self.floor_thr, self.floor_fraction, self.num_bins = floor_thr, floor_fraction, num_bins

    def _by_interval(self, max_overlaps: torch.Tensor, candidates: set[int],
                     num_expected: int, device: torch.device) -> list[int]:
        """About ``num_expected / num_bins`` of ``candidates`` from each IoU interval between
        ``floor_thr`` and the largest IoU, topped up at random from the rest."""
        # the bounds in the overlaps' float32, as MMDetection's numpy computes them
        width = (max_overlaps.max() - self.floor_thr) / self.num_bins
        per_bin = int(num_expected / self.num_bins)
        taken: list[int] = []
        for i in range(self.num_bins):
            low, high = self.floor_thr + i * width, self.floor_thr + (i + 1) * width
            in_bin = list(_where((max_overlaps >= low) & (max_overlaps < high)) & candidates)
            taken += _choice(in_bin, per_bin, device).tolist() if len(in_bin) > per_bin \
                else in_bin
        if len(taken) < num_expected:
            rest = list(candidates - set(taken))
            num_extra = num_expected - len(taken)
            taken += _choice(rest, num_extra, device).tolist() if len(rest) > num_extra \
                else rest
        return taken

    def _sample_neg(self, assign_result: AssignResult, num_expected: int) -> torch.Tensor:
        neg_inds = torch.nonzero(assign_result.gt_inds == 0).squeeze(1)
        if len(neg_inds) <= num_expected:
            return neg_inds
        device = neg_inds.device
        overlaps = assign_result.max_overlaps
        negatives = set(neg_inds.tolist())
        if self.floor_thr > 0:
            floor = _where((overlaps >= 0) & (overlaps < self.floor_thr))
            balanced = _where(overlaps >= self.floor_thr)
        elif self.floor_thr == 0:
            floor, balanced = _where(overlaps == 0), _where(overlaps > 0)
        else:
            floor, balanced = set(), _where(overlaps > self.floor_thr)
            self.floor_thr = 0  # MMDetection's: from the next image on, a floor at IoU 0
        floor_negs = list(floor & negatives)
        balanced_negs = list(balanced & negatives)
        num_balanced = int(num_expected * (1 - self.floor_fraction))
        if len(balanced_negs) > num_balanced:
            if self.num_bins >= 2:
                taken = self._by_interval(assign_result.max_overlaps, set(balanced_negs),
                                          num_balanced, device)
            else:
                taken = _choice(balanced_negs, num_balanced, device).tolist()
        else:
            taken = balanced_negs
        num_floor = num_expected - len(taken)
        floor_taken = _choice(floor_negs, num_floor, device).tolist() \
            if len(floor_negs) > num_floor else floor_negs
        taken = floor_taken + taken
        if len(taken) < num_expected:
            rest = list(negatives - set(taken))
            num_extra = num_expected - len(taken)
            taken += _choice(rest, num_extra, device).tolist() if len(rest) > num_extra \
                else rest
        return _as_tensor(taken, device)

    def __repr__(self) -> str:
        return (f"IoUBalancedNegSampler(num={self.num}, pos_fraction={self.pos_fraction}, "
                f"floor_thr={self.floor_thr}, floor_fraction={self.floor_fraction}, "
                f"num_bins={self.num_bins})")
