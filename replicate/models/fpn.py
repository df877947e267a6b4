"""Feature Pyramid Network (Lin et al. 2017): lateral 1x1 convs, nearest top-down pathway, 3x3 outputs.

Extra levels as each detector's reference builds them: RetinaNet (Lin et al. 2017b) takes P6 from
C5 (``extra_from="input"``), FCOS takes it from P5 (``extra_from="output"``); P7 = conv(ReLU(P6)).
``num_extra=2`` gives P3-P7 from C3-C5; ``num_extra=1`` from C2-C5 gives P2-P6 by max-pooling P5
with stride 2 (``extra_from="pool"``, the two-stage detectors' P6).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ReplicateError


def _xavier(conv: nn.Conv2d) -> nn.Conv2d:
    nn.init.xavier_uniform_(conv.weight)
    nn.init.zeros_(conv.bias)
    return conv


class FPN(nn.Module):
    def __init__(self, in_channels: list[int], out_channels: int = 256, num_extra: int = 2,
                 extra_from: str = "input", relu_before_extra: bool = True) -> None:
        super().__init__()
        if extra_from not in ("input", "output", "pool"):
            raise ReplicateError(f"FPN extra_from must be 'input', 'output' or 'pool', got {extra_from!r}")
        self.lateral = nn.ModuleList(_xavier(nn.Conv2d(c, out_channels, 1)) for c in in_channels)
        self.output = nn.ModuleList(_xavier(nn.Conv2d(out_channels, out_channels, 3, padding=1)) for _ in in_channels)
        self.extra_from, self.relu_before_extra, self.num_extra = extra_from, relu_before_extra, num_extra
        extra = []
        if extra_from != "pool":
            for i in range(num_extra):
                cin = in_channels[-1] if (i == 0 and extra_from == "input") else out_channels
                extra.append(_xavier(nn.Conv2d(cin, out_channels, 3, stride=2, padding=1)))
        self.extra = nn.ModuleList(extra)
        self.out_channels = out_channels

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral, feats)]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
        outs = [conv(x) for conv, x in zip(self.output, laterals)]
        if self.extra_from == "pool":
            for _ in range(self.num_extra):
                outs.append(F.max_pool2d(outs[-1], 1, stride=2))
            return outs
        x = feats[-1] if self.extra_from == "input" else outs[-1]
        for i, conv in enumerate(self.extra):
            if i > 0 and self.relu_before_extra:
                x = F.relu(x)
            x = conv(x)
            outs.append(x)
        return outs
