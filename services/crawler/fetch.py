"""HTTP fetching for the crawlers: a wall-clock deadline per page and per crawl, a size cap on
every decoded layer, retries with backoff, robots.txt."""

from __future__ import annotations

import socket
import threading
import time
import urllib.robotparser
from contextvars import ContextVar
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from .decode import ACCEPT_ENCODING, BoundedDecoder, TooLargeBody, UnsupportedEncoding
from .errors import FetchError, InvalidTarget, Stopped
from .guard import AddressGuard, Destination

RETRYABLE_STATUS = {429, 500, 502, 503, 504}
REDIRECT_STATUS = {301, 302, 303, 307, 308}
MAX_REDIRECTS = 5


def pinned(url: str, destination: Destination) -> tuple[str, dict, dict]:
    """The request for ``url`` sent to the checked address: (URL with the IP, headers, extensions).
    The Host header and TLS SNI keep the name, so virtual hosts and certificates work as usual."""
    parts = urlsplit(url)
    ip = f"[{destination.address}]" if ":" in destination.address else destination.address
    netloc = f"{ip}:{parts.port}" if parts.port else ip
    host_header = parts.netloc.rsplit("@", 1)[-1]
    extensions = {"sni_hostname": destination.host} if parts.scheme == "https" else {}
    return parts._replace(netloc=netloc).geturl(), {"Host": host_header}, extensions


@dataclass(frozen=True)
class Response:
    url: str  # after redirects
    status: int
    content_type: str
    body: bytes

    @property
    def text(self) -> str:
        # httpx would guess too, but a cheap explicit decode keeps this dataclass simple.
        charset = "utf-8"
        if "charset=" in self.content_type:
            charset = self.content_type.split("charset=")[-1].split(";")[0].strip() or charset
        try:
            return self.body.decode(charset, errors="replace")
        except LookupError:
            return self.body.decode("utf-8", errors="replace")


class Budget:
    """One crawl's wall-clock deadline and its cancellation (the client went away): checked before
    every fetch, while every page is read and between the entries a parser walks."""

    def __init__(self, deadline_s: float | None = None, stop: threading.Event | None = None):
        self.deadline_s = deadline_s
        self.deadline = time.monotonic() + deadline_s if deadline_s else None
        self.stop = stop

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check(self, target: str) -> None:
        if self.stop is not None and self.stop.is_set():
            raise Stopped(target, "stopped: the client went away")
        left = self.remaining()
        if left is not None and left <= 0:
            raise Stopped(target, f"stopped: the crawl ran past its {self.deadline_s:.0f} s deadline "
                                     "(TWIN_CRAWL_DEADLINE_S)")


class _Watchdog:
    """Ends one request at its deadline, whatever the server does: a server that sends a byte
    every few seconds never trips a read timeout, so at the deadline the connection's socket is
    shut down from this timer thread (a blocked read then returns at once)."""

    def __init__(self, seconds: float):
        self.seconds, self.fired, self._sock = seconds, False, None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True

    def trace(self, event: str, info: dict) -> None:  # httpcore's trace extension
        if event == "connection.connect_tcp.complete":
            stream = info.get("return_value")
            with self._lock:
                self._sock = stream.get_extra_info("socket") if stream is not None else None
                if self.fired:
                    self._shut()

    def _shut(self) -> None:
        try:
            if self._sock is not None:
                self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def _fire(self) -> None:
        with self._lock:
            self.fired = True
            self._shut()

    def __enter__(self) -> _Watchdog:
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()


NO_BUDGET = Budget()
# The running crawl's budget: a context variable, since one Fetcher serves concurrent crawls (each
# on a thread of its own, each thread with a copy of the context).
current_budget: ContextVar[Budget] = ContextVar("current_budget", default=NO_BUDGET)


def check_http_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidTarget(url, "not an http(s) URL (crawl a local path, or give http://... or https://...)")
    return url


class Fetcher:
    """One HTTP client for a crawl, with per-host robots.txt caching."""

    def __init__(self, *, timeout_s: float = 20.0, max_bytes: int = 10 * 1024 * 1024,
                 retries: int = 3, backoff_s: float = 0.5, user_agent: str = "LLMTwinCrawler/0.1",
                 respect_robots: bool = True, guard: AddressGuard | None = None, page_deadline_s: float = 60.0):
        self.max_bytes = max_bytes
        self.timeout_s = timeout_s
        self.page_deadline_s = page_deadline_s
        self.retries = retries
        self.backoff_s = backoff_s
        self.user_agent = user_agent
        self.respect_robots = respect_robots
        self.guard = guard or AddressGuard()
        self._robots: dict[str, urllib.robotparser.RobotFileParser | None] = {}
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,  # each hop is checked by the guard (see _get_once)
            headers={"User-Agent": user_agent, "Accept": "*/*", "Accept-Encoding": ACCEPT_ENCODING},
            # Never pick up a proxy from the environment: the crawler talks to what it is given.
            trust_env=False,
            # A fresh connection per request: the page deadline's watchdog holds that connection's
            # socket (and every request goes to the address its guard check pinned anyway).
            limits=httpx.Limits(max_keepalive_connections=0),
        )

    @classmethod
    def from_settings(cls, settings, *, allow_private: bool = False) -> Fetcher:
        return cls(timeout_s=settings.crawler.http_timeout_s, max_bytes=settings.crawler.http_max_bytes,
                   retries=settings.crawler.http_retries, backoff_s=settings.crawler.http_backoff_s,
                   user_agent=settings.crawler.user_agent, respect_robots=settings.crawler.respect_robots,
                   guard=AddressGuard.from_settings(settings, allow_private=allow_private),
                   page_deadline_s=settings.crawler.page_deadline_s)

    @property
    def budget(self) -> Budget:
        return current_budget.get()

    def checkpoint(self, target: str) -> None:
        """Raise CrawlError once the running crawl is past its deadline or cancelled (parsers call
        it between the entries they walk)."""
        self.budget.check(target)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def allowed(self, url: str) -> bool:
        if not self.respect_robots:
            return True
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        if origin not in self._robots:
            self._robots[origin] = self._load_robots(origin)
        parser = self._robots[origin]
        return True if parser is None else parser.can_fetch(self.user_agent, url)

    def _load_robots(self, origin: str) -> urllib.robotparser.RobotFileParser | None:
        try:
            response = self._get_once(urljoin(origin, "/robots.txt"))
        except (FetchError, httpx.HTTPError):
            return None  # no robots.txt reachable: everything is allowed (RFC 9309 §2.3.1.3)
        if response.status >= 400:
            return None
        parser = urllib.robotparser.RobotFileParser()
        parser.parse(response.text.splitlines())
        return parser

    def get(self, url: str) -> Response:
        """GET a URL with retries; raises FetchError naming the URL and the reason."""
        check_http_url(url)
        self.budget.check(url)
        if not self.allowed(url):
            raise FetchError(url, "disallowed by robots.txt (set TWIN_RESPECT_ROBOTS=false only for sites you own)")
        delay = self.backoff_s
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self._get_once(url)
            except httpx.TransportError as exc:
                if last:
                    raise FetchError(url, f"unreachable: {type(exc).__name__}: {exc or 'no answer'}") from exc
            else:
                if response.status < 400:
                    return response
                if response.status not in RETRYABLE_STATUS or last:
                    raise FetchError(url, f"HTTP {response.status}")
            left = self.budget.remaining()
            if left is not None and left < delay:
                raise FetchError(url, "no time left in the crawl's deadline to retry (TWIN_CRAWL_DEADLINE_S)")
            time.sleep(delay)
            delay *= 2
        raise AssertionError("unreachable")

    def _get_once(self, url: str) -> Response:
        """One GET, following redirects one hop at a time, each hop's address checked and pinned."""
        for _ in range(MAX_REDIRECTS + 1):
            check_http_url(url)
            request_url, headers, extensions = pinned(url, self.guard.check(url))
            response = self._get_pinned(url, request_url, headers, extensions)
            if not isinstance(response, str):
                return response
            url = response
        raise FetchError(url, f"more than {MAX_REDIRECTS} redirects")

    def _get_pinned(self, url: str, request_url: str, headers: dict, extensions: dict) -> Response | str:
        """The response, or the next URL when it redirects. The whole request (connect, headers,
        body) ends by the page deadline or the crawl's, whichever is first."""
        seconds = self.page_deadline_s
        left = self.budget.remaining()
        if left is not None:
            seconds = max(0.01, min(seconds, left))
        with _Watchdog(seconds) as watchdog:
            try:
                return self._read(url, request_url, headers, {**extensions, "trace": watchdog.trace},
                                  min(self.timeout_s, seconds))
            except (httpx.HTTPError, OSError) as exc:
                if watchdog.fired:
                    raise FetchError(url, f"took over {seconds:.0f} s (TWIN_CRAWL_PAGE_DEADLINE_S per page, "
                                          "TWIN_CRAWL_DEADLINE_S per crawl)") from None
                if isinstance(exc, httpx.HTTPError):
                    raise
                raise httpx.TransportError(str(exc)) from exc

    def _read(self, url: str, request_url: str, headers: dict, extensions: dict, timeout_s: float) -> Response | str:
        with self._client.stream("GET", request_url, headers=headers, extensions=extensions,
                                 timeout=httpx.Timeout(timeout_s)) as stream:
            location = stream.headers.get("location")
            if stream.status_code in REDIRECT_STATUS and location:
                return urljoin(url, location)
            declared = stream.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > self.max_bytes:
                raise FetchError(url, f"response of {int(declared)} bytes exceeds the {self.max_bytes}-byte cap "
                                      "(raise TWIN_HTTP_MAX_BYTES to allow it)")
            try:
                decoder = BoundedDecoder(stream.headers.get("content-encoding"), self.max_bytes)
                chunks, raw_size = [], 0
                for raw in stream.iter_raw():
                    raw_size += len(raw)
                    if raw_size > self.max_bytes:
                        raise TooLargeBody(f"it exceeds {self.max_bytes} bytes")
                    chunks.append(decoder.feed(raw))
                chunks.append(decoder.flush())
            except TooLargeBody as exc:
                raise FetchError(url, f"response refused: {exc} (the cap is TWIN_HTTP_MAX_BYTES)") from None
            except (UnsupportedEncoding, ValueError) as exc:
                raise FetchError(url, f"response refused: {exc}") from None
            return Response(url=url, status=stream.status_code,
                            content_type=stream.headers.get("content-type", ""), body=b"".join(chunks))
