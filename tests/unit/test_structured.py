"""Structured output without a model: schemas checked where a request comes in, tool plans and the
calls read back from an answer, the choices of one request as one stream, chat templates that
declare tools, and the dataset's question check."""

from __future__ import annotations

import asyncio
import json

import pytest

from llm_twin.evaluation.judge import JUDGE_SCHEMA, parse_reply
from llm_twin.prompts import ChatTemplate
from services.gateway.status import InvalidRequest
from services.gateway.tool_calls import plan, read_calls
from services.generation.api import Delta, GenerationLimits
from services.generation.errors import InvalidGenerationRequest
from services.generation.streams import coalesced, collect_choices, interleaved
from services.generation.structured import canonical_schema
from training.datasets import QUESTION_SCHEMA, clean_instruction, question_problem

WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Forecast.", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
NOTE = {"type": "function", "function": {"name": "save_note", "parameters": {
    "type": "object", "properties": {"text": {"type": "string"}}}}}


def test_keywords_that_constrain_nothing_are_dropped_not_refused():
    text = canonical_schema({"type": "object", "properties": {"uniqueItems": {"type": "array", "uniqueItems": False}}})
    assert json.loads(text) == {"type": "object", "properties": {"uniqueItems": {"type": "array"}}}


def test_a_schema_keeps_its_key_order_and_every_platform_schema_compiles():
    text = canonical_schema('{"type": "object", "properties": {"z": {"type": "string"}, "a": {"type": "number"}}}')
    assert text.index('"z"') < text.index('"a"')  # properties are generated in the order given
    for schema in (JUDGE_SCHEMA, QUESTION_SCHEMA):
        assert json.loads(canonical_schema(schema)) == schema


@pytest.mark.parametrize("schema, fragment", [
    ({"type": "array", "uniqueItems": True}, "uniqueItems"),
    ({"type": "object", "if": {"required": ["a"]}, "then": {}}, "if"),
    ({"not": {"type": "string"}}, "not"),
    ({"type": "array", "contains": {"type": "integer"}}, "contains"),
    ({"type": "object", "dependentRequired": {"a": ["b"]}}, "dependentRequired"),
    ({"type": "string", "pattern": "(?<=a)b"}, "look"),
    ({"$ref": "https://example.com/x.json"}, "example.com"),
    ({"type": "nonsense"}, "nonsense"),
    ([1, 2], "must be a JSON object"),
    ("{not json", "is not JSON"),
    ({"type": "string", "description": "x" * 40_000}, "the limit is"),
])
def test_a_schema_the_grammar_cannot_hold_is_refused_naming_why(schema, fragment):
    with pytest.raises(InvalidGenerationRequest, match="^response_format") as refused:
        GenerationLimits().params(json_schema=schema, schema_field="response_format.json_schema.schema")
    assert fragment in str(refused.value)


def test_n_is_bounded_by_the_limits():
    assert GenerationLimits(max_choices=2).params(n=2).n == 2
    with pytest.raises(InvalidGenerationRequest, match="n must be between 1 and 2"):
        GenerationLimits(max_choices=2).params(n=3)


def test_tool_plans():
    named = plan([WEATHER, NOTE], {"type": "function", "function": {"name": "save_note"}}, None, None, "m")
    assert named.mode == "named" and named.schema == NOTE["function"]["parameters"]
    required = plan([WEATHER, NOTE], "required", False, None, "m")
    assert required.schema["maxItems"] == 1 and len(required.schema["items"]["anyOf"]) == 2
    assert plan([WEATHER], "required", None, None, "m").schema["maxItems"] == 1  # one call per function at most
    assert plan([WEATHER], "none", None, None, "m") is None and plan(None, None, None, None, "m") is None
    assert plan([WEATHER], "auto", None, "hermes", "m").mode == "auto"
    for tools, choice, fragment in [([WEATHER], None, "declares tool calling"), ([WEATHER], "sometimes", "tool_choice"),
                                    (None, "required", "needs tools"), ([WEATHER, WEATHER], "required", "twice"),
                                    ([{"type": "retrieval"}], "required", "tools[0]")]:
        with pytest.raises(InvalidRequest) as refused:
            plan(tools, choice, None, None, "SmolLM2")
        assert fragment in str(refused.value)


def test_calls_are_read_back_from_the_answer():
    named = plan([WEATHER], {"type": "function", "function": {"name": "get_weather"}}, None, None, "m")
    content, calls = read_calls(named, '{"city": "Lyon"}')
    assert content is None and calls[0]["function"] == {"name": "get_weather", "arguments": '{"city": "Lyon"}'}
    assert read_calls(named, '{"city": "Ly') == ('{"city": "Ly', [])  # cut by max_tokens: left as text
    required = plan([WEATHER, NOTE], "required", None, None, "m")
    _, calls = read_calls(required, '[{"name": "save_note", "arguments": {"text": "hi"}}]')
    assert calls[0]["function"]["name"] == "save_note" and json.loads(calls[0]["function"]["arguments"]) == {
        "text": "hi"}
    auto = plan([WEATHER], "auto", None, "hermes", "m")
    content, calls = read_calls(auto, 'Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": '
                                      '{"city": "Oslo"}}\n</tool_call>\n<tool_call>{"name": "unknown", '
                                      '"arguments": {}}</tool_call>')
    assert [c["function"]["name"] for c in calls] == ["get_weather"] and content == "Let me check."
    assert read_calls(auto, "It is sunny.") == ("It is sunny.", [])


class Tokenizer:
    def __init__(self, template: str):
        self.chat_template = template
        self.all_special_tokens = []
        self.seen = None

    def get_added_vocab(self):
        return {}

    def apply_chat_template(self, messages, tools=None, add_generation_prompt=True, tokenize=False):
        self.seen = (messages, tools)
        return json.dumps(messages)


def test_a_template_that_declares_tools_renders_them_and_one_that_does_not_gets_them_described():
    hermes = ChatTemplate(Tokenizer("{% if tools %}<tools>{{ tools }}</tools>{% endif %} <tool_call>"))
    assert hermes.tool_format == "hermes"
    hermes.render([{"role": "user", "content": "hi"}], [WEATHER["function"]])
    assert hermes.tokenizer.seen[1] == [WEATHER]
    plain = ChatTemplate(Tokenizer("{% for m in messages %}{{ m.content }}{% endfor %}"))
    assert plain.tool_format is None
    plain.render([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
                 [WEATHER["function"]])
    messages, tools = plain.tokenizer.seen
    assert tools is None and "get_weather" in messages[0]["content"] and messages[0]["content"].startswith("Be brief.")


async def _deltas(texts, fail_at=None):
    for i, text in enumerate(texts):
        if i == fail_at:
            raise RuntimeError("engine broke")
        yield Delta(text, "stop" if i == len(texts) - 1 else None, 3, i + 1)


def test_choices_interleave_into_one_stream_and_join_back():
    async def run():
        merged = interleaved([_deltas(["a", "b"]), _deltas(["c", "d", "e"])])
        return await collect_choices(coalesced(merged, 10.0))

    choices = asyncio.run(run())
    assert [(text, last.index, last.finish_reason) for text, last in choices] == [("ab", 0, "stop"),
                                                                                   ("cde", 1, "stop")]


def test_an_error_in_one_choice_ends_the_stream_with_it():
    async def run():
        return await collect_choices(interleaved([_deltas(["a", "b", "c"]), _deltas(["x", "y"], fail_at=1)]))

    with pytest.raises(RuntimeError, match="engine broke"):
        asyncio.run(run())


def test_parse_reply_reads_what_the_judge_schema_asks_for():
    reply = {"faithfulness": 0.5, "answer_relevance": 1, "context_precision": 0.25, "accuracy": 2, "style": 3,
             "reason": "ok"}
    assert parse_reply(json.dumps(reply))["accuracy"] == 2


@pytest.mark.parametrize("question, passage, problem", [
    ("How does the feature pipeline store embeddings?", "Our feature pipeline writes embeddings to Qdrant.", None),
    ("The answer to this puzzle would be X?", "Puzzles.", "a reply"),
    ("What does the passage say about caching?", "Caching layers.", "about the passage"),
    ("What is love?", "Vector databases index embeddings.", "no content word"),
    ("Sure, here it is?", "Sure.", "a reply"),
])
def test_the_dataset_keeps_questions_about_the_passage(question, passage, problem):
    found = question_problem(question, passage)
    assert (found is None) if problem is None else (problem in found)


def test_instructions_are_read_from_the_schema_reply_or_from_text():
    assert clean_instruction('{"question": "Why use hybrid search?"}') == "Why use hybrid search?"
    assert clean_instruction("Question: Why shard a vector index? Because.") == "Why shard a vector index?"
    assert clean_instruction('{"question": ') is None


def test_the_json_tail_knows_strings_escapes_and_numbers():
    from services.generation.engines.transformers.guided import JsonTail

    texts = ('{"a": "b', '{"a": "b"', '{"a": "b\\', '{"a": "b\\"', '{"a": "b\\\\')
    assert [JsonTail().update(t).state() for t in texts] == [1, 0, None, 1, 1]
    tail = JsonTail().update('{"score": 0.56666')
    assert tail.state() == 0 and tail.number_chars == 7
    assert tail.update('{"score": 0.56666, "n": "12').number_chars == 0  # digits inside a string are text


class _Endpoint:
    """An OpenAI-compatible endpoint on 127.0.0.1 that refuses response_format (as some do) and
    otherwise answers with ``reply``; it records what it was sent."""

    def __init__(self, reply: str):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        bodies = self.bodies = []

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                bodies.append(body)
                if "response_format" in body:
                    status, out = 400, {"error": {"message": "response_format is not supported", "type": "x"}}
                else:
                    status, out = 200, {"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                                        "choices": [{"index": 0, "finish_reason": "stop",
                                                     "message": {"role": "assistant", "content": reply}}]}
                data = json.dumps(out).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def test_the_judge_asks_through_its_schema_and_falls_back_where_the_endpoint_refuses_it():
    from llm_twin.evaluation.judge import LLMJudge

    scores = {"faithfulness": 1, "answer_relevance": 0.5, "context_precision": 1, "accuracy": 3, "style": 2,
              "reason": "fine"}
    endpoint = _Endpoint(json.dumps(scores))
    try:
        judge = LLMJudge(endpoint.url, "m")
        first = judge.judge("Why?", "Because.", ["A passage."], "Mara")
        second = judge.judge("How?", "Like so.", ["A passage."], "Mara")
    finally:
        endpoint.server.shutdown()
    assert first.scores["style"] == 2 and second.scores["answer_relevance"] == 0.5
    sent = [b.get("response_format", {}).get("json_schema", {}).get("schema") for b in endpoint.bodies]
    assert sent == [JUDGE_SCHEMA, None, None]  # asked through the schema once, then in plain text


def test_an_external_teacher_asks_through_the_schema_and_falls_back():
    from training.datasets import OpenAITeacher

    endpoint = _Endpoint('{"question": "Why cache embeddings?"}')
    try:
        teacher = OpenAITeacher(endpoint.url, "m", concurrency=1)
        replies = teacher.complete([[{"role": "user", "content": "passage"}]] * 2, 40, json_schema=QUESTION_SCHEMA)
    finally:
        endpoint.server.shutdown()
    assert [clean_instruction(r) for r in replies] == ["Why cache embeddings?"] * 2
    assert "response_format" in endpoint.bodies[0] and "response_format" not in endpoint.bodies[-1]


def test_building_the_grammar_tables_leaves_no_helper_threads_behind(smol_model):
    """The closers' vocabulary-sized torch ops run in a thread of their own: the calling thread (a
    replica's main or event-loop thread) must not keep OpenMP helpers, or libgomp stops spinning for
    the decode thread's team and every decode step pays futex wake-ups (served decode ran at half
    speed). Threads are counted, not timed, in a process of its own: in the test session's process,
    other tests' background threads come and go (a CI run counted two more that were not helpers)."""
    import subprocess
    import sys
    from pathlib import Path

    script = f"""
import os, threading
import torch
from transformers import AutoTokenizer
from services.generation.engines.transformers.guided import Guides
torch.set_num_threads(2)
tokenizer = AutoTokenizer.from_pretrained({str(smol_model)!r})
guides = Guides(tokenizer, len(tokenizer))
counts = []
def long_lived_caller():  # a fresh thread, as an event loop's worker is: no helpers of its own yet
    counts.append(len(os.listdir("/proc/self/task")))
    guides.warm()
    guides.matcher('{{"type": "object", "properties": {{"n": {{"type": "integer"}}}}}}')
    counts.append(len(os.listdir("/proc/self/task")))
caller = threading.Thread(target=long_lived_caller)
caller.start()
caller.join()
print(counts[0], counts[1])
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).resolve().parents[2])
    assert done.returncode == 0, done.stderr[-2000:]
    before, after = map(int, done.stdout.split()[-2:])
    assert before == after, "the caller kept OpenMP helper threads"


def test_a_schema_no_finite_document_matches_is_refused_before_decoding(smol_model):
    """It compiles, but no token may start an answer: refused as the caller's (a 400 naming it), where
    it used to fail in the decode loop and come back as a 503 carrying the parser's state dump."""
    import json

    from transformers import AutoTokenizer

    from services.generation.engines.transformers.guided import Guides
    from services.generation.errors import InvalidGenerationRequest

    tokenizer = AutoTokenizer.from_pretrained(smol_model)
    guides = Guides(tokenizer, len(tokenizer))
    with pytest.raises(InvalidGenerationRequest, match="matches no finite JSON document") as refused:
        guides.matcher(json.dumps({"$ref": "#/$defs/x", "$defs": {"x": {"$ref": "#/$defs/x"}}}, separators=(",", ":")))
    assert "\n" not in str(refused.value) and "num_lex_errors" not in str(refused.value)
    assert guides.matcher('{"type":"object","properties":{"a":{"type":"integer"}}}') is not None
