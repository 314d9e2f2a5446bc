"""Peak extra memory of `posthoc.fuse` (by normalize mode) and `posthoc.soft_assign` (by method)
at 4K, each case in a fresh process (peak RSS after the input exists, output included).

    python scripts/measure_memory.py

The figures in the README and in the soft_assign docstring come from this script.
"""
from __future__ import annotations

import subprocess
import sys

CASES = [("fuse", "softmax", 0), ("soft_assign", "dense", 1), ("soft_assign", "dense", 4),
         ("soft_assign", "dense", 16), ("soft_assign", "pruned", 16)]

_CHILD = r"""
import resource, sys, torch, posthoc
torch.set_num_threads(2)
op, mode, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
rss = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
if op == "fuse":
    x = torch.randn(1, 19, 2160, 3840)
    lab = torch.randint(0, 100, (1, 2160, 3840), dtype=torch.int32)
    posthoc.fuse(x[..., :64, :64].contiguous(), lab[..., :64, :64].contiguous(), normalize=mode)
    b = rss(); posthoc.fuse(x, lab, normalize=mode)
    print(f"fuse normalize={mode} (1,19,2160,3840) input {x.nbytes / 2**20:.0f} MB: extra peak {rss() - b:.0f} MB "
          f"= {(rss() - b) / (x.nbytes / 2**20):.2f}x the input")
else:
    r, v = torch.rand(1, 100, 540, 960), torch.rand(1, 100)
    posthoc.soft_assign(r[:, :, :8, :8].contiguous(), v, size=(16, 16), method=mode, chunk_regions=chunk)
    b = rss(); posthoc.soft_assign(r, v, size=(2160, 3840), method=mode, chunk_regions=chunk)
    print(f"soft_assign method={mode} chunk_regions={chunk} N=100 540x960 -> 2160x3840: extra peak {rss() - b:.0f} MB")
"""


def main() -> int:
    for op, mode, chunk in CASES:
        r = subprocess.run([sys.executable, "-c", _CHILD, op, mode, str(chunk)], capture_output=True, text=True)
        print(r.stdout.strip() or r.stderr.strip().splitlines()[-1])
    return 0


if __name__ == "__main__":
    sys.exit(main())
