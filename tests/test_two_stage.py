"""Faster R-CNN with FPN against torchvision's own modules, and its pooling and sampling by hand."""

from dataclasses import replace

import pytest
import torch
from torchvision.models.detection import _utils as tv_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.roi_heads import RoIHeads, fastrcnn_loss
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import MultiScaleRoIAlign, roi_align

from replicate.models._utils import flatten_levels
from replicate.models.box_coders import DeltaXYWHCoder
from replicate.models.detectors.roi_heads import (RoIHeadConfig, RoISampling, SampledRoIs, detections,
                                                  fast_rcnn_losses, sample_rois)
from replicate.models.detectors.rpn import RPN_ANCHORS, ProposalConfig, Proposals, RPNConfig, RPNHead
from replicate.models.detectors.tsd import TSDHeadConfig
from replicate.models.detectors.two_stage import TwoStageConfig
from replicate.models.postprocess import TestConfig
from replicate.models.priors import anchors_for
from replicate.models.roi_pool import deform_roi_pool, multilevel_roi_align, roi_levels
from replicate.models.samplers import sample

HW = (256, 320)
STRIDES = (4, 8, 16, 32, 64)


def _feats(batch=2, channels=8, strides=STRIDES, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, channels, -(-HW[0] // s), -(-HW[1] // s), generator=g) for s in strides]


def _rois(n=60, seed=1, batch=2):
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * torch.tensor([HW[1], HW[0]]) - 20
    wh = torch.rand(n, 2, generator=g) * 220 + 4
    return torch.cat([torch.randint(0, batch, (n, 1), generator=g).float(), xy, xy + wh], 1)


# ----------------------------------------------------------------------------------------------- pooling
def test_rois_map_to_fpn_levels_by_size():
    """FPN Eq. 1: k = floor(4 + log2(sqrt(wh) / 224)), clamped to P2-P5 (index 0-3)."""
    sides = torch.tensor([10.0, 111.0, 112.0, 223.0, 224.0, 447.0, 448.0, 2000.0])
    rois = torch.stack([torch.zeros_like(sides), torch.zeros_like(sides), torch.zeros_like(sides), sides, sides], 1)
    assert roi_levels(rois).tolist() == [0, 0, 1, 1, 2, 2, 3, 3]


def test_multilevel_roi_align_is_torchvisions_multiscale_roi_align():
    feats, rois = _feats(strides=STRIDES[:4]), _rois()
    ours = multilevel_roi_align(feats, rois, STRIDES[:4], 7, 2)
    pooler = MultiScaleRoIAlign(["0", "1", "2", "3"], 7, 2)
    per_image = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    theirs = pooler({str(i): f for i, f in enumerate(feats)}, per_image, [HW] * 2)
    order = torch.cat([torch.nonzero(rois[:, 0] == i).squeeze(1) for i in range(2)])
    torch.testing.assert_close(ours[order], theirs, rtol=0, atol=0)


@pytest.mark.parametrize("samples", [1, 2, 4])
def test_deform_roi_pool_without_offsets_is_roi_align(samples):
    feats, rois = _feats(strides=STRIDES[:4]), _rois()
    ours = deform_roi_pool(feats, rois, torch.zeros(len(rois), 7, 7, 2), STRIDES[:4], 7, samples)
    torch.testing.assert_close(ours, multilevel_roi_align(feats, rois, STRIDES[:4], 7, samples), rtol=1e-4,
                               atol=1e-4)


def test_a_uniform_offset_pools_the_translated_box():
    """Moving every bin by (dx, dy) of the RoI's size is RoIAlign of the RoI moved by (dx * w, dy * h)."""
    feat = _feats(1, strides=(8,))[0]
    rois = torch.tensor([[0.0, 40.0, 30.0, 200.0, 150.0], [0.0, 100.0, 100.0, 140.0, 180.0]])
    d = torch.tensor([[0.1, -0.05], [-0.2, 0.15]])
    ours = deform_roi_pool([feat], rois, d[:, None, None, :].expand(-1, 7, 7, 2), (8,), 7, 2)
    wh = rois[:, 3:] - rois[:, 1:3]
    moved = rois.clone()
    moved[:, 1:] += (d * wh).repeat(1, 2)
    torch.testing.assert_close(ours, roi_align(feat, moved, 7, 1 / 8, 2, aligned=False), rtol=1e-4, atol=1e-4)


def test_deform_roi_pool_carries_gradients_to_its_offsets():
    feat = _feats(1, channels=2, strides=(8,))[0].double()
    rois = torch.tensor([[0.0, 40.0, 30.0, 200.0, 150.0]], dtype=torch.float64)
    offsets = (torch.rand(1, 3, 3, 2, dtype=torch.float64) - 0.5) * 0.2
    offsets.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda o: deform_roi_pool([feat], rois, o, (8,), 3, 2), (offsets,))


# ----------------------------------------------------------------------------------------------- sampling
def test_sampler_fills_its_quota_with_negatives():
    pos = torch.zeros(3, 2000, dtype=torch.bool)
    neg = torch.zeros(3, 2000, dtype=torch.bool)
    pos[0, :300], neg[0, 300:1300] = True, True  # plenty of both: 128 + 384
    pos[1, :10], neg[1, 10:1000] = True, True  # few positives: 10 + 502
    pos[2, :50], neg[2, 50:100] = True, True  # few of both: all of them
    sp, sn = sample(pos, neg, 512, 0.25)
    assert sp.sum(1).tolist() == [128, 10, 50] and sn.sum(1).tolist() == [384, 502, 50]
    assert not (sp & ~pos).any() and not (sn & ~neg).any()


def test_sampling_is_uniform_over_the_candidates():
    torch.manual_seed(0)
    pos = torch.ones(2000, 20, dtype=torch.bool)
    sp, _ = sample(pos, torch.zeros_like(pos), 20, 0.25)  # 5 of 20 per row
    freq = sp.float().mean(0)
    assert (freq - 0.25).abs().max() < 0.05


def test_roi_sampling_adds_the_ground_truths_and_labels_background_last():
    proposals = Proposals(torch.tensor([[[0.0, 0.0, 50.0, 50.0], [100.0, 100.0, 150.0, 160.0], [0, 0, 0, 0]]]),
                          torch.ones(1, 3), torch.tensor([[True, True, False]]))
    targets = [{"boxes": torch.tensor([[0.0, 0.0, 50.0, 55.0]]), "labels": torch.tensor([3])}]
    s = sample_rois(proposals, targets, RoIHeadConfig().sampling, num_classes=5)
    # the first proposal (IoU 0.91) and the ground truth itself are positives; the second is a negative
    assert sorted(s.labels.tolist()) == [3, 3, 5] and s.pos.sum() == 2
    assert len(s.rois) == 3 and (s.rois[:, 0] == 0).all()
    torch.testing.assert_close(s.boxes[s.pos], torch.tensor([[0.0, 0.0, 50.0, 55.0]] * 2))
    assert s.gt_index[s.pos].tolist() == [0, 0] and s.gt_index[~s.pos].tolist() == [-1]  # the mask targets' index


# ----------------------------------------------------------------------------------------------- RPN
def _tv_anchors(batch=2):
    gen = AnchorGenerator(tuple((8.0 * s,) for s in STRIDES), ((0.5, 1.0, 2.0),) * 5)
    feats = [torch.zeros(batch, 1, -(-HW[0] // s), -(-HW[1] // s)) for s in STRIDES]
    return gen(ImageList(torch.zeros(batch, 3, *HW), [HW] * batch), feats)


def test_rpn_anchors_are_torchvisions_with_rounded_bases():
    sizes = [(-(-HW[0] // s), -(-HW[1] // s)) for s in STRIDES]
    ours = torch.cat(anchors_for(replace(RPN_ANCHORS, round_base=True), sizes))
    torch.testing.assert_close(ours, _tv_anchors(1)[0])


def _rpn(pre=300, post=200):
    torch.manual_seed(0)
    cfg = RPNConfig(feat_channels=8, test_proposals=ProposalConfig(pre, post))
    head = RPNHead(cfg, 8)
    for conv in (head.cls_out, head.reg_out):  # spread the outputs so that NMS has work to do
        torch.nn.init.normal_(conv.weight, std=0.3)
    return head


def test_rpn_proposals_match_torchvisions_filter_proposals():
    head = _rpn()
    with torch.no_grad():
        outs = head(_feats())
    sizes = [HW, (200, 250)]
    ours = head.proposals(outs, sizes, training=False)

    anchors = torch.cat(head.anchors(outs["cls"]))
    deltas = flatten_levels(outs["reg"], 4)
    decoded = DeltaXYWHCoder().decode(anchors, deltas)
    counts = [m.shape[-2] * m.shape[-1] * 3 for m in outs["cls"]]
    tv = RegionProposalNetwork(None, None, 0.7, 0.3, 256, 0.5, {"training": 300, "testing": 300},
                               {"training": 200, "testing": 200}, 0.7).eval()
    boxes, scores = tv.filter_proposals(decoded, flatten_levels(outs["cls"], 1).reshape(-1, 1), sizes, counts)
    for i in range(2):
        n = int(ours.valid[i].sum())
        assert n == len(boxes[i]) > 50
        torch.testing.assert_close(ours.boxes[i, :n], boxes[i])
        torch.testing.assert_close(ours.scores[i, :n], scores[i])


def test_rpn_loss_matches_torchvision_on_the_same_labels():
    head = _rpn()
    head.cfg = RPNConfig(feat_channels=8, num_samples=10 ** 6)  # sample every non-ignored anchor
    outs = head(_feats())
    targets = [{"boxes": torch.tensor([[20.0, 30.0, 120.0, 90.0], [150.0, 40.0, 300.0, 230.0]]),
                "labels": torch.tensor([0, 3])},
               {"boxes": torch.tensor([[60.0, 150.0, 90.0, 170.0]]), "labels": torch.tensor([2])}]
    a, matched = head.assign_by_rule(outs, targets)
    ours = head.losses(outs, a, matched)

    anchors = torch.cat(head.anchors(outs["cls"]))
    labels = [torch.where(a.pos_mask[i], 1.0, torch.where(a.neg_mask[i], 0.0, -1.0)) for i in range(2)]
    coder = tv_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    reg_targets = [coder.encode_single(matched[i], anchors) for i in range(2)]
    tv = RegionProposalNetwork(None, None, 0.7, 0.3, 10 ** 6, 0.5, {"training": 1, "testing": 1},
                               {"training": 1, "testing": 1}, 0.7)
    obj, box = tv.compute_loss(flatten_levels(outs["cls"], 1).reshape(-1, 1), flatten_levels(outs["reg"], 4).reshape(-1, 4),
                               labels, reg_targets)
    torch.testing.assert_close(ours["loss_rpn_cls"], obj)
    torch.testing.assert_close(ours["loss_rpn_bbox"], box)


# ----------------------------------------------------------------------------------------------- RoI head
def test_fast_rcnn_loss_matches_torchvisions():
    """torchvision puts the background first and uses beta 1/9; with ours at 1/9 the two agree."""
    torch.manual_seed(0)
    R, K = 40, 6
    logits, deltas = torch.randn(R, K + 1), torch.randn(R, K, 4) * 0.3
    rois = torch.cat([torch.zeros(R, 1), _rois(R)[:, 1:]], 1)
    gt = rois[:, 1:] + torch.randn(R, 4) * 5
    labels = torch.randint(0, K + 1, (R,))
    s = SampledRoIs(rois, labels, gt, torch.where(labels < K, 0, -1), labels < K)
    coder = DeltaXYWHCoder(stds=(0.1, 0.1, 0.2, 0.2))
    loss_cls, loss_bbox = fast_rcnn_losses(logits, deltas, s, coder, beta=1 / 9)

    tv_labels = torch.where(labels == K, 0, labels + 1)
    tv_logits = torch.cat([logits[:, K:], logits[:, :K]], 1)
    tv_deltas = torch.cat([torch.zeros(R, 4), deltas.reshape(R, -1)], 1)
    targets = tv_utils.BoxCoder((10.0, 10.0, 5.0, 5.0)).encode_single(gt, rois[:, 1:])
    tv_cls, tv_box = fastrcnn_loss(tv_logits, tv_deltas, [tv_labels], [targets])
    torch.testing.assert_close(loss_cls, tv_cls)
    torch.testing.assert_close(loss_bbox, tv_box)


def test_roi_detections_match_torchvisions_postprocess():
    torch.manual_seed(0)
    R, K = 300, 4
    rois = _rois(R, batch=2)
    rois[:, 1:] = rois[:, 1:].clamp(min=10).minimum(torch.tensor([300.0, 240.0, 300.0, 240.0]))
    rois[:, 3:] = torch.maximum(rois[:, 3:], rois[:, 1:3] + 8)
    rois = rois[torch.argsort(rois[:, 0], stable=True)]
    logits, deltas = torch.randn(R, K + 1) * 2, torch.randn(R, K, 4) * 0.2
    coder = DeltaXYWHCoder(stds=(0.1, 0.1, 0.2, 0.2))
    cfg = TestConfig(score_thr=0.05, nms_iou=0.5, max_per_image=100)
    mine = detections(logits.softmax(-1), coder.decode(rois[:, None, 1:], deltas), rois[:, 0].long(), [HW] * 2, cfg)

    tv = RoIHeads(None, None, None, 0.5, 0.5, 512, 0.25, (10.0, 10.0, 5.0, 5.0), 0.05, 0.5, 100)
    tv_logits = torch.cat([logits[:, K:], logits[:, :K]], 1)
    tv_deltas = torch.cat([torch.zeros(R, 4), deltas.reshape(R, -1)], 1)
    per_image = [rois[rois[:, 0] == i, 1:] for i in range(2)]
    boxes, scores, labels = tv.postprocess_detections(tv_logits, tv_deltas, per_image, [HW] * 2)
    for i, m in enumerate(mine):
        assert len(m["scores"]) == len(scores[i]) > 20
        torch.testing.assert_close(m["scores"], scores[i])
        torch.testing.assert_close(m["boxes"], boxes[i], rtol=1e-5, atol=1e-4)
        assert torch.equal(m["labels"] + 1, labels[i])


def test_the_small_profiles_narrow_the_rpn_and_the_roi_head():
    cfg = TwoStageConfig().narrowed(64, 2)
    assert cfg.rpn.feat_channels == 64 and cfg.roi.fc_channels == 256 and cfg.roi.sampling.num_samples == 64
    assert cfg.roi == replace(RoIHeadConfig(fc_channels=256), sampling=replace(RoISampling(), num_samples=64))
    assert cfg.feat_channels == 64 and cfg.num_convs == 1
    tsd = TwoStageConfig(roi=TSDHeadConfig()).narrowed(64, 2).roi
    assert (tsd.fc_channels, tsd.offset_channels, tsd.sampling.num_samples, tsd.samples) == (256, 64, 64, 2)
