"""MOD Tables 3-4: reading logged statistics at fractions of training, the reduction row, the claim."""

import math

import pytest

from replicate.analysis.loss_stats import learned_seeds, reduction_holds, reduction_text, stat_at, stat_table
from replicate.errors import ReplicateError
from replicate.experiments.papers.mod import PAPER_STATS, STAT_ITERATIONS, STAT_TOTAL_ITERATIONS, TABLE3


def _record(values_at, iters=600, term="stat_loss_gap"):
    """A record whose curve is value(i) at every 6th iteration."""
    curve = [[i, values_at(i)] for i in range(3, iters, 6)]
    return {"key": "k", "config": {"train": {"iters": iters}}, "loss_summary": {term: {"curve": curve}}}


def test_stat_at_averages_the_window_around_each_fraction():
    record = _record(lambda i: float(i))
    # window 1/30 of 600 = +-20 iterations around 100: curve points 81 .. 117 -> mean 99
    assert stat_at(record, "stat_loss_gap", [1 / 6]) == [pytest.approx(99.0)]
    assert stat_at(record, "stat_loss_gap", [0.505], window=0) == [pytest.approx(303.0)]  # the nearest point


def test_stat_at_names_runs_without_the_statistic():
    with pytest.raises(ReplicateError, match="logged no 'stat_loss_sum'"):
        stat_at(_record(lambda i: 1.0), "stat_loss_sum", [0.5])


def test_stat_table_reduction_and_claim():
    base = _record(lambda i: 1.0)
    rfa = _record(lambda i: 0.9 if i < 300 else 1.1)
    table = stat_table({"FCOS": [base], "FCOS+RFA": [rfa]}, "stat_loss_gap", PAPER_STATS["table3"],
                       STAT_ITERATIONS, STAT_TOTAL_ITERATIONS)
    assert list(table.columns) == ["15k", "30k", "45k", "60k", "75k"]
    assert table.loc[("FCOS", "paper")].tolist() == [0.169, 0.156, 0.141, 0.150, 0.137]
    reduction = table.loc[("Reduction (%)", "ours")].tolist()
    assert reduction[:2] == [pytest.approx(10.0), pytest.approx(10.0)] and reduction[-1] == pytest.approx(-10.0)
    claim = reduction_holds(table)
    assert claim["holds"] is False and claim["points"] == 5 and 2 <= claim["reduced"] <= 3


def test_stat_table_without_runs_is_nan():
    table = stat_table({}, "stat_loss_sum", PAPER_STATS["table4"], STAT_ITERATIONS, STAT_TOTAL_ITERATIONS)
    assert math.isnan(table.loc[("FCOS", "ours")].iloc[0])
    assert reduction_holds(table)["holds"] is None


def test_learned_seeds_pairs_the_rows_on_seeds_where_both_learned():
    run = lambda seed, ap: {"key": f"k{seed}", "seed": seed, "metrics": {"AP": ap}}
    runs = {"FCOS": [run(0, 0.001), run(1, 0.55), run(2, 0.56)],
            "FCOS+RFA": [run(0, 0.60), run(1, 0.61), run(2, 0.049), run(3, 0.62)]}
    kept, notes = learned_seeds(TABLE3, runs)
    assert [r["seed"] for r in kept["FCOS"]] == [1] and [r["seed"] for r in kept["FCOS+RFA"]] == [1]
    assert notes == ["seed 3 is run for FCOS+RFA only", "FCOS did not learn on seed 0",
                     "FCOS+RFA did not learn on seed 2"]
    assert learned_seeds(TABLE3, {"FCOS": [run(0, 0.001)], "FCOS+RFA": [run(0, 0.6)]}) == (
        {"FCOS": [], "FCOS+RFA": []}, ["FCOS did not learn on seed 0"])  # no seed left: no runs
    claim = {"points": 5, "reduced": 5, "holds": True, "mean_reduction": 77.2968}
    assert reduction_text("stat_loss_gap", claim, notes[1:2], 1) == (
        "RFA lowers `stat_loss_gap` at 5 of 5 points (the paper: at all 5); our mean reduction is 77.3 % over 1 "
        "seed, so the claim **holds**. Left out: FCOS did not learn on seed 0.")
    none = {"points": 5, "reduced": None, "holds": None, "mean_reduction": None}
    assert reduction_text("stat_loss_sum", none, [], 0).startswith("not checked")
