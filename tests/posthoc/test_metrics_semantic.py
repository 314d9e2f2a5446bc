"""SemanticMetrics, OpenIoU, open_set_prediction and PanopticQuality."""
import math

import numpy as np
import pytest
import torch

from posthoc.errors import DTypeError, ShapeError, ValueRangeError
from posthoc.metrics import EmptyMetricError, OpenIoU, PanopticQuality, SemanticMetrics, open_set_prediction
from tests.reference.metrics import panoptic_reference, semantic_iou_reference


# ------------------------------------------------------------------ SemanticMetrics
def test_semantic_hand_computed():
    t = np.array([[0, 0, 1], [1, 2, 255]])
    p = np.array([[0, 1, 1], [1, 0, 2]])
    sm = SemanticMetrics(3)
    sm.update(p, t)
    r = sm.compute()
    # class 0: TP 1, FP 1 (the 2 called 0), FN 1 -> 1/3; class 1: TP 2, FP 1 -> 2/3; class 2: TP 0 -> 0
    assert r["iou"] == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert r["miou"] == pytest.approx(1 / 3)
    assert r["pixel_accuracy"] == pytest.approx(3 / 5)
    assert r["n_pixels"] == 5


def test_semantic_reference_batch_merge_logits(rng):
    k = 5
    t = rng.integers(0, k, (4, 16, 16))
    t[rng.random(t.shape) < 0.1] = 255
    logits = rng.normal(size=(4, k, 16, 16)).astype(np.float32)
    p = logits.argmax(1)
    one = SemanticMetrics(k)
    one.update(torch.from_numpy(logits), torch.from_numpy(t))  # class scores -> argmax
    np.testing.assert_allclose(one.compute()["iou"], semantic_iou_reference(p, t, k), rtol=0, atol=1e-15)
    a, b = SemanticMetrics(k), SemanticMetrics(k)
    for i in range(2):
        a.update(p[i], t[i])
    b.update(p[2:], t[2:])
    np.testing.assert_array_equal(a.merge(b).confusion, one.confusion)


def test_zero_shot_seen_unseen_hiou():
    t = np.array([[0, 1, 2, 3]])
    p = np.array([[0, 1, 3, 3]])
    sm = SemanticMetrics(4, seen=[0, 1], class_names=["a", "b", "c", "d"])
    sm.update(p, t)
    r = sm.compute()
    assert r["miou_seen"] == 1.0
    assert r["miou_unseen"] == pytest.approx((0 + 0.5) / 2)
    assert r["hiou"] == pytest.approx(2 * 1.0 * 0.25 / 1.25)
    assert r["iou_per_class"]["d"] == 0.5


def test_all_void_frame_adds_nothing():
    sm = SemanticMetrics(3)
    sm.update(np.zeros((2, 2), int), np.full((2, 2), 255))
    assert sm.n_frames == 1 and sm.confusion.sum() == 0
    with pytest.raises(EmptyMetricError, match="non-void"):
        sm.compute()
    sm.update(np.array([[1]]), np.array([[1]]))
    assert sm.compute()["miou"] == 1.0


def test_absent_class_is_nan_and_skipped():
    sm = SemanticMetrics(3)
    sm.update(np.array([[0, 1]]), np.array([[0, 1]]))
    r = sm.compute()
    assert math.isnan(r["iou"][2]) and r["miou"] == 1.0


def test_semantic_errors():
    sm = SemanticMetrics(3)
    with pytest.raises(ValueRangeError, match=r"\[0,2\] or 255.*\[7\]"):
        sm.update(np.zeros((2, 2), int), np.full((2, 2), 7))
    with pytest.raises(ValueRangeError, match=r"preds must hold class ids in \[0,2\]"):
        sm.update(np.full((2, 2), 255), np.zeros((2, 2), int))
    with pytest.raises(ShapeError):
        sm.update(np.zeros((2, 3), int), np.zeros((2, 2), int))
    with pytest.raises(ShapeError, match="one class axis more"):
        sm.update(np.zeros((2, 2), np.float32), np.zeros((2, 2), int))
    with pytest.raises(DTypeError):
        sm.update(np.zeros((2, 2), int), np.zeros((2, 2), np.float32))
    with pytest.raises(EmptyMetricError):
        sm.compute()
    with pytest.raises(ValueRangeError):
        SemanticMetrics(3, seen=[5])
    with pytest.raises(ValueRangeError, match="different settings"):
        SemanticMetrics(3).merge(SemanticMetrics(4))


# ------------------------------------------------------------------ OpenIoU
def test_open_iou_hand_computed():
    # 2 known classes, unknown = 2
    t = np.array([[0, 0, 1, 1, 2, 2]])
    p = np.array([[0, 2, 1, 0, 2, 1]])
    oi = OpenIoU(2)
    oi.update(p, t)
    r = oi.compute()
    # class 0: TP 1, FN 1 (called unknown), FP 1 (a 1 called 0) -> 1/3
    # class 1: TP 1, FN 1, FP 1 (an unknown called 1)           -> 1/3
    assert r["open_iou"] == pytest.approx([1 / 3, 1 / 3])
    assert r["open_miou"] == pytest.approx(1 / 3)
    assert r["unknown_iou"] == pytest.approx(1 / 3)  # TP 1, FP 1, FN 1
    assert r["unknown_precision"] == 0.5 and r["unknown_recall"] == 0.5


def test_open_set_prediction_and_custom_unknown_id():
    sem = np.array([[[0, 1], [1, 0]]])
    score = np.array([[[0.1, 0.9], [0.5, 0.4]]], np.float32)
    out = open_set_prediction(sem, score, 0.5, unknown_id=19)
    np.testing.assert_array_equal(out, [[[0, 19], [19, 0]]])
    np.testing.assert_array_equal(sem, [[[0, 1], [1, 0]]])  # input untouched
    oi = OpenIoU(2, unknown_id=19)
    oi.update(out, np.array([[[0, 19], [1, 0]]]))
    r = oi.compute()
    assert r["open_iou"] == pytest.approx([1.0, 0.0])
    with pytest.raises(ValueRangeError, match="unknown_id 19"):
        oi.update(np.array([[2]]), np.array([[0]]))
    with pytest.raises(ValueRangeError, match="collides"):
        OpenIoU(2, unknown_id=255)


# ------------------------------------------------------------------ PanopticQuality
def test_pq_hand_computed():
    # known: 0 = road (stuff), 1 = car (thing); unknown = 2 (thing)
    gs = np.zeros((4, 8), int)
    gi = np.zeros((4, 8), int)
    gs[0:2, 0:4], gi[0:2, 0:4] = 1, 1  # car 1: 8 px
    gs[2:4, 0:2], gi[2:4, 0:2] = 1, 2  # car 2: 4 px
    gs[0:2, 6:8], gi[0:2, 6:8] = 2, 1  # unknown object: 4 px
    ps, pi = gs.copy(), gi.copy()
    ps[1, 0:4] = 0  # car 1 predicted on 4 of its 8 px -> IoU 0.5, not > 0.5: FN + FP
    ps[2:4, 0:2], pi[2:4, 0:2] = 1, 7  # car 2 exact (other instance id is fine)
    pq = PanopticQuality(2, thing_ids=[1])
    pq.update(ps, pi, gs, gi)
    r = pq.compute()
    per = {c["id"]: c for c in r["per_class"]}
    assert (per[1]["tp"], per[1]["fp"], per[1]["fn"]) == (1, 1, 1)
    assert per[1]["pq"] == pytest.approx(1.0 / 2)
    road_iou = 16 / 20  # road GT 16 px, predicted 20 px (4 of car 1 added)
    assert per[0]["pq"] == pytest.approx(road_iou)
    assert r["pq_unknown"] == 1.0 and r["sq_unknown"] == 1.0
    assert r["pq_known"] == pytest.approx((road_iou + 0.5) / 2)
    assert r["pq_things"] == pytest.approx(0.5) and r["pq_stuff"] == pytest.approx(road_iou)


def test_pq_void_rules():
    gs = np.full((4, 4), 255)
    gs[:, :2] = 0
    gi = np.zeros((4, 4), int)
    ps = np.zeros((4, 4), int)  # predicts class 0 everywhere: 8 of 16 px on void
    pi = np.zeros((4, 4), int)
    ps[3, 3] = 1  # a thing segment entirely on void: not a FP
    pq = PanopticQuality(2, thing_ids=[1])
    pq.update(ps, pi, gs, gi)
    per = {c["id"]: c for c in pq.compute()["per_class"]}
    assert per[0]["tp"] == 1 and per[0]["sq"] == 1.0  # void pixels leave the union
    assert per[1]["fp"] == 0


def test_pq_matches_reference_and_merges(rng):
    frames = []
    for _ in range(4):
        gs = rng.integers(0, 4, (12, 12))
        gs[rng.random(gs.shape) < 0.1] = 255
        ps = np.where(rng.random(gs.shape) < 0.8, np.where(gs == 255, 0, gs), rng.integers(0, 4, gs.shape))
        # blocky instances, mostly predicted right, so that matches, FPs and FNs all happen
        gi = np.kron(rng.integers(0, 2, (3, 3)), np.ones((4, 4), int))
        pi = np.where(rng.random(gs.shape) < 0.9, gi, 1 - gi)
        frames.append((ps, pi, gs, gi))
    pq = PanopticQuality(3, thing_ids=[1, 2], unknown_id=3)
    for f in frames:
        pq.update(*f)
    iou_sum, tp, fp, fn = panoptic_reference(frames, 4, thing_ids=[1, 2, 3])
    np.testing.assert_allclose(pq.iou_sum, iou_sum, atol=1e-12)
    np.testing.assert_array_equal(pq.tp, tp)
    np.testing.assert_array_equal(pq.fp, fp)
    np.testing.assert_array_equal(pq.fn, fn)
    assert tp.sum() > 0 and fp.sum() > 0 and fn.sum() > 0
    a, b = PanopticQuality(3, [1, 2], 3), PanopticQuality(3, [1, 2], 3)
    a.update(*[np.stack(x) for x in zip(*frames[:2], strict=False)])
    for f in frames[2:]:
        b.update(*f)
    a.merge(b)
    np.testing.assert_array_equal(a.tp, pq.tp)
    assert a.compute()["pq"] == pytest.approx(pq.compute()["pq"], abs=1e-15)


def test_pq_errors():
    pq = PanopticQuality(2, thing_ids=[1])
    z = np.zeros((2, 2), int)
    with pytest.raises(EmptyMetricError):
        pq.compute()
    with pytest.raises(ValueRangeError, match="instance ids >= 0"):
        pq.update(z, z - 1, z, z)
    with pytest.raises(ShapeError):
        pq.update(z, z, np.zeros((3, 2), int), np.zeros((3, 2), int))
    with pytest.raises(ValueRangeError, match=r"\[9\]"):
        pq.update(z + 9, z, z, z)
    with pytest.raises(DTypeError):
        pq.update(z, z.astype(np.float32), z, z)
    with pytest.raises(ValueRangeError, match="thing_ids"):
        PanopticQuality(2, thing_ids=[2])
