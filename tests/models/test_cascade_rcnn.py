"""Cascade R-CNN and Cascade Mask R-CNN against MMDetection 2.28: a small model of each shipped
config (ResNet-18, 16 channels, three stages) with MMDetection's weights loaded strictly gives
the same per-stage losses (``s0.loss_cls`` ... with and without ground truth: the refined
proposals of each stage feed the next) and the same detections (the stages' class scores
averaged, the RoIs regressed stage by stage) and masks (every stage's mask probabilities
averaged); at the RoI head alone, class-specific regression (``regress_by_class`` picking
each RoI's class deltas), OHEM samplers and the Seesaw box heads too; the shipped configs read
as MMDetection's; configuration errors name their key.

Sampling is random: both sides draw their anchors and RoIs with ``torch.randperm`` in the same
order (stage after stage, image after image), so seeding ``torch`` identically before each
side's loss gives both the same samples. The ground truth, metas and MMDetection's loss call
are test_mask_rcnn.py's. (The zoo's Cascade configs' parameter counts and state_dict keys are
checked by ``test_zoo.py``.)
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from reference.mmdet_reference import import_mmdet, load_mmdet_config, mmdet_config_dir
from test_mask_rcnn import CLASSES, HEIGHT, WIDTH, _metas, _mmdet_losses, _targets

from detlab.config import Config, ConfigError
from detlab.models import build_model
from detlab.registry import MODELS
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
CASCADE = "cascade_rcnn/cascade_rcnn_r50_fpn_1x_coco.py"
CASCADE_MASK = "cascade_rcnn/cascade_mask_rcnn_r50_fpn_1x_coco.py"
STAGES = 3


def _small(mask: bool) -> dict:
    """Overrides making a zoo Cascade (Mask) R-CNN small (list entries by index)."""
    options = {"model.backbone.depth": 18, "model.backbone.init_cfg": None,
               "model.neck.in_channels": [64, 128, 256, 512], "model.neck.out_channels": 16,
               "model.rpn_head.in_channels": 16, "model.rpn_head.feat_channels": 16,
               "model.roi_head.bbox_roi_extractor.out_channels": 16,
               "model.train_cfg.rpn_proposal.max_per_img": 300,
               "model.test_cfg.rpn.max_per_img": 300}
    for stage in range(STAGES):
        head = f"model.roi_head.bbox_head.{stage}"
        options.update({f"{head}.in_channels": 16, f"{head}.fc_out_channels": 32,
                        f"{head}.num_classes": CLASSES,
                        f"model.train_cfg.rcnn.{stage}.sampler.num": 64})
    if mask:
        options.update({"model.roi_head.mask_roi_extractor.out_channels": 16,
                        "model.roi_head.mask_head.in_channels": 16,
                        "model.roi_head.mask_head.conv_out_channels": 16,
                        "model.roi_head.mask_head.num_classes": CLASSES,
                        "model.roi_head.mask_head.num_convs": 2})
    return options


PAIRS = {"cascade": (CASCADE, _small(False)), "cascade-mask": (CASCADE_MASK, _small(True))}


def build_cascade_pair(config: str, options: dict):
    """(MMDetection's small model of ``config``, detlab's with its weights loaded strictly):
    the heads' weights drawn at random (spread class and objectness scores), eval mode."""
    import_mmdet()
    from mmdet.models import build_detector

    reference_cfg = load_mmdet_config(config)
    reference_cfg.merge_from_dict(options)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_detector(reference_cfg.model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            if "backbone" not in name:
                scale = 0.3 if "fc_cls" in name or "rpn_cls" in name else \
                    0.05 if "fc_reg" in name else 0.1
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    cfg = Config.fromfile(REPO / "configs" / config)
    cfg.merge_from_dict(options)
    ours = build_model(cfg.model)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


@pytest.fixture(scope="module", params=list(PAIRS), ids=list(PAIRS))
def cascade_pair(request):
    return build_cascade_pair(*PAIRS[request.param])


def test_detlab_configs_are_mmdetections():
    for config in (CASCADE, CASCADE_MASK, "_base_/models/cascade_rcnn_r50_fpn.py",
                   "_base_/models/cascade_mask_rcnn_r50_fpn.py"):
        mine = Config.fromfile(REPO / "configs" / config)
        theirs = Config.fromfile(mmdet_config_dir() / config)
        assert mine.to_dict() == theirs.to_dict(), config


def _expected_keys(with_mask: bool) -> set[str]:
    names = ["loss_cls", "acc", "loss_bbox"] + (["loss_mask"] if with_mask else [])
    return {"loss_rpn_cls", "loss_rpn_bbox"} | {f"s{i}.{n}" for i in range(STAGES)
                                                for n in names}


@pytest.mark.parametrize("empty", [False, True], ids=["boxes", "no-boxes"])
def test_losses_match_mmdetection(cascade_pair, empty):
    reference, ours = cascade_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(4))
    metas, targets = _metas(), _targets(empty)
    torch.manual_seed(11)
    expected = _mmdet_losses(reference, images, metas, targets)
    torch.manual_seed(11)
    actual = ours.train().loss(Batch(images, targets, metas))
    ours.eval()
    assert set(actual) == set(expected) == _expected_keys(ours.with_mask)
    for key in expected:
        torch.testing.assert_close(actual[key].reshape(-1), expected[key].reshape(-1),
                                   rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
    for stage in range(STAGES):
        assert (actual[f"s{stage}.loss_bbox"] > 0) != empty
        assert actual[f"s{stage}.loss_cls"] > 0
    sum(v for k, v in actual.items() if "loss" in k).backward()
    assert all(p.grad is not None for n, p in ours.named_parameters()
               if p.requires_grad and "roi_head" in n and not (empty and "mask" in n))
    ours.zero_grad()


@pytest.mark.parametrize("rescale", [True, False])
def test_detections_and_masks_match_mmdetection(cascade_pair, rescale):
    reference, ours = cascade_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(2))
    metas = _metas()
    with torch.no_grad():
        expected = reference.simple_test(images, copy.deepcopy(metas), rescale=rescale)
    actual = ours.predict(Batch(images, [{}, {}], metas), rescale=rescale)
    for ours_image, reference_image, meta in zip(actual, expected, metas, strict=True):
        boxes, masks = reference_image if ours.with_mask else (reference_image, None)
        assert sum(len(c) for c in boxes) > 20
        for label, (a, e) in enumerate(zip(ours_image.to_mmdet(CLASSES), boxes, strict=True)):
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-3)
            if masks is None:
                continue
            mine = ours_image.masks[ours_image.labels == label].numpy()
            assert len(mine) == len(masks[label])
            for m, r in zip(mine, masks[label], strict=True):
                np.testing.assert_array_equal(m, r)
        if masks is not None:
            h, w = meta["ori_shape"][:2]
            size = (h, w) if rescale else (2 * h, 2 * w)
            assert ours_image.masks.shape == (len(ours_image), *size)
        else:
            assert ours_image.masks is None


def test_flipped_input_gives_the_mirrored_masks():
    """A test-time flip: the stages' averaged masks of a flipped input, mirrored back, are
    those of the input taken as unflipped (test_mask_rcnn.py's check, on Cascade Mask R-CNN)."""
    from test_mask_rcnn import test_flipped_input_gives_the_mirrored_masks as check

    cfg = Config.fromfile(REPO / "configs" / CASCADE_MASK)
    cfg.merge_from_dict(_small(True))
    torch.manual_seed(0)
    model = build_model(cfg.model)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # spread scores: enough detections to compare
        for name, param in model.named_parameters():
            if "fc_cls" in name or "rpn_cls" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.3)
    check((None, model.eval()), "horizontal")


def test_no_proposals_give_no_detections(cascade_pair):
    _, ours = cascade_pair
    feats = ours.extract_feat(torch.zeros(2, 3, HEIGHT, WIDTH))
    results = ours.roi_head.predict(feats, [torch.zeros(0, 5), torch.zeros(0, 5)], _metas())
    assert all(len(r) == 0 for r in results)
    if ours.with_mask:
        assert all(r.masks.shape == (0, HEIGHT // 2, WIDTH // 2) for r in results)


def _roi_head_cfg(**changes):
    cfg = Config.fromfile(REPO / "configs" / CASCADE)
    head = dict(cfg.model.roi_head.to_dict(), train_cfg=cfg.model.train_cfg.rcnn.to_list()
                if hasattr(cfg.model.train_cfg.rcnn, "to_list")
                else [dict(c) for c in cfg.model.train_cfg.rcnn],
                test_cfg=dict(cfg.model.test_cfg.rcnn))
    head.update(changes)
    return head


@pytest.mark.parametrize(("changes", "message"), [
    (dict(train_cfg=dict(assigner=dict(type="MaxIoUAssigner"))), "list of 3 dicts"),
    (dict(num_stages=2), "stage_loss_weights"),
    (dict(stage_loss_weights=[1, 0.5]), "stage_loss_weights"),
    (dict(shared_head=dict(type="ResLayer", depth=50)), "shared_head"),
    (dict(bbox_head=[dict(type="Shared2FCBBoxHead")] * 2), "bbox_head has 2 entries"),
])
def test_configuration_errors_name_the_key(changes, message):
    with pytest.raises(ConfigError, match=message):
        MODELS.build(_roi_head_cfg(**changes))


def test_train_cfg_with_fewer_stages_is_an_error():
    head = _roi_head_cfg()
    head["train_cfg"] = head["train_cfg"][:2]
    with pytest.raises(ConfigError, match=r"train_cfg.rcnn has 2 entries"):
        MODELS.build(head)


# ---- the RoI head alone, on test_faster_rcnn.py's features, proposals and ground truth -------

def build_cascade_roi_pair(bbox_head: dict | None = None, sampler: dict | None = None):
    """(MMDetection's CascadeRoIHead of the shipped Cascade R-CNN, small, detlab's with its
    weights loaded strictly); ``bbox_head`` / ``sampler`` update every stage's."""
    import_mmdet()
    from mmcv import ConfigDict
    from mmdet.models.builder import build_head
    from test_faster_rcnn import CHANNELS, NUM_CLASSES, _plain

    model = load_mmdet_config(CASCADE).model
    head = _plain(model.roi_head.to_dict())
    head["bbox_roi_extractor"]["out_channels"] = CHANNELS
    for stage in head["bbox_head"]:
        stage.update(in_channels=CHANNELS, fc_out_channels=32, num_classes=NUM_CLASSES,
                     **(bbox_head or {}))
    train = [_plain(dict(c)) for c in model.train_cfg.rcnn]
    for cfg in train:
        cfg["sampler"] = dict(cfg["sampler"], num=64, **(sampler or {}))
    test = _plain(dict(model.test_cfg.rcnn))
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_head(ConfigDict(dict(head, train_cfg=train, test_cfg=test)))
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in reference.named_parameters():
            scale = 0.3 if "fc_cls" in name else 0.05 if "fc_reg" in name else 0.1
            param.copy_(torch.randn(param.shape, generator=gen) * scale)
    ours = MODELS.build(dict(head, train_cfg=copy.deepcopy(train), test_cfg=copy.deepcopy(test)))
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


def test_ohem_sampler_ranks_with_its_own_stage():
    """OHEM in every stage: each stage's sampler scores the RoIs with that stage's box branch
    (MMDetection's context.current_stage), so the same hardest RoIs and the same losses."""
    from test_faster_rcnn import compare_roi_losses

    reference, ours = build_cascade_roi_pair(sampler=dict(type="OHEMSampler"))
    assert [s.context.bbox_head for s in ours.bbox_sampler] == list(ours.bbox_head)
    keys = tuple(f"s{i}.{n}" for i in range(STAGES) for n in ("loss_cls", "acc", "loss_bbox"))
    losses = compare_roi_losses(reference, ours, keys=keys)
    assert all(losses[f"s{i}.loss_bbox"] > 0 for i in range(STAGES))


def test_seesaw_stages_refine_with_the_losss_activation():
    """The LVIS Seesaw Cascade configs' box heads (NormedLinear, SeesawLoss): the RoIs are
    refined by the classes of the loss's own activation, in training and at test time."""
    from test_faster_rcnn import NUM_CLASSES, compare_roi_detections, compare_roi_losses

    reference, ours = build_cascade_roi_pair(bbox_head=dict(
        cls_predictor_cfg=dict(type="NormedLinear", tempearture=20),
        loss_cls=dict(type="SeesawLoss", p=0.8, q=2.0, num_classes=NUM_CLASSES,
                      loss_weight=1.0)))
    names = ("loss_cls_objectness", "loss_cls_classes", "acc_objectness", "acc_classes",
             "loss_bbox")
    compare_roi_losses(reference, ours, keys=tuple(f"s{i}.{n}" for i in range(STAGES)
                                                   for n in names))
    compare_roi_detections(reference, ours)


def test_class_specific_regression_refines_by_each_rois_class():
    """reg_class_agnostic=False: each stage moves a RoI by the deltas of its class (the
    ground truth's for positives, the predicted one otherwise) -- MMDetection's losses and
    detections."""
    from test_faster_rcnn import compare_roi_detections, compare_roi_losses

    reference, ours = build_cascade_roi_pair(bbox_head=dict(reg_class_agnostic=False))
    assert ours.bbox_head[0].fc_reg.out_features == 4 * ours.bbox_head[0].num_classes
    keys = tuple(f"s{i}.{n}" for i in range(STAGES) for n in ("loss_cls", "acc", "loss_bbox"))
    compare_roi_losses(reference, ours, keys=keys)
    compare_roi_losses(reference, ours, empty=True, keys=keys)
    compare_roi_detections(reference, ours)


def test_init_weights_reaches_every_stage():
    """init_weights re-initializes the heads inside the stage lists (fc_cls std 0.01, fc_reg
    std 0.001, the mask logits He-initialized with zero bias)."""
    cfg = Config.fromfile(REPO / "configs" / CASCADE_MASK)
    cfg.merge_from_dict(_small(True))
    head = build_model(cfg.model).roi_head
    with torch.no_grad():
        for param in head.parameters():
            param.fill_(1.0)
    head.init_weights()
    for stage in range(STAGES):
        assert head.bbox_head[stage].fc_cls.weight.abs().mean() < 0.05
        assert head.bbox_head[stage].fc_reg.weight.abs().max() < 0.02
        assert (head.mask_head[stage].conv_logits.bias == 0).all()
