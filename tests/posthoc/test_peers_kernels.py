"""The numba Objectomaly kernels (posthoc.kernels._numba_peers) against the torch path, bit for bit."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from posthoc.errors import NonFiniteError, ValueRangeError
from posthoc.peers import maskomaly, objectomaly
from tests.reference import peers as ref

pytest.importorskip("numba")


def _blobs(rng, b, h, w, n):
    lab = np.full((b, h, w), -1, np.int64)
    for i in range(b):
        for k in range(n):
            y, x = rng.integers(0, max(1, h - 2)), rng.integers(0, max(1, w - 2))
            lab[i, y:y + rng.integers(1, max(2, h // 3)), x:x + rng.integers(1, max(2, w // 3))] = k
    return lab


# edge sizes: 1x1, below the Laplacian's 3x3, at and below the Gaussian's radius (replicate border)
@pytest.mark.parametrize("shape", [(2, 64, 96), (1, 3, 3), (2, 2, 7), (3, 4, 5), (1, 1, 1), (1, 40, 3), (2, 9, 9)])
@pytest.mark.parametrize("grid", [True, False])
def test_numba_equals_torch_bit_for_bit(shape, grid):
    rng = np.random.default_rng(sum(shape) + grid)
    b, h, w = shape
    a = rng.random((b, 1, h, w)).astype(np.float32)
    if grid:  # many exact ties: the Laplacian's == 0 and > 0 tests decide often
        a = (np.round(a * 8) / 8).astype(np.float32)
    lab = _blobs(rng, b, h, w, 6)
    for dt in (np.int64, np.int32):
        for ksize, sigma in ((7, 1.0), (3, 0.5), (1, 1.0), (5, 2.0)):
            for sharpen in (True, False):
                kw = dict(ksize=ksize, sigma=sigma, sharpen=sharpen)
                want = objectomaly(a, lab.astype(dt), backend="torch", **kw)
                got = objectomaly(a, lab.astype(dt), backend="numba", **kw)
                assert got.dtype == np.float32 and got.shape == want.shape
                np.testing.assert_array_equal(got, want, err_msg=f"{dt} {kw}")


def test_numba_matches_official_loops_and_keeps_torch_in_torch_out():
    rng = np.random.default_rng(0)
    lab = _blobs(rng, 2, 20, 28, 5)
    a = (rng.integers(0, 9, (2, 1, 20, 28)) / 8).astype(np.float32)
    got = objectomaly(torch.from_numpy(a), torch.from_numpy(lab), backend="numba")
    assert isinstance(got, torch.Tensor) and got.shape == (2, 1, 20, 28)
    for i in range(2):
        masks = [lab[i] == k for k in range(lab[i].max() + 1)]
        np.testing.assert_allclose(got[i, 0].numpy(), ref.objectomaly(a[i, 0], masks), atol=1e-5)
    # overlapping masks: painted by torch, sharpened and blurred by numba
    m = np.zeros((1, 2, 20, 28), bool)
    m[0, 0, 2:12, 2:12] = True
    m[0, 1, 4:8, 4:8] = True
    np.testing.assert_array_equal(objectomaly(a[:1], None, masks=m, backend="numba"),
                                  objectomaly(a[:1], None, masks=m, backend="torch"))


def test_numba_errors_are_the_torch_ones():
    a = np.zeros((1, 1, 300, 300), np.float32)  # above kernels.SMALL: "auto" takes numba
    lab = np.zeros((1, 300, 300), np.int64)
    lab[0, 5, 7] = -3
    for be in ("auto", "numba", "torch"):
        with pytest.raises(ValueRangeError, match="must be >= -1 .*got min -3"):
            objectomaly(a, lab, backend=be)
        with pytest.raises(NonFiniteError):
            objectomaly(a * np.nan, np.zeros((1, 300, 300), np.int64), backend=be)
    with pytest.raises(ValueRangeError, match="backend"):
        objectomaly(a, np.zeros((1, 300, 300), np.int64), backend="fast")


def test_numba_all_unassigned_and_uint8_labels():
    rng = np.random.default_rng(3)
    a = rng.random((2, 1, 33, 17)).astype(np.float32)
    for lab in (np.full((2, 33, 17), -1), rng.integers(0, 4, (2, 33, 17)).astype(np.uint8)):
        np.testing.assert_array_equal(objectomaly(a, lab, backend="numba"), objectomaly(a, lab, backend="torch"))


@pytest.mark.parametrize("shape", [(2, 7, 10, 12, 4), (1, 0, 5, 5, 2), (3, 33, 17, 9, 1), (2, 5, 1, 1, 3)])
def test_maskomaly_numba_equals_torch_bit_for_bit(shape):
    b, n, h, w, k = shape
    rng = np.random.default_rng(sum(shape))
    for trial in range(6):
        m = (rng.random((b, n, h, w)) ** (1 + 2 * (trial % 3 == 0))).astype(np.float32)
        if trial % 2:  # exact ties with the thresholds
            m = (np.round(m * 10) / 10).astype(np.float32)
        lg = rng.normal(0, 3, (b, n, k + 1))
        c = (np.exp(lg) / np.exp(lg).sum(-1, keepdims=True)).astype(np.float32)
        aq = [int(q) for q in rng.choice(n, min(n, 2), replace=False)] if n else []
        gq = [int(q) for q in rng.choice(n, min(n, 1), replace=False)] if n else []
        for kw in ({}, dict(anomaly_queries=aq, ground_queries=gq, weight=0.37, border_threshold=0.3,
                            reject_threshold=0.2)):
            for size in (None, (3 * h + 1, 2 * w)):
                want = maskomaly(m, c, size=size, backend="torch", **kw)
                got = maskomaly(m, c, size=size, backend="numba", **kw)
                np.testing.assert_array_equal(got, want, err_msg=f"{kw} {size}")
    got = maskomaly(torch.from_numpy(m), torch.from_numpy(c), backend="numba")
    assert isinstance(got, torch.Tensor) and got.shape == (b, 1, h, w)
    if n:
        np.testing.assert_allclose(got[0, 0].numpy(), ref.maskomaly(m[0], c[0]), atol=1e-6)


def test_scratch_buffers_are_bounded():
    from posthoc.kernels import _numba_peers as K

    a = np.random.default_rng(5).random((1, 1, 1500, 1500)).astype(np.float32)  # 9 MB planes: not kept
    lab = np.zeros((1, 1500, 1500), np.int32)
    lab[:, 700:] = 1
    out = objectomaly(a, lab, backend="numba")
    assert out.shape == a.shape
    assert all(v.nbytes <= K.KEEP_MAX_BYTES for v in K._SCRATCH.values())
    small = objectomaly(a[..., :300, :300], lab[:, :300, :300], backend="numba")  # kept and reused
    np.testing.assert_array_equal(small, objectomaly(a[..., :300, :300], lab[:, :300, :300], backend="torch"))
    assert K._SCRATCH and all(v.shape == (1, 300, 300) for v in K._SCRATCH.values())
