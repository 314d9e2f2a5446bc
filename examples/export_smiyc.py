"""Write official SMIYC submission files for a teacher fused with proposals (CSL2).

For every frame of the chosen tracks (hidden test frames included) this runs the teacher
and the proposal source, fuses them with ``posthoc.fuse`` (CSL Eq. 3) and writes

    <out>/anomaly_p/<method>/<AnomalyTrack-all|ObstacleTrack-all>/<frame id>.hdf5

with a gzip-compressed float16 dataset ``value`` of shape (H,W) in [0,1], the format the
official ``road_anomaly_benchmark`` reads (``Evaluation.save_output``). Zip the
``anomaly_p/<method>`` folder for the submission. Example::

    python examples/export_smiyc.py --data-root ~/data/smiyc --teacher obsnet --proposals superpixels \
        --method obsnet-csl2 --out submission/

``posthoc-bench smiyc --data-root ... --export-smiyc submission/`` writes the same files for
every benchmark variant.
"""
from __future__ import annotations

import argparse
import logging
import sys

import torch

import posthoc
from posthoc.adapters import get_proposals, get_teacher
from posthoc.bench.datasets import SMIYCReader
from posthoc.bench.export import method_slug, write_submission_frame


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-root", required=True,
                    help="folder holding dataset_AnomalyTrack/ and dataset_ObstacleTrack/")
    ap.add_argument("--track", default="both", choices=("anomaly", "obstacle", "both"))
    ap.add_argument("--teacher", default="obsnet")
    ap.add_argument("--weights", default=None, help="teacher weights (path); default: the bundled model")
    ap.add_argument("--proposals", default="superpixels")
    ap.add_argument("--method", default=None, help="method name (folder); default <teacher>-csl2-<proposals>")
    ap.add_argument("--device", default=None)
    ap.add_argument("--out", required=True)
    ap.add_argument("--limit", type=int, default=None)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr)

    teacher = get_teacher(args.teacher, weights=args.weights, device=args.device)
    source = get_proposals(args.proposals)
    method = args.method or f"{args.teacher}-csl2-{args.proposals}"
    tracks = ("anomaly", "obstacle") if args.track == "both" else (args.track,)
    n = 0
    with torch.inference_mode():
        for track in tracks:
            data = SMIYCReader(args.data_root, track)
            for i, frame in enumerate(data):
                if args.limit is not None and i >= args.limit:
                    break
                batch = frame.image[None]  # (1,H,W,3) uint8
                out = teacher(batch)
                props = source(batch, teacher_output=out)
                fused = posthoc.fuse(out.anomaly, props.labels)  # (1,1,H,W) in [0,1]
                write_submission_frame(args.out, method, data.name, frame.id, fused[0, 0],
                                       image_shape=frame.image.shape)
                n += 1
    print(f"wrote {n} files under {args.out}/anomaly_p/{method_slug(method)}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
