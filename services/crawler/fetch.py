"""HTTP fetching for the crawlers: timeouts, a size cap, retries with backoff, robots.txt."""

from __future__ import annotations

import time
import urllib.robotparser
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

import httpx

from .errors import FetchError, InvalidTarget
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


def check_http_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise InvalidTarget(url, "not an http(s) URL (crawl a local path, or give http://... or https://...)")
    return url


class Fetcher:
    """One HTTP client for a crawl, with per-host robots.txt caching."""

    def __init__(self, *, timeout_s: float = 20.0, max_bytes: int = 10 * 1024 * 1024,
                 retries: int = 3, backoff_s: float = 0.5, user_agent: str = "LLMTwinCrawler/0.1",
                 respect_robots: bool = True, guard: AddressGuard | None = None):
        self.max_bytes = max_bytes
        self.retries = retries
        self.backoff_s = backoff_s
        self.user_agent = user_agent
        self.respect_robots = respect_robots
        self.guard = guard or AddressGuard()
        self._robots: dict[str, urllib.robotparser.RobotFileParser | None] = {}
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout_s),
            follow_redirects=False,  # each hop is checked by the guard (see _get_once)
            headers={"User-Agent": user_agent, "Accept": "*/*"},
            # Never pick up a proxy from the environment: the crawler talks to what it is given.
            trust_env=False,
        )

    @classmethod
    def from_settings(cls, settings, *, allow_private: bool = False) -> Fetcher:
        return cls(timeout_s=settings.http_timeout_s, max_bytes=settings.http_max_bytes,
                   retries=settings.http_retries, backoff_s=settings.http_backoff_s,
                   user_agent=settings.user_agent, respect_robots=settings.respect_robots,
                   guard=AddressGuard.from_settings(settings, allow_private=allow_private))

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
        """The response, or the next URL when it redirects."""
        with self._client.stream("GET", request_url, headers=headers, extensions=extensions) as stream:
            location = stream.headers.get("location")
            if stream.status_code in REDIRECT_STATUS and location:
                return urljoin(url, location)
            declared = stream.headers.get("content-length")
            if declared and declared.isdigit() and int(declared) > self.max_bytes:
                raise FetchError(url, f"response of {int(declared)} bytes exceeds the {self.max_bytes}-byte cap "
                                      "(raise TWIN_HTTP_MAX_BYTES to allow it)")
            chunks, size = [], 0
            for chunk in stream.iter_bytes():
                size += len(chunk)
                if size > self.max_bytes:
                    raise FetchError(url, f"response exceeds the {self.max_bytes}-byte cap "
                                          "(raise TWIN_HTTP_MAX_BYTES to allow it)")
                chunks.append(chunk)
            return Response(url=url, status=stream.status_code,
                            content_type=stream.headers.get("content-type", ""), body=b"".join(chunks))
