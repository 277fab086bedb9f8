"""Every detector config shipped in configs/ trains, copes with an image without objects and
predicts, once shrunk to run on a CPU; every registered dense head has an empty-ground-truth
loss.

The configs are found when the tests are collected, so a config added to configs/ joins by
itself. Each is shrunk by :func:`detlab.viz.assigners.small_model_overrides` (ResNet / ResNeXt
-> ResNet-18, a narrow CSPDarknet, 32-channel necks and heads; Darknet-53, SSDVGG,
MobileNetV2, EfficientNet ... kept) and fed 64-pixel shapes images, whatever its own data
pipeline.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_config

import detlab
from detlab.config import Config
from detlab.registry import MODELS
from detlab.structures import Batch, DetResult
from detlab.viz.assigners import small_model_overrides

pytestmark = pytest.mark.usefixtures("one_math_thread")  # see tests/conftest.py
CONFIGS = REPO / "configs"
CHANNELS, NUM_CLASSES = 32, 3

# Parameters MMDetection itself leaves without a gradient in a training iteration, per
# component type (backbone, neck or head): {type: {parameter name prefix: why}}.
UNUSED_BY_DESIGN: dict[str, dict[str, str]] = {
    "MobileNetV2": {
        "backbone.conv2.": "MMDetection's MobileNetV2 always builds and runs its last 1x1 conv "
                           "(conv2, 1280 channels) but returns its output only when "
                           "out_indices holds 7: YOLOv3-MobileNetV2 takes (2, 4, 6), so conv2 "
                           "feeds nothing there",
    },
}
# ... and per config, where the config itself leaves a module unused (as in MMDetection)
UNUSED_IN_CONFIG: dict[str, dict[str, str]] = {
    "atss/atss_effb0_fpn_yoloxhead_simota_coco.py": {
        "neck.fpn_convs.3.": "the lesson config: YOLOXHead's 3 strides read only the first 3 of "
                             "the FPN's 5 maps (MMDetection zips them too), see its comment",
        "neck.fpn_convs.4.": "as fpn_convs.3",
    },
}
# Heads whose loss without any object is zero, as MMDetection's: SSD mines neg_pos_ratio
# negatives per positive, so no positive means no negative either (PISA's SSD head too).
NO_BACKGROUND_LOSS = {"SSDHead", "PISASSDHead", "AscendSSDHead"}
# Components that need a larger input than 64 pixels: NAS-FPN max-pools P5 twice to P7 (64
# pixels would leave P7 empty).
INPUT_SIZE = {"NASFPN": 128}


# the keys of a model config that hold a head: a dense head, or a two-stage detector's heads
HEAD_KEYS = ("bbox_head", "rpn_head", "roi_head")


def _is_detector(model: object) -> bool:
    """A config's ``model`` that builds a detector: a dict with a ``type`` and a head."""
    return isinstance(model, dict) and "type" in model and any(k in model for k in HEAD_KEYS)


def _first_head(model: dict) -> dict | None:
    """The dense head of a model config: ``bbox_head``, else a two-stage one's ``rpn_head``."""
    return model.get("bbox_head") or model.get("rpn_head")


def shipped_detector_configs() -> list[str]:
    """The config files under configs/ (not configs/_base_) whose ``model`` is a detector,
    relative to configs/; a file that does not load is kept, so that its test reports why."""
    found = []
    for path in sorted(CONFIGS.rglob("*.py")):
        relative = path.relative_to(CONFIGS)
        if relative.parts[0] == "_base_":
            continue
        try:
            model = Config.fromfile(str(path)).get("model")
        except Exception:  # the test of this file shows the error
            found.append(relative.as_posix())
            continue
        if _is_detector(model):
            found.append(relative.as_posix())
    return found


SHIPPED = shipped_detector_configs()


def _missing_types(model: dict) -> list[str]:
    """The detector, backbone, neck(s) and head types of a model config that are not
    registered (yet: other families are added in parallel)."""
    parts = [model, model.get("backbone"), *(model.get(k) for k in HEAD_KEYS)]
    necks = model.get("neck")
    parts += list(necks) if isinstance(necks, (list, tuple)) else [necks]
    return [part["type"] for part in parts
            if isinstance(part, dict) and part.get("type") not in MODELS.module_dict]


def shrunk_config(name: str) -> Config:
    """The shipped config ``name`` made small (see the module docstring)."""
    cfg = Config.fromfile(str(CONFIGS / name))
    missing = _missing_types(cfg["model"])
    if missing:
        pytest.skip(f"{name}: {', '.join(sorted(set(missing)))} not registered yet")
    cfg.merge_from_dict(small_model_overrides(cfg, channels=CHANNELS, num_classes=NUM_CLASSES,
                                              tiny_input=True))
    return cfg


def build(cfg: Config) -> torch.nn.Module:
    torch.manual_seed(0)
    return detlab.build_model(cfg)


def with_masks(dataset_cfg: Config) -> Config:
    """A dataset config whose pipeline also loads and collects the instance masks (the
    shapes' outline polygons), for the detectors with a mask branch."""
    for step in dataset_cfg.pipeline:
        if step["type"] == "LoadAnnotations":
            step["with_mask"] = True
        elif step["type"] == "Collect" and "gt_masks" not in step["keys"]:
            step["keys"] = [*step["keys"], "gt_masks"]
    return dataset_cfg


@pytest.fixture(scope="module")
def batches(shapes_root) -> list[Batch]:
    """Three batches of two 64-pixel shapes images (the quickstart training pipeline, with
    the masks)."""
    from detlab.data.loader import collate

    dataset = detlab.build_dataset(with_masks(tiny_config(shapes_root).data.train))
    return [collate([dataset[2 * i], dataset[2 * i + 1]]) for i in range(3)]


def without_boxes(batch: Batch, images: tuple[int, ...]) -> Batch:
    """``batch`` with no ground truth (boxes, labels, masks) in the given images."""
    targets = [{k: v[:0] if k in ("boxes", "labels", "masks") else v for k, v in t.items()}
               if i in images else t for i, t in enumerate(batch.targets)]
    return Batch(batch.images, targets, batch.metas)


def enlarged(batch: Batch, factor: int) -> Batch:
    """``batch`` with its images and boxes ``factor`` times larger."""
    if factor == 1:
        return batch
    images = torch.nn.functional.interpolate(batch.images, scale_factor=factor, mode="bilinear")
    targets = [dict(t, boxes=t["boxes"] * factor) for t in batch.targets]
    for target in targets:
        if "masks" in target:
            target["masks"] = target["masks"].repeat_interleave(factor, 1) \
                .repeat_interleave(factor, 2)
    metas = [dict(m, scale_factor=m["scale_factor"] * factor,
                  **{k: (m[k][0] * factor, m[k][1] * factor, *m[k][2:])
                     for k in ("img_shape", "pad_shape", "batch_input_shape") if k in m})
             for m in batch.metas]
    return Batch(images, targets, metas)


def with_semantic_maps(batch: Batch, stride: int = 8) -> Batch:
    """``batch`` with the ``semantic_seg`` maps a semantic branch (HTC's) trains on: each
    image's instance labels + 1 where its masks are (0 elsewhere) at 1/``stride`` scale
    (``SegRescale``), top-left in a map of the batch's size padded with 255, as the loader
    gives them."""
    targets = []
    for target in batch.targets:
        full = torch.zeros(batch.images.shape[-2:], dtype=torch.int64)
        for mask, label in zip(target.get("masks", []), target["labels"], strict=False):
            full[mask.bool()] = int(label) + 1
        small = full[::stride, ::stride]
        seg = torch.full_like(full, 255)
        seg[:small.shape[0], :small.shape[1]] = small
        targets.append(dict(target, semantic_seg=seg))
    return Batch(batch.images, targets, batch.metas)


def _total(losses: dict[str, torch.Tensor]) -> torch.Tensor:
    values = [v if isinstance(v, torch.Tensor) else sum(v) for k, v in losses.items()
              if "loss" in k]
    return sum(values)


def _value(losses: dict[str, torch.Tensor], key: str) -> float:
    return float(_total({key: losses[key]}).detach())


def _check_finite(losses: dict[str, torch.Tensor], what: str) -> None:
    bad = {k: _value(losses, k) for k in losses
           if "loss" in k and not math.isfinite(_value(losses, k))}
    assert not bad, f"{what}: losses not finite: {bad}"


def _component_types(model: dict) -> list[str]:
    necks = model.get("neck")
    necks = list(necks) if isinstance(necks, (list, tuple)) else [necks]
    return [part["type"] for part in [model["backbone"], *necks,
                                      *(model.get(k) for k in HEAD_KEYS)]
            if isinstance(part, dict)]


def without_gradient(model: torch.nn.Module, cfg: Config, name: str) -> list[str]:
    """The trainable parameters that received no gradient (or a non-finite one), less the
    documented exceptions of the config's components (:data:`UNUSED_BY_DESIGN`) and of the
    config (:data:`UNUSED_IN_CONFIG`)."""
    allowed = [prefix for t in _component_types(cfg["model"])
               for prefix in UNUSED_BY_DESIGN.get(t, {})] + list(UNUSED_IN_CONFIG.get(name, {}))
    return [name for name, p in model.named_parameters() if p.requires_grad
            and (p.grad is None or not torch.isfinite(p.grad).all())
            and not any(name.startswith(prefix) for prefix in allowed)]


# the box-regression losses, zero without any object (the classification / objectness losses
# still learn the background)
BOX_LOSS_WORDS = ("bbox", "dfl", "xy", "wh", "centerness", "l1", "iou", "offset", "_reg")


def check_loss_without_ground_truth(model: torch.nn.Module, batch: Batch, what: str) -> None:
    """No object in any image: finite losses, a positive background loss (but for
    :data:`NO_BACKGROUND_LOSS`), zero box losses."""
    losses = model.loss(without_boxes(batch, images=tuple(range(len(batch.targets)))))
    _check_finite(losses, f"{what} without ground truth")
    total = float(_total(losses).detach())
    if type(getattr(model, "bbox_head", None)).__name__ in NO_BACKGROUND_LOSS:
        assert total == 0, f"{what}: a loss without objects: {losses}"
    else:
        assert total > 0, f"{what}: no background loss without objects: {losses}"
    box = {k: _value(losses, k) for k in losses
           if any(word in k.removeprefix("loss") for word in BOX_LOSS_WORDS)}
    assert all(v == 0 for v in box.values()), f"{what}: box losses without objects: {box}"


@pytest.mark.slow
@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_trains_and_predicts(name, batches):
    """Two training iterations, the second with an image without objects, every trainable
    parameter reached by the gradient of each; the loss without any object; one DetResult
    per image."""
    cfg = shrunk_config(name)
    size = max([INPUT_SIZE.get(t, 64) for t in _component_types(cfg["model"])])
    batches = [enlarged(b, size // 64) for b in batches]
    if cfg.model.get("roi_head", {}).get("semantic_head") is not None:
        batches = [with_semantic_maps(b) for b in batches]
    model = build(cfg).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3,
                                momentum=0.9)
    steps = [batches[0], without_boxes(batches[1], images=(1,))]
    for step, batch in enumerate(steps):
        optimizer.zero_grad(set_to_none=True)
        losses = model.loss(batch)
        _check_finite(losses, f"{name} iteration {step}")
        _total(losses).backward()
        missing = without_gradient(model, cfg, name)
        assert not missing, f"{name} iteration {step}: no gradient reaches {missing}"
        optimizer.step()
    with torch.no_grad():
        check_loss_without_ground_truth(model, batches[2], name)
    model.eval()
    with torch.no_grad():
        results = model.predict(batches[2])
    assert len(results) == 2 and all(isinstance(r, DetResult) for r in results)
    for result in results:
        assert torch.isfinite(result.boxes).all() and result.boxes.shape[-1] == 4
        assert len(result.labels) == len(result.scores) == len(result.boxes)
        assert ((result.labels >= 0) & (result.labels < NUM_CLASSES)).all()


# --------------------------------------------------------------------------------------------
# every dense head: its loss with no ground truth at all
# --------------------------------------------------------------------------------------------


def registered_dense_heads() -> list[str]:
    from detlab.models.heads import BaseDenseHead

    return sorted(name for name, cls in MODELS.module_dict.items() if name.endswith("Head")
                  and isinstance(cls, type) and issubclass(cls, BaseDenseHead))


def _shipped_with_head(head: str) -> str | None:
    """The first shipped config, all of whose parts are registered, with ``head``."""
    for name in SHIPPED:
        try:
            model = Config.fromfile(str(CONFIGS / name))["model"]
        except Exception:  # its own test reports it
            continue
        dense = _first_head(model) or {}
        types = {dense.get("type")} | {s.get("type") for s in dense.get("stages", ())}
        if head in types and not _missing_types(model):  # (stages: Cascade RPN's)
            return name
    return None


def _components_detector_with_head(head: str) -> Config | None:
    """A detector of test_model_registry's COMPONENTS whose head is ``head``."""
    from test_model_registry import COMPONENTS

    for detector, (options, _) in sorted(COMPONENTS.items()):
        bbox_head = _first_head(options) if isinstance(options, dict) else None
        if isinstance(bbox_head, dict) and bbox_head.get("type") == head:
            return Config(dict(model=dict(options, type=detector)))
    return None


@pytest.mark.parametrize("head", registered_dense_heads())
def test_dense_head_loss_without_ground_truth(head, batches):
    """Each registered dense head's loss without any object is checked: by the shipped
    config that uses it (in test_shipped_config_trains_and_predicts), else here on a
    detector of test_model_registry's COMPONENTS."""
    if _shipped_with_head(head) is not None:
        return  # checked with its shipped config
    cfg = _components_detector_with_head(head)
    if cfg is None:
        pytest.fail(f"no shipped config in configs/ and no detector of test_model_registry's "
                    f"COMPONENTS uses {head}: ship its config (or add a detector entry) so "
                    f"that its loss without ground truth is tested")
    with torch.no_grad():
        check_loss_without_ground_truth(build(cfg).train(), batches[0], head)


def test_the_shipped_configs_are_found():
    assert "retinanet/retinanet_r50_fpn_1x_coco.py" in SHIPPED
    assert not any(name.startswith("_base_") for name in SHIPPED)
    assert all(Path(CONFIGS / name).is_file() for name in SHIPPED)
