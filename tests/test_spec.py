"""Experiment specs: validation names the table and the problem; overrides resolve to typed configs."""

import pytest

from replicate.experiments.spec import Claim, Row, SpecError, TableSpec, run_config, validate


def _spec(rows=None, claims=(), metrics=("AP", "AP50"), seeds=None):
    rows = rows if rows is not None else (Row("FCOS*", "fcos", paper={"AP": 38.6, "AP50": 57.4}),
                    Row("+GIoU quality", "fcos_giou", {"head.center_radius": 2.0}, {"iters": 7}, paper={"AP": 39.2}))
    return TableSpec("demo", "table1", "Demo", "Demo paper, Table 1", metrics, tuple(rows), tuple(claims), seeds=seeds)


def test_valid_spec_and_run_config():
    spec = _spec(claims=(Claim("quality helps", "+GIoU quality", "FCOS*", "AP", 0.6),))
    validate(spec)
    model, train = run_config(spec, spec.row("+GIoU quality"), "smoke", num_classes=10)
    assert model.name == "fcos_giou" and model.head.center_radius == 2.0 and model.num_classes == 10
    assert train.iters == 7 and train.batch_size == 4  # the smoke schedule with the row's change
    assert spec.key == "demo:table1"


@pytest.mark.parametrize("spec, message", [
    (_spec(rows=()), "at least one row"),
    (_spec(metrics=("AP", "mAP")), "unknown metrics \\['mAP'\\]"),
    (_spec(rows=(Row("a", "fcos"), Row("a", "atss"))), "duplicate row labels \\['a'\\]"),
    (_spec(rows=(Row("a", "yolo"),)), "row 'a': unknown model 'yolo'"),
    (_spec(seeds=0), "seeds must be at least 1 \\(got 0\\)"),
    (_spec(rows=(Row("a", "fcos", paper={"APs": 20.0}),)), "metrics \\['APs'\\] not in the table"),
    (_spec(rows=(Row("a", "fcos", paper={"AP": "38.6"}),)), "must be numbers"),
    (_spec(claims=(Claim("x", "FCOS*", "nope"),)), "unknown row 'nope'"),
    (_spec(claims=(Claim("x", "FCOS*", "+GIoU quality", "APl"),)), "metric 'APl'"),
    (_spec(rows=(Row("a", "fcos", profile_train_overrides={"cooc": {"iters": 2}}),)),
     "row 'a': profile_train_overrides for unknown profiles \\['cooc'\\]"),
])
def test_malformed_specs_fail_loudly(spec, message):
    with pytest.raises(SpecError, match=f"demo:table1.*{message}"):
        validate(spec)


def test_bad_overrides_name_the_row_and_field():
    spec = _spec(rows=(Row("a", "fcos", {"head.radius": 2.0}),))
    with pytest.raises(SpecError, match="row 'a'.*override 'head.radius'.*no field 'radius'"):
        run_config(spec, spec.rows[0], "smoke")
    spec = _spec(rows=(Row("a", "fcos", train_overrides={"epochs": 2}),))
    with pytest.raises(SpecError, match="row 'a'.*unknown training config fields \\['epochs'\\]"):
        run_config(spec, spec.rows[0], "smoke")


def test_list_values_become_tuples():
    from replicate.models.zoo import apply_overrides, model_config

    cfg = apply_overrides(model_config("fcos"), {"head.tower_dcn": [0], "head.strides": [8, 16, 32, 64, 128]})
    assert cfg.head.tower_dcn == (0,) and isinstance(cfg.head.strides, tuple)


def test_row_schedule_is_validated_and_lengthens_the_profile_schedule():
    from replicate.engine.config import lengthened
    from replicate.profiles import schedule_for

    with pytest.raises(SpecError, match="unknown schedule '3x'"):
        validate(_spec(rows=(Row("a", "fcos", schedule="3x"),)))
    two = lengthened(schedule_for("synthetic"), "2x")
    assert (two.iters, two.steps, two.warmup_iters) == (6000, (4000, 5500), 500)
    assert lengthened(schedule_for("smoke"), "1x") == schedule_for("smoke")
    coco = lengthened(schedule_for("coco"), "1.5x")  # RetinaNet's test-dev schedule: 90k -> 135k, steps scaled
    assert (coco.iters, coco.steps) == (135_000, (90_000, 120_000)) and isinstance(coco.iters, int)
    assert lengthened(schedule_for("coco"), "2x").steps == (120_000, 165_000)


def test_row_profile_overrides_apply_on_their_profile_only():
    spec = TableSpec("demo", "table1", "Demo", "Demo", ("AP",),
                     (Row("a", "fcos", train_overrides={"iters": 9},
                          profile_train_overrides={"coco": {"scale": "1024x608", "iters": 5}}),),
                     profile_train_overrides={"coco": {"scale": "1000x600"}})
    validate(spec)
    _, coco = run_config(spec, spec.rows[0], "coco")
    _, smoke = run_config(spec, spec.rows[0], "smoke")
    assert (coco.scale, coco.iters) == ("1024x608", 9)  # the row's profile change beats the table's; iters: the row's
    assert (smoke.scale, smoke.iters) == (None, 9)


def test_every_committed_record_is_a_run_some_table_asks_for():
    """A record the tables no longer ask for (its row's config changed since) is never read: the book would
    show nothing of it and a reader would find a number without a table. Stale records are removed (git
    keeps them); the tables' requests at up to 5 seeds (the calibration's noise table) name every key. The
    analysis caches named for a run (``<kind>-<key>.json``) go with it."""
    import re
    from pathlib import Path

    from replicate.experiments.runs import requests_for
    from replicate.experiments.sweep import load_papers

    results = Path(__file__).resolve().parents[1] / "results"
    specs = [spec for tables in load_papers().values() for spec in tables.values()]
    for folder in sorted(p for p in results.iterdir() if p.is_dir() and p.name.startswith("proxy")):
        asked = {r.key for spec in specs for r in requests_for(spec, folder.name, 5)}
        orphans = sorted(p.name for p in folder.glob("*.json") if p.stem not in asked)
        assert not orphans, f"{folder}: records no table asks for: {orphans}"
        caches = (results / "analysis" / folder.name).glob("*.json")
        keys = {m.group(1): p.name for p in caches if (m := re.search(r"-([0-9a-f]{12})\.json$", p.name))}
        stale = sorted(name for key, name in keys.items() if not (folder / f"{key}.json").is_file())
        assert not stale, f"{results / 'analysis' / folder.name}: caches of runs without a record: {stale}"
