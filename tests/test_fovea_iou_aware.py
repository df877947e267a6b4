"""FoveaBox and IoU-aware RetinaNet: assignment, targets, IoU branch, score fusion, smoke training.

Truth comes from hand counts and from independent re-implementations written here with plain loops
(the mmdetection painting order for FoveaBox; torchvision's ``box_iou`` for the IoU targets).
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torchvision.ops import box_iou, sigmoid_focal_loss

from replicate.models.assigners import IGNORED, NEGATIVE, pad_targets
from replicate.models.backbone import BackboneConfig
from replicate.models.detector import Detector, DetectorConfig
from replicate.models.detectors.foveabox import (MMDET_BASE_EDGES, FoveaBoxHeadConfig, fovea_assign, fovea_decode,
                                                 fovea_encode, foveabox)
from replicate.models.detectors.iou_aware_retinanet import IoUAwareRetinaNetHeadConfig, iou_aware_retinanet
from replicate.models._utils import flatten_levels

STRIDES = (8, 16, 32, 64, 128)


pytestmark = pytest.mark.usefixtures("one_thread")

SIZES_128 = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]  # a 128x128 input
OFFSETS_128 = [0, 256, 320, 336, 340, 341]


def _smoke(cfg: DetectorConfig, num_classes: int, width: int = 32, convs: int = 2) -> DetectorConfig:
    """The smoke-profile scaling of replicate.models.zoo.model_config, applied to an unregistered preset."""
    return replace(cfg, num_classes=num_classes, backbone=BackboneConfig(name="narrow", norm="bn", frozen_stages=-1),
                   neck=replace(cfg.neck, out_channels=width), head=replace(cfg.head, feat_channels=width, num_convs=convs))


def _assign(boxes, labels=None, sizes=SIZES_128, ignore=None, **kw):
    t = {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4)}
    t["labels"] = torch.tensor(labels if labels is not None else [0] * len(t["boxes"]), dtype=torch.long)
    if ignore is not None:
        t["ignore_boxes"] = torch.tensor(ignore, dtype=torch.float32).reshape(-1, 4)
    gb, gl, gv, ib, iv = pad_targets([t])
    return fovea_assign(sizes, STRIDES, gb, gl, gv, ignore_boxes=ib, ignore_valid=iv, **kw).gt_index[0]


def _cells(gt_index: torch.Tensor, level: int, width: int, value: int) -> set[tuple[int, int]]:
    """(x, y) cells of one level (row-major, ``width`` columns) whose code is ``value``."""
    lvl = gt_index[OFFSETS_128[level]:OFFSETS_128[level + 1]]
    return {(int(i) % width, int(i) // width) for i in (lvl == value).nonzero().flatten()}


# ----------------------------------------------------------------------------- FoveaBox


def test_fovea_box_on_two_overlapping_levels_with_hand_counted_cells():
    # 48x48 box: sqrt area 48 lies in (1, 64) and (32, 128) -> P3 and P4, nowhere else.
    # Fovea (sigma 0.4): centre 40, half side 0.4 * 24 = 9.6 -> [30.4, 49.6] in pixels.
    # P3 centres 8(i + .5) = 28, 36, 44, 52 -> i in {4, 5}; P4 centres 16(i + .5) = 24, 40, 56 -> i = 2.
    idx = _assign([[16, 16, 64, 64]])
    assert _cells(idx, 0, 16, 0) == {(4, 4), (5, 4), (4, 5), (5, 5)}
    assert _cells(idx, 1, 8, 0) == {(2, 2)}
    assert int((idx == 0).sum()) == 5
    assert int((idx == NEGATIVE).sum()) == 341 - 5


def test_fovea_smaller_box_wins_overlaps_regardless_of_order():
    big, small = [0, 0, 120, 120], [40, 40, 88, 88]  # sqrt areas 120 (P4, P5) and 48 (P3, P4)
    for order in ([big, small], [small, big]):
        idx = _assign(order)
        b, s = order.index(big), order.index(small)
        # P4: big's fovea [36, 84] -> cells 2..4; small's [54.4, 73.6] -> cells 3..4, which it takes.
        assert _cells(idx, 1, 8, s) == {(x, y) for x in (3, 4) for y in (3, 4)}
        assert _cells(idx, 1, 8, b) == {(x, y) for x in (2, 3, 4) for y in (2, 3, 4)} - _cells(idx, 1, 8, s)
        # P5: only big (centres 16, 48, 80, 112; fovea [36, 84] -> cells 1, 2).
        assert _cells(idx, 2, 4, b) == {(x, y) for x in (1, 2) for y in (1, 2)}


def _reference_fovea(boxes: torch.Tensor, sizes, sigma=0.4, ranges=((1, 64), (32, 128), (64, 256), (128, 512), (256, 2048))):
    """mmdetection's painting, with loops: per level, boxes in decreasing area paint their fovea cells."""
    out = []
    sq = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])).sqrt()
    for (h, w), s, (lo, hi) in zip(sizes, STRIDES, ranges):
        lab = torch.full((h, w), -1, dtype=torch.long)
        hits = [int(i) for i in range(len(boxes)) if lo <= float(sq[i]) <= hi]
        hits.sort(key=lambda i: -float(sq[i]))
        for i in hits:
            x1, y1, x2, y2 = (float(v) / s for v in boxes[i])
            hw, hh = (x2 - x1) / 2, (y2 - y1) / 2
            l = min(max(math.ceil(x1 + (1 - sigma) * hw - 0.5), 0), w - 1)
            r = min(max(math.floor(x1 + (1 + sigma) * hw - 0.5), 0), w - 1)
            t = min(max(math.ceil(y1 + (1 - sigma) * hh - 0.5), 0), h - 1)
            b = min(max(math.floor(y1 + (1 + sigma) * hh - 0.5), 0), h - 1)
            lab[t:b + 1, l:r + 1] = i
        out.append(lab.flatten())
    return torch.cat(out)


def test_fovea_assign_matches_looped_reference_on_random_batch():
    g = torch.Generator().manual_seed(3)
    sizes = [(12, 20), (6, 10), (3, 5), (2, 3), (1, 2)]  # a 96x160 input
    targets = []
    for n in (7, 0, 12):
        xy = torch.rand(n, 2, generator=g) * torch.tensor([150.0, 90.0])
        wh = torch.rand(n, 2, generator=g) * 100 + 4
        boxes = torch.cat([xy, xy + wh], 1)
        boxes[:, 2::2] = boxes[:, 2::2].clamp(max=160.0)
        boxes[:, 3::2] = boxes[:, 3::2].clamp(max=96.0)
        targets.append({"boxes": boxes, "labels": torch.randint(0, 5, (n,), generator=g)})
    gb, gl, gv, ib, iv = pad_targets(targets)
    a = fovea_assign(sizes, STRIDES, gb, gl, gv)
    for i, t in enumerate(targets):
        ref = _reference_fovea(t["boxes"], sizes)
        # exact area ties are measure-zero with random boxes, so the winners agree everywhere
        assert torch.equal(a.gt_index[i], ref), i
        lab = torch.where(ref >= 0, t["labels"][ref.clamp(min=0)] if len(t["labels"]) else ref, torch.full_like(ref, -1))
        assert torch.equal(a.labels[i], lab)
    assert int(a.num_pos) > 20


def test_fovea_crowd_and_negative_band_become_ignored():
    # crowd [64, 64, 128, 128] on an image whose only box is [16, 16, 64, 64]
    idx = _assign([[16, 16, 64, 64]], ignore=[[64, 64, 128, 128]])
    assert _cells(idx, 0, 16, 0) == {(4, 4), (5, 4), (4, 5), (5, 5)}  # positives unchanged
    # P3 cell centres strictly inside the crowd: 8(i + .5) in (64, 128) -> i = 8..15
    assert _cells(idx, 0, 16, IGNORED) == {(x, y) for x in range(8, 16) for y in range(8, 16)}
    # a crowd covering the positives leaves them positive
    idx2 = _assign([[16, 16, 64, 64]], ignore=[[0, 0, 128, 128]])
    assert int((idx2 == 0).sum()) == 5 and int((idx2 == NEGATIVE).sum()) == 0
    # arXiv v1's band: neg_sigma 0.8 gives [40 - 19.2, 40 + 19.2] = [20.8, 59.2]; P3 centres
    # 20, 28, ..., 52, 60 -> cells 3..6, minus the positives
    idx3 = _assign([[16, 16, 64, 64]], neg_sigma=0.8)
    band = {(x, y) for x in range(3, 7) for y in range(3, 7)} - {(4, 4), (5, 4), (4, 5), (5, 5)}
    assert _cells(idx3, 0, 16, IGNORED) == band


def test_fovea_box_targets_by_hand_and_round_trip():
    pts = torch.tensor([[36.0, 36.0], [40.0, 40.0]])
    gt = torch.tensor([[16.0, 16.0, 64.0, 64.0]] * 2)
    z = torch.tensor([32.0, 64.0])
    t = fovea_encode(pts, z, gt)
    want = torch.tensor([[math.log(20 / 32), math.log(20 / 32), math.log(28 / 32), math.log(28 / 32)],
                         [math.log(24 / 64)] * 4])
    assert torch.allclose(t, want, atol=1e-6)
    assert torch.allclose(fovea_decode(pts, z, t), gt, atol=1e-4)
    # the clamp at [1/16, 16]: a point 1 px from the left edge with z = 32 gives log(1/16)
    t2 = fovea_encode(torch.tensor([[17.0, 40.0]]), torch.tensor([32.0]), gt[:1])
    assert float(t2[0, 0]) == pytest.approx(math.log(1 / 16))


def test_fovea_head_loss_matches_hand_computation():
    torch.manual_seed(0)
    C = 3
    for edges, cls_norm in (((32, 64, 128, 256, 512), 5 + 1), (MMDET_BASE_EDGES, 5 + 1)):
        head = FoveaBoxHeadConfig(feat_channels=8, num_convs=1, base_edges=edges).build(8, C)
        outs = {"cls": [torch.zeros(1, C, h, w) for h, w in SIZES_128], "reg": [torch.zeros(1, 4, h, w) for h, w in SIZES_128]}
        tg = [{"boxes": torch.tensor([[16.0, 16, 64, 64]]), "labels": torch.tensor([2])}]
        losses = head.loss(outs, tg, (128, 128))
        # 5 positives: P3 cells (4..5)^2 (centres 36/44, z = edges[0]), P4 cell (2, 2) (centre 40, z = edges[1])
        ts = []
        for cx in (36, 44):
            for cy in (36, 44):
                ts += [math.log((cx - 16) / edges[0]), math.log((cy - 16) / edges[0]),
                       math.log((64 - cx) / edges[0]), math.log((64 - cy) / edges[0])]
        ts += [math.log(24 / edges[1])] * 4
        sl1 = sum(abs(v) - 0.055 if abs(v) >= 0.11 else 0.5 * v * v / 0.11 for v in ts)
        assert float(losses["loss_bbox"]) == pytest.approx(sl1 / 5, rel=1e-5)
        onehot = torch.zeros(341, C)
        for x, y in ((4, 4), (5, 4), (4, 5), (5, 5)):
            onehot[y * 16 + x, 2] = 1
        onehot[256 + 2 * 8 + 2, 2] = 1
        fl = sigmoid_focal_loss(torch.zeros(341, C), onehot, alpha=0.4, gamma=1.5, reduction="sum")
        assert float(losses["loss_cls"]) == pytest.approx(float(fl) / cls_norm, rel=1e-5)


# ----------------------------------------------------------------------------- IoU-aware RetinaNet


def _iou_head(detach: bool):
    torch.manual_seed(1)
    cfg = IoUAwareRetinaNetHeadConfig(feat_channels=16, num_convs=1, detach_iou_target=detach)
    return cfg.build(16, 4)


def _iou_batch():
    feats = [torch.randn(2, 16, h, w) for h, w in [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]]
    tg = [{"boxes": torch.tensor([[10.0, 12, 70, 90], [60, 30, 120, 100]]), "labels": torch.tensor([1, 3])},
          {"boxes": torch.tensor([[20.0, 20, 52, 44]]), "labels": torch.tensor([0])}]
    return feats, tg


def test_iou_target_is_iou_of_decoded_prediction():
    head = _iou_head(False)
    feats, tg = _iou_batch()
    outs = head(feats)
    with torch.no_grad():
        for r in outs["reg"]:
            r.mul_(20.0)  # non-trivial deltas
    anchors = torch.cat(head.anchors(outs["cls"]))
    reg = flatten_levels(outs["reg"], 4)
    iou = flatten_levels(outs["iou"], 1)[..., 0]
    a, matched = head.assign_priors(anchors, tg)
    _, target = head.iou_loss(iou, reg, anchors, matched, a.pos_mask, torch.tensor(1.0))
    b_idx, p_idx = a.pos_mask.nonzero(as_tuple=True)
    assert len(p_idx) > 5
    # independent decode: R-CNN deltas (means 0, stds 1) applied to the anchors
    an, d = anchors[p_idx], reg[b_idx, p_idx].detach()
    aw, ah = an[:, 2] - an[:, 0], an[:, 3] - an[:, 1]
    cx, cy = an[:, 0] + aw / 2 + d[:, 0] * aw, an[:, 1] + ah / 2 + d[:, 1] * ah
    w, h = aw * d[:, 2].clamp(max=math.log(1000 / 16)).exp(), ah * d[:, 3].clamp(max=math.log(1000 / 16)).exp()
    pred = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)
    gt = torch.stack([tg[int(b)]["boxes"][int(a.gt_index[b, p])] for b, p in zip(b_idx, p_idx)])
    want = box_iou(pred, gt).diagonal()
    assert torch.allclose(target.detach(), want, atol=1e-5)
    assert 0 < float(want.min()) and float(want.max()) < 1


@pytest.mark.parametrize("detach", [False, True])
def test_iou_loss_gradient_reaches_box_regressor_only_without_detach(detach):
    head = _iou_head(detach)
    feats, tg = _iou_batch()
    losses = head.loss(head(feats), tg, (128, 128))
    losses["loss_iou"].backward()
    g = head.reg_out.weight.grad
    reached = g is not None and float(g.abs().sum()) > 0
    assert reached is (not detach)
    assert float(head.iou_out.weight.grad.abs().sum()) > 0
    assert head.cls_out.weight.grad is None  # the IoU branch sits on the regression tower


def test_iou_aware_score_is_power_fusion_of_raw_maps():
    torch.manual_seed(2)
    cfg = _smoke(iou_aware_retinanet(), num_classes=4, width=16, convs=1)
    model = Detector(cfg).eval()
    images = torch.randn(1, 3, 128, 96)
    with torch.no_grad():
        model.head.cls_out.bias.normal_(0.0, 1.0)  # spread the class scores
        model.head.iou_out.bias.normal_(0.0, 1.0)
        outs = model(images)
    det = model.predict(images)[0]
    assert cfg.test.fusion == "power" and cfg.test.threshold_on == "fused"
    assert 0 < len(det["scores"]) <= 100 and float(det["scores"].min()) > 0.05
    p = flatten_levels(outs["cls"], 4)[0].sigmoid()  # (N, C)
    q = flatten_levels(outs["iou"], 1)[0].sigmoid()  # (N, 1)
    fused = p.sqrt() * q.sqrt()
    best = int(fused.flatten().argmax())
    # the best-scoring candidate is never suppressed: it is the first detection
    assert float(det["scores"][0]) == pytest.approx(float(fused.flatten()[best]), rel=1e-5)
    assert int(det["labels"][0]) == best % 4
    anchors = torch.cat(model.head.anchors(outs["cls"]))
    box = model.head.coder.decode(anchors[best // 4], flatten_levels(outs["reg"], 4)[0, best // 4])
    box = torch.stack([box[0].clamp(0, 96), box[1].clamp(0, 128), box[2].clamp(0, 96), box[3].clamp(0, 128)])
    assert torch.allclose(det["boxes"][0], box, atol=1e-4)


# ----------------------------------------------------------------------------- both detectors


DETECTORS = {"foveabox": foveabox, "iou_aware_retinanet": iou_aware_retinanet}


@pytest.mark.parametrize("name", sorted(DETECTORS))
def test_forward_backward_and_predict(name):
    torch.manual_seed(0)
    cfg = _smoke(DETECTORS[name](), num_classes=5)
    assert cfg.name == name
    model = Detector(cfg)
    images = torch.randn(3, 3, 192, 288)
    targets = [
        {"boxes": torch.tensor([[10.0, 20, 80, 90], [100, 50, 200, 180], [5, 5, 30, 25]]), "labels": torch.tensor([1, 3, 4])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
        {"boxes": torch.tensor([[30.0, 30, 90, 110]]), "labels": torch.tensor([0]),
         "ignore_boxes": torch.tensor([[120.0, 60, 280, 190]])},
    ]
    losses = model(images, targets)
    assert all(k.startswith("loss") for k in losses) and {"loss_cls", "loss_bbox"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None for n, p in model.head.named_parameters())
    model.eval()
    with torch.no_grad():  # push scores above threshold so boxes come out
        model.head.cls_out.bias.fill_(1.0)
    sizes = [(192, 288), (150, 200), (192, 250)]
    dets = model.predict(images, sizes)
    for d, (h, w) in zip(dets, sizes):
        n = len(d["scores"])
        assert 0 < n <= 100
        b = d["boxes"]
        assert float(b[:, 0::2].min()) >= 0 and float(b[:, 1::2].min()) >= 0
        assert float(b[:, 0::2].max()) <= w and float(b[:, 1::2].max()) <= h
        assert torch.all(d["scores"][:-1] >= d["scores"][1:])
