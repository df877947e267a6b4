"""Is the benchmark a fair proxy for COCO? The calibration statistics of the book's calibration page.

Each function measures one target of the benchmark (the targets come from outside the five papers):

* :func:`anchor_coverage`: the share of objects whose best RetinaNet anchor overlaps them with IoU >= 0.5
  at the scale the detectors see (a benchmark whose objects fall between the anchors handicaps the anchor
  based detectors against the anchor-free ones, a distortion COCO does not have to that degree);
* :func:`size_shares`: COCO's small / medium / large buckets (area 32^2, 96^2), each of which must hold
  at least 15 % of the validation objects for the size columns to mean something;
* :func:`seed_noise`: the spread of AP over seeds per row (target: at most 0.6 AP points);
  :func:`val_split_spread` says how much of it the validation sample makes (the noise runs scored on
  further validation splits) and :func:`paired_noise` how much of it a comparison paired by seed keeps;
* :func:`ranking`: our mean AP of the dense baselines against their COCO AP, with Spearman's rho
  (target: at least 0.7);
* :func:`run_costs`: wall time per run from the records (target: median at most 5 minutes);
* :func:`convergence`: what each doubling of the schedule still gains (target: doubling the profile's
  schedule gains RetinaNet at most 5 % of its AP; COCO's 1x to 2x gains 2.5 %), and
  :func:`schedule_leads` whether a baseline's lead over RetinaNet holds as both train longer;
* :func:`pretraining_table`: the profile's pretrained backbones, the stand-ins for ImageNet's ResNet-50 and
  ResNet-101, with their accuracy on held-out training objects (target: the deeper one at least as
  accurate, as ResNet-101 is on ImageNet); the ``depth`` table then checks RetinaNet on the two.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torchvision.ops import box_iou

from .. import profiles
from ..data.card import split_statistics
from ..data.transforms import Scale, keep_ratio_size
from ..experiments.claims import row_stats, sample_std
from ..experiments.spec import TableSpec
from ..io import read_json
from ..models.priors import AnchorConfig, anchors_for

Record = dict[str, Any]
NOISE_TARGET = 0.6  # AP points: the largest acceptable standard deviation over seeds
RHO_TARGET = 0.7
MINUTES_TARGET = 5.0
EVIDENCE_HOURS_TARGET = 8.0  # RetinaNet-Conf + MOD at 3 seeds
SIZE_SHARE_TARGET = 15.0  # percent of the validation objects per COCO size bucket
#: COCO's own convergence, the schedule's yardstick: RetinaNet R50-FPN gains 0.9 AP from doubling its 1x
#: schedule (mmdetection's zoo, configs/retinanet: 1x 36.5, 2x 37.4), 2.5 % of its 1x AP
COCO_2X_GAIN = {"RetinaNet": (36.5, 37.4)}
CONVERGENCE_TARGET = 5.0  # percent: the largest acceptable relative gain from doubling (twice COCO's 2.5 %)
#: what each narrow backbone stands in for, and that network's ImageNet top-1 accuracy (%) with the weights
#: the papers' recipes load (torchvision's IMAGENET1K_V1: ResNet-50 76.130, ResNet-101 77.374)
STANDS_IN_FOR = {"narrow": ("ResNet-50", 76.13), "narrow_deep": ("ResNet-101", 77.37)}


def anchor_coverage(ann_file: str | Path, scale: Scale, anchors: AnchorConfig = AnchorConfig(),
                    iou: float = 0.5, size_divisor: int = 32) -> float:
    """Share of the non-crowd objects of ``ann_file`` whose best anchor (of RetinaNet's anchor grid over
    the image resized to ``scale`` and padded to ``size_divisor``) has IoU >= ``iou`` with the box."""
    data = read_json(ann_file, what="annotation file")
    boxes_by_image: dict[int, list[list[float]]] = {}
    for a in data["annotations"]:
        if not a.get("iscrowd", 0):
            boxes_by_image.setdefault(a["image_id"], []).append(a["bbox"])
    covered = total = 0
    for image in data["images"]:
        boxes = boxes_by_image.get(image["id"])
        if not boxes:
            continue
        h, w = keep_ratio_size(image["height"], image["width"], scale)
        sy, sx = h / image["height"], w / image["width"]
        ph, pw = (math.ceil(v / size_divisor) * size_divisor for v in (h, w))
        sizes = [(math.ceil(ph / s), math.ceil(pw / s)) for s in anchors.strides]
        grid = torch.cat(anchors_for(anchors, sizes))
        xywh = torch.tensor(boxes, dtype=torch.float32)
        xyxy = torch.stack([xywh[:, 0] * sx, xywh[:, 1] * sy, (xywh[:, 0] + xywh[:, 2]) * sx,
                            (xywh[:, 1] + xywh[:, 3]) * sy], dim=1)
        best = box_iou(xyxy, grid).amax(dim=1)
        covered += int((best >= iou).sum())
        total += len(best)
    return covered / total if total else float("nan")


def size_shares(ann_file: str | Path) -> dict[str, float]:
    """Percent of the non-crowd objects in COCO's small / medium / large buckets (by annotation area)."""
    row = split_statistics(ann_file)
    return {"small": row["small %"], "medium": row["medium %"], "large": row["large %"]}


def seed_noise(spec: TableSpec, records_by_row: Mapping[str, Sequence[Record]], metric: str = "AP") -> pd.DataFrame:
    """Per row: seeds, mean and standard deviation of ``metric`` (paper units), and whether the spread is
    within :data:`NOISE_TARGET`."""
    rows = []
    for row in spec.rows:
        stats = row_stats(spec, row, records_by_row.get(row.label, ()))
        if stats is None:
            rows.append({"row": row.label, "seeds": 0, "mean": math.nan, "std": math.nan, "within target": None})
            continue
        std = stats.std[metric]
        rows.append({"row": row.label, "seeds": stats.n, "mean": stats.mean[metric], "std": std,
                     "within target": None if math.isnan(std) else bool(std <= NOISE_TARGET)})
    return pd.DataFrame(rows).set_index("row")


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman's rank correlation (Pearson's on average ranks, ties shared)."""
    ra = pd.Series(list(a)).rank().to_numpy()
    rb = pd.Series(list(b)).rank().to_numpy()
    if len(ra) < 2 or ra.std() == 0 or rb.std() == 0:
        return math.nan
    return float(np.corrcoef(ra, rb)[0, 1])


def ranking(spec: TableSpec, records_by_row: Mapping[str, Sequence[Record]],
            metric: str = "AP") -> tuple[pd.DataFrame, float]:
    """Per baseline: COCO AP, our mean and standard error over seeds, both ranks; and Spearman's rho over
    the rows that have runs."""
    rows = []
    for row in spec.rows:
        stats = row_stats(spec, row, records_by_row.get(row.label, ()))
        mean = stats.mean[metric] if stats else math.nan
        se = stats.std[metric] / math.sqrt(stats.n) if stats and stats.n > 1 else math.nan
        rows.append({"row": row.label, "COCO": row.paper.get(metric, math.nan), "ours": mean, "ours SE": se,
                     "seeds": stats.n if stats else 0})
    frame = pd.DataFrame(rows).set_index("row")
    have = frame["ours"].notna()
    frame["COCO rank"] = frame["COCO"].rank(ascending=False)
    frame["our rank"] = frame["ours"].where(have).rank(ascending=False)
    rho = spearman(frame.loc[have, "COCO"], frame.loc[have, "ours"]) if have.sum() >= 2 else math.nan
    return frame, rho


def schedules_compared(first: tuple[pd.DataFrame, float], now: tuple[pd.DataFrame, float],
                       first_noise: pd.DataFrame, noise: pd.DataFrame, reference: str = "RetinaNet") -> pd.DataFrame:
    """The ranking and the seed noise at an earlier schedule beside the profile's own: per baseline the COCO
    AP, our mean AP, its lead over ``reference`` and its seed standard deviation (noise rows only) at both
    (Spearman's rho at both: the :func:`ranking` outputs' second items). ``first`` and ``now`` are
    :func:`ranking` outputs, the noise frames :func:`seed_noise` outputs."""
    (f, _), (n, _) = first, now
    out = pd.DataFrame({"COCO": n["COCO"], "AP first": f["ours"], "AP now": n["ours"]})
    for col, frame in (("lead first", f), ("lead now", n)):
        ref = frame["ours"].get(reference, math.nan)
        out[col] = frame["ours"] - ref
    out["seed sd first"] = first_noise["std"].reindex(out.index)
    out["seed sd now"] = noise["std"].reindex(out.index)
    return out.round(2)


def metric_means(spec: TableSpec, records_by_row: Mapping[str, Sequence[Record]]) -> pd.DataFrame:
    """Per row with runs: the mean over seeds of every metric of the table (paper units), to see where a
    baseline's lead comes from (AP50 against AP75: finding objects or placing boxes; the size columns)."""
    rows = {}
    for row in spec.rows:
        stats = row_stats(spec, row, records_by_row.get(row.label, ()))
        if stats:
            rows[row.label] = {**stats.mean, "seeds": stats.n}
    return pd.DataFrame.from_dict(rows, orient="index", columns=[*spec.metrics, "seeds"])


def distortion(frame: pd.DataFrame, reference: str = "RetinaNet") -> pd.DataFrame:
    """How the benchmark stretches COCO's differences, from :func:`ranking`'s frame: per baseline, its lead
    over ``reference`` on COCO and ours (AP points), their ratio (``amplification``; undefined where COCO's
    lead is within 0.05 AP of zero), and Spearman's rho over the baselines with runs when that baseline is
    left out (which one alone decides whether the ranking target is met)."""
    have = frame["ours"].notna()
    if reference not in frame.index or not have.get(reference, False):
        return pd.DataFrame(columns=["COCO lead", "our lead", "amplification", "rho without it"])
    out = pd.DataFrame(index=frame.index[have])
    out["COCO lead"] = frame.loc[have, "COCO"] - frame.loc[reference, "COCO"]
    out["our lead"] = frame.loc[have, "ours"] - frame.loc[reference, "ours"]
    out["amplification"] = (out["our lead"] / out["COCO lead"]).where(out["COCO lead"].abs() > 0.05)
    kept = frame[have]
    out["rho without it"] = [spearman(kept.drop(label)["COCO"], kept.drop(label)["ours"]) for label in out.index]
    return out


def run_costs(records: Sequence[Record]) -> pd.DataFrame:
    """Per recorded run (once, however many tables share it): model, seed, training, evaluation and total
    wall minutes, and training images/s."""
    rows, seen = [], set()
    for r in records:
        if r["key"] in seen:
            continue
        seen.add(r["key"])
        t = r.get("timings") or {}
        train_s, infer_s = t.get("train_seconds"), t.get("inference_seconds")
        if train_s is None:
            continue
        rows.append({"key": r["key"], "model": r["model"], "seed": r["seed"], "train min": train_s / 60,
                     "eval min": (infer_s or 0.0) / 60, "total min": (train_s + (infer_s or 0.0)) / 60,
                     "train img/s": t.get("train_imgs_per_s")})
    return pd.DataFrame(rows)


def median_minutes_by_model(costs: pd.DataFrame) -> float:
    """The median over models of each model's median total minutes per run (the cost target's figure)."""
    if costs.empty:
        return math.nan
    return float(statistics.median(costs.groupby("model")["total min"].median()))


# ------------------------------------------------------------------------------------ the calibration page


@dataclass(frozen=True)
class CalibrationPlan:
    """How many seeds each calibration table gets on a profile, and which profiles turn the dial."""

    profile: str
    ranking_seeds: int
    noise_seeds: int
    dial_profiles: tuple[str, ...]

    def describe(self) -> str:
        dial = ", ".join(self.dial_profiles) if self.dial_profiles else "not measured on this profile"
        return (f"{self.profile}: ranking at {self.ranking_seeds} seed(s), noise at {self.noise_seeds} seed(s); "
                f"dial profiles: {dial}")


def calibration_plan(profile: str, seeds: int = 0) -> CalibrationPlan:
    """Evidence profiles: the ranking at the profile's seeds (at least 3), the noise at 5 seeds, and the
    dial on the proxy profile and its key-offset variants; a plumbing profile (smoke): 1 and 2 seeds, no dial."""
    p = profiles.get(profile)
    ranking_seeds = seeds if seeds > 0 else p.seeds
    if not p.evidence:
        return CalibrationPlan(profile, ranking_seeds, max(2, ranking_seeds), ())
    dial = (profile, *profiles.DIAL_OFFSETS) if profile == "proxy" else ()
    return CalibrationPlan(profile, max(3, ranking_seeds), max(5, ranking_seeds), dial)


def cost_table(costs: pd.DataFrame) -> pd.DataFrame:
    """Per model: runs, median training / evaluation / total minutes and training images per second."""
    if costs.empty:
        return pd.DataFrame(columns=["runs", "train min", "eval min", "total min", "train img/s"])
    grouped = costs.groupby("model")
    out = grouped[["train min", "eval min", "total min", "train img/s"]].median().round(2)
    out.insert(0, "runs", grouped.size())
    return out


def evidence_load(profile: str, papers: Sequence[str] = ("retinanet_conf", "mod"), seeds: int = 3) -> tuple[int, float]:
    """``(runs, run equivalents)`` of the papers' reproduced rows at ``seeds`` seeds on ``profile``: each
    distinct run once, weighted by its iterations over the profile's schedule (a 2x row counts twice)."""
    from ..experiments.runs import merge_requests, requests_for
    from ..experiments.sweep import load_papers

    tables = load_papers()
    requests = merge_requests([r for paper in papers for spec in tables.get(paper, {}).values()
                               for r in requests_for(spec, profile, seeds)])
    base = profiles.schedule_for(profile).iters
    return len(requests), sum(r.train.iters / base for r in requests)


def idle_rates(profile: str, results_dir: str | Path = "results") -> dict[str, dict[str, float]]:
    """Per ``replicate bench threads`` result of ``profile`` (an idle machine), keyed by model: minutes of
    training for one run with 2 threads (``alone``) and for each of 2 runs side by side with 1 thread
    (``side_by_side``), at the profile's schedule length."""
    iters = profiles.schedule_for(profile).iters
    out = {}
    for path in sorted((Path(results_dir) / "bench").glob(f"threads_{profile}_*.json")):
        t = read_json(path, what="threads benchmark")
        out[t["model"]] = {"alone": statistics.fmean(t["1x2"]["seconds_per_iter"]) * iters / 60,
                           "side_by_side": statistics.fmean(t["2x1"]["seconds_per_iter"]) * iters / 60,
                           "machine_imgs_per_s_1x2": t["1x2"]["machine_imgs_per_s"],
                           "machine_imgs_per_s_2x1": t["2x1"]["machine_imgs_per_s"]}
    return out


def cost_verdict(costs: pd.DataFrame, profile: str, results_dir: str | Path = "results") -> pd.DataFrame:
    """The cost targets against what was measured.

    Two measurements: the recorded runs (median over presets of each preset's median wall minutes; they
    ran two side by side, on cores shared with development work, so they overstate an idle machine) and
    the idle machine of ``replicate bench threads`` (its preset's training, plus the recorded median
    evaluation). Machine minutes per run are the wall minutes of two runs side by side over 2. The
    RetinaNet-Conf + MOD evidence at 3 seeds counts each distinct run once, 2x rows twice
    (:func:`evidence_load`). By how much a target is missed is :func:`targets_at_a_glance`'s to say."""
    median = median_minutes_by_model(costs)
    eval_min = float(costs["eval min"].median()) if not costs.empty else 0.0
    runs, load = evidence_load(profile)
    bench = Path(results_dir) / "bench" / f"data_{profile}.json"
    data_s = read_json(bench, what="data benchmark")["seconds"] if bench.is_file() else math.nan
    rows = [
        ("recorded: wall minutes per run, two side by side (median over presets)", median, math.nan),
        ("recorded: machine minutes per run", median / 2, MINUTES_TARGET),
        (f"recorded: RetinaNet-Conf + MOD at 3 seeds ({runs} runs, {load:g} run equivalents), hours",
         load * median / 2 / 60, EVIDENCE_HOURS_TARGET),
    ]
    for model, rate in idle_rates(profile, results_dir).items():
        side = rate["side_by_side"] + eval_min
        rows += [
            (f"idle, {model}: one run alone (2 threads), wall minutes", rate["alone"] + eval_min, MINUTES_TARGET),
            (f"idle, {model}: two runs side by side (1 thread each), machine minutes per run", side / 2,
             MINUTES_TARGET),
            (f"idle, {model} rate: RetinaNet-Conf + MOD at 3 seeds, hours", load * side / 2 / 60, EVIDENCE_HOURS_TARGET),
            (f"idle, {model}: machine img/s, 1 run x 2 threads", rate["machine_imgs_per_s_1x2"], math.nan),
            (f"idle, {model}: machine img/s, 2 runs x 1 thread", rate["machine_imgs_per_s_2x1"], math.nan),
        ]
    rows.append(("data generation, minutes", data_s / 60, 1.0))
    frame = pd.DataFrame(rows, columns=["measure", "measured", "target"]).set_index("measure")
    frame["met"] = [None if math.isnan(t) or math.isnan(m) else bool(m <= t)
                    for m, t in zip(frame["measured"], frame["target"])]
    return frame.round(2)


def noise_table(noise: pd.DataFrame) -> pd.DataFrame:
    out = noise.copy()
    out["target"] = NOISE_TARGET
    out["over target by"] = (out["std"] - NOISE_TARGET).clip(lower=0)
    return out.round(2)


def plot_noise(spec: TableSpec, records_by_row: Mapping[str, Sequence[Record]], metric: str = "AP"):
    """AP of every seed per row, with the mean and the rows' standard deviation in the legend."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.2))
    for i, row in enumerate(spec.rows):
        values = [100 * (r["metrics"] or {}).get(metric, math.nan) for r in records_by_row.get(row.label, ())]
        if not values:
            continue
        sd = sample_std(values)
        ax.scatter([i] * len(values), values, label=f"{row.label}: sd {sd:.2f}")
        ax.hlines(statistics.fmean(values), i - 0.25, i + 0.25, color="k")
    ax.set_xticks(range(len(spec.rows)), [r.label for r in spec.rows], rotation=10)
    ax.set_ylabel(f"{metric} (%) per seed")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def paired_noise(spec: TableSpec, records_by_row: Mapping[str, Sequence[Record]], metric: str = "AP") -> pd.DataFrame:
    """How noisy a comparison paired by seed is, for every pair of rows with at least two seeds in common.

    The book's claims compare two rows seed by seed (:func:`~replicate.experiments.claims.claim_results`:
    the rows share data order and head initialisation). Per pair ``a - b``: the seeds in common, the
    standard deviation over them of the per-seed difference (``paired sd``), the one the difference would
    have if the two rows' seed effects were independent (``sqrt(sd_a^2 + sd_b^2)`` over the same seeds),
    and the correlation of the two rows' values over those seeds. A positive correlation makes a paired
    comparison less noisy than its rows are alone."""
    values = {row.label: {r.get("seed"): spec.paper_scale * float((r["metrics"] or {}).get(metric, math.nan))
                          for r in records_by_row.get(row.label, ())} for row in spec.rows}
    rows = []
    labels = [row.label for row in spec.rows]
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            seeds = sorted(set(values[a]) & set(values[b]), key=str)
            if len(seeds) < 2:
                continue
            va, vb = [values[a][k] for k in seeds], [values[b][k] for k in seeds]
            rows.append({"pair": f"{a} - {b}", "seeds": len(seeds),
                         "mean difference": statistics.fmean(x - y for x, y in zip(va, vb)),
                         "paired sd": sample_std([x - y for x, y in zip(va, vb)]),
                         "sd if independent": math.hypot(sample_std(va), sample_std(vb)),
                         "correlation": float(np.corrcoef(va, vb)[0, 1]) if len(seeds) > 2 else math.nan})
    columns = ["pair", "seeds", "mean difference", "paired sd", "sd if independent", "correlation"]
    return pd.DataFrame(rows, columns=columns).set_index("pair").round(2)


def val_split_frame(spec: TableSpec, records_by_row: Mapping[str, Sequence[Record]], profile: str, *,
                    results_dir: str | Path = "results", data_root: str | Path | None = None,
                    seeds: Sequence[int] | None = None) -> pd.DataFrame:
    """Long frame ``row, seed, val split, AP``: every run of every row on the profile's own validation split
    (split 0, its record) and on the further splits of :func:`~.cache.val_splits_summary` (``seeds``: default
    :data:`~.cache.VAL_SPLIT_SEEDS`). A run whose summary is neither cached nor computable (no checkpoint)
    has its split-0 line only, with ``scored`` False."""
    from ..experiments.runs import profile_num_classes
    from ..experiments.spec import run_config
    from .cache import VAL_SPLIT_SEEDS, val_splits_available, val_splits_summary

    seeds = VAL_SPLIT_SEEDS if seeds is None else seeds
    lines = []
    for row in spec.rows:
        records = records_by_row.get(row.label, ())
        if not records:
            continue
        model, train = run_config(spec, row, profile, profile_num_classes(profile))
        for r in records:
            scored = val_splits_available(r, profile, results_dir=results_dir, seeds=seeds)
            lines.append({"row": row.label, "seed": r["seed"], "val split": 0, "AP": 100 * r["metrics"]["AP"],
                          "scored": scored})
            if not scored:
                continue
            summary = val_splits_summary(r, model, profile, results_dir=results_dir, data_root=data_root,
                                         scale=train.scale, seeds=seeds)
            lines += [{"row": row.label, "seed": r["seed"], "val split": int(k), "AP": 100 * m["AP"], "scored": True}
                      for k, m in summary["metrics"].items()]
    return pd.DataFrame(lines, columns=["row", "seed", "val split", "AP", "scored"])


def val_split_spread(frame: pd.DataFrame) -> pd.DataFrame:
    """Per row, from :func:`val_split_frame`'s scored runs: AP = row mean + run effect + split effect + residual
    (a two-way layout, runs x splits). Columns: the seed sd on the profile's split (the noise table's), the
    seed sd of each run's mean over all splits (what a validation set as large as all splits together would
    show), the sd over splits of one run's AP (mean over runs: how much the sample moves a level), the
    residual sd (how much it moves one run against another) and the residual's share of the seed variance on
    one split. The share needs at least 3 runs: from 2, the seed variance has one degree of freedom per split
    and the ratio of two such estimates can land anywhere (above 100 % too), so it reads NaN."""
    out = []
    for label, part in frame[frame["scored"]].groupby("row", sort=False):
        table = part.pivot_table(index="seed", columns="val split", values="AP")
        table = table.dropna()
        runs, splits = table.shape
        if runs < 2 or splits < 2:
            continue
        residual = table.sub(table.mean(axis=1), axis=0).sub(table.mean(axis=0), axis=1) + table.to_numpy().mean()
        residual_var = float((residual.to_numpy() ** 2).sum()) / ((runs - 1) * (splits - 1))
        seed_var = float(table.var(axis=0, ddof=1).mean())
        out.append({"row": label, "runs": runs, "val splits": splits,
                    "seed sd (profile's split)": float(table[0].std(ddof=1)) if 0 in table else math.nan,
                    "seed sd (mean over splits)": float(table.mean(axis=1).std(ddof=1)),
                    "split sd within a run": float(table.std(axis=1, ddof=1).mean()),
                    "residual sd": math.sqrt(residual_var),
                    "val-sample share of seed variance %": (100 * residual_var / seed_var
                                                            if runs >= 3 and seed_var > 0 else math.nan)})
    columns = ["runs", "val splits", "seed sd (profile's split)", "seed sd (mean over splits)",
               "split sd within a run", "residual sd", "val-sample share of seed variance %"]
    return pd.DataFrame(out, columns=["row", *columns]).set_index("row").round(2)


def plot_val_splits(frame: pd.DataFrame):
    """AP of each run (one line per seed) on each validation split, one panel per row: parallel lines mean
    that the training run, not the validation sample, sets the order of the seeds."""
    import matplotlib.pyplot as plt

    scored = frame[frame["scored"]]
    labels = list(dict.fromkeys(scored["row"]))
    fig, axes = plt.subplots(1, max(1, len(labels)), figsize=(3.2 * max(1, len(labels)), 3.0), squeeze=False)
    for ax, label in zip(axes[0], labels):
        part = scored[scored["row"] == label]
        for seed, run in part.groupby("seed"):
            run = run.sort_values("val split")
            ax.plot(run["val split"], run["AP"], "o-", label=f"seed {seed}")
        ax.set_title(label, fontsize=9)
        ax.set_xlabel("validation split (0: the profile's)")
        ax.set_xticks(sorted(part["val split"].unique()))
    axes[0][0].set_ylabel("AP (%)")
    if labels:
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def rho_text(rho: float) -> str:
    """Spearman's rho between the two rankings, as the table's caption and the plot's title say it."""
    return f"Spearman's rho {rho:.3f}" if rho == rho else "Spearman's rho: too few runs"


def plot_ranking(frame: pd.DataFrame, rho: float):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.6, 4.0))
    have = frame["ours"].notna()
    ax.errorbar(frame.loc[have, "COCO"], frame.loc[have, "ours"], yerr=frame.loc[have, "ours SE"].fillna(0),
                fmt="o", capsize=3)
    for label, row in frame[have].iterrows():
        ax.annotate(label, (row["COCO"], row["ours"]), fontsize=7, xytext=(4, 2), textcoords="offset points")
    ax.set_xlabel("COCO box AP, R50-FPN 1x (%)")
    ax.set_ylabel("our AP, mean over seeds ± SE (%)")
    ax.set_title(rho_text(rho))
    fig.tight_layout()
    return fig


def margin_table(spec: TableSpec, records_by_row: Mapping[str, Sequence[Record]]) -> pd.DataFrame:
    """The ranking's required margins: ours ± SE over seeds and the verdict (more than 2 SE above zero)."""
    from ..experiments.claims import claim_results

    rows = [{"claim": c.text, "COCO margin": c.paper_margin, "our margin": c.ours_margin, "our SE": c.ours_se,
             "seeds": c.seeds, "verdict": c.verdict} for c in claim_results(spec, records_by_row)]
    return pd.DataFrame(rows).set_index("claim").round(2)


def dial_frame(spec: TableSpec, profile: str, runs_by_profile: Mapping[str, Mapping[str, Sequence[Record]]], *,
               results_dir: str | Path = "results", data_root: str | Path | None = None) -> pd.DataFrame:
    """Per dial profile: its key offset range, the RetinaNet run's AP and its localization gap summary."""
    from .cache import gap_summary, row_summary

    rows = []
    for name, runs in runs_by_profile.items():
        records = runs.get("RetinaNet", [])
        root = data_root if name == profile else None
        summary = row_summary(gap_summary, spec, "RetinaNet", name, records, results_dir=results_dir, data_root=root)
        offset = profiles.get(name).synth.key_offset
        rows.append({"profile": name, "key offset": f"{offset[0]:.1f}-{offset[1]:.1f}", "offset mid": sum(offset) / 2,
                     "AP": 100 * records[0]["metrics"]["AP"] if records else math.nan,
                     "objects": summary["objects"] if summary else 0,
                     "mean IoU gap": summary["mean_gap"] if summary else math.nan,
                     "share gap > 0.1": summary["share_gap_over_0.1"] if summary else math.nan,
                     "mean best IoU": summary["mean_best_iou"] if summary else math.nan})
    if not rows:
        return pd.DataFrame(columns=["profile", "key offset", "offset mid", "AP", "objects", "mean IoU gap"])
    return pd.DataFrame(rows).set_index("profile").sort_values("offset mid").round(3)


def plot_dial(dial: pd.DataFrame):
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    if len(dial):
        ax.plot(dial["offset mid"], dial["mean IoU gap"], "o-", label="mean IoU gap")
        ax.plot(dial["offset mid"], dial["share gap > 0.1"], "s--", label="share of objects with gap > 0.1")
        ax.legend(fontsize=8)
    ax.set_xlabel("key offset (middle of its range, fraction of the half-extent)")
    ax.set_ylabel("RetinaNet, first 100 val images")
    fig.tight_layout()
    return fig


def size_table(profile: str, data_root: str | Path | None = None) -> pd.DataFrame:
    """Per split: COCO size-bucket shares (target >= 15 % each) and RetinaNet's anchor coverage."""
    from ..data.profiles import data_config, ensure_data

    cfg = data_config(profile, data_root)
    ensure_data(cfg, progress=False)
    rows = []
    for split in ("train", "val"):
        ann = cfg.paths(split)[0]
        row = {"split": split, **{f"{k} %": v for k, v in size_shares(ann).items()}}
        row["anchor IoU >= 0.5 %"] = 100 * anchor_coverage(ann, cfg.test_scale)
        rows.append(row)
    out = pd.DataFrame(rows).set_index("split")
    out["each bucket >= 15 %"] = out[["small %", "medium %", "large %"]].min(axis=1) >= SIZE_SHARE_TARGET
    return out.round(1)


def precision_table(spec: TableSpec, records_by_row: Mapping[str, Sequence[Record]],
                    noise: pd.DataFrame | None = None) -> pd.DataFrame:
    """AP of the profile's row, the float32 row and the channels-last GroupNorm row, the profile's lead over
    each, and ATSS's seed spread (the yardstick)."""
    rows = []
    for row in spec.rows:
        stats = row_stats(spec, row, records_by_row.get(row.label, ()))
        rows.append({"row": row.label, "AP": stats.mean["AP"] if stats else math.nan,
                     "train min": statistics.fmean(r["timings"]["train_seconds"] / 60
                                                   for r in records_by_row[row.label]) if stats else math.nan})
    out = pd.DataFrame(rows).set_index("row")
    sd = noise.loc["ATSS", "std"] if noise is not None and "ATSS" in noise.index else math.nan
    out.loc["difference (bf16 - float32)", "AP"] = out["AP"].iloc[0] - out["AP"].iloc[1]
    if len(spec.rows) > 2:
        out.loc["difference (NCHW - channels-last GroupNorm)", "AP"] = out["AP"].iloc[0] - out["AP"].iloc[2]
    out.loc["ATSS seed sd (noise table)", "AP"] = sd
    return out.round(2)


def schedule_table(spec: TableSpec, records_by_row: Mapping[str, Sequence[Record]], metric: str = "AP") -> pd.DataFrame:
    """Per row of the schedule table: iterations, seeds, mean and standard deviation of ``metric``."""
    rows = []
    for row in spec.rows:
        records = records_by_row.get(row.label, ())
        stats = row_stats(spec, row, records)
        iters = records[0]["config"]["train"]["iters"] if records else None
        rows.append({"row": row.label, "iterations": iters, "seeds": stats.n if stats else 0,
                     "mean": stats.mean[metric] if stats else math.nan,
                     "std": stats.std[metric] if stats else math.nan})
    return pd.DataFrame(rows).set_index("row").round(2)


def convergence(schedule: pd.DataFrame, profile: str, metric_label: str = "mean") -> pd.DataFrame:
    """What each doubling of the schedule gains, per detector of :func:`schedule_table`'s frame (rows
    ``"<detector>"`` at the profile's schedule and ``"<detector>, N iterations"`` at others): one line per
    pair of rows whose iterations differ by a factor of 2, with the AP of both (means over their seeds),
    the gain, the gain as a percentage of the shorter run's AP, and whether it is the profile's own
    schedule against its 2x (the line :data:`CONVERGENCE_TARGET` judges). COCO's gain for RetinaNet
    (:data:`COCO_2X_GAIN`) stands beside the profile's line."""
    base = profiles.schedule_for(profile).iters
    frame = schedule.dropna(subset=["iterations"])
    rows = []
    for label, r in frame.iterrows():
        detector = _detector(label)
        longer = frame[(frame["iterations"] == 2 * r["iterations"]) & (frame.index.map(_detector) == detector)]
        for _, r2 in longer.iterrows():
            gain = r2[metric_label] - r[metric_label]
            coco = COCO_2X_GAIN.get(detector) if r["iterations"] == base else None
            rows.append({"detector": detector, "from iterations": int(r["iterations"]), "to iterations": int(r2["iterations"]),
                         "AP from": r[metric_label], "AP to": r2[metric_label], "gain": gain,
                         "gain %": 100 * gain / r[metric_label] if r[metric_label] else math.nan,
                         "profile's 1x to 2x": bool(r["iterations"] == base),
                         "COCO gain %": 100 * (coco[1] - coco[0]) / coco[0] if coco else math.nan})
    columns = ["detector", "from iterations", "to iterations", "AP from", "AP to", "gain", "gain %",
               "profile's 1x to 2x", "COCO gain %"]
    return pd.DataFrame(rows, columns=columns).round(2)


def schedule_leads(schedule: pd.DataFrame, reference: str = "RetinaNet") -> pd.DataFrame:
    """Each detector's lead over ``reference`` (AP points, means over seeds) at every schedule length both
    were run at, from :func:`schedule_table`'s frame: one row per detector, one column per iteration count.
    A lead that shrinks as the schedule grows is partly learning speed, not the detector's end point."""
    frame = schedule.dropna(subset=["iterations", "mean"])
    ref = {int(r["iterations"]): r["mean"] for label, r in frame.iterrows() if _detector(label) == reference}
    leads: dict[str, dict[int, float]] = {}
    for label, r in frame.iterrows():
        detector, iters = _detector(label), int(r["iterations"])
        if detector != reference and iters in ref:
            leads.setdefault(detector, {})[iters] = r["mean"] - ref[iters]
    out = pd.DataFrame.from_dict(leads, orient="index")
    out = out.reindex(columns=sorted(out.columns))
    out.columns = [f"lead at {c} iterations" for c in out.columns]
    out.index.name = f"lead over {reference}"
    return out.round(2)


BACKBONE_DRAW_SUFFIX = ", backbone seed 1"


def backbone_draw(spec: TableSpec, records_by_row: Mapping[str, Sequence[Record]], metric: str = "AP",
                  reference: str = "RetinaNet") -> pd.DataFrame:
    """Per detector of the backbone table (rows ``X`` and ``X, backbone seed 1``): the mean of ``metric``
    (paper units) on the profile's pretrained backbone and on a second pretraining of it (the same settings,
    seed 1), the seeds each, and the difference (second minus first); a last row gives the leads over
    ``reference`` on each backbone and how much the lead moves."""
    rows = []
    for row in spec.rows:
        if row.label.endswith(BACKBONE_DRAW_SUFFIX):
            continue
        first = row_stats(spec, row, records_by_row.get(row.label, ()))
        second_row = spec.row(row.label + BACKBONE_DRAW_SUFFIX)
        second = row_stats(spec, second_row, records_by_row.get(second_row.label, ()))
        a = first.mean[metric] if first else math.nan
        b = second.mean[metric] if second else math.nan
        rows.append({"detector": row.label, "profile's backbone": a, "seeds": first.n if first else 0,
                     "backbone seed 1": b, "seeds (seed 1)": second.n if second else 0, "difference": b - a})
    out = pd.DataFrame(rows).set_index("detector")
    if reference in out.index and len(out) > 1:
        for other in out.index.drop(reference):
            lead_a = out.loc[other, "profile's backbone"] - out.loc[reference, "profile's backbone"]
            lead_b = out.loc[other, "backbone seed 1"] - out.loc[reference, "backbone seed 1"]
            out.loc[f"{other} lead over {reference}"] = {"profile's backbone": lead_a, "backbone seed 1": lead_b,
                                                          "difference": lead_b - lead_a}
    return out.round(2)


def pretraining_table(profile: str) -> pd.DataFrame:
    """One line per pretrained backbone of ``profile`` (its records under ``results/pretrained/``): what it
    stands in for and that network's ImageNet top-1, its settings (epochs, ``zero_init_residual``) and its
    accuracy on its training objects and on the held-out slice of them (10-way key classification)."""
    from ..models.checkpoints import resolve_weights

    scale = profiles.get(profile).model
    rows = []
    for backbone, weights in sorted((scale.weights if scale else {}).items()):
        doc = read_json(resolve_weights(weights).with_suffix(".json"), what="pretrained-backbone record")
        stands_for, imagenet = STANDS_IN_FOR.get(backbone, ("", math.nan))
        cfg = doc["config"]
        rows.append({"backbone": backbone, "stands in for": stands_for, "its ImageNet top-1 %": imagenet,
                     "epochs": cfg["epochs"], "zero-init residual": bool(cfg.get("zero_init_residual", False)),
                     "train accuracy %": 100 * doc["train_accuracy"],
                     "held-out accuracy %": 100 * doc["held_out_accuracy"], "weights": Path(weights).name})
    columns = ["backbone", "stands in for", "its ImageNet top-1 %", "epochs", "zero-init residual",
               "train accuracy %", "held-out accuracy %", "weights"]
    return pd.DataFrame(rows, columns=columns).set_index("backbone").round(1)


def _detector(label: Any) -> str:
    """The detector of a schedule-table row label (``"RetinaNet, 1200 iterations"`` -> ``"RetinaNet"``)."""
    return str(label).split(",")[0]


def plot_schedule(schedule: pd.DataFrame, profile: str):
    """AP against training iterations (log scale) per detector of :func:`schedule_table`'s frame, with
    the standard deviation over seeds as error bars and the profile's schedule marked."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    frame = schedule.dropna(subset=["iterations", "mean"])
    detectors = dict.fromkeys(frame.index.map(_detector))
    for detector in detectors:
        rows = frame[frame.index.map(_detector) == detector].sort_values("iterations")
        ax.errorbar(rows["iterations"], rows["mean"], yerr=rows["std"].fillna(0), fmt="o-", capsize=3, label=detector)
    ax.axvline(profiles.schedule_for(profile).iters, color="grey", lw=0.8, ls=":", label="profile's schedule")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("training iterations")
    ax.set_ylabel("AP (mean over seeds)")
    if detectors:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def targets_at_a_glance(noise: pd.DataFrame, ranking_frame: pd.DataFrame, rho: float, margins: pd.DataFrame,
                        dial: pd.DataFrame, sizes: pd.DataFrame, cost: pd.DataFrame,
                        converged: pd.DataFrame | None = None, pretraining: pd.DataFrame | None = None,
                        depth: pd.DataFrame | None = None) -> pd.DataFrame:
    """One line per calibration target of the page: what was measured, the target, whether it is met and,
    where it is missed, by how much (``None`` where there is nothing to judge yet). The inputs are the
    page's own frames (:func:`seed_noise`, :func:`ranking`, :func:`margin_table`, :func:`dial_frame`,
    :func:`size_table`, :func:`cost_verdict`, :func:`convergence`, :func:`pretraining_table`, and
    :func:`margin_table` of the ``depth`` table)."""
    rows: list[tuple[str, str, str, bool | None, str]] = []

    def add(target: str, measured: str, wanted: str, met: bool | None, miss: str = "") -> None:
        rows.append((target, measured, wanted, met, "" if met or met is None else miss))

    for label, r in noise.iterrows():
        n, std = int(r["seeds"]), _number(r["std"])
        met = None if n < 2 or math.isnan(std) else bool(std <= NOISE_TARGET)
        add(f"noise: {label}", f"sd {std:.2f} AP over {n} seeds" if met is not None else f"{n} seed(s)",
            f"<= {NOISE_TARGET} over 5 seeds", met, f"{std - NOISE_TARGET:.2f} AP over")
    have = int(ranking_frame["ours"].notna().sum())
    add("ranking: Spearman rho", f"{rho:.3f} over {have} of {len(ranking_frame)} baselines" if rho == rho else "too few runs",
        f">= {RHO_TARGET}", None if rho != rho else bool(rho >= RHO_TARGET), f"{RHO_TARGET - rho:.3f} short")
    for kind, frame in (("ranking", margins), ("depth", depth if depth is not None else margins.iloc[:0])):
        for claim, r in frame.iterrows():
            margin, se = _number(r["our margin"]), _number(r["our SE"])  # None (one seed, no runs) -> NaN
            judged = not (math.isnan(margin) or math.isnan(se))
            measured = f"{margin:+.2f} ± {se:.2f} AP ({int(r['seeds'])} seeds)" if judged else "no spread yet"
            add(f"{kind}: {claim}", measured, "> 2 SE above 0", bool(margin > 2 * se) if judged else None,
                "within 2 SE" if margin > 0 else "reversed")
    if pretraining is not None and {"narrow", "narrow_deep"} <= set(pretraining.index):
        shallow, deep = (float(pretraining.loc[b, "held-out accuracy %"]) for b in ("narrow", "narrow_deep"))
        add("depth: the deeper backbone's pretraining is at least as accurate",
            f"held-out accuracy {deep:.1f} % (deeper) against {shallow:.1f} %",
            ">= the shallower one's (ImageNet: ResNet-101 ahead of ResNet-50)", bool(deep >= shallow),
            f"{shallow - deep:.1f} points short")
    if len(dial) >= 2 and "share gap > 0.1" in dial and dial["share gap > 0.1"].notna().all():
        low, default = dial.iloc[0], dial.iloc[-1]
        add("dial: misalignment fades at the lowest offset",
            f"share of objects giving away > 0.1 IoU: {100 * low['share gap > 0.1']:.1f} % at {dial.index[0]}, "
            f"{100 * default['share gap > 0.1']:.1f} % at {dial.index[-1]}",
            "smaller at the lowest offset", bool(low["share gap > 0.1"] < default["share gap > 0.1"]), "not smaller")
    else:
        add("dial: misalignment fades at the lowest offset", "dial runs missing", "smaller at the lowest offset", None)
    if "val" in sizes.index:
        smallest = float(sizes.loc["val", ["small %", "medium %", "large %"]].min())
        add("sizes: each COCO bucket's share of the val objects", f"smallest {smallest:.1f} %", f">= {SIZE_SHARE_TARGET:g} %",
            bool(smallest >= SIZE_SHARE_TARGET), f"{SIZE_SHARE_TARGET - smallest:.1f} points short")
    if converged is not None:
        own = converged[converged["profile's 1x to 2x"] & (converged["detector"] == "RetinaNet")]
        if own.empty:
            add("schedule: RetinaNet's gain from doubling the schedule", "2x run missing",
                f"<= {CONVERGENCE_TARGET:g} % of its AP", None)
        else:
            r = own.iloc[0]
            add("schedule: RetinaNet's gain from doubling the schedule",
                f"{r['gain']:+.1f} AP ({r['gain %']:.1f} %), {r['from iterations']} to {r['to iterations']} iterations",
                f"<= {CONVERGENCE_TARGET:g} % of its AP (COCO: {r['COCO gain %']:.1f} %)",
                bool(r["gain %"] <= CONVERGENCE_TARGET), f"{r['gain %'] - CONVERGENCE_TARGET:.1f} points over")
    for measure, r in cost.iterrows():
        measured, target = _number(r["measured"]), _number(r["target"])
        if not math.isnan(target):
            met = None if math.isnan(measured) else bool(measured <= target)
            add(f"cost: {measure}", f"{measured:.2f}", f"<= {target:g}", met, f"{measured / target:.2f}x the target")
    out = pd.DataFrame(rows, columns=["target", "measured", "wanted", "met", "missed by"]).set_index("target")
    return out


def _number(value: Any) -> float:
    """``value`` as a float, NaN for ``None`` / NA (a frame's missing cell)."""
    return math.nan if value is None or pd.isna(value) else float(value)
