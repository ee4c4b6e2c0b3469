"""The serving plane over real sockets: `twin serve` (Ray Serve, its gRPC proxy, the HTTP gateway)
started once per session over an index of the sample corpus, with SmolLM2-135M-Instruct.

Answers are short (max_tokens 8-24) to keep CPU time down; what is asserted is behaviour: status
codes, sources, streaming, batching, cancellation, traces.
"""

from __future__ import annotations

import json
import secrets
import threading
import time

import grpc
import httpx
import numpy as np
import openai
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from twin.v1 import (
    chat_pb2,
    chat_pb2_grpc,
    common_pb2,
    crawler_pb2,
    crawler_pb2_grpc,
    embedding_pb2,
    embedding_pb2_grpc,
    generation_pb2,
    generation_pb2_grpc,
    retrieval_pb2,
    retrieval_pb2_grpc,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

QUESTION = "Why combine BM25 with embeddings?"


@pytest.fixture(scope="module")
def channel(platform):
    with grpc.insecure_channel(platform.grpc) as ch:
        yield ch


@pytest.fixture(scope="module")
def client(platform):
    return openai.OpenAI(base_url=f"{platform.http}/v1", api_key="unused", timeout=120, max_retries=0)


def ask(text: str) -> list:
    return [common_pb2.ChatMessage(role="user", content=text)]


def sampling(max_tokens: int = 16, **kw) -> generation_pb2.SamplingParams:
    return generation_pb2.SamplingParams(max_tokens=max_tokens, **kw)


def wait_for(condition, timeout_s: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def stats(platform) -> dict:
    return httpx.get(f"{platform.http}/v1/stats", timeout=10).json()["generation"]


# -- discovery, health, reflection -------------------------------------------------------------------
def test_twins_are_listed_over_grpc_and_as_openai_models(platform, channel, client):
    twins = retrieval_pb2_grpc.RetrievalServiceStub(channel).ListTwins(retrieval_pb2.ListTwinsRequest()).twins
    assert [(t.id, t.name, t.documents) for t in twins] == [("mara-quill", "Mara Quill", 20)]
    assert [m.id for m in client.models.list().data] == ["mara-quill"]
    assert client.models.retrieve("mara-quill").id == "mara-quill"


def test_health_follows_grpc_health_v1(channel):
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    assert health.Check(health_pb2.HealthCheckRequest(service="twin.v1.ChatService")).status == \
        health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.RpcError) as err:
        health.Check(health_pb2.HealthCheckRequest(service="no.such.Service"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_twin_services(channel):
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    services = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert {"twin.v1.ChatService", "twin.v1.GenerationService", "twin.v1.RetrievalService",
            "twin.v1.EmbeddingService", "twin.v1.CrawlerService"} <= services
    database = ProtoReflectionDescriptorDatabase(channel)
    method = database.FindFileContainingSymbol("twin.v1.ChatService")
    assert method.name == "twin/v1/chat.proto"


# -- chat -------------------------------------------------------------------------------------------
def test_grpc_chat_answers_with_sources_and_the_stream_says_the_same(channel):
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    request = chat_pb2.ChatRequest(twin="Mara Quill", messages=ask(QUESTION), sampling=sampling(16))
    # Asked once first, so that both answers below start from the prefix cache: with int8 weights a
    # prompt prefilled whole and one whose last token alone is computed differ in rounding (a
    # 64-row chunk and a single row go through different kernels), enough to move a near-tie.
    stub.Chat(request)
    unary = stub.Chat(request)
    assert unary.answer.strip() and unary.model == "mara-quill"
    assert unary.sources[0].title == "Notes on hybrid search"
    assert unary.usage.completion_tokens == 16 and unary.finish_reason == "length"

    chunks = list(stub.ChatStream(request))
    assert [s.title for s in chunks[0].sources] == [s.title for s in unary.sources]
    assert len(chunks) > 3, "tokens should arrive as separate messages"
    assert chunks[-1].finish_reason == "length" and chunks[-1].usage.completion_tokens == 16
    # Greedy decoding of the same prompt: the stream and the unary answer are the same text.
    assert "".join(c.delta for c in chunks) == unary.answer


def test_chat_answers_through_the_twins_registered_adapter(platform, channel):
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    stub.Chat(chat_pb2.ChatRequest(twin="mara-quill", messages=ask(QUESTION), sampling=sampling(4)))
    assert stats(platform)["adapters"] == {"mara-quill": "test-adapter"}
    # Plain generation (no twin) stays on the base model.
    generation_pb2_grpc.GenerationServiceStub(channel).Generate(
        generation_pb2.GenerateRequest(messages=ask("Name a colour."), sampling=sampling(4)))
    assert set(stats(platform)["adapters"]) == {"mara-quill"}


def test_a_question_with_nothing_relevant_says_so(channel, client):
    reply = chat_pb2_grpc.ChatServiceStub(channel).Chat(
        chat_pb2.ChatRequest(twin="mara-quill", messages=ask("What is the best pizza topping in Naples?")))
    assert reply.finish_reason == "no_sources" and not reply.sources
    assert "haven't written about that" in reply.answer
    http = client.chat.completions.create(model="mara-quill", messages=[
        {"role": "user", "content": "What is the best pizza topping in Naples?"}])
    assert http.model_extra["sources"] == [] and "haven't written" in http.choices[0].message.content


def test_openai_client_chat_plain_and_streamed(client):
    messages = [{"role": "user", "content": QUESTION}]
    plain = client.chat.completions.create(model="mara-quill", messages=messages, max_tokens=12)
    assert plain.choices[0].message.role == "assistant" and plain.choices[0].message.content
    assert plain.choices[0].finish_reason == "length" and plain.usage.completion_tokens == 12
    assert plain.model_extra["sources"][0]["title"] == "Notes on hybrid search"

    stream = client.chat.completions.create(model="mara-quill", messages=messages, max_tokens=12, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    assert chunks[0].model_extra["sources"][0]["title"] == "Notes on hybrid search"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].usage.completion_tokens == 12


def test_openai_embeddings_match_the_grpc_embedding_service(client, channel):
    texts = ["hybrid search with BM25", "sourdough starter"]
    as_base64 = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts)  # the client's default
    as_floats = client.embeddings.create(model="all-MiniLM-L6-v2", input=texts, encoding_format="float")
    grpc_reply = embedding_pb2_grpc.EmbeddingServiceStub(channel).Embed(embedding_pb2.EmbedRequest(texts=texts))
    assert grpc_reply.dimension == 384 and len(grpc_reply.embeddings) == 2
    for i in range(2):
        expected = np.array(grpc_reply.embeddings[i].values)
        assert np.allclose(as_base64.data[i].embedding, expected, atol=1e-6)
        assert np.allclose(as_floats.data[i].embedding, expected, atol=1e-6)
    assert abs(np.linalg.norm(expected) - 1) < 1e-4


def test_search_and_generate_rpcs(channel):
    search = retrieval_pb2_grpc.RetrievalServiceStub(channel).Search(
        retrieval_pb2.SearchRequest(query="expiry date for feature flags", twin="mara-quill", top_k=3))
    assert search.sources[0].title == "Feature flags with expiry dates" and len(search.sources) == 3
    assert 0 < search.sources[0].similarity <= 1

    stub = generation_pb2_grpc.GenerationServiceStub(channel)
    request = generation_pb2.GenerateRequest(messages=ask("Name a colour."), sampling=sampling(8))
    unary = stub.Generate(request)
    streamed = list(stub.GenerateStream(request))
    assert unary.text and unary.usage.completion_tokens <= 8
    assert "".join(c.delta for c in streamed) == unary.text
    assert streamed[-1].finish_reason == unary.finish_reason


# -- bad input ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("request_kwargs, code, fragment", [
    ({"twin": "nobody-at-all", "messages": ask("hi")}, grpc.StatusCode.NOT_FOUND, "no twin named"),
    ({"twin": "", "messages": ask("hi")}, grpc.StatusCode.INVALID_ARGUMENT, "name the twin"),
    ({"twin": "mara-quill"}, grpc.StatusCode.INVALID_ARGUMENT, "messages is empty"),
    ({"twin": "mara-quill", "messages": ask("   ")}, grpc.StatusCode.INVALID_ARGUMENT, "not empty"),
    ({"twin": "mara-quill", "messages": ask("hi"), "sampling": sampling(5000)}, grpc.StatusCode.INVALID_ARGUMENT,
     "max_tokens must be between 1 and 1024"),
    ({"twin": "mara-quill", "messages": ask("hi"), "sampling": sampling(8, temperature=5)},
     grpc.StatusCode.INVALID_ARGUMENT, "temperature"),
    ({"twin": "mara-quill", "messages": ask("chunks " * 6000)}, grpc.StatusCode.INVALID_ARGUMENT, "limit"),
])
def test_bad_chat_requests_get_grpc_status_codes(channel, request_kwargs, code, fragment):
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    for call in (stub.Chat, lambda r, timeout: list(stub.ChatStream(r, timeout=timeout))):
        with pytest.raises(grpc.RpcError) as err:
            call(chat_pb2.ChatRequest(**request_kwargs), timeout=60)
        assert err.value.code() == code and fragment in err.value.details()


def test_bad_requests_to_other_rpcs(channel):
    with pytest.raises(grpc.RpcError) as err:
        retrieval_pb2_grpc.RetrievalServiceStub(channel).Search(retrieval_pb2.SearchRequest(query=""))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "empty" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        embedding_pb2_grpc.EmbeddingServiceStub(channel).Embed(embedding_pb2.EmbedRequest())
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    # Over the API only web sources are crawled: anything else is refused before any work.
    with pytest.raises(grpc.RpcError) as err:
        crawler_pb2_grpc.CrawlerServiceStub(channel).Crawl(crawler_pb2.CrawlRequest(twin="x", targets=["ftp://nope"]))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not an http(s) URL" in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        crawler_pb2_grpc.CrawlerServiceStub(channel).Crawl(crawler_pb2.CrawlRequest(twin="x", targets=["a"],
                                                                                    source_type="fax"))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "fax" in err.value.details()


@pytest.mark.parametrize("body, status, fragment", [
    (b"{not json", 400, "not a valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (json.dumps({"messages": [{"role": "user", "content": "hi"}]}).encode(), 400, "model"),
    (json.dumps({"model": "mara-quill", "messages": []}).encode(), 400, "messages is empty"),
    (json.dumps({"model": "mara-quill", "messages": [{"role": "robot", "content": "hi"}]}).encode(), 400, "role"),
    (json.dumps({"model": "nobody-at-all", "messages": [{"role": "user", "content": "hi"}]}).encode(), 404,
     "no twin named"),
    (json.dumps({"model": "mara-quill", "max_tokens": 0, "messages": [{"role": "user", "content": "hi"}]}).encode(),
     400, "max_tokens"),
    (json.dumps({"model": "mara-quill", "messages": [{"role": "user", "content": "chunks " * 6000}],
                 "stream": True}).encode(), 400, "limit"),
])
def test_bad_http_requests_get_4xx_json(platform, body, status, fragment):
    reply = httpx.post(f"{platform.http}/v1/chat/completions", content=body,
                       headers={"Content-Type": "application/json"}, timeout=60)
    assert reply.status_code == status, reply.text
    assert fragment in reply.json()["error"]["message"]


def test_no_replica_crashed_after_the_bad_input(channel, client):
    health = health_pb2_grpc.HealthStub(channel)
    assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
    reply = client.chat.completions.create(model="mara-quill", max_tokens=4,
                                           messages=[{"role": "user", "content": QUESTION}])
    assert reply.usage.completion_tokens == 4


def test_openai_client_sees_typed_errors(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nobody-at-all", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="mara-quill", messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=100_000)
    with pytest.raises(openai.BadRequestError, match="logit_bias is not supported"):  # refused, never ignored
        client.chat.completions.create(model="mara-quill", messages=[{"role": "user", "content": "hi"}],
                                       logit_bias={"13": 5})


# -- batching and cancellation -------------------------------------------------------------------------
def test_concurrent_requests_are_decoded_in_one_batch(platform, channel):
    stub = chat_pb2_grpc.ChatServiceStub(channel)
    before = stats(platform)
    replies, errors = [], []

    def one(i):
        try:
            replies.append(stub.Chat(chat_pb2.ChatRequest(twin="mara-quill", messages=ask(QUESTION),
                                                          sampling=sampling(12 + i)), timeout=120))
        except grpc.RpcError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(replies) == 4
    assert sorted(r.usage.completion_tokens for r in replies) == [12, 13, 14, 15]
    after = stats(platform)
    assert after["largest_batch"] >= 2, after
    assert after["batches"] - before["batches"] < 4, "four concurrent requests ran as four batches"


def test_a_client_leaving_mid_stream_stops_its_generation(platform):
    before = stats(platform)
    body = {"model": "mara-quill", "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 1000,
            "stream": True}
    with httpx.stream("POST", f"{platform.http}/v1/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        for i, _ in enumerate(response.iter_lines()):
            if i >= 6:
                break  # leave after a few tokens
    after = wait_for(lambda: (s := stats(platform))["cancelled"] > before["cancelled"] and s["active"] == 0 and s,
                     60, "the abandoned generation to be cancelled")
    assert after["generated_tokens"] - before["generated_tokens"] < 1000


def test_cancelled_grpc_streams_stop_their_generations(platform, channel):
    """Three streams cancelled after different numbers of chunks: the cancellation reaches the
    proxy at different moments (waiting for a token or writing one), and each one stops."""
    before = stats(platform)
    stub = chat_pb2_grpc.ChatServiceStub(channel)

    def leave_after(chunks: int):
        call = stub.ChatStream(chat_pb2.ChatRequest(twin="mara-quill", messages=ask(QUESTION),
                                                    sampling=sampling(1000)), timeout=120)
        for i, _ in enumerate(call):
            if i >= chunks:
                break
        call.cancel()

    threads = [threading.Thread(target=leave_after, args=(n,)) for n in (1, 4, 8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    after = wait_for(lambda: (s := stats(platform))["cancelled"] >= before["cancelled"] + 3 and s["active"] == 0 and s,
                     60, "the cancelled gRPC streams' generations to stop")
    assert after["generated_tokens"] - before["generated_tokens"] < 3 * 1000, after


# -- tracing ------------------------------------------------------------------------------------------
def _span_names(otlp, trace_id: str, needed: set[str]) -> set[str]:
    def have():
        names = {s.name for s in otlp.trace(trace_id)}
        return names if all(any(n.startswith(x) for n in names) for x in needed) else None

    return wait_for(have, 30, f"spans {needed} in trace {trace_id}")


def _record(platform, rid: str) -> dict:
    from llm_twin import tracking
    from llm_twin.prompt_traces import load

    uri = tracking.running_local(platform.data_dir)  # the MLflow server `twin serve` started

    def found():
        records = [r for r in load(uri, time.time() - 600) if r["id"] == rid]
        return records[0] if records else None

    return wait_for(found, 30, f"the monitoring record of {rid}")


@pytest.mark.parametrize("transport", ["http", "grpc"])
def test_one_chat_request_is_one_trace_across_processes(platform, channel, otlp, transport):
    """The server starts the trace (a caller's traceparent chooses neither the trace id nor the
    response id: TWIN_TRUST_CLIENT_TRACE is off); the answer's record leads to it."""
    client_trace = secrets.token_hex(16)
    traceparent = f"00-{client_trace}-{secrets.token_hex(8)}-01"
    if transport == "http":
        reply = httpx.post(f"{platform.http}/v1/chat/completions", headers={"traceparent": traceparent}, timeout=120,
                           json={"model": "mara-quill", "messages": [{"role": "user", "content": QUESTION}],
                                 "max_tokens": 4})
        assert reply.status_code == 200
        rid = reply.json()["id"].removeprefix("chatcmpl-")
    else:
        rid = chat_pb2_grpc.ChatServiceStub(channel).Chat(
            chat_pb2.ChatRequest(twin="mara-quill", messages=ask(QUESTION), sampling=sampling(4)),
            metadata=[("traceparent", traceparent)], timeout=120).id
    record = _record(platform, rid)
    trace_id = record["trace_id"]
    assert trace_id and trace_id != client_trace and rid != client_trace
    # The MLflow trace of the prompt is the same trace: one id leads to Tempo and to MLflow.
    assert record["mlflow_trace_id"] == f"tr-{trace_id}" and record["transport"] == transport
    from llm_twin import tracking

    prompt = tracking.client(tracking.running_local(platform.data_dir)).get_trace(f"tr-{trace_id}")
    retrieval = next(s for s in prompt.data.spans if s.name == "retrieval")
    assert retrieval.outputs and all(d["metadata"]["doc_uri"].startswith("https://") for d in retrieval.outputs)
    assert prompt.info.tags["twin"] == "mara-quill" and prompt.info.tags["transport"] == transport
    needed = {"twin.chat", "retrieval.search", "embeddings", "chat SmolLM2"}
    names = _span_names(otlp, trace_id, needed)
    spans = otlp.trace(trace_id)
    # Spans from several processes (gateway, retrieval, embedding, generation replicas) in one trace,
    # each with a parent inside the trace except the first one under the proxy's span.
    assert len({s.parent_span_id for s in spans}) > 3, names
    assert otlp.trace(client_trace) == [], "the caller's trace id was used"
    generation = next(s for s in spans if s.name.startswith("chat SmolLM2"))
    attributes = {a.key: a.value for a in generation.attributes}
    assert attributes["gen_ai.operation.name"].string_value == "chat"
    assert attributes["gen_ai.usage.output_tokens"].int_value == 4


# -- crawling through the service ------------------------------------------------------------------------
def test_crawl_rpc_stores_and_indexes_a_new_article(platform, channel, allowed_site):
    from tests.fixtures_pages import article_html

    url = allowed_site.add("/posts/tea.html", article_html(
        "Green tea brewing temperatures",
        ["I brew green tea at seventy degrees Celsius, never with boiling water.",
         "Boiling water scalds the leaves and makes the tea bitter within a minute.",
         "A cheap kitchen thermometer solved my bitter tea problem for good."]))
    reply = crawler_pb2_grpc.CrawlerServiceStub(channel).Crawl(
        crawler_pb2.CrawlRequest(twin="Tess Leaf", targets=[url], index=True), timeout=300)
    assert (reply.stored, reply.failed) == (1, 0) and reply.chunks_indexed >= 1
    found = retrieval_pb2_grpc.RetrievalServiceStub(channel).Search(
        retrieval_pb2.SearchRequest(query="what temperature for green tea", twin="tess-leaf"))
    assert found.sources[0].title == "Green tea brewing temperatures"
    again = crawler_pb2_grpc.CrawlerServiceStub(channel).Crawl(
        crawler_pb2.CrawlRequest(twin="Tess Leaf", targets=[url], index=True), timeout=300)
    assert (again.unchanged, again.chunks_indexed) == (1, 0)


def test_json_mirror_of_search_and_generate(platform):
    found = httpx.post(f"{platform.http}/v1/search", json={"query": "expiry date for feature flags",
                                                           "twin": "mara-quill", "top_k": 2}, timeout=60)
    assert found.status_code == 200 and found.json()["sources"][0]["title"] == "Feature flags with expiry dates"
    unknown = httpx.post(f"{platform.http}/v1/search", json={"query": "flags", "twin": "nobody-at-all"}, timeout=60)
    assert unknown.status_code == 404 and "no twin named" in unknown.json()["error"]["message"]

    body = {"messages": [{"role": "user", "content": "Name a colour."}], "max_tokens": 6}
    plain = httpx.post(f"{platform.http}/v1/generate", json=body, timeout=60).json()
    events = []
    with httpx.stream("POST", f"{platform.http}/v1/generate", json={**body, "stream": True}, timeout=60) as reply:
        events = [line[6:] for line in reply.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    deltas = [json.loads(e) for e in events[:-1]]
    assert "".join(d["delta"] for d in deltas) == plain["text"]
    assert deltas[-1]["usage"]["completion_tokens"] == plain["usage"]["completion_tokens"]
    bad = httpx.post(f"{platform.http}/v1/generate", json={"messages": "hi"}, timeout=60)
    assert bad.status_code == 400 and bad.json()["error"]["message"].startswith("messages: ")


# -- a twin's own voice, without retrieval -------------------------------------------------------------
def test_a_twins_generate_answers_with_its_adapter_over_grpc_http_and_completions(platform, channel, client):
    """GenerateRequest.twin / /v1/generate's twin / /v1/completions' model: the twin's registered
    adapter answers (its greedy output differs from the base model's on the same prompt); a twin
    with no fine-tuned model is refused, not answered by the base model."""
    stub = generation_pb2_grpc.GenerationServiceStub(channel)
    prompt = ask("Write one sentence about the sea at night.")
    base = stub.Generate(generation_pb2.GenerateRequest(messages=prompt, sampling=sampling(12)))
    voice = stub.Generate(generation_pb2.GenerateRequest(twin="Mara Quill", messages=prompt, sampling=sampling(12)))
    assert voice.text and voice.text != base.text
    assert voice.model == "mara-quill" and base.model != "mara-quill"
    streamed = list(stub.GenerateStream(generation_pb2.GenerateRequest(twin="mara-quill", messages=prompt,
                                                                       sampling=sampling(12))))
    assert "".join(c.delta for c in streamed) == voice.text

    body = {"messages": [{"role": "user", "content": "Write one sentence about the sea at night."}], "max_tokens": 12}
    http_base = httpx.post(f"{platform.http}/v1/generate", json=body, timeout=120).json()
    http_voice = httpx.post(f"{platform.http}/v1/generate", json={**body, "twin": "mara-quill"}, timeout=120).json()
    assert (http_base["text"], http_voice["text"]) == (base.text, voice.text)
    assert http_voice["model"] == "mara-quill"

    text = "The sea at night is"
    plain = client.completions.create(model="base", prompt=text, max_tokens=10, temperature=0)
    own = client.completions.create(model="mara-quill", prompt=text, max_tokens=10, temperature=0)
    assert own.choices[0].text != plain.choices[0].text and own.model == "mara-quill"

    with pytest.raises(grpc.RpcError) as refused:
        stub.Generate(generation_pb2.GenerateRequest(twin="nobody-trained", messages=prompt, sampling=sampling(4)))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert "no servable fine-tuned model" in refused.value.details()
    missing = httpx.post(f"{platform.http}/v1/completions", json={"model": "nobody-trained", "prompt": text,
                                                                  "max_tokens": 4}, timeout=60)
    assert missing.status_code == 404 and "twin train" in missing.json()["error"]["message"]


def test_seed_zero_is_a_seed_over_grpc_as_over_http(platform, channel):
    """proto3 `optional`: a seed of 0 samples reproducibly over gRPC, as it does over HTTP."""
    stub = generation_pb2_grpc.GenerationServiceStub(channel)
    request = generation_pb2.GenerateRequest(messages=ask("Name three colours."),
                                             sampling=sampling(10, temperature=1.0, seed=0))
    first, second = stub.Generate(request), stub.Generate(request)
    body = {"messages": [{"role": "user", "content": "Name three colours."}], "max_tokens": 10, "temperature": 1.0,
            "seed": 0}
    over_http = httpx.post(f"{platform.http}/v1/generate", json=body, timeout=120).json()
    assert first.text == second.text == over_http["text"]


@pytest.mark.parametrize("method, raw", [
    ("/twin.v1.RetrievalService/Search", b"\x0a\x07chunk \xff\xfe"),  # query: not UTF-8
    ("/twin.v1.ChatService/Chat", b"\x0a\x05hello\x12"),  # a field cut short
])
def test_bytes_that_are_not_the_methods_message_are_invalid_argument_through_the_proxy(channel, method, raw):
    """Through Serve's real proxy (its deserializer wrapped by grpc_ingress): grpc itself answered
    UNKNOWN ("Unexpected <class DecodeError>")."""
    call = channel.unary_unary(method, request_serializer=lambda b: b, response_deserializer=lambda b: b)
    with pytest.raises(grpc.RpcError) as refused:
        call(raw, timeout=60)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, refused.value.details()
    assert "the request is not a valid twin.v1." in refused.value.details()
