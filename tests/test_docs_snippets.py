"""Every code block in README.md and docs/*.md runs in a test or says plainly that it needs real weights.

Python blocks: a block whose first line starts with ``# needs`` is a recipe for the reader's own model, weights,
data or third-party package and is not run; a block listed in ``COVERED`` runs in the named test (with the user
objects it names made up there); every other block runs here, as written, in an empty folder.
Shell blocks: ``./run`` subcommands exist, ``python scripts/...`` / ``examples/...`` files exist, and every
``posthoc-bench`` / ``posthoc fuse`` command line parses with the real argument parsers.
"""

from __future__ import annotations

import re
import shlex
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = "# needs "
# a block containing the key runs in the named test of tests/test_readme.py
COVERED = {
    "posthoc.fuse(logits": "test_fuse_example_runs",
    "TorchTeacher(my_module": "test_own_torch_model_pipeline_example_runs",
}


def _blocks(lang: str) -> list[tuple[str, int, str]]:
    out = []
    for f in DOCS:
        for i, b in enumerate(re.findall(rf"```{lang}\n(.*?)```", f.read_text(), flags=re.DOTALL)):
            out.append((f.name, i, textwrap.dedent(b)))
    return out


def _kind(block: str) -> str:
    if block.lstrip().startswith(MARKER):
        return "marked"
    if any(k in block for k in COVERED):
        return "covered"
    return "run"


PYTHON = _blocks("python")


def test_every_python_block_is_run_covered_or_marked():
    assert PYTHON, "no python blocks found"
    readme_tests = (ROOT / "tests" / "test_readme.py").read_text()
    for name, i, block in PYTHON:
        kind = _kind(block)
        if kind == "marked":
            first = block.lstrip().splitlines()[0]
            assert "not run by the tests" in first and len(first) > len(MARKER) + 10, (name, i, first)
        elif kind == "covered":
            test = next(t for k, t in COVERED.items() if k in block)
            assert f"def {test}(" in readme_tests, (name, i, test)
    assert sum(_kind(b) == "run" for _, _, b in PYTHON) >= 3


@pytest.mark.parametrize(
    "name,i,block",
    [b for b in PYTHON if _kind(b[2]) == "run"],
    ids=lambda v: str(v) if not isinstance(v, str) or len(v) < 40 else "code",
)
def test_python_block_runs_as_written(name, i, block, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(block, f"{name} python block {i}", "exec"), {"__name__": "__docs__"})


def _commands() -> list[tuple[str, int, list[str]]]:
    out = []
    for name, i, block in _blocks("bash"):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split(" #", 1)[0].strip()
            if line and not line.startswith("#"):
                out.append((name, i, shlex.split(line)))
    return out


def test_every_shell_command_names_real_entry_points_and_flags():
    from posthoc.bench import cli, fuse_cli

    bench, fuse = cli.build_parser(), fuse_cli.build_parser()
    run = (ROOT / "run").read_text()
    checked = 0
    for name, i, argv in _commands():
        while argv and re.fullmatch(r"[A-Z_]+=\S*", argv[0]):  # VAR=value prefixes
            argv = argv[1:]
        where = f"{name} shell block {i}: {' '.join(argv)}"
        if argv[0] == "./run":
            assert f"    {argv[1]})" in run, where
        elif argv[0] in ("python", ".venv/bin/python") and argv[1].endswith(".py"):
            assert (ROOT / argv[1]).is_file(), where
        elif argv[0] == "posthoc-bench" and "|" not in argv[1]:
            if argv[1] in cli._DELEGATES:  # own flags, checked by their tests
                assert argv[1] in bench.format_help(), where
            else:
                bench.parse_args(argv[1:])
        elif argv[0] == "posthoc" or argv[:3] == ["python", "-m", "posthoc"]:
            rest = argv[1:] if argv[0] == "posthoc" else argv[3:]
            if rest != ["fuse", "..."]:
                assert rest[0] == "fuse", where
                fuse.parse_args(rest)
        else:
            continue
        checked += 1
    assert checked >= 20
