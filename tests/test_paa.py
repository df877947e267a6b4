"""PAA (replicate.models.detectors.paa): its assignment scored by the head's own losses, its loss terms and its
score voting, against torchvision's losses and hand-computed cases."""

import math

import pytest
import torch
from torch.nn.functional import binary_cross_entropy_with_logits, one_hot
from torchvision.ops import box_iou, generalized_box_iou_loss, sigmoid_focal_loss

from replicate.models._utils import flatten_levels
from replicate.models.assigners import pad_targets, paa_assign
from replicate.models.detector import build_detector
from replicate.models.postprocess import TestConfig, nms_per_image, score_voting
from replicate.models.zoo import model_config

pytestmark = pytest.mark.usefixtures("one_thread")

TARGETS = [{"boxes": torch.tensor([[10.0, 12.0, 70.0, 90.0], [80.0, 20.0, 120.0, 60.0]]), "labels": torch.tensor([0, 2])},
           {"boxes": torch.tensor([[30.0, 30.0, 90.0, 80.0]]), "labels": torch.tensor([1])}]


@pytest.fixture(scope="module")
def paa_net():
    torch.manual_seed(0)
    net = build_detector(model_config("paa", "smoke", num_classes=3))
    images = torch.rand(2, 3, 128, 128)
    return net, images, net.raw_outputs(images)


def test_the_preset_is_the_released_config():
    cfg = model_config("paa", "coco")
    assert cfg.head.box_loss_weight == 1.3 and cfg.head.iou_loss_weight == 0.5 and cfg.head.topk == 9
    assert cfg.head.anchors.num_anchors == 1 and cfg.head.norm == "gn" and cfg.head.num_convs == 4
    t = cfg.test
    assert (t.fusion, t.threshold_on, t.nms_iou, t.score_voting, t.score_thr) == ("sqrt", "fused", 0.6, 0.025, 0.05)


def test_assignment_scores_pairs_by_the_heads_losses(paa_net):
    """The head's assignment is paa_assign with each (anchor, GT) pair scored, as torchvision computes them, by the
    focal loss summed over the classes + 1.3 x the GIoU loss of the anchor's decoded box."""
    net, _, outs = paa_net
    head = net.head
    anchors = torch.cat(head.anchors(outs["cls"]))
    cls, reg = flatten_levels(outs["cls"], 3).detach(), flatten_levels(outs["reg"], 4).detach()
    gt_boxes, gt_labels, gt_valid, _, _ = pad_targets(TARGETS)

    def oracle(img, anchor, gt):
        focal = sigmoid_focal_loss(cls[img, anchor], one_hot(gt_labels[img, gt], 3).float(), 0.25, 2,
                                   reduction="none").sum(-1)
        boxes = head.coder.decode(anchors[anchor], reg[img, anchor])
        return focal + 1.3 * generalized_box_iou_loss(boxes, gt_boxes[img, gt], reduction="none")

    expected = paa_assign(anchors, [len(a) for a in head.anchors(outs["cls"])], gt_boxes, gt_labels, gt_valid,
                          oracle)
    a, matched = head.assign(outs, TARGETS)
    assert int(a.num_pos) > 0
    assert torch.equal(a.gt_index, expected.gt_index) and torch.equal(a.labels, expected.labels)
    for b, p in a.pos_mask.nonzero().tolist():
        assert matched[b, p].tolist() == TARGETS[b]["boxes"][a.gt_index[b, p]].tolist()


def test_loss_terms_by_torchvision(paa_net):
    """Focal over all anchors / positives; 1.3 x GIoU of the positives' decoded boxes / positives; 0.5 x BCE of the
    IoU logits against the IoU of each decoded box with its ground truth / positives."""
    net, _, outs = paa_net
    head = net.head
    a, matched = head.assign(outs, TARGETS)
    terms = head.losses(outs, a, matched)
    anchors = torch.cat(head.anchors(outs["cls"]))
    b, p = a.pos_mask.nonzero(as_tuple=True)
    n = float(a.num_pos)
    pred = head.coder.decode(anchors[p], flatten_levels(outs["reg"], 4)[b, p])
    gt = matched[b, p]
    torch.testing.assert_close(terms["loss_bbox"], 1.3 * generalized_box_iou_loss(pred, gt, reduction="sum") / n)
    iou = box_iou(pred, gt).diagonal()
    logits = flatten_levels(outs["centerness"], 1)[b, p, 0]
    torch.testing.assert_close(terms["loss_iou"], 0.5 * binary_cross_entropy_with_logits(logits, iou, reduction="sum") / n)
    target = torch.zeros(2, anchors.shape[0], 3)
    target[b, p, a.labels[b, p]] = 1.0
    cls = flatten_levels(outs["cls"], 3)
    torch.testing.assert_close(terms["loss_cls"], sigmoid_focal_loss(cls, target, 0.25, 2, reduction="sum") / n)


def test_score_voting_by_hand():
    """Detection (0, 0, 10, 10) of class 0. Candidates: itself (IoU 1, score 0.9), (0, 0, 10, 12) (IoU 100/120,
    score 0.5), a class-1 box on it and a far class-0 box (neither votes). Weights 0.9 and
    exp(-(1/6)^2 / 0.025) * 0.5; the box's bottom moves to their weighted mean of 10 and 12."""
    det = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    cand = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 12.0], [0.0, 0.0, 10.0, 11.0], [50.0, 50.0, 60.0, 60.0]])
    scores, labels = torch.tensor([0.9, 0.5, 0.95, 0.8]), torch.tensor([0, 0, 1, 0])
    w1, w2 = 0.9, math.exp(-((1 - 100 / 120) ** 2) / 0.025) * 0.5
    voted = score_voting(det, torch.tensor([0]), cand, scores, labels, 0.025)
    torch.testing.assert_close(voted, torch.tensor([[0.0, 0.0, 10.0, (10 * w1 + 12 * w2) / (w1 + w2)]]))
    assert score_voting(torch.zeros(0, 4), torch.zeros(0, dtype=torch.long), cand, scores, labels, 0.025).shape == (0, 4)


def test_nms_with_score_voting_moves_boxes_only():
    """Per image: NMS keeps the same detections with and without voting; voting moves their boxes only, and an
    image's candidates never vote in another's."""
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 12.0], [0.0, 0.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    scores = torch.tensor([0.9, 0.5, 0.7, 0.6])
    labels = torch.tensor([0, 0, 0, 0])
    images = torch.tensor([0, 0, 1, 1])
    plain = nms_per_image(boxes, scores, labels, images, [(64, 64), (64, 64)], TestConfig(nms_iou=0.6), 1)
    voted = nms_per_image(boxes, scores, labels, images, [(64, 64), (64, 64)], TestConfig(nms_iou=0.6, score_voting=0.025), 1)
    for p, v in zip(plain, voted):
        assert torch.equal(p["scores"], v["scores"]) and torch.equal(p["labels"], v["labels"])
    assert voted[0]["boxes"][0, 3] > 10.0  # image 0's second candidate votes
    torch.testing.assert_close(voted[1]["boxes"], plain[1]["boxes"])  # image 1's boxes vote only for themselves
    with pytest.raises(Exception, match="positive sigma"):
        TestConfig(score_voting=0.0)


def test_score_voting_keeps_the_committed_evaluation_keys():
    """``score_voting`` joined the test config after records existed: a committed record's evaluation is still found
    under the key of its stored test config, and a config with voting gets a key of its own."""
    import json
    from pathlib import Path

    from replicate.experiments.store import test_key as evaluation_key

    root = Path(__file__).resolve().parents[1]
    record = json.loads(sorted((root / "results" / "proxy").glob("*.json"))[0].read_text())
    assert evaluation_key(TestConfig(**record["test"])) in record["evaluations"]
    assert evaluation_key(TestConfig(**{**record["test"], "score_voting": 0.025})) not in record["evaluations"]
