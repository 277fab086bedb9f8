"""collate -> Batch and build_dataloader (padding, fields, determinism, workers)."""

import random
import signal

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

import detlab
from detlab.config import ConfigError
from detlab.data import (
    ClassAwareSampler,
    CocoDataset,
    DistributedGroupSampler,
    GroupSampler,
    RepeatDataset,
    SeededDataset,
    build_dataloader,
    collate,
    make_shapes_dataset,
)
from detlab.engine.hooks import Hook
from detlab.structures import Batch

NORM = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
TRAIN_PIPELINE = [
    dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True),
    dict(type="Resize", img_scale=[(96, 64), (128, 96)], keep_ratio=True),
    dict(type="RandomFlip", flip_ratio=0.5), dict(type="Normalize", **NORM),
    dict(type="Pad", size_divisor=32), dict(type="DefaultFormatBundle"),
    dict(type="Collect", keys=["img", "gt_bboxes", "gt_labels"]),
]
# every kind of draw: random scales, expansion, crops that drop samples (redrawn), flips, colours
RANDOM_PIPELINE = [
    dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True),
    dict(type="Expand", mean=NORM["mean"], ratio_range=(1, 2)),
    dict(type="RandomCrop", crop_size=(40, 40)),
    dict(type="Resize", img_scale=[(96, 64), (128, 96)], keep_ratio=True),
    dict(type="RandomFlip", flip_ratio=0.5), dict(type="PhotoMetricDistortion"),
    *TRAIN_PIPELINE[4:],
]


def _test_pipeline(**tta):
    return [dict(type="LoadImageFromFile"), dict(
        type="MultiScaleFlipAug", **tta, transforms=[
            dict(type="Resize", keep_ratio=True), dict(type="RandomFlip"),
            dict(type="Normalize", **NORM), dict(type="Pad", size_divisor=32),
            dict(type="ImageToTensor", keys=["img"]), dict(type="Collect", keys=["img"])])]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("shapes"), num_train=8, num_val=3,
                               image_size=(80, 60))


@pytest.fixture
def train_set(shapes):
    return CocoDataset(shapes["train_ann_file"], TRAIN_PIPELINE,
                       img_prefix=shapes["train_img_prefix"])


def _sample(h, w, n_boxes=2, **extra):
    meta = dict(img_shape=(h, w, 3), pad_shape=(h, w, 3))
    return dict(img=torch.ones(3, h, w), img_metas=meta,
                gt_bboxes=torch.arange(n_boxes * 4, dtype=torch.float32).reshape(n_boxes, 4),
                gt_labels=torch.zeros(n_boxes, dtype=torch.int64), **extra)


def test_collate_pads_bottom_right_and_fills_the_batch():
    batch = collate([_sample(64, 96), _sample(96, 32, n_boxes=0,
                                              gt_bboxes_ignore=torch.ones(1, 4))])
    assert isinstance(batch, Batch) and len(batch) == 2
    assert batch.images.shape == (2, 3, 96, 96) and batch.images.dtype == torch.float32
    assert batch.images[0, :, :64, :96].eq(1).all() and batch.images[0, :, 64:].eq(0).all()
    assert batch.images[1, :, :, 32:].eq(0).all()
    first, second = batch.targets
    assert first["boxes"].shape == (2, 4) and first["boxes"].dtype == torch.float32
    assert first["labels"].dtype == torch.int64
    assert first["boxes_ignore"].shape == (0, 4)
    assert second["boxes"].shape == (0, 4) and second["boxes_ignore"].shape == (1, 4)
    assert [m["batch_input_shape"] for m in batch.metas] == [(96, 96), (96, 96)]
    assert batch.metas[0]["img_shape"] == (64, 96, 3)


def test_collate_test_samples():
    plain = {"img": torch.zeros(3, 32, 32), "img_metas": {"flip": False}}
    assert collate([plain]).targets == [{}]
    one = {"img": [torch.zeros(3, 32, 32)], "img_metas": [{"flip": False}]}
    batch = collate([one, one])
    assert isinstance(batch, Batch) and batch.targets == [{}, {}]
    two = {"img": [torch.zeros(3, 32, 32), torch.zeros(3, 64, 32)],
           "img_metas": [{"flip": False}, {"flip": True}]}
    batches = collate([two, two])
    assert isinstance(batches, list) and len(batches) == 2
    assert batches[1].images.shape == (2, 3, 64, 32)
    assert [m["flip"] for m in batches[1].metas] == [True, True]


def test_collate_errors_say_what_to_add():
    with pytest.raises(TypeError, match="sample 0 has an 'img' of type ndarray.*"
                                        "DefaultFormatBundle"):
        collate([dict(img=np.zeros((8, 8, 3)), img_metas={})])
    with pytest.raises(KeyError, match="Collect"):
        collate([dict(img=torch.zeros(3, 8, 8))])
    with pytest.raises(ValueError, match="at least one sample"):
        collate([])


def test_loader_batches_from_a_dataset(train_set):
    loader = build_dataloader(train_set, samples_per_gpu=2, workers_per_gpu=0, seed=0)
    batches = list(loader)
    assert len(batches) == 4 and all(isinstance(b, Batch) for b in batches)
    for batch in batches:
        assert batch.images.shape[-2] % 32 == 0 and batch.images.shape[-1] % 32 == 0
        for target, meta in zip(batch.targets, batch.metas, strict=True):
            h, w = meta["img_shape"][:2]
            assert len(target["boxes"]) == len(target["labels"]) >= 1
            assert (target["boxes"][:, 2] <= w).all() and (target["boxes"][:, 3] <= h).all()


def _ids_and_flips(loader):
    return [(m["img_id"], m["flip"]) for batch in loader for m in batch.metas]


def test_shuffling_repeats_for_a_seed(train_set):
    def order(seed):
        loader = build_dataloader(train_set, 2, 0, seed=seed)
        return [[m["img_id"] for b in loader for m in b.metas] for _ in range(2)]

    first, again, other = order(3), order(3), order(4)
    assert first == again
    assert first != other
    assert first[0] != first[1]  # a new order each epoch
    assert sorted(first[0]) == list(range(1, 9))


def _batches(loader):
    """``(img_ids, flips, images, boxes)`` of each batch of one pass."""
    return [([m["img_id"] for m in b.metas], [m["flip"] for m in b.metas], b.images,
             [t["boxes"] for t in b.targets]) for b in loader]


def _assert_same_batches(first, second):
    assert len(first) == len(second)
    for (ids, flips, images, boxes), (ids2, flips2, images2, boxes2) in zip(
            first, second, strict=True):
        assert ids == ids2 and flips == flips2
        assert torch.equal(images, images2)
        assert all(torch.equal(a, b) for a, b in zip(boxes, boxes2, strict=True))


@pytest.fixture
def random_set(shapes):
    return CocoDataset(shapes["train_ann_file"], RANDOM_PIPELINE,
                       img_prefix=shapes["train_img_prefix"])


def test_samples_do_not_depend_on_the_number_of_workers(random_set):
    def two_epochs(workers):
        loader = build_dataloader(random_set, 2, workers, seed=5)
        return _batches(loader) + _batches(loader)

    alone = two_epochs(0)
    assert len({f for _, flips, _, _ in alone for f in flips}) == 2  # some flipped, some not
    pixels = [{i: img for b in epoch for i, img in zip(b[0], b[2], strict=True)}
              for epoch in (alone[:4], alone[4:])]
    common = pixels[0].keys() & pixels[1].keys()
    assert len(common) > 4
    assert not any(torch.equal(pixels[0][i], pixels[1][i]) for i in common)  # new draws
    for workers in (1, 2):
        _assert_same_batches(two_epochs(workers), alone)
    other = build_dataloader(random_set, 2, 0, seed=6)
    assert [ids for ids, *_ in _batches(other)] != [ids for ids, *_ in alone[:4]]


def test_resuming_mid_epoch_repeats_the_rest_of_the_epoch(random_set):
    loader = build_dataloader(random_set, 2, 1, seed=8)
    loader.sampler.set_epoch(1)
    full = _batches(loader)
    assert len(full) == len(loader) == 4
    resumed = build_dataloader(random_set, 2, 1, seed=8)
    resumed.sampler.set_position(1, 3)
    _assert_same_batches(_batches(resumed), full[3:])
    loader.sampler.set_epoch(2)
    _assert_same_batches(_batches(resumed), _batches(loader))  # then epoch 2, whole


def test_a_pass_without_workers_leaves_the_main_process_random_streams_alone(random_set):
    loader = build_dataloader(random_set, 2, 0, seed=1)
    before = random.getstate(), np.random.get_state(), torch.get_rng_state()
    assert len(_batches(loader)) == 4
    assert random.getstate() == before[0]
    _, key, pos, *_ = np.random.get_state()
    assert np.array_equal(key, before[1][1]) and pos == before[1][2]
    assert torch.equal(torch.get_rng_state(), before[2])


def test_the_loader_draws_and_keeps_its_seed(train_set):
    np.random.seed(2)
    drawn = build_dataloader(train_set, 2, 0)
    np.random.seed(2)
    assert build_dataloader(train_set, 2, 0).seed == drawn.seed
    given = build_dataloader(train_set, 2, 0, seed=drawn.seed)
    assert given.seed == drawn.seed
    _assert_same_batches(_batches(given), _batches(drawn))
    assert build_dataloader(train_set, 2, 0, shuffle=False).seed is None


def test_the_loaders_dataset_answers_as_the_dataset(train_set):
    loader = build_dataloader(train_set, 2, 0, seed=0)
    assert isinstance(loader.dataset, SeededDataset) and loader.dataset.dataset is train_set
    assert loader.dataset.CLASSES == train_set.CLASSES
    assert loader.dataset.flag is train_set.flag and loader.dataset.cat_ids == train_set.cat_ids
    assert loader.dataset.evaluate.__func__ is type(train_set).evaluate
    assert isinstance(loader.sampler, GroupSampler) and loader.sampler.with_epoch


def test_per_sample_seed_off_seeds_the_workers_instead(train_set):
    loader = build_dataloader(train_set, 2, 1, seed=5, per_sample_seed=False)
    assert loader.dataset is train_set and not loader.sampler.with_epoch
    assert _ids_and_flips(loader) == _ids_and_flips(
        build_dataloader(train_set, 2, 1, seed=5, per_sample_seed=False))
    with pytest.raises(ValueError, match="per_sample_seed needs shuffle=True"):
        build_dataloader(train_set, 2, 0, shuffle=False, per_sample_seed=True)


class _ReportsSigint:
    """One sample a worker's SIGINT handler in its metas."""

    def __len__(self):
        return 2

    def __getitem__(self, index):
        handler = signal.getsignal(signal.SIGINT)
        return dict(img=torch.zeros(3, 4, 4), img_metas=dict(sigint=handler))


def test_workers_ignore_sigint():
    batch = next(iter(build_dataloader(_ReportsSigint(), 2, 1, shuffle=False)))
    assert [m["sigint"] for m in batch.metas] == [signal.SIG_IGN, signal.SIG_IGN]
    assert signal.getsignal(signal.SIGINT) is not signal.SIG_IGN  # the main process keeps it


def test_no_shuffle_keeps_the_dataset_order(shapes):
    val = CocoDataset(shapes["val_ann_file"], _test_pipeline(img_scale=(96, 64)),
                      img_prefix=shapes["val_img_prefix"], test_mode=True)
    loader = build_dataloader(val, samples_per_gpu=2, workers_per_gpu=0, shuffle=False)
    batches = list(loader)
    assert [m["img_id"] for b in batches for m in b.metas] == [1, 2, 3]
    assert batches[0].targets == [{}, {}] and batches[0].images.shape == (2, 3, 64, 96)


def test_test_time_augmentations_give_a_list_of_batches(shapes):
    val = CocoDataset(shapes["val_ann_file"],
                      _test_pipeline(img_scale=[(96, 64), (64, 48)], flip=True),
                      img_prefix=shapes["val_img_prefix"], test_mode=True)
    batches = next(iter(build_dataloader(val, 3, 0, shuffle=False)))
    assert len(batches) == 4
    assert [b.metas[0]["flip"] for b in batches] == [False, True, False, True]
    assert batches[2].images.shape == (3, 3, 64, 64)


def test_distributed_loaders(train_set):
    loader = build_dataloader(train_set, 2, 0, dist=True, seed=0)
    assert isinstance(loader.sampler, DistributedGroupSampler) and loader.batch_size == 2
    assert loader.sampler.with_epoch and len(loader) == 4  # one process here
    test = build_dataloader(train_set, 2, 0, dist=True, shuffle=False)
    assert isinstance(test.sampler, DistributedSampler) and not test.sampler.shuffle


# --------------------------------------------------------------------------------------------
# class-aware sampling (MMDetection's OpenImages configs)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dist", [False, True])
def test_class_aware_loader_draws_class_by_class(train_set, dist):
    loader = build_dataloader(train_set, 3, 0, dist=dist, seed=4,
                              class_aware_sampler=dict(num_sample_class=1))
    sampler = loader.sampler
    assert isinstance(sampler, ClassAwareSampler) and sampler.with_epoch
    assert (sampler.num_sample_class, sampler.num_replicas, sampler.seed) == (1, 1, 4)
    assert len(loader) == 3 and len(sampler) == 9  # 8 images -> 3 full batches of 3
    labels_of = {info["id"]: set(train_set.get_ann_info(i)["labels"].tolist())
                 for i, info in enumerate(train_set.data_infos)}
    sampler.set_epoch(1)
    keys = list(sampler)
    sampler.set_epoch(1)
    batches = list(loader)
    assert all(isinstance(b, Batch) and len(b.metas) == 3 for b in batches)
    ids = [m["img_id"] for b in batches for m in b.metas]
    assert ids == [train_set.data_infos[k.index]["id"] for k in keys]
    # with 3 classes, each round of 3 draws visits every class once
    for start in range(0, 9, 3):
        rounds = [labels_of[i] for i in ids[start:start + 3]]
        assert len(set.union(*rounds)) == 3
    sampler.set_epoch(1)
    assert [m["img_id"] for b in loader for m in b.metas] == ids  # a function of (seed, epoch)


def test_class_aware_loader_settings_are_checked(train_set):
    with pytest.raises(ConfigError, match=r"data\.train_dataloader\.class_aware_sampler\."
                                          r"num_sample_clas is not.*Did you mean "
                                          r"'num_sample_class'"):
        build_dataloader(train_set, 2, 0, seed=0, class_aware_sampler=dict(num_sample_clas=1))
    with pytest.raises(ConfigError, match=r"class_aware_sampler\.num_sample_class must be an "
                                          r"int >= 1.*got 0"):
        build_dataloader(train_set, 2, 0, seed=0, class_aware_sampler=dict(num_sample_class=0))
    with pytest.raises(ConfigError, match="must be a dict"):
        build_dataloader(train_set, 2, 0, seed=0, class_aware_sampler=1)
    with pytest.raises(ConfigError, match="data.train_dataloader only"):
        build_dataloader(train_set, 2, 0, shuffle=False, class_aware_sampler={})
    with pytest.raises(TypeError, match=r"RepeatDataset has none"):
        build_dataloader(RepeatDataset(train_set, 2), 2, 0, seed=0, class_aware_sampler={})
    loader = build_dataloader(train_set, 2, 0, seed=0, class_aware_sampler={})
    assert loader.sampler.num_sample_class == 1  # MMDetection's default


def test_training_with_class_aware_sampling(shapes_root, make_config, tmp_path):
    class SeeSampler(Hook):
        def __init__(self):
            self.seen = []

        def before_train_epoch(self, trainer):
            self.seen.append(trainer.data_loader.sampler)

    see = SeeSampler()

    cfg = make_config(shapes_root, epochs=1, **{
        "data.train_dataloader": dict(class_aware_sampler=dict(num_sample_class=1))})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        run = detlab.train(cfg, work_dir=str(tmp_path / "cas"), progress=False, seed=0,
                           hooks=[see])
    finally:
        torch.set_num_threads(threads)
    assert run.status == "finished"
    assert len(see.seen) == 1 and isinstance(see.seen[0], ClassAwareSampler)
    assert (tmp_path / "cas" / "epoch_1.pth").exists()
