"""Mask R-CNN's mask branch against torchvision's own functions and pycocotools, and its pasting by hand."""

import functools

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils
from pycocotools.cocoeval import COCOeval
from torchvision.models.detection.roi_heads import maskrcnn_loss, paste_masks_in_image, project_masks_on_boxes

from replicate.data.profiles import build_dataset, data_config
from replicate.engine.evaluate import coco_metrics
from replicate.evaluation import to_coco_results
from replicate.models.detector import build_detector, trains_masks
from replicate.models.detectors import mask_head
from replicate.models.detectors.mask_head import MaskHeadConfig, encode_masks, mask_targets, paste_masks
from replicate.models.detectors.roi_heads import SampledRoIs
from replicate.models.zoo import model_config

STRIDES = (4, 8, 16, 32)


def _gt_masks(seed=0, sizes=((60, 80), (72, 64)), per_image=(3, 2)):
    """Per-image random blob masks (a few filled ellipses)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for (h, w), n in zip(sizes, per_image):
        ys, xs = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        c = torch.rand(n, 2, generator=g) * torch.tensor([w, h])
        r = torch.rand(n, 2, generator=g) * 20 + 6
        inside = ((xs - c[:, 0, None, None]) / r[:, 0, None, None]) ** 2 + \
                 ((ys - c[:, 1, None, None]) / r[:, 1, None, None]) ** 2 <= 1
        out.append(inside.to(torch.uint8))
    return out


def _rois_for(masks, n=7, seed=1):
    g = torch.Generator().manual_seed(seed)
    rois, gt_index = [], []
    for i, m in enumerate(masks):
        h, w = m.shape[-2:]
        xy = torch.rand(n, 2, generator=g) * torch.tensor([w - 20.0, h - 20.0])
        wh = torch.rand(n, 2, generator=g) * 30 + 4
        rois.append(torch.cat([torch.full((n, 1), float(i)), xy, xy + wh], 1))
        gt_index.append(torch.randint(0, len(m), (n,), generator=g))
    return torch.cat(rois), torch.cat(gt_index)


def test_targets_equal_torchvisions_projection_unaligned():
    masks = _gt_masks()
    rois, gt_index = _rois_for(masks)
    ours = mask_targets(masks, rois, gt_index, 28, aligned=False, binarize=False)
    theirs = torch.cat([project_masks_on_boxes(m, rois[rois[:, 0] == i, 1:], gt_index[rois[:, 0] == i], 28)
                        for i, m in enumerate(masks)])
    torch.testing.assert_close(ours, theirs)


def test_targets_by_hand():
    """A 10x10 square at (20, 30): its own box gives all ones; a RoI half over it gives a half of ones."""
    m = torch.zeros(1, 64, 64, dtype=torch.uint8)
    m[0, 30:40, 20:30] = 1
    rois = torch.tensor([[0.0, 20, 30, 30, 40], [0.0, 25, 30, 35, 40], [0.0, 40, 40, 50, 50]])
    t = mask_targets([m], rois, torch.zeros(3, dtype=torch.long), 4)
    assert torch.equal(t[0], torch.ones(4, 4))
    assert torch.equal(t[1], torch.tensor([[1.0, 1, 0, 0]] * 4))
    assert torch.equal(t[2], torch.zeros(4, 4))


def test_loss_equals_torchvisions_maskrcnn_loss(monkeypatch):
    """With torchvision's targets (unaligned, not thresholded), ``L_mask`` is its ``maskrcnn_loss``."""
    monkeypatch.setattr(mask_head, "mask_targets", functools.partial(mask_targets, aligned=False, binarize=False))
    masks = _gt_masks()
    rois, gt_index = _rois_for(masks)
    gt_labels = [torch.tensor([2, 0, 1]), torch.tensor([1, 2])]
    labels = torch.stack([gt_labels[int(i)][j] for i, j in zip(rois[:, 0], gt_index)])
    pos = torch.tensor([True, True, False, True, True, True, False, True, True, True, True, False, True, True])
    head = MaskHeadConfig(channels=8, num_convs=2, roi_size=7).build(8, 3)
    g = torch.Generator().manual_seed(2)
    feats = [torch.randn(2, 8, 72 // s + 1, 80 // s + 1, generator=g) for s in STRIDES]
    s = SampledRoIs(rois, torch.where(pos, labels, torch.tensor(3)), rois[:, 1:], gt_index, pos)
    ours = head.loss(feats, s, [{"masks": m} for m in masks])["loss_mask"]
    logits = head(feats, rois[pos])
    image = rois[pos, 0].long()
    theirs = maskrcnn_loss(logits, [rois[pos][image == i, 1:] for i in range(2)], masks, gt_labels,
                           [gt_index[pos][image == i] for i in range(2)])
    torch.testing.assert_close(ours, theirs)


def test_loss_without_positives_is_zero_and_keeps_the_graph():
    head = MaskHeadConfig(channels=8, num_convs=1, roi_size=7).build(8, 3)
    feats = [torch.randn(1, 8, 16 // s * 4, 16 // s * 4) for s in STRIDES]
    rois = torch.tensor([[0.0, 1, 1, 9, 9]])
    s = SampledRoIs(rois, torch.tensor([3]), rois[:, 1:], torch.tensor([-1]), torch.tensor([False]))
    loss = head.loss(feats, s, [{"masks": torch.zeros(0, 64, 64, dtype=torch.uint8)}])["loss_mask"]
    assert loss.item() == 0.0 and loss.requires_grad


def test_paste_by_hand():
    """A full mask fills the pixels whose centres lie in its box; a left-half mask fills the box's left half."""
    full = torch.ones(1, 28, 28)
    box = torch.tensor([[10.3, 20.6, 40.2, 50.1]])
    out = paste_masks(full, box, (64, 64))[0]
    expected = torch.zeros(64, 64, dtype=torch.bool)
    expected[21:50, 10:40] = True  # x + 0.5 in [10.3, 40.2]: x 10..39; y + 0.5 in [20.6, 50.1]: y 21..49
    assert torch.equal(out, expected)
    half = torch.zeros(1, 28, 28)
    half[..., :14] = 1
    out = paste_masks(half, torch.tensor([[8.0, 8.0, 24.0, 24.0]]), (32, 32))[0]
    expected = torch.zeros(32, 32, dtype=torch.bool)
    expected[8:24, 8:16] = True
    assert torch.equal(out, expected)


def test_paste_agrees_with_torchvision_and_chunks(monkeypatch):
    """Smooth masks in integer boxes: torchvision's paste (a resize of the box's integer size) differs only
    along the outline; chunking changes nothing."""
    g = torch.Generator().manual_seed(3)
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 28), torch.linspace(-1, 1, 28), indexing="ij")
    probs = torch.stack([torch.sigmoid(6 * (0.7 - (xs / a) ** 2 - (ys / b) ** 2))
                         for a, b in torch.rand(6, 2, generator=g) * 0.5 + 0.6])
    xy = torch.randint(0, 60, (6, 2), generator=g).float()
    boxes = torch.cat([xy, xy + torch.randint(20, 60, (6, 2), generator=g)], 1)
    ours = paste_masks(probs, boxes, (100, 120))
    theirs = paste_masks_in_image(probs[:, None], boxes, (100, 120), padding=1)[:, 0] >= 0.5
    dilated = torch.nn.functional.max_pool2d(ours[:, None].float(), 5, 1, 2)[:, 0] > 0
    eroded = -torch.nn.functional.max_pool2d(-ours[:, None].float(), 5, 1, 2)[:, 0] > 0
    assert ours.sum() > 0.5 * theirs.sum() > 0
    assert not ((ours ^ theirs) & ~(dilated & ~eroded)).any()  # they differ within 2 px of our outline only
    monkeypatch.setattr(mask_head, "PASTE_CHUNK", 100 * 120 * 2)  # two masks at a time
    assert torch.equal(mask_head.paste_masks(probs, boxes, (100, 120)), ours)


def test_rle_round_trip():
    masks = _gt_masks()[0].bool()
    rles = encode_masks(masks)
    assert all(isinstance(r["counts"], str) for r in rles)
    decoded = mask_utils.decode([{**r, "counts": r["counts"].encode()} for r in rles])
    assert np.array_equal(decoded.transpose(2, 0, 1), masks.numpy())


@pytest.fixture(scope="module")
def smoke_data(smoke_root):
    return data_config("smoke", smoke_root)


def test_dataset_masks_follow_the_image(smoke_data):
    """Masks decode as pycocotools' ``annToMask`` and are resized and flipped with the image and boxes."""
    plain = build_dataset(smoke_data, "train", train=False, masks=True)
    image, target = plain[0]
    anns = [a for a in plain.coco.imgToAnns[target["image_id"]] if not a["iscrowd"]]
    h, w = target["orig_size"]
    masks = target["masks"]
    assert masks.dtype == torch.uint8 and masks.shape == (len(anns), *image.shape[-2:])
    assert tuple(image.shape[-2:]) != (h, w)  # the test transform resized it
    for m, box in zip(masks, target["boxes"]):
        ys, xs = torch.nonzero(m, as_tuple=True)
        extent = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
        assert (extent - box).abs().max() <= 1.5  # the amodal outline fills its box
    from replicate.data.coco import CocoDetection
    raw = CocoDetection(plain.ann_file, plain.images_dir, masks=True)
    _, raw_target = raw[0]
    for m, ann in zip(raw_target["masks"], anns):
        assert np.array_equal(m.numpy(), raw.coco.annToMask(ann))
    train = build_dataset(smoke_data, "train", train=True, masks=True)
    for i in range(6):
        image, target = train[i]
        if target["flipped"]:
            for m, box in zip(target["masks"], target["boxes"]):
                xs = torch.nonzero(m, as_tuple=True)[1]
                assert abs(xs.min().item() - box[0].item()) <= 1.5 and abs(xs.max().item() + 1 - box[2].item()) <= 1.5
            break
    else:
        pytest.fail("no flipped sample among the first 6")
    assert "masks" not in build_dataset(smoke_data, "train", train=True)[0][1]


def test_mask_metrics_equal_pycocotools(smoke_data):
    """The ground truth's own masks as results (two scores, one jittered box): ``mask_AP`` is COCOeval's segm AP."""
    val = build_dataset(smoke_data, "val", train=False)
    coco = val.coco
    ids = coco.getImgIds()[:12]
    anns = [a for a in coco.loadAnns(coco.getAnnIds(imgIds=ids, iscrowd=False))]
    g = torch.Generator().manual_seed(4)
    per_image = {i: [a for a in anns if a["image_id"] == i] for i in ids}
    boxes, scores, labels, segms = [], [], [], []
    for i in ids:
        objs = per_image[i]
        xywh = torch.tensor([a["bbox"] for a in objs]).reshape(-1, 4)
        boxes.append(torch.cat([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], 1) + torch.rand(len(objs), 4, generator=g))
        scores.append(torch.rand(len(objs), generator=g))
        labels.append(torch.tensor([val.cat_to_label[a["category_id"]] for a in objs], dtype=torch.long))
        keep = torch.rand(len(objs), generator=g) > 0.3  # drop some masks' pixels: an imperfect segmentation
        rles = []
        for a, k in zip(objs, keep):
            m = torch.from_numpy(coco.annToMask(a)).bool()
            if not k:
                m[: m.shape[0] // 2] = False
            rles += encode_masks(m[None])
        segms.append(rles)
    dets = to_coco_results(ids, boxes, scores, labels, val.label_to_cat_id, segms)
    ours = coco_metrics(coco, dets, "test")
    e = COCOeval(coco, coco.loadRes([{k: v for k, v in d.items() if k != "bbox"} for d in dets]), "segm")
    e.params.imgIds = coco.getImgIds()
    e.evaluate(), e.accumulate(), e.summarize()
    assert ours["mask_AP"] == pytest.approx(e.stats[0]) and ours["mask_AP75"] == pytest.approx(e.stats[2])
    assert 0 < ours["mask_AP"] < 1 and ours["AP"] > 0


@pytest.mark.parametrize("name", ["mask_rcnn", "tsd_mask_rcnn"])
def test_mask_presets_train_and_predict_masks(name, smoke_data):
    """One training step's terms include ``loss_mask``; predictions carry a 28x28 mask per detection."""
    from replicate.data.batching import Collate
    train = build_dataset(smoke_data, "train", train=True, masks=True)
    cfg = model_config(name, "smoke", num_classes=len(train.cat_ids))
    assert trains_masks(cfg) and not trains_masks(model_config("faster_rcnn", "smoke"))
    torch.manual_seed(0)
    net = build_detector(cfg)
    batch = Collate()([train[i] for i in range(2)])
    terms = net(batch.images, batch.targets)
    assert "loss_mask" in terms and torch.isfinite(terms["loss_mask"])
    sum(terms.values()).backward()
    assert net.head.mask_head.logits.weight.grad.abs().sum() > 0
    net.eval()
    dets = net.predict(batch.images, batch.image_sizes)
    assert all(d["masks"].shape == (len(d["boxes"]), 28, 28) for d in dets)


def test_an_annotation_without_a_segmentation_is_a_clear_error(smoke_root, tmp_path):
    from replicate.data.coco import CocoDetection
    from replicate.errors import DataError
    from replicate.io import atomic_write_json, read_json
    coco = read_json(smoke_root / "annotations" / "train.json")
    first = next(a for a in coco["annotations"] if not a["iscrowd"])
    del first["segmentation"]
    ann = atomic_write_json(tmp_path / "train.json", coco)
    data = CocoDetection(ann, smoke_root / "images" / "train", masks=True)
    with pytest.raises(DataError, match=r"train\.json: an annotation of image .* no usable segmentation"):
        data[data.ids.index(first["image_id"])]


def test_training_a_mask_branch_without_masks_is_a_clear_error():
    from replicate.errors import ReplicateError
    net = build_detector(model_config("mask_rcnn", "smoke", num_classes=3))
    targets = [{"boxes": torch.tensor([[8.0, 10.0, 70.0, 80.0]]), "labels": torch.tensor([1])}]
    with pytest.raises(ReplicateError, match="mask branch trains on instance masks"):
        net(torch.randn(1, 3, 96, 128), targets)


def test_targets_and_pasting_share_one_pixel_convention(smoke_data):
    """A ground truth's own 28x28 target pasted back into its box recovers the mask (IoU >= 0.98 each; the
    unaligned crop, half a pixel off, does worse): the crop and the paste read pixel centres alike."""
    from replicate.data.coco import CocoDetection
    data = CocoDetection(*smoke_data.paths("train"), masks=True)
    aligned, unaligned = [], []
    for k in range(12):
        _, t = data[k]
        m = t["masks"]
        rois = torch.cat([torch.zeros(len(m), 1), t["boxes"]], 1)
        for out, kwargs in ((aligned, {}), (unaligned, {"aligned": False})):
            probs = mask_targets([m], rois, torch.arange(len(m)), 28, binarize=False, **kwargs)
            pasted = paste_masks(probs, t["boxes"], tuple(m.shape[-2:]))
            out += [((p & g).sum() / (p | g).sum()).item() for p, g in zip(pasted, m.bool())]
    assert len(aligned) > 20 and min(aligned) >= 0.98
    assert np.mean(unaligned) < np.mean(aligned) - 0.02
