"""posthoc.meanshift: the projective sphere and 45 degree neighbourhood (issue 18), agreement with
scikit-learn (projective=False), with the loop reference and with the pre-issue-18 code, image
semantics, edge sizes, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from posthoc.errors import DTypeError, NonFiniteError, ShapeError, ValueRangeError
from posthoc.meanshift import (
    SPHERE_BANDWIDTH,
    MeanShiftSphere,
    angle_to_chord,
    chord_to_angle,
    meanshift_points,
    meanshift_sphere,
)
from tests.reference import meanshift as ref_ms
from tests.reference import meanshift_today

sklearn_cluster = pytest.importorskip("sklearn.cluster")
from sklearn.metrics import adjusted_rand_score  # noqa: E402 - only once importorskip has found scikit-learn
from threadpoolctl import threadpool_limits  # noqa: E402 - scikit-learn's dependency, same reason


def _sklearn_meanshift(x, seeds, bandwidth=SPHERE_BANDWIDTH):
    # one BLAS/OpenMP thread: on a busy 2-core machine sklearn's thread pools oversubscribe (10 s -> 0.1 s)
    with threadpool_limits(1):
        return sklearn_cluster.MeanShift(bandwidth=bandwidth, seeds=seeds, n_jobs=1).fit(x)


def _blobs(n, d, k, noise, seed):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(k, d))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    lab = rng.integers(0, k, n)
    x = c[lab] + noise * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), lab


@pytest.mark.parametrize("d,k,noise", [(32, 10, 0.08), (64, 6, 0.06), (8, 4, 0.15)])
@pytest.mark.parametrize("hood", ["bandwidth", "angle"])
def test_agrees_with_sklearn_same_seeds(d, k, noise, hood):
    # projective=False is scikit-learn's MeanShift; the neighbourhood given as the chord alias or as 45 degrees
    x, truth = _blobs(600, d, k, noise, seed=d)
    seeds = x[np.random.default_rng(1).choice(len(x), 40, replace=False)]
    if hood == "bandwidth":
        ours, modes = meanshift_points(x, SPHERE_BANDWIDTH, seeds=seeds, projective=False)
        ref = _sklearn_meanshift(x, seeds)
    else:
        ours, modes = meanshift_points(x, angle_deg=45.0, seeds=seeds, projective=False)
        ref = _sklearn_meanshift(x, seeds, bandwidth=angle_to_chord(45.0))
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


def _random_signs(shape, seed):
    g = torch.Generator().manual_seed(seed)
    B, _F, h, w = shape
    return torch.where(torch.rand(B, 1, h, w, generator=g) < 0.5, -1.0, 1.0)


def _same_partition(a, b):
    return adjusted_rand_score(np.asarray(a).ravel(), np.asarray(b).ravel()) == 1.0


@pytest.mark.parametrize("levels", [1, 2, 3])
@pytest.mark.parametrize("projective,signs", [(True, False), (True, True), (False, False)])
def test_image_segments_and_levels(levels, projective, signs):
    f, q = _image()
    if signs:  # lines: a random sign per pixel changes nothing (the pooled pyramid aligns signs too)
        f = f * _random_signs(f.shape, seed=levels)
    f_in = f.clone()
    # directions keep the pre-issue-18 chord (at 45 degrees, pooled boundary mixtures of two centres 70 degrees
    # apart sit within the neighbourhood of both at levels=3 and chain them, a known limit of the pooled pyramid)
    bw = None if projective else SPHERE_BANDWIDTH
    lab, modes = meanshift_sphere(f, bw, levels=levels, n_seeds=64, projective=projective, return_modes=True)
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
    with pytest.raises(ValueRangeError, match="angle_deg must be a number of degrees"):
        meanshift_sphere(torch.zeros(1, 3, 4, 4), angle_deg=0.0)
    with pytest.raises(ValueRangeError, match="below 90 degrees"):
        meanshift_sphere(torch.zeros(1, 3, 4, 4), angle_deg=90.0)
    with pytest.raises(ValueRangeError, match=r"below 90 degrees.*bandwidth=1.5"):
        MeanShiftSphere(bandwidth=1.5)  # a chord of 1.5 is 97 degrees: fine for directions, not for lines
    MeanShiftSphere(bandwidth=1.5, projective=False)
    with pytest.raises(ValueRangeError, match="not both"):
        meanshift_sphere(torch.zeros(1, 3, 4, 4), 0.5, angle_deg=30.0)
    with pytest.raises(ValueRangeError, match="projective must be True or False"):
        meanshift_points(torch.randn(10, 3), projective="yes")
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
    """docs/architecture.md: on the same data and seeds it agrees with sklearn (ARI >= 0.99) at 20k points.

    The speed comparison is a benchmark, not a unit test: scripts/bench_meanshift.py.
    """
    x, _ = _blobs(20000, 32, 10, 0.08, seed=0)
    seeds = x[np.random.default_rng(0).choice(len(x), 256, replace=False)]
    ours, _ = meanshift_points(x, SPHERE_BANDWIDTH, seeds=seeds, projective=False)
    ref = _sklearn_meanshift(x, seeds)
    assert adjusted_rand_score(ref.labels_, ours) >= 0.99


# ----------------------------------------------------------------------------- issue 18: the paper's definitions


def _two_entities(seed=0, B=1, F=8, h=12, w=16, noise=0.02):
    """Two orthogonal entities (left/right half) whose per-pixel features have random signs (Eq. 1: f == -f)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.zeros(h, w, dtype=torch.long)
    q[:, w // 2 :] = 1
    e = torch.eye(F)[:2]
    f = e[q].permute(2, 0, 1).unsqueeze(0).repeat(B, 1, 1, 1)
    f = f + noise * torch.randn(f.shape, generator=g)
    return f * _random_signs(f.shape, seed + 1), q


def test_antipodal_features_of_two_orthogonal_entities_give_two_clusters():
    f, q = _two_entities()
    lab = meanshift_sphere(f, n_seeds=64)
    assert int(lab.max()) + 1 == 2 and _same_partition(lab[0], q)
    # as plain directions (and in the code before issue 18) the signs make 4 clusters
    assert int(meanshift_sphere(f, n_seeds=64, projective=False).max()) + 1 == 4
    assert int(meanshift_today.meanshift_sphere(f, n_seeds=64).max()) + 1 == 4


def _two_groups(angle_deg, n=200, F=6, spread=0.002, seed=0, signs=False):
    """Two tight groups of unit vectors whose centres are ``angle_deg`` apart (spread ~0.1 degree)."""
    g = torch.Generator().manual_seed(seed)
    a = math.radians(angle_deg)
    c = torch.zeros(2, F)
    c[0, 0] = 1.0
    c[1, 0], c[1, 1] = math.cos(a), math.sin(a)
    lab = torch.arange(2 * n) % 2
    x = c[lab] + spread * torch.randn(2 * n, F, generator=g)
    if signs:
        x = x * torch.where(torch.rand(2 * n, 1, generator=g) < 0.5, -1.0, 1.0)
    return x, lab


@pytest.mark.parametrize("projective,signs", [(True, False), (True, True), (False, False)])
def test_neighbourhood_is_45_degrees(projective, signs):
    x43, _ = _two_groups(43.0, signs=signs)
    x48, t48 = _two_groups(48.0, signs=signs)
    lab43, modes43 = meanshift_points(x43, projective=projective, n_seeds=32)
    lab48, _ = meanshift_points(x48, projective=projective, n_seeds=32)
    assert len(modes43) == 1 and int(lab43.max()) == 0
    assert adjusted_rand_score(t48.numpy(), lab48.numpy()) == 1.0 and int(lab48.max()) == 1
    # the pre-issue-18 reading (sqrt(2)/2 as a chord, 41.4 degrees) splits the 43 degree groups
    _, old = meanshift_points(x43, SPHERE_BANDWIDTH, projective=projective, n_seeds=32)
    assert len(old) == 2
    _, today = meanshift_today.meanshift_points(x43, n_seeds=32)
    assert len(today) == (4 if signs else 2)


def test_chord_angle_conversion():
    assert chord_to_angle(SPHERE_BANDWIDTH) == pytest.approx(41.4096, abs=1e-4)
    assert angle_to_chord(45.0) == pytest.approx(0.765367, abs=1e-6)
    for a in (1.0, 30.0, 45.0, 89.0, 170.0):
        assert chord_to_angle(angle_to_chord(a)) == pytest.approx(a)
        # the chord alias is the same neighbourhood as the angle: cos(angle) = 1 - chord^2 / 2
        assert 1 - angle_to_chord(a) ** 2 / 2 == pytest.approx(math.cos(math.radians(a)))


@pytest.mark.parametrize("levels", [1, 2])
def test_projective_false_with_the_old_bandwidth_is_the_old_code(levels):
    f, _ = _image(B=2, seed=3)
    new, new_modes = meanshift_sphere(f, SPHERE_BANDWIDTH, projective=False, n_seeds=48, levels=levels,
                                      return_modes=True)
    old, old_modes = meanshift_today.meanshift_sphere(f, n_seeds=48, levels=levels, return_modes=True)
    assert torch.equal(new, old)
    for a, b in zip(new_modes, old_modes, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("d,k,noise", [(16, 6, 0.08), (8, 4, 0.12)])
def test_projective_agrees_with_loop_reference(d, k, noise):
    x, truth = _blobs(500, d, k, noise, seed=d)
    x = x * np.where(np.random.default_rng(2).random((len(x), 1)) < 0.5, -1.0, 1.0).astype(np.float32)
    seeds = x[np.random.default_rng(1).choice(len(x), 30, replace=False)]
    ours, modes = meanshift_points(x, seeds=seeds)
    ref_lab, ref_modes = ref_ms.meanshift_lines(x, seeds)
    assert len(modes) == len(ref_modes) >= 3  # (two of the random 8-d centres are closer than 45 degrees as lines)
    assert adjusted_rand_score(ref_lab, ours) >= 0.99
    if d == 16:
        assert adjusted_rand_score(truth, ours) >= 0.99
    np.testing.assert_allclose(modes, ref_modes, atol=1e-4)  # same rank order, same canonical sign
    np.testing.assert_allclose(np.linalg.norm(modes, axis=1), 1.0, atol=1e-5)


def test_projective_angles_near_90_and_zero_pixels():
    # a wide neighbourhood (cos <= 0.51) takes the clamped branch of the signed kernel
    x, _ = _two_groups(80.0, signs=True)
    lab, modes = meanshift_points(x, angle_deg=85.0, n_seeds=16)
    assert len(modes) == 1
    lab, modes = meanshift_points(x, angle_deg=70.0, n_seeds=16)
    assert len(modes) == 2
    # zero vectors have no direction: they are never seeds, and go to mode 0
    f, q = _two_entities()
    f[..., :2] = 0.0
    lab = meanshift_sphere(f, n_seeds=300)
    assert _same_partition(lab[0, :, 2:], q[:, 2:]) and int(lab.max()) == 1


@pytest.mark.parametrize("levels", [1, 2, 4])
def test_lines_ignore_per_pixel_signs_exactly(levels):
    # Eq. 1 (f == -f): flipping any pixel's sign gives bit-identical labels and modes (the kernel, the
    # sign-aligned mean, the pooled pyramid and the |cos| assignment are all odd/even in f); odd sizes pad
    f, _ = _image(B=2, h=15, w=21, seed=4)
    flipped = f * _random_signs(f.shape, seed=5)
    a, ma = meanshift_sphere(f, levels=levels, n_seeds=32, return_modes=True)
    b, mb = meanshift_sphere(flipped, levels=levels, n_seeds=32, return_modes=True)
    assert torch.equal(a, b) and int(a.max()) == 2
    for x, y in zip(ma, mb, strict=True):
        assert torch.equal(x, y)
