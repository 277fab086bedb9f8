"""Mask R-CNN against MMDetection 2.28: FCNMaskHead's outputs with the same weights, its
targets (bitmap, polygon and the batch's tensor masks) and loss, and the masks pasted into the
image (``get_seg_masks``), for every upsampling and the class-agnostic head; a small Mask R-CNN
(FPN, and C4 with the mask head on the shared head's features) with MMDetection's weights
loaded strictly gives the same losses (with and without ground truth) and the same detections
and masks; masks end to end on the shapes data (training, segm evaluation, ``detlab test``).

Sampling is random: both sides draw with ``torch.randperm`` in the same order, so seeding
``torch`` identically before each side's loss gives both the same anchors and RoIs.
(The zoo's Mask R-CNN configs' parameter counts and state_dict keys are checked by
``test_zoo.py``.)
"""

from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from reference.mmdet_reference import import_mmdet, load_mmdet_config, mmdet_config_dir

from detlab.config import Config, ConfigError
from detlab.data.masks import BitmapMasks, PolygonMasks
from detlab.models import build_model
from detlab.models.roi_heads.mask_heads import FCNMaskHead, mask_targets, paste_masks
from detlab.structures import Batch

NUM_CLASSES = 5


def _pair(**kwargs):
    """detlab's and MMDetection's FCNMaskHead of the same arguments, MMDetection's weights
    loaded strictly into detlab's."""
    import_mmdet()
    from mmdet.models.roi_heads.mask_heads import FCNMaskHead as Reference

    args = dict(num_convs=2, in_channels=8, conv_out_channels=8, num_classes=NUM_CLASSES)
    args.update(kwargs)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = Reference(**args)
    reference.init_weights()
    ours = FCNMaskHead(**args)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


@pytest.mark.parametrize("options", [
    {}, dict(class_agnostic=True), dict(upsample_cfg=dict(type="bilinear", scale_factor=2)),
    dict(upsample_cfg=dict(type="nearest", scale_factor=2)), dict(upsample_cfg=dict(type=None)),
    dict(num_convs=0), dict(norm_cfg=dict(type="GN", num_groups=4), conv_kernel_size=1)])
def test_outputs_and_parameters_match_mmdetection(options):
    reference, ours = _pair(**options)
    assert sum(p.numel() for p in ours.parameters()) == sum(
        p.numel() for p in reference.parameters())
    x = torch.randn(3, 8, 14, 14)
    torch.testing.assert_close(ours(x), reference(x))


def _masks_and_proposals(seed: int = 0):
    """Ground-truth bitmaps of a 40 x 52 image, positive proposals (some past the image's
    edges, one thinner than a pixel) and their ground truths."""
    gen = np.random.default_rng(seed)
    h, w = 40, 52
    bitmaps = (gen.random((4, h, w)) > 0.6).astype(np.uint8)
    bitmaps[0, 5:30, 10:40] = 1
    xy = gen.random((9, 2)) * [w, h] - 5
    wh = gen.random((9, 2)) * 30 + 0.5
    proposals = torch.tensor(np.concatenate([xy, xy + wh], 1), dtype=torch.float32)
    proposals[0] = torch.tensor([12.2, 11.0, 12.6, 19.0])  # a sliver inside instance 2
    inds = torch.tensor(gen.integers(0, 4, 9))
    inds[0] = 2
    return bitmaps, proposals, inds


def _mmdet_masks(kind, bitmaps, polygons, h, w):
    from mmdet.core.mask import BitmapMasks as RefBitmaps
    from mmdet.core.mask import PolygonMasks as RefPolygons

    if kind == "polygon":
        return RefPolygons([[np.asarray(p, dtype=np.float64) for p in m] for m in polygons], h, w)
    return RefBitmaps(bitmaps, h, w)


POLYGONS = [[[5, 5, 30, 6, 20, 30]], [[0, 0, 52, 0, 52, 3.5, 0, 3]],
            [[10, 10, 20, 10, 20, 20, 10, 20], [30, 20, 45, 22, 40, 38]], [[1, 39, 51, 1, 50, 39]]]


@pytest.mark.parametrize("kind", ["tensor", "bitmap", "polygon"])
@pytest.mark.parametrize("soft", [False, True])
def test_targets_match_mmdetection(kind, soft):
    import_mmdet()
    from mmcv import Config as MMConfig
    from mmdet.core import mask_target

    if kind == "polygon" and soft:
        pytest.skip("polygon targets are always binary (MMDetection refuses soft ones)")
    bitmaps, proposals, inds = _masks_and_proposals()
    h, w = bitmaps.shape[1:]
    cfg = MMConfig(dict(mask_size=(14, 12), soft_mask_target=soft))
    expected = mask_target([proposals, proposals[:0], proposals[3:]], [inds, inds[:0], inds[3:]],
                           [_mmdet_masks(kind, bitmaps, POLYGONS, h, w)] * 3, cfg)
    ours_masks = {"tensor": torch.from_numpy(bitmaps).bool(), "bitmap": BitmapMasks(bitmaps, h, w),
                  "polygon": PolygonMasks(POLYGONS, h, w)}[kind]
    actual = mask_targets([proposals, proposals[:0], proposals[3:]], [inds, inds[:0], inds[3:]],
                          [ours_masks] * 3, (14, 12), binarize=not soft)
    assert actual.shape == (15, 14, 12) and actual.dtype == torch.float32
    torch.testing.assert_close(actual, expected)


def test_loss_matches_mmdetection():
    for options in ({}, dict(class_agnostic=True)):
        reference, ours = _pair(**options)
        x = torch.randn(6, 8, 14, 14)
        targets = (torch.rand(6, 28, 28) > 0.5).float()
        labels = torch.tensor([0, 4, 2, 2, 1, 3])
        expected = reference.loss(reference(x), targets, labels)
        actual = ours.loss(ours(x), targets, labels)
        torch.testing.assert_close(actual["loss_mask"], expected["loss_mask"])
        empty = ours.loss(ours(x[:0]), targets[:0], labels[:0])["loss_mask"]
        assert empty.item() == 0 and empty.requires_grad


@pytest.mark.parametrize("rescale", [True, False])
@pytest.mark.parametrize("threshold", [0.5, 0.3, -1])
def test_pasted_masks_match_mmdetection(rescale, threshold):
    from mmcv import Config as MMConfig

    for options in ({}, dict(class_agnostic=True)):
        reference, ours = _pair(**options)
        gen = torch.Generator().manual_seed(3)
        logits = torch.randn(7, 1 if ours.class_agnostic else NUM_CLASSES, 28, 28,
                             generator=gen) * 3
        xy = torch.rand(7, 2, generator=gen) * torch.tensor([90.0, 60.0]) - 10
        boxes = torch.cat([xy, xy + torch.rand(7, 2, generator=gen) * 70 + 0.3], 1)
        boxes[0, 2] = boxes[0, 0]  # a box of no width
        labels = torch.randint(0, NUM_CLASSES, (7,), generator=gen)
        scale = np.array([1.5, 1.25, 1.5, 1.25], dtype=np.float32)
        cfg = MMConfig(dict(mask_thr_binary=threshold))
        per_class = reference.get_seg_masks(logits, boxes, labels, cfg, (64, 80, 3), scale,
                                            rescale)
        actual = ours.predict_masks(logits, boxes, labels, dict(mask_thr_binary=threshold),
                                    (64, 80), scale, rescale)
        assert actual.dtype == (torch.bool if threshold >= 0 else torch.uint8)
        seen = [0] * NUM_CLASSES
        for mask, label in zip(actual, labels.tolist(), strict=True):
            expected = per_class[label][seen[label]]
            seen[label] += 1
            np.testing.assert_array_equal(mask.numpy(), expected)


def test_paste_in_chunks_equals_paste_one_by_one():
    probs = torch.rand(5, 1, 28, 28)
    boxes = torch.tensor([[3.0, 4, 40, 30], [0, 0, 60, 50], [10, 12, 11, 40], [-5, 2, 20, 70],
                          [30, 30, 59, 49]])
    from detlab.models.roi_heads.mask_heads.fcn_mask_head import paste_chunk

    whole, _ = paste_chunk(probs, boxes, 50, 60, skip_empty=False)
    torch.testing.assert_close(paste_masks(probs, boxes, 50, 60, 0.5), whole >= 0.5)


def test_configuration_errors():
    with pytest.raises(ConfigError, match="carafe"):
        FCNMaskHead(upsample_cfg=dict(type="carafe", scale_factor=2, kernel=5))
    with pytest.raises(ConfigError, match="upsample_cfg.type"):
        FCNMaskHead(upsample_cfg=dict(type="pixelshuffle", scale_factor=2))
    with pytest.raises(ConfigError, match="init_cfg"):
        FCNMaskHead(init_cfg=dict(type="Normal", std=0.01))
    with pytest.raises(ConfigError, match="mask_size"):
        FCNMaskHead().get_targets([], [], {})


# ---- the whole detector: a small Mask R-CNN with MMDetection's weights ----------------------

MASK_RCNN = "mask_rcnn/mask_rcnn_r50_fpn_1x_coco.py"
REPO = Path(__file__).resolve().parents[2]
CLASSES = 6
HEIGHT, WIDTH = 160, 224
SMALL = {"model.backbone.depth": 18, "model.backbone.init_cfg": None,
         "model.neck.in_channels": [64, 128, 256, 512], "model.neck.out_channels": 16,
         "model.rpn_head.in_channels": 16, "model.rpn_head.feat_channels": 16,
         "model.roi_head.bbox_roi_extractor.out_channels": 16,
         "model.roi_head.bbox_head.in_channels": 16,
         "model.roi_head.bbox_head.fc_out_channels": 32,
         "model.roi_head.bbox_head.num_classes": CLASSES,
         "model.roi_head.mask_roi_extractor.out_channels": 16,
         "model.roi_head.mask_head.in_channels": 16,
         "model.roi_head.mask_head.conv_out_channels": 16,
         "model.roi_head.mask_head.num_classes": CLASSES, "model.roi_head.mask_head.num_convs": 2,
         "model.train_cfg.rcnn.sampler.num": 128}
# the C4 model: ResNet's last stage as the RoI head's shared head, the mask head on the box
# branch's pooled features (no mask extractor, no convs)
MASK_RCNN_C4 = "mask_rcnn/mask_rcnn_r50_caffe_c4_1x_coco.py"
SMALL_C4 = {"model.backbone.depth": 18, "model.backbone.init_cfg": None,
            "model.rpn_head.in_channels": 256, "model.rpn_head.feat_channels": 16,
            "model.roi_head.shared_head.depth": 18,
            "model.roi_head.bbox_roi_extractor.out_channels": 256,
            "model.roi_head.bbox_head.in_channels": 512,
            "model.roi_head.bbox_head.num_classes": CLASSES,
            "model.roi_head.mask_head.in_channels": 512,
            "model.roi_head.mask_head.num_classes": CLASSES,
            "model.train_cfg.rcnn.sampler.num": 64,
            "model.train_cfg.rpn_proposal.max_per_img": 200,
            "model.test_cfg.rpn.max_per_img": 60}
PAIRS = {"fpn": (MASK_RCNN, SMALL), "c4": (MASK_RCNN_C4, SMALL_C4)}


def test_detlab_configs_are_mmdetections():
    for config in (MASK_RCNN, "_base_/models/mask_rcnn_r50_fpn.py",
                   "_base_/datasets/coco_instance.py"):
        mine = Config.fromfile(REPO / "configs" / config)
        theirs = Config.fromfile(mmdet_config_dir() / config)
        assert mine.to_dict() == theirs.to_dict(), config


@pytest.fixture(scope="module", params=list(PAIRS), ids=list(PAIRS))
def mask_rcnn_pair(request):
    """(MMDetection's small Mask R-CNN, detlab's with its weights loaded strictly): weights
    drawn at random (distinct objectness scores, so that no tie decides an order), eval mode."""
    import_mmdet()
    from mmdet.models import build_detector

    config, options = PAIRS[request.param]
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
                scale = 0.3 if "fc_cls" in name or "rpn_cls" in name else 0.1
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    cfg = Config.fromfile(mmdet_config_dir() / config)  # MMDetection's copy: C4 is not shipped
    cfg.merge_from_dict(options)
    ours = build_model(cfg.model)
    ours.load_state_dict(reference.state_dict(), strict=True)
    return reference.eval(), ours.eval()


def _metas():
    return [dict(img_shape=(HEIGHT - 32 * i, WIDTH - 48 * i, 3),
                 pad_shape=(HEIGHT - 32 * i, WIDTH - 48 * i, 3),
                 batch_input_shape=(HEIGHT, WIDTH), ori_shape=(HEIGHT // 2, WIDTH // 2, 3),
                 scale_factor=np.full(4, 2.0, np.float32), flip=False, flip_direction=None,
                 img_id=i, filename=f"img{i}.jpg") for i in range(2)]


def _targets(empty=False, seed=3):
    """Boxes in each image with masks of their left half and more (padded to the batch)."""
    gen = torch.Generator().manual_seed(seed)
    targets = []
    for meta in _metas():
        h, w = meta["img_shape"][:2]
        n = 0 if empty else 5
        size = torch.rand(n, 2, generator=gen) * torch.tensor([w * 0.6, h * 0.6]) + 10
        corner = torch.rand(n, 2, generator=gen) * (torch.tensor([w, h]) - size)
        boxes = torch.cat([corner, corner + size], 1)
        masks = torch.zeros(n, HEIGHT, WIDTH, dtype=torch.bool)
        for j, (x1, y1, x2, y2) in enumerate(boxes.round().int().tolist()):
            masks[j, y1:y2, x1:(x1 + x2) // 2 + 3] = True
        targets.append(dict(boxes=boxes, labels=torch.randint(0, CLASSES, (n,), generator=gen),
                            boxes_ignore=torch.zeros(0, 4), masks=masks))
    return targets


def _mmdet_losses(reference, images, metas, targets):
    from mmdet.core.mask import BitmapMasks as ReferenceBitmaps

    gt_masks = [ReferenceBitmaps(t["masks"][:, :m["pad_shape"][0], :m["pad_shape"][1]].numpy()
                                 .astype(np.uint8), *m["pad_shape"][:2])
                for t, m in zip(targets, metas, strict=True)]
    losses = reference.train().forward_train(
        images, copy.deepcopy(metas), [t["boxes"] for t in targets],
        [t["labels"] for t in targets], gt_masks=gt_masks)
    reference.eval()
    return {k: sum(v) if isinstance(v, (list, tuple)) else v for k, v in losses.items()}


@pytest.mark.parametrize("empty", [False, True], ids=["boxes", "no-boxes"])
def test_detector_losses_match_mmdetection(mask_rcnn_pair, empty):
    """Both sides sample their anchors and RoIs with torch.randperm in the same order, so the
    same seed gives the same samples."""
    reference, ours = mask_rcnn_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(4))
    metas, targets = _metas(), _targets(empty)
    torch.manual_seed(11)
    expected = _mmdet_losses(reference, images, metas, targets)
    torch.manual_seed(11)
    actual = ours.train().loss(Batch(images, targets, metas))
    ours.eval()
    assert set(actual) == set(expected) == {"loss_rpn_cls", "loss_rpn_bbox", "loss_cls",
                                            "loss_bbox", "acc", "loss_mask"}
    for key in expected:
        torch.testing.assert_close(actual[key].reshape(-1), expected[key].reshape(-1),
                                   rtol=1e-5, atol=1e-6, msg=lambda m, key=key: f"{key}: {m}")
    assert (actual["loss_mask"] > 0) != empty
    sum(v for k, v in actual.items() if k.startswith("loss")).backward()
    ours.zero_grad()


@pytest.mark.parametrize("rescale", [True, False])
def test_detections_and_masks_match_mmdetection(mask_rcnn_pair, rescale):
    reference, ours = mask_rcnn_pair
    images = torch.randn(2, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(2))
    metas = _metas()
    with torch.no_grad():
        expected = reference.simple_test(images, copy.deepcopy(metas), rescale=rescale)
    actual = ours.predict(Batch(images, [{}, {}], metas), rescale=rescale)
    for ours_image, (boxes, masks), meta in zip(actual, expected, metas, strict=True):
        assert sum(len(c) for c in boxes) > 20
        h, w = meta["ori_shape"][:2]
        size = (h, w) if rescale else (2 * h, 2 * w)
        assert ours_image.masks.shape == (len(ours_image), *size)
        for label, (a, e) in enumerate(zip(ours_image.to_mmdet(CLASSES), boxes, strict=True)):
            np.testing.assert_allclose(a, e, rtol=1e-4, atol=1e-3)
            mine = ours_image.masks[ours_image.labels == label].numpy()
            assert len(mine) == len(masks[label])
            for m, r in zip(mine, masks[label], strict=True):
                np.testing.assert_array_equal(m, r)


# ---- masks end to end on the shapes data ----------------------------------------------------

QUICKSTART_MASKS = REPO / "configs" / "quickstart" / "mask_rcnn_r18_fpn_shapes.py"


def test_shapes_annotations_load_as_masks_of_their_boxes(shapes_root):
    """The generated shapes carry outline polygons, which the instance pipeline turns into
    one mask per box, inside it."""
    import detlab
    from detlab.data.loader import collate

    dataset = detlab.build_dataset(_shapes_config(shapes_root).data.train)
    batch = collate([dataset[0], dataset[1]])
    for target in batch.targets:
        masks, boxes = target["masks"], target["boxes"]
        assert masks.dtype == torch.bool and len(masks) == len(boxes) > 0
        for mask, box in zip(masks, boxes, strict=True):
            rows, cols = mask.any(1).nonzero(), mask.any(0).nonzero()
            assert mask.sum() > 0.3 * (box[2] - box[0]) * (box[3] - box[1])
            assert cols.min() >= box[0] - 1 and cols.max() < box[2] + 1
            assert rows.min() >= box[1] - 1 and rows.max() < box[3] + 1


def _shapes_config(root: str, **options) -> Config:
    """The shapes Mask R-CNN on 64-pixel images of ``root``: 2 iterations of 4 images, an
    evaluation of boxes and masks after the epoch; a 16-channel model."""
    from detlab.notebooks import quickstart_overrides

    cfg = Config.fromfile(QUICKSTART_MASKS)
    cfg.merge_from_dict(quickstart_overrides(cfg, root, 64, 1))
    cfg.merge_from_dict({"data.samples_per_gpu": 4, "data.workers_per_gpu": 0,
                         "log_config.interval": 1, "evaluation.interval": 1,
                         "checkpoint_config.interval": 1, "lr_config.warmup_iters": 2,
                         "lr_config.step": [2], "model.neck.out_channels": 16,
                         "model.rpn_head.in_channels": 16, "model.rpn_head.feat_channels": 16,
                         "model.roi_head.bbox_roi_extractor.out_channels": 16,
                         "model.roi_head.bbox_head.in_channels": 16,
                         "model.roi_head.bbox_head.fc_out_channels": 32,
                         "model.roi_head.mask_roi_extractor.out_channels": 16,
                         "model.roi_head.mask_head.in_channels": 16,
                         "model.roi_head.mask_head.conv_out_channels": 16, **options})
    return cfg


def test_trains_on_shapes_with_masks_and_reports_segm_map(shapes_root, tmp_path, capsys):
    """Two iterations through detlab.train with evaluation=dict(metric=['bbox', 'segm']): the
    mask loss is logged and the evaluation reports segm_mAP; `detlab test --eval bbox segm`
    on the checkpoint runs; inference gives masks that show_result draws."""
    from detlab.cli import main
    from detlab.engine.logging import read_json_log
    from detlab.engine.setup import train

    cfg = _shapes_config(shapes_root)
    run = train(cfg, work_dir=str(tmp_path), seed=0, progress=False, validate=True)
    rows = read_json_log(run.json_log)
    steps = [r for r in rows if r["mode"] == "train"]
    assert len(steps) == 2 and all(np.isfinite(r["loss_mask"]) for r in steps)
    evaluations = [r for r in rows if r["mode"] == "val"]
    assert evaluations and {"bbox_mAP", "segm_mAP"} <= set(evaluations[-1])
    assert 0 <= evaluations[-1]["segm_mAP"] <= 1
    config_file = tmp_path / "shapes_mask_rcnn.py"
    cfg.dump(str(config_file))
    out = tmp_path / "results.pkl"
    assert main(["test", str(config_file), run.checkpoint, "--eval", "bbox", "segm",
                 "--out", str(out)]) == 0
    assert out.is_file() and "segm_mAP" in capsys.readouterr().out
    assert main(["eval-metric", str(config_file), str(out), "--eval", "bbox", "segm"]) == 0
    assert "segm_mAP" in capsys.readouterr().out  # the masks went into results.pkl and back
    # a flip test (MultiScaleFlipAug flip=True): the augmentations' detections merged, masks kept
    from detlab.engine.tester import test as run_test

    merged = run_test(str(config_file), run.checkpoint, eval=["segm"], progress=False,
                      cfg_options={"data.test.pipeline.1.flip": True})
    assert "segm_mAP" in merged
    assert all(r.masks is not None and r.masks.shape[0] == len(r) for r in merged["results"])
    # inference keeps masks of the original image's size, and show_result draws them
    from detlab.inference import inference_detector, init_detector, show_result

    model = init_detector(str(config_file), run.checkpoint)
    model.roi_head.test_cfg["score_thr"] = 0.0  # an untrained model: keep what it finds
    image = Path(shapes_root) / "val" / "000000.png"
    result = inference_detector(model, str(image))
    assert result.masks is not None and result.masks.shape == (len(result), 64, 64)
    assert show_result(str(image), result, score_thr=0.0).shape == (64, 64, 3)


def test_ground_truth_masks_as_detections_score_a_perfect_segm_map(shapes_root, tmp_path):
    """DetResult.masks reach the COCO segm evaluation (as RLE): the shapes' own masks, given
    as detections, score 1; the same boxes with emptied masks score 0."""
    import detlab
    from detlab.data.masks import decode_rles, segmentation_to_rle
    from detlab.structures import DetResult

    dataset = detlab.build_dataset(_shapes_config(shapes_root).data.val)
    results, emptied = [], []
    for info in dataset.data_infos:
        anns = dataset.coco.loadAnns(dataset.coco.getAnnIds(imgIds=[info["id"]]))
        h, w = info["height"], info["width"]
        masks = torch.from_numpy(decode_rles([segmentation_to_rle(a["segmentation"], h, w)
                                              for a in anns])).bool()
        boxes = torch.tensor([[x, y, x + bw, y + bh] for x, y, bw, bh in
                              (a["bbox"] for a in anns)], dtype=torch.float32)
        labels = torch.tensor([dataset.cat_ids.index(a["category_id"]) for a in anns])
        results.append(DetResult(boxes, torch.ones(len(anns)), labels, masks=masks))
        emptied.append(DetResult(boxes, torch.ones(len(anns)), labels,
                                 masks=torch.zeros_like(masks)))
    prefix = str(tmp_path / "shapes")
    metrics = dataset.evaluate(results, metric=["bbox", "segm"], jsonfile_prefix=prefix)
    assert metrics["segm_mAP"] == 1.0 and metrics["bbox_mAP"] == 1.0
    rows = json.loads(Path(f"{prefix}.segm.json").read_text())
    assert len(rows) == sum(len(r) for r in results) and "counts" in rows[0]["segmentation"]
    assert dataset.evaluate(emptied, metric="segm")["segm_mAP"] == 0.0


def test_results_pkl_keeps_masks(tmp_path):
    """A mask model's results.pkl is MMDetection's (per-class boxes, per-class RLEs) per image,
    and reads back into the same DetResults (order by score, masks included)."""
    from detlab.engine.tester import load_results, save_results
    from detlab.structures import DetResult

    gen = torch.Generator().manual_seed(0)
    boxes = torch.tensor([[1.0, 2, 9, 12], [4, 4, 20, 15], [0, 0, 5, 5]])
    masks = torch.rand(3, 16, 24, generator=gen) > 0.5
    results = [DetResult(boxes, torch.tensor([0.9, 0.8, 0.3]), torch.tensor([2, 0, 2]),
                         masks=masks),
               DetResult(boxes[:0], torch.zeros(0), torch.zeros(0, dtype=torch.long),
                         masks=masks[:0])]
    path = save_results(results, str(tmp_path / "results.pkl"), num_classes=3)
    import pickle

    with open(path, "rb") as f:
        raw = pickle.load(f)
    assert isinstance(raw[0], tuple) and [len(c) for c in raw[0][1]] == [1, 0, 2]
    assert raw[0][1][2][0]["size"] == [16, 24]
    back = load_results(path, ("a", "b", "c"))
    torch.testing.assert_close(back[0].boxes, boxes)
    assert back[0].labels.tolist() == [2, 0, 2] and torch.equal(back[0].masks, masks)
    assert len(back[1]) == 0


@pytest.mark.parametrize("direction", ["horizontal", "vertical", "diagonal"])
def test_flipped_input_gives_the_mirrored_masks(mask_rcnn_pair, direction):
    """A test-time flip: predicting a flipped input whose meta says so gives the detections of
    the same input taken as unflipped, mirrored back -- boxes and masks (the RoIs are taken in
    the flipped input, the pasted masks mirrored back)."""
    from detlab.structures import flip_boxes

    _, ours = mask_rcnn_pair
    images = torch.randn(1, 3, HEIGHT, WIDTH, generator=torch.Generator().manual_seed(2))
    meta = _metas()[0]
    (plain,) = ours.predict(Batch(images, [{}], [meta]), rescale=True)
    (flipped,) = ours.predict(Batch(images, [{}], [dict(meta, flip=True,
                                                        flip_direction=direction)]),
                              rescale=True)
    assert len(plain) == len(flipped) > 5
    torch.testing.assert_close(flipped.boxes, flip_boxes(plain.boxes, meta["ori_shape"],
                                                         direction), rtol=0, atol=1e-3)
    dims = {"horizontal": (-1,), "vertical": (-2,), "diagonal": (-2, -1)}[direction]
    mirrored = plain.masks.flip(dims)
    assert mirrored.any()
    assert (flipped.masks != mirrored).float().mean() < 1e-3
