"""ComponentMetrics: official instancer + segment metrics, two-pass threshold, merging, errors."""
import math

import cv2
import numpy as np
import pytest
import torch

from posthoc.errors import DTypeError, NonFiniteError, ShapeError, ValueRangeError
from posthoc.metrics import (
    SIOU_THRESHOLDS,
    ComponentMetrics,
    EmptyMetricError,
    PixelMetrics,
    ThresholdNotSetError,
    evaluate_anomaly,
)
from tests.reference.metrics import component_reference

KEYS = ("siou_gt", "siou_pred", "ppv", "f1_25", "f1_50", "f1_75", "f1_mean")


def _random_frame(rng, h=48, w=64):
    lab = np.zeros((h, w), np.uint8)
    for _ in range(rng.integers(0, 5)):
        y, x = rng.integers(0, h - 10), rng.integers(0, w - 10)
        hh, ww = rng.integers(1, 12, 2)
        lab[y:y + hh, x:x + ww] = 1
    lab[rng.random((h, w)) < 0.02] = 255
    lab[:, :3] = 255
    s = rng.random((h, w)) * 0.5 + 0.45 * (lab == 1)
    return cv2.GaussianBlur(s.astype(np.float32), (5, 5), 1.5), lab


def _close(a, b):
    return (math.isnan(a) and math.isnan(b)) or abs(a - b) < 1e-12


@pytest.mark.parametrize("sizes", [(0, 0), (5, 3), (20, 10)])
def test_matches_official_loop_reference(rng, sizes):
    for _ in range(6):
        frames = [_random_frame(rng) for _ in range(3)]
        cm = ComponentMetrics(0.5, *sizes)
        for s, lab in frames:
            cm.update(s, lab)
        got, want = cm.compute(), component_reference(frames, 0.5, *sizes)
        for k in KEYS:
            assert _close(got[k], want[k]), (k, got[k], want[k])
        assert got["n_gt_components"] == want["n_gt"] and got["n_pred_components"] == want["n_pred"]
        assert got["tp_50"] == want["tp"][5] and got["fp_50"] == want["fp"][5] and got["fn_50"] == want["fn"][5]


def _two_objects_one_prediction():
    lab = np.zeros((20, 20), np.uint8)
    lab[2:6, 2:6] = 1  # GT A, 16 px
    lab[2:6, 10:14] = 1  # GT B, 16 px
    s = np.zeros((20, 20), np.float32)
    s[2:6, 2:14] = 0.9  # one predicted component of 48 px covering both and the gap
    return s, lab


def test_hand_computed_adjusted_iou():
    s, lab = _two_objects_one_prediction()
    cm = ComponentMetrics(0.5, 0, 0)
    cm.update(s, lab)
    r = cm.compute()
    # sIoU(A) = 16 / (48 + 16 - 16 - 16 (pixels of B)) = 0.5, same for B; precision = 32/48
    assert r["siou_gt"] == 0.5
    assert r["ppv"] == pytest.approx(2 / 3)
    expect = [1.0] * 6 + [0.0] * 5  # TP=2 while t <= 0.5, FP=1 once t > 2/3
    assert r["f1_per_threshold"] == pytest.approx(expect)
    assert (r["f1_25"], r["f1_50"], r["f1_75"]) == (1.0, 1.0, 0.0)
    assert r["f1_mean"] == pytest.approx(6 / 11)
    assert (r["tp_75"], r["fn_75"], r["fp_75"]) == (0, 2, 1)


def test_no_anomaly_frame_and_all_void_frame():
    s, lab = _two_objects_one_prediction()
    fp_only = np.zeros((20, 20), np.float32)
    fp_only[10:13, 10:13] = 0.8  # a 9-px false positive, no GT anomaly
    void = np.full((20, 20), 255, np.uint8)
    cm = ComponentMetrics(0.5, 0, 0)
    cm.update(s, lab)
    cm.update(fp_only, np.zeros((20, 20), np.uint8))
    cm.update(np.ones((20, 20), np.float32), void)  # contributes nothing
    r = cm.compute()
    assert r["n_frames"] == 3 and r["n_gt_components"] == 2 and r["n_pred_components"] == 2
    assert r["ppv"] == pytest.approx((2 / 3 + 0) / 2)
    assert r["f1_25"] == pytest.approx(4 / 5)  # TP 2, FN 0, FP 1
    assert r["f1_75"] == 0.0


def test_min_sizes():
    s, lab = _two_objects_one_prediction()
    s2 = s.copy()
    s2[10:13, 10:13] = 0.8  # 9-px false positive
    cm = ComponentMetrics(0.5, min_pred_size=10, min_gt_size=0)
    cm.update(s2, lab)
    assert cm.compute()["n_pred_components"] == 1  # the 9-px blob is dropped
    # GT components below 17 px become void: the prediction keeps only its 16 gap pixels
    cm = ComponentMetrics(0.5, min_pred_size=0, min_gt_size=17)
    cm.update(s, lab)
    r = cm.compute()
    assert r["n_gt_components"] == 0 and math.isnan(r["siou_gt"])
    assert r["ppv"] == 0.0 and r["fp_25"] == 1
    assert (ComponentMetrics.anomaly_track().min_pred_size, ComponentMetrics.anomaly_track().min_gt_size) == (500, 100)
    assert (ComponentMetrics.obstacle_track().min_pred_size, ComponentMetrics.obstacle_track().min_gt_size) == (50, 10)


def test_threshold_is_strict_and_8_connected():
    lab = np.zeros((10, 10), np.uint8)
    lab[2, 2] = lab[3, 3] = 1  # diagonal neighbours: one 8-connected GT component
    s = np.zeros((10, 10), np.float32)
    s[2, 2] = s[3, 3] = 0.5
    cm = ComponentMetrics(0.5, 0, 0)
    cm.update(s, lab)
    r = cm.compute()
    assert r["n_gt_components"] == 1 and r["n_pred_components"] == 0  # 0.5 is not > 0.5
    cm = ComponentMetrics(0.49, 0, 0)
    cm.update(s, lab)
    r = cm.compute()
    assert r["n_pred_components"] == 1 and r["siou_gt"] == 1.0


def test_float16_scores_compared_in_float64():
    lab = np.zeros((10, 10), np.uint8)
    lab[2:5, 2:5] = 1
    s = np.zeros((10, 10), np.float16)
    s[2:5, 2:5] = 0.7  # float16(0.7) = 0.7001953125 > 0.7, but == 0.7 in float16
    cm = ComponentMetrics(0.7, 0, 0)
    cm.update(s, lab)
    assert cm.compute()["n_pred_components"] == 1


def test_batch_merge_torch(rng):
    frames = [_random_frame(rng) for _ in range(4)]
    single = ComponentMetrics(0.5, 5, 3)
    for s, lab in frames:
        single.update(s, lab)
    batched = ComponentMetrics(0.5, 5, 3)
    batched.update(torch.from_numpy(np.stack([f[0] for f in frames])), np.stack([f[1] for f in frames]))
    a, b = ComponentMetrics(0.5, 5, 3), ComponentMetrics(0.5, 5, 3)
    for s, lab in frames[:1]:
        a.update(s, lab)
    for s, lab in frames[1:]:
        b.update(s, lab)
    merged = a.merge(b)
    want = single.compute()
    for other in (batched.compute(), merged.compute()):
        for k in KEYS:
            assert _close(other[k], want[k]), k


def test_two_pass_threshold_from_pixel(rng):
    frames = [_random_frame(rng) for _ in range(3)]
    pm = PixelMetrics()
    for s, lab in frames:
        pm.update(s, lab)
    thr = pm.compute()["best_f1_threshold"]
    cm = ComponentMetrics.from_pixel(pm, track="obstacle")
    assert cm.threshold == thr and (cm.min_pred_size, cm.min_gt_size) == (50, 10)
    for s, lab in frames:
        cm.update(s, lab)
    both = evaluate_anomaly(frames, track="obstacle")
    assert both["pixel"]["best_f1_threshold"] == thr
    for k in KEYS:
        assert _close(both["component"][k], cm.compute()[k])
    again = evaluate_anomaly(lambda: iter(frames), track="obstacle")
    assert again["component"]["f1_mean"] == both["component"]["f1_mean"] or math.isnan(both["component"]["f1_mean"])
    with pytest.raises(DTypeError, match="read twice"):
        evaluate_anomaly(iter(frames))
    assert len(SIOU_THRESHOLDS) == 11 and SIOU_THRESHOLDS[5] == 0.5


def test_errors(rng):
    s, lab = _random_frame(rng)
    with pytest.raises(ThresholdNotSetError, match="from_pixel"):
        ComponentMetrics().update(s, lab)
    cm = ComponentMetrics(0.5)
    with pytest.raises(EmptyMetricError):
        cm.compute()
    with pytest.raises(ShapeError):
        cm.update(s, lab[:10])
    bad = lab.copy()
    bad[5, 5] = 7
    with pytest.raises(ValueRangeError, match=r"\[7\]"):
        cm.update(s, bad)
    nan = s.copy()
    nan[lab == 0] = np.nan
    with pytest.raises(NonFiniteError):
        cm.update(nan, lab)
    cm.update(s, lab)
    with pytest.raises(ValueRangeError, match="reset"):
        cm.set_threshold(0.3)
    with pytest.raises(ValueRangeError, match="different settings"):
        cm.merge(ComponentMetrics(0.4))
    with pytest.raises(ValueRangeError, match="finite"):
        ComponentMetrics(float("nan"))
    with pytest.raises(ValueRangeError, match="track"):
        ComponentMetrics.from_pixel({"best_f1_threshold": 0.5}, track="lane")


def test_evaluate_anomaly_maps_equals_one_call_per_map(rng):
    from posthoc.metrics import evaluate_anomaly_maps

    frames = [_random_frame(rng) for _ in range(6)]
    other = [(np.clip(s[::-1, ::-1].copy() * 0.9 + 0.05, 0, 1), lab) for s, lab in frames]
    res = evaluate_anomaly_maps([(lab, {"a": s, "b": o}) for (s, lab), (o, _) in zip(frames, other, strict=True)],
                                track="obstacle")
    for key, fr in (("a", frames), ("b", other)):
        one = evaluate_anomaly(fr, track="obstacle")
        assert res[key]["pixel"]["ap"] == one["pixel"]["ap"]
        for k in KEYS:
            assert _close(res[key]["component"][k], one["component"][k])
    with pytest.raises(ValueRangeError, match=r"every frame must give the maps \['a'\]; got \['b'\]"):
        evaluate_anomaly_maps([(frames[0][1], {"a": frames[0][0]}), (frames[1][1], {"b": frames[1][0]})])
    with pytest.raises(ValueRangeError, match="on_empty must be 'raise' or 'record'"):
        evaluate_anomaly_maps([], on_empty="skip")
    void = np.full((8, 8), 255, np.uint8)
    with pytest.raises(EmptyMetricError):
        evaluate_anomaly_maps([(void, {"a": np.zeros((8, 8), np.float32)})])
    rec = evaluate_anomaly_maps([(void, {"a": np.zeros((8, 8), np.float32)})], on_empty="record")
    assert "error" in rec["a"]["pixel"] and rec["a"]["component"] is None
