"""RepPoints w/ GridF and SALT-RepPoints: the point assigner, the box deltas and grid by hand, the grid sampling
against a dilated convolution, the losses by hand, the gradient paths."""

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from replicate.models.assigners import NEGATIVE, point_assign
from replicate.models.detector import build_detector
from replicate.models.detectors.reppoints import RepPointsHeadConfig, box_from_deltas, grid_points
from replicate.models.postprocess import TestConfig
from replicate.models.zoo import model_config

K = 3


def test_point_assign_by_hand():
    """Strides 8 and 16 on a 32 x 32 image (locations at (x, y) * stride). Box A (4, 4, 22, 28): level
    floor((log2(18 / 4) + log2(24 / 4)) / 2) = 2, clamped to 3 (stride 8); centre (13, 16); the nearest
    location in units of (18, 24) is (16, 16). Box B (0, 0, 64, 64): level floor(log2(16)) = 4 (stride 16),
    centre (32, 32): no stride-16 location is nearer than (16, 16). Box C is padding."""
    pts8 = torch.tensor([[x * 8.0, y * 8.0] for y in range(4) for x in range(4)])
    pts16 = torch.tensor([[x * 16.0, y * 16.0] for y in range(2) for x in range(2)])
    points = torch.cat([pts8, pts16])
    strides = torch.tensor([8.0] * 16 + [16.0] * 4)
    gt = torch.tensor([[[4.0, 4.0, 22.0, 28.0], [0.0, 0.0, 64.0, 64.0], [0.0, 0.0, 8.0, 8.0]]])
    labels = torch.tensor([[1, 2, 0]])
    valid = torch.tensor([[True, True, False]])
    a = point_assign(points, strides, gt, labels, valid)
    expected = torch.full((1, 20), NEGATIVE)
    expected[0, 2 * 4 + 2] = 0  # (16, 16) on stride 8
    expected[0, 16 + 3] = 1  # (16, 16) on stride 16
    assert torch.equal(a.gt_index, expected)
    assert a.labels[0, 10] == 1 and a.labels[0, 19] == 2 and a.num_pos == 2
    # two boxes wanting the same location: the nearer (in its own units) takes it, the other gets nothing
    twins = torch.tensor([[[4.0, 4.0, 22.0, 28.0], [6.0, 4.0, 24.0, 28.0]]])  # centres (13, 16) and (15, 16)
    b = point_assign(points, strides, twins, torch.tensor([[1, 2]]), torch.tensor([[True, True]]))
    assert b.gt_index[0, 10] == 1 and b.num_pos == 1
    # pos_num = 2: the two nearest
    c = point_assign(points, strides, gt[:, :1], labels[:, :1], valid[:, :1], pos_num=2)
    assert set(torch.nonzero(c.gt_index[0] == 0).flatten().tolist()) == {10, 9}  # (16, 16) and (8, 16)
    # no ground truth at all
    empty = point_assign(points, strides, torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.long),
                         torch.zeros(1, 0, dtype=torch.bool))
    assert (empty.gt_index == NEGATIVE).all()


def test_box_deltas_and_grid_by_hand():
    prev = torch.tensor([-2.0, -1.0, 2.0, 3.0]).view(1, 4, 1, 1)  # centre (0, 1), size (4, 4)
    assert torch.equal(box_from_deltas(torch.zeros(1, 4, 1, 1), prev), prev)
    moved = box_from_deltas(torch.tensor([0.5, -0.25, math.log(2.0), 0.0]).view(1, 4, 1, 1), prev)
    # centre (0 + 0.5 * 4, 1 - 0.25 * 4) = (2, 0), size (8, 4)
    assert torch.allclose(moved.flatten(), torch.tensor([-2.0, -2.0, 6.0, 2.0]))
    grid = grid_points(prev).view(9, 2)  # (dy, dx), row-major over the 3 x 3 grid
    expected = [[y, x] for y in (-1.0, 1.0, 3.0) for x in (-2.0, 0.0, 2.0)]
    assert grid.tolist() == expected


def _head(cfg=None, seed=0):
    torch.manual_seed(seed)
    cfg = cfg or RepPointsHeadConfig(feat_channels=8, num_convs=1, point_channels=8, norm=None, strides=(8, 16))
    return cfg.build(8, K)


def test_the_initial_square_samples_the_grid_of_a_dilated_convolution():
    """With zero initial deltas the initial box is the base square of 4 strides, whose grid is the 3x3 kernel
    dilated by 2: the grid-feature sampling equals ``conv2d(dilation=2)`` (torch's, zero padding)."""
    head = _head()
    with torch.no_grad():
        head.init_out.weight.zero_()
        head.init_out.bias.zero_()
    x = torch.randn(2, 8, 6, 7)
    outs = head([x, torch.randn(2, 8, 3, 4)])
    c = head.cls_tower(x)
    dilated = torch.relu(F.conv2d(c, head.cls_sample.weight, head.cls_sample.bias, padding=2, dilation=2))
    assert torch.allclose(outs["cls"][0], head.cls_out(dilated), atol=1e-5)
    assert torch.equal(outs["init"][0], head.base_box.expand(2, 4, 6, 7))


def _outs_and_targets():
    """One image (32 x 32), strides 8 and 16, one box whose initial-stage location is (16, 16) on stride 8
    (index 10; see test_point_assign_by_hand). That location's initial box equals the ground truth, every
    other is a tiny box (IoU < 0.4); the refine boxes are the initial ones, that location's x2 moved 3.2 px."""
    gt = torch.tensor([[4.0, 4.0, 22.0, 28.0]])
    init0 = torch.tensor([-0.1, -0.1, 0.1, 0.1]).view(1, 4, 1, 1).repeat(1, 1, 4, 4)
    init1 = torch.tensor([-0.1, -0.1, 0.1, 0.1]).view(1, 4, 1, 1).repeat(1, 1, 2, 2)
    init0[0, :, 2, 2] = (gt[0] - 16.0) / 8.0
    refine0 = init0.clone()
    refine0[0, 2, 2, 2] += 0.4  # 3.2 px
    outs = {"cls": [torch.zeros(1, K, 4, 4), torch.zeros(1, K, 2, 2)], "init": [init0, init1],
            "refine": [refine0, init1.clone()]}
    return outs, [{"boxes": gt, "labels": torch.tensor([1])}]


def test_losses_by_hand():
    head = _head()
    outs, targets = _outs_and_targets()
    terms = head.loss(outs, targets, (32, 32))
    assert terms["loss_bbox_init"] == pytest.approx(0.0, abs=1e-6)
    # 3.2 px / (4 x 8 px) = 0.1 < beta 0.11: 0.5 * 0.1^2 / 0.11, one positive, weight 1
    assert terms["loss_bbox_refine"] == pytest.approx(0.5 * 0.01 / 0.11, rel=1e-5)
    # focal loss at p = 0.5 over 20 locations x 3 classes, one positive (class 1), averaged over 1 positive
    ln2 = math.log(2.0)
    assert terms["loss_cls"] == pytest.approx(59 * 0.75 * 0.25 * ln2 + 0.25 * 0.25 * ln2, rel=1e-5)
    # the initial stage's error counts at half weight: x2 off by 3.2 px there too
    outs["init"][0][0, 2, 2, 2] += 0.4
    assert head.loss(outs, targets, (32, 32))["loss_bbox_init"] == pytest.approx(0.5 * 0.5 * 0.01 / 0.11, rel=1e-5)


def _train_terms(head, seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = [torch.randn(1, 8, 8, 8, generator=g), torch.randn(1, 8, 4, 4, generator=g)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 10.0, 60.0, 34.0]]),
                "labels": torch.tensor([0, 2])}]
    return head.loss(head(feats), targets, (64, 64))


def _grad(head, term, module):
    head.zero_grad()
    _train_terms(head)[term].backward()
    return module.weight.grad.clone() if module.weight.grad is not None else torch.zeros_like(module.weight)


def test_the_grid_sampling_passes_a_tenth_of_its_gradient_to_the_initial_box():
    cfg = RepPointsHeadConfig(feat_channels=8, num_convs=1, point_channels=8, norm=None, strides=(8, 16))
    head = _head(cfg)
    tenth = _grad(head, "loss_cls", head.init_out)
    whole_head = _head(replace(cfg, grad_mul=1.0))
    whole = _grad(whole_head, "loss_cls", whole_head.init_out)
    assert whole.abs().sum() > 0
    assert torch.allclose(tenth, 0.1 * whole, rtol=1e-4, atol=1e-9)
    # the refine box is relative to the detached initial box: without the sampling path no gradient reaches it
    none_head = _head(replace(cfg, grad_mul=0.0))
    assert _grad(none_head, "loss_bbox_refine", none_head.init_out).abs().sum() == 0
    assert _grad(none_head, "loss_bbox_init", none_head.init_out).abs().sum() > 0


def test_salt_reppoints_uses_salts_coarse_box_as_the_initial_box():
    cfg = RepPointsHeadConfig(feat_channels=8, num_convs=1, point_channels=8, norm=None, strides=(8, 16), salt="exp")
    head = _head(cfg)
    assert not hasattr(head, "init_out") and hasattr(head, "salt")
    feats = [torch.randn(1, 8, 8, 8), torch.randn(1, 8, 4, 4)]
    outs = head(feats)
    coarse = head.salt.points(head.cls_tower(feats[0]), head.reg_tower(feats[0]), head.coarse_scales[0])["coarse"]
    l, t, r, b = coarse.unbind(1)
    assert torch.allclose(outs["init"][0], torch.stack((-l, -t, r, b), 1))
    head.zero_grad()
    _train_terms(head)["loss_bbox_init"].backward()
    assert head.salt.conv_c.weight.grad.abs().sum() > 0


def test_predictions_decode_each_stage_from_the_location():
    head = _head()
    outs, _ = _outs_and_targets()
    outs["cls"] = [torch.full_like(c, -10.0) for c in outs["cls"]]
    outs["cls"][0][0, 1, 2, 2] = 5.0  # one confident location: (16, 16) on stride 8, class 1
    for boxes, stage in (("final", "refine"), ("coarse", "init")):
        det = head.predict(outs, [(64, 64)], TestConfig(boxes=boxes))[0]
        assert det["labels"].tolist() == [1] and det["scores"][0] == pytest.approx(torch.tensor(5.0).sigmoid())
        expected = torch.tensor([16.0, 16.0, 16.0, 16.0]) + outs[stage][0][0, :, 2, 2] * 8
        assert torch.allclose(det["boxes"][0], expected)


@pytest.mark.parametrize("name", ["reppoints", "salt_reppoints"])
def test_presets_train_and_predict(name):
    torch.manual_seed(0)
    net = build_detector(model_config(name, "smoke", K)).train()
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    terms = net(torch.rand(2, 3, 96, 128), targets)
    assert set(terms) == {"loss_bbox_init", "loss_cls", "loss_bbox_refine"}
    sum(terms.values()).backward()
    assert all(torch.isfinite(v) for v in terms.values())
    dets = net.eval().predict(torch.rand(2, 3, 96, 128), test=TestConfig(score_thr=0.0))
    assert len(dets) == 2 and dets[0]["boxes"].shape[1] == 4 and len(dets[0]["boxes"]) > 0
