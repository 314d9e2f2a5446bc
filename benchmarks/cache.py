"""The run cache: per (evaluation, teacher) folder of float16 maps keyed by a config hash.

A rerun with the same ``--out`` resumes: frames whose maps are all cached are not
recomputed; a changed config gets a new key and the stale cache of that teacher is removed
(only by a run that holds the run folder alone, see :class:`RunLock`). float16 is also the
precision of official SMIYC submission files, so metrics read back from the cache see what
the official evaluation sees.

Integrity. The cache never serves maps that no longer match their inputs:

* each frame's record (``done/<id>.json``) holds a fingerprint of the frame's input files
  (size and BLAKE2b hash of the image, label and class map; :func:`frame_inputs`), so a
  frame whose image or label was replaced under the same root is recomputed;
* each cached map's checksum (BLAKE2b of its dtype, shape and bytes) is recorded when it is
  written and verified when it is read back: :meth:`RunCache.is_done` recomputes a frame
  whose maps are missing, truncated or changed (with a warning naming the file), and
  :meth:`RunCache.load_map` refuses such a map with :class:`CacheCorruptError` naming it.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from posthoc.adapters.io import load_npy, save_npy_atomic, write_json_atomic

from .config import BenchError, slug

try:  # POSIX advisory locks; without them (Windows) runs are not locked, with a warning
    import fcntl
except ImportError:  # pragma: no cover - not on Linux/macOS
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

__all__ = ["CACHE_FORMAT", "CacheCorruptError", "RunCache", "RunLock", "RunLockedError", "frame_inputs",
           "map_checksum"]

#: cache format version; bump when the cached content changes meaning
#: (2: frame records hold input fingerprints and map checksums)
CACHE_FORMAT = 2


class CacheCorruptError(BenchError):
    """A cached map does not match the checksum recorded when it was written."""


class RunLockedError(BenchError):
    """Another live run holds the run folder."""


def map_checksum(m: np.ndarray) -> str:
    """BLAKE2b (16 bytes, hex) of an array's dtype, shape and bytes."""
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{m.dtype.str}{m.shape}".encode())
    h.update(np.ascontiguousarray(m).data)
    return h.hexdigest()


def _file_digest(p: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    with open(p, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def frame_inputs(ref: Any) -> dict:
    """Fingerprint of one frame's input files: ``{role: "size:blake2b"}`` (None when absent).

    Covers the image, the label, the class map and a reader's extra files of a
    :class:`posthoc.bench.datasets.FrameRef`. Hashing reads each file once (a few ms for a
    2 MB PNG), much less than decoding it, and catches a file replaced with the same size
    and modification time.
    """
    files = [("image", getattr(ref, "image_path", None)), ("label", getattr(ref, "label_path", None)),
             ("classes", getattr(ref, "classes_path", None))]
    files += [(f"extra:{name}", p) for name, p in getattr(ref, "extra_paths", ())]
    out: dict = {}
    for role, p in files:
        if p is None or not Path(p).is_file():
            out[role] = None
            continue
        out[role] = f"{Path(p).stat().st_size}:{_file_digest(Path(p))}"
    return out


class RunCache:
    """Per-(evaluation, teacher) cache folder of float16 maps keyed by a config hash.

    Args:
        out: the run folder.
        ev_key, teacher: the evaluation and the teacher's display name.
        key_obj: everything that decides the maps (hashed into the folder name).
        owner: whether this run holds the run folder alone (a plain run under
            :class:`RunLock`); only then are the other configs' cache folders of the same
            teacher removed as stale. Shards of one run never remove anything.
        shard: ``(index, count)`` of a sharded or distributed run, or None.
    """

    def __init__(self, out: Path, ev_key: str, teacher: str, key_obj: dict, *, owner: bool = True,
                 shard: tuple[int, int] | None = None):
        blob = json.dumps(key_obj, sort_keys=True, default=str).encode()
        self.hash = hashlib.sha256(blob).hexdigest()[:16]
        self.prefix = f"{slug(ev_key)}__{slug(teacher)}__"
        self.base = out / "cache"
        self.dir = self.base / f"{self.prefix}{self.hash}"
        self.shard = shard
        self._records: dict[str, dict] = {}
        self._pending: dict[str, dict[str, str]] = {}
        if owner and self.base.is_dir():
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

    def _record(self, fid: str) -> dict | None:
        if fid in self._records:
            return self._records[fid]
        p = self.done_path(fid)
        if not p.is_file():
            return None
        try:
            rec = json.loads(p.read_text())
        except (ValueError, OSError):
            log.warning("cache record %s is unreadable: recomputing frame %s", p, fid)
            return None
        if not isinstance(rec, dict):
            return None
        self._records[fid] = rec
        return rec

    def _verify(self, variant: str, fid: str, rec: dict) -> str | None:
        """None when the cached map matches its recorded checksum, else what is wrong."""
        p = self.map_path(variant, fid)
        want = (rec.get("checksums") or {}).get(variant)
        if want is None:
            return "no checksum was recorded for it"
        if not p.is_file():
            return "the file is missing"
        try:
            m = load_npy(p)
        except (ValueError, OSError, EOFError) as e:
            return f"it cannot be read ({e})"
        if map_checksum(m) != want:
            return "its content differs from what was written (changed or corrupt)"
        return None

    def is_done(self, fid: str, variants: Sequence[str], inputs: dict | None = None) -> bool:
        """Whether frame ``fid`` has every map of ``variants`` cached, valid and up to date.

        Args:
            fid: the frame id.
            variants: the variant keys the run needs.
            inputs: the frame's current :func:`frame_inputs`; when the recorded fingerprint
                differs, the frame is recomputed (its image or label changed).
        """
        rec = self._record(fid)
        if rec is None:
            return False
        if not set(variants) <= set(rec.get("variants", [])):
            return False
        if inputs is not None and rec.get("inputs") != inputs:
            log.warning("frame %s: its input files changed since its maps were cached in %s; recomputing it",
                        fid, self.dir)
            return False
        for v in variants:
            problem = self._verify(v, fid, rec)
            if problem is not None:
                log.warning("cached map %s is not valid (%s); recomputing frame %s", self.map_path(v, fid),
                            problem, fid)
                self._records.pop(fid, None)
                return False
        return True

    def mark_done(self, fid: str, variants: Sequence[str], shape: tuple, inputs: dict | None = None) -> None:
        """Record frame ``fid`` as complete: its variants, shape, input fingerprint and map checksums."""
        sums = self._pending.pop(fid, {})
        missing = [v for v in variants if v not in sums]
        if missing:
            raise BenchError(f"frame {fid}: maps {missing} were not written before mark_done (internal error)")
        rec = {"variants": list(variants), "shape": list(shape), "inputs": inputs,
               "checksums": {v: sums[v] for v in variants}}
        write_json_atomic(self.done_path(fid), rec)
        self._records[fid] = rec

    def load_map(self, variant: str, fid: str) -> np.ndarray:
        """Read one cached (H,W) float16 map back, verified against its recorded checksum.

        Raises:
            CacheCorruptError: the map is missing, unreadable, or differs from what was
                written; the message names the file (a rerun recomputes it).
        """
        rec = self._record(fid)
        p = self.map_path(variant, fid)
        if rec is None:
            raise CacheCorruptError(f"cached map {p}: frame {fid} has no record in {self.done_path(fid).parent}")
        problem = self._verify(variant, fid, rec)
        if problem is not None:
            raise CacheCorruptError(
                f"cached map {p} is not valid: {problem}. Rerun the same command to recompute it"
            )
        return load_npy(p)

    def save_map(self, variant: str, fid: str, m: np.ndarray) -> None:
        """Store one (H,W) map as float16 and remember its checksum for :meth:`mark_done`."""
        m16 = np.ascontiguousarray(np.asarray(m).astype(np.float16))
        save_npy_atomic(self.map_path(variant, fid), m16)
        self._pending.setdefault(fid, {})[variant] = map_checksum(m16)

    def save_labels(self, src: str, fid: str, labels: np.ndarray) -> None:
        """Store one (H,W) proposal label map (for the overlays) as int32."""
        save_npy_atomic(self.labels_path(src, fid), np.asarray(labels).astype(np.int32))


class RunLock:
    """An advisory lock on a run folder, so that runs into one ``--out`` cannot destroy each other.

    A plain run takes ``<out>/.posthoc-run.lock`` exclusively. The shards of one run
    (``--shard I/N`` or the ranks of a ``torchrun`` job) take it shared, plus their own
    ``.posthoc-shard-I-of-N.lock`` exclusively, so shards run side by side while a plain run,
    or the same shard twice, is refused. A second run is refused at once with
    :class:`RunLockedError` naming the folder and the run that holds it. The locks are
    ``flock`` locks: a run that dies (even with ``kill -9``) releases them, and a rerun
    resumes from the cache. The lock files stay (they are tiny); they never hold results.
    With ``fresh=True`` (the run folder did not exist before this run), a run that fails
    before writing anything into it removes the folder again, so a bad data root or setting
    leaves no empty run folder behind.

    Use as a context manager, or call :meth:`acquire` / :meth:`release`.
    """

    MAIN = ".posthoc-run.lock"

    def __init__(self, out: Path, shard: tuple[int, int] | None = None, *, fresh: bool = False):
        self.out = Path(out)
        self.shard = shard
        self.fresh = fresh
        self._fds: list[int] = []

    @property
    def exclusive(self) -> bool:
        """True for a plain run (it holds the folder alone)."""
        return self.shard is None

    def _shard_name(self) -> str:
        i, n = self.shard  # type: ignore[misc]
        return f".posthoc-shard-{i}-of-{n}.lock"

    def _holder(self) -> str:
        """What the lock files say about the runs that hold them."""
        infos = []
        for p in sorted(self.out.glob(".posthoc-*.lock")):
            try:
                info = json.loads(p.read_text() or "{}")
            except (ValueError, OSError):
                continue
            if info:
                infos.append(
                    f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')}"
                    + (f", shard {info['shard']}" if info.get("shard") else "")
                    + (f": {info.get('command')}" if info.get("command") else "")
                )
        return "; ".join(infos) or "another process"

    def _lock(self, path: Path, mode: int) -> int:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)  # type: ignore[union-attr, unused-ignore]  # fcntl is None on Windows
        except BlockingIOError:
            os.close(fd)
            raise RunLockedError(
                f"run folder {self.out} is in use by another posthoc-bench run ({self._holder()}). "
                "Wait for it to finish, or pass another --out"
            ) from None
        return fd

    def _write_info(self, fd: int) -> None:
        info = {"pid": os.getpid(), "host": socket.gethostname(),
                "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": " ".join(["posthoc-bench", *sys.argv[1:]]) if sys.argv else "",
                "shard": f"{self.shard[0]}/{self.shard[1]}" if self.shard else None}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)

    def acquire(self) -> RunLock:
        if fcntl is None:  # pragma: no cover - not on Linux/macOS
            log.warning("run-folder locking needs POSIX flock; %s is not locked against concurrent runs", self.out)
            return self
        if self._fds:
            return self
        main = self.out / self.MAIN
        if self.exclusive:
            fd = self._lock(main, fcntl.LOCK_EX)
            self._write_info(fd)
            self._fds.append(fd)
        else:
            self._fds.append(self._lock(main, fcntl.LOCK_SH))
            try:
                fd = self._lock(self.out / self._shard_name(), fcntl.LOCK_EX)
            except RunLockedError:
                self.release()
                raise
            self._write_info(fd)
            self._fds.append(fd)
        return self

    def release(self) -> None:
        for fd in reversed(self._fds):
            try:
                if self.exclusive or fd != self._fds[0]:
                    os.ftruncate(fd, 0)  # this run no longer holds it
                fcntl.flock(fd, fcntl.LOCK_UN)  # type: ignore[union-attr, unused-ignore]  # fcntl is None on Windows
            finally:
                os.close(fd)
        self._fds = []

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, exc_type: Any, *exc: Any) -> None:
        self.release()
        if exc_type is not None and self.fresh:
            self._remove_if_only_locks()

    def _remove_if_only_locks(self) -> None:
        """Remove the run folder if it holds nothing but lock files (the run wrote nothing)."""
        try:
            entries = list(self.out.iterdir())
            if any(not (e.name.startswith(".posthoc-") and e.name.endswith(".lock")) for e in entries):
                return
            for e in entries:
                e.unlink()
            self.out.rmdir()
        except OSError:  # another run started in it meanwhile, or it is not ours to remove
            pass
