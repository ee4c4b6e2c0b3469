"""API keys: who may call the platform, with one of two scopes.

`chat` may chat, generate, search, embed and list twins; `admin` may also crawl and index. A key
is shown once when created (`twin keys create`); the file keeps only its SHA-256 (keys are 256
random bits, so a plain hash is enough) with its name, scope and creation time. The file is the
setting `TWIN_API_KEYS_FILE` (default `<data_dir>/api-keys.json`; on Kubernetes a file mounted from
a Secret), and a running server rereads it when it changes, so a new or revoked key counts within
seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

Scope = Literal["chat", "admin"]
SCOPES: tuple[Scope, ...] = ("chat", "admin")
PREFIX = "twk_"
RELOAD_EVERY_S = 1.0


class KeyFileError(ValueError):
    """The keys file or a request to change it is wrong; the message says what to do."""


@dataclass(frozen=True)
class Caller:
    name: str
    scope: Scope


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore:
    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._by_hash: dict[str, Caller] = {}
        self._stamp: tuple | None = None
        self._checked = 0.0

    # -- the file ----------------------------------------------------------------------------------
    def _read(self) -> list[dict]:
        try:
            records = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise KeyFileError(f"{self.path} is not a keys file ({exc}); recreate it with `twin keys create`") from None
        if not isinstance(records, list):
            raise KeyFileError(f"{self.path} should hold a JSON list of keys")
        return records

    def _write(self, records: list[dict]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(records, f, indent=1)
        os.replace(tmp, self.path)

    # -- managing keys -----------------------------------------------------------------------------
    def create(self, name: str, scope: str) -> str:
        """A new key (returned once, never stored)."""
        name = name.strip()
        if not name or len(name) > 100:
            raise KeyFileError("name the key (1-100 characters), e.g. the person or service that uses it")
        if scope not in SCOPES:
            raise KeyFileError(f"scope must be one of {', '.join(SCOPES)}, got {scope!r}")
        records = self._read()
        if any(r["name"] == name for r in records):
            raise KeyFileError(f"a key named {name!r} exists; revoke it first or pick another name")
        key = PREFIX + secrets.token_urlsafe(32)
        records.append({"name": name, "scope": scope, "sha256": digest(key),
                        "created": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")})
        self._write(records)
        return key

    def list(self) -> list[dict]:
        return [{k: r[k] for k in ("name", "scope", "created")} for r in self._read()]

    def revoke(self, name: str) -> bool:
        records = self._read()
        kept = [r for r in records if r["name"] != name]
        if len(kept) == len(records):
            return False
        self._write(kept)
        return True

    # -- checking a caller -------------------------------------------------------------------------
    def _refresh(self) -> None:
        now = time.monotonic()
        if now - self._checked < RELOAD_EVERY_S and self._stamp is not None:
            return
        self._checked = now
        try:
            st = self.path.stat()
            stamp = (st.st_mtime_ns, st.st_size, st.st_ino)
        except FileNotFoundError:
            stamp = ()
        if stamp != self._stamp:
            self._by_hash = {r["sha256"]: Caller(r["name"], r["scope"]) for r in self._read()
                             if r.get("scope") in SCOPES and isinstance(r.get("sha256"), str)}
            self._stamp = stamp

    def configured(self) -> bool:
        with self._lock:
            self._refresh()
            return bool(self._by_hash)

    def verify(self, key: str) -> Caller | None:
        with self._lock:
            self._refresh()
            return self._by_hash.get(digest(key)) if key.startswith(PREFIX) else None
