"""OpenMP wait policy for the command-line entry points; importing this module applies it.

torch's OpenMP threads spin for a while after every parallel op (libgomp's default
``OMP_WAIT_POLICY``); on a machine with few or shared cores the spinning steals the time of
the next op, numba's kernels and the ONNX teacher (docs/kernels.md, *Threads on a busy
machine*). The variable is read once, when torch loads its OpenMP runtime, so a CLI module
imports this first, before anything that imports torch. A value the user set wins, and
once torch is loaded nothing is changed (it would have no effect). Library code never
imports this module.
"""
from __future__ import annotations

import os
import sys

__all__ = ["passive_openmp"]


def passive_openmp() -> bool:
    """Default ``OMP_WAIT_POLICY`` to ``PASSIVE`` unless set or too late; True if it is PASSIVE now."""
    if "torch" not in sys.modules:
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    return os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"


passive_openmp()
