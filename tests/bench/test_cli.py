"""posthoc-bench end to end on a tiny fake world (SMIYC layout) with small fake teachers.

The fake world has a textured background, a void band at the bottom and one magenta
square anomaly per frame aligned with an 8-pixel grid; the fake teacher sees the
magenta colour through per-pixel noise, so fusing with grid proposals must raise AP.
"""
from __future__ import annotations

import json
import sys
import types
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from posthoc.adapters import register_proposals, register_teacher
from posthoc.adapters.base import ProposalSource, Teacher
from posthoc.bench import cli, evaluations, fingerprint
from posthoc.types import Proposals, TeacherOutput

H, W = 64, 96


class _FakeTeacher(Teacher):
    """Anomaly = sigmoid(magenta-ness + fixed noise); semantic logits from brightness."""

    kind = "anomaly"
    semantic_class_names = ("road", "building", "sky")

    def __init__(self, weights=None, device=None, noise: float = 1.5):
        self.noise = noise

    def __call__(self, images):
        x = torch.as_tensor(np.asarray(images)).float() / 255.0  # (B,H,W,3)
        mag = x[..., 0] + x[..., 2] - 2 * x[..., 1]  # ~2 on magenta, ~0 on grey
        g = torch.Generator().manual_seed(int(x.sum() * 1000) % (2**31))
        z = torch.randn(mag.shape, generator=g)
        score = torch.sigmoid(3.0 * mag - 3.0 + self.noise * z)[:, None]
        gray = x.mean(-1)
        logits = torch.stack([4 * (0.5 - gray), 4 * (gray - 0.5), torch.zeros_like(gray)], 1)
        return TeacherOutput(score, "anomaly", ["anomaly"], logits=logits)


class _SemanticTeacher(Teacher):
    kind = "semantic"

    def __init__(self, weights=None, device=None):
        pass

    def __call__(self, images):
        b, h, w = np.asarray(images).shape[:3]
        return TeacherOutput(torch.zeros(b, 2, h, w), "semantic", ["a", "b"])


class _GridProposals(ProposalSource):
    def __init__(self, weights=None, cell: int = 8):
        self.cell = cell

    def __call__(self, images, teacher_output=None):
        b, h, w = np.asarray(images).shape[:3]
        yy, xx = np.mgrid[0:h, 0:w]
        lab = (yy // self.cell) * ((w + self.cell - 1) // self.cell) + xx // self.cell
        return Proposals(labels=torch.from_numpy(np.broadcast_to(lab, (b, h, w)).copy()))


register_teacher("_bench_fake")(_FakeTeacher)
register_teacher("_bench_semantic")(_SemanticTeacher)
register_proposals("_bench_grid")(_GridProposals)


def _png(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr)
    assert ok
    path.write_bytes(buf.tobytes())


def make_world(root: Path, n: int = 4, seed: int = 0, unlabeled: int = 0) -> Path:
    """<root>/test/dataset_{Anomaly,Obstacle}Track in the SMIYC layout; returns <root>."""
    rng = np.random.default_rng(seed)
    for ti, track in enumerate(("dataset_AnomalyTrack", "dataset_ObstacleTrack")):
        tdir = root / "test" / track
        for i in range(n + unlabeled):
            img = np.repeat(rng.integers(90, 160, (H, W, 1)), 3, axis=2).astype(np.uint8)
            lab = np.zeros((H, W), np.uint8)
            lab[-6:] = 255
            if i % 4 != 3:  # one frame in four has no anomaly
                y, x = 8 * rng.integers(1, 4), 8 * rng.integers(1, 8)
                s = 24 if ti == 0 else 16
                img[y : y + s, x : x + s] = (200, 60, 200)
                lab[y : y + s, x : x + s] = 1
            fid = f"test_{i:04d}"
            _png(tdir / "images" / f"{fid}.png", img)
            if i < n:
                _png(tdir / "labels_masks" / f"{fid}_labels_semantic.png", lab)
        (tdir / "world.json").write_text(json.dumps({"config": {"generator": "test-fake", "size": [H, W]}}))
    return root


@pytest.fixture
def world(tmp_path, monkeypatch):
    root = make_world(tmp_path / "world")
    for v in ("POSTHOC_DATA_ROOT", "POSTHOC_SMIYC_ROOT"):
        monkeypatch.delenv(v, raising=False)
    calls = []

    def fake_synthetic(split, track, seed):
        calls.append((split, track, seed))
        return root / split / ("dataset_AnomalyTrack" if track == "anomaly" else "dataset_ObstacleTrack")

    monkeypatch.setattr(evaluations, "_synthetic_track", fake_synthetic)
    _pin_code_version(monkeypatch)
    return root, calls


def _pin_code_version(monkeypatch):
    """The cache key includes a hash of the source files; pin it (the checkout is shared and live)."""
    monkeypatch.setattr(fingerprint, "code_fingerprint", lambda: "pinned")


def _run(args, capsys=None):
    rc = cli.main(args)
    out = capsys.readouterr() if capsys is not None else None
    return rc, out


def test_end_to_end_synthetic_default_resume_and_invalidation(world, tmp_path, capsys):
    _root, calls = world
    out = tmp_path / "run"
    args = ["smiyc", "--teacher", "_bench_fake", "--proposals", "_bench_grid", "--out", str(out), "--quiet",
            "--overlays", "1"]
    rc, io = _run(args, capsys)
    assert rc == 0, io.err
    assert calls == [("test", "anomaly", 0), ("test", "obstacle", 0)]  # no --data-root: the synthetic world
    res = json.loads((out / "results.json").read_text())
    assert [e["dataset"] for e in res["evaluations"]] == ["AnomalyTrack-all", "ObstacleTrack-all"]
    # the peers run where they can: objectomaly on any source; maskomaly needs raw masks, ugains SAM weights
    keys = ["teacher", "csl2@_bench_grid", "csl2+refine@_bench_grid", "csl2+refine+offsets@_bench_grid",
            "objectomaly@_bench_grid"]
    assert list(res["variants"]) == keys
    for ev in res["evaluations"]:
        assert "SYNTHETIC WORLD" in ev["title"]
        t = ev["teachers"]["_bench_fake"]
        assert t["frames"] == 4 and t["frames_labelled"] == 4 and t["frames_cached"] == 0
        for k in keys:
            m = t["variants"][k]
            for name in ("ap", "auroc", "fpr95", "best_f1_threshold", "siou_gt", "ppv", "f1_mean"):
                assert name in m, (k, name)
            assert 0.0 <= m["ap"] <= 1.0
        # the fake teacher is noisy per pixel; grid regions aligned with the anomaly must help
        assert t["variants"]["csl2@_bench_grid"]["ap"] > t["variants"]["teacher"]["ap"] + 0.05
        assert t["variants"]["csl2@_bench_grid"]["verdict"] in ("helps", "mixed")
        assert "by name" in t["refine_suppress"]  # read from the teacher's class names
        for p in t["plots"] + t["overlays"]:
            assert Path(p).is_file() and Path(p).stat().st_size > 1000
    assert res["config"]["seed"] == 0 and "torch" in res["versions"] and "timings_s" in res
    assert res["timings_s"]["teacher"] > 0
    md = (out / "results.md").read_text()
    assert "SMIYC mode" in md and "SYNTHETIC WORLD" in md and "+CSL2 [_bench_grid]" in md
    assert md.strip() in io.out  # the table is printed to stdout
    assert not list(out.rglob("*.tmp"))  # atomic writes leave no temporaries

    # resume: everything comes from the cache, identical numbers, teacher never called
    before = {e["key"]: e["teachers"]["_bench_fake"]["variants"] for e in res["evaluations"]}
    called = []
    orig = _FakeTeacher.__call__
    _FakeTeacher.__call__ = lambda self, im: called.append(1) or orig(self, im)
    try:
        rc, io = _run(args, capsys)
    finally:
        _FakeTeacher.__call__ = orig
    assert rc == 0, io.err
    res2 = json.loads((out / "results.json").read_text())
    assert not called
    for e in res2["evaluations"]:
        assert e["teachers"]["_bench_fake"]["frames_cached"] == 4
        assert e["teachers"]["_bench_fake"]["variants"] == before[e["key"]]

    # a changed config (fewer variants) gets a new cache key; the stale cache is removed
    old_dirs = {p.name for p in (out / "cache").iterdir()}
    rc, io = _run(args + ["--variants", "teacher,csl2"], capsys)
    assert rc == 0, io.err
    res3 = json.loads((out / "results.json").read_text())
    assert all(e["teachers"]["_bench_fake"]["frames_cached"] == 0 for e in res3["evaluations"])
    new_dirs = {p.name for p in (out / "cache").iterdir()}
    assert new_dirs.isdisjoint(old_dirs) and len(new_dirs) == 2


def _export_onnx(path: Path, seed: int) -> None:
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 3, padding=1), torch.nn.Sigmoid()).eval()
    x = torch.rand(1, 3, 16, 16)
    torch.onnx.export(
        net,
        (x,),
        str(path),
        input_names=["image"],
        output_names=["score"],
        dynamic_axes={"image": {0: "b", 2: "h", 3: "w"}, "score": {0: "b", 2: "h", 3: "w"}},
        dynamo=False,
    )


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_teacher_export_and_weight_change(tmp_path, capsys, monkeypatch):
    import h5py

    pytest.importorskip("onnxruntime")
    monkeypatch.delenv("POSTHOC_SMIYC_ROOT", raising=False)
    _pin_code_version(monkeypatch)
    data = make_world(tmp_path / "data", n=3, unlabeled=1)
    model = tmp_path / "tiny.onnx"
    _export_onnx(model, 0)
    out, exp = tmp_path / "run", tmp_path / "submission"
    args = [
        "smiyc", "--track", "anomaly", "--data-root", str(data), "--split", "test", "--teacher", str(model),
        "--proposals", "_bench_grid", "--variants", "teacher,csl2", "--export-smiyc", str(exp),
        "--out", str(out), "--no-plots", "--quiet", "--batch-size", "3",
    ]
    rc, io = _run(args, capsys)
    assert rc == 0, io.err
    res = json.loads((out / "results.json").read_text())
    ev = res["evaluations"][0]
    assert not ev["synthetic"] and "SYNTHETIC" not in ev["title"]
    t = ev["teachers"]["tiny"]
    assert t["frames"] == 4 and t["frames_labelled"] == 3  # the unlabeled (hidden-test) frame is exported, not scored
    files = sorted(exp.rglob("*.hdf5"))
    assert len(files) == 8  # 4 frames x 2 variants
    want = exp / "anomaly_p" / "posthoc_tiny" / "AnomalyTrack-all" / "test_0003.hdf5"
    assert want in files
    with h5py.File(want, "r") as f:
        d = f["value"]
        assert d.dtype == np.float16 and d.shape == (H, W) and d.compression == "gzip"
        v = d[()]
    assert np.isfinite(v).all() and v.min() >= 0 and v.max() <= 1
    cached = np.load(next(Path(t["cache"]).glob("maps/teacher/test_0003.npy")))
    np.testing.assert_array_equal(v, cached)

    # the exported files as precomputed teacher maps: identical teacher metrics
    out_pre = tmp_path / "run_pre"
    rc, io = _run(
        ["smiyc", "--track", "anomaly", "--data-root", str(data), "--teacher", str(exp / "anomaly_p" / "posthoc_tiny"),
         "--proposals", "_bench_grid", "--variants", "teacher,csl2", "--out", str(out_pre), "--no-plots", "--quiet"],
        capsys,
    )
    assert rc == 0, io.err
    tp = json.loads((out_pre / "results.json").read_text())["evaluations"][0]["teachers"]["posthoc_tiny"]
    assert tp["variants"]["teacher"]["ap"] == t["variants"]["teacher"]["ap"]
    assert tp["variants"]["csl2@_bench_grid"]["ap"] == pytest.approx(t["variants"]["csl2@_bench_grid"]["ap"], abs=2e-3)

    # new weights in the same file: the weight hash changes, the cache is invalidated
    _export_onnx(model, 1)
    rc, io = _run(args, capsys)
    assert rc == 0, io.err
    t2 = json.loads((out / "results.json").read_text())["evaluations"][0]["teachers"]["tiny"]
    assert t2["frames_cached"] == 0 and t2["cache_key"] != t["cache_key"]
    assert t2["variants"]["teacher"]["ap"] != t["variants"]["teacher"]["ap"]


def test_missing_data_root_shows_layout(tmp_path, capsys):
    rc, io = _run(
        ["smiyc", "--data-root", str(tmp_path / "nope"), "--teacher", "_bench_fake", "--out", str(tmp_path / "r")],
        capsys,
    )
    assert rc == 2
    assert "dataset_AnomalyTrack/images" in io.err and "does not exist" in io.err


def test_non_smiyc_needs_a_root(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("POSTHOC_DATA_ROOT", raising=False)
    monkeypatch.delenv("POSTHOC_LAF_ROOT", raising=False)
    rc, io = _run(["laf", "--teacher", "_bench_fake", "--out", str(tmp_path / "r")], capsys)
    assert rc == 2 and "POSTHOC_LAF_ROOT" in io.err


def test_unknown_teacher_lists_known(world, tmp_path, capsys):
    rc, io = _run(
        ["smiyc", "--teacher", "no_such_teacher", "--proposals", "_bench_grid", "--out", str(tmp_path / "r")], capsys
    )
    assert rc == 2
    assert "unknown teacher 'no_such_teacher'" in io.err and "_bench_fake" in io.err


def test_unknown_proposals_and_bad_variants(world, tmp_path, capsys):
    rc, io = _run(["smiyc", "--teacher", "_bench_fake", "--proposals", "nope", "--out", str(tmp_path / "r")], capsys)
    assert rc == 2 and "unknown proposal source 'nope'" in io.err and "_bench_grid" in io.err
    rc, io = _run(
        ["smiyc", "--teacher", "_bench_fake", "--variants", "teacher,magic", "--out", str(tmp_path / "r")], capsys
    )
    assert rc == 2 and "--variants must be" in io.err
    rc, io = _run(["smiyc", "--teacher", "a,b", "--weights", "x.onnx", "--out", str(tmp_path / "r")], capsys)
    assert rc == 2 and "single --teacher" in io.err
    rc, io = _run(["smiyc", "--teacher", str(tmp_path / "missing.onnx"), "--out", str(tmp_path / "r")], capsys)
    assert rc == 2 and "does not exist" in io.err


def test_semantic_teacher_is_rejected(world, tmp_path, capsys):
    rc, io = _run(
        ["smiyc", "--track", "anomaly", "--teacher", "_bench_semantic", "--proposals", "_bench_grid",
         "--out", str(tmp_path / "r"), "--quiet"],
        capsys,
    )
    assert rc == 2 and "anomaly teacher" in io.err


def test_limit_and_teacher_only(world, tmp_path, capsys):
    out = tmp_path / "r"
    rc, io = _run(
        ["smiyc", "--track", "obstacle", "--teacher", "_bench_fake", "--variants", "teacher", "--limit", "2",
         "--out", str(out), "--quiet", "--no-plots", "--metric-mode", "exact"],
        capsys,
    )
    assert rc == 0, io.err
    res = json.loads((out / "results.json").read_text())
    t = res["evaluations"][0]["teachers"]["_bench_fake"]
    assert t["frames"] == 2 and list(t["variants"]) == ["teacher"]
    assert t["variants"]["teacher"]["mode"] == "exact" and "exact mode" in res["markdown"]
    assert not list(out.glob("*.png"))


@pytest.mark.parametrize(
    "cmd,mod", [("speed", "posthoc.bench.speed"), ("metrics-speed", "posthoc.bench.metrics_speed"),
                ("speed-meanshift", "posthoc.bench.speed_meanshift"),
                ("speed-superpixels", "posthoc.bench.speed_superpixels")]
)
def test_delegates_rest_of_argv(monkeypatch, cmd, mod):
    seen = []
    fake = types.ModuleType(mod)
    fake.main = lambda argv: seen.append(list(argv)) or 7
    monkeypatch.setitem(sys.modules, mod, fake)
    assert cli.main([cmd, "--size", "64", "--quiet"]) == 7
    assert seen == [["--size", "64", "--quiet"]]


def test_no_command_and_help(capsys):
    assert cli.main([]) == 2
    assert cli.main(["--help"]) == 0
    assert "smiyc" in capsys.readouterr().out


def test_hidden_test_frames_only_export_without_scores(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("POSTHOC_SMIYC_ROOT", raising=False)
    data = make_world(tmp_path / "data", n=0, unlabeled=2)
    out, exp = tmp_path / "r", tmp_path / "sub"
    rc, io = _run(
        ["smiyc", "--track", "obstacle", "--data-root", str(data), "--teacher", "_bench_fake",
         "--proposals", "_bench_grid", "--variants", "teacher,csl2", "--export-smiyc", str(exp), "--out", str(out),
         "--quiet"],
        capsys,
    )
    assert rc == 0, io.err
    res = json.loads((out / "results.json").read_text())
    t = res["evaluations"][0]["teachers"]["_bench_fake"]
    assert t["frames"] == 2 and t["frames_labelled"] == 0 and t["variants"] == {}
    assert "No labelled frames" in res["markdown"]
    assert len(list((exp / "anomaly_p").rglob("ObstacleTrack-all/*.hdf5"))) == 4


def test_laf_command_on_a_tiny_cityscapes_layout(tmp_path, capsys, rng):
    from tests.bench.test_datasets import _laf

    _laf(tmp_path / "laf", rng)
    out = tmp_path / "r"
    rc, io = _run(
        ["laf", "--subset", "noknown", "--data-root", str(tmp_path / "laf"), "--teacher", "_bench_fake", "--proposals",
         "_bench_grid", "--variants", "teacher,csl2", "--out", str(out), "--quiet", "--no-plots"],
        capsys,
    )
    assert rc == 0, io.err
    ev = json.loads((out / "results.json").read_text())["evaluations"][0]
    assert ev["dataset"] == "LostAndFound-test" and ev["track"] == "obstacle"
    # NoKnown keeps 2 of 4 frames; the all-zero-label frame is skipped as in the official lists
    assert ev["frames_found"] == 2 and ev["teachers"]["_bench_fake"]["frames"] == 1
    assert "LostAndFound noknown" in ev["title"] and "obstacle-track preset" in ev["table"]


def test_code_fingerprint_is_stable_and_keys_the_cache(world, tmp_path, capsys, monkeypatch):
    monkeypatch.undo()  # the real fingerprint
    fp = fingerprint.code_fingerprint()
    assert len(fp) == 16 and fp == fingerprint.code_fingerprint()
    root, _ = world  # re-pin below
    monkeypatch.setattr(evaluations, "_synthetic_track",
                        lambda split, track, seed: root / split / "dataset_AnomalyTrack")
    out = tmp_path / "r"
    args = ["smiyc", "--track", "anomaly", "--teacher", "_bench_fake", "--proposals", "_bench_grid", "--variants",
            "teacher,csl2", "--out", str(out), "--quiet", "--no-plots"]
    monkeypatch.setattr(fingerprint, "code_fingerprint", lambda: "v1")
    assert _run(args, capsys)[0] == 0
    monkeypatch.setattr(fingerprint, "code_fingerprint", lambda: "v2")  # edited code: recompute
    assert _run(args, capsys)[0] == 0
    t = json.loads((out / "results.json").read_text())["evaluations"][0]["teachers"]["_bench_fake"]
    assert t["frames_cached"] == 0


def test_precomputed_teacher_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("POSTHOC_SMIYC_ROOT", raising=False)
    data = make_world(tmp_path / "data", n=1)
    maps = tmp_path / "maps"
    maps.mkdir()
    base = ["smiyc", "--track", "anomaly", "--data-root", str(data), "--teacher", str(maps), "--variants", "teacher",
            "--out", str(tmp_path / "r"), "--no-plots", "--quiet"]
    rc, io = _run(base, capsys)
    assert rc == 2 and "no test_0000.hdf5" in io.err
    np.save(maps / "test_0000.npy", np.zeros((5, 5), np.float32))
    rc, io = _run(base, capsys)
    assert rc == 2 and f"must be ({H}, {W})" in io.err
    np.save(maps / "test_0000.npy", np.full((H, W), 2.0, np.float32))
    rc, io = _run(base, capsys)
    assert rc == 2 and "[0,1]" in io.err


class _CountingGrid(_GridProposals):
    """Image-only grid proposals that count their calls (shared between teachers)."""

    uses_teacher_output = False
    calls = 0

    def __call__(self, images, teacher_output=None):
        type(self).calls += len(images)
        return super().__call__(images, teacher_output)


class _CountingTeacherDependent(_GridProposals):
    """Declares that it reads the teacher output, so it must run once per teacher."""

    calls = 0

    def __call__(self, images, teacher_output=None):
        assert teacher_output is not None
        type(self).calls += len(images)
        return super().__call__(images, teacher_output)


class _FakeTeacher2(_FakeTeacher):
    pass


register_proposals("_bench_grid_shared")(_CountingGrid)
register_proposals("_bench_grid_per_teacher")(_CountingTeacherDependent)
register_teacher("_bench_fake2")(_FakeTeacher2)


def test_image_only_proposals_are_shared_between_teachers(world, tmp_path, capsys):
    _CountingGrid.calls = _CountingTeacherDependent.calls = 0
    out = tmp_path / "r"
    rc, io = _run(
        ["smiyc", "--track", "obstacle", "--teacher", "_bench_fake,_bench_fake2", "--variants", "teacher,csl2",
         "--proposals", "_bench_grid_shared,_bench_grid_per_teacher", "--limit", "3", "--batch-size", "1",
         "--out", str(out), "--quiet", "--no-plots"],
        capsys,
    )
    assert rc == 0, io.err
    assert _CountingGrid.calls == 3  # once per frame, shared by both teachers
    assert _CountingTeacherDependent.calls == 6  # once per frame and teacher
    res = json.loads((out / "results.json").read_text())
    t1, t2 = (res["evaluations"][0]["teachers"][k]["variants"] for k in ("_bench_fake", "_bench_fake2"))
    assert t1.keys() == t2.keys() and len(t1) == 3


def test_ugains_variant_end_to_end_with_a_tiny_sam(world, tmp_path, capsys, monkeypatch):
    """--variants ...,ugains --sam-checkpoint runs the peer through the runner (SAM weights are fingerprinted)."""
    pytest.importorskip("segment_anything")
    from posthoc.adapters import proposals_sam
    from tests.adapters.test_proposals import _tiny_sam

    seen = []

    def fake_build_sam(checkpoint, model_type="vit_b", device=None):
        seen.append((str(checkpoint), model_type))
        return _tiny_sam()

    monkeypatch.setattr(proposals_sam, "build_sam", fake_build_sam)
    ckpt = tmp_path / "sam_tiny.pth"
    ckpt.write_bytes(b"tiny sam stand-in")
    out = tmp_path / "run"
    rc, io = _run(["smiyc", "--teacher", "_bench_fake", "--proposals", "_bench_grid", "--out", str(out), "--quiet",
                   "--no-plots", "--track", "anomaly", "--variants", "teacher,ugains", "--sam-checkpoint", str(ckpt)],
                  capsys)
    assert rc == 0, io.err
    assert seen == [(str(ckpt), "vit_b")]
    res = json.loads((out / "results.json").read_text())
    assert list(res["variants"]) == ["teacher", "ugains"]
    v = res["evaluations"][0]["teachers"]["_bench_fake"]["variants"]
    assert 0.0 <= v["ugains"]["ap"] <= 1.0 and v["ugains"]["ap"] != v["teacher"]["ap"]
