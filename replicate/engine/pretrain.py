"""Pretraining a narrow backbone on a generated profile's own training images (``replicate pretrain``).

The papers start from ImageNet weights; none can be downloaded here, and the benchmark's images are not
ImageNet's. The stand-in is a backbone pretrained once on the profile's **training split only** (the
validation split is never read): every annotated object is cropped as a square around its box (its
longer side times ``context``), resized to ``crop`` px, and the narrow ResNet learns the object's class
(its key's texture) from it, with a linear classifier on globally pooled C5. The detectors then load
the body (:mod:`replicate.models.checkpoints`) frozen as ImageNet initialisation is in the papers.

Crops are cut with :func:`torchvision.ops.roi_align` (one call per image), SGD with momentum and a cosine
learning rate, horizontal flips and a small random shift of each crop per epoch. The output is the body's
state dict in torchvision's names (``<name>-<sha256[:8]>.pt``: the content names the file, so a run's
config, which names the file, changes with the weights) and, beside it, the ``.json``: what it was trained
on (the data manifest), the settings, the held-out accuracy (a slice of the training split's objects)
and provenance. The same settings on the same CPU model give the same weights; another CPU (another maker's,
or the same maker's with another instruction set: AVX2 against AVX-512 BF16) gives other weights. The ``.json``
is committed, and the weights file too once a machine like the record's has re-made it
(``scripts/commit_records.py``); :func:`ensure_pretrained` re-makes a missing weights file from the record
(checking its SHA-256) on a CPU like the one the record names.

``zero_init_residual`` starts each residual block's last BatchNorm scale at 0, so that every block begins
as the identity (Goyal et al. 2017, "Accurate, large minibatch SGD", Sec. 5.1; torchvision's ResNet
option of the same name). It is what lets the deeper narrow ResNet learn in the shared recipe: without it
``narrow_deep`` reached 56.5 % train / 53.6 % held-out accuracy, below the one-block ``narrow`` (80.5 /
71.8 %), the opposite of ImageNet, where ResNet-101 is ahead of ResNet-50 (77.4 against 76.1 % top-1,
torchvision's weights); with it, 81.6 / 74.8 %. The profile's ``narrow_deep`` is pretrained with it
(:data:`ZERO_INIT_RESIDUAL`); ``narrow`` trained well without it and keeps its committed weights.
"""

from __future__ import annotations

import hashlib
import io
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models import resnet
from torchvision.ops import roi_align
from tqdm import tqdm

from ..data.coco import CocoDetection
from ..data.profiles import data_config, ensure_data
from ..data.transforms import IMAGENET_MEAN, IMAGENET_STD
from ..errors import ReplicateError
from ..io import atomic_write_bytes, atomic_write_json, read_json
from ..models.backbone import NARROW_BLOCKS, BackboneConfig, build_backbone
from ..models.checkpoints import resolve_weights
from ..provenance import device_name, provenance


@dataclass(frozen=True)
class PretrainConfig:
    backbone: str = "narrow"  # a narrow backbone: "narrow" or "narrow_deep"
    crop: int = 64  # crop side in pixels
    context: float = 1.25  # crop side = context x the box's longer side
    jitter: float = 0.1  # random shift of a crop's centre, as a fraction of its side
    epochs: int = 12
    batch_size: int = 128
    lr: float = 0.1
    weight_decay: float = 1e-4
    held_out: float = 0.1  # share of the training objects kept out of training to measure accuracy
    seed: int = 0
    zero_init_residual: bool = False  # each residual block starts as the identity (module docstring)


#: ``zero_init_residual`` per narrow backbone as its profile weights were made (``replicate pretrain``'s default)
ZERO_INIT_RESIDUAL = {"narrow": False, "narrow_deep": True}


def object_crops(dataset: CocoDetection, cfg: PretrainConfig, rng: np.random.Generator,
                 progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Every annotated (non-crowd) object of ``dataset`` as a (N, 3, crop, crop) uint8 tensor and its (N,)
    contiguous labels. Each crop is cut once, its centre shifted by up to ``jitter`` x its side."""
    crops, labels = [], []
    for image_id in tqdm(dataset.ids, desc="crops", disable=not progress, unit="img"):
        rec = dataset._records[image_id]
        boxes = torch.as_tensor(rec["boxes"], dtype=torch.float32).reshape(-1, 4)
        if len(boxes) == 0:
            continue
        image = dataset.load_image(image_id).float()[None]
        centre = (boxes[:, :2] + boxes[:, 2:]) / 2
        side = (boxes[:, 2:] - boxes[:, :2]).amax(dim=1) * cfg.context
        shift = torch.from_numpy(rng.uniform(-cfg.jitter, cfg.jitter, size=(len(boxes), 2))).float() * side[:, None]
        centre = centre + shift
        squares = torch.cat([centre - side[:, None] / 2, centre + side[:, None] / 2], dim=1)
        rois = torch.cat([torch.zeros(len(boxes), 1), squares], dim=1)
        cut = roi_align(image, rois, output_size=cfg.crop, spatial_scale=1.0, sampling_ratio=2, aligned=True)
        crops.append(cut.round().clamp(0, 255).to(torch.uint8))
        labels.append(torch.as_tensor(rec["labels"], dtype=torch.int64))
    if not crops:
        raise ReplicateError(f"{dataset.ann_file}: no annotated objects to pretrain on")
    return torch.cat(crops), torch.cat(labels)


class Classifier(nn.Module):
    """The backbone's body, global average pooling of C5 and a linear layer over the classes."""

    def __init__(self, backbone: str, num_classes: int, zero_init_residual: bool = False) -> None:
        super().__init__()
        self.backbone = build_backbone(BackboneConfig(name=backbone, out_stages=(4,), norm="bn", frozen_stages=-1))
        self.fc = nn.Linear(self.backbone.out_channels[-1], num_classes)
        if zero_init_residual:
            for block in self.backbone.body.modules():
                if isinstance(block, (resnet.BasicBlock, resnet.Bottleneck)):
                    nn.init.zeros_((block.bn3 if isinstance(block, resnet.Bottleneck) else block.bn2).weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.backbone(x)[-1].mean(dim=(2, 3)))


def _normalise(crops: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return (crops.float() - mean) / std


def _accuracy(model: nn.Module, crops: torch.Tensor, labels: torch.Tensor, batch: int = 512) -> float:
    if len(labels) == 0:
        return float("nan")
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(_normalise(crops[i:i + batch])).argmax(1) == labels[i:i + batch]).sum())
                   for i in range(0, len(labels), batch))
    model.train()
    return hits / len(labels)


def pretrain(profile: str, out_dir: str | Path, cfg: PretrainConfig = PretrainConfig(), *,
             data_root: str | Path | None = None, progress: bool = True, record: bool = True) -> dict[str, Any]:
    """Pretrain ``cfg.backbone`` on ``profile``'s training objects; write ``out_dir/<backbone>-<sha>.pt`` and
    (with ``record``) its ``.json``; return the JSON document (which names the weights file and its SHA-256)."""
    if cfg.backbone not in NARROW_BLOCKS:
        raise ReplicateError(f"pretrain: backbone {cfg.backbone!r} is not a narrow backbone; choose from "
                             f"{list(NARROW_BLOCKS)}")
    data = data_config(profile, data_root)
    if not data.generated:
        raise ReplicateError(f"pretrain: profile {profile!r} is not generated; its backbone comes from ImageNet "
                             "weights in a local file (--backbone-weights)")
    ensure_data(data, progress=progress)
    ann, _ = data.paths("train")
    dataset = CocoDetection(*data.paths("train"), transforms=None, filter_empty=True)
    rng = np.random.default_rng(cfg.seed)
    torch.manual_seed(cfg.seed)
    start = time.perf_counter()
    crops, labels = object_crops(dataset, cfg, rng, progress)
    order = torch.from_numpy(rng.permutation(len(labels)))
    n_held = int(round(cfg.held_out * len(labels)))
    held, train_idx = order[:n_held], order[n_held:]
    model = Classifier(cfg.backbone, len(dataset.cat_ids), cfg.zero_init_residual)
    optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_idx) / cfg.batch_size)
    total = cfg.epochs * steps_per_epoch
    bar = tqdm(total=total, desc=f"pretrain {cfg.backbone}", disable=not progress)
    step = 0
    model.train()
    for epoch in range(cfg.epochs):
        perm = train_idx[torch.from_numpy(rng.permutation(len(train_idx)))]
        for i in range(0, len(perm), cfg.batch_size):
            idx = perm[i:i + cfg.batch_size]
            x = _normalise(crops[idx])
            flip = torch.from_numpy(rng.random(len(idx)) < 0.5)
            x = torch.where(flip[:, None, None, None], x.flip(-1), x)
            for group in optimizer.param_groups:
                group["lr"] = 0.5 * cfg.lr * (1 + math.cos(math.pi * step / total))
            loss = F.cross_entropy(model(x), labels[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            bar.update(1)
            bar.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.3f}", refresh=False)
    bar.close()
    seconds = time.perf_counter() - start
    out = Path(out_dir)
    buffer = io.BytesIO()
    torch.save(model.backbone.body.state_dict(), buffer)
    sha = hashlib.sha256(buffer.getvalue()).hexdigest()
    weights = out / f"{cfg.backbone}-{sha[:8]}.pt"
    atomic_write_bytes(weights, buffer.getvalue())
    manifest = data.root / "dataset.json"
    document = {
        "weights": weights.name,
        "sha256": sha,
        "profile": profile,
        "trained_on": {"annotations": str(ann.relative_to(data.root)), "split": "train", "objects": len(train_idx),
                       "dataset_manifest": read_json(manifest) if manifest.is_file() else None},
        "held_out_objects": n_held,
        "train_accuracy": _accuracy(model, crops[train_idx], labels[train_idx]),
        "held_out_accuracy": _accuracy(model, crops[held], labels[held]),
        "seconds": seconds,
        "config": asdict(cfg),
        "provenance": provenance(asdict(cfg), device="cpu"),
    }
    if record:
        atomic_write_json(weights.with_suffix(".json"), document, indent=1)
    return document


def ensure_pretrained(weights: str | None, *, profile: str | None = None, data_root: str | Path | None = None,
                      progress: bool = True) -> None:
    """Re-make a profile's pretrained backbone from its committed record when the weights file is absent.

    Pretraining is deterministic on one CPU model (one thread), not across CPU models or instruction sets (MKL
    and oneDNN run other kernels on AVX2 than on AVX-512, and bf16 natively or not): on another CPU the file
    must be copied from a machine like the record's (its provenance ``device``).
    An absent file is re-made from the record's settings (``profile``'s ``data_root`` is
    used when the record was trained on that profile) and must hash to the recorded SHA-256, else it is
    deleted and an error names the record's CPU and this one. Weights without such a record are left to
    the backbone, which reports a missing file."""
    if weights is None:
        return
    path = resolve_weights(weights)
    sidecar = path.with_suffix(".json")
    if path.is_file() or not sidecar.is_file():
        return
    doc = read_json(sidecar, what="pretrained-backbone record")
    root = data_root if profile == doc["profile"] else None
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the committed backbones were pretrained with one thread (float reductions)
    try:
        made = pretrain(doc["profile"], path.parent, PretrainConfig(**doc["config"]), data_root=root,
                        progress=progress, record=False)
    finally:
        torch.set_num_threads(threads)
    if made["sha256"] != doc["sha256"]:
        (path.parent / made["weights"]).unlink(missing_ok=True)
        recorded = (doc.get("provenance") or {}).get("device") or "an unrecorded CPU"
        here = device_name("cpu")
        if recorded == here:
            why = f"on the record's CPU, {here!r}: library versions or thread count differ?"
        else:
            why = f"it was pretrained on {recorded!r} and this machine is {here!r}: another CPU runs other float kernels"
            if "(" not in recorded:
                why += " (the record names the CPU model only, as records did before 2026-12-05: not its instruction set)"
        raise ReplicateError(f"{sidecar}: re-made weights hash to {made['sha256'][:12]}, not the recorded "
                             f"{doc['sha256'][:12]}; pretraining did not reproduce here ({why}), so runs on these "
                             f"weights cannot be made here. Copy the recorded file to {path} from a machine that "
                             "has it (its SHA-256 is in the record)")
