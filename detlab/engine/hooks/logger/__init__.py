"""Logger hooks (``log_config.hooks``): the text log, and TensorBoard, MLflow and Weights &
Biases, whose packages are imported only when their hook is built or run."""

from detlab.engine.hooks.logger.base import LoggerHook
from detlab.engine.hooks.logger.mlflow import MlflowLoggerHook
from detlab.engine.hooks.logger.tensorboard import TensorboardLoggerHook
from detlab.engine.hooks.logger.text import TextLoggerHook
from detlab.engine.hooks.logger.wandb import MMDetWandbHook, WandbLoggerHook

__all__ = ["LoggerHook", "TextLoggerHook", "TensorboardLoggerHook", "MlflowLoggerHook",
           "WandbLoggerHook", "MMDetWandbHook"]
