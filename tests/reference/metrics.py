"""Slow, obviously correct reference versions of the metrics, for the tests only.

* ``smiyc_pixel_reference`` follows the official SegmentMeIfYouCan code step by step
  (``pixel_classification.py::binary_confusion_matrix`` with ``bin_strategy='percentiles'``,
  ``aggregate_dynamic_bins`` and ``pixel_classification_curves.py::curves_from_cmats``),
  with ``np.quantile`` / ``np.histogram`` on unsorted data and an explicit confusion-matrix stack.
* ``threshold_sweep_reference`` sweeps every distinct score with plain boolean masks.
* ``component_reference`` follows ``instance_segmentation.py::default_instancer`` and
  ``segment_metrics`` with ``scipy.ndimage.label`` and a loop over component masks.
* ``semantic_iou_reference`` / ``panoptic_reference`` loop over classes and segments.
"""
from __future__ import annotations

import numpy as np
from scipy.ndimage import label as nd_label


# --------------------------------------------------------------------------- pixel, official binning
def _frame_cmat(prob, gt_bool, num_bins=768):
    area = len(gt_bool)
    gt_true = int(np.count_nonzero(gt_bool))
    gt_false = area - gt_true
    p_true = prob[gt_bool]
    p_false = prob[~gt_bool]
    vmin = np.min(prob)
    vmax = np.max(prob)
    vrange = vmax - vmin
    eps = np.maximum(vrange * 1e-2, 1e-2)
    bins = [[vmin - eps, vmax + eps]]
    if p_true.size:
        bins += [np.quantile(p_true, np.linspace(0, 1, min(num_bins // 2, p_true.size)))]
    if p_false.size:
        bins += [np.quantile(p_false, np.linspace(0, 1, min(num_bins // 2, p_false.size)))]
    bins = np.unique(np.concatenate(bins))
    tp_rel, _ = np.histogram(p_true, bins=bins)
    tp_rel = tp_rel[::-1]
    fp_rel, edges = np.histogram(p_false, bins=bins)
    edges = edges[::-1]
    fp_rel = fp_rel[::-1]
    return {"bin_edges": edges, "tp_rel": tp_rel, "fp_rel": fp_rel, "num_pos": gt_true, "num_neg": gt_false}


def smiyc_pixel_reference(frames, ignore_index=255, num_bins=768):
    """frames: list of (scores (H,W), labels (H,W)). Returns dict like PixelMetrics(mode='smiyc')."""
    results = []
    for s, lab in frames:
        roi = lab != ignore_index
        if not roi.any():
            continue
        results.append(_frame_cmat(s[roi], lab[roi].astype(bool), num_bins))
    thresholds = np.concatenate([r["bin_edges"][1:] for r in results])
    tp_relative = np.concatenate([r["tp_rel"] for r in results], axis=0)
    fp_relative = np.concatenate([r["fp_rel"] for r in results], axis=0)
    num_pos = sum(r["num_pos"] for r in results)
    num_neg = sum(r["num_neg"] for r in results)
    order = np.argsort(thresholds)[::-1]
    tp_cumu = np.cumsum(tp_relative[order].astype(np.float64))
    fp_cumu = np.cumsum(fp_relative[order].astype(np.float64))
    cmats = np.array([[tp_cumu, fp_cumu], [num_pos - tp_cumu, num_neg - fp_cumu]]).transpose([2, 0, 1])
    thresholds = thresholds[order]

    idx = np.concatenate([[0], np.nonzero(thresholds[:-1] != thresholds[1:])[0], [len(cmats) - 1]])
    cmats = cmats[idx]
    thresholds = thresholds[idx]
    tp, fp, fn, tn = cmats[:, 0, 0], cmats[:, 0, 1], cmats[:, 1, 0], cmats[:, 1, 1]
    P, N = tp[0] + fn[0], fp[0] + tn[0]
    if tp[0] != 0 or fp[0] != 0:
        tp, fp = np.concatenate([[0], tp]), np.concatenate([[0], fp])
        fn, tn = np.concatenate([[P], fn]), np.concatenate([[N], tn])
        thresholds = np.concatenate([[float(np.max(thresholds)) + 1], thresholds])
    if tp[-1] != P or fp[-1] != N:
        tp, fp = np.concatenate([tp, [P]]), np.concatenate([fp, [N]])
        fn, tn = np.concatenate([fn, [0]]), np.concatenate([tn, [0]])
        thresholds = np.concatenate([thresholds, [float(np.max(thresholds)) - 1]])
    tpr = tp / (tp + fn)
    fpr = fp / (fp + tn)
    prec = np.ones(tp.shape[0])
    m = (tp + fp) > 0
    prec[m] = tp[m] / (tp + fp)[m]
    f1 = 2 * tp / (2 * tp + fp + fn)
    i95 = np.searchsorted(tpr, 0.95)
    fpr95 = fpr[i95] if i95 < len(tpr) else 1.0
    ix = np.nanargmax(f1)
    return {
        "ap": float(np.sum(np.diff(tpr) * prec[1:])),
        "auroc": float(np.trapezoid(tpr, fpr)),
        "fpr95": float(fpr95),
        "best_f1": float(f1[ix]),
        "best_f1_threshold": float(thresholds[ix]),
    }


# --------------------------------------------------------------------------- pixel, exact sweep
def threshold_sweep_reference(frames, ignore_index=255):
    """Every distinct score as a threshold (score >= t), with boolean masks. O(pixels x thresholds)."""
    s = np.concatenate([f[0][f[1] != ignore_index].ravel() for f in frames]).astype(np.float64)
    y = np.concatenate([f[1][f[1] != ignore_index].ravel() for f in frames]) == 1
    P, N = y.sum(), (~y).sum()
    thr = np.unique(s)[::-1]
    tp = np.array([np.sum(y & (s >= t)) for t in thr], np.float64)
    fp = np.array([np.sum(~y & (s >= t)) for t in thr], np.float64)
    tp, fp = np.r_[0.0, tp], np.r_[0.0, fp]
    thr = np.r_[np.inf, thr]
    prec = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 1.0)
    rec = tp / P
    fpr = fp / N
    ap = sum((rec[k] - rec[k - 1]) * prec[k] for k in range(1, len(rec)))
    auroc = sum((fpr[k] - fpr[k - 1]) * (rec[k] + rec[k - 1]) / 2 for k in range(1, len(rec)))
    i95 = next(k for k in range(len(rec)) if rec[k] >= 0.95)
    f1 = 2 * tp / (2 * tp + fp + (P - tp))
    ix = int(np.argmax(f1))
    return {"ap": ap, "auroc": auroc, "fpr95": fpr[i95], "best_f1": f1[ix], "best_f1_threshold": thr[ix]}


# --------------------------------------------------------------------------- components
def _instancer(anomaly_p, label_gt, thresh_p, min_pred, min_gt):
    seg = (anomaly_p > thresh_p).astype(np.uint8)
    gt = (label_gt == 1).astype(np.uint8)
    pred = seg.copy()
    pred[label_gt == 255] = 0
    st = np.ones((3, 3), np.uint8)
    gt_inst, n_gt = nd_label(gt, st)
    pred_inst, n_pred = nd_label(pred, st)
    lab_m = pred_inst.copy()
    for comp in range(n_pred + 1):
        if np.sum(lab_m == comp) < min_pred:
            pred_inst[lab_m == comp] = 0
    label_gt = label_gt.copy()
    for comp in range(n_gt + 1):
        if np.sum(gt_inst == comp) < min_gt:
            label_gt[gt_inst == comp] = 255
    roi = label_gt < 255
    return gt_inst[roi], pred_inst[roi]


def _segment_metrics(gt_inst, pred_inst):
    siou_gt, siou_pred, prec_pred = [], [], []
    for i in np.unique(gt_inst[gt_inst > 0]):
        tp_loc = pred_inst[gt_inst == i]
        seg_ind = np.unique(tp_loc[tp_loc != 0])
        inter = len(tp_loc[np.isin(tp_loc, seg_ind)])
        adj = len(pred_inst[np.logical_and(~np.isin(gt_inst, [0, i]), np.isin(pred_inst, seg_ind))])
        union = np.sum(np.isin(pred_inst, seg_ind)) + np.sum(gt_inst == i) - inter - adj
        siou_gt.append(inter / union)
    for i in np.unique(pred_inst[pred_inst > 0]):
        tp_loc = gt_inst[pred_inst == i]
        seg_ind = np.unique(tp_loc[tp_loc != 0])
        inter = len(tp_loc[np.isin(tp_loc, seg_ind)])
        adj = len(gt_inst[np.logical_and(~np.isin(pred_inst, [0, i]), np.isin(gt_inst, seg_ind))])
        union = np.sum(np.isin(gt_inst, seg_ind)) + np.sum(pred_inst == i) - inter - adj
        siou_pred.append(inter / union)
        prec_pred.append(inter / np.sum(pred_inst == i))
    return np.array(siou_gt), np.array(siou_pred), np.array(prec_pred)


def component_reference(frames, threshold, min_pred=500, min_gt=100):
    """frames: list of (scores (H,W), labels (H,W)); returns the official aggregate."""
    thr_s = np.linspace(0.25, 0.75, 11, endpoint=True)
    all_gt, all_pred, all_prec = [], [], []
    tp = np.zeros(11)
    fn = np.zeros(11)
    fp = np.zeros(11)
    for s, lab in frames:
        g, p = _instancer(s, lab, threshold, min_pred, min_gt)
        sg, sp, pp = _segment_metrics(g, p)
        all_gt += list(sg)
        all_pred += list(sp)
        all_prec += list(pp)
        for k, t in enumerate(thr_s):
            tp[k] += np.count_nonzero(sg >= t)
            fn[k] += np.count_nonzero(sg < t)
            fp[k] += np.count_nonzero(pp < t)
    f1 = 2 * tp / (2 * tp + fn + fp)
    return {
        "siou_gt": np.mean(all_gt) if all_gt else float("nan"),
        "siou_pred": np.mean(all_pred) if all_pred else float("nan"),
        "ppv": np.mean(all_prec) if all_prec else float("nan"),
        "f1_25": f1[0], "f1_50": f1[5], "f1_75": f1[10], "f1_mean": float(np.mean(f1)),
        "tp": tp, "fn": fn, "fp": fp, "n_gt": len(all_gt), "n_pred": len(all_pred),
    }


# --------------------------------------------------------------------------- semantic / panoptic
def semantic_iou_reference(preds, targets, num_classes, ignore_index=255):
    iou = np.full(num_classes, np.nan)
    valid = targets != ignore_index
    for c in range(num_classes):
        p = (preds == c) & valid
        t = (targets == c) & valid
        union = np.sum(p | t)
        if union:
            iou[c] = np.sum(p & t) / union
    return iou


def panoptic_reference(frames, num_classes, thing_ids, ignore_index=255):
    """frames: list of (pred_sem, pred_inst, gt_sem, gt_inst). Per-class (iou_sum, tp, fp, fn), loops."""
    things = set(thing_ids)
    iou_sum = np.zeros(num_classes)
    tp = np.zeros(num_classes, int)
    fp = np.zeros(num_classes, int)
    fn = np.zeros(num_classes, int)

    def segments(sem, inst):
        segs = {}
        for c in np.unique(sem):
            if c == ignore_index:
                continue
            if c in things:
                for i in np.unique(inst[sem == c]):
                    segs[(int(c), int(i))] = (sem == c) & (inst == i)
            else:
                segs[(int(c), 0)] = sem == c
        return segs

    for ps, pi, gs, gi in frames:
        void = gs == ignore_index
        P = segments(ps, pi)
        G = segments(gs, gi)
        matched_p, matched_g = set(), set()
        for gk, gm in G.items():
            for pk, pm in P.items():
                if gk[0] != pk[0]:
                    continue
                inter = np.sum(gm & pm)
                union = np.sum(pm) + np.sum(gm) - inter - np.sum(pm & void)
                if union and inter / union > 0.5:
                    iou_sum[gk[0]] += inter / union
                    tp[gk[0]] += 1
                    matched_p.add(pk)
                    matched_g.add(gk)
        for gk in G:
            if gk not in matched_g:
                fn[gk[0]] += 1
        for pk, pm in P.items():
            if pk in matched_p:
                continue
            if np.sum(pm & void) / np.sum(pm) > 0.5:
                continue
            fp[pk[0]] += 1
    return iou_sum, tp, fp, fn
