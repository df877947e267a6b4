"""replicate.analysis.seed_spread: within-group correlation of early loss and final AP, worked by hand."""

import math

import pytest

from replicate.analysis import seed_spread
from replicate.errors import ReplicateError


def run(model, seed, loss_at_100, ap, *, lr=0.01, fusion="none"):
    """A record of 1000 iterations whose loss_cls curve is flat at ``loss_at_100`` around iteration 100."""
    curve = [[i, loss_at_100 if i <= 200 else 0.1] for i in range(10, 1000, 20)]
    return {"key": f"{model}-{seed}-{lr}-{fusion}", "profile": "proxy", "model": model, "seed": seed,
            "config": {"model": {"name": model, "test": {"fusion": fusion}},
                       "train": {"iters": 1000, "lr": lr, "seed": seed}},
            "metrics": {"AP": ap}, "loss_summary": {"loss_cls": {"curve": curve}}}


RECORDS = [
    # group A (retinanet, lr 0.01): loss 1.0 / 0.8, AP 50 / 54 -> deviations (+0.1, -2), (-0.1, +2)
    run("retinanet", 0, 1.0, 0.50), run("retinanet", 1, 0.8, 0.54),
    # the same training scored with another test setting: one run per seed, so it is not counted again
    run("retinanet", 0, 1.0, 0.51, fusion="sqrt"),
    # group B (retinanet, lr 0.02): loss 0.7 / 0.5, AP 30 / 30 -> deviations (+0.1, 0), (-0.1, 0)
    run("retinanet", 0, 0.7, 0.30, lr=0.02), run("retinanet", 1, 0.5, 0.30, lr=0.02),
    # a group of one seed is left out; another detector belongs to another family
    run("retinanet", 0, 0.9, 0.40, lr=0.03), run("atss", 0, 0.5, 0.6), run("atss", 1, 0.5, 0.6),
]
FAMILIES = {"anchors": ("retinanet",)}


def test_groups_are_trainings_that_differ_only_by_seed():
    groups = seed_spread.seed_groups(RECORDS, ("retinanet",))
    assert sorted(len(g) for g in groups) == [2, 2]
    assert all(r["config"]["model"]["test"]["fusion"] == "none" for g in groups for r in g)


def test_deviations_and_pooled_correlation_by_hand():
    dev = seed_spread.deviations(RECORDS, FAMILIES, fraction=0.1)
    assert len(dev) == 4 and set(dev["family"]) == {"anchors"}
    assert sorted(dev["loss deviation"].round(6)) == [-0.1, -0.1, 0.1, 0.1]
    assert sorted(dev["AP deviation"].round(6)) == [-2.0, 0.0, 0.0, 2.0]
    # sum xy = -0.4, sum x^2 = 0.04, sum y^2 = 8 -> -0.4 / sqrt(0.32)
    assert seed_spread.pooled_correlation(dev) == pytest.approx(-0.4 / math.sqrt(0.32))


def test_early_loss_table_per_family_and_fraction():
    families = {**FAMILIES, "points": ("atss",)}
    table = seed_spread.early_loss_table(RECORDS, families, fractions=(0.1, 0.9))
    assert list(table.columns) == ["groups", "runs", "at 10.0 %", "at 90.0 %"]
    assert table.loc["anchors", "groups"] == 2 and table.loc["anchors", "runs"] == 4
    assert table.loc["anchors", "at 10.0 %"] == pytest.approx(-0.4 / math.sqrt(0.32))
    assert math.isnan(table.loc["anchors", "at 90.0 %"])  # every run's loss is 0.1 there: no spread
    assert math.isnan(table.loc["points", "at 10.0 %"])  # identical seeds: no spread either
    assert seed_spread.plot_early_loss(seed_spread.deviations(RECORDS, families, 0.1), 0.1) is not None
    with pytest.raises(ReplicateError, match="no detector families"):
        seed_spread.early_loss_table(RECORDS, {})
