"""MOD: RFA towers, the APS batch assignment and the heads' assignment costs.

Truth: torchvision's ``sigmoid_focal_loss``, ``generalized_box_iou_loss`` and ``deform_conv2d``/``conv2d``
as oracles, per-pair loops written here, and small hand-built cases.
"""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F
from torchvision.ops import generalized_box_iou_loss
from torchvision.ops import sigmoid_focal_loss as tv_focal

from replicate.errors import ReplicateError
from replicate.models.aps import APSConfig, aps_assign, aps_levels, aps_select
from replicate.models.dcn import ModulatedDeformConv2d
from replicate.models.detector import build_detector
from replicate.models.detectors.mod import per_gt_gap_and_sum, rfa_indices
from replicate.models.losses import focal_pair_cost
from replicate.models.zoo import apply_overrides, model_config

TARGETS = [
    {"boxes": torch.tensor([[10.0, 10.0, 60.0, 80.0], [30.0, 40.0, 150.0, 120.0]]), "labels": torch.tensor([0, 2])},
    {"boxes": torch.tensor([[5.0, 5.0, 40.0, 30.0]]), "labels": torch.tensor([1])},
]


def _net(name: str, **overrides):
    torch.manual_seed(0)
    return build_detector(apply_overrides(model_config(name, "smoke", num_classes=3), overrides))


# ------------------------------------------------------------------------------ RFA


@pytest.mark.parametrize("position, expected", [("none", ()), ("first", (0,)), ("last", (3,))])
def test_rfa_indices(position, expected):
    assert rfa_indices(position, 4) == expected


def test_rfa_rejects_unknown_position():
    with pytest.raises(ReplicateError, match="rfa must be one of"):
        rfa_indices("middle", 4)


@pytest.mark.parametrize("position", ["first", "last"])
def test_rfa_places_one_deformable_conv_per_tower_and_it_learns(position):
    net = _net("mod", **{"head.rfa": position})
    head = net.head
    for tower in (head.cls_tower, head.reg_tower):
        dcn = [i for i, m in enumerate(tower) if isinstance(m, ModulatedDeformConv2d)]
        assert len(dcn) == 1
        assert dcn[0] == (0 if position == "first" else len(tower) - 3)  # conv, GN, ReLU per layer
    imgs = torch.randn(2, 3, 96, 128)
    outs = head(net.features(imgs))
    assert [tuple(m.shape) for m in outs["cls"]] == [(2, 3, 12, 16), (2, 3, 6, 8), (2, 3, 3, 4), (2, 3, 2, 2), (2, 3, 1, 1)]
    losses = net(imgs, TARGETS)
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    for tower in (head.cls_tower, head.reg_tower):
        offset_conv = next(m for m in tower if isinstance(m, ModulatedDeformConv2d)).conv_offset
        assert offset_conv.weight.grad is not None and offset_conv.weight.grad.abs().sum() > 0


def test_dcn_v1_with_zero_offsets_is_a_plain_conv():
    torch.manual_seed(1)
    conv = ModulatedDeformConv2d(4, 5, 3, 1, 1, modulated=False)
    assert conv.conv_offset.out_channels == 18
    x = torch.randn(2, 4, 7, 9)
    torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, padding=1), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------ costs


def test_focal_pair_cost_matches_torchvision_summed_over_classes():
    gen = torch.Generator().manual_seed(0)
    cls = torch.randn(2, 7, 5, generator=gen) * 3
    img = torch.tensor([0, 0, 1, 1, 1])
    prior = torch.tensor([0, 6, 2, 2, 5])
    label = torch.tensor([4, 0, 1, 3, 3])
    got = focal_pair_cost(cls, img, prior, label, 0.25, 2.0)
    for k in range(5):
        onehot = F.one_hot(label[k], 5).float()
        expected = tv_focal(cls[img[k], prior[k]], onehot, alpha=0.25, gamma=2.0, reduction="sum")
        torch.testing.assert_close(got[k], expected, rtol=1e-5, atol=1e-6)


def test_per_gt_gap_and_sum_hand_case():
    cls = torch.tensor([0.2, 0.4, 1.0])
    reg = torch.tensor([0.5, 0.7, 0.4])
    group = torch.tensor([3, 3, 8])  # GT 3: means 0.3 / 0.6; GT 8: 1.0 / 0.4
    gap, total = per_gt_gap_and_sum(cls, reg, group)
    torch.testing.assert_close(gap, torch.tensor((0.3 + 0.6) / 2))
    torch.testing.assert_close(total, torch.tensor((0.9 + 1.4) / 2))
    zero_gap, zero_sum = per_gt_gap_and_sum(cls[:0], reg[:0], group[:0])
    assert float(zero_gap) == 0.0 and float(zero_sum) == 0.0


# ------------------------------------------------------------------------------ aps_assign


def _two_gt_problem():
    """One image, 2 GTs, 6 points on 2 levels; GT 0 (small) and GT 1 (large) both like point 2."""
    level = torch.tensor([0, 0, 0, 1, 1, 1])
    cls = torch.tensor([[[0.1, 5.0, 0.1, 5.0, 5.0, 5.0], [5.0, 5.0, 0.1, 0.1, 5.0, 5.0]]])
    reg = cls.clone()
    candidate = torch.ones(1, 2, 6, dtype=torch.bool)
    boxes = torch.tensor([[[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 50.0, 50.0]]])
    return cls, reg, candidate, level, boxes, torch.ones(1, 2, dtype=torch.bool)


def test_aps_assign_min_area_gives_shared_points_to_the_smaller_gt():
    cls, reg, cand, level, boxes, valid = _two_gt_problem()
    cfg = APSConfig(topk=3, score="code")
    rows = aps_select(cls[0], reg[0], cand[0], level, 2, 3, 2, "code")
    assert rows[0].nonzero()[:, 0].tolist() == [0, 2] and rows[1].nonzero()[:, 0].tolist() == [2, 3]
    gt_index = aps_assign(cls, reg, cand, level, 2, boxes, valid, cfg)
    assert gt_index[0].tolist() == [0, -1, 0, 1, -1, -1]
    dropped = aps_assign(cls, reg, cand, level, 2, boxes, valid, APSConfig(topk=3, score="code", conflict="drop_gt"))
    assert dropped[0].tolist() == [0, -1, 0, -1, -1, -1]


def test_aps_assign_never_assigns_padding_gts():
    cls, reg, cand, level, boxes, valid = _two_gt_problem()
    valid[0, 0] = False
    gt_index = aps_assign(cls, reg, cand, level, 2, boxes, valid, APSConfig(topk=3, num_levels_kept=1, score="code"))
    assert set(gt_index[0].tolist()) <= {-1, 1}


def test_aps_assign_center_rule_takes_the_kept_levels_centre_points():
    cls, reg, cand, level, boxes, valid = _two_gt_problem()
    cls[0, 1, 4] = reg[0, 1, 4] = 0.1  # GT 1 now prefers level 1
    center = torch.tensor([[[True, True, False, False, False, True], [False, False, False, True, True, False]]])
    cfg = APSConfig(topk=3, num_levels_kept=1, spatial="center")
    levels = aps_levels(cls[0], reg[0], cand[0], level, 2, 3, 1)
    assert levels.tolist() == [[True, False], [False, True]]
    gt_index = aps_assign(cls, reg, cand, level, 2, boxes, valid, cfg, center=center)
    assert gt_index[0].tolist() == [0, 0, -1, 1, 1, -1]
    with pytest.raises(ReplicateError, match="center mask"):
        aps_assign(cls, reg, cand, level, 2, boxes, valid, cfg)


def test_aps_assign_criterion_picks_the_level_by_that_task_alone():
    level = torch.tensor([0, 0, 1, 1])
    cls = torch.tensor([[[0.1, 0.1, 1.0, 1.0]]])  # cls prefers level 0
    reg = torch.tensor([[[2.0, 2.0, 0.2, 0.2]]])  # reg (and the sum) prefer level 1
    cand = torch.ones(1, 1, 4, dtype=torch.bool)
    center = cand.clone()
    boxes = torch.tensor([[[0.0, 0.0, 9.0, 9.0]]])
    valid = torch.ones(1, 1, dtype=torch.bool)
    for criterion, expected in (("cls", [0, 0, -1, -1]), ("reg", [-1, -1, 0, 0]), ("comb", [-1, -1, 0, 0])):
        cfg = APSConfig(topk=2, num_levels_kept=1, spatial="center", criterion=criterion)
        assert aps_assign(cls, reg, cand, level, 2, boxes, valid, cfg, center=center)[0].tolist() == expected


def test_aps_assign_range_rule_restricts_candidates():
    cls, reg, cand, level, boxes, valid = _two_gt_problem()
    in_range = torch.zeros(1, 2, 6, dtype=torch.bool)
    in_range[0, :, 3:] = True  # only level 1 allowed
    gt_index = aps_assign(cls, reg, cand, level, 2, boxes, valid, APSConfig(topk=3, scale="range", score="code"),
                          in_range=in_range)
    assert (gt_index[0, :3] == -1).all() and (gt_index[0, 3:] >= 0).any()


def test_aps_config_rejects_unknown_values():
    with pytest.raises(ReplicateError, match="criterion"):
        APSConfig(criterion="iou").check()
    with pytest.raises(ReplicateError, match="full APS only"):
        _net("retinanet_mod", **{"head.aps.spatial": "center"})
    with pytest.raises(ReplicateError, match="assigner"):
        _net("mod", **{"head.assigner": "atss"})


# ------------------------------------------------------------------------------ heads


def _pair_oracle_fcos(head, outs, targets):
    """Per-pair costs with torchvision's focal and GIoU losses, looping over (image, GT, point)."""
    from replicate.models._utils import flatten_levels

    pts, _, level = head.level_points(outs["cls"])
    points = torch.cat(pts)
    cls = flatten_levels(outs["cls"], head.num_classes)
    dist = flatten_levels(outs["dist"], 4)
    rows = []
    for b, t in enumerate(targets):
        for box, label in zip(t["boxes"], t["labels"]):
            inside = (points[:, 0] > box[0]) & (points[:, 1] > box[1]) & (points[:, 0] < box[2]) & (points[:, 1] < box[3])
            cost_cls = torch.full((len(points),), float("inf"))
            cost_reg = torch.full((len(points),), float("inf"))
            for p in inside.nonzero()[:, 0].tolist():
                onehot = F.one_hot(label, head.num_classes).float()
                cost_cls[p] = tv_focal(cls[b, p], onehot, alpha=0.25, gamma=2.0, reduction="sum")
                x, y = points[p]
                l, tp, r, bt = dist[b, p]
                pred = torch.stack([x - l, y - tp, x + r, y + bt])
                cost_reg[p] = generalized_box_iou_loss(pred[None], box[None], reduction="sum")
            rows.append((b, cost_cls, cost_reg, inside))
    return rows, level


@pytest.mark.parametrize("score", ["paper", "code"])
def test_mod_head_assignment_equals_aps_on_oracle_costs(score):
    net = _net("mod", **{"head.aps.score": score})
    net.eval()
    with torch.no_grad():
        outs = net.head(net.features(torch.randn(2, 3, 128, 160, generator=torch.Generator().manual_seed(2))))
        a, matched = net.head.assign(outs, TARGETS)
        rows, level = _pair_oracle_fcos(net.head, outs, TARGETS)
    gt_rows = [0, 1, 0]
    for (b, cost_cls, cost_reg, inside), g in zip(rows, gt_rows):
        selected = aps_select(cost_cls[None], cost_reg[None], inside[None], level, 5, score=score)[0]
        mine = a.gt_index[b] == g
        # conflicts (min area) can only remove points of the larger GT of image 0
        if (b, g) == (0, 1):
            assert not bool((mine & ~selected).any())
        else:
            assert torch.equal(mine, selected)
        assert int(mine.sum()) >= 1 and len(level[mine].unique()) <= 2
    for b, p in a.pos_mask.nonzero().tolist():
        assert torch.equal(matched[b, p], TARGETS[b]["boxes"][a.gt_index[b, p]])


def test_retinanet_mod_makes_one_anchor_per_positive_point_the_cheapest():
    net = _net("retinanet_mod")
    head = net.head
    A = head.num_anchors
    with torch.no_grad():
        outs = head(net.features(torch.randn(2, 3, 128, 160, generator=torch.Generator().manual_seed(3))))
        a, _ = head.assign(outs, TARGETS)
    pos = a.pos_mask.view(2, -1, A)
    assert int(pos.sum()) > 0 and int(pos.sum(dim=2).max()) == 1
    point_has_pos = pos.any(dim=2, keepdim=True).expand_as(pos)
    assert bool(a.ignore_mask.view(2, -1, A)[point_has_pos & ~pos].all())  # the point's other anchors
    from replicate.models._utils import flatten_levels

    anchors = torch.cat(head.anchors(outs["cls"]))
    cls = flatten_levels(outs["cls"], 3)
    reg = flatten_levels(outs["reg"], 4)
    b, anchor = a.pos_mask.nonzero(as_tuple=True)
    for bi, ai in zip(b.tolist(), anchor.tolist()):
        g = int(a.gt_index[bi, ai])
        box, label = TARGETS[bi]["boxes"][g], TARGETS[bi]["labels"][g]
        costs = []
        for k in range(A):
            idx = (ai // A) * A + k
            focal = tv_focal(cls[bi, idx], F.one_hot(label, 3).float(), alpha=0.25, gamma=2.0, reduction="sum")
            target = head.coder.encode(anchors[idx][None], box[None])[0]
            box_cost = F.smooth_l1_loss(reg[bi, idx], target, beta=0.11, reduction="sum")
            costs.append(float(focal + box_cost))
        assert ai % A == min(range(A), key=costs.__getitem__)


def test_foveabox_mod_positives_lie_inside_their_boxes():
    net = _net("foveabox_mod")
    with torch.no_grad():
        outs = net.head(net.features(torch.randn(2, 3, 128, 160)))
        a, matched = net.head.assign(outs, TARGETS)
    pts, _ = net.head.cells(outs["cls"])
    points = torch.cat(pts)
    b, p = a.pos_mask.nonzero(as_tuple=True)
    box = matched[b, p]
    assert len(b) > 0
    assert bool(((points[p, 0] > box[:, 0]) & (points[p, 0] < box[:, 2]) & (points[p, 1] > box[:, 1])
                 & (points[p, 1] < box[:, 3])).all())
    assert set(a.gt_index[1][a.gt_index[1] >= 0].tolist()) == {0}


def test_mod_head_logs_stats_that_are_not_losses():
    net = _net("mod")
    losses = net(torch.randn(2, 3, 96, 128), TARGETS)
    assert {"stat_loss_gap", "stat_loss_sum"} <= set(losses)
    assert not losses["stat_loss_gap"].requires_grad
    assert float(losses["stat_loss_sum"]) >= float(losses["stat_loss_gap"]) >= 0


def test_base_assigner_keeps_fcos_assignment():
    net = _net("mod", **{"head.assigner": "base", "head.rfa": "none"})
    ref = _net("fcos_giou")
    with torch.no_grad():
        outs = net.head(net.features(torch.randn(1, 3, 96, 128)))
        a, _ = net.head.assign(outs, TARGETS[:1])
        b, _ = ref.head.assign(outs, TARGETS[:1])
    assert torch.equal(a.gt_index, b.gt_index)


@pytest.mark.parametrize("stride, dilation, modulated", [(1, 1, True), (2, 1, True), (1, 2, False), (2, 1, False)])
def test_sampled_deform_conv_matches_torchvision_values_and_gradients(stride, dilation, modulated):
    from torchvision.ops import deform_conv2d

    from replicate.models.dcn import sampled_deform_conv2d

    gen = torch.Generator().manual_seed(stride * 10 + dilation)
    x = torch.randn(2, 5, 11, 9, generator=gen, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 5, 3, 3, generator=gen, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    out_h, out_w = (11 - 1) // stride + 1, (9 - 1) // stride + 1  # 3x3 kernel, padding = dilation
    offset = (torch.randn(2, 18, out_h, out_w, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    mask = torch.rand(2, 9, out_h, out_w, generator=gen, dtype=torch.float64).requires_grad_() if modulated else None
    inputs = [x, weight, bias, offset] + ([mask] if modulated else [])
    ours = sampled_deform_conv2d(x, offset, weight, bias, stride, dilation, dilation, mask)
    theirs = deform_conv2d(x, offset, weight, bias, stride=stride, padding=dilation, dilation=dilation, mask=mask)
    torch.testing.assert_close(ours, theirs)
    grads_ours = torch.autograd.grad(ours.square().sum(), inputs)
    grads_theirs = torch.autograd.grad(theirs.square().sum(), inputs)
    for a, b in zip(grads_ours, grads_theirs):
        torch.testing.assert_close(a, b)


def test_table7_trains_2x_multiscale_on_coco_and_at_the_proxys_own_schedule():
    from replicate.experiments.sweep import load_papers, requests_for
    from replicate.profiles import PROXY_SCHEDULE, schedule_for

    spec = load_papers()["mod"]["table7"]
    coco = {r.row_label: r.train for r in requests_for(spec, "coco", 1)}
    proxy = {r.row_label: r.train for r in requests_for(spec, "proxy", 1)}
    assert coco["MOD (R101)"].iters == 2 * schedule_for("coco").iters and coco["MOD (R101)"].scale == "ms-480-960"
    assert {(t.iters, tuple(t.steps)) for t in proxy.values()} == {(PROXY_SCHEDULE.iters, tuple(PROXY_SCHEDULE.steps))}
    assert proxy["MOD (R101)"].scale == PROXY_SCHEDULE.scale
