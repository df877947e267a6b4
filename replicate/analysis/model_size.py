"""Model size: a table's "#param" column (TSD's Table 1) beside our full-size presets' counts.

A row's model is built as on the ``coco`` profile (the preset with the row's overrides, 80 classes, full width,
no weights loaded) and its parameters are counted as the papers' tools count them: frozen ones included, and a
frozen BatchNorm's scale and shift too (mmdetection keeps them as parameters that do not train; torchvision's
``FrozenBatchNorm2d``, ours, holds them as buffers).
"""

from __future__ import annotations

from typing import Mapping

import pandas as pd
from torchvision.ops.misc import FrozenBatchNorm2d

from ..experiments.spec import TableSpec
from ..models.detector import DetectorConfig, build_detector
from ..models.zoo import model_config


def parameter_count(cfg: DetectorConfig) -> int:
    """Parameters of the detector ``cfg`` builds: trainable, frozen, and the frozen BatchNorms' scale and shift."""
    net = build_detector(cfg)
    frozen_bn = sum(m.weight.numel() + m.bias.numel() for m in net.modules() if isinstance(m, FrozenBatchNorm2d))
    return sum(p.numel() for p in net.parameters()) + frozen_bn


def parameter_table(spec: TableSpec, paper_millions: Mapping[str, float]) -> pd.DataFrame:
    """Per row labelled in ``paper_millions``: the paper's count, ours (full-size, millions) and the difference."""
    records = []
    for label, paper in paper_millions.items():
        row = spec.row(label)
        ours = parameter_count(model_config(row.model, "coco", None, row.model_overrides, spec.key)) / 1e6
        delta = round(ours - paper, 1) + 0.0  # + 0.0: no "-0.0"
        records.append({"row": label, "paper (M)": paper, "ours (M)": round(ours, 1), "delta (M)": delta})
    return pd.DataFrame.from_records(records).set_index("row")
