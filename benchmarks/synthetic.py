"""A procedural road-scene world in the SegmentMeIfYouCan (SMIYC) folder layout.

No real data set can be downloaded here, so posthoc ships a small synthetic world that
the *real* SMIYC reader (:mod:`posthoc.bench.datasets`) reads, and on which the bundled
teachers (``scripts/train_*.py``) are trained.

Scenes are drawn with a pinhole-like perspective: a road trapezoid converging to a
vanishing point on the horizon, sidewalks, facades whose height scales with their
distance to the horizon line, walls, fences, poles with traffic signs and lights,
trees, terrain, sky, cars and people. Appearance varies per frame (palette jitter,
low- and high-frequency textures, cast shadows, haze, exposure/gamma/tint, blur,
sensor noise) so that a small network makes genuine mistakes.

Anomalies are pasted the AnomalyMix way (Tian et al., "Pixel-wise energy-biased
abstention learning for anomaly segmentation on complex urban driving scenes",
ECCV 2022): objects cut out of other photographs (here: the real photographs that
ship with scikit-image, ``skimage.data``) with an ellipse / polygon / threshold
cut-out, at a random scale and position consistent with the scene's perspective.
Some are recoloured towards in-distribution colours (road grey, car paint, foliage)
so that colour alone does not give them away. In the obstacle track, small objects
lie on the road.

Layout (interface 6 of the project brief)::

    <root>/<split>/dataset_AnomalyTrack/   and   <root>/<split>/dataset_ObstacleTrack/
        images/<id>.png                              RGB uint8
        labels_masks/<id>_labels_semantic.png        uint8: 0 in-distribution, 1 anomaly, 255 void
        labels_masks/<id>_labels_classes.png         uint8: class index (CLASS_NAMES), 255 anomaly/void
        world.json                                   config, class names, seed, frame ids

Void follows SMIYC: in the anomaly track the ego-vehicle hood at the bottom of the
frame is void; in the obstacle track everything that is not road (or an obstacle) is
void, as in the official ObstacleTrack, whose region of interest is the drivable
surface. The class map (``*_labels_classes.png``) always holds the full scene's class
indices, with 255 only at anomalies and at the ego-vehicle hood.

Splits: ``"train"`` (no anomalies; used to train the bundled teachers), ``"val"``
(tuning) and ``"test"`` (reported). Frames are deterministic for ``(seed, split,
track, index, size)``: the same arguments give byte-identical files.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from functools import cache, lru_cache
from pathlib import Path
from typing import NamedTuple

import cv2
import numpy as np

from posthoc.errors import PosthocError, ShapeError, ValueRangeError

log = logging.getLogger(__name__)

__all__ = [
    "CLASS_NAMES",
    "DEFAULT",
    "SPLITS",
    "STUFF_IDS",
    "THING_IDS",
    "TRACK_DIRS",
    "Frame",
    "SyntheticWorldError",
    "WorldDefaults",
    "default_root",
    "ensure_world",
    "frame_ids",
    "iter_frames",
    "load_frame",
    "render_frame",
    "world_config",
    "world_root",
]

#: In-distribution classes. Indices follow the Cityscapes trainIds for 0-10 (road ...
#: sky), then the two thing classes, so that the Mask2Anomaly refinement default
#: ("suppress" trainIds 2-10: the stuff classes other than road and sidewalk) applies as is.
CLASS_NAMES: tuple[str, ...] = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light",
    "traffic sign", "vegetation", "terrain", "sky", "person", "car",
)
ROAD, SIDEWALK, BUILDING, WALL, FENCE, POLE, TLIGHT, TSIGN, VEG, TERRAIN, SKY, PERSON, CAR = range(13)
STUFF_IDS: tuple[int, ...] = tuple(range(11))
THING_IDS: tuple[int, ...] = (PERSON, CAR)
VOID = 255
ANOMALY = 1

TRACK_DIRS = {"anomaly": "dataset_AnomalyTrack", "obstacle": "dataset_ObstacleTrack"}
SPLITS = ("train", "val", "test")
_SPLIT_CODE = {"train": 11, "val": 22, "test": 33}
_TRACK_CODE = {"anomaly": 1, "obstacle": 2}
#: bump when the renderer changes, so cached worlds are regenerated
GENERATOR_VERSION = 1


class SyntheticWorldError(PosthocError, ValueError):
    """A synthetic-world request or folder is invalid."""


@dataclass(frozen=True)
class WorldDefaults:
    """Default size and frame counts of the synthetic world.

    Chosen so that the default benchmark (both tracks, a few teachers, four variants,
    proposals) runs end to end in a few minutes on a 2-core CPU.

    Attributes:
        size: (H, W) of every frame.
        n_frames: frames per split and track.
        train_size: (H, W) the bundled models are trained at (frames are rendered at
            ``size`` and downsampled, so training sees the same appearance statistics).
    """

    size: tuple[int, int] = (256, 512)
    n_frames: dict = field(default_factory=lambda: {"train": 600, "val": 24, "test": 48})
    train_size: tuple[int, int] = (128, 256)


DEFAULT = WorldDefaults()


class Frame(NamedTuple):
    """One rendered frame.

    Attributes:
        image: (H,W,3) uint8 RGB.
        semantic: (H,W) uint8, 0 = in-distribution, 1 = anomaly, 255 = void.
        classes: (H,W) uint8 class index into :data:`CLASS_NAMES`, 255 at anomalies and void.
    """

    image: np.ndarray
    semantic: np.ndarray
    classes: np.ndarray


# ----------------------------------------------------------------------------- anomaly sources

_PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "cat", "hubble_deep_field",
           "immunohistochemistry", "colorwheel", "retina")
_GRAY_PHOTOS = ("camera", "moon", "coins", "clock", "page", "text")


@cache
def _photo(name: str) -> np.ndarray:
    """An RGB uint8 photo from skimage.data (cached; read-only)."""
    import skimage.data as sd

    img = getattr(sd, name)()
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    img = np.ascontiguousarray(img[..., :3])
    img.setflags(write=False)
    return img


@cache
def _horse_mask() -> np.ndarray:
    import skimage.data as sd

    m = (~sd.horse()).astype(np.uint8)  # the horse is drawn black on white
    m.setflags(write=False)
    return m


# in-distribution colours an anomaly may be recoloured towards (RGB, 0..255)
_LOOKALIKE = np.array([[110, 110, 115], [130, 60, 55], [40, 60, 140], [70, 110, 50],
                       [200, 200, 200], [150, 140, 120], [60, 60, 62]], np.float32)


def _cutout(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """An object cut from a real photo: (h,w,3) float32 RGB in [0,255] and (h,w) float32 alpha in [0,1]."""
    kind = rng.random()
    gray = rng.random() < 0.3
    name = _GRAY_PHOTOS[rng.integers(len(_GRAY_PHOTOS))] if gray else _PHOTOS[rng.integers(len(_PHOTOS))]
    src = _photo(name)
    sh, sw = src.shape[:2]
    # random crop with the target aspect ratio, covering 25-90 % of the shorter side
    frac = rng.uniform(0.25, 0.9)
    ch = max(8, int(frac * min(sh, sw * h / max(w, 1))))
    cw = max(8, round(ch * w / max(h, 1)))
    cw = min(cw, sw)
    ch = min(ch, sh)
    y0 = int(rng.integers(0, sh - ch + 1))
    x0 = int(rng.integers(0, sw - cw + 1))
    crop = cv2.resize(src[y0:y0 + ch, x0:x0 + cw], (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    alpha = np.zeros((h, w), np.uint8)
    if kind < 0.4:  # ellipse cut-out
        cv2.ellipse(alpha, (w // 2, h // 2), (max(1, int(w * rng.uniform(0.35, 0.5))),
                    max(1, int(h * rng.uniform(0.35, 0.5)))), float(rng.uniform(-20, 20)), 0, 360, 1, -1)
    elif kind < 0.8:  # random polygon (convex hull of random points)
        k = int(rng.integers(5, 10))
        pts = np.stack([rng.uniform(0.02, 0.98, k) * (w - 1), rng.uniform(0.02, 0.98, k) * (h - 1)], 1)
        hull = cv2.convexHull(pts.astype(np.float32)).astype(np.int32)
        cv2.fillPoly(alpha, [hull], 1)
    elif kind < 0.9:  # silhouette (the horse), textured with the crop
        alpha = cv2.resize(_horse_mask(), (w, h), interpolation=cv2.INTER_NEAREST)
    else:  # threshold cut-out: the brighter (or darker) part of the crop, largest blob
        lum = crop.mean(2)
        t = float(np.median(lum))
        m = (lum > t) if rng.random() < 0.5 else (lum < t)
        m = cv2.morphologyEx(m.astype(np.uint8), cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
        n, lab = cv2.connectedComponents(m, connectivity=8)
        if n > 1:
            sizes = np.bincount(lab.ravel())[1:]
            alpha = (lab == 1 + int(sizes.argmax())).astype(np.uint8)
        if alpha.sum() < 0.15 * h * w:  # degenerate: fall back to an ellipse
            alpha[:] = 0
            cv2.ellipse(alpha, (w // 2, h // 2), (max(1, w // 2 - 1), max(1, h // 2 - 1)), 0, 0, 360, 1, -1)
    if rng.random() < 0.3:  # look-alike: keep the texture, take an in-distribution colour
        lum = crop.mean(2, keepdims=True) / 128.0
        crop = np.clip(lum * _LOOKALIKE[rng.integers(len(_LOOKALIKE))], 0, 255)
    a = alpha.astype(np.float32)
    if min(h, w) >= 12:  # slightly soft edge, as a real paste has
        a = cv2.GaussianBlur(a, (3, 3), 0.7)
    return crop, a


# ----------------------------------------------------------------------------- scene renderer


class _Canvas:
    """Class map plus a per-primitive colour-table index, drawn with the painter's algorithm."""

    def __init__(self, h: int, w: int):
        self.h, self.w = h, w
        self.cls = np.full((h, w), SKY, np.uint8)
        self.col = np.zeros((h, w), np.int32)
        self.rgb: list[np.ndarray] = [np.zeros(3, np.float32)]
        self.amp: list[tuple[float, float]] = [(0.0, 0.0)]
        self._m = np.zeros((h, w), np.uint8)

    def colour(self, rgb, lf: float = 0.08, hf: float = 0.04) -> int:
        self.rgb.append(np.clip(np.asarray(rgb, np.float32), 0, 255))
        self.amp.append((lf, hf))
        return len(self.rgb) - 1

    def _apply(self, cls: int, col: int) -> None:
        m = self._m.view(bool)
        self.cls[m] = cls
        self.col[m] = col
        self._m[:] = 0

    def poly(self, pts, cls: int, col: int) -> None:
        p = np.round(np.asarray(pts, np.float64) * 4).astype(np.int32)  # 2 fractional bits
        cv2.fillPoly(self._m, [p], 1, lineType=cv2.LINE_8, shift=2)
        self._apply(cls, col)

    def ellipse(self, cx, cy, ax, ay, cls: int, col: int, angle: float = 0.0) -> None:
        cv2.ellipse(self._m, (round(cx), round(cy)), (max(1, round(ax)), max(1, round(ay))),
                    angle, 0, 360, 1, -1)
        self._apply(cls, col)

    def rect(self, x0, y0, x1, y1, cls: int, col: int) -> None:
        self.poly([(x0, y0), (x1, y0), (x1, y1), (x0, y1)], cls, col)


def _jit(rng, rgb, s=18.0):
    return np.asarray(rgb, np.float32) + rng.normal(0, s, 3)


def _render_scene(rng: np.random.Generator, h: int, w: int):
    """Draw the in-distribution scene; returns (canvas, geometry dict)."""
    cv_ = _Canvas(h, w)
    yh = h * rng.uniform(0.36, 0.48)  # horizon
    vx = w * rng.uniform(0.4, 0.6)  # vanishing point x
    ego = h * (1 - rng.uniform(0.06, 0.1)) if rng.random() < 0.85 else float(h)  # hood top (void below)
    span = h - yh
    rw = w * rng.uniform(0.42, 0.85)  # road half width at the bottom row
    sw = w * rng.uniform(0.12, 0.45)  # sidewalk width at the bottom row
    xl, xr = vx - rw, vx + rw  # road edges at y=h
    sl, sr = xl - sw, xr + sw  # sidewalk outer edges at y=h

    def at(x_bottom, y):  # x of the line (vx,yh)->(x_bottom,h) at row y
        return vx + (x_bottom - vx) * (y - yh) / span

    def row_of(x_bottom, x):  # row where the line (vx,yh)->(x_bottom,h) reaches column x
        return yh + span * (x - vx) / (x_bottom - vx)

    # --- sky (a vertical gradient is applied when shading), ground
    sky_col = cv_.colour(_jit(rng, rng.choice([[120, 160, 215], [170, 180, 195], [215, 170, 130]]), 12), 0.25, 0.01)
    cv_.rect(-1, -1, w + 1, yh + 1, SKY, sky_col)
    terrain_col = cv_.colour(_jit(rng, [120, 140, 70], 20), 0.25, 0.10)
    cv_.rect(-1, yh, w + 1, h + 1, TERRAIN, terrain_col)

    # --- far vegetation band on the horizon
    if rng.random() < 0.6:
        vcol = cv_.colour(_jit(rng, [60, 95, 50], 15), 0.3, 0.15)
        xs = np.linspace(-1, w + 1, 24)
        top = yh - span * rng.uniform(0.03, 0.15) * (1 + 0.5 * rng.random(24))
        cv_.poly(list(zip(xs, top)) + [(w + 1, yh + 1), (-1, yh + 1)], VEG, vcol)

    # --- facades on both sides: vertical planes standing on the sidewalk's outer edge
    for side, x_b in ((-1, sl), (1, sr)):
        x_edge = -1.0 if side < 0 else w + 1.0
        x = x_edge
        while (x < vx - 2) if side < 0 else (x > vx + 2):
            # blocks get narrower towards the vanishing point
            remaining = abs(vx - x)
            width = max(3.0, remaining * rng.uniform(0.2, 0.6))
            x2 = x - side * width
            x2 = min(x2, vx - 1) if side < 0 else max(x2, vx + 1)
            xs = np.linspace(x, x2, 6)
            bottom = row_of(x_b, xs)
            r = rng.random()
            if r < 0.68:  # building
                f = rng.uniform(1.5, 6.0)
                base = rng.choice([[150, 140, 130], [110, 100, 95], [175, 165, 150], [120, 85, 70], [95, 100, 110]])
                bcol = cv_.colour(_jit(rng, base, 15), 0.12, rng.uniform(0.02, 0.12))
                top = yh - f * (bottom - yh)
                cv_.poly(list(zip(xs, np.minimum(bottom, h + 1))) + list(zip(xs[::-1], top[::-1])), BUILDING, bcol)
                # windows: a grid in facade coordinates (u along the facade, v up the wall)
                if rng.random() < 0.8:
                    wcol = cv_.colour(_jit(rng, [50, 60, 75], 12), 0.05, 0.02)
                    nu, nv = int(rng.integers(2, 6)), int(rng.integers(2, 7))
                    for iu in range(nu):
                        for iv in range(nv):
                            u0, u1 = (iu + 0.25) / nu, (iu + 0.75) / nu
                            v0, v1 = (iv + 0.3) / nv, (iv + 0.7) / nv
                            xa, xb2 = x + (x2 - x) * u0, x + (x2 - x) * u1
                            ba, bb = row_of(x_b, xa), row_of(x_b, xb2)
                            pts = [(xa, ba - f * v0 * (ba - yh)), (xb2, bb - f * v0 * (bb - yh)),
                                   (xb2, bb - f * v1 * (bb - yh)), (xa, ba - f * v1 * (ba - yh))]
                            cv_.poly(pts, BUILDING, wcol)
            elif r < 0.85:  # tree(s) behind a terrain strip
                tcol = cv_.colour(_jit(rng, [55, 100, 45], 18), 0.35, 0.2)
                for xt in np.linspace(x, x2, int(rng.integers(1, 4)) + 1)[:-1]:
                    bt = min(row_of(x_b, xt), h + 1)
                    u = bt - yh
                    cv_.rect(xt - 0.06 * u, bt - 1.6 * u, xt + 0.06 * u, bt, VEG, tcol)
                    cv_.ellipse(xt, bt - 2.2 * u, u * rng.uniform(0.6, 1.1), u * rng.uniform(0.6, 1.0), VEG, tcol)
            else:  # open terrain with a hedge
                hcol = cv_.colour(_jit(rng, [50, 90, 40], 15), 0.3, 0.2)
                top = bottom - rng.uniform(0.2, 0.6) * (bottom - yh)
                cv_.poly(list(zip(xs, np.minimum(bottom, h + 1))) + list(zip(xs[::-1], top[::-1])), VEG, hcol)
            # a low wall or fence in front of part of the facades
            if rng.random() < 0.25:
                fence = rng.random() < 0.5
                f = rng.uniform(0.2, 0.5)
                top = bottom - f * (bottom - yh)
                fc = cv_.colour(_jit(rng, [150, 150, 140] if not fence else [110, 105, 95], 15), 0.1, 0.05)
                pts = list(zip(xs, np.minimum(bottom, h + 1))) + list(zip(xs[::-1], top[::-1]))
                if not fence:
                    cv_.poly(pts, WALL, fc)
                else:  # fence: posts and rails, see-through
                    for xp in np.linspace(x, x2, 8):
                        bp = min(row_of(x_b, xp), h + 1)
                        u = bp - yh
                        cv_.rect(xp - max(0.6, 0.02 * u), bp - f * u, xp + max(0.6, 0.02 * u), bp, FENCE, fc)
                    for fr in (0.35, 0.9):
                        rail = [(xs[0], bottom[0] - fr * f * (bottom[0] - yh)),
                                (xs[-1], bottom[-1] - fr * f * (bottom[-1] - yh)),
                                (xs[-1], bottom[-1] - (fr * f - 0.06) * (bottom[-1] - yh)),
                                (xs[0], bottom[0] - (fr * f - 0.06) * (bottom[0] - yh))]
                        cv_.poly(rail, FENCE, fc)
            x = x2

    # --- sidewalks and road
    swc = cv_.colour(_jit(rng, [165, 155, 150], 15), 0.12, rng.uniform(0.03, 0.1))
    for xo, xi in ((sl, xl), (xr, sr)):
        if rng.random() < 0.85:
            cv_.poly([(vx, yh), (xo, h + 1), (xi, h + 1)], SIDEWALK, swc)
    rc = cv_.colour(_jit(rng, rng.choice([[100, 100, 105], [75, 75, 80], [125, 120, 115]]), 10), 0.15,
                    rng.uniform(0.03, 0.12))
    cv_.poly([(vx, yh), (xl, h + 1), (xr, h + 1)], ROAD, rc)
    # patches of repaired asphalt
    for _ in range(int(rng.integers(0, 3))):
        pc = cv_.colour(cv_.rgb[rc] * rng.uniform(0.75, 1.15), 0.1, 0.05)
        y0 = yh + span * rng.uniform(0.2, 0.9)
        y1 = min(h, y0 + span * rng.uniform(0.05, 0.2))
        t0, t1 = rng.uniform(-0.8, 0.6, 1)[0], 0
        t1 = t0 + rng.uniform(0.1, 0.4)
        cv_.poly([(vx + t0 * (at(xr, y0) - vx), y0), (vx + t1 * (at(xr, y0) - vx), y0),
                  (vx + t1 * (at(xr, y1) - vx), y1), (vx + t0 * (at(xr, y1) - vx), y1)], ROAD, pc)
    # lane markings: dashed centre line(s) and solid edge lines
    mc = cv_.colour(_jit(rng, [225, 225, 215], 8), 0.05, 0.03)
    lanes = int(rng.integers(1, 4))
    for k in range(1, lanes + 1):
        xb = xl + (xr - xl) * k / (lanes + 1)
        d = 0.0
        while d < 1.0:  # dashes uniform in inverse depth -> shorter towards the horizon
            d0, d1 = d, min(1.0, d + 0.05)
            y0, y1 = yh + span * d0 ** 1.0, yh + span * d1 ** 1.0
            y0, y1 = yh + span * (d0 ** 2), yh + span * (d1 ** 2)
            hw0, hw1 = 0.006 * (y0 - yh), 0.006 * (y1 - yh) + 0.4
            cv_.poly([(at(xb, y0) - hw0, y0), (at(xb, y0) + hw0, y0), (at(xb, y1) + hw1, y1),
                      (at(xb, y1) - hw1, y1)], ROAD, mc)
            d += 0.1
    for xe in (xl + 0.04 * rw, xr - 0.04 * rw):
        cv_.poly([(vx, yh), (xe - 0.008 * w, h + 1), (xe + 0.008 * w, h + 1)], ROAD, mc)

    # --- poles, signs, traffic lights on the sidewalks
    for _ in range(int(rng.integers(0, 5))):
        left = rng.random() < 0.5
        y = yh + span * rng.uniform(0.08, 0.8)
        a_, b_ = (at(sl, y), at(xl, y)) if left else (at(xr, y), at(sr, y))
        xp = rng.uniform(a_, b_)
        u = y - yh
        pcol = cv_.colour(_jit(rng, [90, 90, 95], 10), 0.05, 0.03)
        ph = u * rng.uniform(2.2, 3.5)
        pw = max(0.7, 0.025 * u)
        cv_.rect(xp - pw, y - ph, xp + pw, y, POLE, pcol)
        if rng.random() < 0.5:
            scol = cv_.colour(rng.choice([[200, 40, 40], [40, 80, 190], [230, 200, 40], [240, 240, 240]]), 0.03, 0.02)
            r = max(1.0, 0.18 * u)
            if rng.random() < 0.5:
                cv_.ellipse(xp, y - ph, r, r, TSIGN, scol)
            else:
                cv_.rect(xp - r, y - ph - r, xp + r, y - ph + r, TSIGN, scol)
        else:
            lcol = cv_.colour([35, 35, 38], 0.03, 0.02)
            bw, bh = max(1.0, 0.1 * u), max(2.0, 0.3 * u)
            cv_.rect(xp - bw, y - ph - bh, xp + bw, y - ph + bh, TLIGHT, lcol)
            on = int(rng.integers(3))
            for i, c in enumerate(([230, 40, 30], [240, 190, 30], [40, 220, 90])):
                lc = cv_.colour(c if i == on else np.asarray(c) * 0.3, 0.02, 0.02)
                cv_.ellipse(xp, y - ph - bh + (2 * i + 1) * bh / 3, 0.7 * bw, 0.7 * bw, TLIGHT, lc)

    # --- cars (road) and people (sidewalks, sometimes crossing), far to near
    things = []
    for _ in range(int(rng.integers(0, 6))):
        things.append(("car", yh + span * rng.uniform(0.05, 0.75) ** 0.8))
    for _ in range(int(rng.integers(0, 5))):
        things.append(("person", yh + span * rng.uniform(0.08, 0.85)))
    things.sort(key=lambda t: t[1])
    for kind, y in things:
        u = y - yh
        if kind == "car":
            xc = rng.uniform(at(xl, y), at(xr, y))
            cw, chh = 1.25 * u, 0.95 * u
            body = cv_.colour(_jit(rng, rng.choice([[160, 30, 30], [30, 50, 120], [200, 200, 205], [30, 30, 35],
                                                    [120, 120, 125], [200, 170, 40], [60, 90, 60]]), 15), 0.04, 0.02)
            glass = cv_.colour(_jit(rng, [40, 50, 60], 8), 0.05, 0.02)
            dark = cv_.colour([20, 20, 22], 0.02, 0.02)
            cv_.rect(xc - cw / 2, y - 0.55 * chh, xc + cw / 2, y - 0.1 * chh, CAR, body)
            cv_.poly([(xc - 0.4 * cw, y - 0.55 * chh), (xc + 0.4 * cw, y - 0.55 * chh),
                      (xc + 0.3 * cw, y - chh), (xc - 0.3 * cw, y - chh)], CAR, body)
            cv_.poly([(xc - 0.33 * cw, y - 0.58 * chh), (xc + 0.33 * cw, y - 0.58 * chh),
                      (xc + 0.26 * cw, y - 0.93 * chh), (xc - 0.26 * cw, y - 0.93 * chh)], CAR, glass)
            for sx in (-1, 1):
                cv_.rect(xc + sx * 0.45 * cw - 0.09 * cw, y - 0.14 * chh, xc + sx * 0.45 * cw + 0.09 * cw, y, CAR, dark)
                lc = cv_.colour([210, 30, 30], 0.02, 0.02)
                cv_.rect(xc + sx * 0.42 * cw - 0.06 * cw, y - 0.45 * chh, xc + sx * 0.42 * cw + 0.06 * cw,
                         y - 0.37 * chh, CAR, lc)
        else:
            left = rng.random() < 0.5
            if rng.random() < 0.25:
                xc = rng.uniform(at(xl, y), at(xr, y))
            else:
                a_, b_ = (at(sl, y), at(xl, y)) if left else (at(xr, y), at(sr, y))
                xc = rng.uniform(a_, b_)
            ph = u * rng.uniform(1.05, 1.3)
            skin = cv_.colour(_jit(rng, [200, 160, 130], 25), 0.03, 0.02)
            shirt = cv_.colour(rng.uniform(20, 230, 3), 0.06, 0.04)
            trousers = cv_.colour(rng.uniform(20, 150, 3), 0.06, 0.04)
            bw = 0.28 * ph
            cv_.rect(xc - 0.3 * bw, y - 0.48 * ph, xc - 0.04 * bw, y, PERSON, trousers)
            cv_.rect(xc + 0.04 * bw, y - 0.48 * ph, xc + 0.3 * bw, y, PERSON, trousers)
            cv_.rect(xc - 0.5 * bw, y - 0.85 * ph, xc + 0.5 * bw, y - 0.45 * ph, PERSON, shirt)
            cv_.ellipse(xc, y - 0.92 * ph, 0.24 * bw, 0.08 * ph, PERSON, skin)

    # --- ego-vehicle hood: void
    if ego < h:
        hood = cv_.colour(_jit(rng, [40, 40, 45], 10), 0.05, 0.02)
        xs = np.linspace(-1, w + 1, 16)
        ys = ego + (h - ego) * 0.6 * ((xs - w / 2) / (w / 2)) ** 2
        cv_.poly(list(zip(xs, ys)) + [(w + 1, h + 1), (-1, h + 1)], VOID, hood)

    geo = {"yh": yh, "vx": vx, "span": span, "xl": xl, "xr": xr, "sl": sl, "sr": sr, "ego": ego}
    return cv_, geo


@lru_cache(maxsize=8)
def _rows(h: int) -> np.ndarray:
    r = np.arange(h, dtype=np.float32)[:, None]
    r.setflags(write=False)
    return r


def _noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
    small = rng.standard_normal((max(2, h // cell + 2), max(2, w // cell + 2))).astype(np.float32)
    return cv2.resize(small, (w, h), interpolation=cv2.INTER_CUBIC)


def _shade(rng: np.random.Generator, cv_: _Canvas, geo: dict) -> np.ndarray:
    """Turn the colour-index map into a float32 RGB image (textures, sky gradient, shadows, haze)."""
    h, w = cv_.h, cv_.w
    rgb = np.stack(cv_.rgb).astype(np.float32)
    amp = np.asarray(cv_.amp, np.float32)
    lf = _noise(rng, h, w, 12)
    hf = rng.standard_normal((h, w), dtype=np.float32)
    hf = 0.6 * hf + 0.4 * _noise(rng, h, w, 2)
    a = amp[cv_.col]
    mod = 1.0 + a[..., 0] * lf + a[..., 1] * hf
    img = rgb[cv_.col] * mod[..., None]
    # sky: vertical gradient (lighter at the horizon) plus clouds
    sky = cv_.cls == SKY
    if sky.any():
        t = np.clip(_rows(h) / max(geo["yh"], 1.0), 0, 1)  # 0 top .. 1 horizon
        grad = (0.75 + 0.4 * t)[..., None]
        clouds = np.clip(_noise(rng, h, w, 24), 0, None)[..., None] * rng.uniform(0, 60)
        img = np.where(sky[..., None], img * grad + clouds, img)
    # cast shadows across the ground
    shadow = np.zeros((h, w), np.uint8)
    yh, span = geo["yh"], geo["span"]
    for _ in range(int(rng.integers(0, 4))):
        y0 = yh + span * rng.uniform(0.05, 0.8)
        y1 = min(h + 1.0, y0 + span * rng.uniform(0.05, 0.35))
        x0, x1 = sorted(rng.uniform(-0.2 * w, 1.2 * w, 2))
        sk = rng.uniform(-0.5, 0.5) * (y1 - y0)
        pts = np.array([(x0, y0), (x1, y0), (x1 + sk, y1), (x0 + sk, y1)]) * 4
        cv2.fillPoly(shadow, [np.round(pts).astype(np.int32)], 1, shift=2)
    if shadow.any():
        s = cv2.GaussianBlur(shadow.astype(np.float32), (0, 0), 1.5) * rng.uniform(0.25, 0.5)
        img = img * (1 - s)[..., None]
    # haze near the horizon
    haze = rng.uniform(0, 0.45)
    if haze > 0:
        wgt = (np.exp(-np.abs(_rows(h) - yh) / (0.12 * h)) * haze)[..., None]
        img = img * (1 - wgt) + wgt * rgb[1][None, None, :]
    return img


def _check_size(size) -> tuple[int, int]:
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ShapeError(f"size must be (H, W) with two positive ints; got {size!r}") from None
    if h < 16 or w < 16:
        raise ShapeError(f"size must be at least (16, 16); got ({h}, {w})")
    return h, w


def _check_track(track: str) -> str:
    if track not in TRACK_DIRS:
        raise SyntheticWorldError(f"track must be one of {sorted(TRACK_DIRS)}; got {track!r}")
    return track


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise SyntheticWorldError(f"split must be one of {list(SPLITS)}; got {split!r}")
    return split


def render_frame(seed: int | Sequence[int] | np.random.Generator, size: Sequence[int] = DEFAULT.size, *,
                 track: str = "anomaly", anomalies: bool = True) -> Frame:
    """Render one synthetic road frame.

    Args:
        seed: an int, a sequence of ints (a numpy ``SeedSequence`` entropy) or a Generator.
            The same seed and size give identical arrays.
        size: (H, W) of the frame, each >= 16.
        track: ``"anomaly"`` (1-3 objects of any size anywhere on the ground, void = the
            ego-vehicle hood) or ``"obstacle"`` (1-3 small objects lying on the road, void =
            everything that is not road).
        anomalies: False renders an anomaly-free frame (the "train" split).

    Returns:
        :class:`Frame` with ``image`` (H,W,3) uint8 RGB, ``semantic`` (H,W) uint8 in
        {0,1,255} and ``classes`` (H,W) uint8 class indices into :data:`CLASS_NAMES`
        (255 at anomalies and at the ego-vehicle hood).
    """
    h, w = _check_size(size)
    _check_track(track)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    cv_, geo = _render_scene(rng, h, w)
    img = _shade(rng, cv_, geo)
    classes = cv_.cls.copy()
    anomaly = np.zeros((h, w), bool)
    if anomalies:
        yh, span, ego = geo["yh"], geo["span"], geo["ego"]
        n_obj = int(rng.choice([1, 1, 2, 2, 3]))
        for _ in range(n_obj):
            for _attempt in range(10):
                if track == "obstacle":
                    y = yh + span * rng.uniform(0.3, 0.95)
                    u = y - yh
                    oh = u * rng.uniform(0.12, 0.45)
                    xa = geo["vx"] + (geo["xl"] - geo["vx"]) * u / span
                    xb = geo["vx"] + (geo["xr"] - geo["vx"]) * u / span
                else:
                    y = yh + span * rng.uniform(0.12, 0.95)
                    u = y - yh
                    oh = u * rng.uniform(0.3, 1.4)
                    xa = geo["vx"] + (geo["sl"] - geo["vx"]) * u / span
                    xb = geo["vx"] + (geo["sr"] - geo["vx"]) * u / span
                y = min(y, ego - 1)
                ow = oh * rng.uniform(0.6, 1.8)
                ohi, owi = round(oh), round(ow)
                xc = rng.uniform(max(xa, 0), min(xb, w))
                # the object stands on visible ground (not on a car or person nearer the camera)
                ground = (ROAD,) if track == "obstacle" else (ROAD, SIDEWALK, TERRAIN)
                yi, xi = min(max(int(y), 0), h - 1), min(max(int(xc), 0), w - 1)
                if ohi >= 4 and owi >= 4 and cv_.cls[yi, xi] in ground:
                    break
            else:
                continue
            x0, y0 = round(xc - owi / 2), round(y - ohi)
            crop, alpha = _cutout(rng, ohi, owi)
            # clip the paste box to the frame
            cx0, cy0 = max(0, x0), max(0, y0)
            cx1, cy1 = min(w, x0 + owi), min(h, y0 + ohi)
            if cx1 <= cx0 or cy1 <= cy0:
                continue
            sub = (slice(cy0 - y0, cy1 - y0), slice(cx0 - x0, cx1 - x0))
            a = alpha[sub]
            if track == "obstacle":  # a soft contact shadow under the obstacle
                sh = np.zeros((h, w), np.float32)
                cv2.ellipse(sh, (int(xc), int(y)), (max(1, owi // 2), max(1, ohi // 8)), 0, 0, 360, 1.0, -1)
                sh = cv2.GaussianBlur(sh, (0, 0), max(1.0, ohi / 10)) * 0.35
                img = img * (1 - sh)[..., None]
            # match the object's exposure to the local scene only partially
            patch = img[cy0:cy1, cx0:cx1]
            gain = rng.uniform(0.7, 1.15)
            img[cy0:cy1, cx0:cx1] = patch * (1 - a[..., None]) + crop[sub] * gain * a[..., None]
            m = np.zeros((h, w), bool)
            m[cy0:cy1, cx0:cx1] = a >= 0.5
            m &= cv_.cls != VOID  # the hood occludes objects behind it
            anomaly |= m
    # global photometry: exposure, tint, gamma, blur, sensor noise
    img = img * rng.uniform(0.65, 1.25) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    img = 255.0 * (np.clip(img, 0, 255) / 255.0) ** rng.uniform(0.8, 1.25)
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), rng.uniform(0.3, 0.9))
    img = img + rng.standard_normal((h, w, 3), dtype=np.float32) * rng.uniform(1.5, 6.0)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)

    void = classes == VOID
    classes[anomaly] = VOID
    semantic = np.zeros((h, w), np.uint8)
    if track == "obstacle":
        semantic[cv_.cls != ROAD] = VOID
    semantic[void] = VOID
    semantic[anomaly] = ANOMALY
    return Frame(image, semantic, classes)


# ----------------------------------------------------------------------------- on disk


def default_root() -> Path:
    """``$POSTHOC_SYNTHETIC_ROOT`` if set, else ``~/.cache/posthoc/synthetic``."""
    env = os.environ.get("POSTHOC_SYNTHETIC_ROOT")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "posthoc" / "synthetic"


def world_config(*, split: str = "test", track: str = "anomaly", n_frames: int | None = None,
                 size: Sequence[int] | None = None, seed: int = 0) -> dict:
    """The configuration a world folder is generated from (and checked against when cached)."""
    _check_split(split)
    _check_track(track)
    h, w = _check_size(DEFAULT.size if size is None else size)
    n = DEFAULT.n_frames[split] if n_frames is None else n_frames
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueRangeError(f"n_frames must be a positive int; got {n!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueRangeError(f"seed must be a non-negative int; got {seed!r}")
    return {
        "generator": "posthoc.bench.synthetic",
        "generator_version": GENERATOR_VERSION,
        "split": split,
        "track": track,
        "n_frames": int(n),
        "size": [h, w],
        "seed": int(seed),
        "anomalies": split != "train",
    }


def world_root(root: os.PathLike | str | None, cfg: dict) -> Path:
    """The root a world of config ``cfg`` lives under.

    An explicit ``root`` is used as given (a different config there replaces the old
    world). Under the shared default root, only the default size and frame count live at
    ``<default_root>/<split>/``; any other size or frame count goes to
    ``<default_root>/custom-<hash of size and n_frames>/<split>/``, so that a small world
    asked for by a test or a quick experiment never evicts the cached default world that
    the benchmark and the training scripts use.
    """
    if root is not None:
        return Path(root)
    base = default_root()
    if tuple(cfg["size"]) == tuple(DEFAULT.size) and cfg["n_frames"] == DEFAULT.n_frames[cfg["split"]]:
        return base
    key = hashlib.sha256(json.dumps([cfg["size"], cfg["n_frames"]]).encode()).hexdigest()[:10]
    return base / f"custom-{key}"


def frame_ids(split: str, n_frames: int) -> list[str]:
    """Frame ids of a split, e.g. ``test_0007``."""
    return [f"{split}_{i:04d}" for i in range(n_frames)]


def _frame_seed(cfg: dict, i: int) -> list[int]:
    return [cfg["seed"], _SPLIT_CODE[cfg["split"]], _TRACK_CODE[cfg["track"]], i]


def _write_png(path: Path, arr: np.ndarray) -> None:
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr, [cv2.IMWRITE_PNG_COMPRESSION, 3])
    if not ok:
        raise SyntheticWorldError(f"could not encode {path.name} as PNG")
    path.write_bytes(buf.tobytes())


def _read_config(track_dir: Path) -> dict | None:
    try:
        meta = json.loads((track_dir / "world.json").read_text())
        return meta.get("config")
    except (OSError, ValueError, AttributeError):
        return None


def _complete(track_dir: Path, cfg: dict) -> bool:
    if _read_config(track_dir) != cfg:
        return False
    for fid in frame_ids(cfg["split"], cfg["n_frames"]):
        if not (track_dir / "images" / f"{fid}.png").is_file():
            return False
        if not (track_dir / "labels_masks" / f"{fid}_labels_semantic.png").is_file():
            return False
    return True


def ensure_world(root: os.PathLike | str | None = None, *, split: str = "test", track: str = "anomaly",
                 n_frames: int | None = None, size: Sequence[int] | None = None, seed: int = 0) -> Path:
    """Return the track folder of the synthetic world, generating it if needed.

    Generation is deterministic for ``(seed, split, track, n_frames, size)``, cached
    (nothing is written when ``world.json`` matches the requested config and every
    frame is present) and atomic (frames are written to a temporary folder next to the
    target and renamed into place, so a reader never sees a half-written world; a
    concurrent generator of the same config simply reuses the winner's folder).

    Args:
        root: world root; default :func:`default_root` (``$POSTHOC_SYNTHETIC_ROOT`` or
            ``~/.cache/posthoc/synthetic``), where a non-default size or frame count gets
            its own ``custom-<hash>`` sub-root (see :func:`world_root`).
        split: ``"train"`` (no anomalies), ``"val"`` or ``"test"``.
        track: ``"anomaly"`` or ``"obstacle"``.
        n_frames: number of frames; default ``DEFAULT.n_frames[split]``.
        size: (H, W); default ``DEFAULT.size``.
        seed: non-negative int.

    Returns:
        ``<root>/<split>/dataset_AnomalyTrack`` or ``.../dataset_ObstacleTrack``.
    """
    cfg = world_config(split=split, track=track, n_frames=n_frames, size=size, seed=seed)
    root = world_root(root, cfg)
    parent = root / split
    target = parent / TRACK_DIRS[track]
    if _complete(target, cfg):
        return target
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{TRACK_DIRS[track]}-", dir=parent))
    try:
        (tmp / "images").mkdir()
        (tmp / "labels_masks").mkdir()
        ids = frame_ids(split, cfg["n_frames"])
        digest = hashlib.sha256()
        log.info("generating synthetic world %s/%s: %d frames at %dx%d (seed %d) in %s",
                 split, track, len(ids), cfg["size"][0], cfg["size"][1], seed, target)
        for i, fid in enumerate(ids):
            fr = render_frame(_frame_seed(cfg, i), cfg["size"], track=track, anomalies=cfg["anomalies"])
            _write_png(tmp / "images" / f"{fid}.png", fr.image)
            _write_png(tmp / "labels_masks" / f"{fid}_labels_semantic.png", fr.semantic)
            _write_png(tmp / "labels_masks" / f"{fid}_labels_classes.png", fr.classes)
            digest.update(fr.image.tobytes())
            digest.update(fr.semantic.tobytes())
        meta = {
            "config": cfg,
            "class_names": list(CLASS_NAMES),
            "stuff_ids": list(STUFF_IDS),
            "thing_ids": list(THING_IDS),
            "labels": {"in_distribution": 0, "anomaly": ANOMALY, "void": VOID},
            "void": "ego-vehicle hood" if track == "anomaly" else "everything but the road (and obstacles)",
            "seed": cfg["seed"],
            "ids": ids,
            "content_sha256": digest.hexdigest(),
        }
        (tmp / "world.json").write_text(json.dumps(meta, indent=1))
        # atomic swap: move any stale folder away, rename ours into place
        if _complete(target, cfg):  # a concurrent generator of the same config finished first
            return target
        if target.exists():
            stale = parent / f".stale-{TRACK_DIRS[track]}-{uuid.uuid4().hex[:8]}"
            try:
                os.replace(target, stale)
            except OSError:
                stale = None
            else:
                shutil.rmtree(stale, ignore_errors=True)
        try:
            os.replace(tmp, target)
        except OSError:
            # another process won the race; use its folder if it matches
            if _complete(target, cfg):
                return target
            raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target


def _read_png(path: Path, color: bool) -> np.ndarray:
    arr = cv2.imread(str(path), cv2.IMREAD_COLOR if color else cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise SyntheticWorldError(f"could not read {path} (missing or not a PNG)")
    return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB) if color else arr


def load_frame(track_dir: os.PathLike | str, frame_id: str) -> Frame:
    """Read one frame of a generated world folder back as a :class:`Frame`."""
    d = Path(track_dir)
    return Frame(
        _read_png(d / "images" / f"{frame_id}.png", True),
        _read_png(d / "labels_masks" / f"{frame_id}_labels_semantic.png", False),
        _read_png(d / "labels_masks" / f"{frame_id}_labels_classes.png", False),
    )


def iter_frames(track_dir: os.PathLike | str) -> Iterator[tuple[str, Frame]]:
    """Yield ``(id, Frame)`` for every frame listed in ``world.json`` of a generated folder."""
    d = Path(track_dir)
    try:
        meta = json.loads((d / "world.json").read_text())
        ids = list(meta["ids"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SyntheticWorldError(
            f"{d} is not a synthetic world folder: expected world.json with an 'ids' list "
            f"next to images/ and labels_masks/ ({type(e).__name__}: {e})"
        ) from None
    for fid in ids:
        yield fid, load_frame(d, fid)
