"""SALT, the spatial-disentangled and task-aligned operator, and the SDR loss (Yang et al., "Rethinking the
Misalignment Problem in Dense Object Detection", Sec. 3.1-3.4).

The operator sits after a dense head's two towers. From the regression tower's features ``F^r`` it predicts
a coarse box and the regression-aware points inside it; from the classification tower's ``F^c`` the
classification-aware points; then it reads each task's features at its own points and aligns them to the
location that predicts (Fig. 3-6). Every coordinate here is relative to that location and in units of the
level's stride (feature-map pixels), as the paper's "the location that predicts the detection result as
the coordinate origin" says.

* Eq. 1: ``C = ReLU(conv_c(F^r))``, the coarse box as distances (l, t, r, b) from the location (the "Dirac
  delta decoder" of FCOS/ATSS), times a learnable per-level scale (the head's); ``S = sigmoid(conv_s(F^r))``,
  2N - 4 scale factors.
* Eq. 2-3, :func:`regression_points`: N = 9 points ``x_i = xmin + w S_ix``, ``y_i = ymin + h S_iy``. Four of
  them are the extreme points: each lies on one side of the coarse box, so one of its coordinates is that
  side's and only the other is learned (hence 2N - 4 factors). Each point drives one tap of a 3x3
  deformable kernel: the extreme points the taps at the middle of the kernel's sides (left, top, right,
  bottom), the five others the corners and the centre.
* Eq. 4: ``D = ReLU(conv_d(F^c))``, 2N disentanglement values.
* Eq. 5-6, :func:`classification_points`: ``P^c = exp(D) * P^r`` (the paper's choice, ``"exp"``) or
  ``P^c = D + P^r`` (``"add"``), per coordinate, with ``P^r`` detached ("the supervision of the
  classification task does not affect the learning of regression-aware points"). Table 1's ablations:
  ``"free"`` (C-points without the point-set anchor, ``P^c = D``) and ``"regression"`` (no C-points: both
  tasks read the regression-aware points).
* Eq. 7-8, :meth:`SALT.forward`: bilinear interpolation of the features at ``p + P``, one kernel tap per
  point: a 3x3 deformable convolution with offsets ``P - grid`` (:func:`points_to_offsets`,
  :func:`replicate.models.dcn.deform_conv`), then GroupNorm and ReLU, per task.
* Eq. 9, :func:`sdr_loss`: the self-distillation regression loss.

Where the paper and the released code (XavierYoungY/SALT-Net, ``shared/notes/official-code.md``) differ, the
paper is the default and the code's behaviour an option:

* ``disentangle="relu"``: Eq. 4's ReLU on ``D``; the code's ``"linear"`` has a 3x3 conv + GN + ReLU, then a
  linear 3x3 conv (``D`` may be negative). With the ReLU, ``exp(D) >= 1`` scales the C-points away from the
  location and ``D + P^r`` shifts them right and down only: a restriction of the paper's equations as printed.
* ``point_convs=0``: Eq. 1's "only two convolution layers" read ``F^r`` directly; the code puts one more 3x3
  conv + GN + ReLU before them (``point_convs=1``).
* Where the paper is silent, the code: the regression-aware points are *not* detached for the regression
  branch (its refined loss trains the coarse box and the scale factors, ``detach_regression=False``),
  N(0, 0.01) initialisation, the sampling convolutions carry no bias under GroupNorm.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import ReplicateError
from ._utils import GroupNorm, init_normal
from .dcn import deform_conv
from .losses import aligned_box_iou, giou_loss

NUM_POINTS = 9  # one per tap of a 3x3 kernel
CLS_POINTS = ("regression", "free", "exp", "add")
DISENTANGLE = ("relu", "linear")
# Kernel taps (row-major over the 3x3 kernel) that the extreme points drive: left, top, right, bottom.
LEFT, TOP, RIGHT, BOTTOM = 3, 1, 5, 7
FREE_TAPS = (0, 2, 4, 6, 8)


def kernel_grid(dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu") -> Tensor:
    """(9, 2) the (dy, dx) of a 3x3 kernel's taps about its centre, row-major: (-1, -1), (-1, 0), ..."""
    k = torch.arange(-1, 2, dtype=dtype, device=device)
    ky, kx = torch.meshgrid(k, k, indexing="ij")
    return torch.stack((ky.reshape(-1), kx.reshape(-1)), dim=-1)


def regression_points(distances: Tensor, factors: Tensor) -> Tensor:
    """Eq. 2-3: the N = 9 regression-aware points of each location.

    ``distances``: (B, 4, H, W) coarse (l, t, r, b) from the location; ``factors``: (B, 14, H, W) in [0, 1]:
    channels 0-3 place the extreme points along their sides (left: y, top: x, right: y, bottom: x), channels
    4-13 the five other points as (x, y) pairs. Returns (B, 18, H, W): (dy, dx) of the point of each kernel
    tap, in torchvision's offset layout.
    """
    if distances.shape[1] != 4 or factors.shape[1] != 2 * NUM_POINTS - 4:
        raise ReplicateError(f"SALT needs 4 distances and {2 * NUM_POINTS - 4} scale factors, "
                             f"got {distances.shape[1]} and {factors.shape[1]}")
    left, top, right, bottom = distances.unbind(1)
    xmin, ymin, w, h = -left, -top, left + right, top + bottom
    ys: list[Tensor] = [None] * NUM_POINTS  # type: ignore[list-item]
    xs: list[Tensor] = [None] * NUM_POINTS  # type: ignore[list-item]
    ys[LEFT], xs[LEFT] = ymin + h * factors[:, 0], xmin
    xs[TOP], ys[TOP] = xmin + w * factors[:, 1], ymin
    ys[RIGHT], xs[RIGHT] = ymin + h * factors[:, 2], right
    xs[BOTTOM], ys[BOTTOM] = xmin + w * factors[:, 3], bottom
    for i, tap in enumerate(FREE_TAPS):
        xs[tap] = xmin + w * factors[:, 4 + 2 * i]
        ys[tap] = ymin + h * factors[:, 5 + 2 * i]
    return torch.stack([c for y, x in zip(ys, xs) for c in (y, x)], dim=1)


def classification_points(reg_points: Tensor, d: Tensor, mode: str = "exp") -> Tensor:
    """Eq. 5 (``"exp"``), Eq. 6 (``"add"``) and Table 1's ablations (``"free"``: ``D``; ``"regression"``: the
    regression-aware points themselves), with the regression-aware points detached. (B, 18, H, W) each."""
    anchor = reg_points.detach()
    if mode == "exp":
        return torch.exp(d) * anchor
    if mode == "add":
        return d + anchor
    if mode == "free":
        return d
    if mode == "regression":
        return anchor
    raise ReplicateError(f"SALT classification points must be one of {CLS_POINTS}, got {mode!r}")


def points_to_offsets(points: Tensor) -> Tensor:
    """Eq. 7: a 3x3 deformable convolution samples ``p + grid_k + offset_k``; offsets ``points - grid`` make
    tap k read the point ``p + points_k``. (B, 18, H, W) -> (B, 18, H, W)."""
    grid = kernel_grid(points.dtype, points.device).reshape(1, 2 * NUM_POINTS, 1, 1)
    return points - grid


class SALT(nn.Module):
    """The operator (Fig. 3): coarse box and scale factors from ``F^r``, disentanglement from ``F^c``, and the
    two task-aligned 3x3 sampling convolutions (each + GroupNorm + ReLU).

    ``forward(cls_feat, reg_feat, scale)`` gives the coarse distances, both point sets and the aligned features.
    """

    def __init__(self, channels: int, cls_points: str = "exp", disentangle: str = "relu", point_convs: int = 0,
                 detach_regression: bool = False, norm: str | None = "gn") -> None:
        super().__init__()
        if cls_points not in CLS_POINTS:
            raise ReplicateError(f"SALT classification points must be one of {CLS_POINTS}, got {cls_points!r}")
        if disentangle not in DISENTANGLE:
            raise ReplicateError(f"SALT disentangle must be one of {DISENTANGLE}, got {disentangle!r}")
        self.cls_points, self.disentangle, self.detach_regression = cls_points, disentangle, detach_regression
        self.reg_pre = _convs(channels, point_convs, norm)
        self.conv_c = nn.Conv2d(channels, 4, 3, padding=1)
        self.conv_s = nn.Conv2d(channels, 2 * NUM_POINTS - 4, 3, padding=1)
        if cls_points != "regression":
            self.cls_pre = _convs(channels, 1 if disentangle == "linear" else 0, norm)
            self.conv_d = nn.Conv2d(channels, 2 * NUM_POINTS, 3, padding=1)
        bias = norm is None
        self.reg_align = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)
        self.cls_align = nn.Conv2d(channels, channels, 3, padding=1, bias=bias)
        self.reg_norm = GroupNorm(min(32, channels), channels) if norm == "gn" else nn.Identity()
        self.cls_norm = GroupNorm(min(32, channels), channels) if norm == "gn" else nn.Identity()
        init_normal(self)

    def points(self, cls_feat: Tensor, reg_feat: Tensor, scale: nn.Module) -> dict[str, Tensor]:
        """Eq. 1-6: the coarse distances (B, 4, H, W) and the regression- and classification-aware points
        (B, 18, H, W), float32; ``scale`` is the head's per-level scale of the coarse distances."""
        h = self.reg_pre(reg_feat)
        distances = torch.relu(scale(self.conv_c(h)).float())  # Eq. 1
        factors = torch.sigmoid(self.conv_s(h).float())
        reg_points = regression_points(distances, factors)  # Eq. 2-3
        d = None
        if self.cls_points != "regression":
            d = self.conv_d(self.cls_pre(cls_feat)).float()
            d = torch.relu(d) if self.disentangle == "relu" else d  # Eq. 4
        return {"coarse": distances, "reg_points": reg_points,
                "cls_points": classification_points(reg_points, d, self.cls_points)}  # Eq. 5-6

    def forward(self, cls_feat: Tensor, reg_feat: Tensor, scale: nn.Module) -> dict[str, Tensor]:
        """:meth:`points`, and each task's features read at its points (Eq. 7-8), + GroupNorm + ReLU."""
        out = self.points(cls_feat, reg_feat, scale)
        reg_points = out["reg_points"].detach() if self.detach_regression else out["reg_points"]
        reg, cls = self.reg_align, self.cls_align
        reg_out = deform_conv(reg_feat, points_to_offsets(reg_points), reg.weight, reg.bias, 1, 1, 1)
        cls_out = deform_conv(cls_feat, points_to_offsets(out["cls_points"]), cls.weight, cls.bias, 1, 1, 1)
        return {**out, "reg_feat": torch.relu(self.reg_norm(reg_out.to(reg_feat.dtype))),
                "cls_feat": torch.relu(self.cls_norm(cls_out.to(cls_feat.dtype)))}


def _convs(channels: int, n: int, norm: str | None) -> nn.Module:
    """``n`` x (3x3 conv, [GN], ReLU), or the identity."""
    layers: list[nn.Module] = []
    for _ in range(n):
        layers += [nn.Conv2d(channels, channels, 3, padding=1, bias=norm is None),
                   *([GroupNorm(min(32, channels), channels)] if norm == "gn" else []), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


def sdr_loss(coarse: Tensor, refined: Tensor, gt: Tensor, score: Tensor, reduction: str = "mean",
             avg_factor: float | Tensor | None = None) -> Tensor:
    """Eq. 9: ``y * IoU_2 * L_GIoU(R_1, R_2)`` where ``IoU_2 > IoU_1``, else 0.

    ``coarse`` (P, 4) are the stage-one boxes R_1 (the student, trained); ``refined`` the stage-two boxes R_2
    (the teacher: detached, as are its IoU and the score); ``gt`` their ground truths; ``score`` the
    classification score y of each positive. The GIoU term is the GIoU loss ``1 - GIoU(R_1, R_2)``.
    """
    refined, score = refined.detach(), score.detach()
    iou1 = aligned_box_iou(coarse.detach(), gt)
    iou2 = aligned_box_iou(refined, gt)
    weight = torch.where(iou2 > iou1, score * iou2, torch.zeros_like(iou2))
    return giou_loss(coarse, refined, reduction=reduction, weight=weight, avg_factor=avg_factor)
