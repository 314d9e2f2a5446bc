"""A procedural road-scene world in the SegmentMeIfYouCan (SMIYC) folder layout.

No real data set can be downloaded here, so posthoc ships a small synthetic world that
the *real* SMIYC reader (:mod:`posthoc.bench.datasets`) reads, and on which the bundled
teachers (``scripts/train_*.py``) are trained.

This module is the public entry point (import every name from here) and writes world
folders. The work is split along its seams:

* :mod:`posthoc.bench.synthetic_scene`: the class taxonomy and the in-distribution scene,
  drawn with a pinhole-like perspective (road, sidewalks, facades, walls, fences, poles,
  signs, lights, trees, terrain, sky, cars, people) and shaded with per-frame
  appearance variation (palette jitter, textures, cast shadows, haze);
* :mod:`posthoc.bench.synthetic_render`: :func:`render_frame`, which pastes anomalies
  the AnomalyMix way (Tian et al., ECCV 2022: objects cut out of the photographs that
  ship with scikit-image, some recoloured towards in-distribution colours; small
  objects on the road in the obstacle track), applies exposure/gamma/tint, blur and
  sensor noise, and builds the label maps.

Frames are :class:`posthoc.bench.datasets.Frame` (``image``, ``label``, ``id``,
``classes``), the type every data-set reader yields; ``Frame`` here is that class.

Layout (interface 6 of the project brief)::

    <root>/<split>/dataset_AnomalyTrack/   and   <root>/<split>/dataset_ObstacleTrack/
        images/<id>.png                              RGB uint8
        labels_masks/<id>_labels_semantic.png        uint8: 0 in-distribution, 1 anomaly, 255 void
        labels_masks/<id>_labels_classes.png         uint8: class index (CLASS_NAMES), 255 anomaly/void
        world.json                                   config, class names, seed, frame ids

Void follows SMIYC: in the anomaly track the ego-vehicle hood at the bottom of the
frame is void; in the obstacle track everything that is not road (or an obstacle) is
void, as in the official ObstacleTrack, whose region of interest is the drivable
surface. The class map (``*_labels_classes.png``) always holds the full scene's class
indices, with 255 only at anomalies and at the ego-vehicle hood.

Splits: ``"train"`` (no anomalies; used to train the bundled teachers), ``"val"``
(tuning) and ``"test"`` (reported). Frames are deterministic for ``(seed, split,
track, index, size)``: the same arguments give byte-identical files.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import cv2
import numpy as np

from posthoc.errors import ValueRangeError

from .datasets import Frame
from .synthetic_render import (
    DEFAULT,
    TRACKS,
    SyntheticWorldError,
    WorldDefaults,
    check_size,
    check_track,
    render_frame,
)
from .synthetic_scene import (
    ANOMALY,
    BUILDING,
    CAR,
    CLASS_NAMES,
    FENCE,
    PERSON,
    POLE,
    ROAD,
    SIDEWALK,
    SKY,
    STUFF_IDS,
    TERRAIN,
    THING_IDS,
    TLIGHT,
    TSIGN,
    VEG,
    VOID,
    WALL,
)

log = logging.getLogger(__name__)

__all__ = [
    "ANOMALY",
    "BUILDING",
    "CAR",
    "CLASS_NAMES",
    "DEFAULT",
    "FENCE",
    "PERSON",
    "POLE",
    "ROAD",
    "SIDEWALK",
    "SKY",
    "SPLITS",
    "STUFF_IDS",
    "TERRAIN",
    "THING_IDS",
    "TLIGHT",
    "TRACKS",
    "TRACK_DIRS",
    "TSIGN",
    "VEG",
    "VOID",
    "WALL",
    "Frame",
    "SyntheticWorldError",
    "WorldDefaults",
    "default_root",
    "ensure_world",
    "frame_ids",
    "iter_frames",
    "load_frame",
    "render_frame",
    "world_config",
    "world_root",
]

#: folder of each track (keys: ``synthetic_render.TRACKS``)
TRACK_DIRS = {"anomaly": "dataset_AnomalyTrack", "obstacle": "dataset_ObstacleTrack"}
SPLITS = ("train", "val", "test")
_SPLIT_CODE = {"train": 11, "val": 22, "test": 33}
_TRACK_CODE = {"anomaly": 1, "obstacle": 2}
#: bump when the renderer changes, so cached worlds are regenerated
GENERATOR_VERSION = 1


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise SyntheticWorldError(f"split must be one of {list(SPLITS)}; got {split!r}")
    return split


# ----------------------------------------------------------------------------- on disk


def default_root() -> Path:
    """``$POSTHOC_SYNTHETIC_ROOT`` if set, else ``~/.cache/posthoc/synthetic``."""
    env = os.environ.get("POSTHOC_SYNTHETIC_ROOT")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "posthoc" / "synthetic"


def world_config(*, split: str = "test", track: str = "anomaly", n_frames: int | None = None,
                 size: Sequence[int] | None = None, seed: int = 0, domain: str | None = None) -> dict:
    """The configuration a world folder is generated from (and checked against when cached).

    ``domain`` (:data:`posthoc.bench.synthetic_domains.DOMAINS`, e.g. ``"night"``) asks for a
    target domain of the world (domain-adaptation track); None is the source world, whose
    config and frames are unchanged by this option."""
    _check_split(split)
    check_track(track)
    h, w = check_size(DEFAULT.size if size is None else size)
    n = DEFAULT.n_frames[split] if n_frames is None else n_frames
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueRangeError(f"n_frames must be a positive int; got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueRangeError(f"seed must be a non-negative int; got {seed!r}")
    return {
        "generator": "posthoc.bench.synthetic",
        "generator_version": GENERATOR_VERSION,
        "split": split,
        "track": track,
        "n_frames": int(n),
        "size": [h, w],
        "seed": int(seed),
        "anomalies": split != "train",
    } | _domain_entry(domain)


def _domain_entry(domain: str | None) -> dict:
    if domain is None:
        return {}
    from .synthetic_domains import DOMAINS

    if domain not in DOMAINS:
        raise SyntheticWorldError(f"domain must be None or one of {list(DOMAINS)}; got {domain!r}")
    return {"domain": domain}


def world_root(root: os.PathLike | str | None, cfg: dict) -> Path:
    """The root a world of config ``cfg`` lives under.

    An explicit ``root`` is used as given (a different config there replaces the old
    world). Under the shared default root, only the default size and frame count live at
    ``<default_root>/<split>/``; any other size or frame count goes to
    ``<default_root>/custom-<hash of size and n_frames>/<split>/``, so that a small world
    asked for by a test or a quick experiment never evicts the cached default world that
    the benchmark and the training scripts use.
    """
    if root is not None:
        return Path(root)
    base = default_root() / (f"domain-{cfg['domain']}" if cfg.get("domain") else "")
    if tuple(cfg["size"]) == tuple(DEFAULT.size) and cfg["n_frames"] == DEFAULT.n_frames[cfg["split"]]:
        return base
    key = hashlib.sha256(json.dumps([cfg["size"], cfg["n_frames"]]).encode()).hexdigest()[:10]
    return base / f"custom-{key}"


def frame_ids(split: str, n_frames: int) -> list[str]:
    """Frame ids of a split, e.g. ``test_0007``."""
    return [f"{split}_{i:04d}" for i in range(n_frames)]


def _frame_seed(cfg: dict, i: int) -> list[int]:
    extra = [101 + sorted(("fog", "night", "rain")).index(cfg["domain"])] if cfg.get("domain") else []
    return [cfg["seed"], _SPLIT_CODE[cfg["split"]], _TRACK_CODE[cfg["track"]], i, *extra]


def _write_png(path: Path, arr: np.ndarray) -> None:
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise SyntheticWorldError(f"could not encode {path.name} as PNG")
    path.write_bytes(buf.tobytes())


def _read_config(track_dir: Path) -> dict | None:
    try:
        meta = json.loads((track_dir / "world.json").read_text())
        return meta.get("config")
    except (OSError, ValueError, AttributeError):
        return None


def _complete(track_dir: Path, cfg: dict) -> bool:
    if _read_config(track_dir) != cfg:
        return False
    for fid in frame_ids(cfg["split"], cfg["n_frames"]):
        if not (track_dir / "images" / f"{fid}.png").is_file():
            return False
        if not (track_dir / "labels_masks" / f"{fid}_labels_semantic.png").is_file():
            return False
    return True


def ensure_world(root: os.PathLike | str | None = None, *, split: str = "test", track: str = "anomaly",
                 n_frames: int | None = None, size: Sequence[int] | None = None, seed: int = 0,
                 domain: str | None = None) -> Path:
    """Return the track folder of the synthetic world, generating it if needed.

    Generation is deterministic for ``(seed, split, track, n_frames, size)``, cached
    (nothing is written when ``world.json`` matches the requested config and every
    frame is present) and atomic (frames are written to a temporary folder next to the
    target and renamed into place, so a reader never sees a half-written world; a
    concurrent generator of the same config simply reuses the winner's folder).

    Args:
        root: world root; default :func:`default_root` (``$POSTHOC_SYNTHETIC_ROOT`` or
            ``~/.cache/posthoc/synthetic``), where a non-default size or frame count gets
            its own ``custom-<hash>`` sub-root (see :func:`world_root`).
        split: ``"train"`` (no anomalies), ``"val"`` or ``"test"``.
        track: ``"anomaly"`` or ``"obstacle"``.
        n_frames: number of frames; default ``DEFAULT.n_frames[split]``.
        size: (H, W); default ``DEFAULT.size``.
        seed: non-negative int.
        domain: None (the source world) or a target domain (:mod:`posthoc.bench.synthetic_domains`),
            stored under ``<default root>/domain-<name>/``.

    Returns:
        ``<root>/<split>/dataset_AnomalyTrack`` or ``.../dataset_ObstacleTrack``.
    """
    cfg = world_config(split=split, track=track, n_frames=n_frames, size=size, seed=seed, domain=domain)
    root = world_root(root, cfg)
    parent = root / split
    target = parent / TRACK_DIRS[track]
    if _complete(target, cfg):
        return target
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{TRACK_DIRS[track]}-", dir=parent))
    try:
        (tmp / "images").mkdir()
        (tmp / "labels_masks").mkdir()
        ids = frame_ids(split, cfg["n_frames"])
        digest = hashlib.sha256()
        log.info("generating synthetic world %s/%s: %d frames at %dx%d (seed %d) in %s",
                 split, track, len(ids), cfg["size"][0], cfg["size"][1], seed, target)
        for i, fid in enumerate(ids):
            fr = render_frame(_frame_seed(cfg, i), cfg["size"], track=track, anomalies=cfg["anomalies"])
            assert fr.label is not None and fr.classes is not None  # a rendered frame has both
            if domain is not None:
                from .synthetic_domains import apply_domain

                fr.image = apply_domain(fr.image, _frame_seed(cfg, i), domain)
            _write_png(tmp / "images" / f"{fid}.png", fr.image)
            _write_png(tmp / "labels_masks" / f"{fid}_labels_semantic.png", fr.label)
            _write_png(tmp / "labels_masks" / f"{fid}_labels_classes.png", fr.classes)
            digest.update(fr.image.tobytes())
            digest.update(fr.label.tobytes())
        meta = {
            "config": cfg,
            "class_names": list(CLASS_NAMES),
            "stuff_ids": list(STUFF_IDS),
            "thing_ids": list(THING_IDS),
            "labels": {"in_distribution": 0, "anomaly": ANOMALY, "void": VOID},
            "void": "ego-vehicle hood" if track == "anomaly" else "everything but the road (and obstacles)",
            "seed": cfg["seed"],
            "ids": ids,
            "content_sha256": digest.hexdigest(),
        }
        (tmp / "world.json").write_text(json.dumps(meta, indent=1))
        # atomic swap: move any stale folder away, rename ours into place
        if _complete(target, cfg):  # a concurrent generator of the same config finished first
            return target
        if target.exists():
            stale = parent / f".stale-{TRACK_DIRS[track]}-{uuid.uuid4().hex[:8]}"
            try:
                os.replace(target, stale)
            except OSError:
                pass  # the rename below then reports the problem
            else:
                shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            # another process won the race; use its folder if it matches
            if _complete(target, cfg):
                return target
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _read_png(path: Path, color: bool) -> np.ndarray:
    arr = cv2.imread(str(path), cv2.IMREAD_COLOR if color else cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise SyntheticWorldError(f"could not read {path} (missing or not a PNG)")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB) if color else arr


def load_frame(track_dir: os.PathLike | str, frame_id: str) -> Frame:
    """Read one frame of a generated world folder back as a :class:`Frame` (``id`` = ``frame_id``)."""
    d = Path(track_dir)
    return Frame(
        image=_read_png(d / "images" / f"{frame_id}.png", True),
        label=_read_png(d / "labels_masks" / f"{frame_id}_labels_semantic.png", False),
        id=frame_id,
        classes=_read_png(d / "labels_masks" / f"{frame_id}_labels_classes.png", False),
    )


def iter_frames(track_dir: os.PathLike | str) -> Iterator[tuple[str, Frame]]:
    """Yield ``(id, Frame)`` for every frame listed in ``world.json`` of a generated folder."""
    d = Path(track_dir)
    try:
        meta = json.loads((d / "world.json").read_text())
        ids = list(meta["ids"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SyntheticWorldError(
            f"{d} is not a synthetic world folder: expected world.json with an 'ids' list "
            f"next to images/ and labels_masks/ ({type(e).__name__}: {e})"
        ) from None
    for fid in ids:
        yield fid, load_frame(d, fid)


def ensure_derived_world(base: Path, name: str, config: dict, build: Callable[[Path], dict]) -> Path:
    """``base/name``: a folder derived from the world (another layout of its frames), cached by ``config``.

    Returns at once when ``base/name/world.json`` records ``config``. Otherwise ``build(tmp)``
    writes the files into a temporary folder next to the target and returns the rest of the
    metadata; ``world.json`` (``config`` + that metadata) is written last, and the folder is
    renamed into place, so a reader never sees a half-written world.
    """
    target = base / name
    meta_path = target / "world.json"
    try:
        if json.loads(meta_path.read_text()).get("config") == config:
            return target
    except (OSError, ValueError, AttributeError):
        pass
    from posthoc.adapters.io import write_json_atomic

    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{base.name}-{name}-", dir=base))
    try:
        meta = build(tmp)
        write_json_atomic(tmp / "world.json", {"config": config, **meta})
        if target.exists():
            stale = base / f".stale-{name}-{uuid.uuid4().hex[:8]}"
            try:
                os.replace(target, stale)
                shutil.rmtree(stale, ignore_errors=True)
            except OSError:
                pass  # the rename below then reports the problem
        try:
            os.replace(tmp, target)
        except OSError:
            if not meta_path.is_file():  # another process won the race with the same world
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
