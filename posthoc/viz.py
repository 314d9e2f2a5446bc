"""Qualitative figures: an image with its proposals, ground truth and score maps (``posthoc.viz``).

Used by ``posthoc fuse`` (one overlay per image) and by ``posthoc-bench`` (the overlays of a
run). matplotlib is imported only when a figure is drawn; without it
:class:`posthoc.errors.MissingExtraError` names the ``bench`` extra.

The figure is a :class:`matplotlib.figure.Figure` built without pyplot, so drawing many
figures in a loop never accumulates open pyplot windows and works on any backend.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .errors import DTypeError, MissingExtraError, ShapeError, ValueRangeError

__all__ = ["label_boundaries", "overlay", "require_matplotlib"]

#: value of a void (ignored) ground-truth pixel, as in SMIYC / Cityscapes label files
VOID = 255


def require_matplotlib() -> Any:
    """Import and return :mod:`matplotlib`, or raise :class:`MissingExtraError` naming the extra."""
    try:
        import matplotlib
        import matplotlib.figure
    except ImportError as e:
        raise MissingExtraError(
            f"posthoc.viz needs matplotlib, which is not installed ({e}); install it with "
            "pip install 'posthoc[bench]'"
        ) from None
    return matplotlib


def label_boundaries(labels: np.ndarray) -> np.ndarray:
    """(H,W) bool: pixels whose right or lower neighbour has another label (1-pixel region boundaries).

    Args:
        labels: (H,W) integer region labels, -1 = unassigned.
    """
    lab = np.asarray(labels)
    b = np.zeros(lab.shape, bool)
    if lab.ndim != 2 or lab.size == 0:
        return b
    b[:, :-1] |= lab[:, 1:] != lab[:, :-1]
    b[:-1, :] |= lab[1:, :] != lab[:-1, :]
    return b


def _class_colors(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(40, 255, size=(max(n, 1), 3)).astype(np.uint8)


def _check_image(image: Any) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    if img.ndim != 3 or img.shape[2] != 3:
        raise ShapeError(f"overlay: image must be (H,W,3) RGB or (H,W) grey; got shape {img.shape}")
    if img.size == 0:
        raise ShapeError(f"overlay: image must not be empty; got shape {img.shape}")
    if img.dtype == np.uint8:
        return img
    if not np.issubdtype(img.dtype, np.floating):
        raise DTypeError(f"overlay: image must be uint8 (0..255) or float (0..1); got dtype {img.dtype}")
    if not np.isfinite(img).all() or img.min() < 0 or img.max() > 1:
        raise ValueRangeError(
            f"overlay: a float image must be finite and in [0,1]; got range "
            f"[{np.nanmin(img):.4g}, {np.nanmax(img):.4g}]"
        )
    return (img * 255 + 0.5).astype(np.uint8)


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor on any device
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def overlay(image: Any, maps: Mapping[str, Any], proposals: Any = None, gt: Any = None, *,
            title: str | None = None, panel_width: float = 4.2) -> Any:
    """Draw an image with its proposals and ground truth, and one panel per map with a colour bar.

    Panels, left to right then down (two per row):

    * the image, with the proposal boundaries (yellow), the ground-truth anomaly outlined
      (cyan, ``gt == 1``) and void pixels (``gt == 255``) hatched grey;
    * one panel per entry of ``maps``: a float map is a heat map (inferno; the colour
      range is [0,1] when the map lies in it, else the map's own range); an integer map is
      a class map (one colour per class id, the colour bar labelled with the ids). Void is
      greyed out on every panel.

    Args:
        image: (H,W,3) RGB or (H,W) grey, uint8 0..255 or float in [0,1].
        maps: display name -> (H,W) map, numpy or torch: float scores (e.g. an anomaly
            probability in [0,1]) or integer class ids (e.g. the argmax of fused class scores).
        proposals: optional (H,W) integer region labels, -1 = unassigned
            (e.g. ``Pipeline(...)["labels"][b]``).
        gt: optional (H,W) integer ground truth: 1 = anomaly, 255 = void, other values = not
            anomalous (SMIYC convention).
        title: optional figure title.
        panel_width: width of one panel in inches.

    Returns:
        matplotlib.figure.Figure (save it with ``fig.savefig(path)``).

    Raises:
        MissingExtraError: matplotlib is not installed (``pip install 'posthoc[bench]'``).
        ShapeError: a map, ``proposals`` or ``gt`` is not (H,W) at the image's size, or
            ``maps`` is empty.
        DTypeError: a map is neither float nor integer, or ``proposals``/``gt`` are not integer.
        ValueRangeError: a float map has NaN or infinite values, or a class map is negative.
    """
    img = _check_image(_as_numpy(image))
    h, w = img.shape[:2]
    if not isinstance(maps, Mapping) or not maps:
        raise ShapeError("overlay: maps must be a non-empty mapping name -> (H,W) map; got "
                         f"{type(maps).__name__} with {len(maps) if isinstance(maps, Mapping) else 0} entries")
    arrays: dict[str, np.ndarray] = {}
    for name, m in maps.items():
        a = _as_numpy(m)
        if a.ndim == 3 and a.shape[0] == 1:
            a = a[0]
        if a.shape != (h, w):
            raise ShapeError(f"overlay: map {name!r} must be (H,W) = ({h},{w}) like the image; got shape {a.shape}")
        if a.dtype == bool:
            a = a.astype(np.float32)
        if np.issubdtype(a.dtype, np.floating):
            if not np.isfinite(a).all():
                raise ValueRangeError(f"overlay: map {name!r} must be finite; it has NaN or infinite values")
        elif np.issubdtype(a.dtype, np.integer):
            if a.size and a.min() < 0:
                raise ValueRangeError(f"overlay: class map {name!r} must have ids >= 0; got min {a.min()}")
        else:
            raise DTypeError(f"overlay: map {name!r} must be float scores or integer class ids; got dtype {a.dtype}")
        arrays[str(name)] = a
    props = None
    if proposals is not None:
        props = _as_numpy(proposals)
        if props.shape != (h, w):
            raise ShapeError(f"overlay: proposals must be (H,W) = ({h},{w}); got shape {props.shape}")
        if not np.issubdtype(props.dtype, np.integer):
            raise DTypeError(f"overlay: proposals must be integer labels (-1 = unassigned); got dtype {props.dtype}")
    g = None
    if gt is not None:
        g = _as_numpy(gt)
        if g.shape != (h, w):
            raise ShapeError(f"overlay: gt must be (H,W) = ({h},{w}); got shape {g.shape}")
        if not np.issubdtype(g.dtype, np.integer):
            raise DTypeError(f"overlay: gt must be integer (1 = anomaly, 255 = void); got dtype {g.dtype}")

    require_matplotlib()
    from matplotlib.colors import BoundaryNorm, ListedColormap
    from matplotlib.figure import Figure

    void = g == VOID if g is not None else None
    void_rgba = None
    if void is not None and void.any():
        void_rgba = np.zeros((h, w, 4), np.float32)
        void_rgba[void] = (0.55, 0.55, 0.55, 0.85)

    panels = 1 + len(arrays)
    cols = min(panels, 2)
    rows = math.ceil(panels / cols)
    aspect = h / max(w, 1)
    fig = Figure(figsize=(panel_width * cols * 1.12, panel_width * rows * aspect + 0.5))
    axes = fig.subplots(rows, cols, squeeze=False).ravel()

    ax = axes[0]
    ax.imshow(img)
    what = ["image"]
    if props is not None:
        edge = np.zeros((h, w, 4), np.float32)
        edge[label_boundaries(props)] = (1.0, 0.9, 0.0, 0.9)
        ax.imshow(edge, interpolation="nearest")
        n = int(props.max()) + 1 if props.size and props.max() >= 0 else 0
        what.append(f"{n} proposals")
    if g is not None:
        if (g == 1).any():
            ax.contour(g == 1, levels=[0.5], colors="cyan", linewidths=0.9)
            what.append("GT outlined")
        if void_rgba is not None and void is not None:
            ax.imshow(void_rgba, interpolation="nearest")
            ax.contourf(void.astype(np.float32), levels=[0.5, 1.5], colors="none", hatches=["///"])
            what.append("void grey")
    ax.set_title(", ".join(what), fontsize=8)

    # one colour per class id across all class-map panels
    k_all = max([int(a.max()) + 1 for a in arrays.values() if np.issubdtype(a.dtype, np.integer)] or [1])
    for ax, (name, a) in zip(axes[1:], arrays.items(), strict=False):
        if np.issubdtype(a.dtype, np.integer):
            k = k_all
            cmap = ListedColormap(_class_colors(k) / 255.0)
            norm = BoundaryNorm(np.arange(-0.5, k + 0.5), k)
            im = ax.imshow(a, cmap=cmap, norm=norm, interpolation="nearest")
            cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            step = max(1, math.ceil(k / 12))
            cb.set_ticks(list(range(0, k, step)))
            cb.set_label("class id", fontsize=7)
        else:
            lo, hi = float(a.min()), float(a.max())
            if lo >= 0.0 and hi <= 1.0:
                lo, hi = 0.0, 1.0
            elif hi <= lo:
                hi = lo + 1.0
            im = ax.imshow(a.astype(np.float32, copy=False), cmap="inferno", vmin=lo, vmax=hi)
            cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            cb.set_label("score", fontsize=7)
        cb.ax.tick_params(labelsize=6)
        if void_rgba is not None:
            ax.imshow(void_rgba, interpolation="nearest")
        ax.set_title(name, fontsize=8)
    for ax in axes:
        ax.set_axis_off()
    for ax in axes[panels:]:
        ax.set_visible(False)
    if title:
        fig.suptitle(title, fontsize=8)
    return fig
