"""Semantic tracks of ``posthoc-bench``: domain adaptation (``cityscapes``, ``acdc``, ``dark-zurich``)
and zero-shot segmentation (``coco-stuff``, ``pascal-voc``).

Per data set and teacher, every frame goes through:

* ``teacher``: the argmax of the teacher's class scores;
* ``csl2@<src>``: :class:`posthoc.Pipeline` with ``fuse=True``: CSL Eq. 3 at C classes
  (:func:`posthoc.fuse` softmaxes the scores first), then the argmax;
* ``csl2+offsets@<src>``: the same Pipeline with ``offsets=True`` (OVeNet-style field of
  :func:`posthoc.offsets_from_proposals`, then :func:`posthoc.offset_resample`), argmax;
* ``vote@<src>``: every region of the proposals takes the majority of the teacher's argmax
  inside it (superpixel voting; the self-trained panoptic thesis's majority-vote alignment).

**How scores become a per-pixel distribution.** The fusion softmaxes its input over C, so
the track hands it *log-probabilities* where the teacher gives probability-like scores:
DAFormer (and any ``.onnx`` semantic model) gives logits, used as is; ZegFormer's class maps
are probability-like sums of softmax x sigmoid, minus the seen-class calibration, so they
become ``log(max(s, 1e-6))`` and the softmax returns ``s`` clipped at 1e-6 and renormalized
over the C classes (the calibrated argmax is kept). A precomputed (K,H,W) float map is taken
as probabilities when it is non-negative and sums to 1 per pixel (within 1e-3), else as
logits; a precomputed (H,W) id map becomes a one-hot distribution (clipped at 1e-6), on
which CSL2 cannot change a label (H_c = mean x D_c is ~0 off the pixel's class) while the
region vote can.

**Proposal quality** (CSL Table 7's oracle; its own table): every region takes the majority
*ground-truth* label inside it (pixels the source leaves unassigned keep the teacher's
label), scored like a method.

Metrics (:class:`posthoc.metrics.SemanticMetrics`): one confusion matrix over the data set,
IoU per class with NaN (skipped) where a class has neither ground truth nor prediction, as
cityscapesScripts ``evalPixelLevelSemanticLabeling`` computes it; fwIoU, mAcc, pAcc; for
ZS3 mIoU(seen), mIoU(unseen) and hIoU = 2SU/(S+U) as ZegFormer computes it.
"""
from __future__ import annotations

import logging
import os
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch

from posthoc.adapters.io import load_npy, write_json_atomic, write_text_atomic
from posthoc.metrics import SemanticMetrics
from posthoc.pipeline import Pipeline
from posthoc.types import TeacherOutput

from . import fingerprint
from . import semantic_readers as sr
from .cache import RunLock
from .config import BenchError, build_adapter, check_output_dir, default_proposals, proposal_settings, slug
from .datasets import DatasetLayoutError
from .infer import progress

log = logging.getLogger(__name__)

__all__ = ["SEMANTIC_DATASETS", "SEMANTIC_VARIANTS", "SemanticConfig", "region_vote", "run_semantic",
           "semantic_scores"]

SEMANTIC_VARIANTS = ("teacher", "csl2", "offsets", "vote")
#: data set -> (task, default teacher, environment variable of its root)
SEMANTIC_DATASETS = {
    "cityscapes": ("da", "daformer", "POSTHOC_CITYSCAPES_ROOT"),
    "acdc": ("da", "daformer", "POSTHOC_ACDC_ROOT"),
    "dark-zurich": ("da", "daformer", "POSTHOC_DARK_ZURICH_ROOT"),
    "coco-stuff": ("zs3", "zegformer", "POSTHOC_COCO_STUFF_ROOT"),
    "pascal-voc": ("zs3", "zegformer", "POSTHOC_VOC_ROOT"),
}
#: the synthetic target domain of each DA track when no data root is given
_SYN_DOMAIN = {"cityscapes": "fog", "acdc": "rain", "dark-zurich": "night"}
_EPS = 1e-6


@dataclass
class SemanticConfig:
    """Settings of one semantic-track run (the CLI flags)."""

    dataset: str = "cityscapes"
    teachers: list = field(default_factory=list)
    weights: str | None = None
    proposals: list | None = None
    data_root: str | None = None
    split: str = "val"
    subset: str | None = None
    device: str | None = None
    batch_size: int = 2
    limit: int | None = None
    seed: int = 0
    world_seed: int = 0
    out: str | None = None
    variants: list = field(default_factory=lambda: list(SEMANTIC_VARIANTS))
    export_pseudo_labels: str | None = None
    pseudo_threshold: str = "0.9"
    pseudo_variant: str | None = None
    progress: bool = True
    superpixels_impl: str | None = None  # --superpixels-impl (None = the source's default)

    def validate(self) -> None:
        if self.dataset not in SEMANTIC_DATASETS:
            raise BenchError(f"dataset must be one of {', '.join(SEMANTIC_DATASETS)}; got {self.dataset!r}")
        bad = [v for v in self.variants if v not in SEMANTIC_VARIANTS]
        if bad or not self.variants:
            raise BenchError(f"--variants must be a non-empty subset of {','.join(SEMANTIC_VARIANTS)} for the "
                             f"semantic tracks; got {','.join(self.variants) or '(empty)'}")
        if self.batch_size < 1:
            raise BenchError(f"--batch-size must be >= 1; got {self.batch_size}")
        if self.limit is not None and self.limit < 1:
            raise BenchError(f"--limit must be >= 1; got {self.limit}")
        parse_threshold(self.pseudo_threshold)


def parse_threshold(s: str) -> tuple[str, float]:
    """``--pseudo-threshold``: ``"0.9"`` -> ("fixed", 0.9); ``"top:20"`` -> ("top", 20.0) (percent per class)."""
    s = str(s).strip()
    try:
        if s.startswith("top:"):
            p = float(s[4:])
            if not 0 < p <= 100:
                raise ValueError
            return "top", p
        t = float(s)
        if not 0 <= t <= 1:
            raise ValueError
        return "fixed", t
    except ValueError:
        raise BenchError(f"--pseudo-threshold must be a confidence in [0,1] (e.g. 0.9) or top:P with P in (0,100] "
                         f"(each class's most confident P %); got {s!r}") from None


# ----------------------------------------------------------------------------- data


def _evaluations(cfg: SemanticConfig) -> list[dict]:
    """[{reader, key, title, synthetic, seen, variants}] of the run (the DA synthetic world adds its source)."""
    task, _, env = SEMANTIC_DATASETS[cfg.dataset]
    root = cfg.data_root or os.environ.get(env)
    if root:
        reader: sr.SemanticFolderReader
        if cfg.dataset in ("cityscapes", "acdc", "dark-zurich"):
            reader = sr.CityscapesLikeReader(root, cfg.dataset, cfg.split, condition=cfg.subset)
            seen = None
        elif cfg.dataset == "pascal-voc":
            reader = sr.VOCReader(root, cfg.split)
            seen = [i for i, n in enumerate(sr.VOC_CLASSES) if n not in sr.VOC_UNSEEN]
        else:
            reader = sr.CocoStuffReader(root, cfg.split)
            seen = [i for i, n in enumerate(sr.COCO_STUFF_CLASSES) if n not in sr.COCO_STUFF_UNSEEN]
        return [{"reader": reader, "key": cfg.dataset, "title": f"{cfg.dataset} {cfg.split} ({root})",
                 "synthetic": False, "seen": seen, "variants": cfg.variants}]
    from . import synthetic as syn

    if cfg.split not in syn.SPLITS:
        raise BenchError(f"--split on the synthetic world must be one of {', '.join(syn.SPLITS)}; got {cfg.split!r}")
    names = syn.CLASS_NAMES
    if task == "zs3":
        from .synthetic_zs3 import SEEN

        d = syn.ensure_world(split=cfg.split, seed=cfg.world_seed)
        seen = [names.index(n) for n in SEEN]
        return [{"reader": sr.SyntheticSemanticReader(d, f"synthetic-{cfg.split}", names), "key": cfg.dataset,
                 "title": f"{cfg.dataset} protocol on the SYNTHETIC WORLD (split {cfg.split}, unseen: "
                          f"{', '.join(n for n in names if n not in SEEN)}) — not the real benchmark",
                 "synthetic": True, "seen": seen, "variants": cfg.variants}]
    from .synthetic_domains import DOMAINS

    domain = cfg.subset or _SYN_DOMAIN[cfg.dataset]
    if domain not in DOMAINS:
        raise BenchError(f"--subset on the synthetic world names the target domain: one of {', '.join(DOMAINS)}; "
                         f"got {domain!r}")
    tgt = syn.ensure_world(split=cfg.split, seed=cfg.world_seed, domain=domain)
    src = syn.ensure_world(split=cfg.split, seed=cfg.world_seed)
    return [
        {"reader": sr.SyntheticSemanticReader(tgt, f"synthetic-{domain}-{cfg.split}", names), "key": cfg.dataset,
         "title": f"{cfg.dataset} protocol on the SYNTHETIC WORLD, target domain '{domain}' (split {cfg.split}) "
                  "— not the real benchmark", "synthetic": True, "seen": None, "variants": cfg.variants},
        {"reader": sr.SyntheticSemanticReader(src, f"synthetic-source-{cfg.split}", names),
         "key": f"{cfg.dataset}-source", "title": f"source domain of the synthetic world (split {cfg.split}): "
         "the domain gap", "synthetic": True, "seen": None, "variants": ["teacher"]},
    ]


# ----------------------------------------------------------------------------- scores


def semantic_scores(t_out, name: str, class_names) -> torch.Tensor:
    """(B,K,H,W) float32 scores whose softmax over K is the teacher's per-pixel distribution (module doc)."""
    if not isinstance(t_out, TeacherOutput) or t_out.kind != "semantic":
        kind = getattr(t_out, "kind", type(t_out).__name__)
        raise BenchError(f"teacher {name!r} gives {kind} output; the semantic tracks need a semantic teacher "
                         f"(class scores over the {len(class_names)} classes), e.g. daformer or zegformer")
    s = t_out.scores.float()
    if s.shape[1] != len(class_names):
        raise BenchError(f"teacher {name!r} scores {s.shape[1]} classes ({', '.join(t_out.class_names[:5])}...); "
                         f"this data set evaluates {len(class_names)} ({', '.join(class_names[:5])}...). Pass weights "
                         "trained for this data set's classes (--weights)")
    if name == "zegformer":
        return torch.log(s.clamp(min=_EPS))
    return s


def _precomputed(folder: Path, fid: str, hw: tuple, k: int) -> torch.Tensor:
    p = folder / f"{fid}.npy"
    if not p.is_file():
        raise DatasetLayoutError(f"precomputed teacher: no {p.name} in {folder} (one <frame id>.npy per frame: "
                                 "(K,H,W) float class scores or (H,W) integer class ids)")
    m = np.asarray(load_npy(p))
    if m.ndim == 2 and m.dtype.kind in "iu":
        if m.shape != tuple(hw):
            raise BenchError(f"precomputed class ids {p} must be {tuple(hw)} (the image size); got {m.shape}")
        if m.size and (m.min() < 0 or m.max() >= k):
            raise BenchError(f"precomputed class ids {p} must lie in [0,{k - 1}]; got [{m.min()},{m.max()}]")
        one = np.full((k, *hw), _EPS, np.float32)
        np.put_along_axis(one, m[None].astype(np.int64), 1.0, axis=0)
        return torch.from_numpy(np.log(one))
    if m.ndim == 3 and m.dtype.kind == "f":
        if m.shape != (k, *hw):
            raise BenchError(f"precomputed class scores {p} must be ({k}, {hw[0]}, {hw[1]}) (K classes x image size); "
                             f"got {m.shape}")
        if not np.isfinite(m).all():
            raise BenchError(f"precomputed class scores {p} contain NaN or Inf")
        m = m.astype(np.float32)
        if m.min() >= 0 and np.allclose(m.sum(0), 1.0, atol=1e-3):
            m = np.log(np.maximum(m, _EPS))
        return torch.from_numpy(m)
    raise BenchError(f"precomputed teacher file {p} must be (K,H,W) float class scores or (H,W) integer class ids; "
                     f"got {m.dtype} {m.shape}")


# ----------------------------------------------------------------------------- variants


def region_vote(pred: np.ndarray, labels: np.ndarray, num_classes: int, ignore: int | None = None) -> np.ndarray:
    """Every region of ``labels`` takes the majority of ``pred`` inside it (ties: the lowest class id).

    Args:
        pred: (B,H,W) int class ids in [0,K) (or ``ignore``, which never votes).
        labels: (B,H,W) int region ids, -1 = unassigned (those pixels keep ``pred``).
    Returns:
        (B,H,W) int64; a region with no valid vote keeps ``pred``.
    """
    pred = np.asarray(pred, np.int64)
    lab = np.asarray(labels, np.int64)
    if pred.shape != lab.shape or pred.ndim != 3:
        raise BenchError(f"region_vote: pred and labels must both be (B,H,W); got {pred.shape} and {lab.shape}")
    votes = pred[pred != ignore] if ignore is not None else pred
    if votes.size and (votes.min() < 0 or votes.max() >= num_classes):
        raise BenchError(f"region_vote: class ids must lie in [0,{num_classes - 1}]"
                         + (f" (or {ignore})" if ignore is not None else "")
                         + f"; got values in [{votes.min()},{votes.max()}]")
    b = np.arange(lab.shape[0]).reshape(-1, 1, 1)
    key = np.where(lab >= 0, lab + b * (int(lab.max(initial=0)) + 1), -1)
    reg, inv = np.unique(key, return_inverse=True)
    inv = inv.reshape(key.shape)
    valid = key >= 0
    if ignore is not None:
        vote_ok = valid & (pred != ignore)
    else:
        vote_ok = valid
    counts = np.bincount(inv[vote_ok] * num_classes + pred[vote_ok], minlength=reg.size * num_classes)
    counts = counts.reshape(reg.size, num_classes)
    winner = counts.argmax(1)
    has = counts.sum(1) > 0
    out = np.where(valid & has[inv], winner[inv], pred)
    return out


def _confidence(p: torch.Tensor) -> torch.Tensor:
    """max_c P / sum_c P of a non-negative (B,C,H,W) map (fused maps are not normalized)."""
    return (p.max(1).values / p.sum(1).clamp(min=1e-12)).float()


def _metric_dict(m: SemanticMetrics, names) -> dict:
    r = m.compute()
    cm = m.confusion.astype(np.float64)
    gt = cm.sum(1)
    iou = np.asarray(r["iou"], np.float64)
    ok = ~np.isnan(iou) & (gt > 0)
    out = {"miou": r["miou"], "iou": dict(zip(names, [None if np.isnan(v) else float(v) for v in iou], strict=False)),
           "fwiou": float((gt[ok] * iou[ok]).sum() / gt.sum()), "macc": r["mean_accuracy"],
           "pacc": r["pixel_accuracy"], "n_pixels": r["n_pixels"], "n_frames": r["n_frames"]}
    for k in ("miou_seen", "miou_unseen", "hiou"):
        if k in r:
            out[k] = r[k]
    return out


def _batches(reader, limit, batch_size):
    refs = reader.refs[:limit] if limit else reader.refs
    batch: list = []
    for ref in refs:
        fr = reader.load(ref)
        if batch and batch[0].image.shape != fr.image.shape:
            yield batch
            batch = []
        batch.append(fr)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


# ----------------------------------------------------------------------------- run


def _chain(variants, sources) -> list[tuple[str, str | None, str]]:
    """[(key, source, kind)] in table order: teacher, then per source csl2, csl2+offsets, vote."""
    out: list[tuple[str, str | None, str]] = [("teacher", None, "teacher")] if "teacher" in variants else []
    for s in sources:
        if "csl2" in variants:
            out.append((f"csl2@{s}", s, "csl2"))
        if "offsets" in variants:
            out.append((f"csl2+offsets@{s}", s, "offsets"))
        if "vote" in variants:
            out.append((f"vote@{s}", s, "vote"))
    return out


def _teacher_specs(cfg: SemanticConfig) -> list[tuple[str, str, object]]:
    """[(display, registry name or 'precomputed', weights)]."""
    from .config import parse_weights

    out: list[tuple[str, str, object]] = []
    for t in cfg.teachers:
        p = Path(t).expanduser()
        if p.is_dir():
            out.append((p.name, "precomputed", p))
        elif t.lower().endswith(".onnx"):
            if not p.is_file():
                raise BenchError(f"--teacher {t}: ONNX file {p} does not exist")
            out.append((p.stem, "daformer", str(p)))  # a semantic ONNX model (logits), DAFormer preprocessing
        else:
            out.append((t, t, parse_weights(cfg.weights)))
    return out


def run_semantic(cfg: SemanticConfig) -> dict:
    """Run a semantic track; returns the results dict written to ``<out>/results.json``."""
    cfg.validate()
    from posthoc import adapters

    specs = _teacher_specs(cfg)
    for _, name, _ in specs:
        if name != "precomputed" and name not in adapters.list_teachers():
            raise BenchError(f"unknown teacher {name!r}; known teachers: {', '.join(adapters.list_teachers())}")
    sources = list(cfg.proposals) if cfg.proposals else default_proposals()
    for s in sources:
        if s not in adapters.list_proposals():
            raise BenchError(f"unknown proposal source {s!r}; known: {', '.join(adapters.list_proposals())}")
    if cfg.pseudo_variant is not None and cfg.pseudo_variant not in [k for k, _, _ in
                                                                      _chain(cfg.variants, sources)]:
        raise BenchError(f"--pseudo-variant {cfg.pseudo_variant!r} is not a variant of this run; variants: "
                         f"{', '.join(k for k, _, _ in _chain(cfg.variants, sources))}")
    if cfg.out is None:
        raise BenchError("no run folder: give --out DIR")
    out = Path(cfg.out).expanduser()
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out} exists and is not a folder; give a folder (new or existing) for --out")
    if cfg.export_pseudo_labels:
        check_output_dir(cfg.export_pseudo_labels, "--export-pseudo-labels")
    fresh = not out.exists()
    check_output_dir(out, "--out")
    with RunLock(out, fresh=fresh):
        return _run(cfg, out, specs, sources)


def _run(cfg, out, specs, sources) -> dict:
    t0 = time.perf_counter()
    torch.manual_seed(cfg.seed)
    evs = _evaluations(cfg)
    task = SEMANTIC_DATASETS[cfg.dataset][0]
    chain_all = _chain(cfg.variants, sources)
    need_props = any(s is not None for _, s, _ in chain_all)
    props = ({s: build_adapter("proposals", s, device=cfg.device, **proposal_settings(cfg, s)) for s in sources}
             if need_props else {})
    teachers = {}
    res = {"config": asdict(cfg) | {"proposals": sources, "out": str(out)}, "task": task,
           "proposal_settings": {s: p.settings() for s, p in props.items() if callable(getattr(p, "settings", None))},
           "versions": fingerprint.versions(), "git": fingerprint.git_sha(), "seed": cfg.seed,
           "started": datetime.now(timezone.utc).isoformat(timespec="seconds"), "evaluations": []}
    md = [f"# posthoc-bench {cfg.dataset}\n"]
    for ev in evs:
        reader = ev["reader"]
        names = list(reader.class_names)
        k = len(names)
        chain = [c for c in chain_all if c[2] in ev["variants"]]
        ev_res = {"key": ev["key"], "dataset": reader.name, "title": ev["title"], "synthetic": ev["synthetic"],
                  "root": str(reader.root), "classes": names,
                  "seen": [names[i] for i in ev["seen"]] if ev["seen"] is not None else None,
                  "frames_found": len(reader), "teachers": {}}
        for display, name, weights in specs:
            if name != "precomputed" and display not in teachers:
                teachers[display] = build_adapter("teacher", name, weights=weights, device=cfg.device)
            mets = {key: SemanticMetrics(k, seen=ev["seen"]) for key, _, _ in chain}
            oracle = {s: SemanticMetrics(k, seen=ev["seen"]) for s in sources} if ev["variants"] != ["teacher"] \
                and need_props else {}
            pseudo = _Pseudo(cfg, ev["key"], display, chain, k) if cfg.export_pseudo_labels and \
                ev["variants"] != ["teacher"] else None
            n = 0
            total = min(len(reader), cfg.limit or len(reader))
            for batch in progress(_batches(reader, cfg.limit, cfg.batch_size), None, f"{ev['key']} {display}",
                                  cfg.progress):
                images = np.stack([f.image for f in batch])
                hw = images.shape[1:3]
                if name == "precomputed":
                    L = torch.stack([_precomputed(weights, f.id, hw, k) for f in batch])
                else:
                    L = semantic_scores(teachers[display](images), name, names)
                if tuple(L.shape[-2:]) != tuple(hw):
                    raise BenchError(f"teacher {display!r} returned scores at {tuple(L.shape[-2:])}; expected the "
                                     f"image size {tuple(hw)}")
                gts = [f.classes for f in batch]
                if any(g is None for g in gts):
                    missing = [f.id for f in batch if f.classes is None]
                    raise DatasetLayoutError(f"{reader.name}: no ground-truth file for frame(s) {missing} (expected "
                                             f"layout:\n{reader.layout})")
                gt = np.stack(gts)
                t_pred = L.argmax(1).numpy()
                preds, confs = {}, {}
                if "teacher" in [c[0] for c in chain]:
                    preds["teacher"] = t_pred
                    confs["teacher"] = torch.softmax(L, 1).max(1).values
                t_out = TeacherOutput(L, "semantic", names)
                for s in {c[1] for c in chain if c[1] is not None}:
                    prop = props[s](images, teacher_output=t_out)
                    kinds = {c[2] for c in chain if c[1] == s}
                    pipe = Pipeline(fuse=True, offsets="offsets" in kinds)
                    st = pipe(L, prop)
                    labels = np.asarray(st.get("components", st["labels"]))
                    if "csl2" in kinds:
                        preds[f"csl2@{s}"] = st["fused"].argmax(1).numpy()
                        confs[f"csl2@{s}"] = _confidence(st["fused"])
                    if "offsets" in kinds:
                        preds[f"csl2+offsets@{s}"] = st["resampled"].argmax(1).numpy()
                        confs[f"csl2+offsets@{s}"] = _confidence(st["resampled"])
                    if "vote" in kinds:
                        v = region_vote(t_pred, labels, k)
                        preds[f"vote@{s}"] = v
                        confs[f"vote@{s}"] = torch.softmax(L, 1).gather(1, torch.from_numpy(v)[:, None])[:, 0]
                    if s in oracle:
                        o = region_vote(gt, labels, k, ignore=255)
                        oracle[s].update(np.where(o == 255, t_pred, o), gt)
                for key, _, _ in chain:
                    mets[key].update(preds[key], gt)
                if pseudo is not None:
                    pseudo.add([f.id for f in batch], preds, confs)
                n += len(batch)
            if n == 0 or total == 0:
                raise DatasetLayoutError(f"{reader.name}: no frames to evaluate under {reader.root}")
            tres = {"frames": n, "variants": {key: _metric_dict(m, names) for key, m in mets.items()},
                    "proposal_quality": {s: _metric_dict(m, names) for s, m in oracle.items()}}
            if pseudo is not None:
                tres["pseudo_labels"] = pseudo.finish()
            ev_res["teachers"][display] = tres
        ev_res["table"] = semantic_table(ev_res, task, cfg.limit)
        md.append(ev_res["table"])
        res["evaluations"].append(ev_res)
    res["timings_s"] = {"total": round(time.perf_counter() - t0, 3)}
    res["finished"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    res["markdown"] = "\n".join(md)
    write_json_atomic(out / "results.json", res)
    write_text_atomic(out / "results.md", res["markdown"])
    return res


class _Pseudo:
    """``--export-pseudo-labels``: per frame ``<id>.png`` (class ids, 255 = low confidence) and
    ``<id>_confidence.npy`` (float16) of the chosen variant, under ``DIR/<data set>/<teacher>/``."""

    def __init__(self, cfg, ev_key, teacher, chain, k):
        self.mode, self.value = parse_threshold(cfg.pseudo_threshold)
        keys = [c[0] for c in chain]
        self.variant = cfg.pseudo_variant or next((x for x in keys if x.startswith("csl2@")), keys[-1])
        self.dir = Path(cfg.export_pseudo_labels).expanduser() / slug(ev_key) / slug(teacher)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.k = k
        self.ids = []
        self.hist = np.zeros((k, 1001), np.int64)  # confidence histograms per class (top:P thresholds)

    def add(self, ids, preds, confs):
        import cv2

        from posthoc.adapters.io import atomic_path

        p, c = preds[self.variant], confs[self.variant].numpy().astype(np.float16)
        for i, fid in enumerate(ids):
            with atomic_path(self.dir / f"{fid}_confidence.npy", suffix=".npy") as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, c[i])
            ok, buf = cv2.imencode(".png", p[i].astype(np.uint8))
            (self.dir / f".{fid}.full.png").write_bytes(buf.tobytes())
            bins = np.clip((c[i].astype(np.float64) * 1000).round().astype(np.int64), 0, 1000)
            np.add.at(self.hist, (p[i].ravel(), bins.ravel()), 1)
            self.ids.append(fid)

    def finish(self) -> dict:
        import cv2

        from posthoc.adapters.io import atomic_path

        if self.mode == "fixed":
            thr = np.full(self.k, self.value)
        else:  # the thesis's class-wise dynamic threshold: each class keeps its most confident P %
            thr = np.ones(self.k)
            for c in range(self.k):
                h = self.hist[c]
                if h.sum():
                    keep = np.cumsum(h[::-1])[::-1]  # pixels with confidence >= bin
                    ok = np.nonzero(keep <= h.sum() * self.value / 100.0)[0]
                    thr[c] = (ok[0] / 1000.0) if ok.size else 1.0
        kept = total = 0
        for fid in self.ids:
            full = self.dir / f".{fid}.full.png"
            p = cv2.imread(str(full), cv2.IMREAD_UNCHANGED)
            if p is None:
                raise BenchError(f"pseudo-label scratch file {full} is missing or unreadable; rerun the track")
            c = np.load(self.dir / f"{fid}_confidence.npy").astype(np.float32)
            lab = np.where(c >= thr[p] - 1e-4 if self.mode == "top" else c >= thr[p], p, 255).astype(np.uint8)
            kept += int((lab != 255).sum())
            total += lab.size
            with atomic_path(self.dir / f"{fid}.png", suffix=".png") as tmp:
                _, buf = cv2.imencode(".png", lab)
                Path(tmp).write_bytes(buf.tobytes())
            full.unlink()
        meta = {"variant": self.variant, "threshold": f"{self.mode}:{self.value}" if self.mode == "top" else self.value,
                "class_thresholds": [round(float(t), 4) for t in thr], "frames": len(self.ids),
                "kept_fraction": kept / max(total, 1), "dir": str(self.dir)}
        write_json_atomic(self.dir / "pseudo_labels.json", meta)
        return meta


def _pct(v) -> str:
    return "—" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100 * v:.1f}"


def _delta(v, b) -> str:
    if b is None or v is None or np.isnan(v) or np.isnan(b):
        return ""
    return f" ({100 * (v - b):+.1f})"


def semantic_table(ev_res: dict, task: str, limit) -> str:
    """Markdown: method rows (mIoU with deltas vs the teacher and vs the region vote), then proposal quality."""
    names = ev_res["classes"]
    per_class = len(names) <= 25
    zs = task == "zs3" and ev_res.get("seen") is not None
    head = ["teacher", "variant", "mIoU", "Δ teacher", "Δ vote"] + (["mIoU S", "mIoU U", "hIoU"] if zs else []) + \
        ["fwIoU", "mAcc", "pAcc"] + (names if per_class else [])
    lines = [f"### {ev_res['title']}", "",
             f"Frames: {max((t['frames'] for t in ev_res['teachers'].values()), default=0)} of "
             f"{ev_res['frames_found']}" + (f" (--limit {limit})" if limit else "") +
             ". Values in percent; one confusion matrix over the data set (cityscapesScripts). "
             "Δ vote = against the region vote of the same proposal source.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]

    def row(t, key, m, base, vote):
        cells = [t, key, _pct(m["miou"]), _delta(m["miou"], base).strip(" ()") or "—",
                 _delta(m["miou"], vote).strip(" ()") or "—"]
        if zs:
            cells += [_pct(m.get("miou_seen")), _pct(m.get("miou_unseen")), _pct(m.get("hiou"))]
        cells += [_pct(m["fwiou"]), _pct(m["macc"]), _pct(m["pacc"])]
        if per_class:
            cells += [_pct(m["iou"][n]) for n in names]
        return "| " + " | ".join(cells) + " |"

    for t, tres in ev_res["teachers"].items():
        base = tres["variants"].get("teacher", {}).get("miou")
        for key, m in tres["variants"].items():
            src = key.split("@")[1] if "@" in key else None
            vote = tres["variants"].get(f"vote@{src}", {}).get("miou") if src and not key.startswith("vote") else None
            lines.append(row(t, key, m, None if key == "teacher" else base, vote))
    pq = [(t, s, m) for t, tres in ev_res["teachers"].items() for s, m in tres["proposal_quality"].items()]
    if pq:
        lines += ["", "Proposal quality (oracle: every region takes its majority ground-truth label; measures the "
                  "proposal source, not a method):", "",
                  "| proposals | mIoU | " + ("mIoU S | mIoU U | " if zs else "") + "fwIoU | mAcc | pAcc |",
                  "|---|---:|" + ("---:|---:|" if zs else "") + "---:|---:|---:|"]
        for _t, s, m in pq[: len({s for _, s, _ in pq})]:
            lines.append(f"| {s} | {_pct(m['miou'])} | " + (f"{_pct(m.get('miou_seen'))} | "
                         f"{_pct(m.get('miou_unseen'))} | " if zs else "") +
                         f"{_pct(m['fwiou'])} | {_pct(m['macc'])} | {_pct(m['pacc'])} |")
    return "\n".join(lines) + "\n"


#: common flags of the anomaly tracks that a semantic track cannot honour: (attribute, flag, default)
_ANOMALY_ONLY_FLAGS = (
    ("shard", "--shard", None),
    ("export_smiyc", "--export-smiyc", None),
    ("metric_mode", "--metric-mode", "smiyc"),
    ("threshold_dtype", "--threshold-dtype", "float64"),
    ("strict", "--strict", False),
)


def _refuse_anomaly_flags(args) -> None:
    """A flag the semantic tracks do not implement is an error, never silently ignored (a user who
    asked for ``--shard 1/3`` must not get the whole data set scored as if it were one shard)."""
    import os

    bad = [flag for attr, flag, default in _ANOMALY_ONLY_FLAGS if getattr(args, attr, default) != default]
    if bad:
        raise BenchError(f"{', '.join(bad)}: not supported by the semantic tracks (they score every frame in one "
                         "process, in memory); drop the flag")
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise BenchError("the semantic tracks do not run under torchrun (WORLD_SIZE > 1); run them in one process")


def main_semantic(args) -> int:
    """CLI entry of the semantic subcommands (called by :func:`posthoc.bench.cli.main`)."""
    import sys

    from posthoc.errors import PosthocError

    from .config import check_device

    def csv(s):
        return [x.strip() for x in s.split(",") if x.strip()]

    try:
        _refuse_anomaly_flags(args)
        teacher = args.teacher or SEMANTIC_DATASETS[args.command][1]
        cfg = SemanticConfig(
            dataset=args.command, teachers=csv(teacher), weights=args.weights,
            proposals=csv(args.proposals) if args.proposals is not None else None, data_root=args.data_root,
            split=args.split, subset=args.subset, device=check_device(args.device), batch_size=args.batch_size,
            limit=args.limit, seed=args.seed, world_seed=args.world_seed,
            variants=csv(args.variants) if args.variants else list(SEMANTIC_VARIANTS),
            export_pseudo_labels=args.export_pseudo_labels, pseudo_threshold=args.pseudo_threshold,
            pseudo_variant=args.pseudo_variant, progress=not args.quiet,
            superpixels_impl=getattr(args, "superpixels_impl", None))
        cfg.out = args.out or str(Path("runs") / f"{cfg.dataset}-{slug('+'.join(Path(t).stem for t in cfg.teachers))}"
                                                f"-{datetime.now().strftime('%Y%m%d-%H%M%S')}")
        res = run_semantic(cfg)
    except (PosthocError, ValueError, OSError, KeyError) as e:
        log.debug("run failed", exc_info=True)
        print(f"posthoc-bench {args.command}: error: {e.args[0] if isinstance(e, KeyError) and e.args else e}",
              file=sys.stderr)
        return 2
    print(res["markdown"])
    print(f"results: {Path(cfg.out) / 'results.json'}  table: {Path(cfg.out) / 'results.md'}", file=sys.stderr)
    return 0
