"""The per-frame loop of a run: read frames in batches, run the teacher and the proposal
sources once per batch, compute every variant map with :class:`posthoc.bench.variants.VariantMaps`,
and write them to the run cache."""
from __future__ import annotations

import logging
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from posthoc.errors import ShapeError

from . import datasets as ds
from .cache import RunCache, frame_inputs
from .precomputed import PrecomputedScores
from .variants import VariantMaps, as_anomaly

if TYPE_CHECKING:
    from .distributed import ShardView

log = logging.getLogger(__name__)

__all__ = ["InferenceResult", "ProposalMemo", "Timer", "batches", "infer_teacher", "progress"]


class Timer:
    """Seconds per named stage, summed over the run."""

    def __init__(self):
        self.t = defaultdict(float)

    def add(self, key: str, dt: float) -> None:
        self.t[key] += dt

    def __call__(self, key: str):
        timer = self

        class _Ctx:
            def __enter__(self_):
                self_.t0 = time.perf_counter()

            def __exit__(self_, *exc):
                timer.add(key, time.perf_counter() - self_.t0)

        return _Ctx()


def progress(iterable, total, desc, enabled):
    """A tqdm bar on stderr when ``enabled`` and tqdm is installed, else ``iterable`` itself."""
    if not enabled:
        return iterable
    try:
        from tqdm import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True)


class ProposalMemo:
    """Proposals of image-only sources (``uses_teacher_output`` False), keyed by source and the
    batch's frame ids, kept for the next teacher of the same evaluation up to a memory budget."""

    def __init__(self, budget_bytes: int = 2 << 30):
        self.budget = budget_bytes
        self.used = 0
        self.store: dict = {}

    @staticmethod
    def shareable(obj: Any) -> bool:
        return getattr(obj, "uses_teacher_output", True) is False

    def get(self, src: str, ids: tuple):
        return self.store.get((src, ids))

    def put(self, src: str, ids: tuple, props: Any) -> None:
        size = 0
        for f in ("labels", "region_scores", "validity", "class_logits", "mask_logits"):
            x = getattr(props, f, None)
            if x is not None:
                size += int(x.nbytes) if isinstance(x, np.ndarray) else x.element_size() * x.nelement()
        if self.used + size <= self.budget:
            self.store[(src, ids)] = props
            self.used += size



def batches(dataset: ds.Dataset | ShardView, limit: int | None, batch_size: int, skip: Callable[[Any], bool]):
    """Yield lists of (ref, Frame) of equal image size; frames with ``skip(ref)`` are yielded as (ref, None)."""
    batch: list = []
    n = 0
    for ref in dataset.refs:
        if limit is not None and n >= limit:
            break
        if skip(ref):
            n += 1
            if batch:
                yield batch
                batch = []
            yield [(ref, None)]
            continue
        fr = dataset.load(ref)
        if fr.label is not None and not dataset.keep_remapped(fr):
            log.info("%s: skipping frame %s (no valid label pixels)", dataset.name, ref.id)
            continue
        n += 1
        if batch and (batch[0][1].image.shape != fr.image.shape or len(batch) >= batch_size):
            yield batch
            batch = []
        batch.append((ref, fr))
    if batch:
        yield batch


def _labels_at(labels: Any, hw: tuple) -> np.ndarray:
    """(B,H,W) int32 numpy label maps at ``hw`` (nearest), for the overlays."""
    lab = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(np.asarray(labels))
    lab = lab.long()
    if tuple(lab.shape[-2:]) != tuple(hw):
        lab = torch.nn.functional.interpolate(lab[:, None].float(), size=hw, mode="nearest")[:, 0].long()
    return lab.cpu().numpy().astype(np.int32)


@dataclass
class InferenceResult:
    """What the loop over one (evaluation, teacher) did: frame ids in order with whether each
    has a label, how many came from the cache, and the frames chosen for overlays."""

    processed: list = field(default_factory=list)  # (frame id, has label)
    cached: int = 0
    overlay_ids: list = field(default_factory=list)

    @property
    def labelled(self) -> list[str]:
        return [fid for fid, has in self.processed if has]


def infer_teacher(dataset: ds.Dataset | ShardView, name: str, teacher: Any, prop_objs: dict, variant_maps: VariantMaps,
                  cache: RunCache, *, limit: int | None, batch_size: int, overlays: int, show_progress: bool,
                  timer: Timer, desc: str, prop_memo: ProposalMemo | None = None) -> InferenceResult:
    """Compute and cache every variant map of every frame of ``dataset`` for one teacher.

    Frames already in ``cache`` are skipped (resume), unless their input files changed or a
    cached map fails its checksum. Image-only proposals are shared with the other teachers
    of the evaluation through ``prop_memo``.
    """
    keys = [v.key for v in variant_maps.chain]
    res = InferenceResult()
    total = min(len(dataset), limit) if limit else len(dataset)
    inputs: dict[str, dict] = {}

    def cached(ref: Any) -> bool:
        inputs[ref.id] = frame_inputs(ref)
        return cache.is_done(ref.id, keys, inputs[ref.id])

    frames = batches(dataset, limit, batch_size, cached)
    bar = progress(None, total, desc, show_progress)
    with torch.inference_mode():
        while True:
            t0 = time.perf_counter()
            try:
                batch = next(frames)
            except StopIteration:
                break
            timer.add("load", time.perf_counter() - t0)
            if batch[0][1] is None:  # cached
                ref = batch[0][0]
                res.cached += 1
                res.processed.append((ref.id, ref.label_path is not None))
                if len(res.overlay_ids) < overlays and ref.label_path is not None:
                    res.overlay_ids.append(ref.id)
                if bar is not None:
                    bar.update(1)
                continue
            images = np.stack([fr.image for _, fr in batch])
            ids = tuple(ref.id for ref, _ in batch)
            with timer("teacher"):
                if isinstance(teacher, PrecomputedScores):
                    t_out = teacher.for_frames(list(ids), dataset.name, images.shape[1:3])
                else:
                    t_out = teacher(images)
            anomaly = as_anomaly(t_out, name)
            if tuple(anomaly.shape) != (len(batch), 1) + images.shape[1:3]:
                raise ShapeError(
                    f"teacher {name} returned anomaly scores {tuple(anomaly.shape)}; expected "
                    f"{(len(batch), 1) + images.shape[1:3]} (the input resolution)"
                )
            props_by_src = {}
            for src, obj in prop_objs.items():
                shared = prop_memo is not None and prop_memo.shareable(obj)
                hit = prop_memo.get(src, ids) if shared and prop_memo is not None else None
                if hit is not None:
                    props_by_src[src] = hit
                    continue
                with timer(f"proposals:{src}"):
                    props_by_src[src] = obj(images, teacher_output=t_out)
                if shared and prop_memo is not None:
                    prop_memo.put(src, ids, props_by_src[src])
            maps = variant_maps(anomaly, t_out, props_by_src, timer, images=images)
            with timer("cache:write"):
                for b, (ref, fr) in enumerate(batch):
                    for k in keys:
                        cache.save_map(k, ref.id, maps[k][b, 0].detach().cpu().numpy())
                    if len(res.overlay_ids) < overlays and fr.label is not None:
                        res.overlay_ids.append(ref.id)
                        for src, p in props_by_src.items():
                            cache.save_labels(src, ref.id, _labels_at(p.labels, images.shape[1:3])[b])
                    cache.mark_done(ref.id, keys, fr.image.shape[:2], inputs.get(ref.id))
                    res.processed.append((ref.id, fr.label is not None))
            if bar is not None:
                bar.update(len(batch))
    if bar is not None:
        bar.close()
    if res.cached:
        log.info("%s: %d of %d frames taken from the cache %s", desc, res.cached, len(res.processed), cache.dir)
    return res
