"""Every name the single-module ``posthoc.adapters.teachers`` exposed is still importable from it."""
from __future__ import annotations

import subprocess
import sys

import pytest

from posthoc.adapters import _image, base, checkpoints, registry
from posthoc.adapters import teachers as T

# the old module's __all__
OLD_ALL = [
    "CITYSCAPES_CLASSES", "MMSEG_MEAN", "MMSEG_STD", "CalibrationError", "DAFormerTeacher", "DaCUPTeacher",
    "NotFittedError", "ObsNetTeacher", "OnnxTeacher", "SMLTeacher", "ScoreTeacher", "SigmoidCalibration",
    "TorchTeacher", "UnsafeCheckpointError", "ZegFormerTeacher", "fit_sigmoid_calibration", "load_calibration",
    "load_state_dict", "raw_score",
]  # fmt: skip


@pytest.mark.parametrize("name", OLD_ALL)
def test_old_public_names_are_reexported(name):
    assert name in T.__all__
    assert getattr(T, name) is not None


def test_old_incidental_imports_still_resolve_to_the_same_objects():
    # the old module imported these and tests/users reached them as teachers.<name>
    for name in ("IMAGENET_MEAN", "IMAGENET_STD", "check_mean_std", "normalize", "parse_size", "resize",
                 "resize_to", "to_float_batch"):
        assert getattr(T, name) is getattr(_image, name)
    assert T.Teacher is base.Teacher and T.register_teacher is registry.register_teacher
    assert T.load_state_dict is checkpoints.load_state_dict
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        T.nope  # noqa: B018


def test_star_import_gives_the_old_all():
    code = "from posthoc.adapters.teachers import *; print(sorted(k for k in dir() if not k.startswith('_')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert set(OLD_ALL) <= set(eval(out.stdout))
