"""FoveaBox: FoveaHead's layers and options, its targets (size ranges, the fovea, the order of
overlapping objects), losses with empty ground truth, decoding, the zoo config, and -- with
MMDetection 2.28 installed -- the same weights giving MMDetection's targets, head outputs,
losses (and their gradients) and detections."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from detlab.config import Config, ConfigError
from detlab.models import build_model
from detlab.models.heads import FoveaHead
from detlab.models.heads.base_dense_head import GroundTruth
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "foveabox" / "fovea_r50_fpn_4x4_1x_coco.py"
NUM_CLASSES = 3
STRIDES = (8, 16, 32)
TEST_CFG = dict(nms_pre=1000, score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5),
                max_per_img=100)


def _head(**kwargs) -> FoveaHead:
    torch.manual_seed(0)
    args = dict(num_classes=NUM_CLASSES, in_channels=8, feat_channels=8, stacked_convs=2,
                strides=list(STRIDES), base_edge_list=[16, 32, 64],
                scale_ranges=((1, 32), (16, 64), (32, 128)),
                loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=1.5, alpha=0.4),
                loss_bbox=dict(type="SmoothL1Loss", beta=0.11), test_cfg=TEST_CFG)
    return FoveaHead(**{**args, **kwargs})


def _feats(batch: int = 1, size: int = 64) -> list[torch.Tensor]:
    torch.manual_seed(1)
    return [torch.randn(batch, 8, size // s, size // s) for s in STRIDES]


def _meta(size: int = 64) -> dict:
    return dict(img_shape=(size, size, 3), pad_shape=(size, size, 3), ori_shape=(size, size, 3),
                scale_factor=np.ones(4, np.float32), flip=False, flip_direction=None)


def _target(boxes=(), labels=()) -> dict:
    return dict(boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                labels=torch.tensor(labels, dtype=torch.long))


def test_layers_and_parameter_names():
    head = _head()
    assert set(head.state_dict()) == {
        "cls_convs.0.conv.weight", "cls_convs.0.conv.bias", "cls_convs.1.conv.weight",
        "cls_convs.1.conv.bias", "reg_convs.0.conv.weight", "reg_convs.0.conv.bias",
        "reg_convs.1.conv.weight", "reg_convs.1.conv.bias", "conv_cls.weight", "conv_cls.bias",
        "conv_reg.weight", "conv_reg.bias"}
    cls, reg = head(_feats(batch=2))
    assert [tuple(c.shape) for c in cls] == [(2, 3, 8, 8), (2, 3, 4, 4), (2, 3, 2, 2)]
    assert [tuple(r.shape) for r in reg] == [(2, 4, 8, 8), (2, 4, 4, 4), (2, 4, 2, 2)]


def test_config_errors_name_the_option():
    with pytest.raises(ConfigError, match="in_channels .* must equal bbox_head.feat_channels"):
        _head(with_deform=True, feat_channels=16)
    with pytest.raises(ConfigError, match="one base_edge_list"):
        _head(base_edge_list=[16, 32])
    with pytest.raises(ConfigError, match="use_sigmoid=True"):
        _head(loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False))


def test_align_layers_and_parameter_names():
    """FoveaBox-align: the class branch is feature_adaption, then a 3x3 and a 1x1 conv of four
    times the channels (biased without a norm layer), and conv_cls on those."""
    head = _head(with_deform=True, deform_groups=2)
    shapes = {k: tuple(v.shape) for k, v in head.state_dict().items()
              if not k.startswith("reg_convs")}
    assert shapes == {
        "cls_convs.0.conv.weight": (32, 8, 3, 3), "cls_convs.0.conv.bias": (32,),
        "cls_convs.1.conv.weight": (32, 32, 1, 1), "cls_convs.1.conv.bias": (32,),
        "feature_adaption.conv_offset.weight": (36, 4, 1, 1),
        "feature_adaption.conv_adaption.weight": (8, 8, 3, 3),
        "conv_cls.weight": (NUM_CLASSES, 32, 3, 3), "conv_cls.bias": (NUM_CLASSES,),
        "conv_reg.weight": (4, 8, 3, 3), "conv_reg.bias": (4,)}
    # FeatureAlign's own init comes after the head's: std 0.1 offsets, std 0.01 deform conv
    assert 0.05 < head.feature_adaption.conv_offset.weight.std() < 0.2
    assert head.feature_adaption.conv_adaption.weight.std() < 0.02
    head.init_weights()  # as the detector's init_weights: the offset conv is not zeroed
    assert 0.05 < head.feature_adaption.conv_offset.weight.std() < 0.2
    gn = _head(with_deform=True, norm_cfg=dict(type="GN", num_groups=4))
    assert gn.cls_convs[0].conv.bias is None
    cls, reg = head(_feats(batch=2))
    assert [tuple(c.shape) for c in cls] == [(2, 3, 8, 8), (2, 3, 4, 4), (2, 3, 2, 2)]
    losses = head.loss((cls, reg), [_target([[4.0, 6.0, 40.0, 36.0]], [1])] * 2, [_meta()] * 2)
    sum(losses.values()).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in head.parameters())


def test_targets_mark_the_fovea_with_the_smaller_object_on_top():
    head = _head(sigma=0.5)
    sizes = [(8, 8), (4, 4), (2, 2)]
    points = head.prior_generator.grid_priors(sizes)
    gt = GroundTruth(torch.tensor([[0.0, 0.0, 64.0, 64.0], [8.0, 8.0, 40.0, 40.0]]),
                     torch.tensor([0, 2]), torch.zeros(0, 4))
    labels, targets = head.get_targets(points, sizes, [gt])
    level0 = labels[:64].view(8, 8)
    # the 32-pixel object (size range of level 0): cells 2..3 (its central half, in cells)
    assert (level0 == 2).nonzero().tolist() == [[2, 2], [2, 3], [3, 2], [3, 3]]
    assert (level0 == 0).sum() == 0  # the 64-pixel object is not level 0's
    level1 = labels[64:80].view(4, 4)  # both objects; the smaller one painted last
    assert level1[1, 1].item() == 2 and level1[2, 2].item() == 0
    # the point (24, 24) of level 1 regresses log(distance / 32) to the small box's edges
    row = 64 + 1 * 4 + 1
    torch.testing.assert_close(targets[row], torch.log(torch.tensor([16.0, 16, 16, 16]) / 32))
    assert torch.all(targets[labels == NUM_CLASSES] == 0)


def test_empty_ground_truth_gives_classification_loss_only():
    head = _head()
    losses = head.loss(head(_feats()), [_target()], [_meta()])
    assert set(losses) == {"loss_cls", "loss_bbox"}
    assert losses["loss_cls"].item() > 0 and losses["loss_bbox"].item() == 0.0
    sum(losses.values()).backward()
    assert head.conv_cls.weight.grad.abs().sum() > 0

    one = head.loss(head(_feats()), [_target([[4.0, 6.0, 40.0, 36.0]], [1])], [_meta()])
    assert all(v.item() > 0 for v in one.values())


def test_decoding_uses_the_levels_base_edge_and_clips():
    head = _head(test_cfg=dict(TEST_CFG, score_thr=0.5))
    sizes = [(8, 8), (4, 4), (2, 2)]
    cls = [torch.full((1, NUM_CLASSES, h, w), -10.0) for h, w in sizes]
    cls[1][0, 1, 1, 2] = 10.0  # level 1 (base edge 32), point (40, 24)
    reg = [torch.zeros(1, 4, h, w) for h, w in sizes]
    reg[1][0, :, 1, 2] = torch.log(torch.tensor([0.5, 0.25, 1.0, 2.0]))
    (result,) = head.predict((cls, reg), [_meta()])
    assert result.labels.tolist() == [1]
    torch.testing.assert_close(result.boxes, torch.tensor([[24.0, 16.0, 63.0, 63.0]]))


def test_config_is_mmdetections_model():
    with torch.device("meta"):
        model = build_model(Config.fromfile(CONFIG).model)
    assert type(model).__name__ == "FOVEA" and isinstance(model.bbox_head, FoveaHead)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 36_194_388


def test_config_is_mmdetections_config_key_for_key():
    from reference.mmdet_reference import mmdet_config_dir

    ours = Config.fromfile(CONFIG).to_dict()
    theirs = Config.fromfile(
        mmdet_config_dir() / "foveabox" / "fovea_r50_fpn_4x4_1x_coco.py").to_dict()
    assert ours == theirs


# ---- MMDetection's FoveaBox as the reference ------------------------------------------------

HEIGHT, WIDTH = 192, 256
SMALL = """
_base_ = {base!r}
model = dict(
    backbone=dict(depth=18, init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=64),
    bbox_head=dict(in_channels=64, feat_channels=64, stacked_convs=2))
"""


def _randomize(model: nn.Module, images: torch.Tensor) -> None:
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                module.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                module.bias.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
        cls = model.bbox_head.conv_cls
        cls.bias.zero_()
        logits = torch.cat([level.transpose(0, 1).flatten(1) for level in
                            model.eval().bbox_head(model.extract_feat(images))[0]], dim=1)
        gain = 1.0 / logits.std(dim=1)
        cls.weight.mul_(gain[:, None, None, None])
        cls.bias.copy_(-logits.mean(dim=1) * gain - 4.5)


def _mmdet_metas(n: int) -> list[dict]:
    scale = np.array([2.0, 2.0, 2.0, 2.0], np.float32)
    return [dict(img_shape=(HEIGHT, WIDTH, 3), pad_shape=(HEIGHT, WIDTH, 3),
                 batch_input_shape=(HEIGHT, WIDTH), ori_shape=(HEIGHT // 2, WIDTH // 2, 3),
                 scale_factor=scale, flip=False, flip_direction=None, img_id=i,
                 filename=f"img{i}.jpg") for i in range(n)]


def _ground_truths(seed: int, counts=(10, 5)) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Boxes of 4 pixels up to the image's size (every level's size range), overlapping."""
    gen = torch.Generator().manual_seed(seed)
    boxes, labels = [], []
    for n in counts:
        size = torch.rand(n, 2, generator=gen) * (torch.tensor([WIDTH, HEIGHT]) - 4) + 4
        corner = torch.rand(n, 2, generator=gen) * (torch.tensor([WIDTH, HEIGHT]) - size)
        boxes.append(torch.cat([corner, corner + size], dim=1))
        labels.append(torch.randint(0, 80, (n,), generator=gen))
    return boxes, labels


@pytest.fixture(scope="module")
def fovea_pair(tmp_path_factory):
    from reference.mmdet_reference import build_mmdet_model, import_mmdet

    import_mmdet()
    path = tmp_path_factory.mktemp("fovea") / "fovea_r18_small.py"
    path.write_text(SMALL.format(base=str(CONFIG)))
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
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_targets_match_mmdetection(fovea_pair, seed):
    reference, ours = fovea_pair
    sizes = [(HEIGHT // s, WIDTH // s) for s in (8, 16, 32, 64, 128)]
    points = ours.bbox_head.prior_generator.grid_priors(sizes)
    boxes, labels = _ground_truths(seed, counts=(25, 0))
    expected = reference.bbox_head.get_targets(boxes, labels, sizes, points)
    gts = [GroundTruth(b, lab, torch.zeros(0, 4)) for b, lab in zip(boxes, labels, strict=True)]
    actual = ours.bbox_head.get_targets(points, sizes, gts)
    assert torch.equal(actual[0], expected[0])
    pos = actual[0] < 80
    assert pos.sum() > 50
    # only the positives' box targets: MMDetection fills the others from uninitialized memory
    torch.testing.assert_close(actual[1][pos], expected[1][pos])


@pytest.mark.slow
def test_head_outputs_match_mmdetection(fovea_pair):
    reference, ours = fovea_pair
    images = _images(1)
    with torch.no_grad():
        expected = reference.bbox_head(reference.extract_feat(images))
        actual = ours(images)
    for ours_levels, reference_levels in zip(actual, expected, strict=True):
        assert len(ours_levels) == len(reference_levels) == 5
        for a, e in zip(ours_levels, reference_levels, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_losses_match_mmdetection(fovea_pair):
    reference, ours = fovea_pair
    images, metas = _images(4), _mmdet_metas(2)
    boxes, labels = _ground_truths(5)
    with torch.no_grad():
        expected = reference.forward_train(images, metas, boxes, labels)
        targets = [dict(boxes=b, labels=lab) for b, lab in zip(boxes, labels, strict=True)]
        actual = ours.loss(Batch(images, targets, metas))
    assert set(actual) == set(expected) == {"loss_cls", "loss_bbox"}
    for key in actual:
        assert actual[key].item() > 0
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6)


def _losses_and_gradients(head, raw, call):
    raw = [[m.detach().clone().requires_grad_(True) for m in maps] for maps in raw]
    losses = call(head, raw)
    leaves = [m for maps in raw for m in maps]
    out = {}
    for key, value in losses.items():
        grads = torch.autograd.grad(value, leaves, retain_graph=True, allow_unused=True) \
            if value.requires_grad else [None] * len(leaves)
        out[key] = (value.detach(), [torch.zeros_like(m) if g is None else g
                                     for m, g in zip(leaves, grads, strict=True)])
    return out


@pytest.mark.slow
@pytest.mark.parametrize("counts", [(10, 5), (0, 6), (0, 0)], ids=["boxes", "one-empty",
                                                                  "all-empty"])
def test_head_losses_and_their_gradients_match_mmdetection(fovea_pair, counts):
    reference, ours = fovea_pair
    images, metas = _images(6), _mmdet_metas(2)
    boxes, labels = _ground_truths(7, counts)
    with torch.no_grad():
        raw = reference.bbox_head(reference.extract_feat(images))
    expected = _losses_and_gradients(reference.bbox_head, raw,
                                     lambda head, maps: head.loss(*maps, boxes, labels, metas))
    targets = [dict(boxes=b, labels=lab) for b, lab in zip(boxes, labels, strict=True)]
    actual = _losses_and_gradients(ours.bbox_head, raw,
                                   lambda head, maps: head.loss(tuple(maps), targets, metas))
    assert set(actual) == set(expected)
    for key, (value, grads) in actual.items():
        torch.testing.assert_close(value, expected[key][0], rtol=1e-5, atol=1e-6)
        for a, e in zip(grads, expected[key][1], strict=True):
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-7)
    if counts == (0, 0):
        assert actual["loss_cls"][0].item() > 0 and actual["loss_bbox"][0].item() == 0.0


@pytest.mark.slow
def test_detections_match_mmdetection(fovea_pair):
    reference, ours = fovea_pair
    images, metas = _images(2), _mmdet_metas(2)
    with torch.no_grad():
        expected = reference.simple_test(images, metas, rescale=True)
    targets = [dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
               for _ in metas]
    actual = ours.predict(Batch(images, targets, metas), rescale=True)
    assert all(sum(len(c) > 0 for c in image) > 20 for image in expected)
    for ours_image, reference_image in zip(actual, expected, strict=True):
        for a, e in zip(ours_image.to_mmdet(80), reference_image, strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-3)


# ---- FoveaBox-align (with_deform=True) against MMDetection ---------------------------------

ALIGN = "foveabox/fovea_align_r50_fpn_gn-head_4x4_2x_coco.py"


@pytest.fixture(scope="module")
def fovea_align_pair(tmp_path_factory):
    """A small FoveaBox-align from MMDetection's zoo config, MMDetection's weights in detlab's;
    the offset conv scaled up so that the samples move by pixels, not fractions."""
    from reference.mmdet_reference import build_mmdet_model, import_mmdet, mmdet_config_dir

    import_mmdet()
    path = tmp_path_factory.mktemp("fovea_align") / "fovea_align_r18_small.py"
    path.write_text(SMALL.format(base=str(mmdet_config_dir() / ALIGN)))
    torch.manual_seed(0)
    reference = build_mmdet_model(path, device="cpu")
    with torch.no_grad():
        reference.bbox_head.feature_adaption.conv_offset.weight.mul_(10)
    calibration = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(3))
    _randomize(reference, calibration)
    ours = build_model(Config.fromfile(path).model)
    assert ours.bbox_head.with_deform
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


@pytest.mark.slow
def test_align_head_outputs_match_mmdetection(fovea_align_pair):
    reference, ours = fovea_align_pair
    images = _images(1)
    with torch.no_grad():
        expected = reference.bbox_head(reference.extract_feat(images))
        actual = ours(images)
    for ours_levels, reference_levels in zip(actual, expected, strict=True):
        assert len(ours_levels) == len(reference_levels) == 5
        for a, e in zip(ours_levels, reference_levels, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("counts", [(10, 5), (0, 0)], ids=["boxes", "empty"])
def test_align_losses_match_mmdetection(fovea_align_pair, counts):
    reference, ours = fovea_align_pair
    images, metas = _images(4), _mmdet_metas(2)
    boxes, labels = _ground_truths(5, counts)
    with torch.no_grad():
        expected = reference.forward_train(images, metas, boxes, labels)
        targets = [dict(boxes=b, labels=lab) for b, lab in zip(boxes, labels, strict=True)]
        actual = ours.loss(Batch(images, targets, metas))
    assert set(actual) == set(expected) == {"loss_cls", "loss_bbox"}
    for key in actual:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6)
    assert actual["loss_cls"].item() > 0
    assert (actual["loss_bbox"].item() > 0) == (counts != (0, 0))


@pytest.mark.slow
def test_align_detections_match_mmdetection(fovea_align_pair):
    reference, ours = fovea_align_pair
    images, metas = _images(2), _mmdet_metas(2)
    with torch.no_grad():
        expected = reference.simple_test(images, metas, rescale=True)
    targets = [dict(boxes=torch.zeros(0, 4), labels=torch.zeros(0, dtype=torch.long))
               for _ in metas]
    actual = ours.predict(Batch(images, targets, metas), rescale=True)
    assert all(sum(len(c) > 0 for c in image) > 20 for image in expected)
    for ours_image, reference_image in zip(actual, expected, strict=True):
        for a, e in zip(ours_image.to_mmdet(80), reference_image, strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-3)
