"""Fair per key: each API key may hold a bounded number of requests in flight and start requests
at a bounded rate, so one key flooding the platform cannot take the generation slots and the
queue from everyone else. Past either limit the answer is 429 / RESOURCE_EXHAUSTED with a
Retry-After, at once and before any work is done.

The limits are per gateway replica (each keeps its own counts: with N replicas a key may hold N
times as much), transport-free, and keyed by the key's name. Loopback callers of a server without
keys (the machine's owner) are not limited.
"""

from __future__ import annotations

import asyncio
import math
import threading
import time
import weakref
from dataclasses import dataclass


class RateLimited(Exception):
    """A key over its concurrency or rate limit (429 / RESOURCE_EXHAUSTED); ``retry_after`` in s."""

    def __init__(self, message: str, retry_after: float = 1.0):
        super().__init__(message)
        self.retry_after = retry_after

    def __reduce__(self):
        return (self.__class__, (str(self), self.retry_after))


@dataclass
class _Bucket:
    tokens: float
    updated: float
    in_flight: int = 0


class KeyLimiter:
    def __init__(self, max_concurrent: int = 16, requests_per_minute: int = 600, burst: int | None = None):
        self.max_concurrent = max_concurrent  # 0: no limit
        self.rate = requests_per_minute / 60.0  # tokens a second; 0: no limit
        self.burst = float(burst if burst is not None else max(1, min(requests_per_minute, max(max_concurrent, 10))))
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.RLock()
        self._held: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # task -> key it holds

    @classmethod
    def from_settings(cls, settings) -> KeyLimiter:
        return cls(settings.gateway.key_max_concurrent, settings.gateway.key_requests_per_minute)

    def _bucket(self, key: str, now: float) -> _Bucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self.burst, now)
            if len(self._buckets) > 100_000:  # idle keys' buckets are refilled anyway: drop the oldest
                for old in [k for k, b in self._buckets.items() if b.in_flight == 0][:1000]:
                    del self._buckets[old]
        elif self.rate:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now
        return bucket

    def acquire(self, key: str) -> None:
        """Count one request of ``key`` in; raises RateLimited (nothing counted) past a limit."""
        with self._lock:
            bucket = self._bucket(key, time.monotonic())
            if self.max_concurrent and bucket.in_flight >= self.max_concurrent:
                raise RateLimited(f"the key {key!r} already has {bucket.in_flight} requests in flight, its limit "
                                  "(TWIN_KEY_MAX_CONCURRENT); retry when one has finished", 1.0)
            if self.rate:
                if bucket.tokens < 1:
                    wait = math.ceil((1 - bucket.tokens) / self.rate)
                    raise RateLimited(f"the key {key!r} is over its rate of {self.rate * 60:.0f} requests a minute "
                                      f"(TWIN_KEY_REQUESTS_PER_MINUTE); retry in {wait} s", float(wait))
                bucket.tokens -= 1
            bucket.in_flight += 1

    def release(self, key: str) -> None:
        with self._lock:
            bucket = self._buckets.get(key)
            if bucket is not None and bucket.in_flight > 0:
                bucket.in_flight -= 1

    def in_flight(self, key: str) -> int:
        with self._lock:
            bucket = self._buckets.get(key)
            return bucket.in_flight if bucket else 0

    def hold_for_task(self, key: str) -> None:
        """Acquire for the current asyncio task and release when it ends: a request's task (Serve
        runs each HTTP and gRPC request in one) ends after the last byte of its response, also for
        streams, however it ends. Outside a task there is nothing to hold it: only the rate counts."""
        try:
            task = asyncio.current_task()
        except RuntimeError:
            task = None
        if task is None:
            with self._lock:  # the rate still applies
                self.acquire(key)
                self._buckets[key].in_flight -= 1
            return
        if self._held.get(task) == key:
            return  # one request authorizes once per task
        self.acquire(key)
        self._held[task] = key
        task.add_done_callback(lambda _task: self.release(key))
