"""posthoc.viz.overlay: panels, colour bars, void, proposal boundaries, errors."""
from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from posthoc.errors import DTypeError, MissingExtraError, ShapeError, ValueRangeError
from posthoc.viz import label_boundaries, overlay

pytest.importorskip("matplotlib")


def _data(h=12, w=16):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    props = np.zeros((h, w), np.int64)
    props[:, w // 2:] = 1
    props[0, 0] = -1
    gt = np.zeros((h, w), np.uint8)
    gt[2:5, 2:6] = 1
    gt[-2:] = 255
    return img, props, gt


def _ref_boundaries(lab):
    h, w = lab.shape
    out = np.zeros((h, w), bool)
    for y in range(h):
        for x in range(w):
            if x + 1 < w and lab[y, x + 1] != lab[y, x]:
                out[y, x] = True
            if y + 1 < h and lab[y + 1, x] != lab[y, x]:
                out[y, x] = True
    return out


def test_label_boundaries_matches_reference():
    lab = np.random.default_rng(1).integers(-1, 4, (9, 11))
    np.testing.assert_array_equal(label_boundaries(lab), _ref_boundaries(lab))
    assert not label_boundaries(np.zeros((5, 5), int)).any()


def test_overlay_panels_colour_bars_void_and_proposals(tmp_path):
    from matplotlib.figure import Figure

    img, props, gt = _data()
    maps = {"teacher": np.random.default_rng(2).random(props.shape), "classes": (props.clip(0) * 2).astype(np.int32)}
    fig = overlay(img, maps, proposals=props, gt=gt, title="t")
    assert isinstance(fig, Figure)
    titled = [ax for ax in fig.axes if ax.get_title()]
    assert [ax.get_title() for ax in titled][1:] == ["teacher", "classes"]
    first = titled[0].get_title()
    assert "2 proposals" in first and "GT outlined" in first and "void grey" in first
    # one colour bar per map, labelled by what it shows
    labels = sorted(ax.get_ylabel() for ax in fig.axes if ax.get_ylabel())
    assert labels == ["class id", "score"]
    # the proposal boundary layer is drawn on the image panel: yellow exactly at the boundaries
    layers = [im.get_array() for im in titled[0].get_images()]
    edge = next(a for a in layers if a.ndim == 3 and a.shape[2] == 4 and np.asarray(a)[..., 1].max() == np.float32(0.9))
    np.testing.assert_array_equal(np.asarray(edge)[..., 3] > 0, label_boundaries(props))
    # void greyed on every map panel
    for ax in titled[1:]:
        assert any(np.asarray(im.get_array())[..., 3].astype(bool).tolist() == (gt == 255).tolist()
                   for im in ax.get_images() if im.get_array().ndim == 3)
    p = tmp_path / "o.png"
    fig.savefig(p)
    assert p.stat().st_size > 1000 and p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_overlay_accepts_torch_grey_and_float_images():
    img, props, _ = _data()
    fig = overlay(torch.from_numpy(img[..., 0]).float() / 255, {"m": torch.rand(1, *props.shape)},
                  proposals=torch.from_numpy(props))
    assert len([ax for ax in fig.axes if ax.get_title()]) == 2


def test_heat_map_colour_range():
    img, props, _ = _data()
    fig = overlay(img, {"p": np.full(props.shape, 0.3), "logit": np.linspace(-3, 5, props.size).reshape(props.shape)})
    ims = {ax.get_title(): ax.get_images()[0] for ax in fig.axes if ax.get_title() in ("p", "logit")}
    assert ims["p"].get_clim() == (0.0, 1.0)  # a probability keeps the [0,1] scale
    assert ims["logit"].get_clim() == pytest.approx((-3.0, 5.0))


@pytest.mark.parametrize(
    "kwargs, err, match",
    [
        (dict(maps={}), ShapeError, "non-empty"),
        (dict(maps={"m": np.zeros((3, 3))}), ShapeError, "map 'm' must be"),
        (dict(maps={"m": np.full((12, 16), np.nan)}), ValueRangeError, "finite"),
        (dict(maps={"m": -np.ones((12, 16), np.int32)}), ValueRangeError, "ids >= 0"),
        (dict(maps={"m": np.zeros((12, 16), complex)}), DTypeError, "float scores or integer"),
        (dict(proposals=np.zeros((12, 16), np.float32)), DTypeError, "integer labels"),
        (dict(proposals=np.zeros((2, 2), np.int64)), ShapeError, "proposals must be"),
        (dict(gt=np.zeros((2, 2), np.uint8)), ShapeError, "gt must be"),
        (dict(gt=np.zeros((12, 16), np.float32)), DTypeError, "gt must be integer"),
        (dict(image=np.zeros((12, 16, 4), np.uint8)), ShapeError, r"\(H,W,3\)"),
        (dict(image=np.zeros((12, 16, 3), np.int16)), DTypeError, "uint8"),
        (dict(image=np.full((12, 16, 3), 2.0)), ValueRangeError, r"\[0,1\]"),
    ],
)
def test_overlay_errors(kwargs, err, match):
    img, _, _ = _data()
    args = dict(image=img, maps={"m": np.zeros((12, 16))})
    args.update(kwargs)
    with pytest.raises(err, match=match):
        overlay(**args)


def test_missing_matplotlib_names_the_extra(monkeypatch):
    img, _, _ = _data()
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    with pytest.raises(MissingExtraError, match=r"posthoc\[bench\]"):
        overlay(img, {"m": np.zeros((12, 16))})
