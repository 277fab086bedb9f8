"""DeltaXYWHBBoxCoder: known values, round trips, clipping, and torchvision's BoxCoder."""

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder

from detlab.models import DeltaXYWHBBoxCoder


def _boxes(n: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=gen) * 100
    wh = torch.rand(n, 2, generator=gen) * 50 + 1
    return torch.cat([xy, xy + wh], dim=1)


def test_known_deltas():
    coder = DeltaXYWHBBoxCoder()
    prior = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    gt = torch.tensor([[5.0, 5.0, 25.0, 15.0]])
    torch.testing.assert_close(coder.encode(prior, gt),
                               torch.tensor([[1.0, 0.5, math.log(2.0), 0.0]]))
    normalized = DeltaXYWHBBoxCoder(target_means=(0.5, 0, 0, 0), target_stds=(0.5, 1, 1, 2))
    torch.testing.assert_close(normalized.encode(prior, gt),
                               torch.tensor([[1.0, 0.5, math.log(2.0), 0.0]]))


@pytest.mark.parametrize("means, stds", [((0, 0, 0, 0), (1, 1, 1, 1)),
                                         ((0.1, -0.1, 0.0, 0.2), (0.1, 0.1, 0.2, 0.2))])
def test_round_trip(means, stds):
    coder = DeltaXYWHBBoxCoder(target_means=means, target_stds=stds)
    priors, gts = _boxes(50, 0), _boxes(50, 1)
    deltas = coder.encode(priors, gts)
    torch.testing.assert_close(coder.decode(priors, deltas), gts, atol=1e-4, rtol=1e-5)
    batched = coder.decode(priors.expand(3, -1, -1), deltas.expand(3, -1, -1))
    torch.testing.assert_close(batched, gts.expand(3, -1, -1), atol=1e-4, rtol=1e-5)


def test_clipping_and_ratio_clamp():
    coder = DeltaXYWHBBoxCoder()
    prior = torch.tensor([[10.0, 10.0, 30.0, 30.0]])
    moved = coder.decode(prior, torch.tensor([[2.0, -2.0, 0.0, 0.0]]), max_shape=(40, 45, 3))
    torch.testing.assert_close(moved, torch.tensor([[45.0, 0.0, 45.0, 0.0]]))
    unclipped = DeltaXYWHBBoxCoder(clip_border=False).decode(
        prior, torch.tensor([[2.0, -2.0, 0.0, 0.0]]), max_shape=(40, 45))
    torch.testing.assert_close(unclipped, torch.tensor([[50.0, -30.0, 70.0, -10.0]]))
    huge = coder.decode(prior, torch.tensor([[0.0, 0.0, 100.0, -100.0]]))
    width, height = huge[0, 2] - huge[0, 0], huge[0, 3] - huge[0, 1]
    torch.testing.assert_close(width, torch.tensor(20 * 1000 / 16))
    torch.testing.assert_close(height, torch.tensor(20 * 16 / 1000))


def test_center_clamp():
    coder = DeltaXYWHBBoxCoder(add_ctr_clamp=True, ctr_clamp=32)
    prior = torch.tensor([[0.0, 0.0, 100.0, 100.0]])
    out = coder.decode(prior, torch.tensor([[1.0, -1.0, 0.0, 0.0]]))
    torch.testing.assert_close(out, torch.tensor([[32.0, -32.0, 132.0, 68.0]]))


def test_same_decoding_as_torchvision():
    priors = _boxes(200)
    deltas = torch.randn(200, 4, generator=torch.Generator().manual_seed(3))
    reference = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0)).decode_single(deltas, priors)
    torch.testing.assert_close(DeltaXYWHBBoxCoder().decode(priors, deltas), reference,
                               atol=1e-3, rtol=1e-5)
    torch.testing.assert_close(BoxCoder(weights=(1.0, 1.0, 1.0, 1.0)).encode_single(
        _boxes(200, 5), priors), DeltaXYWHBBoxCoder().encode(priors, _boxes(200, 5)))


def test_shapes_are_checked():
    coder = DeltaXYWHBBoxCoder()
    with pytest.raises(ValueError, match="same"):
        coder.encode(_boxes(3), _boxes(4))
    assert coder.decode(_boxes(0), torch.zeros(0, 4)).shape == (0, 4)


# ---- against MMDetection 2.28's own coders ----------------------------------------------

def _mmdet_coder(module: str, name: str, **kwargs):
    from mmdet_box_reference import mmdet_module

    return getattr(mmdet_module(f"core.bbox.coder.{module}"), name)(**kwargs)


def _deltas(shape, seed, scale=1.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


DELTA_OPTIONS = [dict(), dict(target_means=(0.1, -0.2, 0.05, 0.0),
                              target_stds=(0.1, 0.1, 0.2, 0.2)),
                 dict(clip_border=False), dict(add_ctr_clamp=True, ctr_clamp=16)]


@pytest.mark.filterwarnings("ignore:DeprecationWarning")
@pytest.mark.parametrize("kwargs", DELTA_OPTIONS)
def test_delta_coder_is_mmdetections(kwargs):
    from detlab.models.coders import DeltaXYWHBBoxCoder as Ours

    ours = Ours(**kwargs)
    theirs = _mmdet_coder("delta_xywh_bbox_coder", "DeltaXYWHBBoxCoder", **kwargs)
    priors, gts = _boxes(300, 0), _boxes(300, 1)
    assert torch.equal(ours.encode(priors, gts), theirs.encode(priors, gts))
    deltas = _deltas((300, 4), 2, scale=3.0)  # large enough for the ratio and center clamps
    for max_shape in [None, (90, 120), (90, 120, 3)]:
        assert torch.equal(ours.decode(priors, deltas, max_shape),
                           theirs.decode(priors, deltas, max_shape))
    per_class = _deltas((300, 12), 3)  # R-CNN: one box per class
    assert torch.equal(ours.decode(priors, per_class, (100, 80)),
                       theirs.decode(priors, per_class, (100, 80)))
    batched_priors = torch.stack([priors, _boxes(300, 4)])
    batched = _deltas((2, 300, 4), 5)
    shapes = [(90, 120, 3), (120, 60, 3)]
    assert torch.equal(ours.decode(batched_priors, batched, shapes),
                       theirs.decode(batched_priors, batched, shapes))


def test_legacy_delta_coder_is_mmdetections():
    from detlab.models.coders import LegacyDeltaXYWHBBoxCoder

    for kwargs in DELTA_OPTIONS[:2]:
        ours = LegacyDeltaXYWHBBoxCoder(**kwargs)
        theirs = _mmdet_coder("legacy_delta_xywh_bbox_coder", "LegacyDeltaXYWHBBoxCoder",
                              **kwargs)
        priors, gts = _boxes(200, 0), _boxes(200, 1)
        assert torch.equal(ours.encode(priors, gts), theirs.encode(priors, gts))
        for deltas in (_deltas((200, 4), 2, 3.0), _deltas((200, 8), 3)):
            for max_shape in (None, (90, 120, 3)):
                assert torch.equal(ours.decode(priors, deltas, max_shape),
                                   theirs.decode(priors, deltas, max_shape))


def test_legacy_delta_round_trip_grows_boxes_by_half_a_pixel():
    from detlab.models.coders import LegacyDeltaXYWHBBoxCoder

    coder = LegacyDeltaXYWHBBoxCoder(target_stds=(0.1, 0.1, 0.2, 0.2))
    priors, gts = _boxes(50, 0), _boxes(50, 1)
    # widths are x2 - x1 + 1 on the way in, corners at center -+ width / 2 on the way out
    grown = gts + torch.tensor([-0.5, -0.5, 0.5, 0.5])
    torch.testing.assert_close(coder.decode(priors, coder.encode(priors, gts)), grown,
                               atol=1e-4, rtol=1e-5)
    deltas = coder.encode(torch.tensor([[0.0, 0, 9, 9]]), torch.tensor([[10.0, 0, 29, 9]]))
    torch.testing.assert_close(deltas, torch.tensor([[1.5 / 0.1, 0.0, math.log(2) / 0.2, 0.0]]))


@pytest.mark.parametrize("normalizer", [4.0, 1.0, [1.0, 2.0, 0.5, 4.0]])
@pytest.mark.parametrize("clip_border", [True, False])
def test_tblr_coder_is_mmdetections(normalizer, clip_border):
    from detlab.models.coders import TBLRBBoxCoder

    ours = TBLRBBoxCoder(normalizer=normalizer, clip_border=clip_border)
    theirs = _mmdet_coder("tblr_bbox_coder", "TBLRBBoxCoder", normalizer=normalizer,
                          clip_border=clip_border)
    priors, gts = _boxes(200, 0), _boxes(200, 1)
    codes = ours.encode(priors, gts)
    assert torch.equal(codes, theirs.encode(priors, gts))
    torch.testing.assert_close(ours.decode(priors, codes), gts, atol=1e-4, rtol=1e-5)
    preds = _deltas((200, 4), 2)
    for max_shape in (None, (60, 100), (60, 100, 3)):
        assert torch.equal(ours.decode(priors, preds, max_shape),
                           theirs.decode(priors, preds, max_shape))
    batched_priors, batched = torch.stack([priors, _boxes(200, 3)]), _deltas((2, 200, 4), 4)
    shapes = [(60, 100), (100, 40)]
    assert torch.equal(ours.decode(batched_priors, batched, shapes),
                       theirs.decode(batched_priors, batched, shapes))


def _points(n, seed):
    return torch.rand(n, 2, generator=torch.Generator().manual_seed(seed)) * 120


@pytest.mark.parametrize("clip_border", [True, False])
def test_distance_point_coder_is_mmdetections(clip_border):
    from detlab.models.coders import DistancePointBBoxCoder

    ours = DistancePointBBoxCoder(clip_border=clip_border)
    theirs = _mmdet_coder("distance_point_bbox_coder", "DistancePointBBoxCoder",
                          clip_border=clip_border)
    points, gts = _points(200, 0), _boxes(200, 1)
    for max_dis, eps in [(None, 0.1), (16.0, 0.1), (30.0, 0.01)]:
        assert torch.equal(ours.encode(points, gts, max_dis, eps),
                           theirs.encode(points, gts, max_dis, eps))
    dists = _deltas((200, 4), 2, 20.0).abs()
    for max_shape in (None, (60, 100), (60, 100, 3)):
        assert torch.equal(ours.decode(points, dists, max_shape),
                           theirs.decode(points, dists, max_shape))
    batched_points, batched = torch.stack([points, _points(200, 3)]), _deltas((2, 200, 4), 4)
    shapes = [(60, 100), (100, 40)]
    assert torch.equal(ours.decode(batched_points, batched, shapes),
                       theirs.decode(batched_points, batched, shapes))
    inside = torch.cat([gts[:, :2] + 1, gts[:, 2:] - 1], 1)  # points inside their boxes
    centers = (inside[:, :2] + inside[:, 2:]) / 2
    round_trip = DistancePointBBoxCoder(clip_border=False)
    torch.testing.assert_close(round_trip.decode(centers, round_trip.encode(centers, gts)), gts)
    # the stride columns of (x, y, stride_w, stride_h) points are ignored
    with_stride = torch.cat([centers, torch.full_like(centers, 8.0)], 1)
    assert torch.equal(ours.encode(with_stride, gts), ours.encode(centers, gts))


@pytest.mark.parametrize("stride", [32, "tensor"])
def test_yolo_coder_is_mmdetections(stride):
    from detlab.models.coders import YOLOBBoxCoder

    ours, theirs = YOLOBBoxCoder(), _mmdet_coder("yolo_bbox_coder", "YOLOBBoxCoder")
    priors = _boxes(200, 0)
    centers = (priors[:, :2] + priors[:, 2:]) / 2
    strides = torch.tensor([8.0, 16.0, 32.0]).repeat(67)[:200] if stride == "tensor" \
        else torch.full((200,), float(stride))
    # ground truths centered within half a stride of their prior's center (YOLO's cell)
    offsets = (torch.rand(200, 2, generator=torch.Generator().manual_seed(1)) - 0.5) * 0.9
    gt_centers = centers + offsets * strides[:, None]
    gt_wh = torch.rand(200, 2, generator=torch.Generator().manual_seed(2)) * 60 + 2
    gts = torch.cat([gt_centers - gt_wh / 2, gt_centers + gt_wh / 2], 1)
    s = strides if stride == "tensor" else stride
    codes = ours.encode(priors, gts, s)
    assert torch.equal(codes, theirs.encode(priors, gts, s))
    assert torch.equal(ours.encode(priors, _boxes(200, 5), s),
                       theirs.encode(priors, _boxes(200, 5), s))  # clamped offsets too
    s_dec = strides[:, None] if stride == "tensor" else stride
    assert torch.equal(ours.decode(priors, codes, s_dec), theirs.decode(priors, codes, s_dec))
    torch.testing.assert_close(ours.decode(priors, codes, s_dec), gts, atol=1e-3, rtol=1e-5)


def test_tblr_and_distance_known_values():
    from detlab.models.coders import DistancePointBBoxCoder, TBLRBBoxCoder

    prior = torch.tensor([[0.0, 0.0, 20.0, 10.0]])  # center (10, 5), w 20, h 10
    gt = torch.tensor([[4.0, 1.0, 30.0, 9.0]])
    # top 4 / h, bottom 4 / h, left 6 / w, right 20 / w, all over the normalizer 2
    torch.testing.assert_close(TBLRBBoxCoder(normalizer=2.0).encode(prior, gt),
                               torch.tensor([[0.2, 0.2, 0.15, 0.5]]))
    dist = DistancePointBBoxCoder().encode(torch.tensor([[10.0, 5.0]]), gt, max_dis=15.0)
    torch.testing.assert_close(dist, torch.tensor([[6.0, 4.0, 14.9, 4.0]]))
    clipped = DistancePointBBoxCoder().decode(torch.tensor([[10.0, 5.0]]),
                                              torch.tensor([[20.0, 1.0, 50.0, 1.0]]), (8, 40))
    torch.testing.assert_close(clipped, torch.tensor([[0.0, 4.0, 40.0, 6.0]]))
