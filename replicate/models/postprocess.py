"""Dense-detector post-processing: score fusion, threshold, per-level top-k, batched NMS, top-N.

The test-time recipe shared by every one-stage detector replicated here (RetinaNet, Lin et al.
2017b, Sec. 4.2; FCOS; ATSS; GFL): on each pyramid level keep candidates whose score exceeds
``score_thr`` (0.05), keep the ``pre_nms_topk`` (1000) best of them, decode only those boxes, merge
levels, run class-wise NMS and keep the ``max_per_image`` (100) best detections.

Quality branches (centerness, IoU, GIoU, the RetinaNet-Conf object confidence) enter through
:func:`fuse_scores`. The references differ on whether the threshold applies to the raw class
probability or the fused score; :class:`TestConfig.threshold_on` selects it. Two switches serve the
RetinaNet-Conf tables: ``quality_thr`` drops candidates whose quality is not above it (its Table 4
"obj>0.5" filter), and ``fusion_min_priors`` reproduces its released code, which forms the product only
on levels with more than 1000 priors (elsewhere the score stays ``p^(1-alpha)``, i.e. quality 1).
PAA's score voting (``score_voting``, :func:`score_voting`) moves each kept box to the score- and
IoU-weighted average of its class's candidates. Everything is batched: one top-k per level for the whole batch and a single ``batched_nms`` call
with (image, class) groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor
from torchvision.ops import batched_nms, box_iou

from ..errors import ReplicateError

FUSIONS = ("none", "multiply", "sqrt", "power")
BOX_STAGES = ("final", "coarse")


@dataclass(frozen=True)
class TestConfig:
    __test__ = False  # not a pytest test class

    score_thr: float = 0.05
    pre_nms_topk: int = 1000  # per level
    nms_iou: float = 0.5
    max_per_image: int = 100
    fusion: str = "none"  # how a quality branch combines with the class probability, see fuse_scores
    fusion_alpha: float = 0.5  # exponent of the quality term for fusion="power"
    threshold_on: str = "cls"  # "cls": score_thr on the class probability; "fused": on the fused score
    quality_thr: float | None = None  # keep only candidates whose quality exceeds it (RetinaNet-Conf "obj>0.5")
    fusion_min_priors: int = 0  # fuse only on levels with more priors than this; quality = 1 on the others
    boxes: str = "final"  # a two-stage dense head's boxes: "final", or "coarse" (its first stage's, SALT-Net)
    score_voting: float | None = None  # sigma of PAA's score voting (0.025); None: the NMS boxes as they are

    def __post_init__(self) -> None:
        if self.fusion not in FUSIONS:
            raise ReplicateError(f"unknown score fusion {self.fusion!r}; choose from {FUSIONS}")
        if self.boxes not in BOX_STAGES:
            raise ReplicateError(f"test boxes must be one of {BOX_STAGES}, got {self.boxes!r}")
        if self.threshold_on not in ("cls", "fused"):
            raise ReplicateError(f"threshold_on must be 'cls' or 'fused', got {self.threshold_on!r}")
        if self.score_voting is not None and not self.score_voting > 0:
            raise ReplicateError(f"score_voting is a positive sigma or None, got {self.score_voting!r}")


def fuse_scores(cls_prob: Tensor, quality: Tensor | None, fusion: str, alpha: float = 0.5) -> Tensor:
    """The score-fusion hook.

    * ``none``: the class probability (GFL's joint scores, plain RetinaNet);
    * ``multiply``: ``p * q`` (FCOS centerness in mmdetection; RetinaNet-Conf's object confidence);
    * ``sqrt``: ``sqrt(p * q)`` (official FCOS and MOD's inference);
    * ``power``: ``p^(1-alpha) * q^alpha`` (IoU-aware RetinaNet, Wu et al. 2020, Eq. 4).

    ``quality`` is (B, N) or (B, N, C) in [0, 1], broadcast over classes.
    """
    if fusion == "none" or quality is None:
        if fusion != "none":
            raise ReplicateError(f"score fusion {fusion!r} needs a quality branch")
        return cls_prob
    if quality.dim() == cls_prob.dim() - 1:
        quality = quality.unsqueeze(-1)
    if fusion == "multiply":
        return cls_prob * quality
    if fusion == "sqrt":
        return (cls_prob * quality).sqrt()
    if fusion == "power":
        return cls_prob.pow(1 - alpha) * quality.pow(alpha)
    raise ReplicateError(f"unknown score fusion {fusion!r}; choose from {FUSIONS}")


def postprocess(
    cls_prob: list[Tensor],
    decode: Callable[[int, Tensor, Tensor], Tensor],
    image_sizes: list[tuple[int, int]],
    cfg: TestConfig,
    quality: list[Tensor] | None = None,
) -> list[dict[str, Tensor]]:
    """Detections for a batch from per-level predictions.

    Args:
        cls_prob: per level (B, N_l, C) class probabilities.
        decode: ``decode(level, batch_index, prior_index) -> (K, 4)`` xyxy boxes of the selected
            priors of that level (only the kept candidates are decoded).
        image_sizes: (h, w) of each image before padding; boxes are clipped to it.
        cfg: thresholds and sizes.
        quality: optional per level (B, N_l) or (B, N_l, C) quality in [0, 1].

    Returns:
        One dict per image with ``boxes`` (n, 4) xyxy, ``scores`` (n,), ``labels`` (n,) long,
        sorted by decreasing score, ``n <= cfg.max_per_image``.
    """
    B = len(image_sizes)
    all_boxes, all_scores, all_labels, all_images = [], [], [], []
    for lvl, p in enumerate(cls_prob):
        C = p.shape[-1]
        q = None if quality is None else quality[lvl]
        if q is not None and p.shape[1] <= cfg.fusion_min_priors:
            q = torch.ones_like(q)
        fused = fuse_scores(p, q, cfg.fusion, cfg.fusion_alpha)
        drop = (p if cfg.threshold_on == "cls" else fused) <= cfg.score_thr
        if cfg.quality_thr is not None:
            if quality is None:
                raise ReplicateError("quality_thr needs a quality branch")
            qq = quality[lvl]
            drop = drop | (qq.unsqueeze(-1) if qq.dim() == p.dim() - 1 else qq).le(cfg.quality_thr)
        ranked = fused.masked_fill(drop, -1.0).reshape(B, -1)
        k = min(cfg.pre_nms_topk, ranked.shape[1])
        top, flat = ranked.topk(k, dim=1)  # (B, k)
        keep = top > -1.0
        img = torch.arange(B, device=p.device)[:, None].expand_as(flat)[keep]
        flat = flat[keep]
        prior, label = flat // C, flat % C
        boxes = decode(lvl, img, prior)
        all_boxes.append(boxes)
        all_scores.append(top[keep])
        all_labels.append(label)
        all_images.append(img)
    return nms_per_image(torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_labels), torch.cat(all_images),
                         image_sizes, cfg, cls_prob[0].shape[-1])


def clip_to_sizes(boxes: Tensor, hw: Tensor) -> Tensor:
    """xyxy ``boxes`` (..., 4) clipped to images of sizes ``hw`` (..., 2) = (h, w), broadcast."""
    x1, y1, x2, y2 = boxes.unbind(-1)
    h, w = hw[..., 0], hw[..., 1]
    return torch.stack([x1.clamp(min=0).minimum(w), y1.clamp(min=0).minimum(h), x2.clamp(min=0).minimum(w),
                        y2.clamp(min=0).minimum(h)], -1)


def nms_per_image(boxes: Tensor, scores: Tensor, labels: Tensor, images: Tensor, image_sizes: list[tuple[int, int]],
                  cfg: TestConfig, num_classes: int) -> list[dict[str, Tensor]]:
    """Candidates (K boxes of ``images``, with scores and labels) clipped to their image, class-wise NMS in one
    ``batched_nms`` call with (image, class) groups, and the ``max_per_image`` best of each image."""
    B = len(image_sizes)
    sizes = torch.as_tensor(image_sizes, dtype=boxes.dtype, device=boxes.device).reshape(B, 2)
    boxes = clip_to_sizes(boxes, sizes[images])
    keep = batched_nms(boxes.float(), scores.float(), images * num_classes + labels, cfg.nms_iou)
    images_k = images[keep]
    out = []
    # keep is sorted by decreasing score; split it per image and cut each at max_per_image
    order = torch.argsort(images_k, stable=True)
    keep, images_k = keep[order], images_k[order]
    counts = torch.bincount(images_k, minlength=B).tolist()
    for i, idx in enumerate(torch.split(keep, counts)):
        idx = idx[: cfg.max_per_image]
        kept = boxes[idx]
        if cfg.score_voting is not None:
            mine = (images == i).nonzero(as_tuple=True)[0]
            kept = score_voting(kept, labels[idx], boxes[mine], scores[mine], labels[mine], cfg.score_voting)
            kept = clip_to_sizes(kept, sizes[i])  # an average of clipped boxes, up to rounding
        out.append({"boxes": kept, "scores": scores[idx], "labels": labels[idx]})
    return out


VOTING_MIN_IOU = 0.01  # candidates overlapping a detection by more than this vote for its box


def score_voting(boxes: Tensor, labels: Tensor, cand_boxes: Tensor, cand_scores: Tensor, cand_labels: Tensor,
                 sigma: float) -> Tensor:
    """PAA's score voting (Kim & Lee 2020, Sec. 3.3, after Kim et al. 2018): each detection's box becomes the
    average of the candidates of its class (before NMS, this detection among them) that overlap it by IoU above
    0.01, weighted by ``exp(-(1 - IoU)^2 / sigma) * score``; scores and labels stay. (D, 4) boxes -> (D, 4)."""
    if boxes.shape[0] == 0 or cand_boxes.shape[0] == 0:
        return boxes
    iou = box_iou(boxes.float(), cand_boxes.float())  # (D, K)
    votes = (iou > VOTING_MIN_IOU) & (labels[:, None] == cand_labels[None, :])
    weight = torch.where(votes, torch.exp(-(1.0 - iou) ** 2 / sigma) * cand_scores.float()[None, :],
                         torch.zeros_like(iou))
    total = weight.sum(dim=1, keepdim=True)
    voted = weight @ cand_boxes.float() / total.clamp(min=1e-12)
    return torch.where(total > 0, voted, boxes.float()).to(boxes.dtype)
