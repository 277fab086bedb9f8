"""MMDetection 2.28's model zoo, config by config: a model detlab builds from a zoo config has
MMDetection's trainable parameter count and its state_dict keys and shapes.

The rows are the 600 configs of ``zoo/params.json`` (a copy of ``shared/mmdet-zoo/params.json``);
the keys and shapes are MMDetection's, recorded in ``zoo/state_dicts/`` by
``zoo/make_manifest.py``. A row is checked once detlab registers its detector, backbone, neck(s)
and head; until then it is only counted by ``test_zoo_coverage`` (run it with ``-rP`` to read
which families detlab builds and what the others miss). A checked row whose config names a
component or an option detlab has not got yet (a ``GHMC`` loss, a ResNet ``dcn=``) is skipped
with that reason. Models are built on the ``meta`` device: names and shapes, no memory.

The configs are read, unchanged, from MMDetection's wheel (``make reference-deps`` installs it;
without it these tests skip). MMDetection's code itself runs only in the last test, which copies
a RetinaNet's weights from MMDetection's model into detlab's and compares what both compute.
"""

from __future__ import annotations

import functools
import json
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from reference.mmdet_reference import (
    build_mmdet_model,
    import_mmdet,
    load_mmdet_config,
    mmdet_config_dir,
    trainable_params,
)
from torch import nn

from detlab.config import Config
from detlab.models import build_model
from detlab.registry import MODELS, BuildArgumentError, UnknownTypeError
from detlab.structures import Batch

ZOO = Path(__file__).parent / "zoo"
SHARED_PARAMS = Path(__file__).resolve().parents[3] / "shared" / "mmdet-zoo" / "params.json"
SHOWN = 8  # differing keys named in a failure message


def _read_rows() -> list[dict]:
    return json.loads((ZOO / "params.json").read_text())


@functools.cache
def _state_dicts(folder: str) -> dict[str, dict[str, list[int]]]:
    import lzma

    with lzma.open(ZOO / "state_dicts" / f"{folder}.json.xz", "rt", encoding="utf-8") as f:
        return json.load(f)


def _parts(row: dict) -> list[str]:
    """The registry names a row needs: detector, backbone, each neck (``FPN+BFP``), head."""
    necks = row["neck"].split("+") if row["neck"] else []
    return [row["detector"], row["backbone"], *necks, *([row["head"]] if row["head"] else [])]


def _missing(row: dict) -> list[str]:
    return [part for part in _parts(row) if part not in MODELS]


ROWS = _read_rows()
BUILT = [row for row in ROWS if not _missing(row)]


def _folder(config: str) -> str:
    return config.split("/")[0]


def _differences(expected: dict[str, list[int]], actual: dict[str, list[int]]) -> list[str]:
    """What differs between two ``{key: shape}`` tables, the first keys of each kind named."""
    missing = [k for k in expected if k not in actual]
    extra = [k for k in actual if k not in expected]
    shapes = [f"{k}: {actual[k]} (MMDetection: {expected[k]})"
              for k in expected if k in actual and actual[k] != expected[k]]
    lines = []
    for what, keys in (("missing (MMDetection has them)", missing),
                       ("unexpected (MMDetection has no such key)", extra),
                       ("with another shape", shapes)):
        if keys:
            more = f" ... and {len(keys) - SHOWN} more" if len(keys) > SHOWN else ""
            lines.append(f"{len(keys)} keys {what}: {', '.join(keys[:SHOWN])}{more}")
    return lines


def _build_on_meta(config_path: Path) -> nn.Module:
    """detlab's model of an unchanged zoo config, on the meta device (on CPU if a module makes a
    tensor the meta device refuses, as MMDetection's transformer backbones do); skips when the
    config names a component or an option that detlab does not have yet."""
    # the zoo's only custom_imports name MMClassification, whose rows are not built here
    cfg = Config.fromfile(config_path, import_custom_modules=False)
    try:
        try:
            with torch.device("meta"):
                return build_model(cfg.model)
        except (RuntimeError, NotImplementedError) as err:
            if "meta" not in str(err):
                raise
            return build_model(cfg.model)
    except UnknownTypeError as err:
        pytest.skip(f"not built by detlab yet: {err}")
    except BuildArgumentError as err:
        if "does not accept" not in str(err):
            raise
        pytest.skip(f"not built by detlab yet: {err}")


@pytest.mark.parametrize("row", BUILT, ids=[row["config"] for row in BUILT])
def test_zoo_config_has_mmdetections_parameters(row):
    model = _build_on_meta(mmdet_config_dir() / row["config"])
    trainable = trainable_params(model)
    assert trainable == row["trainable_params"], (
        f"{row['config']}: detlab builds {trainable:,} trainable parameters, MMDetection "
        f"{row['trainable_params']:,} ({trainable - row['trainable_params']:+,})")
    expected = _state_dicts(_folder(row["config"]))[row["config"]]
    actual = {key: list(value.shape) for key, value in model.state_dict().items()}
    problems = _differences(expected, actual)
    assert not problems, f"{row['config']}: state_dict differs from MMDetection's:\n" + \
        "\n".join(problems)


def test_zoo_coverage():
    """Which zoo families detlab builds (printed; run with -rP to read it), and a guard that
    RetinaNet, which detlab has built from the start, is among them."""
    families = defaultdict(list)
    for row in ROWS:
        families[_folder(row["config"])].append(row)
    built_families = sorted(f for f, rows in families.items() if any(r in BUILT for r in rows))
    needed = Counter(part for row in ROWS for part in _missing(row))
    print(f"zoo configs whose parts detlab registers: {len(BUILT)} / {len(ROWS)}")
    print(f"families (config folders) built: {len(built_families)} / {len(families)}: "
          f"{', '.join(built_families)}")
    print("missing parts, by the number of configs that need them: "
          + ", ".join(f"{name} ({n})" for name, n in needed.most_common()))
    assert "retinanet/retinanet_r50_fpn_1x_coco.py" in {row["config"] for row in BUILT}


def test_manifest_covers_every_row():
    files = {path.name for path in (ZOO / "state_dicts").glob("*.json.xz")}
    assert files == {f"{_folder(row['config'])}.json.xz" for row in ROWS}
    for folder in ("retinanet", "atss"):
        configs = {row["config"] for row in ROWS if _folder(row["config"]) == folder}
        assert set(_state_dicts(folder)) == configs


@pytest.mark.skipif(not SHARED_PARAMS.is_file(), reason=f"{SHARED_PARAMS} is not beside the repo")
def test_zoo_rows_are_the_shared_params():
    """zoo/params.json is shared/mmdet-zoo/params.json (make_manifest.py copies it)."""
    assert _read_rows() == json.loads(SHARED_PARAMS.read_text())


# ---- MMDetection itself: weights copied, the same numbers out ------------------------------

RETINANET = "retinanet/retinanet_r50_fpn_1x_coco.py"
HEIGHT, WIDTH = 96, 160


def _randomize(model: nn.Module, images: torch.Tensor) -> None:
    """Varied BatchNorm statistics, and a classifier calibrated on ``images`` so that each
    class's logits spread around the score threshold across locations (random weights alone
    score every location alike, a few classes above all others)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                module.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.25)
                module.bias.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
        cls = model.bbox_head.retina_cls
        cls.bias.zero_()
        logits = torch.cat([level.transpose(0, 1).flatten(1) for level in
                            model.eval().bbox_head(model.extract_feat(images))[0]], dim=1)
        gain = 1.0 / logits.std(dim=1)  # per output channel: logits ~ N(-5.9, 1)
        cls.weight.mul_(gain[:, None, None, None])
        cls.bias.copy_(-logits.mean(dim=1) * gain - 5.9)


def _metas(n: int) -> list[dict]:
    scale = np.array([2.0, 2.0, 2.0, 2.0], np.float32)
    return [dict(img_shape=(HEIGHT, WIDTH, 3), pad_shape=(HEIGHT, WIDTH, 3),
                 batch_input_shape=(HEIGHT, WIDTH), ori_shape=(HEIGHT // 2, WIDTH // 2, 3),
                 scale_factor=scale, flip=False, flip_direction=None, img_id=i,
                 filename=f"img{i}.jpg") for i in range(n)]


@pytest.fixture(scope="module")
def retinanet_pair():
    """(MMDetection's RetinaNet, detlab's with its weights loaded strictly), both in eval mode."""
    import_mmdet()
    torch.manual_seed(0)
    reference = build_mmdet_model(RETINANET, device="cpu")
    calibration = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(3))
    _randomize(reference, calibration)
    ours = build_model(Config.fromfile(mmdet_config_dir() / RETINANET).model)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


@pytest.mark.slow
def test_retinanet_head_outputs_match_mmdetection(retinanet_pair):
    reference, ours = retinanet_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference.bbox_head(reference.extract_feat(images))
        actual = ours(images)
    assert len(actual) == len(expected) == 2  # (classification maps, regression maps)
    for ours_levels, reference_levels in zip(actual, expected, strict=True):
        assert len(ours_levels) == len(reference_levels) == 5
        for a, e in zip(ours_levels, reference_levels, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_retinanet_detections_match_mmdetection(retinanet_pair):
    """The same boxes, scores and labels as MMDetection's ``simple_test`` (its NMS runs through
    the mmcv._ext stand-in, i.e. torchvision's)."""
    reference, ours = retinanet_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(2))
    metas = _metas(2)
    with torch.no_grad():
        expected = reference.simple_test(images, metas, rescale=True)
    targets = [dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long),
                    boxes_ignore=torch.zeros(0, 4)) for _ in metas]
    actual = ours.predict(Batch(images, targets, metas), rescale=True)
    num_classes = reference.bbox_head.num_classes
    # enough detections of enough classes to mean something
    assert all(sum(len(c) > 0 for c in image) > 20 for image in expected)
    for ours_image, reference_image in zip(actual, expected, strict=True):
        for a, e in zip(ours_image.to_mmdet(num_classes), reference_image, strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-3)


def test_mmdetection_counts_the_zoos_parameters():
    """The reference builds as the manifest says (a spot check of the stand-in and the helper)."""
    import_mmdet()
    for config in ("atss/atss_r50_fpn_1x_coco.py", RETINANET):
        row = next(r for r in ROWS if r["config"] == config)
        model = build_mmdet_model(config, device="meta")
        assert trainable_params(model) == row["trainable_params"]
        state = {key: list(value.shape) for key, value in model.state_dict().items()}
        assert state == _state_dicts(_folder(config))[config]
    assert load_mmdet_config(RETINANET).model.type == "RetinaNet"
