"""Time MOD's Aligned Points Sampler: our batched :func:`aps_select` against the released per-GT loop.

``replicate bench aps`` builds one synthetic, COCO-like assignment problem (:func:`make_problem`) and
times two implementations of the same APS selection (top-9 per level, 2 levels kept, score, GMM,
PAA-style cut; conflicts between GTs are not part of either):

* the reference (:func:`reference_aps_select`), written after the released MOD code: the (M, P) costs
  and candidate mask are copied to the host as NumPy arrays (that device-to-host copy is timed, the
  released code pays it too), then a Python loop over the M GTs selects the levels with NumPy and fits
  one scikit-learn ``GaussianMixture`` per GT;
* ours: :func:`replicate.models.aps.aps_select`, all GTs at once on the device (CUDA synchronised
  before and after each call). On CUDA its GMM replays a CUDA graph (:mod:`replicate.models.gmm`'s
  ``blocks`` engine), captured during the untimed warm-up calls, as it is once per padded GT count in
  training.

Both are given the same tensors (cost computation, candidate masks and the conversion of the selection
into targets are outside the timings). The figure reported is the median over ``iters`` calls after
``warmup`` untimed ones, with torch's thread settings left as they are (their number is recorded). The
two assignments are compared GT by GT: ``identical`` says whether they agree everywhere and
``differing_gts`` counts the GTs whose selections differ.

The default load mimics one COCO batch of 16 images at 800x1333 with 7 boxes per image (M = 112 GTs):
the P = 22,300 points of one image on P3-P7 (strides 8-128; 100x167, 50x84, 25x42, 13x21 and 7x11
locations), boxes with side lengths log-uniform in 16-600 px so that they span the levels, and
float32 classification and regression costs drawn from two modes (low near the box centre on the
level matching the box size, high elsewhere). After APS's level selection each GT has at most
2 x 9 = 18 candidates.
"""

from __future__ import annotations

import importlib
import math
import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ..errors import ReplicateError
from ..io import atomic_write_json
from . import time_calls

SCORES = ("paper", "code")
TARGETS = {"cpu": 10, "cuda": 50}  # speedup wanted per device type
IMAGE_SIZE = (800, 1333)
STRIDES = (8, 16, 32, 64, 128)
TOPK = 9
LEVELS_KEPT = 2
GMM_TOL = 1e-3
GMM_ITERS = 100
CODE_GMM_SCALE = 10.0


# ----------------------------------------------------------------------------------------------------
# reference: the released code's per-GT loop (NumPy + scikit-learn)


def _numpy(x) -> np.ndarray:
    """``x`` as a NumPy array (a tensor is copied to the host)."""
    return x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max())
    return e / e.sum()


def _reference_one_gt(cls: np.ndarray, reg: np.ndarray, total: np.ndarray, points: np.ndarray,
                      levels: np.ndarray, score: str) -> np.ndarray:
    """Positive point indices of one GT whose candidates are ``points`` (on ``levels``)."""
    from sklearn.mixture import GaussianMixture

    if len(points) == 0:
        return points
    picked = []
    for level in np.unique(levels):
        on_level = points[levels == level]
        picked.append(on_level[np.argsort(total[on_level], kind="stable")[:TOPK]])
    if len(picked) > 1:
        means = np.array([total[p].mean() for p in picked])
        idx = np.concatenate([picked[i] for i in np.argsort(means, kind="stable")[:LEVELS_KEPT]])
    else:
        idx = picked[0]
    if len(idx) == 1:
        return idx
    c, r = cls[idx], reg[idx]
    misalignment = _sigmoid(np.abs(c - r))
    if score == "paper":
        s = np.sqrt((_softmax(c) + _softmax(r)) / 2 * misalignment)
    elif len(picked) > 1:
        s = CODE_GMM_SCALE * np.sqrt(misalignment * np.maximum(c + r, 0))
    else:
        s = CODE_GMM_SCALE * (c + r)
    s = s.astype(np.float32).astype(np.float64).reshape(-1, 1)
    gm = GaussianMixture(n_components=2, covariance_type="full", weights_init=[0.5, 0.5],
                         means_init=[[s.min()], [s.max()]], precisions_init=[[[0.1]], [[0.1]]],
                         tol=GMM_TOL, reg_covar=1e-6, max_iter=GMM_ITERS).fit(s)
    foreground = gm.predict(s) == 0
    if not foreground.any():
        return idx[:0]
    loglik = gm.score_samples(s)
    threshold = s[np.nonzero(foreground)[0][np.argmax(loglik[foreground])], 0]
    return idx[foreground & (s[:, 0] <= threshold)]


def reference_aps_select(cost_cls, cost_reg, candidate, level_of_point, score: str = "paper") -> np.ndarray:
    """APS positives of every GT, one GT at a time as the released MOD code does: (M, P) bool array.

    Same semantics as ``aps_select(..., topk=9, num_levels_kept=2, score=score)`` with the default GMM
    scale: per level the 9 candidates with the smallest ``L_cls + L_reg``, the 2 levels with the
    smallest mean kept, the paper or code score (the code score of a GT whose candidates lie on one
    level is the raw ``L_cls + L_reg``; code scores are multiplied by 10), scikit-learn's
    ``GaussianMixture`` (weights 0.5/0.5, means [min, max], precisions 0.1, tol 1e-3), the points
    predicted in component 0 up to the one with the highest ``score_samples``. A GT with a single
    candidate takes it; a GT without candidates gets nothing; candidates with non-finite cost are
    ignored. Inputs may be tensors (copied to the host here) or arrays; scores are computed in the
    costs' precision (float32 for float32 costs) and fitted in float64, as :func:`aps_select` does.
    """
    if score not in SCORES:
        raise ReplicateError(f"reference_aps_select: unknown score {score!r}; expected one of {SCORES}")
    cls, reg, cand, levels = _numpy(cost_cls), _numpy(cost_reg), _numpy(candidate), _numpy(level_of_point)
    total = cls + reg
    positive = np.zeros(cls.shape, dtype=bool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's ConvergenceWarning on degenerate groups
        for gt in range(cls.shape[0]):
            points = np.nonzero(cand[gt] & np.isfinite(total[gt]))[0]
            selected = _reference_one_gt(cls[gt], reg[gt], total[gt], points, levels[points], score)
            positive[gt, selected] = True
    return positive


# ----------------------------------------------------------------------------------------------------
# synthetic problem


@dataclass
class APSProblem:
    """One batch's APS inputs: (M, P) costs and candidates, (P,) levels, and the boxes they come from."""

    cost_cls: Tensor
    cost_reg: Tensor
    candidate: Tensor
    level_of_point: Tensor
    num_levels: int
    boxes: Tensor
    image_of_gt: Tensor

    @property
    def num_gt(self) -> int:
        return self.cost_cls.shape[0]

    @property
    def num_points(self) -> int:
        return self.cost_cls.shape[1]


def _points(size: tuple[int, int], strides: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """FCOS point locations (P, 2) as (x, y) over all levels of one image, and their level (P,)."""
    h, w = size
    xy, level = [], []
    for i, stride in enumerate(strides):
        ny, nx = math.ceil(h / stride), math.ceil(w / stride)
        ys = torch.arange(ny, dtype=torch.float32) * stride + stride // 2
        xs = torch.arange(nx, dtype=torch.float32) * stride + stride // 2
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")
        xy.append(torch.stack([gx.flatten(), gy.flatten()], dim=1))
        level.append(torch.full((ny * nx,), i, dtype=torch.long))
    return torch.cat(xy), torch.cat(level)


def make_problem(images: int = 16, boxes_per_image: int = 7, points: tuple[int, int] = IMAGE_SIZE,
                 num_levels: int = 5, seed: int = 0, device: str | torch.device = "cpu") -> APSProblem:
    """A COCO-like APS load: ``images * boxes_per_image`` GTs over the points of one ``points`` (HxW) image.

    Points lie on ``num_levels`` levels of strides 8, 16, 32, ... (800x1333 gives 22,300 points on
    P3-P7). Each GT is a box with side ``s`` log-uniform in 16-600 px and aspect ratio log-uniform in
    1/2-2, placed uniformly inside the image; its candidates are the points inside it. Costs are
    float32 and positive with two modes: a point is "aligned" with probability decaying with its
    distance to the box centre (relative to the box size) and with the distance of its level to the
    level matching the box size; aligned points cost about 0.3, the others about 1.5 (log-normal
    noise). Classification and regression costs are drawn from independent alignments so that some
    points are good for one task only (MOD's misalignment). Generated on the CPU with ``seed`` and
    moved to ``device``.
    """
    if images < 1 or boxes_per_image < 1:
        raise ReplicateError(f"make_problem: images and boxes_per_image must be >= 1, got {images}, {boxes_per_image}")
    if not 1 <= num_levels <= len(STRIDES):
        raise ReplicateError(f"make_problem: num_levels must be in 1..{len(STRIDES)}, got {num_levels}")
    g = torch.Generator().manual_seed(seed)
    h, w = points
    xy, level = _points(points, STRIDES[:num_levels])
    num_gt = images * boxes_per_image

    side = torch.exp(math.log(16) + torch.rand(num_gt, generator=g) * (math.log(600) - math.log(16)))
    ratio = torch.exp((torch.rand(num_gt, generator=g) * 2 - 1) * math.log(2))
    bw = (side * ratio.sqrt()).clamp(max=w)
    bh = (side / ratio.sqrt()).clamp(max=h)
    x0 = torch.rand(num_gt, generator=g) * (w - bw)
    y0 = torch.rand(num_gt, generator=g) * (h - bh)
    boxes = torch.stack([x0, y0, x0 + bw, y0 + bh], dim=1)

    px, py = xy[:, 0].unsqueeze(0), xy[:, 1].unsqueeze(0)
    candidate = (px > boxes[:, :1]) & (px < boxes[:, 2:3]) & (py > boxes[:, 1:2]) & (py < boxes[:, 3:])
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    dist = ((xy.unsqueeze(0) - centre.unsqueeze(1)) / torch.stack([bw, bh], 1).unsqueeze(1)).norm(dim=2)
    best_level = (torch.log2(torch.sqrt(bw * bh) / 64).round() + 1).clamp(0, num_levels - 1)
    level_gap = (level.unsqueeze(0).float() - best_level.unsqueeze(1)).abs()
    p_aligned = torch.exp(-((dist / 0.25) ** 2) - level_gap)

    def cost() -> Tensor:
        aligned = torch.rand(p_aligned.shape, generator=g) < p_aligned
        noise = torch.exp(0.3 * torch.randn(p_aligned.shape, generator=g))
        return torch.where(aligned, 0.3, 1.5) * noise

    cost_cls, cost_reg = cost(), cost()
    dev = torch.device(device)
    return APSProblem(cost_cls=cost_cls.to(dev), cost_reg=cost_reg.to(dev), candidate=candidate.to(dev),
                      level_of_point=level.to(dev), num_levels=num_levels, boxes=boxes.to(dev),
                      image_of_gt=torch.arange(images).repeat_interleave(boxes_per_image).to(dev))


# ----------------------------------------------------------------------------------------------------
# benchmark


def bench_aps(images: int = 16, boxes_per_image: int = 7, iters: int = 5, warmup: int = 1,
              device: str | None = "cpu", score: str = "code", seed: int = 0) -> dict:
    """Median seconds of the per-GT reference and of :func:`aps_select` on one problem, and their ratio."""
    from ..models.aps import aps_select

    importlib.import_module("sklearn.mixture")  # imported here, not inside the first timed call

    if score not in SCORES:
        raise ReplicateError(f"bench aps: unknown score {score!r}; expected one of {SCORES}")
    if iters < 1 or warmup < 0:
        raise ReplicateError(f"bench aps: iters must be >= 1 and warmup >= 0, got {iters}, {warmup}")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ReplicateError("bench aps: --device cuda but CUDA is not available")
    problem = make_problem(images, boxes_per_image, seed=seed, device=dev)
    args = (problem.cost_cls, problem.cost_reg, problem.candidate, problem.level_of_point)

    ref_times, reference = time_calls(lambda: reference_aps_select(*args, score=score), iters, warmup, dev)
    our_times, ours = time_calls(lambda: aps_select(*args, problem.num_levels, score=score), iters, warmup, dev)

    differing = int((torch.from_numpy(reference) != ours.cpu()).any(dim=1).sum())
    ref_median, our_median = statistics.median(ref_times), statistics.median(our_times)
    return {"benchmark": "aps", "images": images, "boxes_per_image": boxes_per_image, "num_gt": problem.num_gt,
            "num_points": problem.num_points, "score": score, "device": dev.type, "seed": seed,
            "iters": iters, "warmup": warmup, "threads": torch.get_num_threads(),
            "positives_per_gt": float(ours.sum(dim=1).float().mean()),
            "reference": {"median_s": ref_median, "per_gt_ms": 1000 * ref_median / max(problem.num_gt, 1),
                          "times_s": ref_times},
            "ours": {"median_s": our_median, "times_s": our_times},
            "speedup": ref_median / our_median, "identical": differing == 0, "differing_gts": differing,
            "targets": dict(TARGETS)}


def write_result(result: dict, out: Path | None = None) -> Path:
    """Write a benchmark result with provenance to ``out`` (default ``results/bench/aps_<score>_<device>.json``)."""
    from ..provenance import provenance

    config = {k: v for k, v in result.items()
              if k in ("benchmark", "images", "boxes_per_image", "num_points", "score", "device", "seed")}
    record = {**result, "provenance": provenance(config, device=result["device"])}
    if out is None:
        out = Path("results/bench") / f"aps_{result['score']}_{result['device']}.json"
    atomic_write_json(out, record)
    return out


def format_result(r: dict) -> str:
    """The figures of :func:`bench_aps` as a few lines of text."""
    ref, ours, per_gt = r["reference"]["median_s"], r["ours"]["median_s"], r["reference"]["per_gt_ms"]
    target = r["targets"].get(r["device"])
    verdict = "no target" if target is None else (
        f"{'meets' if r['speedup'] >= target else 'below'} the {r['device']} target of {target:g}x")
    identical = "yes" if r["identical"] else f"no ({r['differing_gts']} of {r['num_gt']} GTs differ)"
    return (f"aps ({r['score']} score) on {r['device']}: {r['num_gt']} GTs ({r['images']} images x "
            f"{r['boxes_per_image']} boxes), {r['num_points']} points, {r['threads']} threads\n"
            f"  reference (per-GT NumPy + scikit-learn) {ref * 1000:9.1f} ms  ({per_gt:.2f} ms/GT)\n"
            f"  ours (batched aps_select)               {ours * 1000:9.1f} ms\n"
            f"  speedup reference/ours = {r['speedup']:.1f}x  ({verdict})\n"
            f"  identical assignments: {identical}")
