"""posthoc.__all__ (a literal list) names exactly the lazily exported names and submodules, and each resolves."""
import pytest

import posthoc


def test_all_matches_the_lazy_tables():
    assert set(posthoc.__all__) == set(posthoc._LAZY) | set(posthoc._SUBMODULES)
    assert len(posthoc.__all__) == len(set(posthoc.__all__))
    assert posthoc.__all__ == [*sorted(posthoc._LAZY), *sorted(posthoc._SUBMODULES)]


@pytest.mark.parametrize("name", posthoc.__all__)
def test_every_public_name_resolves(name):
    assert getattr(posthoc, name) is not None
