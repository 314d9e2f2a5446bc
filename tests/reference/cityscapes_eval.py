"""Transcription of cityscapesScripts ``evaluation/evalPixelLevelSemanticLabeling.py`` (class IoU part).

Obviously correct, slow: a confusion matrix over *label ids* accumulated over all frames,
``getIouScoreForLabel`` per evaluated label (false positives only on pixels whose ground
truth is a label that is not ``ignoreInEval``), and ``getScoreAverage`` (mean over the
non-NaN class scores). Predictions are trainIds, turned back into label ids as the official
tool expects (``trainId2label``).
"""
from __future__ import annotations

import math

import numpy as np

# (name, id, trainId, ignoreInEval) as in helpers/labels.py
LABELS = [
    ("unlabeled", 0, 255, True), ("ego vehicle", 1, 255, True), ("rectification border", 2, 255, True),
    ("out of roi", 3, 255, True), ("static", 4, 255, True), ("dynamic", 5, 255, True), ("ground", 6, 255, True),
    ("road", 7, 0, False), ("sidewalk", 8, 1, False), ("parking", 9, 255, True), ("rail track", 10, 255, True),
    ("building", 11, 2, False), ("wall", 12, 3, False), ("fence", 13, 4, False), ("guard rail", 14, 255, True),
    ("bridge", 15, 255, True), ("tunnel", 16, 255, True), ("pole", 17, 5, False), ("polegroup", 18, 255, True),
    ("traffic light", 19, 6, False), ("traffic sign", 20, 7, False), ("vegetation", 21, 8, False),
    ("terrain", 22, 9, False), ("sky", 23, 10, False), ("person", 24, 11, False), ("rider", 25, 12, False),
    ("car", 26, 13, False), ("truck", 27, 14, False), ("bus", 28, 15, False), ("caravan", 29, 255, True),
    ("trailer", 30, 255, True), ("train", 31, 16, False), ("motorcycle", 32, 17, False), ("bicycle", 33, 18, False),
    ("license plate", -1, -1, True),
]
ID2IGNORE = {i: ig for _, i, _, ig in LABELS}
TRAIN2ID = {t: i for _, i, t, _ in LABELS if 0 <= t < 255}
EVAL_LABELS = [i for _, i, _, _ in LABELS if i >= 0]


def evaluate(gt_label_ids: list[np.ndarray], pred_train_ids: list[np.ndarray]) -> dict:
    """{class name: IoU or NaN} over the 19 classes and ``miou`` (getScoreAverage)."""
    max_id = max(EVAL_LABELS)
    conf = np.zeros((max_id + 1, max_id + 1), np.int64)
    for gt, pred in zip(gt_label_ids, pred_train_ids, strict=True):
        pred_ids = np.vectorize(TRAIN2ID.get)(pred)
        for g, p in zip(gt.ravel().tolist(), pred_ids.ravel().tolist(), strict=True):
            conf[g, p] += 1
    scores = {}
    for name, lid, _t, ig in LABELS:
        if lid < 0 or ig:
            continue
        tp = conf[lid, lid]
        fn = conf[lid, :].sum() - tp
        not_ignored = [x for x in EVAL_LABELS if not ID2IGNORE[x] and x != lid]
        fp = conf[not_ignored, lid].sum()
        denom = tp + fp + fn
        scores[name] = float("nan") if denom == 0 else float(tp) / denom
    valid = [v for v in scores.values() if not math.isnan(v)]
    return {"iou": scores, "miou": sum(valid) / len(valid) if valid else float("nan")}
