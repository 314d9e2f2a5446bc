"""PanopticQuality against a transcription of panopticapi's pq_compute (tests/reference/panoptic_pq.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest

from posthoc.errors import DTypeError, ShapeError
from posthoc.metrics import PanopticQuality
from tests.reference.panoptic_pq import pq_compute_frames, to_panoptic

K, THINGS, UNK, IGN = 5, (2, 3), 5, 255


def _blocks(rng, h, w, n):
    """A class map of random rectangles and an instance map (each rectangle its own id)."""
    sem = np.full((h, w), int(rng.integers(0, 2)), np.int64)
    inst = np.zeros((h, w), np.int64)
    for i in range(n):
        y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
        y1, x1 = y0 + rng.integers(2, h // 2 + 2), x0 + rng.integers(2, w // 2 + 2)
        sem[y0:y1, x0:x1] = rng.choice([0, 1, 2, 3, 4, UNK])
        inst[y0:y1, x0:x1] = i + 1
    return sem, inst


def _frame(rng, h=12, w=14, kind="normal"):
    gs, gi = _blocks(rng, h, w, int(rng.integers(1, 6)))
    crowd = np.zeros((h, w), bool)
    if kind == "fully_void":
        gs[:] = IGN
    else:
        gs[rng.random((h, w)) < 0.08] = IGN
        y, x = rng.integers(0, h - 3), rng.integers(0, w - 3)
        gs[y:y + 3, x:x + 3] = IGN
        if rng.random() < 0.5:  # a crowd region of one thing class
            c = int(rng.choice(THINGS))
            m = np.zeros((h, w), bool)
            y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
            m[y:y + 4, x:x + 4] = True
            gs[m] = c
            crowd = m
    if kind == "empty_pred":
        ps = np.full((h, w), IGN, np.int64)
        pi = np.zeros((h, w), np.int64)
    else:  # a perturbed copy of the GT plus some new segments
        ps, pi = gs.copy(), gi.copy()
        ps[ps == IGN] = int(rng.integers(0, 2))
        flip = rng.random((h, w)) < 0.1
        ps[flip] = rng.choice([0, 1, 2, 3, 4, UNK, IGN], size=int(flip.sum()))
        s2, i2 = _blocks(rng, h, w, int(rng.integers(0, 3)))
        m = rng.random((h, w)) < 0.3
        ps[m], pi[m] = s2[m], i2[m] + 50
    return ps, pi, gs, gi, crowd


def _official(frames):
    is_thing = lambda c: c in THINGS or c == UNK  # noqa: E731
    conv = []
    for ps, pi, gs, gi, crowd in frames:
        pg, ginfo = to_panoptic(gs, gi, is_thing, IGN, crowd)
        pp, pinfo = to_panoptic(ps, pi, is_thing, IGN)
        conv.append((pg, ginfo, pp, pinfo))
    cats = {c + 1: {"isthing": int(is_thing(c))} for c in range(K + 1)}
    return pq_compute_frames(conv, cats)


def _ours(frames):
    m = PanopticQuality(K, THINGS, unknown_id=UNK, ignore_index=IGN)
    for ps, pi, gs, gi, crowd in frames:
        m.update(ps, pi, gs, gi, gt_crowd=crowd)
    return m


@pytest.mark.parametrize("seed", range(12))
def test_matches_pq_compute(seed):
    rng = np.random.default_rng(seed)
    kinds = ["normal"] * 4 + ["empty_pred", "fully_void"]
    frames = [_frame(rng, kind=kinds[int(rng.integers(len(kinds)))]) for _ in range(4)]
    off = _official(frames)
    m = _ours(frames)
    res = m.compute()
    for c in range(K + 1):
        iou, tp, fp, fn = off["stat"].get(c + 1, (0.0, 0, 0, 0))
        assert (m.tp[c], m.fp[c], m.fn[c]) == (tp, fp, fn), c
        assert m.iou_sum[c] == pytest.approx(iou, abs=1e-12)
        row = res["per_class"][c]
        if tp + fp + fn:
            for k in ("pq", "sq", "rq"):
                assert row[k] == pytest.approx(off["per_class"][c + 1][k], abs=1e-12)
        else:
            assert math.isnan(row["pq"])
    for k in ("pq", "sq", "rq"):
        assert res[k] == pytest.approx(off["All"][k], abs=1e-12, nan_ok=True)


def test_special_frames_counted_like_pq_compute():
    rng = np.random.default_rng(99)
    # empty predictions: every GT segment is a FN; fully void GT: every prediction is ignored
    f_empty = _frame(rng, kind="empty_pred")
    f_void = _frame(rng, kind="fully_void")
    for frames in ([f_empty], [f_void], [f_empty, f_void]):
        off = _official(frames)
        m = _ours(frames)
        assert m.fp.sum() == sum(v[2] for v in off["stat"].values())
        assert m.fn.sum() == sum(v[3] for v in off["stat"].values())
    m = _ours([f_void])
    assert m.tp.sum() == m.fp.sum() == m.fn.sum() == 0


def test_crowd_rules():
    # GT: a crowd region of class 2 (left half), a person instance (class 2) at the right
    gs = np.full((4, 8), 0, np.int64)
    gi = np.zeros((4, 8), np.int64)
    crowd = np.zeros((4, 8), bool)
    gs[:, :4] = 2
    crowd[:, :4] = True
    gs[:, 6:] = 2
    gi[:, 6:] = 7
    # a prediction of class 2 on the crowd: not a FP, crowd is not a FN; the instance matches
    ps, pi = gs.copy(), np.zeros_like(gi)
    pi[:, :4] = 1
    pi[:, 6:] = 2
    m = PanopticQuality(K, THINGS, unknown_id=UNK)
    m.update(ps, pi, gs, gi, gt_crowd=crowd)
    assert (m.tp[2], m.fp[2], m.fn[2]) == (1, 0, 0)
    # without crowd the left block is a real instance: matched as a TP
    m2 = PanopticQuality(K, THINGS, unknown_id=UNK)
    m2.update(ps, pi, gs, np.where(crowd, 3, gi))
    assert m2.tp[2] == 2


def test_crowd_bad_inputs():
    m = PanopticQuality(K, THINGS, unknown_id=UNK)
    z = np.zeros((4, 4), np.int64)
    with pytest.raises(DTypeError, match="gt_crowd"):
        m.update(z, z, z, z, gt_crowd=z)
    with pytest.raises(ShapeError, match="gt_crowd"):
        m.update(z, z, z, z, gt_crowd=np.zeros((3, 4), bool))
