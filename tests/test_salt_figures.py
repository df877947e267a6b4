"""SALT-Net Figures 8 and 10: the task-aware point sets (replicate.analysis.task_points) and the confident,
poorly localized detections (replicate.analysis.confident_detections), checked by hand and against the head's
own coarse box."""

import numpy as np
import pytest
import torch

from replicate.analysis import confident_detections as cd
from replicate.analysis import task_points as tp
from replicate.models.detector import build_detector
from replicate.models.zoo import model_config

pytestmark = pytest.mark.usefixtures("one_thread")

GRID = torch.tensor([[dy, dx] for dy in (-1.0, 0.0, 1.0) for dx in (-1.0, 0.0, 1.0)])  # (9, 2) (dy, dx)


def test_points_to_image_by_hand():
    """(dy, dx) in stride units about the location -> (x, y) pixels: (1, -2) at (10, 20), stride 8 -> (-6, 28)."""
    points = torch.zeros(1, 18)
    points[0, :2] = torch.tensor([1.0, -2.0])
    xy = tp.to_image(points, torch.tensor([[10.0, 20.0]]), torch.tensor([8.0]))
    assert xy.shape == (1, 9, 2)
    assert xy[0, 0].tolist() == [-6.0, 28.0] and xy[0, 1].tolist() == [10.0, 20.0]
    assert tp.region(xy)[0].tolist() == [-6.0, 20.0, 10.0, 28.0]


def test_object_points_by_hand():
    """One object (0, 0, 20, 20) of class 0 and one no prior centre lies in. Priors at (10, 10), (14, 14) and
    (100, 100), stride 8; the last scores highest but lies outside, so prior 1 detects the object. Its
    regression-aware points are the 3x3 grid: x, y in {6, 14, 22}, region (6, 6, 22, 22); its
    classification-aware points the grid one stride right: region (14, 6, 30, 22).
    Regions' IoU 128 / 384; with the object 196 / 460 and 84 / 572; points inside 4/9 and 2/9; centroids
    (14, 14) and (22, 14): 8 px apart over sqrt(400) = 20 px."""
    centres = torch.tensor([[10.0, 10.0], [14.0, 14.0], [100.0, 100.0]])
    strides = torch.full((3,), 8.0)
    scores = torch.tensor([[0.2, 0.0], [0.9, 0.0], [0.95, 0.0]])
    reg = GRID.reshape(1, 18).repeat(3, 1)
    cls = (GRID + torch.tensor([0.0, 1.0])).reshape(1, 18).repeat(3, 1)
    gts = torch.tensor([[0.0, 0.0, 20.0, 20.0], [200.0, 200.0, 210.0, 210.0]])
    frame, reg_xy, cls_xy = tp.object_points(centres, strides, scores, reg, cls, gts, torch.tensor([0, 1]))
    assert frame["gt"].tolist() == [0] and frame["prior"].tolist() == [1]
    row = frame.iloc[0]
    assert row["score"] == pytest.approx(0.9)
    assert row["region_iou"] == pytest.approx(128 / 384)
    assert row["reg_gt_iou"] == pytest.approx(196 / 460)
    assert row["cls_gt_iou"] == pytest.approx(84 / 572)
    assert row["reg_inside"] == pytest.approx(4 / 9) and row["cls_inside"] == pytest.approx(2 / 9)
    assert row["shift"] == pytest.approx(8 / 20)
    assert tp.region(reg_xy)[0].tolist() == [6.0, 6.0, 22.0, 22.0]
    assert tp.region(cls_xy)[0].tolist() == [14.0, 6.0, 30.0, 22.0]
    empty, r, c = tp.object_points(centres, strides, scores, reg, cls, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long))
    assert len(empty) == 0 and r.shape == (0, 9, 2) and c.shape == (0, 9, 2)


def _samples():
    images = [torch.rand(3, 128, 128), torch.rand(3, 96, 128)]
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 70.0, 90.0], [80.0, 20.0, 120.0, 60.0]]), "labels": torch.tensor([0, 2]),
                "image_id": 1},
               {"boxes": torch.tensor([[30.0, 30.0, 90.0, 80.0]]), "labels": torch.tensor([1]), "image_id": 2}]
    return list(zip(images, targets))


def test_the_regression_aware_region_is_the_coarse_box():
    """Eq. 2-3 put four points on the coarse box's sides and the other five inside it, so the region around the
    regression-aware points is the stage-one box that the head decodes itself (``decoded(outs, "coarse")``)."""
    torch.manual_seed(0)
    net = build_detector(model_config("salt_net", "smoke", num_classes=3)).eval()
    samples = _samples()
    results = tp.image_points(net, samples)
    from replicate.data.batching import Collate

    with torch.no_grad():
        outs = net(Collate()(samples).images)
        _, coarse = net.head.decoded(outs, "coarse")
    assert [len(f) for f, _, _ in results] == [2, 1]
    for i, (frame, reg, cls) in enumerate(results):
        torch.testing.assert_close(tp.region(reg), coarse[i, torch.tensor(frame["prior"].to_numpy())], atol=1e-4,
                                   rtol=1e-5)
        assert not torch.equal(reg, cls)


def test_task_points_need_a_two_stage_salt_head():
    net = build_detector(model_config("gflv2", "smoke", num_classes=3))
    with pytest.raises(Exception, match="SALT-Net head"):
        tp.image_points(net, _samples())


def test_best_iou_by_hand():
    """A detection matching its class's object exactly (1), one of another class on it (0), and one half over
    the object (IoU 1/3); no ground truth: all 0."""
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [5.0, 0.0, 15.0, 10.0]])
    labels = torch.tensor([0, 1, 0])
    iou = cd.best_iou(boxes, labels, torch.tensor([[0.0, 0.0, 10.0, 10.0]]), torch.tensor([0]))
    assert iou.tolist() == pytest.approx([1.0, 0.0, 1 / 3])
    assert cd.best_iou(boxes, labels, torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)).tolist() == [0.0] * 3


def test_low_iou_share_by_hand():
    """At score >= 0.3: 0.9 (IoU 0.8), 0.3 (IoU 0.1; a score on the edge counts), 1.0 (IoU 0.5: a hit) and 0.95
    (IoU 0.45): 2 of 4 below IoU 0.5. 0.2 (IoU 0) is below the threshold. At 0.95: 1.0 and 0.95, one low."""
    counts = cd.score_iou_counts(np.array([0.9, 0.3, 0.2, 1.0, 0.95]), np.array([0.8, 0.1, 0.0, 0.5, 0.45]))
    assert counts.sum() == 5
    assert cd.low_iou_share(counts, 0.3) == (pytest.approx(0.5), 4)
    assert cd.low_iou_share(counts, 0.95) == (pytest.approx(0.5), 2)
    assert cd.low_iou_share(counts, 0.05, 0.8) == (pytest.approx(4 / 5), 5)  # 0.8 itself is no miss
    share, n = cd.low_iou_share(np.zeros((20, 20)), 0.3)
    assert n == 0 and np.isnan(share)
    with pytest.raises(Exception, match="multiple of 0.05"):
        cd.low_iou_share(counts, 0.33)


def test_image_detections_are_the_models_with_their_ious():
    torch.manual_seed(0)
    net = build_detector(model_config("gflv2", "smoke", num_classes=3)).eval()
    samples = _samples()
    from replicate.data.batching import Collate

    batch = Collate()(samples)
    expected = net.predict(batch.images, batch.image_sizes)
    for d, e, (_, t) in zip(cd.image_detections(net, samples), expected, samples):
        torch.testing.assert_close(d["boxes"], e["boxes"])
        torch.testing.assert_close(d["iou"], cd.best_iou(e["boxes"], e["labels"], t["boxes"], t["labels"]))


def _summary(share, confident=10, score_thr=0.3):
    counts = np.zeros((20, 20), dtype=int)
    return {"settings": {"score_thr": score_thr}, "detections": 40, "confident": confident, "confident_per_image": 1.0,
            "share_low_iou": share, "counts": counts.tolist(),
            "example": {"image_id": 1, "image_size": [64, 64], "image_path": None, "gt_boxes": [[0, 0, 20, 20]],
                        "boxes": [[0, 0, 20, 20], [30, 30, 60, 60]], "scores": [0.9, 0.8], "ious": [1.0, 0.0]}}


def test_figure10_verdict_and_drawing():
    a, b = _summary(0.4), _summary(0.2)
    assert "fewer confident" in cd.verdict({"base": a, "salt": b}, "base", "salt")
    assert "not fewer" in cd.verdict({"base": b, "salt": a}, "base", "salt")
    assert cd.verdict({"base": _summary(None, 0), "salt": b}, "base", "salt").startswith("not checked")
    fig = cd.plot_examples({"base": a, "salt": b})
    colours = [p.get_edgecolor()[:3] for p in fig.axes[0].patches]
    assert (0.0, 1.0, 0.0) in colours and (1.0, 0.0, 0.0) in colours  # a hit in lime, a miss in red
    assert len(cd.plot_low_iou_share({"base": a}).axes) == 1


def test_figure8_verdict_and_drawing():
    example = {"image_id": 1, "image_size": [64, 64], "image_path": None, "box": [10, 10, 30, 30], "label": 0,
               "reg_points": [[10 + 2 * i, 12] for i in range(9)], "cls_points": [[20, 5 + 5 * i] for i in range(9)],
               "score": 0.5, "region_iou": 0.0, "shift": 0.3}
    s = {"objects": 10, "median_region_iou": 0.3, "share_distinct": 0.7, "examples": [example, example],
         "region_iou_counts": [1] * 20}
    assert "distinct for most objects" in tp.verdict(s, "SALT-Net")
    assert "mostly one region" in tp.verdict({**s, "share_distinct": 0.2}, "SALT-Net")
    fig = tp.plot_points(s, "SALT-Net")
    assert len([ax for ax in fig.axes if ax.images]) == 4  # 2 rows x 2 examples
    with pytest.raises(Exception, match="no example"):
        tp.plot_points({**s, "examples": []}, "SALT-Net")
    assert len(tp.plot_region_ious({"SALT-Net": s}).axes) == 1


def test_the_figures_read_the_tables_runs():
    """Figures 8 and 10 add no run: each of their rows is a run that a table of the chapter already makes."""
    from replicate.experiments.runs import requests_for
    from replicate.experiments.sweep import load_papers

    salt = load_papers()["salt"]
    for profile in ("smoke", "proxy"):
        tables = {r.key for name, spec in salt.items() if not name.startswith("figure") for r in requests_for(spec, profile)}
        for figure in ("figure8", "figure10"):
            assert {r.key for r in requests_for(salt[figure], profile)} <= tables, (figure, profile)


def test_row_summaries_say_why_a_row_has_none(tmp_path):
    """Figure 8 on a store where the first row's run has a cached summary, the second row's run neither a cache
    nor a checkpoint here (a record made on another machine), and no row of another table is asked: the first
    summary is read, the second row says why it has none; a row without runs says so."""
    from replicate.analysis.cache import row_summaries, summary_path
    from replicate.experiments.sweep import load_papers
    from replicate.io import atomic_write_json

    spec = load_papers()["salt"]["figure8"]
    first, second = (row.label for row in spec.rows)
    cached = {"key": "0123456789ab", "settings": {"images": 100, "examples": 3, "scale": None}, "objects": 1}
    atomic_write_json(summary_path(tmp_path, "smoke", "task-points", "0123456789ab"), cached)
    runs = {first: [{"key": "0123456789ab", "work_dir": str(tmp_path / "a")}],
            second: [{"key": "ba9876543210", "work_dir": str(tmp_path / "b")}]}
    summaries, unavailable = row_summaries(tp.points_summary, spec, "smoke", runs, results_dir=tmp_path)
    assert summaries == {first: cached}
    assert list(unavailable) == [second] and "no checkpoint in" in unavailable[second]
    _, none = row_summaries(tp.points_summary, spec, "smoke", {}, results_dir=tmp_path)
    assert none == {first: "no trained run in the store", second: "no trained run in the store"}
