"""Speed of the ``superpixels`` proposal source per implementation: OpenCV-contrib ximgproc against skimage.

    posthoc-bench speed-superpixels
    posthoc-bench speed-superpixels --sizes 256x512 1024x2048 --repeat 5 --json sp.json

Each row times ``get_proposals("superpixels", method=..., impl=...)`` on one (1,H,W,3) uint8
frame, end to end as the benchmark calls it (downscale to ``max_side``, segment, nearest
upsampling, relabelling), best of ``--repeat`` rounds that run every row once in turn (a burst
of load from other jobs hits every row alike). The frame is procedural and deterministic: 40
flat-coloured blobs on a smooth two-colour gradient plus mild noise, a stand-in for a road
scene. ``--max-side none`` segments at full resolution instead of the default 512. Rows: SLIC
(skimage, the reference; ximgproc, the default), SEEDS and LSC (ximgproc), Felzenszwalb
(skimage). Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Sequence

import numpy as np

__all__ = ["ROWS", "main", "make_frame"]

#: (method, impl) rows, the reference first
ROWS = (("slic", "skimage"), ("slic", "ximgproc"), ("seeds", "ximgproc"), ("lsc", "ximgproc"),
        ("felzenszwalb", "skimage"))


def make_frame(h: int, w: int, seed: int = 0) -> np.ndarray:
    """(1,h,w,3) uint8: 40 flat-coloured ellipses on a smooth gradient, plus noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    img = np.stack([0.3 + 0.4 * yy / h, 0.5 - 0.2 * xx / w, 0.4 + 0.1 * np.sin(xx / max(1, w) * 6)], -1)
    for _ in range(40):
        cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        ry, rx = rng.uniform(0.02, 0.15) * h, rng.uniform(0.02, 0.15) * w
        img[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1] = rng.uniform(0, 1, 3)
    img += rng.normal(0, 0.02, img.shape).astype(np.float32)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8)[None]


def _parse_size(s: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be HxW, e.g. 256x512; got {s!r}") from None
    if h < 8 or w < 8:
        raise argparse.ArgumentTypeError(f"size must be at least 8x8; got {s!r}")
    return h, w


def _parse_max_side(s: str) -> int | None:
    if s.lower() == "none":
        return None
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--max-side must be an integer >= 8 or 'none'; got {s!r}") from None
    if v < 8:
        raise argparse.ArgumentTypeError(f"--max-side must be an integer >= 8 or 'none'; got {s!r}")
    return v


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="posthoc-bench speed-superpixels", description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=_parse_size, nargs="+", default=[(256, 512), (1024, 2048)],
                    help="frame sizes HxW (default 256x512 1024x2048)")
    ap.add_argument("--max-side", type=_parse_max_side, default=512,
                    help="longer side the frame is segmented at (default 512, the source's default; 'none' = full)")
    ap.add_argument("--n-segments", type=int, default=200, help="superpixels asked for (default 200)")
    ap.add_argument("--repeat", type=int, default=5, help="best of this many rounds (default 5)")
    ap.add_argument("--json", help="also write the figures to this JSON file")
    args = ap.parse_args(argv)
    if args.repeat < 1 or args.n_segments < 1:
        print("error: --repeat and --n-segments must be >= 1", file=sys.stderr)
        return 2

    import cv2

    from posthoc.adapters import get_proposals
    from posthoc.adapters.proposals_superpixels import ximgproc_available

    rows = [r for r in ROWS if r[1] == "skimage" or ximgproc_available()]
    if len(rows) < len(ROWS):
        print("note: cv2.ximgproc is missing (pip install opencv-contrib-python-headless): skimage rows only",
              file=sys.stderr)
    srcs = {r: get_proposals("superpixels", method=r[0], impl=r[1], n_segments=args.n_segments,
                             max_side=args.max_side) for r in rows}
    res: dict = {"max_side": args.max_side, "n_segments": args.n_segments, "repeat": args.repeat,
                 "cv2": cv2.__version__, "python": platform.python_version(), "sizes": []}
    print(f"superpixels, one frame per call, max_side={args.max_side}, n_segments={args.n_segments}, "
          f"best of {args.repeat}; cv2 {cv2.__version__}")
    print(f"{'size':>10} {'method':>13} {'impl':>9} {'ms/frame':>9} {'vs skimage SLIC':>16} {'regions':>8}")
    for h, w in args.sizes:
        frame = make_frame(h, w)
        for s in srcs.values():  # warm-up (imports, first-call allocations)
            s(make_frame(32, 64))
        best = dict.fromkeys(rows, float("inf"))
        regions = {}
        for _ in range(args.repeat):
            for r, s in srcs.items():
                t0 = time.perf_counter()
                lab = s(frame).labels
                best[r] = min(best[r], time.perf_counter() - t0)
                regions[r] = int(lab.max()) + 1
        ref = best.get(("slic", "skimage"))
        entry: dict = {"size": [h, w], "rows": []}
        for r in rows:
            ms = best[r] * 1e3
            rel = ref / best[r] if ref else None
            entry["rows"].append({"method": r[0], "impl": r[1], "ms": ms, "speedup_vs_skimage_slic": rel,
                                  "regions": regions[r]})
            rel_s = f"{rel:15.2f}x" if rel else f"{'-':>16}"
            print(f"{f'{h}x{w}':>10} {r[0]:>13} {r[1]:>9} {ms:9.1f} {rel_s} {regions[r]:8d}")
        res["sizes"].append(entry)
    if args.json:
        from posthoc.adapters.io import write_json_atomic

        write_json_atomic(args.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
