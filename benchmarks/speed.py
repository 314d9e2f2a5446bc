"""Speed benchmark of the fusion core against the memory-bandwidth floor.

``posthoc-bench speed`` (or ``python -m posthoc.bench.speed``) times, on the current device
and in one run:

* ``fuse`` (CSL Eq. 3) at (B=1,C=1,1024x2048,N=100), (B=1,C=19,1024x2048,N=100) and
  (B=8,C=19,512x1024,N=100), on probabilities with int32 labels made of ~100 spatially
  coherent (Voronoi) regions:

  - ``kernel``: :func:`posthoc.kernels.region_fuse` into a preallocated ``out``;
  - ``checked``: the same with ``value_range=(0, 1)`` (finite + range check fused in);
  - ``e2e``: :func:`posthoc.fuse` end to end (``normalize="none"``: its input checks and a
    fresh output included);
  - ``torch``: the ``scatter_add_`` + ``gather`` fallback (``backend="torch"``);
  - ``loop``: the per-region boolean-mask loop as research code writes it;
  - ``floor``: a kernel that moves exactly the bytes of the ideal implementation -- reads D
    twice, the labels twice, writes the output once -- measured in the same run (the
    fastest of a compiled streaming loop and torch's own reductions/copies);

* ``soft_assign`` (CSL Eq. 2) at N=100, 1024x2048: the kernel
  (:func:`posthoc.kernels.weighted_argmax`), :func:`posthoc.soft_assign` end to end, the
  kernel with its fused ``value_range=(0, 1)`` check, the torch fallback, the naive
  ``(R*V).argmax(1)``, and the floor (read R once, write the
  labels once).

* the chain rows of :mod:`posthoc.bench.speed_chain`: every other op of the
  post-hoc chain and the chain per frame against its floor (``--only chain`` runs only them).

Times are medians over ``--repeats`` runs after a warm-up; the floor and our kernel are
timed interleaved so that load from other processes hits both alike. The table goes to
stdout, the figures to JSON (``--out``) with device, versions and thread count.
``--memory`` also measures the extra peak memory of a fusion of a 4K frame and of a batch of
16 Cityscapes frames (C=19), relative to the input size.

Targets: on CPU ours/floor <= 2.0 and loop/ours >= 30; on GPU ours/floor <= 2.0.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from posthoc.adapters.io import write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

__all__ = [
    "FUSE_CASES",
    "bench_assign",
    "bench_fuse",
    "format_markdown",
    "main",
    "measure_first_call",
    "measure_fuse_memory",
    "measure_fuse_memory_cuda",
    "voronoi_labels",
]

#: (B, C, H, W, N) of the default sizes
FUSE_CASES = [(1, 1, 1024, 2048, 100), (1, 19, 1024, 2048, 100), (8, 19, 512, 1024, 100)]
ASSIGN_CASE = (1, 100, 1024, 2048)
QUICK_FUSE_CASES = [(1, 1, 256, 512, 100), (1, 19, 256, 512, 100), (2, 19, 128, 256, 100)]
QUICK_ASSIGN_CASE = (1, 100, 256, 512)
TARGET_FLOOR = 2.0
TARGET_LOOP = 30.0


# ----------------------------------------------------------------------------- data
def voronoi_labels(batch: int, height: int, width: int, num_regions: int, *, seed: int = 0) -> np.ndarray:
    """Spatially coherent int32 labels (batch,height,width): nearest of ``num_regions`` random seeds.

    Computed on an 8x coarser grid and upsampled by pixel repetition (fast; still every one of
    the ``num_regions`` ids that owns a cell appears, so ~num_regions regions per image).
    """
    rng = np.random.default_rng(seed)
    f = 8 if min(height, width) >= 64 else 1
    h, w = -(-height // f), -(-width // f)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    out = np.empty((batch, height, width), np.int32)
    for b in range(batch):
        pts = rng.uniform([0, 0], [h, w], size=(num_regions, 2)).astype(np.float32)
        best = np.full((h, w), np.inf, np.float32)
        lab = np.zeros((h, w), np.int32)
        for n in range(num_regions):
            d = (yy - pts[n, 0]) ** 2 + (xx - pts[n, 1]) ** 2
            closer = d < best
            best[closer] = d[closer]
            lab[closer] = n
        out[b] = np.repeat(np.repeat(lab, f, 0), f, 1)[:height, :width]
    return out


def _rand(shape: Sequence[int], device: torch.device, seed: int) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(seed)
    return torch.rand(*shape, generator=g, dtype=torch.float32).to(device)


# ----------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fns: dict[str, Callable[[], Any]], device: torch.device, repeats: int,
               warmup: int = 1) -> dict[str, list[float]]:
    """Run every function ``warmup`` times, then ``repeats`` rounds interleaved; seconds per call."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    _sync(device)
    for _ in range(repeats):
        for k, fn in fns.items():
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    return times


def _stats(ts: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(ts) * 1e3, "min_ms": min(ts) * 1e3, "n": len(ts)}


# ----------------------------------------------------------------------------- floors
_NB_FLOOR: Any = None


def _numba_floor():
    """Compiled streaming loops that move the floor's bytes (None where numba is missing)."""
    global _NB_FLOOR
    if _NB_FLOOR is not None:
        return _NB_FLOOR or None
    try:
        import numba
        from numba import njit, prange
    except ImportError:  # pragma: no cover - numba is a core dependency
        _NB_FLOOR = False
        return None
    fm = {"nsz", "arcp", "contract", "afn", "reassoc"}
    blk = 1 << 14

    @njit(parallel=True, fastmath=fm, cache=True)
    def read_pass(d, lab):  # pragma: no cover - compiled
        # read D (B,C,P) and the labels (B,P) once
        B, C, P = d.shape
        nb = (P + blk - 1) // blk
        acc = np.zeros(B * nb, np.float64)
        for it in prange(B * nb):
            b = it // nb
            s = (it - b * nb) * blk
            e = min(P, s + blk)
            ls = lab[b, s:e]
            t = 0
            for i in range(ls.shape[0]):
                t += ls[i]
            f = np.float32(0.0)
            for c in range(C):
                ds = d[b, c, s:e]
                for i in range(ds.shape[0]):
                    f += ds[i]
            acc[it] = f + t
        return acc.sum()

    @njit(parallel=True, fastmath=fm, cache=True)
    def copy_pass(d, lab, out):  # pragma: no cover - compiled
        # read D and the labels once, write out once
        B, C, P = d.shape
        nb = (P + blk - 1) // blk
        acc = np.zeros(B * nb, np.int64)
        for it in prange(B * nb):
            b = it // nb
            s = (it - b * nb) * blk
            e = min(P, s + blk)
            ls = lab[b, s:e]
            t = 0
            for i in range(ls.shape[0]):
                t += ls[i]
            for c in range(C):
                ds = d[b, c, s:e]
                os_ = out[b, c, s:e]
                for i in range(ds.shape[0]):
                    os_[i] = ds[i]
            acc[it] = t
        return acc.sum()

    @njit(parallel=True, fastmath=fm, cache=True)
    def argmax_floor(r, out):  # pragma: no cover - compiled
        # read R (B,N,P) once (blocked like the kernel), write out (B,P) int64 once
        B, N, P = r.shape
        nb = (P + blk - 1) // blk
        for it in prange(B * nb):
            b = it // nb
            s = (it - b * nb) * blk
            e = min(P, s + blk)
            tmp = np.zeros(e - s, np.float32)
            for n in range(N):
                rs = r[b, n, s:e]
                for i in range(rs.shape[0]):
                    tmp[i] += rs[i]
            os_ = out[b, s:e]
            for i in range(tmp.shape[0]):
                os_[i] = np.int64(tmp[i])

    @njit(parallel=True, fastmath=fm, cache=True)
    def linear_read(r):  # pragma: no cover - compiled
        x = r.reshape(-1)
        f = np.float32(0.0)
        for i in prange(x.shape[0]):
            f += x[i]
        return f

    _NB_FLOOR = (read_pass, copy_pass, argmax_floor, linear_read, numba)
    return _NB_FLOOR


def _floor_fns_fuse(D: torch.Tensor, L: torch.Tensor, out: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """Candidates that each move 2x|D| + 2x|L| reads and 1x|D| writes."""
    fns: dict[str, Callable[[], Any]] = {
        "floor_torch": lambda: (D.sum(), L.sum(), out.copy_(D), L.sum()),
    }
    if D.device.type == "cpu":
        nbf = _numba_floor()
        if nbf is not None:
            B, C, H, W = D.shape
            d = D.numpy().reshape(B, C, H * W)
            lab = L.numpy().reshape(B, H * W)
            o = out.numpy().reshape(B, C, H * W)
            fns["floor_numba"] = lambda: (nbf[0](d, lab), nbf[1](d, lab, o))
    return fns


def _floor_fns_assign(R: torch.Tensor, out: torch.Tensor) -> dict[str, Callable[[], Any]]:
    """Candidates that read R once and write the (B,h,w) int64 labels once."""
    fns: dict[str, Callable[[], Any]] = {"floor_torch": lambda: (R.sum(), out.fill_(0))}
    if R.device.type == "cpu":
        nbf = _numba_floor()
        if nbf is not None:
            B, N, H, W = R.shape
            r = R.numpy().reshape(B, N, H * W)
            o = out.numpy().reshape(B, H * W)
            fns["floor_numba"] = lambda: nbf[2](r, o)
            fns["floor_numba_linear"] = lambda: (nbf[3](r), out.fill_(0))
    return fns


# ----------------------------------------------------------------------------- baselines
def loop_fuse(D: torch.Tensor, L: torch.Tensor, num_regions: int) -> torch.Tensor:
    """The per-region boolean-mask loop as research code writes it: O(N*C*H*W)."""
    out = D.clone()
    for b in range(D.shape[0]):
        for n in range(num_regions):
            m = L[b] == n
            vals = D[b][:, m]
            if vals.shape[1]:
                out[b][:, m] = vals.mean(1, keepdim=True) * vals
    return out


def naive_assign(R: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """The naive CSL Eq. 2: ``(R*V).argmax(1)``."""
    return (R * V[:, :, None, None]).argmax(1)


# ----------------------------------------------------------------------------- benchmarks
def _row(name: str, shape: str, times: dict[str, list[float]], ours_key: str, loop_key: str,
         floor_keys: Sequence[str]) -> dict[str, Any]:
    st = {k: _stats(v) for k, v in times.items()}
    floor_key = min(floor_keys, key=lambda k: st[k]["median_ms"])
    floor = st[floor_key]["median_ms"]
    row: dict[str, Any] = {"op": name, "shape": shape, "timings": st, "floor_ms": floor, "floor_method": floor_key}
    for k in st:
        if not k.startswith("floor"):
            row[f"{k}_over_floor"] = st[k]["median_ms"] / floor
    if loop_key in st:
        row["loop_over_ours"] = st[loop_key]["median_ms"] / st[ours_key]["median_ms"]
    return row


def bench_fuse(case: Sequence[int], device: torch.device, *, repeats: int = 7, loop_repeats: int = 1,
               backend: str = "auto", with_loop: bool = True, seed: int = 0) -> dict[str, Any]:
    """Time fusion at (B,C,H,W,N) on ``device``; returns a row with timings and ratios."""
    import posthoc
    from posthoc import kernels

    B, C, H, W, N = case
    D = _rand((B, C, H, W), device, seed)
    L = torch.from_numpy(voronoi_labels(B, H, W, N, seed=seed)).to(device)
    n_used = int(L.max()) + 1
    out = torch.empty_like(D)
    fns = {
        "kernel": lambda: kernels.region_fuse(D, L, n_used, backend=backend, out=out),
        "checked": lambda: kernels.region_fuse(D, L, n_used, backend=backend, out=out, value_range=(0.0, 1.0)),
        "e2e": lambda: posthoc.fuse(D, L, normalize="none", backend=backend),
        "torch": lambda: kernels.region_fuse(D, L, n_used, backend="torch", out=out),
    }
    fns.update(_floor_fns_fuse(D, L, out))
    times = time_calls(fns, device, repeats)
    # correctness in the same run: the kernel against the torch reference
    ref = kernels.region_fuse(D, L, n_used, backend="torch")
    got = kernels.region_fuse(D, L, n_used, backend=backend)
    max_err = float((ref - got).abs().max())
    if with_loop:
        times.update(time_calls({"loop": lambda: loop_fuse(D, L, n_used)}, device, loop_repeats, warmup=0))
    floor_keys = [k for k in times if k.startswith("floor")]
    row = _row("fuse", f"B={B} C={C} {H}x{W} N={n_used}", times, "kernel", "loop", floor_keys)
    row["loop_over_e2e"] = (row["timings"]["loop"]["median_ms"] / row["timings"]["e2e"]["median_ms"]
                            if "loop" in row["timings"] else None)
    row.update(case=list(case), num_regions=n_used, label_dtype=str(L.dtype), max_abs_err_vs_torch=max_err,
               backend=kernels.resolve_backend(backend, D.device, D.numel()),
               bytes_moved=int(3 * D.numel() * 4 + 2 * L.numel() * 4))
    row["floor_GBps"] = row["bytes_moved"] / (row["floor_ms"] * 1e-3) / 1e9
    return row


def bench_assign(case: Sequence[int], device: torch.device, *, repeats: int = 7, loop_repeats: int = 2,
                 backend: str = "auto", seed: int = 0) -> dict[str, Any]:
    """Time soft assignment at (B,N,H,W) on ``device``."""
    import posthoc
    from posthoc import kernels

    B, N, H, W = case
    R = _rand((B, N, H, W), device, seed)
    V = _rand((B, N), device, seed + 1)
    out = torch.empty(B, H, W, dtype=torch.int64, device=device)
    fns = {
        "kernel": lambda: kernels.weighted_argmax(R, V, backend=backend),
        "checked": lambda: kernels.weighted_argmax(R, V, backend=backend, value_range=(0.0, 1.0)),
        "e2e": lambda: posthoc.soft_assign(R, V, backend=backend),
        "torch": lambda: kernels.weighted_argmax(R, V, backend="torch"),
    }
    fns.update(_floor_fns_assign(R, out))
    times = time_calls(fns, device, repeats)
    ok = bool(torch.equal(kernels.weighted_argmax(R, V, backend=backend),
                          kernels.weighted_argmax(R, V, backend="torch")))
    times.update(time_calls({"naive": lambda: naive_assign(R, V)}, device, loop_repeats, warmup=0))
    floor_keys = [k for k in times if k.startswith("floor")]
    row = _row("soft_assign", f"B={B} N={N} {H}x{W}", times, "kernel", "naive", floor_keys)
    row["loop_over_e2e"] = row["timings"]["naive"]["median_ms"] / row["timings"]["e2e"]["median_ms"]
    row.update(case=list(case), identical_to_torch=ok, backend=kernels.resolve_backend(backend, R.device, R.numel()),
               bytes_moved=int(R.numel() * 4 + B * H * W * 8))
    row["floor_GBps"] = row["bytes_moved"] / (row["floor_ms"] * 1e-3) / 1e9
    return row


# ----------------------------------------------------------------------------- memory
def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _memory_child(shape: Sequence[int], num_regions: int, backend: str) -> dict[str, Any]:
    """Runs in a fresh process: peak RSS growth of one fusion after the inputs exist."""
    from posthoc import kernels

    B, C, H, W = shape
    D = torch.empty(B, C, H, W, dtype=torch.float32)
    for b in range(B):  # fill per image: no full-size temporary
        D[b].uniform_(0, 1)
    lab1 = torch.from_numpy(voronoi_labels(1, H, W, num_regions))
    L = lab1.expand(B, H, W).contiguous()
    del lab1
    # warm up the kernel the big call will use (JIT load) on a small input of the same dtypes;
    # resolve "auto" for the big input first, a small one would go to torch
    backend = kernels.resolve_backend(backend, D.device, D.numel())
    kernels.region_fuse(D[:1, :1, :64, :64].contiguous(), L[:1, :64, :64].contiguous(), num_regions, backend=backend)
    gc.collect()
    base = _rss_kib("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak-RSS counter (VmHWM) to the current RSS
    t0 = time.perf_counter()
    out = kernels.region_fuse(D, L, num_regions, backend=backend)
    dt = time.perf_counter() - t0
    peak = _rss_kib("VmHWM")
    in_bytes = D.numel() * 4 + L.numel() * L.element_size()
    extra = (peak - base) * 1024
    del out
    return {
        "shape": list(shape), "num_regions": num_regions,
        "backend": kernels.resolve_backend(backend, D.device, D.numel()),
        "input_MB": in_bytes / 2**20, "output_MB": D.numel() * 4 / 2**20, "extra_peak_MB": extra / 2**20,
        "extra_over_input": extra / in_bytes, "seconds": dt,
    }


def measure_fuse_memory(shape: Sequence[int], num_regions: int = 100, backend: str = "auto",
                        timeout: float = 900) -> dict[str, Any]:
    """Extra peak memory (RSS, output included) of ``region_fuse`` on a (B,C,H,W) CPU input.

    Runs in a subprocess so that earlier allocations of this process do not mask the peak.
    Returns a dict with ``extra_over_input`` = (peak RSS - RSS with inputs) / input bytes.
    """
    code = (
        "import json,sys; from posthoc.bench.speed import _memory_child as m; "
        f"print('MEM' + json.dumps(m({list(shape)!r}, {int(num_regions)}, {backend!r})))"
    )
    env = dict(os.environ)
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                          timeout=timeout, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"memory measurement failed ({proc.returncode}): {proc.stderr[-2000:]}")
    line = [x for x in proc.stdout.splitlines() if x.startswith("MEM")][-1]
    return json.loads(line[3:])


def measure_fuse_memory_cuda(shape: Sequence[int], num_regions: int = 100, backend: str = "auto",
                             device: Any = "cuda") -> dict[str, Any]:
    """Extra peak CUDA memory (output included) of ``region_fuse`` on a (B,C,H,W) input, in this process."""
    from posthoc import kernels

    dev = torch.device(device)
    B, C, H, W = shape
    D = torch.rand(B, C, H, W, device=dev)
    L = torch.from_numpy(voronoi_labels(1, H, W, num_regions)).to(dev).expand(B, H, W).contiguous()
    be = kernels.resolve_backend(backend, dev, D.numel())
    kernels.region_fuse(D[:1, :1, :64, :64].contiguous(), L[:1, :64, :64].contiguous(), num_regions, backend=be)
    torch.cuda.synchronize(dev)
    base = torch.cuda.memory_allocated(dev)
    torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    out = kernels.region_fuse(D, L, num_regions, backend=be)
    torch.cuda.synchronize(dev)
    dt = time.perf_counter() - t0
    extra = torch.cuda.max_memory_allocated(dev) - base
    in_bytes = D.numel() * 4 + L.numel() * L.element_size()
    del out
    return {
        "shape": list(shape), "num_regions": num_regions, "backend": be,
        "input_MB": in_bytes / 2**20, "output_MB": D.numel() * 4 / 2**20, "extra_peak_MB": extra / 2**20,
        "extra_over_input": extra / in_bytes, "seconds": dt,
    }


# ----------------------------------------------------------------------------- first-call (JIT) cost
def _first_call_child() -> dict[str, float]:
    """Runs in a fresh process: seconds of the first call of every numba kernel (import included)."""
    t0 = time.perf_counter()
    from posthoc import kernels

    x = torch.rand(1, 3, 300, 400)
    lab = torch.randint(-1, 10, (1, 300, 400), dtype=torch.int32)
    r, v = torch.rand(1, 10, 300, 400), torch.rand(1, 10)
    res: dict[str, float] = {}
    steps = [
        ("import", lambda: __import__("numba")),
        ("region_fuse int32", lambda: kernels.region_fuse(x, lab, 10, backend="numba")),
        ("region_fuse int64", lambda: kernels.region_fuse(x, lab.long(), 10, backend="numba")),
        ("region_sums int32", lambda: kernels.region_sums(x, lab, 10, backend="numba")),
        ("weighted_argmax", lambda: kernels.weighted_argmax(r, v, backend="numba")),
        ("check_values", lambda: kernels.check_values(x, 0, 1, backend="numba")),
    ]
    for name, fn in steps:
        t = time.perf_counter()
        fn()
        res[name] = time.perf_counter() - t
    res["total"] = time.perf_counter() - t0
    return res


def measure_first_call(timeout: float = 900) -> dict[str, dict[str, float]]:
    """First-call cost of the numba kernels: compile into an empty cache, then load from it.

    Two fresh processes share a new ``NUMBA_CACHE_DIR``: the first compiles every kernel
    (``cold``), the second loads the cached machine code (``cached``).
    """
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="posthoc-numba-cache-") as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        code = "import json; from posthoc.bench.speed import _first_call_child as f; print('JIT' + json.dumps(f()))"
        for label in ("cold", "cached"):
            proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True,
                                  timeout=timeout, env=env)
            if proc.returncode != 0:
                raise RuntimeError(f"first-call measurement failed ({proc.returncode}): {proc.stderr[-2000:]}")
            out[label] = json.loads([x for x in proc.stdout.splitlines() if x.startswith("JIT")][-1][3:])
    return out


# ----------------------------------------------------------------------------- report
def _versions() -> dict[str, Any]:
    v: dict[str, Any] = {"python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__}
    for mod in ("numba", "triton"):
        try:
            v[mod] = __import__(mod).__version__
        except ImportError:
            v[mod] = None
    try:
        import posthoc

        v["posthoc"] = posthoc.__version__
    except (ImportError, AttributeError):  # pragma: no cover
        v["posthoc"] = None
    return v


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    return platform.processor() or "cpu"


def _git_sha() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        return subprocess.run(["git", "rev-parse", "HEAD"], check=False, cwd=here, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):  # pragma: no cover
        return None


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def format_table(rows: list[dict[str, Any]]) -> str:
    """A plain-text table of the rows (median ms; ratios against the floor and the loop)."""
    hdr = (f"{'op':<11} {'shape':<28} {'kernel':>8} {'checked':>8} {'e2e':>8} {'torch':>8} {'loop':>9} {'floor':>8} "
           f"{'kern/fl':>7} {'chk/fl':>7} {'e2e/fl':>7} {'loop/kern':>9} {'loop/e2e':>8}")
    lines = [hdr, "-" * len(hdr)]
    for r in rows:
        t = r["timings"]
        lk = "loop" if "loop" in t else "naive"
        lines.append(
            f"{r['op']:<11} {r['shape']:<28} {t['kernel']['median_ms']:>8.1f} {t['checked']['median_ms']:>8.1f} "
            f"{t['e2e']['median_ms']:>8.1f} "
            f"{t['torch']['median_ms']:>8.1f} {_fmt(t[lk]['median_ms'] if lk in t else None):>9} "
            f"{r['floor_ms']:>8.1f} {r['kernel_over_floor']:>7.2f} {r['checked_over_floor']:>7.2f} "
            f"{r['e2e_over_floor']:>7.2f} "
            f"{_fmt(r.get('loop_over_ours')):>9} {_fmt(r.get('loop_over_e2e')):>8}"
        )
    return "\n".join(lines)


def _check_targets(rows: list[dict[str, Any]], device: torch.device) -> list[str]:
    notes = []
    for r in rows:
        ok = r["kernel_over_floor"] <= TARGET_FLOOR
        notes.append(f"{r['op']} {r['shape']}: kernel/floor {r['kernel_over_floor']:.2f} "
                     f"({'meets' if ok else 'MISSES'} <= {TARGET_FLOOR})")
        if device.type == "cpu" and r["op"] == "fuse" and r.get("loop_over_ours") is not None:
            ok = r["loop_over_ours"] >= TARGET_LOOP
            notes[-1] += f"; loop/kernel {r['loop_over_ours']:.0f} ({'meets' if ok else 'MISSES'} >= {TARGET_LOOP:.0f})"
    return notes


def format_markdown(payload: dict[str, Any]) -> str:
    """Markdown tables of a benchmark JSON payload (speed, memory, first call), for docs and the README."""
    head = (f"Device: {payload['device']} ({payload['device_name']}), {payload['threads']} threads; "
            f"torch {payload['versions']['torch']}, numba {payload['versions']['numba']}; "
            f"`posthoc-bench speed {' '.join(payload['argv'])}` at {payload['time_utc']}.")
    cols = ("| op | shape | ours (kernel) ms | kernel + check ms | `posthoc.*` end to end ms | torch fallback ms "
            "| loop ms | floor ms | kernel/floor | e2e/floor | loop/kernel |")
    lines = [head, ""]
    if payload["rows"]:
        lines += [cols, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in payload["rows"]:
        t = r["timings"]
        lk = "loop" if "loop" in t else "naive"
        loop = t[lk]["median_ms"] if lk in t else None
        lines.append(
            f"| {r['op']} | {r['shape']} | {t['kernel']['median_ms']:.1f} | {t['checked']['median_ms']:.1f} "
            f"| {t['e2e']['median_ms']:.1f} | {t['torch']['median_ms']:.1f} "
            f"| {_fmt(loop)}{' (naive argmax)' if lk == 'naive' else ''} | {r['floor_ms']:.1f} "
            f"| {r['kernel_over_floor']:.2f} | {r['e2e_over_floor']:.2f} | {_fmt(r.get('loop_over_ours'), '.0f')} |"
        )
    if payload.get("chain_rows"):
        from . import speed_chain

        lines += ["", speed_chain.format_chain_markdown(payload["chain_rows"], payload["device"]).rstrip("\n")]
    if payload.get("memory"):
        mcols = ("| input (B,C,H,W) float32 + int32 labels | backend | input MB | extra peak MB (output included) "
                 "| extra / input |")
        lines += ["", mcols, "|---|---|---|---|---|"]
        for m in payload["memory"]:
            lines.append(f"| {tuple(m['shape'])} | {m['backend']} | {m['input_MB']:.0f} | {m['extra_peak_MB']:.0f} "
                         f"| {m['extra_over_input']:.2f} |")
    if payload.get("first_call"):
        fc = payload["first_call"]
        keys = list(fc["cold"])
        lines += ["", "| numba cache | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for label in ("cold", "cached"):
            lines.append(f"| {label} | " + " | ".join(f"{fc[label][k]:.2f} s" for k in keys) + " |")
    return "\n".join(lines) + "\n"


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    write_json_atomic(path, payload)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="posthoc-bench speed", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default=None, help="cpu or cuda[:i] (default: cuda if available, else cpu)")
    p.add_argument("--backend", default="auto", choices=["auto", "numba", "triton", "torch"],
                   help="kernel backend for 'kernel' and 'e2e' (default auto)")
    p.add_argument("--repeats", type=int, default=7, help="timed runs per variant (median reported)")
    p.add_argument("--loop-repeats", type=int, default=1, help="timed runs of the slow per-region loop")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads; numba follows)")
    p.add_argument("--quick", action="store_true", help="4x smaller images, for a smoke test")
    p.add_argument("--no-loop", action="store_true", help="skip the per-region loop baseline for fuse")
    p.add_argument("--only", choices=["fuse", "assign", "chain"], default=None,
                   help="run only the fusion rows, the soft-assignment row, or the chain rows "
                        "(posthoc.bench.speed_chain)")
    p.add_argument("--no-fallback", action="store_true", help="chain rows: skip the (slow) torch fallback timings")
    p.add_argument("--memory", action="store_true",
                   help="also measure the extra peak memory of a 4K frame and a batch of 16 1024x2048 (C=19) fusion")
    p.add_argument("--jit", action="store_true",
                   help="also measure the numba first-call cost (compile into an empty cache, then a cached load)")
    p.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    p.add_argument("--markdown", type=Path, default=None, help="also write the figures as markdown tables here")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``posthoc-bench speed``; returns the exit status."""
    args = build_parser().parse_args(argv)
    if args.repeats < 1 or args.loop_repeats < 1:
        print("error: --repeats and --loop-repeats must be >= 1", file=sys.stderr)
        return 2
    if args.threads is not None:
        if args.threads < 1:
            print("error: --threads must be >= 1", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda requested but CUDA is not available", file=sys.stderr)
        return 2
    from posthoc import kernels

    try:
        kernels.resolve_backend(args.backend, device, 1 << 30)
    except (ValueError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    fuse_cases = QUICK_FUSE_CASES if args.quick else FUSE_CASES
    assign_case = QUICK_ASSIGN_CASE if args.quick else ASSIGN_CASE
    rows = []
    chain_rows: list[dict[str, Any]] = []
    with torch.inference_mode():
        if args.only in (None, "chain"):
            from . import speed_chain

            hw = (256, 512) if args.quick else (1024, 2048)
            chain_rows = speed_chain.bench_chain(*hw, device, repeats=args.repeats,
                                                 fallback_repeats=args.loop_repeats,
                                                 with_fallback=not args.no_fallback)
        if args.only in (None, "fuse"):
            for case in fuse_cases:
                rows.append(bench_fuse(case, device, repeats=args.repeats, loop_repeats=args.loop_repeats,
                                       backend=args.backend, with_loop=not args.no_loop))
                print(f"[speed] fuse {rows[-1]['shape']}: kernel {rows[-1]['timings']['kernel']['median_ms']:.1f} ms, "
                      f"floor {rows[-1]['floor_ms']:.1f} ms", file=sys.stderr)
        if args.only in (None, "assign"):
            rows.append(bench_assign(assign_case, device, repeats=args.repeats, loop_repeats=max(1, args.loop_repeats),
                                     backend=args.backend))
    memory = []
    if args.memory:
        for shape in ([(1, 19, 540, 960), (4, 19, 256, 512)] if args.quick else
                      [(1, 19, 2160, 3840), (16, 19, 1024, 2048)]):
            for be in dict.fromkeys([kernels.resolve_backend(args.backend, device, 1 << 30), "torch"]):
                if device.type == "cuda":
                    memory.append(measure_fuse_memory_cuda(shape, 100, be, device))
                else:
                    memory.append(measure_fuse_memory(shape, 100, be))
    jit = measure_first_call() if args.jit and device.type == "cpu" else None
    threads = torch.get_num_threads()
    print(f"posthoc speed benchmark on {device} "
          f"({_cpu_name() if device.type == 'cpu' else torch.cuda.get_device_name(device)}), "
          f"{threads} threads, backend={args.backend}"
          + (f" -> {', '.join(sorted({r['backend'] for r in rows}))}" if rows else ""))
    if rows:
        print("median ms; floor = same bytes moved by a streaming copy/reduction in this run")
        print(format_table(rows))
        for note in _check_targets(rows, device):
            print(note)
    if device.type == "cpu" and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
        print("note: OMP_WAIT_POLICY is not PASSIVE: torch's OpenMP threads spin after each op and, on a machine "
              "with few or shared cores, slow the numba kernels and torch's own small reductions (see docs/kernels.md)")
    if chain_rows:
        from . import speed_chain

        print("chain ops: median ms; floor = bytes the op must move / bandwidth of a large copy "
              "timed interleaved in this run")
        print(speed_chain.format_chain_table(chain_rows, device))
    for m in memory:
        print(f"memory {tuple(m['shape'])}: input {m['input_MB']:.0f} MB, extra peak {m['extra_peak_MB']:.0f} MB "
              f"(output {m['output_MB']:.0f} MB included) = {m['extra_over_input']:.2f}x input, backend {m['backend']}")
    if jit is not None:
        for label, res in jit.items():
            print(f"first call ({label} numba cache): " + ", ".join(f"{k} {v:.2f} s" for k, v in res.items()))
    if args.out is not None or args.markdown is not None:
        payload = {
            "benchmark": "posthoc.bench.speed",
            "argv": list(argv) if argv is not None else sys.argv[1:],
            "time_utc": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device": str(device),
            "device_name": _cpu_name() if device.type == "cpu" else torch.cuda.get_device_name(device),
            "cpu_count": os.cpu_count(),
            "threads": threads,
            "versions": _versions(),
            "git_sha": _git_sha(),
            "targets": {"ours_over_floor": TARGET_FLOOR, "loop_over_ours": TARGET_LOOP},
            "rows": rows,
            "chain_rows": chain_rows,
            "memory": memory,
            "first_call": jit,
        }
        if args.out is not None:
            _write_json(args.out, payload)
            print(f"wrote {args.out}")
        if args.markdown is not None:
            write_text_atomic(args.markdown, format_markdown(payload))
            print(f"wrote {args.markdown}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    logging.basicConfig(level=logging.WARNING)
    sys.exit(main())
