"""The adapter registry: names, unknown-name errors, registration, lazy imports."""
from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from posthoc.adapters import (
    Teacher,
    get_proposals,
    get_teacher,
    list_proposals,
    list_teachers,
    register_teacher,
    registry,
)
from posthoc.errors import PosthocError

TEACHERS = ["dacup", "daformer", "energy", "entropy", "maxlogit", "msp", "obsnet", "onnx", "sml", "torch", "zegformer"]


def test_every_named_teacher_is_registered():
    names = list_teachers()
    assert names == sorted(names)
    assert set(TEACHERS) <= set(names)


@pytest.mark.parametrize("name", TEACHERS)
def test_factories_take_weights_and_device(name):
    registry._load_builtins()
    sig = inspect.signature(registry._TEACHERS[name])
    assert "weights" in sig.parameters and "device" in sig.parameters
    assert sig.parameters["weights"].default is None and sig.parameters["device"].default is None


def test_unknown_teacher_lists_known_names():
    with pytest.raises(registry.UnknownAdapterError) as e:
        get_teacher("no-such-teacher")
    msg = str(e.value)
    assert "no-such-teacher" in msg
    for n in TEACHERS:
        assert n in msg
    assert isinstance(e.value, KeyError) and isinstance(e.value, PosthocError)


def test_unknown_proposal_source_lists_known_names():
    with pytest.raises(registry.UnknownAdapterError) as e:
        get_proposals("no-such-source")
    msg = str(e.value)
    assert "no-such-source" in msg
    for n in list_proposals():
        assert n in msg


def test_register_custom_teacher_and_duplicates(monkeypatch):
    monkeypatch.setattr(registry, "_TEACHERS", dict(registry._TEACHERS))

    @register_teacher("my-teacher")
    class Mine(Teacher):
        def __init__(self, weights=None, device=None, scale=1.0):
            self.scale = scale

        def __call__(self, images):  # pragma: no cover - not called here
            raise NotImplementedError

    t = get_teacher("my-teacher", scale=3.0)
    assert isinstance(t, Mine) and t.scale == 3.0 and Mine.name == "my-teacher"
    assert "my-teacher" in list_teachers()
    register_teacher("my-teacher")(Mine)  # the same factory again is fine
    with pytest.raises(ValueError, match="already registered"):
        register_teacher("my-teacher")(lambda **kw: None)


def test_get_teacher_passes_keywords_and_reports_bad_ones():
    with pytest.raises(TypeError, match="no_such_option"):
        get_teacher("msp", weights=object(), no_such_option=1)


def test_importing_adapters_does_not_import_onnxruntime():
    code = (
        "import sys, posthoc.adapters as a; a.list_teachers(); "
        "import posthoc.adapters.teachers, posthoc.adapters.onnx_runtime; "
        "print('onnxruntime' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_get_factory_returns_the_registered_factory_without_building_it():
    from posthoc.adapters import get_factory, list_proposals, list_teachers
    from posthoc.adapters.registry import UnknownAdapterError

    for name in list_teachers():
        assert callable(get_factory("teacher", name))
    for name in list_proposals():
        assert callable(get_factory("proposals", name))
    with pytest.raises(UnknownAdapterError, match="known teachers: .*obsnet"):
        get_factory("teacher", "nope")
    with pytest.raises(ValueError, match="kind must be 'teacher' or 'proposals'"):
        get_factory("model", "obsnet")


def test_lookup_imports_only_the_named_teachers_module():
    code = (
        "import sys; from posthoc.adapters import get_factory, list_teachers; names = list_teachers(); "
        "get_factory('teacher', 'obsnet'); "
        "print(sorted(m for m in sys.modules if m.startswith('posthoc.adapters.teachers.') or m.endswith('clip_zs')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert eval(out) == ["posthoc.adapters.teachers._common", "posthoc.adapters.teachers.obsnet"]


def test_unknown_keyword_names_the_adapter_and_its_settings():
    with pytest.raises(TypeError, match=r"proposal source 'superpixels': .*bogus.*; it accepts \['method'"):
        get_proposals("superpixels", bogus=1)
