"""The Region Proposal Network (Ren et al. 2015, Sec. 3.1) on a feature pyramid (Lin et al. 2017, FPN, Sec. 4.1).

* Head (Sec. 3.1, FPN Sec. 4.1): one 3x3 conv (the pyramid's width, ReLU) shared by the levels P2-P6, then
  a 1x1 objectness classifier (one sigmoid per anchor, as the reference code) and a 1x1 regressor of 4
  deltas per anchor; all N(0, 0.01), bias 0.
* Anchors (FPN Sec. 4.1): one scale per level, 32-512 px on P2-P6 (8 x stride), ratios 1:2, 1:1, 2:1.
* Assignment (Sec. 3.1.2): IoU >= 0.7 positive, < 0.3 negative, and each ground truth's best anchors
  (if their IoU is at least 0.3, the reference code's ``min_pos_iou``).
* Loss (Eq. 1): binary cross-entropy and smooth L1 (beta 1/9, the reference code's) over 256 sampled
  anchors per image, at most half positive (Sec. 3.1.3), both averaged over the sampled anchors.
* Proposals (Sec. 3.3, FPN Sec. 4.1): per level the ``pre_nms`` best anchors, decoded and clipped to the
  image, NMS at 0.7 within each level, then the ``post_nms`` best of the image: 2000 in training, 1000 at
  test (mmdetection's Faster R-CNN FPN configuration; torchvision's numbers are the same at test).

Every anchor counts, whether or not it crosses the image border (mmdetection v2's and torchvision's
choice; the original Faster R-CNN and mmdetection v1, which TSD's code uses, ignore the crossing ones).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torchvision.ops import batched_nms

from .._utils import flatten_levels, mean_over_ranks
from ..assigners import Assignment, max_iou_assign, pad_targets
from ..box_coders import DeltaXYWHCoder
from ..head import DenseHead, Priors, anchor_priors
from ..losses import binary_cross_entropy_with_logits, smooth_l1_loss
from ..postprocess import clip_to_sizes
from ..priors import AnchorConfig
from ..samplers import sample
from .retinanet import RetinaNetHead

RPN_ANCHORS = AnchorConfig(strides=(4, 8, 16, 32, 64), octave_base_scale=8.0, scales_per_octave=1,
                           ratios=(0.5, 1.0, 2.0))


@dataclass(frozen=True)
class ProposalConfig:
    pre_nms: int = 2000  # per level
    post_nms: int = 2000  # per image
    nms_iou: float = 0.7
    min_size: float = 1e-3


@dataclass(frozen=True)
class RPNConfig:
    feat_channels: int = 256
    anchors: AnchorConfig = field(default_factory=lambda: RPN_ANCHORS)
    pos_iou: float = 0.7
    neg_iou: float = 0.3
    min_pos_iou: float = 0.3
    num_samples: int = 256
    pos_fraction: float = 0.5
    smooth_l1_beta: float = 1.0 / 9
    train_proposals: ProposalConfig = field(default_factory=ProposalConfig)
    test_proposals: ProposalConfig = field(default_factory=lambda: ProposalConfig(1000, 1000))


@dataclass
class Proposals:
    """A batch's proposals, padded: ``boxes`` (B, N, 4) xyxy, ``scores`` (B, N) objectness probabilities,
    ``valid`` (B, N) bool (False on padding), best first within each image."""

    boxes: Tensor
    scores: Tensor
    valid: Tensor


class RPNHead(DenseHead):
    prior_kind = "anchor"

    def __init__(self, cfg: RPNConfig, in_channels: int) -> None:
        super().__init__()
        self.cfg = cfg
        A = cfg.anchors.num_anchors
        self.num_anchors = A
        self.conv = nn.Conv2d(in_channels, cfg.feat_channels, 3, padding=1)
        self.cls_out = nn.Conv2d(cfg.feat_channels, A, 1)
        self.reg_out = nn.Conv2d(cfg.feat_channels, A * 4, 1)
        for conv in (self.conv, self.cls_out, self.reg_out):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        self.coder = DeltaXYWHCoder()
        self._anchor_cache: dict = {}

    def forward(self, feats: list[Tensor]) -> dict[str, list[Tensor]]:
        cls, reg = [], []
        for x in feats:
            t = torch.relu(self.conv(x))
            cls.append(self.cls_out(t))
            reg.append(self.reg_out(t))
        return {"cls": cls, "reg": reg}

    anchors = RetinaNetHead.anchors  # per-level (H*W*A, 4) anchors, cached per size and device

    def priors(self, outs: dict[str, list[Tensor]]) -> Priors:
        return anchor_priors(self.anchors(outs["cls"]), self.cfg.anchors.strides, self.num_anchors)

    def assign_by_rule(self, outs: dict[str, list[Tensor]], targets: list[dict]) -> tuple[Assignment, Tensor]:
        gt_boxes, gt_labels, gt_valid, ig_boxes, ig_valid = pad_targets(targets)
        c = self.cfg
        a = max_iou_assign(torch.cat(self.anchors(outs["cls"])), gt_boxes, gt_labels, gt_valid, pos_iou=c.pos_iou,
                           neg_iou=c.neg_iou, min_pos_iou=c.min_pos_iou, low_quality=True,
                           ignore_boxes=ig_boxes, ignore_valid=ig_valid)
        return a, a.matched_boxes(gt_boxes)

    def losses(self, outs: dict[str, list[Tensor]], a: Assignment, matched: Tensor) -> dict[str, Tensor]:
        """Eq. 1 on the sampled anchors: BCE of objectness and smooth L1 of the positives' deltas."""
        c = self.cfg
        anchors = torch.cat(self.anchors(outs["cls"]))
        logits = flatten_levels(outs["cls"], 1)[..., 0]
        reg = flatten_levels(outs["reg"], 4)
        pos, neg = sample(a.pos_mask, a.neg_mask, c.num_samples, c.pos_fraction)
        used = pos | neg
        num = mean_over_ranks(used.sum()).clamp(min=1.0)
        loss_cls = binary_cross_entropy_with_logits(logits[used], pos[used].float(), reduction="sum") / num
        target = self.coder.encode(anchors.expand(len(pos), -1, -1)[pos], matched[pos])
        loss_bbox = smooth_l1_loss(reg[pos], target, c.smooth_l1_beta, reduction="sum") / num
        return {"loss_rpn_cls": loss_cls, "loss_rpn_bbox": loss_bbox}

    @torch.no_grad()
    def proposals(self, outs: dict[str, list[Tensor]], image_sizes: list[tuple[int, int]], training: bool) -> Proposals:
        """Sec. 3.3's proposals of every image, in one NMS call for the batch (groups = image x level)."""
        c = self.cfg.train_proposals if training else self.cfg.test_proposals
        anchors = self.anchors(outs["cls"])
        B = outs["cls"][0].shape[0]
        boxes, scores, groups = [], [], []
        for lvl, (cls, reg, anc) in enumerate(zip(outs["cls"], outs["reg"], anchors)):
            logits = flatten_levels([cls], 1)[..., 0]
            top, idx = logits.topk(min(c.pre_nms, logits.shape[1]), dim=1)
            deltas = torch.gather(flatten_levels([reg], 4), 1, idx[..., None].expand(-1, -1, 4))
            boxes.append(self.coder.decode(anc[idx], deltas))
            scores.append(top.sigmoid())
            groups.append((torch.arange(B, device=top.device)[:, None] * len(anchors) + lvl).expand_as(idx))
        boxes, scores, groups = torch.cat(boxes, 1), torch.cat(scores, 1), torch.cat(groups, 1)
        hw = torch.as_tensor(image_sizes, dtype=boxes.dtype, device=boxes.device)[:, None, :]  # (B, 1, 2)
        boxes = clip_to_sizes(boxes, hw)
        wh = boxes[..., 2:] - boxes[..., :2]
        big = (wh >= c.min_size).all(-1)
        flat_boxes, flat_scores, flat_groups = boxes[big], scores[big], groups[big]
        keep = batched_nms(flat_boxes, flat_scores, flat_groups, c.nms_iou)  # sorted by decreasing score
        image = flat_groups[keep] // len(anchors)
        order = torch.argsort(image, stable=True)
        keep, image = keep[order], image[order]
        counts = torch.bincount(image, minlength=B)
        rank = torch.arange(len(keep), device=keep.device) - (torch.cumsum(counts, 0) - counts)[image]
        kept = rank < c.post_nms
        keep, image, rank = keep[kept], image[kept], rank[kept]
        N = max(int(counts.clamp(max=c.post_nms).max()), 1)
        out = Proposals(boxes.new_zeros(B, N, 4), scores.new_zeros(B, N), torch.zeros(B, N, dtype=torch.bool,
                                                                                        device=boxes.device))
        out.boxes[image, rank] = flat_boxes[keep]
        out.scores[image, rank] = flat_scores[keep]
        out.valid[image, rank] = True
        return out

