"""Post-processing on hand-built predictions: thresholds, per-level top-k, class-wise and per-image NMS,
score fusion, clipping and the per-image cap."""

import pytest
import torch

from replicate.errors import ReplicateError
from replicate.models.postprocess import TestConfig, fuse_scores, postprocess


def _run(probs, boxes, sizes, cfg, quality=None):
    """probs: per level (B, N, C); boxes: per level (N, 4) shared by the batch."""
    return postprocess(probs, lambda lvl, img, prior: boxes[lvl][prior], sizes, cfg, quality)


def _far_boxes(n, size=10.0):
    x = torch.arange(n, dtype=torch.float32) * 100
    return torch.stack([x, torch.zeros(n), x + size, torch.full((n,), size)], dim=1)


def test_threshold_and_sorting():
    probs = [torch.tensor([[[0.9, 0.01], [0.04, 0.3], [0.5, 0.06]]])]
    out = _run(probs, [_far_boxes(3)], [(1000, 1000)], TestConfig(score_thr=0.05))[0]
    assert out["scores"].tolist() == pytest.approx([0.9, 0.5, 0.3, 0.06])
    assert out["labels"].tolist() == [0, 0, 1, 1]
    assert out["boxes"][:, 0].tolist() == [0.0, 200.0, 100.0, 200.0]


def test_per_level_topk_keeps_best_k_of_each_level():
    p0 = torch.tensor([[[0.9], [0.8], [0.7]]])
    p1 = torch.tensor([[[0.6], [0.5], [0.4]]])
    out = _run([p0, p1], [_far_boxes(3), _far_boxes(3) + 1000], [(5000, 5000)], TestConfig(pre_nms_topk=2))[0]
    assert out["scores"].tolist() == pytest.approx([0.9, 0.8, 0.6, 0.5])


def test_nms_is_class_wise_and_per_image():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0]])  # IoU 9/11 = 0.82
    same = torch.tensor([[[0.9], [0.8]]])
    out = _run([same], [boxes], [(100, 100)], TestConfig(nms_iou=0.5))[0]
    assert out["scores"].tolist() == pytest.approx([0.9])
    out = _run([same], [boxes], [(100, 100)], TestConfig(nms_iou=0.85))[0]  # below the threshold: both kept
    assert len(out["scores"]) == 2
    diff = torch.tensor([[[0.9, 0.0], [0.0, 0.8]]])
    assert len(_run([diff], [boxes], [(100, 100)], TestConfig())[0]["scores"]) == 2
    batch = same.expand(2, -1, -1)  # the same boxes in two images never suppress each other
    outs = _run([batch], [boxes], [(100, 100)] * 2, TestConfig())
    assert [len(o["scores"]) for o in outs] == [1, 1]


def test_max_per_image_and_clipping():
    n = 7
    probs = [torch.linspace(0.9, 0.3, n).reshape(1, n, 1).repeat(2, 1, 1)]
    boxes = _far_boxes(n) + torch.tensor([-5.0, -5.0, 0.0, 0.0])
    outs = _run(probs, [boxes], [(8, 650), (8, 250)], TestConfig(max_per_image=3))
    assert [len(o["scores"]) for o in outs] == [3, 3]
    assert outs[0]["boxes"][0].tolist() == [0.0, 0.0, 10.0, 8.0]  # (-5, -5, 10, 10) clipped to 650x8
    assert outs[1]["boxes"][:, 2].max() <= 250 and outs[1]["boxes"][:, 3].max() <= 8


def test_empty_output_has_shapes():
    out = _run([torch.full((1, 4, 3), 0.01)], [_far_boxes(4)], [(100, 100)], TestConfig())[0]
    assert out["boxes"].shape == (0, 4) and out["scores"].shape == (0,) and out["labels"].shape == (0,)


def test_fusion_modes_by_hand():
    p = torch.tensor([[[0.64, 0.25]]])
    q = torch.tensor([[0.25]])
    assert fuse_scores(p, q, "multiply").flatten().tolist() == pytest.approx([0.16, 0.0625])
    assert fuse_scores(p, q, "sqrt").flatten().tolist() == pytest.approx([0.4, 0.25])
    assert fuse_scores(p, q, "power", 0.5).flatten().tolist() == pytest.approx([0.4, 0.25])
    assert fuse_scores(p, q, "power", 0.25).flatten().tolist() == pytest.approx([0.64**0.75 * 0.25**0.25,
                                                                                 0.25])
    assert torch.equal(fuse_scores(p, None, "none"), p)
    with pytest.raises(ReplicateError, match="needs a quality branch"):
        fuse_scores(p, None, "sqrt")
    with pytest.raises(ReplicateError, match="unknown score fusion"):
        TestConfig(fusion="max")


def test_threshold_on_class_probability_or_fused_score():
    probs = [torch.tensor([[[0.5], [0.04]]])]
    quality = [torch.tensor([[0.01, 1.0]])]
    boxes = [_far_boxes(2)]
    cls_gate = _run(probs, boxes, [(500, 500)], TestConfig(fusion="multiply", threshold_on="cls"), quality)[0]
    assert cls_gate["scores"].tolist() == pytest.approx([0.005])  # 0.5 passes the gate, reported fused
    fused_gate = _run(probs, boxes, [(500, 500)], TestConfig(fusion="multiply", threshold_on="fused"), quality)[0]
    assert len(fused_gate["scores"]) == 0  # 0.005 and 0.04 are both below 0.05
