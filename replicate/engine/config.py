"""Training schedules: the typed :class:`TrainConfig` and the named presets of :data:`SCHEDULES`.

``1x`` is the schedule of every paper replicated here, as in mmdetection's
``configs/_base_/schedules/schedule_1x.py`` with ``configs/_base_/default_runtime.py``: SGD,
lr 0.01 for a global batch of 16 (8 GPUs x 2 images), momentum 0.9, weight decay 1e-4, 12 COCO
epochs = 90k iterations with the lr divided by 10 at 60k and 80k (epochs 8 and 11), linear warmup
over 500 iterations from 0.001 x lr. Gradient clipping at L2 norm 35 is that of mmdetection's FCOS,
ATSS and GFL configs (``optimizer_config = dict(grad_clip=dict(max_norm=35, norm_type=2))``); the
small-data presets use it because training from scratch on tiny batches spikes early.

Overriding the length (:func:`with_overrides` ``iters=``) leaves ``steps`` and the warmup as they are
unless ``scale_schedule=True``: steps beyond the new length are then simply never reached (e.g. a
short debugging run of a 1x schedule keeps lr 0.01). With ``scale_schedule=True`` the steps and
warmup length are scaled by ``new_iters / old_iters`` (rounded), keeping the schedule's shape.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from collections.abc import Mapping
from typing import Any

from ..data.scales import SCALE_PRESETS
from ..errors import ReplicateError

WARMUPS = ("linear", "constant", "none")
AMP_DTYPES = (None, "bf16", "fp16")
RUNTIME_FIELDS = ("num_workers", "checkpoint_every", "eval_at_end")
"""Fields that do not change the trained weights: left out of the resume hash (see :func:`weights_config`)."""
LATER_FIELDS = {"gn_nchw": False}
"""Fields added after records existed, left out of a run's identity at these values, so that the runs
made before them keep their names (see :func:`run_identity`)."""


@dataclass(frozen=True)
class TrainConfig:
    iters: int
    batch_size: int  # global: summed over all processes
    lr: float
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup: str = "linear"  # "linear" | "constant" | "none"
    warmup_iters: int = 500
    warmup_ratio: float = 0.001  # warmup starts at lr * warmup_ratio
    steps: tuple[int, ...] = ()  # lr *= gamma once the iteration index reaches each step
    gamma: float = 0.1
    grad_clip: float | None = None  # max L2 norm of all gradients
    amp: str | None = None  # None | "bf16" | "fp16": autocast dtype (bf16 on CPU and CUDA, fp16 on CUDA only)
    channels_last: bool = False  # NHWC weights and images (CPU and CUDA)
    gn_nchw: bool = False  # with channels_last: GroupNorm computed in NCHW (models._utils.GroupNorm; faster on CPU)
    checkpoint_every: int = 0  # 0: checkpoint only at the end (and on interruption)
    eval_at_end: bool = True
    num_workers: int = 0
    seed: int = 0
    bias_lr_mult: float = 1.0  # lr multiplier of bias parameters (mmdetection's paramwise_cfg)
    bias_decay_mult: float = 1.0  # weight-decay multiplier of bias parameters
    scale: str | None = None  # a SCALE_PRESETS name for training and test images; None: the profile's own

    def __post_init__(self) -> None:
        problems = []
        if self.iters < 1:
            problems.append(f"iters must be >= 1 (got {self.iters})")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1 (got {self.batch_size})")
        if self.lr <= 0:
            problems.append(f"lr must be > 0 (got {self.lr})")
        if self.warmup not in WARMUPS:
            problems.append(f"warmup must be one of {list(WARMUPS)} (got {self.warmup!r})")
        if self.warmup != "none" and self.warmup_iters < 1:
            problems.append(f"warmup_iters must be >= 1 with {self.warmup} warmup (got {self.warmup_iters})")
        if list(self.steps) != sorted(self.steps):
            problems.append(f"steps must be increasing (got {list(self.steps)})")
        if self.grad_clip is not None and self.grad_clip <= 0:
            problems.append(f"grad_clip must be > 0 or None (got {self.grad_clip})")
        if self.amp not in AMP_DTYPES:
            problems.append(f"amp must be one of {list(AMP_DTYPES)} (got {self.amp!r})")
        if self.scale is not None:
            if self.scale not in SCALE_PRESETS:
                problems.append(f"scale must be one of {sorted(SCALE_PRESETS)} or None (got {self.scale!r})")
        if self.checkpoint_every < 0 or self.num_workers < 0:
            problems.append("checkpoint_every and num_workers must be >= 0")
        if problems:
            raise ReplicateError("invalid training config: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


SCHEDULES: dict[str, TrainConfig] = {
    # mmdetection schedule_1x.py (the papers' recipe; see the module docstring).
    "1x": TrainConfig(iters=90_000, batch_size=16, lr=0.01, steps=(60_000, 80_000), warmup="linear",
                      warmup_iters=500, warmup_ratio=0.001, checkpoint_every=5000, num_workers=2),
    # The synthetic benchmark: 12 epochs of 4000 images at batch 16, lr steps at epochs 8 and 11 as in 1x.
    "synthetic": TrainConfig(iters=3000, batch_size=16, lr=0.01, steps=(2000, 2750), warmup="linear",
                             warmup_iters=500, warmup_ratio=0.001, grad_clip=35.0, checkpoint_every=500,
                             num_workers=2),
    # CPU smoke runs (plumbing checks, a few seconds each on 2 cores): 25 iterations at batch 4 on the 48 smoke
    # images. The smoke book trains about 100 of them, most of CI's time: 25 iterations exercise the same code as
    # 100 at a quarter of the cost (the tests that check that a detector learns train 100,
    # tests/test_smoke_training.py).
    # lr 0.01 with a short warmup from 0.1 x lr: at 0.02 from scratch some heads collapse (FCOS' ReLU
    "smoke": TrainConfig(iters=25, batch_size=4, lr=0.01, steps=(22,), warmup="linear", warmup_iters=10,
                         warmup_ratio=0.1, grad_clip=35.0, checkpoint_every=25),
}

def with_overrides(cfg: TrainConfig, *, scale_schedule: bool = False, **changes: Any) -> TrainConfig:
    """``cfg`` with some fields changed (``None`` values are ignored, so CLI defaults pass through).

    When ``iters`` changes and ``scale_schedule`` is set, ``steps`` and ``warmup_iters`` are scaled
    by ``iters / cfg.iters``; otherwise they stay as they are (see the module docstring).
    """
    changes = {k: v for k, v in changes.items() if v is not None}
    unknown = sorted(set(changes) - {f.name for f in fields(TrainConfig)})
    if unknown:
        raise ReplicateError(f"unknown training config fields {unknown}")
    if scale_schedule and "iters" in changes and "steps" not in changes:
        factor = changes["iters"] / cfg.iters
        changes["steps"] = tuple(round(s * factor) for s in cfg.steps)
        changes.setdefault("warmup_iters", max(1, round(cfg.warmup_iters * factor)))
    return replace(cfg, **changes)


# factor, step fractions: 2x as mmdetection's (steps at 16 and 22 of 24 epochs); 1.5x as RetinaNet's test-dev
# models, "1.5x longer" than its 1x (Lin et al. 2017, Sec. 5.2), its steps read as the 1x's scaled (2/3, 8/9).
SCHEDULE_LENGTHS = {"1x": None, "1.5x": (1.5, (2 / 3, 8 / 9)), "2x": (2, (16 / 24, 22 / 24))}
"""Longer schedules relative to a profile's 1x: length factor and lr steps as fractions of the new length
(mmdetection's ``schedule_2x.py``: 24 epochs, steps at epochs 16 and 22)."""


def lengthened(cfg: TrainConfig, schedule: str) -> TrainConfig:
    """``cfg`` (a profile's 1x schedule) stretched to ``schedule`` (``"1x"``: unchanged, ``"1.5x"``, ``"2x"``);
    the warmup is kept. On COCO 2x is 180k iterations with steps at 120k and 165k, 1.5x 135k with steps at 90k
    and 120k."""
    if schedule not in SCHEDULE_LENGTHS:
        raise ReplicateError(f"unknown schedule length {schedule!r}; choose from {sorted(SCHEDULE_LENGTHS)}")
    if SCHEDULE_LENGTHS[schedule] is None:
        return cfg
    factor, fractions = SCHEDULE_LENGTHS[schedule]
    iters = round(cfg.iters * factor)
    return replace(cfg, iters=iters, steps=tuple(round(iters * f) for f in fractions))


def run_identity(model: Any, train: TrainConfig, profile: str) -> dict[str, Any]:
    """What determines a run's result, as JSON: the model config without its test config (``model`` is
    :func:`replicate.models.detector.weights_fields` of it), the training config without the runtime
    fields, the data profile and the seed. Its hash names the run in the results store
    (:func:`replicate.experiments.store.run_key`) and guards its checkpoints against another config."""
    fields = weights_config(train)
    if not _has_group_norm(model):
        fields["gn_nchw"] = False  # a GroupNorm setting cannot change a model without one
    for name, value in LATER_FIELDS.items():
        if fields.get(name) == value:
            del fields[name]
    return {"model": model, "train": fields, "profile": profile, "seed": train.seed}


def with_later_fields(train: Mapping[str, Any]) -> dict[str, Any]:
    """A recorded training config as the current code writes it: a record made before a
    :data:`LATER_FIELDS` field existed lacks it, and was made with the value the field now leaves out of
    the run's identity."""
    return {**LATER_FIELDS, **train}


def _has_group_norm(model: Any) -> bool:
    """Whether a model config (as JSON) puts GroupNorm in its head towers."""
    return isinstance(model, Mapping) and isinstance(model.get("head"), Mapping) and model["head"].get("norm") == "gn"


def weights_config(cfg: TrainConfig) -> dict[str, Any]:
    """The fields that determine the trained weights (all but :data:`RUNTIME_FIELDS`)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in RUNTIME_FIELDS}
