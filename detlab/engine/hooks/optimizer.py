"""The optimizer step (``optimizer_config``, ``fp16``): backward, gradient clipping and the step;
gradient accumulation; mixed precision with a loss scaler. mmcv 1.7's hooks, under its names:

- ``OptimizerHook(grad_clip=None, detect_anomalous_params=False)``
- ``GradientCumulativeOptimizerHook(cumulative_iters=1, ...)``: a step every ``cumulative_iters``
  iterations, each loss divided by ``cumulative_iters``.
- ``Fp16OptimizerHook(grad_clip=None, coalesce=True, bucket_size_mb=-1, loss_scale=512.,
  distributed=True)`` and ``GradientCumulativeFp16OptimizerHook``: the forward under
  ``torch.autocast`` and a ``torch.amp.GradScaler``.

A config does not usually name the float16 hooks: as in MMDetection 2.28, ``fp16=dict(
loss_scale=...)`` next to ``optimizer_config`` turns the configured hook into its float16 version
(:func:`build_optimizer_hook`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from detlab.config import DELETE_KEY, ConfigError, did_you_mean
from detlab.engine.hooks.base import Hook
from detlab.registry import HOOKS, check_arguments

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


def parameters_outside_graph(loss: torch.Tensor, model: nn.Module) -> list[str]:
    """Names of the trainable parameters ``loss`` does not depend on: unused in the forward, or
    used for outputs that no loss reads (mmcv's ``detect_anomalous_params``)."""
    in_graph: set[int] = set()
    seen: set[Any] = set()
    stack = [loss.grad_fn]
    while stack:  # a loop, not recursion: a detector's graph is deeper than Python's stack
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        variable = getattr(fn, "variable", None)  # AccumulateGrad nodes hold the leaf
        if variable is not None:
            in_graph.add(id(variable))
        stack.extend(parent for parent, _ in fn.next_functions)
    return [name for name, p in model.named_parameters()
            if p.requires_grad and id(p) not in in_graph]


# ---- mixed precision -----------------------------------------------------------------------

LOSS_SCALE_KEYS = ("init_scale", "growth_factor", "backoff_factor", "growth_interval")
AMP_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def grad_scaler_args(loss_scale: float | str | Mapping[str, Any]) -> tuple[dict[str, Any],
                                                                          float | None]:
    """The ``torch.amp.GradScaler`` arguments mmcv 1.7 passes for ``loss_scale``, and the static
    scale to set back after every step (None: the scale is dynamic).

    ``'dynamic'``: GradScaler's defaults (``init_scale=2.**16``, doubled after 2000 finite
    steps, halved after an overflow); a number: that scale, kept for the whole run; a dict: the
    GradScaler arguments it holds (``init_scale``, ``growth_factor``, ``backoff_factor``,
    ``growth_interval``).
    """
    if loss_scale == "dynamic":
        return {}, None
    if isinstance(loss_scale, (int, float)) and not isinstance(loss_scale, bool):
        if loss_scale <= 0:
            raise ConfigError(f"fp16.loss_scale must be positive, got {loss_scale!r}")
        return {"init_scale": float(loss_scale)}, float(loss_scale)
    if isinstance(loss_scale, Mapping):
        args = {k: v for k, v in loss_scale.items() if k != DELETE_KEY}
        for key in args:
            if key not in LOSS_SCALE_KEYS:
                raise ConfigError(f"fp16.loss_scale has no key {key!r}."
                                  f"{did_you_mean(key, LOSS_SCALE_KEYS)} A dict loss_scale "
                                  f"holds GradScaler's {', '.join(LOSS_SCALE_KEYS)}.")
        return args, None
    hint = did_you_mean(loss_scale, ["dynamic"]) if isinstance(loss_scale, str) else ""
    raise ConfigError(f"fp16.loss_scale must be a number (a static scale), 'dynamic' or a dict "
                      f"of {', '.join(LOSS_SCALE_KEYS)}, got {loss_scale!r}.{hint}")


def found_non_finite_grads(scaler: torch.amp.GradScaler,
                           optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``scaler.unscale_(optimizer)`` (already called) found inf or NaN gradients, the
    very test ``scaler.step`` makes to skip the step. GradScaler has no public accessor."""
    found = scaler._found_inf_per_device(optimizer)
    return bool(sum(v.item() for v in found.values()))


def _default_scaler_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


class MixedPrecision:
    """What ``fp16`` asks for: the autocast dtype and the loss scaler, and the bookkeeping of
    the steps the scaler skips. Used by the float16 optimizer hooks.

    Args:
        loss_scale: see :func:`grad_scaler_args`.
        dtype: ``'float16'`` (with loss scaling) or ``'bfloat16'`` (no scaling needed).
        device: the device type to run float16 on; None follows the trainer's device, where a
            CPU falls back to float32 (float16 trains poorly on CPUs); ``'cpu'`` runs float16
            autocast and the scaler on the CPU anyway (slow: meant for tests).
    """

    def __init__(self, loss_scale: float | str | Mapping[str, Any], dtype: str = "float16",
                 device: str | None = None) -> None:
        if dtype not in AMP_DTYPES:
            raise ConfigError(f"fp16.dtype must be 'float16' or 'bfloat16', got {dtype!r}."
                              f"{did_you_mean(str(dtype), AMP_DTYPES)}")
        if device == "cuda" and not torch.cuda.is_available():
            raise ConfigError("fp16.device is 'cuda' but CUDA is not available; remove "
                              "fp16.device to follow the trainer's device")
        self.dtype, self.device = dtype, device
        self.scaler_args, self.static_scale = grad_scaler_args(loss_scale)
        self.scaler_device = device or _default_scaler_device()
        self.scaler = torch.amp.GradScaler(self.scaler_device, **self.scaler_args)
        self.scaling = False  # decided by start(), from the trainer's device
        self.skipped_steps = 0

    def start(self, trainer: Trainer) -> None:
        """Set ``trainer.autocast_dtype`` and whether the loss is scaled, for the trainer's
        device."""
        device_type = trainer.device.type
        if self.device is not None and self.device != device_type:
            raise ConfigError(f"fp16.device is {self.device!r} but the model trains on "
                              f"{trainer.device}; remove fp16.device")
        if self.dtype == "bfloat16":
            trainer.autocast_dtype, self.scaling = torch.bfloat16, False
        elif device_type == "cuda" or self.device is not None:
            trainer.autocast_dtype, self.scaling = torch.float16, True
            self._move_scaler(device_type)
        else:
            trainer.autocast_dtype, self.scaling = None, False
            trainer.logger.warning(
                "fp16 asks for float16, which does not train well on a %s: training in "
                "float32. Set fp16=dict(dtype='bfloat16') for bfloat16 mixed precision on a "
                "CPU, or train on a GPU.", device_type)

    def _move_scaler(self, device_type: str) -> None:
        if device_type == self.scaler_device:
            return
        state = self.scaler.state_dict()
        self.scaler_device = device_type
        self.scaler = torch.amp.GradScaler(device_type, **self.scaler_args)
        if state:
            self.scaler.load_state_dict(state)

    def report_step(self, trainer: Trainer, skipped: bool, scale_before: float) -> None:
        """Log the scale and the count of skipped steps since the last log row; warn about a
        skipped step, with the iteration."""
        buffer = trainer.log_buffer
        scale = self.scaler.get_scale()
        buffer["loss_scale"].append(scale)
        # one value holding the count since the buffer was last emptied: the row shows the count
        count = buffer["skipped_steps"][0] if buffer.get("skipped_steps") else 0
        buffer["skipped_steps"] = [count + int(skipped)]
        if not skipped:
            return
        self.skipped_steps += 1
        change = (f"stays {scale:g} (static fp16.loss_scale)" if self.static_scale is not None
                  else f"goes from {scale_before:g} to {scale:g}")
        trainer.logger.warning(
            "iteration %d: the float16 loss (%s) or its gradients are not finite; the optimizer "
            "step is skipped and the loss scale %s (%d steps skipped so far). A few skips are "
            "normal while the scale settles; if they go on, lower optimizer.lr or set "
            "optimizer_config.grad_clip.", trainer.iter + 1, trainer.outputs["log_vars"]["loss"],
            change, self.skipped_steps)

    def state_dict(self) -> dict[str, Any]:
        return {"loss_scaler": self.scaler.state_dict(), "skipped_steps": self.skipped_steps}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("loss_scaler"):
            self.scaler.load_state_dict(state["loss_scaler"])
        self.skipped_steps = int(state.get("skipped_steps", 0))


# ---- the hooks -----------------------------------------------------------------------------


@HOOKS.register_module()
class OptimizerHook(Hook):
    """Backward, optional gradient clipping and the optimizer step, every iteration.

    A non-finite loss stops the run before the step, with advice (``FloatingPointError``).

    Args:
        grad_clip: ``dict(max_norm, norm_type=2)`` for ``clip_grad_norm_``; the norm before
            clipping is logged as ``grad_norm``.
        detect_anomalous_params: log (as errors) the trainable parameters the loss does not
            depend on; slow, for debugging.
    """

    priority = "ABOVE_NORMAL"
    amp: MixedPrecision | None = None  # set by the float16 versions

    def __init__(self, grad_clip: dict | None = None,
                 detect_anomalous_params: bool = False) -> None:
        self.grad_clip = grad_clip
        self.detect_anomalous_params = detect_anomalous_params

    @property
    def loss_scaler(self) -> torch.amp.GradScaler | None:
        """The GradScaler (mmcv's name), None without fp16."""
        return None if self.amp is None else self.amp.scaler

    def active_scaler(self) -> torch.amp.GradScaler | None:
        """The scaler when this run scales its loss (float16 autocast), else None."""
        return self.amp.scaler if self.amp is not None and self.amp.scaling else None

    def before_run(self, trainer: Trainer) -> None:
        if self.amp is not None:
            self.amp.start(trainer)

    def clip_grads(self, trainer: Trainer) -> None:
        if self.grad_clip is None:
            return
        params = [p for p in trainer.model.parameters() if p.requires_grad and p.grad is not None]
        if params:
            norm = torch.nn.utils.clip_grad_norm_(params, **self.grad_clip)
            trainer.log_buffer["grad_norm"].append(float(norm))

    def check_loss(self, trainer: Trainer) -> None:
        """Raise on a non-finite loss, unless a loss scaler is there to skip the step; log the
        parameters outside the graph when asked."""
        if self.active_scaler() is None:
            check_finite_loss(trainer)
        if self.detect_anomalous_params:
            for name in parameters_outside_graph(trainer.outputs["loss"], trainer.model):
                trainer.logger.error("%s is not in the computational graph of the loss", name)

    def backward(self, loss: torch.Tensor) -> None:
        scaler = self.active_scaler()
        (loss if scaler is None else scaler.scale(loss)).backward()

    def optimizer_step(self, trainer: Trainer) -> None:
        """Clip and step; with a loss scaler, unscale first and let it skip the step when the
        gradients are not finite (no clipping then: the norm would be NaN)."""
        scaler = self.active_scaler()
        if scaler is None:
            self.clip_grads(trainer)
            trainer.optimizer.step()
            return
        scaler.unscale_(trainer.optimizer)
        skipped = found_non_finite_grads(scaler, trainer.optimizer)
        scale_before = scaler.get_scale() if skipped else 0.0
        if not skipped:
            self.clip_grads(trainer)
        scaler.step(trainer.optimizer)  # skips the step itself when the gradients overflowed
        scaler.update(self.amp.static_scale)
        self.amp.report_step(trainer, skipped, scale_before)

    def after_train_iter(self, trainer: Trainer) -> None:
        self.check_loss(trainer)
        trainer.optimizer.zero_grad(set_to_none=True)
        self.backward(trainer.outputs["loss"])
        self.optimizer_step(trainer)

    def state_dict(self) -> dict[str, Any] | None:
        """The loss scaler's state (None without fp16)."""
        return None if self.amp is None else self.amp.state_dict()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if self.amp is not None:
            self.amp.load_state_dict(state)


@HOOKS.register_module()
class Fp16OptimizerHook(OptimizerHook):
    """Mixed precision: the forward under ``torch.autocast`` and the loss scaled by a
    ``torch.amp.GradScaler`` (mmcv 1.7 with PyTorch's AMP). A step whose gradients are not
    finite is skipped, as GradScaler does, instead of stopping the run: a warning names the
    iteration, ``skipped_steps`` (steps skipped since the last log row) and ``loss_scale`` are
    logged, and with a dynamic scale the scale backs off. The scaler's state goes into
    checkpoints and comes back on resume.

    Args:
        grad_clip: as :class:`OptimizerHook`; applied to the unscaled gradients.
        coalesce, bucket_size_mb, distributed: accepted for MMDetection configs; unused, as in
            mmcv with PyTorch's AMP (DistributedDataParallel reduces the gradients).
        loss_scale: ``'dynamic'``, a number (a static scale) or a dict of GradScaler's
            ``init_scale``, ``growth_factor``, ``backoff_factor``, ``growth_interval``
            (:func:`grad_scaler_args`). Not used with bfloat16.
        dtype: ``'float16'``, or ``'bfloat16'`` for bfloat16 autocast without loss scaling
            (``fp16=dict(dtype='bfloat16')``; a CPU trains in bfloat16 only when asked so).
            On a CPU, float16 falls back to float32 with a warning.
        device: None (the trainer's device), or the device type to run float16 on even where it
            would fall back (``'cpu'``: slow, for tests); it must be the trainer's.
    """

    def __init__(self, grad_clip: dict | None = None, coalesce: bool = True,
                 bucket_size_mb: int = -1, loss_scale: float | str | dict = 512.0,
                 distributed: bool = True, dtype: str = "float16",
                 device: str | None = None) -> None:
        super().__init__(grad_clip=grad_clip)
        self.coalesce, self.bucket_size_mb, self.distributed = coalesce, bucket_size_mb, distributed
        self.amp = MixedPrecision(loss_scale, dtype, device)


@HOOKS.register_module()
class GradientCumulativeOptimizerHook(OptimizerHook):
    """A step every ``cumulative_iters`` iterations, each loss divided by ``cumulative_iters``:
    ``cumulative_iters`` batches of ``b`` images make the step of one batch of
    ``cumulative_iters * b`` (for a loss that averages over the batch, and no BatchNorm).

    As in mmcv, the iterations are counted over the run, so a group may span the end of an
    epoch; the last ``max_iters % cumulative_iters`` iterations of the run make a shorter group
    whose losses are divided by its length. A checkpoint written in the middle of a group keeps
    the gradients gathered so far, so a resumed run continues the group; a run resumed in the
    middle of a group from a checkpoint without them (mmcv loses them) warns.

    Args:
        cumulative_iters: iterations per optimizer step.
        grad_clip, detect_anomalous_params: as :class:`OptimizerHook`.
    """

    def __init__(self, cumulative_iters: int = 1, grad_clip: dict | None = None,
                 detect_anomalous_params: bool = False) -> None:
        super().__init__(grad_clip=grad_clip, detect_anomalous_params=detect_anomalous_params)
        if isinstance(cumulative_iters, bool) or not isinstance(cumulative_iters, int) \
                or cumulative_iters < 1:
            raise ConfigError(f"optimizer_config.cumulative_iters must be a positive int, got "
                              f"{cumulative_iters!r}")
        self.cumulative_iters = cumulative_iters
        self.remainder_iters = 0
        self._model: nn.Module | None = None
        self._resumed_grads: dict[str, torch.Tensor] | None = None
        self._warned_remainder = False

    def before_run(self, trainer: Trainer) -> None:
        super().before_run(trainer)
        self._model = trainer.model
        self.remainder_iters = trainer.max_iters % self.cumulative_iters
        restored = self._restore_grads(trainer)
        if trainer.iter % self.cumulative_iters != 0 and not restored:
            trainer.logger.warning(
                "resumed at iteration %d, which is not a multiple of optimizer_config."
                "cumulative_iters=%d, from a checkpoint without the gradients gathered so far: "
                "the first step after resuming misses them", trainer.iter, self.cumulative_iters)
        if self.cumulative_iters > 1 and any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                             for m in trainer.model.modules()):
            trainer.logger.warning(
                "GradientCumulativeOptimizerHook: the model has BatchNorm layers, which see "
                "batches of the loader's size, not cumulative_iters times more; this may "
                "slightly lower the accuracy")

    def _restore_grads(self, trainer: Trainer) -> bool:
        grads, self._resumed_grads = self._resumed_grads, None
        if not grads:
            return False
        params = dict(trainer.model.named_parameters())
        for name, grad in grads.items():
            if name in params:
                params[name].grad = grad.to(params[name].device, params[name].dtype)
        return True

    def loss_factor(self, trainer: Trainer) -> int:
        """What this iteration's loss is divided by: ``cumulative_iters``, or the length of the
        run's last, shorter group."""
        if trainer.iter < trainer.max_iters - self.remainder_iters:
            return self.cumulative_iters
        if not self._warned_remainder:
            self._warned_remainder = True
            trainer.logger.warning(
                "the last %d iterations of the run are fewer than optimizer_config."
                "cumulative_iters=%d: their losses are divided by %d", self.remainder_iters,
                self.cumulative_iters, self.remainder_iters)
        return self.remainder_iters

    def after_train_iter(self, trainer: Trainer) -> None:
        self.check_loss(trainer)
        self.backward(trainer.outputs["loss"] / self.loss_factor(trainer))
        if self.every_n_iters(trainer, self.cumulative_iters) or self.is_last_iter(trainer):
            self.optimizer_step(trainer)
            trainer.optimizer.zero_grad(set_to_none=True)

    def state_dict(self) -> dict[str, Any] | None:
        """The loss scaler's state (with fp16) and the gradients gathered in an unfinished
        group, by parameter name."""
        state = dict(super().state_dict() or {})
        if self._model is not None:
            grads = {name: p.grad.detach().clone() for name, p in self._model.named_parameters()
                     if p.grad is not None}
            if grads:
                state["grads"] = grads
        return state or None

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self._resumed_grads = state.get("grads")


@HOOKS.register_module()
class GradientCumulativeFp16OptimizerHook(GradientCumulativeOptimizerHook):
    """:class:`GradientCumulativeOptimizerHook` with the mixed precision of
    :class:`Fp16OptimizerHook` (same arguments); a group whose gradients are not finite is
    dropped as a whole."""

    def __init__(self, cumulative_iters: int = 1, grad_clip: dict | None = None,
                 coalesce: bool = True, bucket_size_mb: int = -1,
                 loss_scale: float | str | dict = 512.0, distributed: bool = True,
                 dtype: str = "float16", device: str | None = None) -> None:
        super().__init__(cumulative_iters=cumulative_iters, grad_clip=grad_clip)
        self.coalesce, self.bucket_size_mb, self.distributed = coalesce, bucket_size_mb, distributed
        self.amp = MixedPrecision(loss_scale, dtype, device)


# ---- from the config -----------------------------------------------------------------------

FP16_VERSIONS = {
    "OptimizerHook": "Fp16OptimizerHook",
    "GradientCumulativeOptimizerHook": "GradientCumulativeFp16OptimizerHook",
    "Fp16OptimizerHook": "Fp16OptimizerHook",
    "GradientCumulativeFp16OptimizerHook": "GradientCumulativeFp16OptimizerHook",
}


def fp16_hook_config(optimizer_config: Mapping[str, Any], fp16: Any) -> dict[str, Any]:
    """``optimizer_config`` (with its ``type``) turned into its float16 version with the
    arguments of ``fp16`` -- MMDetection 2.28's ``Fp16OptimizerHook(**optimizer_config,
    **fp16)``, extended to gradient accumulation."""
    if not isinstance(fp16, Mapping):
        raise ConfigError(f"fp16 must be a dict such as dict(loss_scale=512.), "
                          f"dict(loss_scale='dynamic') or dict(dtype='bfloat16'), got {fp16!r}; "
                          f"set fp16=None to train in float32")
    hook_type = optimizer_config["type"]
    name = hook_type if isinstance(hook_type, str) else getattr(hook_type, "__name__", "")
    if name not in FP16_VERSIONS:
        raise ConfigError(
            f"fp16 is set, but optimizer_config.type {name or hook_type!r} has no float16 "
            f"version; fp16 works with {' and '.join(list(FP16_VERSIONS)[:2])}. Remove fp16, or "
            f"do mixed precision in the hook itself.{did_you_mean(name, FP16_VERSIONS)}")
    fp16_type = FP16_VERSIONS[name]
    fp16_args = {k: v for k, v in fp16.items() if k != DELETE_KEY}
    check_arguments(HOOKS.get(fp16_type), fp16_args, fp16_type, "fp16")
    both = sorted(set(fp16_args) & set(optimizer_config))
    if both:
        raise ConfigError(f"optimizer_config.{both[0]} and fp16.{both[0]} are both set; set it "
                          f"in one of them")
    return {**optimizer_config, **fp16_args, "type": fp16_type}


def build_optimizer_hook(optimizer_config: Mapping[str, Any] | Hook | None,
                         fp16: Mapping[str, Any] | None = None) -> Hook:
    """The optimizer hook a config's ``optimizer_config`` (default ``OptimizerHook``) and
    ``fp16`` describe.

    ``fp16=dict(loss_scale=512.)`` (or ``'dynamic'``, or a dict of GradScaler's arguments)
    turns ``OptimizerHook`` into ``Fp16OptimizerHook`` and ``GradientCumulativeOptimizerHook``
    into ``GradientCumulativeFp16OptimizerHook``, with the arguments of both entries;
    ``fp16=dict(dtype='bfloat16')`` asks for bfloat16 autocast instead (no loss scaling), which
    is also the way to mixed precision on a CPU. See :class:`Fp16OptimizerHook`.
    """
    if isinstance(optimizer_config, Hook):
        if fp16 is not None:
            raise ConfigError("optimizer_config is a built hook, which fp16 cannot change; "
                              "pass its config dict, or build a Fp16OptimizerHook yourself")
        return optimizer_config
    cfg = {k: v for k, v in (optimizer_config or {}).items() if k != DELETE_KEY}
    cfg.setdefault("type", "OptimizerHook")
    if fp16 is not None:
        cfg = fp16_hook_config(cfg, fp16)
    return HOOKS.build(cfg, _path="optimizer_config")
