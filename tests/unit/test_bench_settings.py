"""The benches run with the HASHATLAS_* settings they are given: importing them must not clear
the environment the way the test session's conftest.py does (a bench told
HASHATLAS_ALLOCATOR=system once measured jemalloc without saying so)."""

from __future__ import annotations

import os
import pkgutil
import subprocess
import sys

from tests.conftest import PROJECT_ROOT

BENCHES = sorted(module.name for module in pkgutil.iter_modules([str(PROJECT_ROOT / "bench")]))


def test_every_bench_module_is_found() -> None:
    assert {"run_all", "throughput", "soak", "common"} <= set(BENCHES)


def test_importing_every_bench_keeps_the_users_settings() -> None:
    imports = "; ".join(f"import bench.{name}" for name in BENCHES)
    code = (f"{imports}; from bench.common import run_settings; "
            "print(run_settings('probe', 1, 1).compactor_allocator)")
    env = {**os.environ, "HASHATLAS_COMPACTOR_ALLOCATOR": "jemalloc"}
    result = subprocess.run([sys.executable, "-c", code], cwd=PROJECT_ROOT, env=env,
                            capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "jemalloc"
