"""fit_one_cycle's per-epoch checkpoint: a run stopped early and resumed equals an uninterrupted run."""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


@pytest.fixture(scope="module")
def C():
    sys.path.insert(0, str(SCRIPTS))
    try:
        yield importlib.import_module("_train_common")
    finally:
        sys.path.remove(str(SCRIPTS))


def _run(C, ckpt, max_steps=None, epochs=3):
    torch.manual_seed(0)
    m = nn.Linear(3, 1)
    x, y = torch.randn(20, 3), torch.randn(20, 1)
    a = argparse.Namespace(seed=0, epochs=epochs, batch_size=4, lr=1e-2, max_minutes=10, max_steps=max_steps,
                           checkpoint=ckpt)
    f = C.fit_one_cycle(m, lambda idx, g: (((m(x[idx]) - y[idx]) ** 2).mean(), ()), n=20, args=a, timer=C.Timer())
    return f, m


def test_resume_equals_uninterrupted(C, tmp_path):
    full, m0 = _run(C, None)
    ck = str(tmp_path / "c.pt")
    part, _ = _run(C, ck, max_steps=8)  # stops inside epoch 2: the checkpoint holds epoch 1 (5 steps)
    assert part.steps == 8 and (tmp_path / "c.pt").is_file()
    again, m2 = _run(C, ck)
    assert again.steps == full.steps == 15 and not again.stopped_early
    assert torch.equal(m0.weight, m2.weight)
    assert [h[0] for h in again.hist] == pytest.approx([h[0] for h in full.hist], abs=1e-7)
    with pytest.raises(SystemExit, match="planned 15 steps"):
        _run(C, ck, epochs=4)
