"""state_dict / load_state_dict / sync of every metric accumulator.

* a state survives ``np.savez`` + ``np.load(allow_pickle=False)`` and gives the same metrics;
* the states of contiguous blocks of frames, concatenated in block order, give exactly the
  metrics of one accumulator over all frames (pixel smiyc / exact, component, semantic,
  open-IoU, panoptic, and the two-pass protocol with a ``reduce`` hook);
* ``sync`` over a real 2-process gloo group equals one process, every value within 1e-9;
* bad states and a rank that dies raise errors that say what happened.
"""
from __future__ import annotations

import io
import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from posthoc.errors import DTypeError, ShapeError, ValueRangeError
from posthoc.metrics import (
    ComponentMetrics,
    OpenIoU,
    PanopticQuality,
    PixelMetrics,
    SemanticMetrics,
    evaluate_anomaly_maps,
)
from posthoc.metrics._state import MetricSyncError

H, W = 48, 64
N_FRAMES = 7


def _frames(seed: int = 0, n: int = N_FRAMES, dtype=np.float16):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        lab = np.zeros((H, W), np.uint8)
        y, x = rng.integers(4, H - 20), rng.integers(4, W - 20)
        lab[y:y + 14, x:x + 14] = 1
        lab[-4:] = 255
        if i == 2:
            lab[2:5, 2:5] = 1  # a small GT component (void for the anomaly preset)
        s = rng.random((H, W)) * 0.6 + 0.4 * lab * rng.random((H, W))
        s = np.round(s, 2).astype(dtype)  # ties across frames exercise the smiyc tie quirk
        out.append((s, lab))
    return out


def _semantic_frames(seed: int = 0, n: int = N_FRAMES, k: int = 5):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        t = rng.integers(0, k, (H, W))
        t[:3] = 255
        p = np.where(rng.random((H, W)) < 0.7, np.clip(t, 0, k - 1), rng.integers(0, k, (H, W)))
        out.append((p, t))
    return out


def _panoptic_frames(seed: int = 0, n: int = N_FRAMES, k: int = 4):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        gs = rng.integers(0, k + 1, (H // 8, W // 8)).repeat(8, 0).repeat(8, 1)  # k = unknown
        gi = rng.integers(0, 3, (H // 8, W // 8)).repeat(8, 0).repeat(8, 1)
        ps, pi = gs.copy(), gi.copy()
        flip = rng.random(gs.shape) < 0.15
        ps[flip] = rng.integers(0, k + 1, int(flip.sum()))
        gs[:4] = 255
        out.append((ps, pi, gs, gi))
    return out


def _roundtrip(state: dict) -> dict:
    buf = io.BytesIO()
    np.savez(buf, **state)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _assert_same(a, b, path="") -> None:
    """Every number of two result dicts equal within 1e-9 (NaN equal NaN); arrays compared element-wise."""
    if isinstance(a, dict):
        assert set(a) == set(b), path
        for k in a:
            _assert_same(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, (list, tuple)) and any(isinstance(x, (dict, list)) for x in a):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, (list, tuple, np.ndarray)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.shape == b.shape, path
        if a.dtype.kind in "fiu":
            np.testing.assert_allclose(a, b, rtol=0, atol=1e-9, equal_nan=True, err_msg=path)
        else:
            assert (a == b).all(), path
    elif isinstance(a, float) and math.isnan(a):
        assert isinstance(b, float) and math.isnan(b), path
    elif isinstance(a, (int, float)) and not isinstance(a, bool):
        assert abs(a - b) <= 1e-9, (path, a, b)
    else:
        assert a == b, path


# ------------------------------------------------------------------------- builders
def _pixel(mode, frames):
    m = PixelMetrics(mode=mode)
    for s, lab in frames:
        m.update(s, lab)
    return m


def _component(frames, thr=0.5):
    m = ComponentMetrics(threshold=thr, min_pred_size=10, min_gt_size=20)
    for s, lab in frames:
        m.update(s, lab)
    return m


def _semantic(frames):
    m = SemanticMetrics(5, seen=[0, 1, 2])
    for p, t in frames:
        m.update(p, t)
    return m


def _openiou(frames):
    m = OpenIoU(4)
    for p, t in frames:
        m.update(p, t)
    return m


def _panoptic(frames):
    m = PanopticQuality(4, thing_ids=[2, 3])
    for f in frames:
        m.update(*f)
    return m


def _blocks(seq, n):
    k = len(seq)
    return [seq[i * k // n:(i + 1) * k // n] for i in range(n)]


CASES = {
    "pixel-smiyc": (lambda fr: _pixel("smiyc", fr), lambda: PixelMetrics("smiyc"), _frames),
    "pixel-exact-f16": (lambda fr: _pixel("exact", fr), lambda: PixelMetrics("exact"), _frames),
    "pixel-exact-f32": (lambda fr: _pixel("exact", fr), lambda: PixelMetrics("exact"),
                        lambda seed=0: _frames(seed, dtype=np.float32)),
    "component": (_component, lambda: ComponentMetrics(0.5, 10, 20), _frames),
    "semantic": (_semantic, lambda: SemanticMetrics(5, seen=[0, 1, 2]), _semantic_frames),
    "openiou": (_openiou, lambda: OpenIoU(4), lambda seed=0: [
        (np.clip(p, 0, 4), np.where(t == 255, 255, np.clip(t, 0, 4))) for p, t in _semantic_frames(seed)]),
    "panoptic": (_panoptic, lambda: PanopticQuality(4, thing_ids=[2, 3]), _panoptic_frames),
}


def _result(m):
    return m.compute(curve_points=None) if isinstance(m, PixelMetrics) else m.compute()


@pytest.mark.parametrize("case", sorted(CASES))
def test_state_roundtrip_through_npz(case):
    build, empty, frames = CASES[case]
    m = build(frames())
    st = m.state_dict()
    assert all(isinstance(v, np.ndarray) for v in st.values())
    m2 = empty()
    m2.load_state_dict(_roundtrip(st))
    _assert_same(_result(m), _result(m2))
    # loading replaces, it does not add
    m2.load_state_dict(_roundtrip(st))
    _assert_same(_result(m), _result(m2))


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("n_blocks", [2, 3])
def test_block_states_concatenated_equal_one_run(case, n_blocks):
    build, empty, frames = CASES[case]
    fr = frames()
    whole = build(fr)
    parts = [build(b) if b else empty() for b in _blocks(fr, n_blocks)]
    merged = empty()
    merged.load_state_dict(_roundtrip(parts[0].state_dict()))
    for p in parts[1:]:
        other = empty()
        other.load_state_dict(_roundtrip(p.state_dict()))
        merged.merge(other)
    _assert_same(_result(whole), _result(merged))


def test_pixel_state_keys_follow_the_mode():
    st = _pixel("smiyc", _frames()).state_dict()
    assert st["bin_sizes"].shape == (N_FRAMES,) and st["bin_sizes"].sum() == st["bin_thresholds"].shape[0]
    assert str(st["mode"]) == "smiyc" and st["n_frames"] == N_FRAMES
    ex = _pixel("exact", _frames()).state_dict()
    assert ex["pos_hist"].shape == (65536,) and ex["pos_runs"].shape == (0,)
    with pytest.raises(ValueRangeError, match="lacks"):
        PixelMetrics("exact").load_state_dict(st)


def test_load_state_dict_refuses_other_settings_and_bad_arrays():
    st = _pixel("smiyc", _frames()).state_dict()
    with pytest.raises(ValueRangeError, match="num_bins=768.*num_bins=100"):
        PixelMetrics("smiyc", num_bins=100).load_state_dict(st)
    bad = dict(st, bin_sizes=st["bin_sizes"] + 1)
    with pytest.raises(ShapeError, match="add up"):
        PixelMetrics("smiyc").load_state_dict(bad)
    with pytest.raises(DTypeError, match="dict of arrays"):
        PixelMetrics().load_state_dict([1, 2])
    with pytest.raises(ValueRangeError, match=">= 0"):
        PixelMetrics().load_state_dict(dict(st, n_pos=np.array(-1)))
    cst = _component(_frames()).state_dict()
    with pytest.raises(ValueRangeError, match="threshold=0.5.*threshold=0.25"):
        ComponentMetrics(0.25, 10, 20).load_state_dict(cst)
    with pytest.raises(ShapeError, match="n_frames"):
        ComponentMetrics(0.5, 10, 20).load_state_dict(dict(cst, gt_sizes=cst["gt_sizes"][:-1]))
    sst = _semantic(_semantic_frames()).state_dict()
    with pytest.raises(ValueRangeError, match="seen"):
        SemanticMetrics(5).load_state_dict(sst)
    with pytest.raises(ShapeError, match=r"\(5,5\)"):
        SemanticMetrics(5, seen=[0, 1, 2]).load_state_dict(dict(sst, confusion=np.zeros((4, 4), np.int64)))
    with pytest.raises(DTypeError, match="integer"):
        SemanticMetrics(5, seen=[0, 1, 2]).load_state_dict(dict(sst, confusion=sst["confusion"] * 0.5))
    pst = _panoptic(_panoptic_frames()).state_dict()
    with pytest.raises(ValueRangeError, match="thing_ids"):
        PanopticQuality(4, thing_ids=[1]).load_state_dict(pst)
    with pytest.raises(ShapeError, match=r"\(5,\)"):
        PanopticQuality(4, thing_ids=[2, 3]).load_state_dict(dict(pst, tp=pst["tp"][:3]))


def test_unset_component_threshold_roundtrips():
    m = ComponentMetrics()
    st = m.state_dict()
    assert np.isnan(st["threshold"])
    ComponentMetrics().load_state_dict(st)  # NaN == NaN for the settings check


def test_sync_without_process_group_says_so():
    if dist.is_initialized():
        pytest.skip("a process group is already initialized in this process")
    with pytest.raises(MetricSyncError, match="init_process_group"):
        PixelMetrics().sync()


def test_evaluate_maps_reduce_hook_over_blocks_equals_one_run():
    """The two-pass protocol with a reduce hook that merges other blocks' states = one run."""
    fr = _frames(3, n=6)
    maps = [(lab, {"a": s, "b": (s * 0.5).astype(s.dtype)}) for s, lab in fr]
    whole = evaluate_anomaly_maps(maps, track="obstacle", curve_points=None)
    blocks = _blocks(maps, 3)

    def run_block(i):
        def reduce(stage, accs):
            # add the other blocks' states around this one, in block order
            for k, acc in accs.items():
                parts = []
                for j, b in enumerate(blocks):
                    if j == i:
                        parts.append(acc.state_dict())
                        continue
                    other = type(acc).__new__(type(acc))
                    other.__dict__.update(acc.__dict__)
                    other.reset()
                    for lab, m in b:
                        other.update(m[k], lab)
                    parts.append(other.state_dict())
                acc.load_state_dict(parts[0])
                for p in parts[1:]:
                    o = type(acc).__new__(type(acc))
                    o.__dict__.update(acc.__dict__)
                    o.load_state_dict(p)
                    acc.merge(o)
        return evaluate_anomaly_maps(blocks[i], track="obstacle", curve_points=None, names=("a", "b"), reduce=reduce)

    for i in range(3):
        _assert_same(whole, run_block(i))
    # a process with no frame of its own still takes part when the names are known
    res = evaluate_anomaly_maps([], names=("a",), on_empty="record")
    assert "error" in res["a"]["pixel"]


# ------------------------------------------------------------------------- real gloo group
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, outdir: str, die: bool) -> None:
    from datetime import timedelta

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=timedelta(seconds=20))
    try:
        if die:
            if rank == 1:
                os._exit(3)
            try:
                PixelMetrics().sync()
            except MetricSyncError as e:
                with open(os.path.join(outdir, "error.txt"), "w") as f:
                    f.write(str(e))
            # leave without tearing down the broken gloo group: its destructor may abort the
            # process (SIGABRT) once the peer is gone, which is gloo's behaviour, not sync()'s
            os._exit(0)
        results = {}
        for case, (build, empty, frames) in CASES.items():
            fr = frames()
            mine = _blocks(fr, world)[rank]
            m = build(mine) if mine else empty()
            m.sync()
            results[case] = m.state_dict()
        if rank == 0:
            np.savez(os.path.join(outdir, "synced.npz"),
                     **{f"{c}/{k}": v for c, st in results.items() for k, v in st.items()})
    finally:
        if not die:
            dist.destroy_process_group()


def test_sync_over_two_gloo_processes_equals_one_process(tmp_path):
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path), False), nprocs=2, start_method="spawn")
    with np.load(tmp_path / "synced.npz", allow_pickle=False) as z:
        synced = {k: z[k] for k in z.files}
    for case, (build, empty, frames) in CASES.items():
        m = empty()
        m.load_state_dict({k.split("/", 1)[1]: v for k, v in synced.items() if k.startswith(case + "/")})
        _assert_same(_result(build(frames())), _result(m))


def test_sync_when_a_rank_dies_raises_a_clear_error(tmp_path):
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, str(tmp_path), True)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(90)
    assert [p.exitcode for p in procs] == [0, 3]
    msg = (tmp_path / "error.txt").read_text()
    assert "rank 0" in msg and "another rank probably died" in msg
