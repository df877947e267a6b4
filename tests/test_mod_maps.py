"""MOD Fig. 1 / Fig. 4 analysis (replicate.analysis.mod_maps) against independent oracles."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss  # noqa: E402

from replicate.analysis import mod_maps  # noqa: E402
from replicate.analysis.mod_maps import InstanceMaps, figure_summary, instance_maps, plot_assignment  # noqa: E402
from replicate.analysis.mod_maps import plot_loss_maps, spread  # noqa: E402
from replicate.errors import ReplicateError  # noqa: E402
from replicate.io import atomic_write_json  # noqa: E402
from replicate.models.assigners import atss_assign, pad_targets  # noqa: E402
from replicate.models.detector import build_detector  # noqa: E402
from replicate.models.zoo import model_config  # noqa: E402


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = build_detector(model_config("mod", "smoke", num_classes=3)).eval()
    images = torch.randn(2, 3, 128, 160)
    targets = [
        {"boxes": torch.tensor([[10.0, 10.0, 60.0, 80.0], [30.0, 40.0, 150.0, 120.0]]),
         "labels": torch.tensor([0, 2]), "image_id": 7},
        {"boxes": torch.tensor([[5.0, 5.0, 40.0, 30.0]]), "labels": torch.tensor([1]), "image_id": 8},
    ]
    with torch.no_grad():
        outs = model(images)
    maps = instance_maps(model, images, targets)  # its own forward pass
    return model, images, targets, outs, maps


def _level_points(maps: InstanceMaps, level: int) -> tuple[np.ndarray, np.ndarray]:
    h, w = maps.cls_cost[level].shape
    s = maps.strides[level]
    ys, xs = np.meshgrid((np.arange(h) + 0.5) * s, (np.arange(w) + 0.5) * s, indexing="ij")
    return xs, ys


def test_default_gt_is_the_largest_box_of_image_0(setup):
    _, _, _, _, maps = setup
    assert (maps.image_index, maps.gt_index) == (0, 1)
    assert maps.box == [30.0, 40.0, 150.0, 120.0] and maps.label == 2 and maps.image_id == 7
    assert maps.image_size == (128, 160)


def test_maps_are_nan_exactly_outside_the_box(setup):
    _, _, _, outs, maps = setup
    x0, y0, x1, y1 = maps.box
    assert len(maps.cls_cost) == len(outs["cls"]) == len(maps.strides)
    for level, (c, r) in enumerate(zip(maps.cls_cost, maps.reg_cost)):
        assert c.shape == r.shape == tuple(outs["cls"][level].shape[-2:])
        xs, ys = _level_points(maps, level)
        inside = (xs > x0) & (xs < x1) & (ys > y0) & (ys < y1)
        for m in (c, r):
            assert np.array_equal(np.isnan(m), ~inside)
            assert np.isfinite(m[inside]).all()
    assert any(np.isfinite(m).any() for m in maps.cls_cost)


def test_costs_match_torchvision_oracles(setup):
    model, _, _, outs, maps = setup
    level = mod_maps.default_level(maps)
    row, col = np.argwhere(np.isfinite(maps.cls_cost[level]))[0]
    logits = outs["cls"][level][0, :, row, col]
    onehot = torch.zeros_like(logits)
    onehot[maps.label] = 1.0
    expected_cls = sigmoid_focal_loss(logits, onehot, alpha=0.25, gamma=2, reduction="sum")
    assert maps.cls_cost[level][row, col] == pytest.approx(float(expected_cls), rel=1e-5, abs=1e-6)
    s = maps.strides[level]
    x, y = (col + 0.5) * s, (row + 0.5) * s
    l, t, r, b = outs["dist"][level][0, :, row, col].tolist()
    pred = torch.tensor([[x - l, y - t, x + r, y + b]], dtype=torch.float64)
    expected_reg = generalized_box_iou_loss(pred, torch.tensor([maps.box], dtype=torch.float64), reduction="none")
    assert maps.reg_cost[level][row, col] == pytest.approx(float(expected_reg), rel=1e-4, abs=1e-5)


def test_positives_match_the_assigners(setup):
    model, _, targets, outs, maps = setup
    a, _ = model.head.assign(outs, targets)
    aps = (a.gt_index[0] == maps.gt_index).nonzero(as_tuple=True)[0].numpy()
    assert np.array_equal(np.sort(maps.positives["APS"]["index"]), aps)
    pts, _, _ = model.head.level_points(outs["cls"])
    anchors = torch.cat([torch.cat([p - 4 * s, p + 4 * s], dim=1) for p, s in zip(pts, maps.strides)])
    gt_boxes, gt_labels, gt_valid, _, _ = pad_targets(targets)
    atss = atss_assign(anchors, [len(p) for p in pts], gt_boxes, gt_labels, gt_valid, topk=9)
    expected = (atss.gt_index[0] == maps.gt_index).nonzero(as_tuple=True)[0].numpy()
    assert len(expected) > 0 and np.array_equal(np.sort(maps.positives["ATSS"]["index"]), expected)
    # level/row/col/x/y agree with the flat index
    points = torch.cat(pts).numpy()
    for name in ("APS", "ATSS"):
        p = maps.positives[name]
        assert np.allclose(points[p["index"]], np.stack([p["x"], p["y"]], axis=1))
        for lvl, r, c, x, y in zip(p["level"], p["row"], p["col"], p["x"], p["y"]):
            s = maps.strides[lvl]
            assert ((c + 0.5) * s, (r + 0.5) * s) == pytest.approx((x, y))
    # the positives lie inside the box, so their costs are finite
    assert set(maps.positives["APS"]["level"].tolist()) <= set(maps.kept_levels)
    assert 1 <= len(maps.kept_levels) <= model.head.cfg.aps.num_levels_kept


def test_paa_positives_score_the_heads_losses(setup):
    """Figure 4's PAA positives are :func:`paa_assign` on the ATSS comparison's anchors, with each pair scored by
    the MOD head's own losses as torchvision computes them: focal loss summed over the classes + 1.3 GIoU loss."""
    from torch.nn.functional import one_hot

    from replicate.models._utils import flatten_levels
    from replicate.models.assigners import paa_assign

    model, _, targets, outs, maps = setup
    pts, _, _ = model.head.level_points(outs["cls"])
    points = torch.cat(pts)
    anchors = torch.cat([torch.cat([p - 4 * s, p + 4 * s], dim=1) for p, s in zip(pts, maps.strides)])
    gt_boxes, gt_labels, gt_valid, _, _ = pad_targets(targets)
    cls, dist = flatten_levels(outs["cls"], model.head.num_classes), flatten_levels(outs["dist"], 4)
    scored = []

    def oracle(img, prior, gt):
        scored.append(len(prior))
        target = one_hot(gt_labels[img, gt], model.head.num_classes).float()
        focal = sigmoid_focal_loss(cls[img, prior].float(), target, alpha=0.25, gamma=2, reduction="none").sum(-1)
        (x, y), (l, t, r, b) = points[prior].unbind(-1), dist[img, prior].float().unbind(-1)
        pred = torch.stack((x - l, y - t, x + r, y + b), dim=-1)
        return focal + 1.3 * generalized_box_iou_loss(pred, gt_boxes[img, gt], reduction="none")

    paa = paa_assign(anchors, [len(p) for p in pts], gt_boxes, gt_labels, gt_valid, oracle, topk=9)
    expected = (paa.gt_index[0] == maps.gt_index).nonzero(as_tuple=True)[0].numpy()
    assert sum(scored) > 0 and len(expected) > 0
    assert np.array_equal(np.sort(maps.positives["PAA"]["index"]), expected)


def test_explicit_gt_and_errors(setup):
    model, images, targets, outs, maps = setup
    other = instance_maps(model, images, targets, gt=(1, 0), outs=outs)
    assert other.box == [5.0, 5.0, 40.0, 30.0] and other.label == 1 and other.image_index == 1
    same = instance_maps(model, images, targets, outs=outs)  # given outputs == its own forward pass
    assert all(np.array_equal(x, y, equal_nan=True) for x, y in zip(same.cls_cost, maps.cls_cost))
    assert np.array_equal(same.positives["APS"]["index"], maps.positives["APS"]["index"])
    with pytest.raises(ReplicateError, match="GT index 3"):
        instance_maps(model, images, targets, gt=(0, 3))
    fcos = build_detector(model_config("fcos", "smoke", num_classes=3))
    with pytest.raises(ReplicateError, match="FCOSHead"):
        instance_maps(fcos, images, targets)


def test_json_round_trip_and_spread(setup):
    _, _, _, _, maps = setup
    back = InstanceMaps.from_json(maps.to_json())
    for a, b in zip(maps.cls_cost + maps.reg_cost, back.cls_cost + back.reg_cost):
        assert np.array_equal(a, b, equal_nan=True)
    for name in ("APS", "ATSS"):
        for k, v in maps.positives[name].items():
            assert np.array_equal(v, back.positives[name][k])
    assert (back.box, back.kept_levels, back.strides, back.image_size) == (
        maps.box, maps.kept_levels, maps.strides, maps.image_size)
    stats = spread(maps)
    assert all(isinstance(v, float) for v in stats.values())
    assert stats["argmin_distance"] >= 0 and stats["aps_count"] == len(maps.positives["APS"]["index"])
    assert math.isfinite(stats["atss_total"]) and stats["atss_total"] == pytest.approx(
        stats["atss_cls"] + stats["atss_reg"])
    assert spread(back) == pytest.approx(stats, nan_ok=True)


def test_plots(setup):
    model, images, targets, outs, maps = setup
    fig = plot_loss_maps(maps)
    assert len(fig.axes) == 4  # two panels + two colorbars
    plt.close(fig)
    summary_image = mod_maps.assignment_image(model, images, targets, 0, outs=outs)
    assert len(summary_image["positives"]["APS"]) == len(summary_image["boxes"]) == 2
    assert summary_image["positives"]["ATSS"][1]["index"] == maps.positives["ATSS"]["index"].tolist()
    fig = plot_assignment(summary_image)
    assert len(fig.axes) == 3  # APS, ATSS, PAA
    plt.close(fig)
    old = {**summary_image, "positives": {k: summary_image["positives"][k] for k in ("APS", "ATSS")}}
    fig = plot_assignment(old)  # a summary cached before PAA: the methods it holds
    assert len(fig.axes) == 2 and set(spread(InstanceMaps.from_json(
        {**maps.to_json(), "positives": {k: maps.to_json()["positives"][k] for k in ("APS", "ATSS")}}))) == {
        k for k in spread(maps) if not k.startswith("paa_")}
    plt.close(fig)
    fig = plot_assignment(summary_image, which=("APS",))
    assert len(fig.axes) == 1
    plt.close(fig)


def test_figure_summary_cache(setup, tmp_path):
    model, images, targets, outs, maps = setup
    record = {"key": "0123456789ab", "work_dir": str(tmp_path / "run"), "provenance": {}}
    cfg = model_config("mod", "smoke", num_classes=3)
    path = tmp_path / "results" / "analysis" / "smoke" / "mod-maps-0123456789ab.json"
    with pytest.raises(ReplicateError, match="no MOD loss-map summary") as err:
        figure_summary(record, cfg, "smoke", results_dir=tmp_path / "results")
    assert str(path) in str(err.value) and str(tmp_path / "run") in str(err.value)
    assignment = mod_maps.assignment_image(model, images, targets, 0, outs=outs)
    assignment.update(file_name=None, image_path=None)
    atomic_write_json(path, {"key": record["key"], "settings": {"images": 1, "scale": None}, "image_ids": [7],
                             "maps": [maps.to_json()], "assignment": assignment, "provenance": {}})
    out = figure_summary(record, cfg, "smoke", results_dir=tmp_path / "results", images=1)
    assert out["key"] == record["key"] and out["image_ids"] == [7]
    assert np.array_equal(out["maps"][0].reg_cost[0], maps.reg_cost[0], equal_nan=True)
    plt.close(plot_assignment(out["assignment"]))
    with pytest.raises(ReplicateError, match="no checkpoint"):  # other settings: recomputed, needs the run
        figure_summary(record, cfg, "smoke", results_dir=tmp_path / "results", images=2)
    from replicate.analysis.cache import row_summaries
    from replicate.experiments.sweep import load_papers

    summaries, unavailable = row_summaries(figure_summary, load_papers()["mod"]["figure4"], "smoke", {},
                                           labels=["MOD"], results_dir=tmp_path)
    assert summaries == {} and unavailable == {"MOD": "no trained run in the store"}
