"""TSD: task-aware spatial disentanglement (Song, Liu, Wang, "Revisiting the Sibling Head in Object
Detector", CVPR 2020; equations as numbered in the slides, ``shared/papers/004_*.txt``).

The classical sibling head reads one proposal ``P`` for both tasks: ``L = L_cls(H_1(F, P), y) +
L_loc(H_2(F, P), B)``. TSD gives each task its own proposal and its own branch:

    L = L_cls^D(H_1^D(F, P_c), y) + L_loc^D(H_2^D(F, P_r), B),  P_c = tau_c(P, dC),  P_r = tau_r(P, dR).

* Offsets (the "TSD" slide): from the RoIAlign feature ``F`` of ``P``, a shared fully connected layer
  and two small branches predict ``dC = gamma * F_c(F) * (w, h)``, one (x, y) shift per 7x7 bin, and
  ``dR = gamma * F_r(F) * (w, h)``, one shift of the whole proposal; gamma = 0.1.
* Task-aware pooling: ``F_c`` averages bilinear samples of each bin moved by ``dC`` (deformable RoI
  pooling, :func:`~replicate.models.roi_pool.deform_roi_pool`); ``F_r`` pools the proposal translated by
  ``dR``, so the regression is relative to ``P_r = P + dR``.
* Branches: separate 2-fc stacks for the two tasks on their own features (``H_1^D``, ``H_2^D``), a
  softmax classifier and class-specific deltas relative to ``P_r``.
* Joint training with the sibling head (Table 2): the classical head ``H_*`` is trained beside TSD on
  the same RoIs (``L_cls + L_loc``) and dropped at test time.
* Progressive constraint (the "PC" slide), margins pushing TSD beyond the sibling head:
  ``M_cls = |H_1(y|F, P) - H_1^D(y|F, P_c) + m_c|_+`` over the sampled RoIs (y is the background for
  negatives) and ``M_loc = |IoU(B_hat, B) - IoU(B_hat_D, B) + m_r|_+`` over the positives, the sibling's
  terms held fixed.
* Total: ``L = L_rpn + L_cls + L_loc + L_cls^D + L_loc^D + M_cls + M_loc``, every weight 1.

Where the slides are silent we follow the released code (Sense-X/TSD, ``shared/notes/official-code.md``
Sec. 5): margins 0.3 (``m = min(0.3, 1 - sibling's value)``), the offset layers' Kaiming init (not zero),
TSD's predictors at PyTorch's default init, and the regression target encoded from ``P_r`` *without*
detaching ``dR`` (``shift_in_target``), so that the regression loss also trains ``dR`` through its target.
Where we depart from the code (the chapter's ``code_variants`` table measures it):

* the task-aware pooling averages 2x2 bilinear samples per bin, the sampling of the detector's own RoIAlign;
  the code's pooling takes 4x4 (``samples=4``), which costs this CPU twice the training time of the head;
* the code's test keeps every score (threshold 0); we keep Faster R-CNN's 0.05 for both detectors;
* the code rounds RoI corners inside its pooling kernel, and its classification constraint averages per
  image; we do not round, and average over the batch's sampled RoIs (not options).

Table 1's ablations are options: ``spatial=False`` is ``D_head`` (the two tasks' own 2-fc branches on the
shared RoIAlign feature), ``sibling=False`` "TSD w/o PC" without joint training. Its ``D_s8/16/32`` rows are
``D_head`` on a backbone split per task (``DetectorConfig.task_split``, :mod:`~replicate.models.task_split`):
each branch pools from its own task's pyramid.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch.nn.functional as F
from torch import Tensor, nn

from ...errors import ReplicateError
from ..box_coders import DeltaXYWHCoder
from ..detector import DetectorConfig
from ..losses import aligned_box_iou
from ..postprocess import TestConfig
from ..roi_pool import deform_roi_pool
from ..task_split import task_pyramid
from .mask_head import MaskHeadConfig
from .roi_heads import (RoIHeadConfig, SampledRoIs, SiblingHead, class_deltas, detections, fast_rcnn_losses, pool_rois,
                        rois_of)
from .rpn import Proposals
from .two_stage import two_stage


@dataclass(frozen=True)
class TSDHeadConfig(RoIHeadConfig):
    offset_channels: int = 256
    gamma: float = 0.1  # the offsets' scale (the code's trans_std)
    samples: int = 2  # bilinear samples per bin side in the task-aware pooling (the code's sample_per_part: 4)
    spatial: bool = True  # False: D_head, the tasks' branches on the shared RoIAlign feature
    sibling: bool = True  # joint training with the sibling head (Table 2)
    pc_cls: bool = True  # M_cls (Table 3)
    pc_loc: bool = True  # M_loc (Table 3)
    cls_margin: float = 0.3
    loc_margin: float = 0.3
    shift_in_target: bool = True  # the regression target encoded from P_r keeps dR's gradient (the code)

    def narrowed(self, width: int) -> "TSDHeadConfig":
        return replace(RoIHeadConfig.narrowed(self, width), offset_channels=width)

    def build(self, in_channels: int, num_classes: int) -> "TSDHead":
        """The head (checked here, not per field, so that overrides may set the switches one at a time)."""
        if (self.pc_cls or self.pc_loc) and not self.sibling:
            raise ReplicateError("TSD's progressive constraint compares with the sibling head: pc_cls / pc_loc "
                                 "need sibling=True")
        return TSDHead(self, in_channels, num_classes)


def kaiming_fcs(in_features: int, channels: int, num_fcs: int, last: int | None = None) -> nn.Sequential:
    """Fully connected layers with ReLU (and a last linear layer to ``last`` outputs), Kaiming-normal
    (a = 1) weights and zero bias, as the code's TSD layers."""
    layers: list[nn.Module] = [nn.Flatten(1)]
    for i in range(num_fcs):
        layers += [nn.Linear(in_features if i == 0 else channels, channels), nn.ReLU(inplace=True)]
    if last is not None:
        layers.append(nn.Linear(channels, last))
    for m in layers:
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, a=1)
            nn.init.zeros_(m.bias)
    return nn.Sequential(*layers)


class TSDHead(nn.Module):
    def __init__(self, cfg: TSDHeadConfig, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cfg, self.num_classes = cfg, num_classes
        k2 = cfg.roi_size ** 2
        self.coder = DeltaXYWHCoder(stds=cfg.target_stds)
        self.sibling = SiblingHead(cfg, in_channels, num_classes) if cfg.sibling else None
        if cfg.spatial:
            oc = cfg.offset_channels
            self.shared_offset = kaiming_fcs(in_channels * k2, oc, 1)
            self.delta_c = kaiming_fcs(oc, oc, 1, last=2 * k2)
            self.delta_r = kaiming_fcs(oc, oc, 1, last=2)
        self.cls_fcs = kaiming_fcs(in_channels * k2, cfg.fc_channels, cfg.num_fcs)
        self.reg_fcs = kaiming_fcs(in_channels * k2, cfg.fc_channels, cfg.num_fcs)
        self.cls_out = nn.Linear(cfg.fc_channels, num_classes + 1)
        self.reg_out = nn.Linear(cfg.fc_channels, 4 * num_classes)

    @property
    def reads_task_pyramids(self) -> bool:
        """A backbone split per task (:mod:`~replicate.models.task_split`) suits TSD's two branches, but not the
        sibling head trained beside them, which reads one feature for both tasks."""
        return not self.cfg.sibling

    def disentangled(self, feats: list[Tensor] | dict[str, list[Tensor]], rois: Tensor,
                     base: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """TSD's classification logits (R, K + 1), deltas (R, K, 4) and the regression proposals P_r (R, 4).

        ``base`` is the RoIAlign feature of the proposals on the classification pyramid. With a backbone split
        per task, the localization branch pools from its own pyramid (``D_s8/16/32``)."""
        c = self.cfg
        boxes = rois[:, 1:]
        cls_feats, reg_feats = task_pyramid(feats, "cls"), task_pyramid(feats, "reg")
        if c.spatial:
            h = self.shared_offset(base)
            k = c.roi_size
            d_c = c.gamma * self.delta_c(h).reshape(-1, k, k, 2)  # per bin, in units of (w, h)
            d_r = c.gamma * self.delta_r(h)  # per proposal
            n = len(c.strides)
            f_c = deform_roi_pool(cls_feats[:n], rois, d_c, c.strides, k, c.samples)
            f_r = deform_roi_pool(reg_feats[:n], rois, d_r[:, None, None, :].expand(-1, k, k, 2), c.strides, k,
                                  c.samples)
            wh = boxes[:, 2:] - boxes[:, :2]
            shift = (d_r * wh).repeat(1, 2)
            p_r = boxes + shift
        else:
            f_c = base
            f_r = base if reg_feats is cls_feats else pool_rois(reg_feats, rois, c)
            p_r = boxes
        logits = self.cls_out(self.cls_fcs(f_c))
        deltas = self.reg_out(self.reg_fcs(f_r)).reshape(len(rois), -1, 4)
        return logits, deltas, p_r

    def loss(self, feats: list[Tensor], s: SampledRoIs) -> dict[str, Tensor]:
        c = self.cfg
        base = pool_rois(task_pyramid(feats, "cls"), s.rois, c)
        logits, deltas, p_r = self.disentangled(feats, s.rois, base)
        anchors = p_r if c.shift_in_target else p_r.detach()
        loss_cls_d, loss_bbox_d = fast_rcnn_losses(logits, deltas, s, self.coder, c.smooth_l1_beta, anchors)
        terms = {"loss_tsd_cls": loss_cls_d, "loss_tsd_bbox": loss_bbox_d}
        if self.sibling is not None:
            sib_logits, sib_deltas = self.sibling(base)
            terms["loss_cls"], terms["loss_bbox"] = fast_rcnn_losses(sib_logits, sib_deltas, s, self.coder,
                                                                     c.smooth_l1_beta)
            if c.pc_cls:
                terms["loss_pc_cls"] = self.cls_constraint(sib_logits, logits, s)
            if c.pc_loc:
                terms["loss_pc_loc"] = self.loc_constraint(sib_deltas, deltas, p_r, s)
        return terms

    def cls_constraint(self, sib_logits: Tensor, logits: Tensor, s: SampledRoIs) -> Tensor:
        """M_cls over the sampled RoIs, probabilities of each RoI's label (the background for negatives)."""
        p_sib = sib_logits.softmax(-1).gather(1, s.labels[:, None])[:, 0].detach()
        p_tsd = logits.softmax(-1).gather(1, s.labels[:, None])[:, 0]
        margin = (1 - p_sib).clamp(max=self.cfg.cls_margin)
        return F.relu(p_sib + margin - p_tsd).sum() / s.normaliser

    def loc_constraint(self, sib_deltas: Tensor, deltas: Tensor, p_r: Tensor, s: SampledRoIs) -> Tensor:
        """M_loc over the positives: the sibling's box decoded from P, TSD's from P_r, IoUs with the truth."""
        pos = s.pos
        if not pos.any():
            return deltas.sum() * 0.0
        sib_box = self.coder.decode(s.rois[pos, 1:], class_deltas(sib_deltas, s.labels)[pos])
        tsd_box = self.coder.decode(p_r[pos], class_deltas(deltas, s.labels)[pos])
        iou_sib = aligned_box_iou(sib_box, s.boxes[pos]).detach()
        iou_tsd = aligned_box_iou(tsd_box, s.boxes[pos])
        margin = (1 - iou_sib).clamp(max=self.cfg.loc_margin)
        return F.relu(iou_sib + margin - iou_tsd).mean()

    def predict(self, feats: list[Tensor], proposals: Proposals, image_sizes: list[tuple[int, int]],
                cfg: TestConfig) -> list[dict[str, Tensor]]:
        """TSD's own outputs only (the sibling head is a training aid): boxes decoded from P_r."""
        rois, image, _ = rois_of(proposals)
        logits, deltas, p_r = self.disentangled(feats, rois, pool_rois(task_pyramid(feats, "cls"), rois, self.cfg))
        return detections(logits.softmax(-1), self.coder.decode(p_r[:, None], deltas), image, image_sizes, cfg)


def tsd() -> DetectorConfig:
    """Faster R-CNN (FPN) with TSD, joint training with the sibling head and both progressive constraints."""
    return two_stage("tsd", TSDHeadConfig())


def tsd_mask_rcnn() -> DetectorConfig:
    """Mask R-CNN (FPN) with TSD as its box head (the slides' "Applicable to Mask RCNN")."""
    return two_stage("tsd_mask_rcnn", TSDHeadConfig(), mask=MaskHeadConfig())
