"""Name -> factory registry for teachers and proposal sources (docs/architecture.md, Conventions 5).

Built-in adapters are listed here as ``name -> "module:factory"`` and imported only when
that name is looked up, so ``get_teacher("obsnet")`` imports the ObsNet module and what it
needs, nothing else, and a missing optional package only matters for the adapter that
needs it. Third-party code registers its own with the decorators.
"""
from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Callable
from typing import Any

from posthoc.errors import PosthocError

log = logging.getLogger(__name__)

__all__ = [
    "UnknownAdapterError",
    "get_factory",
    "get_proposals",
    "get_teacher",
    "list_proposals",
    "list_teachers",
    "register_proposals",
    "register_teacher",
]

_TEACHERS: dict[str, Callable[..., Any]] = {}
_PROPOSALS: dict[str, Callable[..., Any]] = {}

_T = "posthoc.adapters.teachers."
_P = "posthoc.adapters.proposals:"
#: built-in teachers: name -> "module:factory", imported on first lookup
BUILTIN_TEACHERS = {
    "onnx": _T + "generic:onnx_teacher",
    "torch": _T + "generic:torch_teacher",
    "msp": _T + "scores:msp_teacher",
    "maxlogit": _T + "scores:maxlogit_teacher",
    "entropy": _T + "scores:entropy_teacher",
    "energy": _T + "scores:energy_teacher",
    "sml": _T + "sml:SMLTeacher",
    "obsnet": _T + "obsnet:ObsNetTeacher",
    "dacup": _T + "dacup:DaCUPTeacher",
    "zegformer": _T + "zegformer:ZegFormerTeacher",
    "daformer": _T + "daformer:DAFormerTeacher",
}
#: built-in proposal sources: name -> "module:factory"
BUILTIN_PROPOSALS = {
    "sam": "posthoc.adapters.proposals_sam:SamProposals",
    "mask_transformer": _P + "MaskTransformerProposals",
    "superpixels": "posthoc.adapters.proposals_superpixels:SuperpixelProposals",
    "meanshift": _P + "MeanShiftProposals",
    "onnx": _P + "OnnxProposals",
    "csl": _P + "csl_proposals",
}


class UnknownAdapterError(PosthocError, KeyError):
    """No adapter is registered under that name."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


def _resolve(table: dict, builtins: dict, name: str) -> Callable[..., Any] | None:
    """The factory registered as ``name``, importing its built-in module on first use."""
    if name in table:
        return table[name]
    if name not in builtins:
        return None
    module, attr = builtins[name].split(":")
    factory = getattr(importlib.import_module(module), attr)
    table.setdefault(name, factory)
    return table[name]


def _load_builtins() -> None:
    """Import every built-in adapter (for code that wants the whole table at once)."""
    for name in BUILTIN_TEACHERS:
        _resolve(_TEACHERS, BUILTIN_TEACHERS, name)
    for name in BUILTIN_PROPOSALS:
        _resolve(_PROPOSALS, BUILTIN_PROPOSALS, name)


def _register(table: dict[str, Callable[..., Any]], kind: str, name: str):
    def deco(factory):
        if name in table and table[name] is not factory:
            raise ValueError(f"a {kind} named {name!r} is already registered")
        table[name] = factory
        try:
            factory.name = name
        except (AttributeError, TypeError):
            pass
        return factory

    return deco


def register_teacher(name: str):
    """Decorator: register a Teacher class or factory under ``name``."""
    return _register(_TEACHERS, "teacher", name)


def register_proposals(name: str):
    """Decorator: register a ProposalSource class or factory under ``name``."""
    return _register(_PROPOSALS, "proposal source", name)


def _tables(kind: str) -> tuple[dict, dict, str]:
    if kind == "teacher":
        return _TEACHERS, BUILTIN_TEACHERS, "teacher"
    if kind == "proposals":
        return _PROPOSALS, BUILTIN_PROPOSALS, "proposal source"
    raise ValueError(f"kind must be 'teacher' or 'proposals'; got {kind!r}")


def get_factory(kind: str, name: str) -> Callable[..., Any]:
    """The registered class or factory itself (to inspect its signature), without building it.

    Args:
        kind: ``"teacher"`` or ``"proposals"``.
        name: the registered name.
    """
    table, builtins, label = _tables(kind)
    factory = _resolve(table, builtins, name)
    if factory is None:
        known = ", ".join(sorted(set(table) | set(builtins))) or "(none)"
        raise UnknownAdapterError(f"unknown {label} {name!r}; known {label}s: {known}")
    return factory


def _build(kind: str, name: str, kw: dict) -> Any:
    factory = get_factory(kind, name)
    try:
        return factory(**kw)
    except TypeError as e:
        # a keyword the factory (or the class it forwards **kw to) does not take: name the adapter.
        # Only errors raised while binding the call are rewrapped, not a TypeError from deeper inside.
        depth, tb = 0, e.__traceback__
        while tb is not None:
            depth, tb = depth + 1, tb.tb_next
        if "unexpected keyword argument" not in str(e) or depth > 3:
            raise
        label = "teacher" if kind == "teacher" else "proposal source"
        raise TypeError(f"{label} {name!r}: {e}; {_accepted(factory)}") from e


def _accepted(factory: Callable[..., Any]) -> str:
    """The settings a factory takes, as words for an error message."""
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        return "see its documentation for the settings it takes"
    named = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"]
    if any(p.kind == p.VAR_KEYWORD for p in params):
        return f"it takes {named} and the settings of the class it builds (see its documentation)"
    return f"it accepts {named}"


def get_teacher(name: str, **kw) -> Any:
    """Build the teacher registered as ``name`` with keyword settings ``kw``."""
    return _build("teacher", name, kw)


def get_proposals(name: str, **kw) -> Any:
    """Build the proposal source registered as ``name``."""
    return _build("proposals", name, kw)


def list_teachers() -> list[str]:
    """Registered teacher names (built-ins are listed without importing them)."""
    return sorted(set(_TEACHERS) | set(BUILTIN_TEACHERS))


def list_proposals() -> list[str]:
    """Registered proposal-source names (built-ins are listed without importing them)."""
    return sorted(set(_PROPOSALS) | set(BUILTIN_PROPOSALS))
