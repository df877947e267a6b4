"""The calibration page's plan (how many seeds each table gets) and its verdict, one line per target."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import pandas as pd

from ... import profiles
from .dataset import SIZE_SHARE_TARGET
from .noise import NOISE_TARGET
from .ranking import RHO_TARGET
from .schedule import CONVERGENCE_TARGET


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
