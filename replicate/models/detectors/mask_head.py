"""Mask R-CNN's mask branch (He et al. 2017), added beside a two-stage detector's box head.

* RoI features (Sec. 3, "Implementation details"; Fig. 4 right, the FPN head): 14x14 RoIAlign from the
  P2-P5 level of each RoI's size (:func:`~replicate.models.roi_pool.multilevel_roi_align`).
* Head (Fig. 4 right): four 3x3 convs of 256 channels with ReLU, a 2x2 stride-2 deconvolution with ReLU, and
  a 1x1 conv giving one 28x28 mask per class ("K binary masks of m x m"). Weights Kaiming-normal (fan out),
  biases 0 (the reference implementations' init).
* Training (Sec. 3, "Training"): on the positive sampled RoIs only; the target of a RoI is its matched ground
  truth's mask cropped to the RoI and resized to 28x28 (:func:`mask_targets`, RoIAlign of the binary mask,
  then thresholded at 0.5), and the loss ``L_mask`` is the average binary cross-entropy of the mask of the
  RoI's own class ("the k-th mask", Eq. in Sec. 3) over its 28x28 pixels.
* Inference (Sec. 3, "Inference"): the branch runs on the detected boxes (the 100 best), the k-th mask of each
  is taken for its predicted class, resized to the box in the original image and binarised at 0.5
  (:func:`paste_masks`).

Which RoIs the mask branch trains on is the box head's business: Faster R-CNN's or TSD's sampled proposals
(TSD's code trains its mask branch on the sampled positive proposals ``P``, not on its moved ``P_r``).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils
from torch import Tensor, nn
from torchvision.ops import roi_align

from ...errors import ReplicateError
from ..roi_pool import multilevel_roi_align
from .roi_heads import SampledRoIs

PASTE_CHUNK = 1 << 24
"""Pixels pasted at once (masks x height x width): bounds :func:`paste_masks`' memory on large images."""


@dataclass(frozen=True)
class MaskHeadConfig:
    channels: int = 256
    num_convs: int = 4
    roi_size: int = 14  # the deconvolution doubles it: 28x28 masks
    sampling_ratio: int = 2
    strides: tuple[int, ...] = (4, 8, 16, 32)  # the pooled levels P2-P5
    loss_weight: float = 1.0
    threshold: float = 0.5  # the binarisation of the pasted masks at test

    @property
    def mask_size(self) -> int:
        return 2 * self.roi_size

    def narrowed(self, width: int) -> "MaskHeadConfig":
        """The small profiles' branch: its convs as wide as the pyramid."""
        return replace(self, channels=width)

    def build(self, in_channels: int, num_classes: int) -> "MaskHead":
        return MaskHead(self, in_channels, num_classes)


def _kaiming(module: nn.Module) -> nn.Module:
    nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    nn.init.zeros_(module.bias)
    return module


class MaskHead(nn.Module):
    def __init__(self, cfg: MaskHeadConfig, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.cfg, self.num_classes = cfg, num_classes
        layers: list[nn.Module] = []
        for i in range(cfg.num_convs):
            layers += [_kaiming(nn.Conv2d(in_channels if i == 0 else cfg.channels, cfg.channels, 3, padding=1)),
                       nn.ReLU(inplace=True)]
        self.convs = nn.Sequential(*layers)
        self.upsample = _kaiming(nn.ConvTranspose2d(cfg.channels, cfg.channels, 2, stride=2))
        self.logits = _kaiming(nn.Conv2d(cfg.channels, num_classes, 1))

    def forward(self, feats: list[Tensor], rois: Tensor) -> Tensor:
        """(R, K, 28, 28) mask logits of ``rois`` (R, 5) ``(image, x1, y1, x2, y2)``."""
        c = self.cfg
        x = multilevel_roi_align(feats[:len(c.strides)], rois, c.strides, c.roi_size, c.sampling_ratio)
        return self.logits(F.relu(self.upsample(self.convs(x))))

    def loss(self, feats: list[Tensor], s: SampledRoIs, targets: list[dict]) -> dict[str, Tensor]:
        rois, labels = s.rois[s.pos], s.labels[s.pos]
        logits = self.forward(feats, rois)
        if not len(rois):
            return {"loss_mask": logits.sum() * 0.0}
        if any("masks" not in t for t in targets):
            raise ReplicateError("a detector with a mask branch trains on instance masks, but the targets have none "
                                 "(the training data is read with CocoDetection(masks=True))")
        masks = [t["masks"] for t in targets]
        target = mask_targets(masks, rois, s.gt_index[s.pos], self.cfg.mask_size)
        own = logits[torch.arange(len(labels), device=labels.device), labels]
        return {"loss_mask": self.cfg.loss_weight * F.binary_cross_entropy_with_logits(own, target)}

    def predict(self, feats: list[Tensor], dets: list[dict[str, Tensor]]) -> list[dict[str, Tensor]]:
        """``dets`` with ``masks`` added: each detection's (28, 28) mask probabilities of its own class."""
        boxes = torch.cat([d["boxes"] for d in dets])
        image = torch.cat([torch.full((len(d["boxes"]),), i, dtype=boxes.dtype, device=boxes.device)
                           for i, d in enumerate(dets)])
        labels = torch.cat([d["labels"] for d in dets])
        logits = self.forward(feats, torch.cat([image[:, None], boxes], 1))
        probs = logits[torch.arange(len(labels), device=labels.device), labels].sigmoid()
        return [{**d, "masks": m} for d, m in zip(dets, probs.split([len(d["boxes"]) for d in dets]))]


def mask_targets(gt_masks: list[Tensor], rois: Tensor, gt_index: Tensor, size: int, *, aligned: bool = True,
                 binarize: bool = True) -> Tensor:
    """(P, size, size) targets of ``rois`` (P, 5): the RoI's crop of its matched ground truth's mask.

    ``gt_masks[i]`` is image ``i``'s (N_i, H, W) binary masks and ``gt_index`` (P,) each RoI's ground truth
    within its image. The crop is a RoIAlign of the binary mask (adaptive sampling), ``aligned`` (pixel
    centres at +0.5, mmdetection's choice) and thresholded at 0.5 when ``binarize``; with ``aligned=False``
    and ``binarize=False`` it is torchvision's ``project_masks_on_boxes``. One RoIAlign call per image.
    """
    out = rois.new_zeros(len(rois), size, size)
    image = rois[:, 0].long()
    for i, masks in enumerate(gt_masks):
        idx = torch.nonzero(image == i).squeeze(1)
        if not len(idx):
            continue
        per_gt = torch.cat([gt_index[idx, None].to(rois.dtype), rois[idx, 1:]], 1)
        out[idx] = roi_align(masks[:, None].to(rois.dtype), per_gt, size, 1.0, 0, aligned=aligned)[:, 0]
    return (out >= 0.5).to(out.dtype) if binarize else out


def paste_masks(masks: Tensor, boxes: Tensor, size: tuple[int, int], threshold: float = 0.5) -> Tensor:
    """(n, H, W) bool: the (n, m, m) mask probabilities resized into their boxes (n, 4) in an image of ``size``.

    Pixel ``(x, y)`` of the image reads its centre ``(x + 0.5, y + 0.5)`` from the mask by bilinear
    interpolation, the mask spanning its box exactly (zero outside it), and is set where the value is at least
    ``threshold``. All masks are sampled at once (``grid_sample``), in chunks of :data:`PASTE_CHUNK` pixels.
    """
    h, w = size
    n = len(masks)
    out = torch.zeros((n, h, w), dtype=torch.bool, device=masks.device)
    if not n:
        return out
    xs = torch.arange(w, device=masks.device, dtype=torch.float32) + 0.5
    ys = torch.arange(h, device=masks.device, dtype=torch.float32) + 0.5
    step = max(1, PASTE_CHUNK // max(1, h * w))
    for start in range(0, n, step):
        b = boxes[start:start + step].float()
        gx = (xs[None] - b[:, 0:1]) / (b[:, 2:3] - b[:, 0:1]).clamp(min=1e-6) * 2 - 1  # (c, W)
        gy = (ys[None] - b[:, 1:2]) / (b[:, 3:4] - b[:, 1:2]).clamp(min=1e-6) * 2 - 1  # (c, H)
        grid = torch.stack([gx[:, None, :].expand(-1, h, -1), gy[:, :, None].expand(-1, -1, w)], dim=-1)
        sampled = F.grid_sample(masks[start:start + step, None].float(), grid, align_corners=False)
        out[start:start + step] = sampled[:, 0] >= threshold
    return out


def encode_masks(masks: Tensor) -> list[dict]:
    """COCO RLEs (``counts`` as text, JSON-ready) of (n, H, W) binary masks."""
    if not len(masks):
        return []
    rles = mask_utils.encode(np.asfortranarray(masks.permute(1, 2, 0).cpu().numpy().astype(np.uint8)))
    return [{"size": r["size"], "counts": r["counts"].decode("ascii")} for r in rles]
