"""Samplers (groups, class-aware sampling, epochs, positions, the distributed split) and
per-sample seeding."""

import json
import math
import pickle
import random

import numpy as np
import pytest
import torch

from detlab.data import (
    ClassAwareSampler,
    CocoDataset,
    CustomDataset,
    DistributedGroupSampler,
    GroupSampler,
    MultiImageMixDataset,
    SampleKey,
    SeededDataset,
)


class Flagged:
    """A dataset of ``len(flag)`` samples in the aspect-ratio groups ``flag``."""

    def __init__(self, flag):
        self.flag = np.asarray(flag, dtype=np.uint8)

    def __len__(self):
        return len(self.flag)


TWO_GROUPS = Flagged([0, 1, 0, 1, 1, 0, 0, 1, 0, 0, 1, 0])  # 7 wide + 5 tall images


class Labelled:
    """A dataset whose image ``i`` holds the classes ``labels[i]``; ``get_cat2imgs`` worked
    out here by brute force."""

    def __init__(self, labels, num_classes):
        self.labels, self.num_classes = [list(lab) for lab in labels], num_classes

    def __len__(self):
        return len(self.labels)

    def get_cat2imgs(self):
        return {c: [i for i, lab in enumerate(self.labels) if c in lab]
                for c in range(self.num_classes)}


# one class an image, 30 / 6 / 1 / 0 images of classes 0 / 1 / 2 / 3
SKEWED = Labelled([[0]] * 30 + [[1]] * 6 + [[2]], num_classes=4)
SKEWED_CLASS = np.array([lab[0] for lab in SKEWED.labels])  # (37,) the class of each image


class Draws:
    """Sample ``i`` is ``(i, a draw of random, of np.random, of torch)``; ``CLASSES`` and
    ``evaluate`` as a detection dataset has them."""

    CLASSES = ("a", "b")

    def __init__(self, n=6):
        self.flag = np.zeros(n, dtype=np.uint8)

    def __len__(self):
        return len(self.flag)

    def __getitem__(self, i):
        return i, random.random(), float(np.random.rand()), float(torch.rand(()))

    def evaluate(self, results):
        return {"count": len(results)}

    def __getitems__(self, keys):  # as torch's Subset: the loader would call it instead
        return [self[k] for k in keys]


def _global_states():
    _, key, pos, *_ = np.random.get_state()
    return random.getstate(), (key, pos), torch.get_rng_state()


def _assert_same_states(before, after):
    assert before[0] == after[0]
    assert np.array_equal(before[1][0], after[1][0]) and before[1][1] == after[1][1]
    assert torch.equal(before[2], after[2])


# --------------------------------------------------------------------------------------------
# GroupSampler
# --------------------------------------------------------------------------------------------


def test_group_sampler_keeps_groups_together_and_tops_them_up():
    sampler = GroupSampler(TWO_GROUPS, samples_per_gpu=3, seed=1)
    indices = list(sampler)
    assert len(indices) == len(sampler) == 15  # 7 -> 9 and 5 -> 6
    batches = np.array(indices).reshape(-1, 3)
    groups = TWO_GROUPS.flag[batches]
    assert (groups == groups[:, :1]).all()
    assert set(indices) == set(range(12))
    assert np.bincount(groups[:, 0]).tolist() == [3, 2]


def test_group_sampler_order_is_a_function_of_seed_and_epoch():
    sampler = GroupSampler(TWO_GROUPS, samples_per_gpu=2, seed=4)
    epochs = [list(sampler) for _ in range(3)]  # each pass takes the next epoch
    assert epochs[0] != epochs[1] != epochs[2]
    np.random.seed(0)
    random.seed(0)
    again = GroupSampler(TWO_GROUPS, samples_per_gpu=2, seed=4)
    again.set_epoch(1)
    assert list(again) == epochs[1] and list(again) == epochs[2]
    other = GroupSampler(TWO_GROUPS, samples_per_gpu=2, seed=5)
    assert list(other) != epochs[0]


def test_group_sampler_without_flag_or_seed():
    class Plain:
        def __len__(self):
            return 5

    np.random.seed(3)
    sampler = GroupSampler(Plain(), samples_per_gpu=2)
    np.random.seed(3)
    assert sampler.seed == GroupSampler(Plain(), samples_per_gpu=2).seed  # np.random rules
    indices = list(sampler)
    assert len(indices) == 6 and set(indices) == set(range(5))


def test_sampler_keys_carry_the_epoch():
    sampler = GroupSampler(TWO_GROUPS, samples_per_gpu=2, seed=1, with_epoch=True)
    plain = GroupSampler(TWO_GROUPS, samples_per_gpu=2, seed=1)
    sampler.set_epoch(3)
    plain.set_epoch(3)
    keys = list(sampler)
    assert all(isinstance(k, SampleKey) and k.epoch == 3 for k in keys)
    assert [k.index for k in keys] == list(plain)
    assert {k.epoch for k in sampler} == {4}


# --------------------------------------------------------------------------------------------
# positions
# --------------------------------------------------------------------------------------------


def _samplers(with_epoch):
    return [GroupSampler(TWO_GROUPS, 2, seed=7, with_epoch=with_epoch),
            DistributedGroupSampler(TWO_GROUPS, 2, num_replicas=2, rank=1, seed=7,
                                    with_epoch=with_epoch),
            ClassAwareSampler(SKEWED, 2, num_replicas=1, rank=0, seed=7, with_epoch=with_epoch),
            ClassAwareSampler(SKEWED, 2, num_replicas=3, rank=2, seed=7, num_sample_class=2,
                              with_epoch=with_epoch)]


@pytest.mark.parametrize("with_epoch", [False, True])
@pytest.mark.parametrize("which", [0, 1, 2, 3], ids=["single", "distributed", "class-aware",
                                                     "class-aware-distributed"])
@pytest.mark.parametrize("start_batch", [0, 1, 3])
def test_a_pass_after_set_position_is_the_tail_of_the_epoch(with_epoch, which, start_batch):
    sampler = _samplers(with_epoch)[which]
    sampler.set_epoch(2)
    full, following = list(sampler), list(sampler)
    sampler.set_position(2, start_batch)
    tail = list(sampler)
    assert tail == full[start_batch * 2:]
    assert len(tail) == len(sampler) - start_batch * sampler.batch_size
    assert list(sampler) == following  # then epoch 3 from its first batch


def test_set_position_at_the_end_of_an_epoch_yields_nothing():
    sampler = GroupSampler(TWO_GROUPS, 2, seed=0)
    assert sampler.batches_per_epoch == 7  # 7 -> 8 and 5 -> 6
    sampler.set_position(5, 7)
    assert list(sampler) == [] and sampler.epoch == 6


def test_set_position_outside_the_epoch_says_what_to_do():
    sampler = DistributedGroupSampler(TWO_GROUPS, 2, num_replicas=2, rank=0, seed=0)
    assert sampler.batches_per_epoch == 4  # global batches of 4: 7 -> 8 and 5 -> 8
    with pytest.raises(ValueError, match=r"start_batch 5 is outside the 4 batches.*0\.\.4"):
        sampler.set_position(0, 5)
    with pytest.raises(ValueError, match="epoch must be >= 0"):
        sampler.set_position(-1, 0)


# --------------------------------------------------------------------------------------------
# DistributedGroupSampler
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", [TWO_GROUPS.flag, np.zeros(9), np.ones(4), [0, 1, 1]],
                         ids=["two-groups", "one-group-of-9", "fewer-than-a-batch", "tiny"])
@pytest.mark.parametrize("num_replicas,per_gpu", [(2, 2), (2, 3), (3, 1)])
def test_processes_together_see_the_batches_of_one_process(flag, num_replicas, per_gpu):
    dataset = Flagged(flag)
    global_batch = num_replicas * per_gpu
    single = GroupSampler(dataset, samples_per_gpu=global_batch, seed=11)
    ranks = [DistributedGroupSampler(dataset, per_gpu, num_replicas, rank, seed=11)
             for rank in range(num_replicas)]
    assert sum(len(s) for s in ranks) == len(single)
    assert {len(s) for s in ranks} == {len(single) // num_replicas}
    assert {s.batches_per_epoch for s in ranks} == {single.batches_per_epoch}
    for epoch in (0, 1, 5):
        single.set_epoch(epoch)
        for s in ranks:
            s.set_epoch(epoch)
        one = np.array(list(single)).reshape(-1, global_batch)  # (steps, B)
        shares = [np.array(list(s)).reshape(-1, per_gpu) for s in ranks]  # N x (steps, b)
        assert np.array_equal(np.concatenate(shares, axis=1), one)
        groups = dataset.flag[np.concatenate(shares)]
        assert (groups == groups[:, :1]).all()  # each process's batch is one group


def test_distributed_sampler_checks_its_rank():
    with pytest.raises(ValueError, match="rank 2 is outside 0..1"):
        DistributedGroupSampler(TWO_GROUPS, 2, num_replicas=2, rank=2, seed=0)


def test_distributed_sampler_defaults_to_the_process_group():
    sampler = DistributedGroupSampler(TWO_GROUPS, 2, seed=0)  # no process group: (0, 1)
    assert (sampler.rank, sampler.num_replicas) == (0, 1)
    assert list(sampler) == list(GroupSampler(TWO_GROUPS, 2, seed=0))


# --------------------------------------------------------------------------------------------
# ClassAwareSampler
# --------------------------------------------------------------------------------------------


def _epoch(sampler, epoch):
    sampler.set_epoch(epoch)
    return np.array(list(sampler), dtype=np.int64)


@pytest.mark.parametrize("per_gpu", [1, 2, 4, 5])
@pytest.mark.parametrize("epoch", [0, 3])
def test_class_aware_sampling_balances_the_classes(per_gpu, epoch):
    sampler = ClassAwareSampler(SKEWED, per_gpu, num_replicas=1, rank=0, seed=5)
    order = _epoch(sampler, epoch)
    assert len(order) == len(sampler) == math.ceil(37 / per_gpu) * per_gpu  # MMDetection's
    counts = np.bincount(SKEWED_CLASS[order], minlength=4)
    assert counts[3] == 0  # a class without images is skipped
    assert counts[:3].max() - counts[:3].min() <= 1, counts
    for c in range(3):  # each class is drawn from a shuffled cycle of its images
        images = np.flatnonzero(SKEWED_CLASS == c)
        drawn = order[SKEWED_CLASS[order] == c]
        laps = len(drawn) // len(images)
        rounds = drawn[:laps * len(images)].reshape(laps, len(images))
        assert (np.sort(rounds, axis=1) == images).all()
        assert len(set(drawn[laps * len(images):].tolist())) == len(drawn) - laps * len(images)


def test_class_aware_sampling_visits_classes_in_shuffled_rounds():
    sampler = ClassAwareSampler(SKEWED, 1, num_replicas=1, rank=0, seed=2, num_sample_class=3)
    classes = SKEWED_CLASS[_epoch(sampler, 0)]  # 37: 4 rounds of 3 visits of 3, then 1
    visits = classes[:36].reshape(4, 3, 3)  # (round, visit, image)
    assert (visits == visits[:, :, :1]).all()  # a visit takes 3 images of one class
    assert (np.sort(visits[:, :, 0], axis=1) == [0, 1, 2]).all()  # a round visits every class
    assert len({tuple(r) for r in visits[:, :, 0].tolist()}) > 1  # in a new order each round
    counts = np.bincount(classes, minlength=3)
    assert counts.max() - counts.min() <= 3


def test_class_aware_order_is_a_function_of_seed_and_epoch():
    def order(seed, epoch):
        return _epoch(ClassAwareSampler(SKEWED, 2, num_replicas=1, rank=0, seed=seed), epoch)

    assert np.array_equal(order(3, 1), order(3, 1))
    assert not np.array_equal(order(3, 1), order(3, 2))
    assert not np.array_equal(order(3, 1), order(4, 1))
    assert not np.array_equal(order(3, 1), order(4, 0))  # not of seed + epoch (MMDetection's)
    sampler = ClassAwareSampler(SKEWED, 2, num_replicas=1, rank=0, seed=3, with_epoch=True)
    first, second = list(sampler), list(sampler)  # passes run through the epochs
    assert [k.index for k in first] == order(3, 0).tolist()
    assert [k.index for k in second] == order(3, 1).tolist()
    assert {k.epoch for k in first} == {0} and {k.epoch for k in second} == {1}
    np.random.seed(9)
    drawn = ClassAwareSampler(SKEWED, 2, num_replicas=1, rank=0).seed
    np.random.seed(9)
    assert ClassAwareSampler(SKEWED, 2, num_replicas=1, rank=0).seed == drawn


@pytest.mark.parametrize("num_sample_class", [1, 2])
@pytest.mark.parametrize("num_replicas,per_gpu", [(2, 2), (2, 3), (3, 1), (4, 5)])
def test_class_aware_processes_together_see_the_batches_of_one_process(
        num_replicas, per_gpu, num_sample_class):
    global_batch = num_replicas * per_gpu
    single = ClassAwareSampler(SKEWED, global_batch, num_replicas=1, rank=0, seed=11,
                               num_sample_class=num_sample_class)
    ranks = [ClassAwareSampler(SKEWED, per_gpu, num_replicas, rank, seed=11,
                               num_sample_class=num_sample_class)
             for rank in range(num_replicas)]
    per_process = math.ceil(37 / num_replicas / per_gpu) * per_gpu  # MMDetection's num_samples
    assert {len(s) for s in ranks} == {per_process}
    assert sum(len(s) for s in ranks) == len(single) == ranks[0].total_size
    assert {s.batches_per_epoch for s in ranks} == {single.batches_per_epoch}
    for epoch in (0, 1, 5):
        one = _epoch(single, epoch).reshape(-1, global_batch)  # (steps, B)
        shares = [_epoch(s, epoch).reshape(-1, per_gpu) for s in ranks]  # N x (steps, b)
        assert np.array_equal(np.concatenate(shares, axis=1), one)


class _OutOfRange(Labelled):
    def get_cat2imgs(self):
        return {0: [5], 1: [1]}


def test_class_aware_sampler_errors_say_what_is_wrong():
    with pytest.raises(TypeError, match=r"Flagged has none.*get_cat2imgs"):
        ClassAwareSampler(TWO_GROUPS, 2, seed=0)
    with pytest.raises(ValueError, match="num_sample_class must be an int >= 1, got 0"):
        ClassAwareSampler(SKEWED, 2, seed=0, num_sample_class=0)
    with pytest.raises(ValueError, match="rank 2 is outside 0..1"):
        ClassAwareSampler(SKEWED, 2, num_replicas=2, rank=2, seed=0)
    with pytest.raises(ValueError, match="no class with an image"):
        ClassAwareSampler(Labelled([[], []], num_classes=2), 1, seed=0)
    with pytest.raises(ValueError, match=r"class 0 the images \[5\], outside the 2 images"):
        ClassAwareSampler(_OutOfRange([[0], [1]], num_classes=2), 1, seed=0)


def test_class_aware_sampler_defaults_to_the_process_group():
    sampler = ClassAwareSampler(SKEWED, 2, seed=0)  # no process group: (0, 1)
    assert (sampler.rank, sampler.num_replicas) == (0, 1)
    assert sampler.labels == [0, 1, 2]


# get_cat2imgs of the dataset base


def test_get_cat2imgs_groups_the_images_of_each_label(shapes_root):
    dataset = _coco(shapes_root, LOAD)
    cat2imgs = dataset.get_cat2imgs()
    assert list(cat2imgs) == [0, 1, 2]  # labels, not the file's category ids 1..3
    for label, images in cat2imgs.items():
        assert images == [i for i in range(len(dataset))
                          if label in dataset.get_ann_info(i)["labels"]]
    assert set().union(*cat2imgs.values()) == set(range(len(dataset)))
    picked = CocoDataset(f"{shapes_root}/annotations/instances_train.json", LOAD,
                         img_prefix=f"{shapes_root}/train/", classes=("triangle", "circle"))
    def image_ids(ds, images):
        return [ds.data_infos[i]["id"] for i in images]

    # label 0 is the triangle now (images with squares only are left out of the training set)
    assert image_ids(picked, picked.get_cat2imgs()[0]) == image_ids(dataset, cat2imgs[2])


def test_get_cat2imgs_counts_boxes_not_ignored_ones(tmp_path):
    infos = [dict(filename="a.jpg", width=64, height=64,
                  ann=dict(bboxes=[[1, 1, 9, 9]], labels=[1], bboxes_ignore=[[2, 2, 8, 8]],
                           labels_ignore=[0])),
             dict(filename="b.jpg", width=64, height=64,
                  ann=dict(bboxes=[[1, 1, 9, 9], [3, 3, 9, 9]], labels=[1, 1])),
             dict(filename="c.jpg", width=64, height=64,
                  ann=dict(bboxes=[[1, 1, 9, 9]], labels=[0]))]
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(dict(classes=["cat", "dog", "eel"], data_infos=infos)))
    dataset = CustomDataset(str(path), [], test_mode=True)
    assert dataset.get_cat2imgs() == {0: [2], 1: [0, 1], 2: []}


# --------------------------------------------------------------------------------------------
# SeededDataset
# --------------------------------------------------------------------------------------------


def test_a_seeded_sample_depends_on_seed_epoch_and_index_only():
    dataset = SeededDataset(Draws(), seed=3)
    first = dataset[SampleKey(2, 1)]
    random.random(), np.random.rand(5), torch.rand(7)  # whatever ran before
    assert dataset[(2, 1)] == first
    assert first[0] == 2
    draws = {dataset[k][1:] for k in [(2, 1), (2, 0), (3, 1)]}
    draws.add(SeededDataset(Draws(), seed=4)[(2, 1)][1:])
    assert len(draws) == 4
    assert all(len(set(d)) == 3 for d in draws)  # three generators, three streams


def test_seeding_leaves_the_callers_generators_alone():
    dataset = SeededDataset(Draws(), seed=0)
    before = _global_states()
    dataset[(0, 0)]
    _assert_same_states(before, _global_states())
    with pytest.raises(ZeroDivisionError):
        SeededDataset(_Failing(), seed=0)[(0, 0)]
    _assert_same_states(before, _global_states())
    dataset[0]  # a plain index is not seeded: it draws from the caller's streams
    assert random.getstate() != before[0]


class _Failing:
    def __getitem__(self, i):
        random.random()
        return 1 / 0


def test_seeded_dataset_forwards_attributes_and_pickles():
    inner = Draws(4)
    dataset = SeededDataset(inner, seed=9)
    assert len(dataset) == 4 and dataset.CLASSES == ("a", "b")
    assert dataset.flag is inner.flag
    assert dataset.evaluate([1, 2]) == {"count": 2}
    dataset.skip_type_keys = ["Mosaic"]  # e.g. a hook switching augmentations off
    assert inner.skip_type_keys == ["Mosaic"]
    assert not hasattr(dataset, "__getitems__")  # the loader must go through __getitem__
    with pytest.raises(AttributeError, match="missing"):
        getattr(dataset, "missing")  # noqa: B009
    copy = pickle.loads(pickle.dumps(dataset))
    assert copy.seed == 9 and copy[(1, 2)] == dataset[(1, 2)]
    with pytest.raises(ValueError, match="seed must be >= 0"):
        SeededDataset(inner, seed=-1)


# the pipeline's randomness on real images: crops that drop samples, mixing partners

NORM = dict(mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], to_rgb=True)
FORMAT = [dict(type="Normalize", **NORM), dict(type="Pad", size_divisor=32),
          dict(type="DefaultFormatBundle"),
          dict(type="Collect", keys=["img", "gt_bboxes", "gt_labels"])]
LOAD = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True)]
CROPPING = [*LOAD, dict(type="RandomCrop", crop_size=(20, 20)),
            dict(type="RandomFlip", flip_ratio=0.5), dict(type="PhotoMetricDistortion"),
            *FORMAT]


def _coco(shapes_root, pipeline):
    return CocoDataset(f"{shapes_root}/annotations/instances_train.json", pipeline,
                       img_prefix=f"{shapes_root}/train/")


def _same_sample(a, b):
    return (a["img_metas"]["img_id"] == b["img_metas"]["img_id"]
            and torch.equal(a["img"], b["img"]) and torch.equal(a["gt_bboxes"], b["gt_bboxes"]))


def test_a_dropped_sample_is_replaced_by_the_same_one_every_time(shapes_root):
    inner = _coco(shapes_root, CROPPING)
    dataset = SeededDataset(inner, seed=1)
    keys = [(i, e) for e in range(3) for i in range(len(inner))]
    first = [dataset[k] for k in keys]
    ids = [inner.data_infos[i]["id"] for i, _ in keys]
    replaced = sum(s["img_metas"]["img_id"] != i for s, i in zip(first, ids, strict=True))
    assert replaced > 0  # 20 x 20 crops of 64-pixel images miss every box now and then
    np.random.seed(123)
    again = [dataset[k] for k in reversed(keys)][::-1]
    assert all(_same_sample(a, b) for a, b in zip(first, again, strict=True))


def test_mixing_partners_repeat(shapes_root):
    mix = MultiImageMixDataset(_coco(shapes_root, LOAD),
                               [dict(type="Mosaic", img_scale=(64, 64)),
                                dict(type="RandomFlip", flip_ratio=0.5), *FORMAT])
    dataset = SeededDataset(mix, seed=2)
    first = [dataset[(i, 0)] for i in range(4)]
    np.random.rand(3)
    assert all(_same_sample(dataset[(i, 0)], s) for i, s in enumerate(first))
    assert not all(_same_sample(dataset[(i, 1)], s) for i, s in enumerate(first))
