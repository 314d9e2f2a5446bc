"""``posthoc fuse``: a random-init ONNX model (anomaly and K-class) on generated images."""
from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from posthoc import fuse, offset_resample, offsets_from_proposals
from posthoc.bench.fuse_cli import main

pytest.importorskip("onnxruntime")
cv2 = pytest.importorskip("cv2")

H, W, K = 24, 32, 4


class _Anomaly(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 1, 3, padding=1)

    def forward(self, x):
        return torch.sigmoid(self.conv(x))


class _Semantic(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, K, 3, padding=1)

    def forward(self, x):
        return self.conv(x)


def _export(module, path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module.eval(), (torch.rand(1, 3, 16, 16),), str(path), dynamo=False,
                          input_names=["image"], output_names=["out"],
                          dynamic_axes={"image": {0: "b", 2: "h", 3: "w"}})
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("fuse")
    anom = _export(_Anomaly(), d / "anom.onnx")
    sem = _export(_Semantic(), d / "sem.onnx")
    imgs = d / "images"
    imgs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        im = np.zeros((H, W, 3), np.uint8)
        im[: H // 2] = rng.integers(0, 256, 3)
        im[H // 2:] = rng.integers(0, 256, 3)
        im[5:12, 6:14] = (255, 0, 0)
        cv2.imwrite(str(imgs / f"img{i}.png"), im)
    (imgs / "notes.txt").write_text("not an image")
    return {"dir": d, "anom": anom, "sem": sem, "images": imgs}


def _run(*args):
    return main(["fuse", *map(str, args), "--quiet"])


def _summary(out):
    return json.loads((Path(out) / "summary.json").read_text())


def _rgb(path):
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


def test_anomaly_model_outputs_match_the_functions(setup, tmp_path):
    from posthoc.adapters.teachers import OnnxTeacher

    out = tmp_path / "out"
    assert _run("--model", setup["anom"], "--kind", "anomaly", "--images", setup["images"], "--out", out) == 0
    s = _summary(out)
    assert s["complete"] and s["counts"] == {"images": 3, "computed": 3, "resumed": 0}
    assert [v["key"] for v in s["variants"]] == ["teacher", "csl2@superpixels", "csl2+offsets@superpixels"]
    assert any("refine skipped" in n and "class logits" in n for n in s["notes"])
    d = out / "img0"
    for f in ("teacher", "csl2-superpixels", "csl2+offsets-superpixels"):
        assert (d / f"{f}.png").is_file()
        a = np.load(d / f"{f}.npy")
        assert a.shape == (H, W) and a.dtype == np.float32 and 0 <= a.min() and a.max() <= 1
    assert (d / "overlay.png").read_bytes()[:4] == b"\x89PNG"
    # the maps are what the teacher and the public functions give
    img = _rgb(setup["images"] / "img0.png")
    t = OnnxTeacher(setup["anom"], kind="anomaly")(img[None]).anomaly
    np.testing.assert_allclose(np.load(d / "teacher.npy"), t[0, 0].numpy(), atol=1e-6)
    labels = torch.from_numpy(np.load(d / "proposals-superpixels.npy")).long()[None]
    fused = fuse(t, labels)
    np.testing.assert_allclose(np.load(d / "csl2-superpixels.npy"), fused[0, 0].numpy(), atol=1e-6)
    offs, conf = offsets_from_proposals(labels, teacher=fused)
    res = offset_resample(fused, offs, conf, units="pixels")
    np.testing.assert_allclose(np.load(d / "csl2+offsets-superpixels.npy"), res[0, 0].numpy(), atol=1e-6)
    # the heat map PNG is the map through the inferno colour map
    heat = cv2.applyColorMap(np.clip(np.rint(np.load(d / "teacher.npy") * 255), 0, 255).astype(np.uint8),
                             cv2.COLORMAP_INFERNO)
    np.testing.assert_array_equal(cv2.imread(str(d / "teacher.png")), heat)
    rec = json.loads((d / "record.json").read_text())
    assert rec["config_sha256"] == s["config_sha256"] and set(rec["files"].values()) <= {p.name for p in d.iterdir()}


def test_resume_skips_complete_images_and_redoes_changed_ones(setup, tmp_path):
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    for p in setup["images"].glob("*.png"):
        (imgs / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "out"
    args = ("--model", setup["anom"], "--images", imgs, "--out", out, "--no-overlay")
    assert _run(*args) == 0
    before = (out / "img1" / "teacher.npy").stat().st_mtime_ns
    assert _run(*args) == 0
    assert _summary(out)["counts"] == {"images": 3, "computed": 0, "resumed": 3}
    assert (out / "img1" / "teacher.npy").stat().st_mtime_ns == before
    # a changed image, and an image with a deleted output, are computed again
    im = _rgb(imgs / "img0.png")
    cv2.imwrite(str(imgs / "img0.png"), 255 - im[..., ::-1])
    (out / "img2" / "csl2-superpixels.npy").unlink()
    assert _run(*args) == 0
    s = _summary(out)
    assert s["counts"] == {"images": 3, "computed": 2, "resumed": 1}
    assert {i["folder"] for i in s["images"] if not i["resumed"]} == {"img0", "img2"}
    assert (out / "img2" / "csl2-superpixels.npy").is_file()
    # other settings: everything is computed again
    assert _run(*args[:-1], "--variants", "csl2", "--no-overlay") == 0
    s = _summary(out)
    assert s["counts"]["computed"] == 3 and [v["key"] for v in s["variants"]] == ["teacher", "csl2@superpixels"]


def test_semantic_model_class_maps(setup, tmp_path):
    out = tmp_path / "out"
    assert _run("--model", setup["sem"], "--images", str(setup["images"] / "*.png"), "--out", out) == 0
    s = _summary(out)
    assert s["kind"] == "semantic" and len(s["class_names"]) == K
    assert any("refine skipped" in n for n in s["notes"])
    d = out / "img1"
    t = np.load(d / "teacher.npy")
    f = np.load(d / "csl2-superpixels.npy")
    assert t.shape == f.shape == (K, H, W)
    np.testing.assert_allclose(t.sum(0), 1, atol=1e-5)  # softmax of the logits
    # fused class probabilities: CSL Eq. 3 on the teacher's logits
    from posthoc.adapters.teachers import OnnxTeacher

    logits = OnnxTeacher(setup["sem"])(_rgb(setup["images"] / "img1.png")[None]).scores
    labels = torch.from_numpy(np.load(d / "proposals-superpixels.npy")).long()[None]
    np.testing.assert_allclose(f, fuse(logits, labels)[0].numpy(), atol=1e-6)
    # class map PNG: one colour per argmax class
    png = _rgb(d / "csl2-superpixels.png").reshape(-1, 3)
    arg = f.argmax(0).ravel()
    for c in np.unique(arg):
        assert len(np.unique(png[arg == c], axis=0)) == 1
    assert _run("--model", setup["sem"], "--images", setup["images"], "--out", tmp_path / "o2",
                "--variants", "refine") == 2


def test_semantic_model_as_anomaly_is_msp_and_refines(setup, tmp_path):
    out = tmp_path / "out"
    assert _run("--model", setup["sem"], "--kind", "anomaly", "--images", setup["images"], "--out", out,
                "--no-overlay", "--variants", "csl2,refine") == 0
    s = _summary(out)
    assert s["config"]["teacher"] == "msp" and any("MSP" in n for n in s["notes"])
    assert [v["key"] for v in s["variants"]] == ["teacher", "csl2@superpixels", "csl2+refine@superpixels"]
    t = np.load(out / "img0" / "teacher.npy")
    assert t.shape == (H, W) and t.min() >= 0 and t.max() <= 1 - 1 / K + 1e-6


def test_registered_teacher(setup, tmp_path):
    out = tmp_path / "out"
    assert _run("--teacher", "msp", "--weights", setup["sem"], "--images", setup["images"], "--out", out,
                "--no-overlay", "--variants", "csl2") == 0
    assert _summary(out)["kind"] == "anomaly"
    assert _run("--teacher", "msp", "--weights", setup["sem"], "--kind", "semantic", "--images", setup["images"],
                "--out", tmp_path / "o2", "--no-overlay") == 2


def _err(capsys, *args):
    rc = _run(*args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "Traceback" not in err
    return err


def test_errors(setup, tmp_path, capsys):
    m, imgs = setup["anom"], setup["images"]
    out = tmp_path / "never"
    assert "no file matched" in _err(capsys, "--model", m, "--images", tmp_path / "none*.png", "--out", out)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "has no image files" in _err(capsys, "--model", m, "--images", empty, "--out", out)
    e = _err(capsys, "--teacher", "nope", "--images", imgs, "--out", out)
    assert "unknown teacher 'nope'" in e and "obsnet" in e
    e = _err(capsys, "--model", m, "--images", imgs, "--proposals", "superpixels,nope", "--out", out)
    assert "unknown proposal source 'nope'" in e and "superpixels" in e
    assert "non-empty subset" in _err(capsys, "--model", m, "--images", imgs, "--variants", "csl3", "--out", out)
    assert "does not exist" in _err(capsys, "--model", tmp_path / "x.onnx", "--images", imgs, "--out", out)
    assert "--weights goes with --teacher" in _err(capsys, "--model", m, "--weights", m, "--images", imgs,
                                                   "--out", out)
    assert "outputs 1 channel" in _err(capsys, "--model", m, "--kind", "semantic", "--images", imgs, "--out", out)
    e = _err(capsys, "--model", m, "--images", imgs, "--variants", "refine", "--out", out, "--no-overlay")
    assert "--variants refine" in e and "class logits" in e
    assert not out.exists() or not any(p for p in out.rglob("*.npy"))
    f = tmp_path / "afile"
    f.write_text("x")
    assert "is not a folder" in _err(capsys, "--model", m, "--images", imgs, "--out", f)
    assert not (tmp_path / "never").exists() or (tmp_path / "never" / "summary.json").exists()
    # an unreadable image is named
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.png").write_bytes((imgs / "img0.png").read_bytes())
    (bad / "b.png").write_bytes(b"not a png")
    e = _err(capsys, "--model", m, "--images", bad, "--out", tmp_path / "ob", "--no-overlay")
    assert "b.png" in e and "cannot decode" in e
    s = _summary(tmp_path / "ob")
    assert not s["complete"] and s["counts"]["computed"] == 1  # a.png is kept for the rerun
    # argparse usage errors are exit 2 too
    assert main(["fuse", "--images", str(imgs), "--out", str(out)]) == 2
    assert main([]) == 2


def test_unknown_names_leave_no_folder(setup, tmp_path, capsys):
    out = tmp_path / "run"
    _err(capsys, "--teacher", "nope", "--images", setup["images"], "--out", out)
    _err(capsys, "--model", setup["anom"], "--proposals", "nope", "--images", setup["images"], "--out", out)
    assert not out.exists()


def test_python_dash_m_posthoc(setup, tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "posthoc", "fuse", "--model", str(setup["anom"]), "--images",
                        str(setup["images"] / "img0.png"), "--out", str(out), "--no-overlay", "--quiet",
                        "--variants", "csl2"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "1 image(s), 1 computed" in r.stdout and (out / "img0" / "csl2-superpixels.npy").is_file()


# ----------------------------------------------------------------------------- the documented commands

_ROOT = Path(__file__).resolve().parents[2]


def _doc_commands(path: Path, heading: str) -> list[list[str]]:
    import re
    import shlex

    text = path.read_text()
    text = text[text.index(heading):]
    block = re.search(r"```bash\n(.*?)```", text, flags=re.DOTALL).group(1)
    return [shlex.split(line.split("#")[0]) for line in block.splitlines() if line.startswith("posthoc fuse")]


@pytest.fixture
def user_folder(setup, tmp_path, monkeypatch):
    """The folder a README reader has: my_model.onnx, my_segmenter.onnx and photos/ (png and jpg)."""
    (tmp_path / "my_model.onnx").write_bytes(setup["anom"].read_bytes())
    (tmp_path / "my_segmenter.onnx").write_bytes(setup["sem"].read_bytes())
    photos = tmp_path / "photos"
    photos.mkdir()
    for p in sorted(setup["images"].glob("*.png"))[:2]:
        (photos / p.name).write_bytes(p.read_bytes())
        cv2.imwrite(str(photos / (p.stem + "_j.jpg")), cv2.imread(str(p)))
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("doc, heading", [("README.md", "## Your own images"), ("docs/inference.md", "# Inference")])
def test_documented_commands_run(user_folder, doc, heading):
    cmds = _doc_commands(_ROOT / doc, heading)
    assert len(cmds) == 3 and all(c[:2] == ["posthoc", "fuse"] for c in cmds)
    for c in cmds:
        if "--teacher" in c:  # the bundled obsnet line: test_documented_obsnet_command (slow)
            continue
        assert main([*c[1:], "--quiet", "--no-overlay"]) == 0, c
        out = user_folder / c[c.index("--out") + 1]
        s = _summary(out)
        assert s["complete"] and s["counts"]["computed"] == s["counts"]["images"] > 0


@pytest.mark.slow
def test_documented_obsnet_command(user_folder):
    (c,) = [c for c in _doc_commands(_ROOT / "README.md", "## Your own images") if "--teacher" in c]
    assert main([*c[1:], "--quiet"]) == 0
    s = _summary(user_folder / c[c.index("--out") + 1])
    assert s["complete"] and any(v["key"] == "csl2+refine+offsets@csl" for v in s["variants"])


def test_python_recipe_in_docs_equals_the_cli(user_folder):
    import re

    block = re.findall(r"```python\n(.*?)```", (_ROOT / "docs" / "inference.md").read_text(), flags=re.DOTALL)[0]
    img = _rgb(user_folder / "photos" / "img0.png")
    ns: dict = {"images": img[None]}
    exec(compile(block, "docs/inference.md", "exec"), ns)
    assert (user_folder / "overlay.png").is_file()
    assert main(["fuse", "--model", "my_model.onnx", "--images", "photos/img0.png", "--variants", "csl2,offsets",
                 "--out", "cli", "--quiet", "--no-overlay"]) == 0
    np.testing.assert_allclose(np.load(user_folder / "cli" / "img0" / "csl2+offsets-superpixels.npy"),
                               ns["out"]["output"][0, 0].numpy(), atol=1e-6)


def test_progress_bar_on_stderr(setup, tmp_path, capsys):
    pytest.importorskip("tqdm")
    assert main(["fuse", "--model", str(setup["anom"]), "--images", str(setup["images"] / "img0.png"),
                 "--variants", "csl2", "--out", str(tmp_path / "o"), "--no-overlay"]) == 0
    cap = capsys.readouterr()
    assert "posthoc fuse:" in cap.err and "/1 [" in cap.err  # the bar, with the image count as its total
    assert "1 image(s), 1 computed, 0 resumed" in cap.out


def test_mean_std_reach_the_model(setup, tmp_path, capsys):
    from posthoc.adapters.teachers import OnnxTeacher

    out = tmp_path / "o"
    assert _run("--model", setup["anom"], "--mean", "0,0,0", "--std", "1,1,1", "--images",
                setup["images"] / "img0.png", "--variants", "csl2", "--out", out, "--no-overlay") == 0
    img = _rgb(setup["images"] / "img0.png")
    ref = OnnxTeacher(setup["anom"], kind="anomaly", mean=(0, 0, 0), std=(1, 1, 1))(img[None]).anomaly
    default = OnnxTeacher(setup["anom"], kind="anomaly")(img[None]).anomaly
    assert not torch.allclose(ref, default)
    np.testing.assert_allclose(np.load(out / "img0" / "teacher.npy"), ref[0, 0].numpy(), atol=1e-6)
    assert "three positive numbers" in _err(capsys, "--model", setup["anom"], "--std", "1,0,1", "--images",
                                            setup["images"], "--out", out)
    assert "three numbers" in _err(capsys, "--model", setup["anom"], "--mean", "1,2", "--images",
                                   setup["images"], "--out", out)
    assert "apply to --model" in _err(capsys, "--teacher", "obsnet", "--mean", "0,0,0", "--images",
                                      setup["images"], "--out", out)
