"""The README's Python example runs as written, and its commands name real entry points."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)


def test_fuse_example_runs(capsys):
    block = next(b for b in _python_blocks() if "posthoc.fuse(logits" in b)
    ns: dict = {}
    exec(compile(block, "README.md", "exec"), ns)
    fused, better = ns["fused"], ns["better"]
    assert fused.shape == (1, 19, 64, 128) and better.shape == (1, 1, 64, 128)
    assert 0.0 <= float(fused.min()) and float(fused.max()) <= 1.0
    assert np.isfinite(better).all()
    assert "(1, 19, 64, 128)" in capsys.readouterr().out


def test_readme_has_no_unfilled_placeholders():
    assert "PLACEHOLDER" not in README.read_text()


def test_readme_commands_exist():
    text = README.read_text()
    root = README.parent
    assert "./run bench" in text and "./run test" in text
    run = (root / "run").read_text()
    assert "bench)" in run and "test)" in run and "posthoc-bench\" smiyc --teacher obsnet" in run
    for doc in re.findall(r"\]\((docs/[^)]+)\)", text):
        assert (root / doc).is_file(), doc


def test_quoted_error_message_is_the_real_one():
    import torch

    import posthoc

    text = README.read_text()
    quoted = re.search(r"`ShapeError: (proposals must be [^`]+)`", text).group(1)
    try:
        posthoc.fuse(torch.zeros(2, 19, 512, 1024), torch.zeros(2, 256, 512, dtype=torch.long))
    except posthoc.ShapeError as e:
        assert str(e) == quoted
    else:  # pragma: no cover
        raise AssertionError("no error raised")


def test_own_torch_model_pipeline_example_runs():
    """The four-line Pipeline example for a user's own PyTorch model, with a random-init module."""
    import textwrap

    import torch

    block = textwrap.dedent(next(b for b in re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
                                 if "TorchTeacher(my_module" in b))
    torch.manual_seed(0)
    ns: dict = {
        "my_module": torch.nn.Sequential(torch.nn.Conv2d(3, 1, 3, padding=1), torch.nn.Sigmoid()),
        "images": np.random.default_rng(0).integers(0, 256, (2, 48, 64, 3), dtype=np.uint8),
    }
    exec(compile(block, "README.md", "exec"), ns)
    out = ns["out"]
    for key in ("fused", "resampled"):
        assert tuple(out[key].shape) == (2, 1, 48, 64)
        assert 0.0 <= float(out[key].min()) and float(out[key].max()) <= 1.0
