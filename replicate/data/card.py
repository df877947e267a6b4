"""The dataset card: statistics tables and figures of a COCO-format detection dataset.

Works on any COCO-format file; the key-offset column (how far the class evidence sits from the box
centre, as a fraction of the half-extent) needs the synthetic benchmark's ``key_box`` field.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle
from PIL import Image

from ..io import read_json
from .synth_spec import LARGE_AREA, SMALL_AREA


def _arrays(data: dict) -> dict[str, np.ndarray]:
    anns = data["annotations"]
    n = len(anns)
    boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(n, 4)
    crowd = np.array([a.get("iscrowd", 0) for a in anns], dtype=bool)
    key = np.array([a.get("key_box", [np.nan] * 4) for a in anns], dtype=np.float64).reshape(n, 4)
    centre = boxes[:, :2] + boxes[:, 2:] / 2
    key_centre = key[:, :2] + key[:, 2:] / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        offset = np.hypot(*((key_centre - centre) / (boxes[:, 2:] / 2)).T)
        aspect = boxes[:, 2] / boxes[:, 3]
    return {
        "area": np.array([a.get("area", 0.0) for a in anns], dtype=np.float64),
        "box_area": boxes[:, 2] * boxes[:, 3],
        "aspect": aspect,
        "crowd": crowd,
        "offset": offset,
        "image_id": np.array([a["image_id"] for a in anns]),
        "category_id": np.array([a["category_id"] for a in anns]),
    }


def split_statistics(ann_file: str | os.PathLike, split: str | None = None) -> dict:
    """One row of the card: counts, COCO size buckets (by annotation ``area``, as COCOeval uses), aspect
    ratios and key offsets of the non-crowd objects."""
    data = read_json(ann_file, what="annotation file")
    a = _arrays(data)
    obj = ~a["crowd"]
    n_img = len(data["images"])
    area = a["area"][obj]
    per_image = np.bincount(np.unique(a["image_id"][obj], return_inverse=True)[1]) if obj.any() else np.zeros(0)
    offsets = a["offset"][obj]
    row = {
        "split": split or Path(ann_file).stem,
        "images": n_img,
        "objects": int(obj.sum()),
        "crowd regions": int(a["crowd"].sum()),
        "images without objects": n_img - len(np.unique(a["image_id"])),
        "crowded images": sum(bool(im.get("crowded")) for im in data["images"]),
        "objects / image (max)": int(per_image.max()) if len(per_image) else 0,
        "small %": 100.0 * float(np.mean(area < SMALL_AREA)) if len(area) else 0.0,
        "medium %": 100.0 * float(np.mean((area >= SMALL_AREA) & (area < LARGE_AREA))) if len(area) else 0.0,
        "large %": 100.0 * float(np.mean(area >= LARGE_AREA)) if len(area) else 0.0,
        "aspect min": float(np.min(a["aspect"][obj])) if len(area) else float("nan"),
        "aspect max": float(np.max(a["aspect"][obj])) if len(area) else float("nan"),
        "key offset median": float(np.nanmedian(offsets)) if np.isfinite(offsets).any() else float("nan"),
        "categories": len(data["categories"]),
    }
    row["objects / image"] = row["objects"] / max(n_img, 1)
    return row


def statistics_table(ann_files: dict[str, str | os.PathLike]) -> pd.DataFrame:
    """The card's main table: one column per split (``{"train": path, "val": path}``), one row per
    statistic; counts stay integers, ratios are rounded to two decimals."""
    rows = [split_statistics(path, split) for split, path in ann_files.items()]
    fmt = lambda v: round(v, 2) if isinstance(v, float) else v  # noqa: E731
    return pd.DataFrame({r["split"]: {k: fmt(v) for k, v in r.items() if k != "split"} for r in rows}, dtype=object)


def class_table(ann_files: dict[str, str | os.PathLike]) -> pd.DataFrame:
    """Per category: id, name, key pattern, and the number of non-crowd objects in each split."""
    frames = []
    cats = None
    for split, path in ann_files.items():
        data = read_json(path, what="annotation file")
        cats = cats or data["categories"]
        a = _arrays(data)
        ids, counts = np.unique(a["category_id"][~a["crowd"]], return_counts=True)
        frames.append(pd.Series(dict(zip(ids.tolist(), counts.tolist())), name=split, dtype="float64"))
    table = pd.DataFrame(
        [{"id": c["id"], "name": c["name"], **{k: c[k] for k in ("pattern", "angle_deg", "cycles") if k in c}}
         for c in cats]
    ).set_index("id")
    for s in frames:
        table[s.name] = s.reindex(table.index).fillna(0).astype(int)
    return table


def plot_distributions(ann_file: str | os.PathLike, title: str = "") -> plt.Figure:
    """Histograms of object size (sqrt of area, with COCO's 32/96 bounds), aspect ratio and key offset."""
    a = _arrays(read_json(ann_file, what="annotation file"))
    obj = ~a["crowd"]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    axes[0].hist(np.sqrt(a["area"][obj]), bins=40, color="tab:blue")
    for bound in (32, 96):
        axes[0].axvline(bound, color="k", ls="--", lw=1)
    axes[0].set_xlabel("sqrt(area) [px]  (COCO small | medium | large)")
    axes[1].hist(np.log2(a["aspect"][obj]), bins=40, color="tab:orange")
    axes[1].set_xticks(np.log2([1 / 5, 1 / 2, 1, 2, 5]), ["1:5", "1:2", "1:1", "2:1", "5:1"])
    axes[1].set_xlabel("aspect ratio w:h")
    off = a["offset"][obj]
    if np.isfinite(off).any():
        axes[2].hist(off[np.isfinite(off)], bins=30, range=(0, 1), color="tab:green")
    axes[2].set_xlabel("key offset / half-extent")
    for ax in axes:
        ax.set_ylabel("objects")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_examples(
    ann_file: str | os.PathLike, images_dir: str | os.PathLike, *, n: int = 8, cols: int = 4, seed: int = 0
) -> plt.Figure:
    """Example images with their boxes (red; crowd regions yellow), keys (green) and class names."""
    data = read_json(ann_file, what="annotation file")
    names = {c["id"]: c["name"] for c in data["categories"]}
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    rng = np.random.default_rng(seed)
    images = [data["images"][i] for i in rng.choice(len(data["images"]), size=min(n, len(data["images"])), replace=False)]
    rows = int(np.ceil(len(images) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, info in zip(axes.ravel(), images):
        ax.imshow(Image.open(Path(images_dir) / info["file_name"]))
        for ann in by_image.get(info["id"], []):
            x, y, w, h = ann["bbox"]
            colour = "yellow" if ann.get("iscrowd") else "red"
            ax.add_patch(Rectangle((x, y), w, h, fill=False, ec=colour, lw=1))
            if "key_box" in ann:
                kx, ky, kw, kh = ann["key_box"]
                ax.add_patch(Rectangle((kx, ky), kw, kh, fill=False, ec="lime", lw=0.8))
            ax.text(x, y - 1, names[ann["category_id"]], color=colour, fontsize=6, va="bottom")
        ax.set_title(f"image {info['id']}", fontsize=8)
    fig.tight_layout()
    return fig
