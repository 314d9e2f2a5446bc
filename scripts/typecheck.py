#!/usr/bin/env python
"""Type-check posthoc as it is installed: ``python scripts/typecheck.py [FILES...]``.

The wheel maps ``adapters/`` to ``posthoc.adapters`` and ``benchmarks/`` to ``posthoc.bench``
(``[tool.setuptools] package-dir`` in pyproject.toml), and the code imports them by those names.
A plain ``mypy adapters`` cannot see that mapping, so this script lays out the installed package as
a tree of symlinks under ``.mypy_cache/tree/posthoc`` and runs mypy (settings: ``[tool.mypy]`` in
pyproject.toml, incremental cache: ``.mypy_cache``) on the whole package, plus any extra FILES
(e.g. ``tests/typing/*.py``). Messages name the source paths (``adapters/base.py``, not the link
tree), and the exit status is mypy's: 0 when clean.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TREE = ROOT / ".mypy_cache" / "tree"
# installed sub-package -> source folder, as in pyproject.toml's package-dir
MAPPED = {"adapters": "adapters", "bench": "benchmarks"}


def build_tree() -> Path:
    """(Re)create the symlink tree of the installed ``posthoc`` package; return its root."""
    pkg = TREE / "posthoc"
    pkg.mkdir(parents=True, exist_ok=True)
    want = {p.name: p for p in (ROOT / "posthoc").iterdir() if p.name != "__pycache__"}
    want.update({name: ROOT / src for name, src in MAPPED.items()})
    for entry in pkg.iterdir():
        if entry.name not in want or not entry.is_symlink() or entry.resolve() != want[entry.name].resolve():
            entry.unlink()
    for name, target in want.items():
        link = pkg / name
        if not link.is_symlink():
            link.symlink_to(os.path.relpath(target, pkg))
    return TREE


def source_path(line: str) -> str:
    """Map a message's link-tree path (relative to the tree) back to the source path (relative to the root)."""
    for name, src in MAPPED.items():
        prefix = f"posthoc/{name}/"
        if line.startswith(prefix):
            return src + "/" + line[len(prefix) :]
    return line


def main(argv: list[str] | None = None) -> int:
    from mypy import api

    extra = [str(Path(f).resolve()) for f in (sys.argv[1:] if argv is None else argv)]
    tree = build_tree()
    cwd = os.getcwd()
    os.chdir(tree)  # the link tree, not the source root, must be first on mypy's search path
    try:
        args = ["--config-file", str(ROOT / "pyproject.toml"), "--cache-dir", str(ROOT / ".mypy_cache")]
        stdout, stderr, status = api.run([*args, "posthoc", *extra])
    finally:
        os.chdir(cwd)
    for line in stdout.splitlines():
        if line.startswith(str(ROOT) + os.sep):  # the extra files, given by absolute path
            line = os.path.relpath(line.split(":", 1)[0], ROOT) + ":" + line.split(":", 1)[1]
        print(source_path(line))
    if stderr:
        print(stderr, end="", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
