"""The ``meanshift`` proposal source with the paper's definitions (issue 18): projective features by
default, and ``scales=`` running the user's embedding model at several resolutions, merged by
posthoc.meanshift_multires (Dille et al. §4.1)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import posthoc
from posthoc.adapters import get_proposals
from posthoc.errors import ShapeError, ValueRangeError


def _same_partition(a, b) -> bool:
    a, b = np.asarray(a).ravel(), np.asarray(b).ravel()
    pairs = set(zip(a.tolist(), b.tolist(), strict=True))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


def _scene(H=32, W=48):
    """(1,H,W,3) uint8: red left part, green right part, a blue square inside the green; its (H,W) truth."""
    q = np.zeros((H, W), np.int64)
    q[:, 20:] = 1
    q[6:14, 30:38] = 2
    img = (np.eye(3)[q] * 255).astype(np.uint8)[None]
    return img, q


class SignFlipEmbedder:
    """A stand-in embedding network: per-pixel RGB as the feature, with a random sign per pixel (Eq. 1: the
    paper's features are lines, so a network may emit f or -f), and it records the sizes it was run at."""

    def __init__(self):
        self.sizes = []
        self.g = torch.Generator().manual_seed(0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        self.sizes.append(tuple(x.shape[-2:]))
        s = torch.where(torch.rand(x.shape[0], 1, *x.shape[-2:], generator=self.g) < 0.5, -1.0, 1.0)
        return (x - 0.1 * x.mean(1, keepdim=True)) * s


def test_scales_run_the_embedder_at_each_resolution_and_merge():
    img, q = _scene()
    emb = SignFlipEmbedder()
    p = get_proposals("meanshift", embedder=emb, scales=(1.0, 0.5), n_seeds=64, split=False)(img)
    assert emb.sizes == [(16, 24), (32, 48)]  # coarse to fine, whatever order scales= was given in
    assert p.meta["scales"] == (0.5, 1.0) and p.meta["resolutions"] == 2 and p.meta["projective"] is True
    assert p.meta["merge"] == {"iou_threshold": 0.8, "contain_threshold": 0.9, "min_size": 0, "connectivity": None}
    lab = np.asarray(p.labels)
    assert lab.shape == (1, 32, 48) and _same_partition(lab[0], q)


def test_projective_by_default_and_directions_on_request():
    img, q = _scene()
    p = get_proposals("meanshift", embedder=SignFlipEmbedder(), n_seeds=64, split=False)(img)
    assert _same_partition(np.asarray(p.labels)[0], q)  # f and -f are one segment: 3 regions
    p = get_proposals("meanshift", embedder=SignFlipEmbedder(), n_seeds=1536, split=False, projective=False)(img)
    assert int(p.labels.max()) + 1 == 6  # as directions every entity comes out twice


def test_feature_list_is_multires_and_matches_the_function():
    img, _ = _scene()
    x = torch.from_numpy(img).permute(0, 3, 1, 2).float() / 255
    emb = SignFlipEmbedder()
    fs = [emb(torch.nn.functional.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True)), emb(x)]
    p = get_proposals("meanshift", n_seeds=64, split=False, iou_threshold=0.7)(img, features=fs)
    ref = posthoc.meanshift_multires(fs, n_seeds=64, iou_threshold=0.7)
    assert torch.equal(p.labels, ref)
    # split=True splits the merged clusters into 8-connected components
    p = get_proposals("meanshift", n_seeds=64)(img, features=tuple(fs))
    assert p.meta["merge"]["connectivity"] == 8
    merged = posthoc.meanshift_multires(fs, n_seeds=64, connectivity=8)
    assert torch.equal(p.labels, posthoc.split_components(merged, connectivity=8))


def test_scales_errors():
    img, _ = _scene()
    for bad in ((), (0.5, 0.5), (0.0, 1.0), "1.0", (float("nan"),), 1.0):
        with pytest.raises(ValueRangeError, match="scales must be a non-empty sequence"):
            get_proposals("meanshift", scales=bad)
    with pytest.raises(ValueRangeError, match="two multi-resolution methods"):
        get_proposals("meanshift", scales=(0.5, 1.0), levels=2)
    with pytest.raises(ValueRangeError, match="iou_threshold"):
        get_proposals("meanshift", iou_threshold=0.3)
    feats = torch.randn(1, 3, 32, 48)
    with pytest.raises(ValueRangeError, match="needs embedder= and no features="):
        get_proposals("meanshift", scales=(0.5, 1.0))(img, features=feats)
    with pytest.raises(ValueRangeError, match="needs embedder= and no features="):
        get_proposals("meanshift", scales=(0.5, 1.0), embedder=SignFlipEmbedder())(img, features=feats)
    with pytest.raises(ShapeError, match=r"resolution 1 of 2"):
        get_proposals("meanshift")(img, features=[feats, torch.randn(2, 3, 32, 48)])
    with pytest.raises(ShapeError, match="coarse to fine"):
        get_proposals("meanshift")(img, features=[feats, feats[..., ::2, ::2]])
    with pytest.raises(ValueRangeError, match="below 90 degrees"):
        get_proposals("meanshift", angle_deg=120.0)
