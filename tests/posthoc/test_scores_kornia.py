"""SML's morphology and Gaussian equal the kornia calls of the official SML code.

The official ``BoundarySuppressionWithSmoothing`` (shjung13/Standardized-max-logits) calls
``kornia.morphology.dilation`` with the 3x3 cross, ``kornia.morphology.erosion`` with the
3x3 square, and convolves a normalized 2-D Gaussian with dilation. posthoc keeps faster
slice-based versions (no unfold/pooling); kornia is a dev dependency used only here.
"""
import pytest
import torch
import torch.nn.functional as F

from posthoc import scores

kornia = pytest.importorskip("kornia")

CROSS = torch.tensor([[0, 1, 0], [1, 1, 1], [0, 1, 0]], dtype=torch.float32)
SQUARE = torch.ones(3, 3)


@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 1, 5, 7), (1, 1, 33, 17)])
def test_morphology_equals_kornia(shape):
    g = torch.Generator().manual_seed(0)
    lab = torch.randint(0, 5, shape, generator=g).float()
    want_d = kornia.morphology.dilation(lab, CROSS)
    want_e = kornia.morphology.erosion(lab, SQUARE)
    assert torch.equal(scores._dilate_cross(lab), want_d)
    assert torch.equal(scores._erode_square(lab), want_e)


def test_dilated_gaussian_equals_kornia_kernel():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(2, 1, 40, 50, generator=g)
    k2 = kornia.filters.get_gaussian_kernel2d((7, 7), (1.0, 1.0)).reshape(1, 1, 7, 7)
    want = F.conv2d(F.pad(x, (18, 18, 18, 18), mode="replicate"), k2, dilation=6)
    got = scores._dilated_smoothing_4d(x, 7, 1.0, 6)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
