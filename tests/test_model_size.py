"""Model size: parameter counts against torchvision's Faster R-CNN and the TSD slides' #param column."""

import pytest
from torchvision.models.detection import fasterrcnn_resnet50_fpn

from replicate.analysis.model_size import parameter_count, parameter_table
from replicate.experiments.papers.tsd import TABLE1, TABLE1_PARAMS
from replicate.models.zoo import model_config


def test_faster_rcnn_counts_as_torchvisions_but_the_background_regressor():
    """torchvision's Faster R-CNN R50-FPN with 81 classes (80 + background) has the same backbone, FPN, RPN and
    2-fc head; its regressor also predicts deltas for the background class (4 x 1024 weights + 4 biases more).
    Built without weights it has trainable BatchNorm, whose scale and shift we count for our frozen one too."""
    theirs = sum(p.numel() for p in fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None,
                                                              num_classes=81).parameters())
    assert parameter_count(model_config("faster_rcnn", "coco", 80)) == theirs - (4 * 1024 + 4)
    trainable_bn = model_config("faster_rcnn", "coco", 80, {"backbone.norm": "bn"})
    assert parameter_count(trainable_bn) == theirs - (4 * 1024 + 4)


def test_tsd_table1_parameter_column():
    table = parameter_table(TABLE1, TABLE1_PARAMS)
    assert list(table.index) == list(TABLE1_PARAMS)
    assert table["paper (M)"].tolist() == list(TABLE1_PARAMS.values())
    assert (table["delta (M)"].abs() <= 0.1).all(), table
    assert table.loc["ResNet-50 + D_s8", "ours (M)"] == pytest.approx(81.1, abs=0.05)
