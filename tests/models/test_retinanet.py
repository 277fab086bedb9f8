"""RetinaNet, the detector: MMDetection's parameter count, the loss/predict contract, results in
original-image pixels, configuration errors, and pretrained loading only in init_weights."""

import copy
import os
import pickle
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from detlab.config import Config, ConfigError
from detlab.models import RetinaNet, build_detector, build_model
from detlab.models.init import CheckpointLoadError, torchvision_weights_url
from detlab.structures import Batch, DetResult, flip_boxes

REPO = Path(__file__).resolve().parents[2]
RETINANET_CONFIG = REPO / "configs" / "retinanet" / "retinanet_r50_fpn_1x_coco.py"


def _small_cfg(**head):
    return dict(
        type="RetinaNet",
        backbone=dict(type="ResNet", depth=18, frozen_stages=1),
        neck=dict(type="FPN", in_channels=[64, 128, 256, 512], out_channels=32, start_level=1,
                  add_extra_convs="on_input", num_outs=5),
        bbox_head=dict(type="RetinaHead", num_classes=3, in_channels=32, feat_channels=32,
                       stacked_convs=2, **head),
        train_cfg=dict(assigner=dict(type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4,
                                     min_pos_iou=0, ignore_iof_thr=-1),
                       allowed_border=-1, pos_weight=-1, debug=False),
        test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=0.05,
                      nms=dict(type="nms", iou_threshold=0.5), max_per_img=100))


def _batch(n=2, height=64, width=96, **meta):
    torch.manual_seed(3)
    metas = [dict(img_shape=(height, width, 3), pad_shape=(height, width, 3),
                  batch_input_shape=(height, width), ori_shape=(height // 2, width // 2, 3),
                  scale_factor=np.array([2.0, 2.0, 2.0, 2.0], np.float32), flip=False,
                  flip_direction=None, img_id=i, filename=f"img{i}.jpg", **meta)
             for i in range(n)]
    targets = [dict(boxes=torch.tensor([[8.0, 10.0, 50.0, 60.0]]), labels=torch.tensor([i % 3]),
                    boxes_ignore=torch.zeros(0, 4)) for i in range(n)]
    return Batch(torch.randn(n, 3, height, width), targets, metas)


def test_parameter_count_matches_mmdetection():
    """MMDetection reports 37.74 M parameters for retinanet_r50_fpn_1x_coco (mmcv counts those
    with requires_grad: the frozen stem and stage 1 are left out)."""
    model = build_model(Config.fromfile(RETINANET_CONFIG).model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    assert round(trainable / 1e6, 2) == 37.74
    assert trainable == 37_743_348
    assert total == 37_968_692
    frozen = [model.backbone.conv1, model.backbone.bn1, model.backbone.layer1]
    assert total - trainable == sum(p.numel() for m in frozen for p in m.parameters())
    assert isinstance(model, RetinaNet) and model.bbox_head.num_base_priors == 9


def test_mmdetection_parameter_names():
    model = build_model(_small_cfg())
    names = set(model.state_dict())
    assert {"backbone.conv1.weight", "backbone.bn1.running_mean", "backbone.layer1.0.conv1.weight",
            "neck.lateral_convs.0.conv.weight", "neck.fpn_convs.4.conv.bias",
            "bbox_head.cls_convs.0.conv.weight", "bbox_head.reg_convs.1.conv.bias",
            "bbox_head.retina_cls.weight", "bbox_head.retina_reg.bias"} <= names


def test_loss_predict_forward_contract():
    model = build_model(_small_cfg())
    batch = _batch()
    model.train()
    losses = model.loss(batch)
    assert set(losses) == {"loss_cls", "loss_bbox"}
    assert all(k.startswith("loss") and v.dim() == 0 for k, v in losses.items())
    sum(losses.values()).backward()
    model.eval()
    model.CLASSES = ("cat", "dog", "bird")
    results = model.predict(batch)
    assert len(results) == 2 and all(isinstance(r, DetResult) for r in results)
    assert results[1].class_names == ("cat", "dog", "bird")
    assert results[1].meta == dict(img_id=1, filename="img1.jpg", ori_shape=(32, 48, 3))
    cls_maps, reg_maps = model(batch.images)
    assert len(cls_maps) == len(reg_maps) == 5
    assert cls_maps[0].shape == (2, 27, 8, 12) and reg_maps[4].shape == (2, 36, 1, 1)


def _confident(model):
    """Make every anchor score high, so that predict has detections to map back."""
    with torch.no_grad():
        model.bbox_head.retina_cls.bias.fill_(2.0)
        model.bbox_head.retina_reg.weight.mul_(30)


@pytest.mark.parametrize("direction", ["horizontal", "vertical", "diagonal"])
def test_predict_undoes_resize_and_flip(direction):
    model = build_model(_small_cfg()).eval()
    _confident(model)
    plain = _batch(n=1)
    flipped = _batch(n=1)
    flipped.metas[0].update(flip=True, flip_direction=direction)
    network_pixels = model.predict(plain, rescale=False)[0]
    original = model.predict(flipped)[0]
    assert len(original) > 0
    assert torch.all(network_pixels.boxes[:, 0::2] <= 96) and torch.all(
        network_pixels.boxes[:, 1::2] <= 64)  # clipped to img_shape
    expected = flip_boxes(network_pixels.boxes, (64, 96), direction) / 2
    torch.testing.assert_close(original.boxes, expected)
    torch.testing.assert_close(original.scores, network_pixels.scores)
    assert torch.all(original.boxes[:, 0::2] <= 48) and torch.all(original.boxes[:, 1::2] <= 32)


def test_clip_happens_at_img_shape_not_pad_shape():
    model = build_model(_small_cfg()).eval()
    _confident(model)
    batch = _batch(n=1)
    batch.metas[0].update(img_shape=(50, 70, 3))  # the rest of the 64x96 input is padding
    boxes = model.predict(batch, rescale=False)[0].boxes
    assert len(boxes) and boxes[:, 0::2].max() <= 70 and boxes[:, 1::2].max() <= 50


def test_images_padded_differently_in_one_batch():
    model = build_model(_small_cfg())
    batch = _batch()
    batch.metas[1].update(img_shape=(40, 60, 3), pad_shape=(64, 64, 3))
    losses = model.loss(batch)
    assert torch.isfinite(sum(losses.values()))


@pytest.mark.parametrize("change, message", [
    (dict(neck=dict(type="FPN", in_channels=[256, 512, 1024, 2048], out_channels=32,
                    start_level=1, add_extra_convs="on_input", num_outs=5)),
     r"model.neck.in_channels=\[256, 512, 1024, 2048\].*\[64, 128, 256, 512\]"),
    (dict(bbox_head=dict(type="RetinaHead", num_classes=3, in_channels=64, feat_channels=32)),
     "model.bbox_head.in_channels=64"),
    (dict(bbox_head=dict(type="RetinaHead", num_classes=3, in_channels=32, feat_channels=32,
                         anchor_generator=dict(type="AnchorGenerator", octave_base_scale=4,
                                               scales_per_octave=3, ratios=[1.0],
                                               strides=[8, 16, 32, 64]))),
     "4 levels"),
    (dict(bbox_head=dict(type="RetinaHead", num_classes=-1, in_channels=32)), "num_classes"),
    (dict(neck=dict(type="FPN", in_channels=[64, 128, 256, 512], out_channels=32,
                    add_extra_convs="on_everything", num_outs=5)), "add_extra_convs"),
])
def test_configuration_errors_name_the_key(change, message):
    with pytest.raises(ConfigError, match=message):
        build_model({**_small_cfg(), **change})


def test_unknown_key_names_its_path():
    cfg = _small_cfg()
    cfg["bbox_head"]["loss_cls"] = dict(type="FocalLoss", gama=2.0)
    with pytest.raises(ConfigError, match=r"gama.*model\.bbox_head\.loss_cls"):
        build_model(cfg)


def test_build_detector_with_separate_train_and_test_cfg():
    cfg = _small_cfg()
    train_cfg, test_cfg = cfg.pop("train_cfg"), cfg.pop("test_cfg")
    with pytest.warns(UserWarning, match="deprecated"):
        model = build_detector(cfg, train_cfg=train_cfg, test_cfg=test_cfg)
    assert model.bbox_head.test_cfg["max_per_img"] == 100
    with pytest.raises(ConfigError, match="both"), pytest.warns(UserWarning):
        build_detector(_small_cfg(), train_cfg=train_cfg)
    assert isinstance(build_model(Config(dict(model=_small_cfg()))), RetinaNet)


def test_building_never_downloads_and_init_weights_loads(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)

    def no_network(url, *args, **kwargs):
        raise urllib.error.URLError("offline")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    cfg = _small_cfg()
    cfg["backbone"]["init_cfg"] = dict(type="Pretrained", checkpoint="torchvision://resnet18")
    model = build_model(cfg)  # no download, no error
    with pytest.raises(CheckpointLoadError, match="resnet18"):
        model.init_weights()
    torch.manual_seed(5)
    reference = torchvision.models.resnet18()
    cache = tmp_path / "hub" / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(reference.state_dict(),
               cache / os.path.basename(torchvision_weights_url("resnet18")))
    model.init_weights()
    torch.testing.assert_close(model.backbone.layer4[1].conv2.weight,
                               reference.layer4[1].conv2.weight)
    prior = -np.log(99)
    assert torch.allclose(model.bbox_head.retina_cls.bias, torch.tensor(prior, dtype=torch.float))


def test_detector_checkpoint_through_init_cfg(tmp_path):
    source = build_model(_small_cfg())
    path = tmp_path / "retinanet.pth"
    torch.save({"state_dict": source.state_dict(), "meta": {}}, path)
    cfg = {**_small_cfg(), "init_cfg": dict(type="Pretrained", checkpoint=str(path))}
    model = build_model(cfg)
    model.init_weights()
    for key, value in source.state_dict().items():
        torch.testing.assert_close(model.state_dict()[key], value)


def test_deprecated_pretrained_goes_to_the_backbone():
    with pytest.warns(DeprecationWarning):
        model = build_model({**_small_cfg(), "pretrained": "torchvision://resnet18"})
    assert model.backbone.init_cfg == dict(type="Pretrained", checkpoint="torchvision://resnet18")


def test_bad_images():
    model = build_model(_small_cfg())
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        model(torch.zeros(3, 64, 64))


def test_detector_can_be_copied_and_pickled():
    """EMA hooks deep-copy the model and whole-model saves pickle it."""
    model = build_model(Config(dict(model=_small_cfg())))
    clone = copy.deepcopy(model)
    restored = pickle.loads(pickle.dumps(model))
    for other in (clone, restored):
        for (name, a), b in zip(model.state_dict().items(), other.state_dict().values(),
                                strict=True):
            assert torch.equal(a, b), name
    batch = _batch(n=1)
    torch.testing.assert_close(restored.eval().loss(batch)["loss_cls"],
                               model.eval().loss(batch)["loss_cls"])
