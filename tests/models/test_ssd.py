"""SSD: the VGG backbone's layout, the extra levels, the head's per-level predictors, hard
negative mining and empty ground truth, the zoo config, and -- with MMDetection 2.28 installed
-- MMDetection's weights loaded strictly giving its head outputs, losses (and their gradients)
and detections."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from detlab.config import Config, ConfigError
from detlab.models import build_model
from detlab.models.backbones import SSDVGG
from detlab.models.heads import SSDHead
from detlab.models.necks import SSDNeck
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "ssd" / "ssd300_coco.py"
SIZE = 300
TEST_CFG = dict(nms_pre=1000, nms=dict(type="nms", iou_threshold=0.45), min_bbox_size=0,
                score_thr=0.02, max_per_img=200)
TRAIN_CFG = dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5,
                               min_pos_iou=0.0, ignore_iof_thr=-1, gt_max_assign_all=False),
                 smoothl1_beta=1.0, allowed_border=-1, pos_weight=-1, neg_pos_ratio=3,
                 debug=False)
ANCHORS = dict(type="SSDAnchorGenerator", scale_major=False, strides=[8, 16],
               ratios=[[2], [2, 3]], min_sizes=[8, 16], max_sizes=[16, 32])


def _small_head(**kwargs) -> SSDHead:
    torch.manual_seed(0)
    args = dict(num_classes=3, in_channels=(8, 16), anchor_generator=ANCHORS,
                train_cfg=TRAIN_CFG, test_cfg=TEST_CFG)
    return SSDHead(**{**args, **kwargs})


def _meta(size: int = 32) -> dict:
    return dict(img_shape=(size, size, 3), pad_shape=(size, size, 3), ori_shape=(size, size, 3),
                scale_factor=np.ones(4, np.float32), flip=False, flip_direction=None, img_id=0,
                filename="x.jpg")


def _target(boxes=(), labels=()) -> dict:
    return dict(boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                labels=torch.tensor(labels, dtype=torch.long))


# ---- layers ----------------------------------------------------------------------------------

def test_vgg16_has_torchvisions_layout_and_ssds_extra_layers():
    from torchvision.models import vgg16

    ours = SSDVGG(depth=16)
    plain = vgg16().features
    # torchvision's conv layers at the same indices, the last stage's pool dropped
    for i, layer in enumerate(plain[:30]):
        assert type(ours.features[i]) is type(layer)
        if isinstance(layer, nn.Conv2d):
            assert ours.features[i].weight.shape == layer.weight.shape
    assert len(ours.features) == 35
    assert ours.features[31].dilation == (6, 6) and ours.features[33].kernel_size == (1, 1)
    outs = ours(torch.randn(1, 3, SIZE, SIZE))
    assert [tuple(o.shape) for o in outs] == [(1, 512, 38, 38), (1, 1024, 19, 19)]
    with pytest.raises(ConfigError, match="depth"):
        SSDVGG(depth=17)


def test_neck_adds_the_extra_levels_and_normalizes_the_first():
    neck = SSDNeck(in_channels=(512, 1024), out_channels=(512, 1024, 512, 256, 256, 256),
                   level_strides=(2, 2, 1, 1), level_paddings=(1, 1, 0, 0), l2_norm_scale=20)
    assert torch.equal(neck.l2_norm.weight.detach(), torch.full((512,), 20.0))
    feats = (torch.randn(1, 512, 38, 38), torch.randn(1, 1024, 19, 19))
    outs = neck(feats)
    assert [o.shape[-1] for o in outs] == [38, 19, 10, 5, 3, 1]
    norms = outs[0].pow(2).sum(1).sqrt()
    torch.testing.assert_close(norms, torch.full_like(norms, 20.0), rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="level_strides"):
        SSDNeck(in_channels=(8,), out_channels=(8, 16), level_strides=(2, 2),
                level_paddings=(1,))


def test_head_has_per_level_predictors_with_background():
    head = _small_head()
    assert head.num_base_priors == [4, 6] and head.cls_out_channels == 4
    names = {k: tuple(v.shape) for k, v in head.state_dict().items()}
    assert names == {"cls_convs.0.0.weight": (16, 8, 3, 3), "cls_convs.0.0.bias": (16,),
                     "cls_convs.1.0.weight": (24, 16, 3, 3), "cls_convs.1.0.bias": (24,),
                     "reg_convs.0.0.weight": (16, 8, 3, 3), "reg_convs.0.0.bias": (16,),
                     "reg_convs.1.0.weight": (24, 16, 3, 3), "reg_convs.1.0.bias": (24,)}
    with pytest.raises(ConfigError, match="neg_pos_ratio"):
        _small_head(train_cfg={k: v for k, v in TRAIN_CFG.items() if k != "neg_pos_ratio"})


def _small_raw(head: SSDHead, batch: int = 1):
    torch.manual_seed(1)
    return head([torch.randn(batch, 8, 4, 4), torch.randn(batch, 16, 2, 2)])


def test_hard_negative_mining_keeps_ratio_times_the_positives():
    head = _small_head()
    raw = _small_raw(head)
    target = _target([[0.0, 0.0, 8.0, 8.0]], [1])
    priors = head.get_priors(raw[0], [_meta()])
    t = head.get_targets(priors, [target], [_meta()])
    num_pos = t.num_pos[0]
    assert num_pos >= 1
    rows = torch.cat([m.permute(0, 2, 3, 1).reshape(1, -1, 4) for m in raw[0]], 1)[0]
    ce = torch.nn.functional.cross_entropy(rows, t.labels[0], reduction="none")
    neg = ce[t.labels[0] == 3].sort(descending=True)[0]
    expected = (ce[t.labels[0] < 3].sum() + neg[:3 * num_pos].sum()) / num_pos
    losses = head.loss(raw, [target], [_meta()])
    torch.testing.assert_close(losses["loss_cls"], expected)
    assert losses["loss_bbox"] > 0


def test_empty_ground_truth_gives_zero_losses_with_gradients():
    head = _small_head()
    raw = _small_raw(head, batch=2)
    losses = head.loss(raw, [_target(), _target()], [_meta(), _meta()])
    assert losses["loss_cls"].item() == 0.0 and losses["loss_bbox"].item() == 0.0
    sum(losses.values()).backward()
    dets = head.predict(raw, [_meta(), _meta()])
    assert len(dets) == 2


def test_zoo_config_builds():
    model = build_model(Config.fromfile(CONFIG).model)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 34305206


# ---- MMDetection -----------------------------------------------------------------------------

def _mmdet_metas(n: int) -> list[dict]:
    scale = np.array([0.75, 0.6, 0.75, 0.6], np.float32)
    return [dict(img_shape=(SIZE, SIZE, 3), pad_shape=(SIZE, SIZE, 3),
                 batch_input_shape=(SIZE, SIZE), ori_shape=(500, 400, 3),
                 scale_factor=scale, flip=False, flip_direction=None, img_id=i,
                 filename=f"img{i}.jpg") for i in range(n)]


def _ground_truths(seed: int, counts=(6, 3)):
    gen = torch.Generator().manual_seed(seed)
    boxes, labels = [], []
    for n in counts:
        size = torch.rand(n, 2, generator=gen) * (SIZE - 20) + 20
        corner = torch.rand(n, 2, generator=gen) * (SIZE - size)
        boxes.append(torch.cat([corner, corner + size], dim=1))
        labels.append(torch.randint(0, 80, (n,), generator=gen))
    return boxes, labels


def _images(seed: int) -> torch.Tensor:
    return torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))


def _calibrate(model: nn.Module) -> None:
    """Each classifier output standardized over random images, the background's raised by 4,
    so that class scores spread around the score threshold."""
    images = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        model.neck.l2_norm.weight.fill_(20.0)  # MMDetection leaves it unset before init
        feats = model.extract_feat(images)
        for branch, feat in zip(model.bbox_head.cls_convs, feats, strict=True):
            conv = branch[-1]
            conv.bias.zero_()
            logits = conv(feat).transpose(0, 1).flatten(1)
            gain = 1.0 / logits.std(dim=1)
            conv.weight.mul_(gain[:, None, None, None])
            conv.bias.copy_(-logits.mean(dim=1) * gain)
            conv.bias[80::81] += 4.0


@pytest.fixture(scope="module")
def ssd_pair():
    """(MMDetection's SSD300, detlab's with its weights loaded strictly), both in eval mode."""
    from reference.mmdet_reference import build_mmdet_model, import_mmdet

    import_mmdet()
    torch.manual_seed(0)
    reference = build_mmdet_model(CONFIG, device="cpu").eval()
    _calibrate(reference)
    ours = build_model(Config.fromfile(CONFIG).model)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference, ours.eval()


@pytest.mark.slow
def test_head_outputs_match_mmdetection(ssd_pair):
    reference, ours = ssd_pair
    images = _images(1)
    with torch.no_grad():
        expected = reference.bbox_head(reference.extract_feat(images))
        actual = ours(images)
    for ours_levels, reference_levels in zip(actual, expected, strict=True):
        assert len(ours_levels) == len(reference_levels) == 6
        for a, e in zip(ours_levels, reference_levels, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def _losses_and_gradients(raw, call):
    raw = [[m.detach().clone().requires_grad_(True) for m in maps] for maps in raw]
    losses = call(raw)
    leaves = [m for maps in raw for m in maps]
    out = {}
    for key, value in losses.items():
        value = sum(value) if isinstance(value, (list, tuple)) else value
        value = value.reshape(())
        grads = torch.autograd.grad(value, leaves, retain_graph=True, allow_unused=True)
        out[key] = (value.detach(), [torch.zeros_like(m) if g is None else g
                                     for m, g in zip(leaves, grads, strict=True)])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("counts", [(6, 3), (0, 4), (0, 0)], ids=["boxes", "one-empty",
                                                                 "all-empty"])
def test_losses_and_their_gradients_match_mmdetection(ssd_pair, counts):
    reference, ours = ssd_pair
    images, metas = _images(4), _mmdet_metas(2)
    boxes, labels = _ground_truths(5, counts)
    with torch.no_grad():
        raw = reference.bbox_head(reference.extract_feat(images))
    expected = _losses_and_gradients(
        raw, lambda maps: reference.bbox_head.loss(*maps, boxes, labels, metas))
    targets = [dict(boxes=b, labels=lab) for b, lab in zip(boxes, labels, strict=True)]
    actual = _losses_and_gradients(
        raw, lambda maps: ours.bbox_head.loss(tuple(maps), targets, metas))
    assert set(actual) == set(expected) == {"loss_cls", "loss_bbox"}
    for key, (value, grads) in actual.items():
        torch.testing.assert_close(value, expected[key][0], rtol=1e-5, atol=1e-6)
        for a, e in zip(grads, expected[key][1], strict=True):
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-7)
    if counts == (0, 0):
        assert actual["loss_cls"][0].item() == actual["loss_bbox"][0].item() == 0.0
    else:
        assert actual["loss_cls"][0].item() > 0 and actual["loss_bbox"][0].item() > 0


@pytest.mark.slow
def test_detector_losses_match_mmdetection(ssd_pair):
    reference, ours = ssd_pair
    images, metas = _images(6), _mmdet_metas(2)
    boxes, labels = _ground_truths(7)
    with torch.no_grad():
        expected = reference.forward_train(images, metas, boxes, labels)
        targets = [dict(boxes=b, labels=lab) for b, lab in zip(boxes, labels, strict=True)]
        actual = ours.loss(Batch(images, targets, metas))
    for key in ("loss_cls", "loss_bbox"):
        torch.testing.assert_close(actual[key], sum(expected[key]).reshape(()), rtol=1e-5,
                                   atol=1e-6)


@pytest.mark.slow
def test_detections_match_mmdetection(ssd_pair):
    reference, ours = ssd_pair
    images, metas = _images(2), _mmdet_metas(2)
    with torch.no_grad():
        expected = reference.simple_test(images, metas, rescale=True)
    targets = [dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
               for _ in metas]
    actual = ours.predict(Batch(images, targets, metas), rescale=True)
    assert all(sum(len(c) > 0 for c in image) > 10 for image in expected)
    for ours_image, reference_image in zip(actual, expected, strict=True):
        for a, e in zip(ours_image.to_mmdet(80), reference_image, strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-3)
