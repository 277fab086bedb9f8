"""Every loss against MMDetection 2.28's own loss modules: same config, same inputs -> the same
value and the same gradient, for every reduction, with and without weights and avg_factor.

MMDetection's ``mmdet.models`` package does not import without mmcv's compiled ops, but its loss
modules need only torch, mmcv's Python parts and ``bbox_overlaps``; they are loaded here from the
installed wheel's files under stand-in parent packages (a private registry for ``LOSSES``, a
``mmcv.ops`` whose compiled focal loss is never reached on the CPU), which are removed from
``sys.modules`` again once loaded. When ``mmdet.models`` was imported in full earlier in the
process, its own loss modules are used instead.
"""

from __future__ import annotations

import importlib
import sys
import types
import warnings
from functools import cache
from pathlib import Path

import pytest
import torch

from detlab.registry import MODELS

LOSS_MODULES = ("utils", "cross_entropy_loss", "focal_loss", "iou_loss", "gfocal_loss",
                "varifocal_loss", "gaussian_focal_loss", "ghm_loss", "balanced_l1_loss",
                "mse_loss", "kd_loss", "smooth_l1_loss", "accuracy", "seesaw_loss")


def _package(name: str, path: Path) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = [str(path)]
    return module


def _no_compiled_ops(*args, **kwargs):
    raise RuntimeError("mmcv's compiled ops are not installed")


def _loaded_mmdet_losses() -> types.SimpleNamespace | None:
    """MMDetection's own loss package when something (a reference with a stand-in for mmcv's
    compiled ops) has imported ``mmdet.models`` already in this process."""
    package, builder = sys.modules.get("mmdet.models.losses"), sys.modules.get(
        "mmdet.models.builder")
    if package is None or builder is None or not hasattr(package, "CrossEntropyLoss"):
        return None
    modules = {name: sys.modules[f"mmdet.models.losses.{name}"] for name in LOSS_MODULES}
    return types.SimpleNamespace(LOSSES=builder.LOSSES, **modules)


@cache
def mmdet_reference() -> types.SimpleNamespace:
    """MMDetection's loss modules by file name, and ``LOSSES``: a registry holding its loss
    classes (a private one when the modules are loaded here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mmcv_utils = pytest.importorskip("mmcv.utils")
        mmdet = pytest.importorskip("mmdet")
    loaded = _loaded_mmdet_losses()
    if loaded is not None:
        return loaded
    root = Path(mmdet.__file__).parent
    builder = types.ModuleType("mmdet.models.builder")
    builder.LOSSES = mmcv_utils.Registry("loss")
    ops = types.ModuleType("mmcv.ops")
    ops.sigmoid_focal_loss = _no_compiled_ops
    calculators = root / "core" / "bbox" / "iou_calculators"
    stand_ins = {
        "mmdet.models": _package("mmdet.models", root / "models"),
        "mmdet.models.losses": _package("mmdet.models.losses", root / "models" / "losses"),
        "mmdet.models.builder": builder,
        "mmdet.core": types.ModuleType("mmdet.core"),
        "mmdet.core.bbox": _package("mmdet.core.bbox", root / "core" / "bbox"),
        "mmdet.core.bbox.iou_calculators": _package("mmdet.core.bbox.iou_calculators",
                                                    calculators),
        "mmcv.ops": ops,
    }
    # the modules are executed afresh under the stand-ins, whatever half-import came before
    hidden = {k: v for k, v in sys.modules.items()
              if k in stand_ins or k.startswith(("mmdet.models.", "mmdet.core."))}
    for name in hidden:
        del sys.modules[name]
    before = set(sys.modules)
    sys.modules.update(stand_ins)
    try:
        iou2d = importlib.import_module("mmdet.core.bbox.iou_calculators.iou2d_calculator")
        stand_ins["mmdet.core"].bbox_overlaps = iou2d.bbox_overlaps
        modules = {name: importlib.import_module(f"mmdet.models.losses.{name}")
                   for name in LOSS_MODULES}
    finally:  # nothing of the stand-ins stays visible to other tests
        for name in set(sys.modules) - before:
            del sys.modules[name]
        for name in stand_ins:
            sys.modules.pop(name, None)
        sys.modules.update(hidden)
    return types.SimpleNamespace(LOSSES=builder.LOSSES, **modules)


def mmdet_losses():
    return mmdet_reference().LOSSES


# ---- inputs ------------------------------------------------------------------------------------

N, C = 12, 5


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _boxes(n: int, gen: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=gen) * 40
    return torch.cat([xy, xy + torch.rand(n, 2, generator=gen) * 30 + 1], dim=1)


def _near_boxes(boxes: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Boxes from barely to strongly overlapping ``boxes`` (IoU on both sides of 0.5), some
    disjoint."""
    scale = torch.linspace(0.02, 1.5, len(boxes))[:, None]
    return boxes + torch.randn(boxes.shape, generator=gen) * scale * 10


def _per_sample_weight(gen: torch.Generator, n: int = N) -> torch.Tensor:
    w = torch.rand(n, generator=gen) + 0.5
    w[::4] = 0
    return w


def labels_input(gen):
    label = torch.randint(0, C + 1, (N,), generator=gen)  # C = background
    return torch.randn(N, C, generator=gen) * 2, label, _per_sample_weight(gen)


def softmax_input(gen):
    label = torch.randint(0, C, (N,), generator=gen)
    label[[1, 6]] = 2
    return torch.randn(N, C, generator=gen) * 2, label, _per_sample_weight(gen)


def sigmoid_input_with_ignored(gen):
    pred, label, weight = labels_input(gen)
    label[[2, 9]] = -1
    label[5] = 3
    return pred, label, weight


def soft_target_input(gen):
    target = torch.rand(N, C, generator=gen)
    target[3, 1] = -1  # negative: masked out
    return torch.randn(N, C, generator=gen), target, torch.rand(N, C, generator=gen)


def mask_input(gen):
    pred = torch.randn(N, C, 7, 6, generator=gen)
    target = (torch.rand(N, 7, 6, generator=gen) > 0.5).float()
    return pred, target, torch.randint(0, C, (N,), generator=gen)


def focal_flat_weight_input(gen):
    pred, label, _ = labels_input(gen)
    return pred, label, torch.rand(N * C, generator=gen)


def focal_class_weight_input(gen):
    pred, label, _ = labels_input(gen)
    return pred, label, torch.rand(N, C, generator=gen)


def prob_input(gen):
    pred, label, weight = labels_input(gen)
    return pred.sigmoid(), label, weight


def box_input(gen):
    target = _boxes(N, gen)
    return _near_boxes(target, gen), target, _per_sample_weight(gen)


def box_coordinate_weight_input(gen):
    pred, target, weight = box_input(gen)
    return pred, target, weight[:, None].repeat(1, 4)


def box_zero_weight_input(gen):
    pred, target, _ = box_input(gen)
    return pred, target, torch.zeros(N, 4)


def delta_input(gen):
    weight = (torch.rand(N, 4, generator=gen) > 0.3).float()
    return torch.randn(N, 4, generator=gen) * 2, torch.randn(N, 4, generator=gen), weight


def qfl_input(gen):
    pred, label, weight = labels_input(gen)
    return pred, (label, torch.rand(N, generator=gen)), weight


def qfl_prob_input(gen):
    pred, target, weight = qfl_input(gen)
    return pred.sigmoid(), target, weight


def dfl_input(gen):
    return (torch.randn(N, 17, generator=gen) * 2, torch.rand(N, generator=gen) * 15.99,
            _per_sample_weight(gen))


def varifocal_input(gen):
    target = torch.rand(N, C, generator=gen) * (torch.rand(N, C, generator=gen) > 0.7)
    return torch.randn(N, C, generator=gen) * 2, target, torch.rand(N, C, generator=gen)


def heatmap_input(gen):
    target = torch.rand(2, 3, 8, 8, generator=gen) ** 3
    target[0, 1, 2, 3] = target[1, 2, 5, 5] = 1.0  # the peaks
    pred = torch.rand(2, 3, 8, 8, generator=gen) * 0.98 + 0.01
    return pred, target, torch.rand(2, 3, 8, 8, generator=gen)


def kd_input(gen):
    return (torch.randn(N, C, generator=gen) * 3, torch.randn(N, C, generator=gen) * 3,
            _per_sample_weight(gen))


def seesaw_input(gen):
    """Logits of the C classes and the objectness pair; labels with background (C)."""
    label = torch.randint(0, C + 1, (N,), generator=gen)
    return torch.randn(N, C + 2, generator=gen) * 2, label, _per_sample_weight(gen)


def ghmc_input(gen):
    pred, label, weight = labels_input(gen)
    return pred * 2, label, (weight > 0).float()


def ghmr_input(gen):
    pred, target, weight = delta_input(gen)
    return pred * 0.05, target * 0.05, weight


# ---- the cases ---------------------------------------------------------------------------------

CALLS = (  # (use the weight, avg_factor, reduction_override)
    (False, None, None), (True, None, None), (True, 7.5, None), (False, None, "none"),
    (True, None, "sum"), (True, 3.0, "none"), (False, None, "mean"), (True, 2.0, "sum"))
WEIGHTED_CALLS = tuple(c for c in CALLS if c[0])  # losses whose third argument is required
MEAN_ONLY = ((True, None, None),)  # the mask loss: its third argument is the labels

CASES = [  # (type, config, inputs, calls)
    ("CrossEntropyLoss", {}, softmax_input, CALLS),
    ("CrossEntropyLoss", dict(class_weight=[0.5, 1.0, 2.0, 1.5, 0.2], loss_weight=2.0),
     softmax_input, CALLS),
    ("CrossEntropyLoss", dict(ignore_index=2, avg_non_ignore=True), softmax_input, CALLS),
    ("CrossEntropyLoss", dict(ignore_index=2, class_weight=[1, 2, 3, 4, 5], reduction="sum"),
     softmax_input, CALLS),
    ("CrossEntropyLoss", dict(use_sigmoid=True), sigmoid_input_with_ignored, CALLS),
    ("CrossEntropyLoss", dict(use_sigmoid=True, ignore_index=3, avg_non_ignore=True,
                              class_weight=[0.5, 1.0, 2.0, 1.5, 0.2]),
     sigmoid_input_with_ignored, CALLS),
    ("CrossEntropyLoss", dict(use_sigmoid=True, avg_non_ignore=True), soft_target_input, CALLS),
    ("CrossEntropyLoss", dict(use_mask=True, loss_weight=3.0), mask_input, MEAN_ONLY),
    ("FocalLoss", {}, labels_input, CALLS),
    ("FocalLoss", dict(gamma=1.5, alpha=0.4, loss_weight=2.0), focal_flat_weight_input, CALLS),
    ("FocalLoss", dict(reduction="sum"), focal_class_weight_input, CALLS),
    ("FocalLoss", dict(activated=True), prob_input, CALLS),
    ("IoULoss", {}, box_input, CALLS),
    ("IoULoss", dict(mode="linear", eps=1e-3), box_coordinate_weight_input, CALLS),
    ("IoULoss", dict(mode="square", loss_weight=2.0), box_input, CALLS),
    ("IoULoss", {}, box_zero_weight_input, CALLS),
    ("BoundedIoULoss", {}, box_coordinate_weight_input, CALLS),
    ("BoundedIoULoss", dict(beta=0.5, eps=1e-2), box_zero_weight_input, CALLS),
    ("GIoULoss", {}, box_input, CALLS),
    ("GIoULoss", dict(eps=1e-7, loss_weight=2.0), box_coordinate_weight_input, CALLS),
    ("GIoULoss", {}, box_zero_weight_input, CALLS),
    ("DIoULoss", {}, box_input, CALLS),
    ("DIoULoss", dict(eps=1e-3), box_coordinate_weight_input, CALLS),
    ("DIoULoss", {}, box_zero_weight_input, CALLS),
    ("CIoULoss", {}, box_input, CALLS),
    ("CIoULoss", dict(eps=1e-7, loss_weight=5.0), box_coordinate_weight_input, CALLS),
    ("CIoULoss", {}, box_zero_weight_input, CALLS),
    ("L1Loss", {}, delta_input, CALLS),
    ("SmoothL1Loss", dict(beta=0.3, loss_weight=2.0), delta_input, CALLS),
    ("BalancedL1Loss", {}, delta_input, CALLS),
    ("BalancedL1Loss", dict(alpha=0.3, gamma=2.0, beta=0.7), delta_input, CALLS),
    ("MSELoss", dict(loss_weight=0.5), delta_input, CALLS),
    ("QualityFocalLoss", {}, qfl_input, CALLS),
    ("QualityFocalLoss", dict(beta=1.5, activated=True), qfl_prob_input, CALLS),
    ("DistributionFocalLoss", dict(loss_weight=0.25), dfl_input, CALLS),
    ("VarifocalLoss", {}, varifocal_input, CALLS),
    ("VarifocalLoss", dict(alpha=0.5, gamma=1.5, iou_weighted=False), varifocal_input, CALLS),
    ("GaussianFocalLoss", {}, heatmap_input, CALLS),
    ("GaussianFocalLoss", dict(alpha=1.5, gamma=3.0), heatmap_input, CALLS),
    ("KnowledgeDistillationKLDivLoss", {}, kd_input, CALLS),
    ("KnowledgeDistillationKLDivLoss", dict(T=1, loss_weight=2.0), kd_input, CALLS),
    ("GHMC", {}, ghmc_input, WEIGHTED_CALLS),
    ("GHMC", dict(bins=30, loss_weight=2.0), ghmc_input, WEIGHTED_CALLS),
    ("GHMR", {}, ghmr_input, WEIGHTED_CALLS),
    ("GHMR", dict(mu=0.05, bins=5), ghmr_input, WEIGHTED_CALLS),
    # the sum of its two losses (return_dict=False), its class counts carried across the calls
    ("SeesawLoss", dict(num_classes=C, return_dict=False), seesaw_input,
     tuple(c for c in CALLS if c[2] != "none")),
    ("SeesawLoss", dict(num_classes=C, p=0.5, q=1.0, eps=0.1, return_dict=False),
     seesaw_input, tuple(c for c in CALLS if c[2] != "none")),
]


def _build_both(name: str, cfg: dict):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both warn about ignore_index without avg_non_ignore
        return MODELS.build(dict(type=name, **cfg)), mmdet_losses().build(dict(type=name, **cfg))


def _run(loss, pred, target, weight, avg_factor, reduction):
    pred = pred.detach().clone().requires_grad_(True)
    kwargs = {} if avg_factor is None else dict(avg_factor=avg_factor)
    if reduction is not None:
        kwargs["reduction_override"] = reduction
    args = (pred, target) if weight is None else (pred, target, weight)
    try:
        out = loss(*args, **kwargs)
    except (ValueError, AssertionError) as err:
        return err, None
    if out.requires_grad:
        out.sum().backward()
    return out.detach(), pred.grad


def _assert_same(ours, theirs):
    if isinstance(theirs, Exception):
        assert isinstance(ours, Exception), f"MMDetection raises {theirs!r}, detlab does not"
        return
    assert not isinstance(ours, Exception), f"detlab raises {ours!r}, MMDetection does not"
    torch.testing.assert_close(ours, theirs, rtol=2e-5, atol=1e-6)


def _case_id(case) -> str:
    name, cfg, inputs, _ = case
    return "-".join([name, inputs.__name__, *(f"{k}={v}" for k, v in cfg.items())])


@pytest.mark.parametrize("case", CASES, ids=[_case_id(c) for c in CASES])
def test_matches_mmdetection_values_and_gradients(case):
    name, cfg, inputs, calls = case
    ours, theirs = _build_both(name, cfg)
    pred, target, weight = inputs(_gen(len(name) + len(cfg)))
    for use_weight, avg_factor, reduction in calls:
        args = (pred, target, weight if use_weight else None, avg_factor, reduction)
        value, grad = _run(ours, *args)
        expected, expected_grad = _run(theirs, *args)
        where = f"{name}({cfg}) weight={use_weight} avg_factor={avg_factor} {reduction}"
        try:
            _assert_same(value, expected)
            if expected_grad is not None:
                torch.testing.assert_close(grad, expected_grad, rtol=2e-5, atol=1e-6)
        except AssertionError as err:
            raise AssertionError(f"{where}: {err}") from None


def test_every_mmdetection_loss_detlab_registers_is_compared():
    compared = {name for name, *_ in CASES}
    ours = {name for name, obj in mmdet_losses().module_dict.items()
            if obj.__module__.startswith("mmdet.models.losses") and name in MODELS}
    assert compared == ours


@pytest.mark.parametrize("momentum", [0.0, 0.75])
@pytest.mark.parametrize("name, inputs", [("GHMC", ghmc_input), ("GHMR", ghmr_input)])
def test_ghm_moving_bin_counts_match_mmdetection(name, inputs, momentum):
    ours, theirs = _build_both(name, dict(bins=8, momentum=momentum))
    assert ours.state_dict().keys() == theirs.state_dict().keys()  # checkpoints load strictly
    for step in range(3):
        pred, target, weight = inputs(_gen(step))
        value, grad = _run(ours, pred, target, weight, None, None)
        expected, expected_grad = _run(theirs, pred, target, weight, None, None)
        torch.testing.assert_close(value, expected, rtol=2e-5, atol=1e-6)
        torch.testing.assert_close(grad, expected_grad, rtol=2e-5, atol=1e-6)
    for key, buffer in theirs.state_dict().items():
        torch.testing.assert_close(ours.state_dict()[key], buffer)


EMPTY_INPUTS = {
    "box": (torch.zeros(0, 4), torch.zeros(0, 4), torch.zeros(0)),
    "labels": (torch.zeros(0, C), torch.zeros(0, dtype=torch.long), torch.zeros(0)),
}


@pytest.mark.parametrize("name, kind", [
    ("CrossEntropyLoss", "labels"), ("FocalLoss", "labels"), ("IoULoss", "box"),
    ("GIoULoss", "box"), ("DIoULoss", "box"), ("CIoULoss", "box"), ("BoundedIoULoss", "box"),
    ("L1Loss", "box"), ("SmoothL1Loss", "box"), ("BalancedL1Loss", "box"), ("MSELoss", "box")])
def test_empty_inputs_are_zero_where_mmdetection_gives_nan(name, kind):
    """With an avg_factor (as heads call them) both give 0. Without one, MMDetection's mean of
    no element is NaN for most losses; detlab's is 0."""
    ours, theirs = _build_both(name, {})
    pred, target, weight = EMPTY_INPUTS[kind]
    if kind == "box":
        weight = torch.zeros(0, 4)
    value, _ = _run(ours, pred, target, weight, 1.0, None)
    expected, _ = _run(theirs, pred, target, weight, 1.0, None)
    assert value.item() == expected.item() == 0
    value, _ = _run(ours, pred, target, None, None, None)
    expected, _ = _run(theirs, pred, target, None, None, None)
    assert value.item() == 0
    assert expected.item() == 0 or expected.isnan()


def test_ciou_of_a_perfect_box_is_zero_where_mmdetection_gives_nan():
    ours, theirs = _build_both("CIoULoss", {})
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [5.0, 5.0, 25.0, 12.0]])
    value, grad = _run(ours, boxes, boxes, None, None, "none")
    expected, _ = _run(theirs, boxes, boxes, None, None, "none")
    assert expected.isnan().all()  # 1 - IoU + v == 0: alpha = 0 / 0
    assert (value.abs() < 1e-6).all() and torch.isfinite(grad).all()


def _reduction_calls():
    gen = _gen(11)
    loss = torch.rand(6, 3, generator=gen)
    for weight in (None, torch.rand(6, 3, generator=gen), torch.rand(6, 1, generator=gen)):
        for reduction in ("none", "mean", "sum"):
            for avg_factor in (None, 4.0, 0, torch.tensor(2.5)):
                yield loss, weight, reduction, avg_factor


def test_weight_reduce_loss_and_reduce_loss_match_mmdetection():
    from detlab.models.losses import reduce_loss, weight_reduce_loss

    utils = mmdet_reference().utils
    for loss, weight, reduction, avg_factor in _reduction_calls():
        if reduction == "sum" and avg_factor is not None:
            with pytest.raises(ValueError):
                utils.weight_reduce_loss(loss, weight, reduction, avg_factor)
            with pytest.raises(ValueError):
                weight_reduce_loss(loss, weight, reduction, avg_factor)
            continue
        torch.testing.assert_close(weight_reduce_loss(loss, weight, reduction, avg_factor),
                                   utils.weight_reduce_loss(loss, weight, reduction, avg_factor))
        torch.testing.assert_close(reduce_loss(loss, reduction),
                                   utils.reduce_loss(loss, reduction))


def test_weighted_loss_decorates_as_mmdetections():
    from detlab.models.losses import weighted_loss

    def kernel(pred, target, scale=1.0):  # an element-wise loss with an argument of its own
        return scale * (pred - target) ** 2

    ours, theirs = weighted_loss(kernel), mmdet_reference().utils.weighted_loss(kernel)
    gen = _gen(12)
    pred, target = torch.randn(6, 3, generator=gen), torch.randn(6, 3, generator=gen)
    for _, weight, reduction, avg_factor in _reduction_calls():
        if reduction == "sum" and avg_factor is not None:
            continue
        torch.testing.assert_close(
            ours(pred, target, weight, reduction=reduction, avg_factor=avg_factor, scale=2.0),
            theirs(pred, target, weight, reduction=reduction, avg_factor=avg_factor, scale=2.0))
    torch.testing.assert_close(ours(pred, target, None, "sum", None),
                               theirs(pred, target, None, "sum", None))  # positional, as heads
