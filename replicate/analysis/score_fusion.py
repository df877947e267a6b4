"""RetinaNet-Conf Figure 4 and Functions (1)-(3): the product of IoU and classification.

Sec. 3 argues against IoU-aware RetinaNet's score, ``product = IoU^0.5 * classification^0.5`` (Function 1, our
``fuse_scores(..., "power", alpha=0.5)``), from its surface (Figure 4): it exceeds the classification score
exactly where the predicted IoU does (Function 2), and it never exceeds ``classification^0.5`` (Function 3), so
"the maximization of the product is limited by classification score". RetinaNet-Conf ranks by ``cls * obj``
(``"multiply"``), which never exceeds the classification score.

:func:`fusion_grid` evaluates the package's own fusion on a grid; :func:`function_checks` checks Functions (2)
and (3) on it; :func:`plot_fusion` draws the surfaces as contour maps.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from ..models.postprocess import fuse_scores


def fusion_grid(fusion: str = "power", alpha: float = 0.5, n: int = 101) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(cls, iou, fused)``: (n, n) arrays over [0, 1]^2 (rows: IoU, columns: classification) of
    :func:`~replicate.models.postprocess.fuse_scores`."""
    values = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    iou, cls = torch.meshgrid(values, values, indexing="ij")
    fused = fuse_scores(cls.reshape(1, -1), iou.reshape(1, -1), fusion, alpha).reshape(n, n)
    return cls.numpy(), iou.numpy(), fused.numpy()


def function_checks(n: int = 101) -> pd.DataFrame:
    """Functions (2) and (3) on the grid of IoU-aware RetinaNet's product (``"power"``, alpha 0.5): whether
    ``product >= classification`` holds exactly where ``IoU >= classification``, and ``product <=
    classification^0.5`` everywhere; and, beside it, the same bound for RetinaNet-Conf's ``cls * obj``."""
    cls, iou, product = fusion_grid("power", 0.5, n)
    _, _, conf = fusion_grid("multiply", 0.5, n)
    tol = 1e-12
    rows = {
        "Function (2): product >= cls exactly where IoU >= cls":
            bool(np.array_equal(product >= cls - tol, iou >= cls - tol)),
        "Function (3): product <= cls^0.5": bool((product <= np.sqrt(cls) + tol).all()),
        "RetinaNet-Conf: cls * obj <= cls": bool((conf <= cls + tol).all()),
    }
    return pd.DataFrame({"holds on the grid": rows}).rename_axis("statement")


def plot_fusion(fusions: Sequence[tuple[str, str, float]] = (("IoU-aware: (IoU x cls)^0.5", "power", 0.5),
                                                              ("RetinaNet-Conf: cls x obj", "multiply", 0.5))):
    """Figure 4 (and RetinaNet-Conf's ranking score beside it): contour maps of the fused score over the
    classification score (x) and the predicted IoU or object confidence (y), with the line IoU = cls."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(fusions), figsize=(4.4 * len(fusions), 3.8), squeeze=False)
    levels = np.linspace(0.0, 1.0, 11)
    for ax, (title, fusion, alpha) in zip(axes[0], fusions):
        cls, iou, fused = fusion_grid(fusion, alpha)
        filled = ax.contourf(cls, iou, fused, levels=levels, cmap="viridis")
        ax.contour(cls, iou, fused, levels=levels, colors="white", linewidths=0.4)
        ax.plot([0, 1], [0, 1], color="red", linestyle="--", linewidth=1)
        ax.set_xlabel("classification score")
        ax.set_ylabel("IoU / object confidence")
        ax.set_title(title, fontsize="small")
        ax.set_aspect("equal")
        fig.colorbar(filled, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig
