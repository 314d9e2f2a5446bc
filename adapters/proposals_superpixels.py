"""The ``superpixels`` proposal source: SLIC, SEEDS, LSC or Felzenszwalb segments as hard proposals.

Two implementations (``impl``):

* ``"ximgproc"``: OpenCV-contrib's compiled ``cv2.ximgproc`` (``createSuperpixelSLIC``,
  ``createSuperpixelSEEDS``, ``createSuperpixelLSC``). It is the default (``impl="auto"``) for
  SLIC, SEEDS and LSC. ``cv2.ximgproc`` ships only in ``opencv-contrib-python-headless``, which
  posthoc depends on instead of ``opencv-python-headless`` (the two install the same ``cv2``
  package, so an environment with both is broken).
* ``"skimage"``: scikit-image's ``slic`` / ``felzenszwalb``, the reference, and the only one for
  Felzenszwalb.

``impl="auto"`` never changes its answer with the environment: where ``cv2.ximgproc`` is missing
it raises :class:`posthoc.MissingExtraError` naming the package to install (or
``impl="skimage"``), instead of silently giving other segments. The resolved implementation and
every setting are in ``Proposals.meta`` and in :meth:`SuperpixelProposals.settings`, which the
benchmark's cache key records, so a cache made with one implementation is never served for the
other.

Parameter mapping for SLIC (scikit-image ``slic`` -> ``cv2.ximgproc.createSuperpixelSLIC``);
both follow Achanta et al. 2012, D = sqrt(d_lab^2 + (d_xy / S)^2 m^2):

================================ ===========================================================
colour space                     CIELAB in both (skimage ``rgb2lab``; ``cv2.COLOR_RGB2LAB`` on
                                 float32 RGB in [0,1]: L in [0,100], as skimage's)
``sigma`` (Gaussian pre-smooth)  ``cv2.GaussianBlur`` of the Lab image with the same sigma,
                                 reflect border, radius 4 sigma (skimage smooths the Lab image
                                 with ``mode="reflect"``, ``truncate=4``)
``n_segments``                   ``region_size`` S = round(sqrt(h * w / n_segments)) (skimage's
                                 grid step for a 2-D image), clamped to [1, min(h, w)]
``compactness`` m                ``ruler`` = m
``max_num_iter=10``              ``iterate(10)``
``enforce_connectivity``,        ``enforceLabelConnectivity(50)``: segments under 50 % of the
``min_size_factor=0.5``          mean superpixel size are merged into a neighbour (OpenCV's
                                 default is 25 %); OpenCV has no ``max_size_factor``
================================ ===========================================================

The two are different code (seeding, the search window and the connectivity pass differ), so
their segments differ; docs/proposals.md reports both, their speed and their effect on the
benchmark. SEEDS (Van den Bergh et al. 2012) takes ``n_segments`` superpixels (clamped so that
its seed blocks are 2 px to a third of the shorter side wide, outside which OpenCV crashes; it
needs both sides >= 8 px), 4 block levels, prior 2, 5 histogram bins per channel of the 8-bit Lab
image and 10 iterations; LSC (Li & Chen 2015) takes ``region_size`` as SLIC's (at most half the
width) and ``ratio = compactness / 100``, smoothing as SLIC.
"""
from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from posthoc.errors import MissingExtraError, ShapeError, ValueRangeError
from posthoc.types import Proposals, TeacherOutput

from ._proposal_common import _images, _to_uint8_hwc
from .base import ProposalSource
from .registry import register_proposals

log = logging.getLogger(__name__)

__all__ = ["IMPLS", "METHODS", "SuperpixelProposals", "ximgproc_available"]

#: methods and the implementations that have them
METHODS = {"slic": ("ximgproc", "skimage"), "seeds": ("ximgproc",), "lsc": ("ximgproc",),
           "felzenszwalb": ("skimage",)}
IMPLS = ("auto", "ximgproc", "skimage")
#: OpenCV's enforceLabelConnectivity threshold, in percent of the mean superpixel size (skimage's
#: min_size_factor=0.5)
_MIN_ELEMENT_PERCENT = 50
_ITERATIONS = 10  # skimage's max_num_iter default; OpenCV's iterate() default too

_INSTALL = ("`pip uninstall -y opencv-python-headless && pip install opencv-contrib-python-headless` "
            "(both install `cv2`, so they cannot be installed together)")


def ximgproc_available() -> bool:
    """Whether ``cv2.ximgproc`` (opencv-contrib) can be imported."""
    try:
        import cv2
    except ImportError:  # pragma: no cover - opencv is a core dependency
        return False
    return getattr(cv2, "ximgproc", None) is not None


def _ximgproc(why: str):
    """``cv2.ximgproc``, or MissingExtraError naming the package that provides it."""
    import cv2

    xi = getattr(cv2, "ximgproc", None)
    if xi is None:
        raise MissingExtraError(
            f"{why} needs OpenCV's contrib module cv2.ximgproc, which this environment lacks "
            f"(cv2 {cv2.__version__} from opencv-python-headless?): {_INSTALL}; or pass impl='skimage' "
            "(posthoc-bench: --superpixels-impl skimage) for scikit-image's reference implementation"
        )
    return xi


@contextlib.contextmanager
def _single_cv2_thread() -> Iterator[None]:
    """Run OpenCV on one thread, then restore its setting. ximgproc's LSC races when threaded (its
    labels change from call to call) and SLIC updates its centres with a parallel float
    reduction, whose summation order may follow the threads; one thread makes both
    deterministic and, on a 2-core machine, costs no time (SLIC spawns one parallel loop per
    superpixel and iteration, too small to gain)."""
    import cv2

    n = cv2.getNumThreads()
    cv2.setNumThreads(1)
    try:
        yield
    finally:
        cv2.setNumThreads(n)


def _relabel(lab: np.ndarray) -> np.ndarray:
    """Non-negative integer labels -> int64 labels 0..M-1, order kept (= np.unique's inverse)."""
    lab = np.ascontiguousarray(lab)
    present = np.bincount(lab.ravel()) > 0
    lut = np.cumsum(present) - 1
    return lut[lab].astype(np.int64, copy=False)


@register_proposals("superpixels")
class SuperpixelProposals(ProposalSource):
    """SLIC, SEEDS, LSC or Felzenszwalb superpixels as hard proposals; needs no weights.

    Each image is downscaled (area interpolation) so its longer side is at most ``max_side``
    pixels, segmented, and the labels are upsampled back with nearest neighbour, which keeps
    512x1024 frames fast. Every pixel gets a label: ``labels`` is (B,H,W) int64 with ids 0..M-1
    per image (contiguous, no -1). SLIC and LSC enforce connectivity, Felzenszwalb segments are
    connected by construction, SEEDS segments may not be. The module docstring maps the SLIC
    settings between the two implementations.

    Args:
        method: "slic" (Achanta et al. 2012), "seeds" (Van den Bergh et al. 2012), "lsc" (Li &
            Chen 2015; these two ximgproc only) or "felzenszwalb" (Felzenszwalb & Huttenlocher
            2004; skimage only).
        n_segments: wanted number of superpixels (SLIC, SEEDS, LSC; default 200).
        compactness: SLIC's m (OpenCV's ruler; LSC's ratio is ``compactness / 100``), > 0.
        sigma: Gaussian pre-smoothing, >= 0 (default 1.0; 0.8 for Felzenszwalb; SEEDS none).
        scale, min_size: Felzenszwalb settings.
        max_side: longer side the image is segmented at (None = full resolution).
        impl: "auto" (default: "ximgproc" for slic/seeds/lsc, "skimage" for felzenszwalb; a
            missing ``cv2.ximgproc`` is an error, never a silent switch), "ximgproc" or "skimage".

    Raises:
        ValueRangeError: unknown method or impl, a method the impl does not have, or a setting
            out of range.
        MissingExtraError: the chosen implementation needs ``cv2.ximgproc`` and it is missing.
    """

    uses_teacher_output = False  # image-only: the benchmark may share them between teachers

    def __init__(self, method: str = "slic", *, n_segments: int = 200, compactness: float = 10.0,
                 sigma: float | None = None, scale: float = 100.0, min_size: int = 50,
                 max_side: int | None = 512, weights: Any = None, impl: str = "auto") -> None:
        if method not in METHODS:
            raise ValueRangeError(f"method must be one of {', '.join(map(repr, METHODS))}; got {method!r}")
        if impl not in IMPLS:
            raise ValueRangeError(f"impl must be one of {', '.join(map(repr, IMPLS))}; got {impl!r}")
        if impl != "auto" and impl not in METHODS[method]:
            lib = "OpenCV-contrib (impl='ximgproc')" if impl == "skimage" else "scikit-image (impl='skimage')"
            raise ValueRangeError(f"method {method!r} exists only in {lib}; got impl={impl!r}")
        if weights is not None:
            raise ValueRangeError("the superpixels source takes no weights")
        if isinstance(n_segments, bool) or not isinstance(n_segments, (int, np.integer)) or n_segments < 1:
            raise ValueRangeError(f"n_segments must be an integer >= 1; got {n_segments!r}")
        if max_side is not None and (isinstance(max_side, bool) or not isinstance(max_side, (int, np.integer))
                                     or max_side < 8):
            raise ValueRangeError(f"max_side must be None or an integer >= 8; got {max_side!r}")
        for name, v in (("compactness", compactness), ("scale", scale)):
            if not isinstance(v, (int, float, np.number)) or not math.isfinite(float(v)) or float(v) <= 0:
                raise ValueRangeError(f"{name} must be a finite number > 0; got {v!r}")
        if sigma is not None and (not isinstance(sigma, (int, float, np.number)) or not math.isfinite(float(sigma))
                                  or float(sigma) < 0):
            raise ValueRangeError(f"sigma must be None or a finite number >= 0; got {sigma!r}")
        if isinstance(min_size, bool) or not isinstance(min_size, (int, np.integer)) or min_size < 0:
            raise ValueRangeError(f"min_size must be an integer >= 0; got {min_size!r}")
        self.impl_requested = impl
        self.impl = METHODS[method][0] if impl == "auto" else impl
        if self.impl == "ximgproc":  # fail at construction, not on the first frame
            _ximgproc(f"superpixels method={method!r} impl={impl!r}")
        self.method = method
        self.n_segments, self.compactness = int(n_segments), float(compactness)
        self.sigma = (0.8 if method == "felzenszwalb" else 1.0) if sigma is None else float(sigma)
        self.scale, self.min_size = float(scale), int(min_size)
        self.max_side = None if max_side is None else int(max_side)

    def settings(self) -> dict:
        """Everything that decides the labels (the resolved ``impl`` included), for cache keys."""
        out = {"method": self.method, "impl": self.impl, "n_segments": self.n_segments,
               "compactness": self.compactness, "sigma": self.sigma, "scale": self.scale,
               "min_size": self.min_size, "max_side": self.max_side}
        if self.impl == "ximgproc":
            out.update(iterations=_ITERATIONS, min_element_percent=_MIN_ELEMENT_PERCENT)
        return out

    def _region_size(self, h: int, w: int) -> int:
        """Grid step S = round(sqrt(h*w/n_segments)), clamped to what OpenCV handles: SLIC
        crashes for S > min(h,w) and LSC for fewer than two seed columns (S > w/2)."""
        s = int(round(math.sqrt(h * w / self.n_segments)))
        top = min(h, w) if self.method == "slic" else min(h, w // 2)
        return max(1, min(s, top))

    def _seeds_count(self, h: int, w: int) -> int:
        """``n_segments`` clamped to what OpenCV's SEEDS handles (it crashes or hangs outside):
        seed blocks of side sqrt(h*w/n) between 2 px and a third of the shorter side."""
        m = min(h, w)
        if m < 8:
            raise ShapeError(f"superpixels method='seeds' needs both sides of the segmented image >= 8 px; "
                             f"got {h}x{w} (use method='slic' for smaller images)")
        return min(max(self.n_segments, math.ceil(9 * h * w / (m * m))), h * w // 4)

    def _segment_ximgproc(self, img: np.ndarray, u8: np.ndarray) -> np.ndarray:
        """(h,w,3) float32 RGB in [0,1] (and the same as uint8) -> (h,w) int32 labels with cv2.ximgproc."""
        import cv2

        xi = _ximgproc(f"superpixels method={self.method!r}")
        h, w = img.shape[:2]
        if self.method == "seeds":  # SEEDS histograms 8-bit channels
            lab8 = np.ascontiguousarray(cv2.cvtColor(np.ascontiguousarray(u8), cv2.COLOR_RGB2LAB))
            seeds = xi.createSuperpixelSEEDS(w, h, 3, self._seeds_count(h, w), 4, 2, 5, False)
            seeds.iterate(lab8, _ITERATIONS)
            return seeds.getLabels()
        lab = cv2.cvtColor(img, cv2.COLOR_RGB2LAB)  # skimage: rgb2lab first, then the Gaussian
        if self.sigma > 0:
            lab = cv2.GaussianBlur(lab, (0, 0), self.sigma, borderType=cv2.BORDER_REFLECT)
        step = self._region_size(h, w)
        if self.method == "lsc":
            sp = xi.createSuperpixelLSC(lab, region_size=step, ratio=self.compactness / 100.0)
        else:
            sp = xi.createSuperpixelSLIC(lab, algorithm=xi.SLIC, region_size=step, ruler=self.compactness)
        sp.iterate(_ITERATIONS)
        sp.enforceLabelConnectivity(_MIN_ELEMENT_PERCENT)
        return sp.getLabels()

    def _segment_skimage(self, img: np.ndarray) -> np.ndarray:
        from skimage import segmentation

        if self.method == "slic":
            return segmentation.slic(img, n_segments=self.n_segments, compactness=self.compactness, sigma=self.sigma,
                                     start_label=0, channel_axis=-1)
        return segmentation.felzenszwalb(img, scale=self.scale, sigma=self.sigma, min_size=self.min_size,
                                         channel_axis=-1)

    def segment(self, image: np.ndarray) -> np.ndarray:
        """One (H,W,3) uint8 RGB image -> (H,W) int64 labels 0..M-1 (contiguous, every pixel assigned)."""
        return self._segment(image).astype(np.int64)

    def _segment(self, image: np.ndarray) -> np.ndarray:
        """:meth:`segment` as int32 (the labels are made contiguous before upsampling)."""
        import cv2

        H, W = image.shape[:2]
        s = 1.0 if self.max_side is None else min(1.0, self.max_side / max(H, W))
        small = image
        if s < 1.0:
            small = cv2.resize(image, (max(1, round(W * s)), max(1, round(H * s))), interpolation=cv2.INTER_AREA)
        img = small.astype(np.float32) / 255.0
        if self.impl == "ximgproc":
            with _single_cv2_thread():
                lab = self._segment_ximgproc(img, small)
        else:
            lab = self._segment_skimage(img)
        lab = _relabel(lab).astype(np.int32)
        if lab.shape != (H, W):
            # nearest-neighbour upscaling hits every source pixel (dst >= src on both axes), so the
            # labels stay 0..M-1 without a second relabelling at full resolution
            lab = cv2.resize(lab, (W, H), interpolation=cv2.INTER_NEAREST)
        return lab

    def __call__(self, images: Any, teacher_output: TeacherOutput | None = None) -> Proposals:
        """(B,H,W,3) uint8 or (B,3,H,W) float [0,1] RGB images -> Proposals with (B,H,W) int64 labels."""
        if ((isinstance(images, np.ndarray) and images.dtype == np.uint8)
                or (isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.device.type == "cpu")) \
                and images.ndim == 4 and images.shape[-1] == 3:
            u8 = np.asarray(images)  # uint8 (B,H,W,3) on the CPU already: no float round trip
        else:
            u8 = _to_uint8_hwc(_images(images))  # checks the layout and range (exact for uint8 input)
        B, H, W = u8.shape[:3]
        labels = np.empty((B, H, W), np.int64)
        for b in range(B):
            labels[b] = self._segment(u8[b])
        meta = {"source": "superpixels", **self.settings()}
        return Proposals(labels=torch.from_numpy(labels), meta=meta, labels_final=True)
