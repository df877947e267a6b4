"""Misalignment statistics (RetinaNet-Conf, Sec. 1) on hand-computed cases and the paper's Table 1."""

import math

import matplotlib

matplotlib.use("Agg")

import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from replicate.analysis import misalignment as mis  # noqa: E402
from replicate.errors import ReplicateError  # noqa: E402


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def image_a() -> mis.ImagePredictions:
    """Two GT boxes (A label 0, B label 1), three priors, two classes.

    Prior IoUs with GT: 1.0 (A), 0.3 (A), 0.6 (B). Box IoUs: box0 = A (1.0), box1 = top 65% of A
    (0.65 with A and with box0, 0 with B), box2 = B (1.0). Candidates (score > 0.05):
    (0, 0, 0.95), (1, 0, 0.65), (1, 1, 0.30), (2, 1, 0.75). NMS at 0.5 removes (1, 0) only.
    """
    return mis.ImagePredictions(
        priors=_t([[0, 0, 10, 10], [0, 0, 10, 3], [20, 0, 30, 6]]),
        scores=_t([[0.95, 0.04], [0.65, 0.30], [0.02, 0.75]]),
        boxes=_t([[0, 0, 10, 10], [0, 0, 10, 6.5], [20, 0, 30, 10]]),
        gt_boxes=_t([[0, 0, 10, 10], [20, 0, 30, 10]]),
        gt_labels=torch.tensor([0, 1]),
        image_id="a",
    )


def image_b() -> mis.ImagePredictions:
    """No ground truth: one prior, one candidate (0, 0, 0.55) with IoU 0."""
    return mis.ImagePredictions(
        priors=_t([[0, 0, 5, 5]]), scores=_t([[0.55, 0.01]]), boxes=_t([[0, 0, 5, 5]]),
        gt_boxes=torch.zeros(0, 4), gt_labels=torch.zeros(0, dtype=torch.long), image_id="b",
    )


def test_candidates_by_hand():
    cands = mis.candidates(image_a())
    assert list(cands.columns) == ["prior", "label", "score", "iou", "kept"]
    assert cands[["prior", "label"]].values.tolist() == [[0, 0], [1, 0], [1, 1], [2, 1]]
    assert cands["score"].tolist() == pytest.approx([0.95, 0.65, 0.30, 0.75])
    assert cands["iou"].tolist() == pytest.approx([1.0, 0.65, 0.65, 1.0])
    assert cands["kept"].tolist() == [True, False, True, True]
    assert mis.candidates(image_a(), nms_iou=0.7)["kept"].all()


def test_candidates_class_aware_iou_and_no_gt():
    aware = mis.candidates(image_a(), class_aware_iou=True)
    assert aware["iou"].tolist() == pytest.approx([1.0, 0.65, 0.0, 1.0])
    none = mis.candidates(image_b())
    assert none["iou"].tolist() == [0.0] and none["kept"].tolist() == [True]


def test_candidates_pre_nms_topk_and_threshold():
    top = mis.candidates(image_a(), pre_nms_topk=2)
    assert top[["prior", "label"]].values.tolist() == [[0, 0], [2, 1]]
    assert top["kept"].all()
    assert mis.candidates(image_a(), score_thr=0.7)["prior"].tolist() == [0, 2]
    empty = mis.candidates(image_a(), score_thr=0.99)
    assert len(empty) == 0 and list(empty.columns) == ["prior", "label", "score", "iou", "kept"]


def test_positive_priors():
    assert mis.positive_priors(image_a()) == 2
    assert mis.positive_priors(image_a(), pos_iou=0.7) == 1
    assert mis.positive_priors(image_a(), pos_iou=0.2) == 3
    assert mis.positive_priors(image_b()) == 0


def test_count_table_by_hand():
    counts = mis.count_table([image_a(), image_b()])
    assert counts.index.equals(mis.paper_table1().index)
    assert list(counts.columns) == ["Image1", "Image2"]
    assert all(dtype == "int64" for dtype in counts.dtypes)
    #                     pos  cls>.05 .5 .6 .7 .8 .9 iou>.5 .6 .7 .8 .9
    expected_a = [2] + [4, 3, 3, 2, 1, 1, 4, 4, 2, 2, 2] + [3, 2, 2, 2, 1, 1, 3, 3, 2, 2, 2]
    expected_b = [0] + [1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0] * 2
    assert counts["Image1"].tolist() == expected_a
    assert counts["Image2"].tolist() == expected_b


def test_proportions_by_hand():
    counts = mis.count_table([image_a(), image_b()])
    props = mis.proportion_table(counts)
    assert list(props.columns) == ["Image1", "Image2", "all"]
    assert props.loc[("Before NMS", "iou>0.7"), "Image1"] == pytest.approx(2 / 4)
    assert props.loc[("After NMS", "cls>0.5"), "Image1"] == pytest.approx(2 / 3)
    assert props.loc[("Before NMS", "iou>0.5"), "all"] == pytest.approx(4 / 5)
    assert props.loc[("After NMS", "cls>0.05"), "Image2"] == 1.0
    change = mis.proportion_change(counts)
    assert change.loc["cls>0.5", "Image1"] == pytest.approx((2 / 3 - 3 / 4) * 100)
    assert change.loc["iou>0.5", "Image1"] == pytest.approx(0.0)
    assert change.loc["cls>0.5", "mean"] == pytest.approx((2 / 3 - 3 / 4) * 50)


def test_paper_table1_spot_checks():
    paper = mis.paper_table1()
    assert paper.shape == (23, 10)
    assert paper.loc[("Positive_NUM", "iou>0.5"), "Image1"] == 331
    assert paper.loc[("After NMS", "iou>0.9"), "Image10"] == 2
    assert paper.loc[("Before NMS", "cls>0.05"), "Image8"] == 13480
    assert paper.loc[("After NMS", "cls>0.05"), "Image1"] == 429


def test_proportion_change_reproduces_paper_text():
    """Sec. 1: iou>0.5 drops by 31.5% (printed as Image1, it is Image2), 39.84% (Image6), 19.52% on average;
    cls>0.5 rises by 1.32% (Image2), 1.55% (Image3), 0.02% (Image8) and drops by 1.09% on average."""
    change = mis.proportion_change(mis.paper_table1()).round(2)
    assert change.loc["iou>0.5", "Image2"] == -31.50
    assert change.loc["iou>0.5", "Image6"] == -39.84
    assert change.loc["iou>0.5", "mean"] == -19.52
    assert change.loc["cls>0.5", ["Image2", "Image3", "Image8"]].tolist() == [1.32, 1.55, 0.02]
    assert change.loc["cls>0.5", "mean"] == -1.09
    others = change.loc["cls>0.5"].drop(["Image2", "Image3", "Image8", "mean"])
    assert (others < 0).all()  # "the proportions drop in other images"


def test_plots():
    preds = [image_a(), image_b()]
    fig = mis.plot_proportions(mis.count_table(preds))
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    assert len(fig.axes[0].get_lines()) == 4
    fig = mis.plot_proportions(mis.paper_table1(), column="Image1")
    xs, ys = fig.axes[0].get_lines()[1].get_data()  # BF_NMS iou>t
    assert list(xs) == [0.5, 0.6, 0.7, 0.8, 0.9]
    assert ys[0] == pytest.approx(1087 / 7213)


def test_candidates_survive_json_and_an_image_without_any_plots():
    # an image with no score above the threshold: no candidates; stored as JSON columns and read back, the
    # table keeps its columns and a boolean "kept" (an empty object column would select columns, not rows)
    empty = mis.candidates(image_a(), score_thr=0.999)
    assert len(empty) == 0 and list(empty.columns) == list(mis.CANDIDATE_COLUMNS)
    frames = [mis.candidates_frame(f.to_dict(orient="list")) for f in (mis.candidates(image_a()), empty)]
    assert frames[1]["kept"].dtype == bool and frames[0].equals(mis.candidates(image_a()))
    fig = mis.plot_candidates(frames, ["Image1", "Image2"])
    assert len(fig.axes) == 4 and len(fig.axes[3].collections[0].get_offsets()) == 0


@pytest.mark.parametrize(
    "change",
    [
        {"scores": _t([[0.5, 0.5]])},  # 1 score row, 3 boxes
        {"boxes": _t([[0, 0, 1], [0, 0, 1], [0, 0, 1]])},  # not (N, 4)
        {"priors": _t([[0, 0, 1, 1]])},  # 1 prior, 3 boxes
        {"gt_labels": torch.tensor([0])},  # 1 label, 2 GT boxes
        {"scores": _t([[2.0, 0.0]] * 3)},  # not probabilities
        {"scores": _t([0.5, 0.5, 0.5])},  # not (N, C)
    ],
)
def test_bad_shapes_raise(change):
    fields = {name: getattr(image_a(), name) for name in ("priors", "scores", "boxes", "gt_boxes", "gt_labels")}
    with pytest.raises(ReplicateError):
        mis.ImagePredictions(**{**fields, **change})


def test_bad_arguments_raise():
    with pytest.raises(ReplicateError, match="at least one image"):
        mis.count_table([])
    with pytest.raises(ReplicateError, match="lowest cls threshold"):
        mis.count_table([image_a()], cls_thresholds=(0.5, 0.6))
    with pytest.raises(ReplicateError, match="After NMS"):
        mis.proportion_table(mis.paper_table1().drop(index="After NMS", level="stage"))


def test_empty_counts_give_nan_proportions():
    counts = mis.count_table([image_a()], score_thr=0.99, cls_thresholds=(0.99,))
    props = mis.proportion_table(counts)
    assert math.isnan(props.loc[("Before NMS", "iou>0.5"), "Image1"])
    assert isinstance(props, pd.DataFrame)


def test_misalignment_summary_is_computed_from_the_checkpoint_then_read_from_its_cache(smoke_root, tmp_path):
    import shutil

    from replicate.analysis.cache import misalignment_summary
    from replicate.engine import SCHEDULES
    from replicate.engine.config import with_overrides
    from replicate.engine.train import train
    from replicate.models.zoo import model_config

    cfg = model_config("retinanet_conf", "smoke", num_classes=10)
    run = tmp_path / "run"
    train(cfg, "smoke", run, with_overrides(SCHEDULES["smoke"], iters=2, eval_at_end=False), data_root=smoke_root,
          progress=False)
    record = {"key": "abcdef012345", "work_dir": str(run), "provenance": {"commit": "x"}}
    results = tmp_path / "results"
    kwargs = dict(results_dir=results, data_root=smoke_root, images=2, scatter_images=1)
    first = misalignment_summary(record, cfg, "smoke", **kwargs)
    cache = results / "analysis" / "smoke" / "misalignment-abcdef012345.json"
    assert cache.is_file() and first["key"] == record["key"] and len(first["image_ids"]) == 2
    assert list(first["counts"].index.names) == ["stage", "condition"] and len(first["candidates"]) == 1

    shutil.rmtree(run)  # the cache alone now serves the same settings
    again = misalignment_summary(record, cfg, "smoke", **kwargs)
    pd.testing.assert_frame_equal(again["counts"], first["counts"])
    pd.testing.assert_frame_equal(again["candidates"][0], first["candidates"][0])
    with pytest.raises(ReplicateError, match="no misalignment summary in .* and no checkpoint in .*run"):
        misalignment_summary(record, cfg, "smoke", **{**kwargs, "images": 3})  # other settings, no checkpoint
