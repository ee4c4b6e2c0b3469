"""PII masking on tricky cases (tests/data/pii_cases.jsonl): what must be masked is, what must
stay (dates, times, versions, numbers that fail a checksum) stays, and unmask restores the text."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from llm_twin import pii

CASES = [json.loads(line) for line in (Path(__file__).parents[1] / "data" / "pii_cases.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("case", CASES, ids=[c["text"][:40] for c in CASES])
def test_tricky_cases(case):
    masked, mapping = pii.mask(case["text"])
    for secret in case["masked"]:
        assert secret not in masked, (secret, masked)
    for kept in case["kept"]:
        assert kept in masked, (kept, masked)
    for kind in case.get("not_kinds", []):
        assert f"<{kind}_" not in masked, masked  # a number that fails the checksum is no card
    assert pii.unmask(masked, mapping) == case["text"]


def test_one_placeholder_map_per_conversation():
    first, mapping = pii.mask("mail ada@x.example or bob@x.example")
    second, mapping = pii.mask("as I said, ada@x.example; and carol@x.example", mapping)
    assert first == "mail <EMAIL_1> or <EMAIL_2>"
    assert second == "as I said, <EMAIL_1>; and <EMAIL_3>"
    assert pii.unmask("<EMAIL_3> and <EMAIL_1>", mapping) == "carol@x.example and ada@x.example"


def test_unmask_does_not_confuse_placeholder_prefixes():
    text = " ".join(f"10.0.0.{i}" for i in range(1, 13))
    masked, mapping = pii.mask(text)
    assert "<IP_12>" in masked and pii.unmask(masked, mapping) == text


def test_twin_mask_pii_shows_what_would_leave_the_machine():
    done = subprocess.run([sys.executable, "-m", "twin_cli", "mask-pii"], input="write ada@x.example, card "
                          "4111 1111 1111 1111\n", capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "write <EMAIL_1>, card <CARD_1>\n"


PATHOLOGICAL = ["a.", "a-", "1.", "1 ", "eyJ-", "-----BEGIN A-----", "a@", "aB/", "a:", "+1(", "sk-", "a.a@",
                "-1", "x@y.", "1-1 ", "eyJa.", "AKIA", "a_", "ab12-", "::1 ", "-----BEGIN A-----x-----END"]


@pytest.mark.parametrize("unit", PATHOLOGICAL)
def test_masking_is_linear_in_the_input(unit):
    """10x the text costs about 10x the time (a backtracking pattern made it ~100x): measured as the
    best of three at 4,000 and 40,000 characters, allowing noise up to 30x."""
    import time

    def best(n: int) -> float:
        text = (unit * (n // len(unit) + 1))[:n]
        times = []
        for _ in range(3):
            started = time.perf_counter()
            pii.mask(text)
            times.append(time.perf_counter() - started)
        return min(times)

    small, large = best(4_000), best(40_000)
    assert large < 30 * max(small, 1e-4), f"{unit!r}: {small * 1000:.1f} ms -> {large * 1000:.1f} ms"
