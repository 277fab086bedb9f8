"""GFL: the Integral layer, GFLHead's layers, losses (empty ground truth, normalizers) and
decoding, the detector's config, and -- with MMDetection 2.28 installed -- the same weights giving
MMDetection's head outputs, losses (and their gradients) and detections."""

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from detlab.config import Config, ConfigError
from detlab.models import build_model
from detlab.models.heads import GFLHead, Integral
from detlab.models.heads import gfl_head as gfl_module
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
GFL_CONFIG = REPO / "configs" / "gfl" / "gfl_r50_fpn_1x_coco.py"
NUM_CLASSES = 3
STRIDES = (8, 16, 32)
TRAIN_CFG = dict(assigner=dict(type="ATSSAssigner", topk=9), allowed_border=-1, pos_weight=-1,
                 debug=False)
TEST_CFG = dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05,
                nms=dict(type="nms", iou_threshold=0.6), max_per_img=100)
BOXES = [[4.0, 6.0, 40.0, 36.0], [30.0, 20.0, 62.0, 60.0]]


def _head(**kwargs) -> GFLHead:
    torch.manual_seed(0)
    args = dict(num_classes=NUM_CLASSES, in_channels=8, feat_channels=8, stacked_convs=2,
                norm_cfg=dict(type="GN", num_groups=4, requires_grad=True), reg_max=4,
                anchor_generator=dict(type="AnchorGenerator", ratios=[1.0], octave_base_scale=4,
                                      scales_per_octave=1, strides=list(STRIDES)),
                train_cfg=TRAIN_CFG, test_cfg=TEST_CFG)
    return GFLHead(**{**args, **kwargs})


def _feats(batch: int = 1, size: int = 64) -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(batch, 8, size // s, size // s) for s in STRIDES]


def _meta(size: int = 64) -> dict:
    return dict(img_shape=(size, size, 3), pad_shape=(size, size, 3), ori_shape=(size, size, 3),
                scale_factor=np.ones(4, np.float32), flip=False, flip_direction=None, img_id=0,
                filename="x.jpg")


def _target(boxes=(), labels=()) -> dict:
    return dict(boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                labels=torch.tensor(labels, dtype=torch.long))


# ---- layers ----------------------------------------------------------------------------------

def test_integral_is_the_expected_bin():
    integral = Integral(reg_max=4)
    assert torch.equal(integral.project, torch.arange(5.0))
    logits = torch.randn(6, 20)  # 6 locations, 4 sides x 5 bins
    expected = (logits.reshape(6, 4, 5).softmax(-1) * torch.arange(5.0)).sum(-1)
    torch.testing.assert_close(integral(logits), expected)
    sharp = torch.full((1, 20), -1e4)
    sharp[0, [3, 5, 14, 15]] = 0.0  # side bins 3, 0, 4, 0
    torch.testing.assert_close(integral(sharp), torch.tensor([[3.0, 0.0, 4.0, 0.0]]))
    assert "project" in integral.state_dict()


def test_layers_and_parameter_names():
    head = _head()
    assert {"cls_convs.1.conv.weight", "cls_convs.1.gn.bias", "reg_convs.0.gn.weight",
            "gfl_cls.weight", "gfl_cls.bias", "gfl_reg.weight", "scales.2.scale",
            "integral.project"} <= set(head.state_dict())
    assert head.cls_convs[0].conv.bias is None  # GN convs have no bias
    assert head.scales[0].scale.shape == () and head.gfl_reg.out_channels == 4 * 5
    cls, reg = head(_feats(batch=2))
    assert [tuple(c.shape) for c in cls] == [(2, 3, 8, 8), (2, 3, 4, 4), (2, 3, 2, 2)]
    assert [tuple(r.shape) for r in reg] == [(2, 20, 8, 8), (2, 20, 4, 4), (2, 20, 2, 2)]


def test_init_follows_mmdetection():
    head = _head(feat_channels=64, in_channels=64,
                 norm_cfg=dict(type="GN", num_groups=32, requires_grad=True))
    head.gfl_cls.bias.data.zero_()
    head.init_weights()
    prior = -math.log((1 - 0.01) / 0.01)
    torch.testing.assert_close(head.gfl_cls.bias, torch.full_like(head.gfl_cls.bias, prior))
    assert torch.all(head.gfl_reg.bias == 0)
    assert all(float(s.scale.detach()) == 1.0 for s in head.scales)
    assert abs(float(head.reg_convs[0].conv.weight.detach().std()) - 0.01) < 0.002


def test_config_errors_name_the_key():
    with pytest.raises(ConfigError, match="one anchor per location"):
        _head(anchor_generator=dict(type="AnchorGenerator", ratios=[0.5, 1.0],
                                    octave_base_scale=4, scales_per_octave=1, strides=[8, 16]))
    with pytest.raises(ConfigError, match="use_sigmoid=True"):
        _head(loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False))
    with pytest.raises(ConfigError, match="same in x and y"):
        _head(anchor_generator=dict(type="AnchorGenerator", ratios=[1.0], octave_base_scale=4,
                                    scales_per_octave=1, strides=[(8, 4), (16, 16), (32, 32)]))


# ---- loss ----------------------------------------------------------------------------------

def test_empty_ground_truth_gives_classification_loss_only():
    head = _head()
    raw = head(_feats())
    losses = head.loss(raw, [_target()], [_meta()])
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_dfl"}
    assert losses["loss_cls"].item() > 0
    assert losses["loss_bbox"].item() == 0.0 and losses["loss_dfl"].item() == 0.0
    sum(losses.values()).backward()
    assert head.gfl_cls.weight.grad.abs().sum() > 0

    one = head.loss(head(_feats()), [_target(BOXES[:1], [1])], [_meta()])
    assert all(one[key].item() > 0 for key in ("loss_cls", "loss_bbox", "loss_dfl"))


def test_losses_are_normalized_by_positives_and_score_weights():
    """A batch of the same image twice has the losses of the image alone: the classification
    loss is divided by the positives, the box losses by the sum of their score weights (once
    that sum reaches 1: scores of 0.5 here)."""
    head = _head()
    nn.init.zeros_(head.gfl_cls.bias)
    feats = _feats()
    single = head.loss(head(feats), [_target(BOXES, [0, 2])], [_meta()])
    double = head.loss(head([torch.cat([f, f]) for f in feats]),
                       [_target(BOXES, [0, 2])] * 2, [_meta()] * 2)
    for key in single:
        torch.testing.assert_close(double[key], single[key])


def test_normalizers_are_averaged_over_processes(monkeypatch):
    """Both normalizers go through reduce_mean (a second process with twice the positives and
    weights halves every loss; scores of 0.5 keep the weights' sum above its floor of 1)."""
    head = _head()
    nn.init.zeros_(head.gfl_cls.bias)
    raw = head(_feats())
    args = ([_target(BOXES, [0, 2])], [_meta()])
    alone = head.loss(raw, *args)
    monkeypatch.setattr(gfl_module, "reduce_mean", lambda t: t * 2)
    together = head.loss(raw, *args)
    assert alone["loss_bbox"].item() > 0
    for key in alone:
        torch.testing.assert_close(together[key], alone[key] / 2)


def test_quality_target_is_the_iou_of_the_predicted_box():
    """A head whose distributions predict each positive's box exactly learns a quality of 1:
    the classification loss of a positive's class is the BCE against 1."""
    head = _head(reg_max=16)
    raw = head(_feats())
    targets, metas = [_target([[8.0, 8.0, 40.0, 40.0]], [1])], [_meta()]
    priors = head.get_priors(raw[0], metas)
    t = head.get_targets(priors, targets, metas)
    pos = (t.labels[0] < NUM_CLASSES).nonzero().squeeze(1)
    assert pos.numel() > 0
    strides = torch.repeat_interleave(torch.tensor(STRIDES, dtype=torch.float32),
                                      torch.tensor(priors.num_level))
    anchors = priors.priors[pos]
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    gt = t.bbox_targets[0, pos]
    sides = torch.cat([centers - gt[:, :2], gt[:, 2:] - centers], 1) / strides[pos, None]
    # each side's distribution: all mass on its two neighbouring bins, weighted to the target
    logits = torch.full((len(pos), 4, 17), -1e4)
    low = sides.floor().long()
    frac = sides - low
    logits.scatter_(2, low[..., None], (1 - frac).clamp(min=1e-12).log()[..., None])
    logits.scatter_(2, (low + 1)[..., None], frac.clamp(min=1e-12).log()[..., None])
    reg_rows = torch.zeros(1, len(priors.priors), 68)
    reg_rows[0, pos] = logits.reshape(len(pos), 68)
    cls_rows = torch.zeros(1, len(priors.priors), NUM_CLASSES)
    losses = head.loss_by_targets(cls_rows, reg_rows, priors.priors, strides, t)
    # sigmoid(0) = 0.5 everywhere: each negative pair costs BCE(0.5, 0) * 0.5**2, each
    # positive's own class BCE(0.5, 1) * |1 - 0.5|**2 -- the same, since the quality is 1
    per_pair = math.log(2) * 0.25
    expected = per_pair * NUM_CLASSES * len(priors.priors) / len(pos)
    assert losses["loss_cls"].item() == pytest.approx(expected, rel=1e-4)
    assert losses["loss_bbox"].item() == pytest.approx(0.0, abs=1e-4)


# ---- predict -------------------------------------------------------------------------------

def test_predict_decodes_distances_from_anchor_centers_with_the_stride():
    head = _head(reg_max=4, test_cfg=dict(TEST_CFG, score_thr=0.5))
    sizes = [(8, 8), (4, 4), (2, 2)]
    cls = [torch.full((1, NUM_CLASSES, h, w), -10.0) for h, w in sizes]
    cls[1][0, 2, 1, 3] = 10.0  # level 1 (stride 16), anchor center (48, 16)
    reg = [torch.full((1, 20, h, w), -1e4) for h, w in sizes]
    for side, bin_ in enumerate((1, 1, 0, 2)):  # left 16, top 16, right 0, bottom 32 pixels
        for level in reg:
            level[0, side * 5 + bin_] = 0.0
    (result,) = head.predict((cls, reg), [_meta()])
    assert result.labels.tolist() == [2]
    torch.testing.assert_close(result.boxes, torch.tensor([[32.0, 0.0, 48.0, 48.0]]))


# ---- the detector --------------------------------------------------------------------------

def _small_detector() -> nn.Module:
    cfg = Config.fromfile(GFL_CONFIG).to_dict()["model"]
    cfg["backbone"].update(depth=18, init_cfg=None)
    cfg["neck"].update(in_channels=[64, 128, 256, 512], out_channels=32)
    cfg["bbox_head"].update(num_classes=NUM_CLASSES, in_channels=32, feat_channels=32,
                            stacked_convs=1)
    torch.manual_seed(0)
    return build_model(cfg)


def test_config_is_mmdetections_model():
    """The config builds GFL with MMDetection's trainable parameter count (zoo/params.json)."""
    with torch.device("meta"):
        model = build_model(Config.fromfile(GFL_CONFIG).model)
    assert type(model).__name__ == "GFL" and isinstance(model.bbox_head, GFLHead)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 32_215_193


def test_config_is_mmdetections_config_key_for_key():
    from reference.mmdet_reference import mmdet_config_dir

    ours = Config.fromfile(GFL_CONFIG).to_dict()
    theirs = Config.fromfile(mmdet_config_dir() / "gfl" / "gfl_r50_fpn_1x_coco.py").to_dict()
    assert ours == theirs


def test_detector_trains_two_steps():
    model = _small_detector().train()
    height, width = 64, 96
    meta = dict(_meta(), img_shape=(height, width, 3), pad_shape=(height, width, 3))
    gen = torch.Generator().manual_seed(2)
    batch = Batch(torch.randn(2, 3, height, width, generator=gen),
                  [_target(BOXES, [0, 2]), _target()], [meta, meta])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    before = model.bbox_head.gfl_reg.weight.detach().clone()
    totals = []
    for _ in range(2):
        losses = model.loss(batch)
        assert set(losses) == {"loss_cls", "loss_bbox", "loss_dfl"}
        assert all(torch.isfinite(v) and v > 0 for v in losses.values())
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert totals[1] < totals[0]
    assert not torch.equal(model.bbox_head.gfl_reg.weight, before)
    results = model.eval().predict(batch)
    assert len(results) == 2 and all(r.boxes.shape[1] == 4 for r in results)


# ---- MMDetection's GFL as the reference ---------------------------------------------------

HEIGHT, WIDTH = 192, 256
SMALL = """
_base_ = {base!r}
model = dict(
    backbone=dict(depth=18, init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=64),
    bbox_head=dict(in_channels=64, feat_channels=64, stacked_convs=2))
"""


def _randomize(model: nn.Module, images: torch.Tensor) -> None:
    """Varied norm layers and scales, and a classifier calibrated on ``images`` so that each
    class's logits spread around the score threshold across locations."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            if isinstance(module, (nn.BatchNorm2d, nn.GroupNorm)):
                n = module.weight.numel()
                module.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                module.bias.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
        for scale in model.bbox_head.scales:
            scale.scale.copy_(torch.rand((), generator=gen) + 0.5)
        cls = model.bbox_head.gfl_cls
        cls.bias.zero_()
        logits = torch.cat([level.transpose(0, 1).flatten(1) for level in
                            model.eval().bbox_head(model.extract_feat(images))[0]], dim=1)
        gain = 1.0 / logits.std(dim=1)  # per class: logits ~ N(-4.5, 1)
        cls.weight.mul_(gain[:, None, None, None])
        cls.bias.copy_(-logits.mean(dim=1) * gain - 4.5)


def _mmdet_metas(n: int) -> list[dict]:
    scale = np.array([2.0, 2.0, 2.0, 2.0], np.float32)
    return [dict(img_shape=(HEIGHT, WIDTH, 3), pad_shape=(HEIGHT, WIDTH, 3),
                 batch_input_shape=(HEIGHT, WIDTH), ori_shape=(HEIGHT // 2, WIDTH // 2, 3),
                 scale_factor=scale, flip=False, flip_direction=None, img_id=i,
                 filename=f"img{i}.jpg") for i in range(n)]


def _ground_truths(seed: int, counts=(8, 4)) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Boxes of 8 pixels up to the image's size inside the image, the first one nearly the
    whole image (positives on the first three levels), random labels."""
    gen = torch.Generator().manual_seed(seed)
    boxes, labels = [], []
    for n in counts:
        size = torch.rand(n, 2, generator=gen) * (torch.tensor([WIDTH, HEIGHT]) - 8) + 8
        corner = torch.rand(n, 2, generator=gen) * (torch.tensor([WIDTH, HEIGHT]) - size)
        if n:
            size[0], corner[0] = torch.tensor([WIDTH - 8, HEIGHT - 8]), torch.tensor([4, 4])
        boxes.append(torch.cat([corner, corner + size], dim=1))
        labels.append(torch.randint(0, 80, (n,), generator=gen))
    return boxes, labels


@pytest.fixture(scope="module")
def gfl_pair(tmp_path_factory):
    """(MMDetection's GFL, detlab's with its weights loaded strictly), from the same small
    variant of configs/gfl/gfl_r50_fpn_1x_coco.py, both in eval mode."""
    from reference.mmdet_reference import build_mmdet_model, import_mmdet

    import_mmdet()
    path = tmp_path_factory.mktemp("gfl") / "gfl_r18_small.py"
    path.write_text(SMALL.format(base=str(GFL_CONFIG)))
    torch.manual_seed(0)
    reference = build_mmdet_model(path, device="cpu")
    calibration = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(3))
    _randomize(reference, calibration)
    ours = build_model(Config.fromfile(path).model)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


def _images(seed: int) -> torch.Tensor:
    return torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(seed))


@pytest.mark.slow
def test_head_outputs_match_mmdetection(gfl_pair):
    reference, ours = gfl_pair
    images = _images(1)
    with torch.no_grad():
        expected = reference.bbox_head(reference.extract_feat(images))
        actual = ours(images)
    assert len(actual) == len(expected) == 2
    for ours_levels, reference_levels in zip(actual, expected, strict=True):
        assert len(ours_levels) == len(reference_levels) == 5
        for a, e in zip(ours_levels, reference_levels, strict=True):
            assert a.dtype == e.dtype
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_losses_match_mmdetection(gfl_pair):
    """``forward_train`` (per-level lists, summed) against ``loss``, on the same images and
    ground truths."""
    reference, ours = gfl_pair
    images, metas = _images(4), _mmdet_metas(2)
    boxes, labels = _ground_truths(5)
    with torch.no_grad():
        expected = reference.forward_train(images, metas, boxes, labels)
        targets = [dict(boxes=b, labels=lab) for b, lab in zip(boxes, labels, strict=True)]
        actual = ours.loss(Batch(images, targets, metas))
    assert set(actual) == set(expected) == {"loss_cls", "loss_bbox", "loss_dfl"}
    for key in actual:
        assert actual[key].item() > 0
        torch.testing.assert_close(actual[key], sum(expected[key]), rtol=1e-5, atol=1e-6)


def _head_losses_and_gradients(head, raw, call):
    raw = [[m.detach().clone().requires_grad_(True) for m in maps] for maps in raw]
    losses = call(head, raw)
    leaves = [m for maps in raw for m in maps]
    out = {}
    for key, value in losses.items():
        value = sum(value) if isinstance(value, list) else value
        grads = torch.autograd.grad(value, leaves, retain_graph=True, allow_unused=True)
        out[key] = (value.detach(), [torch.zeros_like(m) if g is None else g
                                     for m, g in zip(leaves, grads, strict=True)])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("counts", [(8, 4), (0, 6), (0, 0)], ids=["boxes", "one-empty",
                                                                 "all-empty"])
def test_head_losses_and_their_gradients_match_mmdetection(gfl_pair, counts):
    """The same raw maps into MMDetection's ``GFLHead.loss`` and detlab's: each loss and its
    gradient with respect to every map; images without ground truth included."""
    reference, ours = gfl_pair
    images, metas = _images(6), _mmdet_metas(2)
    boxes, labels = _ground_truths(7, counts)
    with torch.no_grad():
        raw = reference.bbox_head(reference.extract_feat(images))
    expected = _head_losses_and_gradients(
        reference.bbox_head, raw,
        lambda head, maps: head.loss(*maps, boxes, labels, metas))
    targets = [dict(boxes=b, labels=lab) for b, lab in zip(boxes, labels, strict=True)]
    actual = _head_losses_and_gradients(
        ours.bbox_head, raw, lambda head, maps: head.loss(tuple(maps), targets, metas))
    assert set(actual) == set(expected)
    for key, (value, grads) in actual.items():
        torch.testing.assert_close(value, expected[key][0], rtol=1e-5, atol=1e-6)
        for a, e in zip(grads, expected[key][1], strict=True):
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-7)
    if counts == (0, 0):
        assert actual["loss_cls"][0].item() > 0
        assert actual["loss_bbox"][0].item() == 0.0 and actual["loss_dfl"][0].item() == 0.0


@pytest.mark.slow
def test_detections_match_mmdetection(gfl_pair):
    """The same boxes, scores and labels as MMDetection's ``simple_test`` (its NMS runs through
    the mmcv._ext stand-in, i.e. torchvision's)."""
    reference, ours = gfl_pair
    images, metas = _images(2), _mmdet_metas(2)
    with torch.no_grad():
        expected = reference.simple_test(images, metas, rescale=True)
    targets = [dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
               for _ in metas]
    actual = ours.predict(Batch(images, targets, metas), rescale=True)
    # enough detections of enough classes to mean something
    assert all(sum(len(c) > 0 for c in image) > 20 for image in expected)
    for ours_image, reference_image in zip(actual, expected, strict=True):
        for a, e in zip(ours_image.to_mmdet(80), reference_image, strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-3)
