"""From a config to a finished run: ``train(cfg)`` validates the runtime sections, builds the
model, loaders, optimizer and hooks, runs the :class:`~detlab.engine.trainer.Trainer` and records
how the run ended.

``work_dir`` receives the resolved ``config.py``, a text log ``<timestamp>.log``, a JSON-lines log
``<timestamp>.log.json`` (its last line says whether the run finished, crashed or was interrupted),
``epoch_N.pth`` (``iter_N.pth``) every ``checkpoint_config.interval`` and ``latest.pth``.
"""

from __future__ import annotations

import functools
import logging
import os
import re
import time
import traceback
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from detlab.checkpoint import (
    CheckpointLoadError,
    load_checkpoint,
    read_checkpoint,
    remove_orphaned_temp_files,
)
from detlab.config import (
    Config,
    ConfigError,
    check_top_level_keys,
    did_you_mean,
    load_config,
)
from detlab.dist import broadcast_object, get_dist_info, init_dist, select_device, set_random_seed
from detlab.engine.hooks import (
    CheckpointHook,
    Hook,
    build_lr_hook,
    build_momentum_hook,
    build_optimizer_hook,
)
from detlab.engine.loaders import (
    build_test_loader,
    build_train_loader,
    build_val_loss_loader,
    check_data_keys,
    loader_args,
)
from detlab.engine.logging import JsonLog, close_file_handlers, env_info, get_logger, log_to_files
from detlab.engine.optim import build_optimizer
from detlab.engine.tester import check_evaluate_options, evaluate_model
from detlab.engine.trainer import Trainer, TrainRun
from detlab.models import build_model
from detlab.registry import HOOKS

RUNNERS = ("EpochBasedRunner", "IterBasedRunner")


# ---- what the config asks for ----------------------------------------------------------------


def run_length(cfg: Config) -> dict[str, int]:
    """``dict(max_epochs=N)`` or ``dict(max_iters=N)`` from ``runner`` (or ``total_epochs``)."""
    runner = cfg.get("runner")
    if runner is None:
        if "total_epochs" not in cfg:
            raise ConfigError("the config has neither runner=dict(type='EpochBasedRunner', "
                              "max_epochs=N) nor total_epochs")
        return _positive("total_epochs", cfg.total_epochs, "max_epochs")
    kind = runner.get("type", "EpochBasedRunner")
    if kind not in RUNNERS:
        raise ConfigError(f"runner.type={kind!r} is not a runner; use one of {', '.join(RUNNERS)}")
    key = "max_epochs" if kind == "EpochBasedRunner" else "max_iters"
    extra = set(runner) - {"type", key}
    if extra:
        raise ConfigError(f"{kind} takes runner.{key}, not {', '.join(sorted(extra))} (an "
                          f"EpochBasedRunner counts max_epochs, an IterBasedRunner max_iters)")
    if key not in runner:
        raise ConfigError(f"runner needs {key}: runner=dict(type={kind!r}, {key}=...)")
    return _positive(f"runner.{key}", runner[key], key)


# runtime sections read here rather than built through a registry, and the keys each takes
SECTION_KEYS = {"auto_scale_lr": ("enable", "base_batch_size"),
                "dist_params": ("backend", "port", "init_method")}


def check_section_keys(cfg: Config) -> None:
    """Reject a misspelt key of a section that no constructor checks (``auto_scale_lr``,
    ``dist_params``), with the closest names."""
    for section, known in SECTION_KEYS.items():
        for key in cfg.get(section) or {}:
            if key not in known:
                raise ConfigError(f"{section}.{key} is not a setting of {section}."
                                  f"{did_you_mean(key, known)} It takes: {', '.join(known)}.")


def _positive(path: str, value: Any, key: str) -> dict[str, int]:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ConfigError(f"{path} must be a positive int, got {value!r}")
    return {key: value}


def _workflow(cfg: Config) -> list[tuple[str, int]]:
    workflow = [tuple(step) for step in cfg.get("workflow") or [("train", 1)]]
    for step in workflow:
        if len(step) != 2 or step[0] not in ("train", "val") or not isinstance(step[1], int) \
                or step[1] < 1:
            raise ConfigError(f"workflow step {step!r}: write ('train', N) or ('val', N)")
    if not any(mode == "train" for mode, _ in workflow):
        raise ConfigError("workflow has no ('train', N) step")
    return workflow


def _work_dir(cfg: Config, work_dir: str | None) -> str:
    if work_dir is None:
        work_dir = cfg.get("work_dir")
    if work_dir is None:
        stem = os.path.splitext(os.path.basename(cfg.filename or "run"))[0]
        work_dir = os.path.join("work_dirs", stem)
    return os.path.abspath(work_dir)


_CHECKPOINT_NAME = re.compile(r"^(epoch|iter)_(\d+)\.pth$")


def find_latest_checkpoint(work_dir: str) -> str | None:
    """The newest checkpoint of ``work_dir`` that reads (``auto_resume``): ``latest.pth`` if it
    does, else the highest ``epoch_N.pth`` / ``iter_N.pth`` that does."""
    if not os.path.isdir(work_dir):
        return None
    numbered = sorted(((int(m.group(2)), name) for name in os.listdir(work_dir)
                       if (m := _CHECKPOINT_NAME.match(name))), reverse=True)
    candidates = ["latest.pth"] + [name for _, name in numbered]
    for name in candidates:
        path = os.path.join(work_dir, name)
        if not os.path.exists(path):
            continue
        try:
            read_checkpoint(path)
        except CheckpointLoadError:
            continue
        return path
    return None


def _seed(cfg: Config, seed: int | None, resume_meta: Mapping[str, Any]) -> int:
    """The run's seed: given, else the resumed run's, else the config's, else a random one
    (shared by all processes), so that every run records the seed that reproduces it."""
    for value in (seed, resume_meta.get("seed"), cfg.get("seed")):
        if value is not None:
            return int(value)
    return int(broadcast_object(int(np.random.randint(2**31))))


def _resume_meta(path: str | None) -> dict[str, Any]:
    return dict(read_checkpoint(path)["meta"]) if path else {}


def _apply_runtime_settings(cfg: Config, device: torch.device) -> None:
    """``cudnn_benchmark``, ``opencv_num_threads`` and ``mp_start_method``, as MMDetection's
    ``setup_multi_processes``."""
    if cfg.get("cudnn_benchmark") and device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    try:
        import cv2
    except ImportError:
        cv2 = None
    if cv2 is not None:
        cv2.setNumThreads(int(cfg.get("opencv_num_threads", 0)))
    method = cfg.get("mp_start_method")
    if method is not None:
        torch.multiprocessing.set_start_method(method, force=True)


def scale_lr(cfg: Config, world_size: int, logger: logging.Logger) -> None:
    """Scale ``optimizer.lr`` by the actual batch over ``auto_scale_lr.base_batch_size`` when
    ``auto_scale_lr.enable`` (MMDetection 2.28's linear scaling rule)."""
    settings = cfg.get("auto_scale_lr") or {}
    if not settings.get("enable", False):
        return
    if "base_batch_size" not in settings:
        raise ConfigError("auto_scale_lr.enable=True needs auto_scale_lr.base_batch_size (the "
                          "batch the config's lr was tuned for, e.g. 16)")
    batch = world_size * int(loader_args(cfg.data, "train")["samples_per_gpu"])
    scaled = cfg.optimizer.lr * batch / settings["base_batch_size"]
    logger.info("auto_scale_lr: lr %g -> %g for a batch of %d (base %d)", cfg.optimizer.lr,
                scaled, batch, settings["base_batch_size"])
    cfg.optimizer.lr = scaled


# ---- logs --------------------------------------------------------------------------------


def _start_logs(cfg: Config, seed: int) -> tuple[logging.Logger, JsonLog | None, str, str]:
    timestamp = time.strftime("%Y%m%d_%H%M%S", time.localtime())
    text_log = os.path.join(cfg.work_dir, f"{timestamp}.log")
    json_path = text_log + ".json"
    main = get_dist_info()[0] == 0
    logger = get_logger(text_log if main else None, level=cfg.get("log_level", "INFO"))
    if not main:
        return logger, None, json_path, text_log
    os.makedirs(cfg.work_dir, exist_ok=True)
    for path in remove_orphaned_temp_files(cfg.work_dir):
        logger.info("removed %s, left by an interrupted checkpoint write", path)
    cfg.dump(os.path.join(cfg.work_dir, "config.py"))
    info = env_info()
    logger.info("environment: %s", "; ".join(f"{k}: {v}" for k, v in info.items()))
    logger.info("config %s, work_dir %s, seed %s", cfg.filename, cfg.work_dir, seed)
    for warning in check_top_level_keys(cfg):
        logger.warning(warning)
    head = dict(env_info=info, config=cfg.pretty_text, seed=seed,
                exp_name=os.path.basename(cfg.filename or "config.py"))
    return logger, JsonLog(json_path, head=head), json_path, text_log


# ---- hooks -------------------------------------------------------------------------------


def _build_eval_hook(cfg: Config, distributed: bool, logger: logging.Logger, by_epoch: bool,
                     progress: bool) -> Hook:
    loader = build_test_loader(cfg, "val", distributed)
    options = dict(cfg.get("evaluation") or {})
    hook_keys = ("interval", "by_epoch", "start", "save_best", "rule", "dynamic_intervals",
                 "greater_keys", "less_keys", "gpu_collect", "tmpdir", "broadcast_bn_buffer",
                 "type")
    hook_args = {k: options.pop(k) for k in hook_keys if k in options}
    hook_args.pop("type", None)
    hook_args.setdefault("by_epoch", by_epoch)
    check_evaluate_options(loader.dataset, options, "evaluation")
    evaluate = functools.partial(evaluate_model, logger=logger, progress=progress)
    return HOOKS.build(dict(hook_args, type="EvalHook"), _path="evaluation",
                       dataloader=loader, evaluate=evaluate, eval_options=options)


def _logger_hooks(cfg: Config, by_epoch: bool) -> list[Hook]:
    log_cfg = cfg.get("log_config") or dict(interval=50, hooks=[dict(type="TextLoggerHook")])
    hooks = []
    for i, hook_cfg in enumerate(log_cfg.get("hooks", [])):
        hook_cfg = dict(hook_cfg)
        hook_cfg.setdefault("interval", log_cfg.get("interval", 50))
        hook_cfg.setdefault("by_epoch", by_epoch)
        hooks.append(HOOKS.build(hook_cfg, _path=f"log_config.hooks.{i}"))
    return hooks


def _default_hooks(cfg: Config, by_epoch: bool) -> list[Hook]:
    """The hooks of the runtime keys, in mmcv's order of registration."""
    hooks = []
    if cfg.get("lr_config"):
        hooks.append(build_lr_hook(cfg.lr_config, default_by_epoch=by_epoch))
    if cfg.get("momentum_config"):
        hooks.append(build_momentum_hook(cfg.momentum_config))
    hooks.append(build_optimizer_hook(cfg.get("optimizer_config"), cfg.get("fp16")))
    checkpoint_cfg = dict(cfg.get("checkpoint_config") or dict(interval=1))
    checkpoint_cfg.setdefault("type", "CheckpointHook")
    checkpoint_cfg.setdefault("by_epoch", by_epoch)
    hooks.append(HOOKS.build(checkpoint_cfg, _path="checkpoint_config"))
    hooks.append(HOOKS.build(dict(type="IterTimerHook")))
    return hooks + _logger_hooks(cfg, by_epoch)


def register_hooks(trainer: Trainer, cfg: Config, eval_hook: Hook | None,
                   extra: Iterable[Hook] = ()) -> None:
    """Every hook of the config (and ``extra`` hook objects), at their priorities."""
    for hook in _default_hooks(cfg, trainer.by_epoch):
        trainer.register_hook(hook)
    for i, hook_cfg in enumerate(cfg.get("custom_hooks") or []):
        hook_cfg = dict(hook_cfg)
        priority = hook_cfg.pop("priority", None)
        hook = HOOKS.build(hook_cfg, _path=f"custom_hooks.{i}")
        trainer.register_hook(hook, priority)
    if eval_hook is not None:
        trainer.register_hook(eval_hook)
    for hook in extra:
        trainer.register_hook(hook)


# ---- the model -----------------------------------------------------------------------------


def _prepare_model(cfg: Config, classes: Sequence[str], device: torch.device, distributed: bool,
                   resuming: bool, logger: logging.Logger) -> nn.Module:
    model = build_model(cfg.model)
    model.CLASSES = tuple(classes)
    if not resuming:
        model.init_weights()
    if distributed and "SyncBN" in str(cfg.model):
        if device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        else:
            logger.warning("norm_cfg SyncBN needs CUDA; on %s each process normalizes its own "
                           "batch", device)
    return model.to(device)


def setup_training(cfg: Config, *, device: str | None = None, validate: bool = True,
                   seed: int | None = None, deterministic: bool = False, progress: bool = True,
                   launcher: str | None = None, gpu_ids: Sequence[int] | None = None,
                   hooks: Iterable[Hook] = ()) -> tuple[Trainer, TrainRun]:
    """Everything ``train()`` needs, built from ``cfg`` (``cfg.work_dir`` already set); every
    runtime section is built (and so checked) here, before the first iteration."""
    length = run_length(cfg)
    workflow = _workflow(cfg)
    check_data_keys(cfg.data)
    check_section_keys(cfg)
    distributed = init_dist(launcher, cfg.get("dist_params"))
    device = select_device(device or cfg.get("device"), gpu_ids or cfg.get("gpu_ids"))
    seed = _seed(cfg, seed, _resume_meta(cfg.get("resume_from")))
    set_random_seed(seed, deterministic)
    logger, json_log, json_path, text_log = _start_logs(cfg, seed)
    _apply_runtime_settings(cfg, device)
    scale_lr(cfg, get_dist_info()[1], logger)
    loader = build_train_loader(cfg, distributed, seed)
    model = _prepare_model(cfg, loader.dataset.CLASSES, device, distributed,
                           bool(cfg.get("resume_from")), logger)
    by_epoch = "max_epochs" in length
    eval_hook = (_build_eval_hook(cfg, distributed, logger, by_epoch, progress)
                 if validate and "val" in cfg.data else None)
    meta = dict(config=cfg.pretty_text, CLASSES=list(model.CLASSES), seed=seed,
                exp_name=os.path.basename(cfg.filename or "config.py"))
    trainer = Trainer(
        model=model, optimizer=build_optimizer(model, cfg.optimizer), data_loader=loader,
        work_dir=cfg.work_dir, logger=logger, device=device, json_log=json_log, meta=meta,
        workflow=workflow, distributed=distributed, progress=progress,
        val_loss_loader=(build_val_loss_loader(cfg, distributed)
                         if any(mode == "val" for mode, _ in workflow) else None),
        find_unused_parameters=bool(cfg.get("find_unused_parameters", False)), **length)
    register_hooks(trainer, cfg, eval_hook, hooks)
    if cfg.get("resume_from"):
        trainer.resume(cfg.resume_from)
    elif cfg.get("load_from"):
        load_checkpoint(model, cfg.load_from, map_location=device, log=logger)
    run = TrainRun(model, cfg.work_dir, json_path, text_log, "", {}, cfg)
    return trainer, run


# ---- the run -------------------------------------------------------------------------------


def _finish(trainer: Trainer, run: TrainRun, status: str, error: BaseException | None) -> None:
    """Write how the run ended: a line of the text log (the traceback too, in the file only)
    and a final status row of the JSON log."""
    where = f"epoch {trainer.epoch + 1}, iteration {trainer.iter}"
    if status == "interrupted":
        trainer.logger.warning("interrupted in %s; %s", where, _resume_hint(trainer))
    elif status == "crashed":
        trainer.logger.error("the run stopped in %s: %s: %s", where, type(error).__name__, error)
        log_to_files(trainer.logger, logging.ERROR, "".join(traceback.format_exception(error)))
    if trainer.json_log is not None:
        row = {"status": status, "final_epoch": trainer.epoch, "final_iter": trainer.iter,
               "seconds": round(run.seconds, 3)}
        if error is not None:
            row["error"] = f"{type(error).__name__}: {error}"
        trainer.json_log.write(row)
    run.status = status


def _latest_path(trainer: Trainer) -> str:
    """Where the run's ``latest.pth`` is (``checkpoint_config.out_dir`` may move it)."""
    hook = trainer.get_hook(CheckpointHook)
    folder = hook.out_dir_of(trainer) if hook is not None else trainer.work_dir
    return os.path.join(folder, "latest.pth")


def _resume_hint(trainer: Trainer) -> str:
    latest = _latest_path(trainer)
    if not os.path.exists(latest):
        return "no checkpoint had been written yet"
    meta = read_checkpoint(latest)["meta"]
    return (f"{latest} holds epoch {meta.get('epoch')}, iteration {meta.get('iter')}; continue "
            f"with resume_from={latest!r} (--resume-from / --auto-resume)")


def train(cfg: str | Config | Mapping, work_dir: str | None = None, device: str | None = None,
          resume_from: str | None = None, load_from: str | None = None, validate: bool = True,
          seed: int | None = None, deterministic: bool = False,
          cfg_options: Mapping[str, Any] | Iterable[str] | None = None,
          progress: bool = True, hooks: Iterable[Hook] = (), auto_resume: bool = False,
          launcher: str | None = None, gpu_ids: Sequence[int] | None = None,
          auto_scale_lr: bool = False) -> TrainRun:
    """Train the model a config describes on its ``data.train``, validating on ``data.val``.

    Args:
        cfg: a config path, ``Config`` or dict.
        work_dir: where logs and checkpoints go (default: ``cfg.work_dir``, else
            ``work_dirs/<config name>``).
        device: ``'cuda'``, ``'cpu'``, ... (default: CUDA when present).
        resume_from: continue a run from its checkpoint (weights, optimizer, counters, random
            states): the result is the run that never stopped.
        load_from: start from a checkpoint's weights only (what matches loads; the rest is
            reported), e.g. to fine-tune a COCO detector on other classes.
        validate: evaluate as ``evaluation`` says.
        seed, deterministic: seeding of every random source (default: the resumed run's seed,
            else ``cfg.seed``, else a random seed, recorded in the logs and checkpoints).
        cfg_options: dotted overrides, as ``--cfg-options``.
        progress: show progress bars.
        hooks: extra hook objects (e.g. a notebook's live training monitor).
        auto_resume: resume from the newest readable checkpoint of ``work_dir`` if there is one.
        launcher: ``'pytorch'`` (torchrun), ``'slurm'`` or ``'none'``; default: the
            environment's.
        gpu_ids: the GPU of a single-process run (MMDetection's ``--gpu-id``).
        auto_scale_lr: scale ``optimizer.lr`` to the actual batch
            (``auto_scale_lr.enable=True``; the config's ``auto_scale_lr.base_batch_size`` is the
            batch its lr was set for).
    """
    cfg = load_config(cfg, cfg_options)
    cfg.work_dir = _work_dir(cfg, work_dir)
    if resume_from is not None:
        cfg.resume_from = resume_from
    if load_from is not None:
        cfg.load_from = load_from
    if auto_scale_lr:
        cfg.merge_from_dict({"auto_scale_lr.enable": True}, source="auto_scale_lr=True")
    if (auto_resume or cfg.get("auto_resume")) and not cfg.get("resume_from"):
        cfg.resume_from = find_latest_checkpoint(cfg.work_dir)
    trainer, run = setup_training(cfg, device=device, validate=validate, seed=seed,
                                  deterministic=deterministic, progress=progress,
                                  launcher=launcher, gpu_ids=gpu_ids, hooks=hooks)
    return _run(trainer, run, cfg.get("resume_from"))


def _run(trainer: Trainer, run: TrainRun, resumed_from: str | None) -> TrainRun:
    if trainer.finished and resumed_from:
        trainer.logger.info("%s is the end of the run (epoch %d, iteration %d): nothing left to "
                            "train", resumed_from, trainer.epoch, trainer.iter)
        run.checkpoint, run.status = resumed_from, "finished"
        close_file_handlers(trainer.logger)
        return run
    start = time.perf_counter()
    status, error = "finished", None
    try:
        trainer.run()
    except KeyboardInterrupt as err:
        status, error = "interrupted", err
        raise
    except BaseException as err:
        status, error = "crashed", err
        raise
    finally:
        run.seconds = time.perf_counter() - start
        _finish(trainer, run, status, error if status == "crashed" else None)
        close_file_handlers(trainer.logger)
    run.metrics = dict(trainer.val_outputs)
    run.checkpoint = _latest_path(trainer)
    return run
