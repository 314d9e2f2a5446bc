"""Run the SMIYC benchmark on a real copy of the data set through the Python API.

The folder given with ``--data-root`` must hold the official layout (as unpacked from
segmentmeifyoucan.com)::

    <root>/dataset_AnomalyTrack/images/<id>.jpg
    <root>/dataset_AnomalyTrack/labels_masks/<id>_labels_semantic.png   (validation frames only)
    <root>/dataset_ObstacleTrack/images/<id>.webp
    <root>/dataset_ObstacleTrack/labels_masks/<id>_labels_semantic.png

Only the public validation frames carry labels; use ``--subset validation`` to score
just those (the hidden test frames have no labels and are only exported; see
examples/export_smiyc.py). Example::

    python examples/run_smiyc.py --data-root ~/data/smiyc --teacher sml --weights sml=segnet.onnx \
        --subset validation --out runs/smiyc-val

The same run from the shell: ``posthoc-bench smiyc --data-root ~/data/smiyc --subset validation ...``.
"""
from __future__ import annotations

import argparse
import logging
import sys

from posthoc.bench.runner import VARIANTS, BenchConfig, run_benchmark


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", required=True,
                    help="folder holding dataset_AnomalyTrack/ and dataset_ObstacleTrack/")
    ap.add_argument("--track", default="both", choices=("anomaly", "obstacle", "both"))
    ap.add_argument("--subset", default="validation", choices=("all", "validation", "test"))
    ap.add_argument("--teacher", default="obsnet", help="registry name or model.onnx (comma list allowed)")
    ap.add_argument("--weights", default=None, help="PATH or role=PATH,role=PATH for a single teacher")
    ap.add_argument("--proposals", default="superpixels", help="comma list of proposal sources")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", default="runs/smiyc")
    args = ap.parse_args()

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)
    cfg = BenchConfig(
        dataset="smiyc",
        track=args.track,
        subset=args.subset,
        data_root=args.data_root,
        teachers=[t for t in args.teacher.split(",") if t],
        weights=args.weights,
        proposals=[p for p in args.proposals.split(",") if p],
        variants=[v for v in args.variants.split(",") if v],
        device=args.device,
        out=args.out,
    )
    results = run_benchmark(cfg)
    print(results["markdown"])
    for ev in results["evaluations"]:
        for teacher, t in ev["teachers"].items():
            for variant, m in t["variants"].items():
                if "ap" in m:
                    print(f"{ev['dataset']:18s} {teacher:10s} {variant:40s} AP={m['ap']:.4f} FPR95={m['fpr95']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
