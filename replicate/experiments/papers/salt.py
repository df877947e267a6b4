"""SALT-Net (Yang et al., "Rethinking the Misalignment Problem in Dense Object Detection"): Tables 1-5, Figures 1, 9.

Numbers are transcribed from ``shared/papers/003_f4cdaa0c2361fb62.txt`` (COCO val2017 for Tables 1-4,
test-dev for Table 5; percent, as printed). The rows are the presets of
:mod:`replicate.models.detectors.salt_net` with what each table varies:

* Table 1 (Sec. 4.1), SALT's parts added one at a time, all without the SDR loss (Table 4 adds it): the S1
  baseline (ATSS with the joint cls-IoU score, ``salt_s1``), the S2 baseline (GFLv2, ``gflv2``), then
  SALT-Net with both tasks reading the regression-aware points, with free classification-aware points
  (``P^c = D``), with the points anchored on the regression-aware ones (Eq. 5), with the skip connection;
  the last row scores the same model's stage-one boxes (``test.boxes = "coarse"``: one trained model, two
  evaluations).
* Table 2 (Sec. 4.2): Eq. 6 (``"add"``) against Eq. 5 (``"exp"``), on Table 1's full model.
* Table 3 (Sec. 4.3): FCOS* and SALT-FCOS (``salt_fcos``: the operator composed into the FCOS head), RepPoints
  w/ GridF and SALT-RepPoints (``reppoints``, ``salt_reppoints``: :mod:`replicate.models.detectors.reppoints`).
* Table 4 (Sec. 4.4): the SDR loss on and off, each scored on both stages.
* ``code_variants``: where the released code departs from the paper, one difference at a time and all
  together (``salt_net_code``).
* Table 5 (Sec. 4.6): test-dev, 2x with multi-scale training. The two ResNet-50 rows (GFLV2 and SALT-Net*)
  are reproduced, under :data:`~replicate.experiments.papers.MS_2X` (the proxy trains them at its 1x); the
  other rows (other detectors, DCN and ResNeXt / Res2Net backbones, test-time augmentation) are cited.

The S2 baseline is the ``gflv2`` preset (4 tower convs, as GFLv2's config; SALT-Net's has 3): on the small
profiles every head's towers have the profile's depth, so the rows differ only in what the table varies.

Figures 1 and 9 (where the classification scores and the IoUs peak) read Tables 1 and 4's runs
(:mod:`replicate.analysis.task_peaks`); Figure 8 (the two point sets and their regions) SALT-Net's runs
(:mod:`replicate.analysis.task_points`); Figure 10 (confident, poorly localized detections) GFLv2's and
SALT-Net's (:mod:`replicate.analysis.confident_detections`). Figure 7 (a COCO annotation whose border the
stage-two box draws better) has no counterpart on the generated benchmark, whose boxes are exact.
"""

from __future__ import annotations

from .. import spec
from ..spec import Claim, Row, TableSpec, register
from . import MS_2X

FULL = ("AP", "AP50", "AP75", "APs", "APm", "APl")
AP3 = ("AP", "AP50", "AP75")
NO_SDR = {"head.sdr": False}
COARSE = {"test.boxes": "coarse"}


def printed(values: str, metrics: tuple[str, ...] = FULL) -> dict[str, float]:
    """:func:`~replicate.experiments.spec.printed` with SALT-Net's usual columns."""
    return spec.printed(values, metrics)


def parts(cls_points: str, skip: bool = False) -> dict[str, object]:
    """Table 1: SALT-Net without SDR, with the classification points of ``cls_points`` and the skip or not."""
    return {**NO_SDR, "head.cls_points": cls_points, "head.skip": skip}


# ------------------------------------------------------------------------------------------------ Table 1
TABLE1 = register(TableSpec(
    paper="salt", table="table1",
    title="SALT's parts, added one at a time (no SDR loss)",
    source="SALT-Net, Table 1 (Sec. 4.1)", metrics=FULL, reference="S2 baseline (GFLv2)",
    rows=(
        Row("S1 baseline (ATSS, joint score)", "salt_s1", paper=printed("39.9 58.5 43.0 22.4 43.9 52.7")),
        Row("S2 baseline (GFLv2)", "gflv2", paper=printed("40.9 58.3 44.4 23.9 44.7 53.5")),
        Row("S2 + R-points", "salt_net", parts("regression"), paper=printed("41.3 58.7 44.9 23.3 45.0 54.2")),
        Row("S2 + R-points + C-points", "salt_net", parts("free"), paper=printed("41.6 59.1 45.6 23.7 45.4 54.7")),
        Row("S2 + P-anchor", "salt_net", parts("exp"), paper=printed("42.1 59.6 45.6 24.8 45.4 55.5")),
        Row("S2 + P-anchor + skip", "salt_net", NO_SDR, paper=printed("42.5 60.1 46.2 25.1 45.9 56.4")),
        Row("S1 of the full model", "salt_net", {**NO_SDR, **COARSE}, paper=printed("41.3 58.6 44.9 23.2 45.1 54.2")),
    ),
    claims=(
        Claim("Aligned features from the regression-aware points beat GFLv2", "S2 + R-points", "S2 baseline (GFLv2)",
              margin=0.4),
        Claim("Disentangled classification-aware points help", "S2 + R-points + C-points", "S2 + R-points",
              margin=0.3),
        Claim("Anchoring the classification points on the regression points helps", "S2 + P-anchor",
              "S2 + R-points + C-points", margin=0.5),
        Claim("The skip connection helps", "S2 + P-anchor + skip", "S2 + P-anchor", margin=0.4),
        Claim("SALT improves on GFLv2 by 1.6 AP", "S2 + P-anchor + skip", "S2 baseline (GFLv2)", margin=1.6),
        Claim("SALT improves large objects by 2.9 AP", "S2 + P-anchor + skip", "S2 baseline (GFLv2)", metric="APl",
              margin=2.9),
        Claim("The coarse boxes with the refined scores beat the S1 baseline", "S1 of the full model",
              "S1 baseline (ATSS, joint score)", margin=1.4),
    ),
    note="With Eq. 4's ReLU (the paper's, our default) D >= 0, so the free classification-aware points (P^c = D) "
         "can only lie right of and below the location; see Table 2's note.",
))

# ------------------------------------------------------------------------------------------------ Table 2
TABLE2 = register(TableSpec(
    paper="salt", table="table2",
    title="Spatial disentanglement: Eq. 6 (+) against Eq. 5 (exp)",
    source="SALT-Net, Table 2 (Sec. 4.2)", metrics=FULL,
    rows=(
        Row("w/ +", "salt_net", {**NO_SDR, "head.cls_points": "add"}, paper=printed("42.3 60.1 46.1 24.7 46.0 56.1")),
        Row("w/ exp", "salt_net", NO_SDR, paper=printed("42.5 60.1 46.2 25.1 45.9 56.4")),
    ),
    claims=(Claim("Log-space scaling (exp) beats additive offsets", "w/ exp", "w/ +", margin=0.2),),
    note="With Eq. 4's ReLU (the paper's, our default) D >= 0: Eq. 6 can only shift the points right and down, "
         "and Eq. 5 can only scale them away from the location. The released code's linear D "
         "(head.disentangle = \"linear\") has neither restriction.",
))

# ------------------------------------------------------------------------------------------------ Table 3
TABLE3 = register(TableSpec(
    paper="salt", table="table3",
    title="SALT in other dense detectors",
    source="SALT-Net, Table 3 (Sec. 4.3)", metrics=AP3,
    rows=(
        Row("FCOS", "fcos", paper=printed("38.6 57.2 41.7", AP3)),
        Row("SALT-FCOS", "salt_fcos", paper=printed("40.9 59.3 44.2", AP3)),
        Row("RepPoints w/ GridF", "reppoints", paper=printed("37.4 58.9 39.7", AP3)),
        Row("SALT-RepPoints", "salt_reppoints", paper=printed("39.0 60.5 41.6", AP3)),
    ),
    claims=(Claim("SALT improves FCOS by 2.3 AP", "SALT-FCOS", "FCOS", margin=2.3),
            Claim("SALT improves RepPoints by 1.6 AP", "SALT-RepPoints", "RepPoints w/ GridF", margin=1.6)),
    note="FCOS is FCOS* with the official code's improvements (the fcos preset, COCO 38.7 in mmdetection's zoo). "
         "SALT-FCOS puts the SALT operator (Eq. 5 points, no skip connection) between FCOS's towers and its "
         "predictors and trains the coarse box with GIoU at the released code's weight of 0.5. RepPoints w/ GridF "
         "is RepPoints' bounding-box variant with 3x3 grid features from a centre point (the released RepPoints "
         "code's 37.4 AP row, the paper's value too); SALT-RepPoints puts the operator in place of its initial "
         "stage and grid sampling: SALT's coarse box is the initial box, trained by RepPoints' initial-stage "
         "assignment and smooth-L1 loss at weight 0.5 (the released code's RepPoints variant's).",
))

# ------------------------------------------------------------------------------------------------ Table 4
TABLE4 = register(TableSpec(
    paper="salt", table="table4",
    title="The self-distillation regression (SDR) loss, scored on each stage",
    source="SALT-Net, Table 4 (Sec. 4.4)", metrics=FULL,
    rows=(
        Row("S1", "salt_net", {**NO_SDR, **COARSE}, paper=printed("41.3 58.6 44.9 23.2 45.1 54.2")),
        Row("S2", "salt_net", NO_SDR, paper=printed("42.5 60.1 46.2 25.1 45.9 56.4")),
        Row("S1 + SDR", "salt_net", COARSE, paper=printed("42.1 60.5 45.9 24.8 45.7 54.9")),
        Row("S2 + SDR", "salt_net", paper=printed("42.8 60.6 46.7 25.1 46.4 56.0")),
    ),
    claims=(
        Claim("SDR improves the stage-one boxes by 0.8 AP", "S1 + SDR", "S1", margin=0.8),
        Claim("SDR improves the stage-one boxes on small objects by 1.6 AP", "S1 + SDR", "S1", metric="APs",
              margin=1.6),
        Claim("SDR improves the final (stage-two) boxes", "S2 + SDR", "S2", margin=0.3),
    ),
))

# ------------------------------------------------------------------------------------------------ Table 5
_CITED5 = (  # (label, AP AP50 AP75 APs APm APl as printed)
    ("GuidedAnchor (R-50)", "39.8 59.2 43.5 21.8 42.6 50.7"),
    ("DCNV2 (X-101-32x8d-DCN)", "44.5 65.8 48.4 27.0 48.5 58.9"),
    ("BorderDet (X-101-64x4d-DCN)", "48.0 67.1 52.1 29.4 50.7 60.5"),
    ("RepPointsV2 (X-101-64x4d-DCN)", "49.4 68.9 53.4 30.3 52.1 62.3"),
    ("TSDF (SE154-DCN)", "51.2 71.9 56.0 33.8 54.8 64.2"),
    ("VFNet (X-101-32x8d-DCN)", "50.0 68.5 54.4 30.4 53.2 62.9"),
    ("LSNet (R2-101-DCN-p)", "51.1 70.3 55.2 31.2 54.3 65.1"),
    ("CornerNet (HG-104)", "40.5 59.1 42.3 21.8 42.7 50.2"),
    ("SAPD (X-101-32x8d-DCN)", "46.6 66.6 50.0 27.3 49.7 60.7"),
    ("ATSS (X-101-32x8d-DCN)", "47.7 66.5 51.9 29.7 50.8 59.4"),
    ("GFL (X-101-32x8d-DCN)", "48.2 67.4 52.6 29.2 51.7 60.2"),
    ("FCOS-imprv (X-101-32x8d-DCN)", "44.1 63.7 47.9 27.4 46.8 53.7"),
    ("PAA (X-101-64x4d-DCN)", "49.0 67.8 53.3 30.2 52.8 62.2"),
    ("GFLV2 (X-101-32x8d-DCN2)", "49.0 67.6 53.5 29.7 52.4 61.4"),
    ("TOOD (X-101-64x4d-DCN)", "51.1 69.4 55.5 31.9 54.1 63.7"),
    ("SALT-Net (X-101-32x8d-DCN2)", "49.8 68.5 54.2 30.6 53.2 62.6"),
    ("SALT-Net (X-101-32x8d-DCN)", "50.2 68.8 54.9 31.2 53.4 63.1"),
    ("SALT-Net (R2-101-DCN2)", "51.1 69.7 55.7 32.3 54.5 64.0"),
    ("SALT-Net* (R2-101-DCN)", "51.5 70.0 56.2 32.1 55.1 64.8"),
    ("SALT-Net dagger (R2-101-DCN, TTA)", "53.8 71.1 59.9 36.3 56.9 65.1"),
)

TABLE5 = register(TableSpec(
    paper="salt", table="table5",
    title="Comparison on COCO test-dev (2x, multi-scale training; ours: the profile's val split)",
    source="SALT-Net, Table 5 (Sec. 4.6)", metrics=FULL, profile_train_overrides=MS_2X,
    rows=tuple(Row(label, "salt_net", paper=printed(values), reproduce=False, note="cited")
               for label, values in _CITED5) + (
        Row("GFLV2 (R-50)", "gflv2", schedule="2x", paper=printed("44.3 62.3 48.5 26.8 47.7 54.1")),
        Row("SALT-Net* (R-50)", "salt_net", schedule="2x", paper=printed("46.1 64.0 50.3 28.0 49.5 57.2")),
    ),
    claims=(Claim("SALT-Net (with SDR) beats GFLV2 with ResNet-50", "SALT-Net* (R-50)", "GFLV2 (R-50)",
                  margin=1.8),),
    note="\"*\": with the SDR loss; dagger: test-time augmentation (flip and multi-scale). DCN2: DCN on the "
         "backbone's last two stages, DCN: on its last three, DCN-p: in the backbone and the FPN. The reproduced "
         "rows train 2x with multi-scale images on coco; on the proxy they train at the profile's 1x and one "
         "scale, so they are Table 1's GFLv2 and Table 4's S2 + SDR runs.",
))

# ------------------------------------------------------------------------------------------------ code variants
TABLE_CODE = register(TableSpec(
    paper="salt", table="code_variants",
    title="Paper vs released code: SALT-Net's behaviours where the two disagree",
    source="SALT-Net Sec. 3 vs XavierYoungY/SALT-Net (shared/notes/official-code.md Sec. 4)", metrics=FULL,
    rows=(
        Row("SALT-Net (paper)", "salt_net", note="Eq. 10 with SDR, DFL 0.5, Eq. 1's two convs, Eq. 4's ReLU"),
        Row("No SDR loss", "salt_net", NO_SDR),
        Row("DFL weight 0.25", "salt_net", {"head.dfl_weight": 0.25}),
        Row("A conv before the point predictors", "salt_net", {"head.point_convs": 1}),
        Row("Linear disentanglement (D may be negative)", "salt_net", {"head.disentangle": "linear"}),
        Row("SALT-Net (released code)", "salt_net_code", note="all of the above"),
    ),
    note="The paper has no such table; the code's README reports its own new trials, so there is no paper "
         "column. Every difference is a config option of the salt_net preset.",
))

# ------------------------------------------------------------------------------------------------ Figures 1, 9
FIGURE9 = register(TableSpec(
    paper="salt", table="figure9", title="Where the classification scores and the IoUs peak, before and after SALT",
    source="SALT-Net, Figures 1 and 9 (Sec. 1, 4.5)", metrics=FULL,
    rows=(
        Row("ATSS, joint score (Figure 1)", "salt_s1"),
        Row("SALT-Net, stage two (Figure 9 a-b)", "salt_net"),
        Row("SALT-Net, stage one (Figure 9 c)", "salt_net", COARSE),
        Row("SALT-Net without SDR, stage one", "salt_net", {**NO_SDR, **COARSE}),
    ),
    note="A figure: its rows are Tables 1 and 4's trained runs, read by replicate.analysis.task_peaks.",
))

# ------------------------------------------------------------------------------------------------ Figure 8
FIGURE8 = register(TableSpec(
    paper="salt", table="figure8", title="The regression- and classification-aware points and their regions",
    source="SALT-Net, Figure 8 (Sec. 4.1)", metrics=FULL,
    rows=(
        Row("SALT-Net (Eq. 4's ReLU)", "salt_net"),
        Row("SALT-Net, linear D (the released code's)", "salt_net", {"head.disentangle": "linear"}),
    ),
    note="A figure: its rows are Table 4's and the paper-vs-code page's trained runs, read by "
         "replicate.analysis.task_points.",
))

# ------------------------------------------------------------------------------------------------ Figure 10
FIGURE10 = register(TableSpec(
    paper="salt", table="figure10", title="Confident detections of the stage-two baseline and of SALT-Net",
    source="SALT-Net, Figure 10 (Sec. 4.5)", metrics=FULL,
    rows=(
        Row("GFLV2 (stage-two baseline)", "gflv2"),
        Row("SALT-Net", "salt_net"),
    ),
    note="A figure: its rows are Tables 1 and 4's trained runs, read by replicate.analysis.confident_detections.",
))
