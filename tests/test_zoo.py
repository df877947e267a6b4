"""Every registered detector builds from its typed config, trains one step and predicts sane boxes."""

import pytest
import torch

from replicate.errors import ReplicateError
from replicate.models.detector import Detector, build_detector
from replicate.models.zoo import MODELS, describe, model_config


def _targets():
    masks = torch.zeros(2, 192, 288, dtype=torch.uint8)  # for the detectors with a mask branch
    masks[0, 20:100, 10:80] = 1
    masks[1, 50:180, 100:200] = 1
    return [
        {"boxes": torch.tensor([[10.0, 20.0, 80.0, 100.0], [100.0, 50.0, 200.0, 180.0]]),
         "labels": torch.tensor([1, 3]), "masks": masks,
         "ignore_boxes": torch.tensor([[150.0, 0.0, 250.0, 40.0]])},  # a crowd region
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
         "masks": torch.zeros(0, 192, 288, dtype=torch.uint8),
         "ignore_boxes": torch.zeros(0, 4)},  # an image without objects
    ]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_smoke_model_trains_and_predicts(name):
    torch.manual_seed(0)
    model = build_detector(model_config(name, "smoke", num_classes=10))
    images = torch.randn(2, 3, 192, 288)
    losses = model(images, _targets())
    assert losses and all(k.startswith(("loss", "stat_")) for k in losses)
    assert all(torch.isfinite(v) and v.dim() == 0 for v in losses.values()), losses
    assert not any(v.requires_grad for k, v in losses.items() if k.startswith("stat_"))
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert sum(p.grad is not None and p.grad.abs().sum() > 0 for p in trained) > 0.9 * len(trained)

    model.eval()
    sizes = [(192, 288), (150, 200)]
    with torch.no_grad():  # lower the classifier prior so that there is something to post-process
        for m in model.head.modules():
            if isinstance(m, torch.nn.Conv2d) and m.out_channels % 10 == 0 and m.bias is not None:
                m.bias.add_(4.0)
    dets = model.predict(images, sizes)
    assert len(dets) == 2
    for d, (h, w) in zip(dets, sizes):
        n = len(d["scores"])
        assert 0 < n <= 100
        assert d["boxes"].shape == (n, 4) and d["labels"].shape == (n,)
        assert (d["boxes"][:, 0] >= 0).all() and (d["boxes"][:, 2] <= w).all() and (d["boxes"][:, 3] <= h).all()
        assert ((d["labels"] >= 0) & (d["labels"] < 10)).all()
        assert (d["scores"][:-1] >= d["scores"][1:]).all()


def test_presets_describe_themselves_and_keep_reference_backbone():
    for name in MODELS:
        assert describe(name)
        cfg = model_config(name)
        assert cfg.name == name and cfg.backbone.name == "resnet50" and cfg.backbone.norm == "frozen_bn"
        smoke = model_config(name, "smoke", 10)
        assert smoke.backbone.name == "narrow" and smoke.num_classes == 10
        assert type(smoke.head) is type(cfg.head)


def test_small_profiles_map_backbones_and_keep_explicit_backbone_overrides():
    smoke = model_config("fcos", "smoke", 10)
    assert (smoke.backbone.norm, smoke.backbone.frozen_stages) == ("bn", -1)  # from scratch
    deep = model_config("fcos", "smoke", 10, {"backbone.name": "resnet101", "backbone.dcn_stages": [3, 4]})
    assert deep.backbone.name == "narrow_deep" and deep.backbone.dcn_stages == (3, 4)
    frozen = model_config("fcos", "synthetic", 10, {"backbone.norm": "frozen_bn", "backbone.frozen_stages": 1})
    assert frozen.backbone.name == "narrow" and frozen.backbone.norm == "frozen_bn"
    assert frozen.backbone.frozen_stages == 1 and frozen.head.feat_channels == 128


def test_build_by_name_and_unknown_names():
    assert isinstance(build_detector(model_config("retinanet")), Detector)
    with pytest.raises(ReplicateError, match="unknown model 'yolo'"):
        model_config("yolo")
    with pytest.raises(ReplicateError, match="unknown profile"):
        model_config("fcos", "imagenet")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_head_keeps_the_head_contract(name):
    """priors / assign / loss / predict with one shape per preset (replicate.models.head)."""
    from replicate.models.head import DenseHead

    torch.manual_seed(0)
    net = build_detector(model_config(name, "smoke", 10)).train()
    assert isinstance(net.head, DenseHead) and net.head.prior_kind in ("anchor", "point")
    images = torch.randn(2, 3, 96, 128)
    masks = torch.zeros(1, 96, 128, dtype=torch.uint8)
    masks[0, 10:80, 8:70] = 1
    targets = [{"boxes": torch.tensor([[8.0, 10.0, 70.0, 80.0]]), "labels": torch.tensor([2]), "masks": masks,
                "ignore_boxes": torch.zeros(0, 4)} for _ in range(2)]
    outs = net(images)
    priors = net.head.priors(outs)
    n = sum(m.shape[-2] * m.shape[-1] for m in outs["cls"]) * priors.per_location
    assert priors.centres.shape == (n, 2) and priors.level.shape == (n,) and sum(priors.per_level) == n
    assert (priors.boxes is not None) == (net.head.prior_kind == "anchor")
    if priors.boxes is not None:
        assert torch.allclose(priors.centres, (priors.boxes[:, :2] + priors.boxes[:, 2:]) / 2)
    assignment, matched = net.head.assign(outs, targets)
    assert assignment.gt_index.shape == (2, n) and matched.shape == (2, n, 4)
    assert assignment.num_pos.item() > 0
    losses = net(images, targets)
    assert all(torch.isfinite(v) for v in losses.values()) and any(k.startswith("loss") for k in losses)
    net.eval()
    dets = net.predict(images)
    assert len(dets) == 2 and {"boxes", "scores", "labels"} <= set(dets[0])


def test_reg_init_std_scales_the_same_draw_and_leaves_old_run_names():
    import dataclasses

    from replicate.models.detector import weights_fields

    cfg = model_config("fcos", "proxy", 10).head
    cfg_03 = dataclasses.replace(cfg, reg_init_std=0.03)
    heads = []
    for head_cfg in (cfg, cfg_03):
        torch.manual_seed(0)
        heads.append(head_cfg.build(64, 10))
    a, b = (dict(h.named_parameters()) for h in heads)
    for name in a:  # the same random stream: every other parameter identical, reg_out's weights exactly 3x
        expected = a[name] * 3 if name == "reg_out.weight" else a[name]
        torch.testing.assert_close(b[name], expected, rtol=1e-6, atol=0)
    assert 0.025 < b["reg_out.weight"].std() < 0.035
    proxy = model_config("fcos", "proxy", 10)  # narrowing keeps the papers' 0.01
    assert proxy.head.reg_init_std == 0.01
    assert "reg_init_std" not in weights_fields(proxy)["head"]  # at the earlier value: not in the run's name
    assert weights_fields(dataclasses.replace(proxy, head=cfg_03))["head"]["reg_init_std"] == 0.03
