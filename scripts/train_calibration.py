"""Fit the bundled SML statistics and the global calibrations, and write adapters/bundled/manifest.json.

Runs after scripts/train_segnet.py, train_obsnet.py and train_csl_rpn.py. It uses the
TEACHERS API (``posthoc.adapters.teachers``) on the bundled segnet.onnx:

* ``sml``: class statistics (mean and unbiased variance of the max logit per predicted
  class, official SML ``calculate_statistics``) on the anomaly-free ``train`` split, then
  the global calibration of -SML; written to ``sml_stats.json`` ("posthoc.sml_stats").
* ``maxlogit`` / ``energy``: the global sigmoid calibration of -max logit and of
  -logsumexp, written to ``maxlogit_calibration.json`` / ``energy_calibration.json``
  ("posthoc.calibration").

Calibration data: the anomaly-free ``train`` split, unlabelled, so the map is the
quantile map of ``fit_sigmoid_calibration`` (pooled median -> 0.1, 99th percentile ->
0.5). Nothing from the ``val`` or ``test`` splits is used, and every map is global (one
shift and scale for the whole data set, never per image).

``msp`` and ``entropy`` are already probabilities and need no calibration.

Usage (from the repository root)::

    python scripts/train_calibration.py --frames 200
"""
from __future__ import annotations

from pathlib import Path

import _train_common as C
import numpy as np
import torch

from posthoc.adapters import get_teacher
from posthoc.bench import synthetic as syn


def segnet_meta() -> dict:
    h, w = syn.DEFAULT.train_size
    return {
        "class_names": list(syn.CLASS_NAMES),
        "mean": list(C.MEAN),
        "std": list(C.STD),
        "channel_order": "RGB",
        "input_size": [h, w],
        "stuff_ids": list(syn.STUFF_IDS),
        "thing_ids": list(syn.THING_IDS),
        "trained_on": "posthoc synthetic world, train split (no anomalies), seed 0",
    }


def manifest() -> dict:
    meta = segnet_meta()
    rpn_meta = {k: meta[k] for k in ("mean", "std", "channel_order", "input_size")}
    rpn_meta.update({"num_queries": 32, "output_stride": 2,
                     "trained_on": "posthoc synthetic world, train split, class-agnostic (CSL mask split)"})
    return {
        "segnet": {"model": "segnet.onnx", "meta": meta},
        "obsnet": {"segmenter": "segnet.onnx", "observer": "observer.onnx", "meta": meta},
        "sml": {"model": "segnet.onnx", "stats": "sml_stats.json", "meta": meta},
        "msp": {"model": "segnet.onnx", "meta": meta},
        "entropy": {"model": "segnet.onnx", "meta": meta},
        "maxlogit": {"model": "segnet.onnx", "calibration": "maxlogit_calibration.json", "meta": meta},
        "energy": {"model": "segnet.onnx", "calibration": "energy_calibration.json", "meta": meta},
        "csl": {"model": "csl_rpn.onnx", "meta": rpn_meta},
    }


def frames(n: int, batch: int, seed: int):
    """Batches of the train split at the world's size (the teachers resize to input_size)."""
    d = syn.ensure_world(split="train", seed=seed)
    ids = syn.frame_ids("train", syn.world_config(split="train", seed=seed)["n_frames"])
    pick = np.random.default_rng(seed).choice(len(ids), size=min(n, len(ids)), replace=False)
    pick.sort()
    out = []
    for s in range(0, len(pick), batch):
        out.append(np.stack([syn.load_frame(d, ids[i]).image for i in pick[s:s + batch]]))
    return out


def main(argv=None) -> int:
    ap = C.base_parser(__doc__)
    ap.add_argument("--frames", type=int, default=200, help="train frames used for statistics and calibration")
    ap.add_argument("--batch", type=int, default=8)
    args = ap.parse_args(argv)
    timer = C.start(args)
    out = Path(args.out)
    seg = out / "segnet.onnx"
    if not seg.is_file():
        raise SystemExit(f"{seg} not found: run scripts/train_segnet.py first")
    data = frames(args.frames, args.batch, args.world_seed)
    weights = {"model": str(seg), "meta": segnet_meta()}
    record = {"command": C.command_line("train_calibration.py", argv),
              "frames": sum(len(b) for b in data), "split": "train", "torch": torch.__version__}

    sml = get_teacher("sml", weights=weights)
    sml.fit(data, seed=args.seed)
    sml.save_stats(out / "sml_stats.json")
    record["sml"] = {"mean": [round(float(v), 3) for v in sml.mean],
                     "std": [round(float(v) ** 0.5, 3) for v in sml.var],
                     "calibration": sml.calibration.to_dict()}
    C.log.info("sml stats + calibration written (%.0f s)", timer())
    for score in ("maxlogit", "energy"):
        t = get_teacher(score, weights=weights)
        cal = t.fit_calibration(data, seed=args.seed)
        t.save_calibration(out / f"{score}_calibration.json")
        record[score] = cal.to_dict()
        C.log.info("%s calibration %s (%.0f s)", score, cal, timer())
    C.write_json(out / "manifest.json", manifest())
    record["seconds"] = round(timer(), 1)
    C.update_log("calibration", record, out)
    C.log.info("wrote %s", out / "manifest.json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
