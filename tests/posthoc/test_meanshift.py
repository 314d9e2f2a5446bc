"""posthoc.meanshift: agreement with scikit-learn, image semantics, edge sizes, errors, speed (slow)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from posthoc.errors import DTypeError, NonFiniteError, ShapeError, ValueRangeError
from posthoc.meanshift import SPHERE_BANDWIDTH, MeanShiftSphere, meanshift_points, meanshift_sphere

sklearn_cluster = pytest.importorskip("sklearn.cluster")
from sklearn.metrics import adjusted_rand_score  # noqa: E402 - only once importorskip has found scikit-learn
from threadpoolctl import threadpool_limits  # noqa: E402 - scikit-learn's dependency, same reason


def _sklearn_meanshift(x, seeds):
    # one BLAS/OpenMP thread: on a busy 2-core machine sklearn's thread pools oversubscribe (10 s -> 0.1 s)
    with threadpool_limits(1):
        return sklearn_cluster.MeanShift(bandwidth=SPHERE_BANDWIDTH, seeds=seeds, n_jobs=1).fit(x)


def _blobs(n, d, k, noise, seed):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(k, d))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    lab = rng.integers(0, k, n)
    x = c[lab] + noise * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), lab


@pytest.mark.parametrize("d,k,noise", [(32, 10, 0.08), (64, 6, 0.06), (8, 4, 0.15)])
def test_agrees_with_sklearn_same_seeds(d, k, noise):
    x, truth = _blobs(600, d, k, noise, seed=d)
    seeds = x[np.random.default_rng(1).choice(len(x), 40, replace=False)]
    ours, modes = meanshift_points(x, seeds=seeds)
    ref = _sklearn_meanshift(x, seeds)
    assert isinstance(ours, np.ndarray) and ours.dtype == np.int64
    assert len(modes) == len(ref.cluster_centers_)
    assert adjusted_rand_score(ref.labels_, ours) >= 0.99
    np.testing.assert_allclose(np.sort(modes, axis=0), np.sort(ref.cluster_centers_, axis=0), atol=1e-4)
    assert adjusted_rand_score(truth, ours) >= 0.99


def _image(B=2, F=16, h=16, w=20, noise=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.nn.functional.normalize(torch.randn(3, F, generator=g), dim=1)
    q = torch.zeros(h, w, dtype=torch.long)
    q[:, w // 2 :] = 1
    q[h // 2 :, : w // 3] = 2
    f = centers[q].permute(2, 0, 1).unsqueeze(0).repeat(B, 1, 1, 1)
    return f + noise * torch.randn(f.shape, generator=g), q


def _same_partition(a, b):
    return adjusted_rand_score(np.asarray(a).ravel(), np.asarray(b).ravel()) == 1.0


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_image_segments_and_levels(levels):
    f, q = _image()
    f_in = f.clone()
    lab, modes = meanshift_sphere(f, levels=levels, n_seeds=64, return_modes=True)
    assert torch.equal(f, f_in)  # input untouched
    assert lab.shape == (2, 16, 20) and lab.dtype == torch.int64
    for b in range(2):
        assert _same_partition(lab[b], q)
        assert modes[b].shape == (3, 16)
        torch.testing.assert_close(modes[b].norm(dim=1), torch.ones(3), atol=0.02, rtol=0)


def test_batched_equals_per_image_and_scale_invariance():
    f, _ = _image(B=3, seed=2)
    f[1] = f[1].roll(5, dims=-1)
    whole = meanshift_sphere(f, n_seeds=32, seed=7)
    for b in range(3):
        single = meanshift_sphere(f[b : b + 1], n_seeds=32, seed=7)
        assert _same_partition(whole[b], single[0])
    assert torch.equal(meanshift_sphere(7.5 * f, n_seeds=32, seed=7), whole)


def test_numpy_in_numpy_out_and_class_wrapper():
    f, _ = _image(B=1)
    out = meanshift_sphere(f.numpy(), n_seeds=32)
    assert isinstance(out, np.ndarray) and out.shape == (1, 16, 20)
    ms = MeanShiftSphere(n_seeds=32)
    assert np.array_equal(ms(f).numpy(), out)
    assert "n_seeds=32" in repr(ms)


def test_few_pixels_few_samples():
    f, q = _image(B=1, h=40, w=40)
    lab = meanshift_sphere(f, n_seeds=16, n_samples=300, chunk_size=64)  # subsampled density, small chunks
    assert _same_partition(lab[0], q)


def test_edge_sizes():
    assert meanshift_sphere(torch.zeros(0, 4, 5, 6)).shape == (0, 5, 6)
    one = meanshift_sphere(torch.randn(2, 4, 1, 1))
    assert one.shape == (2, 1, 1) and torch.equal(one, torch.zeros(2, 1, 1, dtype=torch.long))
    assert meanshift_sphere(torch.randn(1, 3, 0, 4)).shape == (1, 0, 4)
    lab, modes = meanshift_points(torch.zeros(0, 3))
    assert lab.shape == (0,) and modes.shape == (0, 3)
    # all-zero features normalize to zero vectors: one cluster
    assert int(meanshift_sphere(torch.zeros(1, 3, 4, 4)).max()) == 0


def test_errors():
    with pytest.raises(ShapeError, match=r"features must be \(B,F,h,w\)"):
        meanshift_sphere(torch.zeros(3, 4, 4))
    with pytest.raises(DTypeError, match="floating-point"):
        meanshift_sphere(torch.zeros(1, 3, 4, 4, dtype=torch.long))
    bad = torch.zeros(1, 3, 4, 4)
    bad[0, 1, 2, 2] = float("nan")
    with pytest.raises(NonFiniteError, match="1 NaN"):
        meanshift_sphere(bad)
    with pytest.raises(ValueRangeError, match="bandwidth"):
        meanshift_sphere(torch.zeros(1, 3, 4, 4), bandwidth=0.0)
    with pytest.raises(ValueRangeError, match="n_seeds"):
        meanshift_sphere(torch.zeros(1, 3, 4, 4), n_seeds=0)
    with pytest.raises(ValueRangeError, match="levels"):
        MeanShiftSphere(levels=0)
    with pytest.raises(ShapeError, match=r"seeds must be \(S,F\) with F=3"):
        meanshift_points(torch.randn(10, 3), seeds=torch.randn(2, 4))
    with pytest.raises(ShapeError, match=r"points must be \(P,F\)"):
        meanshift_points(torch.randn(10))
    with pytest.raises(TypeError):
        meanshift_sphere([[1.0]])


@pytest.mark.gpu
def test_cuda_matches_cpu():
    f, _q = _image()
    cpu = meanshift_sphere(f, n_seeds=32)
    gpu = meanshift_sphere(f.cuda(), n_seeds=32)
    assert gpu.is_cuda and torch.equal(gpu.cpu(), cpu)


@pytest.mark.slow
def test_agrees_with_sklearn_at_20k():
    """DESIGN.md: on the same data and seeds it agrees with sklearn (ARI >= 0.99) at 20k points.

    The speed comparison is a benchmark, not a unit test: scripts/bench_meanshift.py.
    """
    x, _ = _blobs(20000, 32, 10, 0.08, seed=0)
    seeds = x[np.random.default_rng(0).choice(len(x), 256, replace=False)]
    ours, _ = meanshift_points(x, seeds=seeds)
    ref = _sklearn_meanshift(x, seeds)
    assert adjusted_rand_score(ref.labels_, ours) >= 0.99
