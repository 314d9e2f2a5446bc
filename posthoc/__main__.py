"""``python -m posthoc fuse ...`` is ``posthoc fuse ...`` (:mod:`posthoc.bench.fuse_cli`)."""
from __future__ import annotations

import sys

if __name__ == "__main__":
    from posthoc.bench.fuse_cli import main

    sys.exit(main())
