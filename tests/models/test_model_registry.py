"""Registry-wide: every model component detlab registers builds from a small config, runs, and
(for modules with parameters) passes gradients to every trainable parameter."""

import numpy as np
import pytest
import torch
from torch import nn

from detlab.registry import MODELS
from detlab.structures import Batch

TRAIN_CFG = dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4,
                               min_pos_iou=0, ignore_iof_thr=-1),
                 allowed_border=-1, pos_weight=-1, debug=False)
TEST_CFG = dict(nms_pre=100, min_bbox_size=0, score_thr=0.05,
                nms=dict(type="nms", iou_threshold=0.5), max_per_img=10)
HEAD = dict(type="RetinaHead", num_classes=2, in_channels=8, feat_channels=8, stacked_convs=1,
            anchor_generator=dict(type="AnchorGenerator", octave_base_scale=4,
                                  scales_per_octave=1, ratios=[1.0], strides=[8, 16]),
            train_cfg=TRAIN_CFG, test_cfg=TEST_CFG)
DETECTOR = dict(backbone=dict(type="ResNet", depth=18, num_stages=3, strides=(1, 2, 2),
                              dilations=(1, 1, 1), out_indices=(1, 2), frozen_stages=-1),
                neck=dict(type="FPN", in_channels=[128, 256], out_channels=8, num_outs=2),
                bbox_head={k: v for k, v in HEAD.items() if not k.endswith("_cfg")},
                train_cfg=TRAIN_CFG, test_cfg=TEST_CFG)


def _batch(size: int = 32) -> Batch:
    meta = dict(img_shape=(size, size, 3), pad_shape=(size, size, 3), ori_shape=(size, size, 3),
                scale_factor=np.ones(4, np.float32), flip=False, flip_direction=None)
    target = dict(boxes=torch.tensor([[2.0, 3.0, 20.0, 22.0]]), labels=torch.tensor([1]))
    return Batch(torch.randn(2, 3, size, size), [target, target], [meta, meta])


def _boxes(n: int) -> torch.Tensor:
    xy = torch.rand(n, 2) * 20
    return torch.cat([xy, xy + torch.rand(n, 2) * 10 + 1], dim=1)


def _backward_through(module: nn.Module, output) -> None:
    tensors = [output] if isinstance(output, torch.Tensor) else list(output)
    sum(t.float().sum() for t in tensors).backward()


def run_resnet(module):
    _backward_through(module, module(torch.randn(2, 3, 32, 32)))


def run_fpn(module):
    _backward_through(module, module([torch.randn(2, 4, 16, 16), torch.randn(2, 8, 8, 8)]))


def run_head(module):
    raw = module([torch.randn(2, 8, 4, 4), torch.randn(2, 8, 2, 2)])
    batch = _batch()
    losses = module.loss(raw, batch.targets, batch.metas)
    assert losses["loss_bbox"] > 0  # the regression branch gets a gradient too
    sum(losses.values()).backward()
    assert len(module.predict(raw, batch.metas)) == 2


def run_detector(module):
    batch = _batch()
    losses = module.loss(batch)
    assert losses["loss_bbox"] > 0
    sum(losses.values()).backward()
    assert len(module.eval().predict(batch)) == 2


def run_classification_loss(module):
    pred = torch.randn(6, 3, requires_grad=True)
    module(pred, torch.tensor([0, 1, 2, 3, 3, 1]), avg_factor=2).backward()
    assert pred.grad.abs().sum() > 0


def run_regression_loss(module):
    pred = _boxes(5).requires_grad_(True)
    module(pred, _boxes(5), torch.ones(5, 4), avg_factor=5).backward()
    assert pred.grad.abs().sum() > 0


def run_anchor_generator(obj):
    anchors = obj.grid_priors([(4, 4), (2, 2)])
    flags = obj.valid_flags([(4, 4), (2, 2)], (32, 32))
    assert [len(a) for a in anchors] == [len(f) for f in flags] == [32, 8]


def run_coder(obj):
    priors, gts = _boxes(4), _boxes(4)
    torch.testing.assert_close(obj.decode(priors, obj.encode(priors, gts)), gts, atol=1e-4,
                               rtol=1e-4)


def run_assigner(obj):
    result = obj.assign(_boxes(20), _boxes(3), gt_labels=torch.tensor([0, 1, 0]))
    assert result.gt_inds.shape == (20,)


def run_sampler(obj):
    from detlab.models import MaxIoUAssigner

    boxes, gts = _boxes(20), _boxes(2)
    assign = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4).assign(boxes, gts)
    sample = obj.sample(assign, boxes, gts)
    assert len(sample.pos_inds) + len(sample.neg_inds) <= 20


def run_iou(obj):
    assert obj(_boxes(3), _boxes(4)).shape == (3, 4)


# name -> (small config, how to run it)
COMPONENTS = {
    "ResNet": (dict(depth=18, frozen_stages=-1), run_resnet),
    "FPN": (dict(in_channels=[4, 8], out_channels=8, num_outs=4, add_extra_convs="on_input"),
            run_fpn),
    "RetinaHead": ({k: v for k, v in HEAD.items() if k != "type"}, run_head),
    "RetinaNet": (DETECTOR, run_detector),
    "SingleStageDetector": (DETECTOR, run_detector),
    "FocalLoss": (dict(), run_classification_loss),
    "L1Loss": (dict(), run_regression_loss),
    "SmoothL1Loss": (dict(beta=0.5), run_regression_loss),
    "GIoULoss": (dict(), run_regression_loss),
    "AnchorGenerator": (dict(strides=[8, 16], ratios=[0.5, 2.0], scales=[4.0]),
                        run_anchor_generator),
    "DeltaXYWHBBoxCoder": (dict(target_stds=(0.1, 0.1, 0.2, 0.2)), run_coder),
    "MaxIoUAssigner": (dict(pos_iou_thr=0.5, neg_iou_thr=0.4), run_assigner),
    "PseudoSampler": (dict(), run_sampler),
    "BboxOverlaps2D": (dict(), run_iou),
}


def _detlab_components():
    return sorted(name for name, obj in MODELS.module_dict.items()
                  if getattr(obj, "__module__", "").startswith("detlab.models"))


def test_every_registered_component_is_covered():
    assert _detlab_components() == sorted(COMPONENTS)


@pytest.mark.parametrize("name", sorted(COMPONENTS))
def test_builds_runs_and_every_trainable_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    cfg, run = COMPONENTS[name]
    obj = MODELS.build(dict(type=name, **cfg))
    if isinstance(obj, nn.Module):
        obj.train()
    run(obj)
    if isinstance(obj, nn.Module):
        missing = [n for n, p in obj.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"{name}: no gradient for {missing}"
        assert all(torch.isfinite(p.grad).all() for p in obj.parameters() if p.grad is not None)
