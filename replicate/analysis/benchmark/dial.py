"""The misalignment dial: the generator's key offset against RetinaNet's localization gap.

At the default offset the best-localized box of an object is often not its top-scored one; at offset 0
it should be much less often (RetinaNet-Conf's introduction statistic, :mod:`replicate.analysis.misalignment`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from ... import profiles
from ...experiments.spec import TableSpec
from ...experiments.store import Record


def dial_frame(spec: TableSpec, profile: str, runs_by_profile: Mapping[str, Mapping[str, Sequence[Record]]], *,
               results_dir: str | Path = "results", data_root: str | Path | None = None) -> pd.DataFrame:
    """Per dial profile: its key offset range, the RetinaNet run's AP and its localization gap summary."""
    from ..cache import gap_summary, row_summary

    rows = []
    for name, runs in runs_by_profile.items():
        records = runs.get("RetinaNet", [])
        root = data_root if name == profile else None
        summary = row_summary(gap_summary, spec, "RetinaNet", name, records, results_dir=results_dir, data_root=root)
        offset = profiles.get(name).synth.key_offset
        rows.append({"profile": name, "key offset": f"{offset[0]:.1f}-{offset[1]:.1f}", "offset mid": sum(offset) / 2,
                     "AP": 100 * records[0]["metrics"]["AP"] if records else math.nan,
                     "objects": summary["objects"] if summary else 0,
                     "mean IoU gap": summary["mean_gap"] if summary else math.nan,
                     "share gap > 0.1": summary["share_gap_over_0.1"] if summary else math.nan,
                     "mean best IoU": summary["mean_best_iou"] if summary else math.nan})
    if not rows:
        return pd.DataFrame(columns=["profile", "key offset", "offset mid", "AP", "objects", "mean IoU gap"])
    return pd.DataFrame(rows).set_index("profile").sort_values("offset mid").round(3)


def plot_dial(dial: pd.DataFrame):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    if len(dial):
        ax.plot(dial["offset mid"], dial["mean IoU gap"], "o-", label="mean IoU gap")
        ax.plot(dial["offset mid"], dial["share gap > 0.1"], "s--", label="share of objects with gap > 0.1")
        ax.legend(fontsize=8)
    ax.set_xlabel("key offset (middle of its range, fraction of the half-extent)")
    ax.set_ylabel("RetinaNet, first 100 val images")
    fig.tight_layout()
    return fig
