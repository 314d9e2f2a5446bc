"""COCO panoptic data in the official panopticapi layout, open-set splits, and the synthetic
world written in that layout.

Layout (COCO panoptic val2017, and the synthetic world the same way)::

    <root>/<split>/<file_name>.jpg|png                 images (``images[].file_name``)
    <root>/annotations/panoptic_<split>.json           images, annotations, categories
    <root>/annotations/panoptic_<split>/<name>.png     RGB panoptic ids, id = R + 256 G + 256^2 B

``annotations[].segments_info`` lists ``{id, category_id, iscrowd, area, ...}``; id 0 (and
any id not listed) is void; ``categories[]`` carry ``isthing``.

Open set (Mask2Anomaly, open-set panoptic, cumulative splits of the COCO thing classes):
:data:`UNKNOWN_SPLITS` 5 / 10 / 20 %. The GT of those classes becomes one "unknown thing"
class; the other categories are the known classes, numbered 0..K-1 in category-id order,
the unknown class is K, void is 255.

The synthetic world (:func:`ensure_panoptic_world`) renders the anomaly-track frames of
:mod:`posthoc.bench.synthetic` (same seeds, so the same images) with instance GT: its 13
classes are categories 1..13 (person and car are things, the rest stuff) and the anomaly
objects are category 14 ``anomaly``, a thing class that is always held out as unknown.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from posthoc.adapters.io import write_bytes_atomic, write_json_atomic

from .datasets import CorruptFileError, DatasetLayoutError, read_image

__all__ = ["SYNTHETIC_UNKNOWN", "UNKNOWN_SPLITS", "CocoPanopticReader", "PanopticFrame", "ensure_panoptic_world",
           "id2rgb", "rgb2id", "write_panoptic_png"]

_U5 = ["car", "cow", "pizza", "toilet"]
_U10 = _U5 + ["boat", "tie", "zebra", "stop sign"]
_U20 = _U10 + ["dining table", "banana", "bicycle", "cake", "sink", "cat", "keyboard", "bear"]
#: Mask2Anomaly's cumulative unknown splits (percent of the COCO thing classes -> names)
UNKNOWN_SPLITS: dict[int, list[str]] = {5: _U5, 10: _U10, 20: _U20}
#: the synthetic world's unknown thing class
SYNTHETIC_UNKNOWN = ["anomaly"]
IGNORE = 255


def rgb2id(rgb: np.ndarray) -> np.ndarray:
    """(H,W,3) uint8 RGB -> (H,W) int64 panoptic ids (panopticapi ``rgb2id``)."""
    c = rgb.astype(np.int64)
    return c[..., 0] + 256 * c[..., 1] + 256 * 256 * c[..., 2]


def id2rgb(ids: np.ndarray) -> np.ndarray:
    """(H,W) int panoptic ids < 2^24 -> (H,W,3) uint8 RGB (panopticapi ``id2rgb``)."""
    i = np.asarray(ids, np.int64)
    return np.stack([i % 256, (i // 256) % 256, (i // 65536) % 256], axis=-1).astype(np.uint8)


def write_panoptic_png(path: os.PathLike, ids: np.ndarray) -> None:
    """Write a panoptic id map as an RGB PNG, atomically."""
    ok, buf = cv2.imencode(".png", cv2.cvtColor(id2rgb(ids), cv2.COLOR_RGB2BGR))
    if not ok:
        raise CorruptFileError(f"could not encode {path} as PNG")
    write_bytes_atomic(path, buf.tobytes())


@dataclass
class PanopticFrame:
    """One frame: ``image`` (H,W,3) uint8; ``semantic`` (H,W) int64 known id 0..K-1, K =
    unknown, 255 = void; ``instance`` (H,W) int64 GT segment id (0 = void); ``crowd`` (H,W)
    bool; ``id`` (file stem), ``image_id`` and ``file_name`` (of the panoptic PNG)."""

    image: np.ndarray
    semantic: np.ndarray
    instance: np.ndarray
    crowd: np.ndarray
    id: str
    image_id: object
    file_name: str


class CocoPanopticReader:
    """Reads ``<root>`` in the panopticapi layout with ``unknown_names`` held out.

    Attributes:
        categories: the JSON's categories (id order); ``known``: the known ones (index = known
            id); ``unknown_ids``: category ids mapped to the unknown class; ``num_known`` (K);
            ``known_thing_ids``: known ids of the known thing classes; ``unknown_id`` (= K).

    Raises:
        DatasetLayoutError: missing JSON/folders, or a name of ``unknown_names`` that no
            category has.
    """

    def __init__(self, root: str | os.PathLike, split: str, unknown_names: Sequence[str]) -> None:
        self.root = Path(root).expanduser()
        self.split = split
        self.name = "coco-panoptic"
        self.json_path = self.root / "annotations" / f"panoptic_{split}.json"
        self.png_dir = self.root / "annotations" / f"panoptic_{split}"
        self.image_dir = self.root / split
        if not self.root.is_dir():
            raise DatasetLayoutError(f"coco-panoptic: {self.root} is not a folder")
        for p, what in ((self.json_path, "file"), (self.png_dir, "folder"), (self.image_dir, "folder")):
            ok = p.is_file() if what == "file" else p.is_dir()
            if not ok:
                raise DatasetLayoutError(
                    f"coco-panoptic: expected the {what} {p} (layout: <root>/{split}/ images, "
                    f"<root>/annotations/panoptic_{split}.json and <root>/annotations/panoptic_{split}/ PNGs)")
        try:
            meta = json.loads(self.json_path.read_text())
            cats = sorted(meta["categories"], key=lambda c: c["id"])
            anns = list(meta["annotations"])
            images = {im["id"]: im for im in meta["images"]}
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise CorruptFileError(f"coco-panoptic: {self.json_path} is not a panoptic JSON with images, "
                                   f"annotations and categories ({type(e).__name__}: {e})") from None
        names = {c["name"]: c["id"] for c in cats}
        missing = [n for n in unknown_names if n not in names]
        if missing:
            raise DatasetLayoutError(f"coco-panoptic: unknown classes {missing} are not categories of "
                                     f"{self.json_path} (it has {sorted(names)[:20]}...)")
        self.categories = cats
        self.unknown_ids = sorted(names[n] for n in unknown_names)
        self.known = [c for c in cats if c["id"] not in self.unknown_ids]
        self.num_known = len(self.known)
        self.unknown_id = self.num_known
        self.known_thing_ids = [i for i, c in enumerate(self.known) if int(c.get("isthing", 0)) == 1]
        self.known_names = [c["name"] for c in self.known]
        lut = {c["id"]: i for i, c in enumerate(self.known)} | {u: self.unknown_id for u in self.unknown_ids}
        self._lut = lut
        self.anns = sorted(anns, key=lambda a: a["file_name"])
        self.images = images

    def __len__(self) -> int:
        return len(self.anns)

    def frames(self, limit: int | None = None) -> Iterator[PanopticFrame]:
        """Yield the frames (sorted by panoptic file name), at most ``limit``."""
        for n, ann in enumerate(self.anns):
            if limit is not None and n >= limit:
                return
            yield self.load(ann)

    def load(self, ann: dict) -> PanopticFrame:
        png = self.png_dir / ann["file_name"]
        im = self.images.get(ann["image_id"])
        if im is None:
            raise CorruptFileError(f"coco-panoptic: annotation {ann['file_name']} names image_id "
                                   f"{ann['image_id']!r}, which {self.json_path} does not list")
        image = read_image(self.image_dir / im["file_name"])
        raw = cv2.imread(str(png), cv2.IMREAD_COLOR)
        if raw is None:
            raise CorruptFileError(f"coco-panoptic: cannot read the panoptic PNG {png}")
        ids = rgb2id(cv2.cvtColor(raw, cv2.COLOR_BGR2RGB))
        if ids.shape != image.shape[:2]:
            raise CorruptFileError(f"coco-panoptic: {png} is {ids.shape}, its image {image.shape[:2]}")
        sem = np.full(ids.shape, IGNORE, np.int64)
        inst = np.zeros(ids.shape, np.int64)
        crowd = np.zeros(ids.shape, bool)
        for seg in ann["segments_info"]:
            cid = seg["category_id"]
            if cid not in self._lut:
                raise CorruptFileError(f"coco-panoptic: {png}: segment {seg['id']} has category {cid}, "
                                       "not in the JSON's categories")
            m = ids == seg["id"]
            sem[m] = self._lut[cid]
            inst[m] = seg["id"]
            if int(seg.get("iscrowd", 0)) == 1:
                crowd |= m
        return PanopticFrame(image, sem, inst, crowd, Path(ann["file_name"]).stem, ann["image_id"],
                             ann["file_name"])


# ----------------------------------------------------------------------------- synthetic world
def _synthetic_categories() -> list[dict]:
    from .synthetic import CLASS_NAMES, THING_IDS

    cats = [{"id": i + 1, "name": n, "isthing": int(i in THING_IDS), "supercategory": "synthetic"}
            for i, n in enumerate(CLASS_NAMES)]
    return cats + [{"id": len(CLASS_NAMES) + 1, "name": SYNTHETIC_UNKNOWN[0], "isthing": 1,
                    "supercategory": "synthetic"}]


def _panoptic_of(classes: np.ndarray, label: np.ndarray, inst: np.ndarray) -> tuple[np.ndarray, list[dict]]:
    """Panoptic ids and segments_info of one synthetic frame (stuff per class, things per instance)."""
    from .synthetic import CLASS_NAMES, THING_IDS

    n_cls = len(CLASS_NAMES)
    cat = np.where(label == 1, n_cls + 1, np.where(classes < n_cls, classes.astype(np.int64) + 1, 0))
    thing = (label == 1) | np.isin(classes, THING_IDS)
    key = np.where(cat > 0, cat * 4096 + np.where(thing, inst, 0), 0)
    keys, inv = np.unique(key, return_inverse=True)
    inv = inv.reshape(key.shape)
    pan = np.zeros(key.shape, np.int64)
    info: list[dict] = []
    for j, k in enumerate(keys.tolist()):
        if k == 0:
            continue
        sid = len(info) + 1
        m = inv == j
        pan[m] = sid
        ys, xs = np.nonzero(m)
        info.append({"id": sid, "category_id": int(k // 4096), "iscrowd": 0, "area": int(m.sum()),
                     "bbox": [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1),
                              int(ys.max() - ys.min() + 1)]})
    return pan, info


def ensure_panoptic_world(root: os.PathLike | str | None = None, *, split: str = "test",
                          n_frames: int | None = None, size: Sequence[int] | None = None, seed: int = 0) -> Path:
    """The synthetic world's ``split`` in the panopticapi layout (generated on first use, atomically).

    Frames are the anomaly-track frames of :func:`posthoc.bench.synthetic.ensure_world` for the
    same arguments (same seeds and images); the files go to ``<world root>/panoptic/`` and never
    touch the anomaly/obstacle track folders. Returns the panoptic root.
    """
    from . import synthetic as syn

    cfg = syn.world_config(split=split, track="anomaly", n_frames=n_frames, size=size, seed=seed)
    cfg_p = cfg | {"layout": "coco-panoptic"}
    base = syn.world_root(root, cfg) / "panoptic"

    def build(tmp: Path) -> dict:
        (tmp / split).mkdir()
        (tmp / "annotations" / f"panoptic_{split}").mkdir(parents=True)
        images, anns = [], []
        digest = hashlib.sha256()
        for i, fid in enumerate(syn.frame_ids(split, cfg["n_frames"])):
            fr = syn.render_frame(syn._frame_seed(cfg, i), cfg["size"], track="anomaly", anomalies=cfg["anomalies"],
                                  instances=True)
            syn._write_png(tmp / split / f"{fid}.png", fr.image)
            assert fr.classes is not None and fr.label is not None  # a rendered frame has both
            pan, info = _panoptic_of(fr.classes, fr.label, fr.extras["instances"])
            write_panoptic_png(tmp / "annotations" / f"panoptic_{split}" / f"{fid}.png", pan)
            digest.update(fr.image.tobytes())
            digest.update(pan.tobytes())
            images.append({"id": i, "file_name": f"{fid}.png", "height": cfg["size"][0], "width": cfg["size"][1]})
            anns.append({"image_id": i, "file_name": f"{fid}.png", "segments_info": info})
        write_json_atomic(tmp / "annotations" / f"panoptic_{split}.json",
                          {"images": images, "annotations": anns, "categories": _synthetic_categories()})
        return {"content_sha256": digest.hexdigest(), "unknown": SYNTHETIC_UNKNOWN}

    return syn.ensure_derived_world(base, split, cfg_p, build)
