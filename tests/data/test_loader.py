"""collate -> Batch, the samplers and build_dataloader (padding, fields, determinism)."""

import numpy as np
import pytest
import torch
from torch.utils.data import DistributedSampler

from detlab.data import CocoDataset, build_dataloader, collate, make_shapes_dataset
from detlab.data.loader import GroupSampler
from detlab.structures import Batch

NORM = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
TRAIN_PIPELINE = [
    dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True),
    dict(type="Resize", img_scale=[(96, 64), (128, 96)], keep_ratio=True),
    dict(type="RandomFlip", flip_ratio=0.5), dict(type="Normalize", **NORM),
    dict(type="Pad", size_divisor=32), dict(type="DefaultFormatBundle"),
    dict(type="Collect", keys=["img", "gt_bboxes", "gt_labels"]),
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


def test_workers_repeat_augmentations_for_a_seed(train_set):
    def run():
        return _ids_and_flips(build_dataloader(train_set, 2, 1, seed=5))

    assert run() == run()


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


def test_group_sampler_keeps_groups_together():
    class Flagged:
        flag = np.array([0, 1, 0, 1, 1, 0, 0], dtype=np.uint8)

        def __len__(self):
            return 7

    sampler = GroupSampler(Flagged(), samples_per_gpu=2, seed=1)
    indices = list(sampler)
    assert len(indices) == len(sampler) == 8  # 4 + 3 topped up to 4
    pairs = np.array(indices).reshape(-1, 2)
    assert (Flagged.flag[pairs[:, 0]] == Flagged.flag[pairs[:, 1]]).all()
    assert set(indices) == set(range(7))
    sampler.set_epoch(0)
    assert list(sampler) == indices


def test_distributed_loader_uses_a_distributed_sampler(train_set):
    loader = build_dataloader(train_set, 2, 0, dist=True, seed=0)
    assert isinstance(loader.sampler, DistributedSampler) and loader.batch_size == 2
