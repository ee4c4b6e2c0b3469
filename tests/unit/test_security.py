"""The pieces that decide who may call and what the crawler may reach, without a server:
API keys, the authorization policy, and the address guard against each refused address form."""

from __future__ import annotations

import socket
import time

import pytest

from llm_twin.keys import KeyFileError, KeyStore
from services.crawler.guard import AddressGuard, RefusedAddress
from services.gateway.auth import Authorizer, PermissionDenied, Unauthenticated, is_loopback


# -- keys ------------------------------------------------------------------------------------------------
def test_a_key_is_shown_once_and_only_its_hash_is_kept(tmp_path):
    store = KeyStore(tmp_path / "keys.json")
    key = store.create("ada", "chat")
    text = (tmp_path / "keys.json").read_text()
    assert key.startswith("twk_") and len(key) > 40 and key not in text
    assert (tmp_path / "keys.json").stat().st_mode & 0o777 == 0o600
    assert store.verify(key).name == "ada" and store.verify(key).scope == "chat"
    assert store.verify(key + "x") is None and store.verify("") is None
    assert [k["name"] for k in store.list()] == ["ada"] and "sha256" not in store.list()[0]


def test_keys_are_validated(tmp_path):
    store = KeyStore(tmp_path / "keys.json")
    store.create("ada", "admin")
    with pytest.raises(KeyFileError, match="exists"):
        store.create("ada", "chat")
    with pytest.raises(KeyFileError, match="scope must be one of"):
        store.create("bob", "root")
    with pytest.raises(KeyFileError, match="name the key"):
        store.create("  ", "chat")


def test_a_running_server_sees_new_and_revoked_keys_within_seconds(tmp_path):
    path = tmp_path / "keys.json"
    server, admin = KeyStore(path), KeyStore(path)  # two processes: the server and `twin keys`
    assert not server.configured()
    key = admin.create("ada", "chat")
    deadline = time.monotonic() + 3
    while server.verify(key) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.verify(key) is not None
    assert admin.revoke("ada") and not admin.revoke("ada")
    deadline = time.monotonic() + 3
    while server.verify(key) is not None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert server.verify(key) is None


def test_a_broken_keys_file_is_an_error_that_names_the_fix(tmp_path):
    (tmp_path / "keys.json").write_text("{not json")
    with pytest.raises(KeyFileError, match="twin keys create"):
        KeyStore(tmp_path / "keys.json").list()


# -- the policy ------------------------------------------------------------------------------------------
@pytest.fixture
def keys(tmp_path):
    store = KeyStore(tmp_path / "keys.json")
    return store, store.create("chatter", "chat"), store.create("root", "admin")


@pytest.mark.parametrize("client, loopback", [
    ("127.0.0.1", True), ("::1", True), ("ipv4:127.0.0.1:51000", True), ("ipv6:[::1]:51000", True),
    ("::ffff:127.0.0.1", True), ("ipv4:10.0.0.5:1", False), ("192.168.1.2", False), ("", False), (None, False),
    ("unix:/tmp/x", False), ("ipv6:[fe80::1%eth0]:5", False),
])
def test_loopback_clients(client, loopback):
    assert is_loopback(client) is loopback


def test_without_keys_only_loopback_clients_get_in(tmp_path):
    auth = Authorizer(KeyStore(tmp_path / "none.json"))
    assert auth.authorize(None, "127.0.0.1", "crawl").scope == "admin"
    with pytest.raises(Unauthenticated, match="loopback clients only"):
        auth.authorize(None, "ipv4:10.1.2.3:5000", "chat")
    assert Authorizer(KeyStore(tmp_path / "none.json"), disabled=True).authorize(None, "10.1.2.3", "crawl")


def test_with_keys_every_caller_needs_one_and_scopes_hold(keys):
    store, chat_key, admin_key = keys
    auth = Authorizer(store)
    with pytest.raises(Unauthenticated, match="Bearer"):
        auth.authorize(None, "127.0.0.1", "chat")  # loopback is no exception once keys exist
    for header in ("Bearer twk_wrong", f"Basic {chat_key}", "Bearer", f"Bearer  {chat_key}x"):
        with pytest.raises(Unauthenticated):
            auth.authorize(header, "127.0.0.1", "chat")
    assert auth.authorize(f"Bearer {chat_key}", "10.0.0.1", "chat").name == "chatter"
    assert auth.authorize(f"bearer {chat_key}", "10.0.0.1", "search").name == "chatter"
    with pytest.raises(PermissionDenied, match="admin"):
        auth.authorize(f"Bearer {chat_key}", "10.0.0.1", "crawl")
    assert auth.authorize(f"Bearer {admin_key}", "10.0.0.1", "crawl").name == "root"


# -- the crawl guard -------------------------------------------------------------------------------------
@pytest.mark.parametrize("url", [
    "http://127.0.0.1:8000/", "http://localhost/", "http://[::1]/", "http://2130706433/", "http://0x7f.1/",
    "http://0177.0.0.1/", "http://127.1/", "http://169.254.169.254/latest/meta-data/", "http://10.0.0.8/",
    "http://172.16.5.4/", "http://192.168.0.1/", "http://100.64.1.1/", "http://0.0.0.0/", "http://[::]/",
    "http://[::ffff:127.0.0.1]/", "http://[::ffff:a9fe:a9fe]/", "http://[fe80::1]/", "http://[fd00::1]/",
    "http://224.0.0.1/", "http://240.0.0.1/", "http://255.255.255.255/",
])
def test_non_public_addresses_are_refused_naming_the_address_and_the_setting(url):
    with pytest.raises(RefusedAddress) as refused:
        AddressGuard().check(url)
    assert "refused" in refused.value.reason and "TWIN_CRAWL_ALLOWED_NETWORKS" in refused.value.reason


def test_a_name_that_resolves_to_loopback_is_refused(monkeypatch):
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, port, **kw: [
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.215.14", port)),
        (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", port))])
    with pytest.raises(RefusedAddress, match="resolves to 127.0.0.1, a loopback address"):
        AddressGuard().check("https://rebind.example/")


def test_public_addresses_pass_and_allowed_networks_open_named_ranges():
    assert AddressGuard().check("http://93.184.215.14:8080/x").address == "93.184.215.14"
    assert AddressGuard(["10.1.0.0/16"]).check("http://10.1.2.3/").address == "10.1.2.3"
    with pytest.raises(RefusedAddress):
        AddressGuard(["10.1.0.0/16"]).check("http://10.2.0.1/")
    assert AddressGuard(allow_private=True).check("http://127.0.0.1:9/").port == 9
    with pytest.raises(ValueError, match="TWIN_CRAWL_ALLOWED_NETWORKS"):
        AddressGuard(["not-a-network"])


@pytest.mark.parametrize(("variable", "value", "field"), [
    ("TWIN_GENERATION_QUANTIZATION", "int4", "generation_quantization"),
    ("TWIN_GENERATION_LEAN", "sometimes", "generation_lean"),
    ("TWIN_PREFILL_CHUNK", "-1", "prefill_chunk"),
    ("TWIN_PREFILL_CHUNK", "many", "prefill_chunk"),
    ("TWIN_PREFIX_CACHE_TOKENS", "-64", "prefix_cache_tokens"),
    ("TWIN_STREAM_INTERVAL_MS", "-5", "stream_interval_ms"),
    ("TWIN_STREAM_INTERVAL_MS", "5000", "stream_interval_ms"),
    ("TWIN_INT8_KERNEL", "fast", "int8_kernel"),
])
def test_a_bad_generation_setting_is_refused_naming_it(monkeypatch, variable, value, field):
    import pydantic

    from llm_twin.config import FLAT, Settings

    monkeypatch.setenv(variable, value)
    with pytest.raises(pydantic.ValidationError, match=r"\.".join(FLAT[field])):  # its place in the sections
        Settings()


# -- keyless means loopback, by address and by name -------------------------------------------------------
@pytest.mark.parametrize("host", ["localhost:8000", "127.0.0.1:8000", "[::1]:8000", "LOCALHOST", "app.localhost:8000",
                                  "127.0.0.2"])
def test_keyless_mode_answers_loopback_host_names(tmp_path, host):
    authorizer = Authorizer(KeyStore(tmp_path / "none.json"))
    assert authorizer.authorize(None, "127.0.0.1", "chat", host).name == "local"


@pytest.mark.parametrize("host", ["evil.example:8000", "attacker.test", "127.0.0.1.nip.io", "localhost.evil.com",
                                  "10.0.0.5:8000", "[fe80::1]", ""])
def test_keyless_mode_refuses_other_host_names_from_loopback_dns_rebinding(tmp_path, host):
    from services.gateway.auth import MisdirectedRequest
    from services.gateway.status import status_for

    authorizer = Authorizer(KeyStore(tmp_path / "none.json"))
    with pytest.raises(MisdirectedRequest, match="loopback names only") as refused:
        authorizer.authorize(None, "127.0.0.1", "chat", host)
    assert status_for(refused.value)[1] == 421
    assert authorizer.authorize(None, "127.0.0.1", "chat", None).name == "local"  # gRPC: no Host to check


def test_with_keys_the_host_name_does_not_matter(tmp_path):
    store = KeyStore(tmp_path / "keys.json")
    key = store.create("ada", "chat")
    assert Authorizer(store).authorize(f"Bearer {key}", "10.0.0.9", "chat", "twin.example.com").name == "ada"


# -- fair per key -------------------------------------------------------------------------------------------
def test_a_key_over_its_concurrency_is_refused_and_another_key_is_not():
    from services.gateway.fairness import KeyLimiter, RateLimited
    from services.gateway.status import retry_after, status_for

    limiter = KeyLimiter(max_concurrent=2, requests_per_minute=0)
    limiter.acquire("flood")
    limiter.acquire("flood")
    with pytest.raises(RateLimited, match="TWIN_KEY_MAX_CONCURRENT") as refused:
        limiter.acquire("flood")
    assert status_for(refused.value)[:2][1] == 429 and retry_after(refused.value) >= 1
    limiter.acquire("other")  # a second key keeps its share
    limiter.release("flood")
    limiter.acquire("flood")
    assert limiter.in_flight("flood") == 2 and limiter.in_flight("other") == 1


def test_a_key_over_its_rate_waits_for_its_tokens():
    from services.gateway.fairness import KeyLimiter, RateLimited

    limiter = KeyLimiter(max_concurrent=0, requests_per_minute=60, burst=3)
    for _ in range(3):
        limiter.acquire("ada")
        limiter.release("ada")
    with pytest.raises(RateLimited, match="retry in 1 s") as refused:
        limiter.acquire("ada")
    assert refused.value.retry_after == 1
    limiter.acquire("bob")
    time.sleep(1.05)
    limiter.acquire("ada")  # one token back after a second


def test_a_request_holds_its_slot_until_its_task_ends():
    import asyncio

    from services.gateway.fairness import KeyLimiter, RateLimited

    limiter = KeyLimiter(max_concurrent=1, requests_per_minute=0)

    async def request(gate: asyncio.Event):
        limiter.hold_for_task("ada")
        limiter.hold_for_task("ada")  # authorizing twice in one request counts once
        await gate.wait()

    async def main():
        gate = asyncio.Event()
        first = asyncio.create_task(request(gate))
        await asyncio.sleep(0)
        assert limiter.in_flight("ada") == 1
        second = asyncio.create_task(request(gate))
        await asyncio.sleep(0)
        with pytest.raises(RateLimited):
            await second
        gate.set()
        await first
        await asyncio.sleep(0)
        assert limiter.in_flight("ada") == 0

    asyncio.run(main())


# -- response ids -------------------------------------------------------------------------------------------
def test_response_ids_are_made_and_checked_by_the_server(tmp_path):
    from services.gateway.response_ids import ResponseIds, shared_key

    key = shared_key(str(tmp_path / "monitoring" / ".response-id-key"))
    assert shared_key(str(tmp_path / "monitoring" / ".response-id-key")) == key  # replicas agree
    ids, other = ResponseIds(key), ResponseIds.random()
    rid = ids.new()
    assert len(rid) == 32 and ids.valid(rid, 86400) and not other.valid(rid, 86400)
    assert not ids.valid("a" * 32, 86400) and not ids.valid(rid[:-1] + ("0" if rid[-1] != "0" else "1"), 86400)
    old = ids.new(now=time.time() - 3 * 86400)
    assert ids.issued_at(old) is not None and not ids.valid(old, 2 * 86400)
    assert not ids.valid("not hex at all, 32 characters!!", 86400)
