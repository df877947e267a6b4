"""MOD's loss maps and label-assignment pictures (Hao et al. 2022, Fig. 1, Fig. 4, Sec. 4.7).

* **Figure 1** ("An illustration of spatial misalignment problem"): for one ground-truth (GT) instance,
  the spatial distribution of the classification loss and of the regression loss over the points
  inside its box (red = larger loss). :func:`instance_maps` computes, on every FPN level, the two
  costs APS ranks points by (Sec. 3.2.1): for every point strictly inside the GT, as if it were a
  positive of that GT, the focal loss summed over the classes with a one-hot target
  (:func:`replicate.models.losses.focal_pair_cost`) and the box loss ``1 - GIoU`` of its decoded
  box (:func:`replicate.models.losses.giou_loss`). Each is a ``(H_l, W_l)`` array, NaN outside the box.
  :func:`plot_loss_maps` draws the two maps of one level side by side (coolwarm: blue low, red high).
* **Figure 4** ("The visualization of spatial label assignment", Sec. 4.7): the positives APS picks
  (the MOD head's APS, :class:`~replicate.models.detectors.mod.APSAssigner`) against ATSS's
  (:func:`replicate.models.assigners.atss_assign` with one square anchor of side ``8 * stride`` centred
  on every point, ATSS's setting, top-9 per level) and PAA's (the paper's third method:
  :func:`replicate.models.assigners.paa_assign` on the same anchors, scoring each by the MOD head's own
  focal + 1.3 x GIoU losses, top-9 per level, its GMM cut) on the same image and the same outputs.
  Summaries cached before PAA was added hold APS and ATSS only; :func:`methods_in` says which a summary has.
  :func:`plot_assignment` marks each method's positives with green crosses.
* :func:`spread` makes the figures' claim checkable: on the APS level, the pixel distance between the
  lowest-cls-cost and the lowest-reg-cost point (the two tasks prefer different places), and the mean
  costs at APS's positives against ATSS's (APS should pick points of lower combined cost).

:func:`figure_summary` is what the book calls: the maps of the largest GT of the first ``images`` val
images that have ground truth, and the APS/ATSS positives of every GT of the first of them, read from
``<results_dir>/analysis/<profile>/mod-maps-<run key>.json`` when present with the same settings, else
computed from the run's final checkpoint and written there (atomically).

Everything is vectorised over points (no loop over points); loops run over levels or GTs only.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ..errors import ReplicateError
from ..io import atomic_write_json
from ..models._utils import flatten_levels
from ..models.assigners import PAA_BOX_WEIGHT, atss_assign, fcos_point_masks, paa_assign, pad_targets
from ..models.aps import kept_levels
from ..models.losses import focal_pair_cost, giou_loss
from .drawing import draw_box, draw_canvas, image_file

METHODS = ("APS", "ATSS", "PAA")
ATSS_ANCHOR_SCALE = 8.0  # ATSS: one square anchor of side 8 * stride per location
ATSS_TOPK = 9
_POS_FIELDS = ("index", "level", "row", "col", "x", "y")


# ------------------------------------------------------------------------------ data


@dataclass
class InstanceMaps:
    """Loss maps and positives of one GT of one image (see the module docstring).

    ``cls_cost[l]`` / ``reg_cost[l]`` are (H_l, W_l) float arrays, NaN outside the box.
    ``positives[method]`` (method in :data:`METHODS`) maps ``index`` (flat point index, levels
    concatenated), ``level``, ``row``, ``col`` (ints) and ``x``, ``y`` (point coordinates in pixels
    of the network input) to 1-D arrays. ``kept_levels`` are the levels APS's Eq. 5 keeps, best first.
    """

    image_index: int
    gt_index: int
    image_id: int | str | None
    image_size: tuple[int, int]  # (h, w) of the resized image, before padding
    box: list[float]  # xyxy
    label: int
    strides: list[int]
    cls_cost: list[np.ndarray]
    reg_cost: list[np.ndarray]
    positives: dict[str, dict[str, np.ndarray]]
    kept_levels: list[int]

    def to_json(self) -> dict[str, Any]:
        return {
            "image_index": self.image_index, "gt_index": self.gt_index, "image_id": self.image_id,
            "image_size": list(self.image_size), "box": [float(v) for v in self.box], "label": self.label,
            "strides": list(self.strides),
            "cls_cost": [_map_to_json(m) for m in self.cls_cost],
            "reg_cost": [_map_to_json(m) for m in self.reg_cost],
            "positives": {k: _positives_to_json(v) for k, v in self.positives.items()},
            "kept_levels": list(self.kept_levels),
        }

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> "InstanceMaps":
        try:
            return cls(
                image_index=int(doc["image_index"]), gt_index=int(doc["gt_index"]), image_id=doc["image_id"],
                image_size=tuple(int(v) for v in doc["image_size"]), box=[float(v) for v in doc["box"]],
                label=int(doc["label"]), strides=[int(s) for s in doc["strides"]],
                cls_cost=[_map_from_json(m) for m in doc["cls_cost"]],
                reg_cost=[_map_from_json(m) for m in doc["reg_cost"]],
                positives={k: _positives_from_json(v) for k, v in doc["positives"].items()},
                kept_levels=[int(v) for v in doc["kept_levels"]],
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ReplicateError(f"malformed MOD loss-map record ({type(exc).__name__}: {exc})") from None


def _map_to_json(m: np.ndarray) -> list:
    m = np.asarray(m, dtype=np.float64)
    return np.where(np.isnan(m), None, m.astype(object)).tolist()


def _map_from_json(rows: list) -> np.ndarray:
    arr = np.array(rows, dtype=np.float64)  # None -> NaN
    return arr.reshape(len(rows), -1) if len(rows) else np.zeros((0, 0))


def _positives_to_json(p: dict[str, np.ndarray]) -> dict[str, list]:
    return {k: np.asarray(p[k]).tolist() for k in _POS_FIELDS}


def _positives_from_json(p: dict[str, list]) -> dict[str, np.ndarray]:
    return {k: np.asarray(p[k], dtype=np.float64 if k in ("x", "y") else np.int64) for k in _POS_FIELDS}


# ------------------------------------------------------------------------------ computation


def _require_mod_head(model: torch.nn.Module):
    from ..models.detectors.fcos import FCOSHead
    from ..models.detectors.mod import APSAssigner

    head = getattr(model, "head", None)
    if not (isinstance(head, FCOSHead) and isinstance(head.assigner, APSAssigner)):
        raise ReplicateError(f"MOD loss maps need a MOD head (FCOS + RFA + APS: an FCOS head with the APS assigner), got "
                             f"{type(head).__name__}")
    return head


def _image_size(images: Tensor, target: dict) -> tuple[int, int]:
    size = target.get("img_size")
    if size is None:
        return int(images.shape[-2]), int(images.shape[-1])
    return int(size[0]), int(size[1])


def _positive_table(mask: Tensor, points: Tensor, level: Tensor, sizes: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """The positives in ``mask`` (P,) bool as flat index, level, row, col and pixel x, y."""
    index = mask.nonzero(as_tuple=True)[0]
    starts = torch.tensor([0] + [h * w for h, w in sizes], device=points.device).cumsum(0)[:-1]
    widths = torch.tensor([w for _, w in sizes], device=points.device)
    lvl = level[index]
    local = index - starts[lvl]
    xy = points[index].double().cpu().numpy()
    return {"index": index.cpu().numpy().astype(np.int64), "level": lvl.cpu().numpy().astype(np.int64),
            "row": (local // widths[lvl]).cpu().numpy().astype(np.int64),
            "col": (local % widths[lvl]).cpu().numpy().astype(np.int64),
            "x": xy[:, 0].reshape(-1), "y": xy[:, 1].reshape(-1)}


@dataclass
class _Outputs:
    """What every map needs from one forward pass of a batch."""

    head: Any
    outs: dict[str, list[Tensor]]
    points: Tensor
    pts: list[Tensor]
    strides: Tensor
    level: Tensor
    sizes: list[tuple[int, int]]
    cls: Tensor  # (B, P, C) logits
    dist: Tensor  # (B, P, 4)
    aps: Tensor  # (B, P) gt_index of APS (the head's own assignment)
    atss: Tensor  # (B, P) gt_index of ATSS
    paa: Tensor  # (B, P) gt_index of PAA


def _forward(model: torch.nn.Module, images: Tensor, targets: list[dict],
             outs: dict[str, list[Tensor]] | None = None) -> _Outputs:
    head = _require_mod_head(model)
    if len(targets) != images.shape[0]:
        raise ReplicateError(f"{images.shape[0]} images but {len(targets)} targets")
    device = next(model.parameters()).device
    images = images.to(device)
    targets = [{k: (v.to(device) if torch.is_tensor(v) else v) for k, v in t.items()} for t in targets]
    if outs is None:
        outs = model(images)
    pts, strides, level = head.level_points(outs["cls"])
    points = torch.cat(pts)
    sizes = [tuple(int(s) for s in m.shape[-2:]) for m in outs["cls"]]
    cls = flatten_levels(outs["cls"], head.num_classes)
    dist = flatten_levels(outs["dist"], 4)
    assignment, _ = head.assign(outs, targets)
    half = strides[:, None] * (ATSS_ANCHOR_SCALE / 2)
    anchors = torch.cat([points - half, points + half], dim=1)
    gt_boxes, gt_labels, gt_valid, _, _ = pad_targets(targets)
    atss = atss_assign(anchors, [len(p) for p in pts], gt_boxes, gt_labels, gt_valid, topk=ATSS_TOPK)
    c = head.cfg

    def pair_cost(img: Tensor, prior: Tensor, gt: Tensor) -> Tensor:  # PAA's anchor score: its training losses
        cost_cls = focal_pair_cost(cls, img, prior, gt_labels[img, gt], c.focal_alpha, c.focal_gamma)
        decoded = head.coder.decode(points[prior], dist[img, prior].float())
        return cost_cls + PAA_BOX_WEIGHT * giou_loss(decoded, gt_boxes[img, gt], reduction="none")

    paa = paa_assign(anchors, [len(p) for p in pts], gt_boxes, gt_labels, gt_valid, pair_cost, topk=ATSS_TOPK)
    return _Outputs(head, outs, points, list(pts), strides, level, sizes, cls, dist, assignment.gt_index,
                    atss.gt_index, paa.gt_index)


def _kept_levels(head, cost_cls: Tensor, cost_reg: Tensor, inside: Tensor, in_range: Tensor, level: Tensor,
                 num_levels: int) -> list[int]:
    """Eq. 5's kept levels of one GT, best (smallest mean top-K cost) first, as :func:`aps_assign` ranks them."""
    aps = head.cfg.aps
    candidate = inside & in_range if aps.scale == "range" else inside
    kept_n = num_levels if aps.scale == "range" else aps.num_levels_kept
    inf = torch.full_like(cost_cls, math.inf)
    cls = torch.where(candidate, cost_cls, inf)[None]
    reg = torch.where(candidate, cost_reg, inf)[None]
    kept, ok = kept_levels(cls, reg, candidate[None], level, num_levels, aps.topk, kept_n, aps.criterion)
    return [int(k) for k, good in zip(kept[0].tolist(), ok[0].tolist()) if good]


def _maps_of(o: _Outputs, targets: list[dict], image_size: tuple[int, int], img: int, g: int) -> InstanceMaps:
    head, c = o.head, o.head.cfg
    boxes = torch.as_tensor(targets[img]["boxes"], dtype=torch.float32, device=o.points.device).reshape(-1, 4)
    labels = torch.as_tensor(targets[img]["labels"], dtype=torch.long, device=o.points.device).reshape(-1)
    box, label = boxes[g], int(labels[g])
    inside, _, in_range = (m[0, :, 0] for m in fcos_point_masks(o.points, o.strides, o.level, box[None, None],
                                                                c.scale_ranges, c.center_radius))
    prior = inside.nonzero(as_tuple=True)[0]
    img_vec = torch.full_like(prior, img)
    cost_cls = focal_pair_cost(o.cls, img_vec, prior, torch.full_like(prior, label), c.focal_alpha, c.focal_gamma)
    decoded = head.coder.decode(o.points[prior], o.dist[img, prior].float())
    cost_reg = giou_loss(decoded, box.expand_as(decoded), reduction="none")
    full_cls = torch.full((o.points.shape[0],), math.nan, dtype=torch.float64, device=o.points.device)
    full_reg = full_cls.clone()
    full_cls[prior] = cost_cls.double()
    full_reg[prior] = cost_reg.double()
    counts = [h * w for h, w in o.sizes]
    cls_maps = [m.view(h, w).cpu().numpy() for m, (h, w) in zip(full_cls.split(counts), o.sizes)]
    reg_maps = [m.view(h, w).cpu().numpy() for m, (h, w) in zip(full_reg.split(counts), o.sizes)]
    kept = _kept_levels(head, torch.nan_to_num(full_cls, nan=math.inf).float(),
                        torch.nan_to_num(full_reg, nan=math.inf).float(), inside, in_range, o.level, len(o.sizes))
    positives = {name: _positive_table(gi[img] == g, o.points, o.level, o.sizes)
                 for name, gi in (("APS", o.aps), ("ATSS", o.atss), ("PAA", o.paa))}
    image_id = targets[img].get("image_id")
    image_id = int(image_id) if isinstance(image_id, (int, np.integer)) or torch.is_tensor(image_id) else image_id
    return InstanceMaps(img, g, image_id, image_size, [float(v) for v in box.tolist()], label,
                        [int(s) for s in c.strides], cls_maps, reg_maps, positives, kept)


def _largest_gt(target: dict, where: str) -> int:
    boxes = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4)
    if boxes.shape[0] == 0:
        raise ReplicateError(f"{where} has no ground-truth box to draw the MOD loss maps of")
    area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return int(area.argmax())


@torch.no_grad()
def instance_maps(model: torch.nn.Module, images: Tensor, targets: list[dict],
                  gt: tuple[int, int] | None = None, *, outs: dict[str, list[Tensor]] | None = None) -> InstanceMaps:
    """MOD Fig. 1's loss maps and Fig. 4's positives of GT ``gt = (image index, GT index)`` of a batch.

    Default: the GT of largest area in image 0. The model must have a MOD head (FCOS with the APS assigner); it is
    put in eval mode (and left so). ``outs``: the model's raw outputs on ``images`` in eval mode, when
    already at hand (saves the forward pass).
    """
    _require_mod_head(model)
    model.eval()
    if gt is None:
        gt = (0, _largest_gt(targets[0], "image 0") if targets else 0)
    img, g = int(gt[0]), int(gt[1])
    if not 0 <= img < len(targets):
        raise ReplicateError(f"image index {img} out of range for a batch of {len(targets)} images")
    n_gt = torch.as_tensor(targets[img]["boxes"]).reshape(-1, 4).shape[0]
    if not 0 <= g < n_gt:
        raise ReplicateError(f"GT index {g} out of range: image {img} has {n_gt} ground-truth boxes")
    o = _forward(model, images, targets, outs)
    return _maps_of(o, targets, _image_size(images, targets[img]), img, g)


@torch.no_grad()
def assignment_image(model: torch.nn.Module, images: Tensor, targets: list[dict], img: int = 0, *,
                     outs: dict[str, list[Tensor]] | None = None) -> dict[str, Any]:
    """Fig. 4's data for every GT of image ``img``: boxes, labels and the APS, ATSS and PAA positives per GT
    (JSON-able; the layout :func:`plot_assignment` reads). ``outs`` as in :func:`instance_maps`."""
    _require_mod_head(model)
    model.eval()
    if not 0 <= img < len(targets):
        raise ReplicateError(f"image index {img} out of range for a batch of {len(targets)} images")
    o = _forward(model, images, targets, outs)
    boxes = torch.as_tensor(targets[img]["boxes"], dtype=torch.float32).reshape(-1, 4)
    labels = torch.as_tensor(targets[img]["labels"], dtype=torch.long).reshape(-1)
    positives = {name: [_positives_to_json(_positive_table(gi[img] == g, o.points, o.level, o.sizes))
                        for g in range(boxes.shape[0])]
                 for name, gi in (("APS", o.aps), ("ATSS", o.atss), ("PAA", o.paa))}
    image_id = targets[img].get("image_id")
    image_id = int(image_id) if isinstance(image_id, (int, np.integer)) or torch.is_tensor(image_id) else image_id
    return {"image_id": image_id, "image_size": list(_image_size(images, targets[img])),
            "boxes": boxes.tolist(), "labels": labels.tolist(), "strides": [int(s) for s in o.head.cfg.strides],
            "positives": positives}


# ------------------------------------------------------------------------------ statistic


def methods_in(positives: dict[str, Any]) -> list[str]:
    """The methods of :data:`METHODS` whose positives a summary holds, in that order."""
    return [m for m in METHODS if m in positives]


def default_level(maps: InstanceMaps) -> int:
    """The best level APS kept, else the first level with points inside the box."""
    if maps.kept_levels:
        return int(maps.kept_levels[0])
    for i, m in enumerate(maps.cls_cost):
        if np.isfinite(m).any():
            return i
    raise ReplicateError(f"GT {maps.gt_index} of image {maps.image_index} has no point inside its box on any level")


def _argmin_xy(m: np.ndarray, stride: int) -> tuple[float, float] | None:
    if not np.isfinite(m).any():
        return None
    r, c = np.unravel_index(np.nanargmin(m), m.shape)
    return (c + 0.5) * stride, (r + 0.5) * stride


def spread(maps: InstanceMaps, level: int | None = None) -> dict[str, float]:
    """Fig. 1/4's claim as numbers (plain floats; NaN where undefined):

    * ``argmin_distance``: on ``level`` (default :func:`default_level`), the pixel distance between the
      point of least classification cost and the point of least regression cost;
    * ``{aps,atss}_{cls,reg,total}``: the mean cls, reg and cls + reg cost over each method's
      positives for this GT (all levels), and ``{aps,atss}_count`` their numbers.
    """
    level = default_level(maps) if level is None else int(level)
    stride = maps.strides[level]
    a, b = _argmin_xy(maps.cls_cost[level], stride), _argmin_xy(maps.reg_cost[level], stride)
    out: dict[str, float] = {"level": float(level), "stride": float(stride),
                             "argmin_distance": math.nan if a is None or b is None else float(math.dist(a, b))}
    flat_cls = np.concatenate([m.ravel() for m in maps.cls_cost])
    flat_reg = np.concatenate([m.ravel() for m in maps.reg_cost])
    mean = (lambda v: float(np.nanmean(v)) if np.isfinite(v).any() else math.nan)  # noqa: E731
    for name in methods_in(maps.positives):
        index = np.asarray(maps.positives[name]["index"], dtype=np.int64)
        cls, reg = flat_cls[index], flat_reg[index]
        key = name.lower()
        out.update({f"{key}_count": float(len(cls)), f"{key}_cls": mean(cls), f"{key}_reg": mean(reg),
                    f"{key}_total": mean(cls + reg)})
    return out


# ------------------------------------------------------------------------------ cached summary


def figure_summary(record: dict[str, Any], model_cfg, profile: str, *, results_dir: str | Path = "results",
                   data_root: str | Path | None = None, scale: str | None = None,
                   images: int = 2) -> dict[str, Any]:
    """``{"maps": [InstanceMaps], "assignment": dict, "image_ids": [...], "key": run key}`` of a MOD run.

    ``maps``: the largest GT of each of the first ``images`` val images with ground truth (Fig. 1);
    ``assignment``: every GT of the first of them with its APS and ATSS positives (Fig. 4), plus the
    image's ``file_name`` and ``image_path``. Cached per run key (see the module docstring); the cache
    is recomputed when its settings differ.
    """
    from ..data.batching import Collate
    from .cache import cached_or_trained

    settings = {"images": images, "scale": scale}
    path, cached, trained = cached_or_trained(record, model_cfg, profile, "mod-maps", settings, "MOD loss-map summary",
                                              results_dir=results_dir, data_root=data_root, scale=scale)
    if cached is not None:
        return _summary_from_json(cached, path)
    net, val_set = trained
    net = net.eval()
    collate = Collate()
    maps, assignment = [], None
    for index in range(len(val_set)):
        if len(maps) >= images:
            break
        sample = val_set[index]
        if torch.as_tensor(sample[1]["boxes"]).reshape(-1, 4).shape[0] == 0:
            continue
        batch = collate([sample])
        device = next(net.parameters()).device
        with torch.no_grad():
            outs = net(batch.images.to(device))
        maps.append(instance_maps(net, batch.images, batch.targets, outs=outs))
        if assignment is None:
            assignment = assignment_image(net, batch.images, batch.targets, 0, outs=outs)
            assignment.update(image_file(val_set, assignment["image_id"]))
    if assignment is None:
        raise ReplicateError(f"no val image of profile {profile!r} has a ground-truth box to draw MOD's maps of")
    document = {"key": record["key"], "settings": settings, "image_ids": [m.image_id for m in maps],
                "maps": [m.to_json() for m in maps], "assignment": assignment,
                "provenance": record.get("provenance", {})}
    atomic_write_json(path, document)
    return _summary_from_json(document, path)


def _summary_from_json(document: dict[str, Any], path: Path) -> dict[str, Any]:
    try:
        maps = [InstanceMaps.from_json(m) for m in document["maps"]]
        return {"maps": maps, "assignment": document["assignment"], "image_ids": document["image_ids"],
                "key": document["key"]}
    except (KeyError, TypeError, ReplicateError) as exc:
        raise ReplicateError(f"{path}: malformed MOD loss-map summary ({exc})") from None


# ------------------------------------------------------------------------------ plots


def plot_loss_maps(maps: InstanceMaps, level: int | None = None):
    """Figure 1: the classification and regression cost maps of the GT on ``level`` (default: the best
    level APS kept), coolwarm (blue low, red high), grey outside the box, with the box and colorbars."""
    import matplotlib.pyplot as plt

    level = default_level(maps) if level is None else int(level)
    if not 0 <= level < len(maps.cls_cost):
        raise ReplicateError(f"level {level} out of range: the maps have {len(maps.cls_cost)} levels")
    stride = maps.strides[level]
    cmap = plt.get_cmap("coolwarm").with_extremes(bad="lightgrey")
    x0, y0, x1, y1 = maps.box
    margin = 2 * stride
    fig, axes = plt.subplots(1, 2, figsize=(9.0, 4.0))
    for ax, (name, m) in zip(axes, (("classification cost", maps.cls_cost[level]),
                                     ("regression cost (1 - GIoU)", maps.reg_cost[level]))):
        h, w = m.shape
        im = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, extent=(0, w * stride, h * stride, 0),
                       interpolation="nearest")
        draw_box(ax, maps.box, "black")
        ax.set_xlim(max(0.0, x0 - margin), min(w * stride, x1 + margin))
        ax.set_ylim(min(h * stride, y1 + margin), max(0.0, y0 - margin))
        ax.set_title(f"{name}\nlevel P{round(math.log2(stride))} (stride {stride})", fontsize="small")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.suptitle(f"image {maps.image_id}, GT {maps.gt_index} (label {maps.label})", fontsize="small")
    fig.tight_layout()
    return fig


def plot_assignment(summary_image: dict[str, Any], which: Sequence[str] | None = None):
    """Figure 4: one panel per method in ``which`` (default: every method the summary holds) with the image (or
    a grey canvas of its size), every GT box in its own colour and green '+' markers at that method's positive
    points."""
    import matplotlib.pyplot as plt

    which = methods_in(summary_image["positives"]) if which is None else which

    unknown = [m for m in which if m not in summary_image["positives"]]
    if unknown or not which:
        raise ReplicateError(f"methods {list(which)} not all in the summary (has {list(summary_image['positives'])})")
    colors = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(1, len(which), figsize=(4.5 * len(which), 4.0), squeeze=False)
    for ax, name in zip(axes[0], which):
        draw_canvas(ax, summary_image)
        total = 0
        for g, (box, pos) in enumerate(zip(summary_image["boxes"], summary_image["positives"][name])):
            draw_box(ax, box, colors[g % len(colors)])
            ax.scatter(pos["x"], pos["y"], marker="+", color="lime", s=30, linewidths=1.2)
            total += len(pos["x"])
        ax.set_title(f"{name}: {total} positives, {len(summary_image['boxes'])} GTs", fontsize="small")
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return fig
