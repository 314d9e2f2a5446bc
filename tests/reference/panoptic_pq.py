"""A transcription of panopticapi's ``pq_compute`` (``cocodataset/panopticapi``,
``panopticapi/evaluation.py``: ``pq_compute_single_core`` and ``PQStat.pq_average``), for the
tests only. It works on in-memory panoptic id maps (the ``rgb2id`` of the PNGs) and the
``segments_info`` lists instead of files; the arithmetic is the official code's, step by step:

* segment areas of the predictions are counted from the id map; id 0 (VOID) may be left out
  of ``segments_info``; GT areas come from ``segments_info['area']``;
* ``gt_pred_map``: the joint histogram of (GT id, predicted id);
* a (GT, prediction) pair of the same category, GT not crowd, matches when
  ``inter / (pred_area + gt_area - inter - |pred on VOID|) > 0.5``;
* unmatched non-crowd GT segments are FN; crowd GT segments are remembered per category;
* an unmatched prediction is a FP unless ``(|on VOID| + |on the crowd segment of its
  category|) / area > 0.5``;
* averages run over the categories with ``tp + fp + fn > 0``.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

OFFSET = 256 * 256 * 256
VOID = 0


def pq_compute_frames(frames, categories):
    """``frames``: list of ``(pan_gt, gt_segments_info, pan_pred, pred_segments_info)``;
    ``categories``: {id: {"isthing": 0/1}}. Returns {"All"|"Things"|"Stuff": {pq,sq,rq,n},
    "per_class": {id: {pq,sq,rq}}, "stat": {id: (iou, tp, fp, fn)}}."""
    stat = defaultdict(lambda: [0.0, 0, 0, 0])
    for pan_gt, gt_info, pan_pred, pred_info in frames:
        gt_segms = {el["id"]: dict(el) for el in gt_info}
        pred_segms = {el["id"]: dict(el) for el in pred_info}
        pred_labels_set = set(el["id"] for el in pred_info)
        labels, labels_cnt = np.unique(pan_pred, return_counts=True)
        for label, label_cnt in zip(labels, labels_cnt, strict=True):
            if label not in pred_segms:
                if label == VOID:
                    continue
                raise KeyError(f"segment {label} in PNG and not in JSON")
            pred_segms[label]["area"] = label_cnt
            pred_labels_set.remove(label)
            if pred_segms[label]["category_id"] not in categories:
                raise KeyError("unknown category")
        if len(pred_labels_set) != 0:
            raise KeyError(f"segments {pred_labels_set} in JSON and not in PNG")
        pan_gt_pred = pan_gt.astype(np.uint64) * OFFSET + pan_pred.astype(np.uint64)
        gt_pred_map = {}
        labels, labels_cnt = np.unique(pan_gt_pred, return_counts=True)
        for label, intersection in zip(labels, labels_cnt, strict=True):
            gt_pred_map[(int(label // OFFSET), int(label % OFFSET))] = intersection
        gt_matched, pred_matched = set(), set()
        for (gt_label, pred_label), intersection in gt_pred_map.items():
            if gt_label not in gt_segms or pred_label not in pred_segms:
                continue
            if gt_segms[gt_label]["iscrowd"] == 1:
                continue
            if gt_segms[gt_label]["category_id"] != pred_segms[pred_label]["category_id"]:
                continue
            union = (pred_segms[pred_label]["area"] + gt_segms[gt_label]["area"] - intersection
                     - gt_pred_map.get((VOID, pred_label), 0))
            iou = intersection / union
            if iou > 0.5:
                s = stat[gt_segms[gt_label]["category_id"]]
                s[1] += 1
                s[0] += iou
                gt_matched.add(gt_label)
                pred_matched.add(pred_label)
        crowd_labels_dict = {}
        for gt_label, g in gt_segms.items():
            if gt_label in gt_matched:
                continue
            if g["iscrowd"] == 1:
                crowd_labels_dict[g["category_id"]] = gt_label
                continue
            stat[g["category_id"]][3] += 1
        for pred_label, p in pred_segms.items():
            if pred_label in pred_matched:
                continue
            intersection = gt_pred_map.get((VOID, pred_label), 0)
            if p["category_id"] in crowd_labels_dict:
                intersection += gt_pred_map.get((crowd_labels_dict[p["category_id"]], pred_label), 0)
            if intersection / p["area"] > 0.5:
                continue
            stat[p["category_id"]][2] += 1
    out = {"stat": {k: tuple(v) for k, v in stat.items()}}
    for name, isthing in (("All", None), ("Things", True), ("Stuff", False)):
        pq = sq = rq = 0.0
        n = 0
        per = {}
        for label, info in categories.items():
            if isthing is not None and (info["isthing"] == 1) != isthing:
                continue
            iou, tp, fp, fn = stat[label] if label in stat else (0.0, 0, 0, 0)
            if tp + fp + fn == 0:
                per[label] = {"pq": 0.0, "sq": 0.0, "rq": 0.0}
                continue
            n += 1
            pq_c = iou / (tp + 0.5 * fp + 0.5 * fn)
            sq_c = iou / tp if tp != 0 else 0
            rq_c = tp / (tp + 0.5 * fp + 0.5 * fn)
            per[label] = {"pq": pq_c, "sq": sq_c, "rq": rq_c}
            pq, sq, rq = pq + pq_c, sq + sq_c, rq + rq_c
        out[name] = {"pq": pq / n if n else float("nan"), "sq": sq / n if n else float("nan"),
                     "rq": rq / n if n else float("nan"), "n": n}
        if name == "All":
            out["per_class"] = per
    return out


def to_panoptic(sem, inst, is_thing, ignore_index=255, crowd=None):
    """A (class map, instance map[, crowd map]) frame as a panoptic id map plus ``segments_info``
    (category id = class id + 1; things split by instance id, stuff one segment per class, the
    crowd pixels of a class one crowd segment; ignore_index = VOID)."""
    pan = np.zeros(sem.shape, np.int64)
    info = []
    nxt = 1
    keys = {}
    for idx in np.ndindex(sem.shape):
        c = int(sem[idx])
        if c == ignore_index:
            continue
        cr = bool(crowd[idx]) if crowd is not None else False
        k = (c, "crowd") if cr else ((c, int(inst[idx])) if is_thing(c) else (c, None))
        if k not in keys:
            keys[k] = nxt
            info.append({"id": nxt, "category_id": c + 1, "iscrowd": int(cr), "area": 0})
            nxt += 1
        pan[idx] = keys[k]
        info[keys[k] - 1]["area"] += 1
    return pan, info
