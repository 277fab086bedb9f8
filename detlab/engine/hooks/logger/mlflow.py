"""MLflow logging (``log_config.hooks=[dict(type='MlflowLoggerHook', exp_name=...)]``).

MLflow's tracking store is whatever ``MLFLOW_TRACKING_URI`` names (mmcv's hook takes no URI
either); a local store is a ``file:`` URI, e.g. ``file:///path/mlruns``.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from detlab.engine.hooks.logger.base import LoggerHook
from detlab.engine.hooks.logger.tags import log_step, loggable_tags, missing_package
from detlab.registry import HOOKS

if TYPE_CHECKING:
    from detlab.engine.trainer import Trainer


def _import_mlflow() -> tuple[Any, Any]:
    try:
        import mlflow
        import mlflow.pytorch as mlflow_pytorch
    except ImportError as err:
        raise missing_package("MlflowLoggerHook", "mlflow", "mlflow (or mlflow-skinny)") from err
    return mlflow, mlflow_pytorch


def log_model_arguments(log_model: Any) -> dict[str, Any]:
    """The keyword arguments that store a whole model under ``models`` with the installed
    MLflow: its ``name`` (``artifact_path`` before MLflow 3) and, where MLflow would trace the
    model instead (a detector's forward takes a batch, not a tensor), pickling."""
    params = inspect.signature(log_model).parameters
    args: dict[str, Any] = {"pip_requirements": [f"torch=={torch.__version__.split('+')[0]}"]}
    args["name" if "name" in params else "artifact_path"] = "models"
    if "serialization_format" in params:
        args["serialization_format"] = "pickle"
    return args


@HOOKS.register_module()
class MlflowLoggerHook(LoggerHook):
    """Logs each row's numbers as MLflow metrics (mmcv's tags and steps) in the experiment
    ``exp_name``, with the run's ``tags`` and ``params``, and at the end of the run the model
    itself as the artifact ``models`` (``log_model``). Main process only. A run is started if
    none is active, and then ended with the training. Needs ``mlflow`` (or ``mlflow-skinny``)."""

    def __init__(self, exp_name: str | None = None, tags: Mapping[str, Any] | None = None,
                 params: Mapping[str, Any] | None = None, log_model: bool = True,
                 interval: int = 10, ignore_last: bool = True, reset_flag: bool = False,
                 by_epoch: bool = True) -> None:
        super().__init__(interval, ignore_last, reset_flag, by_epoch)
        self.mlflow, self.mlflow_pytorch = _import_mlflow()
        self.exp_name, self.tags, self.params = exp_name, tags, params
        self.log_model = log_model
        self._started = False

    def before_run(self, trainer: Trainer) -> None:
        if trainer.rank != 0:
            return
        if self.exp_name is not None:
            self.mlflow.set_experiment(self.exp_name)
        if self.mlflow.active_run() is None:
            self.mlflow.start_run()
            self._started = True
        if self.tags is not None:
            self.mlflow.set_tags(dict(self.tags))
        if self.params is not None:
            self.mlflow.log_params(dict(self.params))

    def log(self, trainer: Trainer, row: Mapping[str, Any]) -> None:
        if trainer.rank != 0:
            return
        tags = loggable_tags(trainer, row)
        if tags:
            self.mlflow.log_metrics(tags, step=log_step(trainer))

    def after_run(self, trainer: Trainer) -> None:
        if trainer.rank != 0:
            return
        if self.log_model:
            self.mlflow_pytorch.log_model(
                trainer.model, **log_model_arguments(self.mlflow_pytorch.log_model))
        if self._started:
            self.mlflow.end_run()
            self._started = False
