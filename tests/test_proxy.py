"""The proxy benchmark: its profile, the pretrained backbone, CPU mixed precision and the calibration
statistics, against hand-computed cases and library oracles."""

from __future__ import annotations

import dataclasses
import json
import math

import nbformat
import pandas as pd
import pytest
import torch
from torch import nn
from torchvision.models import resnet
from scipy.stats import spearmanr

from replicate import profiles
from replicate.analysis import benchmark as bm
from replicate.analysis.misalignment import ImagePredictions, object_gaps
from replicate.book.build import present
from replicate.engine.pretrain import PretrainConfig, ensure_pretrained, pretrain
from replicate.errors import ReplicateError
from replicate.experiments.sweep import load_papers
from replicate.models.backbone import BackboneConfig, build_backbone
from replicate.models.checkpoints import resolve_weights
from replicate.models.detector import build_detector
from replicate.models.zoo import model_config

pytestmark = pytest.mark.usefixtures("one_thread")


def test_every_profile_says_its_data_scale_schedule_and_narrowing():
    for name, p in profiles.PROFILES.items():
        assert p.name == name and p.num_classes > 0 and p.minutes["cpu"] > 0
        assert (p.synth is None) == (name == "coco") and (p.model is None) == (name == "coco")
    proxy = profiles.get("proxy")
    assert proxy.committed and proxy.evidence and proxy.seeds == 3 and profiles.DEFAULT == "proxy"
    assert (proxy.schedule.iters, proxy.schedule.batch_size, proxy.schedule.amp) == (4800, 8, "bf16")
    assert not profiles.get("smoke").evidence
    for name in profiles.DIAL_OFFSETS:  # the dial profiles differ from the proxy only in the key offset
        dial = profiles.get(name)
        assert dial.synth.key_offset == profiles.DIAL_OFFSETS[name]
        assert {**vars(dial.synth), "name": "proxy", "key_offset": None} == \
            {**vars(proxy.synth), "key_offset": None}
        assert dial.schedule == proxy.schedule and dial.model == proxy.model
    with pytest.raises(ReplicateError, match="unknown profile 'nope'"):
        profiles.get("nope")


def test_proxy_presets_load_the_committed_pretrained_backbones_frozen():
    for preset, narrow in (("retinanet", "narrow"), ("atss", "narrow")):
        cfg = model_config(preset, "proxy", 10)
        b = cfg.backbone
        assert (b.name, b.norm, b.frozen_stages) == (narrow, "frozen_bn", 1)
        assert resolve_weights(b.weights).with_suffix(".json").is_file(), b.weights  # the committed record
        assert (cfg.neck.out_channels, cfg.head.feat_channels, cfg.head.num_convs) == (64, 64, 2)
    deep = model_config("retinanet", "proxy", 10, {"backbone.name": "resnet101"}).backbone
    assert deep.name == "narrow_deep" and resolve_weights(deep.weights).with_suffix(".json").is_file()
    sidecar = json.loads(resolve_weights(deep.weights).with_suffix(".json").read_text())
    assert sidecar["trained_on"]["split"] == "train" and sidecar["profile"] == "proxy"
    assert sidecar["sha256"].startswith(resolve_weights(deep.weights).stem.split("-")[-1])
    # from scratch where a profile has no weights
    assert model_config("retinanet", "smoke", 10).backbone.norm == "bn"


def test_pretrain_reads_the_training_split_and_is_deterministic(smoke_root, tmp_path, monkeypatch, capsys):
    cfg = PretrainConfig(epochs=1, batch_size=32)
    first = pretrain("smoke", tmp_path / "a", cfg, data_root=smoke_root, progress=False)
    second = pretrain("smoke", tmp_path / "b", cfg, data_root=smoke_root, progress=False)
    assert first["sha256"] == second["sha256"]  # the same settings on CPU give the same weights
    assert first["weights"] == f"narrow-{first['sha256'][:8]}.pt"
    assert first["trained_on"]["annotations"] == "annotations/train.json"
    n_train_objects = sum(not a.get("iscrowd", 0) for a in json.loads(
        (smoke_root / "annotations" / "train.json").read_text())["annotations"])
    assert first["trained_on"]["objects"] + first["held_out_objects"] <= n_train_objects
    assert 0.0 <= first["held_out_accuracy"] <= 1.0
    weights = tmp_path / "a" / first["weights"]
    body = build_backbone(BackboneConfig(name="narrow", norm="frozen_bn", weights=str(weights))).body
    saved = torch.load(weights, weights_only=True)
    assert torch.equal(body.conv1.weight, saved["conv1.weight"])
    assert torch.equal(body.layer4[0].bn2.running_var, saved["layer4.0.bn2.running_var"])
    with pytest.raises(ReplicateError, match="not a narrow backbone"):
        pretrain("smoke", tmp_path, PretrainConfig(backbone="resnet50"), data_root=smoke_root)
    # a missing weights file is re-made from its record, and must hash as recorded
    weights.unlink()
    ensure_pretrained(str(weights), profile="smoke", data_root=smoke_root, progress=False)
    assert weights.is_file() and torch.equal(torch.load(weights, weights_only=True)["conv1.weight"],
                                             saved["conv1.weight"])
    # `replicate pretrain --ensure`: the same check for the files a profile's presets load
    from replicate import cli, profiles
    from replicate.profiles import ModelScale

    monkeypatch.setitem(profiles.PROFILES, "smoke", dataclasses.replace(
        profiles.get("smoke"), model=ModelScale(64, 2, weights={"narrow": str(weights)})))
    ensure = ["pretrain", "--profile", "smoke", "--ensure", "--backbone", "narrow", "--quiet",
              "--data-root", str(smoke_root)]
    assert cli.main(ensure) == 0 and capsys.readouterr().out.strip() == f"{weights}: present"
    weights.unlink()
    assert cli.main(ensure) == 0 and "re-made from its record; its SHA-256 matches" in capsys.readouterr().out
    assert weights.is_file() and len(list(weights.parent.glob("*.json"))) == 1  # no new record
    record = weights.with_suffix(".json")
    doc = json.loads(record.read_text())
    doc["provenance"]["device"] = "Another CPU"  # the record of another machine, whose weights hash otherwise
    record.write_text(json.dumps({**doc, "sha256": "0" * 64}))
    weights.unlink()
    with pytest.raises(ReplicateError, match="did not reproduce here .it was pretrained on 'Another CPU'") as err:
        ensure_pretrained(str(weights), profile="smoke", data_root=smoke_root, progress=False)
    assert f"Copy the recorded file to {weights}" in str(err.value) and not weights.exists()
    assert "names the CPU model only" in str(err.value)  # a record from before devices named their instruction set


def test_zero_init_residual_starts_every_block_as_the_identity():
    from replicate.engine.pretrain import Classifier

    torch.manual_seed(0)
    net = Classifier("narrow_deep", 10, zero_init_residual=True).eval()
    blocks = [b for b in net.backbone.body.modules() if isinstance(b, resnet.BasicBlock)]
    assert len(blocks) == 8 and all(torch.count_nonzero(b.bn2.weight) == 0 for b in blocks)
    x = torch.randn(2, 64, 8, 8)
    second = net.backbone.body.layer2[1]  # no downsample: relu(0 + x) = relu(x)
    assert second.downsample is None and torch.equal(second(x), torch.relu(x))
    plain = Classifier("narrow_deep", 10).eval()
    assert all(torch.count_nonzero(b.bn2.weight) > 0 for b in plain.modules() if isinstance(b, resnet.BasicBlock))


def test_pretrain_defaults_are_the_committed_backbones_settings():
    """`replicate pretrain`'s per-backbone default is what the profile's committed weights were made with."""
    from replicate.engine.pretrain import ZERO_INIT_RESIDUAL

    for backbone, weights in profiles.get("proxy").model.weights.items():
        config = json.loads(resolve_weights(weights).with_suffix(".json").read_text())["config"]
        assert config["backbone"] == backbone
        assert PretrainConfig(**config).zero_init_residual is ZERO_INIT_RESIDUAL[backbone]


def test_bf16_autocast_on_cpu_keeps_losses_in_float32():
    torch.manual_seed(0)
    net = build_detector(model_config("retinanet", "smoke", 10)).train()
    images = torch.randn(2, 3, 128, 160)
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 90.0, 100.0]]), "labels": torch.tensor([3]),
                "ignore_boxes": torch.zeros(0, 4)} for _ in range(2)]
    full = net(images, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = net(images)
        low = net(images, targets)
    assert all(t.dtype == torch.float32 for maps in outs.values() for t in maps)
    for name, value in full.items():
        assert low[name].dtype == torch.float32
        assert low[name].item() == pytest.approx(value.item(), rel=0.05), name


def test_group_norm_nchw_path_is_nn_group_norm():
    from replicate.models._utils import GroupNorm, conv_tower, set_group_norm_layout

    torch.manual_seed(0)
    reference = nn.GroupNorm(32, 64)
    nn.init.normal_(reference.weight)
    nn.init.normal_(reference.bias)
    ours = GroupNorm(32, 64)
    ours.load_state_dict(reference.state_dict())
    ours.nchw = True
    x = torch.randn(2, 64, 9, 11).contiguous(memory_format=torch.channels_last)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ref, y = reference(x1), ours(x2)
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    g = torch.randn_like(y)
    (y_ref * g).sum().backward()
    (y * g).sum().backward()
    torch.testing.assert_close(x2.grad, x1.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.weight.grad, reference.weight.grad, rtol=1e-4, atol=1e-4)
    plain = torch.randn(2, 64, 5, 5)  # an NCHW input takes nn.GroupNorm's own path
    torch.testing.assert_close(ours(plain), reference(plain), rtol=0, atol=0)
    tower = conv_tower(64, 64, 2, "gn")
    assert set_group_norm_layout(tower, True) == 2 and all(m.nchw for m in tower if isinstance(m, GroupNorm))
    assert set_group_norm_layout(conv_tower(64, 64, 2, None), True) == 0


def test_gn_nchw_names_only_runs_with_group_norm():
    from replicate.engine.config import run_identity
    from replicate.models.detector import weights_fields
    from replicate.models.zoo import model_config

    train = profiles.schedule_for("proxy")
    assert train.gn_nchw
    off = dataclasses.replace(train, gn_nchw=False)
    for preset, has_gn in (("retinanet", False), ("atss", True), ("mod", True), ("retinanet_conf", False)):
        model = weights_fields(model_config(preset, "proxy"))
        same = run_identity(model, train, "proxy") == run_identity(model, off, "proxy")
        assert same != has_gn, preset
        assert "gn_nchw" not in run_identity(model, off, "proxy")["train"]  # the field's old default: old names


def test_anchor_coverage_hand_computed(tmp_path):
    # one 64x64 image, read at its own size; RetinaNet's P3 anchors are 32, 40 and 50 px squares at
    # ratios 0.5/1/2 centred on the stride-8 grid (offset 0): a 32x32 box at (0,0)-(32,32) is centred on
    # (16, 16), a grid point, and equals the 32 px square anchor there (IoU 1). A 6x6 box overlaps the
    # smallest anchor with IoU 36 / 1024 < 0.5.
    ann = {"images": [{"id": 1, "width": 64, "height": 64, "file_name": "x.jpg"}],
           "annotations": [{"id": 1, "image_id": 1, "bbox": [0, 0, 32, 32], "category_id": 1, "iscrowd": 0},
                           {"id": 2, "image_id": 1, "bbox": [40, 40, 6, 6], "category_id": 1, "iscrowd": 0},
                           {"id": 3, "image_id": 1, "bbox": [0, 0, 2, 2], "category_id": 1, "iscrowd": 1}],
           "categories": [{"id": 1, "name": "a"}]}
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(ann))
    assert bm.anchor_coverage(path, (64, 64)) == pytest.approx(0.5)  # the crowd box is left out


def test_object_gaps_hand_computed():
    gt = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0],  # IoU 1.0, class score 0.3
                          [0.0, 0.0, 10.0, 6.0],  # IoU 0.6, class score 0.9: the top-scored one
                          [0.0, 0.0, 10.0, 4.0]])  # IoU 0.4: not a candidate, though scored 0.95
    scores = torch.tensor([[0.0, 0.3], [0.0, 0.9], [0.0, 0.95]])
    pred = ImagePredictions(boxes.clone(), scores, boxes, gt, torch.tensor([1]))
    gaps = object_gaps(pred)
    assert gaps["candidates"].tolist() == [2]
    assert gaps["best_iou"].tolist() == pytest.approx([1.0]) and gaps["top_iou"].tolist() == pytest.approx([0.6])
    assert gaps["gap"].tolist() == pytest.approx([0.4])


def test_spearman_matches_scipy_with_ties():
    coco = [36.5, 36.6, 36.5, 38.7, 39.4, 40.2, 41.0]
    ours = [22.0, 25.1, 21.0, 27.3, 30.2, 29.9, 31.5]
    assert bm.spearman(coco, ours) == pytest.approx(spearmanr(coco, ours).statistic)
    assert math.isnan(bm.spearman([1.0], [2.0]))


def test_distortion_hand_computed():
    frame = pd.DataFrame({"COCO": [36.5, 36.5, 39.4, 40.2], "ours": [40.0, 50.0, 46.0, float("nan")]},
                         index=["RetinaNet", "FoveaBox", "ATSS", "GFL"])
    out = bm.distortion(frame)
    assert list(out.index) == ["RetinaNet", "FoveaBox", "ATSS"]  # GFL has no runs
    assert out.loc["ATSS", "COCO lead"] == pytest.approx(2.9) and out.loc["ATSS", "our lead"] == pytest.approx(6.0)
    assert out.loc["ATSS", "amplification"] == pytest.approx(6.0 / 2.9)
    assert math.isnan(out.loc["FoveaBox", "amplification"])  # COCO's lead is 0: no ratio
    # leaving FoveaBox out leaves RetinaNet < ATSS on both: rho 1; leaving ATSS out: COCO tie vs ours 40 < 50
    assert out.loc["FoveaBox", "rho without it"] == pytest.approx(1.0)
    assert math.isnan(out.loc["ATSS", "rho without it"])  # COCO's two remaining ranks are tied
    assert bm.distortion(frame, reference="FCOS").empty


def test_schedules_compared_hand_computed():
    first = pd.DataFrame({"COCO": [36.5, 39.4], "ours": [40.0, 50.0]}, index=["RetinaNet", "ATSS"])
    now = pd.DataFrame({"COCO": [36.5, 39.4], "ours": [55.0, 58.0]}, index=["RetinaNet", "ATSS"])
    first_noise = pd.DataFrame({"std": [7.4]}, index=["RetinaNet"])
    noise = pd.DataFrame({"std": [0.5, 0.3]}, index=["RetinaNet", "ATSS"])
    out = bm.schedules_compared((first, 0.5), (now, 1.0), first_noise, noise)
    assert out.loc["ATSS", "lead first"] == pytest.approx(10.0) and out.loc["ATSS", "lead now"] == pytest.approx(3.0)
    assert out.loc["RetinaNet", "seed sd first"] == pytest.approx(7.4) and math.isnan(out.loc["ATSS", "seed sd first"])
    assert list(out.index) == ["RetinaNet", "ATSS"]  # rho is the caller's to say (bm.rho_text)
    assert bm.rho_text(0.6667) == "Spearman's rho 0.667" and bm.rho_text(math.nan) == "Spearman's rho: too few runs"


def test_val_split_spread_hand_computed():
    line = lambda row, seed, split, ap, scored=True: {"row": row, "seed": seed, "val split": split, "AP": ap,
                                                      "scored": scored}
    aps = {0: (50.0, 52.0), 1: (54.0, 55.0), 2: (52.0, 56.0)}  # seed -> AP on val splits 0 and 1
    frame = pd.DataFrame([line("ATSS", seed, split, ap) for seed, pair in aps.items() for split, ap in enumerate(pair)]
                         + [line("ATSS", 3, 0, 40.0, scored=False), line("FCOS*", 0, 0, 50.0), line("FCOS*", 0, 1, 51.0)])
    out = bm.val_split_spread(frame)
    assert list(out.index) == ["ATSS"]  # FCOS* has one run; seed 3 was not scored
    row = out.loc["ATSS"]
    assert row["runs"] == 3 and row["val splits"] == 2
    assert row["seed sd (profile's split)"] == pytest.approx(2.0)  # sd(50, 54, 52)
    assert row["seed sd (mean over splits)"] == pytest.approx(1.89, abs=0.005)  # sd(51, 54.5, 54) = sqrt(3.5833)
    assert row["split sd within a run"] == pytest.approx(1.65, abs=0.005)  # mean(1.4142, 0.7071, 2.8284)
    # residuals +-(1/6, 2/3, 5/6): sum of squares 7/3 over (3-1)(2-1) = 2 df; seed variance mean(4, 13/3) = 25/6
    assert row["residual sd"] == pytest.approx(math.sqrt(7 / 6), abs=0.005)
    assert row["val-sample share of seed variance %"] == pytest.approx(100 * (7 / 6) / (25 / 6), abs=0.005)
    two = bm.val_split_spread(frame[frame["seed"] < 2]).loc["ATSS"]  # seeds 0, 1: their sds stand, no share
    assert two["runs"] == 2 and two["seed sd (profile's split)"] == pytest.approx(math.sqrt(8), abs=0.005)  # sd(50, 54)
    assert math.isnan(two["val-sample share of seed variance %"])


def test_val_splits_summary_scores_further_splits_and_is_cached(smoke_root, tmp_path):
    import shutil

    from replicate.analysis.cache import val_split_root, val_splits_summary
    from replicate.data import synth
    from replicate.engine import SCHEDULES
    from replicate.engine.config import with_overrides
    from replicate.engine.train import train

    data = tmp_path / "data" / "smoke"
    shutil.copytree(smoke_root, data)
    cfg = model_config("retinanet", "smoke", num_classes=10)
    run = tmp_path / "run"
    train(cfg, "smoke", run, with_overrides(SCHEDULES["smoke"], iters=2, eval_at_end=False), data_root=data,
          progress=False)
    record = {"key": "abcdef012345", "seed": 0, "work_dir": str(run), "metrics": {"AP": 0.1},
              "config": {"train": {"amp": None}}, "provenance": {"commit": "x"}}
    results = tmp_path / "results"
    first = val_splits_summary(record, cfg, "smoke", results_dir=results, data_root=data, seeds=(1, 2))
    assert set(first["metrics"]) == {"1", "2"} and all(0 <= m["AP"] <= 1 for m in first["metrics"].values())
    assert (results / "analysis" / "smoke" / "val-splits-abcdef012345.json").is_file()
    split = val_split_root(data, 1)
    assert split == tmp_path / "data" / "smoke-val-seed1" and not (split / "annotations" / "train.json").exists()
    other = tmp_path / "seed1-full"  # the val-only split holds the val images of a full generation
    synth.generate("smoke", other, seed=1, progress=False)
    assert (split / "annotations" / "val.json").read_bytes() == (other / "annotations" / "val.json").read_bytes()

    shutil.rmtree(run)  # the cache alone serves the same settings; the frame marks a run with neither
    spec = load_papers()["benchmark"]["noise"]
    frame = bm.val_split_frame(spec, {"RetinaNet": [record], "ATSS": [{**record, "key": "0123456789ab"}]}, "smoke",
                               results_dir=results, data_root=data, seeds=(1, 2))
    retina = frame[frame["row"] == "RetinaNet"].set_index("val split")["AP"]
    assert retina.to_dict() == {0: 10.0, 1: 100 * first["metrics"]["1"]["AP"], 2: 100 * first["metrics"]["2"]["AP"]}
    atss = frame[frame["row"] == "ATSS"]
    assert len(atss) == 1 and not atss["scored"].any()
    with pytest.raises(ReplicateError, match="no val-splits summary in .* and no checkpoint"):
        val_splits_summary(record, cfg, "smoke", results_dir=results, data_root=data, seeds=(3,))


def test_generate_rejects_unknown_splits(tmp_path):
    from replicate.data import synth
    from replicate.errors import DataError

    with pytest.raises(DataError, match="unknown split"):
        synth.generate("smoke", tmp_path, splits=("test",), progress=False)


def test_paired_noise_hand_computed():
    spec = load_papers()["benchmark"]["noise"]
    rec = lambda seed, ap: {"key": f"k{seed}", "seed": seed, "metrics": {"AP": ap}}
    runs = {"RetinaNet": [rec(0, 0.50), rec(1, 0.54), rec(2, 0.52), rec(3, 0.40)],
            "ATSS": [rec(0, 0.56), rec(1, 0.61), rec(2, 0.57)],  # seeds 0-2 in common with RetinaNet
            "FCOS* (with improvements)": [rec(5, 0.60)]}  # no seed in common: no pair
    out = bm.paired_noise(spec, runs)
    assert list(out.index) == ["RetinaNet - ATSS"]
    row = out.loc["RetinaNet - ATSS"]
    assert row["seeds"] == 3  # RetinaNet's seed 3 has no partner
    assert row["mean difference"] == pytest.approx(-6.0)  # differences -6, -7, -5
    assert row["paired sd"] == pytest.approx(1.0)
    # sd(50, 54, 52) = 2, sd(56, 61, 57) = sqrt(7): independent sd sqrt(4 + 7)
    assert row["sd if independent"] == pytest.approx(math.sqrt(11), abs=0.005)
    # deviations (-2, 2, 0) and (-2, 3, -1): covariance 10/2 = 5 over 2 * sqrt(7)
    assert row["correlation"] == pytest.approx(5 / (2 * math.sqrt(7)), abs=0.005)
    two = bm.paired_noise(spec, {"RetinaNet": runs["RetinaNet"][:2], "ATSS": runs["ATSS"][:2]})
    assert two.loc["RetinaNet - ATSS", "seeds"] == 2 and math.isnan(two.loc["RetinaNet - ATSS", "correlation"])
    assert bm.paired_noise(spec, {}).empty


def test_schedule_leads_hand_computed():
    schedule = pd.DataFrame({"iterations": [2400, 4800, 9600, 4800, 9600, 2400],
                             "mean": [40.0, 50.0, 55.0, 56.0, 59.0, float("nan")]},
                            index=["RetinaNet, 2400 iterations", "RetinaNet", "RetinaNet, 9600 iterations", "ATSS",
                                   "ATSS, 9600 iterations", "ATSS, 2400 iterations"])
    out = bm.schedule_leads(schedule)
    assert list(out.index) == ["ATSS"] and list(out.columns) == ["lead at 4800 iterations", "lead at 9600 iterations"]
    assert out.loc["ATSS", "lead at 4800 iterations"] == pytest.approx(6.0)
    assert out.loc["ATSS", "lead at 9600 iterations"] == pytest.approx(4.0)
    assert bm.schedule_leads(schedule.iloc[3:]).empty  # no reference rows


def test_metric_means():
    spec = load_papers()["benchmark"]["ranking"]
    rec = lambda seed, ap, ap50: {"key": f"k{seed}", "seed": seed, "metrics": {m: 0.1 for m in spec.metrics} | {"AP": ap, "AP50": ap50}}
    out = bm.metric_means(spec, {"ATSS": [rec(0, 0.40, 0.60), rec(1, 0.42, 0.64)]})
    assert list(out.index) == ["ATSS"] and out.loc["ATSS", "seeds"] == 2
    assert out.loc["ATSS", "AP"] == pytest.approx(41.0) and out.loc["ATSS", "AP50"] == pytest.approx(62.0)
    assert out.loc["ATSS", "APl"] == pytest.approx(10.0)


def test_cost_verdict_hand_computed(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()
    (bench / "threads_proxy_atss.json").write_text(json.dumps({
        "benchmark": "threads", "model": "atss", "profile": "proxy",
        "1x2": {"runs": 1, "threads": 2, "seconds_per_iter": [0.15], "machine_imgs_per_s": 53.3},
        "2x1": {"runs": 2, "threads": 1, "seconds_per_iter": [0.25, 0.35], "machine_imgs_per_s": 55.0}}))
    (bench / "data_proxy.json").write_text(json.dumps({"benchmark": "data", "seconds": 30.0}))
    costs = pd.DataFrame({"model": ["atss", "atss", "retinanet"], "total min": [12.0, 14.0, 16.0],
                          "eval min": [0.1, 0.2, 0.3]})
    out = bm.cost_verdict(costs, "proxy", tmp_path)["measured"]
    runs, load = bm.evidence_load("proxy")
    assert runs >= load / 2 > 0 and load >= runs  # 2x rows count twice
    median = 14.5  # median over presets of (atss 13, retinanet 16)
    assert out["recorded: machine minutes per run"] == pytest.approx(median / 2, abs=0.01)
    # at the profile's iterations: alone 0.15 s per iteration; side by side a mean 0.30 s, two at once;
    # each + the median eval 0.2 min
    iters = profiles.schedule_for("proxy").iters
    alone, side = 0.15 * iters / 60 + 0.2, 0.30 * iters / 60 + 0.2
    assert out["idle, atss: one run alone (2 threads), wall minutes"] == pytest.approx(round(alone, 2))
    assert out["idle, atss: two runs side by side (1 thread each), machine minutes per run"] == pytest.approx(round(side / 2, 2))
    hours = [k for k in out.index if k.startswith("idle, atss rate")][0]
    assert out[hours] == pytest.approx(round(load * side / 2 / 60, 2))
    assert out["data generation, minutes"] == pytest.approx(0.5)


def test_bf16_speed_by_cpu_pairs_float32_and_bf16_steps(tmp_path):
    bench = tmp_path / "bench"
    bench.mkdir()

    def step(name, cpu, amp, cl, seconds, device="cpu", size=(192, 192)):
        (bench / f"train-step_{name}.json").write_text(json.dumps({
            "benchmark": "train-step", "model": "retinanet", "device": device, "batch_size": 8, "size": list(size),
            "amp": amp, "channels_last": cl, "threads": 1, "ours": {"median_s": seconds},
            "provenance": {"device": cpu}}))

    step("a", "CPU A (AVX2; family 23, model 49)", None, False, 2.0)
    step("a_bf16", "CPU A (AVX2; family 23, model 49)", "bf16", True, 40.0)
    step("b", "CPU B (AVX512, BF16; family 25, model 17)", None, False, 1.0)
    step("b_bf16", "CPU B (AVX512, BF16; family 25, model 17)", "bf16", False, 0.5)
    step("b_big", "CPU B (AVX512, BF16; family 25, model 17)", None, False, 4.0, size=(512, 512))  # no bf16 pair
    step("cuda_bf16", "NVIDIA H200", "bf16", True, 0.01, device="cuda")  # not a CPU
    out = bm.bf16_speed_by_cpu(tmp_path).set_index(["CPU", "load"])
    assert len(out) == 3
    a = out.loc[("CPU A (AVX2; family 23, model 49)", "batch 8 at 192x192, 1 thread(s)")]
    assert a["float32 ms"] == 2000 and a["bf16 ms"] == 40000 and a["bf16 / float32"] == 20
    assert a["bf16 levers"] == "bf16 + channels_last"
    b = out.loc[("CPU B (AVX512, BF16; family 25, model 17)", "batch 8 at 192x192, 1 thread(s)")]
    assert b["bf16 / float32"] == 0.5 and b["bf16 levers"] == "bf16"
    alone = out.loc[("CPU B (AVX512, BF16; family 25, model 17)", "batch 8 at 512x512, 1 thread(s)")]
    assert alone["bf16 levers"] == "—" and math.isnan(alone["bf16 / float32"])


def test_only_the_plumbing_profile_trains_missing_runs_by_default():
    assert profiles.trains_missing_by_default("smoke")
    assert not any(profiles.trains_missing_by_default(p) for p in ("proxy", "proxy-offset0", "synthetic", "coco"))


def test_targets_at_a_glance_hand_made():
    noise = pd.DataFrame({"seeds": [5, 1], "std": [0.9, float("nan")]}, index=["RetinaNet", "ATSS"])
    ranking = pd.DataFrame({"ours": [40.0, 45.0, float("nan")]}, index=["RetinaNet", "ATSS", "GFL"])
    margins = pd.DataFrame({"our margin": [5.0, 1.0], "our SE": [1.0, None], "seeds": [3, 1]},
                           index=["ATSS beats RetinaNet", "GFL beats RetinaNet"])
    dial = pd.DataFrame({"share gap > 0.1": [0.2, 0.35]}, index=["proxy-offset0", "proxy"])
    sizes = pd.DataFrame({"small %": [28.0], "medium %": [53.0], "large %": [12.0]}, index=["val"])
    cost = pd.DataFrame({"measured": [6.0, 2.0], "target": [5.0, float("nan")], "met": [False, None]},
                        index=["minutes per run", "img/s"])
    out = bm.targets_at_a_glance(noise, ranking, 0.65, margins, dial, sizes, cost)
    assert out.loc["noise: RetinaNet", "met"] is False and out.loc["noise: RetinaNet", "missed by"] == "0.30 AP over"
    assert out.loc["noise: ATSS", "met"] is None  # one seed: nothing to judge
    rho = out.loc["ranking: Spearman rho"]
    assert rho["met"] is False and rho["missed by"] == "0.050 short" and "2 of 3 baselines" in rho["measured"]
    assert out.loc["ranking: ATSS beats RetinaNet", "met"] is True and out.loc["ranking: ATSS beats RetinaNet", "missed by"] == ""
    assert out.loc["ranking: GFL beats RetinaNet", "met"] is None  # one seed: no spread
    assert out.loc["ranking: GFL beats RetinaNet", "measured"] == "no spread yet"
    assert out.loc["dial: misalignment fades at the lowest offset", "met"] is True
    empty = bm.targets_at_a_glance(noise, ranking, float("nan"), margins.iloc[:0], pd.DataFrame(), sizes, cost.iloc[:0])
    assert empty.loc["dial: misalignment fades at the lowest offset", "met"] is None
    assert empty.loc["ranking: Spearman rho", "measured"] == "too few runs"
    assert out.loc["sizes: each COCO bucket's share of the val objects", "missed by"] == "3.0 points short"
    assert out.loc["cost: minutes per run", "missed by"] == "1.20x the target"
    assert "cost: img/s" not in out.index  # no target
    assert not any(i.startswith("depth") for i in out.index)  # not given
    pretraining = pd.DataFrame({"held-out accuracy %": [71.8, 53.6]}, index=["narrow", "narrow_deep"])
    depth = pd.DataFrame({"our margin": [-18.0], "our SE": [4.0], "seeds": [2]}, index=["R101 helps RetinaNet"])
    deep = bm.targets_at_a_glance(noise, ranking, 0.65, margins, dial, sizes, cost, pretraining=pretraining, depth=depth)
    line = deep.loc["depth: the deeper backbone's pretraining is at least as accurate"]
    assert line["met"] is False and line["missed by"] == "18.2 points short"
    assert "53.6 % (deeper) against 71.8 %" in line["measured"]
    assert deep.loc["depth: R101 helps RetinaNet", "met"] is False
    assert deep.loc["depth: R101 helps RetinaNet", "missed by"] == "reversed"


def test_pretraining_table_reads_the_profiles_committed_records():
    table = bm.pretraining_table("proxy")
    assert list(table.index) == ["narrow", "narrow_deep"]
    assert table.loc["narrow_deep", "stands in for"] == "ResNet-101" and table.loc["narrow", "stands in for"] == "ResNet-50"
    assert bool(table.loc["narrow_deep", "zero-init residual"]) and not bool(table.loc["narrow", "zero-init residual"])
    for backbone, weights in profiles.get("proxy").model.weights.items():
        doc = json.loads(resolve_weights(weights).with_suffix(".json").read_text())
        assert table.loc[backbone, "held-out accuracy %"] == round(100 * doc["held_out_accuracy"], 1)
    assert bm.pretraining_table("smoke").empty  # trained from scratch: no pretrained backbone


def test_convergence_hand_computed():
    iters = profiles.schedule_for("proxy").iters
    schedule = pd.DataFrame({"iterations": [iters // 2, iters, 2 * iters, iters, None], "seeds": [1, 2, 1, 1, 0],
                             "std": [float("nan"), 0.5, float("nan"), float("nan"), float("nan")],
                             "mean": [40.0, 50.0, 52.0, 60.0, float("nan")]},
                            index=[f"RetinaNet, {iters // 2} iterations", "RetinaNet", f"RetinaNet, {2 * iters} iterations",
                                   "ATSS", f"ATSS, {2 * iters} iterations"])
    out = bm.convergence(schedule, "proxy").set_index(["detector", "from iterations"])
    assert len(out) == 2  # ATSS's 2x row has no runs: no pair
    half = out.loc[("RetinaNet", iters // 2)]
    assert half["gain"] == pytest.approx(10.0) and half["gain %"] == pytest.approx(25.0)
    assert not half["profile's 1x to 2x"] and math.isnan(half["COCO gain %"])
    own = out.loc[("RetinaNet", iters)]
    assert own["to iterations"] == 2 * iters and own["gain %"] == pytest.approx(4.0) and own["profile's 1x to 2x"]
    assert own["COCO gain %"] == pytest.approx(100 * 0.9 / 36.5, abs=0.01)
    noise = pd.DataFrame({"seeds": [], "std": []})
    ranking = pd.DataFrame({"ours": []})
    glance = bm.targets_at_a_glance(noise, ranking, float("nan"), pd.DataFrame(), pd.DataFrame(), pd.DataFrame(),
                                    pd.DataFrame(), bm.convergence(schedule, "proxy"))
    line = glance.loc["schedule: RetinaNet's gain from doubling the schedule"]
    assert line["met"] is True and "+2.0 AP (4.0 %)" in line["measured"] and "COCO: 2.5 %" in line["wanted"]
    schedule.loc["RetinaNet", "mean"] = 45.0  # 45 -> 52: 15.6 %
    line = bm.targets_at_a_glance(noise, ranking, float("nan"), pd.DataFrame(), pd.DataFrame(), pd.DataFrame(),
                                  pd.DataFrame(), bm.convergence(schedule, "proxy")).loc[line.name]
    assert line["met"] is False and line["missed by"] == "10.6 points over"
    fig = bm.plot_schedule(schedule, "proxy")
    assert len(fig.axes[0].containers) == 2  # one error-bar line per detector with runs
    missing = bm.convergence(schedule.iloc[:2], "proxy")
    line = bm.targets_at_a_glance(noise, ranking, float("nan"), pd.DataFrame(), pd.DataFrame(), pd.DataFrame(),
                                  pd.DataFrame(), missing).loc[line.name]
    assert line["met"] is None and line["measured"] == "2x run missing"


def test_calibration_plan():
    proxy = bm.calibration_plan("proxy")
    assert (proxy.ranking_seeds, proxy.noise_seeds) == (3, 5)
    assert proxy.dial_profiles == ("proxy", *profiles.DIAL_OFFSETS)
    smoke = bm.calibration_plan("smoke")
    assert (smoke.ranking_seeds, smoke.noise_seeds, smoke.dial_profiles) == (1, 2, ())


def test_a_page_hides_code_and_keeps_parameters_and_logs_in_a_collapsed_section(tmp_path):
    root = tmp_path / "proj"
    (root / "notebooks").mkdir(parents=True)
    source = root / "notebooks" / "t.ipynb"
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("profile = 'x'", metadata={"tags": ["parameters"]}),
                nbformat.v4.new_code_cell("profile = 'smoke'", metadata={"tags": ["injected-parameters"]}),
                nbformat.v4.new_code_cell("print(1)")]
    nb.cells[2].outputs = [nbformat.v4.new_output("stream", name="stderr", text=f"warning: {root}/results/x\n"),
                           nbformat.v4.new_output("stream", name="stdout", text="1\n")]
    nb.metadata["papermill"] = {"parameters": {"profile": "smoke", "results_dir": str(root / "results")}}
    out = tmp_path / "out.ipynb"
    nbformat.write(nb, out)
    present(out, source, root, "smoke")
    page = nbformat.read(out, as_version=4)
    assert "plumbing check" in page.cells[0].source  # the smoke banner first
    tags = [c.metadata.get("tags", []) for c in page.cells if c.cell_type == "code"]
    assert "remove-cell" in tags[0] and "remove-cell" in tags[1] and "hide-input" in tags[2]
    assert [o["name"] for o in page.cells[3].outputs] == ["stdout"]  # the log moved out of the page
    made = page.cells[-1].source
    assert made.startswith("<details><summary>How this page was made")
    assert "papermill notebooks/t.ipynb out.ipynb -p profile smoke -p results_dir ./results" in made
    assert "warning: ./results/x" in made and str(root) not in made
    present(out, source, root, "proxy")  # an evidence profile gets no banner
    assert "plumbing check" not in nbformat.read(out, as_version=4).cells[1].source


def test_backbone_draw_hand_computed():
    from replicate.experiments.spec import Row, TableSpec

    spec = TableSpec("demo", "backbone", "t", "s", ("AP",), rows=tuple(
        Row(label, preset) for label, preset in (("RetinaNet", "retinanet"), ("RetinaNet, backbone seed 1", "retinanet"),
                                                 ("ATSS", "atss"), ("ATSS, backbone seed 1", "atss"))))
    rec = lambda ap: {"metrics": {"AP": ap}}
    runs = {"RetinaNet": [rec(0.56), rec(0.58)], "RetinaNet, backbone seed 1": [rec(0.52)],
            "ATSS": [rec(0.63)], "ATSS, backbone seed 1": [rec(0.60)]}
    out = bm.backbone_draw(spec, runs)
    assert out.loc["RetinaNet", "profile's backbone"] == pytest.approx(57.0) and out.loc["RetinaNet", "seeds"] == 2
    assert out.loc["RetinaNet", "difference"] == pytest.approx(-5.0) and out.loc["ATSS", "difference"] == pytest.approx(-3.0)
    lead = out.loc["ATSS lead over RetinaNet"]  # 63 - 57 = 6 on the first, 60 - 52 = 8 on the second
    assert lead["profile's backbone"] == pytest.approx(6.0) and lead["backbone seed 1"] == pytest.approx(8.0)
    assert lead["difference"] == pytest.approx(2.0)
    assert math.isnan(bm.backbone_draw(spec, {"ATSS": [rec(0.6)]}).loc["ATSS", "backbone seed 1"])
