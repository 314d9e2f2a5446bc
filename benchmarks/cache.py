"""The run cache: per (evaluation, teacher) folder of float16 maps, keyed by a config hash.

A rerun with the same ``--out`` resumes: frames whose maps are all cached are not
recomputed; a changed config gets a new key and the stale cache of that teacher is removed.
float16 is also the precision of official SMIYC submission files, so metrics read back from
the cache see what the official evaluation sees.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from posthoc.adapters.io import load_npy, save_npy_atomic, write_json_atomic

from .config import slug

log = logging.getLogger(__name__)

__all__ = ["CACHE_FORMAT", "RunCache"]

#: cache format version; bump when the cached content changes meaning
CACHE_FORMAT = 1


class RunCache:
    """Per-(evaluation, teacher) cache folder of float16 maps keyed by a config hash."""

    def __init__(self, out: Path, ev_key: str, teacher: str, key_obj: dict, shard: tuple[int, int] | None = None):
        self.shard = shard  # (index, count) of a torchrun rank or --shard run; None = the whole run
        blob = json.dumps(key_obj, sort_keys=True, default=str).encode()
        self.hash = hashlib.sha256(blob).hexdigest()[:16]
        self.prefix = f"{slug(ev_key)}__{slug(teacher)}__"
        self.base = out / "cache"
        self.dir = self.base / f"{self.prefix}{self.hash}"
        if self.base.is_dir():
            for d in self.base.iterdir():
                if d.is_dir() and d.name.startswith(self.prefix) and d != self.dir:
                    log.info("configuration changed: removing stale cache %s", d)
                    shutil.rmtree(d, ignore_errors=True)
        self.dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.dir / "config.json", key_obj)

    def map_path(self, variant: str, fid: str) -> Path:
        return self.dir / "maps" / slug(variant) / f"{fid}.npy"

    def labels_path(self, src: str, fid: str) -> Path:
        return self.dir / "proposals" / slug(src) / f"{fid}.npy"

    def done_path(self, fid: str) -> Path:
        return self.dir / "done" / f"{fid}.json"

    def is_done(self, fid: str, variants: Sequence[str]) -> bool:
        p = self.done_path(fid)
        if not p.is_file():
            return False
        try:
            rec = json.loads(p.read_text())
        except ValueError:
            return False
        return set(variants) <= set(rec.get("variants", [])) and all(self.map_path(v, fid).is_file() for v in variants)

    def mark_done(self, fid: str, variants: Sequence[str], shape: tuple) -> None:
        write_json_atomic(self.done_path(fid), {"variants": list(variants), "shape": list(shape)})

    def load_map(self, variant: str, fid: str) -> np.ndarray:
        return load_npy(self.map_path(variant, fid))


    def save_map(self, variant: str, fid: str, m: np.ndarray) -> None:
        """Store one (H,W) map as float16."""
        save_npy_atomic(self.map_path(variant, fid), np.asarray(m).astype(np.float16))

    def save_labels(self, src: str, fid: str, labels: np.ndarray) -> None:
        """Store one (H,W) proposal label map (for the overlays) as int32."""
        save_npy_atomic(self.labels_path(src, fid), np.asarray(labels).astype(np.int32))
