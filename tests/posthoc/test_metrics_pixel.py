"""PixelMetrics: official SMIYC binning, exact mode, accumulation, merging and input errors."""
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from posthoc.errors import DTypeError, NonFiniteError, ShapeError, ValueRangeError
from posthoc.metrics import EmptyMetricError, PixelMetrics
from posthoc.metrics.pixel import smiyc_frame_bins, sorted_quantiles
from tests.reference.metrics import smiyc_pixel_reference, threshold_sweep_reference

METRIC_KEYS = ("ap", "auroc", "fpr95", "best_f1", "best_f1_threshold")


def _frames(rng, n=5, h=24, w=32, dtype=np.float32, quantize=None, no_anomaly=(), all_void=()):
    out = []
    for i in range(n):
        lab = np.zeros((h, w), np.uint8)
        if i not in no_anomaly:
            y, x = rng.integers(0, h - 6), rng.integers(0, w - 8)
            lab[y:y + 6, x:x + 8] = 1
        lab[rng.random((h, w)) < 0.05] = 255
        if i in all_void:
            lab[:] = 255
        s = rng.random((h, w)) * 0.7 + 0.3 * (lab == 1)
        if quantize:
            s = np.round(s * quantize) / quantize
        out.append((s.astype(dtype), lab))
    return out


def _run(frames, mode, **kw):
    pm = PixelMetrics(mode=mode, **kw)
    for s, lab in frames:
        pm.update(s, lab)
    return pm


def _pooled(frames):
    s = np.concatenate([f[0][f[1] != 255].astype(np.float64) for f in frames])
    y = np.concatenate([f[1][f[1] != 255] for f in frames]) == 1
    return s, y


def _same(a, b):
    for k in METRIC_KEYS:
        assert a[k] == b[k], (k, a[k], b[k])
    for k in a["curves"]:
        np.testing.assert_array_equal(a["curves"][k], b["curves"][k])


# ------------------------------------------------------------------ the official binning
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_sorted_quantiles_bit_identical_to_numpy(rng, dtype):
    for n in (1, 2, 3, 383, 384, 385, 2000):
        a = np.sort(rng.random(n).astype(dtype))
        if n > 3:
            a[: n // 3] = a[0]  # ties
        q = np.linspace(0, 1, min(384, n))
        got, want = sorted_quantiles(a, q), np.quantile(a, q)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_smiyc_matches_official_transcription_exactly(rng, dtype):
    frames = _frames(rng, n=6, dtype=dtype, no_anomaly=(2,), all_void=(4,))
    frames[0][0][0, :4] = 1.0  # saturated scores in two frames: repeated top thresholds
    frames[1][0][0, :4] = 1.0
    got = _run(frames, "smiyc").compute()
    want = smiyc_pixel_reference(frames)
    for k in METRIC_KEYS:
        assert got[k] == want[k], (k, got[k], want[k])
    assert got["mode"] == "smiyc"


def test_smiyc_frame_bins_equal_numpy_histogram(rng):
    s = rng.random(5000).astype(np.float32)
    y = rng.random(5000) < 0.1
    thr, tp, fp = smiyc_frame_bins(np.sort(s[y]), np.sort(s[~y]))
    assert np.all(np.diff(thr) < 0)  # descending lower edges
    edges = np.r_[thr[::-1], np.inf]
    # each bin [e_k, e_k+1): counts must add up and match a direct count
    assert tp.sum() == y.sum() and fp.sum() == (~y).sum()
    k = 100
    lo, hi = edges[::-1][k + 1], edges[::-1][k]
    assert tp[k] == np.sum(y & (s >= lo) & (s < hi))


def test_smiyc_tiny_hand_computed():
    # scores 0.1 0.4 (negatives) 0.35 0.8 (positives): bins {0.09,0.1,0.35,0.4,0.8,0.81}
    s = np.array([[0.1, 0.4, 0.35, 0.8]])
    y = np.array([[0, 0, 1, 1]], np.uint8)
    for mode in ("smiyc", "exact"):
        r = _run([(s, y)], mode).compute()
        assert r["ap"] == pytest.approx(0.5 * 1 + 0.5 * 2 / 3, abs=1e-15)
        assert r["auroc"] == pytest.approx(0.75, abs=1e-15)
        assert r["fpr95"] == 0.5
        assert r["best_f1"] == pytest.approx(0.8)
        assert r["best_f1_threshold"] == 0.35


def test_hand_computed_with_no_anomaly_frame_and_all_void_frame():
    f1 = (np.array([[0.1, 0.4, 0.35, 0.8]]), np.array([[0, 0, 1, 1]], np.uint8))
    f2 = (np.array([[0.2, 0.9]]), np.array([[0, 0]], np.uint8))  # no anomaly
    f3 = (np.array([[0.5, 0.6]]), np.array([[255, 255]], np.uint8))  # all void
    for mode in ("smiyc", "exact"):
        pm = _run([f1, f2, f3], mode)
        r = pm.compute()
        # pooled ranking .9n .8p .4n .35p .2n .1n
        assert r["ap"] == pytest.approx(0.5 * 0.5 + 0.5 * 0.5, abs=1e-15)
        assert r["auroc"] == pytest.approx(5 / 8, abs=1e-15)
        assert r["fpr95"] == 0.5
        assert r["best_f1"] == pytest.approx(2 / 3)
        assert r["best_f1_threshold"] == 0.35
        assert (r["n_frames"], r["n_pixels_pos"], r["n_pixels_neg"]) == (3, 2, 4)


# ------------------------------------------------------------------ exact mode
def test_exact_equals_sklearn_and_threshold_sweep(rng):
    frames = _frames(rng, n=4, quantize=40, no_anomaly=(1,))
    r = _run(frames, "exact").compute()
    s, y = _pooled(frames)
    assert r["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert r["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    ref = threshold_sweep_reference(frames)
    for k in METRIC_KEYS:
        assert r[k] == pytest.approx(ref[k], abs=1e-12), k


def test_exact_continuous_scores_sklearn(rng):
    frames = _frames(rng, n=3, dtype=np.float64)
    r = _run(frames, "exact").compute()
    s, y = _pooled(frames)
    assert r["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert r["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_binned_close_to_exact(rng):
    """Stated tolerance: with 768 bins per frame AP/AUROC within 5e-3, FPR95 within 1e-2."""
    frames = _frames(rng, n=6, h=48, w=64)
    a = _run(frames, "smiyc").compute()
    b = _run(frames, "exact").compute()
    assert abs(a["ap"] - b["ap"]) < 5e-3
    assert abs(a["auroc"] - b["auroc"]) < 5e-3
    assert abs(a["fpr95"] - b["fpr95"]) < 1e-2
    assert abs(a["best_f1"] - b["best_f1"]) < 5e-3


def _f16_frames(rng, n=3, h=72, w=80):
    """float16 frames above the histogram cut-off (4096 px), with negative scores, -0.0 and ties."""
    out = []
    for s, lab in _frames(rng, n=n, h=h, w=w, dtype=np.float64, no_anomaly=(1,)):
        s16 = (s * 4 - 1.5).astype(np.float16)
        s16[0, :3] = -0.0
        s16[1, :3] = 0.0
        out.append((s16, lab))
    return out


def test_float16_histogram_path_smiyc_matches_official(rng):
    frames = _f16_frames(rng)
    got = _run(frames, "smiyc").compute()
    want = smiyc_pixel_reference(frames)
    for k in METRIC_KEYS:
        assert got[k] == want[k], (k, got[k], want[k])


def test_float16_histogram_path_exact_and_constant_state(rng):
    frames = _f16_frames(rng)
    pm = _run(frames, "exact")
    r = pm.compute()
    s, y = _pooled(frames)
    assert r["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert r["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    as32 = _run([(f[0].astype(np.float32), f[1]) for f in frames], "exact").compute()
    for k in METRIC_KEYS:
        assert r[k] == pytest.approx(as32[k], abs=1e-12), k
    assert pm.state_nbytes == 2 * 65536 * 8  # two histograms, whatever the number of frames
    mixed = _run(frames[:2] + [(frames[2][0].astype(np.float32), frames[2][1])], "exact").compute()
    for k in METRIC_KEYS:
        assert mixed[k] == pytest.approx(r[k], abs=1e-12), k


# ------------------------------------------------------------------ accumulation
@pytest.mark.parametrize("mode", ["smiyc", "exact"])
def test_batch_update_equals_frame_updates(rng, mode):
    frames = _frames(rng, n=4)
    one = _run(frames, mode)
    batched = PixelMetrics(mode)
    batched.update(np.stack([f[0] for f in frames[:3]]), np.stack([f[1] for f in frames[:3]]))
    batched.update(frames[3][0][None, None], frames[3][1][None])  # (B,1,H,W) scores
    _same(batched.compute(), one.compute())


def test_exact_update_over_concatenation(rng):
    frames = _frames(rng, n=3)
    whole = (np.concatenate([f[0] for f in frames], 1), np.concatenate([f[1] for f in frames], 1))
    _same(_run(frames, "exact").compute(), _run([whole], "exact").compute())


@pytest.mark.parametrize("mode", ["smiyc", "exact"])
def test_merged_equals_single_run(rng, mode):
    frames = _frames(rng, n=6)
    single = _run(frames, mode).compute()
    a, b = _run(frames[:2], mode), _run(frames[2:], mode)
    _same(a.merge(b).compute(), single)
    if mode == "exact":  # exact states are order independent
        _same(_run(frames[2:], mode).merge(_run(frames[:2], mode)).compute(), single)


def test_reset_and_torch_input(rng):
    frames = _frames(rng, n=2)
    pm = _run(frames, "smiyc")
    pm.reset()
    assert pm.n_frames == 0
    for s, lab in frames:
        pm.update(torch.from_numpy(s), torch.from_numpy(lab))
    _same(pm.compute(), _run(frames, "smiyc").compute())


def test_input_not_modified(rng):
    s, lab = _frames(rng, n=1)[0]
    s0, lab0 = s.copy(), lab.copy()
    for mode in ("smiyc", "exact"):
        _run([(s, lab)], mode).compute()
    np.testing.assert_array_equal(s, s0)
    np.testing.assert_array_equal(lab, lab0)


def test_curves_for_plots(rng):
    r = _run(_frames(rng, n=3), "exact").compute(curve_points=50)
    c = r["curves"]
    assert set(c) == {"precision", "recall", "tpr", "fpr", "thresholds"}
    assert len(c["recall"]) <= 60
    assert c["recall"][0] == 0 and c["recall"][-1] == 1 and np.all(np.diff(c["recall"]) >= 0)
    assert np.all(np.diff(c["thresholds"]) <= 0)


# ------------------------------------------------------------------ errors
def test_errors(rng):
    s, lab = _frames(rng, n=1)[0]
    pm = PixelMetrics()
    with pytest.raises(ShapeError, match=r"labels must have the shape of scores \(1,24,32\)"):
        pm.update(s, lab[:, :5])
    bad = lab.copy()
    bad[0, 0] = 2
    with pytest.raises(ValueRangeError, match=r"got other values \[2\]"):
        pm.update(s, bad)
    nan = s.copy()
    nan[lab != 255][:1] = 0  # no-op, keep shape
    nan[np.nonzero(lab == 0)[0][0], np.nonzero(lab == 0)[1][0]] = np.nan
    with pytest.raises(NonFiniteError, match="1 NaN"):
        pm.update(nan, lab)
    void_nan = s.copy()
    void_nan[lab == 255] = np.nan  # NaN on void pixels is fine
    pm.update(void_nan, lab)
    with pytest.raises(DTypeError, match="floating-point"):
        pm.update((s * 100).astype(np.int32), lab)
    with pytest.raises(DTypeError, match="integer"):
        pm.update(s, lab.astype(np.float32))
    with pytest.raises(DTypeError, match="numpy array or a torch tensor"):
        pm.update(s.tolist(), lab)
    with pytest.raises(ShapeError, match="4 axes"):
        pm.update(s[None, None].repeat(2, 1), lab)
    with pytest.raises(ValueRangeError, match="mode must be one of"):
        PixelMetrics(mode="fast")
    with pytest.raises(EmptyMetricError, match="at least one update"):
        PixelMetrics().compute()
    only_neg = PixelMetrics()
    only_neg.update(s, np.zeros_like(lab))
    with pytest.raises(EmptyMetricError, match="got 0 anomaly"):
        only_neg.compute()
    with pytest.raises(ValueRangeError, match="different settings"):
        PixelMetrics("smiyc").merge(PixelMetrics("exact"))
    with pytest.raises(DTypeError, match="can only merge"):
        PixelMetrics().merge(object())


def test_radix_sort_equals_numpy_sort(rng):
    from posthoc.metrics.pixel import RADIX_MIN, sort_scores

    x = (rng.standard_normal(RADIX_MIN + 17) * 3).astype(np.float32)
    x[:5] = [0.0, -0.0, np.float32(1e-40), -np.float32(1e-40), 3.4e38]  # zeros, subnormals, extremes
    x[5:100] = x[200]  # ties
    got = sort_scores(x)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.sort(x))
    assert x[1] == 0.0 and np.signbit(x[1])  # input untouched


def test_large_float32_frames_exact_and_smiyc(rng):
    """Frames above the radix cut-off: smiyc equals the official transcription, exact equals sklearn."""
    frames = _frames(rng, n=2, h=280, w=280)  # > 65536 non-void negatives per frame
    got = _run(frames, "smiyc").compute()
    want = smiyc_pixel_reference(frames)
    for k in METRIC_KEYS:
        assert got[k] == want[k], k
    r = _run(frames, "exact").compute()
    s, y = _pooled(frames)
    assert r["ap"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert r["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
