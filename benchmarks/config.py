"""Settings of a ``posthoc-bench`` run: :class:`BenchConfig`, the teacher specs parsed from
``--teacher``, and building registered adapters from their names."""
from __future__ import annotations

import inspect
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from posthoc.errors import PosthocError

from .fingerprint import hash_files, precomputed_fingerprint, weight_files

log = logging.getLogger(__name__)

__all__ = ["DATASETS", "PEERS", "PRECOMPUTED", "VARIANTS", "BenchConfig", "BenchError", "TeacherSpec", "build_adapter",
           "check_device", "check_output_dir", "default_proposals", "proposal_settings", "teacher_specs"]

#: training-free peers of CSL2 (:mod:`posthoc.peers`), alternatives to ``csl2``, not stacked on it
PEERS = ("objectomaly", "ugains", "maskomaly")
VARIANTS = ("teacher", "csl2", "refine", "offsets") + PEERS
DATASETS = ("smiyc", "road-anomaly", "laf", "fishyscapes", "streethazards")
#: ``--teacher DIR``: anomaly maps computed elsewhere (:class:`posthoc.bench.precomputed.PrecomputedScores`)
PRECOMPUTED = "precomputed"


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
        variants: subset of :data:`VARIANTS`; the chain steps are applied in that order, each
            peer is its own map. A peer that cannot run (``ugains`` without ``sam_checkpoint``,
            ``maskomaly`` for a source without raw masks) is skipped with a log line, or is a
            :class:`BenchError` when ``variants_explicit``.
        variants_explicit: the variants were asked for by name (``--variants``).
        sam_checkpoint, sam_model_type: SAM weights for ``ugains`` (``--sam-checkpoint``).
        export_smiyc: folder for official submission files (None = no export).
        metric_mode: ``"smiyc"`` (official binning) or ``"exact"``.
        plots: write PR/ROC and overlay PNGs.
        cache: keep every variant's maps in ``out/cache`` so a rerun resumes; False
            (``--no-cache``) computes them into a scratch folder deleted at the end.
        overlays: number of frames with qualitative overlays per teacher and data set.
        progress: show tqdm progress bars (stderr).
        strict: a frame whose label file is missing while other frames have theirs is an
            error (default: a warning naming the frames).
        threshold_dtype: component metrics' threshold comparison, ``"float64"`` (numpy >= 2)
            or ``"float16"`` (the numpy-1.x SMIYC server; see
            :class:`posthoc.metrics.ComponentMetrics`).
        open_threshold: StreetHazards open-set metrics: anomaly threshold of the unknown
            class (None = 95 % TPR on the validation split; :mod:`posthoc.bench.open_semantic`).
        superpixels_impl: ``impl`` of the ``superpixels`` source (``"auto"``, ``"ximgproc"``,
            ``"skimage"``; None = the source's default, ``"auto"``).
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
    variants_explicit: bool = False
    sam_checkpoint: str | None = None
    sam_model_type: str = "vit_b"
    export_smiyc: str | None = None
    metric_mode: str = "smiyc"
    plots: bool = True
    cache: bool = True
    overlays: int = 3
    progress: bool = True
    strict: bool = False
    threshold_dtype: str = "float64"
    open_threshold: float | None = None
    superpixels_impl: str | None = None

    def validate(self) -> None:
        if self.dataset not in DATASETS:
            raise BenchError(f"dataset must be one of {', '.join(DATASETS)}; got {self.dataset!r}")
        if self.track not in ("anomaly", "obstacle", "both"):
            raise BenchError(f"--track must be anomaly, obstacle or both; got {self.track!r}")
        if not self.teachers:
            raise BenchError("at least one --teacher is needed")
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad or not self.variants:
            raise BenchError(
                f"--variants must be a non-empty subset of {','.join(VARIANTS)}; "
                f"got {','.join(self.variants) or '(empty)'}"
            )
        if self.batch_size < 1:
            raise BenchError(f"--batch-size must be >= 1; got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise BenchError(f"--limit must be >= 1; got {self.limit}")
        if self.metric_mode not in ("smiyc", "exact"):
            raise BenchError(f"metric mode must be 'smiyc' or 'exact'; got {self.metric_mode!r}")
        if self.weights and len(self.teachers) > 1:
            raise BenchError(
                f"--weights applies to a single --teacher; got {len(self.teachers)} teachers "
                f"({','.join(self.teachers)}). "
                "Run them separately or pass each model as a .onnx path."
            )
        if self.overlays < 0:
            raise BenchError(f"overlays must be >= 0; got {self.overlays}")
        if self.proposals is not None and not self.proposals:
            raise BenchError("--proposals is empty; name at least one source (e.g. csl,superpixels) or leave it out")
        from posthoc.metrics.component import THRESHOLD_DTYPES

        if self.threshold_dtype not in THRESHOLD_DTYPES:
            raise BenchError(f"--threshold-dtype must be one of {', '.join(THRESHOLD_DTYPES)}; "
                             f"got {self.threshold_dtype!r}")
        if self.open_threshold is not None and not 0.0 <= self.open_threshold <= 1.0:
            raise BenchError(f"--open-threshold must lie in [0,1]; got {self.open_threshold}")
        if self.superpixels_impl not in (None, "auto", "ximgproc", "skimage"):
            raise BenchError(f"--superpixels-impl must be auto, ximgproc or skimage; got {self.superpixels_impl!r}")
        self.device = check_device(self.device)


def check_device(device: Any) -> str | None:
    """Normalise ``--device`` and refuse a device this machine does not have.

    Returns the canonical device string (``"cpu"``, ``"cuda:0"``), or None for the
    adapters' default. ``--device cuda`` without a usable CUDA device is an error, never a
    silent run on the CPU recorded as ``cuda``.
    """
    if device is None or device == "":
        return None
    import torch

    try:
        dev = torch.device(str(device))
    except (RuntimeError, ValueError) as e:
        raise BenchError(
            f"--device must be a torch device such as cpu, cuda or cuda:1; got {device!r} ({e})"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BenchError(
                f"--device {device}: this machine has no usable CUDA device (torch.cuda.is_available() is False; "
                f"torch {torch.__version__}, built for CUDA {torch.version.cuda}). Run with --device cpu, "
                "or leave --device out"
            )
        n = torch.cuda.device_count()
        if dev.index is not None and dev.index >= n:
            raise BenchError(f"--device {device}: this machine has {n} CUDA device(s), cuda:0 to cuda:{n - 1}")
    elif dev.type == "mps":
        if not torch.backends.mps.is_available():
            raise BenchError(f"--device {device}: MPS is not available on this machine; use --device cpu")
    elif dev.type != "cpu":
        raise BenchError(f"--device {device}: posthoc-bench runs on cpu, cuda[:N] or mps; got device type {dev.type!r}")
    return str(dev)



def check_output_dir(path: Any, flag: str) -> Path:
    """Create (if needed) and check a folder the run writes to, before any work starts.

    Raises:
        BenchError: ``path`` exists as a file, cannot be created, or is not writable; the
            message names the flag and the path.
    """
    import tempfile

    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise BenchError(f"{flag} {p} exists and is not a folder; give a folder (new or existing) for {flag}")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise BenchError(f"{flag} {p}: a parent of it exists as a file; give a folder path for {flag}") from None
    except OSError as e:
        raise BenchError(f"{flag} {p} cannot be created: {e.strerror or e}") from None
    try:
        with tempfile.NamedTemporaryFile(dir=p, prefix=".posthoc-write-test-"):
            pass
    except OSError as e:
        raise BenchError(f"{flag} {p} is not writable: {e.strerror or e}") from None
    return p


def slug(s: str) -> str:
    """A file-name-safe version of ``s``."""
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


def proposal_settings(cfg: Any, name: str) -> dict:
    """Keywords the command line gives proposal source ``name`` (``--superpixels-impl``)."""
    impl = getattr(cfg, "superpixels_impl", None)
    return {"impl": impl} if name == "superpixels" and impl is not None else {}


def parse_weights(weights: str | None) -> Any:
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



def _accepts(factory: Any, keyword: str) -> bool:
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a builtin or C callable: let the call decide
        return True
    return keyword in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def build_adapter(kind: str, name: str, /, *, device: Any = None, **kw: Any) -> Any:
    """Build the teacher (``kind="teacher"``) or proposal source (``kind="proposals"``) registered as ``name``.

    ``device`` is the CLI's ``--device``, documented as applying *where supported*: it is
    passed to factories that take a ``device`` argument, and for the others (superpixels,
    for example) a warning names the adapter that ignores it. Every other keyword is passed
    as given (None means "the factory's default" and is not passed), so a keyword the
    factory does not accept is an error, never silently dropped.

    Raises:
        BenchError: unknown name (the message lists the known ones), or a keyword the
            adapter does not accept.
    """
    from posthoc import adapters

    label = "teacher" if kind == "teacher" else "proposal source"
    known = adapters.list_teachers() if kind == "teacher" else adapters.list_proposals()
    if name not in known:
        raise BenchError(f"unknown {label} {name!r}; known {label}s: {', '.join(known) or '(none)'}")
    factory = adapters.get_factory(kind, name)
    kw = {k: v for k, v in kw.items() if v is not None}
    if device is not None:
        if _accepts(factory, "device"):
            kw["device"] = device
        else:
            log.warning("%s %r runs no model on a device; --device %s does not apply to it", label, name, device)
    for k in kw:
        if not _accepts(factory, k):
            raise BenchError(f"{label} {name!r} does not take the setting {k!r} (from the command line); drop it")
    getter = adapters.get_teacher if kind == "teacher" else adapters.get_proposals
    return getter(name, **kw)


@dataclass
class TeacherSpec:
    """One ``--teacher`` entry, resolved to a registry name, a display name and its weights."""

    arg: str  # what the user typed
    name: str  # registry name
    display: str  # name in tables/folders
    weights: Any  # passed to the factory
    kw: dict  # further factory keywords

    def files(self) -> dict:
        if self.name == PRECOMPUTED:
            return {}
        return weight_files(self.name, self.weights)

    def fingerprint(self) -> dict:
        """What identifies the teacher's outputs: weight-file hashes, or for precomputed maps
        the (name, size, mtime) of every score file."""
        if self.name == PRECOMPUTED:
            return precomputed_fingerprint(Path(self.weights))
        return hash_files(self.files())


def _onnx_out_channels(path: Path) -> int | None:
    """Channel count of the first output of an ONNX model (None if dynamic or unreadable)."""
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        dims = model.graph.output[0].type.tensor_type.shape.dim
        return int(dims[1].dim_value) if len(dims) == 4 and dims[1].dim_value > 0 else None
    except Exception as e:
        log.debug("could not read the output shape of %s: %s", path, e)
        return None


def teacher_specs(cfg: BenchConfig) -> list[TeacherSpec]:
    """Resolve ``cfg.teachers``: registry names, ``.onnx`` files (semantic models are scored
    with MSP), or folders of precomputed maps."""
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
                specs.append(TeacherSpec(arg=t, name="msp", display=f"{p.stem}-msp", weights=str(p), kw={}))
            else:
                specs.append(TeacherSpec(arg=t, name="onnx", display=p.stem, weights=str(p), kw={"kind": "anomaly"}))
        elif Path(t).expanduser().is_dir():
            p = Path(t).expanduser()
            specs.append(TeacherSpec(arg=t, name=PRECOMPUTED, display=p.name, weights=str(p), kw={}))
        else:
            specs.append(TeacherSpec(arg=t, name=t, display=t, weights=parse_weights(cfg.weights), kw={}))
    names = [s.display for s in specs]
    if len(set(names)) != len(names):
        raise BenchError(f"--teacher lists the same teacher twice: {','.join(names)}")
    return specs

