"""Private data stays private: mask what must not leave the machine before text goes to an
external teacher, and restore it in what comes back.

Masked: e-mail addresses, phone numbers, API keys and tokens (common prefixes and long random
strings), IP addresses, IBAN-like account numbers. Each distinct value gets one numbered
placeholder, so the teacher can still refer to "the same address" consistently.
"""

from __future__ import annotations

import re

PATTERNS: list[tuple[str, re.Pattern]] = [
    ("EMAIL", re.compile(r"\b[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b")),
    ("KEY", re.compile(r"\b(?:sk-[A-Za-z0-9_-]{16,}|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{20,}|xox[abprs]-[A-Za-z0-9-]{10,}"
                       r"|hf_[A-Za-z0-9]{20,})\b")),
    ("IBAN", re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){3,7}\b")),
    ("IP", re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b")),
    ("PHONE", re.compile(r"(?<![\w-])\+?\d[\d ()./-]{7,}\d(?![\w-])")),
    ("SECRET", re.compile(r"\b(?=[A-Za-z0-9_-]*\d)(?=[A-Za-z0-9_-]*[A-Za-z])[A-Za-z0-9_-]{32,}\b")),
]


def mask(text: str) -> tuple[str, dict[str, str]]:
    """-> (text with placeholders such as <EMAIL_1>, placeholder -> original)."""
    mapping: dict[str, str] = {}
    seen: dict[tuple[str, str], str] = {}

    for kind, pattern in PATTERNS:
        def replace(match: re.Match, kind=kind) -> str:
            value = match.group(0)
            if kind == "PHONE" and sum(c.isdigit() for c in value) < 9:
                return value  # years, versions, short numbers are not phone numbers
            key = (kind, value)
            if key not in seen:
                seen[key] = f"<{kind}_{sum(1 for k in seen if k[0] == kind) + 1}>"
                mapping[seen[key]] = value
            return seen[key]

        text = pattern.sub(replace, text)
    return text, mapping


def unmask(text: str, mapping: dict[str, str]) -> str:
    for placeholder, value in mapping.items():
        text = text.replace(placeholder, value)
    return text
