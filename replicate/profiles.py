"""What a profile is: the one home of every setting that changes with the benchmark a run is on.

A profile names a dataset (generated, or COCO from a local folder), the scale its images are read at,
the training schedule, how the detector presets are narrowed for it, and what a run costs. Everything
else (``data``, ``engine``, ``models.zoo``, ``experiments``, the CLI) reads these settings from here.

* ``smoke``: 48 tiny images, 25 iterations: a plumbing check, never evidence.
* ``proxy``: the CPU benchmark the book's committed numbers come from. 3000 training
  images of 160-208 px, objects sized so that COCO's size buckets (32^2, 96^2 px) each hold at least
  15 % of the objects, the narrow ResNet *pretrained once on this profile's training split* (its
  objects' keys, :mod:`replicate.pretrain`; frozen stem, stage 1 and BatchNorm, as ImageNet
  initialisation in the papers), FPN/head width 64 with 2 tower convs, 4800 iterations at batch 8 (12.8 epochs), bf16
  autocast and channels_last on CPU.
  Each choice and the measurement behind it is on the book's calibration page.
* ``synthetic``: the larger generated benchmark (4000 images of 288-352 px, width 128 and 4 tower
  convs, from scratch), kept as the GPU / cluster profile; its records are not committed.
* ``coco``: COCO 2017 from a local folder with the papers' R50-FPN 1x recipe, unchanged presets.
* ``proxy-offset0``, ``proxy-offset0.3``: the proxy with its key offset turned down, the calibration page's
  dial (:data:`DIAL_OFFSETS`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from .data.synth_spec import SynthProfile
from .engine.config import SCHEDULES, TrainConfig
from .errors import ReplicateError

@dataclass(frozen=True)
class ModelScale:
    """How a profile narrows the detector presets (the head's design is unchanged).

    ``backbone``: the narrow ResNet replaces ResNet-50 (``narrow_deep`` the 101-layer backbones, keeping
    any DCN stages). ``weights`` maps a narrow backbone name to a pretrained weights file (a path relative
    to the repository, see :func:`replicate.models.checkpoints.resolve_weights`); with weights the backbone is frozen as ImageNet
    initialisation is in the papers (``FrozenBatchNorm``, stem and stage 1 not trained), without them it
    trains from scratch (BatchNorm, nothing frozen).
    """

    width: int  # FPN and head channels
    num_convs: int  # head tower depth
    weights: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Profile:
    name: str
    synth: SynthProfile | None  # None: COCO from a local folder
    scale: str  # a data.scales.SCALE_PRESETS name: training and test scale
    schedule: TrainConfig
    model: ModelScale | None  # None: the presets as they are (the papers' R50-FPN)
    num_classes: int
    minutes: dict[str, float]  # device type -> a first guess of one run's wall time (sweep plans)
    seeds: int = 1  # seeds per table row the book shows by default
    committed: bool = False  # whether its results/ records are committed with the repository
    evidence: bool = True  # False: a plumbing check whose numbers mean nothing (the book says so)


SMOKE_DATA = SynthProfile(
    name="smoke", n_train=48, n_val=16, image_side=(160, 224), objects_per_image=(1, 5), sqrt_area=(12.0, 110.0),
    crowded_objects=(8, 12), crowded_prob=0.1, empty_prob=0.1, crowd_region_prob=0.1,
)
SYNTHETIC_DATA = SynthProfile(
    name="synthetic", n_train=4000, n_val=500, image_side=(288, 352), objects_per_image=(2, 8),
    sqrt_area=(12.0, 215.0),
)
# Objects of sqrt(area) 20 to 200 px (log-uniform, shrunk to fit) in 160-208 px images. Measured on 400
# sampled layouts: COCO's small / medium / large buckets hold 28 / 53 / 19 % of the objects, and 94 % of
# them have a RetinaNet anchor of IoU >= 0.5 at the proxy scale (16-150 px gave 39 / 50 / 11 %, too few
# large objects; see the calibration page, analysis.benchmark.dataset.anchor_coverage).
PROXY_DATA = SynthProfile(
    name="proxy", n_train=3000, n_val=400, image_side=(160, 208), objects_per_image=(2, 6), sqrt_area=(20.0, 200.0),
    crowded_objects=(10, 16),
)

#: The proxy profile's schedule: 4800 iterations at batch 8 (12.8 epochs of 3000 images, as COCO's 1x is
#: 12 epochs), lr 0.01 with mmdetection's 1x shape (steps at 2/3 and 11/12 of the run), a 100-iteration
#: warmup, bf16 autocast and channels_last on CPU (1.8x faster per step than float32 at this width,
#: measured; the precision table checks the metric), with GroupNorm computed in NCHW (``gn_nchw``: the
#: channels-last GroupNorm kernels are slow on CPU; 1.25x per ATSS step, models._utils.GroupNorm). Set on the benchmark's schedule table, against
#: COCO's own convergence (mmdetection's zoo: RetinaNet R50-FPN 1x 36.5, 2x 37.4, +0.9 AP):
#: RetinaNet seed 0 reached AP 23.6 at 1200 iterations, 43.8 at 2400 (the first calibrated length,
#: 6.4 epochs) and 57.1 at 4800. Doubling 2400 gained 13 AP, and at 2400 RetinaNet's seeds spread over
#: 27-44 AP (sd 7.4 over 4 seeds) and the baselines' order said more about speed of convergence than about
#: the methods. At 4800 RetinaNet's 5 seeds span 54.3-57.6 (sd 1.3: still above the 0.6 target).
#: Doubling 4800 to 9600 still gains RetinaNet 7.2 AP (12.5 %, against the 5 % target), and ATSS's lead
#: over RetinaNet shrinks from 6.1 to 4.6 AP. The schedule stays at 4800 all the same: doubling it would
#: double the cost of all the evidence, whose budget 4800 already misses (the calibration page's decision).
PROXY_SCHEDULE = TrainConfig(iters=4800, batch_size=8, lr=0.01, steps=(3200, 4400), warmup="linear",
                             warmup_iters=100, warmup_ratio=0.001, grad_clip=35.0, amp="bf16", channels_last=True,
                             gn_nchw=True, checkpoint_every=250, num_workers=0)

PROXY_SCALE = ModelScale(64, 2, weights={"narrow": "results/pretrained/proxy/narrow-bb70379f.pt",
                                         "narrow_deep": "results/pretrained/proxy/narrow_deep-489ccd8a.pt"})

#: The calibration dial: the proxy benchmark with the key (the class evidence) nearer the body centre. At
#: offset 0 the best point to classify is the best point to regress, so the misalignment should fade.
#: These share the proxy's schedule and its backbone (pretrained on the proxy's own training split).
DIAL_OFFSETS: dict[str, tuple[float, float]] = {"proxy-offset0": (0.0, 0.0), "proxy-offset0.3": (0.1, 0.5)}

PROFILES: dict[str, Profile] = {
    "smoke": Profile("smoke", SMOKE_DATA, "smoke-192", SCHEDULES["smoke"], ModelScale(64, 2), num_classes=10,
                     minutes={"cpu": 0.5, "cuda": 0.5}, evidence=False),
    "proxy": Profile("proxy", PROXY_DATA, "proxy-192", PROXY_SCHEDULE,
                     PROXY_SCALE,
                     num_classes=10, minutes={"cpu": 20.0, "cuda": 4.0}, seeds=3, committed=True),
    "synthetic": Profile("synthetic", SYNTHETIC_DATA, "synthetic-320", SCHEDULES["synthetic"], ModelScale(128, 4),
                         num_classes=10, minutes={"cpu": 275.0, "cuda": 20.0}),
    "coco": Profile("coco", None, "1333x800", SCHEDULES["1x"], None, num_classes=80,
                    minutes={"cpu": 270_000.0, "cuda": 300.0}),
    **{name: Profile(name, replace(PROXY_DATA, name=name, key_offset=offset), "proxy-192", PROXY_SCHEDULE, PROXY_SCALE,
                     num_classes=10, minutes={"cpu": 20.0, "cuda": 4.0}, committed=True)
       for name, offset in DIAL_OFFSETS.items()},
}
NAMES: tuple[str, ...] = tuple(PROFILES)
MAIN: tuple[str, ...] = tuple(n for n in PROFILES if n not in DIAL_OFFSETS)  # what `replicate list` shows
GENERATED: tuple[str, ...] = tuple(n for n, p in PROFILES.items() if p.synth is not None)
DEFAULT = "proxy"  # make book's profile


def get(name: str) -> Profile:
    """The profile called ``name``; an unknown name is an error listing the known ones."""
    if name not in PROFILES:
        raise ReplicateError(f"unknown profile {name!r}; choose from {list(NAMES)}")
    return PROFILES[name]


def trains_missing_by_default(name: str) -> bool:
    """Whether a book page (and ``replicate book``) trains the runs the results store lacks unless told:
    only on a plumbing profile (seconds per run); on an evidence profile it shows what the store holds
    (the proxy's records are committed) and says what is missing."""
    return not get(name).evidence


def schedule_for(name: str) -> TrainConfig:
    """The training schedule of profile ``name`` (``coco`` -> mmdetection's ``1x``)."""
    return get(name).schedule
