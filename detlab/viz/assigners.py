"""Look inside a dense detector: its parameters per module, its output shapes per level, and the
positive priors its assigner gives one image's ground truths.

- :func:`small_model_overrides`: dotted overrides that shrink a zoo config (ResNet-18 or a
  narrow CSPDarknet, few channels) so it runs on a CPU in a notebook;
- :func:`parameter_table` / :func:`output_shapes`: what the model holds and what it returns;
- :func:`inspect_assignment`: one row per positive prior (and one per ground truth left without
  any), through the head's own ``get_priors`` / ``ground_truths`` and its assigner, with the
  predictions the assigner needs (SimOTA, task-aligned) from the model's forward;
- :func:`plot_assignment`: the image, its ground truths and their positive priors.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

COLUMNS = ["gt", "gt_label", "gt_x1", "gt_y1", "gt_x2", "gt_y2", "prior", "level", "stride",
           "prior_x1", "prior_y1", "prior_x2", "prior_y2", "iou", "max_overlap", "assign_metric"]


# options of a ResNet-like backbone that a ResNet-18 has no use for (ResNeXt's groups, the
# deformable convs of stages a BasicBlock cannot take)
_RESNET_ONLY_BOTTLENECK = ("groups", "base_width", "dcn", "stage_with_dcn", "plugins",
                           "pretrained", "init_cfg")


def small_model_overrides(cfg: Any, channels: int = 64, num_classes: int = 3,
                          tiny_input: bool = False) -> dict[str, Any]:
    """Dotted overrides of ``cfg.model`` for a small model that runs on a CPU.

    The backbone shrinks where its family can: ResNet and ResNeXt become a ResNet-18 (same
    ``out_indices``, ``style``, ``norm_cfg``, frozen stages; no DCN, no pretrained weights),
    CSPDarknet a narrow and shallow one (``widen_factor = channels / 256``, ``deepen_factor
    0.33``). Other families (Darknet-53, SSDVGG, MobileNetV2, EfficientNet ...) have no smaller
    variant with the same outputs, so they are kept, without pretrained weights; use them with
    a small input instead. The neck and head get ``channels`` channels (a list of channels
    scaled from it where the module takes one per level), one stacked conv and
    ``num_classes`` classes.

    With ``tiny_input`` the model also takes inputs of 64 pixels: SSDNeck's unpadded 3x3
    levels (``level_paddings`` 0, which need a 3-pixel map) get padding 1.
    """
    model = cfg["model"]
    backbone, neck, head = model["backbone"], model.get("neck"), model.get("bbox_head")
    options: dict[str, Any] = {}
    in_channels: list[int] | None = None  # the shrunk backbone's output channels
    if backbone["type"] in ("ResNet", "ResNeXt"):
        kept = {k: v for k, v in backbone.items() if k not in _RESNET_ONLY_BOTTLENECK}
        options["model.backbone"] = dict(kept, _delete_=True, type="ResNet", depth=18,
                                         init_cfg=None)
        used = list(backbone.get("out_indices", (0, 1, 2, 3)))
        in_channels = [64 * 2 ** i for i in used]
    elif backbone["type"] == "TridentResNet":  # Bottlenecks only: kept, without its weights
        options["model.backbone.init_cfg"] = None
        in_channels = [256 * 2 ** i for i in backbone.get("out_indices", (2,))]
    elif backbone["type"] == "HRNet":  # same branches, one narrow module of one block each
        options["model.backbone.extra"] = _small_hrnet_extra(backbone["extra"], channels)
        options["model.backbone.init_cfg"] = None
        options["model.backbone.zero_init_residual"] = True
        in_channels = list(options["model.backbone.extra"]["stage4"]["num_channels"])
        if not backbone.get("multiscale_output", True):
            in_channels = in_channels[:1]
    elif backbone["type"] == "CSPDarknet":
        options.update({"model.backbone.widen_factor": channels / 256,
                        "model.backbone.deepen_factor": 0.33,
                        "model.backbone.init_cfg": None})
        in_channels = [channels, 2 * channels, 4 * channels]
    else:
        options["model.backbone.init_cfg"] = None
        if "pretrained" in backbone:
            options["model.backbone.pretrained"] = None
    level_channels = _neck_overrides(neck, in_channels, channels, tiny_input, options)
    _two_stage_overrides(model, level_channels[-1] if level_channels else channels, channels,
                         num_classes, options)
    if head is None:
        return options
    if "num_classes" in head:
        options["model.bbox_head.num_classes"] = num_classes
    if isinstance(head.get("in_channels"), (list, tuple)):
        options["model.bbox_head.in_channels"] = level_channels or list(head["in_channels"])
    elif "in_channels" in head:
        options["model.bbox_head.in_channels"] = channels
    if isinstance(head.get("out_channels"), (list, tuple)):  # YOLOv3's bridge convs
        options["model.bbox_head.out_channels"] = [2 * c for c in level_channels or
                                                   head["in_channels"]]
    if "feat_channels" in head:
        options["model.bbox_head.feat_channels"] = channels
    if "stacked_convs" in head:
        options["model.bbox_head.stacked_convs"] = 1
    _teacher_overrides(model, channels, num_classes, tiny_input, options)
    return options


def _two_stage_overrides(model: Any, in_channels: int, channels: int, num_classes: int,
                         options: dict[str, Any]) -> None:
    """A two-stage detector's heads: the RPN head (``in_channels``, ``feat_channels``) reads
    the neck's ``in_channels`` maps; the RoI head's extractors pool them (``out_channels``) and
    its box and mask heads (one or a list of each, as Cascade R-CNN's) get ``channels`` wide
    convs / fcs and ``num_classes`` classes."""
    rpn = model.get("rpn_head")
    if rpn is not None and "stages" in rpn:  # Cascade RPN: each stage reads the neck's maps
        options["model.rpn_head.stages"] = [
            dict(stage, in_channels=in_channels,
                 **({"feat_channels": channels} if "feat_channels" in stage else {}))
            for stage in rpn["stages"]]
    elif rpn is not None:
        options["model.rpn_head.in_channels"] = in_channels
        if "feat_channels" in rpn:
            options["model.rpn_head.feat_channels"] = channels
    roi = model.get("roi_head")
    if roi is None:
        return
    for key in ("bbox_roi_extractor", "mask_roi_extractor", "grid_roi_extractor",
                "semantic_roi_extractor"):
        extractors = roi.get(key)
        if isinstance(extractors, (list, tuple)):
            options[f"model.roi_head.{key}"] = [dict(e, out_channels=in_channels)
                                                for e in extractors]
        elif extractors is not None:
            options[f"model.roi_head.{key}.out_channels"] = in_channels
            if "output_channels" in extractors.get("roi_layer", {}):  # deformable RoI pooling
                options[f"model.roi_head.{key}.roi_layer.output_channels"] = in_channels
    if roi.get("semantic_head") is not None:  # HTC: semantic features added to RoI features
        options["model.roi_head.semantic_head.in_channels"] = in_channels
        options["model.roi_head.semantic_head.conv_out_channels"] = in_channels
    if roi.get("glbctx_head") is not None:  # SCNet: image context added to RoI features
        options["model.roi_head.glbctx_head.in_channels"] = in_channels
        options["model.roi_head.glbctx_head.conv_out_channels"] = in_channels
        options["model.roi_head.glbctx_head.num_classes"] = num_classes
    if roi.get("feat_relay_head") is not None:  # SCNet: box fc features relayed to masks
        options["model.roi_head.feat_relay_head.in_channels"] = channels
        options["model.roi_head.feat_relay_head.out_conv_channels"] = in_channels
    if roi.get("grid_head") is not None:  # Grid R-CNN: 9 points of 4 channels (GN of 36)
        options["model.roi_head.grid_head.in_channels"] = in_channels
        options["model.roi_head.grid_head.point_feat_channels"] = 4
    shared = roi.get("shared_head")
    if shared is not None:  # a ResLayer (C4 head) reads the maps: the box head reads its output
        options["model.roi_head.shared_head.init_cfg"] = None
        box_head = roi.get("bbox_head")
        extractor = roi.get("bbox_roi_extractor")
        if isinstance(box_head, Mapping) and box_head.get("with_avg_pool") \
                and isinstance(extractor, Mapping):
            # the full-width stage runs on every RoI: small RoIs (averaged anyway), few of them
            options["model.roi_head.bbox_roi_extractor.roi_layer.output_size"] = 4
            options["model.roi_head.bbox_head.roi_feat_size"] = 2
            train, test = model.get("train_cfg") or {}, model.get("test_cfg") or {}
            if isinstance(train.get("rcnn"), Mapping) and "sampler" in train["rcnn"]:
                options["model.train_cfg.rcnn.sampler.num"] = 32
            if isinstance(train.get("rpn_proposal"), Mapping):
                options["model.train_cfg.rpn_proposal.max_per_img"] = 64
            if isinstance(test.get("rpn"), Mapping):
                options["model.test_cfg.rpn.max_per_img"] = 64
    for key in ("bbox_head", "mask_head", "mask_iou_head", "point_head"):
        heads = roi.get(key)
        if shared is not None and key == "bbox_head" and shared.get("type") == "ResLayer":
            expansion = 4 if shared.get("depth", 50) >= 50 else 1
            if heads is not None and not isinstance(heads, (list, tuple)):
                for name, value in _roi_part_overrides(
                        heads, 64 * 2 ** shared.get("stage", 3) * expansion, channels,
                        num_classes).items():
                    options[f"model.roi_head.{key}.{name}"] = value
                continue
        if isinstance(heads, (list, tuple)):
            options[f"model.roi_head.{key}"] = [
                dict(h, **_roi_part_overrides(h, in_channels, channels, num_classes))
                for h in heads]
        elif heads is not None:
            for name, value in _roi_part_overrides(heads, in_channels, channels,
                                                   num_classes).items():
                options[f"model.roi_head.{key}.{name}"] = value


def _roi_part_overrides(head: Any, in_channels: int, channels: int, num_classes: int
                        ) -> dict[str, Any]:
    """One RoI box or mask head made small: reads ``in_channels`` pooled channels, its convs and
    fcs ``channels`` wide, ``num_classes`` classes."""
    options: dict[str, Any] = {}
    if "in_channels" in head or head.get("type") in _ROI_HEADS_WITH_DEFAULT_WIDTH:
        options["in_channels"] = in_channels
    for key in ("conv_out_channels", "fc_out_channels", "fc_channels"):
        if key in head:
            options[key] = channels
    if "num_classes" in head:
        options["num_classes"] = num_classes
    if head.get("type") == "SABLHead":  # side-aware box head: both branches read the RoIs
        options.update(cls_in_channels=in_channels, reg_in_channels=in_channels,
                       reg_offset_out_channels=in_channels, reg_cls_out_channels=in_channels,
                       cls_out_channels=channels)
    return options


# RoI heads whose configs may leave in_channels at its default of 256
_ROI_HEADS_WITH_DEFAULT_WIDTH = ("FCNMaskHead", "Shared2FCBBoxHead", "Shared4Conv1FCBBoxHead",
                                 "ConvFCBBoxHead", "BBoxHead")


def _teacher_overrides(model: Any, channels: int, num_classes: int, tiny_input: bool,
                       options: dict[str, Any]) -> None:
    """Knowledge distillation (LD, LAD): the teacher shrinks as the student does (so that their
    outputs keep the same shapes) and builds without its checkpoint."""
    from detlab.config import Config

    if "teacher_ckpt" in model:
        options["model.teacher_ckpt"] = None
    teacher_config = model.get("teacher_config")
    if teacher_config is not None:
        if isinstance(teacher_config, str):
            from detlab.models.detectors.kd_one_stage import resolve_config_path

            teacher = Config.fromfile(resolve_config_path(teacher_config,
                                                          "model.teacher_config"))
        else:
            teacher = Config(dict(teacher_config))
        teacher.merge_from_dict(small_model_overrides(teacher, channels, num_classes,
                                                      tiny_input))
        options["model.teacher_config"] = dict(_delete_=True, model=teacher.to_dict()["model"])
    if "teacher_bbox_head" in model:  # LAD: the teacher's parts inline
        parts = dict(backbone=model["teacher_backbone"], neck=model.get("teacher_neck"),
                     bbox_head=model["teacher_bbox_head"])
        for key, value in small_model_overrides(dict(model=parts), channels, num_classes,
                                                tiny_input).items():
            options[key.replace("model.", "model.teacher_", 1)] = value


def _small_hrnet_extra(extra: Any, channels: int) -> dict[str, Any]:
    """HRNet stages with the config's branches, one module of one block per branch and widths
    ``channels / 4 * 2**i`` (BASIC blocks in stages 2-4, as every zoo config has)."""
    base = max(channels // 4, 4)
    small: dict[str, Any] = {"stage1": dict(num_modules=1, num_branches=1, block="BOTTLENECK",
                                            num_blocks=(1,), num_channels=(base,))}
    for s in (2, 3, 4):
        n = extra[f"stage{s}"]["num_branches"]
        small[f"stage{s}"] = dict(num_modules=1, num_branches=n, block="BASIC",
                                  num_blocks=(1,) * n,
                                  num_channels=tuple(base * 2**i for i in range(n)))
    return small


def _neck_overrides(neck: Any, in_channels: list[int] | None, channels: int, tiny_input: bool,
                    options: dict[str, Any]) -> list[int] | None:
    """Add the neck's overrides to ``options``; the channels of its levels when it has one
    entry per level (the head's ``in_channels`` then)."""
    if neck is None:
        return in_channels
    if isinstance(neck, (list, tuple)):  # necks in a row (Libra R-CNN's FPN + BFP)
        parts, levels, out = [], in_channels, None
        for part in neck:
            sub: dict[str, Any] = {}
            out = _neck_overrides(part, levels, channels, tiny_input, sub)
            parts.append(dict(part, **{k.removeprefix("model.neck."): v for k, v in sub.items()}))
            levels = out if out is not None else [channels]
        options["model.neck"] = parts
        return out
    if in_channels is not None and isinstance(neck.get("in_channels"), (list, tuple)):
        options["model.neck.in_channels"] = in_channels
    elif in_channels is not None and isinstance(neck.get("in_channels"), int):
        options["model.neck.in_channels"] = in_channels[-1]
    if "num_csp_blocks" in neck:
        options["model.neck.num_csp_blocks"] = 1
    out = neck.get("out_channels")
    if isinstance(out, int):
        options["model.neck.out_channels"] = channels
        return None
    if not isinstance(out, (list, tuple)):
        return None
    if neck["type"] == "SSDNeck":  # the backbone's levels pass through; the extra ones shrink
        fixed = list(neck["in_channels"])
        levels = fixed + [channels] * (len(out) - len(fixed))
        if tiny_input:
            options["model.neck.level_paddings"] = [1] * len(neck.get("level_paddings", ()))
    else:  # one width per level, halved level by level as the config's (YOLOv3)
        levels = [max(channels * c // out[0], 8) for c in out]
    options["model.neck.out_channels"] = levels
    return levels


def parameter_table(model: Any, depth: int = 1) -> pd.DataFrame:
    """Parameters of each module ``depth`` levels down (``backbone``, ``neck``, ``bbox_head``
    at 1): columns ``module``, ``parameters``, ``trainable``."""
    rows: dict[str, list[int]] = {}
    for name, param in model.named_parameters():
        key = ".".join(name.split(".")[:depth])
        counts = rows.setdefault(key, [0, 0])
        counts[0] += param.numel()
        counts[1] += param.numel() if param.requires_grad else 0
    return pd.DataFrame([(k, a, b) for k, (a, b) in rows.items()],
                        columns=["module", "parameters", "trainable"])


def output_shapes(model: Any, image_size: int | Sequence[int]) -> pd.DataFrame:
    """Shapes of the model's raw outputs for one zero image of ``image_size`` (side or ``(h,
    w)``): one row per level, one column per output (``output_0`` = classification, ...)."""
    import torch

    h, w = (image_size, image_size) if isinstance(image_size, int) else image_size
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            raw = model(torch.zeros(1, 3, h, w))
    finally:
        model.train(was_training)
    frame = pd.DataFrame({f"output_{i}": [tuple(m.shape) for m in maps]
                          for i, maps in enumerate(raw)})
    frame.insert(0, "level", range(len(frame)))
    return frame


def _model_and_dataset(cfg_or_model: Any, dataset: Any) -> tuple[Any, Any]:
    import detlab

    if hasattr(cfg_or_model, "bbox_head"):
        return cfg_or_model, dataset
    cfg = detlab.Config.fromfile(cfg_or_model) if isinstance(cfg_or_model, str) \
        else cfg_or_model
    model = detlab.build_model(cfg)
    if dataset is None:
        dataset = detlab.build_dataset(cfg["data"]["train"])
    return model, dataset


def _one_image_batch(item: Any, dataset: Any) -> Any:
    from detlab.data.loader import collate

    if isinstance(item, int):
        if dataset is None:
            raise ValueError("inspect_assignment needs a dataset (or a config with data.train) "
                             "to take an image index")
        return collate([dataset[item]])
    return item


def _assign(head: Any, raw: tuple, batch: Any) -> tuple[Any, Any, Any, list[int], Any]:
    """The assignment of the batch's first image: (assign result, ``(N, 4)`` xyxy priors or
    cells, indices of the assigned priors among all, per-level counts, ground truth)."""
    import torch

    from detlab.models.anchors import anchor_inside_flags
    from detlab.models.heads.postprocess import levels_to_rows

    meta = batch.metas[0]
    priors = head.get_priors(raw[0], batch.metas[:1])
    gt = head.ground_truths(batch.targets[:1], batch.metas[:1], 1, priors.priors.device)[0]
    if hasattr(head, "strided_priors"):  # YOLOX: SimOTA on the cells' centers
        from detlab.models.heads.yolox_head import decode_yolox_boxes

        cells = head.strided_priors(raw[0]).float()  # (N, 4) x, y, stride_w, stride_h
        cls_rows, box_rows, obj_rows = head.flatten(raw)
        scores = cls_rows[0].sigmoid() * obj_rows[0][:, None].sigmoid()
        centers = torch.cat([cells[:, :2] + cells[:, 2:] * 0.5, cells[:, 2:]], dim=-1)
        assign = head.assigner.assign(centers, gt.boxes, gt.boxes_ignore, gt.labels,
                                      pred_scores=scores,
                                      pred_bboxes=decode_yolox_boxes(cells, box_rows)[0])
        boxes = torch.cat([centers[:, :2] - cells[:, 2:] / 2, centers[:, :2] + cells[:, 2:] / 2],
                          dim=1)
        return assign, boxes, torch.arange(len(cells)), priors.num_level, gt
    anchors = priors.priors
    inside = anchor_inside_flags(anchors, priors.valid[0], meta["img_shape"],
                                 head.train_cfg.get("allowed_border", -1))
    idx = torch.nonzero(inside).squeeze(1)
    if getattr(head, "alignment_assigner", None) is not None and not head.initial_phase:
        cls_rows = levels_to_rows(raw[0], head.cls_out_channels).float()[0]
        boxes = levels_to_rows(raw[1], 4).float()[0] * head.row_strides(priors)[:, None]
        assign = head.alignment_assigner.assign(anchors[idx], gt.boxes, gt.boxes_ignore,
                                                gt.labels, pred_scores=cls_rows[idx],
                                                pred_bboxes=boxes[idx])
        return assign, anchors, idx, priors.num_level, gt
    head.check_trainable()
    counts = torch.stack([f.sum() for f in inside.split(priors.num_level)]).tolist()
    assign = head.assigner.assign(anchors[idx], gt.boxes, gt.boxes_ignore,
                                  None if head.sampling else gt.labels, num_level_priors=counts)
    return assign, anchors, idx, priors.num_level, gt


def _rows(assign: Any, boxes: Any, idx: Any, num_level: Sequence[int], strides: Sequence[int],
          gt: Any) -> pd.DataFrame:
    import torch
    from torchvision.ops import box_iou

    pos = torch.nonzero(assign.gt_inds > 0).squeeze(1)  # among the assigned priors
    prior = idx[pos]
    gt_index = assign.gt_inds[pos] - 1
    level = torch.bucketize(prior, torch.tensor(num_level).cumsum(0), right=True)
    prior_boxes, gt_boxes = boxes[prior], gt.boxes[gt_index]
    iou = box_iou(prior_boxes, gt_boxes).diagonal() if len(prior) else prior_boxes.new_zeros(0)
    columns = {"gt": gt_index, "gt_label": gt.labels[gt_index], "prior": prior,
               "level": level, "stride": torch.tensor(strides)[level], "iou": iou}
    for i, side in enumerate(("x1", "y1", "x2", "y2")):
        columns[f"gt_{side}"], columns[f"prior_{side}"] = gt_boxes[:, i], prior_boxes[:, i]
    for name in ("max_overlaps", "assign_metrics"):
        values = getattr(assign, name)
        key = "max_overlap" if name == "max_overlaps" else "assign_metric"
        columns[key] = values[pos] if values is not None else torch.full((len(pos),), float("nan"))
    return pd.DataFrame({k: v.detach().cpu().numpy() for k, v in columns.items()})[COLUMNS]


def _unmatched_rows(frame: pd.DataFrame, gt: Any) -> pd.DataFrame:
    """A row (no prior: ``prior = -1``, NaN prior columns) for each ground truth without a
    positive prior."""
    missing = sorted(set(range(len(gt.boxes))) - set(frame["gt"].tolist()))
    rows = [dict(gt=g, gt_label=int(gt.labels[g]), prior=-1, level=-1, stride=-1,
                 **dict(zip(("gt_x1", "gt_y1", "gt_x2", "gt_y2"),
                            gt.boxes[g].tolist(), strict=True))) for g in missing]
    return pd.DataFrame(rows, columns=COLUMNS)


def inspect_assignment(cfg_or_model: Any, image_index_or_batch: int | Any,
                       dataset: Any = None) -> pd.DataFrame:
    """The assignment of one image's priors to its ground truths by the model's dense head.

    Args:
        cfg_or_model: a built single-stage detector, or a config (object or file) to build one
            (and, without ``dataset``, its ``data.train``).
        image_index_or_batch: an index into ``dataset``, or a :class:`~detlab.structures.Batch`
            (its first image is inspected).
        dataset: the dataset the index reads (a training pipeline: boxes and labels loaded).

    Returns:
        One row per positive prior: ``gt`` (index), ``gt_label``, the gt box ``gt_x1..gt_y2``
        (xyxy, input pixels), ``prior`` (index among all priors, levels in order), ``level``,
        ``stride``, the prior box ``prior_x1..prior_y2`` (xyxy anchor; for point priors the
        stride-sized cell around the point), ``iou`` (prior box with its gt), ``max_overlap``
        and ``assign_metric`` (the assigner's own numbers, NaN when it has none); then one row
        with ``prior = -1`` for each ground truth left without a positive prior. Its
        ``attrs`` hold ``num_gts``, ``num_priors``, ``assigner`` (the class name) and
        ``strides`` (of the levels).
    """
    import torch

    model, dataset = _model_and_dataset(cfg_or_model, dataset)
    batch = _one_image_batch(image_index_or_batch, dataset)
    head, was_training = model.bbox_head, model.training
    model.eval()
    try:
        with torch.no_grad():
            raw = model(batch.images[:1])
            assign, boxes, idx, num_level, gt = _assign(head, raw, batch)
    finally:
        model.train(was_training)
    strides = [int(s[0]) for s in head.prior_generator.strides]
    frame = _rows(assign, boxes, idx, num_level, strides, gt)
    unmatched = _unmatched_rows(frame, gt)
    frame = pd.concat([frame, unmatched], ignore_index=True) if len(unmatched) else frame
    frame.attrs.update(num_gts=len(gt.boxes), num_priors=int(sum(num_level)),
                       assigner=type(_assigner_of(head)).__name__, strides=strides)
    return frame


def _assigner_of(head: Any) -> Any:
    if getattr(head, "alignment_assigner", None) is not None and not head.initial_phase:
        return head.alignment_assigner
    return head.assigner


def positives_per_gt(frame: pd.DataFrame) -> dict[int, int]:
    """Number of positive priors of each ground truth of an :func:`inspect_assignment` frame
    (0 for those without any)."""
    positives = frame[frame["prior"] >= 0]
    counts = positives.groupby("gt").size()
    return {int(g): int(counts.get(g, 0)) for g in sorted(frame["gt"].unique())}


def plot_assignment(frame: pd.DataFrame, image: Any, ax: Any = None, title: str | None = None):
    """Draw ``image`` (``(H, W, 3)`` array, or a ``(3, H, W)`` tensor, shown min-max scaled),
    the ground truths of ``frame`` (:func:`inspect_assignment`) as thick boxes and their
    positive priors as thin boxes of the same colour, one line style per level (the legend);
    the figure."""
    import matplotlib.pyplot as plt
    import numpy as np

    if ax is None:
        _, ax = plt.subplots(figsize=(5, 5))
    img = image.detach().cpu().numpy().transpose(1, 2, 0) if hasattr(image, "detach") \
        else np.asarray(image)
    img = img.astype(float)
    ax.imshow((img - img.min()) / max(float(np.ptp(img)), 1e-6))
    colors = plt.get_cmap("tab10")
    styles = ["-", "--", ":", "-.", (0, (1, 3))]
    for g, rows in frame.groupby("gt"):
        color = colors(int(g) % 10)
        x1, y1, x2, y2 = rows.iloc[0][["gt_x1", "gt_y1", "gt_x2", "gt_y2"]]
        ax.add_patch(plt.Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, color=color, lw=2.5))
        for _, r in rows[rows["prior"] >= 0].iterrows():
            ax.add_patch(plt.Rectangle((r.prior_x1, r.prior_y1), r.prior_x2 - r.prior_x1,
                                       r.prior_y2 - r.prior_y1, fill=False, color=color, lw=0.8,
                                       ls=styles[int(r.level) % len(styles)]))
    for level in sorted(int(v) for v in frame.loc[frame["prior"] >= 0, "level"].unique()):
        stride = int(frame.loc[frame["level"] == level, "stride"].iloc[0])
        ax.plot([], [], color="gray", ls=styles[level % len(styles)],
                label=f"level {level} (stride {stride})")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper right", fontsize=7)
    ax.set_title(title or frame.attrs.get("assigner", ""))
    ax.set_axis_off()
    return ax.figure
