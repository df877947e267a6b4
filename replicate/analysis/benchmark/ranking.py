"""The ranking: do the dense baselines order on the benchmark as they do on COCO?

:func:`ranking` puts our mean AP of the dense baselines beside their COCO AP, with Spearman's rho (target:
at least 0.7); :func:`margin_table` checks the required margins (ATSS and GFL above RetinaNet by more than
2 standard errors); :func:`distortion` says by how much the benchmark stretches COCO's differences.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

from ...experiments.claims import row_stats
from ...experiments.spec import TableSpec
from ...experiments.store import Record

RHO_TARGET = 0.7


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson's on average ranks, ties shared)."""
    ra = pd.Series(list(a)).rank().to_numpy()
    rb = pd.Series(list(b)).rank().to_numpy()
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def ranking(spec: TableSpec, records_by_row: Mapping[str, Sequence[Record]],
            metric: str = "AP") -> tuple[pd.DataFrame, float]:
    """Per baseline: COCO AP, our mean and standard error over seeds, both ranks; and Spearman's rho over
    the rows that have runs."""
    rows = []
    for row in spec.rows:
        stats = row_stats(spec, row, records_by_row.get(row.label, ()))
        mean = stats.mean[metric] if stats else math.nan
        se = stats.std[metric] / math.sqrt(stats.n) if stats and stats.n > 1 else math.nan
        rows.append({"row": row.label, "COCO": row.paper.get(metric, math.nan), "ours": mean, "ours SE": se,
                     "seeds": stats.n if stats else 0})
    frame = pd.DataFrame(rows).set_index("row")
    have = frame["ours"].notna()
    frame["COCO rank"] = frame["COCO"].rank(ascending=False)
    frame["our rank"] = frame["ours"].where(have).rank(ascending=False)
    rho = spearman(frame.loc[have, "COCO"], frame.loc[have, "ours"]) if have.sum() >= 2 else math.nan
    return frame, rho


def metric_means(spec: TableSpec, records_by_row: Mapping[str, Sequence[Record]]) -> pd.DataFrame:
    """Per row with runs: the mean over seeds of every metric of the table (paper units), to see where a
    baseline's lead comes from (AP50 against AP75: finding objects or placing boxes; the size columns)."""
    rows = {}
    for row in spec.rows:
        stats = row_stats(spec, row, records_by_row.get(row.label, ()))
        if stats:
            rows[row.label] = {**stats.mean, "seeds": stats.n}
    return pd.DataFrame.from_dict(rows, orient="index", columns=[*spec.metrics, "seeds"])


def distortion(frame: pd.DataFrame, reference: str = "RetinaNet") -> pd.DataFrame:
    """How the benchmark stretches COCO's differences, from :func:`ranking`'s frame: per baseline, its lead
    over ``reference`` on COCO and ours (AP points), their ratio (``amplification``; undefined where COCO's
    lead is within 0.05 AP of zero), and Spearman's rho over the baselines with runs when that baseline is
    left out (which one alone decides whether the ranking target is met)."""
    have = frame["ours"].notna()
    if reference not in frame.index or not have.get(reference, False):
        return pd.DataFrame(columns=["COCO lead", "our lead", "amplification", "rho without it"])
    out = pd.DataFrame(index=frame.index[have])
    out["COCO lead"] = frame.loc[have, "COCO"] - frame.loc[reference, "COCO"]
    out["our lead"] = frame.loc[have, "ours"] - frame.loc[reference, "ours"]
    out["amplification"] = (out["our lead"] / out["COCO lead"]).where(out["COCO lead"].abs() > 0.05)
    kept = frame[have]
    out["rho without it"] = [spearman(kept.drop(label)["COCO"], kept.drop(label)["ours"]) for label in out.index]
    return out


def margin_table(spec: TableSpec, records_by_row: Mapping[str, Sequence[Record]]) -> pd.DataFrame:
    """The ranking's required margins: ours ± SE over seeds and the verdict (more than 2 SE above zero)."""
    from ...experiments.claims import claim_results

    rows = [{"claim": c.text, "COCO margin": c.paper_margin, "our margin": c.ours_margin, "our SE": c.ours_se,
             "seeds": c.seeds, "verdict": c.verdict} for c in claim_results(spec, records_by_row)]
    return pd.DataFrame(rows).set_index("claim").round(2)


def rho_text(rho: float) -> str:
    """Spearman's rho between the two rankings, as the table's caption and the plot's title say it."""
    return f"Spearman's rho {rho:.3f}" if rho == rho else "Spearman's rho: too few runs"


def plot_ranking(frame: pd.DataFrame, rho: float):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    have = frame["ours"].notna()
    ax.errorbar(frame.loc[have, "COCO"], frame.loc[have, "ours"], yerr=frame.loc[have, "ours SE"].fillna(0),
                fmt="o", capsize=3)
    for label, row in frame[have].iterrows():
        ax.annotate(label, (row["COCO"], row["ours"]), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.set_xlabel("COCO box AP, R50-FPN 1x (%)")
    ax.set_ylabel("our AP, mean over seeds ± SE (%)")
    ax.set_title(rho_text(rho))
    fig.tight_layout()
    return fig
