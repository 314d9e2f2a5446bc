"""The examples in the docstrings of the public core modules run and give what they show."""
import doctest
import importlib

import pytest

#: modules whose public ops must carry examples (attempted > 0)
WITH_EXAMPLES = [
    "posthoc.fusion",
    "posthoc.assign",
    "posthoc.components",
    "posthoc.mask2anomaly",
    "posthoc.offsets",
    "posthoc.meanshift",
    "posthoc.scores",
    "posthoc.validation",
    "posthoc.metrics.pixel",
    "posthoc.metrics.semantic",
    "posthoc.panoptic",
]
#: the other public core modules: any example they hold must pass too
OTHERS = [
    "posthoc.errors",
    "posthoc.types",
    "posthoc.kernels",
    "posthoc.metrics.component",
    "posthoc.metrics.panoptic",
    "posthoc.metrics.evaluate",
]


def _run(name: str) -> doctest.TestResults:
    mod = importlib.import_module(name)
    return doctest.testmod(mod, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE, verbose=False)


@pytest.mark.parametrize("name", WITH_EXAMPLES)
def test_module_examples(name):
    res = _run(name)
    assert res.failed == 0, f"{name}: {res.failed} of {res.attempted} doctest examples failed"
    assert res.attempted > 0, f"{name} has no doctest examples"


@pytest.mark.parametrize("name", OTHERS)
def test_other_modules_examples_pass(name):
    assert _run(name).failed == 0


@pytest.mark.parametrize(
    "op",
    ["fuse", "region_means", "region_class_logits", "soft_assign", "hard_assign", "assign_labels",
     "split_components", "refinement_mask", "refine", "mine_unknown_instances", "offset_resample",
     "offsets_from_proposals", "meanshift_sphere", "SemanticMetrics"],
)
def test_public_op_has_an_example(op):
    import posthoc

    assert ">>> " in (getattr(posthoc, op).__doc__ or ""), f"posthoc.{op} has no example in its docstring"
