"""Readers for the road-anomaly data sets the benchmark evaluates on.

Every reader yields :class:`Frame` objects with

* ``image``: (H,W,3) uint8 RGB,
* ``label``: (H,W) uint8 with 0 = in-distribution, 1 = anomaly, 255 = void, or ``None``
  for frames whose labels are hidden (the SMIYC test set),
* ``id``: the frame id the official tools use (file stem without suffixes),
* ``extras``: optional per-frame data,
* ``classes``: (H,W) uint8 in-distribution class map (255 at anomaly/void) where the data
  set has one (the synthetic world's ``labels_masks/<id>_labels_classes.png``), else ``None``.

The synthetic world (:mod:`posthoc.bench.synthetic`) renders this same :class:`Frame` type.

Folder layouts and label remaps follow the official code:

* SMIYC (``SegmentMeIfYouCan/road-anomaly-benchmark``, ``datasets/tracks.py``):
  ``dataset_AnomalyTrack/images/<id>.jpg`` and ``dataset_ObstacleTrack/images/<id>.webp``
  with ``labels_masks/<id>_labels_semantic.png`` (0 usual, 1 anomaly, 255 void; any other
  value is void, as in the official ``DatasetRA.get_frame``). Other image extensions
  (png, jpg, webp) are accepted, which is how the synthetic world is stored; its
  ``labels_masks/<id>_labels_classes.png`` class maps are read into ``Frame.classes``.
* LostAndFound (same file, ``DatasetLostAndFound``): Cityscapes layout
  ``leftImg8bit/<split>/<NN_scene>/<id>_leftImg8bit.{png,webp,jpg}`` and
  ``gtCoarse/<split>/<NN_scene>/<id>_gtCoarse_labelIds.png``; label ids 0 -> void,
  1 (free space) -> 0, 2..200 (obstacles) -> 1, anything else -> void. Frames whose
  label source is all zero are skipped (the official exclusion lists are exactly those
  frames). ``NoKnown`` additionally drops the sequences with children and bicycles.
* Fishyscapes LostAndFound / Static: the released validation sets as converted by the
  Fishyscapes tooling, ``images/<id>.<ext>`` (or ``original/``) and ``labels_masks/<id>.png``
  (or ``labels/``), already 0/1/255.
* Road Anomaly (EPFL release): ``frames/<id>.{jpg,webp,png}`` with
  ``frames/<id>.labels/labels_semantic.png`` (0 background, 1 road, 2 anomaly ->
  anomaly = 2, everything else in-distribution); the common converted layout
  ``images/`` + ``labels_masks/`` (0/1/255) is accepted too.
* StreetHazards (``hendrycks/anomaly-seg``): ``<root>/test/images/test/<town>/<n>.png`` and
  ``<root>/test/annotations/test/<town>/<n>.png`` storing class index + 1; the official
  evaluation (``eval_ood.py``) subtracts one and calls class 13 (PNG value 14) the
  anomaly and every other pixel in-distribution. PNG value 0 (never written by the
  generator) becomes void.

Roots come from an argument or environment variables (see :func:`resolve_root`). A missing
or malformed folder raises :class:`DatasetLayoutError` showing the expected layout and what
was found; an unreadable image raises :class:`CorruptFileError` naming the file.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from posthoc.errors import PosthocError

log = logging.getLogger(__name__)

__all__ = [
    "ENV_DATA_ROOT",
    "ENV_VARS",
    "IMAGE_EXTENSIONS",
    "CorruptFileError",
    "Dataset",
    "DatasetLayoutError",
    "FishyscapesReader",
    "Frame",
    "FrameRef",
    "LostAndFoundReader",
    "RoadAnomalyReader",
    "SMIYCReader",
    "StreetHazardsReader",
    "get_dataset",
    "read_image",
    "read_label_png",
    "resolve_root",
]

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
ENV_DATA_ROOT = "POSTHOC_DATA_ROOT"
#: per-data-set environment variables; each takes precedence over POSTHOC_DATA_ROOT
ENV_VARS = {
    "smiyc": "POSTHOC_SMIYC_ROOT",
    "laf": "POSTHOC_LAF_ROOT",
    "fishyscapes": "POSTHOC_FISHYSCAPES_ROOT",
    "road-anomaly": "POSTHOC_ROAD_ANOMALY_ROOT",
    "streethazards": "POSTHOC_STREETHAZARDS_ROOT",
}
#: the sub-folder of POSTHOC_DATA_ROOT each data set is looked for in (the first that exists)
_SUBDIRS = {
    "smiyc": ("",),
    "laf": ("dataset_LostAndFound", "LostAndFound", "lost_and_found"),
    "fishyscapes": ("fishyscapes", "Fishyscapes", ""),
    "road-anomaly": ("dataset_RoadAnomaly", "RoadAnomaly", "road_anomaly", "RoadAnomaly_jpg"),
    "streethazards": ("streethazards", "StreetHazards", ""),
}


class DatasetLayoutError(PosthocError, FileNotFoundError):
    """A data-set folder is missing or does not have the expected layout."""


class CorruptFileError(PosthocError, ValueError):
    """An image or label file exists but cannot be decoded, or has the wrong shape/values."""


@dataclass
class Frame:
    """One frame, as every reader yields it and as the synthetic world renders it.

    Attributes:
        image: (H,W,3) uint8 RGB.
        label: (H,W) uint8, 0 = in-distribution, 1 = anomaly, 255 = void; ``None`` when
            the data set hides its labels (SMIYC test frames).
        id: frame id as used by the official tools (and by the submission files); for
            the synthetic world the id it is stored under (``test_0007``), ``""`` for a
            frame rendered in memory.
        extras: optional per-frame data of a reader (``FrameRef.extra_paths``).
        classes: (H,W) uint8 in-distribution class map (255 at anomaly and void), or
            ``None`` when the data set has none. The synthetic world's class indices
            are ``posthoc.bench.synthetic.CLASS_NAMES``.
    """

    image: np.ndarray  # empty (0,0,3) for ``load(ref, image=False)``
    label: np.ndarray | None
    id: str = ""
    extras: dict = field(default_factory=dict)
    classes: np.ndarray | None = None


@dataclass(frozen=True)
class FrameRef:
    """Where one frame's files are; ``label_path`` / ``classes_path`` are None when absent."""

    id: str
    image_path: Path
    label_path: Path | None
    extra_paths: tuple = ()  # ((name, Path), ...) read into Frame.extras
    classes_path: Path | None = None  # read into Frame.classes


# --------------------------------------------------------------------------------------
# file decoding
# --------------------------------------------------------------------------------------


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to (H,W,3) uint8 RGB.

    Raises:
        CorruptFileError: the file cannot be decoded or is not an 8-bit colour/grey image.
        DatasetLayoutError: the file does not exist.
    """
    import cv2

    path = Path(path)
    if not path.is_file():
        raise DatasetLayoutError(f"image file {path} does not exist")
    data = np.fromfile(str(path), dtype=np.uint8)
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if img is None:
        raise CorruptFileError(f"cannot decode image file {path} ({data.size} bytes): corrupt or unsupported format")
    if img.dtype != np.uint8:
        raise CorruptFileError(f"image file {path} must be 8-bit; got dtype {img.dtype}")
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB)
    elif img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    else:
        raise CorruptFileError(f"image file {path} must be grey, RGB or RGBA; got shape {img.shape}")
    return np.ascontiguousarray(img)


def read_label_png(path: Path) -> np.ndarray:
    """Decode a single-channel label PNG to (H,W) uint8 (raw ids, no remap)."""
    import cv2

    path = Path(path)
    if not path.is_file():
        raise DatasetLayoutError(f"label file {path} does not exist")
    data = np.fromfile(str(path), dtype=np.uint8)
    lab = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if lab is None:
        raise CorruptFileError(f"cannot decode label file {path} ({data.size} bytes): corrupt or not a PNG")
    if lab.ndim == 3:
        # palette PNGs decode to colour; a grey image stored as RGB has equal channels
        if (lab.shape[2] >= 3 and np.array_equal(lab[:, :, 0], lab[:, :, 1])
                and np.array_equal(lab[:, :, 1], lab[:, :, 2])):
            lab = lab[:, :, 0]
        else:
            raise CorruptFileError(f"label file {path} must be single-channel (class ids); got shape {lab.shape}")
    if lab.dtype != np.uint8:
        if lab.dtype == np.uint16 and lab.size and int(lab.max()) <= 255:
            lab = lab.astype(np.uint8)
        else:
            raise CorruptFileError(f"label file {path} must hold uint8 ids; got dtype {lab.dtype}")
    return np.ascontiguousarray(lab)


def _listing(root: Path, limit: int = 12) -> str:
    """A short description of what is in ``root`` for error messages."""
    if not root.exists():
        parent = root.parent
        while not parent.exists() and parent != parent.parent:
            parent = parent.parent
        return f"{root} does not exist (nearest existing parent: {parent})"
    if not root.is_dir():
        return f"{root} is a file, not a folder"
    entries = sorted(root.iterdir())
    names = [e.name + ("/" if e.is_dir() else "") for e in entries[:limit]]
    more = f" ... and {len(entries) - limit} more" if len(entries) > limit else ""
    return f"{root} contains: {', '.join(names) if names else '(nothing)'}{more}"


def _find_images(folder: Path, pattern_suffix: str = "") -> list[Path]:
    out: list[Path] = []
    for ext in IMAGE_EXTENSIONS:
        out.extend(folder.glob(f"*{pattern_suffix}.{ext}"))
    return sorted(out)


# --------------------------------------------------------------------------------------
# base class
# --------------------------------------------------------------------------------------


class Dataset:
    """A list of frames on disk; iterate for :class:`Frame` objects.

    Subclasses fill ``self.refs`` and implement :meth:`remap` (raw label ids -> 0/1/255).

    Attributes:
        name: the official data-set name, used as the folder of submission files.
        track: ``"anomaly"`` or ``"obstacle"``: which component-metric preset applies.
        root: the folder that was read.
        refs: the frames found, sorted by id.
    """

    name: str = ""
    track: str = "anomaly"
    layout: str = ""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.refs: list[FrameRef] = []

    # -- subclass hooks -----------------------------------------------------------------
    def remap(self, raw: np.ndarray) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    # -- access -------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.refs)

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.refs]

    @property
    def has_labels(self) -> bool:
        return any(r.label_path is not None for r in self.refs)

    def load_label(self, ref: FrameRef, shape: tuple | None = None) -> np.ndarray | None:
        """Read and remap the label of ``ref``; None for unlabeled frames."""
        if ref.label_path is None:
            return None
        raw = read_label_png(ref.label_path)
        if shape is not None and raw.shape != tuple(shape):
            raise CorruptFileError(
                f"label file {ref.label_path} must be {tuple(shape)} like its image {ref.image_path}; got {raw.shape}"
            )
        return self.remap(raw)

    def load(self, ref: FrameRef, *, image: bool = True, label: bool = True) -> Frame:
        """Read one frame (image and/or label; class map and extras whenever present). ``image=False``: empty image."""
        img = read_image(ref.image_path) if image else np.zeros((0, 0, 3), np.uint8)
        lab = None
        if label and ref.label_path is not None:
            raw = read_label_png(ref.label_path)
            if image and raw.shape != img.shape[:2]:
                raise CorruptFileError(
                    f"label file {ref.label_path} must be {img.shape[:2]} like its image {ref.image_path}; "
                    f"got {raw.shape}"
                )
            lab = self.remap(raw)
        extras = {}
        for name, p in ref.extra_paths:
            if Path(p).is_file():
                extras[name] = read_label_png(p)
        classes = None
        if ref.classes_path is not None and Path(ref.classes_path).is_file():
            classes = read_label_png(ref.classes_path)
        return Frame(image=img, label=lab, id=ref.id, extras=extras, classes=classes)

    def __iter__(self) -> Iterator[Frame]:
        for ref in self.refs:
            fr = self.load(ref)
            if fr.label is not None and not self.keep_remapped(fr):
                log.info("%s: skipping frame %s (no valid label pixels in the source)", self.name, ref.id)
                continue
            yield fr

    def keep_remapped(self, frame: Frame) -> bool:
        """Whether a labelled frame takes part (LostAndFound drops frames with no valid label)."""
        return True

    def __getitem__(self, i: int) -> Frame:
        return self.load(self.refs[i])

    def _require_frames(self, what: str) -> None:
        if not self.refs:
            raise DatasetLayoutError(
                f"{self.name}: found no frames under {self.root} ({what}).\nExpected layout:\n{self.layout}\n"
                f"Found: {_listing(self.root)}"
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, root={str(self.root)!r}, frames={len(self)})"


def _remap_usual_anomaly(raw: np.ndarray, usual: int | Sequence[int], anomaly_lo: int, anomaly_hi: int) -> np.ndarray:
    """0/1/255 label from raw ids: ``usual`` -> 0, ids in [lo,hi] -> 1, anything else -> 255.

    Follows ``DatasetRA.get_frame`` of the official road-anomaly-benchmark (a new array;
    ``raw`` is not modified).
    """
    out = np.full(raw.shape, 255, dtype=np.uint8)
    for u in np.atleast_1d(usual):
        out[raw == u] = 0
    out[(raw >= anomaly_lo) & (raw <= anomaly_hi)] = 1
    return out


# --------------------------------------------------------------------------------------
# roots and factory
# --------------------------------------------------------------------------------------


def resolve_root(dataset: str, root: str | os.PathLike | None = None) -> Path | None:
    """Find the root folder of ``dataset``.

    Order: the explicit ``root``; the data set's own environment variable (``ENV_VARS``);
    ``$POSTHOC_DATA_ROOT`` joined with the first of the usual sub-folder names that exists
    (or the variable itself). Returns None when nothing is configured (the CLI then falls
    back to the synthetic world for ``smiyc``).
    """
    if dataset not in ENV_VARS:
        raise ValueError(f"unknown data set {dataset!r}; known: {', '.join(sorted(ENV_VARS))}")
    if root is not None:
        return Path(root).expanduser()
    own = os.environ.get(ENV_VARS[dataset])
    if own:
        return Path(own).expanduser()
    common = os.environ.get(ENV_DATA_ROOT)
    if common:
        base = Path(common).expanduser()
        for sub in _SUBDIRS[dataset]:
            if sub and (base / sub).is_dir():
                return base / sub
        return base
    return None


_READERS = {
    name: "anomaly_readers"
    for name in ("SMIYCReader", "LostAndFoundReader", "FishyscapesReader", "RoadAnomalyReader", "StreetHazardsReader",
                 "get_dataset")
}
if TYPE_CHECKING:  # the re-exported names, for type checkers and linters
    from .anomaly_readers import (
        FishyscapesReader,
        LostAndFoundReader,
        RoadAnomalyReader,
        SMIYCReader,
        StreetHazardsReader,
        get_dataset,
    )


def __getattr__(name: str):
    """The readers live in :mod:`posthoc.bench.anomaly_readers`; they are re-exported here."""
    if name in _READERS:
        import importlib

        value = getattr(importlib.import_module(f"{__package__}.{_READERS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
