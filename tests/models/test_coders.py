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
