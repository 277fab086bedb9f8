"""Logger hooks (``log_config.hooks``)."""

from detlab.engine.hooks.logger.base import LoggerHook
from detlab.engine.hooks.logger.text import TextLoggerHook

__all__ = ["LoggerHook", "TextLoggerHook"]
