"""Response ids the server makes and can check without reading anything.

An answer's id (``chatcmpl-<id>``, the monitoring record's id, what feedback names) is 32 hex
characters: the issue time (8, unix seconds), 12 random, and 12 of an HMAC-SHA256 over the first
20 under a secret every gateway replica shares. Feedback then refuses an id this server never
issued, or one older than the feedback window, at once (404), instead of scanning days of records
for it; and no client chooses an id (a trace id taken from a caller's `traceparent` would have let
one caller collide with another's answer).

The secret is the setting `TWIN_RESPONSE_ID_KEY`, or one generated on first use into the artifact
store (`monitoring/.response-id-key`, created exclusively, so replicas starting together agree).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time

import fsspec

HEX = frozenset("0123456789abcdef")
KEY_FILE = "monitoring/.response-id-key"
log = logging.getLogger(__name__)


class ResponseIds:
    def __init__(self, key: bytes):
        self.key = key

    @classmethod
    def random(cls) -> ResponseIds:
        """A process-local key (in-process tests; a single replica)."""
        return cls(secrets.token_bytes(32))

    @classmethod
    def from_settings(cls, settings) -> ResponseIds:
        if settings.gateway.response_id_key:
            return cls(settings.gateway.response_id_key.encode())
        return cls(shared_key(f"{settings.resolved_artifact_uri.rstrip('/')}/{KEY_FILE}"))

    def _mac(self, body: str) -> str:
        return hmac.new(self.key, body.encode(), hashlib.sha256).hexdigest()[:12]

    def new(self, now: float | None = None) -> str:
        body = f"{int(now if now is not None else time.time()) & 0xFFFFFFFF:08x}{secrets.token_hex(6)}"
        return body + self._mac(body)

    def issued_at(self, rid: str) -> float | None:
        """When this server issued ``rid``; None when it did not (wrong shape or signature)."""
        if len(rid) != 32 or not set(rid) <= HEX:
            return None
        body, mac = rid[:20], rid[20:]
        if not hmac.compare_digest(self._mac(body), mac):
            return None
        return float(int(body[:8], 16))

    def valid(self, rid: str, max_age_s: float, now: float | None = None) -> bool:
        issued = self.issued_at(rid)
        now = now if now is not None else time.time()
        return issued is not None and now - max_age_s <= issued <= now + 60


def shared_key(uri: str) -> bytes:
    """The key stored at ``uri``, created there (exclusively) when absent."""
    fs, path = fsspec.core.url_to_fs(uri)
    for _ in range(3):
        try:
            with fs.open(path, "rb") as f:
                key = f.read().strip()
            if len(key) >= 32:
                return key
        except FileNotFoundError:
            pass
        fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
        try:
            with fs.open(path, "xb") as f:  # the first replica to get here writes it; the others read it
                f.write(secrets.token_hex(32).encode())
        except FileExistsError:
            time.sleep(0.05)
        except (ValueError, NotImplementedError):  # a store without exclusive create
            with fs.open(path, "wb") as f:
                f.write(secrets.token_hex(32).encode())
    with fs.open(path, "rb") as f:
        return f.read().strip()
