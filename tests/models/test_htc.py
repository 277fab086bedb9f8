"""Hybrid Task Cascade against MMDetection 2.28: small models of the shipped HTC configs (with
and without the semantic branch; ResNet-18, 16 channels, three stages) with MMDetection's
weights loaded strictly give the same losses -- ``loss_semantic_seg`` and each stage's box and
mask losses, the mask heads trained on the interleaved, resampled boxes with the mask
information flow -- with and without ground truth, and the same detections and masks (every
mask head's probabilities averaged, each taking the previous one's features); the shipped
configs read as MMDetection's; configuration errors name their key.

Sampling is random: seeding ``torch`` identically before each side's loss gives both the same
samples (test_cascade_rcnn.py's pair builder and detection check, test_mask_rcnn.py's ground
truth and loss call are reused). The semantic maps are the batch's: padded with 255 to the
images' size, of which MMDetection sees the top-left eighth (``SegRescale(1 / 8)``'s maps).
"""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import test_cascade_rcnn
import torch
import torch.nn.functional as F
from reference.mmdet_reference import import_mmdet, mmdet_config_dir
from test_cascade_rcnn import STAGES, build_cascade_pair
from test_mask_rcnn import CLASSES, HEIGHT, WIDTH, _metas, _mmdet_losses, _targets

from detlab.config import Config, ConfigError
from detlab.models import build_model
from detlab.registry import MODELS
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
HTC = "htc/htc_r50_fpn_1x_coco.py"
HTC_PLAIN = "htc/htc_without_semantic_r50_fpn_1x_coco.py"
SEM_CLASSES = 5
STRIDE = 8


def _small(semantic: bool) -> dict:
    """Overrides making a zoo HTC small (list entries by index)."""
    options = {"model.backbone.depth": 18, "model.backbone.init_cfg": None,
               "model.neck.in_channels": [64, 128, 256, 512], "model.neck.out_channels": 16,
               "model.rpn_head.in_channels": 16, "model.rpn_head.feat_channels": 16,
               "model.roi_head.bbox_roi_extractor.out_channels": 16,
               "model.roi_head.mask_roi_extractor.out_channels": 16,
               "model.train_cfg.rpn_proposal.max_per_img": 300,
               "model.test_cfg.rpn.max_per_img": 300}
    for stage in range(STAGES):
        head, mask = f"model.roi_head.bbox_head.{stage}", f"model.roi_head.mask_head.{stage}"
        options.update({f"{head}.in_channels": 16, f"{head}.fc_out_channels": 32,
                        f"{head}.num_classes": CLASSES, f"{mask}.in_channels": 16,
                        f"{mask}.conv_out_channels": 16, f"{mask}.num_classes": CLASSES,
                        f"{mask}.num_convs": 2,
                        f"model.train_cfg.rcnn.{stage}.sampler.num": 64})
    if semantic:
        options.update({"model.roi_head.semantic_roi_extractor.out_channels": 16,
                        "model.roi_head.semantic_head.in_channels": 16,
                        "model.roi_head.semantic_head.conv_out_channels": 16,
                        "model.roi_head.semantic_head.num_classes": SEM_CLASSES})
    return options


PAIRS = {"htc": (HTC, _small(True)), "htc-without-semantic": (HTC_PLAIN, _small(False))}


@pytest.fixture(scope="module", params=list(PAIRS), ids=list(PAIRS))
def htc_pair(request):
    return build_cascade_pair(*PAIRS[request.param])


def _with_semantic_maps(targets, seed=5):
    """The targets plus ``semantic_seg`` maps as the batch pads them (255 outside each image's
    1/8-scaled map, some pixels 255 inside too) and MMDetection's ``(N, 1, H/8, W/8)`` maps."""
    gen = torch.Generator().manual_seed(seed)
    small = []
    for target, meta in zip(targets, _metas(), strict=True):
        full = torch.full((HEIGHT, WIDTH), 255, dtype=torch.int64)
        h, w = (meta["pad_shape"][0] + STRIDE - 1) // STRIDE, \
            (meta["pad_shape"][1] + STRIDE - 1) // STRIDE
        labels = torch.randint(0, SEM_CLASSES + 1, (h, w), generator=gen)
        full[:h, :w] = torch.where(labels == SEM_CLASSES, 255, labels)
        target["semantic_seg"] = full
        small.append(full[:HEIGHT // STRIDE, :WIDTH // STRIDE])
    return targets, torch.stack(small)[:, None]


def test_detlab_configs_are_mmdetections():
    for config in (HTC, HTC_PLAIN):
        mine = Config.fromfile(REPO / "configs" / config)
        theirs = Config.fromfile(mmdet_config_dir() / config)
        assert mine.to_dict() == theirs.to_dict(), config


@pytest.mark.parametrize("empty", [False, True], ids=["boxes", "no-boxes"])
def test_losses_match_mmdetection(htc_pair, empty):
    reference, ours = htc_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(4))
    metas = _metas()
    targets, seg = _with_semantic_maps(_targets(empty))
    forward_train = reference.forward_train
    extra = dict(gt_semantic_seg=seg) if reference.with_semantic else {}
    reference.forward_train = lambda *args, **kwargs: forward_train(*args, **kwargs, **extra)
    try:
        torch.manual_seed(11)
        expected = _mmdet_losses(reference, images, metas, targets)
    finally:
        del reference.forward_train
    torch.manual_seed(11)
    actual = ours.train().loss(Batch(images, targets, metas))
    ours.eval()
    names = ["loss_cls", "acc", "loss_bbox", "loss_mask"]
    keys = {"loss_rpn_cls", "loss_rpn_bbox"} | {f"s{i}.{n}" for i in range(STAGES)
                                                for n in names}
    assert set(actual) == set(expected) == keys | ({"loss_semantic_seg"}
                                                   if ours.with_semantic else set())
    for key in expected:
        torch.testing.assert_close(actual[key].reshape(-1), expected[key].reshape(-1),
                                   rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
    for stage in range(STAGES):
        assert (actual[f"s{stage}.loss_bbox"] > 0) != empty
    sum(v for k, v in actual.items() if "loss" in k).backward()
    assert all(p.grad is not None for n, p in ours.named_parameters()
               if p.requires_grad and "roi_head" in n and not (empty and "mask" in n))
    ours.zero_grad()


@pytest.mark.parametrize("rescale", [True, False])
def test_detections_and_masks_match(htc_pair, rescale):
    test_cascade_rcnn.test_detections_and_masks_match_mmdetection(htc_pair, rescale)


def test_no_proposals_give_no_detections(htc_pair):
    _, ours = htc_pair
    feats = ours.extract_feat(torch.zeros(2, 3, HEIGHT, WIDTH))
    results = ours.roi_head.predict(feats, [torch.zeros(0, 5), torch.zeros(0, 5)], _metas())
    assert all(len(r) == 0 and r.masks.shape == (0, HEIGHT // 2, WIDTH // 2) for r in results)


def test_semantic_branch_needs_the_semantic_maps(htc_pair):
    _, ours = htc_pair
    if not ours.with_semantic:
        pytest.skip("no semantic branch")
    images = torch.zeros(2, 3, HEIGHT, WIDTH)
    with pytest.raises(ConfigError, match="with_seg=True"):
        ours.train().loss(Batch(images, _targets(), _metas()))
    ours.eval()
    small = [dict(t, semantic_seg=torch.zeros(4, 4, dtype=torch.int64)) for t in _targets()]
    with pytest.raises(ValueError, match="SegRescale"):
        ours.train().loss(Batch(images, small, _metas()))
    ours.eval()


def _roi_head(**changes):
    cfg = Config.fromfile(REPO / "configs" / HTC)
    head = cfg.model.roi_head.to_dict()
    head.update(changes)
    return head


@pytest.mark.parametrize(("changes", "message"), [
    (dict(semantic_roi_extractor=None), "semantic_roi_extractor"),
    (dict(semantic_fusion=("bbox", "masks")), "semantic_fusion"),
])
def test_configuration_errors_name_their_key(changes, message):
    with pytest.raises(ConfigError, match=message):
        MODELS.build(_roi_head(**changes))


def test_non_interleaved_htc_trains():
    """``interleaved=False`` (masks trained on the box head's own samples, refinement after):
    all losses finite, the same keys."""
    cfg = Config.fromfile(REPO / "configs" / HTC)
    cfg.merge_from_dict(_small(True))
    cfg.model.roi_head.interleaved = False
    torch.manual_seed(0)
    model = build_model(cfg.model).train()
    targets, _ = _with_semantic_maps(_targets())
    losses = model.loss(Batch(torch.randn(2, 3, HEIGHT, WIDTH), targets, _metas()))
    assert "s2.loss_mask" in losses and "loss_semantic_seg" in losses
    assert all(torch.isfinite(v).all() for v in losses.values())


def _seg_sample(h, w, seed):
    rng = np.random.default_rng(seed)
    img = rng.integers(0, 255, (h, w, 3)).astype(np.uint8)
    return dict(img=img, img_shape=img.shape, ori_shape=img.shape, pad_shape=img.shape,
                scale_factor=np.ones(4, np.float32), flip=False, flip_direction=None,
                img_norm_cfg=dict(mean=np.zeros(3), std=np.ones(3), to_rgb=False),
                img_fields=["img"], gt_bboxes=np.array([[2, 3, 20, 25]], np.float32),
                gt_labels=np.array([1]), bbox_fields=["gt_bboxes"],
                gt_semantic_seg=rng.integers(0, SEM_CLASSES, (h, w)).astype(np.uint8),
                seg_fields=["gt_semantic_seg"], filename="a.png", ori_filename="a.png")


def test_semantic_maps_of_the_pipeline_are_mmdetections():
    """HTC's train pipeline tail (Pad(size_divisor=32), SegRescale(1/8), formatting) and the
    batch: the semantic head's targets (the top-left of the 255-padded maps) are
    MMDetection's collated ``gt_semantic_seg`` -- the same pixels OpenCV's nearest resize
    picks -- for images of different sizes."""
    import_mmdet()
    from mmcv.parallel import collate as reference_collate
    from mmdet.datasets.pipelines import Compose as ReferenceCompose

    from detlab.data import collate
    from detlab.data.transforms import Compose

    steps = [dict(type="Pad", size_divisor=32), dict(type="SegRescale", scale_factor=1 / 8),
             dict(type="DefaultFormatBundle"),
             dict(type="Collect", keys=["img", "gt_bboxes", "gt_labels", "gt_semantic_seg"])]
    ours, theirs = Compose(copy.deepcopy(steps)), ReferenceCompose(copy.deepcopy(steps))
    shapes = [(70, 90), (100, 50)]
    batch = collate([ours(_seg_sample(h, w, i)) for i, (h, w) in enumerate(shapes)])
    expected = reference_collate([theirs(_seg_sample(h, w, i))
                                  for i, (h, w) in enumerate(shapes)], samples_per_gpu=2)
    expected = expected["gt_semantic_seg"].data[0][:, 0].long()
    head = MODELS.build(dict(type="FusedSemanticHead", num_ins=1, fusion_level=0, num_convs=0,
                             in_channels=4, conv_out_channels=4, num_classes=SEM_CLASSES))
    targets = head.semantic_targets(batch.targets)
    h, w = expected.shape[-2:]
    assert (h, w) == (batch.images.shape[-2] // STRIDE, batch.images.shape[-1] // STRIDE)
    assert torch.equal(targets[:, :h, :w], expected)
    assert (targets[:, h:] == 255).all() and (targets[:, :, w:] == 255).all()
    logits = torch.randn(2, SEM_CLASSES, h, w)
    torch.testing.assert_close(head.loss(logits, targets),
                               0.2 * F.cross_entropy(logits, expected, ignore_index=255,
                                                     reduction="sum") / expected.numel())
