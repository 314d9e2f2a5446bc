"""SuperpixelProposals' implementations: OpenCV-contrib's ximgproc (the default) and skimage (the reference)."""
import math

import numpy as np
import pytest
import torch

from posthoc import MissingExtraError, ShapeError, ValueRangeError
from posthoc.adapters import get_proposals
from posthoc.adapters import proposals_superpixels as sp_mod
from posthoc.adapters.proposals import SuperpixelProposals
from posthoc.bench import fingerprint

needs_ximgproc = pytest.mark.skipif(not sp_mod.ximgproc_available(),
                                    reason="needs opencv-contrib-python-headless (cv2.ximgproc)")


def _image(h=64, w=96, b=1, seed=0):
    """(b,3,h,w) float [0,1]: smooth colour waves plus a little noise (natural-ish texture)."""
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    img = np.stack([np.sin(xx / 9 + c) * np.cos(yy / 7 - c) * 0.5 + 0.5 for c in range(3)])
    imgs = np.clip(img[None] + 0.02 * rng.standard_normal((b, 3, h, w)), 0, 1)
    return torch.from_numpy(imgs.astype(np.float32))


def _check_labels(lab: np.ndarray, shape):
    assert lab.shape == shape and lab.dtype == np.int64
    for b in range(shape[0]):  # every pixel assigned, ids 0..M-1 contiguous per image (as skimage's)
        u = np.unique(lab[b])
        assert u[0] == 0 and np.array_equal(u, np.arange(len(u)))


@pytest.mark.parametrize("kw, msg", [
    (dict(impl="opencv"), "impl must be"),
    (dict(method="seeds", impl="skimage"), "only in OpenCV-contrib"),
    (dict(method="lsc", impl="skimage"), "only in OpenCV-contrib"),
    (dict(method="felzenszwalb", impl="ximgproc"), "only in scikit-image"),
    (dict(method="watershed"), "method must be"),
    (dict(n_segments=0), "n_segments must be an integer >= 1"),
    (dict(n_segments=2.5), "n_segments must be an integer >= 1"),
    (dict(n_segments=True), "n_segments must be an integer >= 1"),
    (dict(compactness=float("nan")), "compactness must be a finite number > 0"),
    (dict(compactness=0), "compactness must be a finite number > 0"),
    (dict(scale=-1.0), "scale must be a finite number > 0"),
    (dict(sigma=-0.5), "sigma must be None or a finite number >= 0"),
    (dict(sigma=float("inf")), "sigma must be None or a finite number >= 0"),
    (dict(max_side=4), "max_side must be None or an integer >= 8"),
    (dict(min_size=-1), "min_size must be an integer >= 0"),
])
def test_bad_settings(kw, msg):
    with pytest.raises(ValueRangeError, match=msg):
        SuperpixelProposals(**kw)


def test_missing_ximgproc_is_an_error_naming_the_package_never_a_silent_switch(monkeypatch):
    import cv2

    monkeypatch.delattr(cv2, "ximgproc", raising=False)
    assert not sp_mod.ximgproc_available()
    for kw in ({}, {"impl": "auto"}, {"impl": "ximgproc"}, {"method": "seeds"}):
        with pytest.raises(MissingExtraError, match="pip install opencv-contrib-python-headless") as e:
            SuperpixelProposals(**kw)
        assert "impl='skimage'" in str(e.value) and "--superpixels-impl skimage" in str(e.value)
    # asking for skimage, or a method only skimage has, still works
    assert SuperpixelProposals(impl="skimage").impl == "skimage"
    assert SuperpixelProposals(method="felzenszwalb").impl == "skimage"


def test_auto_resolves_per_method():
    assert SuperpixelProposals(method="felzenszwalb").impl == "skimage"
    assert SuperpixelProposals(impl="skimage").impl == "skimage"
    if sp_mod.ximgproc_available():
        for m in ("slic", "seeds", "lsc"):
            src = SuperpixelProposals(method=m)
            assert src.impl == "ximgproc" and src.impl_requested == "auto"


@needs_ximgproc
@pytest.mark.parametrize("method", ["slic", "seeds", "lsc"])
def test_ximgproc_labels_valid_batched_and_deterministic(method):
    x = _image(b=3)
    src = get_proposals("superpixels", method=method, n_segments=30)
    p = src(x)
    lab = p.labels.numpy()
    _check_labels(lab, (3, 64, 96))
    assert 3 <= lab[0].max() + 1 <= 200
    assert p.meta["impl"] == "ximgproc" and p.meta["method"] == method and p.labels_final
    assert p.region_scores is None and p.validity is None
    # batched equals per image; a second call and a fresh instance give the same labels
    for b in range(3):
        assert torch.equal(src(x[b:b + 1]).labels[0], p.labels[b])
    assert torch.equal(src(x).labels, p.labels)
    assert torch.equal(get_proposals("superpixels", method=method, n_segments=30)(x).labels, p.labels)
    # uint8 (B,H,W,3) input gives the same as float (B,3,H,W)
    u8 = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert torch.equal(src(u8).labels, p.labels)
    # B=0
    empty = src(np.zeros((0, 16, 24, 3), np.uint8)).labels
    assert tuple(empty.shape) == (0, 16, 24) and empty.dtype == torch.int64


@needs_ximgproc
def test_ximgproc_slic_parameters_are_honoured():
    x = _image(96, 160)

    def count(**kw):
        return int(get_proposals("superpixels", **kw)(x).labels.max()) + 1

    n50, n400 = count(n_segments=50), count(n_segments=400)
    assert n400 > 2 * n50
    assert 0.5 * 50 <= n50 <= 2 * 50 and 0.5 * 400 <= n400 <= 2 * 400  # close to what was asked for
    base = get_proposals("superpixels", n_segments=100)(x).labels
    for kw in ({"compactness": 40.0}, {"sigma": 0.0}, {"max_side": 40}):
        assert not torch.equal(get_proposals("superpixels", n_segments=100, **kw)(x).labels, base), kw

    def boundary(lab):  # total label-change length: compact superpixels have shorter boundaries
        lab = lab[0].numpy()
        return int((lab[1:] != lab[:-1]).sum() + (lab[:, 1:] != lab[:, :-1]).sum())

    loose = get_proposals("superpixels", n_segments=100, compactness=1.0)(x).labels
    tight = get_proposals("superpixels", n_segments=100, compactness=100.0)(x).labels
    assert boundary(tight) < boundary(loose)
    # max_side: segmented at most 40 px wide, then upsampled with nearest (4x4 blocks of one id)
    small = get_proposals("superpixels", n_segments=20, max_side=40)(x).labels[0].numpy()
    assert small.shape == (96, 160) and (small[::4, ::4].repeat(4, 0).repeat(4, 1) == small).all()


def test_skimage_reference_path_unchanged():
    """The skimage path gives exactly what scikit-image's slic gives (the reference stays as it was)."""
    from skimage import segmentation

    x = _image()
    p = get_proposals("superpixels", impl="skimage", n_segments=30)(x)
    img = (x[0] * 255).round().to(torch.uint8).permute(1, 2, 0).numpy().astype(np.float32) / 255.0
    ref = segmentation.slic(img, n_segments=30, compactness=10.0, sigma=1.0, start_label=0, channel_axis=-1)
    _, ref = np.unique(ref, return_inverse=True)
    assert np.array_equal(p.labels[0].numpy(), ref.reshape(64, 96))
    assert p.meta["impl"] == "skimage" and "iterations" not in p.meta


@needs_ximgproc
@pytest.mark.parametrize("method", ["slic", "lsc"])
@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (7, 1), (5, 200), (64, 3)])
def test_ximgproc_tiny_and_thin_images(method, hw):
    """OpenCV crashes on a grid step larger than the image: the step is clamped."""
    img = (np.random.default_rng(1).random((1, *hw, 3)) * 255).astype(np.uint8)
    for n in (1, 200):
        _check_labels(get_proposals("superpixels", method=method, n_segments=n)(img).labels.numpy(), (1, *hw))


@needs_ximgproc
def test_seeds_needs_eight_pixels_and_clamps_its_count():
    src = get_proposals("superpixels", method="seeds", n_segments=200)
    with pytest.raises(ShapeError, match="method='seeds' needs both sides"):
        src(np.zeros((1, 7, 64, 3), np.uint8))
    img = (np.random.default_rng(2).random((1, 8, 300, 3)) * 255).astype(np.uint8)
    for n in (1, 10000):  # OpenCV's SEEDS crashes at these counts unclamped
        _check_labels(get_proposals("superpixels", method="seeds", n_segments=n)(img).labels.numpy(), (1, 8, 300))
    assert src._seeds_count(64, 300) == 200  # inside the safe range: as asked
    assert src._seeds_count(8, 300) == math.ceil(9 * 8 * 300 / 64)  # blocks at most a third of the short side
    assert get_proposals("superpixels", method="seeds", n_segments=10000)._seeds_count(8, 300) == 8 * 300 // 4


@needs_ximgproc
def test_impl_is_in_the_cache_fingerprint():
    sk = SuperpixelProposals(impl="skimage")
    xi = SuperpixelProposals(impl="ximgproc")
    auto = SuperpixelProposals()
    f = {k: fingerprint.proposal_fingerprint("superpixels", s) for k, s in (("sk", sk), ("xi", xi), ("auto", auto))}
    assert f["sk"] != f["xi"] and f["auto"] == f["xi"]  # auto is keyed by what it resolved to
    assert f["sk"]["settings"]["impl"] == "skimage" and f["xi"]["settings"]["impl"] == "ximgproc"
    assert fingerprint.proposal_fingerprint("superpixels", SuperpixelProposals(n_segments=100)) != f["auto"]
    assert fingerprint.proposal_fingerprint("x", object()) == {}  # sources without settings: weights only


@pytest.mark.parametrize("impl", ["skimage", "ximgproc"])
def test_downscaled_labels_equal_relabelling_after_upsampling(impl):
    """Labels are made contiguous before the nearest upsampling; that equals relabelling after it
    (np.unique at full resolution, the earlier code), also at odd scale factors."""
    import cv2

    if impl == "ximgproc" and not sp_mod.ximgproc_available():
        pytest.skip("needs cv2.ximgproc")
    x = _image(97, 203, seed=3)
    u8 = (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    src = get_proposals("superpixels", impl=impl, n_segments=40, max_side=64)
    got = src(u8).labels[0].numpy()
    small = cv2.resize(u8[0], (64, round(97 * 64 / 203)), interpolation=cv2.INTER_AREA)
    lab = (src._segment_ximgproc(small.astype(np.float32) / 255.0, small) if impl == "ximgproc"
           else src._segment_skimage(small.astype(np.float32) / 255.0))
    big = cv2.resize(lab.astype(np.int32), (203, 97), interpolation=cv2.INTER_NEAREST)
    _, ref = np.unique(big, return_inverse=True)
    assert np.array_equal(got, ref.reshape(97, 203))
    assert np.array_equal(src.segment(u8[0]), got)
