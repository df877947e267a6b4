"""The provenance appendix: where every number of the book came from.

Per run record (:func:`provenance_frame`, shown by :func:`render_provenance`): the table rows it serves, its
AP, commit, checkout state, device, library versions, when it finished and how long it trained; per device
the records made on it and a ``replicate verify`` command to check one (:func:`devices_frame`); the
records re-trained so far and how they compared (:func:`verifications_frame`, from ``replicate verify --save``); the
``replicate bench`` results (:func:`bench_frame`) and the environment that built the book
(:func:`environment_frame`).
"""

from __future__ import annotations

import html
import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd

from ..io import read_json
from ..provenance import repo_relative
from .rendering import HtmlFragment, render_frame
from .store import Record


def nested(mapping: Mapping[str, Any] | None, *path: str) -> Any:
    """``mapping[path[0]][path[1]]...``, or ``None`` where a key is absent or a level is not a mapping."""
    for name in path:
        if not isinstance(mapping, Mapping) or name not in mapping:
            return None
        mapping = mapping[name]
    return mapping


def uses_text(pairs: Sequence[tuple[str, str]]) -> str:
    """The table rows a run serves, short: a row label shared by several tables of one paper is named once
    after them (``benchmark:noise,ranking · RetinaNet; mod:table6 · RetinaNet``); "—" for none."""
    groups: dict[tuple[str, str], list[str]] = {}
    for spec_key, row in pairs:
        paper, _, table = spec_key.partition(":")
        groups.setdefault((paper, row), []).append(table)
    return "; ".join(f"{paper}:{', '.join(tables)} · {row}" for (paper, row), tables in groups.items()) or "—"


def provenance_frame(records: Sequence[Record], uses: Mapping[str, Sequence[tuple[str, str]]] | None = None
                     ) -> pd.DataFrame:
    """One row per run record: what ran (the model, or, given ``uses`` as :func:`~.sweep.run_uses` makes it,
    the table rows that read it: :func:`uses_text`), its AP, from which code, where, when, and how many minutes it
    trained. With ``uses`` the rows follow the tables (the first row a run serves, then the seed); a
    run no table reads comes last."""
    what = ["table rows"] if uses is not None else ["model"]
    columns = ["key", *what, "profile", "seed", "AP", "commit", "dirty", "device", "torch", "finished (UTC)",
               "train min"]
    order = {key: i for i, key in enumerate(uses or {})}
    if uses is not None:
        records = sorted(records, key=lambda r: (order.get(r.get("key"), len(order)), r.get("seed") or 0))
    data = []
    for r in records:
        ap = nested(r, "metrics", "AP")
        seconds = nested(r, "timings", "train_seconds")
        data.append([r.get("key"), uses_text(uses.get(r.get("key"), ())) if uses is not None else r.get("model"),
                     r.get("profile"), r.get("seed"),
                     round(100 * ap, 1) if isinstance(ap, (int, float)) else None,
                     commit_text(r), dirty_state(r),
                     nested(r, "provenance", "device"), nested(r, "provenance", "versions", "torch"),
                     _utc_minute(nested(r, "provenance", "finished")),
                     round(seconds / 60, 1) if isinstance(seconds, (int, float)) else None])
    return pd.DataFrame(data, columns=columns)


def commit_text(record: Record) -> str | None:
    """The record's commit, short; for a run resumed from a checkpoint also the commits its earlier attempts
    trained under (``5d9473ed (earlier attempts at 5a42ab7d)``), or how many earlier attempts went unrecorded."""
    commit = nested(record, "provenance", "commit")
    if not isinstance(commit, str):
        return None
    earlier = [a.get("commit") for a in (nested(record, "provenance", "attempts") or [])[:-1]]
    earlier = [c[:8] for c in dict.fromkeys(earlier) if isinstance(c, str) and c != commit]
    text = commit[:8] + (f" (earlier attempts at {', '.join(earlier)})" if earlier else "")
    unrecorded = nested(record, "provenance", "attempts_unrecorded")
    if unrecorded:
        text += f" (resumed; {unrecorded} earlier attempt{'s' if unrecorded != 1 else ''} unrecorded)"
    return text


def dirty_state(record: Record) -> bool | None:
    """Whether any attempt of the run trained from a checkout with uncommitted changes (``None``: unrecorded)."""
    states = [a.get("dirty") for a in nested(record, "provenance", "attempts") or []]
    states.append(nested(record, "provenance", "dirty"))
    known = [s for s in states if isinstance(s, bool)]
    return any(known) if known else None


def _utc_minute(stamp: Any) -> Any:
    """An ISO time stamp as ``YYYY-MM-DD HH:MM`` in UTC (a stamp without a zone is taken as UTC); anything
    else as it is."""
    if not isinstance(stamp, str):
        return stamp
    try:
        when = datetime.fromisoformat(stamp)
    except ValueError:
        return stamp
    return (when.astimezone(timezone.utc) if when.tzinfo else when).strftime("%Y-%m-%d %H:%M")


SHARED_PROVENANCE = ("profile", "dirty", "device", "torch")


def render_provenance(frame: pd.DataFrame) -> HtmlFragment:
    """:func:`provenance_frame` as a table that fits the page: the columns of :data:`SHARED_PROVENANCE` that
    hold one value for every run are said once above the table (``dirty``: "from a clean checkout") and
    left out of it; the others stay."""
    shared = [c for c in SHARED_PROVENANCE if c in frame.columns and len(frame) and frame[c].nunique(dropna=False) == 1]
    said = []
    for column in shared:
        value = frame[column].iloc[0]
        if column == "dirty":
            said.append("checkout state unrecorded" if pd.isna(value) else
                        "from a checkout with uncommitted changes" if value else "from a clean checkout")
        else:
            said.append(f"{column} {value}")
    intro = (f"<p><small>{len(frame)} run{'s' if len(frame) != 1 else ''}; every one: "
             f"{html.escape(', '.join(said))}.</small></p>" if said else "")
    return HtmlFragment(intro + render_frame(frame.drop(columns=shared)))


def devices_frame(records: Sequence[Record], results_dir: str | Path = "results") -> pd.DataFrame:
    """Per CPU or GPU model the records were made on: how many, the first and last finished, and the
    ``replicate verify`` command of one of them (its path relative to the repository when the store is in
    it). A re-run reproduces a record exactly on the model it names (another maker's CPU runs other float
    kernels)."""
    rows: dict[str, dict[str, Any]] = {}
    for r in records:
        device = nested(r, "provenance", "device") or "unrecorded"
        finished = _utc_minute(nested(r, "provenance", "finished"))
        row = rows.setdefault(device, {"device": device, "records": 0, "first finished": None,
                                       "last finished": None, "check one": None})
        row["records"] += 1
        if isinstance(finished, str):
            row["first finished"] = min(filter(None, [row["first finished"], finished]))
            row["last finished"] = max(filter(None, [row["last finished"], finished]))
        if row["check one"] is None and r.get("key") and r.get("profile"):
            row["check one"] = f"replicate verify {repo_relative(results_dir) / r['profile'] / (r['key'] + '.json')}"
    return pd.DataFrame(list(rows.values()), columns=["device", "records", "first finished", "last finished",
                                                      "check one"])


VERIFICATION_COLUMNS = ["record", "table", "row", "seed", "recorded on", "re-trained on", "threads", "outcome",
                        "AP", "re-trained AP", "verified", "commit"]


def verifications_frame(results_dir: str | Path, profile: str) -> pd.DataFrame:
    """The records of ``profile`` re-trained by ``replicate verify --save``
    (``<results_dir>/verifications/<profile>/<key>.json``): the row and seed, the CPU the record was made on and
    the one it was re-trained on, and the outcome (every metric and loss statistic equal, or how many differ),
    with both APs in points."""
    rows = []
    for path in sorted((Path(results_dir) / "verifications" / profile).glob("*.json")):
        v = read_json(path, what="verification record")
        differ = len(v.get("differences") or {})
        outcome = (f"exact ({v.get('compared')} metrics and loss statistics equal)" if v.get("exact")
                   else f"NOT reproduced: {differ} of {v.get('compared')} differ")
        ap = [None if x is None else round(100 * x, 2) for x in (v.get("stored_AP"), v.get("reproduced_AP"))]
        rows.append([v.get("key"), v.get("table"), v.get("row"), v.get("seed"), v.get("recorded_on"), v.get("here"),
                     v.get("threads"), outcome, *ap, _utc_minute(v.get("verified")), (v.get("commit") or "")[:10]
                     + (" (uncommitted changes)" if v.get("dirty") else "")])
    return pd.DataFrame(rows, columns=VERIFICATION_COLUMNS)


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else 1e3 * seconds


def _where(bench: Mapping[str, Any]) -> str | None:
    """The device a benchmark ran on, with its thread count where it records one."""
    device, threads = nested(bench, "provenance", "device"), bench.get("threads")
    if device is None or threads is None:
        return device
    return f"{device}, {threads} thread{'s' if threads != 1 else ''}"


def bench_frame(bench_dir: str | Path) -> pd.DataFrame:
    """The ``replicate bench`` results under ``bench_dir`` (``*.json``), one row per file.

    Every benchmark times ours against a baseline on the same input (``train-step``: torchvision's
    detector; ``aps``: the released code's per-box scikit-learn loop; ``eval``: the optional
    faster-coco-eval backend against pycocotools, the reference; ``norm``: GroupNorm's NCHW path against
    PyTorch's channels-last kernel, bf16 on the largest map; ``dcn``: our deformable convolution against
    torchvision's compiled op, one row per case), in milliseconds (median); ``speed-up`` is
    baseline time over ours (above 1: ours is faster); ``device`` says the threads where the result records them. ``same result`` is the APS parity check, for ``eval`` whether every
    stat agrees to 1e-12, for ``norm`` whether the float32 outputs agree to 1e-4, for ``dcn`` to 1e-3, for ``parity`` (the
    same training run on CUDA and on CPU, no timing) :func:`replicate.bench.parity.judge`'s verdict
    (``None`` where none is made).
    """
    columns = ["file", "benchmark", "what", "load", "ours ms", "baseline", "baseline ms", "speed-up", "same result",
               "device"]
    data = []
    for path in sorted(Path(bench_dir).glob("*.json")):
        b = read_json(path, what="benchmark result")
        if b.get("benchmark") not in ("aps", "train-step", "eval", "norm", "parity", "dcn"):
            continue  # the cost benchmarks (data, threads) have no baseline: the calibration page shows them
        if b.get("benchmark") == "norm":  # the headline: bf16 on the largest map, as the proxy trains
            rows = b.get("rows") or []
            head = max((r for r in rows if r.get("dtype") == "bf16"), key=lambda r: math.prod(r["shape"]), default=None)
            if head is None:
                continue
            same = all(r["max_abs_diff"] < 1e-4 for r in rows if r.get("dtype") == "float32")
            data.append([path.name, "norm", "GroupNorm on channels-last input, NCHW path (gn_nchw)",
                         f"forward + backward, {'x'.join(map(str, head['shape']))}, bf16", head["ours_ms"],
                         "PyTorch's channels-last kernel", head["channels_last_ms"], head["speedup"], same, _where(b)])
            continue
        if b.get("benchmark") == "dcn":  # one row per case: ours in float32 against torchvision's compiled op
            for r in b.get("rows") or []:
                data.append([path.name, "dcn", f"deformable convolution, {r['case']}, our grid_sample form",
                             f"forward + backward, {'x'.join(map(str, r['in']))} -> {r['out_channels']}, float32",
                             r["ours_ms"], "torchvision.ops.deform_conv2d", r["torchvision_ms"], r["speedup"],
                             r["max_abs_diff"] < 1e-3, _where(b)])
            continue
        if b.get("benchmark") == "parity":
            load = (f"{b.get('iters')} iterations, float32: first {b.get('initial_iters')} losses within "
                    f"{b.get('initial_max_rel_diff', float('nan')):.0e}, mean loss within "
                    f"{b.get('trajectory_rel_diff', float('nan')):.0e} (relative)")
            data.append([path.name, "parity", f"{b.get('model')} training, CUDA against CPU", load, None, "CPU", None,
                         None, b.get("agree"), _where(b)])
            continue
        if b.get("benchmark") == "eval":
            load = f"{b.get('detections'):,} detections, {b.get('images'):,} images"
            ours, base = b.get("faster-coco-eval_seconds"), b.get("pycocotools_seconds")
            data.append([path.name, "eval", "COCO evaluation, faster-coco-eval backend", load, _ms(ours),
                         "pycocotools (reference)", _ms(base), base / ours if ours and base else None,
                         b.get("max_stat_difference", 1.0) < 1e-12, _where(b)])
            continue
        if b.get("benchmark") == "aps":
            what, baseline, base_key = f"APS, {b.get('score')} score", "per-GT scikit-learn (released code)", "reference"
            load = f"{b.get('images')} images x {b.get('boxes_per_image')} boxes, {b.get('num_points')} points"
        else:
            what, baseline, base_key = b.get("model"), "torchvision", "torchvision"
            size = b.get("size") or []
            load = (f"batch {b.get('batch_size')} at {'x'.join(map(str, size))}" + (f", {b['amp']}" if b.get("amp") else "")
                    + (", channels_last" if b.get("channels_last") else ""))
        ours, base = nested(b, "ours", "median_s"), nested(b, base_key, "median_s")
        data.append([path.name, b.get("benchmark"), what, load, _ms(ours), baseline, _ms(base),
                     base / ours if ours and base else None, b.get("identical"), _where(b)])
    return pd.DataFrame(data, columns=columns)


def environment_frame() -> pd.DataFrame:
    """The environment building the book: code version, library versions and device, one per row."""
    from ..provenance import code_version, device_name, versions

    info = {**code_version(), **versions(), "device": device_name()}
    return pd.DataFrame({"value": [str(v) for v in info.values()]}, index=pd.Index(list(info), name="item"))
