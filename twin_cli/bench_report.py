"""docs/benchmarks.md, written by `make bench`: each part's printed figures replace that part's
section (between ``<!-- bench:PART -->`` markers), stamped with the date, the commit and the machine,
so the page holds the latest run of every part and nothing typed by hand."""

from __future__ import annotations

import contextlib
import io
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "benchmarks.md"
TITLES = {"data": "Data: extraction, indexing, retrieval", "generation": "Generation",
          "archives": "Archives", "structured": "Structured generation", "serving": "Serving",
          "tracing": "Tracing (MLflow)", "peer": "Against llama.cpp",
          "training": "Training", "pii": "PII masking"}


class _Tee(io.TextIOBase):
    def __init__(self, *streams):
        self.streams = streams

    def write(self, text: str) -> int:
        for stream in self.streams:
            stream.write(text)
        return len(text)

    def flush(self) -> None:
        for stream in self.streams:
            stream.flush()


def machine() -> str:
    cpus = len(os.sched_getaffinity(0))
    model = ""
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), "")
    name = model or platform.processor() or platform.machine()
    return f"{cpus} CPU cores ({name}), Python {platform.python_version()}"


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                              timeout=10).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


LOG_RECORD = re.compile(r"^\[\d{4}-\d{2}-\d{2} [^]]*\] \[(WARNING|INFO|DEBUG)\]")  # libraries' log lines


def section(part: str, output: str) -> str:
    output = "\n".join(line for line in output.splitlines() if not LOG_RECORD.match(line))
    stamp = f"Run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} at commit {commit()} on {machine()}."
    return (f"<!-- bench:{part} -->\n## {TITLES.get(part, part)}\n\n`make bench BENCH={part}`. {stamp}\n\n"
            f"```\n{output.strip()}\n```\n<!-- /bench:{part} -->")


def replace(page: str, part: str, new: str) -> str:
    begin, end = f"<!-- bench:{part} -->", f"<!-- /bench:{part} -->"
    if begin in page and end in page:
        head, rest = page.split(begin, 1)
        return head + new + rest.split(end, 1)[1]
    marker = "<!-- bench:end -->"
    return page.replace(marker, new + "\n\n" + marker) if marker in page else page.rstrip() + "\n\n" + new + "\n"


@contextlib.contextmanager
def captured(part: str):
    """Prints go to the terminal and into the part's section; a part that fails leaves its old one."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(_Tee(sys.stdout, buffer)):
        yield
    page = PAGE.read_text() if PAGE.exists() else "# Benchmarks\n\n<!-- bench:end -->\n"
    PAGE.write_text(replace(page, part, section(part, buffer.getvalue())))
