"""``--teacher DIR``: anomaly maps computed elsewhere, used as the teacher."""
from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from posthoc.adapters.io import load_npy
from posthoc.errors import ShapeError
from posthoc.validation import check_range

from . import datasets as ds

__all__ = ["PrecomputedScores"]


class PrecomputedScores:
    """Anomaly maps computed elsewhere, used as the teacher (``--teacher DIR``).

    ``DIR`` holds one file per frame, ``<frame id>.hdf5`` (the SMIYC submission format:
    dataset ``value``) or ``<frame id>.npy``, with (H,W) probabilities in [0,1] at the image
    resolution; or a sub-folder per data set named as the official data-set name (so
    ``--teacher anomaly_p/<method>`` works for ``--track both``). There are no semantic
    logits, so ``refine`` needs a mask-transformer proposal source.
    """

    kind = "anomaly"

    def __init__(self, folder: os.PathLike):
        self.folder = Path(folder)

    def _path(self, fid: str, dataset_name: str) -> Path:
        for base in (self.folder / dataset_name, self.folder):
            for ext in (".hdf5", ".h5", ".npy"):
                p = base / f"{fid}{ext}"
                if p.is_file():
                    return p
        raise ds.DatasetLayoutError(
            f"precomputed scores: no {fid}.hdf5 / {fid}.npy in {self.folder} or {self.folder / dataset_name}"
        )

    def for_frames(self, fids: Sequence[str], dataset_name: str, hw: tuple) -> Any:
        from posthoc.types import TeacherOutput

        maps = []
        for fid in fids:
            p = self._path(fid, dataset_name)
            if p.suffix == ".npy":
                m = load_npy(p)
            else:
                from .export import read_submission_frame

                m = read_submission_frame(p)
            m = np.asarray(m)
            if m.shape != tuple(hw):
                raise ShapeError(f"precomputed scores {p} must be {tuple(hw)} (the image size); got {m.shape}")
            maps.append(torch.from_numpy(m.astype(np.float32)))
        scores = torch.stack(maps)[:, None]
        check_range(scores, f"precomputed scores in {self.folder}", 0.0, 1.0)
        return TeacherOutput(scores, "anomaly", ["anomaly"])

