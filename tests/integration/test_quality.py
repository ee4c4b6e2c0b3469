"""Answers measured and watched, against a real `twin serve` (the session's platform): follow-up
questions retrieve in context, the OpenAI API honours stop/logprobs/penalties/top_k and refuses
what it does not do, every answer leaves a monitoring record that feedback joins, and
`twin eval rag` judges answers with the platform itself, a garbage judge, or no judge."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
import httpx
import openai
import pytest
from click.testing import CliRunner

from twin.v1 import chat_pb2, chat_pb2_grpc, common_pb2
from twin_cli.main import main

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

TOPIC = "What is a Kubernetes operator?"
FOLLOW_UP = "Why does that matter?"


@pytest.fixture(scope="module")
def client(platform):
    return openai.OpenAI(base_url=f"{platform.http}/v1", api_key="unused", timeout=120, max_retries=0)


def twin(platform, *args):
    result = CliRunner().invoke(main, ["--data-dir", str(platform.data_dir), *args], catch_exceptions=False)
    return result


# -- retrieval in context ----------------------------------------------------------------------------
def test_a_follow_up_retrieves_the_passage_of_the_question_it_follows(client, platform):
    conversation = [{"role": "user", "content": TOPIC},
                    {"role": "assistant", "content": "A loop that compares what you asked for with what exists."},
                    {"role": "user", "content": FOLLOW_UP}]
    reply = client.chat.completions.create(model="mara-quill", messages=conversation, max_tokens=4)
    assert reply.model_extra["sources"][0]["title"] == "Kubernetes operators for humans"
    alone = client.chat.completions.create(model="mara-quill", messages=conversation[-1:], max_tokens=4)
    titles = [s["title"] for s in alone.model_extra["sources"]]
    assert titles[:1] != ["Kubernetes operators for humans"]  # the follow-up alone is about nothing
    with grpc.insecure_channel(platform.grpc) as channel:
        grpc_reply = chat_pb2_grpc.ChatServiceStub(channel).Chat(chat_pb2.ChatRequest(
            twin="mara-quill", messages=[common_pb2.ChatMessage(**m) for m in conversation]))
    assert grpc_reply.sources[0].title == "Kubernetes operators for humans"


# -- an honest OpenAI API ------------------------------------------------------------------------------
@pytest.mark.parametrize("question", ["How should I train for my first marathon?",
                                      "Which strings should I buy to tune my guitar?",
                                      "Our Kafka consumers keep rebalancing during every deploy; how do we fix it?"])
def test_off_topic_questions_sharing_words_with_the_writing_are_declined(client, platform, question):
    """"training", "first" and "tune" appear in the twin's posts; the decision is about the topic.
    The Kafka question's asking clause alone ("how do we fix it?") is answered in process (0.85),
    but the question's meaning sits in its opening (retrieval.min_asking_lead)."""
    reply = client.chat.completions.create(model="mara-quill", max_tokens=8,
                                           messages=[{"role": "user", "content": question}])
    # OpenAI's wire has no "no_sources": a decline is a normal stop, with no sources and the twin saying so.
    assert reply.model_extra["sources"] == [] and "haven't written" in reply.choices[0].message.content
    with grpc.insecure_channel(platform.grpc) as channel:
        chat = chat_pb2_grpc.ChatServiceStub(channel).Chat(chat_pb2.ChatRequest(
            twin="mara-quill", messages=[common_pb2.ChatMessage(role="user", content=question)]))
    assert chat.finish_reason == "no_sources" and not chat.sources


@pytest.mark.parametrize("question, link", [
    ("Priya from Lisbon here: how do you write a blameless postmortem?", "https://mara.example/blameless-postmortems"),
    ("We're a team of five at a bakery startup in Porto; why keep a build log?", "https://mara.example/why-i-keep-a-build-log"),
    # Declined as a whole (0.24 in process): answered on its asking clause, the opening being context.
    ("We sell second-hand furniture online, ship 200 sofas a week from a warehouse near Lyon and answer customers "
     "in four languages; how should we cut our documents into chunks?",
     "https://mara.example/chunking-is-a-product-decision"),
])
def test_a_question_opening_with_who_asks_is_answered_from_the_post_on_its_subject(client, platform, question, link):
    """The asker's name, city and company are in no passage; the served decision (the retrieval
    replica embeds the question without each of its words in the query's one call to the embedding
    replica, for the weighted coverage, and an asking clause's opening and whole question with it)
    still answers from the post on the subject."""
    reply = client.chat.completions.create(model="mara-quill", max_tokens=8,
                                           messages=[{"role": "user", "content": question}])
    assert reply.model_extra["sources"] and reply.model_extra["sources"][0]["link"] == link


def test_a_follow_up_with_no_pointer_word_is_answered_from_the_post_it_follows(client, platform):
    conversation = [{"role": "user", "content": "How do you write a blameless postmortem?"},
                    {"role": "assistant", "content": "Timeline first, then at most three actions."},
                    {"role": "user", "content": "Who should own each action item?"}]
    reply = client.chat.completions.create(model="mara-quill", max_tokens=8, messages=conversation)
    assert reply.model_extra["sources"][0]["link"] == "https://mara.example/blameless-postmortems"
    # Alone, with nothing before it, the same words are not enough to speak in the author's name.
    alone = client.chat.completions.create(model="mara-quill", max_tokens=8, messages=conversation[-1:])
    assert alone.model_extra["sources"] == [] and "haven't written" in alone.choices[0].message.content
    with grpc.insecure_channel(platform.grpc) as channel:
        chat = chat_pb2_grpc.ChatServiceStub(channel).Chat(chat_pb2.ChatRequest(
            twin="mara-quill", messages=[common_pb2.ChatMessage(**m) for m in conversation]))
    assert chat.finish_reason != "no_sources" and chat.sources[0].link == reply.model_extra["sources"][0]["link"]


def test_an_unrelated_question_after_a_topic_is_declined_not_answered_from_the_topic(client, platform):
    """Searched with the topic in front, any question finds the topic's post; the question's own
    words are nowhere near it, so the twin declines instead of answering in the author's name."""
    for topic, question in (("What is a Kubernetes operator?", "What's a good name for a cat?"),
                            ("Why keep a build log?", "Where should I go on holiday in June?")):
        conversation = [{"role": "user", "content": topic}, {"role": "assistant", "content": "In short: ..."},
                        {"role": "user", "content": question}]
        reply = client.chat.completions.create(model="mara-quill", max_tokens=8, messages=conversation)
        assert reply.model_extra["sources"] == [] and "haven't written" in reply.choices[0].message.content
        with grpc.insecure_channel(platform.grpc) as channel:
            chat = chat_pb2_grpc.ChatServiceStub(channel).Chat(chat_pb2.ChatRequest(
                twin="mara-quill", messages=[common_pb2.ChatMessage(**m) for m in conversation]))
        assert chat.finish_reason == "no_sources" and not chat.sources


def test_stop_strings_cut_the_answer_across_token_boundaries_plain_and_streamed(client):
    messages = [{"role": "user", "content": "Why combine BM25 with embeddings?"}]
    full = client.chat.completions.create(model="mara-quill", messages=messages,
                                          max_tokens=24).choices[0].message.content
    assert len(full) > 12
    stop = full[5:11]  # six characters from inside the answer: most likely spans two tokens
    cut = client.chat.completions.create(model="mara-quill", messages=messages, max_tokens=24, stop=[stop, "@@@"])
    assert cut.choices[0].message.content == full[:full.index(stop)] and cut.choices[0].finish_reason == "stop"
    stream = client.chat.completions.create(model="mara-quill", messages=messages, max_tokens=24, stop=stop,
                                            stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == full[:full.index(stop)]
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]


def test_logprobs_and_top_logprobs(client):
    reply = client.chat.completions.create(model="mara-quill", max_tokens=6, logprobs=True, top_logprobs=3,
                                           messages=[{"role": "user", "content": "Why combine BM25 with embeddings?"}])
    items = reply.choices[0].logprobs.content
    assert len(items) == reply.usage.completion_tokens == 6
    for item in items:  # greedy: the chosen token is the likeliest
        assert len(item.top_logprobs) == 3 and item.logprob <= 0
        assert item.token == item.top_logprobs[0].token and abs(item.logprob - item.top_logprobs[0].logprob) < 1e-5
    assert "".join(i.token for i in items) == reply.choices[0].message.content
    plain = client.chat.completions.create(model="mara-quill", max_tokens=2,
                                           messages=[{"role": "user", "content": "Why combine BM25 with embeddings?"}])
    assert plain.choices[0].logprobs is None


def test_penalties_and_sampling_top_k_are_honoured(client):
    prompt = "List the days of the week: Monday, Monday, Monday,"

    def answer(temperature=0.0, **extra):
        return client.completions.create(model="base", prompt=prompt, max_tokens=16, temperature=temperature, seed=7,
                                         extra_body={"repetition_penalty": 1.0, **extra}).choices[0].text
    greedy = answer()
    assert answer(frequency_penalty=2.0) != greedy and answer(presence_penalty=2.0) != greedy
    # top_k=1 leaves only the likeliest token to sample: even at temperature 1.5 that is the greedy answer.
    assert answer(1.5, top_k=1) == greedy
    assert answer(1.5, top_k=-1) != greedy or answer(1.5, top_k=0) != greedy  # -1/0: no limit


def test_text_completions_with_stop_and_streaming(client):
    full = client.completions.create(model="base", prompt="Hybrid search combines", max_tokens=12).choices[0]
    assert full.text and full.finish_reason == "length"
    stream = list(client.completions.create(model="base", prompt="Hybrid search combines", max_tokens=12, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in stream if c.choices) == full.text
    assert stream[-1].choices == [] and stream[-1].usage.completion_tokens == 12  # include_usage is honoured
    with pytest.raises(openai.BadRequestError, match="echo"):
        client.completions.create(model="base", prompt="x", echo=True)


def test_a_completions_prompt_is_tokenized_as_written_control_tokens_included(client, smol_model):
    """/v1/completions takes the caller's whole prompt: one the client rendered with the chat
    template reaches the model as that template (each marker one token, as vLLM and llama-server
    read it), not as the marker's characters (the chat routes keep those as text: test_attacks)."""
    from transformers import AutoTokenizer

    from llm_twin.prompts import ChatTemplate

    template = ChatTemplate(AutoTokenizer.from_pretrained(smol_model))
    rendered = template.render([{"role": "user", "content": "How should I cut documents into chunks?"}])
    assert "<|im_start|>" in rendered
    reply = client.completions.create(model="base", prompt=rendered, max_tokens=4,
                                      extra_body={"repetition_penalty": 1.0})
    assert reply.usage.prompt_tokens == template.count_tokens(rendered)
    as_text = client.completions.create(model="base", prompt=rendered.replace("<|im_start|>", "<|im_ start|>"),
                                        max_tokens=4, extra_body={"repetition_penalty": 1.0})
    assert as_text.usage.prompt_tokens > reply.usage.prompt_tokens  # the characters cost tokens; a marker one


@pytest.mark.parametrize("field, value", [
    ("logit_bias", {"1": 5}), ("tools", [{"type": "function", "function": {"name": "f", "parameters": {}}}]),
    ("n", 99),
])
def test_what_is_not_implemented_is_refused_naming_the_field(client, field, value):
    """(response_format, tools with a forced call and n are served: tests/integration/test_structured.py;
    tools with the default tool_choice "auto" need a template that declares tools, which SmolLM2's does not.)"""
    with pytest.raises(openai.BadRequestError, match=field if field != "n" else "n must be between 1 and"):
        client.chat.completions.create(model="mara-quill", messages=[{"role": "user", "content": "hi"}],
                                       **{field: value})


# -- monitoring and feedback -------------------------------------------------------------------------
def test_monitor_shows_a_chat_with_its_tokens_latencies_sources_and_feedback(client, platform):
    reply = client.chat.completions.create(model="mara-quill", max_tokens=8,
                                           messages=[{"role": "user", "content": "Why keep a build log?"}])
    rid = reply.id.removeprefix("chatcmpl-")
    answer = httpx.post(f"{platform.http}/v1/feedback", json={"response_id": reply.id, "score": -1,
                                                              "comment": "too short"}, timeout=30)
    assert answer.status_code == 200, answer.text
    with grpc.insecure_channel(platform.grpc) as channel:
        stub = chat_pb2_grpc.ChatServiceStub(channel)
        chat = stub.Chat(chat_pb2.ChatRequest(twin="mara-quill", messages=[
            common_pb2.ChatMessage(role="user", content="How do you chunk prose?")]))
        assert len(chat.id) == 32
        assert stub.Feedback(chat_pb2.FeedbackRequest(response_id=chat.id, score=1)).response_id == chat.id
        with pytest.raises(grpc.RpcError) as bad:
            stub.Feedback(chat_pb2.FeedbackRequest(response_id=chat.id, score=5))
        assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "score" in bad.value.details()
        with pytest.raises(grpc.RpcError) as unknown:
            stub.Feedback(chat_pb2.FeedbackRequest(response_id="f" * 32, score=1))
        assert unknown.value.code() == grpc.StatusCode.NOT_FOUND

    deadline, found = time.monotonic() + 30, {}
    while time.monotonic() < deadline:
        result = twin(platform, "monitor", "--json", "--records", "--since", "1h", "--twin", "Mara Quill")
        assert result.exit_code == 0, result.output
        summary = json.loads(result.output)
        found = {r["id"]: r for r in summary["records"]}
        if rid in found and found[rid]["feedback"] and chat.id in found and found[chat.id]["feedback"]:
            break
        time.sleep(1)
    record = found[rid]
    assert record["question"] == "Why keep a build log?" and record["answer"] == reply.choices[0].message.content
    assert record["completion_tokens"] == reply.usage.completion_tokens and record["prompt_tokens"] > 0
    assert 0 < record["ttft_s"] <= record["latency_s"] and record["transport"] == "http"
    assert record["sources"][0]["link"] == reply.model_extra["sources"][0]["link"]
    assert record["feedback"] == [{"score": -1, "comment": "too short"}]
    assert found[chat.id]["transport"] == "grpc" and found[chat.id]["feedback"] == [{"score": 1, "comment": ""}]
    assert summary["requests"] >= 2 and summary["feedback"]["count"] >= 2 and summary["latency_s"]["p95"] > 0
    human = twin(platform, "monitor", "--since", "1h")
    assert "requests" in human.output and "first token p50" in human.output


# -- twin eval rag ---------------------------------------------------------------------------------------
QUESTIONS = [
    {"question": "Why fuse dense embeddings with BM25?", "author": "Mara Quill", "kind": "paraphrase",
     "gold_links": ["https://mara.example/hybrid-search-notes"]},
    {"question": "Why does that matter?", "author": "Mara Quill", "kind": "follow-up",
     "conversation": [{"role": "user", "content": TOPIC}, {"role": "assistant", "content": "A reconcile loop."}],
     "gold_links": ["https://mara.example/kubernetes-operators-for-humans"]},
]


@pytest.fixture
def question_file(tmp_path):
    path = tmp_path / "questions.jsonl"
    path.write_text("".join(json.dumps(q) + "\n" for q in QUESTIONS))
    return path


class GarbageJudge:
    """An OpenAI-compatible endpoint whose replies are never the JSON asked for."""

    def __init__(self):
        self.requests = 0
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                self.rfile.read(int(self.headers.get("content-length", 0)))
                judge.requests += 1
                body = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "garbage",
                                   "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                       "role": "assistant", "content": "Verdict: {great, 7/10}"}}]}).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"


def test_eval_rag_with_the_platform_itself_as_the_judge(platform, question_file, tmp_path):
    # One question at a time, as below: the test adapter's answers are near-ties at every token, so a
    # question batched with the other's judge call can come out differently (once an immediate end).
    out = tmp_path / "rows.jsonl"
    result = twin(platform, "eval", "rag", "--questions", str(question_file), "--url", platform.http,
                  "--judge-url", f"{platform.http}/v1", "--judge-model", "mara-quill", "--max-tokens", "16",
                  "--out", str(out), "--json", "--concurrency", "1")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["n"] == 2 and summary["judge"].startswith("llm:mara-quill@") and not summary["fallback"]
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["kind"] for r in rows] == ["paraphrase", "follow-up"]
    assert any(row["answer"].strip() for row in rows)
    for row in rows:  # a 135M twin is a poor judge: scored or recorded as unscored, never a crash
        assert row["scores"]["context_recall"] == 1.0
        assert "faithfulness" in row["scores"] or row["error"].startswith("unscored")
        if not row["answer"].strip():  # an empty answer never reaches the judge
            assert row["error"] == "unscored: empty answer" and "faithfulness" not in row["scores"]
    assert json.loads(out.with_suffix(".summary.json").read_text())["n"] == 2


def test_eval_rag_with_a_judge_that_answers_garbage_records_unscored(platform, question_file, tmp_path):
    # One question at a time, as above: batched, an answer can come out empty and never reach the judge.
    # A row that is neither (a chat that failed, no sources) shows in the assertion's message.
    judge = GarbageJudge()
    out = tmp_path / "rows.jsonl"
    result = twin(platform, "eval", "rag", "--questions", str(question_file), "--url", platform.http,
                  "--judge-url", judge.url, "--judge-model", "garbage", "--max-tokens", "8", "--out", str(out),
                  "--json", "--concurrency", "1")
    judge.server.shutdown()
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert summary["unscored"] == 2 and summary["scored"] == 0, rows
    assert judge.requests == 4, rows  # each question asked twice: one retry, then unscored
    assert all("not valid JSON" in r["error"] for r in rows)


def test_eval_rag_without_a_judge_uses_labelled_embedding_fallbacks(platform, question_file, tmp_path):
    # One question at a time: the test adapter's answers are near-ties at every token, so a question
    # batched with another can come out differently (once as an immediate end: an empty answer).
    result = twin(platform, "eval", "rag", "--questions", str(question_file), "--url", platform.http,
                  "--max-tokens", "16", "--out", str(tmp_path / "rows.jsonl"), "--json", "--concurrency", "1")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    rows = [json.loads(line) for line in (tmp_path / "rows.jsonl").read_text().splitlines()]
    answered = [r for r in rows if r["answer"].strip()]
    # An empty answer has nothing for the embedding to score: it is counted unscored, not invented.
    assert all(r["error"] == "unscored: empty answer" for r in rows if r not in answered)
    assert summary["fallback"] and summary["judge"] == "embedding-fallback"
    assert answered and summary["scored"] == len(answered) and summary["unscored"] == len(rows) - len(answered)
    assert 0 < summary["scores"]["answer_relevance"] <= 1 and summary["scores"]["context_recall"] == 1.0
    assert "accuracy" not in summary["scores"]  # needs a judge: not invented


def test_eval_rag_names_the_fix_when_the_server_is_not_there(platform, question_file):
    result = twin(platform, "eval", "rag", "--questions", str(question_file), "--url", "http://127.0.0.1:9",
                  "--max-tokens", "4")
    assert result.exit_code == 1 and "is `twin serve` running?" in result.output
