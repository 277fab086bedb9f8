"""Turning a config into a ready :class:`~detlab.engine.trainer.Trainer`: datasets, loaders,
model, optimizer, AMP, logs and the hooks of ``lr_config``, ``optimizer_config``,
``checkpoint_config``, ``log_config``, ``evaluation`` and ``custom_hooks``."""

from __future__ import annotations

import copy
import logging
import os
import time
from typing import Any

import torch

from detlab.config import Config, ConfigError
from detlab.engine.checkpoint import load_checkpoint
from detlab.engine.dist import init_dist_from_env, is_main_process, select_device, set_random_seed
from detlab.engine.hooks import build_lr_hook
from detlab.engine.logging import JsonLog, env_info, get_logger
from detlab.engine.optim import build_optimizer
from detlab.engine.trainer import Trainer, TrainRun
from detlab.registry import HOOKS


def _workflow(cfg: Config) -> list[tuple[str, int]]:
    workflow = [tuple(step) for step in cfg.get("workflow", [("train", 1)])]
    for mode, epochs in workflow:
        if mode not in ("train", "val") or epochs != 1:
            raise ConfigError(f"workflow step {(mode, epochs)!r} is not supported; use "
                              f"[('train', 1)] or [('train', 1), ('val', 1)]")
    return workflow


def _loader_args(data_cfg: Config, key: str, samples: int | None = None) -> dict[str, Any]:
    args = dict(samples_per_gpu=samples or data_cfg.get("samples_per_gpu", 2),
                workers_per_gpu=data_cfg.get("workers_per_gpu", 2))
    args.update(data_cfg.get(key, {}))
    return args


def build_val_loader(cfg: Config, distributed: bool, pipeline_from_train: bool = False) -> Any:
    """The loader of ``data.val`` (test mode; one image per batch unless ``samples_per_gpu`` or
    ``data.val_dataloader`` says otherwise). ``pipeline_from_train`` gives it the train pipeline
    and annotations, for the ``('val', 1)`` workflow's losses."""
    from detlab.data import build_dataloader, build_dataset

    val_cfg = copy.deepcopy(cfg.data.val)
    samples = val_cfg.pop("samples_per_gpu", None)
    if pipeline_from_train:
        val_cfg.pipeline = copy.deepcopy(cfg.data.train.pipeline)
        dataset = build_dataset(val_cfg, _path="data.val")
    else:
        dataset = build_dataset(val_cfg, dict(test_mode=True), _path="data.val")
    args = _loader_args(cfg.data, "val_dataloader", samples or 1)
    return build_dataloader(dataset, dist=distributed, shuffle=False, **args)


def _scaler(cfg: Config, device: torch.device, logger: logging.Logger) -> Any:
    fp16 = cfg.get("fp16")
    if not fp16:
        return None
    if device.type != "cuda":
        logger.warning("fp16=%s asks for mixed precision, which needs CUDA; training in float32 "
                       "on %s", fp16, device)
        return None
    scale = fp16.get("loss_scale", "dynamic")
    kwargs = {} if scale == "dynamic" else dict(init_scale=float(scale), growth_interval=2**31)
    return torch.amp.GradScaler("cuda", **kwargs)


def register_hooks(trainer: Trainer, cfg: Config, val_loader: Any | None) -> None:
    """The hooks a config's runtime keys describe, in MMDetection's priorities."""
    if cfg.get("momentum_config"):
        raise ConfigError("momentum_config (cyclic momentum) is not supported by detlab yet; "
                          "remove it or set momentum_config=None")
    if cfg.get("lr_config"):
        trainer.register_hook(build_lr_hook(cfg.lr_config))
    optimizer_cfg = dict(cfg.get("optimizer_config") or {})
    optimizer_cfg.setdefault("type", "OptimizerHook")
    trainer.register_hook(HOOKS.build(optimizer_cfg, _path="optimizer_config"))
    checkpoint_cfg = dict(cfg.get("checkpoint_config") or {})
    checkpoint_cfg.setdefault("type", "CheckpointHook")
    trainer.register_hook(HOOKS.build(checkpoint_cfg, _path="checkpoint_config"))
    trainer.register_hook(HOOKS.build(dict(type="IterTimerHook")))
    log_cfg = cfg.get("log_config") or dict(interval=50, hooks=[dict(type="TextLoggerHook")])
    for i, hook_cfg in enumerate(log_cfg.get("hooks", [])):
        trainer.register_hook(HOOKS.build(hook_cfg, _path=f"log_config.hooks.{i}",
                                          interval=log_cfg.get("interval", 50)))
    if val_loader is not None:
        eval_cfg = dict(cfg.get("evaluation") or {})
        trainer.register_hook(HOOKS.build(dict(eval_cfg, type="EvalHook"), _path="evaluation",
                                          dataloader=val_loader))
    for i, hook_cfg in enumerate(cfg.get("custom_hooks") or []):
        hook_cfg = dict(hook_cfg)
        priority = hook_cfg.pop("priority", "NORMAL")
        trainer.register_hook(HOOKS.build(hook_cfg, _path=f"custom_hooks.{i}"), priority)


def _start_logs(cfg: Config, seed: int | None) -> tuple[logging.Logger, JsonLog | None, str, str]:
    timestamp = time.strftime("%Y%m%d_%H%M%S", time.localtime())
    text_log = os.path.join(cfg.work_dir, f"{timestamp}.log")
    json_path = text_log + ".json"
    main = is_main_process()
    logger = get_logger(text_log if main else None, level=cfg.get("log_level", "INFO"))
    if not main:
        return logger, None, json_path, text_log
    os.makedirs(cfg.work_dir, exist_ok=True)
    cfg.dump(os.path.join(cfg.work_dir, "config.py"))
    info = env_info()
    logger.info("environment: %s", "; ".join(f"{k}: {v}" for k, v in info.items()))
    logger.info("config %s, work_dir %s, seed %s", cfg.filename, cfg.work_dir, seed)
    head = dict(env_info=info, config=cfg.pretty_text, seed=seed,
                exp_name=os.path.basename(cfg.filename or "config.py"))
    return logger, JsonLog(json_path, head=head), json_path, text_log


def setup_training(cfg: Config, device: str | None, validate: bool, seed: int | None,
                   deterministic: bool, progress: bool, max_epochs: int) -> tuple[Trainer,
                                                                                   TrainRun]:
    """Everything ``train()`` needs, built from ``cfg`` (``cfg.work_dir`` already set)."""
    from detlab.data import build_dataloader, build_dataset
    from detlab.models import build_model

    distributed = init_dist_from_env()
    device = select_device(device or cfg.get("device"))
    seed = seed if seed is not None else cfg.get("seed")
    if seed is not None:
        set_random_seed(seed, deterministic)
    workflow = _workflow(cfg)
    logger, json_log, json_path, text_log = _start_logs(cfg, seed)
    train_dataset = build_dataset(cfg.data.train, _path="data.train")
    model = build_model(cfg.model)
    model.CLASSES = tuple(train_dataset.CLASSES)
    if not cfg.get("resume_from"):
        model.init_weights()
    model.to(device)
    train_loader = build_dataloader(train_dataset, dist=distributed, shuffle=True, seed=seed,
                                    **_loader_args(cfg.data, "train_dataloader"))
    val_loader = build_val_loader(cfg, distributed) if validate and "val" in cfg.data else None
    val_loss_loader = (build_val_loader(cfg, distributed, pipeline_from_train=True)
                       if ("val", 1) in workflow else None)
    meta = dict(config=cfg.pretty_text, CLASSES=list(model.CLASSES), seed=seed,
                exp_name=os.path.basename(cfg.filename or "config.py"))
    trainer = Trainer(model, build_optimizer(model, cfg.optimizer), train_loader, cfg.work_dir,
                      max_epochs, device, logger, json_log, _scaler(cfg, device, logger), meta,
                      val_loss_loader, train_dataset, distributed, progress)
    register_hooks(trainer, cfg, val_loader)
    if cfg.get("resume_from"):
        trainer.resume(cfg.resume_from)
    elif cfg.get("load_from"):
        load_checkpoint(model, cfg.load_from, map_location=device, log=logger)
    run = TrainRun(model, cfg.work_dir, json_path, text_log, "", {}, cfg)
    return trainer, run
