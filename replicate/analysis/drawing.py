"""What the figure analyses share to draw on a validation image: where its file is, the image (or a grey
canvas of its size when the file is not on this machine: the committed summaries build the book without the
dataset), and boxes. The image is stretched to the frame the network saw (the resized image), where every
analysed box and point lies."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np


def image_file(dataset, image_id) -> dict[str, Any]:
    """The file name and path of ``image_id`` in a :class:`~replicate.data.coco.CocoDetection` (None if unknown)."""
    try:
        name = dataset.coco.imgs[image_id]["file_name"]
        return {"file_name": str(name), "image_path": str(Path(dataset.images_dir) / name)}
    except (AttributeError, KeyError, TypeError):
        return {"file_name": None, "image_path": None}


def draw_canvas(ax, summary_image: dict[str, Any]) -> None:
    """The image at ``summary_image["image_path"]`` over the frame ``image_size`` (h, w), else a grey canvas."""
    h, w = (int(v) for v in summary_image["image_size"])
    ax.imshow(np.full((2, 2), 0.5), cmap="gray", vmin=0, vmax=1, extent=(0, w, h, 0))
    path = summary_image.get("image_path")
    if path and Path(path).is_file():
        try:
            from PIL import Image

            with Image.open(path) as im:
                ax.imshow(np.asarray(im.convert("RGB")), extent=(0, w, h, 0))
        except OSError:
            pass
    ax.set_xlim(0, w)
    ax.set_ylim(h, 0)


def draw_box(ax, box: Sequence[float], color: str, linewidth: float = 1.5, linestyle: str = "-") -> None:
    """An xyxy box outline."""
    from matplotlib.patches import Rectangle

    x0, y0, x1, y1 = (float(v) for v in box)
    ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=color, linewidth=linewidth,
                           linestyle=linestyle))
