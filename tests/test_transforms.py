"""Transforms and batching against hand-computed sizes, boxes and pixels."""

import pytest
import torch

from replicate.data.batching import Collate, pad_batch
from replicate.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, Normalize, RandomHorizontalFlip, Resize,
                                       keep_ratio_size)


def _target(boxes, ignore=None):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "ignore_boxes": torch.tensor(ignore or [], dtype=torch.float32).reshape(-1, 4),
            "labels": torch.zeros(len(boxes), dtype=torch.int64)}


@pytest.mark.parametrize("hw, scale, expected", [
    ((480, 640), (1333, 800), (800, 1067)),   # short side to 800
    ((500, 2000), (1333, 800), (333, 1333)),  # long side capped at 1333
    ((427, 640), (1000, 600), (600, 899)),    # RetinaNet-Conf's 1000x600
    ((320, 300), (480, 320), (341, 320)),     # synthetic profile
])
def test_keep_ratio_size(hw, scale, expected):
    assert keep_ratio_size(*hw, scale) == expected


def test_resize_scales_image_and_boxes():
    image = torch.rand(3, 100, 200)
    out, t = Resize([(400, 200)])(image, _target([[10, 20, 50, 80]], [[0, 0, 4, 4]]))
    assert out.shape == (3, 200, 400)
    assert torch.equal(t["boxes"], torch.tensor([[20.0, 40, 100, 160]]))
    assert torch.equal(t["ignore_boxes"], torch.tensor([[0.0, 0, 8, 8]]))
    assert t["scale_factor"] == (2.0, 2.0) and t["img_size"] == (200, 400)


def test_resize_range_mode_draws_short_sides_in_range_reproducibly():
    resize = Resize([(1333, 640), (1333, 800)], mode="range")
    picks = [resize.pick(torch.Generator().manual_seed(i)) for i in range(200)]
    shorts = {p[1] for p in picks}
    assert min(shorts) >= 640 and max(shorts) <= 800 and len(shorts) > 50
    assert all(p[0] == 1333 for p in picks)
    assert picks == [resize.pick(torch.Generator().manual_seed(i)) for i in range(200)]


def test_resize_choice_mode_uses_only_listed_scales():
    resize = Resize([(1333, 640), (1333, 800)], mode="choice")
    assert {resize.pick(torch.Generator().manual_seed(i)) for i in range(50)} == {(1333, 640), (1333, 800)}


def test_resize_rejects_bad_modes():
    with pytest.raises(ValueError):
        Resize([(1, 2)], mode="ranged")
    with pytest.raises(ValueError):
        Resize([(1333, 800)], mode="range")


def test_flip_boxes_and_pixels():
    image = torch.arange(2 * 5, dtype=torch.float32).reshape(1, 2, 5).expand(3, 2, 5)
    out, t = RandomHorizontalFlip(1.0)(image, _target([[1, 0, 3, 2]], [[0, 0, 1, 1]]))
    assert torch.equal(out[0, 0], torch.tensor([4.0, 3, 2, 1, 0]))
    assert torch.equal(t["boxes"], torch.tensor([[2.0, 0, 4, 2]]))  # x' = W - x, W = 5
    assert torch.equal(t["ignore_boxes"], torch.tensor([[4.0, 0, 5, 1]]))
    assert t["flipped"] is True
    back, t2 = RandomHorizontalFlip(1.0)(out, t)
    assert torch.equal(back, image) and torch.equal(t2["boxes"], torch.tensor([[1.0, 0, 3, 2]]))
    same, t3 = RandomHorizontalFlip(0.0)(image, _target([[1, 0, 3, 2]]))
    assert same is image and "flipped" not in t3


def test_normalize():
    image = torch.tensor(IMAGENET_MEAN)[:, None, None].expand(3, 2, 2) + torch.tensor(IMAGENET_STD)[:, None, None]
    out, _ = Normalize()(image.clone(), {})
    assert torch.allclose(out, torch.ones(3, 2, 2))


def test_pad_batch_to_stride_multiple():
    a, b = torch.ones(3, 30, 70), 2 * torch.ones(3, 65, 20)
    batch = pad_batch([a, b], size_divisor=32)
    assert batch.shape == (2, 3, 96, 96)
    assert torch.equal(batch[0, :, :30, :70], a) and batch[0, :, 30:].abs().sum() == 0
    assert torch.equal(batch[1, :, :65, :20], b) and batch[1, :, :, 20:].abs().sum() == 0
    collated = Collate(32)([(a, {"i": 0}), (b, {"i": 1})])
    assert collated.image_sizes == [(30, 70), (65, 20)] and [t["i"] for t in collated.targets] == [0, 1]
    assert pad_batch([a], size_divisor=1).shape == (1, 3, 30, 70)
