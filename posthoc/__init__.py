"""posthoc: inference-time structure constraints for segmentation and anomaly models.

The functional core (``fuse``, ``soft_assign``, ``hard_assign``, ``split_components``,
``refine``, ``refinement_mask``, ``mine_unknown_instances``, ``offset_resample``,
``offsets_from_proposals``) is made of pure functions on numpy arrays or torch
tensors. Submodules are imported lazily so ``import posthoc`` stays cheap.
"""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_LAZY = {
    # name -> module that defines it
    "fuse": "posthoc.fusion",
    "region_means": "posthoc.fusion",
    "region_class_logits": "posthoc.fusion",
    "soft_assign": "posthoc.assign",
    "hard_assign": "posthoc.assign",
    "assign_labels": "posthoc.assign",
    "split_components": "posthoc.components",
    "refinement_mask": "posthoc.mask2anomaly",
    "refine": "posthoc.mask2anomaly",
    "mine_unknown_instances": "posthoc.mask2anomaly",
    "offset_resample": "posthoc.offsets",
    "offsets_from_proposals": "posthoc.offsets",
    "Pipeline": "posthoc.pipeline",
    "meanshift_sphere": "posthoc.meanshift",
    "meanshift_multires": "posthoc.multires",
    "PixelMetrics": "posthoc.metrics",
    "ComponentMetrics": "posthoc.metrics",
    "SemanticMetrics": "posthoc.metrics",
    "OpenIoU": "posthoc.metrics",
    "PanopticQuality": "posthoc.metrics",
    "Proposals": "posthoc.types",
    "TeacherOutput": "posthoc.types",
    "PosthocError": "posthoc.errors",
    "ShapeError": "posthoc.errors",
    "ValueRangeError": "posthoc.errors",
    "DTypeError": "posthoc.errors",
    "OverlapError": "posthoc.errors",
    "NonFiniteError": "posthoc.errors",
    "MissingExtraError": "posthoc.errors",
    "DeviceError": "posthoc.errors",
}
_SUBMODULES = {"scores", "metrics", "kernels", "adapters", "bench", "errors", "validation", "peers"}

# sorted(_LAZY) then sorted(_SUBMODULES); tests/posthoc/test_public_names.py keeps the two in step
__all__ = [
    "ComponentMetrics",
    "DTypeError",
    "DeviceError",
    "MissingExtraError",
    "NonFiniteError",
    "OpenIoU",
    "OverlapError",
    "PanopticQuality",
    "Pipeline",
    "PixelMetrics",
    "PosthocError",
    "Proposals",
    "SemanticMetrics",
    "ShapeError",
    "TeacherOutput",
    "ValueRangeError",
    "assign_labels",
    "fuse",
    "hard_assign",
    "meanshift_multires",
    "meanshift_sphere",
    "mine_unknown_instances",
    "offset_resample",
    "offsets_from_proposals",
    "refine",
    "refinement_mask",
    "region_class_logits",
    "region_means",
    "soft_assign",
    "split_components",
    "adapters",
    "bench",
    "errors",
    "kernels",
    "metrics",
    "peers",
    "scores",
    "validation",
]


if TYPE_CHECKING:  # what a type checker sees; at run time __getattr__ imports these on first use
    from . import adapters, bench, errors, kernels, metrics, scores, validation
    from .assign import assign_labels, hard_assign, soft_assign
    from .components import split_components
    from .errors import (
        DeviceError,
        DTypeError,
        MissingExtraError,
        NonFiniteError,
        OverlapError,
        PosthocError,
        ShapeError,
        ValueRangeError,
    )
    from .fusion import fuse, region_class_logits, region_means
    from .mask2anomaly import mine_unknown_instances, refine, refinement_mask
    from .meanshift import meanshift_sphere
    from .metrics import ComponentMetrics, OpenIoU, PanopticQuality, PixelMetrics, SemanticMetrics
    from .multires import meanshift_multires
    from .offsets import offset_resample, offsets_from_proposals
    from .pipeline import Pipeline
    from .types import Proposals, TeacherOutput


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        mod = importlib.import_module(f"posthoc.{name}")
        globals()[name] = mod
        return mod
    raise AttributeError(f"module 'posthoc' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
