"""AlignDet: RoIConv against hand-computed offsets, PyTorch's convolution (Eq. 3) and torchvision's RoIAlign
(Eq. 2, the paper's own equivalence), the per-image max-IoU assignment against the shared-prior one, and the
head's cascade (refined anchors feed the ADM's sampling, assignment and decoding)."""

import math

import pytest
import torch
from torch.nn import functional as F
from torchvision.ops import roi_align

from replicate.errors import ReplicateError
from replicate.models.assigners import max_iou_assign
from replicate.models.detector import build_detector
from replicate.models.detectors.aligndet import ALIGNDET_ANCHOR, CODE_ANCHOR_SCALE, AlignDetHeadConfig
from replicate.models.roiconv import (ALIGNMENTS, AlignConv, circumscribed_rois, conv_implicit_rois,
                                      roiconv_offsets, sample_points)
from replicate.models.zoo import model_config


def test_implicit_roi_of_a_convolution_by_hand():
    """Eq. 3: a 3x3 conv at (X, Y) = (2, 1) on a stride-16 map is a RoIAlign of (16, 0, 64, 48)."""
    rois = conv_implicit_rois(3, 4, 16, 3)
    assert rois.shape == (3, 4, 4)
    assert rois[1, 2].tolist() == [16.0, 0.0, 64.0, 48.0]
    assert conv_implicit_rois(1, 1, 8, 7)[0, 0].tolist() == [-24.0, -24.0, 32.0, 32.0]


def test_roiconv_offsets_by_hand_paper_and_released_code():
    """Box (8, 16, 56, 40) on a stride-8 map, 3x3 kernel, at X = 3, Y = 2: in feature units x1 = 1, y1 = 2,
    bins 2 wide and 1 high. Eq. 4: O_x(i) = 1 - 3 + 1 + (2 - 1)(i + 0.5) = -0.5, 0.5, 1.5 and
    O_y(j) = 2 - 2 + 1 + (1 - 1)(j + 0.5) = 1. With the code's "+1" bins (7/3 and 4/3 wide):
    O_x(i) = -1 + (4/3)(i + 0.5), O_y(j) = 1 + (1/3)(j + 0.5)."""
    boxes = torch.zeros(1, 4, 5, 4)
    boxes[0, 2, 3] = torch.tensor([8.0, 16.0, 56.0, 40.0])
    off = roiconv_offsets(boxes, 8, 3)[0, :, 2, 3].view(3, 3, 2)  # (row, col, (dy, dx))
    torch.testing.assert_close(off[..., 1], torch.tensor([-0.5, 0.5, 1.5]).expand(3, 3))
    torch.testing.assert_close(off[..., 0], torch.ones(3, 3))
    legacy = roiconv_offsets(boxes, 8, 3, bin_plus_one=True)[0, :, 2, 3].view(3, 3, 2)
    i = torch.arange(3.0) + 0.5
    torch.testing.assert_close(legacy[..., 1], (-1 + 4 / 3 * i).expand(3, 3))
    torch.testing.assert_close(legacy[..., 0], (1 + i / 3)[:, None].expand(3, 3))
    with pytest.raises(ReplicateError, match=r"\(B, H, W, 4\)"):
        roiconv_offsets(torch.zeros(3, 4), 8, 3)


def test_offsets_vanish_on_the_implicit_roi_and_roiconv_is_then_a_convolution():
    """Eq. 3 into Eq. 4: boxes equal to each location's implicit RoI give zero offsets, and RoIConv with
    them is PyTorch's convolution with the same weights (zero padding read the same way)."""
    torch.manual_seed(0)
    for kernel, stride in ((3, 8), (5, 16), (7, 32)):
        boxes = conv_implicit_rois(6, 5, stride, kernel)[None].expand(2, -1, -1, -1)
        torch.testing.assert_close(roiconv_offsets(boxes, stride, kernel), torch.zeros(2, 2 * kernel ** 2, 6, 5))
        layer = AlignConv(4, 3, kernel, "roiconv")
        torch.nn.init.normal_(layer.bias)
        x = torch.randn(2, 4, 6, 5)
        expected = F.conv2d(x, layer.weight, layer.bias, padding=kernel // 2)
        torch.testing.assert_close(layer(x, boxes, stride), expected, atol=1e-6, rtol=1e-5)


def test_roiconv_is_roialign_then_a_fully_connected_layer():
    """Sec. 4.1: at every location, RoIConv = torchvision's RoIAlign (one sample per bin, aligned pixel model)
    of that location's box, contracted with the weights. Boxes stay inside so that both read no border."""
    gen = torch.Generator().manual_seed(3)
    stride, kernel, H, W = 8, 3, 7, 9
    x = torch.randn(2, 5, H, W, generator=gen, dtype=torch.float64)
    lo = torch.rand(2, H, W, 2, generator=gen, dtype=torch.float64) * torch.tensor([W - 3.0, H - 3.0]) + 0.5
    size = torch.rand(2, H, W, 2, generator=gen, dtype=torch.float64) * 2.0 + 0.2
    hi = torch.minimum(lo + size, torch.tensor([W - 0.5, H - 0.5], dtype=torch.float64))
    boxes = torch.cat((lo, hi), dim=-1) * stride  # sample points stay within [0, W - 1] x [0, H - 1]
    layer = AlignConv(5, 4, kernel, "roiconv").double()
    torch.nn.init.normal_(layer.weight, generator=gen)
    out = layer(x, boxes, stride)
    idx = torch.stack(torch.meshgrid(torch.arange(2), torch.arange(H), torch.arange(W), indexing="ij"), -1).view(-1, 3)
    rois = torch.cat((idx[:, :1].double(), boxes.view(-1, 4)), dim=1)
    pooled = roi_align(x, rois, kernel, spatial_scale=1 / stride, sampling_ratio=1, aligned=True)  # (N, C, k, k)
    expected = torch.einsum("nckl,ockl->no", pooled, layer.weight) + layer.bias
    torch.testing.assert_close(out.permute(0, 2, 3, 1).reshape(-1, 4), expected)


def test_roiconv_samples_the_bin_centres_of_its_box():
    boxes = torch.tensor([[[[10.0, 4.0, 31.0, 46.0]]]])  # one location (X = Y = 0) of a stride-4 map
    points = sample_points(roiconv_offsets(boxes, 4, 3), 3, 4)[0, 0, 0]  # (9, 2) xy
    xs = 10 + (torch.arange(3.0) + 0.5) * 7
    ys = 4 + (torch.arange(3.0) + 0.5) * 14
    torch.testing.assert_close(points, torch.stack(torch.meshgrid(ys, xs, indexing="ij")[::-1], -1).view(9, 2))
    rect = circumscribed_rois(roiconv_offsets(boxes, 4, 3), 3, 4)[0, 0, 0]
    torch.testing.assert_close(rect, torch.tensor([xs[0], ys[0], xs[-1], ys[-1]]))
    # a regular 3x3 grid at X = 2 of a stride-8 map samples pixel centres 1.5, 2.5, 3.5 (x 8)
    grid = circumscribed_rois(torch.zeros(1, 18, 1, 3), 3, 8)[0, 0, 2]
    torch.testing.assert_close(grid, torch.tensor([12.0, -4.0, 28.0, 12.0]))


@pytest.mark.parametrize("alignment", ALIGNMENTS)
def test_every_alignment_is_a_convolution_on_the_regular_grid_when_its_offsets_are_zero(alignment):
    torch.manual_seed(1)
    layer = AlignConv(4, 6, 3, alignment)
    if hasattr(layer, "offset_conv"):
        torch.nn.init.zeros_(layer.offset_conv.weight)
    x = torch.randn(2, 4, 5, 6)
    boxes = conv_implicit_rois(5, 6, 16, 3)[None].expand(2, -1, -1, -1)
    torch.testing.assert_close(layer(x, boxes, 16), F.conv2d(x, layer.weight, layer.bias, padding=1),
                               atol=1e-6, rtol=1e-5)
    with pytest.raises(ReplicateError, match="alignment must be one of"):
        AlignConv(4, 6, 3, "learned")
    with pytest.raises(ReplicateError, match="odd kernel"):
        AlignConv(4, 6, 4, alignment)


@pytest.mark.parametrize("detach", [True, False])
def test_roiconv_stops_the_gradient_into_its_boxes_unless_asked(detach):
    layer = AlignConv(3, 2, 3, "roiconv", detach_boxes=detach)
    boxes = (conv_implicit_rois(4, 4, 8, 3)[None] + torch.tensor([1.0, 2.0, 3.0, -1.0])).requires_grad_()
    layer(torch.randn(1, 3, 4, 4), boxes, 8).square().sum().backward()
    assert (boxes.grad is None) == detach
    if not detach:
        assert boxes.grad.abs().sum() > 0


def test_max_iou_with_per_image_anchors_equals_shared_anchors_image_by_image():
    """The batched (B, A, 4) path against the shared-anchor path (torchvision's box_iou) per image,
    with padding, low-quality rescue and a crowd region."""
    gen = torch.Generator().manual_seed(0)
    xy = torch.rand(2, 40, 2, generator=gen) * 80
    anchors = torch.cat((xy, xy + 8 + torch.rand(2, 40, 2, generator=gen) * 30), dim=-1)
    gt = torch.tensor([[[10.0, 10.0, 40.0, 50.0], [50.0, 20.0, 90.0, 60.0]], [[5.0, 5.0, 30.0, 30.0], [0, 0, 0, 0]]])
    labels = torch.tensor([[1, 2], [3, -1]])
    valid = torch.tensor([[True, True], [True, False]])
    crowd = torch.tensor([[[60.0, 60.0, 100.0, 100.0]], [[0.0, 0.0, 0.0, 0.0]]])
    crowd_valid = torch.tensor([[True], [False]])
    kw = dict(pos_iou=0.5, neg_iou=0.4)
    batched = max_iou_assign(anchors, gt, labels, valid, ignore_boxes=crowd, ignore_valid=crowd_valid, **kw)
    for b in range(2):
        single = max_iou_assign(anchors[b], gt[b:b + 1], labels[b:b + 1], valid[b:b + 1],
                                ignore_boxes=crowd[b:b + 1], ignore_valid=crowd_valid[b:b + 1], **kw)
        assert torch.equal(batched.gt_index[b], single.gt_index[0])
        assert torch.equal(batched.labels[b], single.labels[0])
        torch.testing.assert_close(batched.max_iou[b], single.max_iou[0])
    assert batched.ignore_mask[0].any() and batched.num_pos > 0


def _head_net():
    torch.manual_seed(0)
    return build_detector(model_config("aligndet", "smoke", num_classes=3)).eval()


def test_refined_anchors_are_the_dpm_boxes_and_the_adm_decodes_against_them():
    """With the DPM regressing (0, 0, log 2, 0) everywhere, each refined anchor is its anchor twice as wide;
    with the ADM regressing nothing, every detection is a refined anchor (clipped to the image)."""
    net = _head_net()
    head = net.head
    with torch.no_grad():
        head.dpm.reg_out.weight.zero_()
        head.dpm.reg_out.bias.copy_(torch.tensor([0.0, 0.0, math.log(2.0), 0.0]))
        head.reg_out.weight.zero_()
        head.reg_out.bias.zero_()
        head.cls_out.bias.fill_(5.0)
        outs = net(torch.randn(1, 3, 128, 160))
    anchors = head.dpm.anchors(outs["dpm_cls"])
    for a, r in zip(anchors, outs["refined"]):
        w, c = a[:, 2] - a[:, 0], (a[:, 0] + a[:, 2]) / 2
        torch.testing.assert_close(r[0], torch.stack((c - w, a[:, 1], c + w, a[:, 3]), dim=1))
    dets = head.predict(outs, [(128, 160)], net.cfg.test)[0]
    refined = torch.cat(outs["refined"], dim=1)[0]
    clipped = torch.stack((refined[:, 0].clamp(0, 160), refined[:, 1].clamp(0, 128), refined[:, 2].clamp(0, 160),
                           refined[:, 3].clamp(0, 128)), dim=1)
    assert len(dets["boxes"]) > 0
    gap = (dets["boxes"][:, None, :] - clipped[None]).abs().amax(dim=-1).min(dim=1).values
    assert gap.max() < 1e-4


def test_adm_assigns_on_refined_anchors_at_its_own_thresholds():
    """A ground truth equal to one refined anchor: that anchor is the ADM's positive (IoU 1 >= 0.7) even
    where the DPM's anchor there overlaps it less than the DPM's 0.4; anchors below 0.7 are negatives."""
    net = _head_net()
    head = net.head
    refined = torch.tensor([[[0.0, 0.0, 40.0, 40.0], [100.0, 100.0, 120.0, 130.0], [0.0, 0.0, 36.0, 36.0]]])
    gt = [{"boxes": torch.tensor([[100.0, 100.0, 120.0, 130.0]]), "labels": torch.tensor([2])}]
    a, matched = head.adm_assign(refined, gt)
    assert a.gt_index.tolist() == [[-1, 0, -1]] and a.labels.tolist() == [[-1, 2, -1]]
    torch.testing.assert_close(matched[0, 1], gt[0]["boxes"][0])
    cfg = AlignDetHeadConfig()
    assert (cfg.dpm_pos_iou, cfg.dpm_neg_iou, cfg.adm_pos_iou, cfg.adm_neg_iou) == (0.4, 0.3, 0.7, 0.7)


def test_loss_has_both_modules_and_no_gradient_reaches_the_dpm_through_the_boxes():
    net = _head_net().train()
    images = torch.randn(2, 3, 96, 128)
    targets = [{"boxes": torch.tensor([[8.0, 10.0, 70.0, 80.0]]), "labels": torch.tensor([1])}] * 2
    losses = net(images, targets)
    assert set(losses) == {"loss_dpm_cls", "loss_dpm_bbox", "loss_cls", "loss_bbox"}
    (losses["loss_cls"] + losses["loss_bbox"]).backward()
    assert net.head.dpm.reg_out.weight.grad is None  # the ADM reads the DPM's boxes through a gradient stop
    assert net.head.align.weight.grad.abs().sum() > 0


def test_the_anchor_and_the_narrowing():
    assert ALIGNDET_ANCHOR.num_anchors == 1 and ALIGNDET_ANCHOR.octave_base_scale == 4.0  # Sec. 3.1: 32^2 on P3
    code = model_config("aligndet", overrides={"head.anchors.octave_base_scale": CODE_ANCHOR_SCALE}).head
    assert code.anchors.octave_base_scale == pytest.approx(4 * 2 ** (1 / 3))
    wo_adm = model_config("aligndet_wo_adm").head  # Table 1's one-anchor RetinaNet: RetinaNet's assignment
    assert (wo_adm.anchors, wo_adm.pos_iou, wo_adm.neg_iou) == (ALIGNDET_ANCHOR, 0.5, 0.4)
    full = model_config("aligndet").head
    assert (full.kernel, full.align_channels, full.adm_convs, full.adm_kernel) == (7, 1024, 1, 1)
    small = model_config("aligndet", "smoke", 10).head
    assert (small.feat_channels, small.num_convs, small.align_channels, small.adm_channels, small.adm_convs) == \
        (64, 2, 256, 256, 1)
    ablation = model_config("aligndet_3x3", "smoke", 10).head
    assert (ablation.align_channels, ablation.adm_channels, ablation.adm_convs) == (64, 64, 2)
    dagger = build_detector(model_config("aligndet", "smoke", 10, {"head.p3_kernel": 3}))
    assert dagger.head.align_p3.kernel == 3 and dagger.head.align.kernel == 7


# ------------------------------------------------------------------------------------------- Figure 4
def test_widening_by_half_a_bin_turns_sample_points_back_into_their_box():
    from replicate.analysis.alignment_rois import widen_by_half_a_bin

    boxes = torch.tensor([[[[10.0, 4.0, 31.0, 46.0]]]])
    points = circumscribed_rois(roiconv_offsets(boxes, 4, 3), 3, 4)
    torch.testing.assert_close(widen_by_half_a_bin(points, 3), boxes)
    grid = circumscribed_rois(torch.zeros(1, 18, 3, 4), 3, 8)  # the regular grid: Eq. 3's RoI
    torch.testing.assert_close(widen_by_half_a_bin(grid, 3)[0], conv_implicit_rois(3, 4, 8, 3))


def test_paired_ious_by_hand():
    from replicate.models.losses import aligned_box_iou as paired_ious

    a = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[5.0, 0.0, 15.0, 10.0], [0.0, 0.0, 10.0, 10.0], [2.0, 2.0, 3.0, 3.0]])
    torch.testing.assert_close(paired_ious(a, b), torch.tensor([50 / 150, 1.0, 0.0]))


def test_roi_anchor_ious_read_each_alignment_by_its_rule():
    """RoIConv's bins give IoU 1 with their anchors under the bins reading, and ((k-1)/k)^2 under the paper's
    circumscribed rectangle (square refined anchors, 3x3 kernel: 4/9); the regular grid's is Eq. 3's RoI under
    both readings."""
    from replicate.analysis.alignment_rois import describe, roi_anchor_ious, verdict

    torch.manual_seed(0)
    images = torch.randn(1, 3, 128, 128)
    targets = [{"boxes": torch.tensor([[20.0, 20.0, 60.0, 60.0], [64.0, 40.0, 120.0, 100.0]])}]
    nets = {}
    for alignment in ("roiconv", "conv", "deform"):
        net = build_detector(model_config("aligndet_3x3", "smoke", 3, {"head.alignment": alignment})).eval()
        with torch.no_grad():  # refined anchors = the square anchors, so some overlap the boxes
            net.head.dpm.reg_out.weight.zero_()
            net.head.dpm.reg_out.bias.zero_()
        nets[alignment] = roi_anchor_ious(net, images, targets, min_gt_iou=0.3)
    roi = nets["roiconv"]
    assert len(roi["bins"]) > 0
    torch.testing.assert_close(roi["bins"], torch.ones_like(roi["bins"]))
    torch.testing.assert_close(roi["paper"], torch.full_like(roi["paper"], 4 / 9))
    torch.testing.assert_close(nets["conv"]["paper"], nets["conv"]["bins"])
    assert len(nets["conv"]["paper"]) == len(roi["paper"]) == len(nets["deform"]["paper"])
    summaries = {name: {r: describe(v[r].numpy()) for r in ("paper", "bins")} for name, v in nets.items()}
    assert sum(summaries["conv"]["paper"]["counts"]) == summaries["conv"]["paper"]["n"] == len(roi["paper"])
    text = verdict(summaries, "conv", "deform")
    assert text.startswith("paper reading: deform") and "bins reading" in text
    with pytest.raises(ReplicateError, match="AlignDet head"):
        roi_anchor_ious(build_detector(model_config("retinanet", "smoke", 3)), images, targets)


def test_dense_predictions_of_a_cascade_decode_against_each_images_refined_anchors(smoke_root):
    from replicate.analysis.cache import dense_predictions
    from replicate.data.batching import Collate
    from replicate.data.profiles import build_dataset, data_config

    val = build_dataset(data_config("smoke", smoke_root), "val", train=False)
    net = _head_net()
    preds = dense_predictions(net, val, [0, 1])
    with torch.no_grad():
        outs = net(Collate()([val[0], val[1]]).images)
    for i, p in enumerate(preds):
        refined = torch.cat(outs["refined"], dim=1)[i]
        torch.testing.assert_close(p.priors, refined)
        deltas = torch.cat([r.permute(0, 2, 3, 1).reshape(2, -1, 4) for r in outs["reg"]], dim=1)[i]
        torch.testing.assert_close(p.boxes, net.head.coder.decode(refined, deltas))


# ------------------------------------------------------------------------------------------------ Tables 1-2
def test_single_level_anchors_span_five_octaves():
    """Sec. 3.1: scale factors 2, 4, 8, 16, 32 at stride 16 give square anchors of 32-512 px at one location."""
    from replicate.models.priors import AnchorConfig, anchors_for

    cfg = AnchorConfig(strides=(16,), octave_base_scale=2.0, scales_per_octave=1, octaves=5, ratios=(1.0,))
    assert cfg.num_anchors == 5
    (a,) = anchors_for(cfg, [(1, 1)])
    assert (a[:, 2] - a[:, 0]).tolist() == [32.0, 64.0, 128.0, 256.0, 512.0]
    assert anchors_for(AnchorConfig(), [(2, 2)] * 5)[0].shape == (36, 4)  # octaves = 1: RetinaNet's nine


def test_new_anchor_and_head_fields_leave_earlier_run_names():
    from replicate.experiments.papers.aligndet import SINGLE_LEVEL
    from replicate.models.detector import weights_fields

    head = weights_fields(model_config("retinanet", "proxy", 10))["head"]
    assert "anchor_roiconv" not in head and "octaves" not in head["anchors"]
    single = weights_fields(model_config("retinanet", "proxy", 10, {**SINGLE_LEVEL, "head.anchor_roiconv": True}))
    assert single["head"]["anchors"]["octaves"] == 5 and single["head"]["anchor_roiconv"] is True
    assert single["backbone"]["out_stages"] == [3] and single["neck"]["num_extra"] == 0


def test_roiconv_per_anchor_is_the_retinanet_head_run_on_each_anchors_aligned_map():
    """Table 2's head against a loop over the anchors: anchor a's outputs are RetinaNet's predictors' slice for a,
    computed from the towers on the RoIConv of a's boxes."""
    from replicate.experiments.papers.aligndet import SINGLE_LEVEL

    torch.manual_seed(0)
    net = build_detector(model_config("retinanet", "smoke", 4, {**SINGLE_LEVEL, "head.anchor_roiconv": True}))
    head = net.head
    feats = [torch.randn(2, 64, 6, 7)]
    with torch.no_grad():
        outs = head(feats)
        A, K = head.num_anchors, 4
        anchors = head.anchors(feats)[0].view(6, 7, A, 4)
        for a in (0, 7, 14):
            boxes = anchors[:, :, a].expand(2, 6, 7, 4)
            aligned = F.relu(head.roiconv(feats[0], boxes, 16))
            cls = head.cls_out(head.cls_tower(aligned))[:, a * K:(a + 1) * K]
            reg = head.reg_out(head.reg_tower(aligned))[:, a * 4:(a + 1) * 4]
            torch.testing.assert_close(outs["cls"][0][:, a * K:(a + 1) * K], cls, rtol=1e-4, atol=1e-5)
            torch.testing.assert_close(outs["reg"][0][:, a * 4:(a + 1) * 4], reg, rtol=1e-4, atol=1e-5)
    assert outs["cls"][0].shape == (2, A * K, 6, 7) and A == 15
