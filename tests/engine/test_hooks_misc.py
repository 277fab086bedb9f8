"""The smaller hooks of mmcv 1.7 and MMDetection 2.28: class-count and loss checks, memory,
YOLOX's mode switch and process syncs, the sampler and epoch hooks."""

import logging
import os
import random
import sys
import types

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, Dataset

from detlab.config import ConfigError
from detlab.data.datasets.wrappers import MultiImageMixDataset
from detlab.data.samplers import GroupSampler, SeededDataset
from detlab.engine.hooks.checks import CheckInvalidLossHook, NumClassCheckHook
from detlab.engine.hooks.epoch_info import DistSamplerSeedHook, SetEpochInfoHook
from detlab.engine.hooks.memory import EmptyCacheHook, MemoryProfilerHook
from detlab.engine.hooks.yolox import SyncNormHook, SyncRandomSizeHook, YOLOXModeSwitchHook
from detlab.registry import HOOKS


def fake_trainer(**state):
    """What the hooks read of a trainer, as a namespace."""
    defaults = dict(epoch=0, iter=0, inner_iter=0, max_epochs=5, by_epoch=True, rank=0,
                    logger=logging.getLogger("test_hooks_misc"), outputs={}, hooks=[])
    return types.SimpleNamespace(**{**defaults, **state})


def test_every_hook_is_registered_under_its_mmdetection_name():
    names = ["NumClassCheckHook", "CheckInvalidLossHook", "MemoryProfilerHook", "EmptyCacheHook",
             "YOLOXModeSwitchHook", "SyncNormHook", "SyncRandomSizeHook", "DistSamplerSeedHook",
             "SetEpochInfoHook"]
    assert set(names) <= set(HOOKS.list())


# ---- NumClassCheckHook -----------------------------------------------------------------------


class Classes(Dataset):
    def __init__(self, classes):
        self.CLASSES = classes

    def __len__(self):
        return 2

    def __getitem__(self, idx):
        return idx


class RPNHead(nn.Module):
    num_classes = 1


class StageCascadeRPNHead(RPNHead):  # a subclass: exempt too, as MMDetection's isinstance
    pass


class VGG(nn.Module):
    num_classes = 1000


class Head(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.num_classes = num_classes


class TwoStage(nn.Module):
    def __init__(self, num_classes):
        super().__init__()
        self.backbone, self.rpn_head = VGG(), RPNHead()
        self.cascade_rpn = StageCascadeRPNHead()
        self.roi_head = Head(num_classes)


def test_num_class_check_skips_heads_whose_count_is_not_the_datasets():
    loader = DataLoader(SeededDataset(Classes(("a", "b", "c")), seed=0))
    trainer = fake_trainer(model=TwoStage(3), data_loader=loader, val_loss_loader=None)
    NumClassCheckHook().before_train_epoch(trainer)  # RPN (1), VGG (1000) are not checked
    trainer.model = TwoStage(5)
    with pytest.raises(ConfigError, match=r"model.roi_head.num_classes is 5 but the training "
                                          r"dataset has 3 classes \(a, b, c\); set "
                                          r"model.roi_head.num_classes=3"):
        NumClassCheckHook().before_train_epoch(trainer)


def test_num_class_check_checks_the_validation_loader_and_iteration_runs():
    trainer = fake_trainer(model=TwoStage(3), data_loader=DataLoader(Classes(("a", "b", "c"))),
                           val_loss_loader=DataLoader(Classes(("a", "b"))))
    hook = NumClassCheckHook()
    with pytest.raises(ConfigError, match="the validation dataset has 2 classes"):
        hook.before_val_epoch(trainer)
    trainer.data_loader = DataLoader(Classes(("a",)))
    with pytest.raises(ConfigError, match="the training dataset has 1 classes"):
        hook.before_epoch(trainer)  # what an iteration-based run calls


def test_num_class_check_names_a_string_classes_and_warns_without_classes(caplog):
    trainer = fake_trainer(model=TwoStage(3), data_loader=DataLoader(Classes("abc")))
    with pytest.raises(ConfigError, match=r"classes=\('abc',\) with a comma"):
        NumClassCheckHook().before_train_epoch(trainer)
    trainer.data_loader = DataLoader(Classes(None))
    with caplog.at_level(logging.WARNING):
        NumClassCheckHook().before_train_epoch(trainer)
    assert "has no CLASSES" in caplog.text


# ---- CheckInvalidLossHook, memory --------------------------------------------------------


def test_check_invalid_loss_every_interval():
    hook = CheckInvalidLossHook(interval=5)
    trainer = fake_trainer(outputs={"loss": torch.tensor(float("nan")),
                                    "log_vars": {"loss_cls": float("nan")}})
    trainer.iter = 3
    hook.after_train_iter(trainer)  # iteration 4: not checked, as every_n_iters(5)
    trainer.iter = 4
    with pytest.raises(FloatingPointError, match="infinite or NaN at iteration 5 "
                                                 r"\(loss_cls: nan\)"):
        hook.after_train_iter(trainer)
    trainer.outputs["loss"] = torch.tensor(2.0)
    hook.after_train_iter(trainer)


def test_memory_profiler_logs_mmdetections_line(caplog):
    psutil = pytest.importorskip("psutil")
    hook = MemoryProfilerHook(interval=2)
    trainer = fake_trainer(iter=1)
    with caplog.at_level(logging.INFO):
        hook.after_train_iter(trainer)  # the generic after_iter, as in MMDetection
    line = caplog.records[-1].getMessage()
    for key in ("available_memory", "used_memory", "memory_utilization", "available_swap_memory",
                "used_swap_memory", "swap_memory_utilization", "current_process_memory"):
        assert f"{key}: " in line
    process_mb = int(line.rsplit("current_process_memory: ", 1)[1].split()[0])
    assert abs(process_mb - psutil.Process().memory_info().rss / 2**20) < 64


def test_memory_profiler_without_psutil_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "psutil", None)
    with pytest.raises(ImportError, match="pip install psutil"):
        MemoryProfilerHook()


def test_empty_cache_hook_at_mmcv_moments(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(1))
    trainer = fake_trainer()
    default = EmptyCacheHook()
    default.before_train_epoch(trainer)
    default.after_train_iter(trainer)
    assert calls == []
    default.after_train_epoch(trainer)
    assert calls == [1]
    every = EmptyCacheHook(before_epoch=True, after_epoch=False, after_iter=True)
    every.before_train_epoch(trainer)
    every.after_train_iter(trainer)
    every.after_val_iter(trainer)
    every.after_train_epoch(trainer)
    assert len(calls) == 4


# ---- YOLOX ---------------------------------------------------------------------------------


class Mosaic:
    def __call__(self, results):
        results["steps"] = results["steps"] + ["Mosaic"]
        return results


class Flip:
    def __call__(self, results):
        results["steps"] = results["steps"] + ["Flip"]
        results["scale"] = results.get("scale")
        return results


class Inner(Dataset):
    CLASSES = ("a",)

    def __len__(self):
        return 4

    def __getitem__(self, idx):
        return {"steps": []}


class YOLOXHead(nn.Module):
    use_l1 = False


class YOLOX(nn.Module):
    def __init__(self):
        super().__init__()
        self.bbox_head = YOLOXHead()


def mix_loader(workers: int = 0) -> DataLoader:
    dataset = MultiImageMixDataset(Inner(), [Mosaic(), Flip()])
    return DataLoader(SeededDataset(dataset, seed=0), batch_size=None, num_workers=workers,
                      persistent_workers=workers > 0)


def test_yolox_mode_switch_at_mmdetections_epoch():
    hook = YOLOXModeSwitchHook(num_last_epochs=2, skip_type_keys=("Mosaic",))
    trainer = fake_trainer(model=YOLOX(), data_loader=mix_loader(), max_epochs=5)
    for epoch in (0, 1):
        trainer.epoch = epoch
        hook.before_train_epoch(trainer)
        assert next(iter(trainer.data_loader))["steps"] == ["Mosaic", "Flip"]
        assert trainer.model.bbox_head.use_l1 is False
    trainer.epoch = 2  # MMDetection: (epoch + 1) == max_epochs - num_last_epochs
    hook.before_train_epoch(trainer)
    assert next(iter(trainer.data_loader))["steps"] == ["Flip"]
    assert trainer.model.bbox_head.use_l1 is True
    # a run resumed at a later epoch switches at its first epoch
    late = fake_trainer(model=YOLOX(), data_loader=mix_loader(), max_epochs=5, epoch=4)
    YOLOXModeSwitchHook(num_last_epochs=2, skip_type_keys=("Mosaic",)).before_train_epoch(late)
    assert late.model.bbox_head.use_l1 is True
    assert next(iter(late.data_loader))["steps"] == ["Flip"]


def test_yolox_mode_switch_reaches_persistent_workers():
    trainer = fake_trainer(model=YOLOX(), data_loader=mix_loader(workers=1), max_epochs=2)
    assert next(iter(trainer.data_loader))["steps"] == ["Mosaic", "Flip"]  # workers started
    YOLOXModeSwitchHook(num_last_epochs=1, skip_type_keys=("Mosaic",)).before_train_epoch(
        trainer)
    assert next(iter(trainer.data_loader))["steps"] == ["Flip"]


def test_yolox_mode_switch_needs_a_mix_dataset():
    trainer = fake_trainer(model=YOLOX(), data_loader=DataLoader(SeededDataset(Inner(), 0)),
                           max_epochs=1)
    with pytest.raises(ConfigError, match="data.train is a Inner, which has no "
                                          r"update_skip_type_keys\(\); wrap it in "
                                          "dict\\(type='MultiImageMixDataset'"):
        YOLOXModeSwitchHook(num_last_epochs=1).before_train_epoch(trainer)


def test_sync_random_size_draws_mmdetections_size_for_the_dataset():
    with pytest.warns(FutureWarning, match="multiscale_mode='range'"):
        hook = SyncRandomSizeHook(ratio_range=(10, 20), img_scale=(640, 480), interval=2,
                                  device="cpu")
    trainer = fake_trainer(data_loader=mix_loader(), epoch=0)
    hook.after_train_epoch(trainer)  # epoch 1: not a multiple of interval 2
    assert next(iter(trainer.data_loader))["scale"] is None
    trainer.epoch = 1
    random.seed(3)
    hook.after_train_epoch(trainer)
    random.seed(3)
    ratio = random.randint(10, 20)  # mmdet/core/hook/sync_random_size_hook.py
    expected = (int(32 * ratio), 32 * int(ratio * 480 / 640))
    assert tuple(next(iter(trainer.data_loader))["scale"]) == expected
    plain = fake_trainer(data_loader=DataLoader(SeededDataset(Inner(), 0)), epoch=1)
    with pytest.raises(ConfigError, match="update_dynamic_scale"):
        hook.after_train_epoch(plain)


def test_sync_norm_switches_to_every_epoch_for_the_last_ones():
    hook = SyncNormHook(num_last_epochs=2, interval=3)
    trainer = fake_trainer(model=nn.BatchNorm1d(2), max_epochs=6, epoch=2)
    hook.before_train_epoch(trainer)
    assert hook.interval == 3
    trainer.epoch = 3  # (epoch + 1) == max_epochs - num_last_epochs
    hook.before_train_epoch(trainer)
    assert hook.interval == 1
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    hook.after_train_epoch(trainer)  # one process: nothing to average
    assert all(torch.equal(v, before[k]) for k, v in trainer.model.state_dict().items())


def _sync_norm_worker(rank: int, world_size: int, init_file: str, out: str) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                                         world_size=world_size)
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    with torch.no_grad():
        model[1].running_mean.fill_(float(rank + 1))  # 1 and 2: the mean is 1.5
        model[1].running_var.fill_(float(4 * rank + 1))  # 1 and 5: 3
        model[1].num_batches_tracked.fill_(3 + 2 * rank)  # 3 and 5: 4
        model[0].weight.fill_(float(rank))  # not a norm layer: left alone
    trainer = fake_trainer(model=model, max_epochs=3, epoch=0)
    SyncNormHook(num_last_epochs=0, interval=1).after_train_epoch(trainer)
    torch.save(model.state_dict(), f"{out}.{rank}")
    torch.distributed.destroy_process_group()


def test_sync_norm_averages_norm_states_over_two_processes(tmp_path):
    out = str(tmp_path / "state")
    mp.spawn(_sync_norm_worker, args=(2, str(tmp_path / "init"), out), nprocs=2)
    for rank in range(2):
        state = torch.load(f"{out}.{rank}", weights_only=True)
        assert torch.equal(state["1.running_mean"], torch.full((2,), 1.5))
        assert torch.equal(state["1.running_var"], torch.full((2,), 3.0))
        assert int(state["1.num_batches_tracked"]) == 4
        assert torch.equal(state["0.weight"], torch.full((2, 2), float(rank)))


# ---- sampler and epoch ---------------------------------------------------------------------


class Flagged(Dataset):
    flag = np.zeros(12, dtype=np.uint8)

    def __len__(self):
        return 12

    def __getitem__(self, idx):
        return idx


@pytest.mark.filterwarnings("ignore:On January 1, 2023, MMCV")
def test_dist_sampler_seed_hook_keeps_a_mid_epoch_position():
    from mmcv.runner.hooks import DistSamplerSeedHook as MmcvDistSamplerSeedHook

    sampler = GroupSampler(Flagged(), samples_per_gpu=2, seed=0)
    loader = DataLoader(Flagged(), batch_size=2, sampler=sampler)
    resumed = fake_trainer(data_loader=loader, epoch=1, inner_iter=2, by_epoch=False)
    whole_epoch = list(iter(sampler))
    sampler.set_position(1, 2)  # the trainer, resuming an iteration run at batch 2 of epoch 1
    expected = list(sampler._order(1)[4:])
    DistSamplerSeedHook().before_epoch(resumed)
    assert list(iter(sampler)) == expected
    # mmcv's hook would have rewound the epoch to its first batch
    sampler.set_position(1, 2)
    MmcvDistSamplerSeedHook().before_epoch(resumed)
    assert list(iter(sampler)) == list(sampler._order(1)) != expected
    assert len(whole_epoch) == 12


def test_dist_sampler_seed_hook_positions_a_batch_samplers_sampler():
    from torch.utils.data import BatchSampler

    inner = GroupSampler(Flagged(), samples_per_gpu=2, seed=0)
    loader = DataLoader(Flagged(), batch_sampler=BatchSampler(inner, 2, drop_last=False))
    DistSamplerSeedHook().before_train_epoch(fake_trainer(data_loader=loader, epoch=3))
    assert (inner.epoch, inner.start_batch) == (3, 0)
    DistSamplerSeedHook().before_epoch(fake_trainer(data_loader=loader, epoch=5, inner_iter=4,
                                                    by_epoch=False))
    assert (inner.epoch, inner.start_batch) == (5, 4)


class WithEpoch(nn.Module):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def set_epoch(self, epoch):
        self.epochs.append(epoch)


def test_set_epoch_info_hook():
    model = WithEpoch()
    for epoch in range(3):
        SetEpochInfoHook().before_train_epoch(fake_trainer(model=model, epoch=epoch))
    assert model.epochs == [0, 1, 2]
    with pytest.raises(ConfigError, match="model.set_epoch"):
        SetEpochInfoHook().before_train_epoch(fake_trainer(model=nn.Linear(1, 1)))


def test_hooks_are_built_from_their_configs():
    assert HOOKS.build(dict(type="CheckInvalidLossHook", interval=7)).interval == 7
    hook = HOOKS.build(dict(type="YOLOXModeSwitchHook", num_last_epochs=3))
    assert hook.skip_type_keys == ("Mosaic", "RandomAffine", "MixUp")
    assert os.environ.get("WORLD_SIZE") in (None, "1")
