"""Speed of the whole post-hoc chain against the memory-bandwidth floor.

``posthoc-bench speed`` runs these rows after the fusion-core rows of
:mod:`posthoc.bench.speed` (``--only chain`` runs only these). At (H,W) = 1024x2048
(``--quick``: 256x512), in one run:

* ``soft_assign(size=)``: N=32 blob-like soft masks at (H/4,W/4) resized to (H,W);
* ``offset_resample`` at C=19 and C=1, with the offsets of ``offsets_from_proposals``
  (``prop``: most pixels do not move) and with random offsets of a few pixels everywhere
  (``rand``: the worst case);
* ``offsets_from_proposals`` on ~100 Voronoi regions;
* ``refine`` with 100 masks at (H/4,W/4), 30 of them kept;
* ``split_components`` of ~100 Voronoi regions;
* ``fuse`` at C=1 end to end (input checks and a fresh output included);
* ``region_class_logits`` of C=19 semantic logits over ~100 regions (the class logits that
  refinement derives for proposals without their own);
* ``objectomaly`` (the peer: region means, Laplacian sharpening and a 7x7 Gaussian) at C=1;
* ``chain C=1`` / ``chain C=19``: one frame of CSL2 (soft_assign + split_components + fuse
  of D at C channels) + refine (of the C=1 anomaly map) + offsets (offsets_from_proposals
  + offset_resample of the fused map).

Columns: ``ours`` is the public op (default backend); ``fallback`` the same op with
``backend="torch"`` (the code these kernels replaced, which stays the semantics reference) or,
for ``soft_assign``, the naive resize-everything-then-argmax. ``floor`` is the bytes the op
must move divided by the bandwidth of a large copy timed interleaved with ``ours`` in the
same run (bandwidth = bytes read + written per second):

=========================  ===============================================================
op                          bytes counted
=========================  ===============================================================
soft_assign(size=)          R read once *as if at full resolution*: N*H*W*4
offset_resample             scores read + offsets + confidence read + output written
offsets_from_proposals      labels read (int32) + 3 float32 planes written
refine                      anomaly read + masks at low resolution read + output written
split_components            labels read (int32) + int64 components written
fuse e2e                    D read twice + labels read twice + output written once
region_class_logits         logits read once + labels read once (the output is tiny)
objectomaly                 anomaly read + labels read + output written
chain                       the sum of its ops' floors
=========================  ===============================================================

Targets (CPU): soft_assign <= 1.0x, offset_resample <= 3x, offsets_from_proposals
<= 10x, refine <= 3x, split_components <= 10x, fuse e2e <= 2x.
"""
from __future__ import annotations

import functools
import statistics
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from .speed import time_calls

__all__ = ["CHAIN_TARGETS", "bench_chain", "blob_masks", "copy_bandwidth", "format_chain_markdown",
           "format_chain_table"]

#: op -> target ours/floor on the CPU
CHAIN_TARGETS = {
    "soft_assign(size=)": 1.0,
    "offset_resample": 3.0,
    "offsets_from_proposals": 10.0,
    "refine": 3.0,
    "split_components": 10.0,
    "fuse e2e": 2.0,
}


def blob_masks(batch: int, num: int, height: int, width: int, *, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(B,N,h,w) Gaussian-blob soft masks in [0,1] and (B,N) validities, as a CSL proposer emits."""
    g = torch.Generator().manual_seed(seed)
    cy = torch.rand(batch, num, 1, 1, generator=g) * height
    cx = torch.rand(batch, num, 1, 1, generator=g) * width
    s = (torch.rand(batch, num, 1, 1, generator=g) * 0.15 + 0.05) * min(height, width)
    yy = torch.arange(height, dtype=torch.float32).view(1, 1, height, 1)
    xx = torch.arange(width, dtype=torch.float32).view(1, 1, 1, width)
    r = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * s * s))
    return r.float().contiguous(), torch.rand(batch, num, generator=g)


def copy_bandwidth(src: torch.Tensor, dst: torch.Tensor) -> Callable[[], Any]:
    """A large copy (read + write ``src.nbytes`` each); its time gives the bandwidth of the run."""
    return lambda: dst.copy_(src)


def bench_chain(height: int = 1024, width: int = 2048, device: Any = "cpu", *, repeats: int = 5,
                fallback_repeats: int = 1, with_fallback: bool = True, seed: int = 0) -> list[dict[str, Any]]:
    """Time every op of the chain and the chain per frame; rows with ours, fallback, floor and ratios."""
    import posthoc
    from posthoc import peers
    from posthoc.bench.speed import voronoi_labels

    dev = torch.device(device)
    H, W = height, width
    h, w = H // 4, W // 4
    P = H * W
    g = torch.Generator().manual_seed(seed)
    big = torch.rand(64 << 18, generator=g).to(dev)  # 64 MiB float32
    big_out = torch.empty_like(big)
    copy = copy_bandwidth(big, big_out)

    lab = torch.from_numpy(voronoi_labels(1, H, W, 100, seed=seed)).to(dev)  # int32
    R, V = blob_masks(1, 32, h, w, seed=seed)
    R, V = R.to(dev), V.to(dev)
    D1 = torch.rand(1, 1, H, W, generator=g).to(dev)
    L19 = (torch.randn(1, 19, H, W, generator=g) * 3).to(dev)
    D19 = torch.softmax(L19, dim=1)
    masks, _ = blob_masks(1, 100, h, w, seed=seed + 1)
    mask_logits = ((masks - 0.3) * 20).to(dev)
    cls = torch.randn(1, 100, 20, generator=g)
    cls[0, :30, 2 + (torch.arange(30) % 9)] = 12.0  # 30 masks confidently stuff (kept by refine)
    cls = cls.to(dev)
    off_p, conf_p = posthoc.offsets_from_proposals(lab)
    off_r = (torch.randn(1, 2, H, W, generator=g) * 2).to(dev)
    conf_r = torch.rand(1, 1, H, W, generator=g).to(dev)

    def nbytes(*shapes_and_sizes: tuple[int, int]) -> int:
        return sum(n * s for n, s in shapes_and_sizes)

    def naive_soft_assign():
        up = torch.nn.functional.interpolate(R, size=(H, W), mode="bilinear", align_corners=False)
        return (up * V[:, :, None, None]).argmax(1)

    def chain(D, backend):
        # CSL2 on D, Mask2Anomaly refinement of the C=1 anomaly map, offsets from the split labels
        labels = posthoc.soft_assign(R, V, size=(H, W), backend=backend)
        labels = posthoc.split_components(labels)
        fused = posthoc.fuse(D, labels, normalize="none", backend=backend)
        refined = posthoc.refine(fused if D.shape[1] == 1 else D1, mask_logits, cls)
        o, c = posthoc.offsets_from_proposals(labels, backend=backend)
        return refined, posthoc.offset_resample(fused, o, c, backend=backend)

    F4 = 4
    rows_spec: list[tuple[str, str, Callable[[], Any], Callable[[], Any] | None, int, str]] = [
        ("soft_assign(size=)", f"N=32 {h}x{w} -> {H}x{W}",
         lambda: posthoc.soft_assign(R, V, size=(H, W)), naive_soft_assign, 32 * P * F4, "naive"),
        ("offset_resample", f"C=19 {H}x{W} prop",
         lambda: posthoc.offset_resample(D19, off_p, conf_p),
         lambda: posthoc.offset_resample(D19, off_p, conf_p, backend="torch"),
         nbytes((19 * P, 8), (3 * P, 4)), "torch"),
        ("offset_resample", f"C=19 {H}x{W} rand",
         lambda: posthoc.offset_resample(D19, off_r, conf_r),
         lambda: posthoc.offset_resample(D19, off_r, conf_r, backend="torch"),
         nbytes((19 * P, 8), (3 * P, 4)), "torch"),
        ("offset_resample", f"C=1 {H}x{W} prop",
         lambda: posthoc.offset_resample(D1, off_p, conf_p),
         lambda: posthoc.offset_resample(D1, off_p, conf_p, backend="torch"), nbytes((P, 8), (3 * P, 4)), "torch"),
        ("offset_resample", f"C=1 {H}x{W} rand",
         lambda: posthoc.offset_resample(D1, off_r, conf_r),
         lambda: posthoc.offset_resample(D1, off_r, conf_r, backend="torch"), nbytes((P, 8), (3 * P, 4)), "torch"),
        ("offsets_from_proposals", f"100 regions {H}x{W}",
         lambda: posthoc.offsets_from_proposals(lab),
         lambda: posthoc.offsets_from_proposals(lab, backend="torch"), nbytes((P, 4), (3 * P, 4)), "torch"),
        ("refine", f"100 masks {h}x{w} -> {H}x{W}",
         lambda: posthoc.refine(D1, mask_logits, cls),
         None, nbytes((2 * P, 4), (100 * h * w, 4)), "-"),
        ("split_components", f"100 regions {H}x{W}",
         lambda: posthoc.split_components(lab),
         lambda: _split_pixels(lab), nbytes((P, 4), (P, 8)), "pixel union-find"),
        ("fuse e2e", f"C=1 N=100 {H}x{W}",
         lambda: posthoc.fuse(D1, lab, normalize="none"),
         lambda: posthoc.fuse(D1, lab, normalize="none", backend="torch"), nbytes((2 * P, 4), (2 * P, 4), (P, 4)),
         "torch"),
        ("region_class_logits", f"C=19 N=100 {H}x{W}",
         lambda: posthoc.region_class_logits(L19, lab),
         lambda: posthoc.region_class_logits(L19, lab, backend="torch"), nbytes((19 * P, 4), (P, 4)), "torch"),
        ("objectomaly", f"C=1 N=100 {H}x{W}",
         lambda: peers.objectomaly(D1, lab), None, nbytes((P, 4), (P, 4), (P, 4)), "-"),
    ]
    rows: list[dict[str, Any]] = []
    for op, shape, ours, fallback, nb_, fb_name in rows_spec:
        t = time_calls({"ours": ours, "copy": copy}, dev, repeats)
        rows.append(_make_row(op, shape, t, nb_, 2 * big.numel() * 4, fallback if with_fallback else None,
                              fb_name, dev, fallback_repeats))
    # the chain per frame
    fb = {r["op"] + r["shape"]: r["bytes"] for r in rows}
    for C, D in ((1, D1), (19, D19)):
        b_ops = (fb[f"soft_assign(size=)N=32 {h}x{w} -> {H}x{W}"] + fb[f"split_components100 regions {H}x{W}"]
                 + nbytes((2 * C * P, 4), (2 * P, 8), (C * P, 4)) + fb[f"refine100 masks {h}x{w} -> {H}x{W}"]
                 + fb[f"offsets_from_proposals100 regions {H}x{W}"] + nbytes((C * P, 8), (3 * P, 4)))
        t = time_calls({"ours": functools.partial(chain, D, "auto"), "copy": copy}, dev, repeats)
        rows.append(_make_row("chain", f"C={C} {H}x{W} (CSL2+refine+offsets)", t, b_ops, 2 * big.numel() * 4,
                              functools.partial(chain, D, "torch") if with_fallback else None, "torch", dev,
                              fallback_repeats))
    return rows


def _split_pixels(lab: torch.Tensor) -> np.ndarray:
    from posthoc.components import connected_components

    return connected_components(lab.cpu().numpy(), 8, 0, method="pixels")[0]


def _make_row(op: str, shape: str, t: dict[str, list[float]], nbytes_op: int, nbytes_copy: int,
              fallback: Callable[[], Any] | None, fb_name: str, dev: torch.device, fb_repeats: int) -> dict[str, Any]:
    ours = statistics.median(t["ours"]) * 1e3
    copy_ms = statistics.median(t["copy"]) * 1e3
    bw = nbytes_copy / (copy_ms * 1e-3)  # bytes per second, read + written
    floor = nbytes_op / bw * 1e3
    row: dict[str, Any] = {"op": op, "shape": shape, "ours_ms": ours, "ours_min_ms": min(t["ours"]) * 1e3,
                           "copy_ms": copy_ms, "bandwidth_GBps": bw / 1e9, "bytes": nbytes_op, "floor_ms": floor,
                           "ours_over_floor": ours / floor, "fallback": fb_name, "fallback_ms": None,
                           "fallback_over_ours": None, "target": CHAIN_TARGETS.get(op)}
    if fallback is not None:
        tf = time_calls({"fb": fallback}, dev, fb_repeats)
        row["fallback_ms"] = statistics.median(tf["fb"]) * 1e3
        row["fallback_over_ours"] = row["fallback_ms"] / ours
    return row


def _fmt(x: float | None, spec: str = ".1f") -> str:
    return "-" if x is None else format(x, spec)


def _verdict(r: dict[str, Any], device: torch.device) -> str:
    if r["target"] is None or device.type != "cpu":
        return ""
    return "meets" if r["ours_over_floor"] <= r["target"] else "MISSES"


def format_chain_table(rows: list[dict[str, Any]], device: Any = "cpu") -> str:
    """Plain-text table: median ms, floor, ratio, target, fallback and fallback/ours."""
    dev = torch.device(device)
    hdr = (f"{'op':<23} {'shape':<36} {'ours':>8} {'floor':>7} {'ours/fl':>7} {'target':>6} {'':>6} "
           f"{'fallback':>9} {'fb/ours':>7}  fallback is")
    lines = [hdr, "-" * len(hdr)]
    for r in rows:
        lines.append(f"{r['op']:<23} {r['shape']:<36} {r['ours_ms']:>8.1f} {r['floor_ms']:>7.2f} "
                     f"{r['ours_over_floor']:>7.1f} {_fmt(r['target']):>6} {_verdict(r, dev):>6} "
                     f"{_fmt(r['fallback_ms']):>9} {_fmt(r['fallback_over_ours']):>7}  {r['fallback']}")
    return "\n".join(lines)


def format_chain_markdown(rows: list[dict[str, Any]], device: Any = "cpu") -> str:
    """The same table in markdown."""
    dev = torch.device(device)
    lines = ["| op | shape | ours ms | floor ms | ours/floor | target | fallback ms | fallback/ours | fallback |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        tgt = "" if r["target"] is None else f"<= {r['target']:g} {_verdict(r, dev)}"
        lines.append(f"| {r['op']} | {r['shape']} | {r['ours_ms']:.1f} | {r['floor_ms']:.2f} | "
                     f"{r['ours_over_floor']:.1f} | {tgt} | {_fmt(r['fallback_ms'])} | "
                     f"{_fmt(r['fallback_over_ours'])} | {r['fallback']} |")
    return "\n".join(lines) + "\n"
