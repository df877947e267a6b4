"""The pretrained backbones, the benchmark's stand-ins for ImageNet's ResNet-50 and ResNet-101.

:func:`pretraining_table` lists them with their accuracy on held-out training objects (target: the deeper
one at least as accurate, as ResNet-101 is on ImageNet); :func:`backbone_draw` says how much a second
pretraining (seed 1) moves the detectors' AP and leads.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import pandas as pd

from ... import profiles
from ...experiments.claims import row_stats
from ...experiments.spec import TableSpec
from ...experiments.store import Record
from ...io import read_json

#: what each narrow backbone stands in for, and that network's ImageNet top-1 accuracy (%) with the weights
#: the papers' recipes load (torchvision's IMAGENET1K_V1: ResNet-50 76.130, ResNet-101 77.374)
STANDS_IN_FOR = {"narrow": ("ResNet-50", 76.13), "narrow_deep": ("ResNet-101", 77.37)}


def pretraining_table(profile: str) -> pd.DataFrame:
    """One line per pretrained backbone of ``profile`` (its records under ``results/pretrained/``): what it
    stands in for and that network's ImageNet top-1, its settings (epochs, ``zero_init_residual``) and its
    accuracy on its training objects and on the held-out slice of them (10-way key classification)."""
    from ...models.checkpoints import resolve_weights

    scale = profiles.get(profile).model
    rows = []
    for backbone, weights in sorted((scale.weights if scale else {}).items()):
        doc = read_json(resolve_weights(weights).with_suffix(".json"), what="pretrained-backbone record")
        stands_for, imagenet = STANDS_IN_FOR.get(backbone, ("", math.nan))
        cfg = doc["config"]
        rows.append({"backbone": backbone, "stands in for": stands_for, "its ImageNet top-1 %": imagenet,
                     "epochs": cfg["epochs"], "zero-init residual": bool(cfg.get("zero_init_residual", False)),
                     "train accuracy %": 100 * doc["train_accuracy"],
                     "held-out accuracy %": 100 * doc["held_out_accuracy"], "weights": Path(weights).name})
    columns = ["backbone", "stands in for", "its ImageNet top-1 %", "epochs", "zero-init residual",
               "train accuracy %", "held-out accuracy %", "weights"]
    return pd.DataFrame(rows, columns=columns).set_index("backbone").round(1)


BACKBONE_DRAW_SUFFIX = ", backbone seed 1"


def backbone_draw(spec: TableSpec, records_by_row: Mapping[str, Sequence[Record]], metric: str = "AP",
                  reference: str = "RetinaNet") -> pd.DataFrame:
    """Per detector of the backbone table (rows ``X`` and ``X, backbone seed 1``): the mean of ``metric``
    (paper units) on the profile's pretrained backbone and on a second pretraining of it (the same settings,
    seed 1), the seeds each, and the difference (second minus first); a last row gives the leads over
    ``reference`` on each backbone and how much the lead moves."""
    rows = []
    for row in spec.rows:
        if row.label.endswith(BACKBONE_DRAW_SUFFIX):
            continue
        first = row_stats(spec, row, records_by_row.get(row.label, ()))
        second_row = spec.row(row.label + BACKBONE_DRAW_SUFFIX)
        second = row_stats(spec, second_row, records_by_row.get(second_row.label, ()))
        a = first.mean[metric] if first else math.nan
        b = second.mean[metric] if second else math.nan
        rows.append({"detector": row.label, "profile's backbone": a, "seeds": first.n if first else 0,
                     "backbone seed 1": b, "seeds (seed 1)": second.n if second else 0, "difference": b - a})
    out = pd.DataFrame(rows).set_index("detector")
    if reference in out.index and len(out) > 1:
        for other in out.index.drop(reference):
            lead_a = out.loc[other, "profile's backbone"] - out.loc[reference, "profile's backbone"]
            lead_b = out.loc[other, "backbone seed 1"] - out.loc[reference, "backbone seed 1"]
            out.loc[f"{other} lead over {reference}"] = {"profile's backbone": lead_a, "backbone seed 1": lead_b,
                                                          "difference": lead_b - lead_a}
    return out.round(2)
