"""Throughput of one fixed ``posthoc-bench`` run with 1 process and with N torchrun processes.

    python scripts/bench_scaleout.py --limit 20 --nproc 2 [--device cuda] [--repeat 2]

Runs, in this one invocation and on fresh run folders (no cache): ``posthoc-bench smiyc
--teacher obsnet --proposals superpixels --track anomaly --limit L --no-plots`` in one
process, then the same command under ``torchrun --standalone --nproc-per-node=N -m
posthoc.bench``; prints wall seconds, frames per second and the speed-up, and the largest
metric difference between the two runs (0 with ``--threads 1``). Wall time includes process
start, imports and model loading, as a user sees it. Pass extra ``posthoc-bench`` flags after ``--``.
On a GPU machine ``--device cuda`` gives each rank ``cuda:LOCAL_RANK``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _metrics(path: Path) -> dict:
    res = json.loads((path / "results.json").read_text())
    return {(e["key"], t): v["variants"] for e in res["evaluations"] for t, v in e["teachers"].items()}


def _max_diff(a, b) -> float:
    if isinstance(a, dict):
        if set(a) != set(b):
            return math.inf
        return max((_max_diff(a[k], b[k]) for k in a), default=0.0)
    if isinstance(a, (int, float)) and not isinstance(a, bool) and isinstance(b, (int, float)):
        if math.isnan(a) and math.isnan(b):
            return 0.0
        return abs(a - b)
    return 0.0 if a == b else math.inf


def _total(path: Path) -> float:
    return float(json.loads((path / "results.json").read_text())["timings_s"]["total"])


def _frames(path: Path) -> int:
    res = json.loads((path / "results.json").read_text())
    return sum(t["frames"] for e in res["evaluations"] for t in e["teachers"].values())


def _run(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        sys.exit(f"command failed ({r.returncode}): {' '.join(cmd)}\n{r.stderr[-4000:]}")
    return dt


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--limit", type=int, default=20, help="frames of the fixed run (default 20)")
    p.add_argument("--nproc", type=int, default=2, help="torchrun processes (default 2)")
    p.add_argument("--device", default=None, help="e.g. cuda (each rank: cuda:LOCAL_RANK)")
    p.add_argument("--repeat", type=int, default=1, help="measure each side this many times, alternating")
    p.add_argument("--threads", type=int, default=None,
                   help="OMP_NUM_THREADS of the 1-process run (default: torch's default, all cores). torchrun "
                   "gives each of its processes 1 thread; teachers' float32 reductions can round differently "
                   "with another thread count, so pass --threads 1 to compare the metrics bit for bit")
    p.add_argument("extra", nargs="*", help="more posthoc-bench flags (after --)")
    a = p.parse_args(argv)
    args = ["smiyc", "--teacher", "obsnet", "--proposals", "superpixels", "--track", "anomaly",
            "--limit", str(a.limit), "--no-plots", "--quiet", *a.extra]
    if a.device:
        args += ["--device", a.device]
    py = sys.executable
    env = dict(os.environ)
    rows = []
    with tempfile.TemporaryDirectory(prefix="scaleout-") as tmp:
        for rep in range(a.repeat):
            one, many = Path(tmp) / f"one{rep}", Path(tmp) / f"many{rep}"
            env1 = dict(env, OMP_NUM_THREADS=str(a.threads)) if a.threads else env
            t1 = _run([py, "-m", "posthoc.bench", *args, "--out", str(one)], env1)
            tn = _run([py, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={a.nproc}",
                       "-m", "posthoc.bench", *args, "--out", str(many)], env)
            diff = max(_max_diff(x, y) for x, y in zip(_metrics(one).values(), _metrics(many).values(), strict=True))
            if _frames(one) != _frames(many):
                sys.exit(f"the runs evaluated {_frames(one)} and {_frames(many)} frames")
            rows.append((_frames(one), t1, tn, _total(one), _total(many), diff))
    print(f"fixed run: posthoc-bench {' '.join(args)}")
    print(f"threads of the 1-process run: {a.threads or 'default'}; torchrun: 1 per process")
    print(f"frames evaluated: {rows[0][0]}")
    print(f"| repeat | 1 process: wall s | frames/s | {a.nproc} processes: wall s | frames/s | speed-up (wall) "
          f"| speed-up (in-run total, rank 0) | max metric diff |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for i, (nf, t1, tn, r1, rn, diff) in enumerate(rows):
        print(f"| {i} | {t1:.1f} | {nf / t1:.2f} | {tn:.1f} | {nf / tn:.2f} | {t1 / tn:.2f}x "
              f"| {r1 / rn:.2f}x ({r1:.1f} s / {rn:.1f} s) | {diff:.1e} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
