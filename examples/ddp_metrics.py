"""Official SMIYC metrics in your own torch.distributed loop.

    torchrun --standalone --nproc-per-node=2 examples/ddp_metrics.py

Each rank scores a contiguous block of the frames; ``sync()`` all-reduces the metric states
in place, so every rank gets the metrics of the whole data set, exactly those of one process.
Replace ``frames`` and ``model`` with your data and your model.
"""
import numpy as np
import torch.distributed as dist

from posthoc.metrics import ComponentMetrics, PixelMetrics

rng = np.random.default_rng(0)
labels = [np.zeros((64, 96), np.uint8) for _ in range(10)]
for i, lab in enumerate(labels):
    lab[10 + 3 * i:30 + 3 * i, 20 + 5 * i:40 + 5 * i] = 1  # one 20x20 anomaly per frame
frames = [(lab, (0.5 * lab + 0.6 * rng.random(lab.shape)).astype(np.float32)) for lab in labels]


def model(x):  # your model: here the "image" already is the anomaly map
    return x


dist.init_process_group("gloo")  # torchrun sets RANK, WORLD_SIZE, MASTER_ADDR
rank, world = dist.get_rank(), dist.get_world_size()
mine = frames[rank * len(frames) // world:(rank + 1) * len(frames) // world]  # contiguous block
pix = PixelMetrics()  # mode="smiyc": the official binning
for lab, image in mine:
    pix.update(model(image), lab)
pix.sync()  # every rank now holds the pixel state of all frames
comp = ComponentMetrics.from_pixel(pix, track="obstacle")  # the pooled best-F1 threshold
for lab, image in mine:
    comp.update(model(image), lab)
comp.sync()
if rank == 0:
    print(f"AP {pix.compute()['ap']:.4f}  FPR95 {pix.compute()['fpr95']:.4f}  mean F1 {comp.compute()['f1_mean']:.4f}")
dist.destroy_process_group()
