"""Readers of the semantic-segmentation data sets (domain adaptation and zero-shot tracks).

Every reader is a :class:`posthoc.bench.datasets.Dataset` whose frames carry the
evaluation class map in ``Frame.classes`` ((H,W) uint8 class ids, 255 = ignored) and
``Frame.label = None`` (no anomaly labels). Layouts follow the official releases:

* **Cityscapes** (cityscapesScripts): ``leftImg8bit/<split>/<city>/<stem>_leftImg8bit.png``
  and ``gtFine/<split>/<city>/<stem>_gtFine_labelIds.png``; label ids map to the 19
  trainIds with :data:`CITYSCAPES_LABELS` (``helpers/labels.py``), everything else -> 255.
* **ACDC**: ``rgb_anon/<condition>/<split>/<sequence>/<stem>_rgb_anon.png`` and
  ``gt/<condition>/<split>/<sequence>/<stem>_gt_labelIds.png`` (condition fog, night,
  rain, snow; Cityscapes label ids).
* **Dark Zurich**: ``rgb_anon/<split>/night/<sequence>/<stem>_rgb_anon.png`` and
  ``gt/<split>/night/<sequence>/<stem>_gt_labelIds.png`` (Cityscapes label ids).
* **PASCAL VOC 2012**: ``JPEGImages/<id>.jpg``, ``SegmentationClass/<id>.png`` (palette
  PNG of class indices 0..20, 255 = boundary/void), ``ImageSets/Segmentation/<split>.txt``.
  ZS3 (ZegFormer's ``voc_20`` setting) evaluates the 20 object classes: background
  (index 0) is ignored, index i becomes class i-1.
* **COCO-Stuff** (the detectron2 preparation ZegFormer uses,
  ``datasets/prepare_coco_stuff_164k_sem_seg.py``): ``images/<split>2017/<id>.jpg`` and
  ``stuffthingmaps_detectron2/<split>2017/<id>.png`` holding the 171 contiguous class ids
  0..170 (255 = unlabelled). The class list is :data:`COCO_STUFF_CLASSES`.

A missing folder or frame set raises :class:`DatasetLayoutError` with the expected layout;
a label id outside the data set's table raises :class:`CorruptFileError` naming the file,
the value and the allowed ids.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .datasets import (
    CorruptFileError,
    Dataset,
    DatasetLayoutError,
    Frame,
    FrameRef,
    _listing,
    read_image,
    read_label_png,
)

__all__ = [
    "CITYSCAPES_LABELS",
    "CITYSCAPES_TRAIN_CLASSES",
    "COCO_STUFF_CLASSES",
    "COCO_STUFF_UNSEEN",
    "LABELID_TO_TRAINID",
    "VOC_CLASSES",
    "VOC_UNSEEN",
    "CityscapesLikeReader",
    "CocoStuffReader",
    "SemanticFolderReader",
    "VOCReader",
]

#: (name, labelId, trainId) of cityscapesScripts ``helpers/labels.py`` (trainId 255 = ignored in
#: evaluation; "license plate" has labelId -1 and never occurs in a labelIds PNG)
CITYSCAPES_LABELS: tuple[tuple[str, int, int], ...] = (
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255), ("out of roi", 3, 255),
    ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255), ("road", 7, 0), ("sidewalk", 8, 1),
    ("parking", 9, 255), ("rail track", 10, 255), ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4),
    ("guard rail", 14, 255), ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8), ("terrain", 22, 9), ("sky", 23, 10),
    ("person", 24, 11), ("rider", 25, 12), ("car", 26, 13), ("truck", 27, 14), ("bus", 28, 15),
    ("caravan", 29, 255), ("trailer", 30, 255), ("train", 31, 16), ("motorcycle", 32, 17), ("bicycle", 33, 18),
    ("license plate", -1, -1),
)
#: the 19 evaluated classes in trainId order (the order of CSL Table 6's per-class columns)
CITYSCAPES_TRAIN_CLASSES: tuple[str, ...] = tuple(
    n for n, _, t in sorted((x for x in CITYSCAPES_LABELS if 0 <= x[2] < 255), key=lambda x: x[2]))
#: (256,) uint8 lookup table labelId -> trainId; ids beyond 33 are not in the table (see ``_LABEL_OK``)
LABELID_TO_TRAINID = np.full(256, 255, np.uint8)
for _n, _i, _t in CITYSCAPES_LABELS:
    if _i >= 0:
        LABELID_TO_TRAINID[_i] = _t
_LABEL_OK = np.zeros(256, bool)
_LABEL_OK[[i for _, i, _ in CITYSCAPES_LABELS if i >= 0]] = True

#: PASCAL VOC's 20 object classes (ZegFormer ``voc_20``), index = class id
VOC_CLASSES: tuple[str, ...] = (
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow", "diningtable", "dog",
    "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train", "tvmonitor",
)
#: ZegFormer's 5 unseen VOC classes (the last five, as in SPNet / ZS3Net's split)
VOC_UNSEEN: tuple[str, ...] = ("pottedplant", "sheep", "sofa", "train", "tvmonitor")

#: the 171 COCO-Stuff classes in the contiguous order of detectron2's stuffthingmaps (80 things, 91 stuff)
COCO_STUFF_CLASSES: tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
    "banner", "blanket", "branch", "bridge", "building-other", "bush", "cabinet", "cage", "cardboard", "carpet",
    "ceiling-other", "ceiling-tile", "cloth", "clothes", "clouds", "counter", "cupboard", "curtain",
    "desk-stuff", "dirt", "door-stuff", "fence", "floor-marble", "floor-other", "floor-stone", "floor-tile",
    "floor-wood", "flower", "fog", "food-other", "fruit", "furniture-other", "grass", "gravel", "ground-other",
    "hill", "house", "leaves", "light", "mat", "metal", "mirror-stuff", "moss", "mountain", "mud", "napkin",
    "net", "paper", "pavement", "pillow", "plant-other", "plastic", "platform", "playingfield", "railing",
    "railroad", "river", "road", "rock", "roof", "rug", "salad", "sand", "sea", "shelf", "sky-other",
    "skyscraper", "snow", "solid-other", "stairs", "stone", "straw", "structural-other", "table", "tent",
    "textile-other", "towel", "tree", "vegetable", "wall-brick", "wall-concrete", "wall-other", "wall-panel",
    "wall-stone", "wall-tile", "wall-wood", "water-other", "waterdrops", "window-blind", "window-other", "wood",
)
#: ZegFormer's 15 unseen COCO-Stuff classes (its ``coco_stuff`` zero-shot split)
COCO_STUFF_UNSEEN: tuple[str, ...] = (
    "frisbee", "skateboard", "cardboard", "carrot", "scissors", "suitcase", "giraffe", "cow", "road",
    "wall-concrete", "tree", "grass", "river", "clouds", "playingfield",
)


class SemanticFolderReader(Dataset):
    """Base of the semantic readers: ``refs`` with ``classes_path`` = the GT file, and :meth:`to_classes`."""

    track = "semantic"
    class_names: tuple[str, ...] = ()

    def to_classes(self, raw: np.ndarray, path: Path) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def remap(self, raw: np.ndarray) -> np.ndarray:
        return raw

    def load(self, ref: FrameRef, *, image: bool = True, label: bool = True) -> Frame:
        img = read_image(ref.image_path) if image else np.zeros((0, 0, 3), np.uint8)
        cls = None
        if label and ref.classes_path is not None:
            raw = read_label_png(ref.classes_path)
            if image and raw.shape != img.shape[:2]:
                raise CorruptFileError(f"label file {ref.classes_path} must be {img.shape[:2]} like its image "
                                       f"{ref.image_path}; got {raw.shape}")
            cls = self.to_classes(raw, ref.classes_path)
        return Frame(image=img, label=None, id=ref.id, classes=cls)

    def __iter__(self):
        for ref in self.refs:
            yield self.load(ref)


def _bad_values(raw: np.ndarray, ok: np.ndarray, path: Path, what: str) -> None:
    bad = ~ok[raw]
    if bad.any():
        vals = np.unique(raw[bad])[:10].tolist()
        raise CorruptFileError(f"label file {path} holds ids {vals}, which are not {what}")


class CityscapesLikeReader(SemanticFolderReader):
    """Cityscapes, ACDC or Dark Zurich: Cityscapes label ids mapped to the 19 trainIds.

    Args:
        root: data-set root.
        dataset: ``"cityscapes"``, ``"acdc"`` or ``"dark-zurich"``.
        split: e.g. ``val``.
        condition: ACDC condition(s) (``fog``, ``night``, ``rain``, ``snow``; None = all found).
    """

    class_names = CITYSCAPES_TRAIN_CLASSES
    _LAYOUTS = {
        "cityscapes": ("leftImg8bit/{split}/<city>/<stem>_leftImg8bit.png",
                       "gtFine/{split}/<city>/<stem>_gtFine_labelIds.png"),
        "acdc": ("rgb_anon/<condition>/{split}/<sequence>/<stem>_rgb_anon.png",
                 "gt/<condition>/{split}/<sequence>/<stem>_gt_labelIds.png"),
        "dark-zurich": ("rgb_anon/{split}/night/<sequence>/<stem>_rgb_anon.png",
                        "gt/{split}/night/<sequence>/<stem>_gt_labelIds.png"),
    }

    def __init__(self, root, dataset: str = "cityscapes", split: str = "val", condition: str | None = None):
        super().__init__(Path(root))
        self.name = dataset
        img_t, gt_t = self._LAYOUTS[dataset]
        self.layout = f"  {img_t.format(split=split)}\n  {gt_t.format(split=split)}"
        if dataset == "cityscapes":
            img_dirs = [self.root / "leftImg8bit" / split]
            suffix, gt_of = "_leftImg8bit", lambda d, p, stem: (
                self.root / "gtFine" / split / p.parent.name / f"{stem}_gtFine_labelIds.png")
        elif dataset == "acdc":
            conds = [condition] if condition else sorted(
                d.name for d in (self.root / "rgb_anon").glob("*") if d.is_dir())
            img_dirs = [self.root / "rgb_anon" / c / split for c in conds]
            suffix, gt_of = "_rgb_anon", lambda d, p, stem: (
                self.root / "gt" / d.parent.name / split / p.parent.name / f"{stem}_gt_labelIds.png")
        else:
            img_dirs = [self.root / "rgb_anon" / split / "night"]
            suffix, gt_of = "_rgb_anon", lambda d, p, stem: (
                self.root / "gt" / split / "night" / p.parent.name / f"{stem}_gt_labelIds.png")
        for d in img_dirs:
            for p in sorted(d.glob(f"*/*{suffix}.png")):
                stem = p.name[: -len(f"{suffix}.png")]
                gt = gt_of(d, p, stem)
                self.refs.append(FrameRef(id=stem, image_path=p, label_path=None,
                                          classes_path=gt if gt.is_file() else None))
        self.refs.sort(key=lambda r: r.id)
        self._require_frames(f"split {split!r}; nearest folder: {_listing(img_dirs[0] if img_dirs else self.root)}")
        if not any(r.classes_path for r in self.refs):
            raise DatasetLayoutError(f"{dataset}: found {len(self.refs)} images under {self.root} but no label file "
                                     f"(expected layout:\n{self.layout})")

    def to_classes(self, raw: np.ndarray, path: Path) -> np.ndarray:
        _bad_values(raw, _LABEL_OK, path, "Cityscapes label ids 0..33 (helpers/labels.py)")
        return LABELID_TO_TRAINID[raw]


class VOCReader(SemanticFolderReader):
    """PASCAL VOC 2012 segmentation, 20 object classes (background ignored, ZegFormer ``voc_20``)."""

    class_names = VOC_CLASSES
    name = "pascal-voc"
    layout = ("  JPEGImages/<id>.jpg\n  SegmentationClass/<id>.png (class indices 0..20, 255 void)\n"
              "  ImageSets/Segmentation/<split>.txt")

    def __init__(self, root, split: str = "val"):
        super().__init__(Path(root))
        lst = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not lst.is_file():
            raise DatasetLayoutError(f"pascal-voc: no split list {lst}.\nExpected layout:\n{self.layout}\n"
                                     f"Found: {_listing(self.root)}")
        for fid in (s.strip() for s in lst.read_text().splitlines()):
            if not fid:
                continue
            img = self.root / "JPEGImages" / f"{fid}.jpg"
            gt = self.root / "SegmentationClass" / f"{fid}.png"
            if not img.is_file():
                raise DatasetLayoutError(f"pascal-voc: {lst.name} lists {fid} but {img} does not exist")
            self.refs.append(FrameRef(id=fid, image_path=img, label_path=None,
                                      classes_path=gt if gt.is_file() else None))
        self._require_frames(f"split list {lst}")

    def to_classes(self, raw: np.ndarray, path: Path) -> np.ndarray:
        ok = np.zeros(256, bool)
        ok[:21] = True
        ok[255] = True
        _bad_values(raw, ok, path, "VOC class indices 0..20 or 255")
        lut = np.full(256, 255, np.uint8)
        lut[1:21] = np.arange(20)
        return lut[raw]


class CocoStuffReader(SemanticFolderReader):
    """COCO-Stuff 164k in detectron2's prepared layout (171 contiguous ids, 255 unlabelled)."""

    class_names = COCO_STUFF_CLASSES
    name = "coco-stuff"

    def __init__(self, root, split: str = "val"):
        super().__init__(Path(root))
        self.layout = (f"  images/{split}2017/<id>.jpg\n  stuffthingmaps_detectron2/{split}2017/<id>.png "
                       "(ids 0..170, 255 unlabelled)")
        gdir = self.root / "stuffthingmaps_detectron2" / f"{split}2017"
        for p in sorted((self.root / "images" / f"{split}2017").glob("*.jpg")):
            gt = gdir / f"{p.stem}.png"
            self.refs.append(FrameRef(id=p.stem, image_path=p, label_path=None,
                                      classes_path=gt if gt.is_file() else None))
        self._require_frames(f"split {split!r}")
        if not any(r.classes_path for r in self.refs):
            raise DatasetLayoutError(f"coco-stuff: no label files in {gdir} (expected layout:\n{self.layout})")

    def to_classes(self, raw: np.ndarray, path: Path) -> np.ndarray:
        ok = np.zeros(256, bool)
        ok[:171] = True
        ok[255] = True
        _bad_values(raw, ok, path, "COCO-Stuff ids 0..170 or 255 (detectron2 stuffthingmaps)")
        return raw


class SyntheticSemanticReader(SemanticFolderReader):
    """The synthetic world's frames with their class maps (``labels_masks/<id>_labels_classes.png``)."""

    def __init__(self, track_dir, name: str, class_names):
        super().__init__(Path(track_dir))
        self.name = name
        self.class_names = tuple(class_names)
        self.layout = "  images/<id>.png\n  labels_masks/<id>_labels_classes.png"
        for p in sorted((self.root / "images").glob("*.png")):
            gt = self.root / "labels_masks" / f"{p.stem}_labels_classes.png"
            self.refs.append(FrameRef(id=p.stem, image_path=p, label_path=None,
                                      classes_path=gt if gt.is_file() else None))
        self._require_frames("synthetic world")

    def to_classes(self, raw: np.ndarray, path: Path) -> np.ndarray:
        ok = np.zeros(256, bool)
        ok[: len(self.class_names)] = True
        ok[255] = True
        _bad_values(raw, ok, path, f"class ids 0..{len(self.class_names) - 1} or 255")
        return raw
