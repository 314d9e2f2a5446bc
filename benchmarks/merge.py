"""``posthoc-bench merge RUN_DIR... --out DIR``: the ``--shard I/N`` runs of one benchmark as one run.

Each shard run folder holds ``shard/shard.json``, the pixel metric states of every
(evaluation, teacher, variant) and the labels of its frames (:mod:`posthoc.bench.distributed`).
The merge

1. checks that the folders are the shards 0..N-1 of one split, each once, of the same
   configuration (data set, track, subset, split, teachers, weights, proposals, variants,
   metric mode, limit, seeds, world, posthoc version and code fingerprint), and refuses
   anything else with a :class:`MergeError` that names the problem;
2. adds the pixel states in shard order (= frame order: shards are contiguous blocks), so
   the SMIYC binned curve is the single-process curve;
3. runs the component pass of the official protocol at each variant's pooled pixel
   best-F1 threshold over every shard's cached maps (each verified against the checksum
   its shard recorded) and saved labels (the data set is not needed);
4. writes ``results.json``, ``results.md`` and the PR/ROC plots of one run to ``--out``, and
   copies the first shards' overlays.

The metrics equal those of one process over all frames (tested within 1e-9).
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from posthoc.adapters.io import load_npy, write_json_atomic, write_text_atomic
from posthoc.metrics import PixelMetrics, evaluate_anomaly_maps

from .cache import map_checksum
from .config import BenchError, slug
from .distributed import SHARD_DIR, SHARD_FORMAT, load_state
from .report import plot_curves
from .scoring import metrics_of, mode_text

log = logging.getLogger(__name__)

__all__ = ["CONFIG_FIELDS", "MergeError", "merge_runs"]

#: config fields that must agree between shards (with the flag that sets each)
CONFIG_FIELDS = {
    "dataset": "the data set (command)",
    "track": "--track",
    "subset": "--subset",
    "split": "--split",
    "teachers": "--teacher",
    "weights": "--weights",
    "proposals": "--proposals",
    "variants": "--variants",
    "metric_mode": "--metric-mode",
    "threshold_dtype": "--threshold-dtype",
    "limit": "--limit",
    "batch_size": "--batch-size",
    "seed": "--seed",
    "world_seed": "--world-seed",
}
#: fields of a teacher's cache key that must agree (what each one means)
KEY_FIELDS = {
    "format": "cache format",
    "dataset": "data set",
    "world": "synthetic world content",
    "teacher": "teacher",
    "teacher_kw": "teacher options",
    "teacher_weights": "teacher weights",
    "proposals": "proposal sources and their weights",
    "variants": "variants",
    "posthoc": "posthoc version",
    "code": "code fingerprint (the source that computes the maps)",
}


class MergeError(BenchError):
    """The run folders are not the complete, consistent shards of one run (the message says how)."""


def _read(run: Path) -> dict:
    p = run / SHARD_DIR / "shard.json"
    if not run.is_dir():
        raise MergeError(f"{run} is not a folder (expected the run folder of a --shard I/N run)")
    if not p.is_file():
        what = "a whole run's results.json, not a shard" if (run / "results.json").is_file() else "nothing"
        raise MergeError(f"{run} is not a --shard I/N run folder: no {p} (found {what})")
    try:
        man = json.loads(p.read_text())
    except ValueError as e:
        raise MergeError(f"{p} is not valid JSON ({e})") from None
    if not isinstance(man, dict) or man.get("format") != SHARD_FORMAT or "results" not in man:
        raise MergeError(f"{p}: unknown shard format {man.get('format') if isinstance(man, dict) else man!r}; "
                         f"this posthoc writes format {SHARD_FORMAT}")
    return man


def _check_complete(runs: list[Path], mans: list[dict]) -> None:
    counts = {tuple(m["shard"])[1] for m in mans}
    if len(counts) > 1:
        desc = ", ".join(f"{r} is {m['shard'][0]}/{m['shard'][1]}" for r, m in zip(runs, mans, strict=True))
        raise MergeError(f"the runs come from splits into different numbers of shards: {desc}")
    n = counts.pop()
    seen: dict[int, Path] = {}
    for r, m in zip(runs, mans, strict=True):
        i = int(m["shard"][0])
        if i in seen:
            raise MergeError(f"shard {i}/{n} is given twice: {seen[i]} and {r}")
        seen[i] = r
    missing = [i for i in range(n) if i not in seen]
    if missing:
        raise MergeError(
            f"shards {', '.join(f'{i}/{n}' for i in missing)} are missing (got {', '.join(map(str, sorted(seen)))} "
            f"of 0..{n - 1}); pass the run folders of every shard"
        )


def _cache_key(run: Path, tres: dict) -> dict:
    p = run / tres["shard"]["cache_dir"] / "config.json"
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise MergeError(f"{run}: cannot read the cache key {p} ({e})") from None


def _check_same(runs: list[Path], mans: list[dict]) -> None:
    ref = mans[0]["results"]
    for r, m in zip(runs[1:], mans[1:], strict=True):
        res = m["results"]
        i = m["shard"][0]
        for f, flag in CONFIG_FIELDS.items():
            a, b = ref["config"].get(f), res["config"].get(f)
            if a != b:
                raise MergeError(f"shards differ in {f} ({flag}): shard 0 ({runs[0]}) has {a!r}, "
                                 f"shard {i} ({r}) has {b!r}")
        if ref.get("variants") != res.get("variants"):
            raise MergeError(f"shards differ in their variants: shard 0 has {list(ref['variants'])}, "
                             f"shard {i} ({r}) has {list(res['variants'])}")
        ev_a = [e["key"] for e in ref["evaluations"]]
        ev_b = [e["key"] for e in res["evaluations"]]
        if ev_a != ev_b:
            raise MergeError(f"shards differ in their evaluations: shard 0 has {ev_a}, shard {i} ({r}) has {ev_b}")
        for ea, eb in zip(ref["evaluations"], res["evaluations"], strict=True):
            for f in ("dataset", "track", "frames_found", "synthetic"):
                if ea.get(f) != eb.get(f):
                    raise MergeError(f"{ea['key']}: shards differ in {f}: shard 0 has {ea.get(f)!r}, "
                                     f"shard {i} ({r}) has {eb.get(f)!r}")
            if list(ea["teachers"]) != list(eb["teachers"]):
                raise MergeError(f"{ea['key']}: shards differ in their teachers: shard 0 has {list(ea['teachers'])}, "
                                 f"shard {i} ({r}) has {list(eb['teachers'])}")
            if ea.get("root") != eb.get("root"):
                log.warning("%s: shard 0 read %s, shard %d read %s (same data set name and frame count)",
                            ea["key"], ea.get("root"), i, eb.get("root"))
    # the cache keys hold the world content, weights and code fingerprints: compare them field by field
    keyed = [(r, m) for r, m in zip(runs, mans, strict=True)]
    for e_idx, ev in enumerate(ref["evaluations"]):
        for t in ev["teachers"]:
            keys = []
            for r, m in keyed:
                tres = m["results"]["evaluations"][e_idx]["teachers"][t]
                keys.append((r, m["shard"][0], _cache_key(r, tres) if "shard" in tres else None))
            have = [(r, i, k) for r, i, k in keys if k is not None]
            if not have:
                continue
            r0, i0, k0 = have[0]
            for r, i, k in have[1:]:
                for f, what in KEY_FIELDS.items():
                    if k0.get(f) != k.get(f):
                        raise MergeError(f"{ev['key']} {t}: shards differ in the {what}: shard {i0} ({r0}) has "
                                         f"{_short(k0.get(f))}, shard {i} ({r}) has {_short(k.get(f))}")


def _short(v) -> str:
    s = json.dumps(v, sort_keys=True, default=str)
    return s if len(s) <= 160 else s[:157] + "..."


def _merge_teacher(runs: list[Path], mans: list[dict], e_idx: int, t: str, keys: list[str], mode: str,
                   track: str, threshold_dtype: str = "float64") -> tuple[dict, dict, dict]:
    """(merged teacher record, metrics, curves) of one (evaluation, teacher) over the shards in order."""
    parts = [(r, m["results"]["evaluations"][e_idx]["teachers"][t]) for r, m in zip(runs, mans, strict=True)]
    rec = {
        "refine_suppress": parts[0][1].get("refine_suppress"),
        "cache": [str(r / p["shard"]["cache_dir"]) if "shard" in p else p.get("cache") for r, p in parts],
        "cache_key": parts[0][1].get("cache_key"),
        "frames": sum(p["frames"] for _, p in parts),
        "frames_cached": sum(p["frames_cached"] for _, p in parts),
        "frames_labelled": sum(p["frames_labelled"] for _, p in parts),
        "variants": {},
    }
    if any("export" in p for _, p in parts):
        rec["export"] = [p.get("export") for _, p in parts]
    scored = [(r, p["shard"]) for r, p in parts if "shard" in p]
    if not scored:
        return rec, {}, {}
    pixel = {k: PixelMetrics(mode=mode) for k in keys}
    for k in keys:
        for j, (r, sh) in enumerate(scored):
            if k not in sh["states"]:
                raise MergeError(f"{r}: no pixel state of variant {k!r} for {t}")
            acc = pixel[k] if j == 0 else PixelMetrics(mode=mode)
            try:
                acc.load_state_dict(load_state(r / sh["states"][k]))
            except (OSError, ValueError) as e:
                raise MergeError(f"{r / sh['states'][k]}: {e}") from None
            if j:
                pixel[k].merge(acc)

    def frames():
        for r, sh in scored:
            for fid in sh["labelled"]:
                lp = r / sh["labels_dir"] / f"{fid}.npz"
                try:
                    with np.load(lp, allow_pickle=False) as z:
                        lab = z["label"]
                    rec = json.loads((r / sh["cache_dir"] / "done" / f"{fid}.json").read_text())
                    maps = {k: load_npy(r / sh["cache_dir"] / "maps" / slug(k) / f"{fid}.npy") for k in keys}
                except (OSError, ValueError, KeyError) as e:
                    raise MergeError(f"{r}: frame {fid} of {t}: cannot read its label or cached maps ({e})") from None
                for k, m in maps.items():
                    if map_checksum(m) != (rec.get("checksums") or {}).get(k):
                        raise MergeError(
                            f"{r / sh['cache_dir'] / 'maps' / slug(k) / f'{fid}.npy'}: the cached map differs from "
                            "what its shard run wrote (changed or corrupt); rerun that shard with the same command"
                        )
                yield lab, maps

    res = evaluate_anomaly_maps(frames, track=track, mode=mode, on_empty="record", pixel=pixel,
                                threshold_dtype=threshold_dtype)
    metrics, curves = metrics_of(res, keys)
    rec["variants"] = metrics
    return rec, metrics, curves


def merge_runs(runs: list[Path], out: Path, *, plots: bool = True) -> dict:
    """Merge the ``--shard I/N`` run folders ``runs`` (any order) into one run's results in ``out``.

    Returns:
        the results dict also written to ``out/results.json`` (same layout as a single run's,
        plus ``merged_from``).

    Raises:
        MergeError: a folder that is not a shard run, shards of different splits or
            configurations, a missing shard, a shard given twice, unreadable state files.
    """
    from .runner import _timing_md, curves_json, evaluation_table, require_module, teacher_rows

    t0 = time.perf_counter()
    if plots:  # before any work, like a run
        require_module("matplotlib", "plots (PR/ROC curves, overlays)", "--no-plots")
    if not runs:
        raise MergeError("merge needs the run folders of the shards; got none")
    runs = [Path(r) for r in runs]
    mans = [_read(r) for r in runs]
    _check_complete(runs, mans)
    order = sorted(range(len(runs)), key=lambda j: mans[j]["shard"][0])
    runs, mans = [runs[j] for j in order], [mans[j] for j in order]
    _check_same(runs, mans)
    if out.resolve() in {r.resolve() for r in runs}:
        raise MergeError(f"--out {out} is one of the shard folders; choose a new folder")
    out.mkdir(parents=True, exist_ok=True)

    ref = mans[0]["results"]
    cfg = dict(ref["config"]) | {"out": str(out)}
    mode = ref["metric_mode"]
    displays = dict(ref["variants"])
    keys = list(displays)
    results: dict = {
        "config": cfg,
        "versions": ref["versions"],
        "git": ref["git"],
        "seed": ref["seed"],
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "metric_mode": mode,
        "threshold_dtype": ref.get("threshold_dtype", cfg.get("threshold_dtype", "float64")),
        "device": ref.get("device"),
        "variants": displays,
        "evaluations": [],
        "merged_from": [{"run": str(r), "shard": m["shard"], "git": m["results"].get("git"),
                         "timings_s": m["results"].get("timings_s")} for r, m in zip(runs, mans, strict=True)],
    }
    md_parts = [f"# posthoc-bench {cfg['dataset']}\n"]
    for e_idx, ev0 in enumerate(ref["evaluations"]):
        ev_res = {k: v for k, v in ev0.items() if k not in ("teachers", "table", "frames_labelled")}
        ev_res["teachers"] = {}
        rows = []
        for t in ev0["teachers"]:
            rec, metrics, curves = _merge_teacher(runs, mans, e_idx, t, keys, mode, ev0["track"],
                                                  cfg.get("threshold_dtype", "float64"))
            if metrics:  # the merged curves, as a single run stores them
                rec["curves"] = {k: curves_json(c) for k, c in curves.items()}
            if plots and metrics:
                rec.update(_plots(out, runs, mans, e_idx, ev0, t, displays, metrics, curves, mode,
                                  int(cfg.get("overlays", 0))))
            ev_res["teachers"][t] = rec
            rows += teacher_rows(t, rec, displays)
        md_parts.append(evaluation_table(ev_res, rows, mode, cfg.get("limit")))
        results["evaluations"].append(ev_res)
    if "device_used" in ref:
        results["device_used"] = ref["device_used"]
    shard_total = sum(float((m["results"].get("timings_s") or {}).get("total", 0.0)) for m in mans)
    results["timings_s"] = {"merge": round(time.perf_counter() - t0, 3), "shards_total": round(shard_total, 3)}
    results["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    md = "\n".join(md_parts)
    md += (f"\nMerged from {len(runs)} shards ({', '.join(str(r) for r in runs)}) by `posthoc-bench merge`.\n\n"
           + _timing_md(results["timings_s"]))
    results["markdown"] = md
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "results.md", md)
    log.info("merged %d shards into %s", len(runs), out / "results.json")
    return results


def _plots(out: Path, runs: list[Path], mans: list[dict], e_idx: int, ev0: dict, t: str, displays: dict,
           metrics: dict, curves: dict, mode: str, n_overlays: int) -> dict:
    """PR/ROC plots of the merged curves, and the overlays of the first shards (copied)."""
    tag = f"{slug(ev0['key'])}_{slug(t)}"
    label = {k: ("teacher alone" if k == "teacher" else d) for k, d in displays.items()}
    named = {label[k]: c for k, c in curves.items() if c is not None}
    files = plot_curves(out / f"pr_{tag}.png", out / f"roc_{tag}.png", named,
                        {label[k]: m for k, m in metrics.items()},
                        f"{ev0['dataset']} — {t} ({mode_text(mode).split(' (')[0]})",
                        synthetic=bool(ev0.get("synthetic")))
    copied: list[str] = []
    for r, m in zip(runs, mans, strict=True):
        for p in m["results"]["evaluations"][e_idx]["teachers"][t].get("overlays", []):
            if len(copied) >= n_overlays:
                break
            src = r / "overlays" / Path(p).name
            if src.is_file():
                dst = out / "overlays" / src.name
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(src, dst)
                copied.append(str(dst))
    return {"plots": [str(f) for f in files], "overlays": copied}
