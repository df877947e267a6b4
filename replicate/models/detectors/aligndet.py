"""AlignDet (Chen, Han, Wang, Zhang, "Revisiting Feature Alignment for One-stage Object Detection", 2019):
a dense proposal module (DPM) whose boxes become the learned anchors of an aligned detection module (ADM)
that reads features through RoIConv (:mod:`replicate.models.roiconv`).

* Sec. 4.3, Fig. 2: the DPM is a RetinaNet head (:mod:`.retinanet`, composed here, not copied) with one anchor
  per location, square, of scale factor 4 (Sec. 3.1: 32^2 .. 512^2 on P3-P7). Its regression applied to its
  anchors gives the *refined anchors*.
* "AlignDet w/o ADM is essentially a RetinaNet with a single anchor" (Sec. 5.3, :func:`aligndet_wo_adm`): its
  Table 3 row (32.4 / 52.9 / 17.5 / 35.9 / 43.0) is Table 1's P3-P7 RetinaNet with that one anchor cell for
  cell, so it is that pilot detector: RetinaNet's own assignment (fg/bg 0.5/0.4), not the DPM's 0.4/0.3.
* The ADM: a ``k x k`` alignment convolution over the FPN feature, sampling the bins of each location's
  refined anchor (Eq. 4), then a head and two predictors, all shared across levels. Table 3/6's design
  (Sec. 5.3): "a 1024c 7x7 RoIConv followed by a 1024c 1x1 convolution" (``adm_kernel = 1``); Tables 4-5
  and Table 6's first row: a 256c 3x3 alignment convolution and "four 3x3 convolutions with 256
  channels" (``adm_kernel = 3``). Table 4 swaps the alignment (``alignment``); Table 6's ``7x7 dagger``
  uses a 3x3 RoIConv on P3 (``p3_kernel``).
* Label assignment (Table 5): max-IoU on the DPM's anchors with fg/bg 0.4/0.3, and on the refined anchors
  with 0.7/0.7 for the ADM (the table's best row, and the released code's), each ground truth keeping
  its best anchor. The ADM regresses R-CNN deltas relative to the refined anchors.
* Losses: sigmoid focal loss (alpha 0.25, gamma 2) and smooth L1 (beta 0.11) for each module, each
  normalised by its positives, weights 1 and 1 (the paper is silent; these are RetinaNet's and the
  released code's). The released code normalises by positives + 1 per GPU; we keep RetinaNet's
  normalisation (positives averaged over processes).
* Inference: only the ADM scores and its boxes decoded against the refined anchors (the released code
  fuses nothing either); RetinaNet's thresholds and NMS.

Choices where the paper is silent, from the released code (``shared/notes/official-code.md``): no norm in
either module, N(0, 0.01) initialisation, and no gradient from the ADM into the DPM's boxes
(``AlignConv.detach_boxes``). Where the code departs from the paper, the paper is followed and the code's
behaviour is an option: its anchor of ``4 * 2^(1/3)`` x stride (:data:`CODE_ANCHOR_SCALE`, override
``head.anchors.octave_base_scale``) against the paper's 4, and its "+1" bins (``head.bin_plus_one``). Not
adopted: the code's P7-only score threshold of 0 at test time, and its clipping of the refined anchors to
the image (the sampling reads zeros outside).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor, nn

from .._utils import flatten_levels, init_normal, mean_over_ranks, prior_prob_bias
from ..assigners import Assignment, max_iou_assign, pad_targets
from ..detector import DetectorConfig
from ..head import DenseHead, Priors
from ..postprocess import TestConfig, postprocess
from ..priors import AnchorConfig
from ..roiconv import AlignConv
from .retinanet import RetinaNetHead, RetinaNetHeadConfig

#: One square anchor per location of 4 x stride (Sec. 3.1: "an anchor box of a scale factor of 4").
ALIGNDET_ANCHOR = AnchorConfig(octave_base_scale=4.0, scales_per_octave=1, ratios=(1.0,))
#: The released code's anchor scale, ``4 * 2^(1/3)`` (an option: ``head.anchors.octave_base_scale``).
CODE_ANCHOR_SCALE = 4.0 * 2.0 ** (1.0 / 3.0)


@dataclass(frozen=True)
class AlignDetHeadConfig:
    feat_channels: int = 256  # DPM towers
    num_convs: int = 4  # DPM tower depth
    anchors: AnchorConfig = field(default_factory=lambda: ALIGNDET_ANCHOR)
    dpm_pos_iou: float = 0.4  # Table 5
    dpm_neg_iou: float = 0.3
    adm_pos_iou: float = 0.7
    adm_neg_iou: float = 0.7
    alignment: str = "roiconv"  # Table 4: "conv", "deform", "anchor_deform", "roiconv"
    kernel: int = 7  # Table 6
    p3_kernel: int | None = None  # Table 6's 7x7 dagger: 3 (own weights on P3)
    align_channels: int = 1024
    adm_convs: int = 1  # convs after the alignment convolution
    adm_kernel: int = 1  # 1: Table 3/6's 1x1 head; 3: Tables 4-5's 3x3 tower (predictors of the same size)
    adm_channels: int = 1024
    bin_plus_one: bool = False  # the released code's bin width (roiconv.py)
    detach_boxes: bool = True
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    smooth_l1_beta: float = 0.11
    prior_prob: float = 0.01

    def dpm_config(self) -> RetinaNetHeadConfig:
        return RetinaNetHeadConfig(feat_channels=self.feat_channels, num_convs=self.num_convs, anchors=self.anchors,
                                   pos_iou=self.dpm_pos_iou, neg_iou=self.dpm_neg_iou, focal_alpha=self.focal_alpha,
                                   focal_gamma=self.focal_gamma, smooth_l1_beta=self.smooth_l1_beta,
                                   prior_prob=self.prior_prob)

    def narrowed(self, width: int, num_convs: int) -> "AlignDetHeadConfig":
        """The head for a small profile: every width scaled by ``width / feat_channels`` (the ADM's 1024 by the
        same factor as the DPM's 256), the DPM's towers and a 3x3 ADM tower ``num_convs`` deep; a 1x1 ADM
        head keeps its single conv."""
        f = width / self.feat_channels
        return replace(self, feat_channels=width, num_convs=num_convs,
                       align_channels=max(1, round(self.align_channels * f)),
                       adm_channels=max(1, round(self.adm_channels * f)),
                       adm_convs=num_convs if self.adm_kernel == 3 else self.adm_convs)

    def build(self, in_channels: int, num_classes: int) -> "AlignDetHead":
        return AlignDetHead(self, in_channels, num_classes)


class AlignDetHead(DenseHead):
    """DPM (a one-anchor :class:`RetinaNetHead`) -> refined anchors -> ADM (alignment conv, head, predictors).

    The priors, the plug-in assignment and the statistics of :class:`DenseHead` are the DPM's; the ADM
    assigns on the refined anchors itself.
    """

    prior_kind = "anchor"

    def __init__(self, cfg: AlignDetHeadConfig, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cfg, self.num_classes = cfg, num_classes
        self.dpm = RetinaNetHead(cfg.dpm_config(), in_channels, num_classes)
        self.coder = self.dpm.coder
        self.strides = cfg.anchors.strides
        self.align = AlignConv(in_channels, cfg.align_channels, cfg.kernel, cfg.alignment, cfg.bin_plus_one,
                               cfg.detach_boxes)
        self.align_p3 = None
        if cfg.p3_kernel is not None:
            self.align_p3 = AlignConv(in_channels, cfg.align_channels, cfg.p3_kernel, cfg.alignment,
                                      cfg.bin_plus_one, cfg.detach_boxes)
        k, pad = cfg.adm_kernel, cfg.adm_kernel // 2
        layers: list[nn.Module] = []
        for i in range(cfg.adm_convs):
            layers += [nn.Conv2d(cfg.align_channels if i == 0 else cfg.adm_channels, cfg.adm_channels, k, padding=pad),
                       nn.ReLU(inplace=True)]
        self.adm_tower = nn.Sequential(*layers)
        last = cfg.adm_channels if cfg.adm_convs else cfg.align_channels
        self.cls_out = nn.Conv2d(last, num_classes, k, padding=pad)
        self.reg_out = nn.Conv2d(last, 4, k, padding=pad)
        init_normal(self.adm_tower)
        init_normal(self.cls_out)
        init_normal(self.reg_out)
        nn.init.constant_(self.cls_out.bias, prior_prob_bias(cfg.prior_prob))

    # ----------------------------------------------------------------------------- forward
    def aligner(self, level: int) -> AlignConv:
        """The ADM's alignment convolution of pyramid level ``level`` (its own on P3 in Table 6's dagger row)."""
        return self.align_p3 if level == 0 and self.align_p3 is not None else self.align

    def forward(self, feats: list[Tensor]) -> dict[str, list[Tensor]]:
        dpm = self.dpm(feats)
        anchors = self.dpm.anchors(dpm["cls"])
        refined, cls, reg = [], [], []
        for level, (x, r, a) in enumerate(zip(feats, dpm["reg"], anchors)):
            B, _, H, W = x.shape
            with torch.autocast(x.device.type, enabled=False):
                boxes = self.coder.decode(a, flatten_levels([r.float()], 4))  # (B, H*W, 4)
            refined.append(boxes)
            y = torch.relu(self.aligner(level)(x, boxes.view(B, H, W, 4), self.strides[level]))
            y = self.adm_tower(y)
            cls.append(self.cls_out(y))
            reg.append(self.reg_out(y))
        return {"cls": cls, "reg": reg, "dpm_cls": dpm["cls"], "dpm_reg": dpm["reg"], "refined": refined}

    # ------------------------------------------------------------------------------- train
    def priors(self, outs: dict[str, list[Tensor]]) -> Priors:
        return self.dpm.priors({"cls": outs["dpm_cls"]})

    def assign_by_rule(self, outs: dict[str, list[Tensor]], targets: list[dict]) -> tuple[Assignment, Tensor]:
        """The DPM's max-IoU assignment on its anchors (Table 5's DPM fg / bg)."""
        return self.dpm.assign_by_rule({"cls": outs["dpm_cls"]}, targets)

    def adm_assign(self, refined: Tensor, targets: list[dict]) -> tuple[Assignment, Tensor]:
        """Max-IoU assignment on each image's refined anchors (B, N, 4) (Table 5's ADM fg / bg)."""
        gt_boxes, gt_labels, gt_valid, ig_boxes, ig_valid = pad_targets(targets)
        c = self.cfg
        a = max_iou_assign(refined, gt_boxes, gt_labels, gt_valid, pos_iou=c.adm_pos_iou, neg_iou=c.adm_neg_iou,
                           ignore_boxes=ig_boxes, ignore_valid=ig_valid)
        return a, a.matched_boxes(gt_boxes)

    def adm_losses(self, outs: dict[str, list[Tensor]], targets: list[dict]) -> dict[str, Tensor]:
        """RetinaNet's focal and smooth-L1 losses (the DPM's own, same settings) on the ADM's assignment, the
        deltas relative to each image's refined anchors."""
        refined = torch.cat(outs["refined"], dim=1).detach()
        a, matched = self.adm_assign(refined, targets)
        cls = flatten_levels(outs["cls"], self.num_classes)
        reg = flatten_levels(outs["reg"], 4)
        num_pos = mean_over_ranks(a.num_pos).clamp(min=1.0)
        return {"loss_cls": self.dpm.classification_loss(cls, a, num_pos),
                "loss_bbox": self.dpm.box_loss(reg, refined, matched, a, num_pos)}

    def losses(self, outs: dict[str, list[Tensor]], a: Assignment, matched: Tensor) -> dict[str, Tensor]:
        """The DPM's RetinaNet losses on assignment ``a``; :meth:`loss` adds the ADM's (they need the targets)."""
        dpm = self.dpm.losses({"cls": outs["dpm_cls"], "reg": outs["dpm_reg"]}, a, matched)
        return {"loss_dpm_cls": dpm["loss_cls"], "loss_dpm_bbox": dpm["loss_bbox"]}

    def loss(self, outs: dict[str, list[Tensor]], targets: list[dict], batch_hw: tuple[int, int]) -> dict[str, Tensor]:
        """Both modules' terms (Sec. 4.3): the DPM's on its assignment (and any statistics), the ADM's."""
        return {**super().loss(outs, targets, batch_hw), **self.adm_losses(outs, targets)}

    # ----------------------------------------------------------------------------- predict
    def predict(self, outs: dict[str, list[Tensor]], image_sizes: list[tuple[int, int]],
                cfg: TestConfig) -> list[dict[str, Tensor]]:
        probs = [flatten_levels([c], self.num_classes).sigmoid() for c in outs["cls"]]
        regs = [flatten_levels([r], 4) for r in outs["reg"]]
        refined = outs["refined"]

        def decode(level: int, img: Tensor, prior: Tensor) -> Tensor:
            return self.coder.decode(refined[level][img, prior], regs[level][img, prior])

        return postprocess(probs, decode, image_sizes, cfg)


# ------------------------------------------------------------------------------------------ presets


def aligndet() -> DetectorConfig:
    """AlignDet (Chen et al. 2019): one-anchor DPM + 7x7 RoIConv ADM, 1024c (Tables 3, 6)."""
    return DetectorConfig("aligndet", AlignDetHeadConfig())


def aligndet_wo_adm() -> DetectorConfig:
    """AlignDet without its ADM: RetinaNet with AlignDet's one anchor (Tables 1 and 3)."""
    return DetectorConfig("aligndet_wo_adm", RetinaNetHeadConfig(anchors=ALIGNDET_ANCHOR))


def aligndet_3x3() -> DetectorConfig:
    """AlignDet with the ablations' ADM: a 256c 3x3 alignment conv and four 256c 3x3 convs (Tables 4-5)."""
    return DetectorConfig("aligndet_3x3", AlignDetHeadConfig(kernel=3, align_channels=256, adm_convs=4,
                                                              adm_kernel=3, adm_channels=256))
