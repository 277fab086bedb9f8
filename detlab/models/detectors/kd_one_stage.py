"""Knowledge distillation for single-stage detectors (Hinton et al., 2015; LD, Zheng et al.,
2022): a student detector trained with the outputs of a frozen teacher detector.

As in MMDetection 2.28, the teacher is held as a plain attribute, not a submodule: it is not in
the student's ``state_dict``, ``parameters()`` or ``modules()`` (a checkpoint of the student
holds the student only, and the optimizer never sees the teacher). detlab also moves it with
the student (``.to()``, ``.cuda()``, ``.half()`` ...), which MMDetection does only for
``.cuda()``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from detlab.checkpoint import CheckpointLoadError, CheckpointNotFoundError, load_checkpoint
from detlab.config import Config, ConfigError
from detlab.models.detectors.single_stage import SingleStageDetector
from detlab.registry import MODELS
from detlab.structures import Batch

REPO_ROOT = Path(__file__).resolve().parents[3]


def resolve_config_path(path: str | os.PathLike, key: str) -> Path:
    """``path`` as given (from the current directory), else from its parent folders upward,
    else from detlab's repository (whose ``configs/`` the zoo's relative paths name)."""
    given = Path(os.path.expanduser(os.fspath(path)))
    if given.is_file():
        return given
    if not given.is_absolute():
        folder = Path.cwd().resolve()
        for candidate in [*(f / given for f in (folder, *folder.parents)), REPO_ROOT / given]:
            if candidate.is_file():
                return candidate
    raise ConfigError(f"{key}={os.fspath(path)!r}: no such config file (looked from the current "
                      f"directory upward and in {REPO_ROOT}); give the teacher's config path")


def load_teacher_checkpoint(teacher: nn.Module, checkpoint: str | os.PathLike,
                            key: str = "model.teacher_ckpt") -> None:
    """Load the teacher's weights at build time (as MMDetection does), with an error that names
    the config key when the file is missing or unreadable."""
    hint = (f"download the teacher's weights and set {key} to the file, or set {key}=None to "
            f"build the model without them (the teacher then keeps random weights)")
    try:
        load_checkpoint(teacher, checkpoint, map_location="cpu")
    except CheckpointNotFoundError as err:
        raise CheckpointNotFoundError(f"{key}={os.fspath(checkpoint)!r}: the teacher's "
                                      f"checkpoint does not exist; {hint}") from err
    except CheckpointLoadError as err:
        raise CheckpointLoadError(f"{key}={os.fspath(checkpoint)!r}: could not load the "
                                  f"teacher's checkpoint ({err.__cause__ or err}); {hint}"
                                  ) from err


class TeacherMixin:
    """Keeps ``teacher_model`` outside the module tree, in eval mode (``eval_teacher``) and on
    the student's device and dtype."""

    teacher_model: nn.Module
    eval_teacher: bool

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "teacher_model":  # a plain attribute: not a submodule (MMDetection's layout)
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    def _apply(self, fn: Callable, *args: Any, **kwargs: Any) -> Any:
        teacher = self.__dict__.get("teacher_model")
        if teacher is not None:
            teacher._apply(fn, *args, **kwargs)
        return super()._apply(fn, *args, **kwargs)

    def train(self, mode: bool = True) -> Any:
        """The student's mode; the teacher stays in eval mode unless ``eval_teacher=False``."""
        teacher = self.__dict__.get("teacher_model")
        if teacher is not None:
            teacher.train(False if self.eval_teacher else mode)
        return super().train(mode)


@MODELS.register_module()
class KnowledgeDistillationSingleStageDetector(TeacherMixin, SingleStageDetector):
    """A single-stage student (backbone, neck, head) and a teacher detector built from its own
    config file; the head's loss takes the teacher's raw outputs (LD: the teacher's box
    distributions, :class:`~detlab.models.heads.ld_head.LDHead`).

    Args:
        teacher_config: the teacher's config file (its ``model`` is built) or a config /
            mapping with a ``model`` key. A relative path is looked up from the current
            directory upward, then in detlab's repository (the zoo names
            ``configs/gfl/...``).
        teacher_ckpt: the teacher's checkpoint (file or URL), loaded at build time; None
            builds the teacher without weights.
        eval_teacher: keep the teacher in eval mode while the student trains.
        Others as :class:`SingleStageDetector`.
    """

    def __init__(self, backbone: Mapping | nn.Module,
                 neck: Mapping | Sequence[Mapping] | nn.Module | None,
                 bbox_head: Mapping | nn.Module, teacher_config: str | os.PathLike | Mapping,
                 teacher_ckpt: str | os.PathLike | None = None, eval_teacher: bool = True,
                 train_cfg: Mapping | None = None, test_cfg: Mapping | None = None,
                 pretrained: str | None = None,
                 init_cfg: Mapping | Sequence[Mapping] | None = None) -> None:
        super().__init__(backbone=backbone, neck=neck, bbox_head=bbox_head, train_cfg=train_cfg,
                         test_cfg=test_cfg, pretrained=pretrained, init_cfg=init_cfg)
        self.eval_teacher = bool(eval_teacher)
        if isinstance(teacher_config, (str, os.PathLike)):
            teacher_config = Config.fromfile(
                resolve_config_path(teacher_config, "model.teacher_config"))
        if not isinstance(teacher_config, Mapping) and not hasattr(teacher_config, "model"):
            raise ConfigError(f"model.teacher_config is a config file path or a config with a "
                              f"model, got {type(teacher_config).__name__}")
        teacher_model = teacher_config["model"] if "model" in teacher_config else None
        if teacher_model is None:
            raise ConfigError("model.teacher_config has no model: give the teacher's whole "
                              "config (its file path, or a dict with model=dict(...))")
        self.teacher_model = MODELS.build(teacher_model)
        if teacher_ckpt is not None:
            load_teacher_checkpoint(self.teacher_model, teacher_ckpt)
        self.teacher_model.train(False if self.eval_teacher else self.training)

    def loss(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The head's losses with the teacher's regression maps as ``soft_targets`` (the
        teacher runs without gradients)."""
        raw = self.forward(batch.images)
        with torch.no_grad():
            teacher_raw = self.teacher_model(batch.images)
        return self.bbox_head.loss(raw, batch.targets, batch.metas, soft_targets=teacher_raw[1])
