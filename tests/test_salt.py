"""SALT-Net: the task-aware points (Eq. 2, 5, 6) by hand, the feature alignment (Eq. 7-8) against bilinear
interpolation computed by hand and against torchvision's deformable convolution, the SDR loss (Eq. 9) by
hand, and the head's stages (which gradients reach what, the coarse-box decoding, Eq. 10's terms)."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch
from torchvision.ops import deform_conv2d

from replicate.errors import ReplicateError
from replicate.experiments.store import test_key as evaluation_key
from replicate.models.detector import build_detector
from replicate.models.postprocess import TestConfig
from replicate.models.salt import (SALT, classification_points, kernel_grid, points_to_offsets, regression_points,
                                   sdr_loss)
from replicate.models.zoo import model_config

ROOT = Path(__file__).resolve().parents[1]


def one_location(values: list[float]) -> torch.Tensor:
    return torch.tensor(values).view(1, -1, 1, 1)


def test_regression_points_by_hand():
    """Coarse (l, t, r, b) = (1, 2, 3, 4): the box is x in [-1, 3], y in [-2, 4] (w 4, h 6). Eq. 2 with the
    factors below puts the left point at (-1, -2 + 6 * 0.5), the top at (-1 + 4 * 0.25, -2), the right at
    (3, -2 + 6 * 1), the bottom at (-1 + 4 * 0, 4); the free points at xmin + w s_x, ymin + h s_y."""
    d = one_location([1.0, 2.0, 3.0, 4.0])
    s = [0.5, 0.25, 1.0, 0.0] + [0.5, 0.5, 0.0, 0.0, 1.0, 1.0, 0.25, 0.75, 0.1, 0.9]
    p = regression_points(d, one_location(s))[0, :, 0, 0].view(9, 2)  # (dy, dx) per tap
    expected = {3: (1.0, -1.0), 1: (-2.0, 0.0), 5: (4.0, 3.0), 7: (4.0, -1.0),
                0: (1.0, 1.0), 2: (-2.0, -1.0), 4: (4.0, 3.0), 6: (2.5, 0.0), 8: (3.4, -0.6)}
    for tap, (y, x) in expected.items():
        torch.testing.assert_close(p[tap], torch.tensor([y, x]), msg=f"tap {tap}")


def test_regression_points_lie_in_the_coarse_box_and_the_extreme_points_on_its_sides():
    torch.manual_seed(0)
    d = torch.rand(2, 4, 3, 5) * 4
    p = regression_points(d, torch.rand(2, 14, 3, 5)).view(2, 9, 2, 3, 5)
    y, x = p[:, :, 0], p[:, :, 1]
    left, top, right, bottom = (d[:, i] for i in range(4))
    assert (x >= -left[:, None] - 1e-6).all() and (x <= right[:, None] + 1e-6).all()
    assert (y >= -top[:, None] - 1e-6).all() and (y <= bottom[:, None] + 1e-6).all()
    torch.testing.assert_close(x[:, 3], -left)
    torch.testing.assert_close(y[:, 1], -top)
    torch.testing.assert_close(x[:, 5], right)
    torch.testing.assert_close(y[:, 7], bottom)
    with pytest.raises(ReplicateError, match="14 scale factors"):
        regression_points(d, torch.rand(2, 18, 3, 5))


def test_classification_points_by_hand_and_detached_from_the_regression_points():
    """Eq. 5: exp(D) * P^r, Eq. 6: D + P^r, Table 1's free points D and shared points P^r; no gradient of the
    classification points reaches the regression points."""
    reg = torch.tensor([1.0, -2.0]).view(1, 2, 1, 1).repeat(1, 9, 1, 1).requires_grad_()
    d = torch.full((1, 18, 1, 1), math.log(2.0))
    torch.testing.assert_close(classification_points(reg, d, "exp")[0, :2, 0, 0], torch.tensor([2.0, -4.0]))
    torch.testing.assert_close(classification_points(reg, d, "add")[0, :2, 0, 0],
                               torch.tensor([1.0 + math.log(2.0), -2.0 + math.log(2.0)]))
    assert torch.equal(classification_points(reg, d, "free"), d)
    assert torch.equal(classification_points(reg, d, "regression"), reg.detach())
    for mode in ("exp", "add", "regression"):
        assert not classification_points(reg, d, mode).requires_grad
    with pytest.raises(ReplicateError, match="classification points"):
        classification_points(reg, d, "mul")


def bilinear(x: torch.Tensor, y: float, xx: float) -> float:
    """A (H, W) map read at real (row y, column xx), zeros outside, by hand."""
    h, w = x.shape
    y0, x0 = math.floor(y), math.floor(xx)
    total = 0.0
    for yi, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
        for xi, wx in ((x0, 1 - (xx - x0)), (x0 + 1, xx - x0)):
            if 0 <= yi < h and 0 <= xi < w:
                total += wy * wx * float(x[yi, xi])
    return total


def test_alignment_reads_each_tap_at_its_point_by_bilinear_interpolation():
    """Eq. 7-8: with a one-hot kernel on tap k the aligned feature at p is the input interpolated at
    p + P_k (computed by hand); with any kernel it is torchvision's deform_conv2d with offsets P - grid."""
    torch.manual_seed(0)
    x = torch.randn(1, 1, 6, 7)
    points = torch.randn(1, 18, 6, 7) * 1.5
    offsets = points_to_offsets(points)
    grid = kernel_grid()
    torch.testing.assert_close(offsets[0, :, 2, 3].view(9, 2) + grid, points[0, :, 2, 3].view(9, 2))
    for tap in (0, 4, 7):
        weight = torch.zeros(1, 1, 3, 3)
        weight.view(-1)[tap] = 1.0
        out = deform_conv2d(x, offsets, weight, padding=1)
        for (py, px) in ((0, 0), (2, 3), (5, 6)):
            dy, dx = points[0, 2 * tap, py, px].item(), points[0, 2 * tap + 1, py, px].item()
            assert out[0, 0, py, px].item() == pytest.approx(bilinear(x[0, 0], py + dy, px + dx), abs=1e-5)

    salt = SALT(8, norm=None)
    feats = torch.randn(2, 8, 5, 6)
    torch.nn.init.normal_(salt.conv_c.weight, std=0.5)
    out = salt(feats, feats, torch.nn.Identity())
    assert out["coarse"].max() > 0.5  # points spread over boxes, not at the location
    expected = deform_conv2d(feats, points_to_offsets(out["reg_points"]), salt.reg_align.weight, salt.reg_align.bias,
                             padding=1)
    torch.testing.assert_close(out["reg_feat"], torch.relu(expected), atol=1e-5, rtol=1e-4)


def test_sdr_loss_by_hand():
    """Eq. 9 on two positives. The first: GT (0, 0, 10, 10), coarse (0, 0, 5, 10) (IoU 0.5), refined
    (0, 0, 8, 10) (IoU 0.8 > 0.5): y IoU_2 (1 - GIoU(coarse, refined)) = 0.9 * 0.8 * (1 - 50/80). The second's
    refined box is worse than its coarse one: 0. Only the coarse boxes get gradients."""
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    coarse = torch.tensor([[0.0, 0.0, 5.0, 10.0], [0.0, 0.0, 9.0, 10.0]], requires_grad=True)
    refined = torch.tensor([[0.0, 0.0, 8.0, 10.0], [0.0, 0.0, 6.0, 10.0]], requires_grad=True)
    score = torch.tensor([0.9, 0.7])
    loss = sdr_loss(coarse, refined, gt, score, reduction="none")
    torch.testing.assert_close(loss, torch.tensor([0.9 * 0.8 * (1 - 50 / 80), 0.0]))
    torch.testing.assert_close(sdr_loss(coarse, refined, gt, score, avg_factor=4.0), loss.sum() / 4)
    loss.sum().backward()
    assert refined.grad is None and coarse.grad[0].abs().sum() > 0 and coarse.grad[1].abs().sum() == 0


def heads(**overrides):
    torch.manual_seed(0)
    return build_detector(model_config("salt_net", "smoke", num_classes=3,
                                       overrides={f"head.{k}": v for k, v in overrides.items()}))


TARGETS = [{"boxes": torch.tensor([[10.0, 20.0, 60.0, 90.0]]), "labels": torch.tensor([1])},
           {"boxes": torch.tensor([[30.0, 30.0, 100.0, 70.0], [5.0, 5.0, 40.0, 40.0]]), "labels": torch.tensor([0, 2])}]


def test_eq10_terms_and_the_variants_that_drop_them():
    torch.manual_seed(0)
    images = torch.rand(2, 3, 128, 128)
    assert set(heads()(images, TARGETS)) >= {"loss_cls", "loss_bbox", "loss_dfl", "loss_bbox_coarse", "loss_sdr"}
    assert "loss_sdr" not in heads(sdr=False)(images, TARGETS)
    s1 = build_detector(model_config("salt_s1", "smoke", num_classes=3))
    assert set(k for k in s1(images, TARGETS) if k.startswith("loss")) == {"loss_cls", "loss_bbox"}
    assert s1.head.reg_out is None and s1.head.dgqp is None
    assert not hasattr(heads(cls_points="regression").head.salt, "conv_d")
    with pytest.raises(ReplicateError, match="cls_points"):
        heads(cls_points="both")


def test_classification_outputs_do_not_train_the_regression_points():
    """The classification logits depend on the regression-aware points only through detached values (Sec. 3.2),
    while the refined regression trains the coarse box and the scale factors (the released code's choice)."""
    det = heads()
    det.train()
    feats = det.neck(det.backbone(torch.rand(1, 3, 96, 96)))
    outs = det.head(feats)
    salt = det.head.salt
    grads = torch.autograd.grad(sum(c.sum() for c in outs["cls"]), [salt.conv_s.weight, salt.conv_c.weight,
                                                                      salt.conv_d.weight], allow_unused=True)
    assert all(g is None or g.abs().sum() == 0 for g in grads[:2]) and grads[2].abs().sum() > 0
    grads = torch.autograd.grad(sum(r.sum() for r in outs["reg"]), [salt.conv_s.weight, salt.conv_c.weight])
    assert all(g.abs().sum() > 0 for g in grads)


def test_coarse_boxes_decode_the_stage_one_distances():
    """``test.boxes = "coarse"`` keeps the refined scores and decodes centre -/+ stride * (l, t, r, b)."""
    det = heads()
    det.eval()
    with torch.no_grad():
        outs = det.head(det.neck(det.backbone(torch.rand(1, 3, 64, 64))))
    for level, m in enumerate(outs["coarse"]):
        m.zero_()
        m[:, :] = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 4, 1, 1)
    low = TestConfig(score_thr=0.0, nms_iou=1.0, max_per_image=10 ** 6, pre_nms_topk=10 ** 6, boxes="coarse")
    dets = det.head.predict(outs, [(4096, 4096)], low)[0]  # no clipping
    boxes = dets["boxes"][(dets["boxes"][:, :2] > 0).all(dim=1)]  # not clipped at the top-left corner
    assert len(boxes) > 0
    w, h = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    torch.testing.assert_close(h / w, torch.full_like(w, 1.5))  # (2 + 4) / (1 + 3), whatever the stride
    strides = torch.tensor(det.head.cfg.anchors.strides, dtype=torch.float32)
    assert set((w / 4).round().unique().tolist()) <= set(strides.tolist())
    final = det.head.predict(outs, [(4096, 4096)], dataclasses.replace(low, boxes="final"))[0]
    assert not torch.allclose(final["boxes"][:5], dets["boxes"][:5])
    with pytest.raises(ReplicateError, match="test boxes"):
        TestConfig(boxes="both")


def test_the_boxes_field_keeps_the_committed_evaluation_keys():
    """A committed record's evaluation is found under the key of its stored test config (made before
    ``boxes`` existed), and ``boxes = "coarse"`` gets a key of its own."""
    record = json.loads(sorted((ROOT / "results" / "proxy").glob("*.json"))[0].read_text())
    test = TestConfig(**record["test"])
    assert evaluation_key(test) in record["evaluations"]
    assert evaluation_key(TestConfig(**{**record["test"], "boxes": "coarse"})) not in record["evaluations"]


def test_decoded_outputs_agree_with_the_detections():
    """The analyses' dense view (``head.decoded``, unclipped) gives, at the top-scored (prior, class), the box and
    score of the head's own top detection, for each stage."""
    det = heads()
    det.eval()
    with torch.no_grad():
        outs = det.head(det.neck(det.backbone(torch.rand(1, 3, 96, 96))))
    for stage in ("final", "coarse"):
        probs, boxes = det.head.decoded(outs, stage)
        test = TestConfig(score_thr=0.0, nms_iou=0.6, max_per_image=1, boxes=stage)
        top = det.head.predict(outs, [(4096, 4096)], test)[0]
        prior, label = divmod(int(probs[0].argmax()), probs.shape[-1])
        assert int(top["labels"][0]) == label
        torch.testing.assert_close(top["scores"][0], probs[0, prior, label])
        torch.testing.assert_close(top["boxes"][0], boxes[0, prior].clamp(0, 4096))  # detections are clipped


def test_object_peaks_by_hand():
    """Two objects, four priors. Object 0 (0, 0, 20, 20) holds priors 0 and 1: prior 0 scores higher but its box
    has IoU 0.25 (a quarter of the object), prior 1's box is the object (IoU 1): not aligned, gap 0.75, peaks
    10 px apart over sqrt(400) = 20 px. Object 1 (40, 40, 60, 60) holds priors 2 and 3; prior 3 has both peaks."""
    from replicate.analysis.misalignment import ImagePredictions
    from replicate.analysis.task_peaks import object_peaks

    priors = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 10.0, 10.0, 20.0], [40.0, 40.0, 50.0, 50.0],
                           [45.0, 45.0, 55.0, 55.0]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 20.0, 20.0], [40.0, 40.0, 50.0, 50.0],
                          [40.0, 40.0, 60.0, 60.0]])
    scores = torch.tensor([[0.9, 0.0], [0.5, 0.0], [0.0, 0.3], [0.0, 0.8]])
    pred = ImagePredictions(priors, scores, boxes, torch.tensor([[0.0, 0.0, 20.0, 20.0], [40.0, 40.0, 60.0, 60.0]]),
                            torch.tensor([0, 1]))
    peaks = object_peaks(pred)
    assert peaks["aligned"].tolist() == [False, True]
    assert peaks["gap"].tolist() == pytest.approx([0.75, 0.0])
    assert peaks["distance"].tolist() == pytest.approx([10.0 / 20.0, 0.0])
    assert peaks["region"].tolist() == [2, 2]


def test_salt_composes_into_fcos_and_leaves_fcos_runs_named_as_before():
    """SALT-FCOS (Table 3) is FCOS's head with the operator between towers and predictors: a coarse-box GIoU term
    joins FCOS's; plain FCOS's run identity has no SALT fields, so its committed records keep their names."""
    from replicate.models.detector import weights_fields

    torch.manual_seed(0)
    images = torch.rand(2, 3, 128, 128)
    salt_fcos = build_detector(model_config("salt_fcos", "smoke", num_classes=3))
    terms = salt_fcos(images, TARGETS)
    assert {"loss_cls", "loss_bbox", "loss_centerness", "loss_bbox_coarse"} <= set(terms)
    assert all(torch.isfinite(v) for v in terms.values())
    head = weights_fields(model_config("fcos", "proxy"))["head"]
    assert "salt" not in head and "salt_coarse_weight" not in head
    assert weights_fields(model_config("salt_fcos", "proxy"))["head"]["salt"] == "exp"
