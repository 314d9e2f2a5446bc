"""The in-distribution scene of the synthetic road world: class taxonomy, drawing and shading.

Scenes are drawn with a pinhole-like perspective: a road trapezoid converging to a
vanishing point on the horizon, sidewalks, facades whose height scales with their
distance to the horizon line, walls, fences, poles with traffic signs and lights,
trees, terrain, sky, cars and people (:func:`render_scene`). Appearance varies per frame
(palette jitter, low- and high-frequency textures, cast shadows, haze; :func:`shade`)
so that a small network makes genuine mistakes.

Both functions draw from the ``rng`` they are given, in a fixed order: the frames of
:func:`posthoc.bench.synthetic.render_frame` depend on it, so any change here that
alters the draws changes every frame (bump ``GENERATOR_VERSION`` in
:mod:`posthoc.bench.synthetic` then).
"""
from __future__ import annotations

from functools import lru_cache

import cv2
import numpy as np

__all__ = [
    "ANOMALY",
    "CLASS_NAMES",
    "STUFF_IDS",
    "THING_IDS",
    "VOID",
    "Canvas",
    "render_scene",
    "shade",
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


class Canvas:
    """Class map plus a per-primitive colour-table index, drawn with the painter's algorithm."""

    def __init__(self, h: int, w: int):
        self.h, self.w = h, w
        self.cls = np.full((h, w), SKY, np.uint8)
        self.col = np.zeros((h, w), np.int32)
        self.rgb: list[np.ndarray] = [np.zeros(3, np.float32)]
        self.amp: list[tuple[float, float]] = [(0.0, 0.0)]
        self._m = np.zeros((h, w), np.uint8)
        # instance id of every pixel (0 = none): each car and person drawn gets its own id
        self.inst = np.zeros((h, w), np.int32)
        self.cur_inst = 0

    def colour(self, rgb, lf: float = 0.08, hf: float = 0.04) -> int:
        self.rgb.append(np.clip(np.asarray(rgb, np.float32), 0, 255))
        self.amp.append((lf, hf))
        return len(self.rgb) - 1

    def _apply(self, cls: int, col: int) -> None:
        m = self._m.view(bool)
        self.cls[m] = cls
        self.col[m] = col
        self.inst[m] = self.cur_inst
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


def render_scene(rng: np.random.Generator, h: int, w: int):
    """Draw the in-distribution scene; returns (canvas, geometry dict)."""
    cv_ = Canvas(h, w)
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
        cv_.poly(list(zip(xs, top, strict=False)) + [(w + 1, yh + 1), (-1, yh + 1)], VEG, vcol)

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
                cv_.poly(list(zip(xs, np.minimum(bottom, h + 1), strict=False))
                         + list(zip(xs[::-1], top[::-1], strict=False)), BUILDING, bcol)
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
                cv_.poly(list(zip(xs, np.minimum(bottom, h + 1), strict=False))
                         + list(zip(xs[::-1], top[::-1], strict=False)), VEG, hcol)
            # a low wall or fence in front of part of the facades
            if rng.random() < 0.25:
                fence = rng.random() < 0.5
                f = rng.uniform(0.2, 0.5)
                top = bottom - f * (bottom - yh)
                fc = cv_.colour(_jit(rng, [150, 150, 140] if not fence else [110, 105, 95], 15), 0.1, 0.05)
                pts = (list(zip(xs, np.minimum(bottom, h + 1), strict=False))
                       + list(zip(xs[::-1], top[::-1], strict=False)))
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
    for n_thing, (kind, y) in enumerate(things, 1):
        cv_.cur_inst = n_thing
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

    cv_.cur_inst = 0
    # --- ego-vehicle hood: void
    if ego < h:
        hood = cv_.colour(_jit(rng, [40, 40, 45], 10), 0.05, 0.02)
        xs = np.linspace(-1, w + 1, 16)
        ys = ego + (h - ego) * 0.6 * ((xs - w / 2) / (w / 2)) ** 2
        cv_.poly(list(zip(xs, ys, strict=False)) + [(w + 1, h + 1), (-1, h + 1)], VOID, hood)

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


def shade(rng: np.random.Generator, cv_: Canvas, geo: dict) -> np.ndarray:
    """Turn the colour-index map into a float32 RGB image (textures, sky gradient, shadows, haze)."""
    h, w = cv_.h, cv_.w
    rgb = np.stack(cv_.rgb).astype(np.float32)
    amp = np.asarray(cv_.amp, np.float32)
    lf = _noise(rng, h, w, 12)
    hf: np.ndarray = rng.standard_normal((h, w), dtype=np.float32)
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
