"""The RoI head of Faster R-CNN with FPN: the classical *sibling head* TSD revisits.

* RoI features (FPN Sec. 4.2): 7x7 RoIAlign (Mask R-CNN; two samples per bin side) from the level of
  P2-P5 the RoI's size maps to (:mod:`replicate.models.roi_pool`).
* Head (FPN Sec. 4.2): two hidden 1024-d fully connected layers with ReLU shared by the two tasks, then
  the sibling predictors: a (K + 1)-way softmax classifier (background last) and class-specific box
  deltas (4 per class), with the R-CNN deltas normalised by (0.1, 0.1, 0.2, 0.2). The hidden layers are
  Xavier-initialised, the classifier N(0, 0.01) and the regressor N(0, 0.001) (mmdetection's init).
* Training (Fast R-CNN Sec. 2.3): the ground truths join the proposals; 512 RoIs per image, at most
  25 % positive (IoU >= 0.5), the rest negative (IoU < 0.5); cross-entropy averaged over the sampled RoIs
  and smooth L1 (beta 1) of the positives' deltas of their class, summed and divided by the number of
  sampled RoIs.
* Inference: softmax scores, every class's box decoded from the proposal and clipped, score > 0.05,
  class-wise NMS at 0.5, the 100 best per image.

The two-stage head draws the training RoIs once (:func:`sample_rois`) for its RoI head and, in Mask R-CNN, its
mask branch; :func:`detections` is shared with the RoI heads that replace this one (TSD's).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .._utils import mean_over_ranks
from ..assigners import max_iou_assign, pad_targets
from ..box_coders import DeltaXYWHCoder
from ..losses import smooth_l1_loss
from ..postprocess import TestConfig, nms_per_image
from ..roi_pool import multilevel_roi_align
from ..samplers import sample
from .rpn import Proposals

ROI_STDS = (0.1, 0.1, 0.2, 0.2)
SMALL_PROFILE_ROIS = 64
"""RoIs sampled per image on the small profiles: Fast R-CNN's 64 (Sec. 2.3: 128 RoIs from 2 images), where FPN
samples 512 on COCO. The small profiles' 192-px images hold a handful of objects, so 512 RoIs would be mostly
near-duplicate negatives, and the RoI head's CPU cost grows with the count (pooling, its backward, the fully
connected layers): Faster R-CNN trains 1.0 s per smoke batch with 512, 0.35 s with 64; TSD 3.0 s and 0.6 s."""


@dataclass(frozen=True)
class RoISampling:
    num_samples: int = 512
    pos_fraction: float = 0.25
    pos_iou: float = 0.5
    neg_iou: float = 0.5
    add_gt: bool = True


@dataclass(frozen=True)
class RoIHeadConfig:
    fc_channels: int = 1024
    num_fcs: int = 2
    roi_size: int = 7
    sampling_ratio: int = 2
    strides: tuple[int, ...] = (4, 8, 16, 32)  # the pooled levels P2-P5
    sampling: RoISampling = RoISampling()
    target_stds: tuple[float, float, float, float] = ROI_STDS
    smooth_l1_beta: float = 1.0

    def narrowed(self, width: int) -> "RoIHeadConfig":
        """The small profiles' head: hidden layers 4x the pyramid width (1024 for 256), and 64 RoIs per image
        (:data:`SMALL_PROFILE_ROIS`)."""
        return replace(self, fc_channels=4 * width, sampling=replace(self.sampling, num_samples=SMALL_PROFILE_ROIS))

    def build(self, in_channels: int, num_classes: int) -> "RoIHead":
        return RoIHead(self, in_channels, num_classes)


@dataclass
class SampledRoIs:
    """A batch's training RoIs: ``rois`` (R, 5) ``(image, x1, y1, x2, y2)``, ``labels`` (R,) with the
    background ``K``, the matched ground-truth ``boxes`` (R, 4) and its index within its image ``gt_index``
    (R,) (both meaningful where ``pos``), ``pos`` (R,)."""

    rois: Tensor
    labels: Tensor
    boxes: Tensor
    gt_index: Tensor
    pos: Tensor

    @cached_property
    def normaliser(self) -> Tensor:
        """The number of sampled RoIs, averaged over processes (once: every loss term divides by it)."""
        return mean_over_ranks(torch.tensor(float(len(self.rois)))).clamp(min=1.0)


def sample_rois(proposals: Proposals, targets: list[dict], cfg: RoISampling, num_classes: int) -> SampledRoIs:
    """Fast R-CNN's mini-batch: assign the proposals (plus the ground truths) by IoU and sample them."""
    gt_boxes, gt_labels, gt_valid, ig_boxes, ig_valid = pad_targets(targets)
    boxes, valid = proposals.boxes, proposals.valid
    if cfg.add_gt:
        boxes, valid = torch.cat([boxes, gt_boxes.to(boxes.device)], 1), torch.cat([valid, gt_valid], 1)
    a = max_iou_assign(boxes, gt_boxes, gt_labels, gt_valid, pos_iou=cfg.pos_iou, neg_iou=cfg.neg_iou,
                       low_quality=False, ignore_boxes=ig_boxes, ignore_valid=ig_valid)
    pos, neg = sample(a.pos_mask & valid, a.neg_mask & valid, cfg.num_samples, cfg.pos_fraction)
    image, index = torch.nonzero(pos | neg, as_tuple=True)
    labels = torch.where(pos[image, index], a.labels[image, index], torch.full_like(index, num_classes))
    return SampledRoIs(torch.cat([image[:, None].to(boxes.dtype), boxes[image, index]], 1), labels,
                       a.matched_boxes(gt_boxes)[image, index], a.gt_index[image, index], pos[image, index])


def rois_of(proposals: Proposals) -> tuple[Tensor, Tensor, Tensor]:
    """The valid proposals as (R, 5) RoIs, with the image and the slot of each in the padded batch."""
    image, index = torch.nonzero(proposals.valid, as_tuple=True)
    return torch.cat([image[:, None].to(proposals.boxes.dtype), proposals.boxes[image, index]], 1), image, index


def pool_rois(feats: list[Tensor], rois: Tensor, cfg: RoIHeadConfig) -> Tensor:
    """The RoIAlign features of ``rois`` from the pooled levels of the pyramid ``feats``."""
    return multilevel_roi_align(feats[:len(cfg.strides)], rois, cfg.strides, cfg.roi_size, cfg.sampling_ratio)


def class_deltas(deltas: Tensor, labels: Tensor) -> Tensor:
    """(R, 4) deltas of each RoI's own class from (R, K, 4); any for background RoIs (clamped to class K-1)."""
    return deltas[torch.arange(len(labels), device=labels.device), labels.clamp(max=deltas.shape[1] - 1)]


def fast_rcnn_losses(logits: Tensor, deltas: Tensor, s: SampledRoIs, coder: DeltaXYWHCoder, beta: float,
                     anchors: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Cross-entropy over the sampled RoIs and smooth L1 of the positives' class deltas, both divided by
    the number of sampled RoIs. ``anchors`` (R, 4): what the deltas are relative to (default the RoIs)."""
    n = s.normaliser
    loss_cls = F.cross_entropy(logits, s.labels, reduction="sum") / n
    base = s.rois[:, 1:] if anchors is None else anchors
    target = coder.encode(base[s.pos], s.boxes[s.pos])
    loss_bbox = smooth_l1_loss(class_deltas(deltas, s.labels)[s.pos], target, beta, reduction="sum") / n
    return loss_cls, loss_bbox


def detections(probs: Tensor, boxes: Tensor, image: Tensor, image_sizes: list[tuple[int, int]],
               cfg: TestConfig) -> list[dict[str, Tensor]]:
    """Per-image detections from R RoIs' class probabilities ``probs`` (R, K + 1) and class boxes (R, K, 4)
    of images ``image`` (R,): every (RoI, class) above ``score_thr``, class-wise NMS, ``max_per_image``."""
    K = boxes.shape[1]
    scores = probs[:, :K]
    roi, label = torch.nonzero(scores > cfg.score_thr, as_tuple=True)
    return nms_per_image(boxes[roi, label], scores[roi, label], label, image[roi], image_sizes, cfg, K)


def xavier_fcs(in_features: int, channels: int, num_fcs: int) -> nn.Sequential:
    """``num_fcs`` fully connected layers with ReLU, Xavier-uniform weights and zero bias."""
    layers: list[nn.Module] = []
    for i in range(num_fcs):
        fc = nn.Linear(in_features if i == 0 else channels, channels)
        nn.init.xavier_uniform_(fc.weight)
        nn.init.zeros_(fc.bias)
        layers += [fc, nn.ReLU(inplace=True)]
    return nn.Sequential(nn.Flatten(1), *layers)


class SiblingHead(nn.Module):
    """Shared hidden layers, then the sibling classifier and class-specific regressor (FPN Sec. 4.2)."""

    def __init__(self, cfg: RoIHeadConfig, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.fcs = xavier_fcs(in_channels * cfg.roi_size ** 2, cfg.fc_channels, cfg.num_fcs)
        self.cls_out = nn.Linear(cfg.fc_channels, num_classes + 1)
        self.reg_out = nn.Linear(cfg.fc_channels, 4 * num_classes)
        nn.init.normal_(self.cls_out.weight, std=0.01)
        nn.init.normal_(self.reg_out.weight, std=0.001)
        nn.init.zeros_(self.cls_out.bias)
        nn.init.zeros_(self.reg_out.bias)

    def forward(self, roi_feats: Tensor) -> tuple[Tensor, Tensor]:
        """(R, K + 1) logits and (R, K, 4) deltas."""
        x = self.fcs(roi_feats)
        return self.cls_out(x), self.reg_out(x).reshape(len(x), -1, 4)


class RoIHead(nn.Module):
    """Faster R-CNN's RoI head: :class:`SiblingHead` on the RoIAlign features of the proposals."""

    def __init__(self, cfg: RoIHeadConfig, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cfg, self.num_classes = cfg, num_classes
        self.sibling = SiblingHead(cfg, in_channels, num_classes)
        self.coder = DeltaXYWHCoder(stds=cfg.target_stds)

    def loss(self, feats: list[Tensor], s: SampledRoIs) -> dict[str, Tensor]:
        logits, deltas = self.sibling(pool_rois(feats, s.rois, self.cfg))
        loss_cls, loss_bbox = fast_rcnn_losses(logits, deltas, s, self.coder, self.cfg.smooth_l1_beta)
        return {"loss_cls": loss_cls, "loss_bbox": loss_bbox}

    def predict(self, feats: list[Tensor], proposals: Proposals, image_sizes: list[tuple[int, int]],
                cfg: TestConfig) -> list[dict[str, Tensor]]:
        rois, image, _ = rois_of(proposals)
        logits, deltas = self.sibling(pool_rois(feats, rois, self.cfg))
        boxes = self.coder.decode(rois[:, None, 1:], deltas)
        return detections(logits.softmax(-1), boxes, image, image_sizes, cfg)
