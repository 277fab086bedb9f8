"""RPN against MMDetection 2.28: with MMDetection's weights loaded strictly into a small RPN built
from the same zoo config, the same head outputs, losses (the RandomSampler's draws made the same
by seeding torch's generator before each), proposals at test time (rescaled) and during training
(``rpn_proposal``, input pixels); an empty ground truth; the head's softmax and ``num_convs``
variants; what the two-stage detectors rely on (the interface of ``loss_and_proposals`` and
``proposals``).

(The zoo's RPN configs' parameter counts and state_dict keys are checked by ``test_zoo.py``.)
"""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from reference.mmdet_reference import import_mmdet, load_mmdet_config, mmdet_config_dir
from test_fcos import HEIGHT, WIDTH, metas_and_targets
from torch import nn

from detlab.config import Config, ConfigError
from detlab.models import build_model
from detlab.models.heads import RPNHead
from detlab.structures import Batch

REPO = Path(__file__).resolve().parents[2]
RPN = "rpn/rpn_r50_fpn_1x_coco.py"
SMALL = {"model.backbone.depth": 18, "model.backbone.init_cfg": None,
         "model.neck.in_channels": [64, 128, 256, 512], "model.neck.out_channels": 32,
         "model.rpn_head.in_channels": 32, "model.rpn_head.feat_channels": 32}
# Faster R-CNN's train_cfg.rpn_proposal
PROPOSAL_CFG = dict(nms_pre=2000, max_per_img=1000, nms=dict(type="nms", iou_threshold=0.7),
                    min_bbox_size=0)


def test_detlab_config_is_mmdetections():
    mine = Config.fromfile(REPO / "configs" / RPN)
    theirs = Config.fromfile(mmdet_config_dir() / RPN)
    assert mine.to_dict() == theirs.to_dict()


def randomize(model: nn.Module, images: torch.Tensor) -> None:
    """Varied BatchNorm statistics and affines, and an objectness classifier whose logits
    spread (std 2 around -1) over ``images``' anchors, so that proposals have distinct scores."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                n = module.num_features
                module.weight.copy_(torch.rand(n, generator=gen) * 0.5 + 0.75)
                module.bias.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                module.running_mean.copy_(torch.rand(n, generator=gen) * 0.2 - 0.1)
                module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
        head = model.rpn_head
        head.rpn_cls.bias.zero_()
        logits = torch.cat([level.flatten() for level in
                            model.eval().rpn_head(model.extract_feat(images))[0]])
        head.rpn_cls.weight.mul_(2.0 / logits.std())
        head.rpn_cls.bias.fill_(-1.0)
        head.rpn_reg.weight.mul_(20.0)  # deltas of a few tenths: boxes of varied shapes


@pytest.fixture(scope="module")
def rpn_pair():
    """(MMDetection's small RPN, detlab's with its weights loaded strictly), in eval mode."""
    import_mmdet()
    from mmdet.models import build_detector

    mm_cfg = load_mmdet_config(RPN)
    mm_cfg.merge_from_dict(SMALL)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = build_detector(mm_cfg.model)
    randomize(reference, torch.randn(2, 3, HEIGHT, WIDTH,
                                     generator=torch.Generator().manual_seed(3)))
    cfg = Config.fromfile(REPO / "configs" / RPN)
    cfg.merge_from_dict(SMALL)
    ours = build_model(cfg.model)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


def _images(seed: int) -> torch.Tensor:
    return torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(seed))


def test_head_outputs_match_mmdetection(rpn_pair):
    reference, ours = rpn_pair
    images = _images(1)
    with torch.no_grad():
        expected = reference.rpn_head(reference.extract_feat(images))
        actual = ours(images)
    for ours_levels, reference_levels in zip(actual, expected, strict=True):
        assert len(ours_levels) == len(reference_levels) == 5
        for a, e in zip(ours_levels, reference_levels, strict=True):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def _losses(reference, ours, empty: bool, seed: int = 11):
    images = _images(4)
    metas, targets = metas_and_targets(empty=empty)
    torch.manual_seed(seed)  # the RandomSampler's draws
    expected = reference.train().forward_train(images, copy.deepcopy(metas),
                                               [t["boxes"] for t in targets])
    reference.eval()
    expected = {k: sum(v) for k, v in expected.items()}
    torch.manual_seed(seed)
    actual = ours.train().loss(Batch(images, targets, metas))
    ours.eval()
    assert set(actual) == set(expected) == {"loss_rpn_cls", "loss_rpn_bbox"}
    for key in expected:
        torch.testing.assert_close(actual[key], expected[key], rtol=1e-5, atol=1e-6,
                                   msg=lambda m, key=key: f"{key}: {m}")
    return actual


def test_losses_match_mmdetection(rpn_pair):
    losses = _losses(*rpn_pair, empty=False)
    assert all(v > 0 for v in losses.values())


def test_empty_ground_truth_losses_match_mmdetection(rpn_pair):
    losses = _losses(*rpn_pair, empty=True)
    assert losses["loss_rpn_cls"] > 0 and losses["loss_rpn_bbox"] == 0


def _compare_proposals(actual, expected):
    assert all(len(e) > 100 for e in expected)  # enough to mean something
    for a, e in zip(actual, expected, strict=True):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-4)


def test_proposals_match_mmdetection(rpn_pair):
    """``predict``: test_cfg.rpn, rescaled to the original image, as MMDetection's
    ``simple_test`` (NMS through the mmcv._ext stand-in, i.e. torchvision's)."""
    reference, ours = rpn_pair
    images = _images(2)
    metas, targets = metas_and_targets()
    with torch.no_grad():
        expected = reference.simple_test(images, copy.deepcopy(metas), rescale=True)
    results = ours.predict(Batch(images, targets, metas))
    assert all((r.labels == 0).all() for r in results)
    _compare_proposals([np.c_[r.boxes.numpy(), r.scores.numpy()] for r in results], expected)


def test_training_proposals_match_mmdetection(rpn_pair):
    """What a two-stage detector reads: losses and proposals of one pass under
    ``rpn_proposal``, in input pixels, as MMDetection's ``forward_train(proposal_cfg=...)``."""
    import mmcv

    reference, ours = rpn_pair
    images = _images(5)
    metas, targets = metas_and_targets(seed=6)
    torch.manual_seed(3)
    feats = reference.extract_feat(images)
    expected_losses, expected = reference.rpn_head.forward_train(
        feats, copy.deepcopy(metas), [t["boxes"] for t in targets],
        proposal_cfg=mmcv.ConfigDict(PROPOSAL_CFG))
    torch.manual_seed(3)
    losses, proposals = ours.rpn_head.loss_and_proposals(
        ours.extract_feat(images), Batch(images, targets, metas), metas, PROPOSAL_CFG)
    for key in expected_losses:
        torch.testing.assert_close(losses[key], sum(expected_losses[key]), rtol=1e-5,
                                   atol=1e-6)
    assert not any(p.requires_grad for p in proposals)
    _compare_proposals([p.numpy() for p in proposals], [e.detach().numpy() for e in expected])
    # proposals(feats, metas, cfg): the same from a forward pass of its own
    again = ours.rpn_head.proposals(ours.extract_feat(images), metas, PROPOSAL_CFG)
    for a, e in zip(again, proposals, strict=True):
        torch.testing.assert_close(a, e)


def test_flip_test_matches_mmdetection(rpn_pair):
    """Test-time augmentation (the image and its horizontal flip): MMDetection's ``aug_test``
    (each augmentation's proposals mapped back, joined, NMS, the best max_per_img)."""
    reference, ours = rpn_pair
    images = _images(7)
    metas, targets = metas_and_targets()
    flipped = [dict(m, flip=True, flip_direction="horizontal") for m in metas]
    flipped_images = images.flip(-1)  # (both images fill the batch's width: no padding moves)
    metas = [dict(m, img_shape=(HEIGHT, WIDTH, 3), pad_shape=(HEIGHT, WIDTH, 3)) for m in metas]
    flipped = [dict(m, img_shape=(HEIGHT, WIDTH, 3), pad_shape=(HEIGHT, WIDTH, 3))
               for m in flipped]
    with torch.no_grad():
        expected = reference.aug_test([images, flipped_images],
                                      [copy.deepcopy(metas), copy.deepcopy(flipped)],
                                      rescale=True)
    results = ours.predict_aug([Batch(images, targets, metas),
                                Batch(flipped_images, targets, flipped)])
    _compare_proposals([np.c_[r.boxes.numpy(), r.scores.numpy()] for r in results], expected)


# ---- the head alone: softmax objectness, several convs, min_bbox_size --------------------------

STRIDES = [8, 16]
HEAD_ARGS = dict(in_channels=8, feat_channels=8,
                 anchor_generator=dict(type="AnchorGenerator", scales=[4], ratios=[0.5, 1.0, 2.0],
                                       strides=STRIDES),
                 loss_bbox=dict(type="L1Loss", loss_weight=1.0))
TRAIN_CFG = dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.7, neg_iou_thr=0.3,
                               min_pos_iou=0.3, ignore_iof_thr=-1),
                 sampler=dict(type="RandomSampler", num=64, pos_fraction=0.5, neg_pos_ub=-1,
                              add_gt_as_proposals=False),
                 allowed_border=0, pos_weight=-1, debug=False)


@pytest.mark.parametrize("options", [
    dict(loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)),
    dict(num_convs=2),
], ids=["softmax", "two-convs"])
def test_head_variants_match_mmdetection(options):
    import_mmdet()
    import mmcv
    from mmdet.models.dense_heads import RPNHead as Reference

    test_cfg = dict(nms_pre=60, max_per_img=40, nms=dict(type="nms", iou_threshold=0.6),
                    min_bbox_size=4)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = Reference(**copy.deepcopy(HEAD_ARGS), **copy.deepcopy(options),
                              train_cfg=mmcv.ConfigDict(TRAIN_CFG),
                              test_cfg=mmcv.ConfigDict(test_cfg))
    ours = RPNHead(**HEAD_ARGS, **options, train_cfg=TRAIN_CFG, test_cfg=test_cfg)
    ours.load_state_dict(reference.state_dict(), strict=True)
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel()))
                    * 0.3)
        ours.load_state_dict(reference.state_dict(), strict=True)
    gen = torch.Generator().manual_seed(8)
    feats = [torch.randn(2, 8, 12, 16, generator=gen), torch.randn(2, 8, 6, 8, generator=gen)]
    metas, targets = metas_and_targets(seed=9)
    metas = [dict(m, img_shape=(90, 120, 3), pad_shape=(96, 128, 3)) for m in metas]
    targets = [dict(t, boxes=(t["boxes"] * 0.5).clamp(max=88)) for t in targets]
    torch.manual_seed(1)
    expected_losses, expected = reference.forward_train(
        feats, copy.deepcopy(metas), [t["boxes"] for t in targets],
        proposal_cfg=mmcv.ConfigDict(test_cfg))
    torch.manual_seed(1)
    losses, proposals = ours.loss_and_proposals(feats, targets, metas, test_cfg)
    for key in expected_losses:
        torch.testing.assert_close(losses[key], sum(expected_losses[key]), rtol=1e-5,
                                   atol=1e-6)
    for a, e in zip(proposals, expected, strict=True):
        assert 0 < len(e) <= 40
        torch.testing.assert_close(a, e.detach(), rtol=1e-5, atol=1e-4)
        widths, heights = (a[:, 2:4] - a[:, :2]).unbind(1)
        assert (widths > 4).all() and (heights > 4).all()


def test_labels_are_not_read():
    """Every box is an object: any labels (or none) give the same targets."""
    torch.manual_seed(0)
    head = RPNHead(**HEAD_ARGS, train_cfg=TRAIN_CFG)
    feats = [torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4)]
    meta = dict(img_shape=(64, 64, 3), pad_shape=(64, 64, 3))
    boxes = torch.tensor([[4.0, 6.0, 40.0, 36.0], [30.0, 30.0, 60.0, 50.0]])
    raw = head(feats)
    results = []
    for target in (dict(boxes=boxes), dict(boxes=boxes, labels=torch.tensor([7, 79]))):
        torch.manual_seed(2)
        results.append(head.loss(raw, [target], [meta]))
    for key in results[0]:
        torch.testing.assert_close(results[0][key], results[1][key])


def test_configuration_errors():
    with pytest.raises(ConfigError, match="num_classes must be 1"):
        RPNHead(**HEAD_ARGS, num_classes=3)
    with pytest.raises(ConfigError, match="num_convs"):
        RPNHead(**HEAD_ARGS, num_convs=0)
    cfg = Config.fromfile(REPO / "configs" / RPN)
    model = cfg.to_dict()["model"]
    model["test_cfg"] = model["test_cfg"]["rpn"]  # flat: the stage's key is missing
    with pytest.raises(ConfigError, match="test_cfg.rpn"):
        build_model(model)
    cfg = Config.fromfile(REPO / "configs" / RPN)
    cfg.merge_from_dict({"model.rpn_head.in_channels": 64})
    with pytest.raises(ConfigError, match=r"model.rpn_head.in_channels=64 does not match"):
        build_model(cfg.model)
    head = RPNHead(**HEAD_ARGS)
    with pytest.raises(ConfigError, match="test_cfg"):
        head.proposals([torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4)],
                       [dict(img_shape=(64, 64, 3))])
    with pytest.raises(ConfigError, match="nms_pre"):
        head.proposals([torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4)],
                       [dict(img_shape=(64, 64, 3))], dict(nms_pr=10))


# ---- training and testing on the shapes data ---------------------------------------------------

TINY_RPN = dict(
    _delete_=True, type="RPN",
    backbone=dict(type="ResNet", depth=18, num_stages=3, strides=(1, 2, 2), dilations=(1, 1, 1),
                  out_indices=(1, 2), frozen_stages=-1,
                  norm_eval=False, init_cfg=None),
    neck=dict(type="FPN", in_channels=[128, 256], out_channels=16, num_outs=2),
    rpn_head=dict(type="RPNHead", in_channels=16, feat_channels=16,
                  anchor_generator=dict(type="AnchorGenerator", scales=[4], ratios=[0.5, 1.0, 2.0],
                                        strides=[8, 16]),
                  loss_bbox=dict(type="L1Loss", loss_weight=1.0)),
    train_cfg=dict(rpn=dict(TRAIN_CFG)),
    test_cfg=dict(rpn=dict(nms_pre=200, max_per_img=100, nms=dict(type="nms", iou_threshold=0.7),
                           min_bbox_size=0)))


def test_trains_evaluates_and_saves_proposals_on_shapes(shapes_root, tmp_path):
    """An RPN through detlab.train with ``evaluation=dict(metric='proposal_fast')``, then
    ``detlab.test`` with ``--eval proposal_fast proposal --out``: a proposal file of one
    ``(n, 5)`` array per image, read back as proposals."""
    from conftest import tiny_config

    from detlab import safe_pickle
    from detlab.engine.logging import read_json_log
    from detlab.engine.setup import train
    from detlab.engine.tester import load_results, test

    options = {"model": TINY_RPN, "evaluation.metric": "proposal_fast"}
    run = train(tiny_config(shapes_root, epochs=1, **options), work_dir=str(tmp_path),
                seed=0, progress=False)
    rows = read_json_log(run.json_log)
    steps = [r for r in rows if r["mode"] == "train"]
    assert len(steps) == 2 and all(np.isfinite(r["loss_rpn_cls"]) for r in steps)
    evaluated = [r for r in rows if r["mode"] == "val"]
    assert evaluated and 0 <= evaluated[-1]["AR@100"] <= 1
    out = tmp_path / "proposals.pkl"
    output = test(tiny_config(shapes_root, **options), run.checkpoint,
                  eval=["proposal_fast", "proposal"], out=str(out), progress=False)
    for key in ("AR@100", "AR@300", "AR@1000", "proposal_AR@100", "proposal_AR@1000"):
        assert 0 <= output[key] <= 1, key
    saved = safe_pickle.load(str(out))
    assert len(saved) == 4 and all(a.ndim == 2 and a.shape[1] == 5 for a in saved)
    results = output["results"]
    assert all((r.labels == 0).all() for r in results)
    np.testing.assert_allclose(saved[0][:, 4], results[0].scores.numpy())
    again = load_results(str(out))
    torch.testing.assert_close(again[1].boxes, results[1].boxes)


TINY_FAST_RCNN = dict(
    _delete_=True, type="FastRCNN", backbone=TINY_RPN["backbone"], neck=TINY_RPN["neck"],
    roi_head=dict(
        type="StandardRoIHead",
        bbox_roi_extractor=dict(type="SingleRoIExtractor", out_channels=16, featmap_strides=[8, 16],
                                roi_layer=dict(type="RoIAlign", output_size=7, sampling_ratio=0)),
        bbox_head=dict(type="Shared2FCBBoxHead", in_channels=16, fc_out_channels=32,
                       roi_feat_size=7, num_classes=3,
                       bbox_coder=dict(type="DeltaXYWHBBoxCoder", target_means=[0.0] * 4,
                                       target_stds=[0.1, 0.1, 0.2, 0.2]),
                       loss_cls=dict(type="CrossEntropyLoss", use_sigmoid=False),
                       loss_bbox=dict(type="L1Loss", loss_weight=1.0))),
    train_cfg=dict(rcnn=dict(
        assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5,
                      match_low_quality=False, ignore_iof_thr=-1),
        sampler=dict(type="RandomSampler", num=64, pos_fraction=0.25, neg_pos_ub=-1,
                     add_gt_as_proposals=True),
        pos_weight=-1, debug=False)),
    test_cfg=dict(rcnn=dict(score_thr=0.05, nms=dict(type="nms", iou_threshold=0.5),
                            max_per_img=100)))


def _with_proposals(pipeline: list, keys: list[str]) -> list:
    """A quickstart pipeline that loads proposals (``LoadProposals`` after the image) and
    collects them."""
    out = [dict(step) for step in pipeline]
    out.insert(1, dict(type="LoadProposals", num_max_proposals=100))
    for i, step in enumerate(out):
        if step["type"] == "Collect":
            out[i] = dict(step, keys=keys)
        if step["type"] == "MultiScaleFlipAug":
            inner = [dict(s) for s in step["transforms"]]
            inner.insert(-1, dict(type="ToTensor", keys=["proposals"]))
            inner[-1] = dict(inner[-1], keys=keys)
            out[i] = dict(step, transforms=inner)
    return out


def test_saved_proposals_train_and_test_a_fast_rcnn(shapes_root, tmp_path):
    """An RPN's proposal files (``detlab test --out`` on the training and validation images)
    as a Fast R-CNN's ``proposal_file``: read by the dataset, loaded by ``LoadProposals``,
    carried by the batches, trained on and tested with."""
    from conftest import tiny_config

    from detlab.engine.setup import train
    from detlab.engine.tester import test

    rpn = train(tiny_config(shapes_root, epochs=1, model=TINY_RPN), work_dir=str(tmp_path / "rpn"),
                seed=0, progress=False, validate=False)
    files = {}
    for split in ("train", "val"):
        files[split] = str(tmp_path / f"{split}_proposals.pkl")
        test(tiny_config(shapes_root, model=TINY_RPN), rpn.checkpoint, eval=[],
             out=files[split], progress=False, cfg_options={
                 "data.test.ann_file": f"annotations/instances_{split}.json",
                 "data.test.img_prefix": f"{split}/"})
    cfg = tiny_config(shapes_root, epochs=1, model=TINY_FAST_RCNN)
    train_keys, test_keys = ["img", "proposals", "gt_bboxes", "gt_labels"], ["img", "proposals"]
    cfg.merge_from_dict({
        "data.train.pipeline": _with_proposals(cfg.data.train.pipeline, train_keys),
        "data.train.proposal_file": files["train"],
        **{f"data.{split}.{key}": value for split in ("val", "test") for key, value in (
            ("pipeline", _with_proposals(cfg.data.test.pipeline, test_keys)),
            ("proposal_file", files["val"]))}})
    run = train(cfg, work_dir=str(tmp_path / "fast"), seed=0, progress=False, validate=False)
    output = test(cfg, run.checkpoint, eval=["bbox"], progress=False)
    assert 0 <= output["bbox_mAP"] <= 1 and len(output["results"]) == 4


def test_proposal_file_follows_the_kept_images(shapes_root, tmp_path):
    """``proposal_file`` holds one array per image of the annotation file; the images the
    training filters drop take their proposals with them; a wrong count is named."""
    import pickle

    from detlab.data import build_dataset

    ann = f"{shapes_root}/annotations/instances_train.json"
    every = build_dataset(dict(type="CocoDataset", ann_file=ann, pipeline=[], test_mode=True,
                               img_prefix=f"{shapes_root}/train/"))
    path = tmp_path / "proposals.pkl"
    # image i's proposal: a box at (i, i)
    path.write_bytes(pickle.dumps([np.array([[i, i, i + 9, i + 9, 0.5]], np.float32)
                                   for i in range(len(every))]))
    kept = build_dataset(dict(type="CocoDataset", ann_file=ann, pipeline=[], classes=("circle",),
                              img_prefix=f"{shapes_root}/train/", proposal_file=str(path)))
    assert 0 < len(kept) < len(every)  # images without a circle are dropped
    original = [info["id"] for info in every.data_infos]
    for info, proposals in zip(kept.data_infos, kept.proposals, strict=True):
        assert proposals[0, 0] == original.index(info["id"])
    assert kept.prepare_train_img(0)["proposals"] is kept.proposals[0]
    path.write_bytes(pickle.dumps([np.zeros((1, 5), np.float32)]))
    with pytest.raises(ValueError, match=f"one array of proposals per image.*{len(every)}"):
        build_dataset(dict(type="CocoDataset", ann_file=ann, pipeline=[], test_mode=True,
                           img_prefix=f"{shapes_root}/train/", proposal_file=str(path)))
