import math

import numpy as np
import pytest
import torch

from posthoc import DTypeError, NonFiniteError, ShapeError, ValueRangeError
from posthoc import scores as S
from tests.reference import ops as ref


@pytest.fixture
def logits(rng):
    return (rng.normal(size=(2, 5, 9, 11)) * 3).astype(np.float32)


def test_msp_max_logit_entropy_energy(logits):
    p = ref.softmax(logits.astype(np.float64), axis=1)
    np.testing.assert_allclose(S.msp(logits), 1 - p.max(axis=1, keepdims=True), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(S.max_logit(logits), -logits.max(axis=1, keepdims=True))
    h = -(p * np.log(p)).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(S.entropy(logits), h, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(S.entropy(logits, normalized=True), h / math.log(5), rtol=1e-4, atol=1e-5)
    m = logits.astype(np.float64).max(axis=1, keepdims=True)
    lse = m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(S.energy(logits), -lse, rtol=1e-5, atol=1e-5)
    lse2 = 2 * np.log(np.exp(logits.astype(np.float64) / 2).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(S.energy(logits, temperature=2.0), -lse2, rtol=1e-5, atol=1e-5)


def test_sign_higher_is_more_anomalous():
    confident = np.array([10.0, 0, 0, 0], np.float32).reshape(1, 4, 1, 1)
    uncertain = np.array([1.0, 1, 1, 1], np.float32).reshape(1, 4, 1, 1)
    for f in (S.msp, S.max_logit, S.entropy, S.energy):
        assert float(f(uncertain).item()) > float(f(confident).item()), f.__name__
    u = S.msp(uncertain)
    assert 0 <= float(u.min()) and float(u.max()) <= 1
    assert float(S.entropy(uncertain, normalized=True).item()) == pytest.approx(1.0, abs=1e-6)


def test_score_kinds_and_shapes(logits):
    t = S.msp(torch.from_numpy(logits).half())
    assert isinstance(t, torch.Tensor) and t.dtype == torch.float32 and t.shape == (2, 1, 9, 11)
    assert S.max_logit(logits[0]).shape == (1, 9, 11)
    assert S.entropy(np.zeros((0, 3, 2, 2), np.float32)).shape == (0, 1, 2, 2)
    assert float(S.entropy(np.zeros((1, 1, 2, 2), np.float32), normalized=True).max()) == 0.0


def test_score_errors(logits):
    bad = logits.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(NonFiniteError, match="logits must be finite"):
        S.msp(bad)
    with pytest.raises(ShapeError, match=r"logits must be \(B,K,H,W\) or \(K,H,W\); got 2 axes"):
        S.energy(logits[0, 0])
    with pytest.raises(DTypeError, match="floating-point"):
        S.max_logit(logits.astype(np.int64))
    with pytest.raises(ValueRangeError, match="temperature must be a positive number"):
        S.energy(logits, temperature=0)
    with pytest.raises(ShapeError, match="at least one class"):
        S.msp(np.zeros((1, 0, 2, 2), np.float32))


# ----------------------------------------------------------------------------- SML


def test_fit_sml_stats_reference_and_streaming(rng):
    x = (rng.normal(size=(4, 3, 12, 10)) * 2).astype(np.float32)
    st = S.fit_sml_stats(x)
    mean, std = ref.sml_stats(x)
    np.testing.assert_allclose(st.mean, mean, rtol=1e-6)
    np.testing.assert_allclose(st.std, std, rtol=1e-6)
    assert st.count.sum() == 4 * 12 * 10
    st2 = S.fit_sml_stats(iter([x[:1], torch.from_numpy(x[1:3]), x[3:]]))  # any iterable of batches
    np.testing.assert_allclose(st2.mean, mean, rtol=1e-9)
    np.testing.assert_allclose(st2.std, std, rtol=1e-9)
    t = S.fit_sml_stats(torch.from_numpy(x))
    assert isinstance(t.mean, torch.Tensor)


def test_fit_sml_stats_missing_class_uses_pooled(caplog):
    x = np.zeros((1, 3, 2, 2), np.float32)
    x[0, 0] = [[1, 2], [3, 4]]  # class 0 always wins
    st = S.fit_sml_stats(x)
    assert st.count.tolist() == [4, 0, 0]
    np.testing.assert_allclose(st.mean, [2.5] * 3)
    np.testing.assert_allclose(st.std, [np.std([1, 2, 3, 4], ddof=1)] * 3)
    assert "fewer than 2 pixels" in caplog.text


def test_fit_sml_stats_errors(rng):
    with pytest.raises(ValueRangeError, match="at least one batch"):
        S.fit_sml_stats(iter([]))
    with pytest.raises(DTypeError, match="iterable"):
        S.fit_sml_stats(3.0)
    with pytest.raises(ShapeError, match="must have K=3 classes"):
        S.fit_sml_stats([np.zeros((1, 3, 2, 2), np.float32), np.zeros((1, 4, 2, 2), np.float32)])


def test_standardized_max_logit(rng, logits):
    mean = np.array([1.0, 2, 3, 4, 5])
    std = np.array([1.0, 0.5, 2, 1, 4])
    pred = logits.argmax(axis=1)
    sml = (logits.max(axis=1) - mean[pred]) / std[pred]
    np.testing.assert_allclose(S.standardized_max_logit(logits, mean, std), -sml[:, None], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(S.standardized_max_logit(logits, mean, std, anomaly=False), sml[:, None], rtol=1e-5)
    with pytest.raises(ShapeError, match=r"std must be \(K,\)=\(5,\)"):
        S.standardized_max_logit(logits, mean, std[:3])
    with pytest.raises(ValueRangeError, match="std must be > 0"):
        S.standardized_max_logit(logits, mean, np.zeros(5))


def test_boundary_suppression_reference(rng):
    pred = np.zeros((2, 14, 15), np.int64)
    pred[:, 4:10, 3:9] = 1
    pred[1, 9:, 10:] = 2
    x = rng.normal(size=(2, 1, 14, 15)).astype(np.float32)
    out = S.boundary_suppression(x, pred)
    assert out.shape == x.shape
    for b in range(2):
        np.testing.assert_allclose(out[b, 0], ref.boundary_suppression(x[b, 0], pred[b]), rtol=1e-5, atol=1e-5)
    # width 2, 2 iterations: radii 1, 0
    np.testing.assert_allclose(
        S.boundary_suppression(x[:, 0], pred, width=2, iterations=2)[0],
        ref.boundary_suppression(x[0, 0], pred[0], 2, 2), rtol=1e-5, atol=1e-5,
    )
    # far from boundaries nothing changes; a map with one class is untouched
    np.testing.assert_array_equal(out[0, 0, :, 14], x[0, 0, :, 14])
    np.testing.assert_array_equal(S.boundary_suppression(x, np.zeros_like(pred)), x)
    # sign symmetry: suppression of -x is -(suppression of x) (we may pass SML or -SML)
    np.testing.assert_allclose(S.boundary_suppression(-x, pred), -out, atol=1e-6)


def test_dilated_smoothing_reference(rng):
    x = rng.normal(size=(1, 1, 20, 23)).astype(np.float32)
    out = S.dilated_smoothing(x)
    assert out.shape == x.shape
    np.testing.assert_allclose(out[0, 0], ref.dilated_smoothing(x[0, 0]), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(S.dilated_smoothing(np.full((5, 6), 3.0, np.float32)), 3.0, rtol=1e-6)
    both = S.boundary_suppression(x, np.zeros((1, 20, 23), np.int64), smoothing=True)
    np.testing.assert_allclose(both, out, rtol=1e-6)


def test_sml_postprocessing_errors(rng):
    x = rng.normal(size=(1, 1, 6, 6)).astype(np.float32)
    pred = np.zeros((1, 6, 6), np.int64)
    with pytest.raises(ShapeError, match=r"predictions must be \(B,H,W\)=\(1,6,6\)"):
        S.boundary_suppression(x, pred[:, :5])
    with pytest.raises(DTypeError, match="predictions must be an integer tensor"):
        S.boundary_suppression(x, pred.astype(np.float32))
    with pytest.raises(ValueRangeError, match="width must be divisible by iterations"):
        S.boundary_suppression(x, pred, width=3, iterations=2)
    with pytest.raises(ValueRangeError, match="kernel_size must be a positive odd int"):
        S.dilated_smoothing(x, kernel_size=4)
    with pytest.raises(ShapeError, match=r"x must be \(B,1,H,W\)"):
        S.dilated_smoothing(np.zeros((1, 2, 3, 3), np.float32))
    x0 = x.copy()
    S.boundary_suppression(x, pred, smoothing=True)
    np.testing.assert_array_equal(x, x0)


@pytest.mark.gpu
def test_scores_cpu_equals_cuda(logits):
    t = torch.from_numpy(logits)
    for f in (S.msp, S.max_logit, S.entropy, S.energy):
        torch.testing.assert_close(f(t.cuda()).cpu(), f(t), rtol=1e-5, atol=1e-5)
    pred = t.argmax(1)
    x = S.max_logit(t)
    torch.testing.assert_close(S.boundary_suppression(x.cuda(), pred.cuda(), smoothing=True).cpu(),
                               S.boundary_suppression(x, pred, smoothing=True), rtol=1e-5, atol=1e-5)
