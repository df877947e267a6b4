"""ATSS, GFL and GFLv2 heads: hand-computed losses, decoding, DGQP, smoke forward/backward, short training."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import box_iou, generalized_box_iou, sigmoid_focal_loss

from replicate.models import zoo
from replicate.models.detector import build_detector
from replicate.models.detectors.atss import ATSSHeadConfig, atss
from replicate.models.detectors.gfl import GFLHeadConfig, gfl
from replicate.models.detectors.gflv2 import GFLv2HeadConfig, gflv2
from replicate.models.losses import quality_focal_loss_prob
from replicate.models.losses import quality_focal_loss
from replicate.models.postprocess import TestConfig
from replicate.models.priors import AnchorConfig

PRESETS = {"atss": atss, "gfl": gfl, "gflv2": gflv2}

# One level of stride 8, a 4x4 map: 16 anchors of 64x64 centred at (8x, 8y). With topk=1 each GT's
# candidate set is its nearest anchor alone (std 0, threshold = its IoU), so the positive is that anchor.
ONE_LEVEL = AnchorConfig(strides=(8,), octave_base_scale=8.0, scales_per_octave=1, ratios=(1.0,))
GT_A = [4.0, 6.0, 40.0, 30.0]  # centre (22, 18): nearest anchor centre (24, 16), index y*4+x = 2*4+3 = 11
GT_B = [0.0, 0.0, 32.0, 48.0]  # centre (16, 24) = anchor (x=2, y=3), index 14
POS = (11, 14)
CENTRES = torch.tensor([[24.0, 16.0], [16.0, 24.0]])
TARGETS = [{"boxes": torch.tensor([GT_A]), "labels": torch.tensor([1])},
           {"boxes": torch.tensor([GT_B]), "labels": torch.tensor([0])}]


def smoke_config(name: str, num_classes: int = 3):
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(zoo.MODELS, name, PRESETS[name])
        return zoo.model_config(name, "smoke", num_classes=num_classes)


def _maps(t: torch.Tensor) -> list[torch.Tensor]:
    """(B, N=16, K) per-anchor values -> one (B, K, 4, 4) level map (location-major order)."""
    B, N, K = t.shape
    return [t.reshape(B, 4, 4, K).permute(0, 3, 1, 2).contiguous()]


# ------------------------------------------------------------------------------------ presets
def test_presets_match_mmdetection_configs():
    for name, fn in PRESETS.items():
        cfg = fn()
        assert cfg.name == name
        assert cfg.neck.extra_from == "output" and not cfg.neck.relu_before_extra
        assert cfg.test.nms_iou == 0.6
        h = cfg.head
        assert (h.feat_channels, h.num_convs, h.norm, h.topk) == (256, 4, "gn", 9)
        assert h.anchors.num_anchors == 1 and h.anchors.octave_base_scale == 8.0
    assert atss().test.fusion == "multiply" and atss().head.box_loss_weight == 2.0
    assert atss().head.target_stds == (0.1, 0.1, 0.2, 0.2)
    assert gfl().test.fusion == "none" and gflv2().test.fusion == "none"
    g = gfl().head
    assert (g.reg_max, g.box_loss_weight, g.dfl_weight, g.qfl_beta) == (16, 2.0, 0.25, 2.0)
    v = gflv2().head
    assert (v.dgqp_topk, v.dgqp_add_mean, v.dgqp_channels) == (4, True, 64)
    small = smoke_config("gflv2")
    assert small.head.feat_channels == 64 and isinstance(small.head, GFLv2HeadConfig)


# ------------------------------------------------------------------------------------- ATSS
def test_atss_loss_by_hand():
    C = 2
    head = ATSSHeadConfig(feat_channels=8, num_convs=1, anchors=ONE_LEVEL, topk=1).build(8, C)
    cls = torch.full((2, 16, C), -2.0)
    outs = {"cls": _maps(cls), "reg": _maps(torch.zeros(2, 16, 4)), "centerness": _maps(torch.ones(2, 16, 1))}
    losses = head.loss(outs, TARGETS, (32, 32))

    # centerness of the anchor centre w.r.t. its GT (FCOS Eq. 3)
    ctr_a = math.sqrt(16 / 20 * 10 / 14)  # l, t, r, b = 20, 10, 16, 14
    ctr_b = 1.0
    # zero deltas decode to the anchor itself, which encloses the GT: GIoU = IoU = GT area / 64^2
    l_a, l_b = 1 - 36 * 24 / 4096, 1 - 32 * 48 / 4096
    expected_bbox = 2.0 * (ctr_a * l_a + ctr_b * l_b) / (ctr_a + ctr_b)
    assert losses["loss_bbox"].item() == pytest.approx(expected_bbox, rel=1e-5)

    s = torch.sigmoid(torch.tensor(1.0)).item()
    bce = lambda t: -(t * math.log(s) + (1 - t) * math.log(1 - s))  # noqa: E731
    assert losses["loss_centerness"].item() == pytest.approx((bce(ctr_a) + bce(ctr_b)) / 2, rel=1e-5)

    onehot = torch.zeros(2, 16, C)
    onehot[0, POS[0], 1] = 1
    onehot[1, POS[1], 0] = 1
    expected_cls = sigmoid_focal_loss(cls, onehot, 0.25, 2.0, reduction="sum") / 2
    assert losses["loss_cls"].item() == pytest.approx(expected_cls.item(), rel=1e-5)


def test_atss_centerness_sum_normaliser_clamped_at_one():
    head = ATSSHeadConfig(feat_channels=8, num_convs=1, anchors=ONE_LEVEL, topk=1).build(8, 2)
    outs = {"cls": _maps(torch.zeros(1, 16, 2)), "reg": _maps(torch.zeros(1, 16, 4)),
            "centerness": _maps(torch.zeros(1, 16, 1))}
    loss = head.loss(outs, TARGETS[:1], (32, 32))["loss_bbox"]
    ctr_a = math.sqrt(16 / 20 * 10 / 14)  # < 1: the normaliser is max(ctr_a, 1) = 1
    assert loss.item() == pytest.approx(2.0 * ctr_a * (1 - 36 * 24 / 4096), rel=1e-5)


# -------------------------------------------------------------------------------------- GFL
def _gfl_case(cfg_cls=GFLHeadConfig, **kw):
    C, n = 2, 17
    torch.manual_seed(0)
    head = cfg_cls(feat_channels=8, num_convs=1, anchors=ONE_LEVEL, topk=1, **kw).build(8, C)
    cls = torch.randn(2, 16, C)
    cls[0, POS[0]] = torch.tensor([-1.0, 2.0])  # max score sigmoid(2)
    cls[1, POS[1]] = torch.tensor([0.5, -3.0])  # max score sigmoid(0.5)
    reg = torch.randn(2, 16, 4 * n) * 2
    outs = {"cls": _maps(cls), "reg": _maps(reg)}
    return head, cls, reg, outs


def _gfl_expected(cls_prob, reg, box_norm):
    """Independent per-positive computation of GFL's three losses (stride 8, 2 positives)."""
    n = 17
    gts = torch.tensor([GT_A, GT_B])
    targets_d = torch.tensor([[2.5, 1.25, 2.0, 1.75], [2.0, 3.0, 2.0, 3.0]])  # (l, t, r, b) / stride, by hand
    bins = torch.arange(n, dtype=torch.float32)
    w, giou_l, dfl, ious = [], [], [], []
    for i, (img, p) in enumerate(zip((0, 1), POS)):
        logits = reg[img, p].reshape(4, n)
        d = (logits.softmax(-1) * bins).sum(-1) * 8  # integral x stride
        cx, cy = CENTRES[i]
        box = torch.stack([cx - d[0], cy - d[1], cx + d[2], cy + d[3]])
        ious.append(box_iou(box[None], gts[i][None])[0, 0])
        giou_l.append(1 - generalized_box_iou(box[None], gts[i][None])[0, 0])
        w.append(cls_prob[img, p].max())
        logp = logits.log_softmax(-1)
        side = []
        for s in range(4):
            y = targets_d[i, s]
            lo = int(math.floor(y))
            side.append(-((lo + 1 - y) * logp[s, lo] + (y - lo) * logp[s, lo + 1]))
        dfl.append(torch.stack(side).mean())
    w, giou_l, dfl = torch.stack(w), torch.stack(giou_l), torch.stack(dfl)
    norm = box_norm(w)
    return ious, 2.0 * (w * giou_l).sum() / norm, 0.25 * (w * dfl).sum() / norm


def _qfl_expected(cls_prob, ious, labels=(1, 0)):
    y = torch.zeros_like(cls_prob)
    y[0, POS[0], labels[0]] = ious[0]
    y[1, POS[1], labels[1]] = ious[1]
    bce = F.binary_cross_entropy(cls_prob, y, reduction="none")
    return (bce * (y - cls_prob).abs() ** 2).sum() / 2  # N_pos = 2


def test_gfl_loss_by_hand_weight_sum_normaliser():
    head, cls, reg, outs = _gfl_case()
    losses = head.loss(outs, TARGETS, (32, 32))
    ious, e_bbox, e_dfl = _gfl_expected(cls.sigmoid(), reg, lambda w: w.sum().clamp(min=1))
    assert losses["loss_bbox"].item() == pytest.approx(e_bbox.item(), rel=1e-4)
    assert losses["loss_dfl"].item() == pytest.approx(e_dfl.item(), rel=1e-4)
    # QFL target is the IoU of the (detached) predicted box with the GT, at the GT class only
    assert losses["loss_cls"].item() == pytest.approx(_qfl_expected(cls.sigmoid(), ious).item(), rel=1e-4)


def test_gfl_num_pos_normaliser_option():
    head, cls, reg, outs = _gfl_case(box_normalizer="num_pos")
    losses = head.loss(outs, TARGETS, (32, 32))
    _, e_bbox, e_dfl = _gfl_expected(cls.sigmoid(), reg, lambda w: torch.tensor(2.0))
    assert losses["loss_bbox"].item() == pytest.approx(e_bbox.item(), rel=1e-4)
    assert losses["loss_dfl"].item() == pytest.approx(e_dfl.item(), rel=1e-4)


def test_gfl_box_is_integral_times_stride():
    head = GFLHeadConfig(feat_channels=8, num_convs=1).build(8, 2)
    n = 17
    logits = torch.full((1, 4, n), -50.0)
    for side, k in enumerate((2, 3, 1, 4)):
        logits[0, side, k] = 50.0  # one-hot distribution on bin k
    anchor = torch.tensor([[100.0 - 64, 60.0 - 64, 100.0 + 64, 60.0 + 64]])  # centre (100, 60), stride 16
    box = head.decode_boxes(anchor, logits.reshape(1, 4 * n), 16.0)
    assert torch.allclose(box, torch.tensor([[100 - 32.0, 60 - 48.0, 100 + 16.0, 60 + 64.0]]), atol=1e-4)

    # through predict: one confident location on P4 (stride 16) of a 2-level head
    cfg = GFLHeadConfig(feat_channels=8, num_convs=1, anchors=replace(ONE_LEVEL, strides=(8, 16)))
    head = cfg.build(8, 2)
    cls = [torch.full((1, 2, 8, 8), -10.0), torch.full((1, 2, 4, 4), -10.0)]
    cls[1][0, 1, 2, 3] = 5.0  # location (x=3, y=2): centre (48, 32)
    reg = [torch.zeros(1, 4 * n, 8, 8), torch.zeros(1, 4 * n, 4, 4)]
    reg[1][0, :, 2, 3] = logits.reshape(-1)
    det = head.predict({"cls": cls, "reg": reg}, [(64, 64)], TestConfig(nms_iou=0.6))[0]
    assert len(det["boxes"]) == 1 and det["labels"].item() == 1
    assert det["scores"].item() == pytest.approx(torch.sigmoid(torch.tensor(5.0)).item(), rel=1e-5)
    assert torch.allclose(det["boxes"][0], torch.tensor([48 - 32.0, 32 - 48.0, 48 + 16.0, 32 + 64.0]).clamp(0, 64),
                          atol=1e-4)


# ------------------------------------------------------------------------------------ GFLv2
def test_dgqp_features_topk_and_mean():
    head = GFLv2HeadConfig(feat_channels=8, num_convs=1).build(8, 2)
    n = 17
    logits = torch.zeros(1, 4, n, 1, 2)  # location 0 flat, location 1 peaked
    logits[0, :, 5, 0, 1] = 10.0
    feats = head.dgqp_features(logits.reshape(1, 4 * n, 1, 2))
    assert feats.shape == (1, 20, 1, 2)
    flat = feats[0, :, 0, 0].reshape(4, 5)
    assert torch.allclose(flat, torch.full((4, 5), 1 / n))
    big = math.exp(10) / (math.exp(10) + n - 1)
    small = 1 / (math.exp(10) + n - 1)
    row = torch.tensor([big, small, small, small, (big + 3 * small) / 4])
    assert torch.allclose(feats[0, :, 0, 1].reshape(4, 5), row.expand(4, 5), atol=1e-6)
    # without the mean: 4k = 16 channels
    no_mean = GFLv2HeadConfig(feat_channels=8, num_convs=1, dgqp_add_mean=False).build(8, 2)
    assert no_mean.dgqp_features(logits.reshape(1, 4 * n, 1, 2)).shape == (1, 16, 1, 2)


def test_gflv2_joint_score_is_cls_prob_times_dgqp():
    torch.manual_seed(0)
    head = GFLv2HeadConfig(feat_channels=8, num_convs=1).build(8, 3)
    for m in head.dgqp.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.normal_(m.weight, std=1.0)
    n = 17
    reg = torch.zeros(1, 4, n, 1, 2)
    reg[0, :, 7, 0, 1] = 8.0  # peaked vs flat distribution
    reg = reg.reshape(1, 4 * n, 1, 2)
    feats = head.dgqp_features(reg)[0, :, 0, :].T  # (2, 20)
    w1, b1 = head.dgqp[0].weight[:, :, 0, 0], head.dgqp[0].bias
    w2, b2 = head.dgqp[2].weight[:, :, 0, 0], head.dgqp[2].bias
    I = torch.sigmoid(torch.relu(feats @ w1.T + b1) @ w2.T + b2)[:, 0]  # (2,)
    q = head.quality(reg)[0, 0, 0]
    assert torch.allclose(q, I, atol=1e-6) and (I[0] - I[1]).abs() > 1e-3
    cls = torch.randn(1, 3, 1, 2)
    J = head.level_scores({"cls": [cls], "quality": [q.reshape(1, 1, 1, 2)]})[0]
    assert torch.allclose(J[0], cls[0, :, 0, :].T.sigmoid() * I[:, None], atol=1e-6)
    assert torch.equal(head.to_prob(J), J)


def test_gflv2_qfl_on_probabilities():
    logits = torch.randn(6, 5)
    labels = torch.tensor([0, 5, 3, 5, 1, 4])
    scores = torch.tensor([0.7, 0.0, 0.2, 0.0, 0.95, 0.5])
    ref = quality_focal_loss(logits, labels, scores)
    got = quality_focal_loss_prob(logits.sigmoid(), labels, scores)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-6)


def test_gflv2_loss_by_hand():
    head, cls, reg, outs = _gfl_case(cfg_cls=GFLv2HeadConfig)
    outs["quality"] = [head.quality(outs["reg"][0])]
    J = cls.sigmoid() * outs["quality"][0].permute(0, 2, 3, 1).reshape(2, 16, 1)
    losses = head.loss(outs, TARGETS, (32, 32))
    ious, e_bbox, e_dfl = _gfl_expected(J.detach(), reg, lambda w: w.sum().clamp(min=1))
    assert losses["loss_bbox"].item() == pytest.approx(e_bbox.item(), rel=1e-4)
    assert losses["loss_dfl"].item() == pytest.approx(e_dfl.item(), rel=1e-4)
    assert losses["loss_cls"].item() == pytest.approx(_qfl_expected(J.detach(), ious).item(), rel=1e-4)
    # the QFL reaches the distribution through the DGQP (not detached, as in the official code)
    reg_map = outs["reg"][0].detach().requires_grad_(True)
    outs2 = {"cls": outs["cls"], "reg": [reg_map], "quality": [head.quality(reg_map)]}
    g = torch.autograd.grad(head.loss(outs2, TARGETS, (32, 32))["loss_cls"], reg_map)[0]
    assert g.abs().sum() > 0


# ----------------------------------------------------------------------- smoke forward/backward
@pytest.mark.parametrize("name", list(PRESETS))
def test_forward_backward_and_predict(name):
    torch.manual_seed(0)
    model = build_detector(smoke_config(name))
    images = torch.randn(3, 3, 64, 96)
    targets = [
        {"boxes": torch.tensor([[10.0, 20.0, 50.0, 60.0], [40.0, 10.0, 90.0, 50.0]]), "labels": torch.tensor([0, 2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
        {"boxes": torch.tensor([[30.0, 20.0, 80.0, 60.0]]), "labels": torch.tensor([1]),
         "ignore_boxes": torch.tensor([[0.0, 0.0, 40.0, 40.0]])},
    ]
    losses = model(images, targets)
    expected = {"atss": {"loss_cls", "loss_bbox", "loss_centerness"}}.get(name, {"loss_cls", "loss_bbox", "loss_dfl"})
    assert set(losses) == expected
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)

    # an all-empty batch still gives finite losses
    empty = model(images[:1], targets[1:2])
    assert all(torch.isfinite(v) for v in empty.values())

    model.eval()
    sizes = [(64, 96), (50, 80), (64, 48)]
    dets = model.predict(images, sizes, TestConfig(score_thr=0.0, nms_iou=0.6, max_per_image=100,
                                                   fusion=model.cfg.test.fusion))
    for d, (h, w) in zip(dets, sizes):
        assert 0 < len(d["boxes"]) <= 100
        b = d["boxes"]
        assert (b[:, 0] >= 0).all() and (b[:, 1] >= 0).all() and (b[:, 2] <= w).all() and (b[:, 3] <= h).all()
        assert ((d["scores"] >= 0) & (d["scores"] <= 1)).all()
        assert (d["scores"][:-1] >= d["scores"][1:]).all()
