"""The assignment inspector: its positives are the assigner's, unmatched ground truths are
reported, and the plot draws."""

import pytest
import torch
from conftest import QUICKSTART, REPO

import detlab
from detlab.notebooks import quickstart_overrides
from detlab.structures import Batch
from detlab.viz.assigners import (
    inspect_assignment,
    output_shapes,
    parameter_table,
    plot_assignment,
    positives_per_gt,
    small_model_overrides,
)


def small_model(name, **options):
    cfg = detlab.Config.fromfile(str(REPO / "configs" / name))
    cfg.merge_from_dict({**small_model_overrides(cfg), **options})
    torch.manual_seed(0)
    return detlab.build_model(cfg)


@pytest.fixture(scope="module")
def batch(tmp_path_factory):
    """One 128-pixel shapes image, not flipped, with its ground truth."""
    from detlab.data.loader import collate

    root = str(tmp_path_factory.mktemp("shapes"))
    detlab.make_shapes_dataset(root, num_train=3, num_val=1, image_size=128, seed=1)
    cfg = detlab.Config.fromfile(str(QUICKSTART))
    cfg.merge_from_dict({**quickstart_overrides(cfg, root, 128),
                         "data.train.pipeline.3.flip_ratio": 0.0})
    return collate([detlab.build_dataset(cfg.data.train)[0]])


def direct_positives(model, batch):
    """(prior index, gt index) of the positives the head's assigner gives, called directly."""
    head = model.bbox_head
    with torch.no_grad():
        raw = model.eval()(batch.images)
    priors = head.get_priors(raw[0], batch.metas)
    [gt] = head.ground_truths(batch.targets, batch.metas, 1, batch.images.device)
    valid = priors.valid[0]
    idx = torch.nonzero(valid).squeeze(1)
    counts = [int(f.sum()) for f in valid.split(priors.num_level)]
    sample = head.assign_per_image(priors.priors[idx], gt, num_level_priors=counts)
    return sorted(zip(idx[sample.pos_inds].tolist(), sample.pos_assigned_gt_inds.tolist(),
                      strict=True))


@pytest.mark.parametrize("name", ["retinanet/retinanet_r50_fpn_1x_coco.py",
                                  "atss/atss_r50_fpn_1x_coco.py"])
def test_positives_are_the_assigners(name, batch):
    model = small_model(name)
    frame = inspect_assignment(model, batch)
    positives = frame[frame["prior"] >= 0]
    expected = direct_positives(model, batch)
    assert len(positives) == len(expected) > 0
    assert sorted(zip(positives["prior"], positives["gt"], strict=True)) == expected
    assert (positives["iou"] > 0).all() and positives["level"].between(0, 4).all()
    assert frame.attrs["num_gts"] == len(batch.targets[0]["boxes"])
    # the prior boxes are the head's anchors
    priors = model.bbox_head.get_priors(model(batch.images)[0], batch.metas).priors
    boxes = positives[["prior_x1", "prior_y1", "prior_x2", "prior_y2"]].to_numpy()
    assert torch.allclose(priors[torch.as_tensor(positives["prior"].to_numpy().copy())],
                          torch.as_tensor(boxes, dtype=torch.float32))


def test_atss_gives_every_ground_truth_positives(batch):
    frame = inspect_assignment(small_model("atss/atss_r50_fpn_1x_coco.py"), batch)
    assert all(n > 0 for n in positives_per_gt(frame).values())


@pytest.mark.parametrize("name,assigner", [("yolox/yolox_s_8x8_300e_coco.py", "SimOTAAssigner"),
                                           ("tood/tood_r50_fpn_1x_coco.py",
                                            "TaskAlignedAssigner")])
def test_prediction_based_assigners(name, assigner, batch):
    model = small_model(name)
    if hasattr(model.bbox_head, "set_epoch"):
        model.bbox_head.set_epoch(model.bbox_head.initial_epoch)
    frame = inspect_assignment(model, batch)
    assert frame.attrs["assigner"] == assigner and (frame["prior"] >= 0).any()
    assert frame["max_overlap"].notna().all() or (frame["prior"] < 0).any()


def test_a_ground_truth_without_positives_is_reported(batch):
    # a 2-pixel box overlaps no anchor by min_pos_iou: no positive prior
    model = small_model("retinanet/retinanet_r50_fpn_1x_coco.py",
                        **{"model.train_cfg.assigner.min_pos_iou": 0.3})
    target = batch.targets[0]
    boxes = torch.cat([target["boxes"], torch.tensor([[2.0, 2.0, 4.0, 4.0]])])
    labels = torch.cat([target["labels"], torch.tensor([1])])
    tiny = Batch(batch.images, [dict(target, boxes=boxes, labels=labels)], batch.metas)
    frame = inspect_assignment(model, tiny)
    missing = frame[frame["prior"] < 0]
    assert missing["gt"].tolist() == [len(boxes) - 1] and missing["gt_label"].tolist() == [1]
    assert positives_per_gt(frame)[len(boxes) - 1] == 0


def test_plot_and_tables(batch):
    import matplotlib

    matplotlib.use("Agg")
    model = small_model("atss/atss_r50_fpn_1x_coco.py")
    frame = inspect_assignment(model, batch)
    fig = plot_assignment(frame, batch.images[0])
    assert isinstance(fig, matplotlib.figure.Figure)
    assert any(t.get_text().startswith("level") for t in fig.axes[0].get_legend().get_texts())
    shapes = output_shapes(model, 128)
    assert len(shapes) == 5 and shapes["output_0"][0] == (1, 3, 16, 16)
    table = parameter_table(model)
    assert table["module"].tolist() == ["backbone", "neck", "bbox_head"]
    assert table["parameters"].sum() == sum(p.numel() for p in model.parameters())


def own_training_positives(model, batch):
    """(prior index, gt index) of the positives the head's own training targets give, from
    the same (evaluation-mode) outputs the inspector reads: YOLOX's SimOTA targets, TOOD's
    task-aligned targets."""
    from detlab.models.heads.postprocess import levels_to_rows
    from detlab.models.heads.yolox_head import decode_yolox_boxes

    head = model.bbox_head
    with torch.no_grad():
        raw = model.eval()(batch.images)
    [gt] = head.ground_truths(batch.targets, batch.metas, 1, batch.images.device)
    if hasattr(head, "strided_priors"):
        cells = head.strided_priors(raw[0]).float()
        cls_rows, box_rows, obj_rows = head.flatten(raw)
        positive, *_ = head.targets_per_image(cells, cls_rows[0], obj_rows[0],
                                              decode_yolox_boxes(cells, box_rows)[0], gt)
    else:
        priors = head.get_priors(raw[0], batch.metas)
        cls_rows = levels_to_rows(raw[0], head.cls_out_channels).float()
        boxes = levels_to_rows(raw[1], 4).float() * head.row_strides(priors)[:, None]
        labels, *_ = head.aligned_targets(priors, batch.targets, batch.metas, cls_rows, boxes)
        positive = (labels[0] >= 0) & (labels[0] < head.num_classes)
    return sorted(torch.nonzero(positive).squeeze(1).tolist())


@pytest.mark.parametrize("name", ["yolox/yolox_s_8x8_300e_coco.py",
                                  "tood/tood_r50_fpn_1x_coco.py"])
def test_prediction_based_positives_are_the_heads_own(name, batch):
    """SimOTA and the task-aligned assigner see the model's predictions: the inspector's
    positives are the ones the head's own training targets take."""
    model = small_model(name)
    if hasattr(model.bbox_head, "set_epoch"):
        model.bbox_head.set_epoch(model.bbox_head.initial_epoch)
    frame = inspect_assignment(model, batch)
    positives = frame[frame["prior"] >= 0]
    assert sorted(positives["prior"].tolist()) == own_training_positives(model, batch) != []
