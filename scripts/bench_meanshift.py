#!/usr/bin/env python
"""Benchmark posthoc.meanshift against scikit-learn's MeanShift on the same data and seeds.

Usage:
    .venv/bin/python scripts/bench_meanshift.py                      # 20k points, d=32, 256 seeds
    .venv/bin/python scripts/bench_meanshift.py --n 20000 --dim 64 --seeds 256 --repeat 3
    .venv/bin/python scripts/bench_meanshift.py --image 512 1024     # also time a full feature map
    .venv/bin/python scripts/bench_meanshift.py --skip-sklearn --device cuda

Data: k unit-norm cluster centres in d dimensions, points = centre + Gaussian noise,
L2-normalized (the setting of the bottom-up paper's embeddings). Both implementations
get the same ``--seeds`` starting points and the bandwidth sqrt(2)/2 (posthoc with
``projective=False``, the unit-direction path scikit-learn computes); the script
reports wall-clock times (best of ``--repeat``), the speed-up and the adjusted Rand
index between the two labelings. The figures in docs/proposals.md come from here.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time

import numpy as np
import torch


def blobs(n: int, d: int, k: int, noise: float, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(k, d))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = c[rng.integers(0, k, n)] + noise * rng.normal(size=(n, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32)


def best_of(fn, repeat: int):
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best, out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="number of points (default 20000)")
    ap.add_argument("--dim", type=int, default=32, help="embedding dimension (default 32)")
    ap.add_argument("--k", type=int, default=10, help="number of clusters (default 10)")
    ap.add_argument("--noise", type=float, default=0.08, help="noise std before normalizing (default 0.08)")
    ap.add_argument("--seeds", type=int, default=256, help="number of seeds (default 256)")
    ap.add_argument("--repeat", type=int, default=3, help="timing repeats for posthoc (best of; default 3)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    ap.add_argument("--device", default="cpu", help="torch device for posthoc (default cpu)")
    ap.add_argument("--skip-sklearn", action="store_true", help="time posthoc only")
    ap.add_argument("--image", type=int, nargs=2, metavar=("H", "W"), help="also time meanshift_sphere on (1,dim,H,W)")
    ap.add_argument("--json", help="write the figures to this JSON file")
    args = ap.parse_args(argv)

    from posthoc.meanshift import SPHERE_BANDWIDTH, meanshift_points, meanshift_sphere

    torch.set_num_threads(args.threads)
    x = blobs(args.n, args.dim, args.k, args.noise, seed=0)
    seeds = x[np.random.default_rng(1).choice(len(x), min(args.seeds, len(x)), replace=False)]
    xt = torch.from_numpy(x).to(args.device)
    st = torch.from_numpy(seeds).to(args.device)
    meanshift_points(xt[:2000], SPHERE_BANDWIDTH, seeds=st[:16], projective=False)  # warm-up
    t_ours, (lab, modes) = best_of(lambda: meanshift_points(xt, SPHERE_BANDWIDTH, seeds=st, projective=False),
                                       args.repeat)
    res = {"n": args.n, "dim": args.dim, "k": args.k, "seeds": len(seeds), "threads": args.threads,
           "device": args.device, "posthoc_s": t_ours, "posthoc_modes": int(modes.shape[0]),
           "torch": torch.__version__, "python": platform.python_version()}
    print(f"posthoc.meanshift_points  n={args.n} d={args.dim} seeds={len(seeds)} on {args.device}: "
          f"{t_ours * 1e3:.1f} ms, {modes.shape[0]} modes")
    if not args.skip_sklearn:
        from sklearn.cluster import MeanShift
        from sklearn.metrics import adjusted_rand_score
        from threadpoolctl import threadpool_limits

        # sklearn single-threaded throughout (its OpenMP/BLAS pools oversubscribe a busy machine badly)
        with threadpool_limits(1):
            t0 = time.perf_counter()
            ref = MeanShift(bandwidth=SPHERE_BANDWIDTH, seeds=seeds, n_jobs=1).fit(x)
            t_sk = time.perf_counter() - t0
        ari = adjusted_rand_score(ref.labels_, lab.cpu().numpy())
        res.update(sklearn_s=t_sk, sklearn_modes=len(ref.cluster_centers_), speedup=t_sk / t_ours, ari=ari)
        print(f"sklearn MeanShift(seeds=same, n_jobs=1, 1 thread): {t_sk:.2f} s, {len(ref.cluster_centers_)} modes")
        print(f"speed-up {t_sk / t_ours:.0f}x, ARI {ari:.4f}")
    if args.image:
        h, w = args.image
        g = torch.Generator().manual_seed(0)
        palette = torch.randn(20, args.dim, generator=g)  # 20 "objects"
        blocks = torch.randint(0, 20, (h // 32, w // 32), generator=g)
        f = palette[blocks].permute(2, 0, 1).unsqueeze(0)
        f = torch.nn.functional.interpolate(f, size=(h, w), mode="nearest")  # piecewise-constant regions
        f = (f + 0.1 * torch.randn(f.shape, generator=g)).to(args.device)
        meanshift_sphere(f[..., :64, :64], SPHERE_BANDWIDTH, projective=False)
        for levels in (1, 2):
            t_img, lab_img = best_of(
                lambda lv=levels: meanshift_sphere(f, SPHERE_BANDWIDTH, projective=False, levels=lv), args.repeat)
            res[f"image_{h}x{w}_levels{levels}_s"] = t_img
            print(f"meanshift_sphere (1,{args.dim},{h},{w}) levels={levels}: {t_img * 1e3:.1f} ms, "
                  f"{int(lab_img.max()) + 1} clusters")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
