"""The optimizer hooks: loss scaling as mmcv 1.7 sets up GradScaler, skipped steps under float16,
gradient accumulation against one big batch, gradient clipping, the scaler's state in
checkpoints, the hook a config's ``optimizer_config`` and ``fp16`` build, and a run end to end."""

import copy
import io
import logging
from types import SimpleNamespace

import pytest
import torch
from conftest import tiny_config
from torch import nn

from detlab.checkpoint import read_checkpoint
from detlab.config import ConfigError
from detlab.engine.hooks import Hook, LogBuffer
from detlab.engine.hooks.optimizer import (
    Fp16OptimizerHook,
    GradientCumulativeFp16OptimizerHook,
    GradientCumulativeOptimizerHook,
    OptimizerHook,
    build_optimizer_hook,
)
from detlab.engine.logging import read_json_log
from detlab.engine.setup import train
from detlab.registry import BuildArgumentError

LOGGER = "detlab.tests.optimizer_hooks"


def make_trainer(model, optimizer, max_iters, iters_per_epoch=None, device="cpu"):
    """The part of the Trainer the optimizer hooks read."""
    return SimpleNamespace(
        model=model, optimizer=optimizer, device=torch.device(device), log_buffer=LogBuffer(),
        logger=logging.getLogger(LOGGER), epoch=0, iter=0, inner_iter=0,
        iters_per_epoch=iters_per_epoch or max_iters, max_iters=max_iters, by_epoch=True,
        autocast_dtype=None, outputs={})


def run_iter(hook, trainer, x, y, poison=False):
    """One iteration as the Trainer runs it: the mean loss under the hook's autocast, then the
    hook, then the counters."""
    autocast = (torch.autocast("cpu", dtype=trainer.autocast_dtype)
                if trainer.autocast_dtype is not None else torch.autocast("cpu", enabled=False))
    with autocast:
        out = trainer.model(x)
    loss = ((out.float() - y) ** 2).mean()
    if poison:
        loss = loss * float("nan")
    log_vars = {"loss": float(loss.detach())}
    trainer.outputs = {"loss": loss, "log_vars": log_vars, "num_samples": len(x)}
    hook.after_train_iter(trainer)
    trainer.iter += 1
    trainer.inner_iter += 1
    if trainer.inner_iter == trainer.iters_per_epoch:
        trainer.epoch, trainer.inner_iter = trainer.epoch + 1, 0


def linear_setup(seed=0, momentum=0.9):
    torch.manual_seed(seed)
    model = nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=momentum, weight_decay=0.01)
    return model, optimizer


def batches(n, b, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(b, 3, generator=g), torch.randn(b, 2, generator=g)) for _ in range(n)]


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


# ---- loss_scale -> GradScaler, against what mmcv 1.7 passes ------------------------------


class RecordedScaler:
    """Stands in for GradScaler in mmcv's module (no CUDA here): records its arguments."""

    def __init__(self, **kwargs):
        self.kwargs = kwargs


LOSS_SCALES = [
    ("dynamic", dict(init_scale=2.0**16, growth_factor=2.0, backoff_factor=0.5,
                     growth_interval=2000), None),
    (512.0, dict(init_scale=512.0, growth_factor=2.0, backoff_factor=0.5,
                 growth_interval=2000), 512.0),
    (dict(init_scale=1024.0, growth_factor=3.0, backoff_factor=0.25, growth_interval=10),
     dict(init_scale=1024.0, growth_factor=3.0, backoff_factor=0.25, growth_interval=10), None),
]


@pytest.mark.parametrize(("loss_scale", "settings", "static"), LOSS_SCALES)
def test_loss_scale_forms_map_onto_grad_scaler_as_mmcv(monkeypatch, loss_scale, settings,
                                                       static):
    mmcv_hooks = pytest.importorskip("mmcv.runner.hooks.optimizer")
    monkeypatch.setattr(mmcv_hooks, "GradScaler", RecordedScaler)
    reference = mmcv_hooks.Fp16OptimizerHook(loss_scale=copy.deepcopy(loss_scale))
    hook = Fp16OptimizerHook(loss_scale=loss_scale, device="cpu")
    assert hook.amp.scaler_args == reference.loss_scaler.kwargs
    assert hook.amp.static_scale == reference._scale_update_param == static
    scaler = hook.loss_scaler
    assert isinstance(scaler, torch.amp.GradScaler) and scaler.is_enabled()
    assert (scaler.get_scale(), scaler.get_growth_factor(), scaler.get_backoff_factor(),
            scaler.get_growth_interval()) == tuple(settings.values())


def test_a_static_scale_stays_and_an_int_counts_as_a_number():
    model, optimizer = linear_setup()
    hook = Fp16OptimizerHook(loss_scale=64, device="cpu")  # mmcv wants 64.0; both mean 64
    trainer = make_trainer(model, optimizer, max_iters=3)
    hook.before_run(trainer)
    for x, y in batches(3, 4):
        run_iter(hook, trainer, x, y)
    assert hook.loss_scaler.get_scale() == 64.0
    assert trainer.log_buffer["loss_scale"] == [64.0, 64.0, 64.0]


# ---- autocast dtypes ---------------------------------------------------------------------


def test_float16_on_cpu_when_asked_trains_under_autocast():
    model, optimizer = linear_setup()
    hook = Fp16OptimizerHook(loss_scale="dynamic", device="cpu")
    trainer = make_trainer(model, optimizer, max_iters=1)
    hook.before_run(trainer)
    assert trainer.autocast_dtype is torch.float16
    assert hook.active_scaler() is hook.loss_scaler
    before = weights(model)
    (x, y), = batches(1, 4)
    run_iter(hook, trainer, x, y)
    assert all(not torch.equal(a, b) for a, b in zip(before, weights(model), strict=True))
    assert trainer.log_buffer["skipped_steps"] == [0]
    assert trainer.log_buffer["loss_scale"] == [2.0**16]


def test_float16_on_cpu_falls_back_to_float32_with_one_warning(caplog):
    model, optimizer = linear_setup()
    hook = Fp16OptimizerHook(loss_scale=512.0)
    trainer = make_trainer(model, optimizer, max_iters=3)
    with caplog.at_level(logging.WARNING, LOGGER):
        hook.before_run(trainer)
        for x, y in batches(2, 4):
            run_iter(hook, trainer, x, y)
    assert trainer.autocast_dtype is None and hook.active_scaler() is None
    assert [r.message for r in caplog.records].count(caplog.records[0].message) == 1
    assert "training in float32" in caplog.text and "dtype='bfloat16'" in caplog.text
    assert "loss_scale" not in trainer.log_buffer
    (x, y), = batches(1, 4)
    with pytest.raises(FloatingPointError, match="lower optimizer.lr"):  # no scaler to skip
        run_iter(hook, trainer, x, y, poison=True)


def test_bfloat16_autocast_without_loss_scaling():
    model, optimizer = linear_setup()
    hook = build_optimizer_hook(dict(grad_clip=None), dict(loss_scale="dynamic",
                                                           dtype="bfloat16"))
    trainer = make_trainer(model, optimizer, max_iters=2)
    hook.before_run(trainer)
    assert trainer.autocast_dtype is torch.bfloat16 and hook.active_scaler() is None
    before = weights(model)
    (x, y), = batches(1, 4)
    run_iter(hook, trainer, x, y)
    assert all(not torch.equal(a, b) for a, b in zip(before, weights(model), strict=True))
    assert "loss_scale" not in trainer.log_buffer
    with pytest.raises(FloatingPointError):  # bfloat16 has float32's range: NaN is divergence
        run_iter(hook, trainer, x, y, poison=True)


def test_fp16_device_must_be_the_trainers():
    model, optimizer = linear_setup()
    hook = Fp16OptimizerHook(device="cpu")
    with pytest.raises(ConfigError, match=r"fp16\.device is 'cpu' but the model trains on cuda"):
        hook.before_run(make_trainer(model, optimizer, max_iters=1, device="cuda"))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_fp16_device_cuda_needs_cuda():
    with pytest.raises(ConfigError, match=r"fp16\.device is 'cuda' but CUDA is not available"):
        Fp16OptimizerHook(device="cuda")


# ---- non-finite losses ---------------------------------------------------------------------


def test_plain_hook_raises_on_a_non_finite_loss():
    model, optimizer = linear_setup()
    trainer = make_trainer(model, optimizer, max_iters=1)
    before = weights(model)
    (x, y), = batches(1, 4)
    with pytest.raises(FloatingPointError, match="iteration 1 .*grad_clip"):
        run_iter(OptimizerHook(), trainer, x, y, poison=True)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(model), strict=True))


def test_non_finite_loss_under_dynamic_scaling_skips_the_step(caplog):
    model, optimizer = linear_setup()
    hook = Fp16OptimizerHook(grad_clip=dict(max_norm=10.0), loss_scale="dynamic", device="cpu")
    trainer = make_trainer(model, optimizer, max_iters=4)
    hook.before_run(trainer)
    data = batches(3, 4)
    run_iter(hook, trainer, *data[0])
    before, momentum = weights(model), copy.deepcopy(optimizer.state_dict()["state"])
    with caplog.at_level(logging.WARNING, LOGGER):
        run_iter(hook, trainer, *data[1], poison=True)  # no exception
    assert all(torch.equal(a, b) for a, b in zip(before, weights(model), strict=True))
    assert str(optimizer.state_dict()["state"]) == str(momentum)  # the step never ran
    assert hook.loss_scaler.get_scale() == 2.0**15  # backed off
    assert "iteration 2:" in caplog.text and "step is skipped" in caplog.text
    assert "from 65536 to 32768" in caplog.text
    assert trainer.log_buffer["skipped_steps"] == [1]
    assert trainer.log_buffer["loss_scale"] == [2.0**16, 2.0**15]
    assert len(trainer.log_buffer["grad_norm"]) == 1  # none for the skipped step (NaN)
    run_iter(hook, trainer, *data[2])  # training goes on
    assert not torch.equal(before[0], model.weight)
    assert trainer.log_buffer["skipped_steps"] == [1]  # one skipped since the last log row
    trainer.log_buffer.clear()  # a log row was written
    run_iter(hook, trainer, *data[2])
    assert trainer.log_buffer["skipped_steps"] == [0]
    assert hook.state_dict()["skipped_steps"] == 1


def test_non_finite_loss_drops_the_whole_accumulated_group():
    model, optimizer = linear_setup()
    hook = GradientCumulativeFp16OptimizerHook(cumulative_iters=2, loss_scale=256.0,
                                               device="cpu")
    trainer = make_trainer(model, optimizer, max_iters=4)
    hook.before_run(trainer)
    before = weights(model)
    data = batches(2, 4)
    run_iter(hook, trainer, *data[0])
    run_iter(hook, trainer, *data[1], poison=True)
    assert all(torch.equal(a, b) for a, b in zip(before, weights(model), strict=True))
    assert all(p.grad is None for p in model.parameters())  # the next group starts clean
    assert hook.loss_scaler.get_scale() == 256.0  # a static scale stays
    assert trainer.log_buffer["skipped_steps"] == [1]


# ---- gradient accumulation against one big batch -------------------------------------------


def steps_on_big_batches(data, groups):
    """Plain steps, one per group of batches, each on the concatenated batch."""
    model, optimizer = linear_setup()
    hook = OptimizerHook()
    trainer = make_trainer(model, optimizer, max_iters=len(groups))
    for group in groups:
        x = torch.cat([data[i][0] for i in group])
        y = torch.cat([data[i][1] for i in group])
        run_iter(hook, trainer, x, y)
    return model


@pytest.mark.parametrize(("iters_per_epoch", "epochs", "cumulative_iters", "groups"), [
    (4, 1, 2, [[0, 1], [2, 3]]),
    (5, 1, 2, [[0, 1], [2, 3], [4]]),  # the run's last iteration: a group of one
    (5, 1, 4, [[0, 1, 2, 3], [4]]),
    (3, 2, 2, [[0, 1], [2, 3], [4, 5]]),  # a group spans the end of the first epoch, as in mmcv
    (3, 3, 2, [[0, 1], [2, 3], [4, 5], [6, 7], [8]]),
])
def test_accumulation_equals_one_step_on_the_big_batch(iters_per_epoch, epochs,
                                                       cumulative_iters, groups):
    max_iters = iters_per_epoch * epochs
    data = batches(max_iters, 2)
    model, optimizer = linear_setup()
    hook = GradientCumulativeOptimizerHook(cumulative_iters=cumulative_iters)
    trainer = make_trainer(model, optimizer, max_iters, iters_per_epoch)
    hook.before_run(trainer)
    for x, y in data:
        run_iter(hook, trainer, x, y)
    reference = steps_on_big_batches(data, groups)
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in model.parameters())


def test_accumulation_steps_only_at_the_end_of_a_group():
    model, optimizer = linear_setup()
    hook = GradientCumulativeOptimizerHook(cumulative_iters=3, grad_clip=dict(max_norm=100.0))
    trainer = make_trainer(model, optimizer, max_iters=7)
    hook.before_run(trainer)
    changed = []
    for x, y in batches(7, 2):
        before = weights(model)
        run_iter(hook, trainer, x, y)
        changed.append(not torch.equal(before[0], model.weight))
    assert changed == [False, False, True, False, False, True, True]
    assert len(trainer.log_buffer["grad_norm"]) == 3  # logged at each step only


def test_float16_accumulation_on_cpu_is_close_to_the_big_batch():
    data = batches(4, 2)
    model, optimizer = linear_setup()
    # MMDetection's static 512: GradScaler's dynamic 2**16 overflows these float16 gradients
    hook = GradientCumulativeFp16OptimizerHook(cumulative_iters=2, loss_scale=512.0,
                                               device="cpu")
    trainer = make_trainer(model, optimizer, max_iters=4)
    hook.before_run(trainer)
    assert trainer.autocast_dtype is torch.float16
    for x, y in data:
        run_iter(hook, trainer, x, y)
    reference = steps_on_big_batches(data, [[0, 1], [2, 3]])
    for ours, theirs in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs, rtol=1e-2, atol=1e-2)
    assert trainer.log_buffer["skipped_steps"] == [0]


def save_and_load(state):
    """Through torch.save and a weights-only load, as checkpoints go."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_resume_in_the_middle_of_a_group_continues_it(caplog):
    data = batches(6, 2)
    model, optimizer = linear_setup()
    hook = GradientCumulativeOptimizerHook(cumulative_iters=2)
    trainer = make_trainer(model, optimizer, max_iters=6)
    hook.before_run(trainer)
    for x, y in data[:3]:
        run_iter(hook, trainer, x, y)
    state, model_state = save_and_load(hook.state_dict()), copy.deepcopy(model.state_dict())
    optimizer_state = copy.deepcopy(optimizer.state_dict())
    for x, y in data[3:]:  # the run that never stopped
        run_iter(hook, trainer, x, y)

    resumed, resumed_optimizer = linear_setup(seed=5)
    resumed.load_state_dict(model_state)
    resumed_optimizer.load_state_dict(optimizer_state)
    new_hook = GradientCumulativeOptimizerHook(cumulative_iters=2)
    new_hook.load_state_dict(state)
    new_trainer = make_trainer(resumed, resumed_optimizer, max_iters=6)
    new_trainer.iter = new_trainer.inner_iter = 3
    with caplog.at_level(logging.WARNING, LOGGER):
        new_hook.before_run(new_trainer)
    assert "not a multiple" not in caplog.text
    for x, y in data[3:]:
        run_iter(new_hook, new_trainer, x, y)
    for ours, theirs in zip(resumed.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(ours, theirs)


def test_resume_in_the_middle_of_a_group_without_its_gradients_warns(caplog):
    model, optimizer = linear_setup()
    hook = GradientCumulativeOptimizerHook(cumulative_iters=2)
    trainer = make_trainer(model, optimizer, max_iters=6)
    trainer.iter = 3
    with caplog.at_level(logging.WARNING, LOGGER):
        hook.before_run(trainer)
    assert "resumed at iteration 3, which is not a multiple of optimizer_config." \
           "cumulative_iters=2" in caplog.text


# ---- gradient clipping, anomalous parameters -----------------------------------------------


@pytest.mark.parametrize("make_hook", [
    lambda clip: OptimizerHook(grad_clip=clip),
    lambda clip: Fp16OptimizerHook(grad_clip=clip, loss_scale="dynamic", device="cpu"),
])
def test_grad_clip_logs_the_norm_before_clipping(make_hook):
    (x, y), = batches(1, 4)
    model, _ = linear_setup()
    ((model(x) - y) ** 2).mean().backward()
    expected = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad)
                                                     for p in model.parameters()]))
    model, optimizer = linear_setup(momentum=0.0)
    optimizer.param_groups[0]["weight_decay"] = 0.0
    hook = make_hook(dict(max_norm=0.01, norm_type=2))
    trainer = make_trainer(model, optimizer, max_iters=1)
    hook.before_run(trainer)
    before = weights(model)
    run_iter(hook, trainer, x, y)
    [norm] = trainer.log_buffer["grad_norm"]
    assert norm == pytest.approx(float(expected), rel=1e-2)
    moves = [(a - b).flatten() for a, b in zip(before, weights(model), strict=True)]
    step = torch.linalg.vector_norm(torch.cat(moves))
    assert float(step) == pytest.approx(0.1 * 0.01, rel=1e-3)  # lr * max_norm


def test_detect_anomalous_params_names_unused_parameters(caplog):
    class WithSpare(nn.Module):
        def __init__(self):
            super().__init__()
            self.used, self.spare = nn.Linear(3, 2), nn.Linear(3, 2)

        def forward(self, x):
            return self.used(x)

    model = WithSpare()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    trainer = make_trainer(model, optimizer, max_iters=1)
    (x, y), = batches(1, 4)
    with caplog.at_level(logging.ERROR, LOGGER):
        run_iter(OptimizerHook(detect_anomalous_params=True), trainer, x, y)
    assert {r.getMessage().split()[0] for r in caplog.records} == {"spare.weight", "spare.bias"}


# ---- the scaler's state in checkpoints -----------------------------------------------------


@pytest.mark.parametrize("hook_class", [Fp16OptimizerHook, GradientCumulativeFp16OptimizerHook])
def test_scaler_state_round_trips_through_state_dict(hook_class):
    loss_scale = dict(init_scale=8.0, growth_interval=1)
    model, optimizer = linear_setup()
    hook = hook_class(loss_scale=loss_scale, device="cpu")
    trainer = make_trainer(model, optimizer, max_iters=4)
    hook.before_run(trainer)
    data = batches(3, 4)
    run_iter(hook, trainer, *data[0])
    run_iter(hook, trainer, *data[1], poison=True)
    run_iter(hook, trainer, *data[2])
    state = save_and_load(hook.state_dict())
    assert state["loss_scaler"] == hook.loss_scaler.state_dict()

    fresh = hook_class(loss_scale=loss_scale, device="cpu")
    assert fresh.loss_scaler.get_scale() == 8.0
    fresh.load_state_dict(state)
    assert fresh.loss_scaler.state_dict() == hook.loss_scaler.state_dict()
    assert fresh.loss_scaler.get_scale() == hook.loss_scaler.get_scale() != 8.0
    assert fresh.state_dict()["skipped_steps"] == 1
    assert OptimizerHook().state_dict() is None  # nothing to keep without fp16


# ---- from the config -----------------------------------------------------------------------


@pytest.mark.parametrize(("optimizer_config", "fp16", "hook_type", "attributes"), [
    (None, None, OptimizerHook, dict(grad_clip=None)),
    (dict(grad_clip=dict(max_norm=35, norm_type=2)), None, OptimizerHook,
     dict(grad_clip=dict(max_norm=35, norm_type=2))),
    (dict(grad_clip=None), dict(loss_scale=512.0), Fp16OptimizerHook, dict(grad_clip=None)),
    (dict(type="OptimizerHook", grad_clip=dict(max_norm=1)), dict(loss_scale="dynamic"),
     Fp16OptimizerHook, dict(grad_clip=dict(max_norm=1))),
    (dict(type="GradientCumulativeOptimizerHook", cumulative_iters=4),
     dict(loss_scale=dict(init_scale=16.0)), GradientCumulativeFp16OptimizerHook,
     dict(cumulative_iters=4)),
    (dict(type="GradientCumulativeOptimizerHook", cumulative_iters=2), None,
     GradientCumulativeOptimizerHook, dict(cumulative_iters=2)),
    (dict(type="Fp16OptimizerHook", loss_scale=32.0), None, Fp16OptimizerHook, {}),
])
def test_build_optimizer_hook_as_mmdetection(optimizer_config, fp16, hook_type, attributes):
    hook = build_optimizer_hook(optimizer_config, fp16)
    assert type(hook) is hook_type
    assert {k: getattr(hook, k) for k in attributes} == attributes


def test_build_optimizer_hook_passes_fp16_arguments():
    hook = build_optimizer_hook(dict(grad_clip=None), dict(loss_scale=dict(init_scale=16.0),
                                                           dtype="bfloat16"))
    assert hook.amp.dtype == "bfloat16" and hook.loss_scaler.get_scale() == 16.0


@pytest.mark.parametrize(("optimizer_config", "fp16", "error", "message"), [
    (dict(grad_clip=None), dict(los_scale=512.0), BuildArgumentError,
     r"at fp16\.los_scale.*Did you mean 'loss_scale'"),
    (dict(grad_clip=None), dict(loss_scale="dynamc"), ConfigError,
     r"fp16\.loss_scale must be.*Did you mean 'dynamic'"),
    (dict(grad_clip=None), dict(loss_scale=dict(init_scal=2.0)), ConfigError,
     r"fp16\.loss_scale has no key 'init_scal'.*Did you mean 'init_scale'"),
    (dict(grad_clip=None), dict(dtype="bf16"), ConfigError,
     r"fp16\.dtype must be 'float16' or 'bfloat16'.*Did you mean 'bfloat16'"),
    (dict(grad_clip=None), "dynamic", ConfigError, r"fp16 must be a dict"),
    (dict(type="EMAHook"), dict(loss_scale=512.0), ConfigError,
     r"optimizer_config\.type 'EMAHook' has no float16 version"),
    (dict(grad_clip=None, loss_scale=8.0), dict(loss_scale=512.0), ConfigError,
     r"optimizer_config\.loss_scale and fp16\.loss_scale are both set"),
    (dict(type="GradientCumulativeOptimizerHook", cumulative_iters=0), None, ConfigError,
     r"optimizer_config\.cumulative_iters must be a positive int"),
    (dict(type="GradientCumulativeOptimizerHook", cumulative_iter=2), None, BuildArgumentError,
     r"at optimizer_config\.cumulative_iter.*Did you mean 'cumulative_iters'"),
])
def test_build_optimizer_hook_errors_name_the_key(optimizer_config, fp16, error, message):
    with pytest.raises(error, match=message):
        build_optimizer_hook(optimizer_config, fp16)


# ---- end to end ----------------------------------------------------------------------------


class RecordSteps(Hook):
    """Records, per iteration, whether the optimizer hook changed the weights."""

    priority = "NORMAL"  # after the optimizer hook (ABOVE_NORMAL)

    def __init__(self):
        self.changed, self.autocast = [], None

    def before_run(self, trainer):
        self.autocast = trainer.autocast_dtype

    def before_train_iter(self, trainer):
        self.before = [p.detach().clone() for p in trainer.model.parameters() if p.requires_grad]

    def after_train_iter(self, trainer):
        after = [p for p in trainer.model.parameters() if p.requires_grad]
        pairs = zip(self.before, after, strict=True)
        self.changed.append(any(not torch.equal(a, b) for a, b in pairs))


@pytest.mark.parametrize(("fp16", "autocast"), [(None, None), (dict(dtype="bfloat16"),
                                                               torch.bfloat16)])
def test_gradient_accumulation_trains_end_to_end(shapes_root, tmp_path, fp16, autocast):
    cfg = tiny_config(shapes_root, epochs=1, fp16=fp16, optimizer_config=dict(
        type="GradientCumulativeOptimizerHook", cumulative_iters=2))
    record = RecordSteps()
    run = train(cfg, work_dir=str(tmp_path), seed=0, progress=False, hooks=[record])
    assert record.autocast is autocast
    assert record.changed == [False, True]  # two iterations, one step
    rows = [r for r in read_json_log(run.json_log) if r["mode"] == "train"]
    assert len(rows) == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert ["grad_norm" in r for r in rows] == [False, True]  # clipped (and logged) at the step


class InterruptBeforeEpoch(Hook):
    """A Ctrl-C at the start of epoch ``epoch`` (counted from 1)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def before_train_epoch(self, trainer):
        if trainer.epoch + 1 == self.epoch:
            raise KeyboardInterrupt


def test_resumed_run_continues_a_group_across_the_checkpoint(shapes_root, tmp_path):
    def cfg():  # 2 iterations an epoch: the group of iterations 1-3 spans the checkpoint
        return tiny_config(shapes_root, epochs=2, optimizer_config=dict(
            type="GradientCumulativeOptimizerHook", cumulative_iters=3))

    whole = train(cfg(), work_dir=str(tmp_path / "whole"), seed=0, progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(cfg(), work_dir=str(tmp_path / "cut"), seed=0, progress=False,
              hooks=[InterruptBeforeEpoch(2)])
    saved = read_checkpoint(str(tmp_path / "cut" / "epoch_1.pth"))
    grads = saved["hooks"]["GradientCumulativeOptimizerHook"]["grads"]
    assert grads and all(torch.isfinite(g).all() for g in grads.values())
    resumed = train(cfg(), work_dir=str(tmp_path / "cut"), seed=0, progress=False,
                    resume_from=str(tmp_path / "cut" / "epoch_1.pth"))
    expected = read_checkpoint(whole.checkpoint)["state_dict"]
    got = read_checkpoint(resumed.checkpoint)["state_dict"]
    assert got.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
