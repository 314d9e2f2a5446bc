"""The errors posthoc raises on purpose (docs/architecture.md, Conventions 4).

Every error is a subclass of :class:`PosthocError` and of ``ValueError``/``TypeError``/
``ImportError``, so ``except ValueError`` keeps working. There is one type per condition:

================== ==============================================================
``ShapeError``     wrong number of axes, or sizes that do not match
``DTypeError``     wrong dtype or Python type
``NonFiniteError`` NaN or +-Inf where finite values are required
``ValueRangeError`` values (or settings) outside the domain a function is defined on
``OverlapError``   boolean proposal masks overlap where a partition was required
``DeviceError``    two torch inputs live on different devices
``MissingExtraError`` an optional dependency is missing (the message names the extra)
================== ==============================================================

Messages give the expected and the actual shape or value, e.g.
``labels must be (B,H,W) matching scores (2,19,512,1024); got (2,256,512)``.
"""
from __future__ import annotations

__all__ = [
    "DTypeError",
    "DeviceError",
    "MissingExtraError",
    "NonFiniteError",
    "OverlapError",
    "PosthocError",
    "ShapeError",
    "ValueRangeError",
]


class PosthocError(Exception):
    """Base class of every error posthoc raises on purpose."""


class ShapeError(PosthocError, ValueError):
    """An input has the wrong number of axes or a size that does not match."""


class ValueRangeError(PosthocError, ValueError):
    """An input holds values outside the domain the function is defined on."""


class NonFiniteError(ValueRangeError):
    """An input holds NaN or +-Inf."""


class OverlapError(PosthocError, ValueError):
    """Boolean proposal masks overlap where a partition was required."""


class DTypeError(PosthocError, TypeError):
    """An input has the wrong dtype or Python type."""


class MissingExtraError(PosthocError, ImportError):
    """An optional dependency is missing; the message names the extra to install."""


class DeviceError(PosthocError, ValueError):
    """Two torch inputs live on different devices."""
