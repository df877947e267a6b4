"""Report rendering on hand-built specs and run records, against hand-computed numbers."""

import json
import math

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from replicate.errors import ReplicateError  # noqa: E402
from replicate.experiments import claims, report  # noqa: E402
from replicate.experiments.spec import Claim, Row, TableSpec  # noqa: E402

SPEC = TableSpec(
    paper="mod", table="table9", title="Ablation", source="MOD, Table 9 (p. 1)", metrics=("AP", "AP50"),
    rows=(
        Row("base", "fcos", paper={"AP": 38.6, "AP50": 57.4}),
        Row("+RFA", "fcos", paper={"AP": 39.4, "AP50": 58.0}),
        Row("+APS", "fcos", paper={"AP": 40.0}),
        Row("R101", "fcos", paper={"AP": 42.0, "AP50": 61.0}, reproduce=False),
    ),
    claims=(
        Claim("RFA helps", better="+RFA", worse="base"),
        Claim("APS helps more", better="+APS", worse="+RFA", margin=0.6),
        Claim("R101 beats base", better="R101", worse="base", metric="AP50"),
        Claim("base beats RFA on AP50", better="base", worse="+RFA", metric="AP50"),
    ),
)


def record(label: str, seed: int, ap: float, ap50: float) -> dict:
    return {
        "key": f"{label}-s{seed}", "profile": "smoke", "seed": seed, "model": "fcos", "config": {},
        "metrics": {"AP": ap, "AP50": ap50, "AP75": 0.1},
        "loss_summary": {"loss": {"first": 2.0, "last": 1.0, "min": 1.0, "curve": [[0, 2.0], [10, 1.5], [20, 1.0]]}},
        "timings": {"train_imgs_per_s": 12.5, "train_seconds": 90.0, "inference_fps": 30.0},
        "provenance": {"commit": "0123456789abcdef", "dirty": False, "versions": {"torch": "2.14.1"},
                       "device": "cpu", "started": "2026-01-01T00:00:00", "finished": "2026-01-01T00:01:00"},
        "work_dir": "/tmp/x",
    }


RECORDS = {
    "base": [record("base", 0, 0.300, 0.500), record("base", 1, 0.320, 0.520)],  # AP 31.0 ± 1.414
    "+RFA": [record("+RFA", 0, 0.335, 0.505)],  # AP 33.5
}


def test_table_frame_means_scaling_deltas_and_status():
    frame = report.table_frame(SPEC, RECORDS, seeds=2)
    assert list(frame.index) == ["base", "+RFA", "+APS", "R101"]
    assert frame.at["base", "AP paper"] == 38.6
    assert frame.at["base", "AP ours"] == pytest.approx(31.0)
    assert frame.at["base", "AP Δ"] == pytest.approx(31.0 - 38.6)
    assert frame.at["base", "AP50 ours"] == pytest.approx(51.0)
    assert frame.at["+RFA", "AP ours"] == pytest.approx(33.5)
    assert frame.at["+RFA", "AP50 Δ"] == pytest.approx(50.5 - 58.0)
    assert math.isnan(frame.at["+APS", "AP ours"]) and math.isnan(frame.at["+APS", "AP Δ"])
    assert math.isnan(frame.at["+APS", "AP50 paper"])
    assert math.isnan(frame.at["R101", "AP ours"]) and frame.at["R101", "AP paper"] == 42.0
    assert list(frame["status"]) == ["2/2 runs", "1/2 runs", "missing", "cited only"]
    assert report.table_frame(SPEC, RECORDS).at["+RFA", "status"] == "1 run"


def test_formatted_frame_shows_spread_only_with_several_seeds():
    text = report.formatted_frame(SPEC, RECORDS)
    assert text.loc["base", ("AP", "ours")] == f"31.0 ± {math.sqrt(2):.1f}"
    assert ("AP", "Δ") not in text.columns  # COCO's level minus the benchmark's means nothing: not shown
    assert text.loc["+RFA", ("AP", "ours")] == "33.5"
    assert text.loc["+RFA", ("AP", "paper")] == "39.4"
    assert text.loc["+APS", ("AP", "ours")] == "—" and text.loc["+APS", ("AP50", "paper")] == "—"
    assert text.loc["R101", ("", "status")] == "cited only"


def test_effects_relative_to_the_reference_row():
    frame = report.effects_frame(SPEC, RECORDS)
    assert frame.loc["base (reference)", ("AP", "paper")] == "38.6"  # the reference shows its own numbers
    assert frame.loc["base (reference)", ("AP", "ours")] == "31.0"
    # +RFA is run on seed 0 only: the effect reads seed 0 of both rows (33.5 - 30.0, 50.5 - 50.0), marked
    assert frame.loc["+RFA", ("AP", "paper")] == "+0.8" and frame.loc["+RFA", ("AP", "ours")] == "+3.5 †"
    assert frame.loc["+RFA", ("AP50", "paper")] == "+0.6" and frame.loc["+RFA", ("AP50", "ours")] == "+0.5 †"
    assert frame.loc["+APS", ("AP", "ours")] == "—" and frame.loc["+APS", ("AP50", "paper")] == "—"
    paired = {"base": RECORDS["base"], "+RFA": [record("+RFA", 0, 0.335, 0.5), record("+RFA", 1, 0.345, 0.5)]}
    # per-seed differences 3.5 and 2.5 AP: mean 3.0, standard error 0.5
    assert report.effects_frame(SPEC, paired).loc["+RFA", ("AP", "ours")] == "+3.0 ± 0.5"


def test_claims_between_rows_that_did_not_learn_are_not_checked():
    low = {"base": [record("base", 0, 0.010, 0.02)], "+RFA": [record("+RFA", 0, 0.030, 0.05)]}
    rfa = {c.text: c for c in claims.claim_results(SPEC, low)}["RFA helps"]
    assert rfa.ours_margin == pytest.approx(2.0) and rfa.holds is None and rfa.learned is False
    assert rfa.verdict.startswith("not checked") and "did not learn" in rfa.verdict


def test_a_collapsed_seed_is_left_out_of_the_claim_and_counted_in_the_status():
    # base: seeds at 30.0 and 0.4 AP (a collapsed run): the row's mean, 15.2, would dominate the claim, so
    # "RFA helps" (base vs +RFA) is checked on seed 0 alone (33.5 - 30.0), and says which seed it left out
    collapsed = {"base": [record("base", 0, 0.300, 0.5), record("base", 1, 0.004, 0.01)],
                 "+RFA": [record("+RFA", 0, 0.335, 0.5), record("+RFA", 1, 0.340, 0.5)]}
    stats = claims.row_stats(SPEC, SPEC.row("base"), collapsed["base"])
    assert stats.mean["AP"] == pytest.approx(15.2) and stats.not_learned == 1
    rfa = {c.text: c for c in claims.claim_results(SPEC, collapsed)}["RFA helps"]
    assert rfa.learned is True and rfa.ours_margin == pytest.approx(3.5) and rfa.seeds == 1
    assert rfa.verdict == "holds (1 seed)" and rfa.ours_se is None
    assert rfa.left_out_text == "1 of 2 seeds left out: base did not learn on seed 1"
    assert "holds (1 seed); 1 of 2 seeds left out: base did not learn on seed 1" in report.render_claims(SPEC, collapsed)
    frame = report.table_frame(SPEC, collapsed, seeds=2)
    assert frame.at["base", "status"] == "2/2 runs, 1 did not learn" and frame.at["+RFA", "status"] == "2/2 runs"
    # the absolute numbers keep the collapsed run in the mean (the status says so); the effect leaves it out
    assert frame.at["base", "AP ours"] == pytest.approx(15.2)
    assert report.effects_frame(SPEC, collapsed).loc["+RFA", ("AP", "ours")] == f"+3.5 {report.LEFT_OUT_MARK}"
    unlearned = report.unlearned_frame([report.headline(SPEC, collapsed), report.headline(SPEC, RECORDS)])
    assert unlearned.to_dict("records") == [{"table": "mod:table9", "row": "base", "runs that did not learn": 1,
                                             "status": "2 runs, 1 did not learn"}]


def test_seedwise_text_gives_each_seed_s_difference_on_the_seeds_a_comparison_reads():
    runs = {"base": [record("base", s, ap, 0.5) for s, ap in ((0, 0.300), (1, 0.320), (2, 0.004))],
            "+RFA": [record("+RFA", s, ap, 0.5) for s, ap in ((0, 0.335), (1, 0.340), (2, 0.350))],
            "+APS": [record("+APS", s, ap, 0.5) for s, ap in ((1, 0.310), (0, 0.310))]}
    # seed 2 is left out (base did not learn); the rest in seed order, paper units
    assert report.seedwise_text(SPEC, runs, "+RFA", "base") == (
        "+RFA is above base at each of the 2 seeds run (AP difference seed 0: +3.5, seed 1: +2.0).")
    assert report.seedwise_text(SPEC, runs, "base", "+RFA") == (
        "base is below +RFA at each of the 2 seeds run (AP difference seed 0: -3.5, seed 1: -2.0).")
    assert report.seedwise_text(SPEC, runs, "+APS", "base") == (
        "+APS is above base at seed 0 and not above it at seed 1 (AP difference seed 0: +1.0, seed 1: -1.0).")
    one = {"base": runs["base"][:1], "+RFA": runs["+RFA"][:1]}
    assert report.seedwise_text(SPEC, one, "+RFA", "base").startswith("+RFA is above base at the one seed run")
    assert report.seedwise_text(SPEC, {"base": runs["base"][2:], "+RFA": runs["+RFA"][2:]}, "+RFA", "base") == (
        "+RFA and base: no seed yet at which both were run and learned.")


def test_claim_on_the_learned_seeds_keeps_its_paired_spread():
    # base collapses on seed 1 of three; seeds 0 and 2 give differences 3.0 and 3.2 AP: mean 3.1, standard
    # error sd([3.0, 3.2]) / sqrt(2) = 0.1 on 1 degree of freedom: 95 % interval 12.71 * 0.1 = 1.27 < 3.1: holds
    runs = {"base": [record("base", 0, 0.300, 0.5), record("base", 1, 0.004, 0.01), record("base", 2, 0.310, 0.5)],
            "+RFA": [record("+RFA", 0, 0.330, 0.5), record("+RFA", 1, 0.340, 0.5), record("+RFA", 2, 0.342, 0.5)]}
    rfa = {c.text: c for c in claims.claim_results(SPEC, runs)}["RFA helps"]
    assert rfa.ours_margin == pytest.approx(3.1) and rfa.ours_se == pytest.approx(0.1) and rfa.seeds == 2
    assert rfa.ours_df == 1 and rfa.noise_bound == pytest.approx(1.2706, abs=1e-4)
    assert rfa.verdict == "holds" and rfa.left_out == ("base did not learn on seed 1",)
    assert rfa.left_out_text == "1 of 3 seeds left out: base did not learn on seed 1"
    effect = claims.effects(SPEC, runs)["+RFA"]["AP"]
    assert effect.ours == pytest.approx(3.1) and effect.ours_se == pytest.approx(0.1) and effect.left_out == 1
    assert report.effects_frame(SPEC, runs).loc["+RFA", ("AP", "ours")] == f"+3.1 ± 0.1 {report.LEFT_OUT_MARK}"
    saved = report.headline(SPEC, runs)
    (claim,) = [c for c in saved["claims"] if c["text"] == "RFA helps"]
    assert claim["left_out"] == rfa.left_out_text and claim["seeds"] == 2
    assert report.claims_frame([saved]).set_index("claim").at["RFA helps", "verdict"] == (
        "holds (1 of 3 seeds left out: base did not learn on seed 1)")
    assert report.verdict_statement([saved])["mod"].endswith(  # RFA helps, and base beats RFA on AP50
        "; 2 of the checked claims on fewer seeds (a seed run for one of their rows only, or a run that did "
        "not learn); "
        "2 not checked (rows without runs, or runs that did not learn).")
    # both rows collapsed on the same seed: one note names both
    both = {"base": runs["base"], "+RFA": [record("+RFA", 0, 0.330, 0.5), record("+RFA", 1, 0.0, 0.0),
                                           record("+RFA", 2, 0.350, 0.5)]}
    rfa = {c.text: c for c in claims.claim_results(SPEC, both)}["RFA helps"]
    assert rfa.left_out == ("+RFA and base did not learn on seed 1",) and rfa.seeds == 2


def test_rows_on_different_seeds_are_compared_on_the_seeds_they_share():
    # base on seeds 0-2, +RFA on 0-1 (its seed 2 not run yet): differences 3.0 and 2.0 AP on seeds 0 and 1,
    # mean 2.5, standard error sd([3.0, 2.0]) / sqrt(2) = 0.5, not the unpaired 33.0 - 30.5 = 2.5 ± 1.1
    runs = {"base": [record("base", 0, 0.300, 0.5), record("base", 1, 0.320, 0.5), record("base", 2, 0.290, 0.5)],
            "+RFA": [record("+RFA", 0, 0.330, 0.5), record("+RFA", 1, 0.340, 0.5)]}
    rfa = {c.text: c for c in claims.claim_results(SPEC, runs)}["RFA helps"]
    assert rfa.ours_margin == pytest.approx(2.5) and rfa.ours_se == pytest.approx(0.5) and rfa.ours_df == 1
    assert rfa.seeds == 2 and rfa.left_out == ("seed 2 is run for base only",)
    assert rfa.left_out_text == "1 of 3 seeds left out: seed 2 is run for base only"
    assert rfa.verdict == "within seed noise"  # 12.71 * 0.5 = 6.4 > 2.5
    effect = claims.effects(SPEC, runs)["+RFA"]["AP"]
    assert effect.ours == pytest.approx(2.5) and effect.ours_se == pytest.approx(0.5) and effect.left_out == 1
    assert report.effects_frame(SPEC, runs).loc["+RFA", ("AP", "ours")] == "+2.5 ± 0.5 †"
    # the absolute numbers keep every run: base's mean is over its three seeds
    assert report.table_frame(SPEC, runs).at["base", "AP ours"] == pytest.approx(30.333, abs=1e-3)
    # seeds run for either row only are both named, in seed order; a collapse on a seed the other row
    # lacks costs nothing
    apart = {"base": [record("base", 0, 0.300, 0.5), record("base", 1, 0.004, 0.01)],
             "+RFA": [record("+RFA", 0, 0.335, 0.5), record("+RFA", 2, 0.340, 0.5)]}
    rfa = {c.text: c for c in claims.claim_results(SPEC, apart)}["RFA helps"]
    assert rfa.learned is True and rfa.verdict == "holds (1 seed)" and rfa.ours_margin == pytest.approx(3.5)
    assert rfa.left_out_text == "2 of 3 seeds left out: seed 1 is run for base only; seed 2 is run for +RFA only"


def test_a_collapse_on_rows_without_common_seeds_or_on_every_seed_leaves_the_claim_unchecked():
    unpaired = {"base": [record("base", 0, 0.300, 0.5), record("base", 1, 0.004, 0.01)],
                "+RFA": [record("+RFA", 2, 0.335, 0.5), record("+RFA", 3, 0.340, 0.5)]}
    rfa = {c.text: c for c in claims.claim_results(SPEC, unpaired)}["RFA helps"]
    assert rfa.learned is False and rfa.holds is None and rfa.verdict.startswith("not checked")
    assert rfa.left_out_text == ""
    every = {"base": [record("base", 0, 0.300, 0.5), record("base", 1, 0.004, 0.01)],
             "+RFA": [record("+RFA", 0, 0.002, 0.5), record("+RFA", 1, 0.340, 0.5)]}
    rfa = {c.text: c for c in claims.claim_results(SPEC, every)}["RFA helps"]
    assert rfa.learned is False and rfa.holds is None and "did not learn" in rfa.verdict
    assert claims.effects(SPEC, every)["+RFA"]["AP"].left_out == 0  # nothing left out: the effect reads all runs


def test_claims_hold_fail_or_stay_unknown():
    results = {c.text: c for c in claims.claim_results(SPEC, RECORDS)}
    rfa = results["RFA helps"]
    # +RFA has seed 0 only: the margins read seed 0 of both rows
    assert rfa.paper_margin == pytest.approx(0.8) and rfa.ours_margin == pytest.approx(3.5) and rfa.holds is True
    aps = results["APS helps more"]  # paper numbers of both rows: 40.0 - 39.4; ours: +APS missing
    assert aps.paper_margin == pytest.approx(0.6) and aps.ours_margin is None and aps.holds is None
    cited = results["R101 beats base"]  # base has no AP50 margin stated; R101 is cited only
    assert cited.paper_margin == pytest.approx(61.0 - 57.4) and cited.holds is None
    fails = results["base beats RFA on AP50"]
    assert fails.ours_margin == pytest.approx(50.0 - 50.5) and fails.holds is False
    reversed_records = {"base": RECORDS["base"], "+RFA": [record("+RFA", 0, 0.2, 0.6)]}
    assert {c.text: c.holds for c in claims.claim_results(SPEC, reversed_records)}["RFA helps"] is False


def test_undefined_coco_metrics_are_unknown_not_minus_100():
    """pycocotools reports -1 for an area range without ground truth: shown as unknown, claims on it open."""
    spec = TableSpec(paper="p", table="t", title="T", source="S", metrics=("AP", "APl"),
                     rows=(Row("a", "fcos", paper={"APl": 50.0}), Row("b", "fcos")),
                     claims=(Claim("a beats b on large", better="a", worse="b", metric="APl"),))
    records = {label: [{**record(label, 0, 0.3, 0.5), "metrics": {"AP": ap, "APl": -1.0}}]
               for label, ap in (("a", 0.3), ("b", 0.2))}
    frame = report.table_frame(spec, records)
    assert math.isnan(frame.at["a", "APl ours"]) and math.isnan(frame.at["a", "APl Δ"])
    assert frame.at["a", "AP ours"] == pytest.approx(30.0)
    assert report.formatted_frame(spec, records).loc["a", ("APl", "ours")] == "—"
    (claim,) = claims.claim_results(spec, records)
    assert claim.ours_margin is None and claim.holds is None


def test_claim_margin_falls_back_to_the_stated_margin():
    spec = TableSpec(paper="p", table="t", title="T", source="S", metrics=("AP",),
                     rows=(Row("a", "fcos"), Row("b", "fcos", paper={"AP": 1.0})),
                     claims=(Claim("a beats b", better="a", worse="b", margin=1.5),))
    (result,) = claims.claim_results(spec, {})
    assert result.paper_margin == 1.5 and result.ours_margin is None and result.holds is None


def test_unknown_rows_and_missing_metrics_are_errors():
    with pytest.raises(ReplicateError, match="does not have"):
        report.table_frame(SPEC, {"nope": []})
    broken = record("base", 0, 0.3, 0.5)
    del broken["metrics"]["AP50"]
    with pytest.raises(ReplicateError, match="base-s0.*AP50"):
        report.table_frame(SPEC, {"base": [broken]})


def test_render_table_and_claims_html():
    html = report.render_table(SPEC, RECORDS)
    assert html._repr_html_() == str(html)
    assert "<table" in html and "MOD, Table 9 (p. 1)" in html and "31.0 ± 1.4" in html  # the reference: absolute
    assert report._stacked("+4.1 ± 0.2 †") == '+4.1<br><span style="font-size: 0.85em">± 0.2 †</span>'
    assert report._stacked("+2.5 <x>") == "+2.5 &lt;x&gt;"
    assert "#cf222e" not in html  # no effect of the other sign than the paper's
    assert "white-space: nowrap" in html and "min-width: 8em" in html  # effects on one line, row labels wrap
    worse = {"base": RECORDS["base"], "+RFA": [record("+RFA", 0, 0.335, 0.490)]}
    assert "#cf222e" in report.render_table(SPEC, worse)  # AP50 49.0 - 50.0 against the paper's +0.6: red
    claims = report.render_claims(SPEC, RECORDS)
    assert claims.count("<li>") == 4 and claims.count("✓") == 1 and claims.count("—") >= 2
    assert "paper +0.8, ours +3.5 AP" in claims


def test_margin_text_never_shows_a_bare_zero_beside_a_verdict():
    assert report._signed_with_se(0.8, 0.3) == "+0.8 ± 0.3"
    assert report._signed_with_se(0.02, 0.004) == "+0.02 ± 0.00"
    assert report._signed_with_se(-0.04, None) == "-0.04"
    assert report._signed_with_se(0.0, 0.0) == "+0.0 ± 0.0"
    assert report._signed_with_se(None, None) == "—"


def test_render_table_lists_the_notes_of_reproduced_rows_only():
    assert "replicate-row-notes" not in report.render_table(SPEC, RECORDS)
    rows = (Row("base", "fcos", paper={"AP": 38.6}), Row("+RFA", "fcos", note="RFA on <the> first conv"),
            Row("R101", "fcos", paper={"AP": 42.0}, reproduce=False, note="cited"))
    spec = TableSpec(paper="mod", table="table9", title="t", source="s", metrics=("AP",), rows=rows)
    html = report.render_table(spec, RECORDS)
    assert "<li><em>+RFA</em>: RFA on &lt;the&gt; first conv</li>" in html
    assert "cited</li>" not in html and html.count("<li><em>") == 1


def test_headline_round_trips_through_the_results_folder(tmp_path):
    summary = report.headline(SPEC, RECORDS)
    assert summary["key"] == "mod:table9" and summary["metric"] == "AP"
    assert (summary["claims_holding"], summary["claims_checked"], summary["claims_total"]) == (1, 2, 4)
    assert summary["rows"][0] == {"label": "base", "paper": 38.6, "ours": 31.0, "status": "2 runs",
                                   "not_learned": 0}
    assert summary["rows"][2] == {"label": "+APS", "paper": 40.0, "ours": None, "status": "missing",
                                   "not_learned": 0}
    json.dumps(summary, allow_nan=False)
    path = report.save_headline(summary, tmp_path, "smoke")
    assert path == tmp_path / "headlines" / "smoke" / "mod.table9.json"
    assert report.load_headlines(tmp_path, "smoke") == [summary]
    assert report.load_headlines(tmp_path, "coco") == []
    frame = report.summary_frame([summary])
    assert frame.iloc[0].to_dict() == {"table": "mod:table9", "title": "Ablation", "metric": "AP",
                                       "claims holding": 1, "within seed noise": 0, "claims checked": 2,
                                       "claims": 4, "rows run": 2, "rows": 4}
    two = report.summary_frame([summary, {**summary, "key": "mod:table8", "claims_within_noise": 1}])
    assert report.summary_view(two).to_dict("records") == [
        {"table": "mod:table9", "title": "Ablation", "hold": 1, "within noise": 0, "do not hold": 1,
         "checked": "2 of 4", "rows run": "2 of 4"},
        {"table": "mod:table8", "title": "Ablation", "hold": 1, "within noise": 1, "do not hold": 0,
         "checked": "2 of 4", "rows run": "2 of 4"}]
    assert list(report.summary_view(report.summary_frame([summary, {**summary, "metric": "AP50"}])).columns)[2] == "metric"


def test_a_claim_within_seed_noise_is_neither_marked_nor_counted_as_holding():
    # a beats b by +1, +0, -0.5 points (paired): mean +0.17, se 0.44 -> within seed noise, though its sign
    # is the paper's; c beats b by +1.0, +1.1, +1.2 -> holds (se 0.058, 95 % interval 4.30 * 0.058 = 0.25)
    spec = _spec_ab(Claim("a beats b", "a", "b"), Claim("c beats b", "c", "b"))
    runs = {"a": _runs("a", [0.30, 0.30, 0.295]), "b": _runs("b", [0.29, 0.30, 0.30]),
            "c": _runs("c", [0.30, 0.311, 0.312])}
    assert [c.verdict for c in claims.claim_results(spec, runs)] == ["within seed noise", "holds"]
    html = report.render_claims(spec, runs)
    assert html.count("≈") == 1 and html.count("✓") == 1 and "✗" not in html
    summary = report.headline(spec, runs)
    assert (summary["claims_holding"], summary["claims_within_noise"], summary["claims_checked"]) == (1, 1, 2)
    row = report.summary_frame([summary]).iloc[0]
    assert (row["claims holding"], row["within seed noise"], row["claims checked"]) == (1, 1, 2)
    assert [report.verdict_mark(v) for v in ("holds (1 seed)", "does not hold (1 seed)", "reversed",
                                             "not checked")] == ["✓", "✗", "✗", "—"]


def test_figures_draw():
    fig = report.plot_effects(SPEC, RECORDS, metric="AP")
    fig.canvas.draw()
    ax = fig.axes[0]
    # the reproduced rows other than the reference, the paper's bar beside ours; +RFA has seed 0 only (†)
    assert [t.get_text() for t in ax.get_yticklabels()] == ["+RFA †", "+APS"] and len(ax.patches) == 4
    widths = [p.get_width() for p in ax.patches]
    assert widths[:2] == pytest.approx([0.8, 1.4]) and widths[2] == pytest.approx(3.5) and math.isnan(widths[3])
    assert ax.get_xlabel() == "AP relative to base"
    plt.close("all")
    with pytest.raises(ReplicateError, match="not a column"):
        report.plot_effects(SPEC, RECORDS, metric="APs")


def _spec_ab(*claims):
    return TableSpec(paper="p", table="t", title="T", source="S", metrics=("AP",),
                     rows=(Row("a", "fcos"), Row("b", "fcos"), Row("c", "fcos")), claims=tuple(claims))


def _runs(label, aps, seeds=None):
    return [{**record(label, s, ap, 0.5), "metrics": {"AP": ap}} for s, ap in zip(seeds or range(len(aps)), aps)]


def test_claim_verdicts_weigh_the_margin_against_its_spread_over_seeds():
    spec = _spec_ab(Claim("a beats b", "a", "b"), Claim("c beats b", "c", "b"), Claim("b beats c", "b", "c"))
    # paired by seed: differences 1, 2, 1 -> mean 1.333, sd 0.577, se 0.333 on 2 degrees of freedom: the 95 %
    # interval is t(0.975, 2) = 4.303 standard errors, 1.434 > 1.333: within seed noise (4 standard errors,
    # but three seeds cannot pin the spread down)
    runs = {"a": _runs("a", [0.30, 0.32, 0.31]), "b": _runs("b", [0.29, 0.30, 0.30]),
            "c": _runs("c", [0.29, 0.29, 0.31])}
    a_b, c_b, b_c = claims.claim_results(spec, runs)
    assert a_b.ours_margin == pytest.approx(4 / 3) and a_b.ours_se == pytest.approx(1 / 3) and a_b.seeds == 3
    assert a_b.ours_df == 2 and a_b.noise_bound == pytest.approx(4.3027 / 3, abs=1e-4)
    assert a_b.verdict == "within seed noise"
    # differences 1.0, 1.2, 1.1 -> mean 1.1, se 0.0577, interval 0.248: holds
    tight = {**runs, "a": _runs("a", [0.30, 0.312, 0.311])}
    assert claims.claim_results(spec, tight)[0].verdict == "holds"
    # c - b: differences 0, -1, 1 -> mean 0, se 0.577: within noise (and it does not hold: margin 0)
    assert c_b.ours_se == pytest.approx(math.sqrt(1 / 3)) and c_b.verdict == "within seed noise"
    assert b_c.verdict == "within seed noise"

    # unpaired (different seeds): se = sqrt(var_a / 2 + var_b / 2) = sqrt(2/2 + 2/2); Welch-Satterthwaite
    # df = (1 + 1)^2 / (1^2 / 1 + 1^2 / 1) = 2
    unpaired = {"a": _runs("a", [0.30, 0.32], [0, 1]), "b": _runs("b", [0.29, 0.31], [2, 3]), "c": []}
    result = claims.claim_results(spec, unpaired)[0]
    assert result.ours_margin == pytest.approx(1.0) and result.ours_se == pytest.approx(math.sqrt(2))
    assert result.ours_df == pytest.approx(2.0) and result.verdict == "within seed noise"
    # unequal spreads: var_a / 3 = 1/3 (values 30, 31, 32), var_b / 2 = 0 -> df = (1/3)^2 / ((1/3)^2 / 2) = 2
    welch = {"a": _runs("a", [0.30, 0.31, 0.32], [0, 1, 2]), "b": _runs("b", [0.29, 0.29], [3, 4]), "c": []}
    assert claims.claim_results(spec, welch)[0].ours_df == pytest.approx(2.0)

    # reversed beyond the noise: differences -2.0, -2.1 -> mean -2.05, se 0.05, interval 0.64
    reversed_runs = {"a": _runs("a", [0.30, 0.30]), "b": _runs("b", [0.32, 0.321]), "c": []}
    result = claims.claim_results(spec, reversed_runs)[0]
    assert result.ours_se == pytest.approx(0.05) and result.holds is False and result.verdict == "reversed"
    # two seeds whose differences happen to agree (-2, -3 -> se 0.5) no longer make a verdict: 12.7 se
    loose = {"a": _runs("a", [0.30, 0.30]), "b": _runs("b", [0.32, 0.33]), "c": []}
    assert claims.claim_results(spec, loose)[0].verdict == "within seed noise"
    assert claims.t_critical(1) == pytest.approx(12.7062, abs=1e-4)
    with pytest.raises(ReplicateError, match="degrees of freedom"):
        claims.t_critical(0)

    single = claims.claim_results(spec, {"a": _runs("a", [0.3]), "b": _runs("b", [0.2]), "c": []})
    assert [c.verdict for c in single] == ["holds (1 seed)", "not checked", "not checked"]
    assert single[0].ours_se is None


def test_verdict_statement_and_claims_frame_from_headlines(tmp_path):
    spec = _spec_ab(Claim("a beats b", "a", "b"), Claim("c beats b", "c", "b"), Claim("b beats a", "b", "a"))
    runs = {"a": _runs("a", [0.30, 0.312, 0.311]), "b": _runs("b", [0.29, 0.30, 0.30]), "c": []}
    report.save_headline(report.headline(spec, runs), tmp_path, "smoke")
    headlines = report.load_headlines(tmp_path, "smoke")
    assert report.verdict_statement(headlines) == {
        "p": "1 of 2 checked claims hold; 1 with a 95% confidence interval over seeds that excludes zero and 0 on "
             "a single seed "
             "(spread unknown); 0 within seed noise; 1 do not hold (1 reversed beyond the noise, 0 on a single "
             "seed); 1 not checked (rows without runs, or runs that did not learn)."}
    frame = report.claims_frame(headlines)
    assert list(frame["verdict"]) == ["holds", "not checked", "reversed"]
    assert frame.loc[0, "ours"] == "+1.1 ± 0.1" and frame.loc[1, "ours"] == "—" and frame.loc[0, "seeds"] == 3
    assert frame.loc[0, "95% interval"] == "±0.2" and frame.loc[1, "95% interval"] == "—"  # 4.303 * 0.0577
    html = report.render_claims(spec, runs)
    assert "+1.1 ± 0.1 AP, 95% interval ±0.2 over 3 seeds; holds)" in html and "not checked" in html


def test_verdict_statement_without_checked_claims():
    spec = _spec_ab(Claim("a beats b", "a", "b"))
    assert report.verdict_statement([report.headline(spec, {})]) == {
        "p": "none of its 1 claims checked yet (rows without runs, or runs that did not learn)."}
    assert report.verdict_statement([report.headline(_spec_ab(), {})]) == {}


def test_spread_of_a_metric_undefined_on_some_seeds_is_unknown_not_an_error():
    """APl is -1 (no large objects) on some runs: its spread is NaN; statistics.stdev would raise."""
    spec = TableSpec(paper="p", table="t", title="T", source="S", metrics=("AP", "APl"),
                     rows=(Row("a", "fcos"), Row("b", "fcos")), claims=(Claim("a beats b", "a", "b", metric="APl"),))
    runs = {label: [{**record(label, s, 0.3 + 0.01 * s, 0.5), "metrics": {"AP": 0.3 + 0.01 * s, "APl": -1.0}}
                    for s in range(2)] for label in ("a", "b")}
    stats = claims.row_stats(spec, spec.rows[0], runs["a"])
    assert stats.std["AP"] == pytest.approx(math.sqrt(0.5)) and math.isnan(stats.std["APl"])
    (claim,) = claims.claim_results(spec, runs)
    assert claim.holds is None and claim.ours_se is None


def test_resolvable_margin_and_seeds_to_resolve_hand_computed():
    # t(0.975, 1) = 12.706, t(0.975, 2) = 4.303, t(0.975, 4) = 2.776, t(0.975, 5) = 2.571, t(0.975, 6) = 2.447
    assert claims.resolvable_margin(1.0, 2) == pytest.approx(12.706 / math.sqrt(2), abs=1e-3)
    assert claims.resolvable_margin(1.0, 3) == pytest.approx(4.303 / math.sqrt(3), abs=1e-3)
    assert claims.resolvable_margin(2.0, 5) == pytest.approx(2 * 2.776 / math.sqrt(5), abs=1e-3)
    assert claims.seeds_to_resolve(3.0, 1.0) == 3  # 2.48 < 3 at three seeds, 8.98 at two
    assert claims.seeds_to_resolve(-1.0, 1.0) == 7  # 1.05 at six seeds, 0.92 at seven; the sign is irrelevant
    assert claims.seeds_to_resolve(0.1, 1.0) is None and claims.seeds_to_resolve(0.0, 1.0) is None
    with pytest.raises(ReplicateError, match="2 seeds"):
        claims.resolvable_margin(1.0, 1)


def test_seeds_needed_for_a_claim_within_seed_noise():
    # differences 3.0 and 2.0 AP on seeds 0 and 1: sd 0.707, so the paper's +0.8 needs six seeds
    # (5 seeds resolve 2.776 * 0.707 / sqrt(5) = 0.88, six 2.571 * 0.707 / sqrt(6) = 0.74)
    runs = {"base": [record("base", 0, 0.300, 0.5), record("base", 1, 0.320, 0.5)],
            "+RFA": [record("+RFA", 0, 0.330, 0.5), record("+RFA", 1, 0.340, 0.5)]}
    rfa = {c.text: c for c in claims.claim_results(SPEC, runs)}["RFA helps"]
    assert rfa.paired and rfa.difference_sd == pytest.approx(math.sqrt(0.5))
    assert rfa.verdict == "within seed noise" and rfa.seeds_for_paper_margin == 6
    # (the AP50 claim ties exactly on both seeds, 50.0 - 50.0: a zero spread, that two seeds would resolve)
    frame = report.seeds_needed_frame([report.headline(SPEC, runs)])
    assert frame["claim"].tolist() == ["base beats RFA on AP50", "RFA helps"]  # fewest seeds needed first
    assert frame.iloc[[1]].to_dict("records") == [{
        "table": "mod:table9", "claim": "RFA helps", "paper": "+0.8", "ours": "+2.5 ± 0.5", "seeds": 2,
        "sd": "0.71", "±3 seeds": "±1.8", "±5 seeds": "±0.9", "seeds needed": 6}]
    assert report.seeds_statement([report.headline(SPEC, runs)]).startswith(
        "Of the 2 claims within seed noise with a paired spread, 1 already have the seeds to resolve a margin of "
        "the paper's size, and ours is smaller; for the others a margin of "
        "the paper's size would be resolved at our spread by 3 seeds for 0, by 5 for 0 and by 10 for 1; 0 would "
        "need more than 50 seeds")
    # an unpaired margin (rows on no common seed) has no per-seed differences to size more seeds by
    apart = {"base": runs["base"], "+RFA": [record("+RFA", 2, 0.330, 0.5), record("+RFA", 3, 0.340, 0.5)]}
    rfa = {c.text: c for c in claims.claim_results(SPEC, apart)}["RFA helps"]
    assert not rfa.paired and rfa.difference_sd is None and rfa.seeds_for_paper_margin is None
    assert report.seeds_needed_frame([report.headline(SPEC, apart)]).empty
    # a claim without a paper margin has no size to aim at: "—", last, and not counted as beyond 50 seeds
    saved = report.headline(SPEC, runs)
    saved["claims"][0] = dict(saved["claims"][0], paper_margin=None, seeds_for_paper_margin=None)
    frame = report.seeds_needed_frame([saved])
    assert frame["claim"].tolist() == ["base beats RFA on AP50", "RFA helps"] and frame.at[1, "seeds needed"] == "—"
    assert "; 0 would need more than 50 seeds" in report.seeds_statement([saved])


def test_claims_by_table_lists_each_table_s_claims_as_its_page_does():
    saved = [report.headline(SPEC, RECORDS)]
    html = str(report.render_claims_by_table(saved))
    assert html.startswith("<p><strong>mod:table9</strong>: Ablation</p><ul")
    page = str(report.render_claims(SPEC, RECORDS))  # the table page's list, from the same claim dicts
    assert page[page.index("<li>"):page.rindex("</ul>")] in html
    assert html.count("<li>") == 4 and "paper +0.8, ours +3.5 AP" in html
    assert "No table draws claims" in str(report.render_claims_by_table([]))
