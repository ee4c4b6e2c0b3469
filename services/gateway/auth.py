"""Who may call which operation: API keys with two scopes, or, when no key exists, loopback only.

Transport-free: the HTTP adapter passes the Authorization header and the client address, the gRPC
adapter the `authorization` metadata and the peer. Probes stay open (`/healthz`, grpc.health.v1,
reflection) and are never routed here.
"""

from __future__ import annotations

import ipaddress

from llm_twin.keys import Caller, KeyStore

ADMIN_OPERATIONS = frozenset({"crawl"})  # and index, which only crawl triggers
LOCAL = Caller("local", "admin")


class Unauthenticated(Exception):
    """No key, or one that is unknown or revoked (401 / UNAUTHENTICATED)."""


class PermissionDenied(Exception):
    """A valid key whose scope does not cover the operation (403 / PERMISSION_DENIED)."""


class MisdirectedRequest(PermissionDenied):
    """A keyless server asked under a name that is not loopback (421): a web page's DNS rebinding
    makes a browser's calls come from 127.0.0.1 with the attacker's host name in Host."""


LOOPBACK_NAMES = ("localhost", "localhost.", "ip6-localhost", "ip6-loopback")


def is_loopback_host(host: str | None) -> bool:
    """A Host header (name[:port]) naming this machine by a loopback name or address."""
    if not host:
        return False
    host = host.strip().lower()
    if host.startswith("["):
        name = host[1:].split("]", 1)[0]
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    if name in LOOPBACK_NAMES or name.endswith(".localhost"):
        return True
    return is_loopback(name)


def is_loopback(address: str | None) -> bool:
    """A client address: an IP, or a gRPC peer such as 'ipv4:127.0.0.1:5000' / 'ipv6:[::1]:5000'."""
    if not address:
        return False
    if address.startswith(("ipv4:", "ipv6:")):
        address = address.split(":", 1)[1].rsplit(":", 1)[0].strip("[]")
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return ip.is_loopback


class Authorizer:
    def __init__(self, keys: KeyStore, *, disabled: bool = False, require_keys: bool = False):
        self.keys, self.disabled, self.require_keys = keys, disabled, require_keys

    @classmethod
    def from_settings(cls, settings) -> Authorizer:
        return cls(KeyStore(settings.resolved_api_keys_file), disabled=settings.gateway.insecure_no_auth,
                   require_keys=settings.gateway.require_keys)

    def authorize(self, authorization: str | None, client: str | None, operation: str,
                  host: str | None = None) -> Caller:
        """``host``: the HTTP Host header (None for gRPC, which browsers cannot speak)."""
        if self.disabled:
            return LOCAL
        if not self.keys.configured():
            if self.require_keys:
                raise Unauthenticated("this server answers API keys only and has none yet: create one with `twin keys "
                                      "create NAME --scope chat` into its keys file (on Kubernetes: the Secret named "
                                      "by serving.apiKeysSecret / auth.apiKeysSecret)")
            if is_loopback(client):
                if host is not None and not is_loopback_host(host):
                    raise MisdirectedRequest(f"this server has no API keys and answers loopback names only, not "
                                             f"{host[:100]!r} (create a key with `twin keys create` to serve "
                                             "other names)")
                return LOCAL
            raise Unauthenticated("this server has no API keys and answers loopback clients only: create one with "
                                  "`twin keys create NAME --scope chat` and send it as `Authorization: Bearer KEY`")
        scheme, _, key = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("send an API key as `Authorization: Bearer KEY` (see `twin keys create`)")
        caller = self.keys.verify(key.strip())
        if caller is None:
            raise Unauthenticated("unknown or revoked API key")
        if operation in ADMIN_OPERATIONS and caller.scope != "admin":
            raise PermissionDenied(f"the key {caller.name!r} has scope {caller.scope}; {operation} needs an admin key")
        return caller
