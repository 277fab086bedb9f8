"""AnchorGenerator: base anchors, grid order and positions, counts, valid flags, errors."""

import math

import pytest
import torch

from detlab.config import ConfigError
from detlab.models import AnchorGenerator
from detlab.models.anchors import anchor_inside_flags

RETINA = dict(octave_base_scale=4, scales_per_octave=3, ratios=[0.5, 1.0, 2.0],
              strides=[8, 16, 32, 64, 128])


def test_retinanet_base_anchors():
    gen = AnchorGenerator(**RETINA)
    assert gen.num_levels == 5 and gen.num_base_priors == [9] * 5
    base = gen.base_anchors[0]
    scales = [4 * 2 ** (i / 3) for i in range(3)]
    expected = []
    for ratio in (0.5, 1.0, 2.0):  # ratios outside, scales inside (scale_major)
        for scale in scales:
            w = 8 * scale / math.sqrt(ratio)
            h = 8 * scale * math.sqrt(ratio)
            expected.append([-w / 2, -h / 2, w / 2, h / 2])
    torch.testing.assert_close(base, torch.tensor(expected))
    torch.testing.assert_close(gen.base_anchors[1], base * 2)
    assert torch.allclose(base[3], torch.tensor([-16.0, -16.0, 16.0, 16.0]))  # ratio 1, 32 px


def test_grid_is_row_major_then_anchor():
    gen = AnchorGenerator(**RETINA)
    sizes = [(4, 6), (2, 3), (1, 2), (1, 1), (1, 1)]
    anchors = gen.grid_priors(sizes)
    assert [len(a) for a in anchors] == [h * w * 9 for h, w in sizes]
    level = anchors[0].reshape(4, 6, 9, 4)  # (row, column, anchor, xyxy)
    base = gen.base_anchors[0]
    for row, col in [(0, 0), (0, 5), (3, 1)]:
        shift = torch.tensor([col * 8.0, row * 8.0, col * 8.0, row * 8.0])
        torch.testing.assert_close(level[row, col], base + shift)
    assert gen.grid_priors(sizes, dtype=torch.float64)[0].dtype == torch.float64


def test_scales_order_offset_and_rectangular_strides():
    gen = AnchorGenerator(strides=[(16, 8)], ratios=[1.0, 4.0], scales=[1.0, 2.0],
                          base_sizes=[10], scale_major=False, center_offset=0.5)
    base = gen.base_anchors[0]
    # scales outside, ratios inside; centre at half the base size
    ws = torch.tensor([10.0, 5.0, 20.0, 10.0])
    hs = torch.tensor([10.0, 20.0, 20.0, 40.0])
    torch.testing.assert_close(base, torch.stack([5 - ws / 2, 5 - hs / 2, 5 + ws / 2,
                                                  5 + hs / 2], dim=1))
    grid = gen.grid_priors([(2, 3)])[0].reshape(2, 3, 4, 4)
    torch.testing.assert_close(grid[1, 2] - grid[0, 0],
                               torch.tensor([32.0, 8.0, 32.0, 8.0]).expand(4, 4))
    centered = AnchorGenerator(strides=[8], ratios=[1.0], scales=[1.0], centers=[(3.0, 5.0)])
    torch.testing.assert_close(centered.base_anchors[0], torch.tensor([[-1.0, 1.0, 7.0, 9.0]]))


def test_valid_flags_follow_the_padded_image():
    gen = AnchorGenerator(strides=[8, 16], ratios=[1.0], scales=[2.0])
    flags = gen.valid_flags([(4, 6), (2, 3)], pad_shape=(24, 33, 3))
    first = flags[0].reshape(4, 6)
    assert first[:3, :5].all() and not first[3].any() and not first[:, 5].any()
    second = flags[1].reshape(2, 3)
    assert second[:2, :3].all()  # ceil(24 / 16) = 2 rows, ceil(33 / 16) = 3 columns
    many = AnchorGenerator(**RETINA).valid_flags([(2, 2)] * 5, pad_shape=(8, 16))
    assert many[0].reshape(2, 2, 9)[0].all() and not many[0].reshape(2, 2, 9)[1].any()


def test_inside_flags_with_allowed_border():
    anchors = torch.tensor([[0.0, 0, 10, 10], [-5, -5, 5, 5], [90, 90, 110, 110]])
    valid = torch.tensor([True, True, True])
    assert anchor_inside_flags(anchors, valid, (100, 100), -1).tolist() == [True] * 3
    assert anchor_inside_flags(anchors, valid, (100, 100), 0).tolist() == [True, False, False]
    assert anchor_inside_flags(anchors, valid, (100, 100), 20).tolist() == [True] * 3
    assert anchor_inside_flags(anchors, ~valid, (100, 100), -1).tolist() == [False] * 3


@pytest.mark.parametrize("kwargs, message", [
    (dict(strides=[8], ratios=[1.0], scales=[1.0], octave_base_scale=4, scales_per_octave=3),
     "either scales"),
    (dict(strides=[8], ratios=[1.0]), "either scales"),
    (dict(strides=[8], ratios=[1.0], octave_base_scale=4), "either scales"),
    (dict(strides=[8, 16], ratios=[1.0], scales=[1.0], base_sizes=[8]), "base_sizes"),
    (dict(strides=[8], ratios=[1.0], scales=[1.0], centers=[(0, 0)], center_offset=0.5),
     "not both"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        AnchorGenerator(**kwargs)


def test_level_count_mismatch_is_explained():
    with pytest.raises(ValueError, match="strides"):
        AnchorGenerator(**RETINA).grid_priors([(2, 2)] * 4)


# ---- against MMDetection 2.28's own prior generators -------------------------------------

def _mmdet_anchor_module():
    from mmdet_box_reference import mmdet_module

    return mmdet_module("core.anchor.anchor_generator")


def _mmdet_point_module():
    from mmdet_box_reference import mmdet_module

    return mmdet_module("core.anchor.point_generator")


POINT_CASES = [dict(strides=[8, 16, 32, 64, 128]), dict(strides=[8, (16, 12)], offset=0.0),
               dict(strides=[4, 8], offset=0.25)]
SIZES = [(7, 9), (4, 5), (2, 3), (1, 2), (1, 1)]


@pytest.mark.filterwarnings("ignore:torch.meshgrid")
@pytest.mark.parametrize("kwargs", POINT_CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
def test_points_are_mmdetections(kwargs, dtype):
    from detlab.models.anchors import MlvlPointGenerator

    ours = MlvlPointGenerator(**kwargs)
    theirs = _mmdet_point_module().MlvlPointGenerator(**kwargs)
    sizes = SIZES[:len(kwargs["strides"])]
    assert ours.num_levels == theirs.num_levels
    assert ours.num_base_priors == theirs.num_base_priors
    assert ours.strides == theirs.strides
    for with_stride in (False, True):
        mine = ours.grid_priors(sizes, dtype=dtype, with_stride=with_stride)
        ref = theirs.grid_priors(sizes, dtype=dtype, device="cpu", with_stride=with_stride)
        for a, b in zip(mine, ref, strict=True):
            assert a.dtype == b.dtype and torch.equal(a, b)
    for pad_shape in [(50, 70, 3), (16, 8), (64, 72)]:
        for a, b in zip(ours.valid_flags(sizes, pad_shape),
                        theirs.valid_flags(sizes, pad_shape, device="cpu"), strict=True):
            assert torch.equal(a, b)
    idxs = torch.tensor([0, 3, 10, 62])
    for level in range(len(sizes)):
        torch.testing.assert_close(ours.sparse_priors(idxs, sizes[level], level, dtype),
                                   theirs.sparse_priors(idxs, sizes[level], level, dtype,
                                                        device="cpu"), rtol=0, atol=0)


def test_points_layout_without_the_reference():
    from detlab.models.anchors import MlvlPointGenerator

    gen = MlvlPointGenerator([8, (16, 4)], offset=0.5)
    first, second = gen.grid_priors([(2, 3), (2, 2)], with_stride=True)
    # row by row: x runs fastest
    assert first[:, :2].tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]
    assert first[:, 2:].unique().tolist() == [8.0]
    assert second.tolist() == [[8, 2, 16, 4], [24, 2, 16, 4], [8, 6, 16, 4], [24, 6, 16, 4]]
    flags = gen.valid_flags([(2, 3), (2, 2)], pad_shape=(9, 16))
    assert flags[0].tolist() == [True, True, False, True, True, False]
    assert flags[1].tolist() == [True, False, True, False]
    with pytest.raises(ValueError, match="num_outs"):
        gen.grid_priors([(2, 2)])


def _same_anchor_generators(ours, theirs, sizes, pad_shapes=((50, 70, 3), (24, 40), (333, 512)),
                            dtypes=(torch.float32, torch.float64)):
    assert ours.num_levels == theirs.num_levels
    assert ours.num_base_priors == theirs.num_base_priors
    assert ours.strides == [tuple(s) for s in theirs.strides]
    for a, b in zip(ours.base_anchors, theirs.base_anchors, strict=True):
        assert a.dtype == b.dtype and torch.equal(a, b)
    for dtype in dtypes:
        for a, b in zip(ours.grid_priors(sizes, dtype=dtype),
                        theirs.grid_priors(sizes, dtype=dtype, device="cpu"), strict=True):
            assert a.dtype == b.dtype and torch.equal(a, b)
    for pad_shape in pad_shapes:
        for a, b in zip(ours.valid_flags(sizes, pad_shape),
                        theirs.valid_flags(sizes, pad_shape, device="cpu"), strict=True):
            assert torch.equal(a, b)
    idxs = torch.tensor([0, 1, 5, 17, 40])
    for level, size in enumerate(sizes):
        assert torch.equal(ours.sparse_priors(idxs, size, level),
                           theirs.sparse_priors(idxs, size, level, device="cpu"))


ANCHOR_CASES = [
    RETINA,
    dict(strides=[4, 8, 16, 32, 64], ratios=[0.5, 1.0, 2.0], scales=[8]),  # RPN / Faster R-CNN
    dict(strides=[(16, 8), 32], ratios=[0.25, 1.0, 3.0], scales=[1.0, 2.5], base_sizes=[10, 20],
         scale_major=False, center_offset=0.5),
    dict(strides=[8, 16], ratios=[1.0, 2.0], scales=[3.0], centers=[(1.5, 2.5), (7.0, 3.0)]),
    dict(strides=[8, 16, 32], ratios=[1.0], octave_base_scale=8, scales_per_octave=1),  # ATSS
]


@pytest.mark.parametrize("kwargs", ANCHOR_CASES)
@pytest.mark.parametrize("legacy", [False, True])
def test_anchors_are_mmdetections(kwargs, legacy):
    from detlab.models.anchors import LegacyAnchorGenerator

    name = "LegacyAnchorGenerator" if legacy else "AnchorGenerator"
    ours = (LegacyAnchorGenerator if legacy else AnchorGenerator)(**kwargs)
    theirs = getattr(_mmdet_anchor_module(), name)(**kwargs)
    _same_anchor_generators(ours, theirs, SIZES[:len(kwargs["strides"])])


SSD_CASES = [  # MMDetection's SSD300 / SSD512 (COCO, VOC) and explicit sizes
    dict(strides=[8, 16, 32, 64, 100, 300], ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]],
         basesize_ratio_range=(0.15, 0.9), input_size=300, scale_major=False),
    dict(strides=[8, 16, 32, 64, 100, 300], ratios=[[2], [2, 3], [2, 3], [2, 3], [2], [2]],
         basesize_ratio_range=(0.2, 0.9), input_size=300, scale_major=False),
    dict(strides=[8, 16, 32, 64, 128, 256, 512],
         ratios=[[2], [2, 3], [2, 3], [2, 3], [2, 3], [2], [2]],
         basesize_ratio_range=(0.1, 0.9), input_size=512, scale_major=False),
    dict(strides=[8, 16, 32, 64, 128, 256, 512],
         ratios=[[2], [2, 3], [2, 3], [2, 3], [2, 3], [2], [2]],
         basesize_ratio_range=(0.15, 0.9), input_size=512, scale_major=True),
    dict(strides=[16, 32, 64, 107, 160, 320], ratios=[[2, 3]] * 6,  # SSDLite
         min_sizes=[48, 100, 150, 202, 253, 304], max_sizes=[100, 150, 202, 253, 304, 320]),
]


@pytest.mark.parametrize("kwargs", SSD_CASES)
def test_ssd_anchors_are_mmdetections(kwargs):
    from detlab.models.anchors import SSDAnchorGenerator

    ours, theirs = SSDAnchorGenerator(**kwargs), _mmdet_anchor_module().SSDAnchorGenerator(**kwargs)
    assert ours.base_sizes == list(theirs.base_sizes)
    _same_anchor_generators(ours, theirs, [(5, 5), (3, 3), (2, 2), (1, 1), (1, 1), (1, 1),
                                           (1, 1)][:len(kwargs["strides"])])


@pytest.mark.parametrize("kwargs", SSD_CASES[:4])
def test_legacy_ssd_anchors_are_mmdetections(kwargs):
    from detlab.models.anchors import LegacySSDAnchorGenerator

    ours = LegacySSDAnchorGenerator(**kwargs)
    theirs = _mmdet_anchor_module().LegacySSDAnchorGenerator(**kwargs)
    _same_anchor_generators(ours, theirs, [(4, 4), (3, 3), (2, 2), (1, 1), (1, 1), (1, 1),
                                           (1, 1)][:len(kwargs["strides"])])


YOLO_V3 = dict(strides=[32, 16, 8], base_sizes=[[(116, 90), (156, 198), (373, 326)],
                                                [(30, 61), (62, 45), (59, 119)],
                                                [(10, 13), (16, 30), (33, 23)]])


def test_yolo_anchors_and_responsible_flags_are_mmdetections():
    from detlab.models.anchors import YOLOAnchorGenerator

    ours = YOLOAnchorGenerator(**YOLO_V3)
    theirs = _mmdet_anchor_module().YOLOAnchorGenerator(**YOLO_V3)
    sizes = [(3, 4), (6, 8), (12, 16)]
    _same_anchor_generators(ours, theirs, sizes, pad_shapes=[(90, 120), (96, 128, 3)])
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(7, 2, generator=gen) * 90
    gts = torch.cat([xy, xy + torch.rand(7, 2, generator=gen) * 30 + 1], dim=1)
    gts = torch.cat([gts, torch.tensor([[0.0, 0.0, 64.0, 32.0]])])  # center on a cell border
    for a, b in zip(ours.responsible_flags(sizes, gts),
                    theirs.responsible_flags(sizes, gts, device="cpu"), strict=True):
        assert torch.equal(a, b.bool())


def test_ssd_sizes_from_the_ratio_range():
    from detlab.models.anchors import SSDAnchorGenerator

    gen = SSDAnchorGenerator(**SSD_CASES[0])
    # SSD300 on COCO: 7%, then 15% .. 90% of 300 in steps of 17%
    assert gen.base_sizes == [21, 45, 99, 153, 207, 261]
    assert gen.max_sizes == [45, 99, 153, 207, 261, 315]
    assert gen.num_base_priors == [4, 6, 6, 6, 4, 4]
    first = gen.base_anchors[0]
    # a 21-pixel square, then the sqrt(21 * 45) square, then ratio 1/2 and 2, at (4, 4)
    side = math.sqrt(21 * 45)
    torch.testing.assert_close(first[0], torch.tensor([4 - 10.5, 4 - 10.5, 4 + 10.5, 4 + 10.5]))
    torch.testing.assert_close(first[1], torch.tensor([4 - side / 2] * 2 + [4 + side / 2] * 2))
    w, h = 21 * math.sqrt(2), 21 / math.sqrt(2)
    torch.testing.assert_close(first[2], torch.tensor([4 - w / 2, 4 - h / 2, 4 + w / 2, 4 + h / 2]))
    with pytest.raises(ConfigError, match="min_sizes and max_sizes"):
        SSDAnchorGenerator(strides=[8, 16, 32], ratios=[[2]] * 3, input_size=320)


def test_legacy_and_yolo_base_anchors_without_the_reference():
    from detlab.models.anchors import LegacyAnchorGenerator, YOLOAnchorGenerator

    legacy = LegacyAnchorGenerator(strides=[16], ratios=[1.0], scales=[8], center_offset=0.5)
    # a 128-pixel square spans 127 between corners, centered at 7.5
    assert legacy.base_anchors[0].tolist() == [[-56.0, -56.0, 71.0, 71.0]]
    yolo = YOLOAnchorGenerator(**YOLO_V3)
    assert yolo.base_anchors[2][0].tolist() == [4 - 5, 4 - 6.5, 4 + 5, 4 + 6.5]
    flags = yolo.responsible_flags([(1, 2), (2, 2), (2, 4)], torch.tensor([[0.0, 0, 10, 10]]))
    # the center (5, 5) lies in cell (0, 0) of every level
    assert [f.nonzero().squeeze(1).tolist() for f in flags] == [[0, 1, 2]] * 3
    with pytest.raises(ValueError, match="stride column"):
        yolo.grid_priors([(1, 1)] * 3, with_stride=True)
