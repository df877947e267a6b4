"""RetinaNet-Conf: the object-confidence target, each Table 2 loss by hand, the branch's tower, the score
fusion of Eq. 11 and the Table 4 filter, and the released code's small-level fusion switch.

Truth: hand-computed numbers, torchvision's ``box_iou`` for the IoU targets, and a direct evaluation of
``obj^alpha * cls^(1-alpha)`` on the raw maps.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torchvision.ops import box_iou

from replicate.engine.config import SCHEDULES
from replicate.errors import ReplicateError
from replicate.models._utils import flatten_levels
from replicate.models.backbone import BackboneConfig
from replicate.models.detector import Detector
from replicate.models.detectors.retinanet_conf import (RetinaNetConfHeadConfig, object_confidence_loss,
                                                        retinanet_conf)
from replicate.models.postprocess import TestConfig, postprocess

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES_128 = [(16, 16), (8, 8), (4, 4), (2, 2), (1, 1)]


def _sig(x: float) -> float:
    return 1 / (1 + math.exp(-x))


def _ce(x: float, y: float) -> float:
    p = _sig(x)
    return -(y * math.log(p) + (1 - y) * math.log(1 - p))


LOGITS = torch.tensor([0.0, 2.0, -1.0])
TARGET = torch.tensor([0.5, 0.9, 0.2])
NEG = torch.tensor([-3.0, 1.0])


def _hand(kind: str) -> float:
    pairs = list(zip(LOGITS.tolist(), TARGET.tolist()))
    if kind == "ce":
        return sum(_ce(x, y) for x, y in pairs)
    if kind == "ce_w":
        return sum(_ce(x, y) for x, y in pairs) + 1e-3 * sum(_ce(x, 0.0) for x in NEG.tolist())
    if kind == "l1":
        return sum(abs(_sig(x) - y) for x, y in pairs)
    if kind == "smooth_l1":  # beta 1: 0.5 d^2 for |d| < 1
        return sum(0.5 * (_sig(x) - y) ** 2 for x, y in pairs)
    if kind == "l2":
        return sum((_sig(x) - y) ** 2 for x, y in pairs)
    if kind == "gfocal":  # Eq. 13 with gamma 2
        return sum(abs(_sig(x) - y) ** 2 * _ce(x, y) for x, y in pairs)
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["ce", "ce_w", "l1", "smooth_l1", "l2", "gfocal"])
def test_object_confidence_losses_match_hand_computation(kind):
    got = object_confidence_loss(LOGITS, TARGET, kind, neg_logits=NEG, neg_weight=1e-3)
    assert float(got) == pytest.approx(_hand(kind), rel=1e-6)


def test_ce_is_zero_gradient_at_the_target_and_gfocal_vanishes_there():
    x = torch.tensor([0.3], requires_grad=True)
    y = torch.sigmoid(x).detach()
    object_confidence_loss(x, y, "ce").backward()
    assert abs(float(x.grad)) < 1e-7  # Eq. 8: gradient -(y - p)
    assert float(object_confidence_loss(x.detach(), y, "gfocal")) == pytest.approx(0.0, abs=1e-12)


def test_unknown_loss_and_missing_negatives_are_errors():
    with pytest.raises(ReplicateError, match="unknown object-confidence loss 'focal'"):
        object_confidence_loss(LOGITS, TARGET, "focal")
    with pytest.raises(ReplicateError, match="needs the negatives"):
        object_confidence_loss(LOGITS, TARGET, "ce_w")
    with pytest.raises(ReplicateError, match="obj_on must be"):
        RetinaNetConfHeadConfig(obj_on="box").build(16, 4)


def _head(**kw):
    torch.manual_seed(0)
    return RetinaNetConfHeadConfig(feat_channels=16, num_convs=1, **kw).build(16, 4)


def _batch():
    torch.manual_seed(1)
    feats = [torch.randn(2, 16, h, w) for h, w in SIZES_128]
    tg = [{"boxes": torch.tensor([[10.0, 12, 70, 90], [60, 30, 120, 100]]), "labels": torch.tensor([1, 3])},
          {"boxes": torch.tensor([[20.0, 20, 52, 44]]), "labels": torch.tensor([0])}]
    return feats, tg


def test_target_is_iou_of_decoded_prediction_and_loss_is_mean_over_positives():
    head = _head()
    feats, tg = _batch()
    outs = head(feats)
    with torch.no_grad():
        for r in outs["reg"]:
            r.mul_(20.0)
    anchors = torch.cat(head.anchors(outs["cls"]))
    reg = flatten_levels(outs["reg"], 4)
    obj = flatten_levels(outs["obj"], 1)[..., 0]
    a, matched = head.assign_priors(anchors, tg)
    target = head.obj_targets(reg, anchors, matched, a.pos_mask)
    b_idx, p_idx = a.pos_mask.nonzero(as_tuple=True)
    assert len(p_idx) > 5
    pred = head.coder.decode(anchors[p_idx], reg[b_idx, p_idx]).detach()
    gt = torch.stack([tg[int(b)]["boxes"][int(a.gt_index[b, p])] for b, p in zip(b_idx, p_idx)])
    want = box_iou(pred, gt).diagonal()
    assert torch.allclose(target.detach(), want, atol=1e-5)
    # Eq. 9: summed BCE over positives divided by their number
    x = obj[b_idx, p_idx].detach()
    eq9 = -(want * torch.log(x.sigmoid()) + (1 - want) * torch.log(1 - x.sigmoid())).sum() / len(p_idx)
    loss = head.obj_loss(obj, reg, anchors, matched, a, torch.tensor(float(len(p_idx))))
    assert float(loss) == pytest.approx(float(eq9), rel=1e-5)


def test_ce_w_adds_weighted_negatives():
    feats, tg = _batch()
    plain, weighted = _head(obj_loss="ce"), _head(obj_loss="ce_w", obj_neg_weight=1e-3)
    lp, lw = plain.loss(plain(feats), tg, (128, 128)), weighted.loss(weighted(feats), tg, (128, 128))
    outs = weighted(feats)
    anchors = torch.cat(weighted.anchors(outs["cls"]))
    a, _ = weighted.assign_priors(anchors, tg)
    obj = flatten_levels(outs["obj"], 1)[..., 0]
    neg = -torch.log(1 - obj[a.neg_mask].sigmoid()).sum() / a.num_pos
    assert float(lw["loss_obj"] - lp["loss_obj"]) == pytest.approx(1e-3 * float(neg), rel=1e-4)
    assert {k: float(v) for k, v in lw.items() if k != "loss_obj"} == {k: float(v) for k, v in lp.items()
                                                                       if k != "loss_obj"}


@pytest.mark.parametrize("obj_on", ["cls", "reg"])
def test_branch_shares_the_chosen_tower(obj_on):
    head = _head(obj_on=obj_on, detach_obj_target=True)
    feats, tg = _batch()
    head.loss(head(feats), tg, (128, 128))["loss_obj"].backward()
    shared, other = (head.cls_tower, head.reg_tower) if obj_on == "cls" else (head.reg_tower, head.cls_tower)
    assert all(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in shared.parameters())
    assert all(p.grad is None for p in other.parameters())
    assert head.cls_out.weight.grad is None and head.reg_out.weight.grad is None


def test_undetached_target_sends_gradient_into_the_box_regressor():
    head = _head()
    feats, tg = _batch()
    head.loss(head(feats), tg, (128, 128))["loss_obj"].backward()
    assert float(head.reg_out.weight.grad.abs().sum()) > 0


def _model(test: TestConfig | None = None) -> Detector:
    torch.manual_seed(2)
    cfg = retinanet_conf()
    cfg = replace(cfg, num_classes=4, backbone=BackboneConfig(name="narrow", norm="bn", frozen_stages=-1),
                  neck=replace(cfg.neck, out_channels=16), head=replace(cfg.head, feat_channels=16, num_convs=1),
                  test=test or cfg.test)
    model = Detector(cfg).eval()
    with torch.no_grad():
        model.head.cls_out.bias.normal_(0.0, 1.0)
        model.head.obj_out.bias.normal_(0.0, 1.5)
    return model


def _raw(model: Detector, images: torch.Tensor):
    with torch.no_grad():
        outs = model(images)
    p = flatten_levels(outs["cls"], 4)[0].sigmoid()
    q = flatten_levels(outs["obj"], 1)[0].sigmoid()
    return p, q


def test_default_inference_ranks_by_eq11_product():
    model = _model()
    images = torch.randn(1, 3, 128, 96)
    assert model.cfg.test.fusion == "power" and model.cfg.test.fusion_alpha == 0.4
    det = model.predict(images)[0]
    p, q = _raw(model, images)
    fused = p.pow(0.6) * q.pow(0.4)
    assert float(det["scores"][0]) == pytest.approx(float(fused.max()), rel=1e-5)
    assert int(det["labels"][0]) == int(fused.flatten().argmax()) % 4
    assert float(det["scores"].min()) > 0.05


def test_obj_filter_keeps_only_confident_objects():
    images = torch.randn(1, 3, 128, 96)
    plain = _model(TestConfig(fusion="none", max_per_image=100_000, pre_nms_topk=100_000, nms_iou=1.0))
    filtered = _model(TestConfig(fusion="none", quality_thr=0.5, max_per_image=100_000, pre_nms_topk=100_000,
                                 nms_iou=1.0))
    p, q = _raw(plain, images)
    n_plain = len(plain.predict(images)[0]["scores"])
    n_filtered = len(filtered.predict(images)[0]["scores"])
    # nms_iou 1.0 suppresses nothing: the counts are those of the thresholds
    assert n_plain == int((p > 0.05).sum())
    assert n_filtered == int(((p > 0.05) & (q > 0.5)).sum())
    assert 0 < n_filtered < n_plain


def test_postprocess_quality_filter_and_small_level_switch_by_hand():
    # two levels: level 0 has 3 priors, level 1 has 1 prior; one class
    probs = [torch.tensor([[[0.5], [0.2], [0.9]]]), torch.tensor([[[0.64]]])]
    quality = [torch.tensor([[0.81, 0.9, 0.3]]), torch.tensor([[0.25]])]
    boxes = {0: torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]),
             1: torch.tensor([[60.0, 60, 70, 70]])}

    def decode(level, img, prior):
        return boxes[level][prior]

    def run(**kw):
        cfg = TestConfig(fusion="power", fusion_alpha=0.5, threshold_on="fused", **kw)
        return sorted(round(float(s), 4) for s in postprocess(probs, decode, [(100, 100)], cfg, quality)[0]["scores"])

    # sqrt(p q): 0.6364, 0.4243, 0.5196 | 0.4
    assert run() == [0.4, 0.4243, 0.5196, 0.6364]
    assert run(quality_thr=0.5) == [0.4243, 0.6364]
    # the released code: no product on levels with <= 1 prior -> p^(1 - alpha) = 0.8 there
    assert run(fusion_min_priors=1) == [0.4243, 0.5196, 0.6364, 0.8]
    with pytest.raises(ReplicateError, match="quality_thr needs a quality branch"):
        postprocess(probs, decode, [(100, 100)], TestConfig(quality_thr=0.5))


# ----------------------------------------------------------------------------- the paper's tables
def test_tables_transcribe_the_paper_and_share_trained_runs():
    from replicate.experiments.store import test_key
    from replicate.experiments.papers import retinanet_conf as paper
    from replicate.experiments.runs import merge_requests, requests_for

    assert paper.printed("0.357 0.529 - 0.176", ("AP", "AP50", "AP75", "APs")) == {"AP": 35.7, "AP50": 52.9, "APs": 17.6}
    t1, t5, t6 = paper.TABLE1, paper.TABLE5, paper.TABLE6
    assert t1.row("RetinaNet-Conf").paper["AR100"] == 52.6 and len(t5.rows) == 20
    assert t5.row("IoU-aware Net, alpha=0.3").paper["AR100"] == 53.4  # printed "0534"
    t4 = requests_for(paper.TABLE4, "smoke")
    [one] = merge_requests(t4)
    assert len(one.all_tests) == 6 and len({test_key(t) for t in one.all_tests}) == 6
    assert len(merge_requests(requests_for(t5, "smoke"))) == 2
    # Table 1's RetinaNet-Conf (ranked by cls) is the same trained model as Table 4's
    assert requests_for(t1, "smoke")[2].key == one.key
    r101_2x = requests_for(t6, "smoke")[-1]
    assert r101_2x.model.backbone.name == "narrow_deep" and r101_2x.train.iters == 2 * SCHEDULES["smoke"].iters
    coco = requests_for(t6, "coco")[-1]
    assert coco.model.backbone.name == "resnet101" and coco.train.scale == "1000x600"
    assert (coco.train.iters, coco.train.steps) == (180_000, (120_000, 165_000))
    assert sum(not r.reproduce for r in t6.rows) == 7


def test_code_variants_table_measures_the_released_codes_behaviours():
    from replicate.experiments.papers import retinanet_conf as paper
    from replicate.experiments.runs import merge_requests, requests_for

    spec = paper.TABLE_CODE
    smoke = {r.row_label: r for r in requests_for(spec, "smoke")}
    base, small = smoke["RetinaNet-Conf (paper)"], smoke["Fused on levels > 1000 anchors only"]
    assert small.key == base.key and small.model.test.fusion_min_priors == 1000  # re-scored, not retrained
    assert base.model.test.fusion_min_priors == 0 and base.model.test.fusion_alpha == 0.4
    assert smoke["IoU target detached"].model.head.detach_obj_target and not base.model.head.detach_obj_target
    assert len(merge_requests(list(smoke.values()))) == 5
    # the paper row and the IoU-aware retraining are Table 6's R50 runs
    t6 = {r.row_label: r.key for r in requests_for(paper.TABLE6, "smoke")}
    assert base.key == t6["RetinaNet-Conf R50 1x"]
    assert smoke["IoU-aware Net (paper's retraining)"].key == t6["IoU-aware Net R50 1x"]
    released = smoke["IoU-aware Net (its released code)"].model.head
    assert (released.box_loss, released.smooth_l1_beta) == ("smooth_l1", 0.11)
    coco = {r.row_label: r for r in requests_for(spec, "coco")}
    code = coco["RetinaNet-Conf (released code)"]
    assert (code.train.scale, code.train.iters, code.train.steps) == ("1024x608", 180_000, (120_000, 165_000))
    assert coco["RetinaNet-Conf (paper)"].train.scale == "1000x600"
    assert smoke["RetinaNet-Conf (released code)"].train.scale is None  # small profiles keep their scale


def test_figure4_is_the_packages_fusion_and_functions_2_3_hold():
    """Figure 4's surface is IoU-aware RetinaNet's ranking score as the package computes it: (IoU * cls)^0.5, by
    hand at grid points (rows IoU, columns cls); Functions (2) and (3) hold on the grid, and cls * obj never
    exceeds cls."""
    from replicate.analysis.score_fusion import function_checks, fusion_grid

    cls, iou, product = fusion_grid("power", 0.5, n=5)  # values 0, 0.25, 0.5, 0.75, 1
    assert cls[0].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0] and iou[:, 0].tolist() == [0.0, 0.25, 0.5, 0.75, 1.0]
    assert product[4, 1] == pytest.approx(0.5)  # IoU 1, cls 0.25: sqrt(0.25)
    assert product[1, 4] == pytest.approx(0.5) and product[2, 2] == pytest.approx(0.5)
    assert product[3, 0] == 0.0
    _, _, conf = fusion_grid("multiply", n=5)
    assert conf[2, 3] == pytest.approx(0.375)
    checks = function_checks()
    assert len(checks) == 3 and checks["holds on the grid"].all()
