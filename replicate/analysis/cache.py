"""Analyses of trained runs, summarised and cached under ``<results_dir>/analysis/<profile>/`` so that the
book builds from committed summaries without the runs' checkpoints.

Each summary lives at :func:`summary_path` (``<kind>-<run key>.json``) with the settings it was computed
with; :func:`cached_summary` returns it when the settings match, and :func:`trained_run` loads the run's
final checkpoint (with a clear error when it is gone) to compute it otherwise. Kinds: ``misalignment``
(below), ``gaps`` (:func:`gap_summary`, the calibration dial), ``val-splits`` (:func:`val_splits_summary`,
where the seed noise comes from), ``mod-maps`` (:mod:`replicate.analysis.mod_maps`) and ``align-rois``
(:mod:`replicate.analysis.alignment_rois`); :func:`cached_or_trained` is the step they share.

:func:`dense_predictions` sends val images through an anchor-based detector (RetinaNet and its
variants: a head with ``anchors`` and a box ``coder``) and returns the dense per-anchor predictions in
the resized image's frame, with the ground truth in the same frame. :func:`misalignment_summary` is what
the book's notebook calls: the count table (RetinaNet-Conf Table 1) over the first ``images`` val images
and the candidate tables of the first ``scatter_images`` (its Figure 1), read from
``<results_dir>/analysis/<profile>/misalignment-<run key>.json`` when present, else computed from the
run's final checkpoint and written there (atomically), so that a committed summary builds the book
without the checkpoint.
"""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Sequence

import pandas as pd
import torch

from ..data import synth
from ..data.batching import Collate
from ..data.profiles import build_dataset, data_config, ensure_data
from ..engine.evaluate import evaluate_tests
from ..engine.rescore import load_trained
from ..errors import ReplicateError, SummaryUnavailable
from ..io import atomic_write_json, read_json
from ..models._utils import flatten_levels
from ..models.box_coders import DeltaXYWHCoder
from ..models.detector import DetectorConfig
from ..provenance import provenance
from .misalignment import ImagePredictions, candidates, candidates_frame, count_table, object_gaps

ANALYSIS = "analysis"


@torch.no_grad()
def dense_predictions(model: torch.nn.Module, dataset, indices: Sequence[int],
                      device: str | torch.device = "cpu", boxes: str = "final") -> list[ImagePredictions]:
    """Per image of ``dataset[indices]``: priors, class probabilities and decoded boxes of every prior, from a
    head that decodes its dense outputs itself (``head.decoded``: the GFL family and SALT-Net, whose
    ``boxes`` picks a stage) or from an anchor head with box deltas (the RetinaNet family; a cascade's anchors
    are its refined ones, one set per image: AlignDet's ADM)."""
    head = model.head
    decodes = hasattr(head, "decoded")
    if not decodes and (head.prior_kind != "anchor" or not isinstance(getattr(head, "coder", None), DeltaXYWHCoder)):
        raise ReplicateError(f"dense predictions need an anchor-based head with box deltas (RetinaNet family) or "
                             f"one that decodes its outputs (GFL family), got {type(head).__name__}")
    model = model.eval().to(device)
    batch = Collate()([dataset[i] for i in indices])
    outs = model(batch.images.to(device))
    shared = head.priors(outs).boxes
    if decodes:
        probs, decoded = head.decoded(outs, boxes)
    else:
        probs, reg = flatten_levels(outs["cls"], head.num_classes).sigmoid(), flatten_levels(outs["reg"], 4)
        refined = torch.cat(outs["refined"], dim=1) if "refined" in outs else None
    preds = []
    for i, target in enumerate(batch.targets):
        if decodes:
            anchors, image_boxes = shared, decoded[i]
        else:
            anchors = shared if refined is None else refined[i]
            image_boxes = head.coder.decode(anchors, reg[i])
        preds.append(ImagePredictions(anchors.cpu(), probs[i].cpu(), image_boxes.cpu(), target["boxes"].float().cpu(),
                                      target["labels"].cpu(), image_id=int(target["image_id"])))
    return preds


def summary_path(results_dir: str | Path, profile: str, kind: str, key: str) -> Path:
    """Where the ``kind`` summary of run ``key`` is cached."""
    return Path(results_dir) / ANALYSIS / profile / f"{kind}-{key}.json"


def cached_summary(path: Path, settings: dict[str, Any], what: str) -> dict[str, Any] | None:
    """The summary cached at ``path`` if it was computed with ``settings``, else ``None``."""
    if not path.is_file():
        return None
    cached = read_json(path, what=what)
    return cached if isinstance(cached, dict) and cached.get("settings") == settings else None


def trained_run(record: dict[str, Any], model_cfg: DetectorConfig, profile: str, *, cache: Path, what: str,
                data_root: str | Path | None = None, scale: str | None = None):
    """``(model, val_set)``: the run's final checkpoint and the profile's val split at the run's scale, for
    computing a summary that ``cache`` does not hold yet; a clear error when the checkpoint is gone."""
    run_dir = Path(record["work_dir"])
    if not (run_dir / "checkpoint.pt").is_file():
        raise SummaryUnavailable(f"no {what} in {cache} and no checkpoint in {run_dir} to compute it from; run "
                                 f"the table's runs again to produce it")
    data = data_config(profile, data_root)
    if scale is not None:
        data = data.with_scale(scale)
    ensure_data(data, progress=False)
    return load_trained(run_dir, model_cfg), build_dataset(data, "val", train=False)


def cached_or_trained(record: dict[str, Any], model_cfg: DetectorConfig, profile: str, kind: str,
                      settings: dict[str, Any], what: str, *, results_dir: str | Path = "results",
                      data_root: str | Path | None = None, scale: str | None = None):
    """``(path, cached, trained)`` of a run's ``kind`` summary: the cache's path; the cached summary when it was
    computed with ``settings`` (``trained`` is then ``None``); else ``None`` and ``(model, val_set)`` from the
    run's final checkpoint (:func:`trained_run`) to compute it."""
    path = summary_path(results_dir, profile, kind, record["key"])
    cached = cached_summary(path, settings, what)
    if cached is not None:
        return path, cached, None
    return path, None, trained_run(record, model_cfg, profile, cache=path, what=what, data_root=data_root,
                                   scale=scale)


def misalignment_summary(record: dict[str, Any], model_cfg: DetectorConfig, profile: str, *,
                         results_dir: str | Path = "results", data_root: str | Path | None = None,
                         scale: str | None = None, images: int = 10, scatter_images: int = 3,
                         score_thr: float = 0.05, nms_iou: float = 0.5) -> dict[str, Any]:
    """``{"counts": DataFrame, "candidates": [DataFrame], "image_ids": [...], "key": run key}`` of a run.

    Cached per run key (see the module docstring); the cache is recomputed when its settings differ.
    """
    settings = {"images": images, "scatter_images": scatter_images, "score_thr": score_thr, "nms_iou": nms_iou}
    path, cached, trained = cached_or_trained(record, model_cfg, profile, "misalignment", settings,
                                              "misalignment summary", results_dir=results_dir,
                                              data_root=data_root, scale=scale)
    if cached is not None:
        return _from_json(cached)
    net, val_set = trained
    n = min(images, len(val_set))
    preds = [p for start in range(0, n, 2)
             for p in dense_predictions(net, val_set, range(start, min(start + 2, n)))]
    counts = count_table(preds, score_thr=score_thr, nms_iou=nms_iou)
    frames = [candidates(p, score_thr, nms_iou) for p in preds[:scatter_images]]
    document = {
        "key": record["key"],
        "settings": settings,
        "image_ids": [p.image_id for p in preds],
        "counts": {"index": [list(i) for i in counts.index], "columns": list(counts.columns),
                   "data": counts.to_numpy().tolist()},
        "candidates": [f.to_dict(orient="list") for f in frames],
        "provenance": record.get("provenance", {}),
    }
    atomic_write_json(path, document)
    return _from_json(document)


def gap_summary(record: dict[str, Any], model_cfg: DetectorConfig, profile: str, *,
                results_dir: str | Path = "results", data_root: str | Path | None = None,
                scale: str | None = None, images: int = 100, pos_iou: float = 0.5) -> dict[str, Any]:
    """``{"key", "objects", "mean_gap", "share_gap_over_0.1", "mean_best_iou"}`` of a run's first ``images``
    validation images (:func:`~.misalignment.object_gaps`); cached per run key like the misalignment summary."""
    settings = {"images": images, "pos_iou": pos_iou}
    path, cached, trained = cached_or_trained(record, model_cfg, profile, "gaps", settings, "localization-gap summary",
                                              results_dir=results_dir, data_root=data_root, scale=scale)
    if cached is not None:
        return cached
    net, val_set = trained
    n = min(images, len(val_set))
    frames = [object_gaps(p, pos_iou) for start in range(0, n, 2)
              for p in dense_predictions(net, val_set, range(start, min(start + 2, n)))]
    gaps = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["gap", "best_iou"])
    document = {
        "key": record["key"], "settings": settings, "objects": int(len(gaps)),
        "mean_gap": float(gaps["gap"].mean()) if len(gaps) else None,
        "share_gap_over_0.1": float((gaps["gap"] > 0.1).mean()) if len(gaps) else None,
        "mean_best_iou": float(gaps["best_iou"].mean()) if len(gaps) else None,
        "provenance": record.get("provenance", {}),
    }
    atomic_write_json(path, document)
    return document


VAL_SPLIT_SEEDS = (1, 2, 3)  # generator seeds of the further validation splits (0: the profile's own)


def _val_splits_settings(seeds: Sequence[int]) -> dict[str, Any]:
    return {"seeds": [int(s) for s in seeds]}


def val_splits_available(record: dict[str, Any], profile: str, *, results_dir: str | Path = "results",
                         seeds: Sequence[int] = VAL_SPLIT_SEEDS) -> bool:
    """Whether :func:`val_splits_summary` of ``record`` is cached for ``seeds`` or its final checkpoint is there
    to compute it."""
    path = summary_path(results_dir, profile, "val-splits", record["key"])
    return (cached_summary(path, _val_splits_settings(seeds), "val-splits summary") is not None
            or (Path(record["work_dir"]) / "checkpoint.pt").is_file())


def val_split_root(root: str | Path, seed: int) -> Path:
    """Where the further validation split of generator seed ``seed`` lives: beside the profile's folder."""
    root = Path(root)
    return root.parent / f"{root.name}-val-seed{seed}"


def val_splits_summary(record: dict[str, Any], model_cfg: DetectorConfig, profile: str, *,
                       results_dir: str | Path = "results", data_root: str | Path | None = None,
                       scale: str | None = None, seeds: Sequence[int] = VAL_SPLIT_SEEDS) -> dict[str, Any]:
    """``{"key", "settings", "metrics": {seed: COCO metrics}, ...}``: a finished run's final checkpoint scored on
    further validation splits of its generated profile, one per generator seed in ``seeds``.

    The splits come from the profile's own distribution with other seeds (validation images only, written
    once by :func:`~replicate.data.synth.generate` to :func:`val_split_root`); training and pretraining read
    seed 0's training split only. Scored as at the end of the run's training (same mixed precision).
    Cached per run key like the other summaries."""
    settings = _val_splits_settings(seeds)
    path = summary_path(results_dir, profile, "val-splits", record["key"])
    what = "val-splits summary"
    cached = cached_summary(path, settings, what)
    if cached is not None:
        return cached
    base = data_config(profile, data_root)
    if not base.generated:
        raise ReplicateError(f"{profile}: further validation splits need a generated profile (COCO has one val split)")
    net, _ = trained_run(record, model_cfg, profile, cache=path, what=what, data_root=data_root, scale=scale)
    amp = ((record.get("config") or {}).get("train") or {}).get("amp")
    metrics = {}
    for seed in settings["seeds"]:
        root = val_split_root(base.root, seed)
        synth.generate(profile, root, seed=seed, splits=("val",), progress=False)
        data = replace(base, root=root)
        val_set = build_dataset(data.with_scale(scale) if scale else data, "val", train=False)
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
            # degenerate boxes are dropped from a results file as at the end of every run; said there already
            warnings.filterwarnings("ignore", message=r".*dropped \d+ of \d+ detections with non-positive")
            scored, _ = evaluate_tests(net, val_set, {"detections": None}, torch.device("cpu"), tmp, amp=amp)
        metrics[str(seed)] = scored["detections"]["metrics"]
    document = {"key": record["key"], "settings": settings, "metrics": metrics,
                "provenance": record.get("provenance", {}),
                "computed_with": provenance({"summary": "val-splits", "key": record["key"], **settings}, device="cpu")}
    atomic_write_json(path, document)
    return document


def _from_json(document: dict[str, Any]) -> dict[str, Any]:
    c = document["counts"]
    counts = pd.DataFrame(c["data"], index=pd.MultiIndex.from_tuples([tuple(i) for i in c["index"]],
                                                                     names=["stage", "condition"]),
                          columns=c["columns"], dtype="int64")
    frames = [candidates_frame(f) for f in document["candidates"]]
    return {"counts": counts, "candidates": frames, "image_ids": document["image_ids"], "key": document["key"]}


def row_summary(summary: Callable[..., dict[str, Any]], spec, label: str, profile: str,
                records: Sequence[dict[str, Any]], *, results_dir: str | Path = "results",
                data_root: str | Path | None = None, **options: Any) -> dict[str, Any] | None:
    """``summary(record, model_cfg, profile, ...)`` of the first run (seed 0) of table row ``label``, with
    the row's model config and training scale; ``None`` without runs."""
    from ..experiments.runs import profile_num_classes
    from ..experiments.spec import run_config

    if not records:
        return None
    model, train = run_config(spec, spec.row(label), profile, profile_num_classes(profile))
    return summary(records[0], model, profile, results_dir=results_dir, data_root=data_root, scale=train.scale,
                   **options)


def row_summaries(summary: Callable[..., dict[str, Any]], spec, profile: str, runs: dict[str, Sequence[dict[str, Any]]],
                  labels: Sequence[str] | None = None, **options: Any) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """:func:`row_summary` of every row of ``spec`` (or of the rows ``labels``) that has runs in ``runs`` (label ->
    records), and, for each row without a summary, why: no trained run in the store, or a run whose summary is
    not cached and whose checkpoint is not on this machine (:class:`~replicate.errors.SummaryUnavailable`: a
    record made elsewhere). A figure notebook prints the reasons and draws what it has."""
    summaries, unavailable = {}, {}
    for label in labels if labels is not None else [row.label for row in spec.rows]:
        records = runs.get(label, [])
        if not records:
            unavailable[label] = "no trained run in the store"
            continue
        try:
            summaries[label] = row_summary(summary, spec, label, profile, records, **options)
        except SummaryUnavailable as exc:
            unavailable[label] = str(exc)
    return summaries, unavailable
