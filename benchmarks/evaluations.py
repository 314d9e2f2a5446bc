"""The evaluations of a run: a data set (or one SMIYC track) with its reader and title."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from . import datasets as ds
from .config import BenchConfig, BenchError

__all__ = ["Evaluation", "evaluations"]


@dataclass
class Evaluation:
    """One data set (or SMIYC track) to evaluate."""

    dataset: ds.Dataset
    key: str  # e.g. smiyc-anomaly
    title: str
    synthetic: bool
    world: dict | None = None
    #: streethazards open-set metrics: the reader of the split the threshold is chosen on (None: found next
    #: to the data root) and the number of known classes
    open_val: ds.Dataset | None = None
    n_known: int | None = None


def _synthetic_track(split: str, track: str, seed: int) -> Path:
    """The synthetic world's track folder (generated on first use). Separate so tests can replace it."""
    from . import synthetic

    return synthetic.ensure_world(split=split, track=track, seed=seed)


def _synthetic_streethazards(split: str, seed: int) -> Path:
    """The synthetic world's split in the StreetHazards layout. Separate so tests can replace it."""
    from .synthetic_streethazards import ensure_streethazards_world

    return ensure_streethazards_world(split=split, seed=seed)


def _streethazards_synthetic(cfg: BenchConfig) -> Evaluation:
    from .synthetic import CLASS_NAMES
    from .synthetic_streethazards import STREETHAZARDS_SPLITS

    split = "val" if cfg.split == "validation" else cfg.split
    if split not in STREETHAZARDS_SPLITS:
        raise BenchError(f"streethazards on the synthetic world: --split must be test, val or train; got {cfg.split!r}")
    folder = _synthetic_streethazards(split, cfg.world_seed)
    reader = ds.StreetHazardsReader(folder, STREETHAZARDS_SPLITS[split])
    val = ds.StreetHazardsReader(_synthetic_streethazards("val", cfg.world_seed), "validation")
    meta = _read_world_meta(folder)
    size = ((meta or {}).get("config") or {}).get("size")
    size_s = f", {size[0]}x{size[1]}" if size else ""
    title = (f"StreetHazards layout on the SYNTHETIC WORLD (split {split}, world seed {cfg.world_seed}{size_s}; "
             "unknown = the anomaly objects) — not the real benchmark")
    return Evaluation(reader, "streethazards", title, True, meta, open_val=val, n_known=len(CLASS_NAMES))


def _read_world_meta(track_dir: Path) -> dict | None:
    p = track_dir / "world.json"
    try:
        meta = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def evaluations(cfg: BenchConfig) -> list[Evaluation]:
    evs = []
    reader: ds.Dataset
    if cfg.dataset == "smiyc":
        tracks = ["anomaly", "obstacle"] if cfg.track == "both" else [cfg.track]
        root = ds.resolve_root("smiyc", cfg.data_root)
        subset = cfg.subset or "all"
        for tr in tracks:
            if root is None:
                tdir = _synthetic_track(cfg.split, tr, cfg.world_seed)
                reader = ds.SMIYCReader(tdir, tr, subset=subset)
                meta = _read_world_meta(tdir)
                conf = (meta or {}).get("config", {})
                size = conf.get("size")
                size_s = f", {size[0]}x{size[1]}" if size else ""
                title = (
                    f"SMIYC {reader.name.split('-')[0]} layout on the SYNTHETIC WORLD (split {cfg.split}, "
                    f"world seed {cfg.world_seed}{size_s}) — not the real benchmark"
                )
                evs.append(Evaluation(reader, f"smiyc-{tr}", title, True, meta))
            else:
                reader = ds.SMIYCReader(root, tr, split=cfg.split, subset=subset)
                meta = _read_world_meta(reader.root)
                synthetic = bool(meta and meta.get("config", {}).get("generator") == "posthoc.bench.synthetic")
                where = "SYNTHETIC WORLD at " if synthetic else ""
                title = f"SMIYC {reader.name} ({where}{reader.root}, subset {subset})"
                evs.append(Evaluation(reader, f"smiyc-{tr}", title, synthetic, meta))
        return evs
    root = ds.resolve_root(cfg.dataset, cfg.data_root)
    if root is None and cfg.dataset == "streethazards":
        return [_streethazards_synthetic(cfg)]
    if root is None:
        raise ds.DatasetLayoutError(
            f"{cfg.dataset}: no data root. Pass --data-root DIR or set ${ds.ENV_VARS[cfg.dataset]} "
            f"(or ${ds.ENV_DATA_ROOT}); only 'smiyc' and 'streethazards' fall back to the synthetic world"
        )
    if cfg.dataset == "laf":
        sub = cfg.subset or "test"
        if sub not in ("test", "noknown", "train"):
            raise BenchError(f"laf --subset must be test, noknown or train; got {sub!r}")
        reader = ds.LostAndFoundReader(root, "train" if sub == "train" else "test", no_known=sub == "noknown")
        title = f"LostAndFound {sub} ({root})"
    elif cfg.dataset == "fishyscapes":
        sub = cfg.subset or "laf"
        reader = ds.FishyscapesReader(root, sub)
        title = f"Fishyscapes {'LostAndFound' if sub == 'laf' else 'Static'} ({root})"
    elif cfg.dataset == "road-anomaly":
        reader = ds.RoadAnomalyReader(root)
        title = f"Road Anomaly ({root})"
    else:
        reader = ds.StreetHazardsReader(root, cfg.split)
        title = f"StreetHazards {cfg.split} ({root})"
    return [Evaluation(reader, cfg.dataset, title, False, None)]

