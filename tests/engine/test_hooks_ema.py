"""EMA hooks: the averages against mmcv's own EMAHook driven on the same model and against
MMDetection's documented formulas, the buffer names of their checkpoints, the swap around
evaluation and checkpoints, and resuming (a toy loop and a real ``detlab.train`` run)."""

import copy
import logging
import math
import types

import pytest
import torch
from conftest import tiny_config
from torch import nn

from detlab.checkpoint import load_checkpoint, read_checkpoint, save_checkpoint
from detlab.config import ConfigError
from detlab.engine.hooks import CheckpointHook, EvalHook, Hook, build_optimizer_hook
from detlab.engine.hooks.ema import (
    EMAHook,
    ExpMomentumEMAHook,
    LinearMomentumEMAHook,
    ema_buffer_name,
)
from detlab.engine.setup import train
from detlab.engine.trainer import Trainer
from detlab.registry import HOOKS


class Toy(nn.Module):
    """A linear layer and a BatchNorm: parameters, float buffers and num_batches_tracked."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3, 2)
        self.bn = nn.BatchNorm1d(2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.lin(x))

    def loss(self, batch: "Points") -> dict[str, torch.Tensor]:
        return {"loss": (self(batch.x) - batch.x[:, :2]).pow(2).mean()}


class Points:
    """A batch as the trainer needs it: ``to(device)`` and ``len``."""

    def __init__(self, x: torch.Tensor) -> None:
        self.x = x

    def to(self, device, non_blocking=False):
        return self

    def __len__(self) -> int:
        return len(self.x)


def fake_step(model: nn.Module, step: int) -> None:
    """What an iteration does to the model: new BN statistics and moved weights."""
    gen = torch.Generator().manual_seed(100 + step)
    model.train()
    model(torch.randn(5, 3, generator=gen))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen))


def drive(hook, model: nn.Module, steps: int) -> list[dict[str, torch.Tensor]]:
    """Run ``hook`` over ``steps`` fake iterations; the live tensors after each step."""
    runner = types.SimpleNamespace(model=model, iter=0, hooks=[])
    hook.before_run(runner)
    live = []
    for step in range(steps):
        fake_step(model, step)
        live.append({k: v.clone() for k, v in model.state_dict().items()
                     if not k.startswith("ema_")})
        runner.iter = step
        hook.after_train_iter(runner)
    return live


def ema_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items() if k.startswith("ema_")}


# ---- the averages --------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:This overload of add_ is deprecated")  # mmcv's update
@pytest.mark.filterwarnings("ignore:On January 1, 2023, MMCV")
@pytest.mark.parametrize("interval", [1, 3])
def test_ema_hook_equals_mmcv_ema_hook(interval):
    from mmcv.runner.hooks import EMAHook as MmcvEMAHook

    ours, theirs = Toy(), Toy()
    # a momentum large enough that the warm-up term decides the first steps
    drive(EMAHook(momentum=0.3, interval=interval, warm_up=4), ours, 8)
    drive(MmcvEMAHook(momentum=0.3, interval=interval, warm_up=4), theirs, 8)
    assert list(ours.state_dict()) == list(theirs.state_dict())
    for key, value in theirs.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key
    # parameters only: mmcv's EMAHook leaves the buffers alone
    assert set(ema_buffers(ours)) == {ema_buffer_name(k) for k, _ in ours.named_parameters()}


def reference_ema(live: list[dict], initial: dict, momentum_at, due) -> dict[str, torch.Tensor]:
    """The documented update in float64: ema = (1 - m) * ema + m * live, when due."""
    ema = {k: v.double() for k, v in initial.items()}
    for step, values in enumerate(live):
        if not due(step):
            continue
        m = momentum_at(step)
        for k, v in values.items():
            if v.dtype.is_floating_point:
                ema[k] = (1 - m) * ema[k] + m * v.double()
    return ema


@pytest.mark.parametrize("interval", [1, 2])
def test_exp_momentum_ema_follows_mmdetection_formula(interval):
    model = Toy()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    hook = ExpMomentumEMAHook(momentum=0.05, interval=interval, total_iter=4)
    live = drive(hook, model, 9)

    def momentum(step):  # mmdet/core/hook/ema.py, ExpMomentumEMAHook
        return (1 - 0.05) * math.exp(-(1 + step) / 4) + 0.05

    expected = reference_ema(live, initial, momentum, lambda s: (s + 1) % interval == 0)
    buffers = ema_buffers(model)
    # every state_dict entry is averaged (skip_buffers=False), under MMDetection's names
    assert set(buffers) == {f"ema_{k.replace('.', '_')}" for k in initial}
    for key, value in expected.items():
        got = buffers[f"ema_{key.replace('.', '_')}"]
        if value.dtype.is_floating_point and got.dtype.is_floating_point:
            torch.testing.assert_close(got.double(), value, rtol=1e-5, atol=1e-6)
    # an integer buffer is copied once and never averaged, as in MMDetection
    assert buffers["ema_bn_num_batches_tracked"] == initial["bn.num_batches_tracked"]


def test_linear_momentum_ema_follows_mmdetection_formula():
    model = Toy()
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    hook = LinearMomentumEMAHook(momentum=0.5, interval=2, warm_up=6, skip_buffers=True)
    live = drive(hook, model, 9)
    params = {k for k, _ in model.named_parameters()}

    def momentum(step):  # mmdet/core/hook/ema.py, LinearMomentumEMAHook
        return min(0.5**2, (1 + step) / (6 + step))

    expected = reference_ema([{k: v for k, v in d.items() if k in params} for d in live],
                             {k: v for k, v in initial.items() if k in params}, momentum,
                             lambda s: (s + 1) % 2 == 0)
    buffers = ema_buffers(model)
    assert set(buffers) == {ema_buffer_name(k) for k in params}  # skip_buffers: params only
    for key, value in expected.items():
        torch.testing.assert_close(buffers[ema_buffer_name(key)].double(), value, rtol=1e-5,
                                   atol=1e-6)


def test_swap_exchanges_weights_and_averages():
    model = Toy()
    hook = ExpMomentumEMAHook(momentum=0.1, total_iter=2)
    drive(hook, model, 3)
    live = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("ema_")}
    averages = {k: v.clone() for k, v in ema_buffers(model).items()}
    hook.after_train_epoch(None)
    for key, value in live.items():
        assert torch.equal(model.state_dict()[key], averages[ema_buffer_name(key)])
        assert torch.equal(model.state_dict()[ema_buffer_name(key)], value)
    hook.before_train_epoch(None)
    for key, value in live.items():
        assert torch.equal(model.state_dict()[key], value)


def test_bad_momentum_names_the_argument():
    with pytest.raises(ConfigError, match="momentum must be in"):
        ExpMomentumEMAHook(momentum=1.5)


# ---- in a training loop ----------------------------------------------------------------------

BATCHES = [Points(torch.randn(4, 3, generator=torch.Generator().manual_seed(i)))
           for i in range(3)]
EVAL_X = torch.randn(6, 3, generator=torch.Generator().manual_seed(9))


def toy_trainer(tmp_path, epochs: int, ema: Hook, seen: list) -> Trainer:
    """A real Trainer over a toy model: SGD, checkpoints every epoch, an evaluation that records
    the weights it sees, and ``ema``."""
    model = Toy()

    def evaluate(model, dataloader):
        model.eval()
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        with torch.no_grad():
            return {"out": float(model(EVAL_X).sum())}

    trainer = Trainer(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
                      data_loader=BATCHES, work_dir=str(tmp_path), max_epochs=epochs,
                      logger=logging.getLogger("test_ema"), device=torch.device("cpu"),
                      progress=False)
    trainer.register_hook(build_optimizer_hook(None))
    trainer.register_hook(CheckpointHook(interval=1))
    trainer.register_hook(ema)
    trainer.register_hook(EvalHook([EVAL_X], evaluate))
    return trainer


class RecordLive(Hook):
    """Keeps the parameters the optimizer made at each iteration (runs after the optimizer
    step, priority 40, and before the EMA update, 49)."""

    def __init__(self) -> None:
        self.history: list[dict[str, torch.Tensor]] = []

    def after_train_iter(self, trainer):
        self.history.append({k: v.detach().clone() for k, v in trainer.model.named_parameters()})


def test_evaluation_and_checkpoints_see_the_averages(tmp_path):
    seen: list = []
    trainer = toy_trainer(tmp_path, 1, ExpMomentumEMAHook(momentum=0.01, total_iter=10), seen)
    record = RecordLive()
    trainer.register_hook(record, 45)
    trainer.run()
    (evaluated,) = seen
    saved = read_checkpoint(str(tmp_path / "epoch_1.pth"))["state_dict"]
    live = record.history[-1]
    for key in live:
        # the evaluation and the checkpoint hold the averages, the ema_ buffers the live weights
        assert not torch.equal(evaluated[key], live[key])
        assert torch.equal(saved[key], evaluated[key])
        assert torch.equal(saved[ema_buffer_name(key)], live[key])
        assert torch.equal(trainer.model.state_dict()[key], evaluated[key])  # left averaged
    # and the outputs differ: the evaluation did see the averages
    fresh = Toy().eval()
    fresh.load_state_dict({k: v for k, v in saved.items() if not k.startswith("ema_")})
    with torch.no_grad():
        with_averages = float(fresh(EVAL_X).sum())
        fresh.load_state_dict(live, strict=False)
        with_live = float(fresh(EVAL_X).sum())
    assert with_averages == trainer.val_outputs["out"] != with_live


def test_averages_in_the_evaluation_equal_the_formula(tmp_path):
    """The weights evaluated after epoch 1 are the documented average of the live weights the
    optimizer produced at each iteration."""
    seen: list = []
    hook = LinearMomentumEMAHook(momentum=0.3, warm_up=2, skip_buffers=True)
    trainer = toy_trainer(tmp_path, 1, hook, seen)
    record = RecordLive()
    trainer.register_hook(record, 45)
    initial = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.run()
    expected = reference_ema(record.history, initial, lambda s: min(0.3, (1 + s) / (2 + s)),
                             lambda s: True)
    for key, value in expected.items():
        torch.testing.assert_close(seen[0][key].double(), value, rtol=1e-5, atol=1e-6)


def test_resume_continues_the_averages_exactly(tmp_path):
    straight = toy_trainer(tmp_path / "a", 2, ExpMomentumEMAHook(momentum=0.01, total_iter=4),
                           [])
    straight.run()
    first = toy_trainer(tmp_path / "b", 1, ExpMomentumEMAHook(momentum=0.01, total_iter=4), [])
    first.run()
    resumed = toy_trainer(tmp_path / "c", 2, ExpMomentumEMAHook(momentum=0.01, total_iter=4),
                          [])
    resumed.resume(str(tmp_path / "b" / "epoch_1.pth"))  # as setup does, before before_run
    resumed.run()
    expected = straight.model.state_dict()
    assert list(resumed.model.state_dict()) == list(expected)
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, expected[key]), key


def test_resume_from_of_the_hook_reads_a_checkpoint_without_hook_state(tmp_path):
    """MMDetection's way: a checkpoint with ema_ buffers and no detlab hook state, given to the
    hook's resume_from, which loads it once the buffers exist."""
    straight = toy_trainer(tmp_path / "a", 2, ExpMomentumEMAHook(momentum=0.01, total_iter=4),
                           [])
    straight.run()
    first = toy_trainer(tmp_path / "b", 1, ExpMomentumEMAHook(momentum=0.01, total_iter=4), [])
    first.run()
    checkpoint = read_checkpoint(str(tmp_path / "b" / "epoch_1.pth"))
    model = Toy()
    model.load_state_dict(checkpoint["state_dict"], strict=False)
    for key, value in checkpoint["state_dict"].items():
        if key.startswith("ema_"):
            model.register_buffer(key, value)
    mmdet_style = str(tmp_path / "mmdet_style.pth")
    save_checkpoint(mmdet_style, model, meta=checkpoint["meta"],
                    extra={"rng": checkpoint["rng"]})
    state = torch.load(mmdet_style, weights_only=True)
    assert "hooks" not in state and any(k.startswith("ema_") for k in state["state_dict"])
    resumed = toy_trainer(tmp_path / "c", 2, ExpMomentumEMAHook(
        momentum=0.01, total_iter=4, resume_from=mmdet_style), [])
    resumed.run()
    for key, value in resumed.model.state_dict().items():
        assert torch.equal(value, straight.model.state_dict()[key]), key


# ---- through detlab.train --------------------------------------------------------------------


@HOOKS.register_module()
class StopBeforeEpoch(Hook):
    """A Ctrl-C at the start of an epoch (counted from 1)."""

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch

    def before_train_epoch(self, trainer):
        if trainer.epoch + 1 == self.epoch:
            raise KeyboardInterrupt


EMA_CFG = dict(type="ExpMomentumEMAHook", momentum=0.001, total_iter=3, priority=49)


def test_train_with_ema_resumes_exactly_and_writes_mmdetection_keys(shapes_root, tmp_path):
    straight = train(tiny_config(shapes_root, epochs=2, custom_hooks=[EMA_CFG]),
                     work_dir=str(tmp_path / "a"), seed=0, progress=False)
    expected = read_checkpoint(straight.checkpoint)["state_dict"]
    model_keys = [k for k in expected if not k.startswith("ema_")]
    # MMDetection's names: one ema_ buffer per state_dict entry of the detector
    assert {k for k in expected if k.startswith("ema_")} == {
        "ema_" + k.replace(".", "_") for k in model_keys}
    assert "ema_backbone_conv1_weight" in expected
    # the checkpoint loads strictly into a detector without EMA (the ema_ keys are expected)
    from detlab.models import build_model

    detector = build_model(tiny_config(shapes_root).model)
    load_checkpoint(detector, straight.checkpoint, strict=True)
    assert torch.equal(detector.state_dict()["bbox_head.retina_cls.weight"],
                       expected["bbox_head.retina_cls.weight"])

    cfg = tiny_config(shapes_root, epochs=2,
                      custom_hooks=[EMA_CFG, dict(type="StopBeforeEpoch", epoch=2)])
    with pytest.raises(KeyboardInterrupt):
        train(cfg, work_dir=str(tmp_path / "b"), seed=0, progress=False)
    resumed = train(tiny_config(shapes_root, epochs=2, custom_hooks=[EMA_CFG]),
                    work_dir=str(tmp_path / "b"), seed=0, progress=False,
                    resume_from=str(tmp_path / "b" / "epoch_1.pth"))
    got = read_checkpoint(resumed.checkpoint)["state_dict"]
    assert list(got) == list(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    assert resumed.metrics == straight.metrics


def test_model_copy_is_untouched_by_a_second_before_run():
    model = Toy()
    hook = ExpMomentumEMAHook()
    runner = types.SimpleNamespace(model=model, iter=0, hooks=[])
    hook.before_run(runner)
    keys = list(copy.deepcopy(model).state_dict())
    hook.before_run(runner)  # the same model trained again in a notebook
    assert list(model.state_dict()) == keys
