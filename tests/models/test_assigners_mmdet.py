"""Assigners and samplers against MMDetection 2.28's own classes, on random scenes: the same
gt_inds, labels, max_overlaps (and extras) for the same inputs, ties included; and a check that
no assigner loops in Python over boxes or priors."""

import pytest
import torch
from mmdet_box_reference import mmdet_module, mmdet_modules
from torch.overrides import TorchFunctionMode

from detlab.models.anchors import AnchorGenerator, MlvlPointGenerator, YOLOAnchorGenerator
from detlab.models.assigners import (
    ApproxMaxIoUAssigner,
    AssignResult,
    ATSSAssigner,
    CenterRegionAssigner,
    GridAssigner,
    MaxIoUAssigner,
    PointAssigner,
    PseudoSampler,
    RandomSampler,
    SimOTAAssigner,
    TaskAlignedAssigner,
    UniformAssigner,
)

IMAGE = 96
SIZES = [(12, 12), (6, 6), (3, 3)]


def _mmdet(module: str, name: str):
    return getattr(mmdet_module(f"core.bbox.assigners.{module}"), name)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _gts(num: int, seed: int, duplicates: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """``num`` boxes inside the image (two of them equal, for ties) and labels of 5 classes."""
    gen = _gen(seed)
    wh = torch.rand(num, 2, generator=gen) * 50 + 4
    xy = torch.rand(num, 2, generator=gen) * (IMAGE - wh)
    boxes = torch.cat([xy, xy + wh], dim=1)
    if duplicates and num > 2:
        boxes[-1] = boxes[0]
    return boxes, torch.randint(0, 5, (num,), generator=gen)


def _anchors() -> tuple[torch.Tensor, list[int]]:
    gen = AnchorGenerator(strides=[8, 16, 32], ratios=[0.5, 1.0, 2.0], octave_base_scale=4,
                          scales_per_octave=1)
    levels = gen.grid_priors(SIZES)
    return torch.cat(levels), [len(level) for level in levels]


def _points() -> tuple[torch.Tensor, list[int]]:
    levels = MlvlPointGenerator([8, 16, 32]).grid_priors(SIZES, with_stride=True)
    return torch.cat(levels), [len(level) for level in levels]


def _predictions(priors_xy: torch.Tensor, seed: int, num_classes: int = 5):
    """Predicted boxes near the priors and class probabilities; a block of priors predicts the
    very same box and scores (ties in every cost)."""
    gen = _gen(seed)
    n = len(priors_xy)
    centers = priors_xy + torch.randn(n, 2, generator=gen) * 6
    wh = torch.rand(n, 2, generator=gen) * 40 + 6
    boxes = torch.cat([centers - wh / 2, centers + wh / 2], 1)
    scores = torch.rand(n, num_classes, generator=gen)
    boxes[10:30] = boxes[10]
    scores[10:30] = scores[10]
    return boxes, scores


def _same(ours: AssignResult, theirs, overlaps: bool = True) -> None:
    assert ours.num_gts == theirs.num_gts
    assert torch.equal(ours.gt_inds, theirs.gt_inds)
    if theirs.labels is None:
        assert ours.labels is None
    else:
        assert torch.equal(ours.labels, theirs.labels)
    if overlaps:
        if theirs.max_overlaps is None:
            assert ours.max_overlaps is None
        else:
            assert torch.equal(ours.max_overlaps, theirs.max_overlaps)


def _ignored(seed: int) -> torch.Tensor:
    gen = _gen(seed + 1000)
    xy = torch.rand(2, 2, generator=gen) * 60
    return torch.cat([xy, xy + 30], 1)


def _grid_gts(num: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Boxes whose centers sit on cell borders and corners: equidistant points (ties)."""
    gen = _gen(seed)
    centers = torch.randint(1, 12, (num, 2), generator=gen).float() * 8
    wh = torch.randint(1, 12, (num, 2), generator=gen).float() * 8
    return torch.cat([centers - wh / 2, centers + wh / 2], 1), torch.randint(0, 5, (num,),
                                                                             generator=gen)


SEEDS = range(6)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_gts", [1, 7])
def test_max_iou(seed, num_gts):
    anchors, _ = _anchors()
    gts, labels = _gts(num_gts, seed)
    for kwargs in [dict(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0),
                   dict(pos_iou_thr=0.5, neg_iou_thr=(0.1, 0.4), gt_max_assign_all=False,
                        ignore_iof_thr=0.5),
                   dict(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3,
                        match_low_quality=False, ignore_iof_thr=0.3,
                        ignore_wrt_candidates=False)]:
        ours = MaxIoUAssigner(**kwargs).assign(anchors, gts, _ignored(seed), labels)
        theirs = _mmdet("max_iou_assigner", "MaxIoUAssigner")(**kwargs).assign(
            anchors, gts, _ignored(seed), labels)
        _same(ours, theirs)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_gts", [1, 7])
@pytest.mark.parametrize("ignore_iof_thr", [-1, 0.5])
@pytest.mark.parametrize("gts_from", [_gts, _grid_gts])
def test_atss(seed, num_gts, ignore_iof_thr, gts_from):
    anchors, counts = _anchors()
    gts, labels = gts_from(num_gts, seed)
    ours = ATSSAssigner(topk=9, ignore_iof_thr=ignore_iof_thr).assign(
        anchors, gts, _ignored(seed), labels, num_level_priors=counts)
    theirs = _mmdet("atss_assigner", "ATSSAssigner")(9, ignore_iof_thr=ignore_iof_thr).assign(
        anchors, counts, gts, _ignored(seed), labels)
    _same(ours, theirs)


@pytest.mark.parametrize("seed", SEEDS[:3])
def test_atss_with_ddod_cost(seed):
    anchors, counts = _anchors()
    gts, labels = _gts(5, seed)
    centers = (anchors[:, :2] + anchors[:, 2:]) / 2
    boxes, _ = _predictions(centers, seed)
    logits = torch.randn(len(anchors), 5, generator=_gen(seed + 7))
    ours = ATSSAssigner(topk=9, alpha=0.8).assign(anchors, gts, None, labels,
                                                  num_level_priors=counts,
                                                  pred_scores=logits.sigmoid(),
                                                  pred_bboxes=boxes)
    theirs = _mmdet("atss_assigner", "ATSSAssigner")(9, alpha=0.8).assign(
        anchors, counts, gts, None, labels, logits, boxes)
    _same(ours, theirs)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_gts", [0, 1, 7])
@pytest.mark.parametrize("alpha, beta", [(1, 6), (0.5, 2.0)])
@pytest.mark.parametrize("gts_from", [_gts, _grid_gts])
def test_task_aligned(seed, num_gts, alpha, beta, gts_from):
    anchors, _ = _anchors()
    gts, labels = gts_from(num_gts, seed)
    boxes, scores = _predictions((anchors[:, :2] + anchors[:, 2:]) / 2, seed)
    ours = TaskAlignedAssigner(topk=13, alpha=alpha, beta=beta).assign(
        anchors, gts, None, labels, pred_scores=scores, pred_bboxes=boxes)
    theirs = _mmdet("task_aligned_assigner", "TaskAlignedAssigner")(13).assign(
        scores, boxes, anchors, gts, None, labels, alpha, beta)
    _same(ours, theirs)
    assert torch.equal(ours.assign_metrics, theirs.assign_metrics)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_gts", [0, 1, 7, 20])
def test_sim_ota(seed, num_gts):
    points, _ = _points()
    gts, labels = _gts(num_gts, seed)
    boxes, scores = _predictions(points[:, :2], seed)
    ours = SimOTAAssigner(center_radius=2.5, candidate_topk=10).assign(
        points, gts, None, labels, pred_scores=scores, pred_bboxes=boxes)
    theirs = _mmdet("sim_ota_assigner", "SimOTAAssigner")(center_radius=2.5).assign(
        scores, points, boxes, gts, labels)
    _same(ours, theirs)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_gts", [1, 3, 7])
def test_sim_ota_breaks_ties_as_mmdetection(seed, num_gts):
    """Every prior predicts the same box with the same scores: the costs of a ground truth
    tie across all the priors of its center region, so top-k's tie-breaking decides."""
    points, _ = _points()
    gts, labels = _grid_gts(num_gts, seed)
    boxes = gts[:1].expand(len(points), 4).clone()
    scores = torch.rand(1, 5, generator=_gen(seed)).expand(len(points), 5).clone()
    ours = SimOTAAssigner().assign(points, gts, None, labels, pred_scores=scores,
                                   pred_bboxes=boxes)
    theirs = _mmdet("sim_ota_assigner", "SimOTAAssigner")().assign(
        scores, points, boxes, gts, labels)
    assert (ours.gt_inds > 0).sum() > 1
    _same(ours, theirs)


def test_sim_ota_with_no_prior_near_any_box():
    points, _ = _points()
    gts = torch.tensor([[500.0, 500.0, 520.0, 530.0]])
    boxes, scores = _predictions(points[:, :2], 0)
    ours = SimOTAAssigner().assign(points, gts, None, torch.tensor([1]), pred_scores=scores,
                                   pred_bboxes=boxes)
    theirs = _mmdet("sim_ota_assigner", "SimOTAAssigner")().assign(
        scores, points, boxes, gts, torch.tensor([1]))
    _same(ours, theirs)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_gts", [0, 1, 7])
@pytest.mark.parametrize("foreground_dominate", [False, True])
def test_center_region(seed, num_gts, foreground_dominate):
    anchors, _ = _anchors()
    gts, labels = _gts(num_gts, seed)
    kwargs = dict(pos_scale=0.2, neg_scale=0.5, min_pos_iof=0.01,
                  foreground_dominate=foreground_dominate)
    for gt_labels in (labels, None):
        ours = CenterRegionAssigner(**kwargs).assign(anchors, gts, _ignored(seed), gt_labels)
        theirs = _mmdet("center_region_assigner", "CenterRegionAssigner")(**kwargs).assign(
            anchors, gts, _ignored(seed), gt_labels)
        _same(ours, theirs)
        shadowed = theirs.get_extra_property("shadowed_labels")
        if shadowed is None:
            assert ours.extra["shadowed_labels"] is None
        else:
            assert torch.equal(ours.extra["shadowed_labels"], shadowed)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_gts", [0, 1, 7])
def test_uniform(seed, num_gts):
    anchors, _ = _anchors()
    gts, labels = _gts(num_gts, seed)
    boxes, _ = _predictions((anchors[:, :2] + anchors[:, 2:]) / 2, seed)
    for gt_labels in (labels, None):
        ours = UniformAssigner(0.15, 0.7, match_times=4).assign(anchors, gts, None, gt_labels,
                                                                pred_bboxes=boxes)
        theirs = _mmdet("uniform_assigner", "UniformAssigner")(0.15, 0.7, 4).assign(
            boxes, anchors, gts, None, gt_labels)
        _same(ours, theirs)
        for key in ("pos_idx", "pos_predicted_boxes", "target_boxes"):
            assert torch.equal(ours.get_extra_property(key), theirs.get_extra_property(key))


YOLO = dict(strides=[32, 16, 8], base_sizes=[[(116, 90), (156, 198), (373, 326)],
                                             [(30, 61), (62, 45), (59, 119)],
                                             [(10, 13), (16, 30), (33, 23)]])


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_gts", [0, 1, 7])
@pytest.mark.parametrize("kwargs", [dict(pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0),
                                    dict(pos_iou_thr=0.3, neg_iou_thr=(0.1, 0.4),
                                         min_pos_iou=0.1, gt_max_assign_all=False)])
def test_grid(seed, num_gts, kwargs):
    generator = YOLOAnchorGenerator(**YOLO)
    sizes = [(3, 3), (6, 6), (12, 12)]
    anchors = torch.cat(generator.grid_priors(sizes))
    gts, labels = _gts(num_gts, seed)
    flags = torch.cat(generator.responsible_flags(sizes, gts))
    ours = GridAssigner(**kwargs).assign(anchors, gts, None, labels, responsible_flags=flags)
    theirs = _mmdet("grid_assigner", "GridAssigner")(**kwargs).assign(
        anchors, flags.to(torch.uint8), gts, labels)
    _same(ours, theirs)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_gts", [0, 1, 7])
def test_approx_max_iou(seed, num_gts):
    approx_gen = AnchorGenerator(strides=[8, 16, 32], ratios=[0.5, 1.0, 2.0],
                                 octave_base_scale=8, scales_per_octave=3)
    square_gen = AnchorGenerator(strides=[8, 16, 32], ratios=[1.0], scales=[8])
    approxs = torch.cat(approx_gen.grid_priors(SIZES))
    squares = torch.cat(square_gen.grid_priors(SIZES))
    gts, labels = _gts(num_gts, seed)
    kwargs = dict(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0, ignore_iof_thr=0.5)
    ours = ApproxMaxIoUAssigner(**kwargs).assign(squares, gts, _ignored(seed), labels,
                                                 approxs=approxs)
    theirs = _mmdet("approx_max_iou_assigner", "ApproxMaxIoUAssigner")(**kwargs).assign(
        approxs, squares, 9, gts, _ignored(seed), labels)
    _same(ours, theirs)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_gts", [0, 1, 7, 20])
@pytest.mark.parametrize("gts_from", [_gts, _grid_gts])
def test_point(seed, num_gts, gts_from):
    points, _ = _points()
    gts, labels = gts_from(num_gts, seed)
    for kwargs in (dict(scale=4, pos_num=1), dict(scale=4, pos_num=3)):
        ours = PointAssigner(**kwargs).assign(points, gts, None, labels)
        theirs = _mmdet("point_assigner", "PointAssigner")(**kwargs).assign(
            points[:, :3], gts, None, labels)
        _same(ours, theirs)


# ---- samplers ------------------------------------------------------------------------------

def _their_result(ours: AssignResult):
    cls = mmdet_module("core.bbox.assigners.assign_result").AssignResult
    labels = None if ours.labels is None else ours.labels.clone()
    return cls(ours.num_gts, ours.gt_inds.clone(), ours.max_overlaps.clone(), labels)


def _same_sampling(ours, theirs) -> None:
    for key in ("pos_inds", "neg_inds", "pos_bboxes", "neg_bboxes", "pos_assigned_gt_inds",
                "pos_gt_bboxes", "pos_is_gt"):
        assert torch.equal(getattr(ours, key), getattr(theirs, key)), key
    assert ours.num_gts == theirs.num_gts
    if theirs.pos_gt_labels is None:
        assert ours.pos_gt_labels is None
    else:
        assert torch.equal(ours.pos_gt_labels, theirs.pos_gt_labels)
    assert torch.equal(ours.bboxes, theirs.bboxes)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("num_gts", [0, 3, 12])
@pytest.mark.parametrize("kwargs", [dict(num=512, pos_fraction=0.25),
                                    dict(num=32, pos_fraction=0.5, neg_pos_ub=3),
                                    dict(num=64, pos_fraction=0.5, neg_pos_ub=0,
                                         add_gt_as_proposals=False),
                                    dict(num=256, pos_fraction=0.5, add_gt_as_proposals=False)])
def test_random_sampler_draws_what_mmdetection_draws(seed, num_gts, kwargs):
    anchors, _ = _anchors()
    gts, labels = _gts(num_gts, seed)
    assign = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4).assign(anchors, gts,
                                                                      gt_labels=labels)
    with mmdet_modules():  # MMDetection's sampler imports a module when built
        theirs_sampler = mmdet_module("core.bbox.samplers.random_sampler").RandomSampler(**kwargs)
    torch.manual_seed(seed)
    theirs = theirs_sampler.sample(_their_result(assign), anchors, gts, labels)
    torch.manual_seed(seed)
    before = assign.gt_inds.clone()
    ours = RandomSampler(**kwargs).sample(assign, anchors, gts, labels)
    assert torch.equal(assign.gt_inds, before)  # the assignment is left as it was
    _same_sampling(ours, theirs)


@pytest.mark.parametrize("num_gts", [0, 4])
def test_pseudo_sampler_is_mmdetections(num_gts):
    anchors, _ = _anchors()
    gts, labels = _gts(num_gts, 3)
    assign = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4).assign(anchors, gts,
                                                                      gt_labels=labels)
    theirs = mmdet_module("core.bbox.samplers.pseudo_sampler").PseudoSampler().sample(
        _their_result(assign), anchors, gts)
    _same_sampling(PseudoSampler().sample(assign, anchors, gts), theirs)


# ---- vectorized: no Python loop over boxes or priors ---------------------------------------

class _CountTorchCalls(TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def _calls(assign) -> int:
    with _CountTorchCalls() as counter:
        assign()
    return counter.calls


def _cases():
    anchors, counts = _anchors()
    points, _ = _points()
    anchor_boxes, anchor_scores = _predictions((anchors[:, :2] + anchors[:, 2:]) / 2, 0)
    point_boxes, point_scores = _predictions(points[:, :2], 0)
    yolo = YOLOAnchorGenerator(**YOLO)
    yolo_sizes = [(3, 3), (6, 6), (12, 12)]
    yolo_anchors = torch.cat(yolo.grid_priors(yolo_sizes))
    approxs = torch.cat(AnchorGenerator(strides=[8, 16, 32], ratios=[0.5, 1.0, 2.0],
                                        octave_base_scale=8, scales_per_octave=3)
                        .grid_priors(SIZES))
    squares = torch.cat(AnchorGenerator(strides=[8, 16, 32], ratios=[1.0], scales=[8])
                        .grid_priors(SIZES))
    return {
        "MaxIoUAssigner": lambda g, lb: MaxIoUAssigner(0.5, 0.4).assign(anchors, g, None, lb),
        "ATSSAssigner": lambda g, lb: ATSSAssigner(9).assign(anchors, g, None, lb,
                                                             num_level_priors=counts),
        "TaskAlignedAssigner": lambda g, lb: TaskAlignedAssigner(13).assign(
            anchors, g, None, lb, pred_scores=anchor_scores, pred_bboxes=anchor_boxes),
        "SimOTAAssigner": lambda g, lb: SimOTAAssigner().assign(
            points, g, None, lb, pred_scores=point_scores, pred_bboxes=point_boxes),
        "CenterRegionAssigner": lambda g, lb: CenterRegionAssigner(0.2, 0.5).assign(
            anchors, g, None, lb),
        "UniformAssigner": lambda g, lb: UniformAssigner(0.15, 0.7).assign(
            anchors, g, None, lb, pred_bboxes=anchor_boxes),
        "GridAssigner": lambda g, lb: GridAssigner(0.5, 0.5).assign(
            yolo_anchors, g, None, lb,
            responsible_flags=torch.cat(yolo.responsible_flags(yolo_sizes, g))),
        "ApproxMaxIoUAssigner": lambda g, lb: ApproxMaxIoUAssigner(0.5, 0.4).assign(
            squares, g, None, lb, approxs=approxs),
        "PointAssigner": lambda g, lb: PointAssigner().assign(points, g, None, lb),
    }


@pytest.mark.parametrize("name", sorted(_cases()))
def test_work_does_not_grow_with_the_boxes(name):
    """The torch calls an assignment makes do not grow with the number of ground truths
    (at most a few per pyramid level, or per distinct SimOTA k, are allowed)."""
    assign = _cases()[name]
    few = _calls(lambda: assign(*_gts(4, 0, duplicates=False)))
    many = _calls(lambda: assign(*_gts(64, 0, duplicates=False)))
    assert many - few < 40, (few, many)
