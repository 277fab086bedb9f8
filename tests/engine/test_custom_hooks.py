"""Custom hooks written for MMDetection 2.x run in ``detlab.train`` with their class bodies
unchanged -- only the imports say ``detlab`` instead of ``mmcv`` -- at the priorities their
``custom_hooks`` entries give."""

import pytest
import torch
from conftest import tiny_config

from detlab.checkpoint import read_checkpoint
from detlab.engine import HOOKS, Hook, is_module_wrapper
from detlab.engine.setup import train

# ---- the hooks as their authors wrote them -------------------------------------------------


# MMDetection 2.x's tutorial (docs/en/tutorials/customize_runtime.md), "Implement a new hook"
@HOOKS.register_module()
class MyHook(Hook):

    def __init__(self, a, b):
        pass

    def before_run(self, runner):
        pass

    def after_run(self, runner):
        pass

    def before_epoch(self, runner):
        pass

    def after_epoch(self, runner):
        pass

    def before_iter(self, runner):
        pass

    def after_iter(self, runner):
        pass


# the hook shared in MMDetection's FAQ and issues to unfreeze a ResNet's frozen stages
@HOOKS.register_module()
class UnfreezeBackboneEpochBasedHook(Hook):
    """Unfreeze backbone network Hook.

    Args:
        unfreeze_epoch (int): The epoch unfreezing the backbone network.
    """

    def __init__(self, unfreeze_epoch=1):
        self.unfreeze_epoch = unfreeze_epoch

    def before_train_epoch(self, runner):
        # Unfreeze the backbone network.
        # Only valid for resnet.
        if runner.epoch == self.unfreeze_epoch:
            model = runner.model
            if is_module_wrapper(model):
                model = model.module
            backbone = model.backbone
            if backbone.frozen_stages >= 0:
                if backbone.deep_stem:
                    backbone.stem.train()
                    for param in backbone.stem.parameters():
                        param.requires_grad = True
                else:
                    backbone.norm1.train()
                    for m in [backbone.conv1, backbone.norm1]:
                        for param in m.parameters():
                            param.requires_grad = True

            for i in range(1, backbone.frozen_stages + 1):
                m = getattr(backbone, f'layer{i}')
                m.train()
                for param in m.parameters():
                    param.requires_grad = True


# ---- what the tests add around them ------------------------------------------------------

EVENTS: list[tuple] = []


@HOOKS.register_module()
class RecordingMyHook(MyHook):
    """MyHook, recording each of its calls with what the trainer showed at that moment."""

    def __init__(self, a, b, name="my"):
        super().__init__(a, b)
        self.name = name

    def _record(self, moment, runner):
        # whether the logger hooks (VERY_LOW) already made this iteration's row
        logged = runner.log_buffer.row_iter == runner.iter
        EVENTS.append((self.name, moment, runner.mode, runner.epoch, runner.iter, logged))

    def before_run(self, runner):
        self._record("before_run", runner)
        super().before_run(runner)

    def after_run(self, runner):
        self._record("after_run", runner)
        super().after_run(runner)

    def before_epoch(self, runner):
        self._record("before_epoch", runner)
        super().before_epoch(runner)

    def after_epoch(self, runner):
        self._record("after_epoch", runner)
        super().after_epoch(runner)

    def before_iter(self, runner):
        self._record("before_iter", runner)
        super().before_iter(runner)

    def after_iter(self, runner):
        self._record("after_iter", runner)
        super().after_iter(runner)


@pytest.fixture
def events():
    EVENTS.clear()
    yield EVENTS
    EVENTS.clear()


def test_my_hook_of_the_tutorial_runs_unchanged(shapes_root, tmp_path):
    cfg = tiny_config(shapes_root, epochs=1, custom_hooks=[dict(type="MyHook", a=1, b=2)])
    run = train(cfg, work_dir=str(tmp_path), progress=False)
    assert run.status == "finished"


def test_generic_moments_come_in_order_for_a_two_epoch_run(shapes_root, tmp_path, events):
    cfg = tiny_config(shapes_root, epochs=2,
                      custom_hooks=[dict(type="RecordingMyHook", a=1, b=2)])
    train(cfg, work_dir=str(tmp_path), progress=False)
    per_epoch = ["before_epoch", "before_iter", "after_iter", "before_iter", "after_iter",
                 "after_epoch"]
    training = [moment for _, moment, mode, *_ in events if mode == "train"]
    assert training == ["before_run", *per_epoch, *per_epoch, "after_run"]
    # the counters at each moment: epochs and iterations counted from 0, as in mmcv
    iters = [(epoch, it) for _, moment, mode, epoch, it, _ in events
             if mode == "train" and moment == "before_iter"]
    assert iters == [(0, 0), (0, 1), (1, 2), (1, 3)]
    # the evaluation after each epoch calls no moment of its own, as mmcv's EvalHook: a hook
    # with generic before_epoch / after_epoch runs once an epoch
    assert not [event for event in events if event[2] == "val"]


def test_priorities_of_custom_hooks_are_respected(shapes_root, tmp_path, events):
    cfg = tiny_config(shapes_root, epochs=1, custom_hooks=[
        dict(type="RecordingMyHook", a=1, b=2, name="lowest", priority="LOWEST"),
        dict(type="RecordingMyHook", a=1, b=2, name="highest", priority="HIGHEST"),
        dict(type="RecordingMyHook", a=1, b=2, name="sixty", priority=60)])
    train(cfg, work_dir=str(tmp_path), progress=False)
    after_iter = [(name, it, logged) for name, moment, mode, _, it, logged in events
                  if moment == "after_iter"]
    # listed lowest first, they run by priority; only the hook after the logger (VERY_LOW, 90)
    # sees the iteration's log row made
    assert after_iter == [("highest", 0, False), ("sixty", 0, False), ("lowest", 0, True),
                          ("highest", 1, False), ("sixty", 1, False), ("lowest", 1, True)]
    before_run = [name for name, moment, *_ in events if moment == "before_run"]
    assert before_run == ["highest", "sixty", "lowest"]


# ---- UnfreezeBackboneEpochBasedHook -----------------------------------------------------


def layer1_weight(path):
    return read_checkpoint(str(path))["state_dict"]["backbone.layer1.0.conv1.weight"]


def test_unfreeze_backbone_hook_runs_unchanged(shapes_root, tmp_path):
    cfg = tiny_config(shapes_root, epochs=2, custom_hooks=[
        dict(type="UnfreezeBackboneEpochBasedHook", unfreeze_epoch=1)],
        **{"model.backbone.frozen_stages": 1})
    train(cfg, work_dir=str(tmp_path), progress=False)
    # layer1 was frozen in the first epoch and trained in the second
    assert not torch.equal(layer1_weight(tmp_path / "epoch_1.pth"),
                           layer1_weight(tmp_path / "epoch_2.pth"))


@HOOKS.register_module()
class RecordFrozen(Hook):
    """Records whether layer1 and the stem's norm train at the start of each epoch."""

    def __init__(self, name):
        self.name = name

    def before_train_epoch(self, runner):
        backbone = runner.model.backbone
        EVENTS.append((self.name, runner.epoch, backbone.layer1[0].conv1.weight.requires_grad,
                       backbone.bn1.weight.requires_grad))


def test_unfreeze_backbone_hook_unfreezes_at_its_epoch_and_priority(shapes_root, tmp_path,
                                                                      events):
    hooks = [dict(type="RecordFrozen", name="before", priority="VERY_HIGH"),
             dict(type="UnfreezeBackboneEpochBasedHook", unfreeze_epoch=1, priority="HIGH"),
             dict(type="RecordFrozen", name="after", priority="NORMAL")]
    cfg = tiny_config(shapes_root, epochs=2, custom_hooks=hooks,
                      **{"model.backbone.frozen_stages": 1})
    train(cfg, work_dir=str(tmp_path / "unfrozen"), progress=False)
    assert events == [("before", 0, False, False), ("after", 0, False, False),
                      ("before", 1, False, False), ("after", 1, True, True)]
    # layer1 trained in the second epoch only
    assert not torch.equal(layer1_weight(tmp_path / "unfrozen" / "epoch_1.pth"),
                           layer1_weight(tmp_path / "unfrozen" / "epoch_2.pth"))
    frozen = tiny_config(shapes_root, epochs=2, **{"model.backbone.frozen_stages": 1})
    train(frozen, work_dir=str(tmp_path / "frozen"), progress=False)
    assert torch.equal(layer1_weight(tmp_path / "frozen" / "epoch_1.pth"),
                       layer1_weight(tmp_path / "frozen" / "epoch_2.pth"))
