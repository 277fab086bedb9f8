"""The mmcv._ext stand-in, through mmcv's own op classes: what it computes agrees with plain
torch / torchvision, and every other op says which one it is when called."""

import ast
from pathlib import Path

import pytest
import torch
import torchvision

from reference.mmdet_reference import import_mmdet


@pytest.fixture(scope="module")
def ops():
    import_mmdet()
    import mmcv.ops

    return mmcv.ops


def _boxes(n, gen):
    xy = torch.rand(n, 2, generator=gen) * 50
    return torch.cat([xy, xy + torch.rand(n, 2, generator=gen) * 30 + 1], dim=1)


def _names_asked_for(mmcv_root: Path) -> set[str]:
    """Every name of mmcv's ``load_ext('_ext', [...])`` calls, read from its sources."""
    names = set()
    for path in mmcv_root.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "load_ext"
                    and len(node.args) == 2):
                names.update(ast.literal_eval(node.args[1]))
    return names


def test_the_stand_in_has_every_name_mmcv_asks_for(ops):
    import mmcv
    import mmcv._ext

    from reference.mmcv_ext import OPS

    assert set(OPS) == _names_asked_for(Path(mmcv.__file__).parent)
    assert all(callable(getattr(mmcv._ext, name)) for name in OPS)


@pytest.mark.parametrize("offset", [0, 1])
def test_nms_as_torchvision(ops, offset):
    gen = torch.Generator().manual_seed(0)
    boxes, scores = _boxes(200, gen), torch.rand(200, generator=gen)
    dets, keep = ops.nms(boxes, scores, iou_threshold=0.3, offset=offset)
    widened = boxes.clone()
    widened[:, 2:] += offset  # mmcv's legacy width is x2 - x1 + 1
    expected = torchvision.ops.nms(widened, scores, 0.3)
    assert torch.equal(keep, expected)
    torch.testing.assert_close(dets[:, 4], scores[expected])


def test_roi_align_as_torchvision(ops):
    gen = torch.Generator().manual_seed(1)
    feats = torch.randn(2, 8, 40, 48, generator=gen)
    rois = torch.cat([torch.tensor([[0.0], [1.0], [1.0]]), _boxes(3, gen)], dim=1)
    ours = ops.RoIAlign((7, 7), spatial_scale=0.5, sampling_ratio=0, aligned=True)(feats, rois)
    expected = torchvision.ops.roi_align(feats, rois, (7, 7), 0.5, 0, aligned=True)
    torch.testing.assert_close(ours, expected)


def test_deformable_convs_without_offsets_are_convs(ops):
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(2, 8, 12, 14, generator=gen)
    dcn = ops.DeformConv2d(8, 6, 3, padding=1, deform_groups=2)
    offset = torch.zeros(2, 2 * 2 * 9, 12, 14)
    torch.testing.assert_close(dcn(x, offset), torch.nn.functional.conv2d(x, dcn.weight, padding=1))
    mdcn = ops.ModulatedDeformConv2d(8, 6, 3, stride=2, padding=1, bias=True)
    mask = torch.full((2, 9, 6, 7), 0.5)
    expected = torch.nn.functional.conv2d(x, mdcn.weight, stride=2, padding=1) * 0.5 + \
        mdcn.bias[:, None, None]
    torch.testing.assert_close(mdcn(x, torch.zeros(2, 18, 6, 7), mask), expected)


def test_other_ops_name_themselves(ops):
    with pytest.raises(NotImplementedError, match=r"mmcv\._ext\.sigmoid_focal_loss_forward"):
        ops.sigmoid_focal_loss(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), 2.0, 0.25)
