"""Is the profile's schedule long enough? What doubling it still gains.

:func:`convergence`: what each doubling of the schedule still gains (target: doubling the profile's
schedule gains RetinaNet at most 5 % of its AP; COCO's 1x to 2x gains 2.5 %), and :func:`schedule_leads`
whether a baseline's lead over RetinaNet holds as both train longer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from ... import profiles
from ...experiments.claims import row_stats
from ...experiments.spec import TableSpec
from ...experiments.store import Record

#: COCO's own convergence, the schedule's yardstick: RetinaNet R50-FPN gains 0.9 AP from doubling its 1x
#: schedule (mmdetection's zoo, configs/retinanet: 1x 36.5, 2x 37.4), 2.5 % of its 1x AP
COCO_2X_GAIN = {"RetinaNet": (36.5, 37.4)}


CONVERGENCE_TARGET = 5.0  # percent: the largest acceptable relative gain from doubling (twice COCO's 2.5 %)


def schedule_table(spec: TableSpec, records_by_row: Mapping[str, Sequence[Record]], metric: str = "AP") -> pd.DataFrame:
    """Per row of the schedule table: iterations, seeds, mean and standard deviation of ``metric``."""
    rows = []
    for row in spec.rows:
        records = records_by_row.get(row.label, ())
        stats = row_stats(spec, row, records)
        iters = records[0]["config"]["train"]["iters"] if records else None
        rows.append({"row": row.label, "iterations": iters, "seeds": stats.n if stats else 0,
                     "mean": stats.mean[metric] if stats else math.nan,
                     "std": stats.std[metric] if stats else math.nan})
    return pd.DataFrame(rows).set_index("row").round(2)


def convergence(schedule: pd.DataFrame, profile: str, metric_label: str = "mean") -> pd.DataFrame:
    """What each doubling of the schedule gains, per detector of :func:`schedule_table`'s frame (rows
    ``"<detector>"`` at the profile's schedule and ``"<detector>, N iterations"`` at others): one line per
    pair of rows whose iterations differ by a factor of 2, with the AP of both (means over their seeds),
    the gain, the gain as a percentage of the shorter run's AP, and whether it is the profile's own
    schedule against its 2x (the line :data:`CONVERGENCE_TARGET` judges). COCO's gain for RetinaNet
    (:data:`COCO_2X_GAIN`) stands beside the profile's line."""
    base = profiles.schedule_for(profile).iters
    frame = schedule.dropna(subset=["iterations"])
    rows = []
    for label, r in frame.iterrows():
        detector = _detector(label)
        longer = frame[(frame["iterations"] == 2 * r["iterations"]) & (frame.index.map(_detector) == detector)]
        for _, r2 in longer.iterrows():
            gain = r2[metric_label] - r[metric_label]
            coco = COCO_2X_GAIN.get(detector) if r["iterations"] == base else None
            rows.append({"detector": detector, "from iterations": int(r["iterations"]), "to iterations": int(r2["iterations"]),
                         "AP from": r[metric_label], "AP to": r2[metric_label], "gain": gain,
                         "gain %": 100 * gain / r[metric_label] if r[metric_label] else math.nan,
                         "profile's 1x to 2x": bool(r["iterations"] == base),
                         "COCO gain %": 100 * (coco[1] - coco[0]) / coco[0] if coco else math.nan})
    columns = ["detector", "from iterations", "to iterations", "AP from", "AP to", "gain", "gain %",
               "profile's 1x to 2x", "COCO gain %"]
    return pd.DataFrame(rows, columns=columns).round(2)


def schedule_leads(schedule: pd.DataFrame, reference: str = "RetinaNet") -> pd.DataFrame:
    """Each detector's lead over ``reference`` (AP points, means over seeds) at every schedule length both
    were run at, from :func:`schedule_table`'s frame: one row per detector, one column per iteration count.
    A lead that shrinks as the schedule grows is partly learning speed, not the detector's end point."""
    frame = schedule.dropna(subset=["iterations", "mean"])
    ref = {int(r["iterations"]): r["mean"] for label, r in frame.iterrows() if _detector(label) == reference}
    leads: dict[str, dict[int, float]] = {}
    for label, r in frame.iterrows():
        detector, iters = _detector(label), int(r["iterations"])
        if detector != reference and iters in ref:
            leads.setdefault(detector, {})[iters] = r["mean"] - ref[iters]
    out = pd.DataFrame.from_dict(leads, orient="index")
    out = out.reindex(columns=sorted(out.columns))
    out.columns = [f"lead at {c} iterations" for c in out.columns]
    out.index.name = f"lead over {reference}"
    return out.round(2)


def schedules_compared(first: tuple[pd.DataFrame, float], now: tuple[pd.DataFrame, float],
                       first_noise: pd.DataFrame, noise: pd.DataFrame, reference: str = "RetinaNet") -> pd.DataFrame:
    """The ranking and the seed noise at an earlier schedule beside the profile's own: per baseline the COCO
    AP, our mean AP, its lead over ``reference`` and its seed standard deviation (noise rows only) at both
    (Spearman's rho at both: the :func:`ranking` outputs' second items). ``first`` and ``now`` are
    :func:`ranking` outputs, the noise frames :func:`seed_noise` outputs."""
    (f, _), (n, _) = first, now
    out = pd.DataFrame({"COCO": n["COCO"], "AP first": f["ours"], "AP now": n["ours"]})
    for col, frame in (("lead first", f), ("lead now", n)):
        ref = frame["ours"].get(reference, math.nan)
        out[col] = frame["ours"] - ref
    out["seed sd first"] = first_noise["std"].reindex(out.index)
    out["seed sd now"] = noise["std"].reindex(out.index)
    return out.round(2)


def _detector(label: Any) -> str:
    """The detector of a schedule-table row label (``"RetinaNet, 1200 iterations"`` -> ``"RetinaNet"``)."""
    return str(label).split(",")[0]


def plot_schedule(schedule: pd.DataFrame, profile: str):
    """AP against training iterations (log scale) per detector of :func:`schedule_table`'s frame, with
    the standard deviation over seeds as error bars and the profile's schedule marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    frame = schedule.dropna(subset=["iterations", "mean"])
    detectors = dict.fromkeys(frame.index.map(_detector))
    for detector in detectors:
        rows = frame[frame.index.map(_detector) == detector].sort_values("iterations")
        ax.errorbar(rows["iterations"], rows["mean"], yerr=rows["std"].fillna(0), fmt="o-", capsize=3, label=detector)
    ax.axvline(profiles.schedule_for(profile).iters, color="grey", lw=0.8, ls=":", label="profile's schedule")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training iterations")
    ax.set_ylabel("AP (mean over seeds)")
    if detectors:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
