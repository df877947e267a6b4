"""Box coders: hand-computed cases, round trips, clamping, broadcasting, torchvision oracle."""

import math

import pytest
import torch
from torchvision.models.detection._utils import BoxCoder as TVBoxCoder

from replicate.models.box_coders import DeltaXYWHCoder, DistanceCoder, DistributionCoder, clip_boxes


def _random_boxes(n, generator, scale=100.0, dtype=torch.float64):
    xy = torch.rand(n, 2, generator=generator, dtype=dtype) * scale
    # sizes in [1, 31]: size ratios stay below exp(clamp_log) = 62.5, so round trips are exact
    wh = torch.rand(n, 2, generator=generator, dtype=dtype) * 30.0 + 1.0
    return torch.cat([xy, xy + wh], dim=-1)


# --------------------------------------------------------------------------- DeltaXYWHCoder


def test_delta_encode_hand_case():
    # anchor centre (5,5) size 10x10; gt centre (7,12) size 10x20
    anchor = torch.tensor([0.0, 0.0, 10.0, 10.0])
    gt = torch.tensor([2.0, 2.0, 12.0, 22.0])
    d = DeltaXYWHCoder().encode(anchor, gt)
    torch.testing.assert_close(d, torch.tensor([0.2, 0.7, 0.0, math.log(2.0)]))


def test_delta_encode_hand_case_with_stds_and_means():
    anchor = torch.tensor([0.0, 0.0, 10.0, 10.0])
    gt = torch.tensor([2.0, 2.0, 12.0, 22.0])
    d = DeltaXYWHCoder(stds=(0.1, 0.1, 0.2, 0.2)).encode(anchor, gt)
    torch.testing.assert_close(d, torch.tensor([2.0, 7.0, 0.0, math.log(2.0) / 0.2]))
    d = DeltaXYWHCoder(means=(0.1, -0.2, 0.0, 0.5), stds=(0.5, 0.5, 1.0, 2.0)).encode(anchor, gt)
    torch.testing.assert_close(d, torch.tensor([0.2, 1.8, 0.0, (math.log(2.0) - 0.5) / 2.0]))


def test_delta_encode_hand_case_add_one():
    # legacy +1: anchor w=h=11, centre (5,5); gt w=11, h=21, centre (7,12)
    anchor = torch.tensor([0.0, 0.0, 10.0, 10.0])
    gt = torch.tensor([2.0, 2.0, 12.0, 22.0])
    coder = DeltaXYWHCoder(add_one=True)
    d = coder.encode(anchor, gt)
    torch.testing.assert_close(d, torch.tensor([2 / 11, 7 / 11, 0.0, math.log(21 / 11)]))
    torch.testing.assert_close(coder.decode(anchor, d), gt)


def test_delta_decode_hand_case():
    anchor = torch.tensor([0.0, 0.0, 10.0, 10.0])
    deltas = torch.tensor([0.2, 0.7, 0.0, math.log(2.0)])
    torch.testing.assert_close(DeltaXYWHCoder().decode(anchor, deltas), torch.tensor([2.0, 2.0, 12.0, 22.0]))


@pytest.mark.parametrize("add_one", [False, True])
@pytest.mark.parametrize("means,stds", [((0, 0, 0, 0), (1, 1, 1, 1)), ((0.1, -0.1, 0.05, 0.0), (0.1, 0.1, 0.2, 0.2))])
def test_delta_round_trip(add_one, means, stds):
    g = torch.Generator().manual_seed(0)
    anchors = _random_boxes(200, g)
    gt = _random_boxes(200, g)
    coder = DeltaXYWHCoder(means=means, stds=stds, add_one=add_one)
    torch.testing.assert_close(coder.decode(anchors, coder.encode(anchors, gt)), gt)


def test_delta_matches_torchvision_boxcoder():
    g = torch.Generator().manual_seed(1)
    anchors = _random_boxes(100, g, dtype=torch.float32)
    gt = _random_boxes(100, g, dtype=torch.float32)
    tv = TVBoxCoder(weights=(10.0, 10.0, 5.0, 5.0))
    ours = DeltaXYWHCoder(stds=(0.1, 0.1, 0.2, 0.2))
    torch.testing.assert_close(ours.encode(anchors, gt), tv.encode_single(gt, anchors))
    deltas = torch.randn(100, 4, generator=g) * 5  # large enough to hit the clamp sometimes
    torch.testing.assert_close(ours.decode(anchors, deltas), tv.decode_single(deltas, anchors), rtol=1e-5, atol=1e-3)


def test_delta_decode_clamps_log_size():
    anchor = torch.tensor([0.0, 0.0, 16.0, 16.0])
    deltas = torch.tensor([0.0, 0.0, 100.0, -100.0])
    box = DeltaXYWHCoder().decode(anchor, deltas)
    # w = 16 * exp(log(1000/16)) = 1000, h = 16 * exp(-log(1000/16)) = 0.256, centre (8, 8)
    torch.testing.assert_close(box, torch.tensor([8 - 500.0, 8 - 0.128, 8 + 500.0, 8 + 0.128]))
    box = DeltaXYWHCoder(clamp_log=math.log(2.0)).decode(anchor, deltas)
    torch.testing.assert_close(box, torch.tensor([-8.0, 4.0, 24.0, 12.0]))
    assert torch.isfinite(DeltaXYWHCoder().decode(anchor, torch.tensor([0.0, 0.0, 1e4, 1e4]))).all()


def test_delta_decode_clips_to_max_shape():
    anchor = torch.tensor([0.0, 0.0, 10.0, 10.0])
    deltas = torch.tensor([0.0, 0.0, math.log(4.0), math.log(4.0)])  # -> [-15,-15,25,25]
    box = DeltaXYWHCoder().decode(anchor, deltas, max_shape=(20, 12))  # h=20, w=12
    torch.testing.assert_close(box, torch.tensor([0.0, 0.0, 12.0, 20.0]))
    box = DeltaXYWHCoder(add_one=True).decode(anchor, deltas, max_shape=(20, 12))
    torch.testing.assert_close(box, torch.tensor([0.0, 0.0, 11.0, 19.0]))


def test_delta_broadcasts_over_batch_dim():
    g = torch.Generator().manual_seed(2)
    anchors = _random_boxes(7, g)  # (N, 4)
    gt = torch.stack([_random_boxes(7, g) for _ in range(3)])  # (B, N, 4)
    coder = DeltaXYWHCoder(stds=(0.1, 0.1, 0.2, 0.2))
    d = coder.encode(anchors, gt)
    assert d.shape == (3, 7, 4)
    for b in range(3):
        torch.testing.assert_close(d[b], coder.encode(anchors, gt[b]))
    out = coder.decode(anchors, d)
    assert out.shape == (3, 7, 4)
    torch.testing.assert_close(out, gt)
    # anchors (N,1,4) vs gt (1,M,4) -> all pairs (N,M,4)
    d = coder.encode(anchors[:, None], gt[0][None, :])
    assert d.shape == (7, 7, 4)
    torch.testing.assert_close(d[2, 5], coder.encode(anchors[2], gt[0, 5]))


def test_delta_rejects_bad_params():
    with pytest.raises(ValueError):
        DeltaXYWHCoder(stds=(1, 1, 0, 1))
    with pytest.raises(ValueError):
        DeltaXYWHCoder(means=(0, 0, 0))


def test_clip_boxes():
    boxes = torch.tensor([[-5.0, 3.0, 50.0, 70.0]])
    torch.testing.assert_close(clip_boxes(boxes, (60, 40)), torch.tensor([[0.0, 3.0, 40.0, 60.0]]))


# --------------------------------------------------------------------------- DistanceCoder


def test_distance_hand_case():
    point = torch.tensor([5.0, 5.0])
    gt = torch.tensor([2.0, 2.0, 12.0, 22.0])
    torch.testing.assert_close(DistanceCoder().encode(point, gt), torch.tensor([3.0, 3.0, 7.0, 17.0]))
    coder = DistanceCoder(normalizer=8.0)
    d = coder.encode(point, gt)
    torch.testing.assert_close(d, torch.tensor([3 / 8, 3 / 8, 7 / 8, 17 / 8]))
    torch.testing.assert_close(coder.decode(point, d), gt)
    torch.testing.assert_close(
        DistanceCoder().decode(torch.tensor([10.0, 20.0]), torch.tensor([1.0, 2.0, 3.0, 4.0])),
        torch.tensor([9.0, 18.0, 13.0, 24.0]),
    )


def test_distance_round_trip_broadcast_and_clip():
    g = torch.Generator().manual_seed(3)
    points = torch.rand(5, 2, generator=g, dtype=torch.float64) * 50  # (P, 2)
    gt = _random_boxes(4, g)  # (G, 4)
    coder = DistanceCoder(normalizer=16.0)
    d = coder.encode(points[:, None, :], gt[None, :, :])  # all pairs
    assert d.shape == (5, 4, 4)
    torch.testing.assert_close(d[3, 1] * 16, torch.stack([
        points[3, 0] - gt[1, 0], points[3, 1] - gt[1, 1], gt[1, 2] - points[3, 0], gt[1, 3] - points[3, 1]]))
    torch.testing.assert_close(coder.decode(points[:, None, :], d), gt[None].expand(5, 4, 4))
    box = DistanceCoder().decode(torch.tensor([5.0, 5.0]), torch.tensor([10.0, 1.0, 100.0, 1.0]), max_shape=(8, 30))
    torch.testing.assert_close(box, torch.tensor([0.0, 4.0, 30.0, 6.0]))


# --------------------------------------------------------------------------- DistributionCoder


def test_integral_hand_cases():
    coder = DistributionCoder(reg_max=2)
    # probs (1/8, 2/8, 5/8) -> expectation 0*1/8 + 1*2/8 + 2*5/8 = 1.5
    one = torch.log(torch.tensor([1.0, 2.0, 5.0]))
    logits = torch.cat([one, torch.zeros(3), torch.tensor([50.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 50.0])])
    torch.testing.assert_close(coder.integral(logits), torch.tensor([1.5, 1.0, 0.0, 2.0]))
    # batch dims
    batched = logits.expand(2, 3, 12)
    torch.testing.assert_close(coder.integral(batched), torch.tensor([1.5, 1.0, 0.0, 2.0]).expand(2, 3, 4))
    with pytest.raises(ValueError):
        coder.integral(torch.zeros(10))


def test_integral_uniform_default_reg_max():
    coder = DistributionCoder()
    torch.testing.assert_close(coder.integral(torch.zeros(3, 68)), torch.full((3, 4), 8.0))


def test_target_bins_hand_cases():
    coder = DistributionCoder(reg_max=16)
    dist = torch.tensor([[3.3, 0.0, -1.0, 20.0]])
    left, wl, wr = coder.target_bins(dist)
    assert left.dtype == torch.long
    assert left.tolist() == [[3, 0, 0, 15]]
    torch.testing.assert_close(wl, torch.tensor([[0.7, 1.0, 1.0, 0.01]]), atol=1e-5, rtol=0)
    torch.testing.assert_close(wr, torch.tensor([[0.3, 0.0, 0.0, 0.99]]), atol=1e-5, rtol=0)
    # weights interpolate back to the clamped distance
    g = torch.Generator().manual_seed(4)
    d = torch.rand(10, 4, generator=g) * 20 - 2
    left, wl, wr = coder.target_bins(d)
    torch.testing.assert_close(wl * left + wr * (left + 1), d.clamp(0, 15.99))
    torch.testing.assert_close(wl + wr, torch.ones_like(d))
