"""Scoring a teacher's cached maps: SMIYC export, the official two-pass metrics, and plots.

The metrics come from :func:`posthoc.metrics.evaluate_anomaly_maps`, the one implementation
of the SMIYC protocol: :class:`posthoc.metrics.PixelMetrics` per variant (``mode="smiyc"``
by default), then :class:`posthoc.metrics.ComponentMetrics` with the track preset
(:data:`posthoc.metrics.TRACK_PRESETS`) at that variant's pixel best-F1 threshold.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from posthoc.adapters.io import load_npy
from posthoc.errors import ShapeError
from posthoc.metrics import TRACK_PRESETS, evaluate_anomaly_maps

from .cache import RunCache
from .config import BenchConfig, slug
from .export import write_submission_frame
from .infer import InferenceResult, Timer, progress
from .report import plot_curves, plot_overlay, verdict
from .variants import Variant

log = logging.getLogger(__name__)

__all__ = ["clean", "component_text", "export_maps", "metrics_of", "mode_text", "plot_teacher", "score_teacher"]

#: labels kept in memory between the two metric passes
_LABEL_BUDGET = 256 << 20


def mode_text(mode: str) -> str:
    """How the pixel metrics were computed, for tables and plots."""
    if mode == "smiyc":
        return "SMIYC mode (official 768 per-frame percentile bins, pooled)"
    return "exact mode (sort-based, sklearn-compatible, pooled)"


def component_text(track: str) -> str:
    """How the component metrics were computed, for tables."""
    p, g = TRACK_PRESETS[track]
    return (
        f"{track}-track preset (predicted components < {p} px dropped, GT < {g} px void) "
        "at the pixel best-F1 threshold"
    )


def clean(d: dict) -> dict:
    """A metrics dict with plain JSON numbers (non-finite -> None); arrays (curves) are dropped."""
    out: dict[str, Any] = {}
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
    return out


def export_maps(cfg: BenchConfig, dataset: Any, display: str, keys: Sequence[str], cache: RunCache,
                inf: InferenceResult) -> dict:
    """Write every processed frame's maps as official SMIYC submission files."""
    assert cfg.export_smiyc is not None  # the runner calls this only with --export-smiyc
    for k in keys:
        method = f"posthoc_{display}" if k == "teacher" else f"posthoc_{display}_{k.replace('@', '_')}"
        for fid, _ in inf.processed:
            write_submission_frame(cfg.export_smiyc, method, dataset.name, fid, cache.load_map(k, fid))
    log.info("exported %d frames x %d variants to %s", len(inf.processed), len(keys), cfg.export_smiyc)
    return {"dir": str(cfg.export_smiyc), "dataset_name": dataset.name}


def score_teacher(dataset: Any, keys: Sequence[str], cache: RunCache, labelled: Sequence[str], *, mode: str,
                  show_progress: bool, timer: Timer, desc: str,
                  threshold_dtype: str = "float64",
                  reduce: Callable[[str, dict], None] | None = None) -> tuple[dict, dict]:
    """Metrics of every variant over the labelled frames, read back from the cache
    (every map verified against its checksum, :meth:`RunCache.load_map`).

    ``reduce`` is passed to :func:`posthoc.metrics.evaluate_anomaly_maps` (the metric states
    of a torchrun rank are all-reduced there; see :mod:`posthoc.bench.distributed`); then
    ``labelled`` may be empty on this process.

    Returns:
        ``(metrics, curves)``: per variant key the merged pixel + component metrics (plain
        JSON values) and the PR/ROC curves of the pixel pass (None where it had none).
    """
    refs = {r.id: r for r in dataset.refs}
    label_cache: dict = {}
    used = 0
    n_pass = 0

    def frames():
        nonlocal used, n_pass
        n_pass += 1
        what = "pixel" if n_pass == 1 else "component"
        for fid in progress(labelled, len(labelled), f"{desc} {what} metrics", show_progress):
            lab = label_cache.get(fid)
            if lab is None:
                lab = dataset.load_label(refs[fid])
                if used + lab.nbytes <= _LABEL_BUDGET:
                    label_cache[fid] = lab
                    used += lab.nbytes
            maps = {}
            for k in keys:
                m = cache.load_map(k, fid)
                if m.shape != lab.shape:
                    raise ShapeError(f"cached map {cache.map_path(k, fid)} is {m.shape}; the label is {lab.shape}")
                maps[k] = m
            yield lab, maps

    with timer("metrics"):
        res = evaluate_anomaly_maps(frames, track=dataset.track, mode=mode, on_empty="record",
                                    threshold_dtype=threshold_dtype, names=keys, reduce=reduce)
    return metrics_of(res, keys)


def metrics_of(res: dict, keys: Sequence[str]) -> tuple[dict, dict]:
    """``(metrics, curves)`` per variant key from :func:`evaluate_anomaly_maps` results (see :func:`score_teacher`)."""
    metrics, curves = {}, {}
    for k in keys:
        pix = dict(res[k]["pixel"])
        curves[k] = pix.pop("curves", None)
        merged = pix
        if res[k]["component"] is not None:
            merged.update(res[k]["component"])
        metrics[k] = clean(merged)
    base = metrics.get("teacher")
    if base is not None:
        for k in keys:
            if k != "teacher":
                metrics[k]["verdict"] = verdict(base, metrics[k])
    return metrics, curves


def plot_teacher(out: Path, ev_key: str, dataset: Any, display: str, chain: Sequence[Variant], cache: RunCache,
                 metrics: dict, curves: dict, overlay_ids: Sequence[str], mode: str, *,
                 synthetic: bool = False) -> dict:
    """PR/ROC curves of every variant and qualitative overlays; returns the file lists.
    ``synthetic`` puts SYNTHETIC WORLD in the titles."""
    tag = f"{slug(ev_key)}_{slug(display)}"
    label = {v.key: ("teacher alone" if v.source is None else v.display) for v in chain}
    named = {label[k]: c for k, c in curves.items() if c is not None}
    files = plot_curves(
        out / f"pr_{tag}.png", out / f"roc_{tag}.png", named, {label[k]: m for k, m in metrics.items()},
        f"{dataset.name} — {display} ({mode_text(mode).split(' (')[0]})", synthetic=synthetic,
    )
    final_by_src = {}
    for v in chain:
        if v.source is not None:
            final_by_src[v.source] = v.key  # the last (longest) chain of each source
    first_src = next(iter(final_by_src), None)
    keys = [v.key for v in chain]
    refs = {r.id: r for r in dataset.refs}
    ov_files = []
    for fid in overlay_ids:
        fr = dataset.load(refs[fid])
        maps = {"teacher alone": cache.load_map("teacher", fid)} if "teacher" in keys else {}
        props = None
        if first_src is not None:
            maps[label[final_by_src[first_src]]] = cache.load_map(final_by_src[first_src], fid)
            if cache.labels_path(first_src, fid).is_file():
                props = load_npy(cache.labels_path(first_src, fid))
        ov_files.append(plot_overlay(out / "overlays" / f"{tag}_{slug(fid)}.png", fr.image, fr.label, maps, props,
                                     ("SYNTHETIC WORLD — " if synthetic else "") + f"{dataset.name} {fid} — {display}"))
    return {"plots": [str(f) for f in files], "overlays": [str(f) for f in ov_files]}
