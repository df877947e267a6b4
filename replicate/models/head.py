"""The head contract: what every dense head of :mod:`replicate.models.detectors` provides.

:class:`~replicate.models.detector.Detector` composes backbone -> FPN -> head and calls only these:

* ``forward(feats) -> outs``: the raw per-level maps (``outs["cls"]`` always among them);
* ``priors(outs) -> Priors``: the priors of those maps, levels concatenated: anchors (``prior_kind ==
  "anchor"``, ``per_location`` of them per feature location) or points (``"point"``), with their centres,
  strides and levels;
* ``assign(outs, targets) -> (Assignment, matched boxes)``: the assignment :meth:`loss` trains with. A
  method that changes only the assignment (MOD's APS) plugs in here, reading ``priors`` and the outputs;
* ``loss(outs, targets, batch_hw) -> {name: tensor}``: terms whose names start with ``loss`` are
  optimised, ``stat_*`` terms are logged;
* ``predict(outs, image_sizes, test_cfg) -> [{"boxes", "scores", "labels"}]`` per image.

A two-stage family (RPN + RoI head, the TSD chapter) keeps ``loss`` and ``predict`` and brings its own
proposal step in place of ``priors``/``assign``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

import torch
from torch import Tensor, nn

from .assigners import Assignment
from .postprocess import TestConfig


@dataclass(frozen=True)
class Priors:
    """The priors of a batch's feature maps, levels concatenated (N priors in all)."""

    centres: Tensor  # (N, 2) x, y: anchor centres or points
    strides: Tensor  # (N,) float, the stride of each prior's level
    level: Tensor  # (N,) long, the FPN level index of each prior
    per_level: tuple[int, ...]  # priors on each level
    boxes: Tensor | None = None  # (N, 4) xyxy anchors of an anchor-based head, else None
    per_location: int = 1  # anchors per feature location (consecutive in the flat order)


Assigner = Callable[["DenseHead", dict, list], tuple[Assignment, Tensor]]
Statistic = Callable[["DenseHead", dict, list, Assignment, Tensor], dict]


class DenseHead(nn.Module):
    """Base of every dense head: see the module docstring for the contract.

    Plug-ins compose with any head: ``assigner`` (``None``: the head's own rule, :meth:`assign_by_rule`)
    replaces the assignment, e.g. MOD's APS; ``statistics`` add logged ``stat_*`` terms computed from the
    assignment (MOD's Tables 3-4). A head implements :meth:`losses` for a given assignment; :meth:`loss`
    composes assignment, losses and statistics.
    """

    prior_kind: ClassVar[str] = "point"  # "anchor" or "point"
    cfg: Any
    num_classes: int
    assigner: Assigner | None = None
    statistics: tuple[Statistic, ...] = ()

    def forward(self, feats: list[Tensor]) -> dict[str, list[Tensor]]:  # pragma: no cover - interface
        raise NotImplementedError

    def priors(self, outs: dict[str, list[Tensor]]) -> Priors:  # pragma: no cover - interface
        raise NotImplementedError

    def assign(self, outs: dict[str, list[Tensor]], targets: list[dict]) -> tuple[Assignment, Tensor]:
        """The assignment :meth:`loss` trains with: the plug-in ``assigner`` if any, else the head's rule."""
        if self.assigner is not None:
            return self.assigner(self, outs, targets)
        return self.assign_by_rule(outs, targets)

    def assign_by_rule(self, outs: dict[str, list[Tensor]], targets: list[dict]) -> tuple[Assignment, Tensor]:
        raise NotImplementedError  # pragma: no cover - interface

    def losses(self, outs: dict[str, list[Tensor]], a: Assignment, matched: Tensor) -> dict[str, Tensor]:
        raise NotImplementedError  # pragma: no cover - interface

    def loss(self, outs: dict[str, list[Tensor]], targets: list[dict], batch_hw: tuple[int, int]) -> dict[str, Tensor]:
        """The head's loss terms on its assignment, and the statistics' ``stat_*`` terms."""
        a, matched = self.assign(outs, targets)
        terms = self.losses(outs, a, matched)
        for statistic in self.statistics:
            terms.update(statistic(self, outs, targets, a, matched))
        return terms

    def predict(self, outs: dict[str, list[Tensor]], image_sizes: list[tuple[int, int]],
                cfg: TestConfig) -> list[dict[str, Tensor]]:
        raise NotImplementedError  # pragma: no cover - interface


def anchor_priors(per_level: list[Tensor], strides: tuple[int, ...], per_location: int) -> Priors:
    """:class:`Priors` of per-level (H*W*A, 4) anchors."""
    boxes = torch.cat(per_level)
    counts = tuple(len(a) for a in per_level)
    level = torch.cat([torch.full((n,), i, dtype=torch.long, device=boxes.device) for i, n in enumerate(counts)])
    stride = torch.cat([torch.full((n,), float(s), device=boxes.device) for n, s in zip(counts, strides)])
    return Priors((boxes[:, :2] + boxes[:, 2:]) / 2, stride, level, counts, boxes, per_location)


def point_priors(per_level: list[Tensor], strides: tuple[int, ...]) -> Priors:
    """:class:`Priors` of per-level (H*W, 2) points."""
    points = torch.cat(per_level)
    counts = tuple(len(p) for p in per_level)
    level = torch.cat([torch.full((n,), i, dtype=torch.long, device=points.device) for i, n in enumerate(counts)])
    stride = torch.cat([torch.full((n,), float(s), device=points.device) for n, s in zip(counts, strides)])
    return Priors(points, stride, level, counts)
