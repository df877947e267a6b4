"""Generator of the synthetic misalignment benchmark (see :mod:`replicate.data.synth_spec`).

Every image is produced from its own random stream, seeded by ``(seed, split, index)``, in two steps:
:func:`sample_layout` places objects, distractors and the crowd region (pure geometry, cheap, used by
the distribution tests), then :func:`render` paints the pixels. The same seed gives byte-identical
annotation files; images are JPEG (quality 92, no chroma subsampling, so thin gratings survive).

Hard negatives: bodies without keys and keys without bodies are painted but not annotated, so a
detector has to find the body *and* read the key. Masks are amodal: an object's polygon is its whole
body outline; a new body never covers an earlier object's key, so every annotated key stays visible.
"""

from __future__ import annotations

import io
import json
import math
import multiprocessing as mp
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_utils
from tqdm import tqdm

from .. import profiles
from ..errors import DataError
from ..io import atomic_write_bytes, atomic_write_json, read_json
from .synth_spec import CLASSES, SynthProfile

GENERATOR_VERSION = 1
SPLITS = {"train": 0, "val": 1}
_POLY_VERTICES = 32


@dataclass
class Key:
    cx: float
    cy: float
    radius: float
    class_index: int
    phase: float
    contrast: float


@dataclass
class Body:
    cx: float
    cy: float
    a: float  # half width
    b: float  # half height
    colour: tuple[float, float, float]
    light: tuple[float, float]
    key: Key | None = None

    @property
    def xyxy(self) -> np.ndarray:
        return np.array([self.cx - self.a, self.cy - self.b, self.cx + self.a, self.cy + self.b])


@dataclass
class CrowdRegion:
    class_index: int
    bodies: list[Body]


@dataclass
class Layout:
    width: int
    height: int
    objects: list[Body] = field(default_factory=list)  # annotated, painted in this order
    distractors: list[Body] = field(default_factory=list)  # bodies without keys, painted first
    floating_keys: list[Key] = field(default_factory=list)  # keys without bodies
    crowd: CrowdRegion | None = None
    clutter: list[tuple[list[tuple[float, float]], tuple[int, int, int]]] = field(default_factory=list)
    crowded: bool = False


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The random stream of one image: independent of every other image and of worker count."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([seed, SPLITS[split], index])))


# ----------------------------------------------------------------------------------------- layout


def _box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    if len(boxes) == 0:
        return np.zeros(0)
    lt = np.maximum(box[:2], boxes[:, :2])
    rb = np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=1)
    area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])  # noqa: E731
    return inter / (area(box) + area(boxes) - inter)


def _intersects(box: np.ndarray, boxes: np.ndarray) -> bool:
    if len(boxes) == 0:
        return False
    return bool(np.any((box[0] < boxes[:, 2]) & (boxes[:, 0] < box[2]) & (box[1] < boxes[:, 3]) & (boxes[:, 1] < box[3])))


def _sample_size(rng: np.random.Generator, sqrt_area: tuple[float, float]) -> float:
    return math.exp(rng.uniform(math.log(sqrt_area[0]), math.log(sqrt_area[1])))


def _sample_body(rng: np.random.Generator, p: SynthProfile, w: int, h: int, s: float) -> Body:
    """A body of size ``s = sqrt(area)`` with a random aspect ratio, position and look."""
    lim = 5.0 if rng.random() < p.wide_aspect_prob else 2.0
    ar = math.exp(rng.uniform(-math.log(lim), math.log(lim)))  # width / height
    bw, bh = s * math.sqrt(ar), s / math.sqrt(ar)
    shrink = min(1.0, (w - 4) / bw, (h - 4) / bh)
    bw, bh = max(bw * shrink, 3.0), max(bh * shrink, 3.0)
    cx = rng.uniform(bw / 2 + 1, w - bw / 2 - 1)
    cy = rng.uniform(bh / 2 + 1, h - bh / 2 - 1)
    hue = rng.uniform(0, 1)
    colour = tuple(float(c) for c in _hsv_to_rgb(hue, rng.uniform(0.25, 0.65), rng.uniform(0.45, 0.85)))
    angle = rng.uniform(0, 2 * math.pi)
    return Body(cx, cy, bw / 2, bh / 2, colour, (math.cos(angle), math.sin(angle)))


def _hsv_to_rgb(h: float, s: float, v: float) -> tuple[float, float, float]:
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]


def _attach_key(rng: np.random.Generator, p: SynthProfile, body: Body, class_index: int) -> None:
    """Place the key disc off-centre: offset = r * half-extent along a random direction, r in p.key_offset.

    The offset shrinks (x0.85 per step) only when the disc would leave the body's superellipse, which
    happens for thin bodies with large r; the realised offset is what the annotation records.
    """
    radius = max(p.key_size * min(body.a, body.b), 1.0)
    r = rng.uniform(*p.key_offset)
    theta = rng.uniform(0, 2 * math.pi)
    ring = np.linspace(0, 2 * math.pi, 16, endpoint=False)
    for _ in range(12):
        kx, ky = r * body.a * math.cos(theta), r * body.b * math.sin(theta)
        px = (kx + radius * np.cos(ring)) / body.a
        py = (ky + radius * np.sin(ring)) / body.b
        if np.all(px**4 + py**4 <= 0.85):
            break
        r *= 0.85
    body.key = Key(body.cx + kx, body.cy + ky, radius, class_index, rng.uniform(0, 2 * math.pi), rng.uniform(0.7, 1.0))


def _key_box(key: Key) -> np.ndarray:
    return np.array([key.cx - key.radius, key.cy - key.radius, key.cx + key.radius, key.cy + key.radius])


def _sample_crowd(rng: np.random.Generator, p: SynthProfile, w: int, h: int) -> CrowdRegion:
    """A packed group of tiny same-class objects, annotated once with iscrowd=1."""
    cls = int(rng.integers(len(CLASSES)))
    cell = rng.uniform(9.0, 14.0)
    cols, rows = int(rng.integers(3, 6)), int(rng.integers(2, 4))
    x0 = rng.uniform(2, max(3.0, w - cols * cell - 2))
    y0 = rng.uniform(2, max(3.0, h - rows * cell - 2))
    bodies = []
    for i in range(rows):
        for j in range(cols):
            body = _sample_body(rng, p, w, h, rng.uniform(cell * 0.7, cell * 0.9))
            body.a, body.b = min(body.a, cell * 0.45), min(body.b, cell * 0.45)
            body.cx, body.cy = x0 + (j + 0.5) * cell, y0 + (i + 0.5) * cell
            _attach_key(rng, p, body, cls)
            bodies.append(body)
    return CrowdRegion(cls, bodies)


def sample_layout(rng: np.random.Generator, p: SynthProfile) -> Layout:
    """Place everything in one image (geometry only)."""
    w = int(rng.integers(p.image_side[0], p.image_side[1] + 1))
    h = int(rng.integers(p.image_side[0], p.image_side[1] + 1))
    lay = Layout(w, h)
    for _ in range(rng.poisson(p.clutter)):
        pts = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(3)]
        lay.clutter.append((pts, tuple(int(c) for c in rng.integers(30, 225, 3))))
    lay.distractors = [
        _sample_body(rng, p, w, h, _sample_size(rng, p.sqrt_area)) for _ in range(rng.poisson(p.distractor_bodies))
    ]

    blocked = np.zeros((0, 4))  # crowd region: no annotated object may touch it
    if rng.random() < p.crowd_region_prob:
        lay.crowd = _sample_crowd(rng, p, w, h)
        blocked = np.stack([b.xyxy for b in lay.crowd.bodies]).reshape(-1, 4)
        blocked = np.concatenate([blocked.min(0)[:2], blocked.max(0)[2:]])[None]

    empty = rng.random() < p.empty_prob
    lay.crowded = not empty and rng.random() < p.crowded_prob
    lo, hi = p.crowded_objects if lay.crowded else p.objects_per_image
    n_objects = 0 if empty else int(rng.integers(lo, hi + 1))
    max_iou = p.crowded_max_iou if lay.crowded else p.max_iou
    sizes = (p.sqrt_area[0], p.sqrt_area[1] * (0.5 if lay.crowded else 1.0))
    boxes, key_boxes = np.zeros((0, 4)), np.zeros((0, 4))
    # Largest first, each keeping its size over placement retries: otherwise the overlap rules reject
    # large objects more often and the size distribution drifts towards small ones.
    for size in sorted((_sample_size(rng, sizes) for _ in range(n_objects)), reverse=True):
        for _attempt in range(25):
            body = _sample_body(rng, p, w, h, size)
            _attach_key(rng, p, body, int(rng.integers(len(CLASSES))))
            box = body.xyxy
            if _intersects(box, blocked) or _intersects(box, key_boxes):
                continue
            if len(boxes) and _box_iou(box, boxes).max() > max_iou:
                continue
            if _intersects(_key_box(body.key), boxes):  # each key overlaps only its own body
                continue
            lay.objects.append(body)
            boxes = np.vstack([boxes, box])
            key_boxes = np.vstack([key_boxes, _key_box(body.key)])
            break

    all_bodies = np.array([b.xyxy for b in lay.distractors + lay.objects + (lay.crowd.bodies if lay.crowd else [])])
    all_bodies = all_bodies.reshape(-1, 4)
    for _ in range(rng.poisson(p.floating_keys)):
        radius = rng.uniform(3.0, 12.0)
        key = Key(rng.uniform(radius, w - radius), rng.uniform(radius, h - radius), radius,
                  int(rng.integers(len(CLASSES))), rng.uniform(0, 2 * math.pi), rng.uniform(0.7, 1.0))
        if not _intersects(_key_box(key) + np.array([-2, -2, 2, 2]), all_bodies):
            lay.floating_keys.append(key)
    return lay


# ------------------------------------------------------------------------------------- rendering


def _background(rng: np.random.Generator, lay: Layout) -> np.ndarray:
    grid = (rng.uniform(0.15, 0.85, (4, 4, 3)) * 255).astype(np.uint8)
    img = Image.fromarray(grid).resize((lay.width, lay.height), Image.BICUBIC)
    draw = ImageDraw.Draw(img)
    for pts, colour in lay.clutter:
        draw.polygon(pts, fill=colour)
    return np.asarray(img, dtype=np.float32) / 255.0


def _region(x0: float, y0: float, x1: float, y1: float, w: int, h: int):
    ix0, iy0 = max(int(math.floor(x0)) - 1, 0), max(int(math.floor(y0)) - 1, 0)
    ix1, iy1 = min(int(math.ceil(x1)) + 1, w), min(int(math.ceil(y1)) + 1, h)
    xs = np.arange(ix0, ix1, dtype=np.float32) + 0.5
    ys = np.arange(iy0, iy1, dtype=np.float32) + 0.5
    return (slice(iy0, iy1), slice(ix0, ix1)), xs[None, :], ys[:, None]


def _paint_body(img: np.ndarray, rng: np.random.Generator, body: Body) -> None:
    h, w = img.shape[:2]
    sl, xs, ys = _region(body.cx - body.a, body.cy - body.b, body.cx + body.a, body.cy + body.b, w, h)
    dx, dy = (xs - body.cx) / body.a, (ys - body.cy) / body.b
    rho = (dx**4 + dy**4) ** 0.25  # 0 at the centre, 1 on the outline
    inside_px = (1.0 - rho) * min(body.a, body.b)  # approximate distance to the outline, pixels
    alpha = np.clip(0.5 + inside_px, 0.0, 1.0)[..., None]
    rim = np.clip(1.0 - inside_px / 2.0, 0.0, 1.0)
    shade = (1.0 + 0.18 * (dx * body.light[0] + dy * body.light[1])) * (1.0 - 0.45 * rim)
    texture = rng.normal(0.0, 0.035, rho.shape).astype(np.float32)
    colour = np.asarray(body.colour, dtype=np.float32) * (shade + texture)[..., None]
    img[sl] = img[sl] * (1 - alpha) + colour * alpha
    if body.key is not None:
        _paint_key(img, body.key)


def key_pattern(spec_index: int, u: np.ndarray, v: np.ndarray, phase: float) -> np.ndarray:
    """The class texture in key coordinates (u, v in [-1, 1] across the disc), values in [-1, 1]."""
    spec = CLASSES[spec_index]
    ang = math.radians(spec.angle_deg)
    pu, pv = u * math.cos(ang) + v * math.sin(ang), -u * math.sin(ang) + v * math.cos(ang)
    k = math.pi * spec.cycles
    if spec.pattern == "bars":
        return np.sin(k * pu + phase)
    if spec.pattern == "checker":
        return np.tanh(3.0 * np.sin(k * pu + phase) * np.sin(k * pv + phase))
    if spec.pattern == "rings":
        return np.sin(k * np.sqrt(u**2 + v**2) + phase)
    raise ValueError(f"unknown key pattern {spec.pattern!r}")


def _paint_key(img: np.ndarray, key: Key) -> None:
    h, w = img.shape[:2]
    r = key.radius
    sl, xs, ys = _region(key.cx - r, key.cy - r, key.cx + r, key.cy + r, w, h)
    u, v = (xs - key.cx) / r, (ys - key.cy) / r
    alpha = np.clip(r - np.sqrt((xs - key.cx) ** 2 + (ys - key.cy) ** 2) + 0.5, 0.0, 1.0)[..., None]
    grey = 0.5 + 0.42 * key.contrast * key_pattern(key.class_index, u, v, key.phase)
    img[sl] = img[sl] * (1 - alpha) + grey[..., None] * alpha


def render(rng: np.random.Generator, lay: Layout) -> np.ndarray:
    """Paint a layout: background, clutter, distractor bodies, crowd, objects, floating keys, noise."""
    img = _background(rng, lay)
    for body in lay.distractors + (lay.crowd.bodies if lay.crowd else []) + lay.objects:
        _paint_body(img, rng, body)
    for key in lay.floating_keys:
        _paint_key(img, key)
    img += rng.normal(0.0, 0.015, img.shape).astype(np.float32)
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# ------------------------------------------------------------------------------------ annotation


def body_polygon(body: Body) -> list[float]:
    """The superellipse outline as a COCO polygon (32 vertices; includes the four extreme points)."""
    t = np.linspace(0, 2 * np.pi, _POLY_VERTICES, endpoint=False)
    c, s = np.cos(t), np.sin(t)
    x = body.cx + body.a * np.sign(c) * np.sqrt(np.abs(c))
    y = body.cy + body.b * np.sign(s) * np.sqrt(np.abs(s))
    return [round(float(val), 2) for val in np.stack([x, y], 1).ravel()]


def _uncompressed_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE (column-major run lengths starting with a run of zeros)."""
    flat = np.asfortranarray(mask).ravel(order="F").astype(np.int8)
    change = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    counts = np.diff(np.concatenate([[0], change])).tolist()
    return {"counts": [int(c) for c in counts], "size": [int(mask.shape[0]), int(mask.shape[1])]}


def _object_annotation(body: Body, w: int, h: int) -> dict:
    poly = body_polygon(body)
    rle = mask_utils.frPyObjects([poly], h, w)
    area = float(mask_utils.area(mask_utils.merge(rle)))
    xs, ys = poly[0::2], poly[1::2]
    key = body.key
    return {
        "category_id": CLASSES[key.class_index].category_id,
        "bbox": [round(min(xs), 2), round(min(ys), 2), round(max(xs) - min(xs), 2), round(max(ys) - min(ys), 2)],
        "area": area,
        "iscrowd": 0,
        "segmentation": [poly],
        "key_box": [round(key.cx - key.radius, 2), round(key.cy - key.radius, 2), round(2 * key.radius, 2), round(2 * key.radius, 2)],
    }


def _crowd_annotation(crowd: CrowdRegion, w: int, h: int) -> dict:
    rles = mask_utils.frPyObjects([body_polygon(b) for b in crowd.bodies], h, w)
    mask = mask_utils.decode(mask_utils.merge(rles))
    ys, xs = np.nonzero(mask)
    x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
    return {
        "category_id": CLASSES[crowd.class_index].category_id,
        "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)],
        "area": float(mask.sum()),
        "iscrowd": 1,
        "segmentation": _uncompressed_rle(mask),
    }


def make_image(profile: SynthProfile, seed: int, split: str, index: int) -> tuple[Layout, np.ndarray, list[dict]]:
    """One image: its layout, pixels (H, W, 3 uint8) and annotations (without ids)."""
    rng = image_rng(seed, split, index)
    lay = sample_layout(rng, profile)
    pixels = render(rng, lay)
    anns = [_object_annotation(b, lay.width, lay.height) for b in lay.objects]
    if lay.crowd is not None:
        anns.append(_crowd_annotation(lay.crowd, lay.width, lay.height))
    return lay, pixels, anns


def image_id_for(index: int) -> int:
    """Image ids are odd numbers (non-contiguous, as COCO's are)."""
    return 2 * index + 1


def _work(args: tuple[SynthProfile, int, str, int, str]) -> tuple[dict, list[dict]]:
    profile, seed, split, index, images_dir = args
    lay, pixels, anns = make_image(profile, seed, split, index)
    image_id = image_id_for(index)
    file_name = f"{image_id:012d}.jpg"
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG", quality=profile.jpeg_quality, subsampling=0)
    atomic_write_bytes(Path(images_dir) / file_name, buf.getvalue())
    record = {"id": image_id, "file_name": file_name, "width": lay.width, "height": lay.height}
    if lay.crowded:
        record["crowded"] = True
    return record, anns


def categories() -> list[dict]:
    return [
        {"id": c.category_id, "name": c.name, "supercategory": "key", "pattern": c.pattern,
         "angle_deg": c.angle_deg, "cycles": c.cycles}
        for c in CLASSES
    ]


def _manifest(profile: SynthProfile, seed: int) -> dict:
    """What identifies a generated dataset, in its JSON form (tuples become lists)."""
    return json.loads(json.dumps({"generator_version": GENERATOR_VERSION, "seed": seed, "profile": asdict(profile)}))


def dataset_paths(root: str | os.PathLike, split: str) -> tuple[Path, Path]:
    """``(annotation file, images folder)`` of one split of a generated dataset."""
    root = Path(root)
    return root / "annotations" / f"{split}.json", root / "images" / split


def synth_profile(name: str) -> SynthProfile:
    """The generated dataset of profile ``name`` (see :mod:`replicate.profiles`)."""
    data = profiles.PROFILES[name].synth if name in profiles.PROFILES else None
    if data is None:
        raise DataError(f"unknown synthetic profile {name!r}; choose from {list(profiles.GENERATED)}")
    return data


def generate(
    profile: str | SynthProfile,
    out: str | os.PathLike,
    *,
    seed: int = 0,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
    splits: Sequence[str] = tuple(SPLITS),
) -> dict[str, Path]:
    """Write ``out/annotations/{train,val}.json`` and ``out/images/{train,val}/*.jpg``.

    Already-complete output with the same profile, seed, splits and generator version is left as it is
    (the manifest ``out/dataset.json`` is written last, so an interrupted run is redone on the next call).
    ``splits=("val",)`` writes the validation split only: the images are those of a full generation with
    the same seed (each image has its own random stream), and the manifest names the split so that the
    folder is never taken for a complete dataset.
    """
    if isinstance(profile, str):
        profile = synth_profile(profile)
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise DataError(f"unknown split(s) {unknown or list(splits)}; choose from {list(SPLITS)}")
    out = Path(out)
    manifest_path = out / "dataset.json"
    manifest = _manifest(profile, seed)
    if tuple(splits) != tuple(SPLITS):
        manifest["splits"] = list(splits)
    annotation_files = {split: dataset_paths(out, split)[0] for split in splits}
    if not overwrite and manifest_path.is_file() and all(p.is_file() for p in annotation_files.values()):
        if read_json(manifest_path) == manifest:
            return annotation_files
    workers = workers or min(2, os.cpu_count() or 1)
    for split in splits:
        ann_file, images_dir = dataset_paths(out, split)
        n = profile.n_train if split == "train" else profile.n_val
        jobs = [(profile, seed, split, i, str(images_dir)) for i in range(n)]
        images_dir.mkdir(parents=True, exist_ok=True)
        bar = dict(total=n, desc=f"synth {profile.name}/{split}", disable=not progress, unit="img")
        if workers > 1 and n > 32:
            with mp.get_context("fork").Pool(workers) as pool:
                results = list(tqdm(pool.imap(_work, jobs, chunksize=16), **bar))
        else:
            results = [_work(job) for job in tqdm(jobs, **bar)]
        images, annotations = [], []
        for record, anns in results:
            images.append(record)
            for ann in anns:
                annotations.append({"id": len(annotations) + 1, "image_id": record["id"], **ann})
        coco = {
            "info": {"description": f"synthetic misalignment benchmark, profile {profile.name}, split {split}",
                     "version": str(GENERATOR_VERSION), "seed": seed},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories(),
        }
        atomic_write_json(ann_file, coco)
    atomic_write_json(manifest_path, manifest, indent=1)
    return annotation_files
