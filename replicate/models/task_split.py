"""A backbone split per task: shared up to one stride, then one copy per task (TSD's ``D_s8/16/32``).

Before its spatial disentanglement, TSD's Table 1 (the slides' "Task-aware disentanglement", ``shared/papers/
004_*.txt``) disentangles the two tasks in the *backbone*: ``D_s8``, ``D_s16`` and ``D_s32`` share the backbone up
to its feature map of stride 8, 16 or 32, and from there each task has its own network. The slides print only
the names and the parameter counts, and the counts fix what is copied (full-size ResNet-50 FPN, 80 classes):

* ``D_head`` 55.7M: the sibling head's 41.8M plus a second 2-fc branch (13.9M);
* ``D_s32`` 59M: ``D_head`` plus a second FPN (3.3M);
* ``D_s16`` 74.0M: ``D_s32`` plus a second res5 stage (15.0M);
* ``D_s8`` 81.1M: ``D_s16`` plus a second res4 stage (7.1M).

So the split copies the backbone stages after the split stride and the FPN, the RoI head is ``D_head``'s (the
classification branch pools from the classification pyramid, the localization branch from the localization
one), and the RPN stays single (a second one would add 0.6M). Which pyramid the RPN reads the slides do not say;
:attr:`TaskSplit.rpn` chooses, the classification pyramid by default (our choice). Both copies of a stage start
from the same weights (the pretrained stage, or one random init on the profiles trained from scratch).

:class:`TaskBranch` is the second task's copy; :class:`~replicate.models.detector.Detector` composes it beside
its backbone and FPN when ``DetectorConfig.task_split.stride`` is set, and then hands the head a dict of
pyramids (:func:`task_pyramid` reads one).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

from torch import Tensor, nn

from ..errors import ReplicateError
from .backbone import Backbone

SPLIT_STAGES = {8: 2, 16: 3, 32: 4}
"""The stride of the last shared feature map -> its backbone stage (C3, C4, C5)."""
TASKS = ("cls", "reg")


@dataclass(frozen=True)
class TaskSplit:
    stride: int | None = None  # None: one backbone for both tasks; 8, 16 or 32: D_s8, D_s16, D_s32
    rpn: str = "cls"  # the pyramid the single RPN reads: the classification ("cls") or localization ("reg") one

    def check(self, backbone: Backbone) -> int:
        """The first stage the split copies, after checking the split against the backbone."""
        if self.stride not in SPLIT_STAGES:
            raise ReplicateError(f"task_split.stride must be one of {sorted(SPLIT_STAGES)} (or None), "
                                 f"got {self.stride!r}")
        if self.rpn not in TASKS:
            raise ReplicateError(f"task_split.rpn must be 'cls' or 'reg', got {self.rpn!r}")
        shared = SPLIT_STAGES[self.stride]
        if shared not in backbone.cfg.out_stages or max(backbone.cfg.out_stages) != 4:
            raise ReplicateError(f"task_split.stride={self.stride} needs the backbone to output C{shared + 1} and "
                                 f"C5 (out_stages {backbone.cfg.out_stages})")
        if backbone.cfg.frozen_stages > shared:
            raise ReplicateError(f"task_split.stride={self.stride} copies stage {shared + 1}, which "
                                 f"frozen_stages={backbone.cfg.frozen_stages} freezes; a task's copy must train")
        return shared + 1


class TaskBranch(nn.Module):
    """The localization task's copy of the backbone stages after the split, and its own FPN."""

    def __init__(self, backbone: Backbone, split: TaskSplit, neck: Callable[[], nn.Module]) -> None:
        super().__init__()
        self.first = split.check(backbone)
        self.out_stages = backbone.cfg.out_stages
        self.stages = nn.ModuleList(copy.deepcopy(getattr(backbone.body, f"layer{s}")) for s in range(self.first, 5))
        self.neck = neck()

    def forward(self, shared: list[Tensor]) -> list[Tensor]:
        """The localization pyramid from the backbone's maps ``shared`` (one per out stage): the maps up to the
        split as they are, the later ones recomputed by this branch's stages."""
        maps = dict(zip(self.out_stages, shared))
        x = maps[self.first - 1]
        for s, stage in enumerate(self.stages, start=self.first):
            x = maps[s] = stage(x)
        return self.neck([maps[s] for s in self.out_stages])


def task_pyramid(feats: list[Tensor] | dict[str, list[Tensor]], task: str) -> list[Tensor]:
    """The pyramid ``task`` ("cls", "reg" or "rpn") reads: ``feats`` itself for one shared backbone, or that
    task's entry of the dict a split backbone gives (:meth:`~replicate.models.detector.Detector.features`)."""
    return feats[task] if isinstance(feats, dict) else feats
