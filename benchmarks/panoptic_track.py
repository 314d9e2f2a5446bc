"""``posthoc-bench coco-panoptic``: open-set panoptic segmentation from a semantic teacher plus proposals.

Data: COCO panoptic in the panopticapi layout with Mask2Anomaly's unknown split
(``--unknown 5|10|20``, :data:`posthoc.bench.panoptic_readers.UNKNOWN_SPLITS`), or without
``--data-root`` the synthetic world in that layout (persons and cars known things, the
anomaly objects unknown things, the rest stuff; ``--unknown`` does not apply there).

Variants (cumulative, each on top of the previous one):

1. ``baseline``: the teacher's argmax over the known classes; thing instances are the
   connected components of each thing class (:func:`posthoc.panoptic.thing_instances`);
   unknown instances are the connected components of ``anomaly >= threshold``.
2. ``csl2``: the same on the CSL2-fused anomaly map (:class:`posthoc.Pipeline`, ``fuse``).
3. ``mining``: the unknown instances are the components mined by
   :func:`posthoc.mask2anomaly.mine_unknown_instances` on the proposals (with
   :func:`posthoc.region_class_logits` of the teacher's logits when the source has no class
   logits), kept where the fused anomaly passes the threshold. *Reading*: mining decides
   which uncertain regions are unknown *objects* (not stuff) and how they split; the
   anomaly threshold still bounds them, so mining can only remove or split unknown pixels.
4. ``clustering``: thesis Algorithm 2 (:func:`posthoc.panoptic.semantic_guided_clustering`)
   on the teacher's pixel embeddings (``TeacherOutput.features``) inside each known thing
   class mask and inside the previous variant's unknown mask.

Every variant's candidate segments (one per stuff class, per thing instance, per unknown
instance) go through :func:`posthoc.panoptic.panoptic_fusion` (Mask2Former's rules) with
soft masks ``1 - u`` on the known segments' pixels and ``u`` on the unknown segments'
pixels, where ``u`` is that variant's anomaly map rescaled piecewise linearly so that its
threshold maps to 0.5 (:func:`unknown_probability`), and scores = the mean of the mask over
the segment: known and unknown segments compete per pixel.

The anomaly threshold of each variant is ``--threshold`` or, on the synthetic world, the
pixel best-F1 threshold of "unknown vs known" on the val split (never the test split);
on real data without ``--threshold`` it is 0.5.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from posthoc.adapters.io import atomic_path, write_json_atomic, write_text_atomic
from posthoc.components import connected_components
from posthoc.fusion import region_class_logits
from posthoc.mask2anomaly import mine_unknown_instances
from posthoc.metrics import PanopticQuality
from posthoc.panoptic import panoptic_fusion, semantic_guided_clustering, thing_instances
from posthoc.pipeline import Pipeline

from . import fingerprint
from .cache import RunLock
from .config import BenchError, build_adapter, check_device, check_output_dir, default_proposals, teacher_specs
from .infer import Timer, progress
from .panoptic_readers import SYNTHETIC_UNKNOWN, UNKNOWN_SPLITS, CocoPanopticReader, ensure_panoptic_world

log = logging.getLogger(__name__)

__all__ = ["PANOPTIC_VARIANTS", "PanopticConfig", "run_panoptic", "unknown_probability"]

PANOPTIC_VARIANTS = ("baseline", "csl2", "mining", "clustering")
_TITLES = {"baseline": "baseline", "csl2": "+CSL2", "mining": "+mining", "clustering": "+clustering"}
_KEYS = ("pq", "sq", "rq", "pq_things", "pq_stuff", "pq_known", "sq_known", "rq_known",
         "pq_unknown", "sq_unknown", "rq_unknown")


@dataclass
class PanopticConfig:
    """Settings of a ``coco-panoptic`` run (the CLI flags, one to one)."""

    teacher: str = "obsnet"
    weights: str | None = None
    proposals: str | None = None
    data_root: str | None = None
    split: str | None = None
    unknown: int = 5
    device: str | None = None
    limit: int | None = None
    val_limit: int | None = None
    seed: int = 0
    world_seed: int = 0
    out: str | None = None
    variants: list = field(default_factory=lambda: list(PANOPTIC_VARIANTS))
    threshold: float | None = None
    min_area: int = 16
    delta_d: float = 0.5
    export_panoptic: str | None = None
    progress: bool = True

    def validate(self) -> None:
        if self.unknown not in UNKNOWN_SPLITS:
            raise BenchError(f"--unknown must be one of {sorted(UNKNOWN_SPLITS)}; got {self.unknown!r}")
        bad = [v for v in self.variants if v not in PANOPTIC_VARIANTS]
        if bad or not self.variants:
            raise BenchError(f"--variants must be a non-empty subset of {','.join(PANOPTIC_VARIANTS)}; "
                             f"got {','.join(self.variants) or '(empty)'}")
        for name in ("limit", "val_limit"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise BenchError(f"--{name.replace('_', '-')} must be >= 1; got {v}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            raise BenchError(f"--threshold must lie in [0,1]; got {self.threshold}")
        if self.min_area < 0:
            raise BenchError(f"--min-area must be >= 0; got {self.min_area}")
        if not self.delta_d >= 0:
            raise BenchError(f"--delta-d must be >= 0; got {self.delta_d}")
        self.device = check_device(self.device)


class _Setup:
    """Teacher, proposal source and the known-class bookkeeping of one run."""

    def __init__(self, cfg: PanopticConfig, reader: CocoPanopticReader) -> None:
        from posthoc import adapters

        # teacher_specs reads only .teachers and .weights
        spec = teacher_specs(SimpleNamespace(teachers=[cfg.teacher], weights=cfg.weights))[0]  # type: ignore[arg-type]
        if spec.name not in adapters.list_teachers():
            raise BenchError(f"unknown teacher {spec.name!r}; known teachers: {', '.join(adapters.list_teachers())}")
        self.teacher = build_adapter("teacher", spec.name, weights=spec.weights, device=cfg.device, **spec.kw)
        need_props = any(v != "baseline" for v in cfg.variants)
        src = cfg.proposals or default_proposals()[0]
        self.source = src if need_props else None
        if need_props and src not in adapters.list_proposals():
            raise BenchError(f"unknown proposal source {src!r}; known: {', '.join(adapters.list_proposals())}")
        self.props = build_adapter("proposals", src, device=cfg.device) if need_props else None
        self.pipe = Pipeline(fuse=True, refine=False, offsets=False)
        self.K = reader.num_known
        self.things = list(reader.known_thing_ids)
        self.stuff = [i for i in range(self.K) if i not in self.things]
        self.names = reader.known_names
        self._index: list[int] | None = None

    def class_index(self, teacher_names) -> list[int]:
        """Teacher logit index of every known class (by name)."""
        if self._index is None:
            names = list(teacher_names)
            missing = [n for n in self.names if n not in names]
            if missing:
                raise BenchError(f"the teacher's semantic classes {names[:20]} lack the known classes {missing[:20]}; "
                                 "coco-panoptic needs a teacher whose classes (by name) cover the known categories")
            self._index = [names.index(n) for n in self.names]
        return self._index


def _teacher_maps(setup: _Setup, image: np.ndarray, cfg: PanopticConfig) -> dict:
    """Teacher anomaly, known-class probabilities, argmax, fused map, proposals, features of one frame."""
    t_out = setup.teacher(image[None])
    if getattr(t_out, "kind", None) != "anomaly" or t_out.logits is None:
        raise BenchError(f"teacher {cfg.teacher!r} must be an anomaly teacher that also returns its semantic "
                         "logits (TeacherOutput.logits), e.g. obsnet, msp, maxlogit, energy, sml")
    names = getattr(setup.teacher, "semantic_class_names", None)
    if not names:
        if t_out.logits.shape[1] != setup.K:
            raise BenchError(f"teacher {cfg.teacher!r} names no semantic classes and has {t_out.logits.shape[1]} "
                             f"logits; coco-panoptic needs class names or exactly the {setup.K} known classes")
        names = setup.names
    idx = setup.class_index(names)
    logits = torch.as_tensor(t_out.logits).float()[:, idx]
    probs = torch.softmax(logits, dim=1)[0].numpy()
    out = {"a": t_out.anomaly[0, 0].float().numpy(), "probs": probs, "sem": probs.argmax(0), "t_out": t_out,
           "logits": logits}
    if setup.props is not None:
        props = setup.props(image[None], teacher_output=t_out)
        out["props"] = props
        out["fused"] = setup.pipe(t_out.anomaly, props, semantic_logits=t_out.logits)["fused"][0, 0].float().numpy()
    return out


def _components(mask: np.ndarray, min_area: int) -> np.ndarray:
    comp, _ = connected_components(np.where(mask, 0, -1)[None], 8, min_area)
    return comp[0]


def unknown_probability(a: np.ndarray, thr: float) -> np.ndarray:
    """The anomaly map rescaled piecewise linearly so that ``thr`` maps to 0.5 (0 -> 0, 1 -> 1)."""
    t = min(max(float(thr), 1e-6), 1 - 1e-6)
    return np.where(a < t, 0.5 * a / t, 0.5 + 0.5 * (a - t) / (1 - t)).astype(np.float32)


def _fuse(setup: _Setup, sem: np.ndarray, a: np.ndarray, things: np.ndarray, unknown: np.ndarray,
          min_area: int, thr: float) -> tuple[np.ndarray, np.ndarray, list]:
    """Candidates (stuff classes, thing instances, unknown instances) through Mask2Former's fusion."""
    masks, classes = [], []
    a = unknown_probability(a, thr)
    known_w = (1.0 - a).astype(np.float32)
    for c in np.unique(sem).tolist():
        if c in setup.things:
            continue
        masks.append(np.where(sem == c, known_w, 0))
        classes.append(c)
    for i in np.unique(things[things >= 0]).tolist():
        m = things == i
        masks.append(np.where(m, known_w, 0))
        classes.append(int(np.bincount(sem[m]).argmax()))
    for i in np.unique(unknown[unknown >= 0]).tolist():
        masks.append(np.where(unknown == i, a, 0).astype(np.float32))
        classes.append(setup.K)
    if not masks:
        return np.full(sem.shape, 255, np.int64), np.zeros(sem.shape, np.int64), []
    mk = np.stack(masks).astype(np.float32)
    support = mk > 0
    scores = (mk * support).sum((1, 2)) / np.maximum(support.sum((1, 2)), 1)
    return panoptic_fusion(mk, scores, np.asarray(classes, np.int64), setup.things + [setup.K], min_area=min_area)


def _predict(setup: _Setup, m: dict, variant: str, thr: float, cfg: PanopticConfig, prev_unknown: np.ndarray | None):
    """(semantic, segment ids, segments, unknown mask) of one variant on one frame."""
    sem = m["sem"]
    a = m["a"] if variant == "baseline" else m["fused"]
    U = a >= thr
    things = thing_instances(sem, setup.things, min_area=cfg.min_area)
    unknown = _components(U, cfg.min_area)
    if variant in ("mining", "clustering") and "mining" in cfg.variants:
        props = m["props"]
        labels = torch.as_tensor(props.labels)
        cls = props.class_logits
        if cls is None:
            cls = region_class_logits(m["logits"], labels)
        else:
            cls = torch.as_tensor(cls)
            if cls.shape[-1] != setup.K + 1:
                cls = region_class_logits(m["logits"], labels)
        mined = mine_unknown_instances(labels, cls, setup.stuff, setup.things, min_area=cfg.min_area)[0].numpy()
        unknown = np.where(U & (mined >= 0), mined, -1)
    if variant == "clustering":
        feats = (m["t_out"].features or {})
        f = feats.get("features", next(iter(feats.values()), None))
        if f is None:
            raise BenchError(f"variant 'clustering' needs pixel embeddings: teacher {cfg.teacher!r} returns no "
                             "TeacherOutput.features")
        f = torch.as_tensor(f).float()
        known_sem = np.where(np.isin(sem, setup.things), sem, -1)
        things = semantic_guided_clustering(f, known_sem[None], setup.things, delta_d=cfg.delta_d,
                                            min_size=cfg.min_area, seed=cfg.seed)[0]
        base_u = (unknown >= 0) if prev_unknown is None else prev_unknown
        unknown = semantic_guided_clustering(f, np.where(base_u, setup.K, -1)[None], [setup.K],
                                             delta_d=cfg.delta_d, min_size=cfg.min_area, seed=cfg.seed)[0]
    psem, seg, segs = _fuse(setup, sem, a, things, unknown, cfg.min_area, thr)
    return psem, seg, segs, unknown >= 0


def _best_f1_threshold(scores: list[np.ndarray], labels: list[np.ndarray]) -> float:
    """Pixel best-F1 threshold (1000 bins on [0,1]) of unknown (label True) vs known pixels."""
    edges = np.linspace(0.0, 1.0, 1001)
    pos = np.zeros(1000)
    neg = np.zeros(1000)
    for s, y in zip(scores, labels, strict=True):
        b = np.clip((s * 1000).astype(np.int64), 0, 999)
        pos += np.bincount(b[y], minlength=1000)
        neg += np.bincount(b[~y], minlength=1000)
    tp = np.cumsum(pos[::-1])[::-1]
    fp = np.cumsum(neg[::-1])[::-1]
    fn = pos.sum() - tp
    f1 = 2 * tp / np.maximum(2 * tp + fp + fn, 1)
    return float(edges[int(np.argmax(f1))])


def _readers(cfg: PanopticConfig) -> tuple[CocoPanopticReader, CocoPanopticReader | None, bool, str]:
    if cfg.data_root is None:
        split = cfg.split or "test"
        root = ensure_panoptic_world(split=split, seed=cfg.world_seed)
        rd = CocoPanopticReader(root, split, SYNTHETIC_UNKNOWN)
        val = None
        if cfg.threshold is None:
            if split == "val":
                raise BenchError("on the synthetic world the threshold is chosen on the val split: evaluate "
                                 "--split test, or give --threshold")
            vroot = ensure_panoptic_world(split="val", seed=cfg.world_seed)
            val = CocoPanopticReader(vroot, "val", SYNTHETIC_UNKNOWN)
        title = (f"Open-set panoptic, COCO panoptic layout on the SYNTHETIC WORLD (split {split}, world seed "
                 f"{cfg.world_seed}; unknown = the anomaly objects) — not the real benchmark")
        return rd, val, True, title
    split = cfg.split or "val2017"
    rd = CocoPanopticReader(cfg.data_root, split, UNKNOWN_SPLITS[cfg.unknown])
    return rd, None, False, f"Open-set panoptic, COCO panoptic {split} ({cfg.data_root}), {cfg.unknown} % unknown"


def _table(title: str, variants: dict, displays: dict, notes: list[str]) -> str:
    cols = ("pq", "sq", "rq", "pq_things", "pq_stuff", "pq_known", "pq_unknown", "sq_unknown", "rq_unknown")
    head = "| variant | " + " | ".join(c.upper().replace("_", " ") for c in cols) + " |"
    lines = [f"### {title}", "", head, "|---|" + "---:|" * len(cols)]
    base = variants.get("baseline")
    for k, r in variants.items():
        cells = []
        for c in cols:
            v = r[c]
            s = "n/a" if v != v else f"{100 * v:.1f}"
            if base is not None and k != "baseline" and v == v and base[c] == base[c]:
                s += f" ({100 * (v - base[c]):+.1f})"
            cells.append(s)
        lines.append(f"| {displays[k]} | " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + notes) + "\n"


def _export(dir_: Path, reader: CocoPanopticReader, variant: str, frame, segs: list, seg: np.ndarray,
            store: dict) -> None:
    """Write one frame's prediction (and the open-set GT) in the panopticapi layout."""
    from .panoptic_readers import write_panoptic_png

    cat_of = [c["id"] for c in reader.known]
    unk_cat = max(c["id"] for c in reader.categories) + 1
    d = dir_ / variant
    (d / "panoptic_pred").mkdir(parents=True, exist_ok=True)
    write_panoptic_png(d / "panoptic_pred" / frame.file_name, seg)
    info = [{"id": s["id"], "category_id": cat_of[s["category_id"]] if s["category_id"] < reader.num_known else unk_cat,
             "iscrowd": 0, "area": s["area"]} for s in segs]
    store.setdefault(variant, []).append({"image_id": frame.image_id, "file_name": frame.file_name,
                                          "segments_info": info})


def _gt_categories(reader: CocoPanopticReader) -> tuple[list, list]:
    unk_cat = max(c["id"] for c in reader.categories) + 1
    cats = [dict(c) for c in reader.known] + [{"id": unk_cat, "name": "unknown", "isthing": 1}]
    return cats, [c["id"] for c in reader.known] + [unk_cat]


def _export_gt_frame(dir_: Path, reader: CocoPanopticReader, fr, gt_anns: list) -> None:
    """Write one frame's open-set GT (held-out classes as ``unknown``) in the panopticapi layout."""
    from .panoptic_readers import write_panoptic_png

    _, cat_of = _gt_categories(reader)
    (dir_ / "gt" / "panoptic_gt").mkdir(parents=True, exist_ok=True)
    pan = np.zeros(fr.semantic.shape, np.int64)
    info = []
    for sid in np.unique(fr.instance[fr.semantic != 255]).tolist():
        m = (fr.instance == sid) & (fr.semantic != 255)
        pan[m] = sid
        info.append({"id": int(sid), "category_id": cat_of[int(fr.semantic[m][0])],
                     "iscrowd": int(fr.crowd[m].any()), "area": int(m.sum())})
    write_panoptic_png(dir_ / "gt" / "panoptic_gt" / fr.file_name, pan)
    gt_anns.append({"image_id": fr.image_id, "file_name": fr.file_name, "segments_info": info})


def _export_json(dir_: Path, reader: CocoPanopticReader, gt_anns: list, store: dict) -> None:
    cats, _ = _gt_categories(reader)
    images = [{"id": a["image_id"], "file_name": a["file_name"]} for a in gt_anns]
    write_json_atomic(dir_ / "gt" / "panoptic_gt.json", {"images": images, "annotations": gt_anns, "categories": cats})
    for v, a in store.items():
        write_json_atomic(dir_ / v / "panoptic_pred.json", {"images": images, "annotations": a, "categories": cats})


def run_panoptic(cfg: PanopticConfig) -> dict:
    """Run the track; returns the results dict also written to ``<out>/results.json``."""
    cfg.validate()
    out = Path(cfg.out or f"runs/coco-panoptic-{cfg.teacher}-{datetime.now():%Y%m%d-%H%M%S}").expanduser()
    targets = [(out, "--out")] + ([(Path(cfg.export_panoptic), "--export-panoptic")] if cfg.export_panoptic else [])
    for p, flag in targets:
        if p.expanduser().exists() and not p.expanduser().is_dir():
            raise BenchError(f"{flag} {p} exists and is not a folder; give a folder (new or existing)")
    fresh = not out.exists()
    for p, flag in targets:
        check_output_dir(p, flag)
    with RunLock(out, fresh=fresh):
        return _run(cfg, out)


class _FrameCache:
    """Per-frame predictions of every variant in ``<out>/cache/coco-panoptic-<key>/<frame id>.npz``
    (atomic writes), keyed by the settings, the thresholds, the teacher's weight files and the
    code; a frame whose image or panoptic PNG changed is recomputed. A rerun into the same
    ``--out`` resumes."""

    def __init__(self, out: Path, cfg: PanopticConfig, reader: CocoPanopticReader, thr: dict) -> None:
        try:
            weights = fingerprint.hash_files(fingerprint.weight_files(cfg.teacher, cfg.weights))
        except Exception:  # a teacher without weight files (or an unreadable one) is keyed by its name
            weights = {}
        here = Path(__file__).resolve()
        key = {"format": 1, "root": str(reader.root.resolve()), "split": reader.split,
               "unknown": reader.unknown_ids, "teacher": cfg.teacher, "weights": weights,
               "proposals": cfg.proposals, "variants": sorted(cfg.variants), "min_area": cfg.min_area,
               "delta_d": cfg.delta_d, "seed": cfg.seed, "thresholds": thr, "code": fingerprint.code_fingerprint(),
               "track": hashlib.sha256(here.read_bytes() + (here.parents[1] / "posthoc" / "panoptic.py").read_bytes()
                                       if (here.parents[1] / "posthoc" / "panoptic.py").is_file()
                                       else here.read_bytes()).hexdigest()[:16]}
        h = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.dir = out / "cache" / f"coco-panoptic-{h}"
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.dir / "key.json", key)
        self.reader = reader

    def _inputs(self, fr) -> str:
        d = hashlib.blake2b(digest_size=16)
        im = self.reader.images[fr.image_id]["file_name"]
        for p in (self.reader.image_dir / im, self.reader.png_dir / fr.file_name):
            d.update(p.read_bytes())
        return d.hexdigest()

    def get(self, fr, variants: list) -> dict | None:
        p = self.dir / f"{fr.id}.npz"
        if not p.is_file():
            return None
        try:
            with np.load(p, allow_pickle=False) as z:
                if str(z["inputs"]) != self._inputs(fr):
                    log.warning("coco-panoptic cache: %s changed since %s was written; recomputing", fr.id, p)
                    return None
                return {v: (z[f"sem_{v}"], z[f"seg_{v}"], json.loads(str(z[f"segs_{v}"]))) for v in variants}
        except (OSError, ValueError, KeyError) as e:
            log.warning("coco-panoptic cache: %s is unreadable (%s); recomputing", p, e)
            return None

    def put(self, fr, preds: dict) -> None:
        arrays: dict[str, Any] = {"inputs": np.array(self._inputs(fr))}
        for v, (psem, seg, segs) in preds.items():
            arrays[f"sem_{v}"] = psem.astype(np.int64)
            arrays[f"seg_{v}"] = seg.astype(np.int64)
            arrays[f"segs_{v}"] = np.array(json.dumps(segs))
        with atomic_path(self.dir / f"{fr.id}.npz") as tmp, open(tmp, "wb") as f:
            np.savez_compressed(f, **arrays)


def _run(cfg: PanopticConfig, out: Path) -> dict:
    t0 = time.perf_counter()
    timer = Timer()
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    variants = [v for v in PANOPTIC_VARIANTS if v in cfg.variants]
    with timer("setup"):
        reader, val, synthetic, title = _readers(cfg)
        setup = _Setup(cfg, reader)
    thr: dict = {}
    how = "given (--threshold)" if cfg.threshold is not None else (
        "pixel best-F1 of unknown vs known on the val split" if val is not None else "default 0.5 (no val split)")
    if cfg.threshold is not None or val is None:
        thr = {v: (0.5 if cfg.threshold is None else float(cfg.threshold)) for v in variants}
    else:
        sc: dict = {"a": [], "fused": []}
        ys = []
        with timer("threshold:val"):
            for fr in progress(val.frames(cfg.val_limit or cfg.limit), min(len(val), cfg.val_limit or cfg.limit
                                                                             or len(val)), "val", cfg.progress):
                m = _teacher_maps(setup, fr.image, cfg)
                keep = fr.semantic != 255
                ys.append((fr.semantic == setup.K)[keep])
                sc["a"].append(m["a"][keep])
                if "fused" in m:
                    sc["fused"].append(m["fused"][keep])
        for v in variants:
            thr[v] = _best_f1_threshold(sc["a"] if v == "baseline" else sc["fused"], ys)
    metrics = {v: PanopticQuality(setup.K, setup.things, unknown_id=setup.K) for v in variants}
    store: dict = {}
    gt_anns: list = []
    n = min(len(reader), cfg.limit or len(reader))
    cache = _FrameCache(out, cfg, reader, thr)
    n_cached = 0
    for fr in progress(reader.frames(cfg.limit), n, "coco-panoptic", cfg.progress):
        preds = cache.get(fr, variants)
        if preds is None:
            with timer("teacher+proposals"):
                m = _teacher_maps(setup, fr.image, cfg)
            preds = {}
            prev_u = None
            for v in variants:
                with timer(f"variant:{v}"):
                    psem, seg, segs, u = _predict(setup, m, v, thr[v], cfg, prev_u if v == "clustering" else None)
                prev_u = u
                preds[v] = (psem, seg, segs)
            cache.put(fr, preds)
        else:
            n_cached += 1
        for v in variants:
            psem, seg, segs = preds[v]
            metrics[v].update(psem, seg, fr.semantic, fr.instance, gt_crowd=fr.crowd)
            if cfg.export_panoptic:
                _export(Path(cfg.export_panoptic), reader, v, fr, segs, seg, store)
        if cfg.export_panoptic:
            _export_gt_frame(Path(cfg.export_panoptic), reader, fr, gt_anns)
    if not n:
        raise BenchError(f"coco-panoptic: no frames in {reader.root}")
    if cfg.export_panoptic:
        with timer("export"):
            _export_json(Path(cfg.export_panoptic), reader, gt_anns, store)
    names = setup.names + ["unknown"]
    res_v = {}
    for v in variants:
        r = metrics[v].compute()
        for i, row in enumerate(r["per_class"]):
            row["name"] = names[i]
        res_v[v] = {k: r[k] for k in _KEYS} | {"per_class": r["per_class"], "threshold": thr[v],
                                               "n_frames": r["n_frames"]}
    displays = {v: _TITLES[v] + (f" [{setup.source}]" if v != "baseline" else "") for v in variants}
    notes = [f"Frames: {n}" + (f" (--limit {cfg.limit})" if cfg.limit else "") +
             f". Anomaly threshold per variant ({how}): " + ", ".join(f"{v} {t:.3f}" for v, t in thr.items()) +
             ". Values in percent; (±x) is the change against the baseline; n/a = the class group never occurs."]
    md = "# posthoc-bench coco-panoptic\n\n" + _table(title, res_v, displays, notes)
    results = {
        "config": asdict(cfg) | {"out": str(out), "proposals": setup.source},
        "versions": fingerprint.versions(),
        "git": fingerprint.git_sha(),
        "track": "coco-panoptic",
        "title": title,
        "synthetic": synthetic,
        "root": str(reader.root),
        "unknown_classes": [c["name"] for c in reader.categories if c["id"] in reader.unknown_ids],
        "known_classes": setup.names,
        "threshold": {"per_variant": thr, "chosen": how},
        "frames": n,
        "frames_cached": n_cached,
        "cache": str(cache.dir),
        "variants": res_v,
        "variant_names": displays,
        "export": str(cfg.export_panoptic) if cfg.export_panoptic else None,
        "timings_s": {k: round(t, 3) for k, t in sorted(timer.t.items())} | {
            "total": round(time.perf_counter() - t0, 3)},
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "markdown": md,
    }
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "results.md", md)
    return results
