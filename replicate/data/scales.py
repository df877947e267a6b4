"""Named image scales: ``(long, short)`` limits of the keep-ratio resize, as in mmdetection's configs.

The papers' 1333x800 (MOD, SALT-Net, TSD, AlignDet), RetinaNet-Conf's 1000x600 (and its released
1024x608), multi-scale ranges, and the generated profiles' own scales. A leaf module: training configs
validate their ``scale`` against it without importing the data pipeline.
"""

from __future__ import annotations

Scale = tuple[int, int]  # (long side limit, short side)

SCALE_PRESETS: dict[str, tuple[tuple[Scale, ...], str]] = {
    "1333x800": (((1333, 800),), "choice"),
    "1000x600": (((1000, 600),), "choice"),
    "1024x608": (((1024, 608),), "choice"),  # RetinaNet-Conf's released config (train and test)
    "ms-640-800": (((1333, 640), (1333, 800)), "range"),  # short side drawn in [640, 800]
    "ms-480-960": (((1333, 480), (1333, 960)), "range"),  # tested at 1333x800 (TEST_SCALES)
    "synthetic-320": (((480, 320),), "choice"),
    "proxy-192": (((256, 192),), "choice"),
    "smoke-192": (((288, 192),), "choice"),
}

# Test scale of a preset when it is not its largest training scale: FCOS-family multi-scale 2x recipes
# (MOD's released configs: MIN_SIZE_RANGE_TRAIN 480-960) test at 800.
TEST_SCALES: dict[str, Scale] = {"ms-480-960": (1333, 800)}
