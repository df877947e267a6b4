"""ResNet / ResNeXt backbones from torchvision's constructors, returning C2..C5 feature maps.

As in the papers' (mmdetection) recipes: with ImageNet weights, BatchNorm is frozen
(``FrozenBatchNorm2d``) and the stem plus stage 1 do not train (``frozen_stages=1``). Optional DCNv2
replaces the 3x3 convolution of every block in the chosen stages (c3-c5 in the papers' DCN rows).
``narrow`` is a small ResNet (one BasicBlock per stage, widths 32-256) trained from scratch on CPU
for the smoke and synthetic profiles; ``narrow_deep`` has two blocks per stage, the small profiles'
stand-in for the deeper backbones (ResNet-101 / ResNeXt-101 rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchvision.models import resnet
from torchvision.ops.misc import FrozenBatchNorm2d

from ..errors import ReplicateError
from .checkpoints import load_backbone_weights, resolve_weights
from .dcn import ModulatedDeformConv2d

_TORCHVISION = {
    "resnet18": resnet.resnet18,
    "resnet50": resnet.resnet50,
    "resnet101": resnet.resnet101,
    "resnext101_32x8d": resnet.resnext101_32x8d,
    "resnext101_64x4d": resnet.resnext101_64x4d,
}
NARROW_WIDTHS = (32, 64, 128, 256)
NARROW_BLOCKS = {"narrow": 1, "narrow_deep": 2}  # BasicBlocks per stage
BACKBONES = (*_TORCHVISION, *NARROW_BLOCKS)


@dataclass(frozen=True)
class BackboneConfig:
    name: str = "resnet50"
    out_stages: tuple[int, ...] = (2, 3, 4)  # stage s = torchvision's layer{s}, giving C{s+1}
    frozen_stages: int = 1  # -1: nothing frozen; 0: stem; k: stem and stages 1..k
    norm: str = "frozen_bn"  # "frozen_bn" or "bn"
    dcn_stages: tuple[int, ...] = ()  # e.g. (2, 3, 4) = DCNv2 in c3-c5
    weights: str | None = None  # local file: torchvision, detectron2 or mmdetection format


def _narrow_resnet(norm_layer, blocks: int = 1) -> resnet.ResNet:
    """A ResNet with torchvision's BasicBlock, ``blocks`` blocks per stage and widths NARROW_WIDTHS."""
    model = resnet.ResNet(resnet.BasicBlock, [1, 1, 1, 1], norm_layer=norm_layer)
    w = NARROW_WIDTHS
    model.conv1 = nn.Conv2d(3, w[0], 7, 2, 3, bias=False)
    model.bn1 = norm_layer(w[0])
    inplanes = w[0]
    for i, planes in enumerate(w):
        stride = 1 if i == 0 else 2
        down = None
        if stride != 1 or inplanes != planes:
            down = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride, bias=False), norm_layer(planes))
        layer = [resnet.BasicBlock(inplanes, planes, stride, down, norm_layer=norm_layer)]
        layer += [resnet.BasicBlock(planes, planes, norm_layer=norm_layer) for _ in range(blocks - 1)]
        setattr(model, f"layer{i + 1}", nn.Sequential(*layer))
        inplanes = planes
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


def _add_dcn(layer: nn.Sequential) -> None:
    for block in layer:
        conv = block.conv2
        block.conv2 = ModulatedDeformConv2d(conv.in_channels, conv.out_channels, conv.kernel_size[0], conv.stride[0],
                                            conv.padding[0], conv.dilation[0], conv.groups, bias=False)


class Backbone(nn.Module):
    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        if cfg.name not in BACKBONES:
            raise ReplicateError(f"unknown backbone {cfg.name!r}; choose from {list(BACKBONES)}")
        if cfg.norm not in ("frozen_bn", "bn"):
            raise ReplicateError(f"unknown backbone norm {cfg.norm!r}; use 'frozen_bn' or 'bn'")
        norm_layer = FrozenBatchNorm2d if cfg.norm == "frozen_bn" else nn.BatchNorm2d
        if cfg.name in NARROW_BLOCKS:
            body = _narrow_resnet(norm_layer, NARROW_BLOCKS[cfg.name])
        else:
            body = _TORCHVISION[cfg.name](weights=None, norm_layer=norm_layer)
        del body.fc, body.avgpool  # the ImageNet classifier; its weights in a checkpoint are skipped
        for s in cfg.dcn_stages:
            _add_dcn(getattr(body, f"layer{s}"))
        if cfg.weights:
            load_backbone_weights(body, resolve_weights(cfg.weights))
        self.body = body
        self.cfg = cfg
        self.out_channels = [self._stage_channels(s) for s in cfg.out_stages]
        self._freeze()

    def _stage_channels(self, stage: int) -> int:
        last = getattr(self.body, f"layer{stage}")[-1]
        return (last.bn3 if hasattr(last, "bn3") else last.bn2).weight.shape[0]

    def _frozen_modules(self) -> list[nn.Module]:
        if self.cfg.frozen_stages < 0:
            return []
        return [self.body.conv1, self.body.bn1] + [getattr(self.body, f"layer{s}") for s in range(1, self.cfg.frozen_stages + 1)]

    def _freeze(self) -> None:
        for module in self._frozen_modules():
            for p in module.parameters():
                p.requires_grad_(False)

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        for module in self._frozen_modules():  # trainable BN in frozen stages keeps its statistics
            module.eval()
        return self

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        b = self.body
        x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
        outs = []
        for s in range(1, max(self.cfg.out_stages) + 1):
            x = getattr(b, f"layer{s}")(x)
            if s in self.cfg.out_stages:
                outs.append(x)
        return outs


def build_backbone(cfg: BackboneConfig | None = None, **overrides) -> Backbone:
    cfg = cfg or BackboneConfig()
    if overrides:
        cfg = BackboneConfig(**{**cfg.__dict__, **overrides})
    if cfg.weights is not None and not resolve_weights(cfg.weights).is_file():
        raise ReplicateError(f"{cfg.weights}: backbone weights file not found (nothing is downloaded)")
    return Backbone(cfg)
