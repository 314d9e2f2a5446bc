"""Small models trained on the synthetic world, shipped with the package (see scripts/train_*.py).

``manifest.json`` maps a teacher/proposal name to the files it needs, e.g.
``{"obsnet": {"segmenter": "segnet.onnx", "observer": "observer.onnx"}}``.
"""
from __future__ import annotations

import json
from pathlib import Path

from posthoc.errors import PosthocError

__all__ = ["BUNDLED_DIR", "NoBundledWeightsError", "bundled_names", "default_weights"]

BUNDLED_DIR = Path(__file__).resolve().parent


class NoBundledWeightsError(PosthocError, FileNotFoundError):
    """No bundled default exists for that name; the user must pass weights."""


def _manifest() -> dict:
    path = BUNDLED_DIR / "manifest.json"
    if not path.exists():
        return {}
    return json.loads(path.read_text())


def bundled_names() -> list[str]:
    return sorted(_manifest())


def default_weights(name: str) -> dict:
    """Return ``{role: Path}`` of the bundled files for ``name`` (plus ``"meta"``: a dict); raise if none are
    bundled."""
    entry = _manifest().get(name)
    if entry is None:
        raise NoBundledWeightsError(
            f"no bundled weights for {name!r} (bundled: {', '.join(bundled_names()) or 'none'}); "
            "pass your own with weights=... / --weights"
        )
    out = {}
    for role, fname in entry.items():
        if role == "meta":  # a dict of settings (class names, normalization, input size), not a file
            out[role] = dict(fname)
            continue
        p = BUNDLED_DIR / fname
        if not p.exists():
            raise NoBundledWeightsError(f"bundled file {p} for {name!r} is missing; reinstall posthoc")
        out[role] = p
    return out
