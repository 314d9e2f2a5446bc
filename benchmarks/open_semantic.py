"""Open-set semantic metrics of the ``streethazards`` track: ``miou_known`` and ``open_miou``.

Definition (Grcić & Šegvić, DenseHybrid, "Hybrid Open-set Segmentation with Synthetic
Negative Data", arXiv 2301.08555, open-set evaluation; :class:`posthoc.metrics.OpenIoU`):
every pixel is classified into the K = 13 known StreetHazards classes (the teacher's
semantic argmax) or "unknown" where the variant's anomaly score is ``>= t``; per known
class ``open-IoU_c = TP_c / (TP_c + FP_c^os + FN_c^os)`` in the (K+1)x(K+1) confusion
matrix (the GT anomaly class, PNG 14, is the unknown class), and ``open_miou`` is its mean
over the known classes. ``miou_known`` is the closed-set mIoU of the teacher's argmax on the
known pixels (the anomaly pixels left out), the same for every variant: the gap
``miou_known - open_miou`` is what the outliers and the unknown decisions cost.

The threshold ``t`` is ``--open-threshold`` or, per variant, the threshold at 95 % TPR of the
anomaly pixels of the **validation** split (DenseHybrid's operating point), read with the
same reader from ``<data root>/validation`` (or ``<data root>/train`` holding ``images/validation``);
without a validation split and without ``--open-threshold`` the open-set metrics are not
computed and ``results.json`` says why. The anomaly numbers are not touched.

Without a data root the track runs on the synthetic world written in the StreetHazards layout
(:mod:`posthoc.bench.synthetic_streethazards`): K is the world's class count (13, the classes the
bundled teachers predict), the unknown class is its pasted anomaly objects, and the threshold
comes from the world's ``val`` split.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from posthoc.metrics import OpenIoU, SemanticMetrics

from .datasets import DatasetLayoutError, read_label_png
from .variants import VariantMaps, as_anomaly

log = logging.getLogger(__name__)

__all__ = ["K_STREETHAZARDS", "add_open_set", "gt_open_classes", "open_set_table"]

K_STREETHAZARDS = 13


def gt_open_classes(raw: np.ndarray, k: int = K_STREETHAZARDS) -> np.ndarray:
    """StreetHazards annotation (class + 1) -> int64 known id 0..k-1, k = unknown (anomaly), 255 void."""
    r = raw.astype(np.int64)
    return np.where((r >= 1) & (r <= k + 1), r - 1, 255)


def _semantic(teacher_out: Any, k: int) -> np.ndarray | None:
    lg = getattr(teacher_out, "logits", None)
    if lg is None or lg.shape[1] != k:
        return None
    return torch.as_tensor(lg).argmax(1).cpu().numpy()


def _val_reader(root: Path):
    from .anomaly_readers import StreetHazardsReader

    for r in (root.parent, root.parent / "train", root, root / "train"):
        try:
            return StreetHazardsReader(r, "validation")
        except DatasetLayoutError:
            continue
    return None


def _val_thresholds(cfg, dataset, teacher, prop_objs: dict, chain: list, suppress,
                    val=None) -> tuple[dict | None, str]:
    val = val if val is not None else _val_reader(Path(dataset.root))
    if val is None:
        return None, (f"no StreetHazards validation split next to {dataset.root} (images/validation); pass "
                      "--open-threshold to compute the open-set metrics")
    vm = VariantMaps(chain, suppress)
    scores: dict = {v.key: [] for v in chain}
    n = 0
    with torch.inference_mode():
        for ref in val.refs:
            if cfg.limit is not None and n >= cfg.limit:
                break
            fr = val.load(ref)
            if fr.label is None or not (fr.label == 1).any():
                continue
            n += 1
            t_out = teacher(fr.image[None])
            props = {s: o(fr.image[None], teacher_output=t_out) for s, o in prop_objs.items()}
            maps = vm(as_anomaly(t_out, "teacher"), t_out, props)
            pos = fr.label == 1
            for k, m in maps.items():
                scores[k].append(m[0, 0].float().cpu().numpy()[pos])
    if not n:
        return None, f"the validation split at {val.root} has no anomaly pixels; pass --open-threshold"
    thr = {k: float(np.quantile(np.concatenate(s), 0.05, method="lower")) for k, s in scores.items()}
    return thr, f"95 % TPR of the anomaly pixels of {n} validation frames ({val.root})"


def add_open_set(cfg, dataset, teacher, prop_objs: dict, chain: list, cache, labelled: list, metrics: dict,
                 suppress, *, val=None, n_known: int | None = None) -> dict:
    """Add ``miou_known``, ``open_miou`` (and ``open_threshold``) to every variant's ``metrics``;
    returns a note for results.json (how the threshold was chosen, or why nothing was added).

    ``val``: the reader of the split the threshold is chosen on (None: the StreetHazards
    validation split next to ``dataset.root``); ``n_known``: the number of known classes
    (None: StreetHazards' 13; the synthetic world passes its own class count)."""
    k_known = K_STREETHAZARDS if n_known is None else int(n_known)
    keys = [v.key for v in chain if v.key in metrics]
    if not labelled or not keys:
        return {"computed": False, "reason": "no labelled frames"}
    refs = {r.id: r for r in dataset.refs}
    first = dataset.load(refs[labelled[0]])
    with torch.inference_mode():
        sem0 = _semantic(teacher(first.image[None]), k_known)
    if sem0 is None:
        reason = (f"the teacher gives no semantic logits over the {k_known} known classes of {dataset.name} "
                  "(TeacherOutput.logits)")
        log.warning("open-set metrics skipped: %s", reason)
        return {"computed": False, "reason": reason}
    thr: dict[str, float]
    if cfg.open_threshold is not None:
        thr, how = dict.fromkeys(keys, float(cfg.open_threshold)), "given (--open-threshold)"
    else:
        found, how = _val_thresholds(cfg, dataset, teacher, prop_objs, chain, suppress, val)
        if found is None:
            log.warning("open-set metrics skipped: %s", how)
            return {"computed": False, "reason": how}
        thr = found
    closed = SemanticMetrics(k_known)
    opened = {k: OpenIoU(k_known) for k in keys}
    with torch.inference_mode():
        for fid in labelled:
            ref = refs[fid]
            gt = gt_open_classes(read_label_png(ref.label_path), k_known)
            sem_b = _semantic(teacher(dataset.load(ref, label=False).image[None]), k_known)
            assert sem_b is not None  # the first frame's teacher output had StreetHazards logits
            sem = sem_b[0]
            closed.update(sem, np.where(gt == k_known, 255, gt))
            for k in keys:
                a = cache.load_map(k, fid).astype(np.float32).reshape(gt.shape)
                opened[k].update(np.where(a >= thr[k], k_known, sem), gt)
    miou_known = closed.compute()["miou"]
    for k in keys:
        metrics[k]["miou_known"] = miou_known
        metrics[k]["open_miou"] = opened[k].compute()["open_miou"]
        metrics[k]["open_threshold"] = thr[k]
    return {"computed": True, "threshold": how, "definition": "DenseHybrid open-IoU (arXiv 2301.08555)"}


def open_set_table(ev_res: dict, displays: dict) -> str:
    """Markdown table of ``miou_known`` / ``open_miou`` per teacher and variant ("" when none was computed)."""
    rows, notes = [], []
    for teacher, t in ev_res.get("teachers", {}).items():
        note = t.get("open_set") or {}
        if not note.get("computed"):
            if note.get("reason"):
                notes.append(f"Open-set metrics of {teacher}: not computed ({note['reason']}).")
            continue
        rows += [f"| {teacher} | {displays.get(k, k)} | {100 * m['miou_known']:.1f} | {100 * m['open_miou']:.1f} | "
                 f"{m['open_threshold']:.3f} |" for k, m in t["variants"].items() if "open_miou" in m]
        notes.append(f"Threshold of {teacher}: {note['threshold']}.")
    if not rows and not notes:
        return ""
    head = ["### Open-set semantic (DenseHybrid open-IoU)", ""]
    if rows:
        head += ["| teacher | variant | mIoU known | open-mIoU | threshold |", "|---|---|---:|---:|---:|", *rows, ""]
    return "\n".join(head + notes) + "\n"
