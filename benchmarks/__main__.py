"""``python -m posthoc.bench ...`` is ``posthoc-bench ...`` (so ``torchrun -m posthoc.bench`` works)."""
from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
