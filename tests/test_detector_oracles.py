"""Our RetinaNet and FCOS against torchvision's own implementations, with identical weights and inputs.

Where the architectures coincide (RetinaNet head, anchors, assignment + loss for one image,
post-processing; FCOS head towers and predictors) the outputs must agree to float tolerance.
"""

import math

import pytest
import torch
from torchvision.models.detection import _utils as tv_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead as TVFCOSHead
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.retinanet import RetinaNet as TVRetinaNet
from torchvision.models.detection.retinanet import RetinaNetHead as TVRetinaNetHead
from torchvision.ops import box_iou

from replicate.models._utils import flatten_levels
from replicate.models.detectors.fcos import FCOSHead, FCOSHeadConfig
from replicate.models.detectors.retinanet import RetinaNetHead, RetinaNetHeadConfig
from replicate.models.postprocess import TestConfig
from replicate.models.priors import AnchorConfig, anchors_for

C, CH = 5, 32
STRIDES = (8, 16, 32, 64, 128)
IMAGE_HW = (256, 384)  # divisible by every stride, so torchvision's integer strides equal ours


def _feats(seed=0, batch=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, CH, IMAGE_HW[0] // s, IMAGE_HW[1] // s, generator=g) for s in STRIDES]


def _retina_pair(random_bias: bool = False):
    torch.manual_seed(0)
    ours = RetinaNetHead(RetinaNetHeadConfig(feat_channels=CH, box_loss="l1", anchors=AnchorConfig(round_base=True)), CH, C)
    if random_bias:  # well-separated scores (the 0.01-std init gives near-ties that sort arbitrarily)
        with torch.no_grad():
            for m in ours.modules():
                if isinstance(m, torch.nn.Conv2d):
                    m.weight.normal_(0.0, 0.03)
                    m.bias.normal_(-1.0 if m is ours.cls_out else 0.0, 0.5)
    theirs = TVRetinaNetHead(CH, 9, C)
    mapping = {}
    for t in ("cls", "reg"):
        tv = "classification_head" if t == "cls" else "regression_head"
        for i in range(4):
            for p in ("weight", "bias"):
                mapping[f"{tv}.conv.{i}.0.{p}"] = f"{t}_tower.{2 * i}.{p}"
    for p in ("weight", "bias"):
        mapping[f"classification_head.cls_logits.{p}"] = f"cls_out.{p}"
        mapping[f"regression_head.bbox_reg.{p}"] = f"reg_out.{p}"
    ours_sd = ours.state_dict()
    theirs.load_state_dict({k: ours_sd[v] for k, v in mapping.items()})
    return ours.eval(), theirs.eval()


def _tv_anchors(batch):
    sizes = tuple((4.0 * s * 2 ** (0 / 3), 4.0 * s * 2 ** (1 / 3), 4.0 * s * 2 ** (2 / 3)) for s in STRIDES)
    gen = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5)
    images = ImageList(torch.zeros(batch, 3, *IMAGE_HW), [IMAGE_HW] * batch)
    feats = [torch.zeros(batch, 1, IMAGE_HW[0] // s, IMAGE_HW[1] // s) for s in STRIDES]
    return gen(images, feats)


def test_retinanet_head_matches_torchvision():
    ours, theirs = _retina_pair()
    feats = _feats()
    with torch.no_grad():
        o = ours(feats)
        t = theirs(feats)
    torch.testing.assert_close(flatten_levels(o["cls"], C), t["cls_logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(flatten_levels(o["reg"], 4), t["bbox_regression"], rtol=1e-5, atol=1e-5)
    # the initialisation of the paper: classifier bias -log((1 - 0.01) / 0.01)
    assert torch.allclose(ours.cls_out.bias, torch.full_like(ours.cls_out.bias, -math.log(99.0)))


def test_retinanet_anchors_match_torchvision_with_rounded_bases():
    cfg = AnchorConfig(round_base=True)
    sizes = [(IMAGE_HW[0] // s, IMAGE_HW[1] // s) for s in STRIDES]
    ours = torch.cat(anchors_for(cfg, sizes))
    theirs = _tv_anchors(1)[0]
    torch.testing.assert_close(ours, theirs)


def test_unrounded_anchor_sizes_by_hand():
    # P3: base 32, scales 2^(i/3), ratio h/w = 0.5 -> w = 32 * sqrt(2), h = 32 / sqrt(2), centred at (0, 0)
    a = anchors_for(AnchorConfig(), [(1, 1)] * 5)[0]
    w, h = 32 * math.sqrt(2), 32 / math.sqrt(2)
    torch.testing.assert_close(a[0], torch.tensor([-w / 2, -h / 2, w / 2, h / 2]))
    assert a.shape == (9, 4)


def test_retinanet_loss_matches_torchvision_for_one_image():
    ours, theirs = _retina_pair()
    feats = _feats(1, batch=1)
    boxes = torch.tensor([[20.0, 30.0, 120.0, 90.0], [200.0, 40.0, 330.0, 230.0], [60.0, 150.0, 90.0, 170.0]])
    labels = torch.tensor([0, 3, 2])
    o = ours(feats)
    loss = ours.loss(o, [{"boxes": boxes, "labels": labels}], IMAGE_HW)

    anchors = _tv_anchors(1)
    matcher = tv_utils.Matcher(0.5, 0.4, allow_low_quality_matches=True)
    matched = [matcher(box_iou(boxes, anchors[0]))]
    t = theirs(feats)
    tv_loss = theirs.compute_loss([{"boxes": boxes, "labels": labels}], t, anchors, matched)
    torch.testing.assert_close(loss["loss_cls"], tv_loss["classification"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss["loss_bbox"], tv_loss["bbox_regression"], rtol=1e-5, atol=1e-6)


def test_retinanet_postprocess_matches_torchvision():
    ours, theirs = _retina_pair(random_bias=True)  # classifier bias ~ -1: many candidates above 0.05
    feats = _feats(2)
    with torch.no_grad():
        o = ours(feats)
    cfg = TestConfig(score_thr=0.05, pre_nms_topk=1000, nms_iou=0.5, max_per_image=100)
    sizes = [IMAGE_HW, (200, 300)]
    mine = ours.predict(o, sizes, cfg)

    tv = TVRetinaNet.__new__(TVRetinaNet)  # only postprocess_detections' attributes are needed
    tv.score_thresh, tv.topk_candidates, tv.nms_thresh, tv.detections_per_img = 0.05, 1000, 0.5, 100
    tv.box_coder = tv_utils.BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
    anchors = _tv_anchors(2)
    counts = [f.shape[-2] * f.shape[-1] * 9 for f in feats]
    head = {"cls_logits": list(flatten_levels(o["cls"], C).split(counts, dim=1)),
            "bbox_regression": list(flatten_levels(o["reg"], 4).split(counts, dim=1))}
    theirs_det = tv.postprocess_detections(head, [list(a.split(counts)) for a in anchors], sizes)
    for m, t in zip(mine, theirs_det):
        assert len(m["scores"]) == len(t["scores"]) > 0
        assert m["scores"].unique().numel() == len(m["scores"])  # no ties: the order is well defined
        torch.testing.assert_close(m["scores"], t["scores"])
        torch.testing.assert_close(m["boxes"], t["boxes"], rtol=1e-5, atol=1e-4)
        assert torch.equal(m["labels"], t["labels"])


def test_fcos_head_matches_torchvision():
    torch.manual_seed(0)
    cfg = FCOSHeadConfig(feat_channels=CH, norm_on_bbox=True, quality_on_reg=True)
    ours = FCOSHead(cfg, CH, C).eval()
    theirs = TVFCOSHead(CH, 1, C, num_convs=4).eval()
    mapping = {}
    for t in ("cls", "reg"):
        tv = "classification_head" if t == "cls" else "regression_head"
        for i in range(4):
            mapping[f"{tv}.conv.{3 * i}.weight"] = f"{t}_tower.{3 * i}.weight"
            mapping[f"{tv}.conv.{3 * i + 1}.weight"] = f"{t}_tower.{3 * i + 1}.weight"
            mapping[f"{tv}.conv.{3 * i + 1}.bias"] = f"{t}_tower.{3 * i + 1}.bias"
    for p in ("weight", "bias"):
        mapping[f"classification_head.cls_logits.{p}"] = f"cls_out.{p}"
        mapping[f"regression_head.bbox_reg.{p}"] = f"reg_out.{p}"
        mapping[f"regression_head.bbox_ctrness.{p}"] = f"quality_out.{p}"
    sd = ours.state_dict()
    tv_sd = {k: sd[v] for k, v in mapping.items()}
    for k in theirs.state_dict():  # torchvision's tower convs carry a bias before GroupNorm; ours do not
        if k not in tv_sd:
            tv_sd[k] = torch.zeros_like(theirs.state_dict()[k])
    theirs.load_state_dict(tv_sd)
    feats = _feats(3)
    with torch.no_grad():
        o = ours(feats)
        t = theirs(feats)
    torch.testing.assert_close(flatten_levels(o["cls"], C), t["cls_logits"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(flatten_levels(o["quality"], 1), t["bbox_ctrness"], rtol=1e-5, atol=1e-5)
    strides = torch.cat([torch.full((f.shape[-2] * f.shape[-1], 1), float(s)) for f, s in zip(feats, STRIDES)])
    torch.testing.assert_close(flatten_levels(o["dist"], 4) / strides, t["bbox_regression"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("tower_dcn", [(), (0,)])
def test_fcos_head_runs_with_dcn_in_towers(tower_dcn):
    head = FCOSHead(FCOSHeadConfig(feat_channels=CH, num_convs=2, tower_dcn=tower_dcn), CH, C)
    out = head(_feats(4, batch=1)[:5])
    assert [m.shape[1] for m in out["cls"]] == [C] * 5
