"""posthoc.metrics against the official SMIYC functions themselves (opt-in).

Set ``POSTHOC_SMIYC_REPO`` to a checkout of ``SegmentMeIfYouCan/road-anomaly-benchmark``
(tested at commit 1c7804e). The official functions are read from its source files and run
with two small stand-ins (``EasyDict``, and ``np.trapz`` on numpy >= 2.4), without importing
the package (which needs its data-set paths). Skipped when the variable is not set.
"""
import contextlib
import io
import os
import re
from pathlib import Path

import numpy as np
import pytest

from posthoc.metrics import ComponentMetrics, PixelMetrics

REPO = os.environ.get("POSTHOC_SMIYC_REPO")
pytestmark = pytest.mark.skipif(not REPO, reason="set POSTHOC_SMIYC_REPO to an official SMIYC checkout")


class _EasyDict(dict):
    def __getattr__(self, k):
        try:
            return self[k]
        except KeyError as e:
            raise AttributeError(k) from e

    def __setattr__(self, k, v):
        self[k] = v


def _namespace():
    from scipy.ndimage import label

    np_ns = type("np_ns", (), {})()
    for k in dir(np):
        if not k.startswith("__"):
            setattr(np_ns, k, getattr(np, k))
    if not hasattr(np, "trapz"):
        np_ns.trapz = np.trapezoid
    return {"np": np_ns, "EasyDict": _EasyDict, "label": label}


def _load(rel: str, names, method: str | None = None):
    src = (Path(REPO) / "road_anomaly_benchmark" / "metrics" / rel).read_text()
    g = _namespace()
    for name in names:
        m = re.search(rf"^(def {name}\(.*?)(?=^\S)", src, re.DOTALL | re.MULTILINE)
        exec(m.group(1), g)
    if method:
        m = re.search(rf"(\t@staticmethod\n\tdef {method}.*?)(?=\n\tdef )", src, re.DOTALL)
        exec(m.group(1).replace("\t@staticmethod\n", "").replace("\n\t", "\n")[1:], g)
    return g


@pytest.fixture(scope="module")
def official():
    pc = _load("pixel_classification.py", ["binary_confusion_matrix"], method="aggregate_dynamic_bins")
    pcc = _load("pixel_classification_curves.py", ["curves_from_cmats"])
    inst = _load("instance_segmentation.py", ["default_instancer", "segment_metrics"])

    def pixel(frames):
        res = []
        for s, lab in frames:
            roi = lab < 255
            if roi.any():
                res.append(pc["binary_confusion_matrix"](prob=s[roi], gt_label_bool=lab[roi].astype(bool),
                                                         num_bins=768, bin_strategy="percentiles"))
        a = pc["aggregate_dynamic_bins"](res)
        with contextlib.redirect_stdout(io.StringIO()):
            return pcc["curves_from_cmats"](a.cmat, a.thresholds)

    def components(frames, thr, segsize, instsize):
        rs = []
        for s, lab in frames:
            g, p, _ = inst["default_instancer"](s, lab, np.float64(thr), segsize, instsize)  # as read from HDF5
            rs.append(inst["segment_metrics"](g, p))
        tp = sum(r["tp_50"] for r in rs)
        fn = sum(r["fn_50"] for r in rs)
        fp = sum(r["fp_50"] for r in rs)
        n = sum(len(r.sIoU_gt) for r in rs)
        return {"siou_gt": sum(np.sum(r.sIoU_gt) for r in rs) / n if n else float("nan"),
                "tp_50": tp, "fn_50": fn, "fp_50": fp}

    return pixel, components


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_identical_to_official(official, dtype):
    from posthoc.bench.metrics_speed import make_frames

    pixel, components = official
    frames = make_frames(3, 96, 160, seed=3, dtype=dtype)
    frames[0][0][:2] = 1.0  # repeated maxima across frames
    frames[1][0][:2] = 1.0
    frames.append((np.zeros((96, 160), dtype), np.zeros((96, 160), np.uint8)))  # no anomaly
    frames.append((np.ones((96, 160), dtype), np.full((96, 160), 255, np.uint8)))  # all void
    pm = PixelMetrics("smiyc")
    for s, lab in frames:
        pm.update(s, lab)
    mine, off = pm.compute(), pixel(frames)
    for a, b in (("ap", "area_PRC"), ("auroc", "area_ROC"), ("fpr95", "tpr95_fpr"), ("best_f1", "best_f1"),
                 ("best_f1_threshold", "best_f1_threshold"), ("fpr95_threshold", "tpr95_threshold")):
        assert mine[a] == float(off[b]), a
    thr = mine["best_f1_threshold"]
    for sizes in ((50, 10), (0, 0)):
        cm = ComponentMetrics(thr, *sizes)
        for s, lab in frames:
            cm.update(s, lab)
        r, o = cm.compute(), components(frames, thr, *sizes)
        assert r["siou_gt"] == pytest.approx(o["siou_gt"], abs=1e-12)
        assert (r["tp_50"], r["fn_50"], r["fp_50"]) == (o["tp_50"], o["fn_50"], o["fp_50"])
