"""The synthetic world in the StreetHazards folder layout (``posthoc-bench streethazards`` without data).

The frames are the anomaly-track frames of :func:`posthoc.bench.synthetic.ensure_world` for the
same arguments: the images are copied byte for byte, and the annotation is written the
StreetHazards way (class id + 1, 14 = anomaly, 0 = void), read by the real
:class:`posthoc.bench.datasets.StreetHazardsReader`::

    <world root>/streethazards/<split>/images/<split>/world/<id>.png
    <world root>/streethazards/<split>/annotations/<split>/world/<id>.png   (class + 1; 14 = anomaly; 0 = hood)
    <world root>/streethazards/<split>/world.json

``<split>`` is ``test``, ``validation`` (the world's ``val``) or ``train``. The world's 13
classes (:data:`posthoc.bench.synthetic.CLASS_NAMES`) are the known classes, as StreetHazards
has 13; the pasted anomaly objects are the unknown class. The anomaly and obstacle track
folders are never touched (their files stay byte-identical).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = ["STREETHAZARDS_SPLITS", "ensure_streethazards_world", "streethazards_annotation"]

#: world split -> StreetHazards split folder name
STREETHAZARDS_SPLITS = {"test": "test", "val": "validation", "train": "train"}
TOWN = "world"


def streethazards_annotation(classes: np.ndarray, semantic: np.ndarray, n_known: int) -> np.ndarray:
    """StreetHazards annotation of one synthetic frame: ``class + 1`` for the known classes
    (``classes < n_known``), ``n_known + 1`` where ``semantic == 1`` (anomaly), 0 elsewhere (void)."""
    ann = np.where(classes < n_known, classes.astype(np.int64) + 1, 0)
    ann[semantic == 1] = n_known + 1
    return ann.astype(np.uint8)


def ensure_streethazards_world(root: os.PathLike | str | None = None, *, split: str = "test",
                               n_frames: int | None = None, size: Sequence[int] | None = None,
                               seed: int = 0) -> Path:
    """The synthetic world's ``split`` in the StreetHazards layout (generated on first use, atomically).

    Returns the split folder ``<world root>/streethazards/<test|validation|train>``, which
    :class:`~posthoc.bench.datasets.StreetHazardsReader` reads as ``StreetHazardsReader(folder, name)``.
    """
    from . import synthetic as syn
    from .datasets import read_label_png

    cfg = syn.world_config(split=split, track="anomaly", n_frames=n_frames, size=size, seed=seed)
    name = STREETHAZARDS_SPLITS[split]
    cfg_s = cfg | {"layout": "streethazards"}
    base = syn.world_root(root, cfg) / "streethazards"
    n_known = len(syn.CLASS_NAMES)

    def build(tmp: Path) -> dict:
        track = syn.ensure_world(root, split=split, track="anomaly", n_frames=n_frames, size=size, seed=seed)
        img_dir = tmp / "images" / name / TOWN
        ann_dir = tmp / "annotations" / name / TOWN
        img_dir.mkdir(parents=True)
        ann_dir.mkdir(parents=True)
        digest = hashlib.sha256()
        ids = syn.frame_ids(split, cfg["n_frames"])
        for fid in ids:
            img = (track / "images" / f"{fid}.png").read_bytes()
            (img_dir / f"{fid}.png").write_bytes(img)
            classes = read_label_png(track / "labels_masks" / f"{fid}_labels_classes.png")
            semantic = read_label_png(track / "labels_masks" / f"{fid}_labels_semantic.png")
            ann = streethazards_annotation(classes, semantic, n_known)
            syn._write_png(ann_dir / f"{fid}.png", ann)
            digest.update(img)
            digest.update(ann.tobytes())
        return {"content_sha256": digest.hexdigest(), "ids": ids, "class_names": list(syn.CLASS_NAMES),
                "known_classes": n_known,
                "annotation": {"known": f"class + 1 (1..{n_known})", "anomaly": n_known + 1, "void": 0}}

    return syn.ensure_derived_world(base, name, cfg_s, build)
