"""Scale-out of one benchmark run: ``torchrun`` ranks or independent ``--shard I/N`` runs.

A run's frames are split into N disjoint, deterministic **contiguous blocks** in data-set
order: the n frames the single-process run would evaluate (so ``--limit`` means the same
thing) are cut into ``ceil(n/B)`` batches of ``--batch-size`` B, and block i gets batches
``[i*nb//N, (i+1)*nb//N)``, so the teacher sees the same batches as in one process.
Contiguous blocks, concatenated in block order, are the frame order of one process, so
every metric state (including the SMIYC per-frame bins, whose official aggregation is
order-sensitive at ties) reduces to exactly the single-process state.

* **torchrun** (``WORLD_SIZE`` > 1 in the environment): :func:`setup` joins the process group
  (NCCL when the run uses CUDA, else gloo; a timeout, default 1800 s or
  ``$POSTHOC_DIST_TIMEOUT``), and puts rank r on ``cuda:LOCAL_RANK`` when CUDA is there.
  Rank r evaluates block r into the shared (or its own) run cache; the pixel states are
  all-reduced before the component pass, so every rank thresholds at the pooled pixel
  best-F1 threshold; the component states and the frame counts are all-reduced after it;
  rank 0 alone writes ``results.json``, the tables and the plots.
* **--shard I/N**: one process evaluates block I and also saves, in ``<out>/shard/``,
  ``shard.json`` (its config and frames), the pixel metric *states* of every variant
  (``.npz``, no pickle) and the labels of its frames, so that ``posthoc-bench merge``
  (:mod:`posthoc.bench.merge`) can add the states and run the component pass at the pooled
  threshold on the cached maps without the data set.

A rank that dies makes the others fail at their next collective with
:class:`~posthoc.metrics._state.MetricSyncError` (or torchrun stops them); rerunning the
command resumes from the per-frame cache.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np

from posthoc.metrics._state import MetricSyncError, all_reduce_sum

from .config import BenchError

log = logging.getLogger(__name__)

__all__ = [
    "SHARD_DIR",
    "SHARD_FORMAT",
    "Scale",
    "ShardView",
    "block",
    "load_state",
    "parse_shard",
    "save_shard_teacher",
    "save_state",
    "setup",
    "shard_note",
    "shard_candidates",
    "teardown",
    "write_shard_manifest",
]

#: folder of a ``--shard`` run that holds what ``posthoc-bench merge`` needs
SHARD_DIR = "shard"
#: version of ``shard.json``; bump when its content changes meaning
SHARD_FORMAT = 1
_DEFAULT_TIMEOUT_S = 1800.0


@dataclass(frozen=True)
class Scale:
    """Which part of a run this process does.

    Attributes:
        index: this process's block (the torchrun rank, or I of ``--shard I/N``).
        count: number of blocks (the world size, or N); 1 = the whole run.
        torchrun: the blocks run at once in one ``torch.distributed`` group, and states are
            all-reduced; False with ``count > 1`` = an independent ``--shard`` run.
        group: the process group of the collectives (None = the default group).
    """

    index: int = 0
    count: int = 1
    torchrun: bool = False
    group: Any = None

    @property
    def active(self) -> bool:
        return self.count > 1

    @property
    def shard(self) -> tuple[int, int] | None:
        """``(index, count)`` when the run is split, else None (what ``RunCache(shard=)`` takes)."""
        return (self.index, self.count) if self.active else None

    @property
    def writes_results(self) -> bool:
        """Whether this process writes results.json, tables and plots (rank 0, or every ``--shard`` run)."""
        return not self.torchrun or self.index == 0

    def sum(self, values: list[int]) -> list[int]:
        """Sum integers over the torchrun group (identity otherwise)."""
        if not self.torchrun:
            return list(values)
        return [int(v) for v in all_reduce_sum(np.array(values, np.int64), self.group, "frame counts")]

    def reduce_hook(self, pixel_states: dict | None = None):
        """The ``reduce`` argument of :func:`posthoc.metrics.evaluate_anomaly_maps`.

        torchrun: sync every state over the group after each pass. ``--shard``: store each
        variant's pixel ``state_dict()`` in ``pixel_states`` (for the shard files). A whole
        run: None.
        """
        if self.torchrun:
            def reduce(stage: str, accs: dict) -> None:
                for acc in accs.values():
                    acc.sync(self.group)

            return reduce
        if self.active and pixel_states is not None:
            def keep(stage: str, accs: dict) -> None:
                if stage == "pixel":
                    pixel_states.update({k: acc.state_dict() for k, acc in accs.items()})

            return keep
        return None


def parse_shard(text: str) -> tuple[int, int]:
    """``"I/N"`` -> ``(I, N)`` with ``0 <= I < N``; BenchError otherwise."""
    parts = str(text).split("/")
    try:
        if len(parts) != 2:
            raise ValueError
        i, n = int(parts[0]), int(parts[1])
    except ValueError:
        raise BenchError(f"--shard must be I/N with integers, e.g. 0/4; got {text!r}") from None
    if n < 1 or not 0 <= i < n:
        raise BenchError(f"--shard I/N needs N >= 1 and 0 <= I < N; got {text!r}")
    return i, n


def _timeout() -> timedelta:
    raw = os.environ.get("POSTHOC_DIST_TIMEOUT")
    try:
        s = float(raw) if raw else _DEFAULT_TIMEOUT_S
    except ValueError:
        raise BenchError(f"$POSTHOC_DIST_TIMEOUT must be seconds; got {raw!r}") from None
    if s <= 0:
        raise BenchError(f"$POSTHOC_DIST_TIMEOUT must be > 0 seconds; got {raw!r}")
    return timedelta(seconds=s)


def setup(shard: tuple[int, int] | None, device: str | None) -> tuple[Scale, str | None]:
    """Decide this process's part of the run and its device; join the torchrun group if there is one.

    Args:
        shard: ``(I, N)`` from ``--shard``, or None.
        device: the ``--device`` flag (None = the adapters' default).

    Returns:
        ``(scale, device)``. Under torchrun with CUDA available and ``device`` None or a CUDA
        device, the device becomes ``cuda:LOCAL_RANK`` (one GPU per rank) and the backend NCCL;
        otherwise gloo on the CPU.

    Raises:
        BenchError: ``--shard`` under torchrun, or a bad environment / timeout.
        MetricSyncError: the process group could not be joined (a rank missing, timeout).
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        if shard is None or shard[1] == 1:
            return Scale(), device
        return Scale(shard[0], shard[1], torchrun=False), device
    if shard is not None:
        raise BenchError(
            f"--shard {shard[0]}/{shard[1]} cannot be combined with torchrun (WORLD_SIZE={world}): "
            "under torchrun each rank already evaluates its own shard"
        )
    import torch
    import torch.distributed as dist

    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if cuda:
        device = f"cuda:{local}"
        torch.cuda.set_device(local)
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend, timeout=_timeout())
        except Exception as e:
            raise MetricSyncError(
                f"rank {rank}: could not join the torch.distributed group of {world} ranks ({type(e).__name__}: {e})"
            ) from e
    log.info("rank %d of %d (local rank %d) on %s with %s", dist.get_rank(), dist.get_world_size(), local,
             device or "the default device", backend)
    return Scale(dist.get_rank(), dist.get_world_size(), torchrun=True), device


def teardown(scale: Scale) -> None:
    """Leave the process group (torchrun runs); a no-op otherwise."""
    if scale.torchrun:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def block(n: int, index: int, count: int, align: int = 1) -> tuple[int, int]:
    """``[start, stop)`` of block ``index`` of ``count`` contiguous blocks of ``n`` items.

    Block boundaries fall on multiples of ``align`` (the batch size): the ``ceil(n/align)``
    batches are split as evenly as possible, so every block sees the same teacher batches
    as one process over all frames (a teacher's output may depend on its batch).
    """
    align = max(1, int(align))
    nb = -(-n // align)
    return min(n, (index * nb // count) * align), min(n, ((index + 1) * nb // count) * align)


def shard_candidates(dataset: Any, limit: int | None) -> list:
    """The frame refs a single-process run evaluates, in order.

    Without a limit: every ref. With ``limit``: refs up to the ``limit``-th frame the run
    keeps (the frame loop skips labelled frames whose label has no valid pixel and does not
    count them, e.g. in LostAndFound), so only labels are read, never images.
    """
    refs = list(dataset.refs)
    if limit is None:
        return refs
    out, kept = [], 0
    for ref in refs:
        if kept >= limit:
            break
        out.append(ref)
        if ref.label_path is None:
            kept += 1
            continue
        fr = dataset.load(ref, image=False)
        if fr.label is None or dataset.keep_remapped(fr):
            kept += 1
    return out


class ShardView:
    """A data set restricted to one block of its frames; everything else is the data set's own."""

    def __init__(self, dataset: Any, scale: Scale, limit: int | None, batch_size: int = 1):
        cands = shard_candidates(dataset, limit)
        a, b = block(len(cands), scale.index, scale.count, batch_size)
        self._dataset = dataset
        self.refs = cands[a:b]
        self.block = (a, b, len(cands))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._dataset, name)

    def __len__(self) -> int:
        return len(self.refs)

    def __iter__(self):
        for ref in self.refs:
            fr = self._dataset.load(ref)
            if fr.label is not None and not self._dataset.keep_remapped(fr):
                continue
            yield fr


def save_state(path: Path, state: dict) -> None:
    """Write a metric state dict as ``.npz`` (no pickle), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **state)
    os.replace(tmp, path)


def load_state(path: Path) -> dict:
    """Read a state written by :func:`save_state` (``allow_pickle=False``)."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


# --------------------------------------------------------------------------- --shard runs
def shard_note(scale: Scale) -> str:
    """The line a ``--shard`` run's table starts with."""
    return (f"> **Shard {scale.index}/{scale.count}** of a split run: the metrics below cover this shard's frames "
            "only. Combine the shards with `posthoc-bench merge RUN_DIR... --out DIR`.\n\n")


def save_shard_teacher(out: Path, ev_key: str, display: str, dataset: Any, cache: Any, inf: Any,
                       pixel_states: dict) -> dict:
    """Save what ``merge`` needs of one (evaluation, teacher) of a ``--shard`` run; returns its record.

    Writes ``<out>/shard/states/<ev>__<teacher>/<variant>.npz`` (pixel metric states) and
    ``<out>/shard/labels/<ev>/<frame id>.npz`` (the labels, uint8, compressed; shared by the
    teachers). Paths in the record are relative to ``out`` so a run folder can be moved.
    """
    from .config import slug

    base = Path(out) / SHARD_DIR
    sdir = base / "states" / f"{slug(ev_key)}__{slug(display)}"
    states = {}
    for k, st in pixel_states.items():
        p = sdir / f"{slug(k)}.npz"
        save_state(p, st)
        states[k] = str(p.relative_to(out))
    ldir = base / "labels" / slug(ev_key)
    ldir.mkdir(parents=True, exist_ok=True)
    refs = {r.id: r for r in dataset.refs}
    for fid in inf.labelled:
        p = ldir / f"{fid}.npz"
        if not p.is_file():
            tmp = p.with_name(p.name + ".tmp.npz")
            np.savez_compressed(tmp, label=dataset.load_label(refs[fid]))
            os.replace(tmp, p)
    return {
        "labelled": list(inf.labelled),
        "cache_dir": str(Path(cache.dir).relative_to(out)),
        "labels_dir": str(ldir.relative_to(out)),
        "states": states,
    }


def write_shard_manifest(out: Path, results: dict, scale: Scale) -> Path:
    """``<out>/shard/shard.json``: the shard's results (config, versions, per-teacher records)."""
    from posthoc.adapters.io import write_json_atomic

    path = Path(out) / SHARD_DIR / "shard.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    body = {k: v for k, v in results.items() if k != "markdown"}
    write_json_atomic(path, {"format": SHARD_FORMAT, "shard": [scale.index, scale.count], "results": body})
    return path
