"""Paper number beside ours: the tables, claims, figures and summaries the book's notebooks show.

Every function takes a :class:`~replicate.experiments.spec.TableSpec` and ``records_by_row`` (row label ->
the run records of that row, one per seed, as the results store gives them; a record's ``metrics`` are
fractions) and puts our numbers on the paper's scale (``spec.paper_scale``, 100 for AP printed in
percent). Means are over seeds; the spread is the sample standard deviation (``ddof=1``), shown only
with more than one seed. Rows the paper's table cites without our reproducing them
(``Row.reproduce=False``) show the paper's number only.

The notebooks stay thin: a table notebook calls :func:`render_table`, draws :func:`plot_effects`
and saves :func:`headline` with :func:`save_headline`; the summary page reads them back with
:func:`load_headlines`, :func:`summary_frame` and :func:`summary_view` (plain frames are shown with
:func:`~.rendering.render_frame`; the provenance appendix is :mod:`.appendix`). A table notebook's body,
after its ``parameters`` cell (``profile``, ``executor``, ``seeds``, ``results_dir``, ``data_root``, ``run_missing``)::

    spec = REGISTRY["mod"]["table3"]
    runs = ensure_runs(spec, profile, executor, seeds, results_dir=results_dir, data_root=data_root or None,
                       run_missing=run_missing)
    report.save_headline(report.headline(spec, runs), results_dir, profile)
    report.render_table(spec, runs, seeds)
"""

from __future__ import annotations

import html
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from ..errors import ReplicateError
from ..io import atomic_write_json, read_json
from .claims import (CONFIDENCE, SEEDS_LIMIT, ClaimResult, RecordsByRow, RowStats, _all_stats,
                     claim_results, compared_runs, effects, main_metric, reference_row, resolvable_margin)
from .rendering import HtmlFragment, html_table
from .spec import Row, TableSpec

MISSING = "missing"
CITED_ONLY = "cited only"
HEADLINES = "headlines"


def _status(row: Row, stats: RowStats | None, seeds: int | None) -> str:
    if not row.reproduce:
        return CITED_ONLY
    if stats is None:
        return MISSING
    text = f"{stats.n}/{seeds} runs" if seeds else f"{stats.n} run{'s' if stats.n != 1 else ''}"
    return text + (f", {stats.not_learned} did not learn" if stats.not_learned else "")


def table_frame(spec: TableSpec, records_by_row: RecordsByRow, seeds: int | None = None) -> pd.DataFrame:
    """One row per table row: ``"<metric> paper"``, ``"<metric> ours"``, ``"<metric> Δ"`` and ``status``.

    Numbers are on the paper's scale; ``ours`` is the mean over seeds and ``Δ = ours - paper``; what is
    not known is NaN. ``status`` is ``"n runs"`` (``"n/seeds runs"`` when ``seeds`` is given; ``", k did not
    learn"`` added when k of them are below :data:`~.claims.LEARNED_FLOOR`), ``"missing"`` or ``"cited only"``.
    """
    stats = _all_stats(spec, records_by_row)
    data = []
    for row in spec.rows:
        s = stats[row.label]
        values: dict[str, Any] = {}
        for metric in spec.metrics:
            paper = float(row.paper.get(metric, math.nan))
            ours = s.mean[metric] if s else math.nan
            values.update({f"{metric} paper": paper, f"{metric} ours": ours, f"{metric} Δ": ours - paper})
        values["status"] = _status(row, s, seeds)
        data.append(values)
    return pd.DataFrame(data, index=pd.Index([r.label for r in spec.rows], name="row"))


def _fmt(value: float | None, signed: bool = False) -> str:
    if value is None or math.isnan(value):
        return "—"
    return f"{value:+.1f}" if signed else f"{value:.1f}"


def formatted_frame(spec: TableSpec, records_by_row: RecordsByRow, seeds: int | None = None) -> pd.DataFrame:
    """The absolute numbers as text to one decimal: the paper's and ours (``mean ± std`` with more than one
    seed). Columns are a two-level index (metric, ``paper`` | ``ours``) plus ``status``. No difference column:
    the paper's COCO level minus ours on the benchmark means nothing (:func:`effects_frame` compares)."""
    stats = _all_stats(spec, records_by_row)
    frame = table_frame(spec, records_by_row, seeds)
    columns = [(m, k) for m in spec.metrics for k in ("paper", "ours")] + [("", "status")]
    rows = []
    for row in spec.rows:
        s = stats[row.label]
        cells = []
        for metric in spec.metrics:
            ours = _fmt(frame.at[row.label, f"{metric} ours"])
            if s is not None and s.n > 1:
                ours = f"{ours} ± {s.std[metric]:.1f}"
            cells += [_fmt(frame.at[row.label, f"{metric} paper"]), ours]
        rows.append(cells + [frame.at[row.label, "status"]])
    return pd.DataFrame(rows, index=frame.index, columns=pd.MultiIndex.from_tuples(columns))


def styled_table(spec: TableSpec, records_by_row: RecordsByRow, seeds: int | None = None):
    """:func:`formatted_frame` as a pandas Styler."""
    frame = formatted_frame(spec, records_by_row, seeds)
    return (frame.style.set_caption(html.escape(f"{spec.title} — {spec.source}"))
            .set_table_styles([{"selector": "td, th", "props": "padding: 0.15em 0.6em; text-align: right"}])
            .set_table_attributes('class="replicate-table"'))


def verdict_mark(verdict: str) -> str:
    """The sign a claim's verdict is shown with: ✓ holds, ✗ reversed or does not hold, ≈ within seed noise
    (our margin's sign alone is not evidence), — not checked."""
    if verdict.startswith("holds"):
        return "✓"
    if verdict.startswith(("reversed", "does not hold")):
        return "✗"
    return "≈" if verdict == "within seed noise" else "—"


def _claim_item(c: Mapping[str, Any]) -> str:
    """One claim (a :func:`claim_dicts` entry) as an HTML list item marked by its verdict."""
    detail = f"paper {_fmt(c['paper_margin'], signed=True)}, ours {_signed_with_se(c['ours_margin'], c['ours_se'])} "
    detail += c["metric"]
    if c.get("ours_interval") is not None:
        detail += f", {CONFIDENCE:.0%} interval {_interval_text(c['ours_interval'])} over {c['seeds']} seeds"
    left_out = f"; {c['left_out']}" if c.get("left_out") else ""
    return (f"<li>{verdict_mark(c['verdict'])} {html.escape(c['text'])} "
            f"<small>({html.escape(c['better'])} vs {html.escape(c['worse'])}: {detail}; "
            f"{html.escape(c['verdict'])}{html.escape(left_out)})</small></li>")


def claim_dicts(results: Sequence[ClaimResult]) -> list[dict[str, Any]]:
    """Claim results as the JSON-able dicts a table's headline keeps (margins rounded to 4 decimals)."""
    return [{"text": c.text, "metric": c.metric, "better": c.better, "worse": c.worse,
             "paper_margin": _json_number(c.paper_margin), "ours_margin": _json_number(c.ours_margin),
             "ours_se": _json_number(c.ours_se), "ours_interval": _json_number(c.noise_bound),
             "seeds": c.seeds, "verdict": c.verdict, "left_out": c.left_out_text,
             "difference_sd": _json_number(c.difference_sd), "seeds_for_paper_margin": c.seeds_for_paper_margin}
            for c in results]


def render_claims(spec: TableSpec, records_by_row: RecordsByRow) -> HtmlFragment:
    """The table's claims as an HTML list, each marked by its verdict (:func:`verdict_mark`)."""
    items = [_claim_item(c) for c in claim_dicts(claim_results(spec, records_by_row))]
    if not items:
        return HtmlFragment("<p>The paper draws no claims from this table.</p>")
    return HtmlFragment('<ul class="replicate-claims">' + "".join(items) + "</ul>")


def render_claims_by_table(headlines: Sequence[Mapping[str, Any]]) -> HtmlFragment:
    """Every claim of the saved headlines as the table pages list them, under one heading per table."""
    parts = []
    for h in headlines:
        if h.get("claims"):
            parts.append(f"<p><strong>{html.escape(h['key'])}</strong>: {html.escape(h['title'])}</p>"
                         '<ul class="replicate-claims">' + "".join(_claim_item(c) for c in h["claims"]) + "</ul>")
    return HtmlFragment("".join(parts) or "<p>No table draws claims.</p>")


def _interval_text(bound: float | None) -> str:
    """Half-width of a margin's confidence interval, ``±1.3`` (two decimals below 0.05); ``—`` when unknown."""
    if bound is None or math.isnan(bound):
        return "—"
    return f"±{bound:.{2 if bound < 0.05 else 1}f}"


def _signed_with_se(margin: float | None, se: float | None) -> str:
    """``+0.8 ± 0.3``; a margin that one decimal would show as 0.0 gets two (``+0.02 ± 0.00``), so that a
    verdict never stands beside a bare "+0.0"."""
    if margin is None or math.isnan(margin):
        return "—"
    digits = 2 if margin != 0 and abs(margin) < 0.05 else 1
    text = f"{margin:+.{digits}f}"
    return f"{text} ± {se:.{digits}f}" if se is not None else text


LEFT_OUT_MARK = "†"  # an effect over fewer seeds: one run for one row only, or a run did not learn
MAIN_COLUMNS = 6  # metrics in a table's main (effects) view; the others go to its collapsed details


def effects_frame(spec: TableSpec, records_by_row: RecordsByRow, seeds: int | None = None,
                  metrics: Sequence[str] | None = None) -> pd.DataFrame:
    """Each row's effect relative to the reference row (:func:`~.claims.reference_row`): the paper's and
    ours ± its standard error over seeds, as text; the reference row shows its absolute numbers instead.
    Ours ends in :data:`LEFT_OUT_MARK` when seeds were left out: run for the row or the reference only, or a
    run of either did not learn (the effect is then over the seeds both were run on and learned). Columns: (metric, ``paper`` |
    ``ours``) plus ``status``."""
    metrics = list(metrics or spec.metrics)
    ref = reference_row(spec)
    eff = effects(spec, records_by_row)
    stats = _all_stats(spec, records_by_row)
    rows = []
    for row in spec.rows:
        cells = []
        for metric in metrics:
            if row.label == ref.label:
                s = stats[row.label]
                cells += [_fmt(float(row.paper.get(metric, math.nan))), _fmt(s.mean[metric] if s else math.nan)]
                continue
            e = eff[row.label][metric]
            ours = _fmt(e.ours, signed=True)
            if e.ours_se is not None and ours != "—":
                ours = f"{ours} ± {e.ours_se:.1f}"
            if e.left_out and ours != "—":
                ours = f"{ours} {LEFT_OUT_MARK}"
            cells += [_fmt(e.paper, signed=True), ours]
        rows.append(cells + [_status(row, stats[row.label], seeds)])
    columns = [(m, k) for m in metrics for k in ("paper", "ours")] + [("", "status")]
    index = pd.Index([f"{r.label} (reference)" if r.label == ref.label else r.label for r in spec.rows], name="row")
    return pd.DataFrame(rows, index=index, columns=pd.MultiIndex.from_tuples(columns))


def _agreement_style(frame: pd.DataFrame) -> pd.DataFrame:
    """CSS per cell: our effect green when its sign is the paper's, red when opposite."""
    styles = pd.DataFrame("", index=frame.index, columns=frame.columns)
    for metric in {m for m, k in frame.columns if k == "ours"}:
        for i in frame.index:
            paper, ours = frame.at[i, (metric, "paper")], frame.at[i, (metric, "ours")]
            if "(reference)" in str(i) or "—" in (paper, ours):
                continue
            p, o = float(paper), float(ours.split(" ")[0])
            if p == 0 or o == 0:
                continue
            colour = "#1a7f37" if (p > 0) == (o > 0) else "#cf222e"
            styles.at[i, (metric, "ours")] = f"color: {colour}; font-weight: 600"
    return styles


# an effect table's cells do not wrap (ours is stacked by _stacked instead); its row labels wrap, at least
# 8em wide
_EFFECT_CELLS = [{"selector": "td", "props": "white-space: nowrap"},
                 {"selector": "th.row_heading", "props": "text-align: left; min-width: 8em"}]


def _stacked(text: str) -> str:
    """An effect cell as narrow HTML: ``+4.1 ± 0.2 †`` as ``+4.1`` over a smaller ``± 0.2 †``."""
    mean, sep, rest = str(text).partition(" ± ")
    if not sep:
        return html.escape(str(text))
    return f'{html.escape(mean)}<br><span style="font-size: 0.85em">± {html.escape(rest)}</span>'


def row_notes(spec: TableSpec) -> str:
    """What each reproduced row is, where its spec says (``Row.note``), as an HTML list; "" when none does.
    Cited rows are left out: their status says what they are."""
    items = [f"<li><em>{html.escape(r.label)}</em>: {html.escape(r.note)}</li>"
             for r in spec.rows if r.note and r.reproduce]
    if not items:
        return ""
    return f'<ul class="replicate-row-notes" style="font-size: 0.85em">{"".join(items)}</ul>'


def render_table(spec: TableSpec, records_by_row: RecordsByRow, seeds: int | None = None) -> HtmlFragment:
    """The table as the proxy benchmark supports it, as HTML: each row's effect relative to the reference
    row (paper's beside ours ± SE over seeds) on the main metrics, then, collapsed, the absolute numbers of
    every metric (the paper's COCO numbers beside ours on this benchmark), then the claims."""
    main = list(spec.metrics[:MAIN_COLUMNS])
    ref = reference_row(spec)
    effect = effects_frame(spec, records_by_row, seeds, main)
    ours = [c for c in effect.columns if c[1] == "ours"]
    table = html_table(effect.style.apply(_agreement_style, axis=None)
                        .format(escape="html").format(_stacked, subset=ours)
                        .set_caption(html.escape(f"{spec.title} ({spec.source})"))
                        .set_table_styles(_EFFECT_CELLS, overwrite=False))
    legend = (f"<p><small>Effects relative to <em>{html.escape(ref.label)}</em> (its row: absolute numbers), in "
              "the paper's units; ours is the mean over seeds ± its standard error, paired by seed. "
              f"{LEFT_OUT_MARK}: on fewer seeds (a seed run for one of the two rows only, or a run that did not "
              "learn). Green: our effect has the paper's sign; red: the opposite sign. Absolute levels are not "
              "comparable: the paper's are COCO's, ours the benchmark's.</small></p>")
    absolute = html_table(styled_table(spec, records_by_row, seeds).set_caption(""))
    details = ("<details><summary>Absolute numbers, every metric (paper: COCO; ours: this benchmark)</summary>"
               + absolute + "</details>")
    note = f"<p><em>{html.escape(spec.note)}</em></p>" if spec.note else ""
    return HtmlFragment(table + legend + row_notes(spec) + details + note + "<p><strong>Claims</strong></p>"
                        + render_claims(spec, records_by_row))


def seedwise_text(spec: TableSpec, records_by_row: RecordsByRow, row: str, reference: str, metric: str = "AP") -> str:
    """Where ``row`` stands against ``reference`` seed by seed, on the seeds a comparison of the two reads
    (:func:`~.claims.compared_runs`: both run, both learned), as one sentence with each seed's difference
    in ``metric`` (paper units). For a page whose argument turns on the sign at every seed, not on the mean."""
    ra, rb, _ = compared_runs(spec, row, reference, records_by_row)
    by_seed = {r["seed"]: r for r in rb}
    diffs = sorted((r["seed"], spec.paper_scale * ((r["metrics"] or {}).get(metric, math.nan)
                                                   - (by_seed[r["seed"]]["metrics"] or {}).get(metric, math.nan)))
                   for r in ra if r["seed"] in by_seed)
    diffs = [(s, d) for s, d in diffs if not math.isnan(d)]
    if not diffs:
        return f"{row} and {reference}: no seed yet at which both were run and learned."
    each = ", ".join(f"seed {s}: {d:+.1f}" for s, d in diffs)
    above, below = [s for s, d in diffs if d > 0], [s for s, d in diffs if d < 0]
    every = "at the one seed run" if len(diffs) == 1 else f"at each of the {len(diffs)} seeds run"
    if len(above) == len(diffs):
        where = f"above {reference} {every}"
    elif len(below) == len(diffs):
        where = f"below {reference} {every}"
    else:
        where = (f"above {reference} at seed{'s' if len(above) != 1 else ''} {_seeds(above)} and not above it at "
                 f"seed{'s' if len(diffs) - len(above) != 1 else ''} {_seeds([s for s, _ in diffs if s not in above])}")
    return f"{row} is {where} ({metric} difference {each})."


def _seeds(seeds: Sequence[int]) -> str:
    return ", ".join(map(str, seeds)) or "none"


def _json_number(value: float | None) -> float | None:
    return None if value is None or math.isnan(value) else round(float(value), 4)


def headline(spec: TableSpec, records_by_row: RecordsByRow) -> dict[str, Any]:
    """A small JSON-able summary of one table for the book's summary page."""
    metric = main_metric(spec)
    frame = table_frame(spec, records_by_row)
    claims = claim_results(spec, records_by_row)
    stats = _all_stats(spec, records_by_row)
    return {
        "key": spec.key,
        "paper": spec.paper,
        "table": spec.table,
        "title": spec.title,
        "source": spec.source,
        "metric": metric,
        "claims_holding": sum(c.verdict.startswith("holds") for c in claims),
        "claims_within_noise": sum(c.verdict == "within seed noise" for c in claims),
        "claims_checked": sum(not c.verdict.startswith("not checked") for c in claims),
        "claims_total": len(claims),
        "claims": claim_dicts(claims),
        "rows": [{"label": label, "paper": _json_number(frame.at[label, f"{metric} paper"]),
                  "ours": _json_number(frame.at[label, f"{metric} ours"]), "status": frame.at[label, "status"],
                  "not_learned": stats[label].not_learned if stats[label] else 0}
                 for label in frame.index],
    }


def headline_path(results_dir: str | Path, profile: str, key: str) -> Path:
    """``<results_dir>/headlines/<profile>/<paper>.<table>.json`` for table key ``paper:table``."""
    return Path(results_dir) / HEADLINES / profile / f"{key.replace(':', '.')}.json"


def save_headline(summary: Mapping[str, Any], results_dir: str | Path, profile: str) -> Path:
    """Write a :func:`headline` atomically where :func:`load_headlines` finds it; returns the file."""
    return atomic_write_json(headline_path(results_dir, profile, summary["key"]), dict(summary), indent=1)


def load_headlines(results_dir: str | Path, profile: str) -> list[dict[str, Any]]:
    """Every saved headline of ``profile``, sorted by table key (none yet: an empty list)."""
    folder = Path(results_dir) / HEADLINES / profile
    found = [read_json(p, what="table headline") for p in sorted(folder.glob("*.json"))]
    return sorted(found, key=lambda h: h["key"])


def summary_frame(headlines: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """One row per table: its title, the claims that hold on our runs (by their verdicts: a claim within seed
    noise is counted apart), and the rows we have run."""
    columns = ["table", "title", "metric", "claims holding", "within seed noise", "claims checked", "claims",
               "rows run", "rows"]
    data = []
    for h in headlines:
        rows = h["rows"]
        data.append([h["key"], h["title"], h["metric"], h["claims_holding"], h.get("claims_within_noise", 0),
                     h["claims_checked"], h["claims_total"], sum(r["ours"] is not None for r in rows), len(rows)])
    return pd.DataFrame(data, columns=columns)


def summary_view(summary: pd.DataFrame) -> pd.DataFrame:
    """:func:`summary_frame` as the summary page shows it, narrow enough for the page: per table the checked
    claims that hold, are within seed noise and do not hold (reversed or not holding), the checked claims
    "of" all, the rows run "of" all; the metric only when the tables do not all share one."""
    view = summary[["table", "title"]].copy()
    if summary["metric"].nunique() > 1:
        view["metric"] = summary["metric"]
    view["hold"] = summary["claims holding"]
    view["within noise"] = summary["within seed noise"]
    view["do not hold"] = summary["claims checked"] - summary["claims holding"] - summary["within seed noise"]
    view["checked"] = [f"{a} of {b}" for a, b in zip(summary["claims checked"], summary["claims"])]
    view["rows run"] = [f"{a} of {b}" for a, b in zip(summary["rows run"], summary["rows"])]
    return view


def unlearned_frame(headlines: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The table rows with runs that did not learn (main metric below :data:`~.claims.LEARNED_FLOOR`), one
    line each: their claims are not checked, and a reader should see why."""
    columns = ["table", "row", "runs that did not learn", "status"]
    data = [[h["key"], r["label"], r["not_learned"], r["status"]]
            for h in headlines for r in h["rows"] if r.get("not_learned")]
    return pd.DataFrame(data, columns=columns)


def claims_frame(headlines: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """Every claim of the saved headlines, one row each: where it comes from, the paper's margin, ours
    (± its standard error over seeds when known), the half-width of its confidence interval, the number of
    seeds and the verdict."""
    columns = ["paper", "table", "claim", "metric", "paper margin", "ours", f"{CONFIDENCE:.0%} interval", "seeds",
               "verdict"]
    data = []
    for h in headlines:
        for c in h.get("claims", ()):
            ours = _signed_with_se(c["ours_margin"], c["ours_se"])
            verdict = c["verdict"] + (f" ({c['left_out']})" if c.get("left_out") else "")
            data.append([h["paper"], h["table"], c["text"], c["metric"], _fmt(c["paper_margin"], signed=True),
                         ours, _interval_text(c.get("ours_interval")), c["seeds"], verdict])
    return pd.DataFrame(data, columns=columns)


def seeds_needed_frame(headlines: Sequence[Mapping[str, Any]]) -> pd.DataFrame:
    """The claims within seed noise that have a paired spread, one row each, fewest seeds needed first: the
    paper's margin and ours, the standard deviation ``sd`` of the per-seed differences, the half-width of
    the interval 3 and 5 seeds would have at that spread (a margin wider than it is resolved), and how many
    seeds would resolve a margin of the paper's size (``> 50``: more than :data:`~.claims.SEEDS_LIMIT`; ``—``:
    the paper states no margin)."""
    columns = ["table", "claim", "paper", "ours", "seeds", "sd", "±3 seeds", "±5 seeds", "seeds needed"]
    data = []
    for h in headlines:
        for c in h.get("claims", ()):
            sd = c.get("difference_sd")
            if c["verdict"] != "within seed noise" or sd is None:
                continue
            need = c.get("seeds_for_paper_margin")
            if need is None:
                need = "—" if c["paper_margin"] is None else f"> {SEEDS_LIMIT}"
            data.append([h["key"], c["text"], _fmt(c["paper_margin"], signed=True),
                         _signed_with_se(c["ours_margin"], c["ours_se"]), c["seeds"], f"{sd:.2f}",
                         _interval_text(resolvable_margin(sd, 3)), _interval_text(resolvable_margin(sd, 5)), need])
    frame = pd.DataFrame(data, columns=columns)
    order = frame["seeds needed"].map(lambda v: v if isinstance(v, int) else SEEDS_LIMIT + (2 if v == "—" else 1))
    return frame.iloc[order.argsort(kind="stable")].reset_index(drop=True)


def seeds_statement(headlines: Sequence[Mapping[str, Any]]) -> str:
    """One sentence on what more seeds could settle among the claims within seed noise. A claim whose seeds
    already suffice to resolve a margin of the paper's size has a smaller margin on our runs than the paper's
    (it is within the noise, the paper's would not be)."""
    frame = seeds_needed_frame(headlines)
    if frame.empty:
        return "No claim is within seed noise with a paired spread."
    need = [(v, have) for v, have in zip(frame["seeds needed"], frame["seeds"]) if isinstance(v, int)]
    already = sum(v <= have for v, have in need)
    later = [v for v, have in need if v > have]
    counts = [sum(v <= n for v in later) for n in (3, 5, 10)]
    beyond = sum(v == f"> {SEEDS_LIMIT}" for v in frame["seeds needed"])
    return (f"Of the {len(frame)} claims within seed noise with a paired spread, {already} already have the seeds "
            "to resolve a margin of the paper's size, and ours is smaller; "
            f"for the others a margin of the paper's size would be resolved at our spread by 3 seeds for "
            f"{counts[0]}, by 5 for {counts[1]} and by 10 for {counts[2]}; {beyond} would need "
            f"more than {SEEDS_LIMIT} seeds (the paper's margin is small against the spread of our per-seed "
            "differences).")


def verdict_statement(headlines: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """Paper -> one plain sentence on which of its claims reproduced on our runs and how firmly."""
    by_paper: dict[str, list[Mapping[str, Any]]] = {}
    for h in headlines:
        by_paper.setdefault(h["paper"], []).extend(h.get("claims", ()))
    out = {}
    for paper, claims in by_paper.items():
        verdicts = [c["verdict"] for c in claims]
        checked = [v for v in verdicts if not v.startswith("not checked")]
        if not checked:
            if verdicts:
                out[paper] = (f"none of its {len(verdicts)} claims checked yet (rows without runs, or runs that did "
                              "not learn).")
            continue
        firm = verdicts.count("holds")
        single_holds = sum(v.startswith("holds (") for v in verdicts)
        noise = verdicts.count("within seed noise")
        reversed_ = verdicts.count("reversed")
        single_fails = sum(v.startswith("does not hold (") for v in verdicts)
        parts = [f"{firm + single_holds} of {len(checked)} checked claims hold",
                 f"{firm} with a {CONFIDENCE:.0%} confidence interval over seeds that excludes zero and "
                 f"{single_holds} on a single seed (spread unknown)",
                 f"{noise} within seed noise",
                 f"{reversed_ + single_fails} do not hold ({reversed_} reversed beyond the noise, {single_fails} "
                 f"on a single seed)"]
        fewer = sum(bool(c.get("left_out")) for c in claims)
        if fewer:
            parts.append(f"{fewer} of the checked claims on fewer seeds (a seed run for one of their rows only, or "
                         "a run that did not learn)")
        unchecked = len(verdicts) - len(checked)
        text = "; ".join(parts)
        out[paper] = text + (f"; {unchecked} not checked (rows without runs, or runs that did not learn)."
                             if unchecked else ".")
    return out


def plot_effects(spec: TableSpec, records_by_row: RecordsByRow, metric: str = "AP"):
    """Each reproduced row's effect on ``metric`` relative to the reference row (:func:`~.claims.effects`,
    what the table's main view shows), as horizontal bars: the paper's beside ours, with ours' standard
    error over seeds as its error bar. A row whose effect is over fewer seeds than it has (a seed run for one
    of the two rows only, or a run that did not learn) carries :data:`LEFT_OUT_MARK`. Absolute levels are not
    drawn: the paper's are COCO's, ours the benchmark's."""
    import matplotlib.pyplot as plt

    if metric not in spec.metrics:
        raise ReplicateError(f"{spec.key}: metric {metric!r} is not a column of the table ({list(spec.metrics)})")
    ref = reference_row(spec)
    eff = effects(spec, records_by_row)
    rows = [r for r in spec.rows if r.reproduce and r.label != ref.label]
    cells = [eff[r.label][metric] for r in rows]
    y = np.arange(len(rows))
    height = 0.38
    fig, ax = plt.subplots(figsize=(6.4, 1.4 + 0.45 * max(1, len(rows))))
    ax.barh(y - height / 2, [e.paper for e in cells], height, label="paper (COCO)", color="#8c959f")
    ax.barh(y + height / 2, [e.ours for e in cells], height, xerr=[e.ours_se or 0.0 for e in cells], capsize=3,
            label="ours ± SE", color="#0969da")
    ax.axvline(0.0, color="black", linewidth=0.8)
    ax.set_yticks(y, [r.label + (f" {LEFT_OUT_MARK}" if e.left_out else "") for r, e in zip(rows, cells)])
    ax.invert_yaxis()
    ax.set_xlabel(f"{metric} relative to {ref.label}")
    ax.set_title(f"{spec.source}: effect on {metric}")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig


def plot_series(spec: TableSpec, records_by_row: RecordsByRow, series: Mapping[str, Sequence[tuple[float, str]]],
                metric: str = "AP", xlabel: str = ""):
    """Rows of a sweep as lines: per series name, ``(x, row label)`` points; the paper dashed, ours solid
    (error bars: std over seeds)."""
    import matplotlib.pyplot as plt

    if metric not in spec.metrics:
        raise ReplicateError(f"{spec.key}: metric {metric!r} is not a column of the table ({list(spec.metrics)})")
    stats = _all_stats(spec, records_by_row)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    for i, (name, points) in enumerate(series.items()):
        colour = f"C{i}"
        xs = [x for x, _ in points]
        paper = [float(spec.row(label).paper.get(metric, math.nan)) for _, label in points]
        ours = [stats[label].mean[metric] if stats[label] else math.nan for _, label in points]
        err = [stats[label].std[metric] if stats[label] and stats[label].n > 1 else 0.0 for _, label in points]
        ax.plot(xs, paper, "--", marker="o", color=colour, alpha=0.6, label=f"{name} (paper)")
        ax.errorbar(xs, ours, yerr=err, marker="s", color=colour, capsize=3, label=f"{name} (ours)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(metric)
    ax.set_title(f"{spec.source}: {metric}")
    ax.legend(frameon=False, fontsize="small")
    fig.tight_layout()
    return fig
