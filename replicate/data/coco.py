"""COCO-format detection dataset (real COCO 2017 or the synthetic benchmark, unchanged code).

- Category ids (arbitrary, non-contiguous) map to contiguous labels ``0..C-1`` in sorted id order;
  ``label_to_cat_id`` maps back when writing detections.
- ``iscrowd=1`` annotations become ``ignore_boxes`` (assigners treat them as ignore regions).
- Degenerate boxes (w or h <= 0) are dropped and boxes are clipped to the image; the validator has
  already warned with counts (:func:`replicate.data.validate.load_coco`), ``stats`` keeps them.
- Images without (usable) objects stay for evaluation and are filtered for training when
  ``filter_empty`` is set (mmdetection's ``filter_empty_gt``).
- ``masks=True`` adds each object's instance mask, ``target["masks"]`` (N, H, W) uint8, decoded from its
  polygons or RLE at the image's size (the instance-segmentation heads' training targets).
- Randomness: sample ``i`` in epoch ``e`` draws from its own generator seeded by ``(seed, e, i)``.
  ``get(i, e)`` reads a sample of an explicit epoch (the training sampler passes the epoch with each
  index, so DataLoader workers need no shared state); ``dataset[i]`` is ``get(i, dataset.epoch)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from PIL import Image
from pycocotools import mask as mask_utils

from ..errors import DataError
from .validate import load_coco


class CocoDetection(Dataset):
    def __init__(
        self,
        ann_file: str | os.PathLike,
        images_dir: str | os.PathLike,
        transforms=None,
        *,
        filter_empty: bool = False,
        seed: int = 0,
        masks: bool = False,
    ) -> None:
        self.ann_file = Path(ann_file)
        self.images_dir = Path(images_dir)
        if not self.images_dir.is_dir():
            raise DataError(f"{self.images_dir}: image folder not found (annotations: {self.ann_file})")
        self.coco = load_coco(self.ann_file)
        self.transforms = transforms
        self.seed = seed
        self.masks = masks
        self.epoch = 0
        self.cat_ids: list[int] = sorted(self.coco.getCatIds())
        self.cat_to_label = {c: i for i, c in enumerate(self.cat_ids)}
        self.stats = {"dropped_degenerate": 0, "clipped": 0, "filtered_empty_images": 0}
        self._records = self._index()
        ids = sorted(self._records)
        if filter_empty:
            kept = [i for i in ids if len(self._records[i]["labels"])]
            self.stats["filtered_empty_images"] = len(ids) - len(kept)
            ids = kept
        self.ids = ids

    @property
    def label_to_cat_id(self) -> list[int]:
        return self.cat_ids

    @property
    def class_names(self) -> list[str]:
        return [self.coco.cats[c]["name"] for c in self.cat_ids]

    def _index(self) -> dict[int, dict]:
        """Per-image numpy arrays, built once with vectorised clipping and filtering."""
        anns = self.coco.dataset["annotations"]
        imgs = self.coco.imgs
        n = len(anns)
        image_ids = np.fromiter((a["image_id"] for a in anns), dtype=np.int64, count=n)
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float32).reshape(n, 4)
        crowd = np.fromiter((a.get("iscrowd", 0) for a in anns), dtype=bool, count=n)
        labels = np.fromiter((self.cat_to_label[a["category_id"]] for a in anns), dtype=np.int64, count=n)
        widths = np.array([imgs[i]["width"] for i in image_ids], dtype=np.float32).reshape(n)
        heights = np.array([imgs[i]["height"] for i in image_ids], dtype=np.float32).reshape(n)

        xyxy = np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)
        clipped = np.stack([
            np.clip(xyxy[:, 0], 0, widths), np.clip(xyxy[:, 1], 0, heights),
            np.clip(xyxy[:, 2], 0, widths), np.clip(xyxy[:, 3], 0, heights),
        ], axis=1)
        valid = (boxes[:, 2] > 0) & (boxes[:, 3] > 0) & (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
        self.stats["dropped_degenerate"] = int((~valid).sum())
        self.stats["clipped"] = int((valid & np.any(np.abs(clipped - xyxy) > 1e-3, axis=1)).sum())

        order = np.argsort(image_ids, kind="stable")
        records = {int(i): None for i in self.coco.getImgIds()}
        starts = np.searchsorted(image_ids[order], list(records), side="left")
        ends = np.searchsorted(image_ids[order], list(records), side="right")
        for img_id, s, e in zip(records, starts, ends):
            idx = order[s:e]
            idx = idx[valid[idx]]
            obj, ign = idx[~crowd[idx]], idx[crowd[idx]]
            records[img_id] = {"boxes": clipped[obj], "labels": labels[obj], "ignore_boxes": clipped[ign],
                               "annotations": obj}
        return records

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.ids)

    def sample_generator(self, index: int, epoch: int | None = None) -> torch.Generator:
        """The generator of sample ``index`` in ``epoch`` (default: the current ``self.epoch``)."""
        epoch = self.epoch if epoch is None else epoch
        state = np.random.SeedSequence([self.seed, epoch, index]).generate_state(2, dtype=np.uint64)
        gen = torch.Generator()
        gen.manual_seed(int(state[0] >> np.uint64(1)))
        return gen

    def load_image(self, image_id: int) -> torch.Tensor:
        path = self.images_dir / self.coco.imgs[image_id]["file_name"]
        if not path.is_file():
            raise DataError(f"{path}: image file not found (image id {image_id} in {self.ann_file})")
        try:
            with Image.open(path) as im:
                pixels = np.array(im.convert("RGB"))  # a writable copy: torch shares its memory
        except OSError as exc:  # PIL's UnidentifiedImageError and truncated files are OSErrors
            raise DataError(f"{path}: cannot decode image ({exc})") from None
        return torch.from_numpy(pixels).permute(2, 0, 1)

    def load_masks(self, image_id: int, annotations: np.ndarray) -> torch.Tensor:
        """(N, H, W) uint8 instance masks of the annotations at positions ``annotations`` (one decode call)."""
        info = self.coco.imgs[image_id]
        h, w = info["height"], info["width"]
        if not len(annotations):
            return torch.zeros((0, h, w), dtype=torch.uint8)
        anns = self.coco.dataset["annotations"]
        try:
            rles = [self.coco.annToRLE(anns[i]) for i in annotations.tolist()]
        except (KeyError, TypeError, IndexError) as exc:
            raise DataError(f"{self.ann_file}: an annotation of image {image_id} has no usable segmentation "
                            f"({type(exc).__name__}: {exc}); instance masks need polygons or RLE") from None
        return torch.from_numpy(np.ascontiguousarray(mask_utils.decode(rles).transpose(2, 0, 1)))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict]:
        return self.get(index, self.epoch)

    def get(self, index: int, epoch: int) -> tuple[torch.Tensor, dict]:
        """Sample ``index`` with the augmentation randomness of ``epoch``."""
        image_id = self.ids[index]
        rec = self._records[image_id]
        image = self.load_image(image_id).float()
        h, w = image.shape[-2:]
        info = self.coco.imgs[image_id]
        if (h, w) != (info["height"], info["width"]):
            raise DataError(
                f"{self.images_dir / info['file_name']}: image is {w}x{h} but {self.ann_file} says "
                f"{info['width']}x{info['height']}"
            )
        target = {
            "boxes": torch.from_numpy(rec["boxes"]).reshape(-1, 4),
            "labels": torch.from_numpy(rec["labels"]),
            "ignore_boxes": torch.from_numpy(rec["ignore_boxes"]).reshape(-1, 4),
            "image_id": image_id,
            "orig_size": (h, w),
            "img_size": (h, w),
            "scale_factor": (1.0, 1.0),
            "flipped": False,
        }
        if self.masks:
            target["masks"] = self.load_masks(image_id, rec["annotations"])
        if self.transforms is not None:
            image, target = self.transforms(image, target, self.sample_generator(index, epoch))
        return image, target
