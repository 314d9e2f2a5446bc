"""The benchmark engine behind ``posthoc-bench``: teachers x proposals x variants -> metrics.

For each data set (or SMIYC track) and each teacher:

1. **Inference pass.** Frames are read in batches of equal-size images. The teacher runs
   once per batch, each proposal source runs once per batch (on the images and the
   teacher's output), and the variants are computed from those outputs as a chain, in
   this order, each step on top of the previous selected one:

   * ``teacher``: the teacher's anomaly probability alone;
   * ``csl2``: :func:`posthoc.fuse` of the anomaly map with the proposals' labels
     (CSL scheme 2, Eq. 3);
   * ``refine``: :func:`posthoc.refine` (Mask2Anomaly refinement). Mask-transformer sources
     provide ``class_logits``/``mask_logits``; for every other source we read the
     proposals post hoc as masks: each region of the label map is one mask (sigmoid of its
     mask logit 1 on the region, 0 elsewhere; ``posthoc.refine`` takes the label map
     directly) and its class logits are :func:`posthoc.region_class_logits` of the
     teacher's semantic logits (mean logits over the region plus a "no object" column).
     The "suppress" classes are looked up by name in the teacher's semantic class names
     when it exposes them (``semantic_class_names``), else the default Cityscapes
     trainIds 2-10 apply (which the synthetic world's class indices follow);
   * ``offsets``: :func:`posthoc.offset_resample` with the OVeNet-style offset field and
     confidence of :func:`posthoc.offsets_from_proposals`.

   Every variant's map is cached per frame as float16 ``.npy`` in the run folder, keyed
   by a hash of the configuration (teacher, SHA-256 of its weight files, proposal
   sources and their weight files, variants, data set and root, world seed). A rerun
   with the same ``--out`` resumes: cached frames are not recomputed; a changed config
   gets a new key and the stale cache of that teacher is removed. float16 is also the
   precision of official SMIYC submission files, so metrics read back from the cache see
   what the official evaluation sees.

2. **Pixel pass.** :class:`posthoc.metrics.PixelMetrics` (``mode="smiyc"`` by default)
   per variant, plus a histogram for the PR/ROC plots.

3. **Component pass.** :class:`posthoc.metrics.ComponentMetrics` per variant with the
   track preset (anomaly 500/100 px, obstacle 50/10 px), thresholded at that variant's
   pixel best-F1 threshold as the official code does.

Results go to ``--out``: ``results.json``, ``results.md``, PR/ROC PNGs, overlays, and
optionally SMIYC submission files. Library code logs; nothing here prints.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import logging
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from posthoc.adapters.io import file_sha256, load_npy, save_npy_atomic, write_json_atomic, write_text_atomic

from posthoc.errors import PosthocError, ShapeError
from posthoc.validation import check_range

from . import datasets as ds
from .export import write_submission_frame
from .report import format_table, plot_curves, plot_overlay, verdict

log = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "VARIANTS",
    "BenchConfig",
    "BenchError",
    "PrecomputedScores",
    "default_proposals",
    "run_benchmark",
]

VARIANTS = ("teacher", "csl2", "refine", "offsets")
DATASETS = ("smiyc", "road-anomaly", "laf", "fishyscapes", "streethazards")
#: Cityscapes names of the Mask2Anomaly default "suppress" trainIds 2-10 (stuff other than road/sidewalk)
SUPPRESS_CLASS_NAMES = ("building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation", "terrain", "sky")
#: cache format version; bump when the cached content changes meaning
CACHE_FORMAT = 1
_VARIANT_TITLES = {"csl2": "+CSL2", "refine": "+refine", "offsets": "+offsets"}


class BenchError(PosthocError, ValueError):
    """The benchmark cannot run with the given settings (message says why and what to change)."""


@dataclass
class BenchConfig:
    """Settings of one ``posthoc-bench`` run (the CLI flags, one to one).

    Attributes:
        dataset: one of :data:`DATASETS`.
        track: SMIYC track: ``"anomaly"``, ``"obstacle"`` or ``"both"``.
        subset: data-set subset (SMIYC ``all|validation|test``; Fishyscapes ``laf|static``;
            LostAndFound ``test|noknown``); None = the data set's default.
        teachers: registry names, ``.onnx`` paths, or folders of precomputed maps
            (:class:`PrecomputedScores`).
        weights: weights for a single teacher: a path, or ``role=path,role=path``.
        proposals: proposal-source names; None = :func:`default_proposals`.
        data_root: data-set root; None = environment, or the synthetic world for smiyc.
        split: synthetic-world split (``test`` / ``val``) or StreetHazards split.
        device: device for teachers/proposals (None = the adapters' default).
        batch_size: frames per teacher call (equal-size frames only).
        limit: evaluate only the first N frames of each data set.
        seed: seeds torch / numpy for the run.
        world_seed: seed of the synthetic world (0 = the world the bundled teachers were
            trained for).
        out: run folder.
        variants: subset of :data:`VARIANTS`, applied in that order.
        export_smiyc: folder for official submission files (None = no export).
        metric_mode: ``"smiyc"`` (official binning) or ``"exact"``.
        plots: write PR/ROC and overlay PNGs.
        overlays: number of frames with qualitative overlays per teacher and data set.
        progress: show tqdm progress bars (stderr).
    """

    dataset: str = "smiyc"
    track: str = "both"
    subset: str | None = None
    teachers: list = field(default_factory=lambda: ["obsnet"])
    weights: str | None = None
    proposals: list | None = None
    data_root: str | None = None
    split: str = "test"
    device: str | None = None
    batch_size: int = 2
    limit: int | None = None
    seed: int = 0
    world_seed: int = 0
    out: str | None = None
    variants: list = field(default_factory=lambda: list(VARIANTS))
    export_smiyc: str | None = None
    metric_mode: str = "smiyc"
    plots: bool = True
    overlays: int = 3
    progress: bool = True

    def validate(self) -> None:
        if self.dataset not in DATASETS:
            raise BenchError(f"dataset must be one of {', '.join(DATASETS)}; got {self.dataset!r}")
        if self.track not in ("anomaly", "obstacle", "both"):
            raise BenchError(f"--track must be anomaly, obstacle or both; got {self.track!r}")
        if not self.teachers:
            raise BenchError("at least one --teacher is needed")
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants:
            raise BenchError(f"--variants must be a non-empty subset of {','.join(VARIANTS)}; got {','.join(self.variants) or '(empty)'}")
        if self.batch_size < 1:
            raise BenchError(f"--batch-size must be >= 1; got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise BenchError(f"--limit must be >= 1; got {self.limit}")
        if self.metric_mode not in ("smiyc", "exact"):
            raise BenchError(f"metric mode must be 'smiyc' or 'exact'; got {self.metric_mode!r}")
        if self.weights and len(self.teachers) > 1:
            raise BenchError(
                f"--weights applies to a single --teacher; got {len(self.teachers)} teachers ({','.join(self.teachers)}). "
                "Run them separately or pass each model as a .onnx path."
            )
        if self.overlays < 0:
            raise BenchError(f"overlays must be >= 0; got {self.overlays}")


# --------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------


def _slug(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", s).strip("-") or "x"


def default_proposals() -> list[str]:
    """``["csl", "superpixels"]`` when the CSL region-proposal net is bundled, else ``["superpixels"]``."""
    try:
        from posthoc.adapters.bundled import bundled_names

        names = bundled_names()
    except Exception:  # a broken manifest must not hide the superpixel default
        log.warning("could not read the bundled manifest; proposals default to superpixels", exc_info=True)
        names = []
    return ["csl", "superpixels"] if "csl" in names else ["superpixels"]


def _parse_weights(weights: str | None) -> Any:
    """``path`` -> str; ``role=path,role=path`` -> dict; None -> None."""
    if not weights:
        return None
    if "=" in weights:
        out = {}
        for part in weights.split(","):
            if "=" not in part:
                raise BenchError(f"--weights must be PATH or role=PATH,role=PATH; got {weights!r}")
            role, p = part.split("=", 1)
            out[role.strip()] = p.strip()
        return out
    return weights


def _weight_files(name: str, weights: Any) -> dict:
    """role -> Path of the files a teacher/proposal source loads (explicit or bundled)."""
    if weights is None:
        try:
            from posthoc.adapters.bundled import default_weights

            entry = default_weights(name)
        except (PosthocError, OSError, ValueError):  # nothing bundled, or an unreadable manifest
            return {}
        return {r: Path(p) for r, p in entry.items() if r != "meta" and isinstance(p, (str, Path))}
    if isinstance(weights, dict):
        return {r: Path(p) for r, p in weights.items()}
    return {"model": Path(weights)}


_HASH_CACHE: dict = {}


def _hash_files(files: dict) -> dict:
    out = {}
    for role, p in sorted(files.items()):
        p = Path(p)
        if not p.is_file():
            out[role] = f"missing:{p}"
            continue
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _HASH_CACHE:
            _HASH_CACHE[key] = file_sha256(p)
        out[role] = _HASH_CACHE[key]
    return out


def _call_factory(what: str, name: str, /, **kw):
    """get_teacher / get_proposals (``what`` = "teacher" or "proposal source") passing only the
    keywords the factory accepts (e.g. superpixels take no ``device``)."""
    from posthoc import adapters

    is_teacher = what == "teacher"
    getter = adapters.get_teacher if is_teacher else adapters.get_proposals
    known = adapters.list_teachers() if is_teacher else adapters.list_proposals()
    if name not in known:
        raise BenchError(f"unknown {what} {name!r}; known {what}s: {', '.join(known) or '(none)'}")
    factory = adapters.get_factory("teacher" if is_teacher else "proposals", name)
    try:
        params = inspect.signature(factory).parameters
        accepts_kw = any(p.kind == p.VAR_KEYWORD for p in params.values())
        kw = {k: v for k, v in kw.items() if v is not None and (accepts_kw or k in params)}
    except (TypeError, ValueError):
        kw = {k: v for k, v in kw.items() if v is not None}
    return getter(name, **kw)


@dataclass
class _TeacherSpec:
    arg: str  # what the user typed
    name: str  # registry name
    display: str  # name in tables/folders
    weights: Any  # passed to the factory
    kw: dict  # further factory keywords

    def files(self) -> dict:
        if self.name == PRECOMPUTED:
            return {}
        return _weight_files(self.name, self.weights)

    def fingerprint(self) -> dict:
        """What identifies the teacher's outputs: weight-file hashes, or for precomputed maps
        the (name, size, mtime) of every score file."""
        if self.name == PRECOMPUTED:
            files = sorted(p for p in Path(self.weights).rglob("*") if p.suffix in (".hdf5", ".h5", ".npy"))
            blob = "\n".join(f"{f.relative_to(self.weights)}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
            return {"precomputed": hashlib.sha256(blob.encode()).hexdigest()}
        return _hash_files(self.files())


def _onnx_out_channels(path: Path) -> int | None:
    """Channel count of the first output of an ONNX model (None if dynamic or unreadable)."""
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        dims = model.graph.output[0].type.tensor_type.shape.dim
        return int(dims[1].dim_value) if len(dims) == 4 and dims[1].dim_value > 0 else None
    except Exception as e:  # noqa: BLE001 - onnx raises assorted errors for bad files; the teacher reports them
        log.debug("could not read the output shape of %s: %s", path, e)
        return None


def _teacher_specs(cfg: BenchConfig) -> list[_TeacherSpec]:
    specs = []
    for t in cfg.teachers:
        t = t.strip()
        if not t:
            continue
        if t.lower().endswith(".onnx"):
            p = Path(t).expanduser()
            if not p.is_file():
                raise BenchError(f"--teacher {t}: ONNX file {p} does not exist")
            channels = _onnx_out_channels(p)
            if channels is not None and channels > 1:
                # a semantic model: score it with MSP (a probability, no calibration needed)
                log.info("%s outputs %d classes: benchmarking it as --teacher msp --weights %s", p.name, channels, p)
                specs.append(_TeacherSpec(arg=t, name="msp", display=f"{p.stem}-msp", weights=str(p), kw={}))
            else:
                specs.append(_TeacherSpec(arg=t, name="onnx", display=p.stem, weights=str(p), kw={"kind": "anomaly"}))
        elif Path(t).expanduser().is_dir():
            p = Path(t).expanduser()
            specs.append(_TeacherSpec(arg=t, name=PRECOMPUTED, display=p.name, weights=str(p), kw={}))
        else:
            specs.append(_TeacherSpec(arg=t, name=t, display=t, weights=_parse_weights(cfg.weights), kw={}))
    names = [s.display for s in specs]
    if len(set(names)) != len(names):
        raise BenchError(f"--teacher lists the same teacher twice: {','.join(names)}")
    return specs


def _versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("posthoc", "numpy", "torch", "onnxruntime-gpu", "onnxruntime", "opencv-python-headless", "scikit-image", "h5py"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def _git_sha() -> dict | None:
    """``{"sha", "dirty", "diff_sha256"}`` of the source checkout (None outside a git checkout).

    ``diff_sha256`` hashes the uncommitted changes to tracked files, so edited code gets a new
    cache key even before it is committed.
    """
    here = Path(__file__).resolve().parent

    def git(*args):
        return subprocess.run(["git", *args], cwd=here, capture_output=True, timeout=20, check=False)

    try:
        sha = git("rev-parse", "HEAD")
        if sha.returncode != 0:
            return None
        diff = git("diff", "HEAD")
        return {
            "sha": sha.stdout.decode().strip(),
            "dirty": bool(diff.stdout.strip()),
            "diff_sha256": hashlib.sha256(diff.stdout).hexdigest()[:16] if diff.stdout.strip() else None,
        }
    except (OSError, subprocess.SubprocessError):
        return None


def _code_fingerprint() -> str:
    """SHA-256 (16 hex) of the source that computes the cached maps.

    Covers the posthoc ops and kernels (``posthoc/``, without ``metrics/``, which is
    recomputed from the cache anyway), the adapters (``posthoc.adapters``) and this module.
    Docs, tests and metric code do not invalidate a cache; model files are hashed separately.
    """
    import posthoc.adapters

    import posthoc

    roots = [
        (Path(posthoc.__file__).resolve().parent, "posthoc"),
        (Path(posthoc.adapters.__file__).resolve().parent, "adapters"),
    ]
    files = []
    for root, tag in roots:
        for f in sorted(root.rglob("*.py")):
            rel = f.relative_to(root).as_posix()
            if tag == "posthoc" and rel.startswith("metrics/"):
                continue
            files.append((f"{tag}/{rel}", f))
    files.append(("bench/runner.py", Path(__file__).resolve()))
    h = hashlib.sha256()
    for name, f in files:
        h.update(name.encode() + b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]


PRECOMPUTED = "precomputed"


class PrecomputedScores:
    """Anomaly maps computed elsewhere, used as the teacher (``--teacher DIR``).

    ``DIR`` holds one file per frame, ``<frame id>.hdf5`` (the SMIYC submission format:
    dataset ``value``) or ``<frame id>.npy``, with (H,W) probabilities in [0,1] at the image
    resolution; or a sub-folder per data set named as the official data-set name (so
    ``--teacher anomaly_p/<method>`` works for ``--track both``). There are no semantic
    logits, so ``refine`` needs a mask-transformer proposal source.
    """

    kind = "anomaly"

    def __init__(self, folder: os.PathLike):
        self.folder = Path(folder)

    def _path(self, fid: str, dataset_name: str) -> Path:
        for base in (self.folder / dataset_name, self.folder):
            for ext in (".hdf5", ".h5", ".npy"):
                p = base / f"{fid}{ext}"
                if p.is_file():
                    return p
        raise ds.DatasetLayoutError(
            f"precomputed scores: no {fid}.hdf5 / {fid}.npy in {self.folder} or {self.folder / dataset_name}"
        )

    def for_frames(self, fids: Sequence[str], dataset_name: str, hw: tuple) -> Any:
        from posthoc.types import TeacherOutput

        maps = []
        for fid in fids:
            p = self._path(fid, dataset_name)
            if p.suffix == ".npy":
                m = load_npy(p)
            else:
                from .export import read_submission_frame

                m = read_submission_frame(p)
            m = np.asarray(m)
            if m.shape != tuple(hw):
                raise ShapeError(f"precomputed scores {p} must be {tuple(hw)} (the image size); got {m.shape}")
            maps.append(torch.from_numpy(m.astype(np.float32)))
        scores = torch.stack(maps)[:, None]
        check_range(scores, f"precomputed scores in {self.folder}", 0.0, 1.0)
        return TeacherOutput(scores, "anomaly", ["anomaly"])


class _Timer:
    def __init__(self):
        self.t = defaultdict(float)

    def add(self, key: str, dt: float) -> None:
        self.t[key] += dt

    def __call__(self, key: str):
        timer = self

        class _Ctx:
            def __enter__(self_):
                self_.t0 = time.perf_counter()

            def __exit__(self_, *exc):
                timer.add(key, time.perf_counter() - self_.t0)

        return _Ctx()


def _progress(iterable, total, desc, enabled):
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)


# --------------------------------------------------------------------------------------
# evaluations (data set + track)
# --------------------------------------------------------------------------------------


@dataclass
class _Evaluation:
    dataset: ds.Dataset
    key: str  # e.g. smiyc-anomaly
    title: str
    synthetic: bool
    world: dict | None = None


def _synthetic_track(split: str, track: str, seed: int) -> Path:
    """The synthetic world's track folder (generated on first use). Separate for tests."""
    from . import synthetic

    return synthetic.ensure_world(split=split, track=track, seed=seed)


def _read_world_meta(track_dir: Path) -> dict | None:
    p = track_dir / "world.json"
    try:
        meta = json.loads(p.read_text())
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def _evaluations(cfg: BenchConfig) -> list[_Evaluation]:
    evs = []
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
                evs.append(_Evaluation(reader, f"smiyc-{tr}", title, True, meta))
            else:
                reader = ds.SMIYCReader(root, tr, split=cfg.split, subset=subset)
                meta = _read_world_meta(reader.root)
                synthetic = bool(meta and meta.get("config", {}).get("generator") == "posthoc.bench.synthetic")
                where = "SYNTHETIC WORLD at " if synthetic else ""
                title = f"SMIYC {reader.name} ({where}{reader.root}, subset {subset})"
                evs.append(_Evaluation(reader, f"smiyc-{tr}", title, synthetic, meta))
        return evs
    root = ds.resolve_root(cfg.dataset, cfg.data_root)
    if root is None:
        raise ds.DatasetLayoutError(
            f"{cfg.dataset}: no data root. Pass --data-root DIR or set ${ds.ENV_VARS[cfg.dataset]} "
            f"(or ${ds.ENV_DATA_ROOT}); only 'smiyc' falls back to the synthetic world"
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
    return [_Evaluation(reader, cfg.dataset, title, False, None)]


# --------------------------------------------------------------------------------------
# variant computation
# --------------------------------------------------------------------------------------


def _variant_chain(variants: Sequence[str], sources: Sequence[str]) -> list[tuple[str, str, str | None, list[str]]]:
    """(key, display name, source, steps) for every map the run produces."""
    out = []
    if "teacher" in variants:
        out.append(("teacher", "alone", None, []))
    steps = [v for v in VARIANTS[1:] if v in variants]
    for src in sources:
        for i in range(len(steps)):
            chain = steps[: i + 1]
            key = "+".join(chain) + "@" + src
            display = " ".join(_VARIANT_TITLES[s] for s in chain) + f" [{src}]"
            out.append((key, display, src, chain))
    return out


def _as_anomaly(t_out: Any, teacher: str) -> torch.Tensor:
    from posthoc.types import TeacherOutput

    if not isinstance(t_out, TeacherOutput):
        raise BenchError(f"teacher {teacher!r} returned {type(t_out).__name__}; expected posthoc.TeacherOutput")
    if t_out.kind != "anomaly":
        raise BenchError(
            f"teacher {teacher!r} is a {t_out.kind} model (scores over {len(t_out.class_names)} classes); "
            "the anomaly benchmark needs an anomaly teacher, e.g. msp/maxlogit/entropy/energy/sml on top of it"
        )
    a = t_out.anomaly
    return a.float() if a.dtype != torch.float32 else a


def _labels_at(labels: Any, hw: tuple) -> torch.Tensor:
    lab = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(np.asarray(labels))
    lab = lab.long()
    if tuple(lab.shape[-2:]) != tuple(hw):
        lab = torch.nn.functional.interpolate(lab[:, None].float(), size=hw, mode="nearest")[:, 0].long()
    return lab


def _refine_inputs(props: Any, t_out: Any, labels: torch.Tensor, source: str) -> tuple[Any, torch.Tensor]:
    """(masks, class_logits (B,N,K+1)) for :func:`posthoc.refine`.

    Mask-transformer sources give mask logits (B,N,h,w) and class logits. For every other
    source the proposals are read post hoc as masks: the (B,H,W) region labels themselves
    (``posthoc.refine`` accepts a label map in place of mask logits: region n is the
    mask of label n, sigmoid(mask logit) = 1 on it and 0 elsewhere) with class logits
    from :func:`posthoc.region_class_logits` of the teacher's semantic logits (mean logits
    per region plus a "no object" column).
    """
    import posthoc

    if props.class_logits is not None and props.mask_logits is not None:
        cl = props.class_logits if isinstance(props.class_logits, torch.Tensor) else torch.from_numpy(np.asarray(props.class_logits))
        ml = props.mask_logits if isinstance(props.mask_logits, torch.Tensor) else torch.from_numpy(np.asarray(props.mask_logits))
        return ml.float(), cl.float()
    if t_out.logits is None:
        raise BenchError(
            f"variant 'refine' needs class logits: proposal source {source!r} has none and the teacher gives no "
            "semantic logits (TeacherOutput.logits); drop 'refine' from --variants or use a mask-transformer source"
        )
    logits = t_out.logits if isinstance(t_out.logits, torch.Tensor) else torch.from_numpy(np.asarray(t_out.logits))
    logits = logits.float()
    if tuple(logits.shape[-2:]) != tuple(labels.shape[-2:]):
        logits = torch.nn.functional.interpolate(logits, size=tuple(labels.shape[-2:]), mode="bilinear", align_corners=False)
    n = int(labels.max()) + 1 if labels.numel() else 0
    class_logits = posthoc.region_class_logits(logits, labels.to(logits.device), n)
    return labels, class_logits


def _suppress_ids(teacher: Any) -> tuple[list | None, str]:
    """Refinement "suppress" class ids read from the teacher's semantic class names.

    Called after the teacher's first batch (some teachers learn their class names from the
    model output). Without names, or with generic ``class_<i>`` names, the Cityscapes
    default (trainIds 2-10) of :func:`posthoc.refine` applies.
    """
    try:
        names = list(getattr(teacher, "semantic_class_names", None) or [])
    except Exception:  # noqa: BLE001 - a property of a third-party teacher may raise anything
        names = []
    if not names or all(re.fullmatch(r"class_\d+", str(n)) for n in names):
        return None, "default Cityscapes trainIds 2-10 (the teacher exposes no semantic class names)"
    ids = [i for i, n in enumerate(names) if str(n).strip().lower() in SUPPRESS_CLASS_NAMES]
    if not ids:
        log.warning(
            "refine: none of the teacher's classes %s is a suppress class %s; refinement will not suppress",
            names, SUPPRESS_CLASS_NAMES,
        )
    return ids, f"by name from the teacher's classes: {[names[i] for i in ids]}"


def _compute_variants(
    anomaly: torch.Tensor,
    t_out: Any,
    props_by_src: dict,
    chain: list,
    timer: _Timer,
    suppress_ids: Sequence[int] | None = None,
) -> dict[str, torch.Tensor]:
    """All variant maps (B,1,H,W) for one batch."""
    import posthoc

    hw = tuple(anomaly.shape[-2:])
    maps: dict[str, torch.Tensor] = {}
    current_by_src: dict = {}
    for key, _display, src, steps in chain:
        if src is None:
            maps[key] = anomaly
            continue
        props = props_by_src[src]
        labels = _labels_at(props.labels, hw).to(anomaly.device)
        prev_key = "+".join(steps[:-1]) + "@" + src if len(steps) > 1 else None
        cur = current_by_src.get(prev_key, anomaly) if prev_key else anomaly
        step = steps[-1]
        with timer(f"variant:{step}"):
            if step == "csl2":
                out = posthoc.fuse(cur, labels)
            elif step == "refine":
                masks, class_logits = _refine_inputs(props, t_out, labels, src)
                kw = {} if suppress_ids is None else {"suppress_ids": suppress_ids}
                out = posthoc.refine(cur, masks.to(cur.device), class_logits.to(cur.device), **kw)
            elif step == "offsets":
                # the map being resampled modulates the confidence (teacher-deviation term)
                offsets, confidence = posthoc.offsets_from_proposals(labels, teacher=cur)
                out = posthoc.offset_resample(cur, offsets, confidence)
            else:  # pragma: no cover - validated earlier
                raise BenchError(f"unknown variant {step!r}")
        out = out if isinstance(out, torch.Tensor) else torch.from_numpy(np.asarray(out))
        if out.ndim == 3:
            out = out[:, None]
        if tuple(out.shape) != tuple(anomaly.shape):
            raise ShapeError(f"variant {key} produced shape {tuple(out.shape)}; expected {tuple(anomaly.shape)}")
        check_range(out.float(), f"variant {key} scores", 0.0, 1.0)
        maps[key] = out.float()
        current_by_src[key] = out.float()
    return maps


# --------------------------------------------------------------------------------------
# cache
# --------------------------------------------------------------------------------------


class _Cache:
    """Per-(evaluation, teacher) cache folder of float16 maps keyed by a config hash."""

    def __init__(self, out: Path, ev_key: str, teacher: str, key_obj: dict):
        blob = json.dumps(key_obj, sort_keys=True, default=str).encode()
        self.hash = hashlib.sha256(blob).hexdigest()[:16]
        self.prefix = f"{_slug(ev_key)}__{_slug(teacher)}__"
        self.base = out / "cache"
        self.dir = self.base / f"{self.prefix}{self.hash}"
        if self.base.is_dir():
            for d in self.base.iterdir():
                if d.is_dir() and d.name.startswith(self.prefix) and d != self.dir:
                    log.info("configuration changed: removing stale cache %s", d)
                    shutil.rmtree(d, ignore_errors=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.dir / "config.json", key_obj)

    def map_path(self, variant: str, fid: str) -> Path:
        return self.dir / "maps" / _slug(variant) / f"{fid}.npy"

    def labels_path(self, src: str, fid: str) -> Path:
        return self.dir / "proposals" / _slug(src) / f"{fid}.npy"

    def done_path(self, fid: str) -> Path:
        return self.dir / "done" / f"{fid}.json"

    def is_done(self, fid: str, variants: Sequence[str]) -> bool:
        p = self.done_path(fid)
        if not p.is_file():
            return False
        try:
            rec = json.loads(p.read_text())
        except ValueError:
            return False
        return set(variants) <= set(rec.get("variants", [])) and all(self.map_path(v, fid).is_file() for v in variants)

    def mark_done(self, fid: str, variants: Sequence[str], shape: tuple) -> None:
        write_json_atomic(self.done_path(fid), {"variants": list(variants), "shape": list(shape)})

    def load_map(self, variant: str, fid: str) -> np.ndarray:
        return load_npy(self.map_path(variant, fid))


# --------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------

_COMPONENT_PRESETS = {"anomaly": (500, 100), "obstacle": (50, 10)}


def _pixel_metrics(mode: str):
    from posthoc.metrics import PixelMetrics

    return PixelMetrics(mode=mode)


def _component_metrics(track: str, pixel_result: dict):
    """The official second pass: component metrics with the track preset (anomaly 500/100 px,
    obstacle 50/10 px) at the pixel best-F1 threshold of ``pixel_result``."""
    from posthoc.metrics import ComponentMetrics

    return ComponentMetrics.from_pixel(pixel_result, track)


def _clean(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, (np.floating, float)):
            v = float(v)
            out[k] = None if not np.isfinite(v) else v
        elif isinstance(v, (np.integer, int)) and not isinstance(v, bool):
            out[k] = int(v)
        elif isinstance(v, torch.Tensor) and v.numel() == 1:
            f = float(v)
            out[k] = None if not np.isfinite(f) else f
        elif isinstance(v, (str, bool)) or v is None:
            out[k] = v
        # arrays (curves) are not part of the JSON summary
    return out


# --------------------------------------------------------------------------------------
# main loop
# --------------------------------------------------------------------------------------


def _batches(dataset: ds.Dataset, limit: int | None, batch_size: int, skip: Callable[[str], bool]):
    """Yield lists of (ref, Frame) of equal image size; frames with ``skip(id)`` are yielded as (ref, None)."""
    batch: list = []
    n = 0
    for ref in dataset.refs:
        if limit is not None and n >= limit:
            break
        if skip(ref.id):
            n += 1
            if batch:
                yield batch
                batch = []
            yield [(ref, None)]
            continue
        fr = dataset.load(ref)
        if fr.label is not None and not dataset.keep_remapped(fr):
            log.info("%s: skipping frame %s (no valid label pixels)", dataset.name, ref.id)
            continue
        n += 1
        if batch and (batch[0][1].image.shape != fr.image.shape or len(batch) >= batch_size):
            yield batch
            batch = []
        batch.append((ref, fr))
    if batch:
        yield batch


def run_benchmark(cfg: BenchConfig) -> dict:
    """Run the benchmark described by ``cfg``; returns the results dict also written to results.json.

    Raises:
        BenchError: invalid settings, unknown teacher/proposal names (the message lists the
            known ones), a semantic teacher where an anomaly teacher is needed.
        posthoc.bench.datasets.DatasetLayoutError / CorruptFileError: data problems.
    """
    cfg.validate()
    t_start = time.perf_counter()
    timer = _Timer()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % (2**32))

    out = Path(cfg.out) if cfg.out else Path("runs") / datetime.now().strftime("%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    sources = list(cfg.proposals) if cfg.proposals else default_proposals()
    specs = _teacher_specs(cfg)
    # surface unknown teachers before any heavy work (world generation, model loading)
    from posthoc import adapters

    known = adapters.list_teachers()
    for s in specs:
        if s.name not in known and s.name != PRECOMPUTED:
            raise BenchError(f"unknown teacher {s.name!r}; known teachers: {', '.join(known) or '(none)'}")
    with timer("setup:data"):
        evaluations = _evaluations(cfg)
    chain = _variant_chain(cfg.variants, sources if any(v != "teacher" for v in cfg.variants) else [])
    variant_keys = [c[0] for c in chain]
    displays = {c[0]: c[1] for c in chain}
    log.info("run folder %s; teachers %s; proposals %s; variants %s", out, [s.display for s in specs], sources, variant_keys)

    # build proposal sources once (their registry names are validated up front)
    with timer("setup:proposals"):
        need_props = any(c[2] is not None for c in chain)
        prop_objs = {s: _call_factory("proposal source", s, device=cfg.device) for s in sources} if need_props else {}
        prop_files = {s: _hash_files(_weight_files(s, None)) for s in prop_objs}
    teachers: dict = {}

    results: dict = {
        "config": asdict(cfg) | {"proposals": sources, "out": str(out)},
        "versions": _versions(),
        "git": _git_sha(),
        "seed": cfg.seed,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "metric_mode": cfg.metric_mode,
        "variants": {k: displays[k] for k in variant_keys},
        "evaluations": [],
    }
    md_parts = [f"# posthoc-bench {cfg.dataset}\n"]

    for ev in evaluations:
        ev_res = {
            "key": ev.key,
            "dataset": ev.dataset.name,
            "track": ev.dataset.track,
            "root": str(ev.dataset.root),
            "synthetic": ev.synthetic,
            "world": (ev.world or {}).get("config") if ev.world else None,
            "title": ev.title,
            "frames_found": len(ev.dataset),
            "teachers": {},
        }
        rows = []
        # image-only proposals are computed once per frame and shared by the teachers
        prop_memo = _ProposalMemo() if len(specs) > 1 else None
        for spec in specs:
            if spec.display not in teachers:
                with timer("setup:teacher"):
                    if spec.name == PRECOMPUTED:
                        teachers[spec.display] = PrecomputedScores(spec.weights)
                    else:
                        teachers[spec.display] = _call_factory(
                            "teacher", spec.name, weights=spec.weights, device=cfg.device, **spec.kw
                        )
            teacher = teachers[spec.display]
            key_obj = {
                "format": CACHE_FORMAT,
                "dataset": ev.dataset.name,
                "root": str(Path(ev.dataset.root).resolve()),
                "world": (ev.world or {}).get("content_sha256") if ev.world else None,
                "teacher": spec.name,
                "teacher_kw": spec.kw,
                "teacher_weights": spec.fingerprint(),
                "proposals": {s: prop_files.get(s, {}) for s in sources} if need_props else {},
                "variants": variant_keys,
                "posthoc": results["versions"].get("posthoc"),
                # edits to the code that computes the maps change them too
                "code": _code_fingerprint(),
            }
            cache = _Cache(out, ev.key, spec.display, key_obj)
            tres = _run_teacher(ev, spec, teacher, prop_objs, chain, cache, cfg, timer, out, prop_memo)
            ev_res["teachers"][spec.display] = tres
            base = tres["variants"].get("teacher")
            for k in variant_keys:
                if k in tres["variants"]:
                    rows.append(
                        {
                            "teacher": spec.display,
                            "variant": displays[k],
                            "metrics": tres["variants"][k],
                            "base": base if (k != "teacher" and base is not None) else None,
                        }
                    )
        ev_res["frames_labelled"] = max((t["frames_labelled"] for t in ev_res["teachers"].values()), default=0)
        title = f"{ev.title} — metric mode: {cfg.metric_mode}"
        notes = [
            (
                f"Pixel metrics (AP, FPR95, AUROC): {_mode_text(cfg.metric_mode)}. "
                f"Component metrics (sIoU, PPV, mean F1): {_component_text(ev.dataset.track)}."
            ),
            "",
            f"Frames evaluated: {ev_res['frames_labelled']} labelled of {ev_res['frames_found']} found"
            + (f" (--limit {cfg.limit})" if cfg.limit else "")
            + (
                f"; {cached} frame-teacher pairs came from the cache of an earlier run (their compute time is not in this run's timings)"
                if (cached := sum(t["frames_cached"] for t in ev_res["teachers"].values()))
                else ""
            )
            + ". Values in percent; (±x) is the change against the teacher alone; "
            "'does not help' = neither AP rises nor FPR95 falls, 'mixed' = only one of them improves.",
        ]
        if rows:
            table = format_table(title, rows, notes=notes)
        else:
            table = f"### {title}\n\nNo labelled frames: nothing to score (maps were computed and cached).\n"
        ev_res["table"] = table
        md_parts.append(table)
        results["evaluations"].append(ev_res)

    results["timings_s"] = {k: round(v, 3) for k, v in sorted(timer.t.items())}
    results["timings_s"]["total"] = round(time.perf_counter() - t_start, 3)
    results["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    md = "\n".join(md_parts)
    md += "\n" + _timing_md(results["timings_s"])
    results["markdown"] = md
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "results.md", md)
    log.info("wrote %s and %s", out / "results.json", out / "results.md")
    return results


def _mode_text(mode: str) -> str:
    if mode == "smiyc":
        return "SMIYC mode (official 768 per-frame percentile bins, pooled)"
    return "exact mode (sort-based, sklearn-compatible, pooled)"


def _component_text(track: str) -> str:
    p, g = _COMPONENT_PRESETS[track]
    return f"{track}-track preset (predicted components < {p} px dropped, GT < {g} px void) at the pixel best-F1 threshold"


def _timing_md(t: dict) -> str:
    lines = ["### Time per stage (s)", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in t.items()]
    return "\n".join(lines) + "\n"


class _ProposalMemo:
    """Proposals of image-only sources (``uses_teacher_output`` False), keyed by source and the
    batch's frame ids, kept for the next teacher of the same evaluation up to a memory budget."""

    def __init__(self, budget_bytes: int = 2 << 30):
        self.budget = budget_bytes
        self.used = 0
        self.store: dict = {}

    @staticmethod
    def shareable(obj: Any) -> bool:
        return getattr(obj, "uses_teacher_output", True) is False

    def get(self, src: str, ids: tuple):
        return self.store.get((src, ids))

    def put(self, src: str, ids: tuple, props: Any) -> None:
        size = 0
        for f in ("labels", "region_scores", "validity", "class_logits", "mask_logits"):
            x = getattr(props, f, None)
            if x is not None:
                size += int(x.nbytes) if isinstance(x, np.ndarray) else x.element_size() * x.nelement()
        if self.used + size <= self.budget:
            self.store[(src, ids)] = props
            self.used += size


def _run_teacher(
    ev, spec, teacher, prop_objs, chain, cache: _Cache, cfg: BenchConfig, timer: _Timer, out: Path,
    prop_memo: _ProposalMemo | None = None,
) -> dict:
    dataset = ev.dataset
    variant_keys = [c[0] for c in chain]
    overlay_ids: list[str] = []
    processed: list[tuple[str, bool]] = []  # (id, has label)
    n_cached = 0

    refine_info = None  # suppress ids, decided after the teacher's first batch (see _suppress_ids)
    if (cache.dir / "refine.json").is_file():
        refine_info = json.loads((cache.dir / "refine.json").read_text())
    total = min(len(dataset), cfg.limit) if cfg.limit else len(dataset)
    batches = _batches(dataset, cfg.limit, cfg.batch_size, lambda fid: cache.is_done(fid, variant_keys))
    bar = _progress(None, total, f"{ev.key} {spec.display}", cfg.progress)
    with torch.inference_mode():
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(batches)
            except StopIteration:
                break
            timer.add("load", time.perf_counter() - t0)
            if batch[0][1] is None:  # cached
                ref = batch[0][0]
                n_cached += 1
                processed.append((ref.id, ref.label_path is not None))
                if len(overlay_ids) < cfg.overlays and ref.label_path is not None:
                    overlay_ids.append(ref.id)
                if bar is not None:
                    bar.update(1)
                continue
            images = np.stack([fr.image for _, fr in batch])
            with timer("teacher"):
                if isinstance(teacher, PrecomputedScores):
                    t_out = teacher.for_frames([ref.id for ref, _ in batch], dataset.name, images.shape[1:3])
                else:
                    t_out = teacher(images)
            anomaly = _as_anomaly(t_out, spec.display)
            if tuple(anomaly.shape) != (len(batch), 1) + images.shape[1:3]:
                raise ShapeError(
                    f"teacher {spec.display} returned anomaly scores {tuple(anomaly.shape)}; expected "
                    f"{(len(batch), 1) + images.shape[1:3]} (the input resolution)"
                )
            props_by_src = {}
            ids = tuple(ref.id for ref, _ in batch)
            for src, obj in prop_objs.items():
                shared = prop_memo is not None and prop_memo.shareable(obj)
                hit = prop_memo.get(src, ids) if shared else None
                if hit is not None:
                    props_by_src[src] = hit
                    continue
                with timer(f"proposals:{src}"):
                    props_by_src[src] = obj(images, teacher_output=t_out)
                if shared:
                    prop_memo.put(src, ids, props_by_src[src])
            if refine_info is None:
                suppress, how = _suppress_ids(teacher)
                refine_info = {"suppress_ids": suppress, "reading": how}
                write_json_atomic(cache.dir / "refine.json", refine_info)
            maps = _compute_variants(anomaly, t_out, props_by_src, chain, timer, refine_info["suppress_ids"])
            with timer("cache:write"):
                for b, (ref, fr) in enumerate(batch):
                    for k in variant_keys:
                        save_npy_atomic(cache.map_path(k, ref.id), maps[k][b, 0].detach().cpu().numpy().astype(np.float16))
                    want_overlay = len(overlay_ids) < cfg.overlays and fr.label is not None
                    if want_overlay:
                        overlay_ids.append(ref.id)
                        for src, p in props_by_src.items():
                            lab = _labels_at(p.labels, images.shape[1:3])[b].cpu().numpy().astype(np.int32)
                            save_npy_atomic(cache.labels_path(src, ref.id), lab)
                    cache.mark_done(ref.id, variant_keys, fr.image.shape[:2])
                    processed.append((ref.id, fr.label is not None))
            if bar is not None:
                bar.update(len(batch))
    if bar is not None:
        bar.close()
    if n_cached:
        log.info("%s/%s: %d of %d frames taken from the cache %s", ev.key, spec.display, n_cached, len(processed), cache.dir)

    labelled = [fid for fid, has in processed if has]
    refs = {r.id: r for r in dataset.refs}
    res: dict = {
        "refine_suppress": (refine_info or {}).get("reading"),
        "cache": str(cache.dir),
        "cache_key": cache.hash,
        "frames": len(processed),
        "frames_cached": n_cached,
        "frames_labelled": len(labelled),
        "variants": {},
    }

    # -- export -------------------------------------------------------------------------
    if cfg.export_smiyc:
        with timer("export"):
            for k in variant_keys:
                method = f"posthoc_{spec.display}" if k == "teacher" else f"posthoc_{spec.display}_{k.replace('@', '_')}"
                for fid, _ in processed:
                    write_submission_frame(cfg.export_smiyc, method, dataset.name, fid, cache.load_map(k, fid))
            res["export"] = {"dir": str(cfg.export_smiyc), "dataset_name": dataset.name}
        log.info("exported %d frames x %d variants to %s", len(processed), len(variant_keys), cfg.export_smiyc)

    if not labelled:
        return res

    # -- pixel pass ---------------------------------------------------------------------
    from posthoc.metrics import EmptyMetricError

    pix = {k: _pixel_metrics(cfg.metric_mode) for k in variant_keys}
    label_cache: dict = {}
    budget = 256 << 20
    used = 0
    with timer("metrics:pixel"):
        for fid in _progress(labelled, len(labelled), f"{ev.key} {spec.display} pixel metrics", cfg.progress):
            lab = dataset.load_label(refs[fid])
            if used + lab.nbytes <= budget:
                label_cache[fid] = lab
                used += lab.nbytes
            for k in variant_keys:
                m = cache.load_map(k, fid)
                if m.shape != lab.shape:
                    raise ShapeError(f"cached map {cache.map_path(k, fid)} is {m.shape}; the label is {lab.shape}")
                pix[k].update(m, lab)
        pix_res, curves = {}, {}
        for k in variant_keys:
            try:
                r = pix[k].compute()
            except EmptyMetricError as e:
                log.warning("%s/%s %s: %s", ev.key, spec.display, k, e)
                r = {"error": str(e)}
            curves[k] = r.pop("curves", None)
            pix_res[k] = r

    # -- component pass -----------------------------------------------------------------
    comp = {}
    for k in variant_keys:
        thr = pix_res[k].get("best_f1_threshold")
        if thr is None or not np.isfinite(float(thr)):
            comp[k] = None
            continue
        comp[k] = _component_metrics(dataset.track, pix_res[k])
    with timer("metrics:component"):
        for fid in _progress(labelled, len(labelled), f"{ev.key} {spec.display} component metrics", cfg.progress):
            lab = label_cache.get(fid)
            if lab is None:
                lab = dataset.load_label(refs[fid])
            for k in variant_keys:
                if comp[k] is not None:
                    comp[k].update(cache.load_map(k, fid), lab)
    for k in variant_keys:
        merged = dict(pix_res[k])
        if comp[k] is not None:
            merged.update(comp[k].compute())
        res["variants"][k] = _clean(merged)

    base = res["variants"].get("teacher")
    if base is not None:
        for k in variant_keys[1:]:
            res["variants"][k]["verdict"] = verdict(base, res["variants"][k])

    # -- plots --------------------------------------------------------------------------
    if cfg.plots:
        with timer("plots"):
            tag = f"{_slug(ev.key)}_{_slug(spec.display)}"
            label = {key: ("teacher alone" if src is None else disp) for key, disp, src, _ in chain}
            named = {label[k]: c for k, c in curves.items() if c is not None}
            files = plot_curves(
                out / f"pr_{tag}.png",
                out / f"roc_{tag}.png",
                named,
                {label[k]: m for k, m in res["variants"].items()},
                f"{dataset.name} — {spec.display} ({_mode_text(cfg.metric_mode).split(' (')[0]})",
            )
            res["plots"] = [str(f) for f in files]
            ov_files = []
            final_by_src = {}
            for key, _d, src, _steps in chain:
                if src is not None:
                    final_by_src[src] = key  # the last (longest) chain of each source
            for fid in overlay_ids:
                fr = dataset.load(refs[fid])
                maps = {"teacher alone": cache.load_map("teacher", fid)} if "teacher" in variant_keys else {}
                first_src = next(iter(final_by_src), None)
                if first_src is not None:
                    maps[label[final_by_src[first_src]]] = cache.load_map(final_by_src[first_src], fid)
                props = None
                if first_src is not None and cache.labels_path(first_src, fid).is_file():
                    props = load_npy(cache.labels_path(first_src, fid))
                ov_files.append(
                    plot_overlay(out / "overlays" / f"{tag}_{_slug(fid)}.png", fr.image, fr.label, maps, props, f"{dataset.name} {fid} — {spec.display}")
                )
            res["overlays"] = [str(f) for f in ov_files]
    return res
