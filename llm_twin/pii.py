"""Private data stays private: mask what must not leave the machine before text goes to an
external teacher or judge, and restore it in what comes back (`twin mask-pii` shows what would
leave: stdin -> stdout).

Masked: PEM blocks (private keys, certificates), JSON Web Tokens, API keys and tokens (OpenAI,
GitHub, Slack, Hugging Face, AWS access keys incl. temporary ASIA ones, AWS secret keys and session
tokens, long random strings), e-mail addresses, IBANs (spaced or compact, any case, only when the
mod-97 check holds), card numbers (13-19 digits, only when the Luhn check holds), IPv4 and IPv6
addresses, phone numbers (8 digits or more; dates are not phone numbers). Each distinct value gets
one numbered placeholder, shared by every message of a conversation (pass the same ``mapping``),
so the teacher can still refer to "the same address" consistently.

Why not detect-secrets: it reports findings as fragments of a line (with noisy entropy hits on
ordinary words), not as spans to replace; masking needs exact spans and checksums.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable


def _iban_valid(value: str) -> bool:
    compact = re.sub(r"\s", "", value).upper()
    if not 15 <= len(compact) <= 34:
        return False
    digits = "".join(str(int(c, 36)) for c in compact[4:] + compact[:4])
    return int(digits) % 97 == 1


def _luhn_valid(value: str) -> bool:
    digits = [int(c) for c in value if c.isdigit()]
    if not 13 <= len(digits) <= 19:
        return False
    total = sum(d if i % 2 == 0 else (d * 2 - 9 if d * 2 > 9 else d * 2) for i, d in enumerate(reversed(digits)))
    return total % 10 == 0


def _ipv6_valid(value: str) -> bool:
    try:
        return isinstance(ipaddress.ip_address(value), ipaddress.IPv6Address)
    except ValueError:
        return False


DATE = re.compile(r"^(?:\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{4})$")


def _phone(value: str) -> bool:
    return sum(c.isdigit() for c in value) >= 8 and not DATE.match(value.strip())


# (placeholder kind, pattern, check of a match); the order matters: the most specific first.
# Linear time on any input (tests/unit/test_pii.py checks 10x the text costs ~10x): a pattern with
# an unbounded run starts only where its run starts (a look-behind for the run's class, never a
# bare \b, which fires inside runs like "a.a.a." and made each start rescan the rest: quadratic),
# or is bounded in length (phones).
PATTERNS: list[tuple[str, re.Pattern, Callable[[str], bool] | None]] = [
    # A BEGIN's search for its END stops at the next BEGIN: the scans do not overlap.
    ("PEM", re.compile(r"-----BEGIN [A-Z0-9 ]{1,64}-----(?:(?!-----BEGIN )[\s\S])*?-----END [A-Z0-9 ]{1,64}-----"),
     None),
    ("TOKEN", re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{4,}\.eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}"), None),
    ("KEY", re.compile(r"\b(?:sk-[A-Za-z0-9_-]{16,}|(?:AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[0-9A-Z]{16}"
                       r"|gh[pousr]_[A-Za-z0-9]{20,}|xox[abprs]-[A-Za-z0-9-]{10,}|hf_[A-Za-z0-9]{20,})\b"), None),
    # AWS secret access keys (40 characters) and session tokens (hundreds), base64 with / and +.
    ("SECRET", re.compile(r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]*[0-9])(?=[A-Za-z0-9/+]*[a-z])(?=[A-Za-z0-9/+]*[A-Z])"
                          r"[A-Za-z0-9/+]{40,}={0,2}(?![A-Za-z0-9/+=])"), None),
    ("SECRET", re.compile(r"(?<![A-Za-z0-9_-])(?=[A-Za-z0-9_-]*\d)(?=[A-Za-z0-9_-]*[A-Za-z])[A-Za-z0-9_-]{32,}"
                          r"(?![A-Za-z0-9_-])"), None),
    ("EMAIL", re.compile(r"(?<![\w.+-])[\w.+-]+@[\w-]+(?:\.[\w-]+)+\b"), None),
    ("IBAN", re.compile(r"\b[A-Za-z]{2}\d{2}(?: ?[A-Za-z0-9]{4}){2,7}(?: ?[A-Za-z0-9]{1,3})?\b"), _iban_valid),
    ("CARD", re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])"), _luhn_valid),
    ("IP", re.compile(r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"), None),
    ("IP", re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{0,4}|(?:\d{1,3}\.){3}\d{1,3})(?![\w:])"),
     _ipv6_valid),
    ("PHONE", re.compile(r"(?<![\w-])\+?\d[\d ()./-]{6,28}\d(?![\w-])"), _phone),
]


def mask(text: str, mapping: dict[str, str] | None = None) -> tuple[str, dict[str, str]]:
    """-> (text with placeholders such as <EMAIL_1>, placeholder -> original). Give the mapping of
    earlier messages of the same conversation to keep one placeholder per value across them."""
    mapping = mapping if mapping is not None else {}
    by_value = {(p.strip("<>").rsplit("_", 1)[0], v): p for p, v in mapping.items()}

    for kind, pattern, valid in PATTERNS:
        def replace(match: re.Match, kind=kind, valid=valid) -> str:
            value = match.group(0)
            if valid is not None and not valid(value):
                return value
            key = (kind, value)
            if key not in by_value:
                number = sum(1 for k in by_value if k[0] == kind) + 1
                by_value[key] = f"<{kind}_{number}>"
                mapping[by_value[key]] = value
            return by_value[key]

        text = pattern.sub(replace, text)
    return text, mapping


def unmask(text: str, mapping: dict[str, str]) -> str:
    # Longest placeholders first: <IP_1> must not eat the start of <IP_12>.
    for placeholder in sorted(mapping, key=len, reverse=True):
        text = text.replace(placeholder, mapping[placeholder])
    return text
