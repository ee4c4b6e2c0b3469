"""Structured generation over the real serving plane (the session's `twin serve`, SmolLM2-135M):
with the official `openai` client, every answer asked for as JSON parses and validates against
its schema, on every prompt of a set, streamed and not; tool calls come back as ``tool_calls``;
``n`` gives that many choices; what the grammar cannot express is a 400 naming why.

The prompts here are not the ones the feature was developed against (those are in
twin_cli/bench_structured.py); none of them is tuned for the model.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import grpc
import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from twin.v1 import common_pb2, generation_pb2, generation_pb2_grpc

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

PROMPTS = ["Describe a weekend trip to the mountains.", "List what a data engineer does on Monday mornings.",
           "Tell me about a book you would recommend to a new manager.", "hi",
           "Summarise why unit tests matter, for a sceptical colleague."]


class Venue(BaseModel):
    city: str
    indoor: bool


class Talk(BaseModel):
    title: str
    level: Literal["beginner", "intermediate", "advanced"]
    minutes: int = Field(ge=5, le=90)


class Conference(BaseModel):
    name: str
    venue: Venue
    talks: list[Talk] = Field(min_length=1, max_length=3)
    tags: list[str] = Field(max_length=4)


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather forecast for a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 60},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 7}},
        "required": ["city", "unit", "days"], "additionalProperties": False}}}
NOTE = {"type": "function", "function": {
    "name": "save_note", "description": "Saves a short note.",
    "parameters": {"type": "object", "properties": {"text": {"type": "string", "maxLength": 120}},
                   "required": ["text"]}}}


@pytest.fixture(scope="module")
def channel(platform):
    with grpc.insecure_channel(platform.grpc) as ch:
        yield ch


@pytest.fixture(scope="module")
def client(platform):
    return openai.OpenAI(base_url=f"{platform.http}/v1", api_key="unused", timeout=300, max_retries=0)


def each_prompt(call):
    """``call(prompt)`` for every prompt at once: the platform decodes them as one batch."""
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        return list(pool.map(call, PROMPTS))


def streamed_text(stream) -> tuple[str, list[str]]:
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return text, [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]


@pytest.mark.parametrize("stream", [False, True])
def test_json_object_answers_parse_on_every_prompt(client, stream):
    def ask(prompt):
        reply = client.chat.completions.create(model="base", messages=[{"role": "user", "content": prompt}],
                                               response_format={"type": "json_object"}, max_tokens=200,
                                               stream=stream)
        return streamed_text(reply) if stream else (reply.choices[0].message.content,
                                                    [reply.choices[0].finish_reason])

    for text, reasons in each_prompt(ask):
        assert reasons == ["stop"], text
        assert isinstance(json.loads(text), dict)


@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_answers_validate_on_every_prompt(client, stream):
    """Nested objects, an enum, arrays with bounds, required fields: the official client's
    ``parse`` with a pydantic model (strict json_schema), and the same schema streamed."""
    schema = Conference.model_json_schema()

    def ask(prompt):
        messages = [{"role": "user", "content": f"Invent a conference. {prompt}"}]
        if not stream:
            reply = client.chat.completions.parse(model="base", messages=messages, response_format=Conference,
                                                  max_tokens=300)
            assert reply.choices[0].message.parsed is not None
            return reply.choices[0].message.content, [reply.choices[0].finish_reason]
        return streamed_text(client.chat.completions.create(
            model="base", messages=messages, max_tokens=300, stream=True,
            response_format={"type": "json_schema", "json_schema": {"name": "conference", "schema": schema}}))

    for text, reasons in each_prompt(ask):
        assert reasons == ["stop"], text
        value = json.loads(text)
        jsonschema.validate(value, schema)
        assert 1 <= len(value["talks"]) <= 3 and all(t["level"] in ("beginner", "intermediate", "advanced")
                                                     for t in value["talks"])


@pytest.mark.parametrize("stream", [False, True])
def test_a_named_tool_call_comes_back_as_tool_calls(client, stream):
    schema = WEATHER["function"]["parameters"]

    def ask(prompt):
        options = dict(model="base", messages=[{"role": "user", "content": f"{prompt} Also, check the weather."}],
                       tools=[WEATHER, NOTE], tool_choice={"type": "function", "function": {"name": "get_weather"}},
                       max_tokens=120)
        if not stream:
            choice = client.chat.completions.create(**options).choices[0]
            return choice.finish_reason, choice.message.tool_calls
        chunks = [c for c in client.chat.completions.create(**options, stream=True) if c.choices]
        calls = [call for c in chunks for call in (c.choices[0].delta.tool_calls or [])]
        return [c.choices[0].finish_reason for c in chunks if c.choices[0].finish_reason][-1], calls

    for reason, calls in each_prompt(ask):
        assert reason == "tool_calls" and len(calls) == 1
        assert calls[0].function.name == "get_weather" and calls[0].id.startswith("call_")
        jsonschema.validate(json.loads(calls[0].function.arguments), schema)


def test_tool_choice_required_calls_one_of_the_tools(client):
    reply = client.chat.completions.create(
        model="base", messages=[{"role": "user", "content": "Remember that the demo is on Friday."}],
        tools=[WEATHER, NOTE], tool_choice="required", parallel_tool_calls=False, max_tokens=150)
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls" and len(choice.message.tool_calls) == 1
    call = choice.message.tool_calls[0]
    tool = {"get_weather": WEATHER, "save_note": NOTE}[call.function.name]
    jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])


def test_a_conversation_with_a_tool_result_continues(client):
    """An agent's second turn: the assistant's call and the tool's result go back as messages."""
    reply = client.chat.completions.create(model="base", max_tokens=40, messages=[
        {"role": "user", "content": "What's the weather in Lyon?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": "call_1", "type": "function", "function": {
            "name": "get_weather", "arguments": "{\"city\": \"Lyon\", \"unit\": \"celsius\", \"days\": 1}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"forecast\": \"sunny, 21 C\"}"}],
        tools=[WEATHER], tool_choice="none")
    assert reply.choices[0].message.content and reply.choices[0].message.tool_calls is None


def test_n_choices_in_one_request(client):
    messages = [{"role": "user", "content": "Suggest a name for a cat."}]
    reply = client.chat.completions.create(model="base", messages=messages, n=3, temperature=1.0, seed=11,
                                           max_tokens=12)
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert len({c.message.content for c in reply.choices}) > 1  # seeds 11, 12, 13: different samples
    assert reply.usage.completion_tokens > 12  # one usage for the request: the choices' tokens together
    again = client.chat.completions.create(model="base", messages=messages, n=3, temperature=1.0, seed=11,
                                           max_tokens=12)
    assert [c.message.content for c in again.choices] == [c.message.content for c in reply.choices]

    chunks = [c for c in client.chat.completions.create(model="base", messages=messages, n=3, temperature=1.0,
                                                        seed=11, max_tokens=12, stream=True) if c.choices]
    by_index = {i: "".join(c.choices[0].delta.content or "" for c in chunks if c.choices[0].index == i)
                for i in range(3)}
    assert list(by_index.values()) == [c.message.content for c in reply.choices]
    assert sorted(c.choices[0].index for c in chunks if c.choices[0].finish_reason) == [0, 1, 2]


def test_n_choices_of_json(client):
    reply = client.chat.completions.create(model="base", messages=[{"role": "user", "content": "A fruit, as JSON."}],
                                           n=3, temperature=0.8, max_tokens=80,
                                           response_format={"type": "json_object"})
    assert len(reply.choices) == 3 and all(isinstance(json.loads(c.message.content), dict) for c in reply.choices)


def test_chat_with_retrieval_and_a_schema_returns_sources_beside_the_json(client):
    schema = {"type": "object", "properties": {"answer": {"type": "string", "maxLength": 300},
                                               "confidence": {"type": "number", "minimum": 0, "maximum": 1}},
              "required": ["answer", "confidence"]}
    reply = client.chat.completions.create(
        model="mara-quill", messages=[{"role": "user", "content": "Why combine BM25 with embeddings?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}, max_tokens=160)
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)
    assert reply.model_extra["sources"][0]["title"] == "Notes on hybrid search"
    # Nothing relevant: the twin's reason comes as OpenAI's refusal, not as content that would not parse.
    off_topic = client.chat.completions.create(
        model="mara-quill", messages=[{"role": "user", "content": "What is the best pizza topping in Naples?"}],
        response_format={"type": "json_object"}, max_tokens=40)
    assert off_topic.choices[0].message.content is None and "haven't written" in off_topic.choices[0].message.refusal


@pytest.mark.parametrize("body, fragment", [
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {
        "type": "array", "items": {"type": "string"}, "uniqueItems": True}}}}, "uniqueItems"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {
        "type": "object", "if": {"required": ["a"]}, "then": {"required": ["b"]}}}}}, "if"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {
        "type": "string", "pattern": "^(?=a)b"}}}}, "look"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {
        "$ref": "https://example.com/s.json"}}}}, "example.com"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "s", "schema": {
        "$ref": "#/$defs/x", "$defs": {"x": {"$ref": "#/$defs/x"}}}}}}, "matches no finite JSON document"),
    ({"tools": [WEATHER]}, "declares tool calling"),
    ({"tools": [WEATHER], "tool_choice": "auto"}, "declares tool calling"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"a": {"type": "array", "uniqueItems": True}}}}}], "tool_choice": "required"},
     "tools[0].function.parameters"),
    ({"n": 50}, "n must be between 1 and"),
])
def test_what_cannot_be_honoured_is_a_400_naming_why(platform, body, fragment):
    reply = httpx.post(f"{platform.http}/v1/chat/completions", timeout=60, json={
        "model": "base", "messages": [{"role": "user", "content": "hello"}], "max_tokens": 8, **body})
    assert reply.status_code == 400 and fragment in reply.json()["error"]["message"], reply.text


def test_grpc_generate_with_a_schema_and_n(channel):
    stub = generation_pb2_grpc.GenerationServiceStub(channel)
    schema = {"type": "object", "properties": {"colour": {"type": "string", "enum": ["red", "green", "blue"]},
                                               "reason": {"type": "string", "maxLength": 80}},
              "required": ["colour", "reason"]}
    reply = stub.Generate(generation_pb2.GenerateRequest(
        messages=[common_pb2.ChatMessage(role="user", content="Pick a colour.")],
        sampling=generation_pb2.SamplingParams(max_tokens=80, json_schema=json.dumps(schema), n=2, temperature=0.7)))
    assert [c.index for c in reply.choices] == [0, 1] and reply.text == reply.choices[0].text
    for choice in reply.choices:
        assert choice.finish_reason == "stop"
        jsonschema.validate(json.loads(choice.text), schema)
    chunks = list(stub.GenerateStream(generation_pb2.GenerateRequest(
        messages=[common_pb2.ChatMessage(role="user", content="Pick a colour.")],
        sampling=generation_pb2.SamplingParams(max_tokens=80, json_schema=json.dumps(schema)))))
    jsonschema.validate(json.loads("".join(c.delta for c in chunks)), schema)
    with pytest.raises(grpc.RpcError) as refused:
        stub.Generate(generation_pb2.GenerateRequest(
            messages=[common_pb2.ChatMessage(role="user", content="x")],
            sampling=generation_pb2.SamplingParams(json_schema="{\"type\": \"array\", \"uniqueItems\": true}")))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "sampling.json_schema" in refused.value.details() and "uniqueItems" in refused.value.details()


def test_the_json_mirror_takes_the_schema_as_an_object(platform):
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    reply = httpx.post(f"{platform.http}/v1/generate", timeout=120, json={
        "messages": [{"role": "user", "content": "Is water wet?"}], "json_schema": schema, "max_tokens": 20}).json()
    assert isinstance(json.loads(reply["text"])["ok"], bool)


def test_completions_take_n_and_a_schema_too(client):
    reply = client.completions.create(model="base", prompt="A colour, as JSON:", n=2, max_tokens=40, temperature=0.9,
                                      seed=3, extra_body={"response_format": {"type": "json_object"}})
    assert [c.index for c in reply.choices] == [0, 1]
    assert all(isinstance(json.loads(c.text), dict) for c in reply.choices)
