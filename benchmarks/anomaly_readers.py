"""Readers of the anomaly data sets in their official layouts: SMIYC (RoadAnomaly21 and
RoadObstacle21), LostAndFound, Fishyscapes, Road Anomaly and StreetHazards, with the
official label remaps. The shared pieces (``Frame``, ``Dataset``, decoding, roots) are in
:mod:`posthoc.bench.datasets`, which also re-exports these readers."""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .datasets import (
    ENV_DATA_ROOT,
    ENV_VARS,
    Dataset,
    DatasetLayoutError,
    Frame,
    FrameRef,
    _find_images,
    _listing,
    _remap_usual_anomaly,
    resolve_root,
)

log = logging.getLogger(__name__)

__all__ = [
    "FishyscapesReader",
    "LostAndFoundReader",
    "RoadAnomalyReader",
    "SMIYCReader",
    "StreetHazardsReader",
    "get_dataset",
]


# --------------------------------------------------------------------------------------
# SMIYC
# --------------------------------------------------------------------------------------

_SMIYC_TRACK_DIRS = {"anomaly": "dataset_AnomalyTrack", "obstacle": "dataset_ObstacleTrack"}
_SMIYC_NAMES = {"anomaly": "AnomalyTrack-all", "obstacle": "ObstacleTrack-all"}
# official ObstacleTrack-test: every scene except the special weather, night and validation ones
_OBSTACLE_NON_TEST_SCENES = {"snowstorm1", "snowstorm2", "driveway", "validation"}


class SMIYCReader(Dataset):
    """SegmentMeIfYouCan RoadAnomaly21 (``track="anomaly"``) or RoadObstacle21 (``"obstacle"``).

    Args:
        root: the track folder (holding ``images/``), or a folder holding
            ``dataset_AnomalyTrack/`` / ``dataset_ObstacleTrack/`` (the official
            ``DIR_DATASETS``), or a synthetic-world root holding ``<split>/dataset_*Track``.
        track: ``"anomaly"`` or ``"obstacle"``.
        split: only used for the synthetic-world layout ``<root>/<split>/dataset_*Track``.
        subset: ``"all"`` (every frame found; what submissions need), ``"validation"``
            (the public labelled frames: ids starting with ``validation``) or ``"test"``
            (the rest; for the obstacle track the official ``ObstacleTrack-test`` scene
            list, i.e. without snowstorm, night and validation scenes).

    Frames without a label file (the hidden test set) are yielded with ``label=None``.
    """

    def __init__(self, root: Path, track: str = "anomaly", *, split: str | None = None, subset: str = "all"):
        if track not in _SMIYC_TRACK_DIRS:
            raise ValueError(f"track must be 'anomaly' or 'obstacle'; got {track!r}")
        if subset not in ("all", "validation", "test"):
            raise ValueError(f"subset must be 'all', 'validation' or 'test'; got {subset!r}")
        self.track = track
        self.name = _SMIYC_NAMES[track]
        tdir = _SMIYC_TRACK_DIRS[track]
        self.layout = (
            f"  <root>/{tdir}/images/<id>.{{jpg,webp,png}}\n"
            f"  <root>/{tdir}/labels_masks/<id>_labels_semantic.png   (0 usual, 1 anomaly, 255 void; "
            "optional for hidden test frames)\n"
            f"  (or <root> itself being {tdir}/, or <root>/<split>/{tdir}/ for the synthetic world)"
        )
        root = Path(root)
        candidates = [root / tdir]
        if split:
            candidates.append(root / split / tdir)
        candidates.append(root)
        track_dir = next((c for c in candidates if (c / "images").is_dir()), None)
        if track_dir is None:
            tried = "\n".join(
                f"  {c}/images/ : {'exists' if (c / 'images').exists() else 'missing'}" for c in candidates
            )
            raise DatasetLayoutError(
                f"SMIYC {track} track not found.\nExpected layout:\n{self.layout}\nTried:\n{tried}\n"
                f"Found: {_listing(root)}"
            )
        super().__init__(track_dir)
        images = _find_images(track_dir / "images")
        lab_dir = track_dir / "labels_masks"
        refs = []
        seen: dict[str, Path] = {}
        # label files by lower-cased name, to name a misnamed one (e.g. ".PNG") in the warning
        lab_files = {q.name.lower(): q for q in lab_dir.iterdir()} if lab_dir.is_dir() else {}
        self.label_near_misses: dict[str, str] = {}
        for p in images:
            fid = p.stem
            if fid in seen:
                raise DatasetLayoutError(f"frame id {fid!r} has two image files: {seen[fid]} and {p}")
            seen[fid] = p
            lab = lab_dir / f"{fid}_labels_semantic.png"
            cls = lab_dir / f"{fid}_labels_classes.png"
            if not lab.is_file() and lab.name.lower() in lab_files:
                self.label_near_misses[fid] = lab_files[lab.name.lower()].name
            refs.append(
                FrameRef(
                    id=fid,
                    image_path=p,
                    label_path=lab if lab.is_file() else None,
                    classes_path=cls if cls.is_file() else None,
                )
            )
        if subset != "all":
            refs = [r for r in refs if self._in_subset(r.id, subset)]
        self.refs = sorted(refs, key=lambda r: r.id)
        self._require_frames(f"subset {subset!r}; {len(images)} image files in {track_dir / 'images'}")
        n_lab = sum(r.label_path is not None for r in self.refs)
        if n_lab and n_lab < len(self.refs):
            log.info(  # posthoc-bench warns with the frames' names (--strict makes it an error)
                "%s: %d of %d frames have labels (the rest are left out of the metrics)", self.name, n_lab, len(self)
            )

    def _in_subset(self, fid: str, subset: str) -> bool:
        if self.track == "obstacle":
            scene = fid.split("_")[0]
            if subset == "validation":
                return scene == "validation"
            return scene not in _OBSTACLE_NON_TEST_SCENES
        is_val = fid.startswith("validation")
        return is_val if subset == "validation" else not is_val

    def remap(self, raw: np.ndarray) -> np.ndarray:
        return _remap_usual_anomaly(raw, 0, 1, 1)


# --------------------------------------------------------------------------------------
# LostAndFound
# --------------------------------------------------------------------------------------

_LAF_NAME = re.compile(r"^([0-9]{2})_(.*)_([0-9]{6})_([0-9]{6})$")
# official LostAndFound-testNoKnown: drop sequences with children and bicycles
_LAF_NOKNOWN_EXCLUDE = (
    "15_Rechbergstr_Deckenpfronn",
    "01_Hanns_Klemm_Str_45_000006",
    "01_Hanns_Klemm_Str_45_000007",
    "10_Schlossberg_9_000004",
)


class LostAndFoundReader(Dataset):
    """LostAndFound in the Cityscapes layout.

    Args:
        root: the folder holding ``leftImg8bit/`` and ``gtCoarse/``.
        split: ``"test"`` or ``"train"``.
        no_known: drop the frames with known objects (children, bicycles), giving the
            official ``LostAndFound-testNoKnown``.

    Label ids: 0 -> void, 1 (free space) -> 0, 2..200 (obstacles) -> 1, others -> void.
    Frames whose label source is all zero are skipped while iterating, which is how the
    official index lists of invalid frames are defined.
    """

    track = "obstacle"

    def __init__(self, root: Path, split: str = "test", *, no_known: bool = False):
        if split not in ("test", "train"):
            raise ValueError(f"LostAndFound split must be 'test' or 'train'; got {split!r}")
        super().__init__(root)
        self.split = split
        self.no_known = no_known
        self.name = "LostAndFound-test" if split == "test" else "LostAndFound-train"
        self.layout = (
            f"  <root>/leftImg8bit/{split}/<NN_scene>/<id>_leftImg8bit.{{png,webp,jpg}}\n"
            f"  <root>/gtCoarse/{split}/<NN_scene>/<id>_gtCoarse_labelIds.png\n"
            "  with <id> = <NN>_<scene>_<seq 6 digits>_<time 6 digits>"
        )
        img_dir = self.root / "leftImg8bit" / split
        if not img_dir.is_dir():
            raise DatasetLayoutError(
                f"LostAndFound {split} images not found at {img_dir}.\nExpected layout:\n{self.layout}\n"
                f"Found: {_listing(self.root)}"
            )
        files: list[Path] = []
        for ext in ("png", "webp", "jpg"):  # the official reader's order
            files = sorted(img_dir.glob(f"*/*_leftImg8bit.{ext}"))
            if files:
                break
        refs = []
        for p in files:
            fid = p.name[: -len("_leftImg8bit" + p.suffix)]
            if not _LAF_NAME.match(fid):
                raise DatasetLayoutError(
                    f"LostAndFound file {p} does not follow <NN>_<scene>_<seq>_<time>_leftImg8bit.<ext>"
                )
            if no_known and any(fid.startswith(x) for x in _LAF_NOKNOWN_EXCLUDE):
                continue
            lab = self.root / "gtCoarse" / split / p.parent.name / f"{fid}_gtCoarse_labelIds.png"
            if not lab.is_file():
                raise DatasetLayoutError(
                    f"LostAndFound label {lab} for image {p} is missing.\nExpected layout:\n{self.layout}"
                )
            refs.append(FrameRef(id=fid, image_path=p, label_path=lab))
        self.refs = sorted(refs, key=lambda r: r.id)
        self._require_frames(f"no *_leftImg8bit images in {img_dir}/*/")

    def remap(self, raw: np.ndarray) -> np.ndarray:
        return _remap_usual_anomaly(raw, 1, 2, 200)

    def keep_remapped(self, frame: Frame) -> bool:
        # raw id 0 -> 255 and every raw id > 200 -> 255 as well; an all-zero source gives an all-void label
        return frame.label is not None and bool((frame.label != 255).any())


# --------------------------------------------------------------------------------------
# Fishyscapes
# --------------------------------------------------------------------------------------

_FS_DIRS = {
    "laf": ("fs_lost_found", "LostAndFound", "lost_and_found", "fs_LostAndFound", "FS_LostFound", "fs_laf"),
    "static": ("fs_static", "Static", "static", "FS_Static"),
}
_FS_NAMES = {"laf": "FishyLAF-val", "static": "FishyStatic-val"}


class FishyscapesReader(Dataset):
    """Fishyscapes LostAndFound (``subset="laf"``) or Static (``subset="static"``) validation sets.

    Args:
        root: the subset folder (holding ``images/`` or ``original/``) or its parent,
            holding e.g. ``fs_lost_found/`` / ``LostAndFound/`` and ``fs_static/`` / ``Static/``.
        subset: ``"laf"`` or ``"static"``.

    Labels are already 0 (in-distribution) / 1 (anomaly) / 255 (void); other values are
    treated as void.
    """

    track = "anomaly"

    def __init__(self, root: Path, subset: str = "laf"):
        if subset not in _FS_DIRS:
            raise ValueError(f"Fishyscapes subset must be 'laf' or 'static'; got {subset!r}")
        self.name = _FS_NAMES[subset]
        self.layout = (
            "  <root>/<subset>/images/<id>.{png,jpg,webp}   (or original/)\n"
            "  <root>/<subset>/labels_masks/<id>.png        (or labels/; 0 in-dist, 1 anomaly, 255 void)\n"
            f"  <subset> one of: {', '.join(_FS_DIRS[subset])} (or <root> itself)"
        )
        root = Path(root)
        cands = [root / d for d in _FS_DIRS[subset]] + [root]
        folder = next((c for c in cands if (c / "images").is_dir() or (c / "original").is_dir()), None)
        if folder is None:
            raise DatasetLayoutError(
                f"Fishyscapes {subset} not found.\nExpected layout:\n{self.layout}\nFound: {_listing(root)}"
            )
        super().__init__(folder)
        img_dir = folder / "images" if (folder / "images").is_dir() else folder / "original"
        lab_dir = next((folder / d for d in ("labels_masks", "labels") if (folder / d).is_dir()), None)
        if lab_dir is None:
            raise DatasetLayoutError(
                f"Fishyscapes {subset}: no labels_masks/ or labels/ folder in {folder}.\n"
                f"Expected layout:\n{self.layout}\nFound: {_listing(folder)}"
            )
        refs = []
        for p in _find_images(img_dir):
            lab = next(
                (q for q in (lab_dir / f"{p.stem}.png", lab_dir / f"{p.stem}_labels_semantic.png") if q.is_file()),
                None,
            )
            if lab is None:
                raise DatasetLayoutError(
                    f"Fishyscapes {subset}: no label for image {p} (looked for {lab_dir / (p.stem + '.png')})"
                )
            refs.append(FrameRef(id=p.stem, image_path=p, label_path=lab))
        self.refs = refs
        self._require_frames(f"no images in {img_dir}")

    def remap(self, raw: np.ndarray) -> np.ndarray:
        return _remap_usual_anomaly(raw, 0, 1, 1)


# --------------------------------------------------------------------------------------
# Road Anomaly
# --------------------------------------------------------------------------------------


class RoadAnomalyReader(Dataset):
    """Road Anomaly (Lis et al., ICCV 2019), 60 frames.

    Accepts the original EPFL release (``frames/<id>.jpg`` and
    ``frames/<id>.labels/labels_semantic.png`` with 2 = anomaly, everything else
    in-distribution) and the converted layout (``images/`` + ``labels_masks/<id>.png`` with
    0/1/255).
    """

    track = "anomaly"
    name = "RoadAnomaly"

    def __init__(self, root: Path):
        self.layout = (
            "  <root>/frames/<id>.{jpg,webp,png}\n"
            "  <root>/frames/<id>.labels/labels_semantic.png   (0 background, 1 road, 2 anomaly)\n"
            "or the converted layout:\n"
            "  <root>/images/<id>.{jpg,png}  and  <root>/labels_masks/<id>.png  (0/1/255)"
        )
        root = Path(root)
        cands = [root, root / "RoadAnomaly_jpg", root / "RoadAnomaly"]
        folder = next((c for c in cands if (c / "frames").is_dir() or (c / "images").is_dir()), None)
        if folder is None:
            raise DatasetLayoutError(
                f"Road Anomaly not found.\nExpected layout:\n{self.layout}\nFound: {_listing(root)}"
            )
        super().__init__(folder)
        refs = []
        if (folder / "frames").is_dir():
            self._converted = False
            for p in _find_images(folder / "frames"):
                lab = folder / "frames" / f"{p.stem}.labels" / "labels_semantic.png"
                if not lab.is_file():
                    raise DatasetLayoutError(f"Road Anomaly: label {lab} for image {p} is missing")
                refs.append(FrameRef(id=p.stem, image_path=p, label_path=lab))
        else:
            self._converted = True
            lab_dir = folder / "labels_masks"
            for p in _find_images(folder / "images"):
                lab = lab_dir / f"{p.stem}.png"
                if not lab.is_file():
                    raise DatasetLayoutError(f"Road Anomaly: label {lab} for image {p} is missing")
                refs.append(FrameRef(id=p.stem, image_path=p, label_path=lab))
        self.refs = refs
        self._require_frames("no images in frames/ or images/")

    def remap(self, raw: np.ndarray) -> np.ndarray:
        if self._converted:
            return _remap_usual_anomaly(raw, 0, 1, 1)
        out = np.zeros(raw.shape, dtype=np.uint8)
        out[raw == 2] = 1
        return out


# --------------------------------------------------------------------------------------
# StreetHazards
# --------------------------------------------------------------------------------------


class StreetHazardsReader(Dataset):
    """StreetHazards (Hendrycks et al.) test set, 1500 frames in towns t5/t6.

    PNG annotations store class + 1; the official ``eval_ood.py`` subtracts one and scores
    class 13 (PNG 14) as the anomaly against every other pixel, "unlabeled" included.
    We do the same; PNG 0 (not produced by the generator) and values > 14 become void.
    """

    track = "anomaly"
    name = "StreetHazards-test"

    def __init__(self, root: Path, split: str = "test"):
        self.layout = (
            f"  <root>/{split}/images/{split}/<town>/<n>.png\n"
            f"  <root>/{split}/annotations/{split}/<town>/<n>.png   (class id + 1; 14 = anomaly)\n"
            f"  (or <root> itself being the {split}/ folder)"
        )
        root = Path(root)
        cands = [root / split, root]
        folder = next((c for c in cands if (c / "images" / split).is_dir()), None)
        if folder is None:
            raise DatasetLayoutError(
                f"StreetHazards {split} not found.\nExpected layout:\n{self.layout}\nFound: {_listing(root)}"
            )
        super().__init__(folder)
        self.name = f"StreetHazards-{split}"
        refs = []
        for town in sorted(p for p in (folder / "images" / split).iterdir() if p.is_dir()):
            for p in _find_images(town):
                lab = folder / "annotations" / split / town.name / f"{p.stem}.png"
                if not lab.is_file():
                    raise DatasetLayoutError(f"StreetHazards: annotation {lab} for image {p} is missing")
                refs.append(FrameRef(id=f"{town.name}_{p.stem}", image_path=p, label_path=lab))
        self.refs = sorted(refs, key=lambda r: r.id)
        self._require_frames(f"no images in {folder / 'images' / split}/<town>/")

    def remap(self, raw: np.ndarray) -> np.ndarray:
        out = np.full(raw.shape, 255, dtype=np.uint8)
        out[(raw >= 1) & (raw <= 13)] = 0
        out[raw == 14] = 1
        return out


_FACTORIES: dict[str, Callable[..., Dataset]] = {
    "smiyc": SMIYCReader,
    "laf": LostAndFoundReader,
    "fishyscapes": FishyscapesReader,
    "road-anomaly": RoadAnomalyReader,
    "streethazards": StreetHazardsReader,
}


def get_dataset(dataset: str, root: os.PathLike | None = None, **kw) -> Dataset:
    """Build the reader for ``dataset`` ("smiyc", "laf", "fishyscapes", "road-anomaly",
    "streethazards") at ``root`` (or the environment, see :func:`resolve_root`)."""
    path = resolve_root(dataset, root)
    if path is None:
        env = f"${ENV_VARS[dataset]} or ${ENV_DATA_ROOT}"
        raise DatasetLayoutError(f"no root folder for {dataset!r}: pass --data-root / root=... or set {env}")
    return _FACTORIES[dataset](path, **kw)
