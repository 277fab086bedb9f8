"""LAD (Nguyen et al., 2022, "Improving Object Detection by Label Assignment Distillation"): a
student PAA-like detector trained on the label assignment of a frozen teacher.

The teacher's parts are given inline (``teacher_backbone``, ``teacher_neck``,
``teacher_bbox_head``) and held outside the module tree, as in
:class:`~detlab.models.detectors.kd_one_stage.KnowledgeDistillationSingleStageDetector`
(MMDetection 2.28's layout: the teacher is not in the student's ``state_dict``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from detlab.config import ConfigError
from detlab.models.detectors.kd_one_stage import TeacherMixin, load_teacher_checkpoint
from detlab.models.detectors.single_stage import SingleStageDetector
from detlab.registry import MODELS
from detlab.structures import Batch


@MODELS.register_module()
class LAD(TeacherMixin, SingleStageDetector):
    """LAD: a student (backbone, neck, :class:`~detlab.models.heads.lad_head.LADHead`) and a
    teacher of the same kind whose PAA assignment the student learns from.

    Args:
        teacher_backbone, teacher_neck, teacher_bbox_head: the teacher's parts (its head gets
            the detector's ``train_cfg`` and ``test_cfg``; it must have ``label_assignment``,
            e.g. ``LADHead``).
        teacher_ckpt: the teacher's checkpoint (keys ``backbone.``, ``neck.``, ``bbox_head.``,
            e.g. a PAA checkpoint), loaded at build time; None builds the teacher without
            weights.
        eval_teacher: keep the teacher in eval mode while the student trains.
        Others as :class:`SingleStageDetector`.
    """

    def __init__(self, backbone: Mapping | nn.Module,
                 neck: Mapping | Sequence[Mapping] | nn.Module | None,
                 bbox_head: Mapping | nn.Module, teacher_backbone: Mapping | nn.Module,
                 teacher_neck: Mapping | Sequence[Mapping] | nn.Module | None,
                 teacher_bbox_head: Mapping | nn.Module,
                 teacher_ckpt: str | os.PathLike | None, eval_teacher: bool = True,
                 train_cfg: Mapping | None = None, test_cfg: Mapping | None = None,
                 pretrained: str | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__(backbone=backbone, neck=neck, bbox_head=bbox_head, train_cfg=train_cfg,
                         test_cfg=test_cfg, pretrained=pretrained, init_cfg=init_cfg)
        self.eval_teacher = bool(eval_teacher)
        self.teacher_model = SingleStageDetector(teacher_backbone, teacher_neck,
                                                 teacher_bbox_head, train_cfg=train_cfg,
                                                 test_cfg=test_cfg)
        teacher_head = self.teacher_model.bbox_head
        if not callable(getattr(teacher_head, "label_assignment", None)):
            raise ConfigError(f"model.teacher_bbox_head ({type(teacher_head).__name__}) gives "
                              f"no label assignment; use type='LADHead'")
        if teacher_ckpt is not None:
            load_teacher_checkpoint(self.teacher_model, teacher_ckpt)
        self.teacher_model.train(False if self.eval_teacher else self.training)

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The student's losses on the teacher's label assignment (the teacher runs without
        gradients)."""
        with torch.no_grad():
            teacher_raw = self.teacher_model(batch.images)
            assignment = self.teacher_model.bbox_head.label_assignment(
                teacher_raw, batch.targets, batch.metas)
        raw = self.forward(batch.images)
        return self.bbox_head.loss(raw, batch.targets, batch.metas, assignment=assignment)
