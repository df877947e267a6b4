"""Hand-computed checks of the label assigners (max-IoU, FCOS, ATSS)."""

import math

import pytest
import torch

from replicate.models.assigners import (
    Assignment,
    atss_assign,
    fcos_assign,
    max_iou_assign,
    pad_targets,
)


def T(x, dtype=torch.float32):
    return torch.tensor(x, dtype=dtype)


# ----------------------------------------------------------------------------- max IoU
#
# Anchors (10x10 unless stated):
#   a0 [0,0,10,10]      a1 [5,0,15,10]     a2 [20,20,30,30]
#   a3 [100,100,110,110] a4 [0,0,20,20]    a5 [4,0,14,10]
# GTs of image 0:
#   G0 [0,0,10,10] label 3: a0 IoU 1; a1 50/150 = 1/3; a4 100/400 = 0.25; a5 60/140 = 0.428571
#   G1 [20,20,32,30] label 7: a2 100/120 = 0.833333 (a4 only touches it at a corner: 0)
#   G2 [100,100,116,116] label 1: a3 100/256 = 0.390625 (< neg_iou 0.4: rescued only by
#      the low-quality rule)
# Expected with pos 0.5 / neg 0.4: a0 -> G0, a1 neg, a2 -> G1, a3 -> G2 (low quality),
# a4 neg, a5 ignored (0.4 <= 0.4286 < 0.5).

ANCHORS = T([[0, 0, 10, 10], [5, 0, 15, 10], [20, 20, 30, 30], [100, 100, 110, 110], [0, 0, 20, 20], [4, 0, 14, 10]])
G_IMG0 = [[0, 0, 10, 10], [20, 20, 32, 30], [100, 100, 116, 116]]
L_IMG0 = [3, 7, 1]


def _single(boxes, labels):
    return T([boxes]).reshape(1, -1, 4), torch.tensor([labels], dtype=torch.long).reshape(1, -1), torch.ones(1, len(labels), dtype=torch.bool)


def test_max_iou_basic_and_low_quality():
    g, l, v = _single(G_IMG0, L_IMG0)
    a = max_iou_assign(ANCHORS, g, l, v)
    assert isinstance(a, Assignment)
    assert a.gt_index.tolist() == [[0, -1, 1, 2, -1, -2]]
    assert a.labels.tolist() == [[3, -1, 7, 1, -1, -1]]
    torch.testing.assert_close(a.max_iou, T([[1.0, 1 / 3, 100 / 120, 100 / 256, 0.25, 60 / 140]]))
    assert a.pos_mask.tolist() == [[True, False, True, True, False, False]]
    assert a.neg_mask.tolist() == [[False, True, False, False, True, False]]
    assert a.ignore_mask.tolist() == [[False, False, False, False, False, True]]
    assert int(a.num_pos) == 3

    # without the low-quality rule G2 is lost: a3 (0.390625 < 0.4) is negative
    a = max_iou_assign(ANCHORS, g, l, v, low_quality=False)
    assert a.gt_index.tolist() == [[0, -1, 1, -1, -1, -2]]
    # min_pos_iou above G2's best IoU also refuses the rescue
    a = max_iou_assign(ANCHORS, g, l, v, min_pos_iou=0.4)
    assert a.gt_index.tolist() == [[0, -1, 1, -1, -1, -2]]


def test_max_iou_low_quality_ties_all_assigned():
    # GT [0,0,20,10]; b0 [0,0,10,10] and b1 [10,0,20,10] both IoU 100/200 = 0.5;
    # b2 [0,0,5,10] IoU 50/200 = 0.25. With pos 0.7 / neg 0.3 b0, b1 would be ignored;
    # gt_max_assign_all makes both positive.
    anchors = T([[0, 0, 10, 10], [10, 0, 20, 10], [0, 0, 5, 10]])
    g, l, v = _single([[0, 0, 20, 10]], [4])
    a = max_iou_assign(anchors, g, l, v, pos_iou=0.7, neg_iou=0.3)
    assert a.gt_index.tolist() == [[0, 0, -1]]
    a = max_iou_assign(anchors, g, l, v, pos_iou=0.7, neg_iou=0.3, low_quality=False)
    assert a.gt_index.tolist() == [[-2, -2, -1]]


def test_max_iou_batch_padding_does_not_leak_and_empty_image():
    # image 0: the three GTs above; image 1: one GT [100,100,110,110] label 5 (a3 IoU 1),
    # padding rows hold a *copy of a0* to prove they are masked out; image 2: no GT.
    g = torch.zeros(3, 3, 4)
    g[0] = T(G_IMG0)
    g[1, 0] = T([100, 100, 110, 110])
    g[1, 1:] = T([0, 0, 10, 10])
    g[2, :] = T([0, 0, 10, 10])
    l = torch.tensor([L_IMG0, [5, 9, 9], [9, 9, 9]])
    v = torch.tensor([[True] * 3, [True, False, False], [False] * 3])
    a = max_iou_assign(ANCHORS, g, l, v)
    assert a.gt_index.tolist() == [[0, -1, 1, 2, -1, -2], [-1, -1, -1, 0, -1, -1], [-1] * 6]
    assert a.labels.tolist() == [[3, -1, 7, 1, -1, -1], [-1, -1, -1, 5, -1, -1], [-1] * 6]
    torch.testing.assert_close(a.max_iou[1], T([0, 0, 0, 1, 0, 0]))
    torch.testing.assert_close(a.max_iou[2], torch.zeros(6))
    assert int(a.num_pos) == 4


def test_max_iou_no_gt_at_all():
    a = max_iou_assign(ANCHORS, torch.zeros(2, 0, 4), torch.zeros(2, 0, dtype=torch.long), torch.zeros(2, 0, dtype=torch.bool))
    assert a.gt_index.tolist() == [[-1] * 6] * 2
    assert a.labels.tolist() == [[-1] * 6] * 2
    assert a.max_iou.abs().sum() == 0


def test_max_iou_crowd_ignores():
    # Only G0 present. Crowd [0,0,20,20] contains a0, a1, a4, a5 entirely (IoF 1) -> all
    # non-positives among them ignored; a0 stays positive. An *invalid* crowd row over a3
    # must not act. a2 [20,20,30,30] only touches the crowd (IoF 0) -> stays negative.
    g, l, v = _single([G_IMG0[0]], [3])
    ign = T([[[0, 0, 20, 20], [100, 100, 110, 110]]])
    ign_v = torch.tensor([[True, False]])
    a = max_iou_assign(ANCHORS, g, l, v, ignore_boxes=ign, ignore_valid=ign_v)
    assert a.gt_index.tolist() == [[0, -2, -1, -1, -2, -2]]
    # partial overlap: crowd [0,0,12,10] covers a1 [5,0,15,10] on 70/100 = 0.7 >= 0.5 and
    # a4 on 120/400 = 0.3 < 0.5
    a = max_iou_assign(ANCHORS, g, l, v, ignore_boxes=T([[[0, 0, 12, 10]]]), ignore_valid=torch.tensor([[True]]))
    assert a.gt_index.tolist() == [[0, -2, -1, -1, -1, -2]]


# --------------------------------------------------------------------------------- FCOS
#
# G0 [0,0,40,40] area 1600 label 1;  G1 [8,8,24,24] area 256 label 2.
# ranges: level 0 [-1,16], level 1 [16,inf].
#   p0 (16,16) level 0: G0 ltrb (16,16,24,24) max 24 > 16 rejected; G1 (8,8,8,8) max 8 ok -> G1
#   p1 (16,16) level 1: G0 max 24 ok; G1 max 8 < 16 rejected                  -> G0
#   p2 (12,12) level 1: G0 (12,12,28,28) max 28 ok; G1 (4,4,12,12) max 12 rejected -> G0
#   p3 (50,50) level 1: outside both                                          -> negative

FCOS_G = [[0, 0, 40, 40], [8, 8, 24, 24]]
FCOS_L = [1, 2]


def test_fcos_scale_ranges():
    pts = T([[16, 16], [16, 16], [12, 12], [50, 50]])
    strides = T([4, 8, 8, 8])
    level = torch.tensor([0, 1, 1, 1])
    g, l, v = _single(FCOS_G, FCOS_L)
    a = fcos_assign(pts, strides, level, g, l, v, scale_ranges=((-1, 16), (16, math.inf)), center_sampling=False)
    assert a.gt_index.tolist() == [[1, 0, 0, -1]]
    assert a.labels.tolist() == [[2, 1, 1, -1]]
    assert a.max_iou.abs().sum() == 0


def test_fcos_smallest_area_tie_break():
    # one unbounded level: (16,16) is inside both GTs -> the smaller G1 (index 1) wins;
    # (4,4) is inside G0 only -> G0. With two equal-area GTs the lower index wins.
    pts = T([[16, 16], [4, 4]])
    strides = T([8, 8])
    level = torch.tensor([0, 0])
    g, l, v = _single(FCOS_G, FCOS_L)
    a = fcos_assign(pts, strides, level, g, l, v, scale_ranges=((-1, math.inf),), center_sampling=False)
    assert a.gt_index.tolist() == [[1, 0]]
    g2, l2, v2 = _single([[0, 0, 20, 20], [10, 10, 30, 30]], [1, 2])  # both area 400
    a = fcos_assign(T([[15, 15]]), T([8]), torch.tensor([0]), g2, l2, v2, scale_ranges=((-1, math.inf),), center_sampling=False)
    assert a.gt_index.tolist() == [[0]]


def test_fcos_center_sampling():
    # G [0,0,40,40], stride 4, radius 1.5 -> half-side 6: centre region [14,14,26,26].
    #   (10,10) inside box, outside region -> negative only with centre sampling
    #   (20,20) inside region; (25,25) inside (25 < 26); (26,20) on the edge -> excluded
    # Small G' [60,0,68,8] centre (64,4): region [58,-2,70,10] clipped to the box
    # [60,0,68,8]; (69,4) is in the unclipped region but outside the box -> negative.
    gt = [[0, 0, 40, 40], [60, 0, 68, 8]]
    g, l, v = _single(gt, [1, 2])
    pts = T([[10, 10], [20, 20], [25, 25], [26, 20], [69, 4], [64, 4]])
    strides = torch.full((6,), 4.0)
    level = torch.zeros(6, dtype=torch.long)
    rng = ((-1, math.inf),)
    a = fcos_assign(pts, strides, level, g, l, v, scale_ranges=rng, center_sampling=True, center_radius=1.5)
    assert a.gt_index.tolist() == [[-1, 0, 0, -1, -1, 1]]
    a = fcos_assign(pts, strides, level, g, l, v, scale_ranges=rng, center_sampling=False)
    assert a.gt_index.tolist() == [[0, 0, 0, 0, -1, 1]]


def test_fcos_batch_padding_empty_and_crowd():
    # image 0: FCOS_G; image 1: only G1 [8,8,24,24], padding row is a copy of G0;
    # image 2: no GT but a crowd box [0,0,20,20] -> points inside it ignored, others negative.
    pts = T([[16, 16], [16, 16], [12, 12], [50, 50]])
    strides = T([4, 8, 8, 8])
    level = torch.tensor([0, 1, 1, 1])
    g = T([FCOS_G, [[8, 8, 24, 24], [0, 0, 40, 40]], [[0, 0, 40, 40], [0, 0, 40, 40]]])
    l = torch.tensor([FCOS_L, [2, 1], [1, 1]])
    v = torch.tensor([[True, True], [True, False], [False, False]])
    ign = torch.zeros(3, 1, 4)
    ign[2, 0] = T([0, 0, 20, 20])
    ign_v = torch.tensor([[False], [False], [True]])
    a = fcos_assign(pts, strides, level, g, l, v, scale_ranges=((-1, 16), (16, math.inf)), center_sampling=False,
                    ignore_boxes=ign, ignore_valid=ign_v)
    assert a.gt_index.tolist() == [[1, 0, 0, -1], [0, -1, -1, -1], [-2, -2, -2, -1]]
    assert a.labels.tolist() == [[2, 1, 1, -1], [2, -1, -1, -1], [-1, -1, -1, -1]]
    # a crowd box does not demote a positive: crowd over (16,16) in image 0
    a = fcos_assign(pts, strides, level, g[:1], l[:1], v[:1], scale_ranges=((-1, 16), (16, math.inf)),
                    center_sampling=False, ignore_boxes=T([[[10, 10, 60, 60]]]), ignore_valid=torch.tensor([[True]]))
    assert a.gt_index.tolist() == [[1, 0, 0, -2]]


# --------------------------------------------------------------------------------- ATSS
#
# G [0,0,10,10] (centre (5,5)). Level 0: a0 [0,0,10,10] IoU 1 (dist 0), a1 [0,0,10,7.5]
# IoU 75/100 = 0.75 (dist 1.25), a2 [0,0,5,5] IoU 0.25 (dist 3.54), f0 [40,40,50,50] far.
# Level 1: z0 [10,0,20,10], z1 [-10,0,0,10], z2 [0,10,10,20] (IoU 0, dist 10), f1 far.
# topk=3 per level -> candidates {a0,a1,a2,z0,z1,z2}, IoUs (1, 0.75, 0.25, 0, 0, 0):
#   mean = 2/6 = 1/3; squared deviations 4/9 + 25/144 + 1/144 + 3*(1/9) = 23/24
#   unbiased var = 23/24 / 5 = 23/120 -> std 0.437798 -> threshold 0.771131
#   (biased var 23/144 -> std 0.399653 -> threshold 0.732986 would also take a1)
# Only a0 (IoU 1) passes; a1 (0.75) is negative with the unbiased std.
# A single global top-3 would give candidates (1, .75, .25): mean 2/3, var 42/288,
# threshold 1.0485 -> nothing positive, so the per-level selection matters.

ATSS_ANCHORS = T([
    [0, 0, 10, 10], [0, 0, 10, 7.5], [0, 0, 5, 5], [40, 40, 50, 50],
    [10, 0, 20, 10], [-10, 0, 0, 10], [0, 10, 10, 20], [-50, -50, -40, -40],
])


def test_atss_mean_plus_std_threshold():
    g, l, v = _single([[0, 0, 10, 10]], [6])
    a = atss_assign(ATSS_ANCHORS, [4, 4], g, l, v, topk=3)
    assert a.gt_index.tolist() == [[0, -1, -1, -1, -1, -1, -1, -1]]
    assert a.labels.tolist() == [[6, -1, -1, -1, -1, -1, -1, -1]]
    torch.testing.assert_close(a.max_iou, T([[1, 0.75, 0.25, 0, 0, 0, 0, 0]]))


def test_atss_centre_must_be_strictly_inside():
    # G [0,0,10,10]; X [0,0,10,20] IoU 100/200 = 0.5, centre (5,10) on the GT's edge;
    # three IoU-0 neighbours at distance 10. topk=4: IoUs (.5,0,0,0), mean .125,
    # unbiased var (0.140625 + 3*0.015625)/3 = 0.0625 -> std .25 -> threshold .375.
    # X passes the IoU test but its centre is not strictly inside -> negative.
    anchors = T([[0, 0, 10, 20], [10, 0, 20, 10], [-10, 0, 0, 10], [0, -10, 10, 0]])
    g, l, v = _single([[0, 0, 10, 10]], [1])
    a = atss_assign(anchors, [4], g, l, v, topk=4)
    assert a.gt_index.tolist() == [[-1, -1, -1, -1]]
    torch.testing.assert_close(a.max_iou, T([[0.5, 0, 0, 0]]))


def test_atss_anchor_shared_by_two_gts_goes_to_highest_iou():
    # G0 [0,0,10,10.5], G1 [0,0,10,10]. Anchors X [0,0,10,10], P [0,0,5,5], Q [5,5,10,10],
    # R [10,0,20,10], far F; topk=4 selects X,P,Q,R for both GTs.
    # G1: IoUs (1, .25, .25, 0): mean .375, var (.390625 + 2*.015625 + .140625)/3 = .1875,
    #     std .4330 -> threshold .8080 -> X positive.
    # G0: IoUs (20/21, 5/21, 5/21, 0): mean 5/14, var (900/1764)/3 -> std .41239
    #     -> threshold .76953 -> X (0.95238) positive as well.
    # X is positive for both -> the higher IoU wins: G1 (index 1), max_iou 1.
    anchors = T([[0, 0, 10, 10], [0, 0, 5, 5], [5, 5, 10, 10], [10, 0, 20, 10], [50, 50, 60, 60]])
    g, l, v = _single([[0, 0, 10, 10.5], [0, 0, 10, 10]], [2, 8])
    a = atss_assign(anchors, [5], g, l, v, topk=4)
    assert a.gt_index.tolist() == [[1, -1, -1, -1, -1]]
    assert a.labels.tolist() == [[8, -1, -1, -1, -1]]
    assert a.max_iou[0, 0].item() == pytest.approx(1.0)
    # identical duplicate GTs: exact IoU tie -> lowest index
    g, l, v = _single([[0, 0, 10, 10], [0, 0, 10, 10]], [2, 8])
    a = atss_assign(anchors, [5], g, l, v, topk=4)
    assert a.gt_index.tolist() == [[0, -1, -1, -1, -1]]


def test_atss_batch_padding_empty_and_crowd():
    # image 0: the mean+std case; image 1: no GT (padding row copies G) with a crowd box
    # [-10,0,10,10] containing a0, a1, a2, z1 (IoF 1) -> those ignored.
    g = T([[[0, 0, 10, 10]], [[0, 0, 10, 10]]])
    l = torch.tensor([[6], [6]])
    v = torch.tensor([[True], [False]])
    ign = T([[[0, 0, 0, 0]], [[-10, 0, 10, 10]]])
    ign_v = torch.tensor([[False], [True]])
    a = atss_assign(ATSS_ANCHORS, [4, 4], g, l, v, topk=3, ignore_boxes=ign, ignore_valid=ign_v)
    assert a.gt_index.tolist() == [[0, -1, -1, -1, -1, -1, -1, -1], [-2, -2, -2, -1, -1, -2, -1, -1]]
    torch.testing.assert_close(a.max_iou[1], torch.zeros(8))
    a = atss_assign(ATSS_ANCHORS, [4, 4], torch.zeros(1, 0, 4), torch.zeros(1, 0, dtype=torch.long),
                    torch.zeros(1, 0, dtype=torch.bool), topk=3)
    assert a.gt_index.tolist() == [[-1] * 8]


# ------------------------------------------------------------------------ pad + parity


def test_pad_targets():
    targets = [
        {"boxes": T([[0, 0, 1, 1], [1, 1, 2, 2]]), "labels": torch.tensor([1, 2]), "ignore_boxes": T([[5, 5, 6, 6]])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
    ]
    g, l, v, ig, iv = pad_targets(targets)
    assert g.shape == (2, 2, 4) and ig.shape == (2, 1, 4)
    assert v.tolist() == [[True, True], [False, False]]
    assert l.tolist() == [[1, 2], [-1, -1]]
    assert iv.tolist() == [[True], [False]]
    torch.testing.assert_close(g[0], T([[0, 0, 1, 1], [1, 1, 2, 2]]))
    g, l, v, ig, iv = pad_targets([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}])
    assert g.shape == (1, 0, 4) and ig.shape == (1, 0, 4)


def _random_targets(gen, n_images=4, size=128.0):
    targets = []
    for i in range(n_images):
        n = [3, 0, 5, 1][i % 4]
        xy = torch.rand(n, 2, generator=gen) * size * 0.7
        wh = torch.rand(n, 2, generator=gen) * size * 0.5 + 4
        k = i % 2
        ixy = torch.rand(k, 2, generator=gen) * size * 0.7
        targets.append({
            "boxes": torch.cat([xy, xy + wh], 1),
            "labels": torch.randint(0, 5, (n,), generator=gen),
            "ignore_boxes": torch.cat([ixy, ixy + 30], 1),
        })
    return targets


def _grid_priors(size=128, strides=(8, 16)):
    pts, strs, lvl, anchors, npl = [], [], [], [], []
    for li, s in enumerate(strides):
        c = torch.arange(s / 2, size, s, dtype=torch.float32)
        yy, xx = torch.meshgrid(c, c, indexing="ij")
        p = torch.stack([xx.reshape(-1), yy.reshape(-1)], 1)
        pts.append(p)
        strs.append(torch.full((len(p),), float(s)))
        lvl.append(torch.full((len(p),), li, dtype=torch.long))
        half = 2 * s
        anchors.append(torch.cat([p - half, p + half], 1))
        npl.append(len(p))
    return torch.cat(pts), torch.cat(strs), torch.cat(lvl), torch.cat(anchors), npl


def _check_parity(fn, targets):
    g, l, v, ig, iv = pad_targets(targets)
    full = fn(g, l, v, ig, iv)
    for i, t in enumerate(targets):
        one = fn(*pad_targets([t]))
        assert torch.equal(full.gt_index[i], one.gt_index[0])
        assert torch.equal(full.labels[i], one.labels[0])
        torch.testing.assert_close(full.max_iou[i], one.max_iou[0])
    return full


def test_batched_equals_per_image():
    gen = torch.Generator().manual_seed(0)
    targets = _random_targets(gen)
    pts, strs, lvl, anchors, npl = _grid_priors()
    a = _check_parity(lambda g, l, v, ig, iv: max_iou_assign(anchors, g, l, v, ignore_boxes=ig, ignore_valid=iv), targets)
    assert int(a.num_pos) > 0 and a.ignore_mask.any()
    a = _check_parity(
        lambda g, l, v, ig, iv: fcos_assign(pts, strs, lvl, g, l, v, scale_ranges=((-1, 32), (32, math.inf)),
                                            ignore_boxes=ig, ignore_valid=iv), targets)
    assert int(a.num_pos) > 0
    a = _check_parity(lambda g, l, v, ig, iv: atss_assign(anchors, npl, g, l, v, ignore_boxes=ig, ignore_valid=iv), targets)
    assert int(a.num_pos) > 0
    assert (a.gt_index[1] < 0).all()  # image without GT: nothing positive


def test_matched_boxes_gathers_each_priors_ground_truth():
    from replicate.models.assigners import Assignment

    gt = torch.tensor([[[0.0, 0.0, 1.0, 1.0], [2.0, 2.0, 3.0, 3.0]]])
    a = Assignment(gt_index=torch.tensor([[1, -1, 0]]), labels=torch.tensor([[4, -1, 2]]), max_iou=torch.zeros(1, 3))
    assert a.matched_boxes(gt)[0, 0].tolist() == [2.0, 2.0, 3.0, 3.0]
    assert a.matched_boxes(gt)[0, 2].tolist() == [0.0, 0.0, 1.0, 1.0]
    assert a.matched_boxes(torch.zeros(1, 0, 4)).shape == (1, 3, 4)  # no ground truth at all


# ------------------------------------------------------------------------------------ PAA

def _paa_case():
    """Image 0: GT0 (0, 0, 10, 10), GT1 (100, 100, 110, 110), GT2 (200, 200, 210, 210); image 1: no GT.
    Anchors (one level): a0 is GT0, a1/a3 shifted by 1 px (IoU 0.82), a2 by 2 px (0.67), a4 (5, 5, 15, 15)
    (IoU 25/175 = 0.14), a5 far from all (IoU 0: never scored), a6 is GT1, a7 shifted by 1 px, a8 is GT2."""
    from replicate.models.assigners import pad_targets

    anchors = torch.tensor([[0.0, 0, 10, 10], [1, 0, 11, 10], [2, 0, 12, 10], [0, 1, 10, 11], [5, 5, 15, 15],
                            [50, 50, 60, 60], [100, 100, 110, 110], [101, 100, 111, 110], [200, 200, 210, 210]])
    targets = [{"boxes": torch.tensor([[0.0, 0, 10, 10], [100, 100, 110, 110], [200, 200, 210, 210]]),
                "labels": torch.tensor([3, 1, 2])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)}]
    gt_boxes, gt_labels, gt_valid, _, _ = pad_targets(targets)
    costs = torch.tensor([0.10, 0.12, 0.11, 5.0, 5.2, 9.9, 1.0, 3.0, 0.5])
    asked = []

    def pair_cost(img, anchor, gt):
        asked.extend(zip(img.tolist(), anchor.tolist(), gt.tolist()))
        return costs[anchor]

    return anchors, gt_boxes, gt_labels, gt_valid, pair_cost, asked


def test_paa_assign_by_hand():
    """Pairs scored: GT0 with a0-a4, GT1 with a6-a7, GT2 with a8 (pre-assignment at IoU >= 0.1; a5 is scored for
    no one). GT0's candidate costs 0.10, 0.12, 0.11, 5.0, 5.2 split into a low component {0.10, 0.11, 0.12} whose
    most likely member is its mean, 0.11: positives are the low members up to it, a0 and a2 (PAA's truncation),
    not a1. GT1's two candidates 1.0 and 3.0 start one component each: a6. GT2 has a single candidate: none."""
    from replicate.models.assigners import paa_assign

    anchors, gt_boxes, gt_labels, gt_valid, pair_cost, asked = _paa_case()
    a = paa_assign(anchors, [9], gt_boxes, gt_labels, gt_valid, pair_cost)
    assert sorted(asked) == [(0, 0, 0), (0, 1, 0), (0, 2, 0), (0, 3, 0), (0, 4, 0), (0, 6, 1), (0, 7, 1), (0, 8, 2)]
    assert a.gt_index[0].tolist() == [0, -1, 0, -1, -1, -1, 1, -1, -1]
    assert a.gt_index[1].tolist() == [-1] * 9
    assert a.labels[0].tolist() == [3, -1, 3, -1, -1, -1, 1, -1, -1]
    assert a.max_iou[0, 2].item() == pytest.approx(8 / 12) and a.max_iou[0, 4].item() == pytest.approx(25 / 175)
    assert a.max_iou[0, 5].item() == 0.0


def test_paa_topk_per_level_and_levels():
    """With topk=2, GT0's candidates are its two cheapest anchors, a0 (0.10) and a2 (0.11): one component each,
    a0 positive. The top-k is per level: with topk=1 on one level GT0 has a single candidate (a0) and no
    positive; split into two levels (a0-a3 | a4-a8) it has a0 and a4 (5.2), and a0 is positive."""
    from replicate.models.assigners import paa_assign

    anchors, gt_boxes, gt_labels, gt_valid, pair_cost, _ = _paa_case()
    a = paa_assign(anchors, [9], gt_boxes, gt_labels, gt_valid, pair_cost, topk=2)
    assert (a.gt_index[0] == 0).nonzero().flatten().tolist() == [0]
    one = paa_assign(anchors, [9], gt_boxes, gt_labels, gt_valid, pair_cost, topk=1)
    assert (one.gt_index[0] >= 0).sum() == 0  # every GT has a single candidate
    two = paa_assign(anchors, [4, 5], gt_boxes, gt_labels, gt_valid, pair_cost, topk=1)
    assert (two.gt_index[0] == 0).nonzero().flatten().tolist() == [0]
    assert (two.gt_index[0] >= 1).sum() == 0  # GT1 and GT2 own anchors of the second level only


def test_paa_gives_each_gt_its_best_anchor_even_below_the_pool_iou():
    """A ground truth whose best anchor overlaps it by less than 0.1 still scores that anchor (the code's
    low-quality match); with no second candidate it gets no positive."""
    from replicate.models.assigners import paa_assign

    anchors = torch.tensor([[0.0, 0, 100, 100], [300, 300, 310, 310]])
    gt_boxes = torch.tensor([[[0.0, 0, 20, 20]]])
    asked = []

    def pair_cost(img, anchor, gt):
        asked.extend(anchor.tolist())
        return torch.ones(len(anchor))

    a = paa_assign(anchors, [2], gt_boxes, torch.tensor([[0]]), torch.tensor([[True]]), pair_cost)
    assert asked == [0] and a.gt_index.tolist() == [[-1, -1]]
