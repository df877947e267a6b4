"""Losses: torchvision/torch oracles on random inputs (values and gradients), hand-computed cases."""

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, generalized_box_iou_loss
from torchvision.ops import sigmoid_focal_loss as tv_sigmoid_focal_loss

from replicate.models.losses import (
    aligned_box_iou,
    binary_cross_entropy_with_logits,
    distribution_focal_loss,
    giou_loss,
    iou_loss,
    l1_loss,
    quality_focal_loss,
    reduce_loss,
    sigmoid_focal_loss,
    sigmoid_focal_loss_labels,
    smooth_l1_loss,
)

LN2 = math.log(2.0)


def _random_boxes(n, generator, scale=20.0):
    xy = torch.rand(n, 2, generator=generator, dtype=torch.float64) * scale
    wh = torch.rand(n, 2, generator=generator, dtype=torch.float64) * scale + 0.5
    return torch.cat([xy, xy + wh], dim=-1)


# --------------------------------------------------------------------------- focal


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (0.5, 0.0), (0.75, 1.5)])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_sigmoid_focal_matches_torchvision(alpha, gamma, reduction):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(2, 30, 5, generator=g, dtype=torch.float64) * 3)
    targets = F.one_hot(torch.randint(0, 6, (2, 30), generator=g), 6)[..., :5].double()
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    ours = sigmoid_focal_loss(a, targets, alpha=alpha, gamma=gamma, reduction=reduction)
    ref = tv_sigmoid_focal_loss(b, targets, alpha=alpha, gamma=gamma, reduction=reduction)
    torch.testing.assert_close(ours, ref)
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(a.grad, b.grad)


@pytest.mark.parametrize("alpha,gamma", [(0.25, 2.0), (-1.0, 2.0), (0.5, 0.0), (0.75, 1.5)])
def test_sigmoid_focal_of_labels_matches_torchvision_on_valid_rows(alpha, gamma):
    """The label form (no one-hot, no masked copies) = torchvision's focal loss on the one-hot targets of
    the valid rows, summed: values and gradients, with background (-1) and ignored rows."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 40, 6, generator=g, dtype=torch.float64) * 4
    labels = torch.randint(-1, 6, (2, 40), generator=g)  # -1: background
    valid = torch.rand(2, 40, generator=g) > 0.2
    a = logits.clone().requires_grad_(True)
    b = logits.clone().requires_grad_(True)
    ours = sigmoid_focal_loss_labels(a, labels, valid, alpha, gamma, avg_factor=7.0)
    onehot = F.one_hot(labels.clamp(min=0), 6).double() * (labels >= 0).unsqueeze(-1)
    ref = tv_sigmoid_focal_loss(b[valid], onehot[valid], alpha=alpha, gamma=gamma, reduction="sum") / 7.0
    torch.testing.assert_close(ours, ref)
    ours.backward()
    ref.backward()
    torch.testing.assert_close(a.grad, b.grad)
    assert (a.grad[~valid] == 0).all()
    everything = sigmoid_focal_loss_labels(logits, labels, None, alpha, gamma)
    torch.testing.assert_close(everything, tv_sigmoid_focal_loss(logits, onehot, alpha, gamma, reduction="sum"))


def test_sigmoid_focal_of_labels_edge_cases():
    # one positive row at logit 0: 0.25 * 0.5^2 * ln2 for its class, 0.75 * 0.5^2 * ln2 for the other
    loss = sigmoid_focal_loss_labels(torch.zeros(1, 2), torch.tensor([0]))
    torch.testing.assert_close(loss, torch.tensor((0.0625 + 0.1875) * LN2))
    none_valid = sigmoid_focal_loss_labels(torch.zeros(3, 2, requires_grad=True), torch.tensor([0, 1, -1]),
                                           torch.zeros(3, dtype=torch.bool))
    assert none_valid.item() == 0.0 and none_valid.requires_grad
    half = torch.randn(4, 3, dtype=torch.bfloat16)
    out = sigmoid_focal_loss_labels(half, torch.tensor([0, 2, -1, 1]))
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, sigmoid_focal_loss_labels(half.float(), torch.tensor([0, 2, -1, 1])))


def test_sigmoid_focal_hand_case():
    # logit 0 -> p = 0.5; positive: 0.25 * 0.5^2 * ln2; negative: 0.75 * 0.5^2 * ln2
    loss = sigmoid_focal_loss(torch.zeros(2), torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(loss, torch.tensor([0.0625 * LN2, 0.1875 * LN2]))
    w = torch.tensor([2.0, 0.0])
    torch.testing.assert_close(sigmoid_focal_loss(torch.zeros(2), torch.tensor([1.0, 0.0]), weight=w, reduction="sum"),
                               torch.tensor(0.125 * LN2))


# --------------------------------------------------------------------------- QFL


def test_qfl_hand_cases():
    # C = 2; row 0: logits (0,0) -> sigma 0.5, label 0 with IoU 0.8:
    #   class 0: BCE(0.5, 0.8) = ln2, factor |0.8-0.5|^2 = 0.09; class 1: ln2 * 0.5^2
    # row 1: background (label 2): both classes ln2 * 0.25
    # row 2: logits (ln3, 0) -> sigma (0.75, 0.5), label 0 with IoU 1.0:
    #   class 0: -ln(0.75) * 0.25^2; class 1: ln2 * 0.25
    logits = torch.tensor([[0.0, 0.0], [0.0, 0.0], [math.log(3.0), 0.0]])
    labels = torch.tensor([0, 2, 0])
    scores = torch.tensor([0.8, 0.0, 1.0])
    expected = torch.tensor([0.34 * LN2, 0.5 * LN2, -math.log(0.75) * 0.0625 + 0.25 * LN2])
    torch.testing.assert_close(quality_focal_loss(logits, labels, scores), expected)
    # beta = 1 on row 0: 0.3 ln2 + 0.5 ln2
    torch.testing.assert_close(quality_focal_loss(logits[:1], labels[:1], scores[:1], beta=1.0),
                               torch.tensor([0.8 * LN2]))
    torch.testing.assert_close(quality_focal_loss(logits, labels, scores, reduction="mean"), expected.mean())
    torch.testing.assert_close(quality_focal_loss(logits, labels, scores, reduction="sum", avg_factor=None),
                               expected.sum())
    torch.testing.assert_close(quality_focal_loss(logits, labels, scores, reduction="mean", avg_factor=2.0),
                               expected.sum() / 2)


def test_qfl_explicit_formula_random_and_grad():
    g = torch.Generator().manual_seed(1)
    n, c = 40, 4
    logits = torch.randn(n, c, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, c + 1, (n,), generator=g)
    scores = torch.rand(n, generator=g, dtype=torch.float64)
    expected = torch.zeros(n, dtype=torch.float64)
    for i in range(n):  # per-element explicit form of GFL Eq. 5
        for k in range(c):
            s = 1 / (1 + math.exp(-logits[i, k].item()))
            y = scores[i].item() if labels[i].item() == k else 0.0
            expected[i] += -abs(y - s) ** 2 * ((1 - y) * math.log(1 - s) + y * math.log(s))
    torch.testing.assert_close(quality_focal_loss(logits, labels, scores), expected)
    # leading batch dims
    out = quality_focal_loss(logits.view(4, 10, c), labels.view(4, 10), scores.view(4, 10))
    torch.testing.assert_close(out, expected.view(4, 10))
    x = logits[:8].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: quality_focal_loss(t, labels[:8], scores[:8]), (x,))
    with pytest.raises(ValueError):
        quality_focal_loss(logits, torch.full((n,), c + 1), scores)


# --------------------------------------------------------------------------- DFL


def test_dfl_hand_cases():
    # softmax of log(1,2,5) = (1/8, 2/8, 5/8)
    row = torch.log(torch.tensor([1.0, 2.0, 5.0]))
    logits = row.expand(4, 3)
    target = torch.tensor([1.25, 2.0, 0.0, 0.5])
    expected = torch.tensor([
        -(0.75 * math.log(2 / 8) + 0.25 * math.log(5 / 8)),
        -math.log(5 / 8),
        -math.log(1 / 8),
        -(0.5 * math.log(1 / 8) + 0.5 * math.log(2 / 8)),
    ])
    torch.testing.assert_close(distribution_focal_loss(logits, target), expected)
    w = torch.tensor([1.0, 0.0, 0.0, 2.0])
    torch.testing.assert_close(distribution_focal_loss(logits, target, weight=w, reduction="sum"),
                               expected[0] + 2 * expected[3])


def test_dfl_matches_two_cross_entropies_and_grad():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 25, 17, generator=g, dtype=torch.float64)
    target = torch.rand(2, 25, generator=g, dtype=torch.float64) * 15.99
    left = target.floor().long()
    ce_l = F.cross_entropy(logits.reshape(-1, 17), left.reshape(-1), reduction="none").view(2, 25)
    ce_r = F.cross_entropy(logits.reshape(-1, 17), (left + 1).reshape(-1), reduction="none").view(2, 25)
    expected = ce_l * (left + 1 - target) + ce_r * (target - left)
    torch.testing.assert_close(distribution_focal_loss(logits, target), expected)
    x = logits[0, :5].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda t: distribution_focal_loss(t, target[0, :5]), (x,))
    # minimised (gradient zero) by the two-bin distribution with the target's weights
    ideal = torch.full((1, 5), 1e-12, dtype=torch.float64)
    ideal[0, 2], ideal[0, 3] = 0.7, 0.3
    x = ideal.log().requires_grad_(True)
    distribution_focal_loss(x, torch.tensor([2.3], dtype=torch.float64)).sum().backward()
    torch.testing.assert_close(x.grad, torch.zeros_like(x.grad), atol=1e-9, rtol=0)


# --------------------------------------------------------------------------- IoU family


def test_aligned_box_iou_matches_torchvision_diagonal():
    g = torch.Generator().manual_seed(3)
    a, b = _random_boxes(50, g), _random_boxes(50, g)
    torch.testing.assert_close(aligned_box_iou(a, b), box_iou(a, b).diagonal())
    out = aligned_box_iou(a.view(5, 10, 4), b.view(5, 10, 4))
    assert out.shape == (5, 10)
    torch.testing.assert_close(out.view(-1), box_iou(a, b).diagonal())
    # broadcasting (N,1,4) vs (1,M,4) reproduces the pairwise matrix
    torch.testing.assert_close(aligned_box_iou(a[:, None], b[None]), box_iou(a, b))
    zero = torch.zeros(4)
    assert aligned_box_iou(zero, zero).item() == 0.0


def test_iou_loss_hand_values():
    a = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 2.0, 1.0], [1.0, 0.0, 3.0, 2.0], [5.0, 5.0, 6.0, 6.0]])
    # IoU: 1, 2/4 = 0.5, 2/6 = 1/3, 0
    torch.testing.assert_close(iou_loss(a, b), torch.tensor([0.0, 0.5, 2 / 3, 1 - 1e-6]))
    torch.testing.assert_close(iou_loss(a, b, mode="log")[:3], torch.tensor([0.0, LN2, math.log(3.0)]))
    assert iou_loss(a, b, mode="log", eps=1e-6)[3].item() == pytest.approx(-math.log(1e-6), rel=1e-5)
    torch.testing.assert_close(iou_loss(a, b, mode="square")[:3], torch.tensor([0.0, 0.75, 1 - 1 / 9]))
    with pytest.raises(ValueError):
        iou_loss(a, b, mode="cube")


def test_giou_hand_value():
    # disjoint unit boxes 1 apart: IoU 0, union 2, enclosing 3 -> GIoU = -1/3 -> loss 4/3
    a = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]])
    b = torch.tensor([[2.0, 0.0, 3.0, 1.0], [0.0, 0.0, 2.0, 1.0]])
    torch.testing.assert_close(giou_loss(a, b), torch.tensor([4 / 3, 0.5]))


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_giou_matches_torchvision_with_grad(reduction):
    g = torch.Generator().manual_seed(4)
    a0, b = _random_boxes(60, g), _random_boxes(60, g)
    a = a0.clone().requires_grad_(True)
    a_ref = a0.clone().requires_grad_(True)
    ours = giou_loss(a, b, reduction=reduction)
    ref = generalized_box_iou_loss(a_ref, b, reduction=reduction)
    torch.testing.assert_close(ours, ref)
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(a.grad, a_ref.grad)
    out = giou_loss(a0.view(3, 20, 4), b.view(3, 20, 4))
    torch.testing.assert_close(out.view(-1), generalized_box_iou_loss(a0, b))


# --------------------------------------------------------------------------- L1 / smooth L1 / BCE


@pytest.mark.parametrize("beta", [1.0, 0.5, 1.0 / 9, 0.0])
@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_smooth_l1_matches_torch_with_grad(beta, reduction):
    g = torch.Generator().manual_seed(5)
    p0 = torch.randn(4, 50, 4, generator=g, dtype=torch.float64) * 2
    t = torch.randn(4, 50, 4, generator=g, dtype=torch.float64)
    p, p_ref = p0.clone().requires_grad_(True), p0.clone().requires_grad_(True)
    ours = smooth_l1_loss(p, t, beta=beta, reduction=reduction)
    ref = F.smooth_l1_loss(p_ref, t, beta=beta, reduction=reduction)
    torch.testing.assert_close(ours, ref)
    ours.sum().backward()
    ref.sum().backward()
    torch.testing.assert_close(p.grad, p_ref.grad)


def test_smooth_l1_and_l1_hand_values():
    p = torch.tensor([0.0, 0.5, 3.0])
    t = torch.zeros(3)
    torch.testing.assert_close(smooth_l1_loss(p, t), torch.tensor([0.0, 0.125, 2.5]))
    torch.testing.assert_close(l1_loss(p, t), torch.tensor([0.0, 0.5, 3.0]))
    torch.testing.assert_close(l1_loss(p, t, reduction="mean"), F.l1_loss(p, t))
    torch.testing.assert_close(l1_loss(p, t, weight=torch.tensor([1.0, 2.0, 0.0]), reduction="sum"), torch.tensor(1.0))


def test_bce_wrapper_matches_torch():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(3, 8, generator=g)
    y = torch.rand(3, 8, generator=g)
    w = torch.rand(8, generator=g)
    torch.testing.assert_close(binary_cross_entropy_with_logits(x, y),
                               F.binary_cross_entropy_with_logits(x, y, reduction="none"))
    torch.testing.assert_close(binary_cross_entropy_with_logits(x, y, weight=w, reduction="mean"),
                               F.binary_cross_entropy_with_logits(x, y, weight=w))
    pw = torch.full((8,), 3.0)
    torch.testing.assert_close(binary_cross_entropy_with_logits(x, y, reduction="sum", pos_weight=pw),
                               F.binary_cross_entropy_with_logits(x, y, reduction="sum", pos_weight=pw))
    # hand: logit 0, target 1 -> ln 2
    torch.testing.assert_close(binary_cross_entropy_with_logits(torch.zeros(1), torch.ones(1)), torch.tensor([LN2]))


def test_reduce_loss_contract():
    loss = torch.tensor([1.0, 2.0, 3.0])
    assert reduce_loss(loss, reduction="sum").item() == 6.0
    assert reduce_loss(loss, reduction="mean").item() == 2.0
    assert reduce_loss(loss, reduction="mean", avg_factor=4.0).item() == 1.5
    torch.testing.assert_close(reduce_loss(loss, weight=torch.tensor([0.0, 1.0, 2.0])), torch.tensor([0.0, 2.0, 6.0]))
    empty = torch.zeros(0, requires_grad=True)
    out = reduce_loss(empty, reduction="mean")
    assert out.item() == 0.0 and out.requires_grad
    with pytest.raises(ValueError):
        reduce_loss(loss, reduction="avg")
    with pytest.raises(ValueError):
        reduce_loss(loss, reduction="sum", avg_factor=2.0)
