"""SuperpixelProposals' implementations: skimage (reference) and OpenCV-contrib's ximgproc."""
import numpy as np
import pytest
import torch

from posthoc import MissingExtraError, ValueRangeError
from posthoc.adapters.proposals import SuperpixelProposals

try:
    import cv2

    HAS_XIMGPROC = hasattr(cv2, "ximgproc")
except ImportError:  # pragma: no cover
    HAS_XIMGPROC = False


def _image(h=64, w=96):
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([np.sin(xx / 9 + c) * np.cos(yy / 7 - c) * 0.5 + 0.5 for c in range(3)])
    return torch.from_numpy(img[None].astype(np.float32))


@pytest.mark.parametrize("kw, msg", [
    (dict(impl="opencv"), "impl must be"),
    (dict(method="seeds"), "only in OpenCV-contrib"),
    (dict(method="lsc", impl="skimage"), "only in OpenCV-contrib"),
    (dict(method="felzenszwalb", impl="ximgproc"), "only in scikit-image"),
    (dict(method="watershed"), "method must be"),
])
def test_bad_settings(kw, msg):
    with pytest.raises(ValueRangeError, match=msg):
        SuperpixelProposals(**kw)


@pytest.mark.skipif(HAS_XIMGPROC, reason="cv2.ximgproc is installed")
def test_ximgproc_missing_names_the_package():
    with pytest.raises(MissingExtraError, match="opencv-contrib-python-headless"):
        SuperpixelProposals(impl="ximgproc")


@pytest.mark.skipif(not HAS_XIMGPROC, reason="needs opencv-contrib-python-headless (cv2.ximgproc)")
@pytest.mark.parametrize("method", ["slic", "seeds", "lsc"])
def test_ximgproc_labels_cover_the_image(method):
    x = _image()
    p = SuperpixelProposals(method, impl="ximgproc", n_segments=30)(x)
    lab = p.labels.numpy()
    assert lab.shape == (1, 64, 96) and lab.dtype == np.int64
    assert lab.min() == 0 and np.array_equal(np.unique(lab), np.arange(lab.max() + 1))  # 0..M-1, no -1
    assert 3 <= lab.max() + 1 <= 200
    assert p.meta["impl"] == "ximgproc"


def test_skimage_default_unchanged():
    p = SuperpixelProposals(n_segments=30)(_image())
    assert p.meta["impl"] == "skimage" and p.labels.min() == 0
