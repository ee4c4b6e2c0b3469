"""The gateway without Ray: its data plane under the real HTTP routes (FastAPI's test client) and
the real gRPC methods, over a fake generation engine and fake service handles.

Fakes, said plainly: the engine is a GenerationBackend that echoes the question word by word
behind the real `Generator` (prompt validation, limits); retrieval, embedding and crawling are
in-process objects with the deployments' methods. The real deployments behind real Ray Serve are
tested in tests/integration/test_serving.py.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time

import grpc
import numpy as np
import pytest
from fastapi.testclient import TestClient

from llm_twin import prompts
from llm_twin.config import Settings
from llm_twin.keys import KeyStore
from services.gateway import http_api
from services.gateway import openai_format as oa
from services.gateway.auth import Authorizer
from services.gateway.dataplane import DataPlane
from services.gateway.grpc_api import GrpcApi
from services.generation.api import Delta
from services.generation.core import Generator
from services.retrieval.core import Result
from services.retrieval.errors import InvalidQuery, UnknownAuthor
from twin.v1 import chat_pb2, common_pb2, generation_pb2, retrieval_pb2

TWINS = {"mara-quill": {"name": "Mara Quill", "documents": 2, "chunks": 5}}


class EchoEngine:
    """A generation engine: streams 'you asked: <question>' one word at a time."""

    model_id = "echo-engine"

    def __init__(self):
        self.closed_early = 0
        self.template = self  # renders, counts and has no control tokens itself
        self.control_tokens = frozenset()

    tool_format = None  # the template declares no tools (like SmolLM2's)

    def render(self, messages, tools=None) -> str:
        return "\n".join(f"{m['role']}: {m['content']}" for m in messages)

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    async def stream(self, prompt, params, adapter=None):
        question = prompt.rsplit("user: ", 1)[-1]
        words = f"you asked: {question}".split()
        n = min(len(words), params.max_tokens)
        finished = False
        try:
            for i, word in enumerate(words[:n]):
                last = i == n - 1
                yield Delta(word + ("" if last else " "), ("length" if n < len(words) else "stop") if last else None,
                            self.count_tokens(prompt), i + 1)
            finished = True
        finally:
            self.closed_early += not finished

    def stats(self) -> dict:
        return {"queued": 0, "active": 0}


class FakeGeneration:
    """The generation deployment's methods over the real Generator and the echo engine."""

    def __init__(self):
        self.engine = EchoEngine()
        self.generator = Generator(self.engine, max_prompt_tokens=200)
        self.twins, self.wholes = [], []

    def stream(self, messages, params, twin=None, voice=False, whole=False):
        self.twins.append(twin)
        self.wholes.append(whole)
        return self.generator.stream(messages, params)

    async def generate(self, messages, params):
        c = await self.generator.complete(messages, params)
        return {"text": c.text, "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
                "completion_tokens": c.completion_tokens, "model": c.model}

    async def stats(self):
        return {**self.engine.stats(), "adapters": {"mara-quill": "v7"}}

    async def model_id(self):
        return self.engine.model_id

    async def capabilities(self):
        return {"tool_format": self.engine.tool_format}


class FakeRetrieval:
    def __init__(self, similarity: float = 0.8):
        self.similarity, self.calls = similarity, []

    async def search(self, query, twin=None, category=None, top_k=5, strategy="hybrid"):
        self.calls.append({"query": query, "twin": twin, "category": category, "top_k": top_k, "strategy": strategy})
        if not query.strip():
            raise InvalidQuery("the query is empty: ask a question")
        if twin and twin not in TWINS:
            raise UnknownAuthor(f"no twin {twin!r} in the index")
        return [Result(chunk_id=f"c{i}", doc_id=f"d{i}", score=1 / (i + 1), text=f"passage {i} about {query}",
                       title=f"Post {i}", link=f"https://mara.test/{i}", author="Mara Quill", category="article",
                       chunk_no=0, similarity=self.similarity) for i in range(top_k)]

    async def answer_search(self, query, question, twin, top_k=4, opening=None):
        from services.retrieval.core import Retrieval
        from services.retrieval.relevance import Evidence

        results = await self.search(query, twin, None, top_k)
        return Retrieval(results, Evidence(self.similarity, 0, 0, 0, 0, 0), None)

    async def twins(self):
        return TWINS

    async def has_twin(self, twin):
        return twin in TWINS


class FakeEmbedding:
    async def embed(self, texts):
        if not texts:
            from services.embedding.errors import InvalidEmbeddingRequest

            raise InvalidEmbeddingRequest("send at least one text to embed")
        return {"vectors": np.ones((len(texts), 4), dtype=np.float32) / 2, "prompt_tokens": sum(map(len, texts))}

    async def info(self):
        return {"model": "fake-embedder", "dimension": 4}


class BrokenCrawler:
    async def crawl(self, twin, targets, source_type, index, exact_twin=False):
        raise RuntimeError("secret internal detail")


class RecordingCrawler:
    def __init__(self):
        self.calls = []

    async def crawl(self, twin, targets, source_type, index, exact_twin=False):
        self.calls.append((twin, targets, source_type, index, exact_twin))
        return {"outcomes": [], "stored": 0, "updated": 0, "unchanged": 0, "failed": 0, "chunks_indexed": 0}


OPEN = Authorizer(KeyStore("/nonexistent/keys.json"), disabled=True)  # auth is tested on its own below


def make_plane(similarity: float = 0.8, authorizer: Authorizer = OPEN, crawler=None, **settings) -> DataPlane:
    return DataPlane(Settings(default_max_tokens=50, max_new_tokens=100, **settings),
                     crawler=crawler or BrokenCrawler(),
                     retrieval=FakeRetrieval(similarity), embedding=FakeEmbedding(), generation=FakeGeneration(),
                     authorizer=authorizer)


@pytest.fixture
def plane():
    return make_plane()


@pytest.fixture
def client(plane):
    http_api.http.state.plane = plane
    yield TestClient(http_api.http, raise_server_exceptions=False)
    del http_api.http.state.plane


def ask(question="How do I chunk?", **extra) -> dict:
    return {"model": "mara-quill", "messages": [{"role": "user", "content": question}], **extra}


# -- HTTP ------------------------------------------------------------------------------------------------
def test_chat_completion_answers_with_the_twins_sources(client, plane):
    reply = client.post("/v1/chat/completions", json=ask(max_tokens=40))
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["model"] == "mara-quill"
    assert body["choices"][0]["message"]["content"].startswith("you asked:")
    assert [s["title"] for s in body["sources"]] == ["Post 0", "Post 1", "Post 2", "Post 3"]
    assert body["usage"]["completion_tokens"] > 0
    assert plane.generation.twins == ["mara-quill"], "the twin's adapter is asked for"


def test_only_streamed_answers_ask_the_replica_for_deltas_as_they_come(client, plane):
    """A response that is not streamed waits for the whole answer, so the generation replica is asked
    for the first delta and the last only (``whole``): fewer messages through Ray on the decode's cores."""
    for body in (ask(max_tokens=8), {**ask(max_tokens=8), "model": "base"}):
        assert client.post("/v1/chat/completions", json=body).status_code == 200
        with client.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as r:
            assert r.status_code == 200 and list(r.iter_lines())
    assert client.post("/v1/generate", json={"messages": [{"role": "user", "content": "a"}]}).status_code == 200
    assert plane.generation.wholes == [True, False, True, False, True]


def test_streamed_chat_sends_sources_first_then_tokens_then_done(client):
    with client.stream("POST", "/v1/chat/completions", json=ask(stream=True,
                                                                stream_options={"include_usage": True})) as r:
        assert r.status_code == 200
        events = [line.removeprefix("data: ") for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks[0]["sources"]) == 4 and chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text.startswith("you asked:") and chunks[-1]["usage"]["completion_tokens"] > 0


def test_nothing_relevant_is_said_not_invented(client):
    http_api.http.state.plane = make_plane(similarity=0.01)
    body = client.post("/v1/chat/completions", json=ask()).json()
    assert body["sources"] == [] and body["choices"][0]["message"]["content"] == prompts.NO_SOURCES_ANSWER
    several = client.post("/v1/chat/completions", json=ask(n=3)).json()
    assert [c["message"]["content"] for c in several["choices"]] == [prompts.NO_SOURCES_ANSWER] * 3
    structured = client.post("/v1/chat/completions", json=ask(response_format={"type": "json_object"})).json()
    assert structured["choices"][0]["message"]["content"] is None
    assert structured["choices"][0]["message"]["refusal"] == prompts.NO_SOURCES_ANSWER


@pytest.mark.parametrize("request_body, status, fragment", [
    (ask(temperature=5), 400, "temperature"),
    (ask(max_tokens=10_000), 400, "max_tokens"),
    (ask(sources_top_k=0), 400, "sources_top_k"),
    (ask(top_k=5000), 400, "top_k"),
    (ask(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    (ask(presence_penalty=3), 400, "presence_penalty"),
    (ask(top_logprobs=3), 400, "top_logprobs needs logprobs"),
    (ask(logprobs=True, top_logprobs=50), 400, "top_logprobs"),
    ({**ask(), "model": "nobody-here"}, 404, "nobody-here"),
    ({"model": "mara-quill", "messages": []}, 400, "messages"),
    ({"model": "mara-quill"}, 400, "messages"),
    (ask(n=9), 400, "n must be between 1 and 4"),
    (ask(response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": {
        "type": "array", "uniqueItems": True}}}), 400, "uniqueItems"),
    (ask(response_format={"type": "json_schema"}), 400, "response_format.json_schema is required"),
    (ask(response_format={"type": "yaml"}), 400, "response_format.type"),
    (ask(tools=[{"type": "function", "function": {"name": "lookup"}}]), 400, "declares tool calling"),
    (ask(tools=[{"type": "function", "function": {"name": "lookup"}}],
         tool_choice={"type": "function", "function": {"name": "other"}}), 400, "'other' is not among tools"),
    (ask(tool_choice="required"), 400, "tool_choice needs tools"),
    (ask(tools=[{"type": "function", "function": {"name": "bad name!"}}], tool_choice="required"), 400,
     "tools[0].function.name"),
    (ask(question="word " * 300), 400, "the prompt is"),
])
def test_bad_chat_requests_get_4xx_naming_the_problem(client, request_body, status, fragment):
    reply = client.post("/v1/chat/completions", json=request_body)
    assert reply.status_code == status, reply.text
    assert fragment in reply.json()["error"]["message"]


@pytest.mark.parametrize("path, body, fragment", [
    ("/v1/search", {"query": "x", "top_k": "abc"}, "top_k"),
    ("/v1/search", {"query": "x", "colour": "red"}, "colour"),
    ("/v1/search", {"query": ""}, "empty"),
    ("/v1/generate", {"messages": [{"role": "user"}]}, "content"),
    ("/v1/generate", {"messages": [{"role": "user", "content": "hi"}], "top_p": "high"}, "top_p"),
    ("/v1/crawl", {"twin": "x", "targets": "http://a"}, "targets"),
    ("/v1/embeddings", {"input": []}, "at least one"),
])
def test_the_json_mirror_validates_every_field(client, path, body, fragment):
    reply = client.post(path, json=body)
    assert reply.status_code == 400, reply.text
    assert fragment in reply.json()["error"]["message"]


def test_an_unexpected_failure_is_a_500_that_leaks_nothing(client):
    reply = client.post("/v1/crawl", json={"twin": "Mara Quill", "targets": ["https://mara.test/"]})
    assert reply.status_code == 500
    assert reply.json()["error"]["message"] == "internal error: RuntimeError"


def test_search_generate_embed_models_and_stats(client, plane):
    found = client.post("/v1/search", json={"query": "chunking", "twin": "mara-quill", "top_k": 2}).json()
    assert [s["link"] for s in found["sources"]] == ["https://mara.test/0", "https://mara.test/1"]
    assert plane.retrieval.calls[-1] == {"query": "chunking", "twin": "mara-quill", "category": None, "top_k": 2,
                                         "strategy": None}
    generated = client.post("/v1/generate", json={"messages": [{"role": "user", "content": "a b c"}],
                                                  "max_tokens": 2}).json()
    assert generated["text"] == "you asked:" and generated["finish_reason"] == "length"
    with client.stream("POST", "/v1/generate", json={"messages": [{"role": "user", "content": "a b"}],
                                                     "stream": True}) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert "".join(e["delta"] for e in events) == "you asked: a b" and events[-1]["finish_reason"] == "stop"
    vectors = client.post("/v1/embeddings", json={"input": ["a", "b"], "encoding_format": "base64"}).json()
    assert np.frombuffer(base64.b64decode(vectors["data"][1]["embedding"]), dtype="<f4").tolist() == [0.5] * 4
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == ["mara-quill"]
    assert client.get("/v1/models/someone").status_code == 404
    assert client.get("/v1/stats").json() == {"generation": {"queued": 0, "active": 0,
                                                             "adapters": {"mara-quill": "v7"}}}


def test_a_client_that_leaves_mid_stream_stops_the_generation(plane):
    async def leave_early():
        started = await plane.start_chat("mara-quill", [{"role": "user", "content": "one two three four"}],
                                         plane.limits.params(max_tokens=50), None, "test")
        await anext(started.deltas)
        await started.deltas.aclose()

    asyncio.run(leave_early())
    assert plane.generation.engine.closed_early == 1


def test_a_generate_stream_fails_before_its_response_and_a_good_one_streams_whole(plane, client):
    too_long = [{"role": "user", "content": "word " * 400}]  # over the fake model's 200-token limit
    with pytest.raises(Exception, match="prompt"):
        asyncio.run(plane.generate_stream(too_long, plane.limits.params(max_tokens=5)))
    for streamed in (True, False):  # what the deployment refuses, not an IndexError in the gateway
        with pytest.raises(Exception, match="messages is empty"):
            if streamed:
                asyncio.run(plane.generate_stream([], plane.limits.params(max_tokens=5)))
            else:
                asyncio.run(plane.generate([], plane.limits.params(max_tokens=5), "grpc"))
    reply = client.post("/v1/generate", json={"messages": too_long, "stream": True})
    assert reply.status_code == 400 and "the prompt is 401 tokens" in reply.json()["error"]["message"]

    async def whole() -> list[str]:
        deltas = await plane.generate_stream([{"role": "user", "content": "one two three"}],
                                             plane.limits.params(max_tokens=50))
        return [d.text async for d in deltas]

    assert "".join(asyncio.run(whole())).startswith("you asked:")

    async def leave_after_the_first():
        deltas = await plane.generate_stream([{"role": "user", "content": "one two three four"}],
                                             plane.limits.params(max_tokens=50))
        await anext(deltas)
        await deltas.aclose()

    closed = plane.generation.engine.closed_early
    asyncio.run(leave_after_the_first())
    assert plane.generation.engine.closed_early == closed + 1  # the generation stopped too


# -- gRPC ------------------------------------------------------------------------------------------------
class Context:
    def __init__(self, peer="ipv4:127.0.0.1:50000", metadata=()):
        self.code, self.details = None, ""
        self._peer, self._metadata = peer, tuple(metadata)

    def peer(self):
        return self._peer

    def invocation_metadata(self):
        return self._metadata

    def set_code(self, code):
        self.code = code

    def set_details(self, details):
        self.details = details


class Servicer(GrpcApi):
    def __init__(self, plane):
        self.plane = plane


def chat_request(question="How do I chunk?", twin="mara-quill", **sampling) -> chat_pb2.ChatRequest:
    return chat_pb2.ChatRequest(twin=twin, messages=[common_pb2.ChatMessage(role="user", content=question)],
                                sampling=generation_pb2.SamplingParams(**sampling))


def test_grpc_chat_and_stream_agree(plane):
    servicer, context = Servicer(plane), Context()
    reply = asyncio.run(servicer.Chat(chat_request(max_tokens=30), context))
    assert context.code is None and reply.answer.startswith("you asked:") and len(reply.sources) == 4

    async def stream():
        return [c async for c in servicer.ChatStream(chat_request(max_tokens=30), Context())]

    chunks = asyncio.run(stream())
    assert len(chunks[0].sources) == 4 and "".join(c.delta for c in chunks) == reply.answer
    assert chunks[-1].finish_reason == reply.finish_reason and chunks[-1].usage.completion_tokens > 0


@pytest.mark.parametrize("request_, code", [
    (chat_request(twin="nobody"), grpc.StatusCode.NOT_FOUND),
    (chat_request(temperature=9), grpc.StatusCode.INVALID_ARGUMENT),
    (chat_request(question=" "), grpc.StatusCode.INVALID_ARGUMENT),
])
def test_grpc_errors_are_status_codes(plane, request_, code):
    context = Context()
    asyncio.run(Servicer(plane).Chat(request_, context))
    assert context.code == code and context.details

    async def stream():
        return [c async for c in Servicer(plane).ChatStream(request_, streamed)]

    streamed = Context()
    with pytest.raises(Exception):  # noqa: B017 - a streaming RPC reports its status by raising
        asyncio.run(stream())
    assert streamed.code == code


def test_grpc_search_list_twins_and_health(plane):
    servicer, context = Servicer(plane), Context()
    found = asyncio.run(servicer.Search(retrieval_pb2.SearchRequest(query="q", twin="mara-quill", top_k=3), context))
    assert len(found.sources) == 3 and found.sources[0].link == "https://mara.test/0"
    twins = asyncio.run(servicer.ListTwins(retrieval_pb2.ListTwinsRequest(), context))
    assert [(t.id, t.chunks) for t in twins.twins] == [("mara-quill", 5)]
    from grpc_health.v1 import health_pb2

    ok = asyncio.run(servicer.Check(health_pb2.HealthCheckRequest(service="twin.v1.ChatService"), context))
    assert ok.status == health_pb2.HealthCheckResponse.SERVING
    unknown = Context()
    asyncio.run(servicer.Check(health_pb2.HealthCheckRequest(service="nope"), unknown))
    assert unknown.code == grpc.StatusCode.NOT_FOUND


# -- who may call, and how much ---------------------------------------------------------------------------
@pytest.fixture
def keyed(tmp_path):
    store = KeyStore(tmp_path / "keys.json")
    chat_key, admin_key = store.create("reader", "chat"), store.create("ops", "admin")
    crawler = RecordingCrawler()
    http_api.http.state.plane = make_plane(authorizer=Authorizer(store), crawler=crawler)
    yield TestClient(http_api.http, raise_server_exceptions=False), chat_key, admin_key, crawler
    del http_api.http.state.plane


def test_http_keys_and_scopes(keyed):
    client, chat_key, admin_key, crawler = keyed
    assert client.get("/healthz").status_code == 200  # probes stay open
    refused = client.post("/v1/chat/completions", json=ask())
    assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"
    assert client.post("/v1/chat/completions", json=ask(),
                       headers={"Authorization": "Bearer twk_nope"}).status_code == 401
    chat = {"Authorization": f"Bearer {chat_key}"}
    assert client.post("/v1/chat/completions", json=ask(), headers=chat).status_code == 200
    assert client.get("/v1/models", headers=chat).status_code == 200
    crawl = {"twin": "Mara Quill", "targets": ["https://mara.test/feed.xml"]}
    denied = client.post("/v1/crawl", json=crawl, headers=chat)
    assert denied.status_code == 403 and "admin" in denied.json()["error"]["message"]
    assert client.post("/v1/crawl", json=crawl, headers={"Authorization": f"Bearer {admin_key}"}).status_code == 200
    assert crawler.calls == [("Mara Quill", ["https://mara.test/feed.xml"], "auto", False, True)]


def test_without_keys_remote_clients_are_refused(tmp_path):
    http_api.http.state.plane = make_plane(authorizer=Authorizer(KeyStore(tmp_path / "none.json")))
    try:
        reply = TestClient(http_api.http).post("/v1/chat/completions", json=ask())  # client "testclient"
        assert reply.status_code == 401 and "loopback clients only" in reply.json()["error"]["message"]
    finally:
        del http_api.http.state.plane


@pytest.mark.parametrize("target, source_type", [
    ("/etc", "auto"), ("file:///etc/passwd", "auto"), ("~/notes", "auto"), ("export.zip", "auto"),
    ("git@github.com:a/b.git", "git"), ("ssh://git@host/a.git", "git"), ("http://host/a.git", "git"),
    ("https://host/x", "folder"), ("https://host/x.zip", "linkedin-export"), ("ftp://host/x", "auto"),
])
def test_the_api_crawls_only_web_sources(keyed, target, source_type):
    client, _, admin_key, crawler = keyed
    reply = client.post("/v1/crawl", json={"twin": "Mara Quill", "targets": [target], "source_type": source_type},
                        headers={"Authorization": f"Bearer {admin_key}"})
    assert reply.status_code == 400, reply.text
    assert crawler.calls == []


def test_grpc_keys_and_scopes(tmp_path):
    store = KeyStore(tmp_path / "keys.json")
    chat_key = store.create("reader", "chat")
    servicer = Servicer(make_plane(authorizer=Authorizer(store), crawler=RecordingCrawler()))
    anonymous = Context()
    asyncio.run(servicer.Chat(chat_request(), anonymous))
    assert anonymous.code == grpc.StatusCode.UNAUTHENTICATED
    keyed = Context(metadata=[("authorization", f"Bearer {chat_key}")])
    assert asyncio.run(servicer.Chat(chat_request(max_tokens=5), keyed)).answer and keyed.code is None
    from twin.v1 import crawler_pb2

    denied = Context(metadata=[("authorization", f"Bearer {chat_key}")])
    asyncio.run(servicer.Crawl(crawler_pb2.CrawlRequest(twin="x", targets=["https://a.test/"]), denied))
    assert denied.code == grpc.StatusCode.PERMISSION_DENIED
    remote = Context(peer="ipv4:10.9.8.7:5000")
    asyncio.run(Servicer(make_plane(authorizer=Authorizer(KeyStore(tmp_path / "none.json")))).ListTwins(
        retrieval_pb2.ListTwinsRequest(), remote))
    assert remote.code == grpc.StatusCode.UNAUTHENTICATED


def test_oversize_bodies_and_too_many_messages_are_refused(client):
    http_api.http.state.plane = make_plane(max_request_bytes=2048, max_messages=3, max_request_chars=500)
    big = client.post("/v1/chat/completions", content=b'{"model": "x", "pad": "' + b"a" * 5000 + b'"}',
                      headers={"Content-Type": "application/json"})
    assert big.status_code == 413 and "TWIN_MAX_REQUEST_BYTES" in big.json()["error"]["message"]
    many = [{"role": "user", "content": "hi"}] * 4
    reply = client.post("/v1/chat/completions", json={"model": "mara-quill", "messages": many})
    assert reply.status_code == 413 and "TWIN_MAX_MESSAGES" in reply.json()["error"]["message"]
    long = client.post("/v1/generate", json={"messages": [{"role": "user", "content": "x " * 400}]})
    assert long.status_code == 413 and "TWIN_MAX_REQUEST_CHARS" in long.json()["error"]["message"]


def test_the_chat_page_is_served_open_and_only_its_own_files(client):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert '<script src="/static/chat.js">' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert client.get("/static/chat.js").headers["content-type"].startswith("text/javascript")
    for path in ("/static/..%2Fserver.py", "/static/../server.py", "/static/index.htm", "/static/%2e%2e%2fauth.py"):
        assert client.get(path).status_code == 404, path



@pytest.mark.parametrize("field, value", [
    ("logit_bias", {"50256": -100}), ("tools", [{"type": "function", "function": {"name": "f"}}]),
    ("store", True), ("temprature", 0.5),
])
def test_openai_fields_that_are_not_implemented_are_refused_naming_them(client, field, value):
    reply = client.post("/v1/chat/completions", json=ask(**{field: value}))
    assert reply.status_code == 400 and field in reply.json()["error"]["message"], reply.text


@pytest.mark.parametrize("route", ["/v1/chat/completions", "/v1/completions"])
@pytest.mark.parametrize("options, stream, named", [
    ({"include_usage": True, "continuous_usage_stats": True}, True, "continuous_usage_stats"),
    ({"include_usage": "false"}, True, "include_usage"),  # a string is not read as a boolean
    ({"include_usage": True}, False, "stream_options"),  # only a stream reads it
])
def test_stream_options_are_honoured_or_refused_naming_them(client, route, options, stream, named):
    body = {**ask(), "stream": stream, "stream_options": options}
    if route == "/v1/completions":
        body = {"model": "base", "prompt": "a", "stream": stream, "stream_options": options}
    reply = client.post(route, json=body)
    assert reply.status_code == 400 and named in reply.text, reply.text


def test_stop_strings_end_the_answer_across_word_boundaries(client):
    # The echo engine streams "you asked: <question>" a word at a time: "asked: How" spans deltas.
    body = client.post("/v1/chat/completions", json=ask(stop=["d: Ho", "zzz"])).json()
    assert body["choices"][0]["message"]["content"] == "you aske" and body["choices"][0]["finish_reason"] == "stop"
    with client.stream("POST", "/v1/chat/completions", json=ask(stop="asked", stream=True)) as r:
        events = [json.loads(line[6:]) for line in r.iter_lines() if line.startswith("data: {")]
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"]) == "you "


def test_sources_top_k_sets_the_number_of_sources_and_top_k_is_sampling(client):
    body = client.post("/v1/chat/completions", json=ask(sources_top_k=2, top_k=5)).json()
    assert len(body["sources"]) == 2


def test_feedback_names_a_recorded_answer(client, mlflow_server):
    from llm_twin.prompt_traces import PromptTraces, load
    from services.gateway.observe import Observer

    plane = make_plane()
    plane.observer = Observer(PromptTraces(mlflow_server))
    http_api.http.state.plane = plane
    answer = client.post("/v1/chat/completions", json=ask()).json()
    assert answer["id"].startswith("chatcmpl-") and len(answer["id"]) == len("chatcmpl-") + 32
    assert client.post("/v1/feedback", json={"response_id": answer["id"], "score": 1,
                                             "comment": "good"}).status_code == 200
    for body, status in (({"response_id": answer["id"], "score": 0}, 400), ({"response_id": "chatcmpl-" + "0" * 32,
                         "score": -1}, 404), ({"response_id": "x", "score": 1, "colour": 1}, 400)):
        reply = client.post("/v1/feedback", json=body)
        assert reply.status_code == status, reply.text
    plane.observer.prompt_log.flush()
    (record,) = [r for r in load(mlflow_server, 0) if r["id"] == answer["id"].removeprefix("chatcmpl-")]
    assert record["id"] == answer["id"].removeprefix("chatcmpl-") and record["feedback"] == [{"score": 1,
                                                                                              "comment": "good"}]
    assert record["question"] == "How do I chunk?" and record["answer"] == answer["choices"][0]["message"]["content"]
    assert record["completion_tokens"] > 0 and record["ttft_s"] <= record["latency_s"] and len(record["sources"]) == 4


def test_a_sampled_share_of_answers_is_judged_in_the_background(client, mlflow_server):
    from llm_twin.evaluation.judge import Verdict
    from llm_twin.prompt_traces import PromptTraces, load
    from services.gateway.observe import Observer

    class Judge:
        name = "llm:stub"

        def __init__(self):
            self.seen = []

        def judge(self, question, answer, passages, author):
            self.seen.append((question, answer, len(passages), author))
            return Verdict({"faithfulness": 1.0, "style": 3}, self.name)

    judge = Judge()
    plane = make_plane()
    plane.observer = Observer(PromptTraces(mlflow_server), judge=judge, judge_sample_ratio=1.0)
    http_api.http.state.plane = plane
    answer = client.post("/v1/chat/completions", json=ask()).json()
    rid = answer["id"].removeprefix("chatcmpl-")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        plane.observer.prompt_log.flush()
        found = {r["id"]: r for r in load(mlflow_server, 0)}
        if rid in found and found[rid]["judge"]:
            break
        time.sleep(0.05)
    assert found[rid]["judge"] == {"faithfulness": 1.0, "style": 3}
    assert judge.seen == [("How do I chunk?", answer["choices"][0]["message"]["content"], 4, "Mara Quill")]
    assert found[rid]["model"] == "echo-engine" and found[rid]["adapter_version"] == "v7"


def test_openai_fields_at_their_neutral_values_are_accepted(client):
    neutral = {"stop": None, "logprobs": False, "presence_penalty": 0, "frequency_penalty": 0.0,
               "response_format": {"type": "text"}, "user": "ada", "store": False}
    assert client.post("/v1/chat/completions", json=ask(**neutral)).status_code == 200


@pytest.mark.parametrize("part, named", [
    ({"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}, "content[1].type 'image_url'"),
    ({"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}}, "content[1].type 'input_audio'"),
    ({"type": "text", "text": ["not", "a", "string"]}, "content[1].text must be a string"),
    ({"text": "no type"}, "content[1].type None"),
])
def test_a_content_part_the_model_cannot_read_is_refused_not_dropped(client, part, named):
    """Dropped, an image would be answered as if the model had seen it."""
    body = {"model": "mara-quill", "messages": [{"role": "user", "content": [
        {"type": "text", "text": "What is in this picture?"}, part]}]}
    reply = client.post("/v1/chat/completions", json=body)
    assert reply.status_code == 400 and named in reply.json()["error"]["message"], reply.text
    assert reply.json()["error"]["param"] == "messages.0"


def test_text_parts_and_an_assistants_refusal_part_are_read(client):
    body = {"model": "mara-quill", "max_tokens": 40, "messages": [
        {"role": "user", "content": "Tell me."},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "I can't say."}]},
        {"role": "user", "content": [{"type": "text", "text": "How do I"}, {"type": "text", "text": " chunk?"}]}]}
    reply = client.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200, reply.text
    assert reply.json()["choices"][0]["message"]["content"].startswith("you asked: How do I chunk?")  # joined
    refusal = oa.Message(role="assistant", content=[{"type": "refusal", "refusal": "I can't say."}])
    assert refusal.text() == {"role": "assistant", "content": "I can't say."}


@pytest.mark.parametrize("field, value", [
    ("messages", [{"role": "user", "content": "hi"}]), ("top_logprobs", 3), ("parallel_tool_calls", False),
])
def test_chat_fields_sent_to_completions_are_refused_naming_them(client, field, value):
    reply = client.post("/v1/completions", json={"model": "base", "prompt": "a", field: value})
    assert reply.status_code == 400 and field.split("_")[0] in reply.json()["error"]["message"], reply.text


@pytest.mark.parametrize("route, body, named", [
    ("/v1/chat/completions", b'{"model": "mara-quill", "messages": [{"role": "user", "content": "hi \\ud800"}]}',
     "lone UTF-16 surrogate"),
    ("/v1/search", b'{"query": "chunking \\udfff", "twin": "mara-quill"}', "lone UTF-16 surrogate"),
    ("/v1/completions", b'{"model": "base", "prompt": "a \\ud83d"}', "lone UTF-16 surrogate"),  # half a pair
    ("/v1/chat/completions", b"[" * 50_000 + b"]" * 50_000, "nested too deeply"),
    ("/v1/chat/completions", b'{"model": "mara-quill", "messages": "\xff\xfe"}', "not UTF-8"),
])
def test_a_body_that_is_not_valid_unicode_json_is_a_400_saying_why(client, route, body, named):
    """A lone surrogate parses in Python and then fails wherever the text is encoded (it was a 500,
    which Serve's proxy reported as a stopped replica); deep nesting was Starlette's {"detail"}."""
    reply = client.post(route, content=body, headers={"content-type": "application/json"})
    assert reply.status_code == 400 and named in reply.json()["error"]["message"], reply.text
    assert client.post("/v1/chat/completions", content='{"model": "mara-quill", "messages": [{"role": "user", '
                       '"content": "How do I chunk? \\ud83d\\ude00 \U0001f600"}]}'.encode(),
                       headers={"content-type": "application/json"}).status_code == 200  # a pair is text


def test_no_such_route_and_wrong_method_answer_in_the_apis_error_shape(client):
    for reply, status in ((client.post("/v1/nothing-here", json={}), 404), (client.get("/v1/chat/completions"), 405)):
        assert reply.status_code == status and reply.json()["error"]["code"] == status, reply.text


def test_a_generation_for_a_twin_the_index_does_not_hold_is_refused_before_the_generation_replica(client, plane):
    """Each new name reaching the generation deployment costs a registry lookup and one of its 8
    cached adapter slots (a stream of made-up names evicted real twins' adapters)."""
    for path, body in (("/v1/generate", {"messages": [{"role": "user", "content": "hi"}], "twin": "made-up-1"}),
                       ("/v1/completions", {"model": "made-up-2", "prompt": "hi"})):
        reply = client.post(path, json=body)
        assert reply.status_code == 404 and "/v1/models" in reply.json()["error"]["message"], reply.text
    assert plane.generation.wholes == []  # the generation deployment was never asked
    assert client.post("/v1/generate", json={"messages": [{"role": "user", "content": "hi"}],
                                             "twin": "mara-quill"}).status_code == 200


@pytest.mark.parametrize("turn, named", [
    ({"role": "assistant", "tool_calls": [{"id": "c1", "function": "get_weather"}]}, "tool_calls[0]"),
    ({"role": "assistant", "tool_calls": [{"id": "c1", "function": {"arguments": "{}"}}]}, "tool_calls[0]"),
    ({"role": "assistant", "tool_calls": [{"id": "c1", "type": "code", "function": {"name": "f"}}]}, "tool_calls[0]"),
    ({"role": "user", "content": "hi", "tool_calls": [{"id": "c1", "function": {"name": "f", "arguments": "{}"}}]},
     "only an assistant turn"),
    ({"role": "tool", "content": "42"}, "tool_call_id"),
])
def test_a_tool_turn_that_cannot_be_rendered_is_a_400_naming_it(client, turn, named):
    """A function that is a string was a 500 (AttributeError while rendering the turn)."""
    body = {"model": "base", "max_tokens": 8, "messages": [{"role": "user", "content": "weather?"}, turn,
                                                           {"role": "user", "content": "and now?"}]}
    reply = client.post("/v1/chat/completions", json=body)
    assert reply.status_code == 400 and named in reply.json()["error"]["message"], reply.text


def test_embeddings_honour_or_refuse_every_field(client):
    """``dimensions`` was dropped: a client asking for 8 got the embedder's full vectors."""
    assert client.post("/v1/embeddings", json={"input": "a", "dimensions": 4, "user": "ada"}).status_code == 200
    for body, named in (({"input": "a", "dimensions": 2}, "dimensions: fake-embedder returns 4"),
                        ({"input": "a", "truncate": True}, "truncate")):
        reply = client.post("/v1/embeddings", json=body)
        assert reply.status_code == 400 and named in reply.json()["error"]["message"], reply.text
