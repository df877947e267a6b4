"""What the synthetic misalignment benchmark contains: its classes and its profiles.

The benchmark exists because COCO and ImageNet weights cannot be fetched here, yet the five papers'
subject — classification and localization wanting different points of an object — has to be present
and measurable. Every object is a *body* (a rounded rectangle, the superellipse |x/a|^4 + |y/b|^4 <= 1)
whose shape, colour and texture are drawn from one distribution shared by all classes; the box is the
body's extent. The class is carried only by a small textured disc, the *key*, placed off-centre inside
the body. The best point for regressing the box (the body centre) is therefore not the best point for
classifying it (the key) — the premise of MOD, AlignDet, RetinaNet-Conf, SALT-Net and TSD.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class KeySpec:
    """A class: the texture of its key. ``cycles`` are periods across the key's diameter."""

    category_id: int
    name: str
    pattern: str  # "bars" (sinusoidal grating), "checker" (product of two gratings) or "rings"
    angle_deg: float
    cycles: float


# Category ids are deliberately non-contiguous (as COCO's are). Confusable pairs differ slightly:
# bars-0 / bars-20 (orientation), bars-0 / fine-0 (frequency), checker / checker-45 (rotation).
CLASSES: tuple[KeySpec, ...] = (
    KeySpec(1, "bars-0", "bars", 0.0, 2.0),
    KeySpec(3, "bars-20", "bars", 20.0, 2.0),
    KeySpec(4, "bars-90", "bars", 90.0, 2.0),
    KeySpec(7, "bars-45", "bars", 45.0, 2.0),
    KeySpec(8, "bars-135", "bars", 135.0, 2.0),
    KeySpec(12, "fine-0", "bars", 0.0, 3.5),
    KeySpec(15, "fine-90", "bars", 90.0, 3.5),
    KeySpec(20, "checker", "checker", 0.0, 2.0),
    KeySpec(23, "checker-45", "checker", 45.0, 2.0),
    KeySpec(31, "rings", "rings", 0.0, 2.0),
)

CONFUSABLE_PAIRS: tuple[tuple[str, str], ...] = (
    ("bars-0", "bars-20"),
    ("bars-0", "fine-0"),
    ("checker", "checker-45"),
)


@dataclass(frozen=True)
class SynthProfile:
    """Sizes and frequencies of one generated dataset (the instances are the profiles' data, in
    :mod:`replicate.profiles`).

    Object sizes are drawn log-uniformly in ``sqrt(area)`` between ``sqrt_area`` bounds; aspect ratios
    (w/h) log-uniformly in ``[1/5, 5]`` with probability ``wide_aspect_prob`` and in ``[1/2, 2]``
    otherwise. ``key_offset`` bounds the key centre's offset as a fraction of the body's half-extent
    along the drawn direction; ``key_size`` is the key diameter as a fraction of the body's smaller side.
    """

    name: str
    n_train: int
    n_val: int
    image_side: tuple[int, int]  # width and height each drawn uniformly in this range
    objects_per_image: tuple[int, int]
    sqrt_area: tuple[float, float]
    wide_aspect_prob: float = 0.35
    key_offset: tuple[float, float] = (0.2, 0.8)
    key_size: float = 0.32
    crowded_prob: float = 0.08  # images with many overlapping objects
    crowded_objects: tuple[int, int] = (14, 24)
    max_iou: float = 0.3  # between annotated objects, normal images
    crowded_max_iou: float = 0.55
    empty_prob: float = 0.05  # images with distractors only, no annotations
    crowd_region_prob: float = 0.03  # images holding one iscrowd=1 region
    distractor_bodies: float = 1.0  # Poisson mean: bodies without keys
    floating_keys: float = 1.0  # Poisson mean: keys without bodies
    clutter: float = 2.0  # Poisson mean: other shapes on the background
    jpeg_quality: int = 92


#: COCO's object-size buckets (area thresholds 32^2 and 96^2).
SMALL_AREA = 32.0**2
LARGE_AREA = 96.0**2
