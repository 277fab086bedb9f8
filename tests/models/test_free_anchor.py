"""FreeAnchor: RetinaNet's layers with the bag losses (the mean-max, the saturated linear box
probability, empty ground truth), the zoo config, and -- with MMDetection 2.28 installed -- the
same weights giving MMDetection's head outputs, losses (and their gradients) and detections."""

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from detlab.config import Config, ConfigError
from detlab.models import build_model
from detlab.models.heads import FreeAnchorRetinaHead, RetinaHead
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "free_anchor" / "retinanet_free_anchor_r50_fpn_1x_coco.py"
NUM_CLASSES = 3
STRIDES = (8, 16, 32)
TEST_CFG = dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05,
                nms=dict(type="nms", iou_threshold=0.5), max_per_img=100)
BOXES = [[4.0, 6.0, 40.0, 36.0], [30.0, 20.0, 62.0, 60.0]]
# MMDetection's names of the two losses
MMDET_KEYS = {"loss_positive_bag": "positive_bag_loss", "loss_negative_bag": "negative_bag_loss"}


def _head(**kwargs) -> FreeAnchorRetinaHead:
    torch.manual_seed(0)
    args = dict(num_classes=NUM_CLASSES, in_channels=8, feat_channels=8, stacked_convs=2,
                pre_anchor_topk=10,
                anchor_generator=dict(type="AnchorGenerator", octave_base_scale=4,
                                      scales_per_octave=1, ratios=[0.5, 1.0, 2.0],
                                      strides=list(STRIDES)),
                bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4,
                                target_stds=[0.1, 0.1, 0.2, 0.2]),
                loss_bbox=dict(type="SmoothL1Loss", beta=0.11, loss_weight=0.75),
                test_cfg=TEST_CFG)
    return FreeAnchorRetinaHead(**{**args, **kwargs})


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

def test_parameters_are_retinaheads():
    free = _head()
    torch.manual_seed(0)
    retina = RetinaHead(num_classes=NUM_CLASSES, in_channels=8, feat_channels=8,
                        stacked_convs=2, anchor_generator=free.prior_generator)
    assert {k: v.shape for k, v in free.state_dict().items()} == \
        {k: v.shape for k, v in retina.state_dict().items()}
    assert (free.pre_anchor_topk, free.bbox_thr, free.gamma) == (10, 0.6, 2.0)
    assert free.alpha == 0.5
    cls, reg = free(_feats(batch=2))
    assert [tuple(c.shape) for c in cls] == [(2, 9, 8, 8), (2, 9, 4, 4), (2, 9, 2, 2)]
    assert [tuple(r.shape) for r in reg] == [(2, 12, 8, 8), (2, 12, 4, 4), (2, 12, 2, 2)]


def test_config_errors_name_the_option():
    with pytest.raises(ConfigError, match="pre_anchor_topk"):
        _head(pre_anchor_topk=0)
    with pytest.raises(ConfigError, match="alpha"):
        _head(alpha=1.5)
    with pytest.raises(ConfigError, match="use_sigmoid=True"):
        _head(loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False))
    head = _head(pre_anchor_topk=1000)
    with pytest.raises(ConfigError, match="exceeds the 252 anchors"):
        head.loss(head(_feats()), [_target(BOXES, [0, 1])], [_meta()])


# ---- loss ----------------------------------------------------------------------------------

def test_mean_max_is_near_the_max_for_one_good_anchor_and_the_mean_for_poor_ones():
    head = _head()
    good = torch.tensor([[0.999, 0.01, 0.01, 0.01]])
    loss = head.positive_bag_loss(good, torch.ones_like(good))
    assert loss.shape == (1,)
    assert loss.item() < 0.5 * -np.log(0.95)  # the bag is nearly as good as its best anchor
    poor = torch.full((1, 4), 0.1)
    loss = head.positive_bag_loss(poor, torch.ones_like(poor))
    assert loss.item() == pytest.approx(0.5 * -np.log(0.1), rel=1e-5)


def test_box_probability_rises_linearly_from_the_threshold_to_the_best_prediction():
    head = _head(bbox_thr=0.5)
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 7.5],
                            [0.0, 0.0, 10.0, 5.0], [20.0, 20.0, 30.0, 30.0]])
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    # zero deltas: the predicted boxes are the anchors (IoU 1, 0.75, 0.5, 0 with the object)
    prob = head.image_box_prob(anchors, torch.zeros(4, 4), gt, torch.tensor([2]))
    expected = torch.zeros(4, NUM_CLASSES)
    expected[:, 2] = torch.tensor([1.0, 0.5, 0.0, 0.0])
    torch.testing.assert_close(prob, expected)
    empty = head.image_box_prob(anchors, torch.zeros(4, 4), gt[:0], torch.tensor([], dtype=int))
    assert torch.equal(empty, torch.zeros(4, NUM_CLASSES))


def test_empty_ground_truth_gives_the_negative_term_only():
    head = _head()
    raw = head(_feats())
    losses = head.loss(raw, [_target()], [_meta()])
    assert set(losses) == {"loss_positive_bag", "loss_negative_bag"}
    assert losses["loss_positive_bag"].item() == 0.0
    assert losses["loss_negative_bag"].item() > 0
    sum(losses.values()).backward()
    assert head.retina_cls.weight.grad.abs().sum() > 0
    assert head.retina_reg.weight.grad is not None  # in the graph, with a zero gradient

    head.zero_grad()
    one = head.loss(head(_feats()), [_target(BOXES[:1], [1])], [_meta()])
    assert all(v.item() > 0 for v in one.values())
    sum(one.values()).backward()
    assert head.retina_reg.weight.grad.abs().sum() > 0


def test_losses_of_a_batch_average_over_its_objects_and_bags():
    head = _head()
    feats = _feats()
    single = head.loss(head(feats), [_target(BOXES, [0, 2])], [_meta()])
    double = head.loss(head([torch.cat([f, f]) for f in feats]),
                       [_target(BOXES, [0, 2])] * 2, [_meta()] * 2)
    for key in single:
        torch.testing.assert_close(double[key], single[key])


# ---- the detector --------------------------------------------------------------------------

def test_config_is_mmdetections_model():
    """The config builds a RetinaNet with FreeAnchor's head and MMDetection's trainable
    parameter count (zoo/params.json)."""
    with torch.device("meta"):
        model = build_model(Config.fromfile(CONFIG).model)
    assert type(model).__name__ == "RetinaNet"
    assert type(model.bbox_head) is FreeAnchorRetinaHead
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 37_743_348


def test_config_is_mmdetections_config_key_for_key():
    from reference.mmdet_reference import mmdet_config_dir

    ours = Config.fromfile(CONFIG).to_dict()
    theirs = Config.fromfile(
        mmdet_config_dir() / "free_anchor" / "retinanet_free_anchor_r50_fpn_1x_coco.py").to_dict()
    assert ours == theirs


def _small_detector() -> nn.Module:
    cfg = Config.fromfile(CONFIG).to_dict()["model"]
    cfg["backbone"].update(depth=18, init_cfg=None)
    cfg["neck"].update(in_channels=[64, 128, 256, 512], out_channels=32)
    cfg["bbox_head"].update(num_classes=NUM_CLASSES, in_channels=32, feat_channels=32,
                            stacked_convs=1)
    torch.manual_seed(0)
    return build_model(cfg)


def test_detector_trains_two_steps():
    model = _small_detector().train()
    height, width = 64, 96
    meta = dict(_meta(), img_shape=(height, width, 3), pad_shape=(height, width, 3))
    gen = torch.Generator().manual_seed(2)
    batch = Batch(torch.randn(2, 3, height, width, generator=gen),
                  [_target(BOXES, [0, 2]), _target()], [meta, meta])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    totals = []
    for _ in range(2):
        losses = model.loss(batch)
        assert set(losses) == {"loss_positive_bag", "loss_negative_bag"}
        assert all(torch.isfinite(v) and v > 0 for v in losses.values())
        total = sum(losses.values())
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
        totals.append(total.item())
    assert totals[1] < totals[0]
    results = model.eval().predict(batch)
    assert len(results) == 2 and all(r.boxes.shape[1] == 4 for r in results)


# ---- MMDetection's FreeAnchor as the reference ---------------------------------------------

HEIGHT, WIDTH = 192, 256
SMALL = """
_base_ = {base!r}
model = dict(
    backbone=dict(depth=18, init_cfg=None),
    neck=dict(in_channels=[64, 128, 256, 512], out_channels=64),
    bbox_head=dict(in_channels=64, feat_channels=64, stacked_convs=2))
"""


def _randomize(model: nn.Module, images: torch.Tensor) -> None:
    """Varied norm statistics, and a classifier calibrated on ``images`` so that each class's
    logits spread around the score threshold across locations."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.running_mean.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
                module.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                module.bias.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
        cls = model.bbox_head.retina_cls
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


def _ground_truths(seed: int, counts=(8, 4)) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    boxes, labels = [], []
    for n in counts:
        size = torch.rand(n, 2, generator=gen) * (torch.tensor([WIDTH, HEIGHT]) - 8) + 8
        corner = torch.rand(n, 2, generator=gen) * (torch.tensor([WIDTH, HEIGHT]) - size)
        boxes.append(torch.cat([corner, corner + size], dim=1))
        labels.append(torch.randint(0, 80, (n,), generator=gen))
    if counts[0] > 1:
        labels[0][1] = labels[0][0]  # two objects of one class: the max over them
    return boxes, labels


@pytest.fixture(scope="module")
def free_anchor_pair(tmp_path_factory):
    """(MMDetection's FreeAnchor RetinaNet, detlab's with its weights loaded strictly), from
    the same small variant of the zoo config, both in eval mode."""
    from reference.mmdet_reference import build_mmdet_model, import_mmdet

    import_mmdet()
    path = tmp_path_factory.mktemp("free_anchor") / "free_anchor_r18_small.py"
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
def test_head_outputs_match_mmdetection(free_anchor_pair):
    reference, ours = free_anchor_pair
    images = _images(1)
    with torch.no_grad():
        expected = reference.bbox_head(reference.extract_feat(images))
        actual = ours(images)
    assert len(actual) == len(expected) == 2
    for ours_levels, reference_levels in zip(actual, expected, strict=True):
        assert len(ours_levels) == len(reference_levels) == 5
        for a, e in zip(ours_levels, reference_levels, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def _losses_and_gradients(head, raw, call):
    raw = [[m.detach().clone().requires_grad_(True) for m in maps] for maps in raw]
    losses = call(head, raw)
    leaves = [m for maps in raw for m in maps]
    out = {}
    for key, value in losses.items():
        grads = torch.autograd.grad(value, leaves, retain_graph=True, allow_unused=True)
        out[key] = (value.detach(), [torch.zeros_like(m) if g is None else g
                                     for m, g in zip(leaves, grads, strict=True)])
    return out


@pytest.mark.slow
def test_losses_match_mmdetection(free_anchor_pair):
    reference, ours = free_anchor_pair
    images, metas = _images(4), _mmdet_metas(2)
    boxes, labels = _ground_truths(5)
    with torch.no_grad():
        expected = reference.forward_train(images, metas, boxes, labels)
        targets = [dict(boxes=b, labels=lab) for b, lab in zip(boxes, labels, strict=True)]
        actual = ours.loss(Batch(images, targets, metas))
    assert set(actual) == set(MMDET_KEYS)
    for key, theirs in MMDET_KEYS.items():
        assert actual[key].item() > 0
        torch.testing.assert_close(actual[key], expected[theirs], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("counts", [(8, 4), (0, 6), (0, 0)], ids=["boxes", "one-empty",
                                                                 "all-empty"])
def test_head_losses_and_their_gradients_match_mmdetection(free_anchor_pair, counts):
    reference, ours = free_anchor_pair
    images, metas = _images(6), _mmdet_metas(2)
    boxes, labels = _ground_truths(7, counts)
    with torch.no_grad():
        raw = reference.bbox_head(reference.extract_feat(images))
    expected = _losses_and_gradients(reference.bbox_head, raw,
                                     lambda head, maps: head.loss(*maps, boxes, labels, metas))
    targets = [dict(boxes=b, labels=lab) for b, lab in zip(boxes, labels, strict=True)]
    actual = _losses_and_gradients(ours.bbox_head, raw,
                                   lambda head, maps: head.loss(tuple(maps), targets, metas))
    assert set(actual) == set(MMDET_KEYS)
    for key, (value, grads) in actual.items():
        theirs = expected[MMDET_KEYS[key]]
        torch.testing.assert_close(value, theirs[0], rtol=1e-5, atol=1e-6)
        for a, e in zip(grads, theirs[1], strict=True):
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-7)
    if counts == (0, 0):
        assert actual["loss_positive_bag"][0].item() == 0.0
        assert actual["loss_negative_bag"][0].item() > 0


@pytest.mark.slow
def test_detections_match_mmdetection(free_anchor_pair):
    reference, ours = free_anchor_pair
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
