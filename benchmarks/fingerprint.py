"""What identifies a run's cached maps: weight-file hashes, the code that computes the maps,
package versions and the git state of the checkout."""
from __future__ import annotations

import hashlib
import logging
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from posthoc.adapters.io import file_sha256
from posthoc.errors import PosthocError

log = logging.getLogger(__name__)

__all__ = ["code_fingerprint", "git_sha", "hash_files", "precomputed_fingerprint", "proposal_fingerprint", "versions",
           "weight_files"]

#: the benchmark modules whose code decides the cached maps (edits to them invalidate a cache)
_MAP_MODULES = ("config.py", "infer.py", "precomputed.py", "runner.py", "variants.py")


def weight_files(name: str, weights: Any) -> dict:
    """role -> Path of the files a teacher/proposal source loads (explicit or bundled)."""
    if weights is None:
        try:
            from posthoc.adapters.bundled import default_weights

            entry = default_weights(name)
        except (PosthocError, OSError, ValueError):  # nothing bundled, or an unreadable manifest
            return {}
        return {r: Path(p) for r, p in entry.items() if r != "meta" and isinstance(p, (str, Path))}
    if isinstance(weights, dict):
        return {r: Path(p) for r, p in weights.items()}
    return {"model": Path(weights)}


_HASH_CACHE: dict = {}


def hash_files(files: dict) -> dict:
    out = {}
    for role, p in sorted(files.items()):
        p = Path(p)
        if not p.is_file():
            out[role] = f"missing:{p}"
            continue
        st = p.stat()
        key = (str(p.resolve()), st.st_size, st.st_mtime_ns)
        if key not in _HASH_CACHE:
            _HASH_CACHE[key] = file_sha256(p)
        out[role] = _HASH_CACHE[key]
    return out


def proposal_fingerprint(name: str, source: Any) -> dict:
    """What identifies a proposal source's output in a cache key: its weight-file hashes and,
    where the source has a ``settings()`` method, its settings (for ``superpixels`` the resolved
    implementation, so that maps made with skimage are never served for ximgproc)."""
    out = hash_files(weight_files(name, None))
    settings = getattr(source, "settings", None)
    if callable(settings):
        out["settings"] = settings()
    return out


def precomputed_fingerprint(folder: Path) -> dict:
    """(name, size, mtime) of every score file of a ``--teacher DIR`` folder, hashed."""
    files = sorted(p for p in folder.rglob("*") if p.suffix in (".hdf5", ".h5", ".npy"))
    blob = "\n".join(f"{f.relative_to(folder)}:{f.stat().st_size}:{f.stat().st_mtime_ns}" for f in files)
    return {"precomputed": hashlib.sha256(blob.encode()).hexdigest()}


def versions() -> dict:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("posthoc", "numpy", "torch", "onnxruntime-gpu", "onnxruntime", "opencv-python-headless",
                "opencv-contrib-python-headless", "scikit-image", "h5py"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def git_sha() -> dict | None:
    """``{"sha", "dirty", "diff_sha256"}`` of the source checkout (None outside a git checkout).

    ``diff_sha256`` hashes the uncommitted changes to tracked files, so edited code gets a new
    cache key even before it is committed.
    """
    here = Path(__file__).resolve().parent

    def git(*args):
        return subprocess.run(["git", *args], cwd=here, capture_output=True, timeout=20, check=False)

    try:
        sha = git("rev-parse", "HEAD")
        if sha.returncode != 0:
            return None
        diff = git("diff", "HEAD")
        return {
            "sha": sha.stdout.decode().strip(),
            "dirty": bool(diff.stdout.strip()),
            "diff_sha256": hashlib.sha256(diff.stdout).hexdigest()[:16] if diff.stdout.strip() else None,
        }
    except (OSError, subprocess.SubprocessError):
        return None


def code_fingerprint() -> str:
    """SHA-256 (16 hex) of the source that computes the cached maps.

    Covers the posthoc ops and kernels (``posthoc/``, without ``metrics/``, which is
    recomputed from the cache anyway), the adapters (``posthoc.adapters``) and the benchmark
    modules that compute maps (:data:`_MAP_MODULES`).
    Docs, tests and metric code do not invalidate a cache; model files are hashed separately.
    """
    import posthoc
    import posthoc.adapters

    roots = [
        (Path(posthoc.__file__).resolve().parent, "posthoc"),
        (Path(posthoc.adapters.__file__).resolve().parent, "adapters"),
    ]
    files = []
    for root, tag in roots:
        for f in sorted(root.rglob("*.py")):
            rel = f.relative_to(root).as_posix()
            if tag == "posthoc" and rel.startswith("metrics/"):
                continue
            files.append((f"{tag}/{rel}", f))
    here = Path(__file__).resolve().parent
    files += [(f"bench/{m}", here / m) for m in _MAP_MODULES]
    h = hashlib.sha256()
    for name, f in files:
        h.update(name.encode() + b"\0")
        h.update(f.read_bytes())
        h.update(b"\0")
    return h.hexdigest()[:16]

