"""Faults against the session's real `twin serve` (keyless, loopback only): a web page's DNS
rebinding, and each deployment's replica killed (SIGKILL) under load. What clients get is counted
(never a 500: 503 / UNAVAILABLE with a retry hint, or an error event in a stream that had started)
and the time until the platform answers again is measured and printed.

This module runs after tests/integration/test_serving.py (file order) and leaves the platform
answering: each kill waits for Serve's replacement replica.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest

from twin.v1 import chat_pb2, chat_pb2_grpc, common_pb2, generation_pb2

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


@pytest.mark.parametrize("host", ["evil.example", "attacker.test:8000", "127.0.0.1.nip.io"])
def test_keyless_server_refuses_a_rebound_host_name(platform, host):
    reply = httpx.get(f"{platform.http}/v1/models", headers={"Host": host}, timeout=30)
    assert reply.status_code == 421 and "loopback names only" in reply.json()["error"]["message"]
    crawl = httpx.post(f"{platform.http}/v1/crawl", headers={"Host": host}, timeout=30,
                       json={"twin": "Rebound", "targets": ["https://example.com/"]})
    assert crawl.status_code == 421
    assert httpx.get(f"{platform.http}/v1/models", headers={"Host": "localhost"}, timeout=30).status_code == 200


def _replica_pids(deployment: str) -> list[int]:
    out = subprocess.run(["pgrep", "-f", f"ServeReplica:twin:{deployment}"], capture_output=True, text=True,
                         check=False).stdout
    return [int(p) for p in out.split()]


def _chat_stream(platform, max_tokens: int) -> dict:
    """One streamed chat: its status, the events it got, whether it ended in an error event."""
    body = {"model": "mara-quill", "stream": True, "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": "Tell me everything about chunking documents."}]}
    try:
        with httpx.stream("POST", f"{platform.http}/v1/chat/completions", json=body, timeout=180) as reply:
            if reply.status_code != 200:
                reply.read()
                return {"status": reply.status_code, "retry_after": reply.headers.get("retry-after"),
                        "body": reply.text}
            events = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
    except httpx.HTTPError as exc:
        return {"status": "transport", "error": repr(exc)}
    errors = [json.loads(e)["error"] for e in events if e != "[DONE]" and "error" in json.loads(e)]
    return {"status": 200, "error": errors[0]["message"] if errors else None, "done": events[-1:] == ["[DONE]"]}


def _generate(platform, max_tokens: int) -> dict:
    reply = httpx.post(f"{platform.http}/v1/generate", timeout=180,
                       json={"messages": [{"role": "user", "content": "Write about lighthouses."}],
                             "max_tokens": max_tokens})
    return {"status": reply.status_code, "retry_after": reply.headers.get("retry-after"), "body": reply.text[:300]}


def _grpc_chat(platform, max_tokens: int) -> dict:
    with grpc.insecure_channel(platform.grpc) as channel:
        try:
            chat_pb2_grpc.ChatServiceStub(channel).Chat(chat_pb2.ChatRequest(
                twin="mara-quill", messages=[common_pb2.ChatMessage(role="user", content="What is a build log?")],
                sampling=generation_pb2.SamplingParams(max_tokens=max_tokens)), timeout=180)
        except grpc.RpcError as exc:
            return {"status": exc.code().name, "body": exc.details()}
    return {"status": "OK"}


def _serving_again(platform, timeout_s: float = 300) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if _generate(platform, 2)["status"] == 200 and httpx.post(
                    f"{platform.http}/v1/search", json={"query": "chunks", "twin": "mara-quill"},
                    timeout=60).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the platform did not answer again within {timeout_s} s")


@pytest.mark.parametrize("deployment", ["Generation", "Retrieval", "Gateway"])
def test_a_killed_replica_is_never_a_500_and_the_platform_recovers(platform, deployment):
    assert _serving_again(platform, 120) >= 0
    pids = _replica_pids(deployment)
    assert pids, f"no {deployment} replica process found"
    calls = [lambda: _chat_stream(platform, 200)] * 3 + [lambda: _generate(platform, 160)] * 3 + \
            [lambda: _grpc_chat(platform, 120)] * 2
    with ThreadPoolExecutor(len(calls) + 4) as pool:
        futures = [pool.submit(call) for call in calls]
        time.sleep(3)  # the requests are in flight
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        killed_at = time.monotonic()
        meanwhile = [pool.submit(_generate, platform, 4) for _ in range(2)]  # sent while it is down
        outcomes = [f.result() for f in futures + meanwhile]
    recovered = _serving_again(platform)
    print(f"\n{deployment} killed: {len(outcomes)} requests -> "
          f"{sorted(str(o['status']) + ('/error event' if o.get('error') else '') for o in outcomes)}; "
          f"answering again {time.monotonic() - killed_at:.1f} s after the kill ({recovered:.1f} s after the last "
          "request returned)")
    for outcome in outcomes:
        assert outcome["status"] not in (500, "INTERNAL", "UNKNOWN", "transport"), outcome
        if outcome["status"] == 503:
            assert outcome["retry_after"] and "retry" in outcome["body"], outcome
        if outcome["status"] == "UNAVAILABLE":
            assert "retry" in outcome["body"], outcome
        if outcome.get("error"):
            assert "retry" in outcome["error"], outcome
