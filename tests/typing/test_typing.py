"""The typed API: mypy is clean on the package, and a user's type checker sees numpy->numpy, torch->torch.

``tests/typing/user_code.py`` holds ``assert_type`` claims about the public signatures; this test checks it
(and the package) with mypy through ``scripts/typecheck.py``, the same check ``./run test`` runs first.
A second run on a file with a deliberate mismatch proves the check can fail.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent

pytest.importorskip("mypy", reason="mypy is a dev tool: pip install -e '.[dev]'")


def _typecheck(*files: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    spec = importlib.util.spec_from_file_location("_posthoc_typecheck", ROOT / "scripts" / "typecheck.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    status = mod.main([str(f) for f in files])
    return status, capsys.readouterr().out


def test_user_sees_numpy_for_numpy_and_torch_for_torch(capsys: pytest.CaptureFixture[str]) -> None:
    status, out = _typecheck(HERE / "user_code.py", capsys=capsys)
    assert status == 0, out
    assert "Success: no issues found" in out


def test_a_wrong_claim_is_reported(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad_claim.py"
    bad.write_text(
        "import numpy as np\nimport torch\nfrom typing_extensions import assert_type\nimport posthoc\n"
        "assert_type(posthoc.fuse(np.zeros((1, 2, 3, 3), np.float32), np.zeros((1, 3, 3), np.int64)), torch.Tensor)\n"
    )
    status, out = _typecheck(bad, capsys=capsys)
    assert status == 1
    assert "bad_claim.py:5: error: Expression is of type" in out and "[assert-type]" in out
