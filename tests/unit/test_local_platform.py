"""What `twin serve` hands Ray's processes, and how the serving bench pauses the platform."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from twin_cli.bench_serving import _descendants, _paused
from twin_cli.local_serving import AT_REST, ray_env


def test_twin_serve_slows_serves_housekeeping_unless_the_user_set_it():
    assert ray_env({}) == AT_REST
    assert float(AT_REST["RAY_SERVE_CONTROL_LOOP_INTERVAL_S"]) <= 1  # a deployment still converges quickly
    mine = ray_env({"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.1"})
    assert "RAY_SERVE_CONTROL_LOOP_INTERVAL_S" not in mine  # the user's value stays
    assert mine["RAY_SERVE_METRICS_EXPORT_INTERVAL_MS"] == AT_REST["RAY_SERVE_METRICS_EXPORT_INTERVAL_MS"]


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


PARENT = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
print(child.pid, flush=True)
time.sleep(60)
"""


@pytest.fixture()
def tree():
    """A process with a child of its own (as `twin serve` has Ray's): -> (parent pid, child pid)."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    yield parent.pid, child
    parent.kill()
    parent.wait()
    subprocess.run(["kill", "-9", str(child)], check=False)


def test_the_bench_pauses_the_whole_platform_and_always_resumes_it(tree):
    parent, child = tree
    pids = _descendants(parent)
    assert set(pids) == {parent, child}
    with pytest.raises(RuntimeError), _paused(pids):
        time.sleep(0.2)
        assert _state(parent) == "T" and _state(child) == "T"  # stopped
        raise RuntimeError("a measurement failed")
    time.sleep(0.2)
    assert _state(parent) in "SR" and _state(child) in "SR"  # running again despite the error
