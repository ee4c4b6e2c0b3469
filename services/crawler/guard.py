"""What the crawler may connect to: public addresses only, unless a network is allowed by name.

Every address a crawl would reach (pages, feeds' entries, sitemaps, robots.txt, each redirect hop,
git remotes) is resolved here first and refused when it is loopback, private (RFC 1918), link-local
(169.254/16, fe80::/10; cloud metadata lives there), unique-local (fc00::/7), shared (CGNAT
100.64/10), unspecified, multicast, documentation, benchmarking or reserved: anything the IANA
special-purpose registries do not call globally reachable (`special_addresses.py`), also behind
an address that carries an IPv4 address to a translator (IPv4-mapped, NAT64 64:ff9b::/96, 6to4,
Teredo) or a numeric spelling (2130706433, 0x7f.1: the resolver turns them into the address that
is checked).
The caller connects to the address that was checked, so a second lookup cannot change the answer
(DNS rebinding). `TWIN_CRAWL_ALLOWED_NETWORKS` (CIDRs) allows named private ranges; `twin crawl
--allow-private` allows them all for one run of the CLI.
"""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit

from .errors import InvalidTarget
from .special_addresses import embedded_ipv4, why_not_global

PRIVATE_NETWORKS = ("127.0.0.0/8", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16",
                    "100.64.0.0/10", "::1/128", "fc00::/7", "fe80::/10")
SETTING_HINT = "set TWIN_CRAWL_ALLOWED_NETWORKS (CIDRs, e.g. 10.1.0.0/16) to allow a network you trust"


class RefusedAddress(InvalidTarget):
    """The target resolves to an address the crawler must not reach."""


@dataclass(frozen=True)
class Destination:
    host: str  # as written in the URL (for the Host header, TLS SNI and certificate checks)
    port: int
    address: str  # the checked IP to connect to


class AddressGuard:
    def __init__(self, allowed_networks: Iterable[str] = (), *, allow_private: bool = False):
        try:
            self.allowed = [ipaddress.ip_network(n, strict=False) for n in allowed_networks]
        except ValueError as exc:
            raise ValueError(f"TWIN_CRAWL_ALLOWED_NETWORKS: {exc} (give CIDRs such as 10.1.0.0/16)") from None
        if allow_private:
            self.allowed += [ipaddress.ip_network(n) for n in PRIVATE_NETWORKS]

    @classmethod
    def from_settings(cls, settings, *, allow_private: bool = False) -> AddressGuard:
        return cls(settings.crawler.allowed_networks, allow_private=allow_private)

    def refusal(self, address: str) -> str | None:
        """Why ``address`` must not be reached, or None when it may."""
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        if any(ip in network for network in self.allowed):
            return None
        if isinstance(ip, ipaddress.IPv6Address):
            carried = embedded_ipv4(ip)
            if carried is not None and any(carried[1] in network for network in self.allowed):
                return None
        why = why_not_global(ip)
        return f"{why}" if why else None

    def check(self, url: str) -> Destination:
        """Resolve the URL's host; every address it resolves to must be allowed (no mix of a public
        and a private answer). Raises RefusedAddress naming the address and the setting."""
        parts = urlsplit(url)
        host = parts.hostname
        if not host:
            raise InvalidTarget(url, "no host in the URL")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise InvalidTarget(url, "the port is not a number from 0 to 65535") from None
        try:
            answers = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (socket.gaierror, UnicodeError) as exc:
            raise InvalidTarget(url, f"cannot resolve {host!r}: {exc}") from None
        addresses = list(dict.fromkeys(a[4][0] for a in answers))
        for address in addresses:
            why = self.refusal(address)
            if why:
                raise RefusedAddress(url, f"refused: {host} resolves to {address}, {why}; the crawler only reaches "
                                          f"public addresses ({SETTING_HINT})")
        return Destination(host, port, addresses[0])
