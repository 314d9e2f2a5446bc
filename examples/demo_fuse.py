"""Fuse a noisy anomaly map with superpixel proposals on generated data and print what changed.

Run with ``./run demo``. It needs no weights and no data set.
"""
import numpy as np
from skimage.segmentation import slic

import posthoc
from posthoc.metrics import PixelMetrics

rng = np.random.default_rng(0)
H, W = 256, 512
# a scene of flat-coloured blocks with one anomalous object
image = np.zeros((H, W, 3), np.float32)
for _ in range(12):
    y, x = rng.integers(0, H - 40), rng.integers(0, W - 60)
    image[y : y + rng.integers(40, 120), x : x + rng.integers(60, 200)] = rng.random(3)
gt = np.zeros((H, W), np.uint8)
gt[100:150, 200:260] = 1
image[gt == 1] = (1.0, 0.1, 0.8)
# a teacher that is right on average but noisy per pixel
teacher = np.clip(0.25 + 0.45 * gt + rng.normal(0, 0.25, (H, W)), 0, 1).astype(np.float32)
labels = slic(image, n_segments=300, compactness=10, start_label=0, channel_axis=-1).astype(np.int64)

fused = posthoc.fuse(teacher[None], labels)[0]
for name, s in (("teacher", teacher), ("fused", fused)):
    m = PixelMetrics(mode="exact")
    m.update(s, gt)
    r = m.compute()
    print(f"{name:8s} AP={r['ap']:.3f} FPR95={r['fpr95']:.3f} AUROC={r['auroc']:.3f}  "
          f"(exact mode, {H}x{W}, {labels.max() + 1} superpixels)")
