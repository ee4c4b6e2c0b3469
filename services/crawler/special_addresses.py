"""Which addresses are globally reachable: the IANA special-purpose address registries, as data.

Python's `ipaddress.is_global` follows an older copy of these registries (3.11 calls 64:ff9b::/96,
2002::/16 and 192.0.0.0/24's neighbours global or not inconsistently), and an address that embeds
an IPv4 address (NAT64, 6to4, Teredo, IPv4-compatible) reaches that IPv4 address through a
translator: it is as reachable as the address it embeds. So the guard asks this module.

Source: IANA IPv4 Special-Purpose Address Registry and IPv6 Special-Purpose Address Registry
(https://www.iana.org/assignments/iana-ipv4-special-registry, .../iana-ipv6-special-registry),
the "Globally Reachable" column; "N/A" (6to4, Teredo, deprecated relays) counts as not reachable
except where the embedded address decides. Rows: (block, name, RFC, globally reachable). The most
specific block that holds an address decides. Addresses in no row: IPv4 is global unless
multicast; IPv6 is global only inside 2000::/3 (global unicast; the rest is unallocated or
reserved by the IETF).
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

IPV4_SPECIAL = [
    ("0.0.0.0/8", "This network", "RFC 791", False),
    ("0.0.0.0/32", "This host on this network", "RFC 1122", False),
    ("10.0.0.0/8", "Private-Use", "RFC 1918", False),
    ("100.64.0.0/10", "Shared Address Space", "RFC 6598", False),
    ("127.0.0.0/8", "Loopback", "RFC 1122", False),
    ("169.254.0.0/16", "Link Local", "RFC 3927", False),
    ("172.16.0.0/12", "Private-Use", "RFC 1918", False),
    ("192.0.0.0/24", "IETF Protocol Assignments", "RFC 6890", False),
    ("192.0.0.0/29", "IPv4 Service Continuity Prefix", "RFC 7335", False),
    ("192.0.0.8/32", "IPv4 dummy address", "RFC 7600", False),
    ("192.0.0.9/32", "Port Control Protocol Anycast", "RFC 7723", True),
    ("192.0.0.10/32", "Traversal Using Relays around NAT Anycast", "RFC 8155", True),
    ("192.0.0.170/32", "NAT64/DNS64 Discovery", "RFC 8880", False),
    ("192.0.0.171/32", "NAT64/DNS64 Discovery", "RFC 8880", False),
    ("192.0.2.0/24", "Documentation (TEST-NET-1)", "RFC 5737", False),
    ("192.31.196.0/24", "AS112-v4", "RFC 7535", True),
    ("192.52.193.0/24", "AMT", "RFC 7450", True),
    ("192.88.99.0/24", "Deprecated (6to4 Relay Anycast)", "RFC 7526", False),
    ("192.168.0.0/16", "Private-Use", "RFC 1918", False),
    ("192.175.48.0/24", "Direct Delegation AS112 Service", "RFC 7534", True),
    ("198.18.0.0/15", "Benchmarking", "RFC 2544", False),
    ("198.51.100.0/24", "Documentation (TEST-NET-2)", "RFC 5737", False),
    ("203.0.113.0/24", "Documentation (TEST-NET-3)", "RFC 5737", False),
    ("240.0.0.0/4", "Reserved", "RFC 1112", False),
    ("255.255.255.255/32", "Limited Broadcast", "RFC 8190", False),
    ("224.0.0.0/4", "Multicast (IPv4 Multicast Address Space registry)", "RFC 5771", False),
]

IPV6_SPECIAL = [
    ("::1/128", "Loopback Address", "RFC 4291", False),
    ("::/128", "Unspecified Address", "RFC 4291", False),
    ("::ffff:0:0/96", "IPv4-mapped Address", "RFC 4291", False),  # decided by the embedded IPv4
    ("64:ff9b::/96", "IPv4-IPv6 Translation", "RFC 6052", True),  # decided by the embedded IPv4
    ("64:ff9b:1::/48", "IPv4-IPv6 Translation (local use)", "RFC 8215", False),
    ("100::/64", "Discard-Only Address Block", "RFC 6666", False),
    ("100:0:0:1::/64", "Dummy IPv6 Prefix", "RFC 9780", False),
    ("2001::/23", "IETF Protocol Assignments", "RFC 2928", False),
    ("2001::/32", "TEREDO", "RFC 4380", False),
    ("2001:1::1/128", "Port Control Protocol Anycast", "RFC 7723", True),
    ("2001:1::2/128", "Traversal Using Relays around NAT Anycast", "RFC 8155", True),
    ("2001:1::3/128", "DNS-SD Service Registration Protocol Anycast", "RFC 9665", True),
    ("2001:2::/48", "Benchmarking", "RFC 5180", False),
    ("2001:3::/32", "AMT", "RFC 7450", True),
    ("2001:4:112::/48", "AS112-v6", "RFC 7535", True),
    ("2001:10::/28", "Deprecated (previously ORCHID)", "RFC 4843", False),
    ("2001:20::/28", "ORCHIDv2", "RFC 7343", True),
    ("2001:30::/28", "Drone Remote ID Protocol Entity Tags (DETs) Prefix", "RFC 9374", True),
    ("2001:db8::/32", "Documentation", "RFC 3849", False),
    ("2002::/16", "6to4", "RFC 3056", False),  # decided by the embedded IPv4
    ("2620:4f:8000::/48", "Direct Delegation AS112 Service", "RFC 7534", True),
    ("3fff::/20", "Documentation", "RFC 9637", False),
    ("5f00::/16", "Segment Routing (SRv6) SIDs", "RFC 9602", False),
    ("fc00::/7", "Unique-Local", "RFC 4193", False),
    ("fe80::/10", "Link-Local Unicast", "RFC 4291", False),
    ("ff00::/8", "Multicast (IPv6 Multicast Address Space registry)", "RFC 4291", False),
]
GLOBAL_UNICAST_V6 = ipaddress.ip_network("2000::/3")


@lru_cache(maxsize=2)
def _table(version: int) -> list[tuple[ipaddress._BaseNetwork, str, str, bool]]:
    rows = IPV4_SPECIAL if version == 4 else IPV6_SPECIAL
    # Most specific first: the first block that holds an address decides.
    return sorted(((ipaddress.ip_network(b), n, r, g) for b, n, r, g in rows), key=lambda row: -row[0].prefixlen)


def special_block(ip: ipaddress._BaseAddress) -> tuple[str, str, bool] | None:
    """(name, RFC, globally reachable) of the most specific registry block holding ``ip``."""
    for network, name, rfc, reachable in _table(ip.version):
        if ip in network:
            return name, rfc, reachable
    return None


def embedded_ipv4(ip: ipaddress.IPv6Address) -> tuple[str, ipaddress.IPv4Address] | None:
    """The IPv4 address an IPv6 address carries to a translator or tunnel, with how."""
    if ip.ipv4_mapped:
        return "IPv4-mapped", ip.ipv4_mapped
    if ip.sixtofour:
        return "6to4", ip.sixtofour
    if ip.teredo:
        return "Teredo", ip.teredo[1]  # the client's address (the server's is checked below too)
    packed = ip.packed
    if ip in ipaddress.ip_network("64:ff9b::/96"):
        return "NAT64", ipaddress.IPv4Address(packed[12:])
    if packed[:12] == bytes(12) and int(ip) > 1:  # IPv4-compatible ::a.b.c.d (deprecated, RFC 4291)
        return "IPv4-compatible", ipaddress.IPv4Address(packed[12:])
    return None


def why_not_global(ip: ipaddress._BaseAddress) -> str | None:
    """Why ``ip`` is not a globally reachable address, or None when it is."""
    if isinstance(ip, ipaddress.IPv6Address):
        carried = embedded_ipv4(ip)
        if carried is not None:
            how, v4 = carried
            inner = why_not_global(v4)
            if inner:
                return f"{how} for {v4}, {inner}"
            if how == "Teredo" and why_not_global(ip.teredo[0]):
                return f"Teredo through {ip.teredo[0]}, {why_not_global(ip.teredo[0])}"
            if how in ("NAT64", "IPv4-mapped"):  # they reach a public IPv4 address: as global as that
                return None
            return f"a {how} tunnel address (tunnels are not reached)"
    block = special_block(ip)
    if block is not None:
        name, rfc, reachable = block
        if reachable:
            return None
        kind = name.removesuffix(" Address").removesuffix(" address")
        kind = kind if kind[:2].isupper() or kind.startswith(("IPv", "TEREDO")) else kind.lower()
        article = "an" if kind[0] in "aeiouAEIOU" or kind.startswith("IPv") else "a"
        return f"{article} {kind} address ({rfc}; not globally reachable)"
    if isinstance(ip, ipaddress.IPv6Address) and ip not in GLOBAL_UNICAST_V6:
        return "outside IPv6 global unicast space (2000::/3), unallocated or reserved"
    return None
