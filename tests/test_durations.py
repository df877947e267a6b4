"""Expected run durations (replicate.experiments.durations): hand-computed medians over made-up records."""

import dataclasses
import json

import pytest

from replicate.experiments.durations import START_UP_S, expected_seconds, record_seconds, relative_costs
from replicate.experiments.runs import RunRequest, iterations_done
from replicate.models.zoo import model_config
from replicate.profiles import schedule_for
from replicate.provenance import jsonable


def record(model, backbone, iters, train_s, infer_s=10.0, profile="smoke"):
    return {"profile": profile, "model": model, "timings": {"train_seconds": train_s, "inference_seconds": infer_s},
            "config": {"model": {"backbone": backbone}, "train": {"iters": iters}}}


@pytest.fixture
def request_(tmp_path):
    model, train = model_config("atss", "smoke", 10), schedule_for("smoke")
    return RunRequest("demo:table1", "ATSS", "smoke", 0, model, train, work_dir=str(tmp_path / "work"))


def test_the_median_of_the_most_alike_records_plus_start_up(request_):
    iters, backbone = request_.train.iters, jsonable(request_.model.backbone)
    deeper = {**backbone, "name": "deeper"}
    records = [record("atss", backbone, iters, 100), record("atss", backbone, iters, 200),
               record("atss", backbone, iters, 900), record("atss", deeper, iters, 5000),
               record("retinanet", backbone, iters, 40), record("atss", backbone, 2 * iters, 7000),
               record("atss", backbone, iters, 1, profile="proxy")]
    # the same detector, backbone and schedule on the same profile: median(110, 210, 910)
    assert expected_seconds(request_, records) == START_UP_S + 210
    # no such record: any detector with the same backbone and schedule (a deeper backbone's cost, whatever the head)
    deep_request = dataclasses.replace(request_, model=dataclasses.replace(
        request_.model, backbone=dataclasses.replace(request_.model.backbone, name="narrow_deep")))
    deep = jsonable(deep_request.model.backbone)
    assert expected_seconds(deep_request, [record("fcos", deep, iters, 300), record("fcos", deep, iters, 500),
                                           record("atss", backbone, iters, 100)]) == START_UP_S + 410
    # then the same detector on any backbone, then any detector on the same schedule
    assert expected_seconds(deep_request, [record("atss", backbone, iters, 100)]) == START_UP_S + 110
    assert expected_seconds(request_, [record("fcos", deeper, iters, 30)]) == START_UP_S + 40
    # another schedule or profile only, or no timings: unknown
    assert expected_seconds(request_, [records[5], records[6]]) is None
    assert expected_seconds(request_, [{**records[0], "timings": {}}]) is None
    assert record_seconds(records[0]) == 110


def test_the_same_run_at_other_seeds_comes_before_other_variants_of_the_detector(request_):
    iters, backbone = request_.train.iters, jsonable(request_.model.backbone)
    variants = [record("atss", backbone, iters, 100), record("atss", backbone, iters, 200)]
    # records as the store reads them back: JSON, the seed the only difference
    other_seeds = [json.loads(json.dumps({**record("atss", backbone, iters, train_s), "config": {
        "model": jsonable(request_.model), "train": {**jsonable(request_.train), "seed": seed}}}))
        for seed, train_s in ((1, 700), (2, 900))]
    assert expected_seconds(request_, variants + other_seeds) == START_UP_S + 810  # median(710, 910)
    assert expected_seconds(request_, variants) == START_UP_S + 160
    # another schedule setting (the learning rate here) is another run: a variant
    other_lr = json.loads(json.dumps(other_seeds[0]))
    other_lr["config"]["train"]["lr"] = 2 * request_.train.lr
    assert expected_seconds(request_, variants + [other_lr]) == START_UP_S + 210  # median(110, 210, 710)


def test_a_resumed_run_needs_the_share_of_iterations_it_has_left(request_):
    iters = request_.train.iters
    records = [record("atss", jsonable(request_.model.backbone), iters, 390)]
    assert iterations_done(request_.run_dir) == 0
    request_.run_dir.mkdir(parents=True)
    (request_.run_dir / "log.jsonl").write_text("".join(json.dumps({"iter": i}) + "\n" for i in (1, iters // 2)))
    assert iterations_done(request_.run_dir) == iters // 2
    left = (iters - iters // 2) / iters
    assert expected_seconds(request_, records) == pytest.approx(START_UP_S + left * 400)
    (request_.run_dir / "log.jsonl").write_text('{"iter": 1}\n{"it')  # cut mid-line: counted as not started
    assert iterations_done(request_.run_dir) == 0


def bench(folder, name, model, speed, profile="smoke", **extra):
    record = {"benchmark": "threads", "model": model, "profile": profile, "2x1": {"machine_imgs_per_s": speed}, **extra}
    (folder / f"{name}.json").write_text(json.dumps(record))


def test_a_detector_without_records_costs_retinanets_times_its_benchmarked_ratio(request_, tmp_path):
    folder = tmp_path / "bench"
    folder.mkdir()
    bench(folder, "threads_smoke_retinanet", "retinanet", 26.0)
    bench(folder, "threads_smoke_atss", "atss", 13.0)
    bench(folder, "threads_smoke_atss_set", "atss", 1.0, overrides={"head.x": 1})  # a changed preset: ignored
    bench(folder, "threads_proxy_atss", "atss", 52.0, profile="proxy")  # the profile with fewer presets: ignored
    (folder / "threads_broken.json").write_text('{"model": "fcos"}')  # not a threads record: ignored
    (folder / "aps_cpu.json").write_text('{"benchmark": "aps"}')
    costs = relative_costs(folder)
    assert costs == {"retinanet": 1.0, "atss": 2.0}
    iters, backbone = request_.train.iters, jsonable(request_.model.backbone)
    records = [record("retinanet", backbone, iters, 100), record("fcos", backbone, iters, 20)]
    assert expected_seconds(request_, records, costs) == START_UP_S + 2.0 * 110  # ATSS: twice RetinaNet's
    assert expected_seconds(request_, records) == START_UP_S + 70  # without costs: any detector, median(110, 30)
    # its own records, once there, come first
    assert expected_seconds(request_, records + [record("atss", backbone, iters, 500)], costs) == START_UP_S + 510
    bench(folder, "threads_smoke_retinanet", "atss", 26.0)  # no RetinaNet record left: no ratios
    assert relative_costs(folder) == {}
