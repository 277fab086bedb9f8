"""CrossEntropyLoss (softmax, sigmoid, mask) against torch's cross-entropies and the formulas
written out, for every reduction, weight, avg_factor, class_weight, ignore_index and
avg_non_ignore."""

import math

import pytest
import torch
import torch.nn.functional as F

from detlab.config import ConfigError
from detlab.models.losses import CrossEntropyLoss, cross_entropy

EPS = torch.finfo(torch.float32).eps
N, C = 10, 4
# every reduction, with and without an avg_factor ('sum' with one is an error: test_errors)
REDUCTIONS = [("mean", None), ("sum", None), ("none", None), ("mean", 4.0), ("none", 4.0)]


def _reduce(elements, reduction, avg_factor=None, loss_weight=1.0):
    """MMDetection's documented reduction of already weighted elements."""
    if reduction == "none":
        return loss_weight * elements
    if reduction == "sum":
        return loss_weight * elements.sum()
    denominator = elements.numel() if avg_factor is None else avg_factor + EPS
    return loss_weight * elements.sum() / denominator


@pytest.fixture
def softmax_case():
    gen = torch.Generator().manual_seed(0)
    pred = torch.randn(N, C, generator=gen, dtype=torch.float64)
    label = torch.randint(0, C, (N,), generator=gen)
    label[[2, 7]] = 1
    return pred, label, torch.rand(N, generator=gen, dtype=torch.float64)


def _softmax_elements(pred, label, class_weight=None, ignore_index=-100):
    """``-log softmax(pred)[label] * class_weight[label]`` per sample, 0 where ignored."""
    rows = []
    for logits, y in zip(pred.tolist(), label.tolist(), strict=True):
        if y == ignore_index:
            rows.append(0.0)
            continue
        log_z = math.log(sum(math.exp(v) for v in logits))
        rows.append((log_z - logits[y]) * (1.0 if class_weight is None else class_weight[y]))
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_softmax_is_torch_cross_entropy(softmax_case, reduction):
    pred, label, _ = softmax_case
    loss = CrossEntropyLoss(reduction=reduction, loss_weight=1.5)
    torch.testing.assert_close(loss(pred, label),
                               1.5 * F.cross_entropy(pred, label, reduction=reduction))


@pytest.mark.parametrize("reduction, avg_factor", REDUCTIONS)
def test_softmax_weights_and_class_weights(softmax_case, reduction, avg_factor):
    pred, label, weight = softmax_case
    class_weight = [0.5, 2.0, 1.0, 3.0]
    loss = CrossEntropyLoss(class_weight=class_weight, loss_weight=2.0)
    elements = _softmax_elements(pred, label, class_weight) * weight
    torch.testing.assert_close(
        loss(pred, label, weight, avg_factor=avg_factor, reduction_override=reduction),
        _reduce(elements, reduction, avg_factor, 2.0))


def test_softmax_mean_with_class_weights_is_over_samples_not_weights(softmax_case):
    """torch divides a weighted mean by the sum of the class weights; MMDetection by the
    number of samples."""
    pred, label, _ = softmax_case
    class_weight = torch.tensor([0.5, 2.0, 1.0, 3.0], dtype=torch.float64)
    per_sample = F.cross_entropy(pred, label, weight=class_weight, reduction="none")
    out = CrossEntropyLoss(class_weight=class_weight.tolist())(pred, label)
    torch.testing.assert_close(out, per_sample.sum() / N)
    torch.testing.assert_close(F.cross_entropy(pred, label, weight=class_weight),
                               per_sample.sum() / class_weight[label].sum())


def test_ignore_index_and_avg_non_ignore(softmax_case):
    pred, label, weight = softmax_case  # label 1 (twice at least) is ignored
    kept = (label != 1).sum().item()
    elements = _softmax_elements(pred, label, ignore_index=1)
    with pytest.warns(UserWarning, match="avg_non_ignore"):
        over_all = CrossEntropyLoss(ignore_index=1)
    torch.testing.assert_close(over_all(pred, label), elements.sum() / N)
    over_kept = CrossEntropyLoss(ignore_index=1, avg_non_ignore=True)
    torch.testing.assert_close(over_kept(pred, label), elements.sum() / (kept + EPS))
    torch.testing.assert_close(over_kept(pred, label),
                               F.cross_entropy(pred, label, ignore_index=1))
    # with weights the divisor is still the number of kept labels, and an avg_factor wins
    torch.testing.assert_close(over_kept(pred, label, weight),
                               (elements * weight).sum() / (kept + EPS))
    torch.testing.assert_close(over_kept(pred, label, avg_factor=3.0),
                               elements.sum() / (3.0 + EPS))
    # the call's ignore_index overrides the configured one
    torch.testing.assert_close(over_kept(pred, label, ignore_index=2),
                               F.cross_entropy(pred, label, ignore_index=2))


def test_default_ignore_index_is_torchs(softmax_case):
    pred, label, _ = softmax_case
    label = label.clone()
    label[0] = -100
    loss = CrossEntropyLoss(avg_non_ignore=True)
    torch.testing.assert_close(loss(pred, label), F.cross_entropy(pred, label))


def _close32(out, expected):
    """The sigmoid cross-entropy computes in float32 (MMDetection casts targets and weights to
    float) whatever the input's precision."""
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-6)


def _bce(logit, y, pos_weight=1.0):
    """``-(pos_weight * y * log sigmoid(x) + (1 - y) * log(1 - sigmoid(x)))``."""
    p = 1 / (1 + math.exp(-logit))
    return -(pos_weight * y * math.log(p) + (1 - y) * math.log(1 - p))


@pytest.fixture
def sigmoid_case():
    gen = torch.Generator().manual_seed(1)
    pred = torch.randn(N, C, generator=gen, dtype=torch.float64)
    label = torch.randint(0, C + 1, (N,), generator=gen)  # C = background
    label[[1, 5]] = torch.tensor([-1, 2])  # -1: ignored (negative)
    label[8] = C
    return pred, label, torch.rand(N, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("reduction, avg_factor", REDUCTIONS)
def test_sigmoid_expands_labels_to_one_hot(sigmoid_case, reduction, avg_factor):
    pred, label, weight = sigmoid_case
    pos_weight = [1.0, 2.0, 0.5, 3.0]
    elements = torch.tensor([[_bce(pred[i, c].item(), float(label[i].item() == c), pos_weight[c])
                              * weight[i].item() * float(label[i].item() >= 0)
                              for c in range(C)] for i in range(N)], dtype=torch.float64)
    loss = CrossEntropyLoss(use_sigmoid=True, class_weight=pos_weight)
    _close32(
        loss(pred, label, weight, avg_factor=avg_factor, reduction_override=reduction),
        _reduce(elements, reduction, avg_factor))


def test_sigmoid_is_torch_bce_on_one_hot(sigmoid_case):
    pred, label, _ = sigmoid_case
    label = label.clamp(min=0)
    one_hot = F.one_hot(label, C + 1)[:, :C].double()
    loss = CrossEntropyLoss(use_sigmoid=True)
    _close32(loss(pred, label),
                               F.binary_cross_entropy_with_logits(pred, one_hot))
    _close32(loss(pred, one_hot),
                               F.binary_cross_entropy_with_logits(pred, one_hot))


def test_sigmoid_ignore_index_and_avg_non_ignore(sigmoid_case):
    pred, label, _ = sigmoid_case  # label -1 at row 1; ignore label 2 too
    valid = (label >= 0) & (label != 2)
    one_hot = (label[:, None] == torch.arange(C)).double()
    elements = F.binary_cross_entropy_with_logits(pred, one_hot, reduction="none")
    elements = elements * valid[:, None]
    loss = CrossEntropyLoss(use_sigmoid=True, ignore_index=2, avg_non_ignore=True)
    _close32(loss(pred, label),
                               elements.sum() / (valid.sum().item() * C + EPS))


def test_sigmoid_soft_targets_mask_negative_entries():
    gen = torch.Generator().manual_seed(2)
    pred = torch.randn(N, C, generator=gen, dtype=torch.float64)
    target = torch.rand(N, C, generator=gen, dtype=torch.float64)
    target[0, 0] = -1.0
    weight = torch.rand(N, C, generator=gen, dtype=torch.float64)
    valid = (target >= 0).double()
    elements = F.binary_cross_entropy_with_logits(pred, target, reduction="none")
    loss = CrossEntropyLoss(use_sigmoid=True, reduction="sum")
    _close32(loss(pred, target, weight), (elements * weight * valid).sum())
    _close32(CrossEntropyLoss(use_sigmoid=True, avg_non_ignore=True)(
        pred, target), (elements * valid).sum() / (N * C - 1 + EPS))


def test_mask_loss_takes_each_rois_own_class():
    gen = torch.Generator().manual_seed(3)
    pred = torch.randn(5, C, 6, 6, generator=gen, dtype=torch.float64)
    target = (torch.rand(5, 6, 6, generator=gen) > 0.5).double()
    labels = torch.tensor([0, 3, 3, 1, 2])
    loss = CrossEntropyLoss(use_mask=True, loss_weight=2.0)
    expected = sum(F.binary_cross_entropy_with_logits(pred[i, labels[i]], target[i],
                                                      reduction="sum") for i in range(5))
    out = loss(pred, target, labels)
    assert out.shape == (1,)
    torch.testing.assert_close(out, 2.0 * expected[None] / target.numel())
    with pytest.raises(ValueError, match="mean"):
        loss(pred, target, labels, reduction_override="sum")
    with pytest.raises(ValueError, match="avg_factor"):
        loss(pred, target, labels, avg_factor=3)
    with pytest.raises(ValueError, match="ignore_index"):
        loss(pred, target, labels, ignore_index=1)
    with pytest.raises(ValueError, match="labels"):
        loss(pred, target)
    empty = torch.zeros(0, C, 6, 6, requires_grad=True)
    out = loss(empty, torch.zeros(0, 6, 6), torch.zeros(0, dtype=torch.long))
    assert out.item() == 0
    out.backward()


def test_gradients_are_finite_and_match_torch(softmax_case):
    pred, label, _ = softmax_case
    ours = pred.clone().requires_grad_(True)
    theirs = pred.clone().requires_grad_(True)
    CrossEntropyLoss()(ours, label).backward()
    F.cross_entropy(theirs, label).backward()
    torch.testing.assert_close(ours.grad, theirs.grad)
    extreme = torch.tensor([[80.0, -80.0, 0.0]], requires_grad=True)
    out = CrossEntropyLoss(use_sigmoid=True)(extreme, torch.tensor([1]))
    out.backward()
    assert torch.isfinite(out) and torch.isfinite(extreme.grad).all()


def test_errors():
    with pytest.raises(ConfigError, match="use_sigmoid or use_mask"):
        CrossEntropyLoss(use_sigmoid=True, use_mask=True)
    with pytest.raises(ConfigError, match="reduction"):
        CrossEntropyLoss(reduction="avg")
    pred, label = torch.randn(3, 2), torch.tensor([0, 1, 1])
    with pytest.raises(ValueError, match="avg_factor"):
        CrossEntropyLoss()(pred, label, avg_factor=2, reduction_override="sum")
    with pytest.raises(ValueError, match="reduction_override"):
        CrossEntropyLoss()(pred, label, reduction_override="avg")
    # the functional form has MMDetection's defaults
    torch.testing.assert_close(cross_entropy(pred, label), F.cross_entropy(pred, label))
