"""Teachers: wrap the user's own segmentation or anomaly model behind one interface.

A teacher is called on a batch of RGB images, (B,H,W,3) uint8 (numpy or torch) or
(B,3,H,W) float in [0,1], and returns a :class:`posthoc.TeacherOutput` at the input
resolution (``adapters.base.Teacher``). Registered names (``get_teacher(name, ...)``):

=============  =====================================================================
``onnx``       :class:`OnnxTeacher`: any ONNX model (semantic logits or an anomaly
               probability), onnxruntime, CUDA when present, IO binding on GPU.
``torch``      :class:`TorchTeacher`: any torch module with pre/post-processing hooks.
``sml``        :class:`SMLTeacher`: standardized max logit (Jung et al., ICCV 2021)
               with boundary suppression and dilated smoothing, negated and
               calibrated to [0,1].
``obsnet``     :class:`ObsNetTeacher`: segmentation net + observer (Besnier et al.,
               ICCV 2021): sigmoid of the observer logit.
``dacup``      :class:`DaCUPTeacher`: DaCUP (Vojir & Matas), batch of 1, input in [0,1].
``zegformer``  :class:`ZegFormerTeacher`: ZegFormer (Ding et al., CVPR 2022) class maps
               over seen+unseen names with the seen-class ("gzero") calibration.
``daformer``   :class:`DAFormerTeacher`: DAFormer (Hoyer et al., CVPR 2022), whole-image
               mmseg inference, 19 Cityscapes classes.
``msp`` ``maxlogit`` ``entropy`` ``energy``
               :class:`ScoreTeacher`: generic post-hoc anomaly scores over any semantic
               model (Hendrycks & Gimpel 2017; Hendrycks et al. 2022; Liu et al. 2020).
=============  =====================================================================

Every registered factory takes ``weights=None`` (a path, a dict ``role -> path``, a
torch module or an already-built semantic teacher; None = the bundled default from
:func:`posthoc.adapters.bundled.default_weights`) and ``device=None``.

Anomaly teachers return ``kind="anomaly"`` scores (B,1,H,W), probabilities in [0,1]
with higher = more anomalous, and put the semantic logits they were computed from in
``TeacherOutput.logits``. Scores that are not probabilities (max logit, energy, SML)
are mapped to [0,1] with one *global* sigmoid fitted on data (docs/architecture.md, "Scores"):
never a per-image min-max, since pixel AP/FPR95 pool pixels over a whole data set.

JSON formats (written atomically; WORLD ships bundled files in these formats)
-------------------------------------------------------------------------------
Calibration (``ScoreTeacher.save_calibration`` / ``SigmoidCalibration.save``)::

    {"format": "posthoc.calibration", "version": 1, "method": "sigmoid",
     "score": "maxlogit",            # which raw score it maps (higher = more anomalous)
     "shift": 3.2, "scale": 0.7,     # p = 1 / (1 + exp(-(raw - shift) / scale))
     "fit": {"mode": "quantile"|"platt", "pixels": 200000, ...}}

SML statistics (``SMLTeacher.save_stats`` / ``load_stats``)::

    {"format": "posthoc.sml_stats", "version": 1,
     "class_names": [...K names...],
     "mean": [...K...], "var": [...K...], "count": [...K...],   # max logit per predicted class
     "calibration": {... a calibration object as above, score "sml" ...},
     "postprocess": {"boundary_suppression": true, "dilated_smoothing": true}}

The raw score each calibration maps ("higher = more anomalous"):
``maxlogit``: ``-max_k l_k``; ``energy``: ``-logsumexp_k l_k`` (the energy score with
T=1, Liu et al. 2020 Eq. 1); ``sml``: ``-SML`` after post-processing. ``msp`` (1 - max
softmax) and ``entropy`` (entropy / log K) are already in [0,1] and need none.

Layout: one module per teacher family (``generic``, ``scores``, ``sml``, ``obsnet``,
``dacup``, ``zegformer``, ``daformer``), ``calibration`` for the global sigmoid maps, and
``_common`` for the model backend (:func:`~posthoc.adapters.teachers._common.make_runner`:
ONNX or torch behind one ``run_image`` interface), preprocessing and weights resolution.
The names below are re-exported lazily, so ``get_teacher("obsnet")`` imports only what
ObsNet needs.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what a type checker sees; at run time __getattr__ imports these on first use (F401: __all__)
    from ..checkpoints import UnsafeCheckpointError, load_state_dict  # noqa: F401
    from ._common import CITYSCAPES_CLASSES, MMSEG_MEAN, MMSEG_STD  # noqa: F401
    from .calibration import (  # noqa: F401
        CalibrationError,
        NotFittedError,
        SigmoidCalibration,
        fit_sigmoid_calibration,
        load_calibration,
    )
    from .dacup import DaCUPTeacher  # noqa: F401
    from .daformer import DAFormerTeacher  # noqa: F401
    from .generic import OnnxTeacher, TorchTeacher, onnx_teacher, torch_teacher  # noqa: F401
    from .obsnet import ObsNetTeacher  # noqa: F401
    from .scores import ScoreTeacher, raw_score  # noqa: F401
    from .sml import SMLTeacher  # noqa: F401
    from .zegformer import ZegFormerTeacher  # noqa: F401

_LAZY = {
    "CITYSCAPES_CLASSES": "_common",
    "MMSEG_MEAN": "_common",
    "MMSEG_STD": "_common",
    "CalibrationError": "calibration",
    "NotFittedError": "calibration",
    "SigmoidCalibration": "calibration",
    "fit_sigmoid_calibration": "calibration",
    "load_calibration": "calibration",
    "DaCUPTeacher": "dacup",
    "DAFormerTeacher": "daformer",
    "OnnxTeacher": "generic",
    "TorchTeacher": "generic",
    "onnx_teacher": "generic",
    "torch_teacher": "generic",
    "ObsNetTeacher": "obsnet",
    "ScoreTeacher": "scores",
    "raw_score": "scores",
    "SMLTeacher": "sml",
    "ZegFormerTeacher": "zegformer",
    "UnsafeCheckpointError": "..checkpoints",
    "load_state_dict": "..checkpoints",
}

__all__ = [*sorted(_LAZY)]  # noqa: PLE0604 - the lazily re-exported names

#: names the single-module ``teachers.py`` also exposed (its imports of the image helpers and the
#: base class); still importable from here, not part of ``__all__``
_COMPAT = {
    "IMAGENET_MEAN": ".._image",
    "IMAGENET_STD": ".._image",
    "check_mean_std": ".._image",
    "normalize": ".._image",
    "parse_size": ".._image",
    "resize": ".._image",
    "resize_to": ".._image",
    "to_float_batch": ".._image",
    "Teacher": "..base",
    "register_teacher": "..registry",
}


def __getattr__(name: str) -> Any:
    where = _LAZY.get(name) or _COMPAT.get(name)
    if where is not None:
        value = getattr(importlib.import_module(where if where.startswith("..") else "." + where, __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
