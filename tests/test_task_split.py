"""A backbone split per task (TSD's D_s8/16/32): what is copied, what each task's loss trains, clear errors."""

import pytest
import torch

from replicate.errors import ReplicateError
from replicate.models.detector import build_detector, weights_fields
from replicate.models.task_split import SPLIT_STAGES
from replicate.models.zoo import model_config
from replicate.provenance import jsonable

D_HEAD = {"head.roi.sibling": False, "head.roi.pc_cls": False, "head.roi.pc_loc": False, "head.roi.spatial": False}


def _params(overrides):
    return sum(p.numel() for p in build_detector(model_config("tsd", overrides=overrides)).parameters())


def test_the_split_copies_what_the_slides_parameter_counts_say():
    """Table 1's #param column (full-size ResNet-50 FPN): D_s32 59M, D_s16 74.0M, D_s8 81.1M against D_head's
    55.7M, i.e. a second FPN (+3.3M), and also res5 (+18.3M), and also res4 (+25.4M)."""
    d_head = _params(D_HEAD)
    for stride, extra in ((32, 59.0 - 55.7), (16, 74.0 - 55.7), (8, 81.1 - 55.7)):
        assert (_params({**D_HEAD, "task_split.stride": stride}) - d_head) / 1e6 == pytest.approx(extra, abs=0.1)


def _smoke(stride, **more):
    torch.manual_seed(0)
    return build_detector(model_config("tsd", "smoke", 3, {**D_HEAD, "task_split.stride": stride, **more}))


@pytest.mark.parametrize("stride", sorted(SPLIT_STAGES))
def test_the_copies_start_equal_and_only_the_stages_after_the_split_are_copied(stride):
    net = _smoke(stride).eval()
    first = SPLIT_STAGES[stride] + 1
    assert net.task_branch.first == first and len(net.task_branch.stages) == 4 - first + 1
    for s, copy in enumerate(net.task_branch.stages, start=first):
        original = getattr(net.backbone.body, f"layer{s}")
        assert copy is not original
        for a, b in zip(copy.state_dict().values(), original.state_dict().values()):
            assert torch.equal(a, b)
    net.task_branch.neck.load_state_dict(net.neck.state_dict())  # the same FPN too: the same pyramid
    feats = net.features(torch.rand(1, 3, 96, 128))
    assert set(feats) == {"cls", "reg", "rpn"} and feats["rpn"] is feats["cls"]
    for a, b in zip(feats["cls"], feats["reg"]):
        assert torch.equal(a, b)


def _grads(net, term):
    net.zero_grad()
    images = torch.rand(1, 3, 96, 128)
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 60.0, 70.0], [50.0, 20.0, 110.0, 90.0]]),
                "labels": torch.tensor([0, 2])}]
    net.train()
    net(images, targets)[term].backward()

    def touched(module):
        return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())
    return {"shared": touched(net.backbone.body.layer2), "cls_stage": touched(net.backbone.body.layer4),
            "cls_neck": touched(net.neck), "reg_stage": touched(net.task_branch.stages),
            "reg_neck": touched(net.task_branch.neck), "cls_fcs": touched(net.head.roi_head.cls_fcs),
            "reg_fcs": touched(net.head.roi_head.reg_fcs)}


@pytest.mark.parametrize("rpn", ["cls", "reg"])
def test_each_task_trains_its_own_copy_and_the_rpn_the_pyramid_it_reads(rpn):
    net = _smoke(16, **{"task_split.rpn": rpn})
    cls = _grads(net, "loss_tsd_cls")
    assert cls["shared"] and cls["cls_stage"] and cls["cls_neck"] and cls["cls_fcs"]
    assert not (cls["reg_stage"] or cls["reg_neck"] or cls["reg_fcs"])
    reg = _grads(net, "loss_tsd_bbox")
    assert reg["shared"] and reg["reg_stage"] and reg["reg_neck"] and reg["reg_fcs"]
    assert not (reg["cls_stage"] or reg["cls_neck"] or reg["cls_fcs"])
    rpn_grads = _grads(net, "loss_rpn_cls")
    assert rpn_grads[f"{rpn}_neck"] and not rpn_grads[f"{'reg' if rpn == 'cls' else 'cls'}_neck"]


def test_tsd_spatial_on_a_split_backbone_pools_each_task_from_its_pyramid():
    """The offsets come from the proposal's feature on the classification pyramid, so the localization loss
    reaches it through dR; the classification loss never reaches the localization pyramid."""
    net = _smoke(32, **{"head.roi.spatial": True})
    reg = _grads(net, "loss_tsd_bbox")
    assert reg["reg_neck"] and reg["reg_fcs"] and not reg["cls_fcs"]
    cls = _grads(net, "loss_tsd_cls")
    assert cls["cls_neck"] and not cls["reg_neck"]
    dets = net.eval().predict(torch.rand(2, 3, 96, 128))
    assert len(dets) == 2 and set(dets[0]) >= {"boxes", "scores", "labels"}


def test_a_split_is_part_of_the_run_identity_and_no_split_leaves_it_unchanged():
    plain = model_config("tsd", "smoke", 3, D_HEAD)
    assert "task_split" in jsonable(plain) and "task_split" not in weights_fields(plain)
    split = weights_fields(model_config("tsd", "smoke", 3, {**D_HEAD, "task_split.stride": 8}))
    assert split["task_split"] == {"stride": 8, "rpn": "cls"}


@pytest.mark.parametrize("name, overrides, match", [
    ("tsd", {**D_HEAD, "task_split.stride": 4}, "must be one of"),
    ("tsd", {**D_HEAD, "task_split.stride": 8, "task_split.rpn": "both"}, "'cls' or 'reg'"),
    ("tsd", {"task_split.stride": 8}, "own branches"),  # the sibling head reads one feature for both tasks
    ("faster_rcnn", {"task_split.stride": 16}, "own branches"),
    ("tsd_mask_rcnn", {**D_HEAD, "task_split.stride": 16}, "no mask branch"),
    ("tsd", {**D_HEAD, "task_split.stride": 8, "backbone.frozen_stages": 3}, "copies stage 3"),
    ("retinanet", {"task_split.stride": 16}, "own branches"),
    ("tsd", {**D_HEAD, "task_split.stride": 16, "backbone.out_stages": (1, 2, 3)}, "needs the backbone to output"),
])
def test_clear_errors(name, overrides, match):
    with pytest.raises(ReplicateError, match=match):
        build_detector(model_config(name, "smoke", 3, overrides))
