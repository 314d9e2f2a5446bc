"""The benchmark engine behind ``posthoc-bench``: teachers x proposals x variants -> metrics.

For each data set (or SMIYC track) and each teacher:

1. **Inference pass** (:mod:`posthoc.bench.infer`). Frames are read in batches of
   equal-size images. The teacher runs once per batch, each proposal source runs once per
   batch (on the images and the teacher's output; image-only sources are shared between
   teachers), and every variant is computed by :class:`posthoc.Pipeline`
   (:mod:`posthoc.bench.variants`): ``teacher`` alone, then per source the selected steps
   of ``csl2`` → ``refine`` → ``offsets``. Every variant's map is cached per frame as
   float16 ``.npy`` in the run folder (:mod:`posthoc.bench.cache`), keyed by a hash of the
   configuration (:mod:`posthoc.bench.fingerprint`), so a rerun with the same ``--out``
   resumes.

2. **Scoring** (:mod:`posthoc.bench.scoring`): the official SMIYC two-pass protocol of
   :func:`posthoc.metrics.evaluate_anomaly_maps` over the cached maps (pixel metrics, then
   component metrics at each variant's pixel best-F1 threshold), PR/ROC plots, overlays,
   and optionally SMIYC submission files.

Results go to ``--out``: ``results.json``, ``results.md``, PR/ROC PNGs, overlays. Library
code logs; nothing here prints.
"""
from __future__ import annotations

import importlib
import logging
import re
import shutil
import tempfile
import time
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from posthoc.adapters.io import write_json_atomic, write_text_atomic
from posthoc.errors import MissingExtraError
from posthoc.metrics.pixel import reduce_curve

from . import evaluations as evaluations_mod
from . import fingerprint
from .cache import CACHE_FORMAT, RunCache, RunLock
from .config import (
    DATASETS,
    PRECOMPUTED,
    VARIANTS,
    BenchConfig,
    BenchError,
    build_adapter,
    check_output_dir,
    default_proposals,
    proposal_settings,
    teacher_specs,
)
from .distributed import Scale, ShardView, save_shard_teacher, shard_note, write_shard_manifest
from .infer import ProposalMemo, Timer, infer_teacher
from .precomputed import PrecomputedScores
from .report import format_table
from .scoring import component_text, export_maps, mode_text, plot_teacher, score_teacher
from .variants import VariantMaps, suppress_choice, variant_chain

log = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "VARIANTS",
    "BenchConfig",
    "BenchError",
    "PrecomputedScores",
    "CURVE_POINTS",
    "default_proposals",
    "default_run_dir",
    "run_benchmark",
]

#: at most about this many points of each variant's PR and ROC curve go into results.json
CURVE_POINTS = 256


def default_run_dir(cfg: BenchConfig, now: datetime | None = None) -> Path:
    """``runs/<track>-<teacher>-<timestamp>``, the run folder when ``--out`` is not given.

    The track is ``smiyc-anomaly``/``smiyc-obstacle``/``smiyc-both`` for SMIYC, else the data
    set's name; several teachers are joined by ``+``; an ONNX path or a folder of maps is
    named by its stem. The timestamp is local time, ``YYYYMMDD-HHMMSS``.
    """
    track = f"smiyc-{cfg.track}" if cfg.dataset == "smiyc" else cfg.dataset
    names = [Path(t.strip()).stem if ("/" in t or t.lower().endswith(".onnx")) else t.strip()
             for t in cfg.teachers if t.strip()]
    teacher = re.sub(r"[^A-Za-z0-9_.+-]+", "_", "+".join(names)) or "teacher"
    stamp = (now or datetime.now()).strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{track}-{teacher}-{stamp}"


def check_extras(cfg: BenchConfig) -> None:
    """Raise :class:`MissingExtraError` before any work when a package the run will need is absent:
    matplotlib for plots (unless ``--no-plots``), h5py for ``--export-smiyc``."""
    need: list[tuple[str, str, str | None]] = []
    if cfg.plots:
        need.append(("matplotlib", "plots (PR/ROC curves, overlays)", "--no-plots"))
    if cfg.export_smiyc:
        need.append(("h5py", "--export-smiyc (SMIYC submission .hdf5 files)", None))
    for module, what, off in need:
        require_module(module, what, off)


def require_module(module: str, what: str, off: str | None = None) -> None:
    """Import ``module`` or raise :class:`MissingExtraError` naming the ``[bench]`` extra (and the
    flag ``off`` that avoids needing it)."""
    try:
        importlib.import_module(module)
    except ImportError as e:
        alt = f", or pass {off}" if off else ""
        raise MissingExtraError(
            f"{what} need {module}, which is not installed; run `pip install 'posthoc[bench]'`{alt} "
            f"(import error: {e})"
        ) from e


def curves_json(c: dict | None, max_points: int = CURVE_POINTS) -> dict | None:
    """A pixel-pass curve dict, downsampled (:func:`posthoc.metrics.pixel.reduce_curve`) to lists of floats."""
    if c is None:
        return None
    r = reduce_curve(c, max_points)
    return {k: [float(x) for x in np.asarray(r[k], dtype=np.float64)] for k in ("precision", "recall", "tpr", "fpr",
                                                                              "thresholds") if k in r}


def _timing_md(t: dict) -> str:
    lines = ["### Time per stage (s)", "", "| stage | seconds |", "|---|---:|"]
    lines += [f"| {k} | {v:.2f} |" for k, v in t.items()]
    return "\n".join(lines) + "\n"


def _build_teacher(spec, cfg: BenchConfig):
    if spec.name == PRECOMPUTED:
        return PrecomputedScores(spec.weights)
    return build_adapter("teacher", spec.name, weights=spec.weights, device=cfg.device, **spec.kw)


def _run_teacher(ev, spec, teacher, prop_objs: dict, chain: list, cache: RunCache, cfg: BenchConfig,
                 timer: Timer, out: Path, prop_memo: ProposalMemo | None, scale: Scale, sam: Any = None) -> dict:
    """One (evaluation, teacher): inference into the cache, then export, metrics and plots.

    Under ``scale`` (torchrun or ``--shard``) only this process's block of frames is evaluated;
    see :mod:`posthoc.bench.distributed`.
    """
    dataset = ShardView(ev.dataset, scale, cfg.limit, cfg.batch_size) if scale.active else ev.dataset
    limit = None if scale.active else cfg.limit
    keys = [v.key for v in chain]
    suppress, reading = suppress_choice(teacher)
    desc = f"{ev.key} {spec.display}" + (f" [{scale.index}/{scale.count}]" if scale.active else "")
    inf = infer_teacher(
        dataset, spec.display, teacher, prop_objs, VariantMaps(chain, suppress, sam=sam), cache, limit=limit,
        batch_size=cfg.batch_size, overlays=cfg.overlays, show_progress=cfg.progress, timer=timer, desc=desc,
        prop_memo=prop_memo,
    )
    n_frames, n_cached, n_labelled = scale.sum([len(inf.processed), inf.cached, len(inf.labelled)])
    res: dict = {
        "refine_suppress": reading if any("refine" in v.steps for v in chain) else None,
        "cache": str(cache.dir) if cfg.cache else None,
        "cache_key": cache.hash,
        "frames": n_frames,
        "frames_cached": n_cached,
        "frames_labelled": n_labelled,
        "variants": {},
    }
    if cfg.export_smiyc:
        with timer("export"):
            res["export"] = export_maps(cfg, dataset, spec.display, keys, cache, inf)
    if not n_labelled:
        return res
    pixel_states: dict = {}
    metrics, curves = score_teacher(dataset, keys, cache, inf.labelled, mode=cfg.metric_mode,
                                    show_progress=cfg.progress, timer=timer, desc=desc,
                                    threshold_dtype=cfg.threshold_dtype, reduce=scale.reduce_hook(pixel_states))
    if cfg.dataset == "streethazards" and not scale.active:  # open-set states are not sharded (yet)
        from .open_semantic import add_open_set

        with timer("open-set"):
            res["open_set"] = add_open_set(cfg, dataset, teacher, prop_objs, chain, cache, inf.labelled, metrics,
                                           suppress, val=ev.open_val, n_known=ev.n_known)
    res["variants"] = metrics
    # PR (precision, recall) and ROC (fpr, tpr) of each variant, downsampled; the numbers use the full curves
    res["curves"] = {k: curves_json(c) for k, c in curves.items()}
    if scale.active and not scale.torchrun:
        res["shard"] = save_shard_teacher(out, ev.key, spec.display, dataset, cache, inf, pixel_states)
    if cfg.plots and scale.writes_results:
        with timer("plots"):
            res.update(plot_teacher(out, ev.key, dataset, spec.display, chain, cache, metrics, curves,
                                    inf.overlay_ids, cfg.metric_mode, synthetic=bool(ev.synthetic)))
    return res


def _peer_plan(cfg: BenchConfig, sources: list) -> dict:
    """Where each selected peer can run; a peer that cannot is skipped with a log line, or is a
    BenchError when the variants were asked for by name."""
    plan: dict = {}

    def cannot(peer: str, why: str) -> None:
        if cfg.variants_explicit:
            raise BenchError(f"variant {peer!r} cannot run: {why}")
        log.info("skipping variant %r: %s", peer, why)

    if "ugains" in cfg.variants:
        plan["ugains"] = cfg.sam_checkpoint is not None
        if not plan["ugains"]:
            cannot("ugains", "it prompts SAM and no SAM weights were given (--sam-checkpoint PATH)")
        elif not Path(str(cfg.sam_checkpoint)).is_file():
            raise BenchError(f"--sam-checkpoint {cfg.sam_checkpoint!r} is not a file")
    if "maskomaly" in cfg.variants:
        ok = []
        for s in sources:
            if s in _MASK_SOURCES:
                ok.append(s)
            else:
                log.info("skipping variant 'maskomaly' for proposal source %r: it gives no mask-transformer "
                         "outputs (raw masks with class or validity scores)", s)
        if not ok:
            cannot("maskomaly", f"none of the proposal sources {sources} gives mask-transformer outputs "
                                f"(use one of {', '.join(_MASK_SOURCES)})")
        plan["maskomaly"] = ok
    return plan


#: registered sources whose Proposals carry raw masks (ProposalSource.gives_masks)
_MASK_SOURCES = ("csl", "onnx", "mask_transformer", "sam")


def teacher_rows(display: str, tres: dict, displays: dict) -> list[dict]:
    """The table rows of one teacher's variants (with the teacher alone as the base)."""
    base = tres["variants"].get("teacher")
    return [
        {
            "teacher": display,
            "variant": displays[k],
            "metrics": tres["variants"][k],
            "base": base if (k != "teacher" and base is not None) else None,
        }
        for k in displays
        if k in tres["variants"]
    ]


def evaluation_table(ev_res: dict, rows: list[dict], metric_mode: str, limit: int | None) -> str:
    """Set ``ev_res["frames_labelled"]`` and ``ev_res["table"]``; returns the markdown table of one evaluation."""
    ev_res["frames_labelled"] = max((t["frames_labelled"] for t in ev_res["teachers"].values()), default=0)
    title = f"{ev_res['title']} — metric mode: {metric_mode}"
    notes = [
        (
            f"Pixel metrics (AP, FPR95, AUROC): {mode_text(metric_mode)}. "
            f"Component metrics (sIoU, PPV, mean F1): {component_text(ev_res['track'])}."
        ),
        "",
        f"Frames evaluated: {ev_res['frames_labelled']} labelled of {ev_res['frames_found']} found"
        + (f" (--limit {limit})" if limit else "")
        + (
            f"; {cached} frame-teacher pairs came from the cache of an earlier run "
            "(their compute time is not in this run's timings)"
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
    return table


def _missing_labels(ev, strict: bool) -> list[str]:
    """Frames without a label file in a data set whose other frames have one: a warning
    naming them (their labels are probably misnamed, e.g. ``.PNG``), or with ``strict`` an error."""
    refs = ev.dataset.refs
    missing = [r for r in refs if r.label_path is None]
    if not missing or len(missing) == len(refs):  # all labelled, or a hidden-label split
        return []
    ids = [r.id for r in missing]
    hints = getattr(ev.dataset, "label_near_misses", {}) or {}
    shown = ", ".join(f"{i} (found {hints[i]})" if i in hints else i for i in ids[:10])
    more = f" and {len(ids) - 10} more" if len(ids) > 10 else ""
    msg = (f"{ev.key}: {len(ids)} of {len(refs)} frames have no label file and are left out of the metrics: "
           f"{shown}{more}")
    if strict:
        raise BenchError(msg + " (--strict)")
    log.warning("%s; pass --strict to make this an error", msg)
    return ids


def run_benchmark(cfg: BenchConfig, scale: Scale | None = None) -> dict:
    """Run the benchmark described by ``cfg``; returns the results dict also written to results.json.

    The output folders are checked (created, writable, not files) and the run folder is
    locked (:class:`posthoc.bench.cache.RunLock`) before any work starts.

    ``scale`` (from :func:`posthoc.bench.distributed.setup`) makes this process evaluate one
    block of the frames: a torchrun rank (states all-reduced; only rank 0 writes results,
    tables and plots) or a ``--shard I/N`` run (its states saved for ``posthoc-bench merge``).
    The blocks of one run share its folder lock (each block takes its own exclusively).

    Raises:
        BenchError: invalid settings, unknown teacher/proposal names (the message lists the
            known ones), a semantic teacher where an anomaly teacher is needed, an output
            path that is a file or not writable, a run folder in use by another run.
        posthoc.bench.datasets.DatasetLayoutError / CorruptFileError: data problems.
    """
    cfg.validate()
    scale = scale or Scale()
    if not cfg.cache and scale.active:
        raise BenchError("--no-cache cannot be used with --shard or torchrun: "
                         "merging the shards needs their cached maps")
    check_extras(cfg)
    _check_names(cfg)  # a bad --teacher or --proposals leaves no run folder behind
    out = Path(cfg.out) if cfg.out else default_run_dir(cfg)
    targets = [(out, "--out")] + ([(cfg.export_smiyc, "--export-smiyc")] if cfg.export_smiyc else [])
    fresh = not Path(out).expanduser().exists()
    for path, flag in targets:  # nothing is created while any of them is bad
        if Path(path).expanduser().exists() and not Path(path).expanduser().is_dir():
            raise BenchError(f"{flag} {Path(path).expanduser()} exists and is not a folder; give a folder "
                             f"(new or existing) for {flag}")
    for path, flag in targets:
        check_output_dir(path, flag)
    out = Path(out).expanduser()
    with RunLock(out, shard=scale.shard, fresh=fresh) as lock:
        return _run_locked(cfg, out, lock, scale)


def _check_names(cfg: BenchConfig) -> None:
    """Unknown teacher or proposal names, before anything is created (the message lists the known ones)."""
    from posthoc import adapters

    known = adapters.list_teachers()
    for s in teacher_specs(cfg):
        if s.name not in known and s.name != PRECOMPUTED:
            raise BenchError(f"unknown teacher {s.name!r}; known teachers: {', '.join(known) or '(none)'}")
    if cfg.proposals and any(v != "teacher" for v in cfg.variants):
        known_p = adapters.list_proposals()
        for p in cfg.proposals:
            if p not in known_p:
                raise BenchError(f"unknown proposal source {p!r}; known proposal sources: {', '.join(known_p)}")


def _run_locked(cfg: BenchConfig, out: Path, lock: RunLock, scale: Scale) -> dict:
    if cfg.cache:
        return _run_cached(cfg, out, lock, scale, out)
    # --no-cache: the maps live in a scratch folder next to the results and are deleted at the end
    scratch = Path(tempfile.mkdtemp(prefix=".nocache-", dir=out))
    try:
        return _run_cached(cfg, out, lock, scale, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _run_cached(cfg: BenchConfig, out: Path, lock: RunLock, scale: Scale, cache_root: Path) -> dict:
    t_start = time.perf_counter()
    timer = Timer()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % (2**32))
    sources = list(cfg.proposals) if cfg.proposals else default_proposals()
    specs = teacher_specs(cfg)
    # surface unknown teachers before any heavy work (world generation, model loading)
    from posthoc import adapters

    known = adapters.list_teachers()
    for s in specs:
        if s.name not in known and s.name != PRECOMPUTED:
            raise BenchError(f"unknown teacher {s.name!r}; known teachers: {', '.join(known) or '(none)'}")
    with timer("setup:data"):
        evaluations = evaluations_mod.evaluations(cfg)
    peer_sources = _peer_plan(cfg, sources)
    chain = variant_chain(cfg.variants, sources if any(v != "teacher" for v in cfg.variants) else [], peer_sources)
    variant_keys = [v.key for v in chain]
    displays = {v.key: v.display for v in chain}
    log.info("run folder %s; teachers %s; proposals %s; variants %s",
             out, [s.display for s in specs], sources, variant_keys)

    # build proposal sources once (their registry names are validated up front)
    with timer("setup:proposals"):
        need_props = any(v.source is not None for v in chain)
        prop_objs = {s: build_adapter("proposals", s, device=cfg.device, **proposal_settings(cfg, s))
                     for s in sources} if need_props else {}
        prop_files = {s: fingerprint.proposal_fingerprint(s, o) for s, o in prop_objs.items()}
        sam = None
        if any(v.key == "ugains" for v in chain):
            from posthoc.adapters.proposals_sam import build_sam

            assert cfg.sam_checkpoint is not None  # the plan above refuses ugains without it
            sam = build_sam(cfg.sam_checkpoint, cfg.sam_model_type, device=cfg.device)
            prop_files["ugains:sam"] = fingerprint.hash_files({"checkpoint": Path(cfg.sam_checkpoint)})
    teachers: dict = {}

    results: dict = {
        "config": asdict(cfg) | {"proposals": sources, "out": str(out)},
        # what each source resolved its settings to (superpixels: the implementation that ran)
        "proposal_settings": {s: f["settings"] for s, f in prop_files.items() if "settings" in f},
        "versions": fingerprint.versions(),
        "git": fingerprint.git_sha(),
        "seed": cfg.seed,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "metric_mode": cfg.metric_mode,
        "threshold_dtype": cfg.threshold_dtype,
        "device": cfg.device or "default",
        "variants": {k: displays[k] for k in variant_keys},
        "evaluations": [],
    }
    md_parts = [f"# posthoc-bench {cfg.dataset}\n"]

    for ev in evaluations:
        ev_res: dict[str, Any] = {
            "key": ev.key,
            "dataset": ev.dataset.name,
            "track": ev.dataset.track,
            "root": str(ev.dataset.root),
            "synthetic": ev.synthetic,
            "world": (ev.world or {}).get("config") if ev.world else None,
            "title": ev.title,
            "frames_found": len(ev.dataset),
            "frames_missing_label": _missing_labels(ev, cfg.strict),
            "teachers": {},
        }
        rows = []
        # image-only proposals are computed once per frame and shared by the teachers
        prop_memo = ProposalMemo() if len(specs) > 1 else None
        for spec in specs:
            if spec.display not in teachers:
                with timer("setup:teacher"):
                    teachers[spec.display] = _build_teacher(spec, cfg)
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
                **({"sam": prop_files["ugains:sam"]} if sam is not None else {}),
                "variants": variant_keys,
                "posthoc": results["versions"].get("posthoc"),
                # edits to the code that computes the maps change them too
                "code": fingerprint.code_fingerprint(),
            }
            cache = RunCache(cache_root, ev.key, spec.display, key_obj, owner=lock.exclusive, shard=lock.shard)
            tres = _run_teacher(ev, spec, teacher, prop_objs, chain, cache, cfg, timer, out, prop_memo, scale, sam)
            ev_res["teachers"][spec.display] = tres
            rows += teacher_rows(spec.display, tres, displays)
        table = evaluation_table(ev_res, rows, cfg.metric_mode, cfg.limit)
        if cfg.dataset == "streethazards":
            from .open_semantic import open_set_table

            table += "\n" + open_set_table(ev_res, displays)
        md_parts.append(table)
        results["evaluations"].append(ev_res)

    # the device each teacher actually ran on (an adapter may resolve None to cuda or cpu)
    results["device_used"] = {name: str(getattr(t, "device", None) or cfg.device or "cpu")
                              for name, t in teachers.items()}
    results["timings_s"] = {k: round(v, 3) for k, v in sorted(timer.t.items())}
    results["timings_s"]["total"] = round(time.perf_counter() - t_start, 3)
    results["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    md = "\n".join(md_parts)
    md += "\n" + _timing_md(results["timings_s"])
    if scale.active:
        results["scale"] = {"index": scale.index, "count": scale.count, "torchrun": scale.torchrun}
        if not scale.torchrun:
            md = shard_note(scale) + md
            write_shard_manifest(out, results, scale)
    results["markdown"] = md
    if not scale.writes_results:
        return results
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "results.md", md)
    log.info("wrote %s and %s", out / "results.json", out / "results.md")
    return results


