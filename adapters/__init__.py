"""posthoc.adapters: teachers and proposal sources that wrap outside models.

Everything is registered by name and imported lazily, so optional packages
(onnxruntime, segment-anything, open_clip) are only needed for what you use::

    from posthoc.adapters import get_teacher, get_proposals
    teacher = get_teacher("onnx", path="my_model.onnx")
"""
from __future__ import annotations

from .base import ProposalSource, Teacher
from .registry import (
    get_factory,
    get_proposals,
    get_teacher,
    list_proposals,
    list_teachers,
    register_proposals,
    register_teacher,
)

__all__ = [
    "ProposalSource",
    "Teacher",
    "get_factory",
    "get_proposals",
    "get_teacher",
    "list_proposals",
    "list_teachers",
    "register_proposals",
    "register_teacher",
]
