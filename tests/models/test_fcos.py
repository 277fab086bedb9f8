"""FCOS against MMDetection 2.28: its targets on random and tie-heavy scenes, and, with
MMDetection's weights loaded strictly into a small FCOS built from the same zoo config, the
same head outputs, losses and detections; an empty ground truth; training on the shapes data.

(The zoo's FCOS configs' parameter counts and state_dict keys are checked by ``test_zoo.py``.)
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from reference.mmdet_reference import import_mmdet, load_mmdet_config, mmdet_config_dir
from torch import nn

from detlab.config import Config, ConfigError
from detlab.engine.logging import read_json_log
from detlab.engine.setup import train
from detlab.models import build_model
from detlab.models.heads.base_dense_head import GroundTruth
from detlab.models.heads.fcos_head import FCOSHead, PointLevels, fcos_targets_per_image
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
FCOS = "fcos/fcos_r50_caffe_fpn_gn-head_1x_coco.py"
# center sampling, distances in strides, centerness on the regression tower, GIoU
FCOS_PLUS = "fcos/fcos_center-normbbox-centeronreg-giou_r50_caffe_fpn_gn-head_1x_coco.py"
# a small FCOS: the same overrides on MMDetection's config and on detlab's
SMALL = {"model.backbone.depth": 18, "model.backbone.init_cfg": None,
         "model.neck.in_channels": [64, 128, 256, 512], "model.neck.out_channels": 32,
         "model.bbox_head.num_classes": 6, "model.bbox_head.in_channels": 32,
         "model.bbox_head.feat_channels": 32, "model.bbox_head.stacked_convs": 2}
NUM_CLASSES = 6
HEIGHT, WIDTH = 160, 224
TEST_CFG = dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05,
                nms=dict(type="nms", iou_threshold=0.5), max_per_img=100)


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / FCOS)
    theirs = Config.fromfile(mmdet_config_dir() / FCOS)
    assert mine.to_dict() == theirs.to_dict()


# ---- targets: MMDetection's FCOSHead.get_targets on the same points and boxes ----------------

STRIDES = (8, 16, 32, 64, 128)
SIZES = [(32, 40), (16, 20), (8, 10), (4, 5), (2, 3)]  # a 256 x 320 input


def _scene(seed: int, ties: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Random boxes of every level's size; with ``ties``, boxes on the points' grid (points on
    their edges), duplicates under other labels and boxes of equal areas."""
    gen = torch.Generator().manual_seed(seed)
    n = 12
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([300.0, 240.0])
    wh = torch.rand(n, 2, generator=gen) ** 2 * 400 + 4
    boxes = torch.cat([xy, xy + wh], 1)
    if ties:
        boxes = (boxes / 4).round() * 4
        boxes[::3] = boxes[::3] // 8 * 8 + 4  # edges through cell centers
        boxes = torch.cat([boxes, boxes[:4], boxes[4:6][:, [1, 0, 3, 2]]])
    labels = torch.randint(0, NUM_CLASSES, (len(boxes),), generator=gen)
    return boxes, labels


def _mmdet_fcos_head(**kwargs):
    import_mmdet()
    from mmdet.models.dense_heads import FCOSHead as Reference

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Reference(num_classes=NUM_CLASSES, in_channels=8, feat_channels=8,
                         stacked_convs=1, strides=STRIDES,
                         norm_cfg=dict(type="GN", num_groups=4), **kwargs)


@pytest.mark.parametrize("options", [
    dict(), dict(center_sampling=True), dict(center_sampling=True, center_sample_radius=0.7,
                                             norm_on_bbox=True)],
    ids=["inside-box", "center-sampling", "radius-norm-on-bbox"])
@pytest.mark.parametrize("ties", [False, True], ids=["random", "ties"])
def test_targets_are_mmdetections(options, ties):
    reference = _mmdet_fcos_head(**options)
    head = FCOSHead(NUM_CLASSES, 8, feat_channels=8, stacked_convs=1, strides=STRIDES,
                    norm_cfg=dict(type="GN", num_groups=4), **options)
    scenes = [_scene(seed, ties) for seed in range(3)] + [(torch.zeros(0, 4),
                                                           torch.zeros(0, dtype=torch.long))]
    points = head.prior_generator.grid_priors(SIZES)
    expected_labels, expected_targets = reference.get_targets(
        points, [b for b, _ in scenes], [lbl for _, lbl in scenes])
    targets = [dict(boxes=b, labels=lbl) for b, lbl in scenes]
    labels, distances = head.get_targets(head.point_levels(SIZES, torch.device("cpu")), targets,
                                         [{}] * len(scenes))
    assert int((labels < NUM_CLASSES).sum()) > 20  # positives to compare
    counts = [h * w for h, w in SIZES]
    for level, (lab, dist) in enumerate(zip(labels.split(counts, 1),
                                            distances.split(counts, 1), strict=True)):
        assert torch.equal(lab.reshape(-1), expected_labels[level])
        positive = lab.reshape(-1) < NUM_CLASSES  # MMDetection leaves any box at negatives
        torch.testing.assert_close(dist.reshape(-1, 4)[positive],
                                   expected_targets[level][positive], rtol=0, atol=0)


def test_smallest_box_wins_and_equal_areas_go_to_the_first():
    levels = PointLevels(points=torch.tensor([[10.0, 10.0], [30.0, 30.0]]),
                         regress_ranges=torch.tensor([[-1.0, 1e8], [-1.0, 1e8]]),
                         strides=torch.tensor([8.0, 8.0]), radii=None, num_level=[2])
    boxes = torch.tensor([[0.0, 0.0, 40.0, 40.0], [5.0, 5.0, 25.0, 25.0],
                          [0.0, 5.0, 20.0, 25.0], [20.0, 20.0, 40.0, 40.0]])
    labels, distances = fcos_targets_per_image(levels, GroundTruth(
        boxes, torch.tensor([0, 1, 2, 3]), None), num_classes=4)
    assert labels.tolist() == [1, 3]  # boxes 1 and 2 tie at area 400: the first
    torch.testing.assert_close(distances[0], torch.tensor([5.0, 5.0, 15.0, 15.0]))


def test_configuration_errors():
    with pytest.raises(ConfigError, match="regress_ranges"):
        FCOSHead(3, 8, strides=(8, 16), regress_ranges=((-1, 64),))
    # dcn_on_last_conv builds (a DCNv2 last tower conv; see tests/models/test_deform_conv.py)
    assert type(FCOSHead(3, 8, dcn_on_last_conv=True).cls_convs[-1].conv).__name__ == \
        "ModulatedDeformConv2dPack"


# ---- MMDetection's model, its weights in detlab's ------------------------------------------

def _config_path(config: str) -> Path:
    """detlab's copy of the config when it has one, else MMDetection's."""
    ours = REPO / "configs" / config
    return ours if ours.is_file() else mmdet_config_dir() / config


def randomize(model: nn.Module, images: torch.Tensor, classifier: nn.Conv2d) -> None:
    """Varied norm statistics and affines, per-level scales, and a classifier calibrated on
    ``images`` so that each class's logits spread around the score threshold (random weights
    alone score every location alike)."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                n = module.weight.numel()
                module.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                module.bias.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
        for scale in model.bbox_head.scales:
            scale.scale.fill_(float(torch.rand(1, generator=gen)) * 0.6 + 0.5)
        classifier.bias.zero_()
        logits = torch.cat([level.transpose(0, 1).flatten(1) for level in
                            model.eval().bbox_head(model.extract_feat(images))[0]], dim=1)
        gain = 1.0 / logits.std(dim=1)  # per class: logits ~ N(-2.5, 1)
        classifier.weight.mul_(gain[:, None, None, None])
        classifier.bias.copy_(-logits.mean(dim=1) * gain - 2.5)


def build_pair(config: str, classifier: str, options=SMALL):
    """(MMDetection's model of ``config``, detlab's with its weights loaded strictly), both
    with ``options`` (dotted overrides) applied, weights randomized, in eval mode."""
    import_mmdet()
    from mmdet.models import build_detector

    mm_cfg = load_mmdet_config(config)
    mm_cfg.merge_from_dict(options)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_detector(mm_cfg.model)
    calibration = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(3))
    randomize(reference, calibration, getattr(reference.bbox_head, classifier))
    cfg = Config.fromfile(_config_path(config))
    cfg.merge_from_dict(options)
    ours = build_model(cfg.model)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


def metas_and_targets(seed: int = 5, empty: bool = False):
    """Two images of a ``HEIGHT x WIDTH`` batch, the second smaller (padding on its bottom and
    right), and their ground truths: boxes of several levels' sizes (none with ``empty``)."""
    gen = torch.Generator().manual_seed(seed)
    shapes = [(HEIGHT, WIDTH), (HEIGHT - 32, WIDTH - 64)]
    metas = [dict(img_shape=(h, w, 3), pad_shape=(h, w, 3), batch_input_shape=(HEIGHT, WIDTH),
                  ori_shape=(h // 2, w // 2, 3), scale_factor=np.full(4, 2.0, np.float32),
                  flip=False, flip_direction=None, img_id=i, filename=f"img{i}.jpg")
             for i, (h, w) in enumerate(shapes)]
    targets = []
    for h, w in shapes:
        n = 0 if empty else 7
        size = torch.rand(n, 2, generator=gen) * torch.tensor([w * 0.7, h * 0.7]) + 8
        corner = torch.rand(n, 2, generator=gen) * (torch.tensor([w, h]) - size)
        boxes = torch.cat([corner, corner + size], 1)
        targets.append(dict(boxes=boxes, labels=torch.randint(0, NUM_CLASSES, (n,),
                                                               generator=gen),
                            boxes_ignore=torch.zeros(0, 4)))
    return metas, targets


def mmdet_losses(reference: nn.Module, images, metas, targets) -> dict[str, torch.Tensor]:
    """MMDetection's training losses, per-level lists summed as its ``_parse_losses`` does."""
    losses = reference.train().forward_train(
        images, copy.deepcopy(metas), [t["boxes"] for t in targets],
        [t["labels"] for t in targets])
    reference.eval()
    return {k: sum(v) if isinstance(v, (list, tuple)) else v for k, v in losses.items()}


def compare_outputs(reference, ours, strides=None):
    """Head outputs of eval mode (``strides``: MMDetection's eval-mode distances are detlab's
    times the level's stride)."""
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference.bbox_head(reference.extract_feat(images))
        actual = ours(images)
    assert len(actual) == len(expected) == 3
    if strides is not None:
        actual = (actual[0], [p * s for p, s in zip(actual[1], strides, strict=True)], actual[2])
    for ours_levels, reference_levels in zip(actual, expected, strict=True):
        assert len(ours_levels) == len(reference_levels) == 5
        for a, e in zip(ours_levels, reference_levels, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def _loss_inputs(empty: bool = False):
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(4))
    metas, targets = metas_and_targets(empty=empty)
    return images, targets, metas


def compare_losses(reference, ours, empty=False):
    """MMDetection's training losses and detlab's, key by key, on the same batch."""
    images, targets, metas = _loss_inputs(empty)
    expected = mmdet_losses(reference, images, metas, targets)
    actual = ours.train().loss(Batch(images, targets, metas))
    ours.eval()
    assert set(actual) == set(expected) == {"loss_cls", "loss_bbox", "loss_centerness"}
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6,
                                   msg=lambda m, key=key: f"{key}: {m}")
    return actual


def compare_detections(reference, ours):
    """The same boxes, scores and labels as MMDetection's ``simple_test`` (NMS through the
    mmcv._ext stand-in, i.e. torchvision's)."""
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(2))
    metas, targets = metas_and_targets()
    with torch.no_grad():
        expected = reference.simple_test(images, copy.deepcopy(metas), rescale=True)
    actual = ours.predict(Batch(images, targets, metas), rescale=True)
    assert all(sum(len(c) for c in image) > 30 for image in expected)  # enough to mean something
    for ours_image, reference_image in zip(actual, expected, strict=True):
        for a, e in zip(ours_image.to_mmdet(NUM_CLASSES), reference_image, strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-3)


@pytest.fixture(scope="module", params=[FCOS, FCOS_PLUS], ids=["fcos", "fcos-plus"])
def fcos_pair(request):
    return request.param, *build_pair(request.param, "conv_cls")


def test_head_outputs_match_mmdetection(fcos_pair):
    config, reference, ours = fcos_pair
    norm_on_bbox = ours.bbox_head.norm_on_bbox
    assert norm_on_bbox == (config == FCOS_PLUS)
    compare_outputs(reference, ours, strides=STRIDES if norm_on_bbox else None)


def test_losses_match_mmdetection(fcos_pair):
    _, reference, ours = fcos_pair
    losses = compare_losses(reference, ours)
    assert all(v > 0 for v in losses.values())


def test_empty_ground_truth_losses_match_mmdetection(fcos_pair):
    _, reference, ours = fcos_pair
    losses = compare_losses(reference, ours, empty=True)
    assert losses["loss_cls"] > 0
    assert losses["loss_bbox"] == 0 and losses["loss_centerness"] == 0


def test_losses_match_mmdetection_across_processes(fcos_pair, monkeypatch):
    """The divisors are averaged over processes where MMDetection averages them: with the same
    stand-in for the mean over processes (three times this process's numbers) in both."""
    _, reference, ours = fcos_pair
    import mmdet.models.dense_heads.fcos_head as mmdet_fcos

    from detlab.models.heads import fcos_head

    calls = []

    def mean_over_processes(tensor):
        calls.append(float(tensor))
        return tensor * 3

    monkeypatch.setattr(mmdet_fcos, "reduce_mean", mean_over_processes)
    monkeypatch.setattr(fcos_head, "reduce_mean", mean_over_processes)
    shared = compare_losses(reference, ours)  # both patched, and still equal
    assert len(calls) == 4  # the positives and the centerness sum, in each model
    monkeypatch.undo()
    single = ours.train().loss(Batch(*_loss_inputs()))
    ours.eval()
    for key in ("loss_cls", "loss_bbox", "loss_centerness"):  # every divisor was 3 times larger
        torch.testing.assert_close(shared[key] * 3, single[key], rtol=1e-5, atol=1e-6)


def test_detections_match_mmdetection(fcos_pair):
    _, reference, ours = fcos_pair
    compare_detections(reference, ours)


# ---- without MMDetection -----------------------------------------------------------------

def _small_head(**kwargs) -> FCOSHead:
    torch.manual_seed(0)
    return FCOSHead(3, 8, feat_channels=8, stacked_convs=2, strides=(8, 16),
                    regress_ranges=((-1, 32), (32, 1e8)), norm_cfg=dict(type="GN", num_groups=4),
                    test_cfg=TEST_CFG, **kwargs)


@pytest.mark.parametrize("options", [dict(), dict(center_sampling=True, norm_on_bbox=True,
                                                  centerness_on_reg=True)])
def test_empty_ground_truth_gives_classification_loss_only(options):
    head = _small_head(**options)
    feats = [torch.randn(2, 8, 8, 8), torch.randn(2, 8, 4, 4)]
    meta = dict(img_shape=(64, 64, 3), pad_shape=(64, 64, 3))
    empty = dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
    losses = head.loss(head(feats), [empty, empty], [meta, meta])
    assert losses["loss_cls"] > 0
    assert losses["loss_bbox"] == 0 and losses["loss_centerness"] == 0
    sum(losses.values()).backward()
    assert head.conv_cls.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in head.parameters())  # zeros, still in the graph
    # and a box gives every loss
    box = dict(boxes=torch.tensor([[4.0, 6.0, 40.0, 36.0]]), labels=torch.tensor([2]))
    losses = head.loss(head(feats), [box, empty], [meta, meta])
    assert all(v > 0 for v in losses.values())


def test_raw_outputs_do_not_depend_on_the_mode():
    head = _small_head(norm_on_bbox=True)
    feats = [torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4)]
    with torch.no_grad():
        trained = head.train()(feats)
        evaluated = head.eval()(feats)
    for a, b in zip(trained[1], evaluated[1], strict=True):
        torch.testing.assert_close(a, b)
        assert (a >= 0).all()


def test_two_training_steps_on_shapes(shapes_root, tmp_path):
    """FCOS through detlab.train on the shapes data: two iterations, finite losses."""
    model = dict(
        _delete_=True, type="FCOS",
        backbone=dict(type="ResNet", depth=18, out_indices=(1, 2, 3), frozen_stages=-1,
                      norm_eval=False, style="caffe"),
        neck=dict(type="FPN", in_channels=[128, 256, 512], out_channels=32, start_level=0,
                  add_extra_convs="on_output", num_outs=3, relu_before_extra_convs=True),
        bbox_head=dict(type="FCOSHead", num_classes=3, in_channels=32, feat_channels=32,
                       stacked_convs=2, strides=[8, 16, 32],
                       regress_ranges=((-1, 32), (32, 64), (64, 1e8)), center_sampling=True,
                       norm_on_bbox=True, centerness_on_reg=True,
                       loss_bbox=dict(type="GIoULoss", loss_weight=1.0)),
        train_cfg=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4,
                                     min_pos_iou=0, ignore_iof_thr=-1),
                       allowed_border=-1, pos_weight=-1, debug=False),
        test_cfg=TEST_CFG)
    run = train(tiny_config(shapes_root, epochs=1, model=model), work_dir=str(tmp_path),
                seed=0, progress=False, validate=False)
    rows = read_json_log(run.json_log)
    steps = [r for r in rows if r["mode"] == "train"]
    assert len(steps) == 2
    for row in steps:
        assert np.isfinite([row["loss_cls"], row["loss_bbox"], row["loss_centerness"]]).all()
        assert row["loss"] == pytest.approx(row["loss_cls"] + row["loss_bbox"]
                                            + row["loss_centerness"], rel=1e-5)
