"""CenterNet against MMDetection 2.28: with MMDetection's weights loaded strictly into a small
CenterNet built from the same zoo configs (ResNet-18, 32 channels; with and without DCNv2),
the same head outputs, losses (also with empty ground truth) and detections; its Gaussian
targets against MMDetection's helpers; errors.

The batch is FCOS's (``test_fcos.py``). (The zoo's CenterNet configs' parameter counts and
state_dict keys are checked by ``test_zoo.py``.)
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from reference.mmdet_reference import import_mmdet, load_mmdet_config, mmdet_config_dir
from test_fcos import HEIGHT, NUM_CLASSES, WIDTH, metas_and_targets, mmdet_losses
from torch import nn

from detlab.config import Config, ConfigError
from detlab.engine.tester import _predict
from detlab.models import build_model
from detlab.models.heads import CenterNetHead
from detlab.models.heads.centernet_head import draw_gaussian_, gaussian_radius
from detlab.models.necks import CTResNetNeck
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
CENTERNET_DCN = "centernet/centernet_resnet18_dcnv2_140e_coco.py"
CENTERNET = "centernet/centernet_resnet18_140e_coco.py"
SMALL = {"model.backbone.init_cfg": None, "model.neck.num_deconv_filters": (32, 32, 32),
         "model.bbox_head.num_classes": NUM_CLASSES, "model.bbox_head.in_channel": 32,
         "model.bbox_head.feat_channel": 32}
LOSS_KEYS = {"loss_center_heatmap", "loss_wh", "loss_offset"}


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / CENTERNET_DCN)
    theirs = Config.fromfile(mmdet_config_dir() / CENTERNET_DCN)
    assert mine.to_dict() == theirs.to_dict()


def _randomize(model: nn.Module, images: torch.Tensor) -> None:
    """Varied norm statistics and affines and DCNv2 offsets, a heatmap calibrated on
    ``images`` so that its probabilities spread, and sizes of a few cells."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.weight.numel()
                module.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                module.bias.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                module.running_mean.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            if name.endswith("conv_offset"):
                module.weight.copy_(torch.randn(module.weight.shape, generator=gen) * 0.01)
        head = model.eval().bbox_head
        feat = model.extract_feat(images)[0]
        last = head.heatmap_head[-1]
        last.bias.zero_()
        logits = head.heatmap_head(feat).transpose(0, 1).flatten(1)
        gain = 1.0 / logits.std(dim=1)
        last.weight.mul_(gain[:, None, None, None])
        last.bias.copy_(-logits.mean(dim=1) * gain - 2.0)
        head.wh_head[-1].weight.mul_(4.0)
        head.wh_head[-1].bias.fill_(6.0)


def _pair(config: str):
    import_mmdet()
    from mmdet.models import build_detector

    mm_cfg = load_mmdet_config(config)
    mm_cfg.merge_from_dict(SMALL)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_detector(mm_cfg.model)
    reference.init_weights()
    _randomize(reference, torch.randn(2, 3, HEIGHT, WIDTH,
                                      generator=torch.Generator().manual_seed(3)))
    ours_path = REPO / "configs" / config
    cfg = Config.fromfile(ours_path if ours_path.is_file() else mmdet_config_dir() / config)
    cfg.merge_from_dict(SMALL)
    ours = build_model(cfg.model)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


@pytest.fixture(scope="module", params=[
    pytest.param(CENTERNET, id="plain"),
    pytest.param(CENTERNET_DCN, id="dcnv2", marks=pytest.mark.slow)])  # deformable convs: slow
def centernet_pair(request):
    return _pair(request.param)


def test_head_outputs_match_mmdetection(centernet_pair):
    reference, ours = centernet_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = reference.bbox_head(reference.extract_feat(images))
        actual = ours(images)
    assert len(actual) == len(expected) == 3
    for ours_levels, reference_levels in zip(actual, expected, strict=True):
        assert len(ours_levels) == len(reference_levels) == 1
        assert ours_levels[0].shape[-2:] == (HEIGHT // 4, WIDTH // 4)
        torch.testing.assert_close(ours_levels[0], reference_levels[0], rtol=1e-5, atol=1e-5)


def _compare_losses(reference, ours, empty: bool):
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(4))
    metas, targets = metas_and_targets(empty=empty)
    expected = mmdet_losses(reference, images, metas, targets)
    actual = ours.train().loss(Batch(images, targets, metas))
    ours.eval()
    assert set(actual) == set(expected) == LOSS_KEYS
    for key in expected:
        torch.testing.assert_close(actual[key], torch.as_tensor(expected[key]), rtol=1e-5,
                                   atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
    return actual


def test_losses_match_mmdetection(centernet_pair):
    losses = _compare_losses(*centernet_pair, empty=False)
    assert all(v > 0 for v in losses.values())


def test_empty_ground_truth_losses_match_mmdetection(centernet_pair):
    losses = _compare_losses(*centernet_pair, empty=True)
    assert losses["loss_center_heatmap"] > 0
    assert losses["loss_wh"] == 0 and losses["loss_offset"] == 0


def test_detections_match_mmdetection(centernet_pair):
    """MMDetection's ``simple_test``: the top 100 local maxima of each image, moved by the
    test crop's border and rescaled, no NMS."""
    reference, ours = centernet_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(2))
    metas, targets = metas_and_targets()
    for i, meta in enumerate(metas):
        meta["border"] = np.array([3.0 + i, 150.0, 5.0 + 2 * i, 200.0], np.float32)
    with torch.no_grad():
        expected = reference.simple_test(images, copy.deepcopy(metas), rescale=True)
    actual = ours.predict(Batch(images, targets, metas), rescale=True)
    for ours_image, reference_image in zip(actual, expected, strict=True):
        assert len(ours_image.boxes) == 100
        for a, e in zip(ours_image.to_mmdet(NUM_CLASSES), reference_image, strict=True):
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("with_nms", [False, True], ids=["joined", "nms"])
def test_flip_test_time_augmentation_matches_mmdetection(centernet_pair, with_nms):
    """MMDetection's ``aug_test``: heatmaps and sizes averaged with the flipped image's
    mirrored back, the plain image's offsets; NMS (test_cfg.nms, max_per_img) when test_cfg
    has nms_cfg."""
    reference, ours = centernet_pair
    image = torch.randn(1, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(6))
    metas, targets = metas_and_targets()
    meta = dict(metas[0], border=np.array([2.0, 150.0, 4.0, 200.0], np.float32))
    flipped_meta = dict(meta, flip=True, flip_direction="horizontal")
    extra = dict(nms_cfg=dict(type="nms", iou_threshold=0.5), max_per_img=60,
                 nms=dict(type="nms", iou_threshold=0.2)) if with_nms else {}
    saved = [dict(m.bbox_head.test_cfg) for m in (reference, ours)]
    try:
        reference.bbox_head.test_cfg.update(extra)
        ours.bbox_head.test_cfg.update(extra)
        with torch.no_grad():
            expected = reference.aug_test([image, image.flip(3)],
                                          [[copy.deepcopy(meta)], [copy.deepcopy(flipped_meta)]],
                                          rescale=True)
        pairs = [Batch(image, targets[:1], [meta]),
                 Batch(image.flip(3), targets[:1], [flipped_meta])]
        actual = ours.predict_flip(pairs)
        # the tester hands a test-time-augmented batch to the detector's own merging
        through_tester = _predict(ours, pairs, torch.device("cpu"))
    finally:
        reference.bbox_head.test_cfg = type(reference.bbox_head.test_cfg)(saved[0])
        ours.bbox_head.test_cfg = saved[1]
    assert len(actual) == len(expected) == 1
    torch.testing.assert_close(through_tester[0].boxes, actual[0].boxes)
    assert (len(actual[0].boxes) <= 60) if with_nms else (len(actual[0].boxes) == 100)
    for a, e in zip(actual[0].to_mmdet(NUM_CLASSES), expected[0], strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-3)


def test_flip_testing_needs_flipped_pairs():
    model = build_model(dict(
        type="CenterNet", backbone=dict(type="ResNet", depth=18),
        neck=dict(type="CTResNetNeck", in_channel=512, num_deconv_filters=(8,),
                  num_deconv_kernels=(4,), use_dcn=False),
        bbox_head=dict(type="CenterNetHead", num_classes=2, in_channel=8, feat_channel=8),
        test_cfg=dict(topk=5, local_maximum_kernel=3, max_per_img=5))).eval()
    meta = dict(batch_input_shape=(64, 64), img_shape=(64, 64, 3), flip=False)
    plain = Batch(torch.randn(1, 3, 64, 64), [{}], [meta])
    with pytest.raises(ValueError, match="pairs"):
        model.predict_flip([plain])
    with pytest.raises(ValueError, match="flipped"):
        model.predict_flip([plain, plain])


# ---- targets, without the models ---------------------------------------------------------

def test_gaussian_targets_are_mmdetections():
    import_mmdet()
    from mmdet.models.utils import gaussian_radius as mm_radius
    from mmdet.models.utils import gen_gaussian_target

    gen = torch.Generator().manual_seed(0)
    sizes = torch.rand(40, 2, generator=gen) * 30 + 0.5
    radii = gaussian_radius(sizes[:, 0], sizes[:, 1])
    expected = [mm_radius([h, w], min_overlap=0.3) for h, w in sizes]
    assert [int(r) for r in radii] == [int(r) for r in expected]
    ours, theirs = torch.zeros(12, 15), torch.zeros(12, 15)
    for (x, y), radius in zip([(0, 0), (14, 11), (7, 5), (8, 5), (3, 10)], [2, 3, 4, 0, 1],
                              strict=True):
        draw_gaussian_(ours, x, y, radius)
        gen_gaussian_target(theirs, [x, y], radius)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)


def test_a_later_object_at_the_same_cell_sets_its_size():
    head = CenterNetHead(8, 8, 3, test_cfg=dict(topk=10))
    boxes = torch.tensor([[0.0, 0.0, 32.0, 32.0], [8.0, 8.0, 24.0, 24.0]])
    t = head.get_targets([dict(boxes=boxes, labels=torch.tensor([0, 2]))],
                         [dict(pad_shape=(64, 64, 3))], (1, 3, 16, 16))
    assert t.wh[0, :, 4, 4].tolist() == [4.0, 4.0]  # the second box, 16 px / 4
    assert t.heatmap[0, 0, 4, 4] == t.heatmap[0, 2, 4, 4] == 1
    assert int(t.avg_factor) == 2 and t.weight.sum() == 2


def test_configuration_errors():
    with pytest.raises(ConfigError, match="num_deconv_kernels"):
        CTResNetNeck(16, (8, 8), (4,))
    with pytest.raises(ConfigError, match="topk"):
        CenterNetHead(8, 8, 3, test_cfg=dict(max_per_img=10)).predict(
            ([torch.rand(1, 3, 4, 4)], [torch.rand(1, 2, 4, 4)], [torch.rand(1, 2, 4, 4)]),
            [dict(batch_input_shape=(16, 16))])
    with pytest.raises(ConfigError, match="test_cfg"):
        CenterNetHead(8, 8, 3, test_cfg=dict(top_k=100))
    model = dict(type="CenterNet", backbone=dict(type="ResNet", depth=18),
                 neck=dict(type="CTResNetNeck", in_channel=256, num_deconv_filters=(8,),
                           num_deconv_kernels=(4,), use_dcn=False),
                 bbox_head=dict(type="CenterNetHead", num_classes=2, in_channel=8,
                                feat_channel=8))
    with pytest.raises(ConfigError, match="model.neck.in_channel=256"):
        build_model(model)
