"""Name -> factory registry for teachers and proposal sources (DESIGN.md, Conventions 5).

Factories are registered with a decorator in modules that are imported lazily the
first time a name is looked up, so a missing optional package only matters for
the adapter that needs it.
"""
from __future__ import annotations

import importlib
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

# Modules that register built-in adapters; imported on first lookup.
_BUILTIN_MODULES = [
    "posthoc.adapters.teachers",
    "posthoc.adapters.proposals",
]
_loaded = False


class UnknownAdapterError(PosthocError, KeyError):
    """No adapter is registered under that name."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


def _load_builtins() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in _BUILTIN_MODULES:
        try:
            importlib.import_module(mod)
        except ModuleNotFoundError as e:  # the module itself is missing (not an optional dependency)
            if e.name == mod:
                log.debug("built-in adapter module %s not present", mod)
            else:
                raise


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


def _get(table, kind: str, name: str, kw: dict):
    _load_builtins()
    if name not in table:
        known = ", ".join(sorted(table)) or "(none)"
        raise UnknownAdapterError(f"unknown {kind} {name!r}; known {kind}s: {known}")
    return table[name](**kw)


def get_teacher(name: str, **kw) -> Any:
    """Build the teacher registered as ``name`` with keyword settings ``kw``."""
    return _get(_TEACHERS, "teacher", name, kw)


def get_proposals(name: str, **kw) -> Any:
    """Build the proposal source registered as ``name``."""
    return _get(_PROPOSALS, "proposal source", name, kw)


def get_factory(kind: str, name: str) -> Callable[..., Any]:
    """The registered class or factory itself (to inspect its signature), without building it.

    Args:
        kind: ``"teacher"`` or ``"proposals"``.
        name: the registered name.
    """
    _load_builtins()
    if kind not in ("teacher", "proposals"):
        raise ValueError(f"kind must be 'teacher' or 'proposals'; got {kind!r}")
    table, label = (_TEACHERS, "teacher") if kind == "teacher" else (_PROPOSALS, "proposal source")
    if name not in table:
        known = ", ".join(sorted(table)) or "(none)"
        raise UnknownAdapterError(f"unknown {label} {name!r}; known {label}s: {known}")
    return table[name]


def list_teachers() -> list[str]:
    _load_builtins()
    return sorted(_TEACHERS)


def list_proposals() -> list[str]:
    _load_builtins()
    return sorted(_PROPOSALS)
