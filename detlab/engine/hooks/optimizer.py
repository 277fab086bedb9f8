"""The optimizer step (``optimizer_config``): backward, gradient clipping, step."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from detlab.engine.hooks.base import Hook
from detlab.registry import HOOKS

if TYPE_CHECKING:
    from detlab.engine.trainer import Trainer


def non_finite_loss_message(trainer: Trainer) -> str:
    """What to say when the loss of the current iteration is not finite."""
    log_vars = trainer.outputs["log_vars"]
    values = ", ".join(f"{k}={v:.4g}" for k, v in log_vars.items())
    return (f"the loss became {log_vars['loss']} at epoch {trainer.epoch + 1}, iteration "
            f"{trainer.inner_iter + 1} ({values}); lower optimizer.lr, lengthen the warmup or set "
            f"optimizer_config.grad_clip=dict(max_norm=35, norm_type=2)")


def check_finite_loss(trainer: Trainer) -> None:
    """Stop before a non-finite loss reaches the weights (and so a checkpoint)."""
    loss = trainer.outputs["loss"]
    if not torch.isfinite(loss.detach()).all():
        raise FloatingPointError(non_finite_loss_message(trainer))


@HOOKS.register_module()
class OptimizerHook(Hook):
    """Backward, optional gradient clipping (``grad_clip=dict(max_norm, norm_type)``) and the
    optimizer step. A non-finite loss stops the run before the step, with advice."""

    priority = "ABOVE_NORMAL"

    def __init__(self, grad_clip: dict | None = None) -> None:
        self.grad_clip = grad_clip

    def clip_grads(self, trainer: Trainer) -> None:
        if self.grad_clip is None:
            return
        params = [p for p in trainer.model.parameters() if p.requires_grad and p.grad is not None]
        if params:
            norm = torch.nn.utils.clip_grad_norm_(params, **self.grad_clip)
            trainer.log_buffer["grad_norm"].append(float(norm))

    def after_train_iter(self, trainer: Trainer) -> None:
        check_finite_loss(trainer)
        trainer.optimizer.zero_grad(set_to_none=True)
        trainer.outputs["loss"].backward()
        self.clip_grads(trainer)
        trainer.optimizer.step()


def build_optimizer_hook(optimizer_config: Mapping[str, Any] | None,
                         fp16: Mapping[str, Any] | None = None) -> Hook:
    """The optimizer hook a config's ``optimizer_config`` (and ``fp16``) describe."""
    cfg = dict(optimizer_config or {})
    cfg.setdefault("type", "OptimizerHook")
    return HOOKS.build(cfg, _path="optimizer_config")
