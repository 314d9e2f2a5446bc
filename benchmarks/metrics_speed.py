"""Speed of the metric accumulators against pooled scikit-learn, on the same frames in the same run.

    posthoc-bench metrics-speed --frames 10 --out metrics_speed.json
    python -m posthoc.bench.metrics_speed --frames 10

Frames are synthetic 1024x2048 float32 anomaly maps (smooth fields with anomaly blobs, so
nearly every pixel has its own float32 value, as network outputs do) with 0/1/255 labels.
Timed per run, each on all frames:

* ``PixelMetrics(mode="smiyc")`` — ``update`` on every frame + ``compute``;
* ``PixelMetrics(mode="exact")`` — the same;
* ``ComponentMetrics.anomaly_track`` at the smiyc best-F1 threshold — ``update`` + ``compute``;
* (before the timings, the numba radix-sort kernel is compiled or loaded from its cache
  once; that one-time cost is reported as ``warmup_seconds``);
* pooled sklearn — gather the non-void pixels of all frames, then
  ``average_precision_score`` + ``roc_curve`` (+ ``auc``), what research code usually does.

Prints frames per second and the speed-up over sklearn (target >= 10x), and checks that
the exact mode agrees with sklearn. Nothing is downloaded.
"""
from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from posthoc.adapters.io import write_json_atomic

__all__ = ["main", "make_frames", "run"]

log = logging.getLogger(__name__)


def make_frames(n: int, height: int = 1024, width: int = 2048, seed: int = 0,
                dtype: str = "float32") -> list[tuple[np.ndarray, np.ndarray]]:
    """Synthetic (scores (H,W) float in [0,1] of ``dtype``, labels (H,W) uint8 0/1/255) frames."""
    import cv2

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        lab = np.zeros((height, width), np.uint8)
        lab[: height // 8] = 255  # e.g. ego vehicle / sky void band
        for _ in range(int(rng.integers(1, 5))):
            cy, cx = rng.integers(height // 4, height), rng.integers(0, width)
            ry, rx = rng.integers(max(2, height // 64), max(3, height // 8), 2)
            cv2.ellipse(lab, (int(cx), int(cy)), (int(rx), int(ry)), 0, 0, 360, 1, -1)
        coarse = rng.normal(size=(max(2, height // 32), max(2, width // 32))).astype(np.float32)
        field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
        logit = 0.8 * field + 2.5 * (lab == 1) - 2.0 + 0.3 * rng.standard_normal((height, width), np.float32)
        scores = (1.0 / (1.0 + np.exp(-logit))).astype(dtype)
        frames.append((scores, lab))
    return frames


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run(frames: list[tuple[np.ndarray, np.ndarray]], *, sklearn: bool = True) -> dict:
    """Time every accumulator (and pooled sklearn) on ``frames``; return the figures."""
    from posthoc.metrics import ComponentMetrics, PixelMetrics
    from posthoc.metrics.pixel import RADIX_MIN, sort_scores

    # one-time cost, reported apart: compile (or load from numba's cache) the radix-sort kernel
    _, warm = _timed(lambda: sort_scores(np.zeros(RADIX_MIN, np.float32)))
    n = len(frames)
    res: dict = {"warmup_seconds": warm, "frames": n, "height": int(frames[0][0].shape[0]),
                 "width": int(frames[0][0].shape[1]), "dtype": str(frames[0][0].dtype)}

    def pixel(mode: str):
        pm = PixelMetrics(mode=mode)
        for s, lab in frames:
            pm.update(s, lab)
        return pm.compute(), pm.state_nbytes

    for mode in ("smiyc", "exact"):
        (r, nbytes), dt = _timed(lambda m=mode: pixel(m))
        res[f"pixel_{mode}"] = {"seconds": dt, "fps": n / dt, "ap": r["ap"], "auroc": r["auroc"], "fpr95": r["fpr95"],
                                "best_f1_threshold": r["best_f1_threshold"], "state_bytes": int(nbytes)}
    thr = res["pixel_smiyc"]["best_f1_threshold"]

    def component():
        cm = ComponentMetrics.anomaly_track(thr)
        for s, lab in frames:
            cm.update(s, lab)
        return cm.compute()

    r, dt = _timed(component)
    res["component"] = {"seconds": dt, "fps": n / dt, "threshold": thr, "siou_gt": r["siou_gt"], "ppv": r["ppv"],
                        "f1_mean": r["f1_mean"]}

    if sklearn:
        from sklearn.metrics import auc, average_precision_score, roc_curve

        def pooled():
            s = np.concatenate([f[0][f[1] != 255] for f in frames])
            y = np.concatenate([f[1][f[1] != 255] for f in frames]) == 1
            ap = average_precision_score(y, s)
            fpr, tpr, _ = roc_curve(y, s)
            return ap, auc(fpr, tpr)

        (ap, au), dt = _timed(pooled)
        res["sklearn_pooled"] = {"seconds": dt, "fps": n / dt, "ap": float(ap), "auroc": float(au)}
        for key in ("pixel_smiyc", "pixel_exact", "component"):
            res[key]["speedup_vs_sklearn"] = res[key]["fps"] / res["sklearn_pooled"]["fps"]
        res["exact_ap_minus_sklearn"] = res["pixel_exact"]["ap"] - float(ap)
        res["exact_auroc_minus_sklearn"] = res["pixel_exact"]["auroc"] - float(au)
    res["smiyc_ap_minus_exact"] = res["pixel_smiyc"]["ap"] - res["pixel_exact"]["ap"]
    return res


def _environment() -> dict:
    import numpy

    env = {"python": sys.version.split()[0], "numpy": numpy.__version__, "platform": platform.platform(),
           "cpu_count": os.cpu_count()}
    try:
        import sklearn

        env["sklearn"] = sklearn.__version__
    except ImportError:  # pragma: no cover - sklearn is in the [dev] extra
        pass
    try:
        import cv2

        env["opencv"] = cv2.__version__
    except ImportError:  # pragma: no cover
        pass
    return env


def _write_json(path: Path, obj: dict) -> None:
    write_json_atomic(path, obj)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posthoc-bench metrics-speed", description=__doc__.split("\n\n")[0])
    p.add_argument("--frames", type=int, default=10, help="number of frames (default 10)")
    p.add_argument("--height", type=int, default=1024)
    p.add_argument("--width", type=int, default=2048)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dtype", choices=("float32", "float16", "float64"), default="float32",
                   help="score dtype (SMIYC submission files are float16; default float32)")
    p.add_argument("--no-sklearn", action="store_true", help="skip the pooled sklearn baseline")
    p.add_argument("--out", type=Path, default=None, help="write the figures to this JSON file")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``posthoc-bench metrics-speed``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.frames < 1 or args.height < 8 or args.width < 8:
        print(f"error: need --frames >= 1 and a size of at least 8x8; got {args.frames} frames of "
              f"{args.height}x{args.width}", file=sys.stderr)
        return 2
    print(f"generating {args.frames} synthetic {args.dtype} frames of {args.height}x{args.width} ...", flush=True)
    frames = make_frames(args.frames, args.height, args.width, args.seed, args.dtype)
    use_sklearn = not args.no_sklearn
    if use_sklearn:
        try:
            import sklearn  # noqa: F401 - the pooled baseline only; scikit-learn is in the [dev] extra
        except ImportError:
            print("note: scikit-learn is not installed (`pip install 'posthoc[dev]'`); skipping the pooled "
                  "sklearn baseline", file=sys.stderr)
            use_sklearn = False
    res = run(frames, sklearn=use_sklearn)
    res["environment"] = _environment()
    res["command"] = "posthoc-bench metrics-speed " + " ".join(sys.argv[1:] if argv is None else list(argv))

    rows = [("PixelMetrics smiyc", "pixel_smiyc"), ("PixelMetrics exact", "pixel_exact"),
            ("ComponentMetrics (anomaly track)", "component")]
    if "sklearn_pooled" in res:
        rows.append(("sklearn pooled (AP + roc_curve)", "sklearn_pooled"))
    print(f"\n{'accumulator':34s} {'seconds':>9s} {'frames/s':>9s} {'x sklearn':>10s}")
    for name, key in rows:
        r = res[key]
        sp = r.get("speedup_vs_sklearn")
        print(f"{name:34s} {r['seconds']:9.2f} {r['fps']:9.2f} {'' if sp is None else f'{sp:9.1f}x':>10s}")
    print(f"\nAP smiyc {res['pixel_smiyc']['ap']:.6f} | exact {res['pixel_exact']['ap']:.6f}"
          + (f" | sklearn {res['sklearn_pooled']['ap']:.6f}" if "sklearn_pooled" in res else ""))
    if "sklearn_pooled" in res:
        ok = all(res[k]["speedup_vs_sklearn"] >= 10 for k in ("pixel_smiyc", "pixel_exact", "component"))
        print(f"target >= 10x faster than pooled sklearn: {'met' if ok else 'NOT met'}")
    if args.out is not None:
        _write_json(args.out, res)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
