"""SMIYC submission files: one HDF5 file per frame.

Format of the official ``road_anomaly_benchmark`` (``evaluation.py``, ``Evaluation.save_output``
and ``datasets/dataset_io.py``, ``ChannelLoaderHDF5``): the anomaly map of a frame is
written as float16 dataset ``value`` of shape (H,W), gzip-compressed (level 9), to

    <DIR>/anomaly_p/<method_name>/<dataset_name>/<frame_id>.hdf5

where ``dataset_name`` is the official name of the split (``AnomalyTrack-all``,
``ObstacleTrack-all``, ``LostAndFound-test``, ...). Scores must be probabilities in [0,1]
(higher = more anomalous) at the image resolution.
"""
from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from posthoc.adapters.io import atomic_path
from posthoc.errors import DTypeError, ShapeError, ValueRangeError
from posthoc.validation import check_range, shape_str

log = logging.getLogger(__name__)

__all__ = ["export_frames", "method_slug", "read_submission_frame", "submission_path", "write_submission_frame"]

_SAFE = re.compile(r"[^A-Za-z0-9._+-]+")


def method_slug(name: str) -> str:
    """A file-system-safe method name (letters, digits, ``._+-``)."""
    s = _SAFE.sub("-", name).strip("-")
    if not s:
        raise ValueError(f"method name {name!r} has no usable characters")
    return s


def submission_path(out_dir: str | os.PathLike, method: str, dataset_name: str, frame_id: str) -> Path:
    """``<out_dir>/anomaly_p/<method>/<dataset_name>/<frame_id>.hdf5``."""
    if not frame_id or "/" in frame_id or frame_id.startswith("."):
        raise ValueError(f"frame id must be a plain file stem; got {frame_id!r}")
    return Path(out_dir) / "anomaly_p" / method_slug(method) / dataset_name / f"{frame_id}.hdf5"


def write_submission_frame(
    out_dir: str | os.PathLike,
    method: str,
    dataset_name: str,
    frame_id: str,
    scores: Any,
    *,
    image_shape: tuple | None = None,
    compression_level: int = 9,
) -> Path:
    """Write one frame's anomaly map as an official submission file (atomically).

    Args:
        out_dir: the export root (``--export-smiyc DIR``).
        method: method name (folder); made file-system safe with :func:`method_slug`.
        dataset_name: official data-set name, e.g. ``"AnomalyTrack-all"``.
        frame_id: the frame id (file stem of the image).
        scores: (H,W) or (1,H,W) or (1,1,H,W) anomaly probabilities in [0,1], any float dtype,
            numpy or torch.
        image_shape: optional (H,W) the map must match (the image resolution).
        compression_level: gzip level (the official writer uses 9).

    Returns:
        The path written.

    Raises:
        ShapeError: the map is not 2-D after squeezing leading singleton axes, or does not
            match ``image_shape``.
        DTypeError: the map is not floating point.
        ValueRangeError / NonFiniteError: values outside [0,1] or NaN/Inf.
    """
    import h5py

    t = scores if isinstance(scores, torch.Tensor) else torch.as_tensor(np.asarray(scores))
    while t.ndim > 2 and t.shape[0] == 1:
        t = t[0]
    if t.ndim != 2:
        raise ShapeError(
            f"submission scores for frame {frame_id!r} must be (H,W); got {shape_str(tuple(scores.shape))}"
        )
    if not t.is_floating_point():
        raise DTypeError(f"submission scores for frame {frame_id!r} must be floating point; got {t.dtype}")
    if image_shape is not None and tuple(t.shape) != tuple(image_shape[:2]):
        raise ShapeError(
            f"submission scores for frame {frame_id!r} must be at the image resolution {tuple(image_shape[:2])}; "
            f"got {tuple(t.shape)}"
        )
    check_range(t.float(), f"submission scores for frame {frame_id!r}", 0.0, 1.0)
    value = t.detach().cpu().numpy().astype(np.float16)
    dest = submission_path(out_dir, method, dataset_name, frame_id)
    with atomic_path(dest, suffix=".hdf5") as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("value", data=value, compression="gzip", compression_opts=int(compression_level))
    return dest


def read_submission_frame(path: os.PathLike) -> np.ndarray:
    """Read the float16 ``value`` dataset of a submission file (for checks)."""
    import h5py

    with h5py.File(path, "r") as f:
        if "value" not in f:
            raise ValueRangeError(f"{path} has no dataset 'value'; keys: {list(f.keys())}")
        return f["value"][()]


def export_frames(
    out_dir: os.PathLike,
    method: str,
    dataset_name: str,
    frames: Iterable[tuple[str, Any]],
    **kw,
) -> list[Path]:
    """Write ``(frame_id, scores)`` pairs; returns the paths written."""
    return [write_submission_frame(out_dir, method, dataset_name, fid, s, **kw) for fid, s in frames]
