"""The Ascend (NPU) heads of MMDetection 2.28's zoo: its batched AscendRetinaHead,
AscendSSDHead and AscendMaxIoUAssigner compute what detlab's RetinaHead, SSDHead and
MaxIoUAssigner compute. Both heads built from the zoo configs' ``bbox_head`` and ``train_cfg``
(narrow, for speed) get the same raw maps: the same losses, gradients and detections.
(The two zoo configs' parameters and state_dict keys are checked by ``test_zoo.py``.)"""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from reference.mmdet_reference import import_mmdet, load_mmdet_config, mmdet_config_dir
from test_ssd import _losses_and_gradients

from detlab.config import Config
from detlab.models.assigners import AscendMaxIoUAssigner, MaxIoUAssigner
from detlab.registry import MODELS

CONFIGS = {"AscendRetinaHead": ("retinanet/ascend_retinanet_r18_fpn_1x8_1x_coco.py",
                                dict(in_channels=16, feat_channels=16, stacked_convs=1,
                                     num_classes=5), 128),
           "AscendSSDHead": ("ssd/ascend_ssd300_coco.py",
                             dict(in_channels=(16, 16, 16, 16, 16, 16), num_classes=5), 300)}


def _heads(name):
    """(MMDetection's head, detlab's), built from the zoo config with narrow channels and the
    same weights."""
    import_mmdet()
    from mmcv import ConfigDict
    from mmdet.models import build_head

    path, options, size = CONFIGS[name]
    cfg = Config.fromfile(mmdet_config_dir() / path)
    mm_cfg = load_mmdet_config(path)
    heads = []
    for model, build in ((mm_cfg.model, lambda c: build_head(ConfigDict(c))),
                         (cfg.model, MODELS.build)):
        head = copy.deepcopy(model.bbox_head.to_dict() if hasattr(model.bbox_head, "to_dict")
                             else dict(model.bbox_head))
        head.update(options, train_cfg=copy.deepcopy(dict(model.train_cfg)),
                    test_cfg=copy.deepcopy(dict(model.test_cfg)))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.manual_seed(0)
            heads.append(build(head).eval())
    heads[1].load_state_dict(heads[0].state_dict(), strict=True)
    return heads[0], heads[1], size


def _raw(head, size: int, seed: int):
    gen = torch.Generator().manual_seed(seed)
    sizes = [int(np.ceil(size / s)) for s in (8, 16, 32, 64, 128)] if len(
        head.prior_generator.strides) == 5 else [38, 19, 10, 5, 3, 1]
    feats = [torch.randn(2, 16, n, n, generator=gen) for n in sizes]
    with torch.no_grad():
        return head(feats)


def _metas(size: int) -> list[dict]:
    return [dict(img_shape=(size, size, 3), pad_shape=(size, size, 3),
                 batch_input_shape=(size, size), ori_shape=(size, size, 3),
                 scale_factor=np.ones(4, np.float32), flip=False, img_id=i) for i in range(2)]


def _truth(size: int, counts):
    gen = torch.Generator().manual_seed(7)
    boxes, labels = [], []
    for n in counts:
        wh = torch.rand(n, 2, generator=gen) * size * 0.5 + 10
        xy = torch.rand(n, 2, generator=gen) * (size - wh)
        boxes.append(torch.cat([xy, xy + wh], 1))
        labels.append(torch.randint(0, 5, (n,), generator=gen))
    return boxes, labels


@pytest.mark.parametrize("counts", [(5, 2), (0, 3)], ids=["boxes", "one-empty"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_losses_and_gradients_match_mmdetection(name, counts):
    reference, ours, size = _heads(name)
    raw = _raw(ours, size, seed=1)
    metas = _metas(size)
    boxes, labels = _truth(size, counts)
    expected = _losses_and_gradients(
        raw, lambda maps: reference.loss(*maps, boxes, labels, copy.deepcopy(metas)))
    targets = [dict(boxes=b, labels=lab) for b, lab in zip(boxes, labels, strict=True)]
    actual = _losses_and_gradients(raw, lambda maps: ours.loss(tuple(maps), targets, metas))
    assert set(actual) == set(expected) == {"loss_cls", "loss_bbox"}
    for key, (value, grads) in actual.items():
        assert value > 0
        torch.testing.assert_close(value, expected[key][0], rtol=1e-5, atol=1e-6)
        for a, e in zip(grads, expected[key][1], strict=True):
            torch.testing.assert_close(a, e, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_detections_match_mmdetection(name):
    reference, ours, size = _heads(name)
    raw = _raw(ours, size, seed=2)
    metas = _metas(size)
    with torch.no_grad():
        expected = reference.get_bboxes(*raw, img_metas=copy.deepcopy(metas), rescale=True)
    actual = ours.predict(raw, metas)
    for result, (dets, labels) in zip(actual, expected, strict=True):
        assert len(dets) > 10
        np.testing.assert_allclose(result.boxes.numpy(), dets[:, :4].numpy(), rtol=1e-4,
                                   atol=1e-3)
        np.testing.assert_allclose(result.scores.numpy(), dets[:, 4].numpy(), rtol=1e-4,
                                   atol=1e-5)
        assert torch.equal(result.labels, labels)


def test_ascend_assigner_is_max_iou():
    assigner = MODELS.build(dict(type="AscendMaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4,
                                 min_pos_iou=0, ignore_iof_thr=-1))
    assert isinstance(assigner, AscendMaxIoUAssigner) and isinstance(assigner, MaxIoUAssigner)
