"""Target domains of the synthetic world, for the domain-adaptation track.

A domain changes the *appearance* of a frame after it is rendered (the scene, its classes
and its labels are drawn the same way as in the source world, from other seeds), the way
ACDC and Dark Zurich change Cityscapes: the bundled segmentation net, trained on the source
domain, meets the same classes under another look.

* ``night``: exposure cut to 30-45 %, a blue-grey tint, lifted shadows (gamma 1.3-1.6),
  stronger sensor noise, and a few warm street-light glows.
* ``fog``: a depth-like blend towards a light grey veil, strongest at the horizon band and
  above, plus a slight blur (contrast loss).
* ``rain``: darker, desaturated, bluish frames with semi-transparent rain streaks and blur.
"""
from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

__all__ = ["DOMAINS", "apply_domain"]

DOMAINS = ("night", "fog", "rain")


def apply_domain(image: np.ndarray, seed: Sequence[int], domain: str) -> np.ndarray:
    """(H,W,3) uint8 RGB -> a new (H,W,3) uint8 RGB frame of ``domain`` (deterministic for ``seed``)."""
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {list(DOMAINS)}; got {domain!r}")
    rng = np.random.default_rng([*seed, 77])
    h, w = image.shape[:2]
    img = image.astype(np.float32) / 255.0
    rows = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    if domain == "night":
        img = img * rng.uniform(0.45, 0.6) * np.array([0.8, 0.9, 1.15], np.float32)
        img = np.clip(img, 0, 1) ** rng.uniform(1.15, 1.35)
        glow: np.ndarray = np.zeros((h, w), np.float32)
        for _ in range(int(rng.integers(2, 6))):
            cv2.circle(glow, (int(rng.uniform(0, w)), int(rng.uniform(0.1, 0.6) * h)), max(2, h // 40), 1.0, -1)
        glow = cv2.GaussianBlur(glow, (0, 0), max(2.0, h / 25))
        img = img + glow[..., None] * np.array([0.9, 0.7, 0.4], np.float32) * rng.uniform(0.4, 0.9)
        img = img + rng.standard_normal(img.shape, dtype=np.float32) * rng.uniform(0.02, 0.04)
    elif domain == "fog":
        horizon = rng.uniform(0.36, 0.48)
        depth = np.clip(1.0 - np.abs(rows - horizon) / 0.6, 0, 1) ** 0.7
        density = rng.uniform(0.3, 0.45)
        veil = np.array([0.78, 0.79, 0.8], np.float32) * rng.uniform(0.9, 1.05)
        t = depth * density + 0.05
        img = img * (1 - t) + veil * t
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.8, 1.4))
    else:  # rain
        grey = img.mean(2, keepdims=True)
        img = (0.5 * img + 0.5 * grey) * rng.uniform(0.6, 0.8) * np.array([0.9, 0.95, 1.1], np.float32)
        streaks = np.zeros((h, w), np.float32)
        ang = rng.uniform(-0.3, 0.3)
        for _ in range(int(h * w / 600)):
            x, y = rng.uniform(0, w), rng.uniform(0, h)
            ln = rng.uniform(0.03, 0.08) * h
            cv2.line(streaks, (int(x), int(y)), (int(x + ang * ln), int(y + ln)), 1.0, 1)
        img = img * (1 - 0.35 * streaks[..., None]) + 0.35 * streaks[..., None] * 0.85
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.7, 1.2))
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)
