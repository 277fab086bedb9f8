"""GHM-C and GHM-R against the gradient-density weighting written out bin by bin (Li et al.,
2019, with MMDetection's normalization by the number of non-empty bins), with and without the
moving average of the bin counts."""

import math

import numpy as np
import pytest
import torch

from detlab.config import ConfigError
from detlab.models.losses import GHMC, GHMR

EPS = float(torch.finfo(torch.float32).eps)


class DensityReference:
    """``beta_i = tot / (count of g_i's bin * non-empty bins)``, the count being a moving
    average when ``momentum > 0``; bins ``[k / bins, (k + 1) / bins)``, the last one closed with
    ``last_edge``."""

    def __init__(self, bins: int, momentum: float, last_edge: float) -> None:
        self.edges = [k / bins for k in range(bins)] + [last_edge]
        self.momentum, self.acc = momentum, [0.0] * bins

    def weights(self, g: np.ndarray, valid: np.ndarray, tot: float) -> np.ndarray:
        out, nonempty = np.zeros_like(g), 0
        for k in range(len(self.acc)):
            members = valid & (g >= self.edges[k]) & (g < self.edges[k + 1])
            count = int(members.sum())
            if count == 0:
                continue
            nonempty += 1
            if self.momentum > 0:
                self.acc[k] = self.momentum * self.acc[k] + (1 - self.momentum) * count
                out[members] = tot / self.acc[k]
            else:
                out[members] = tot / count
        return out / nonempty if nonempty else out


def _bce(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0) - x * y + np.log1p(np.exp(-np.abs(x)))


def _ghmc_inputs(seed: int):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(30, 5, generator=gen) * 3
    labels = torch.randint(0, 6, (30,), generator=gen)  # 5 = background
    label_weight = (torch.rand(30, generator=gen) > 0.2).float()
    return logits, labels, label_weight


def _ghmc_reference(reference, logits, labels, label_weight, reduction="mean"):
    x = logits.double().numpy()
    y = (labels.numpy()[:, None] == np.arange(x.shape[1])).astype(np.float64)
    valid = np.repeat(label_weight.numpy()[:, None] > 0, x.shape[1], axis=1)
    g = np.abs(1 / (1 + np.exp(-x)) - y).astype(np.float32).astype(np.float64)
    tot = max(float(valid.sum()), 1.0)
    elements = _bce(x, y) * reference.weights(g, valid, tot)
    return elements if reduction == "none" else elements.sum() / (tot + EPS)


@pytest.mark.parametrize("bins, momentum", [(10, 0.0), (30, 0.0), (10, 0.75)])
def test_ghmc_weights_by_inverse_gradient_density(bins, momentum):
    loss = GHMC(bins=bins, momentum=momentum, loss_weight=2.0)
    reference = DensityReference(bins, momentum, 1 + 1e-6)
    for step in range(3):  # the moving average carries over from batch to batch
        logits, labels, label_weight = _ghmc_inputs(step)
        expected = 2.0 * _ghmc_reference(reference, logits, labels, label_weight)
        out = loss(logits, labels, label_weight, avg_factor=123.0)  # avg_factor: not used
        np.testing.assert_allclose(out.item(), expected, rtol=1e-5)
    if momentum > 0:
        np.testing.assert_allclose(loss.acc_sum.numpy(), reference.acc, rtol=1e-5)


def test_ghmc_none_reduction_one_hot_targets_and_missing_weights():
    logits, labels, label_weight = _ghmc_inputs(5)
    loss = GHMC(reduction="none")
    expected = _ghmc_reference(DensityReference(10, 0, 1 + 1e-6), logits, labels, label_weight,
                               "none")
    np.testing.assert_allclose(loss(logits, labels, label_weight).numpy(), expected, rtol=1e-5,
                               atol=1e-7)
    one_hot = (labels[:, None] == torch.arange(5)).float()
    torch.testing.assert_close(loss(logits, one_hot, label_weight[:, None].expand(30, 5)),
                               loss(logits, labels, label_weight))
    torch.testing.assert_close(loss(logits, labels), loss(logits, labels, torch.ones(30)))


def test_ghm_configuration():
    assert "acc_sum" not in GHMC().state_dict() and "acc_sum" in GHMC(momentum=0.5).state_dict()
    assert GHMC(bins=4).edges.tolist() == pytest.approx([0, 0.25, 0.5, 0.75, 1 + 1e-6])
    assert GHMR(bins=4).edges.tolist() == [0, 0.25, 0.5, 0.75, 1000.0]
    for cls in (GHMC, GHMR):
        with pytest.raises(ConfigError, match="sum"):
            cls(reduction="sum")
    with pytest.raises(ConfigError, match="use_sigmoid"):
        GHMC(use_sigmoid=False)
    with pytest.raises(ValueError, match="sum"):
        GHMC()(*_ghmc_inputs(0), reduction_override="sum")


def _ghmr_reference(reference, pred, target, label_weight, mu, reduction="mean"):
    d = (pred - target).double().numpy()
    elements = np.sqrt(d * d + mu * mu) - mu  # the authentic smooth L1
    g = np.abs(d / np.sqrt(mu * mu + d * d)).astype(np.float32).astype(np.float64)
    lw = label_weight.double().numpy()
    tot = max(float(lw.sum()), 1.0)
    elements = elements * reference.weights(g, lw > 0, tot)
    return elements if reduction == "none" else elements.sum() / (tot + EPS)


@pytest.mark.parametrize("mu, bins, momentum", [(0.02, 10, 0.0), (0.05, 5, 0.0),
                                                (0.02, 10, 0.7)])
def test_ghmr_weights_by_inverse_gradient_density(mu, bins, momentum):
    loss = GHMR(mu=mu, bins=bins, momentum=momentum, loss_weight=3.0)
    reference = DensityReference(bins, momentum, 1000.0)
    for step in range(3):
        gen = torch.Generator().manual_seed(step)
        pred, target = torch.randn(25, 4, generator=gen) * 0.1, torch.randn(25, 4, generator=gen)
        target = target * 0.1
        label_weight = (torch.rand(25, 4, generator=gen) > 0.3).float() * 0.5
        expected = 3.0 * _ghmr_reference(reference, pred, target, label_weight, mu)
        np.testing.assert_allclose(loss(pred, target, label_weight).item(), expected, rtol=1e-5)
    none = GHMR(mu=mu, bins=bins, reduction="none")(pred, target, label_weight)
    np.testing.assert_allclose(
        none.numpy(), _ghmr_reference(DensityReference(bins, 0, 1000.0), pred, target,
                                      label_weight, mu, "none"), rtol=1e-5, atol=1e-8)


def test_ghm_gradients_flow_only_through_the_loss():
    logits, labels, label_weight = _ghmc_inputs(7)
    logits.requires_grad_(True)
    GHMC()(logits, labels, label_weight).backward()
    assert torch.isfinite(logits.grad).all()
    assert (logits.grad[label_weight == 0] == 0).all()  # invalid samples learn nothing
    pred = torch.zeros(3, 4, requires_grad=True)
    out = GHMR()(pred, torch.full((3, 4), 0.5), torch.ones(3, 4))
    out.backward()
    # d/dx (sqrt(d^2 + mu^2) - mu) = d / sqrt(d^2 + mu^2), times the (single bin's) weight 1
    expected = -0.5 / math.sqrt(0.25 + 0.02**2) / 12
    torch.testing.assert_close(pred.grad, torch.full((3, 4), expected), rtol=1e-5, atol=0)
