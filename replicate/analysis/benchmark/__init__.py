"""Is the benchmark a fair proxy for COCO? The calibration statistics of the book's calibration page.

Each module measures targets of the benchmark (the targets come from outside the five papers):

* :mod:`.dataset`: COCO's size buckets and RetinaNet's anchor coverage on the benchmark's objects;
* :mod:`.noise`: the spread of AP over seeds (target: at most 0.6 AP points), what a paired comparison
  keeps of it and what the validation sample makes of it;
* :mod:`.ranking`: the dense baselines against their COCO AP (Spearman's rho at least 0.7, ATSS and GFL
  ahead of RetinaNet by more than 2 standard errors);
* :mod:`.cost`: minutes per run and hours for the evidence, against the cost targets;
* :mod:`.schedule`: what doubling the schedule still gains (target: at most 5 % of RetinaNet's AP);
* :mod:`.backbones`: the pretrained stand-ins for ImageNet's ResNet-50 and ResNet-101;
* :mod:`.dial`: the generator's key offset against RetinaNet's localization gap;
* :mod:`.targets`: the page's plan and its verdict, one line per target.

The page reads them as ``from replicate.analysis import benchmark as bm``; the names below are that API.
"""

from .backbones import BACKBONE_DRAW_SUFFIX, STANDS_IN_FOR, backbone_draw, pretraining_table
from .cost import (EVIDENCE_HOURS_TARGET, MINUTES_TARGET, bf16_speed_by_cpu, cost_table, cost_verdict, evidence_load,
                   idle_rates, median_minutes_by_model, precision_table, run_costs)
from .dataset import SIZE_SHARE_TARGET, anchor_coverage, size_shares, size_table
from .dial import dial_frame, plot_dial
from .noise import (NOISE_TARGET, noise_table, paired_noise, plot_noise, plot_val_splits, seed_noise, val_split_frame,
                    val_split_spread)
from .ranking import RHO_TARGET, distortion, margin_table, metric_means, plot_ranking, ranking, rho_text, spearman
from .schedule import (COCO_2X_GAIN, CONVERGENCE_TARGET, convergence, plot_schedule, schedule_leads, schedule_table,
                       schedules_compared)
from .targets import CalibrationPlan, calibration_plan, targets_at_a_glance

__all__ = [
    "BACKBONE_DRAW_SUFFIX", "COCO_2X_GAIN", "CONVERGENCE_TARGET", "EVIDENCE_HOURS_TARGET", "MINUTES_TARGET",
    "NOISE_TARGET", "RHO_TARGET", "SIZE_SHARE_TARGET", "STANDS_IN_FOR", "CalibrationPlan", "anchor_coverage",
    "backbone_draw", "bf16_speed_by_cpu", "calibration_plan", "convergence", "cost_table", "cost_verdict", "dial_frame", "distortion",
    "evidence_load", "idle_rates", "margin_table", "median_minutes_by_model", "metric_means", "noise_table",
    "paired_noise", "plot_dial", "plot_noise", "plot_ranking", "plot_schedule", "plot_val_splits",
    "precision_table", "pretraining_table", "ranking", "rho_text", "run_costs", "schedule_leads",
    "schedule_table", "schedules_compared", "seed_noise", "size_shares", "size_table", "spearman",
    "targets_at_a_glance", "val_split_frame", "val_split_spread",
]
