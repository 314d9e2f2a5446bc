"""Rendering one synthetic road frame: scene, pasted anomalies, photometry and label maps.

The in-distribution scene comes from :mod:`posthoc.bench.synthetic_scene`. Anomalies are
pasted the AnomalyMix way (Tian et al., "Pixel-wise energy-biased abstention learning for
anomaly segmentation on complex urban driving scenes", ECCV 2022): objects cut out of
other photographs (here: the real photographs that ship with scikit-image,
``skimage.data``) with an ellipse / polygon / threshold cut-out, at a random scale and
position consistent with the scene's perspective. Some are recoloured towards
in-distribution colours (road grey, car paint, foliage) so that colour alone does not
give them away. In the obstacle track, small objects lie on the road. A global
photometric step (exposure, tint, gamma, blur, sensor noise) follows.

:func:`render_frame` returns the one frame type of the benchmark,
:class:`posthoc.bench.datasets.Frame`. Writing frames to a world folder is
:mod:`posthoc.bench.synthetic`'s job; import everything from there.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache

import cv2
import numpy as np

from posthoc.errors import PosthocError, ShapeError

from .datasets import Frame
from .synthetic_scene import ANOMALY, ROAD, SIDEWALK, TERRAIN, THING_IDS, VOID, render_scene, shade

__all__ = [
    "DEFAULT",
    "TRACKS",
    "Frame",
    "SyntheticWorldError",
    "WorldDefaults",
    "check_size",
    "check_track",
    "render_frame",
]

#: the two SMIYC tracks a frame can be rendered for
TRACKS = ("anomaly", "obstacle")


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
    alpha: np.ndarray = np.zeros((h, w), np.uint8)
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
    a: np.ndarray = alpha.astype(np.float32)
    if min(h, w) >= 12:  # slightly soft edge, as a real paste has
        a = cv2.GaussianBlur(a, (3, 3), 0.7)
    return crop, a


# ----------------------------------------------------------------------------- frame


def check_size(size) -> tuple[int, int]:
    """``(H, W)`` as two ints, each >= 16, or :class:`~posthoc.errors.ShapeError`."""
    try:
        h, w = (int(s) for s in size)
    except (TypeError, ValueError):
        raise ShapeError(f"size must be (H, W) with two positive ints; got {size!r}") from None
    if h < 16 or w < 16:
        raise ShapeError(f"size must be at least (16, 16); got ({h}, {w})")
    return h, w


def check_track(track: str) -> str:
    """``track`` if it is one of :data:`TRACKS`, else :class:`SyntheticWorldError`."""
    if track not in TRACKS:
        raise SyntheticWorldError(f"track must be one of {sorted(TRACKS)}; got {track!r}")
    return track


def render_frame(seed: int | Sequence[int] | np.random.Generator, size: Sequence[int] = DEFAULT.size, *,
                 track: str = "anomaly", anomalies: bool = True, instances: bool = False) -> Frame:
    """Render one synthetic road frame.

    Args:
        seed: an int, a sequence of ints (a numpy ``SeedSequence`` entropy) or a Generator.
            The same seed and size give identical arrays.
        size: (H, W) of the frame, each >= 16.
        track: ``"anomaly"`` (1-3 objects of any size anywhere on the ground, void = the
            ego-vehicle hood) or ``"obstacle"`` (1-3 small objects lying on the road, void =
            everything that is not road).
        anomalies: False renders an anomaly-free frame (the "train" split).
        instances: also return the instance GT as ``extras["instances"]`` (H,W) int32: every
            car and person its own id (1..), every anomaly object ``1000 +`` its paste
            order, 0 elsewhere (the arrays and files of the frame are the same either way).

    Returns:
        :class:`posthoc.bench.datasets.Frame` with ``image`` (H,W,3) uint8 RGB, ``label``
        (H,W) uint8 in {0,1,255} (0 in-distribution, 1 anomaly, 255 void), ``classes``
        (H,W) uint8 class indices into ``CLASS_NAMES`` (255 at anomalies and at the
        ego-vehicle hood) and ``id`` ``""`` (a world folder's frames carry their file id).
    """
    h, w = check_size(size)
    check_track(track)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    cv_, geo = render_scene(rng, h, w)
    img = shade(rng, cv_, geo)
    classes = cv_.cls.copy()
    anomaly = np.zeros((h, w), bool)
    anomaly_inst = np.zeros((h, w), np.int32)
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
            anomaly_inst[m] = anomaly_inst.max(initial=0) + 1
    # global photometry: exposure, tint, gamma, blur, sensor noise
    img = img * rng.uniform(0.65, 1.25) * rng.uniform(0.9, 1.1, 3).astype(np.float32)
    img = 255.0 * (np.clip(img, 0, 255) / 255.0) ** rng.uniform(0.8, 1.25)
    img = cv2.GaussianBlur(img.astype(np.float32), (0, 0), rng.uniform(0.3, 0.9))
    img = img + rng.standard_normal((h, w, 3), dtype=np.float32) * rng.uniform(1.5, 6.0)
    image = np.clip(np.round(img), 0, 255).astype(np.uint8)

    void = classes == VOID
    classes[anomaly] = VOID
    label = np.zeros((h, w), np.uint8)
    if track == "obstacle":
        label[cv_.cls != ROAD] = VOID
    label[void] = VOID
    label[anomaly] = ANOMALY
    # instance GT (in extras, not written by the anomaly layout): cars and persons keep their
    # drawing id (1..), anomaly objects are 1000 + their paste order; 0 elsewhere
    extras = {}
    if instances:
        inst = np.where(np.isin(classes, THING_IDS), cv_.inst, 0).astype(np.int32)
        inst[anomaly] = 1000 + anomaly_inst[anomaly]
        extras["instances"] = inst
    return Frame(image=image, label=label, classes=classes, extras=extras)

