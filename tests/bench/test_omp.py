"""The CLIs default OMP_WAIT_POLICY to PASSIVE before torch loads its OpenMP runtime; a user's value wins."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

_PROBE = (
    "import os, sys, {mod} as m\n"
    "{call}\n"
    "mods = list(sys.modules)\n"
    "print(os.environ.get('OMP_WAIT_POLICY'), 'torch' in mods and mods.index('torch'), "
    "mods.index('posthoc.bench._omp') if 'posthoc.bench._omp' in mods else -1)\n"
)


def _probe(mod: str, call: str = "", env_value: str | None = None) -> list[str]:
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if env_value is not None:
        env["OMP_WAIT_POLICY"] = env_value
    r = subprocess.run([sys.executable, "-c", _PROBE.format(mod=mod, call=call)], env=env, capture_output=True,
                       text=True, timeout=120, check=True)
    return r.stdout.split()


@pytest.mark.parametrize("mod", ["posthoc.bench.fuse_cli", "posthoc.bench.__main__", "posthoc.bench.cli"])
def test_cli_modules_set_passive_before_torch(mod):
    policy, torch_at, omp_at = _probe(mod)
    assert policy == "PASSIVE"
    if torch_at != "False":  # imported: only after the policy was set
        assert -1 < int(omp_at) < int(torch_at)


def test_posthoc_bench_module_imports_no_torch():
    # the policy must be in place when a subcommand first imports torch
    policy, torch_at, omp_at = _probe("posthoc.bench.cli")
    assert (policy, torch_at) == ("PASSIVE", "False") and int(omp_at) > -1


@pytest.mark.parametrize("mod", ["posthoc.bench.fuse_cli", "posthoc.bench.cli"])
def test_user_value_wins(mod):
    assert _probe(mod, env_value="ACTIVE")[0] == "ACTIVE"
