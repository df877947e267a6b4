"""Backbones, checkpoint formats, DCNv2, FPN and priors, with torchvision's modules as oracles."""

import re

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

from replicate.errors import ReplicateError
from replicate.models.backbone import BackboneConfig, build_backbone
from replicate.models.dcn import ModulatedDeformConv2d
from replicate.models.fpn import FPN
from replicate.models.priors import AnchorConfig, anchors_for, points_for

torch.manual_seed(0)


@pytest.fixture(scope="module")
def tv_resnet18(tmp_path_factory):
    model = torchvision.models.resnet18(weights=None).eval()
    for m in model.modules():  # non-trivial BN statistics so that frozen BN is really exercised
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("w") / "r18.pth"
    torch.save(model.state_dict(), path)
    return model, path


def _oracle_features(model, x):
    getter = IntermediateLayerGetter(model, {"layer1": "c2", "layer2": "c3", "layer3": "c4", "layer4": "c5"})
    return list(getter(x).values())


def test_backbone_matches_torchvision_with_loaded_weights(tv_resnet18):
    model, path = tv_resnet18
    ours = build_backbone(BackboneConfig("resnet18", out_stages=(1, 2, 3, 4), weights=str(path))).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        for a, b in zip(ours(x), _oracle_features(model, x)):
            assert torch.allclose(a, b, rtol=1e-4, atol=1e-4)  # FrozenBN folds scale/shift: float32 rounding
    assert ours.out_channels == [64, 128, 256, 512]


def _to_detectron2(key: str) -> str:
    key = re.sub(r"^conv1\.", "stem.conv1.", key)
    key = re.sub(r"^bn1\.", "stem.conv1.norm.", key)
    m = re.match(r"^layer(\d)\.(\d+)\.(.*)$", key)
    if m:
        rest = re.sub(r"^bn(\d)\.", r"conv\1.norm.", m.group(3))
        rest = rest.replace("downsample.0.", "shortcut.").replace("downsample.1.", "shortcut.norm.")
        key = f"res{int(m.group(1)) + 1}.{m.group(2)}.{rest}"
    return key


@pytest.mark.parametrize("fmt", ["detectron2", "mmdet"])
def test_other_checkpoint_formats(tv_resnet18, tmp_path, fmt):
    model, _ = tv_resnet18
    state = {k: v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    if fmt == "detectron2":
        state = {"model": {_to_detectron2(k): v for k, v in state.items()}}
    else:
        state = {"state_dict": {**{f"backbone.{k}": v for k, v in state.items()}, "neck.x.weight": torch.zeros(1)}}
    torch.save(state, tmp_path / "w.pth")
    ours = build_backbone(BackboneConfig("resnet18", out_stages=(4,), weights=str(tmp_path / "w.pth"))).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(x)[0], _oracle_features(model, x)[-1], rtol=1e-4, atol=1e-4)


def test_bad_weights_list_keys(tv_resnet18, tmp_path):
    model, _ = tv_resnet18
    state = model.state_dict()
    del state["layer2.0.conv1.weight"]
    state["layer9.extra"] = torch.zeros(1)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(ReplicateError, match=r"missing keys: layer2\.0\.conv1\.weight.*unexpected keys: layer9\.extra"):
        build_backbone(BackboneConfig("resnet18", weights=str(tmp_path / "bad.pth")))
    with pytest.raises(ReplicateError, match="not found"):
        build_backbone(BackboneConfig("resnet18", weights=str(tmp_path / "absent.pth")))
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(ReplicateError, match="cannot read weights"):
        build_backbone(BackboneConfig("resnet18", weights=str(tmp_path / "junk.pth")))
    with pytest.raises(ReplicateError, match="unknown backbone"):
        build_backbone(BackboneConfig("vgg16"))


def test_frozen_stages_and_bn():
    bb = build_backbone(BackboneConfig("narrow", norm="bn", frozen_stages=1))
    assert not any(p.requires_grad for p in bb.body.conv1.parameters())
    assert not any(p.requires_grad for p in bb.body.layer1.parameters())
    assert all(p.requires_grad for p in bb.body.layer2.parameters())
    bb.train()
    assert not bb.body.bn1.training and not bb.body.layer1[0].bn1.training and bb.body.layer2[0].bn1.training
    none = build_backbone(BackboneConfig("narrow", norm="bn", frozen_stages=-1))
    assert all(p.requires_grad for p in none.parameters())


def test_narrow_shapes():
    bb = build_backbone(BackboneConfig("narrow", norm="bn"))
    outs = bb(torch.randn(2, 3, 128, 160))
    assert [o.shape[1:] for o in outs] == [(64, 16, 20), (128, 8, 10), (256, 4, 5)]
    assert bb.out_channels == [64, 128, 256]


def test_dcn_zero_offsets_is_half_a_conv_and_trains_offsets():
    dcn = ModulatedDeformConv2d(4, 6, 3, stride=2, padding=1)
    x = torch.randn(2, 4, 9, 11, requires_grad=True)
    out = dcn(x)
    assert torch.allclose(out, 0.5 * F.conv2d(x, dcn.weight, stride=2, padding=1) + dcn.bias[:, None, None], atol=1e-5)
    out.square().sum().backward()
    assert dcn.conv_offset.weight.grad.abs().sum() > 0 and x.grad is not None


def test_dcn_backbone_loads_plain_weights(tv_resnet18):
    _, path = tv_resnet18
    bb = build_backbone(BackboneConfig("resnet18", dcn_stages=(2, 3, 4), weights=str(path)))
    assert isinstance(bb.body.layer3[0].conv2, ModulatedDeformConv2d)
    assert [o.shape[1] for o in bb(torch.randn(1, 3, 64, 64))] == [128, 256, 512]


def _copy_fpn(tv: FeaturePyramidNetwork, ours: FPN) -> None:
    with torch.no_grad():
        for i, conv in enumerate(ours.lateral):
            conv.weight.copy_(tv.inner_blocks[i][0].weight)
            conv.bias.copy_(tv.inner_blocks[i][0].bias)
        for i, conv in enumerate(ours.output):
            conv.weight.copy_(tv.layer_blocks[i][0].weight)
            conv.bias.copy_(tv.layer_blocks[i][0].bias)
        for conv, ref in zip(ours.extra, [tv.extra_blocks.p6, tv.extra_blocks.p7]):
            conv.weight.copy_(ref.weight)
            conv.bias.copy_(ref.bias)


@pytest.mark.parametrize("extra_from", ["input", "output"])
def test_fpn_matches_torchvision(extra_from):
    chans = [32, 64, 128]
    p6_in = chans[-1] if extra_from == "input" else 16
    tv = FeaturePyramidNetwork(chans, 16, extra_blocks=LastLevelP6P7(p6_in, 16)).eval()
    ours = FPN(chans, 16, num_extra=2, extra_from=extra_from)
    _copy_fpn(tv, ours)
    feats = [torch.randn(2, c, s, s + 3) for c, s in zip(chans, (32, 16, 8))]
    expected = list(tv({str(i): f for i, f in enumerate(feats)}).values())
    got = ours(feats)
    assert len(got) == 5
    for a, b in zip(got, expected):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5)


def test_fpn_pool_extra_level():
    fpn = FPN([8, 16, 32, 64], 8, num_extra=1, extra_from="pool")
    outs = fpn([torch.randn(1, c, s, s) for c, s in zip((8, 16, 32, 64), (32, 16, 8, 4))])
    assert [o.shape[-1] for o in outs] == [32, 16, 8, 4, 2]
    assert torch.equal(outs[-1], outs[-2][..., ::2, ::2])


def test_anchors_match_torchvision():
    cfg = AnchorConfig(round_base=True)
    sizes = tuple(tuple(4 * s * 2 ** (i / 3) for i in range(3)) for s in cfg.strides)
    tv = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * 5)
    image = torch.zeros(1, 3, 256, 384)  # divisible by 128: torchvision derives strides as size // feature size
    shapes = [(256 // s, 384 // s) for s in cfg.strides]
    feats = [torch.zeros(1, 1, h, w) for h, w in shapes]
    expected = tv(ImageList(image, [(256, 384)]), feats)[0]
    got = torch.cat(anchors_for(cfg, shapes))
    assert got.shape == expected.shape and torch.allclose(got, expected)


def test_anchor_and_point_hand_values():
    a = anchors_for(AnchorConfig(strides=(8,), octave_base_scale=4, scales_per_octave=1, ratios=(1.0, 4.0)), [(1, 2)])[0]
    # base 32: ratio 1 -> 32x32; ratio 4 (h/w) -> w = 32/2 = 16, h = 64; centres (0,0) and (8,0)
    assert torch.allclose(a, torch.tensor([[-16.0, -16, 16, 16], [-8, -32, 8, 32], [-8, -16, 24, 16], [0, -32, 16, 32]]))
    p = points_for((8,), [(2, 3)])[0]
    assert torch.equal(p, torch.tensor([[4.0, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]))
