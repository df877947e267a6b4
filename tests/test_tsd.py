"""TSD's head: the task-aware proposals, the progressive constraint by hand, the gradient paths, the ablations."""

import math

import pytest
import torch

from replicate.errors import ReplicateError
from replicate.models.box_coders import DeltaXYWHCoder
from replicate.models.detector import build_detector
from replicate.models.detectors.roi_heads import SampledRoIs, sample_rois
from replicate.models.detectors.rpn import Proposals
from replicate.models.detectors.tsd import TSDHeadConfig
from replicate.models.postprocess import TestConfig
from replicate.models.zoo import model_config

K = 3
CFG = TSDHeadConfig(fc_channels=32, offset_channels=16)


def _feats(channels=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, channels, 128 // s, 160 // s, generator=g) for s in (4, 8, 16, 32)]


def _head(cfg=CFG):
    torch.manual_seed(0)
    return cfg.build(4, K)


def test_pc_cls_by_hand():
    """M_cls = |p_sib(y) - p_tsd(y) + m|_+, m = min(0.3, 1 - p_sib(y)), averaged over the sampled RoIs."""
    head = _head()
    sib = torch.log(torch.tensor([[0.6, 0.2, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7], [0.05, 0.9, 0.03, 0.02]]))
    tsd = torch.log(torch.tensor([[0.8, 0.1, 0.05, 0.05], [0.1, 0.1, 0.3, 0.5], [0.02, 0.97, 0.005, 0.005]]))
    s = SampledRoIs(torch.zeros(3, 5), torch.tensor([0, 3, 1]), torch.zeros(3, 4), torch.tensor([0, -1, 1]),
                    torch.tensor([True, False, True]))
    # RoI 1: 0.6 + 0.3 - 0.8 = 0.1; RoI 2 (background): 0.7 + 0.3 - 0.5 = 0.5; RoI 3: 0.9 + 0.1 - 0.97 = 0.03
    expected = (0.1 + 0.5 + 0.03) / 3
    assert head.cls_constraint(sib, tsd, s).item() == pytest.approx(expected, abs=1e-6)


def test_pc_loc_by_hand():
    """M_loc over positives: the sibling's box decoded from P, TSD's from P_r; margin min(0.3, 1 - IoU_sib)."""
    head = _head()
    rois = torch.tensor([[0.0, 0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 0.0, 10.0, 10.0]])
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0]])
    s = SampledRoIs(rois, torch.tensor([1, 3]), gt, torch.tensor([0, -1]), torch.tensor([True, False]))
    sib_deltas = torch.zeros(2, K, 4)
    sib_deltas[0, 1, 0] = 0.5  # dx 0.5 * std 0.1 * w 10 = 0.5 px: IoU 9.5 / 10.5
    tsd_deltas = torch.zeros(2, K, 4)
    p_r = torch.tensor([[1.0, 0.0, 11.0, 10.0], [0.0, 0.0, 10.0, 10.0]])  # TSD's box: shifted 1 px: IoU 9 / 11
    iou_sib, iou_tsd = 9.5 / 10.5, 9 / 11
    expected = iou_sib + min(0.3, 1 - iou_sib) - iou_tsd
    assert head.loc_constraint(sib_deltas, tsd_deltas, p_r, s).item() == pytest.approx(expected, abs=1e-6)


def _force_delta_r(head, dx, dy):
    last = head.delta_r[-1]
    torch.nn.init.zeros_(last.weight)
    last.bias.data = torch.tensor([dx, dy])


def test_regression_proposal_is_the_shifted_proposal_and_predictions_decode_from_it():
    """P_r = P + gamma * dR * (w, h): with zero deltas the detections are P_r (clipped), TSD's own scores."""
    head = _head().eval()
    _force_delta_r(head, 1.0, -2.0)  # gamma 0.1: (+0.1 w, -0.2 h)
    torch.nn.init.zeros_(head.reg_out.weight)
    torch.nn.init.zeros_(head.reg_out.bias)
    torch.nn.init.zeros_(head.cls_out.weight)
    head.cls_out.bias.data = torch.tensor([3.0, 0.0, 0.0, 0.0])  # class 0 wins everywhere
    box = torch.tensor([[[20.0, 40.0, 60.0, 90.0]]])
    proposals = Proposals(box, torch.ones(1, 1), torch.ones(1, 1, dtype=torch.bool))
    dets = head.predict(_feats(), proposals, [(128, 160)], TestConfig(score_thr=0.5))[0]
    torch.testing.assert_close(dets["boxes"], torch.tensor([[24.0, 30.0, 64.0, 80.0]]))
    assert dets["labels"].tolist() == [0]
    assert dets["scores"].item() == pytest.approx(math.exp(3) / (math.exp(3) + 3), abs=1e-6)


def test_the_sibling_head_does_not_change_predictions():
    head = _head().eval()
    proposals = Proposals(torch.tensor([[[20.0, 40.0, 60.0, 90.0], [50.0, 10.0, 120.0, 70.0]]]), torch.ones(1, 2),
                          torch.ones(1, 2, dtype=torch.bool))
    before = head.predict(_feats(), proposals, [(128, 160)], TestConfig(score_thr=0.0))[0]
    with torch.no_grad():
        for p in head.sibling.parameters():
            p.add_(1.0)
    after = head.predict(_feats(), proposals, [(128, 160)], TestConfig(score_thr=0.0))[0]
    torch.testing.assert_close(before["scores"], after["scores"])


def _loss_grads(cfg, term):
    head = _head(cfg).train()
    feats = _feats()
    proposals = Proposals(torch.tensor([[[20.0, 40.0, 60.0, 90.0], [18.0, 36.0, 64.0, 96.0], [80.0, 10.0, 150.0, 60.0]]]),
                          torch.ones(1, 3), torch.ones(1, 3, dtype=torch.bool))
    targets = [{"boxes": torch.tensor([[22.0, 38.0, 62.0, 94.0]]), "labels": torch.tensor([2])}]
    torch.manual_seed(1)
    terms = head.loss(feats, sample_rois(proposals, targets, cfg.sampling, head.num_classes))
    terms[term].backward()
    return head, terms


def test_each_task_trains_its_own_offsets():
    """The classification loss trains dC (through the deformable pooling), not dR; the regression loss
    trains dR (through its pooling and its target), not dC."""
    head, _ = _loss_grads(CFG, "loss_tsd_cls")
    assert head.delta_c[-1].weight.grad.abs().sum() > 0
    assert head.delta_r[-1].weight.grad is None or head.delta_r[-1].weight.grad.abs().sum() == 0
    head, _ = _loss_grads(CFG, "loss_tsd_bbox")
    assert head.delta_r[-1].weight.grad.abs().sum() > 0
    assert head.delta_c[-1].weight.grad is None or head.delta_c[-1].weight.grad.abs().sum() == 0


def test_the_shift_in_the_target_carries_gradient_unless_detached():
    with_target, _ = _loss_grads(CFG, "loss_tsd_bbox")
    from dataclasses import replace
    without, _ = _loss_grads(replace(CFG, shift_in_target=False), "loss_tsd_bbox")
    assert not torch.allclose(with_target.delta_r[-1].bias.grad, without.delta_r[-1].bias.grad)


def test_the_constraints_do_not_train_the_sibling_head():
    head, terms = _loss_grads(CFG, "loss_pc_loc")
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in head.sibling.parameters())
    assert head.reg_out.weight.grad.abs().sum() > 0
    assert set(terms) == {"loss_tsd_cls", "loss_tsd_bbox", "loss_cls", "loss_bbox", "loss_pc_cls", "loss_pc_loc"}


def test_ablations():
    from dataclasses import replace
    d_head = _head(replace(CFG, spatial=False, sibling=False, pc_cls=False, pc_loc=False))
    assert not hasattr(d_head, "delta_c") and d_head.sibling is None
    _, terms = _loss_grads(replace(CFG, sibling=False, pc_cls=False, pc_loc=False), "loss_tsd_cls")
    assert set(terms) == {"loss_tsd_cls", "loss_tsd_bbox"}
    with pytest.raises(ReplicateError, match="need sibling=True"):
        TSDHeadConfig(sibling=False).build(4, K)


def test_tsd_adds_the_offset_generator_and_the_second_branch_to_faster_rcnn():
    """Table 1's parameter column on the full-size models: D_head adds a second 2-fc branch (+13.9M in the
    paper, 41.8M -> 55.7M), TSD its offset generator (+3.2M, -> 58.9M; ours, the code's layers, 3.37M: a
    12,544 -> 256 shared layer and two 256 -> 256 -> 98 / 2 branches)."""
    def params(name, overrides=None):
        return sum(p.numel() for p in build_detector(model_config(name, overrides=overrides)).head.roi_head.parameters())
    base = params("faster_rcnn")
    plain = {"head.roi.sibling": False, "head.roi.pc_cls": False, "head.roi.pc_loc": False}
    d_head = params("tsd", {**plain, "head.roi.spatial": False})
    tsd = params("tsd", plain)
    assert (d_head - base) / 1e6 == pytest.approx(13.9, abs=0.1)
    assert (tsd - d_head) / 1e6 == pytest.approx(3.37, abs=0.01)
    assert DeltaXYWHCoder(stds=CFG.target_stds).stds == (0.1, 0.1, 0.2, 0.2)
