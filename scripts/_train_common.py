"""Shared pieces of the training scripts for the bundled models (scripts/train_*.py).

Run the scripts from the repository root, e.g. ``python scripts/train_segnet.py``;
Python puts ``scripts/`` on the import path for a script, so ``import _train_common``
needs no path manipulation. See docs/training.md for the full recipe.

Everything here is deterministic for a seed on CPU: the data come from
:func:`posthoc.bench.synthetic.ensure_world` (train split, no anomalies), the shuffles
from a seeded ``torch.Generator``, and the models run in float32 with two threads.

What the scripts share lives here: the common command-line flags (:func:`base_parser`,
:func:`training_parser`), data loading, the AdamW + one-cycle training loop
(:func:`fit_one_cycle`), the network blocks, ONNX export and the training log
(:func:`log_training`).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from posthoc.adapters.bundled import BUNDLED_DIR
from posthoc.adapters.io import atomic_path, write_json_atomic
from posthoc.bench import synthetic as syn

log = logging.getLogger("posthoc.train")

#: normalization of every bundled model (ImageNet statistics, RGB in [0,1])
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
NUM_CLASSES = len(syn.CLASS_NAMES)
#: checkpoints that are needed between scripts but never shipped (build/ is git-ignored)
WORK_DIR = Path(os.environ.get("POSTHOC_TRAIN_DIR", "build/train"))


def setup(seed: int, threads: int = 2) -> None:
    """Seed every generator, pin the thread count and configure logging for a script."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)


# ----------------------------------------------------------------------------- command line


def base_parser(doc: str) -> argparse.ArgumentParser:
    """The flags every script has: ``--seed``, ``--world-seed``, ``--threads``, ``--out``."""
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--world-seed", type=int, default=0, help="seed of the synthetic world")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default=str(BUNDLED_DIR))
    return ap


def training_parser(doc: str, *, epochs: int, lr: float, max_minutes: float,
                    batch_size: int = 16) -> argparse.ArgumentParser:
    """:func:`base_parser` plus the flags of :func:`fit_one_cycle` and ``--n-train``; the defaults differ per model."""
    ap = base_parser(doc)
    ap.add_argument("--n-train", type=int, default=None, help="train frames (default: synthetic.DEFAULT)")
    ap.add_argument("--epochs", type=int, default=epochs)
    ap.add_argument("--batch-size", type=int, default=batch_size)
    ap.add_argument("--lr", type=float, default=lr)
    ap.add_argument("--max-minutes", type=float, default=max_minutes, help="stop early when this wall time is spent")
    ap.add_argument("--max-steps", type=int, default=None,
                    help="stop after this many steps (reproduces a run that the time cap stopped early)")
    ap.add_argument("--checkpoint", default=None,
                    help="resumable checkpoint written after every epoch; an existing one is resumed "
                         "(must come from the same command)")
    return ap


def start(args: argparse.Namespace) -> Timer:
    """:func:`setup` with ``args.seed`` and ``args.threads``; returns a started :class:`Timer`."""
    setup(args.seed, args.threads)
    return Timer()


# ----------------------------------------------------------------------------- data


def load_frames(split: str, *, track: str = "anomaly", n_frames: int | None = None, seed: int = 0,
                size=None, train_size=None) -> dict:
    """Load a split of the synthetic world, resized to the training resolution.

    Returns:
        dict with ``images`` (N,h,w,3) uint8 RGB, ``classes`` (N,h,w) int64 class index
        (255 = void/anomaly, ignored by the losses), ``label`` (N,h,w) uint8 in {0,1,255}
        (``Frame.label``: 0 in-distribution, 1 anomaly, 255 void).
    """
    th, tw = train_size or syn.DEFAULT.train_size
    d = syn.ensure_world(split=split, track=track, n_frames=n_frames, size=size, seed=seed)
    imgs, cls, lab = [], [], []
    for _, fr in syn.iter_frames(d):
        imgs.append(cv2.resize(fr.image, (tw, th), interpolation=cv2.INTER_AREA))
        cls.append(cv2.resize(fr.classes, (tw, th), interpolation=cv2.INTER_NEAREST))
        lab.append(cv2.resize(fr.label, (tw, th), interpolation=cv2.INTER_NEAREST))
    return {"images": np.stack(imgs), "classes": np.stack(cls).astype(np.int64), "label": np.stack(lab),
            "dir": str(d)}


def load_train_val(args: argparse.Namespace) -> tuple[dict, dict]:
    """The ``train`` split (``--n-train`` frames) and the ``val`` split of world ``--world-seed``."""
    train = load_frames("train", n_frames=args.n_train, seed=args.world_seed)
    val = load_frames("val", seed=args.world_seed)
    return train, val


def to_input(images_u8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """(N,h,w,3) uint8 RGB -> (N,3,h,w) float32 normalized with MEAN/STD."""
    x = torch.as_tensor(images_u8).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(MEAN).view(1, 3, 1, 1)
    s = torch.tensor(STD).view(1, 3, 1, 1)
    return (x - m) / s


def augment(x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Random horizontal flips and photometric jitter (in normalized space); labels follow the flips."""
    flip = torch.rand(x.shape[0], generator=g) < 0.5
    x = torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    y = torch.where(flip.view(-1, *([1] * (y.ndim - 1))), y.flip(-1), y)
    gain = 1 + 0.2 * (torch.rand(x.shape[0], 1, 1, 1, generator=g) - 0.5)
    bias = 0.3 * (torch.rand(x.shape[0], 3, 1, 1, generator=g) - 0.5)
    return x * gain + bias, y


# ----------------------------------------------------------------------------- blocks


def cbr(cin: int, cout: int, k: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def up2(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


class Encoder(nn.Module):
    """A small plain-conv encoder: 1/2 (c0), 1/4 (c1), 1/8 (c2), 1/16 (c3) feature maps.

    Dense 3x3 convolutions rather than depthwise-separable ones: on a 2-core CPU they
    train about 3x faster per step at the same accuracy budget. Dilations 2 and 4 at
    1/8 and 1/16 plus a global-pool context term give the receptive field that tells
    sky from facade and road from sidewalk.
    """

    def __init__(self, c=(16, 32, 48, 64)):
        super().__init__()
        self.stem = cbr(3, c[0], 3, 2)
        self.s1 = nn.Sequential(cbr(c[0], c[1], 3, 2), cbr(c[1], c[1]))
        self.s2 = nn.Sequential(cbr(c[1], c[2], 3, 2), cbr(c[2], c[2], dilation=2))
        self.s3 = nn.Sequential(cbr(c[2], c[3], 3, 2), cbr(c[3], c[3], dilation=2), cbr(c[3], c[3], dilation=4))
        self.pool_proj = nn.Sequential(nn.Conv2d(c[3], c[3], 1), nn.ReLU(inplace=True))  # global context
        self.channels = c

    def forward(self, x):
        f0 = self.stem(x)
        f1 = self.s1(f0)
        f2 = self.s2(f1)
        f3 = self.s3(f2)
        f3 = f3 + self.pool_proj(f3.mean((2, 3), keepdim=True))
        return f0, f1, f2, f3


class Decoder(nn.Module):
    """U-Net-style decoder back to 1/2 resolution; returns the 1/2-resolution features."""

    def __init__(self, c=(16, 32, 48, 64), d=(48, 32, 32)):
        super().__init__()
        self.l2 = cbr(c[3] + c[2], d[0])
        self.l1 = cbr(d[0] + c[1], d[1], 1)
        self.l0 = cbr(d[1] + c[0], d[2], 1)
        self.out_channels = d[2]

    def forward(self, f0, f1, f2, f3):
        x = self.l2(torch.cat([up2(f3, f2), f2], 1))
        x = self.l1(torch.cat([up2(x, f1), f1], 1))
        return self.l0(torch.cat([up2(x, f0), f0], 1))


class SegNet(nn.Module):
    """Small semantic segmentation net: image (B,3,h,w) normalized -> logits (B,K,h,w), features (B,F,h/2,w/2)."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        super().__init__()
        self.enc = Encoder()
        self.dec = Decoder()
        self.head = nn.Conv2d(self.dec.out_channels, num_classes, 1)

    def forward_half(self, image):
        """Training forward: logits at 1/2 resolution (B,K,h/2,w/2) and the features."""
        feats = self.dec(*self.enc(image))
        return self.head(feats), feats

    def forward(self, image):
        low, feats = self.forward_half(image)
        logits = F.interpolate(low, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return logits, feats


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ----------------------------------------------------------------------------- export / files


def export_onnx(model: nn.Module, args: tuple, path: Path, input_names: list[str], output_names: list[str],
                dynamic_axes: dict) -> Path:
    """Export ``model`` (eval mode) to ONNX atomically (temp file + os.replace); opset 17, legacy exporter."""
    model.eval()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path, suffix=".onnx") as tmp:
        with torch.no_grad():
            torch.onnx.export(model, args, str(tmp), input_names=input_names, output_names=output_names,
                              dynamic_axes=dynamic_axes, opset_version=17, dynamo=False, do_constant_folding=True)
        import onnx

        onnx.checker.check_model(onnx.load(str(tmp)))
    return path


def write_json(path: Path, obj) -> None:
    write_json_atomic(path, obj, indent=1)


def save_state(model: nn.Module, path: Path) -> None:
    """Save a torch checkpoint (state dict only; loaded back with weights_only=True)."""
    with atomic_path(path, suffix=".pt") as tmp:
        torch.save(model.state_dict(), tmp)


def load_state(model: nn.Module, path: Path) -> nn.Module:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} not found: run scripts/train_segnet.py first (checkpoints go to {WORK_DIR})")
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model


def command_line(script: str, argv: Sequence[str] | None) -> str:
    """The command a training record quotes, e.g. ``python scripts/train_segnet.py --seed 0``."""
    return f"python scripts/{script} " + " ".join(argv if argv is not None else sys.argv[1:])


def log_training(name: str, script: str, argv: Sequence[str] | None, args: argparse.Namespace,
                 model: nn.Module, fields: dict) -> None:
    """Write the training record of a model into ``<args.out>/training_log.json``.

    The record is ``command``, ``seed``, ``world_seed``, ``params``, then ``fields`` in
    their order (typically starting with :meth:`FitResult.record`), then ``torch``.
    """
    update_log(name, {"command": command_line(script, argv), "seed": args.seed, "world_seed": args.world_seed,
                      "params": n_params(model), **fields, "torch": torch.__version__}, args.out)


def log_written(path: Path, timer: Timer) -> None:
    log.info("wrote %s (%.0f KB) in %.0f s total", path, path.stat().st_size / 1024, timer())


def update_log(name: str, record: dict, out_dir: Path = BUNDLED_DIR) -> None:
    """Merge a training record into <out_dir>/training_log.json (the numbers docs/training.md quotes)."""
    p = Path(out_dir) / "training_log.json"
    data = json.loads(p.read_text()) if p.exists() else {}
    data[name] = record
    write_json(p, data)


class Timer:
    def __init__(self):
        self.t0 = time.time()

    def __call__(self) -> float:
        return time.time() - self.t0


# ----------------------------------------------------------------------------- training loop


@dataclass
class FitResult:
    """What :func:`fit_one_cycle` did.

    Attributes:
        steps: optimiser steps taken; ``total``: steps planned (epochs x steps per epoch).
        stopped_early: the time cap or ``--max-steps`` ended the run before ``total``.
        hist: one tuple per step: the loss, then the values the step function reported.
        seconds: wall time since the script's timer started, when training ended.
        n: training samples; ``epochs``: epochs planned.
    """

    steps: int
    total: int
    stopped_early: bool
    hist: list
    seconds: float
    n: int
    epochs: int

    def mean_last(self, k: int) -> np.ndarray:
        """Per-column mean of the last ``k`` rows of ``hist``."""
        return np.mean(self.hist[-k:], 0)

    def record(self) -> dict:
        """The training-log fields every script records, in their order."""
        return {"train_frames": self.n, "steps": self.steps, "epochs_planned": self.epochs,
                "stopped_early": self.stopped_early}


StepFn = Callable[[torch.Tensor, torch.Generator], tuple[torch.Tensor, Sequence[float]]]


def fit_one_cycle(model: nn.Module, step: StepFn, *, n: int, args: argparse.Namespace, timer: Timer,
                  params: Iterable[torch.Tensor] | None = None, clip_grad_norm: float | None = None,
                  train_mode: Callable[[], object] | None = None,
                  log_epoch: Callable[[int, list, float], None] | None = None) -> FitResult:
    """AdamW (weight decay 1e-4) with a one-cycle schedule over shuffled mini-batches.

    Each epoch draws a permutation of the ``n`` samples from a ``torch.Generator`` seeded
    with ``args.seed``; ``step(idx, g)`` gets each batch's indices and that generator (for
    augmentation) and returns ``(loss, values)``, the values being floats to record next
    to the loss. Training stops after ``args.epochs`` epochs, after ``args.max_steps``
    steps, or once ``args.max_minutes`` of wall time (``timer``) is spent.

    Args:
        model: the net; ``model.train()`` is called at each epoch start unless
            ``train_mode`` is given (e.g. to keep a frozen encoder in eval mode).
        params: the parameters to optimise (default: all of ``model``'s).
        clip_grad_norm: clip the gradient norm of ``model.parameters()`` to this value.
        log_epoch: called after each epoch with (epoch, that epoch's ``hist`` rows, lr).
        args: ``seed``, ``epochs``, ``batch_size``, ``lr``, ``max_minutes``, ``max_steps``.
    """
    params = list(model.parameters()) if params is None else list(params)
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-4)
    g = torch.Generator().manual_seed(args.seed)
    spe = math.ceil(n / args.batch_size)
    total = args.epochs * spe
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=total, pct_start=max(0.1, 2.5 / total))
    steps, stopped_early, hist, first = 0, False, [], 0
    ckpt = getattr(args, "checkpoint", None)
    if ckpt and Path(ckpt).is_file():
        st = torch.load(ckpt, weights_only=True)
        if st["total"] != total:
            raise SystemExit(f"{ckpt}: planned {st['total']} steps, this command plans {total}; "
                             "delete it or change --checkpoint")
        model.load_state_dict(st["model"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        g.set_state(st["g"])
        steps, hist, first = st["steps"], st["hist"], st["epoch"]
        log.info("resumed %s after epoch %d (%d steps)", ckpt, first, steps)
    for epoch in range(first, args.epochs):
        (train_mode or model.train)()
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, args.batch_size):
            loss, values = step(perm[i:i + args.batch_size], g)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if clip_grad_norm is not None:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
            opt.step()
            sched.step()
            steps += 1
            hist.append((loss.item(), *values))
            if timer() > args.max_minutes * 60 or (args.max_steps is not None and steps >= args.max_steps):
                stopped_early = True
                break
        if log_epoch is not None:
            log_epoch(epoch, hist[-spe:], sched.get_last_lr()[0])
        if ckpt and not stopped_early:
            with atomic_path(Path(ckpt)) as tmp:
                torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                            "g": g.get_state(), "steps": steps, "hist": hist, "epoch": epoch + 1,
                            "total": total}, tmp)
        if stopped_early:
            log.info("stopped after %d/%d steps (time cap %.1f min, --max-steps %s)", steps, total, args.max_minutes,
                     args.max_steps)
            break
    return FitResult(steps, total, stopped_early, hist, timer(), n, args.epochs)


@torch.no_grad()
def confusion(pred: torch.Tensor, target: torch.Tensor, k: int) -> torch.Tensor:
    """(k,k) confusion matrix counts (rows = target), void (255) skipped."""
    m = target != 255
    idx = target[m] * k + pred[m]
    return torch.bincount(idx, minlength=k * k).view(k, k)


def miou(conf: torch.Tensor) -> tuple[float, list[float]]:
    conf = conf.double()
    inter = conf.diag()
    union = conf.sum(0) + conf.sum(1) - inter
    present = conf.sum(1) > 0
    iou = torch.where(union > 0, inter / union.clamp(min=1), torch.zeros_like(inter))
    return float(iou[present].mean()), [round(float(v), 4) for v in iou]
