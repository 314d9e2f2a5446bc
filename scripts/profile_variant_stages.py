"""Steady-state cost of the default run's variant stages against the teacher, per stage and per op.

    python scripts/profile_variant_stages.py [--frames 8] [--reps 5] [--track anomaly]

Builds what ``posthoc-bench smiyc --teacher obsnet`` builds (the bundled teacher, the default
proposal sources, the default variants on the synthetic world), computes the proposals of
``--frames`` frames once (batch 2), then runs the teacher and the variant stages
(``pipeline:<source>``, ``peer:<name>``, the stages of the run's "Time per stage" table)
``--reps`` times over those frames and prints the median over the repetitions of each
stage's seconds, of each op inside the pipelines, and the ratio of the variant stages to the
teacher, with and without the two offset ops (``offsets_from_proposals``,
``offset_resample``). The first repetition is a warm-up (numba loads or compiles its kernels
on first use) and is not counted. Like the CLI, it sets ``OMP_WAIT_POLICY=PASSIVE`` unless
the environment sets it. Timing only: the maps are those of the run.
"""
from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads its OpenMP runtime, as the CLIs do

import argparse
import collections
import contextlib
import statistics
import time

import numpy as np
import torch

#: the ops timed inside the pipelines (attributes of posthoc.pipeline)
OPS = ("fuse", "region_class_logits", "refine", "offsets_from_proposals", "offset_resample")
OFFSET_OPS = ("offsets_from_proposals", "offset_resample")


class _Timer:
    def __init__(self) -> None:
        self.t: collections.Counter = collections.Counter()

    @contextlib.contextmanager
    def __call__(self, key: str):
        t0 = time.perf_counter()
        yield
        self.t[key] += time.perf_counter() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=8, help="frames of the synthetic test split (default 8)")
    ap.add_argument("--reps", type=int, default=5, help="timed repetitions after one warm-up (default 5)")
    ap.add_argument("--track", default="anomaly", choices=("anomaly", "obstacle"))
    args = ap.parse_args()

    import posthoc.pipeline as pipeline_mod
    from posthoc.bench import evaluations
    from posthoc.bench.config import BenchConfig, build_adapter, default_proposals
    from posthoc.bench.runner import _peer_plan
    from posthoc.bench.variants import VariantMaps, as_anomaly, suppress_choice, variant_chain

    cfg = BenchConfig(dataset="smiyc", teachers=["obsnet"], out="unused", track=args.track)
    ev = evaluations.evaluations(cfg)[0]
    teacher = build_adapter("teacher", "obsnet")
    sources = default_proposals()
    props = {s: build_adapter("proposals", s) for s in sources}
    vm = VariantMaps(variant_chain(cfg.variants, sources, _peer_plan(cfg, sources)), suppress_choice(teacher)[0])
    frames = [ev.dataset.load(r) for r in ev.dataset.refs[: args.frames]]
    batches = [np.stack([f.image for f in frames[i:i + 2]]) for i in range(0, len(frames), 2)]
    ops: collections.Counter = collections.Counter()
    for name in OPS:  # time each op where the pipeline calls it
        fn = getattr(pipeline_mod, name)

        def timed(*a, _fn=fn, _name=name, **k):
            t0 = time.perf_counter()
            try:
                return _fn(*a, **k)
            finally:
                ops[_name] += time.perf_counter() - t0

        setattr(pipeline_mod, name, timed)
    with torch.inference_mode():
        pre = []
        for im in batches:
            t_out = teacher(im)
            pre.append((im, t_out, {s: p(im, teacher_output=t_out) for s, p in props.items()}))
        stage_reps, op_reps = [], []
        for rep in range(args.reps + 1):
            tm = _Timer()
            ops.clear()
            for im, t_out, pr in pre:
                with tm("teacher"):
                    teacher(im)
                vm(as_anomaly(t_out, "obsnet"), t_out, pr, tm, images=im)
            if rep:
                stage_reps.append(dict(tm.t))
                op_reps.append(dict(ops))

    def med(reps: list, key: str) -> float:
        return statistics.median(r.get(key, 0.0) for r in reps)

    stages = {k: med(stage_reps, k) for k in sorted(stage_reps[0])}
    opt = {k: med(op_reps, k) for k in OPS}
    print(f"{len(frames)} frames of {ev.dataset.name} {tuple(frames[0].image.shape[:2])}, batch 2, "
          f"median of {args.reps} repetitions after a warm-up; {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    print("stage seconds:", {k: round(v, 4) for k, v in stages.items()})
    print("op seconds (inside the pipelines):", {k: round(v, 4) for k, v in opt.items()})
    variants = sum(v for k, v in stages.items() if k.startswith(("pipeline:", "peer:")))
    offsets = sum(opt[k] for k in OFFSET_OPS)
    t = stages["teacher"]
    print(f"(pipeline:* + peer:*) / teacher = {variants / t:.3f}; without {' and '.join(OFFSET_OPS)}: "
          f"{(variants - offsets) / t:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
