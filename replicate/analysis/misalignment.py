"""Classification/localization misalignment statistics of a one-stage detector, before and after NMS.

Replicates the motivating analysis of RetinaNet-Conf ("Improvement of Classification in One-Stage
Detector", Sec. 1, Table 1, Figures 1-2), which inspects a trained RetinaNet on ten COCO validation
images.

Definitions (one image, dense predictions over N priors and C classes):

* a *candidate* is a (prior, class) pair whose class probability exceeds ``score_thr`` (0.05); its
  ``iou`` is the largest IoU of its decoded box with any ground-truth box (0 without ground truth);
* *Before NMS* counts all candidates, *After NMS* those surviving class-wise NMS at ``nms_iou`` (0.5,
  no per-image cap);
* ``cls>t`` counts candidates with score > t, ``iou>t`` candidates with iou > t;
* ``Positive_NUM`` / ``iou>0.5`` counts the *priors* (anchors) whose IoU with some ground truth
  exceeds 0.5, i.e. the positive training anchors;
* the *proportion* of a condition in a stage is its count divided by the stage's candidate count
  (the ``cls>0.05`` row);
* the paper's "drops by x%" is the change of that proportion in percentage points (after - before),
  and its "on average" is the plain mean of the per-image changes. This reading reproduces every
  number in the text from Table 1: iou>0.5 -39.84 (Image6), -19.52 on average; cls>0.5 +1.32
  (Image2), +1.55 (Image3), +0.02 (Image8), -1.09 on average. The text's "31.5% in Image1" is the
  value of Image2 (Image1 gives -11.34), apparently a mislabelled column.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import pandas as pd
import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_iou

from ..errors import ReplicateError

CLS_THRESHOLDS = (0.05, 0.5, 0.6, 0.7, 0.8, 0.9)
IOU_THRESHOLDS = (0.5, 0.6, 0.7, 0.8, 0.9)
POSITIVE = "Positive_NUM"
BEFORE = "Before NMS"
AFTER = "After NMS"
STAGES = (BEFORE, AFTER)
CANDIDATE_COLUMNS = ("prior", "label", "score", "iou", "kept")
CANDIDATE_DTYPES = {"prior": "int64", "label": "int64", "score": "float64", "iou": "float64", "kept": "bool"}


@dataclass(frozen=True)
class ImagePredictions:
    """Dense predictions of one image, before any thresholding (in one coordinate frame)."""

    priors: Tensor  # (N, 4) xyxy anchors / prior boxes
    scores: Tensor  # (N, C) class probabilities in [0, 1]
    boxes: Tensor  # (N, 4) xyxy decoded predicted boxes
    gt_boxes: Tensor  # (G, 4) xyxy
    gt_labels: Tensor  # (G,) long
    image_id: int | str = 0

    def __post_init__(self) -> None:
        where = f"image {self.image_id!r}"
        for name in ("priors", "boxes", "gt_boxes"):
            shape = tuple(getattr(self, name).shape)
            if len(shape) != 2 or shape[1] != 4:
                raise ReplicateError(f"{where}: {name} must have shape (n, 4), got {shape}")
        if self.scores.dim() != 2:
            raise ReplicateError(f"{where}: scores must have shape (N, C), got {tuple(self.scores.shape)}")
        n = self.scores.shape[0]
        if self.boxes.shape[0] != n or self.priors.shape[0] != n:
            raise ReplicateError(
                f"{where}: scores, boxes and priors must have the same number of rows, got "
                f"{n}, {self.boxes.shape[0]} and {self.priors.shape[0]}"
            )
        if tuple(self.gt_labels.shape) != (self.gt_boxes.shape[0],):
            raise ReplicateError(
                f"{where}: gt_labels must have shape ({self.gt_boxes.shape[0]},), got {tuple(self.gt_labels.shape)}"
            )
        if self.scores.numel() and (self.scores.min() < 0 or self.scores.max() > 1):
            raise ReplicateError(f"{where}: scores must be probabilities in [0, 1] (logits given?)")


def _max_iou(boxes: Tensor, gt_boxes: Tensor, same_class: Tensor | None = None) -> Tensor:
    """Per box, the largest IoU with a ground-truth box (only where ``same_class``); 0 without any."""
    if gt_boxes.shape[0] == 0:
        return boxes.new_zeros(boxes.shape[0])
    iou = box_iou(boxes, gt_boxes)
    if same_class is not None:
        iou = torch.where(same_class, iou, torch.zeros_like(iou))
    return iou.max(dim=1).values


def candidates(
    pred: ImagePredictions,
    score_thr: float = 0.05,
    nms_iou: float = 0.5,
    pre_nms_topk: int | None = None,
    class_aware_iou: bool = False,
) -> pd.DataFrame:
    """One row per (prior, class) pair with score > ``score_thr``: prior, label, score, iou, kept.

    ``pre_nms_topk`` keeps only the image's best candidates by score first. ``iou`` is the box's
    largest IoU with any ground truth (with ``class_aware_iou``, with ground truth of its label).
    ``kept`` marks the survivors of class-wise NMS at ``nms_iou``.
    """
    scores = pred.scores.detach().float().cpu()
    prior, label = torch.nonzero(scores > score_thr, as_tuple=True)
    score = scores[prior, label]
    if pre_nms_topk is not None and score.numel() > pre_nms_topk:
        best = torch.topk(score, pre_nms_topk).indices.sort().values
        prior, label, score = prior[best], label[best], score[best]
    boxes = pred.boxes.detach().float().cpu()[prior]
    gt_boxes = pred.gt_boxes.detach().float().cpu()
    same_class = label[:, None] == pred.gt_labels.cpu()[None, :] if class_aware_iou else None
    kept = torch.zeros(score.numel(), dtype=torch.bool)
    kept[batched_nms(boxes, score, label, nms_iou)] = True
    return pd.DataFrame(
        {
            "prior": prior.numpy().astype("int64"),
            "label": label.numpy().astype("int64"),
            "score": score.double().numpy(),
            "iou": _max_iou(boxes, gt_boxes, same_class).double().numpy(),
            "kept": kept.numpy(),
        },
        columns=list(CANDIDATE_COLUMNS),
    )


def object_gaps(pred: ImagePredictions, pos_iou: float = 0.5) -> pd.DataFrame:
    """Per ground-truth object: how much localization its top-scored box gives away (the benchmark's dial).

    An object's candidates are the priors whose decoded box overlaps it with IoU >= ``pos_iou``, scored by
    their probability of the object's class. ``best_iou`` is the best localization among them,
    ``top_iou`` that of the top-scored one and ``gap = best_iou - top_iou`` (0 when the detector's most
    confident box is also its best-localized one). Objects without a candidate are left out.
    """
    if pred.gt_boxes.shape[0] == 0:
        return pd.DataFrame(columns=["gt", "candidates", "best_iou", "top_iou", "gap"])
    iou = box_iou(pred.boxes.detach().float().cpu(), pred.gt_boxes.detach().float().cpu())  # (N, G)
    score = pred.scores.detach().float().cpu()[:, pred.gt_labels.cpu()]  # (N, G): each object's class
    cand = iou >= pos_iou
    count = cand.sum(dim=0)
    best = torch.where(cand, iou, torch.zeros_like(iou)).amax(dim=0)
    top = torch.where(cand, score, torch.full_like(score, -1.0)).argmax(dim=0)
    top_iou = iou.gather(0, top[None]).squeeze(0)
    keep = count > 0
    return pd.DataFrame({"gt": torch.nonzero(keep).squeeze(1).numpy(), "candidates": count[keep].numpy(),
                         "best_iou": best[keep].double().numpy(), "top_iou": top_iou[keep].double().numpy(),
                         "gap": (best - top_iou)[keep].double().numpy()})


def positive_priors(pred: ImagePredictions, pos_iou: float = 0.5) -> int:
    """Number of priors whose largest IoU with any ground-truth box exceeds ``pos_iou``."""
    iou = _max_iou(pred.priors.detach().float().cpu(), pred.gt_boxes.detach().float().cpu())
    return int((iou > pos_iou).sum())


def _condition(kind: str, threshold: float) -> str:
    return f"{kind}>{threshold:g}"


def _parse_condition(condition: str) -> tuple[str, float]:
    kind, _, threshold = condition.partition(">")
    if kind not in ("cls", "iou") or not threshold:
        raise ReplicateError(f"condition {condition!r} is not of the form 'cls>t' or 'iou>t'")
    return kind, float(threshold)


def _stage_counts(cands: pd.DataFrame, cls_thresholds: Sequence[float], iou_thresholds: Sequence[float]) -> list[int]:
    """Counts of the rows of one stage: cls>t for each cls threshold, then iou>t for each iou threshold."""
    cls = (cands["score"].to_numpy()[:, None] > list(cls_thresholds)).sum(axis=0)
    iou = (cands["iou"].to_numpy()[:, None] > list(iou_thresholds)).sum(axis=0)
    return [int(c) for c in cls] + [int(c) for c in iou]


def _table_index(cls_thresholds: Sequence[float], iou_thresholds: Sequence[float], pos_iou: float) -> pd.MultiIndex:
    conditions = [_condition("cls", t) for t in cls_thresholds] + [_condition("iou", t) for t in iou_thresholds]
    rows = [(POSITIVE, _condition("iou", pos_iou))] + [(stage, c) for stage in STAGES for c in conditions]
    return pd.MultiIndex.from_tuples(rows, names=["stage", "condition"])


def _image_columns(n: int) -> list[str]:
    return [f"Image{i + 1}" for i in range(n)]


def count_table(
    preds: Sequence[ImagePredictions],
    score_thr: float = 0.05,
    nms_iou: float = 0.5,
    pre_nms_topk: int | None = None,
    cls_thresholds: Sequence[float] = CLS_THRESHOLDS,
    iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
    pos_iou: float = 0.5,
) -> pd.DataFrame:
    """Table 1 of the paper for ``preds``: counts per (stage, condition) row and image column.

    The lowest of ``cls_thresholds`` must be ``score_thr``: that row is each stage's candidate count,
    the population of :func:`proportion_table`.
    """
    if len(preds) == 0:
        raise ReplicateError("count_table needs at least one image of predictions, got none")
    if min(cls_thresholds) != score_thr:
        raise ReplicateError(
            f"the lowest cls threshold must equal score_thr={score_thr:g} (the candidate count), "
            f"got {tuple(cls_thresholds)}"
        )
    columns = {}
    for name, pred in zip(_image_columns(len(preds)), preds):
        cands = candidates(pred, score_thr=score_thr, nms_iou=nms_iou, pre_nms_topk=pre_nms_topk)
        columns[name] = (
            [positive_priors(pred, pos_iou)]
            + _stage_counts(cands, cls_thresholds, iou_thresholds)
            + _stage_counts(cands[cands["kept"]], cls_thresholds, iou_thresholds)
        )
    return pd.DataFrame(columns, index=_table_index(cls_thresholds, iou_thresholds, pos_iou), dtype="int64")


def _stage(counts: pd.DataFrame, stage: str) -> pd.DataFrame:
    if stage not in counts.index.get_level_values("stage"):
        stages = sorted(set(counts.index.get_level_values("stage")))
        raise ReplicateError(f"count table has no {stage!r} rows (stages: {stages})")
    return counts.xs(stage, level="stage")


def _population(stage_counts: pd.DataFrame) -> pd.Series:
    """The stage's candidate count: its row with the lowest cls threshold."""
    cls_rows = [c for c in stage_counts.index if _parse_condition(c)[0] == "cls"]
    if not cls_rows:
        raise ReplicateError("count table stage has no 'cls>t' row to take as the candidate count")
    return stage_counts.loc[min(cls_rows, key=lambda c: _parse_condition(c)[1])]


def _stage_proportions(counts: pd.DataFrame, stage: str) -> pd.DataFrame:
    """Counts of one stage divided by its candidate count, per image column, plus the pooled 'all' column."""
    stage_counts = _stage(counts, stage).astype("float64")
    population = _population(stage_counts)
    proportions = stage_counts.div(population, axis=1)
    proportions["all"] = stage_counts.sum(axis=1) / population.sum()
    return proportions


def proportion_table(counts: pd.DataFrame) -> pd.DataFrame:
    """Per stage (Before NMS, After NMS), each count over the stage's candidate count (cls>score_thr row).

    Image columns as in ``counts`` plus 'all': the ratio of counts summed over images. 0/0 is NaN.
    """
    return pd.concat({stage: _stage_proportions(counts, stage) for stage in STAGES}, names=["stage", "condition"])


def proportion_change(counts: pd.DataFrame) -> pd.DataFrame:
    """The paper's "drops/increases by x%": after-NMS minus before-NMS proportion, in percentage points.

    Rows are the conditions, columns the images plus 'mean', the plain mean of the per-image changes
    (the paper's "on average"). Negative values are drops.
    """
    before = _stage_proportions(counts, BEFORE).drop(columns="all")
    after = _stage_proportions(counts, AFTER).drop(columns="all")
    change = (after - before) * 100.0
    change["mean"] = change.mean(axis=1)
    return change


_PAPER_TABLE1 = {
    "Image1": [331, 7213, 110, 71, 36, 16, 3, 1087, 912, 650, 307, 105, 429, 5, 5, 3, 2, 1, 16, 13, 11, 5, 4],
    "Image2": [320, 2543, 79, 38, 18, 4, 1, 1116, 963, 714, 473, 136, 113, 5, 3, 2, 2, 1, 14, 10, 10, 10, 4],
    "Image3": [170, 3105, 140, 84, 47, 13, 6, 856, 656, 423, 238, 23, 66, 4, 4, 3, 3, 3, 6, 6, 6, 5, 5],
    "Image4": [198, 3539, 23, 14, 7, 1, 0, 507, 384, 271, 167, 49, 188, 1, 1, 1, 1, 0, 10, 6, 4, 3, 1],
    "Image5": [84, 634, 30, 15, 0, 0, 0, 187, 136, 82, 52, 14, 35, 1, 1, 0, 0, 0, 3, 2, 0, 0, 0],
    "Image6": [77, 364, 83, 75, 55, 38, 26, 249, 228, 191, 152, 77, 14, 2, 2, 2, 2, 1, 4, 3, 2, 2, 1],
    "Image7": [131, 1700, 35, 28, 21, 10, 1, 336, 267, 185, 98, 17, 76, 1, 1, 1, 1, 1, 10, 4, 4, 2, 0],
    "Image8": [210, 13480, 29, 12, 8, 0, 0, 549, 340, 212, 111, 28, 836, 2, 1, 1, 0, 0, 17, 8, 4, 2, 0],
    "Image9": [310, 5422, 363, 264, 172, 63, 10, 2004, 1629, 1197, 816, 324, 224, 13, 12, 10, 6, 1, 20, 16, 15, 14, 9],
    "Image10": [110, 1067, 135, 107, 82, 57, 21, 487, 449, 372, 208, 68, 44, 5, 5, 5, 5, 3, 8, 8, 6, 4, 2],
}


def paper_table1() -> pd.DataFrame:
    """Table 1 of RetinaNet-Conf (Sec. 1) as printed, in the layout of :func:`count_table`."""
    return pd.DataFrame(_PAPER_TABLE1, index=_table_index(CLS_THRESHOLDS, IOU_THRESHOLDS, 0.5), dtype="int64")


def candidates_frame(columns: Mapping[str, Sequence[Any]]) -> pd.DataFrame:
    """A :func:`candidates` table from its columns (as stored in JSON), with its dtypes: an image without
    candidates keeps its columns and a boolean ``kept``."""
    return pd.DataFrame(columns, columns=list(CANDIDATE_COLUMNS)).astype(CANDIDATE_DTYPES)


def plot_candidates(frames: Sequence[pd.DataFrame], names: Sequence[str], score_thr: float = 0.05,
                    nms_iou: float = 0.5):
    """Figure 1 from :func:`candidates` tables (one per image, titled by ``names``; an image may have none)."""
    import matplotlib.pyplot as plt

    if not frames or len(frames) != len(names):
        raise ReplicateError(f"plot_candidates needs one name per candidate table, got {len(frames)} and {len(names)}")
    fig, axes = plt.subplots(2, len(frames), figsize=(3.2 * len(frames), 6.0), squeeze=False, sharex=True, sharey=True)
    for col, (cands, name) in enumerate(zip(frames, names)):
        titles = (f"{name}, before NMS (cls>{score_thr:g})", f"after NMS (IoU {nms_iou:g})")
        for row, (shown, title) in enumerate(zip((cands, cands[cands["kept"]]), titles)):
            ax = axes[row, col]
            ax.scatter(shown["iou"], shown["score"], s=4, alpha=0.5, color="tab:blue")
            ax.axvline(0.5, color="grey", linestyle="--", linewidth=0.8)
            ax.axhline(0.5, color="grey", linestyle="--", linewidth=0.8)
            ax.set(xlim=(0.0, 1.0), ylim=(0.0, 1.0), title=title)
            ax.title.set_fontsize("small")
    for ax in axes[1]:
        ax.set_xlabel("IoU with ground truth")
    for ax in axes[:, 0]:
        ax.set_ylabel("classification score")
    fig.tight_layout()
    return fig


def plot_proportions(counts: pd.DataFrame, column: str = "all"):
    """Figure 2: proportion of candidates with cls>t (solid) and iou>t (dotted) against t.

    Blue 'BF_NMS' before NMS, orange 'AF_NMS' after. ``column`` is an image column of ``counts``
    or 'all' (counts pooled over images). The candidate-count row itself (proportion 1) is left out.
    """
    import matplotlib.pyplot as plt

    proportions = proportion_table(counts)
    if column not in proportions.columns:
        raise ReplicateError(f"column {column!r} is not in the count table (columns: {list(proportions.columns)})")
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for stage, name, color in ((BEFORE, "BF_NMS", "tab:blue"), (AFTER, "AF_NMS", "tab:orange")):
        values = proportions.loc[stage, column]
        population = _population(_stage(counts, stage)).name
        for kind, style in (("cls", "-"), ("iou", ":")):
            rows = [c for c in values.index if _parse_condition(c)[0] == kind and c != population]
            thresholds = [_parse_condition(c)[1] for c in rows]
            ax.plot(thresholds, values[rows].to_numpy(), style, marker="o", color=color, label=f"{name} {kind}>t")
    ax.set_xlabel("threshold t")
    ax.set_ylabel("proportion of boxes")
    ax.set_title("proportions of boxes under different conditions")
    ax.legend(frameon=False)
    fig.tight_layout()
    return fig
