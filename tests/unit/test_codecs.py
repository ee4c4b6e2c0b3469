"""One codec per wire format: every twin.v1 request field is read by the gRPC codec, and a request
means the same thing over gRPC, the JSON mirror and the OpenAI API (seed 0 is a seed everywhere)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from services.gateway import json_mirror, openai_format, proto_codec
from services.generation.api import GenerationLimits
from services.generation.errors import InvalidGenerationRequest
from twin.v1 import chat_pb2, common_pb2, crawler_pb2, embedding_pb2, generation_pb2, retrieval_pb2

MODULES = (chat_pb2, crawler_pb2, embedding_pb2, generation_pb2, retrieval_pb2)
LIMITS = GenerationLimits(default_max_tokens=50, max_new_tokens=100, default_repetition_penalty=1.15)


def request_fields() -> set[tuple[str, str]]:
    """(message, field) of every message an RPC takes, nested messages included."""
    seen, out = set(), set()

    def walk(descriptor) -> None:
        if descriptor.full_name in seen:
            return
        seen.add(descriptor.full_name)
        for field in descriptor.fields:
            out.add((descriptor.full_name, field.name))
            if field.message_type is not None:
                walk(field.message_type)

    for module in MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                walk(method.input_type)
    return out


def read_fields(source: str) -> set[tuple[str, str]]:
    """(message, field) read in a codec: in each function, the attributes read on (and the
    ``HasField`` names asked of) a parameter annotated with a twin.v1 message type."""
    modules = {m.__name__.rsplit(".", 1)[-1]: m for m in (*MODULES, common_pb2)}
    read = set()
    for fn in ast.walk(ast.parse(source)):
        if not isinstance(fn, ast.FunctionDef):
            continue
        params = {}
        for arg in fn.args.args:
            a = arg.annotation
            if isinstance(a, ast.Attribute) and isinstance(a.value, ast.Name) and a.value.id in modules:
                params[arg.arg] = getattr(modules[a.value.id], a.attr).DESCRIPTOR.full_name
        for node in ast.walk(fn):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in params:
                message = params[node.value.id]
                if node.attr == "HasField":
                    continue
                read.add((message, node.attr))
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "HasField"
                    and isinstance(node.func.value, ast.Name) and node.func.value.id in params):
                read |= {(params[node.func.value.id], a.value) for a in node.args if isinstance(a, ast.Constant)}
    return read


def unread(fields: set[tuple[str, str]], source: str) -> list[str]:
    read = read_fields(source)
    return sorted(f"{message}.{field}" for message, field in fields if (message, field) not in read)


def test_every_request_field_is_read_by_the_grpc_codec():
    assert request_fields() >= {("twin.v1.GenerateRequest", "twin"), ("twin.v1.SamplingParams", "seed")}
    assert unread(request_fields(), Path(proto_codec.__file__).read_text()) == []


def test_the_check_finds_a_field_read_nowhere():
    """The bug this test was written for: GenerateRequest.twin was read nowhere."""
    source = Path(proto_codec.__file__).read_text().replace("r.twin or None", "None")
    assert unread(request_fields(), source) == ["twin.v1.GenerateRequest.twin"]


def test_seed_zero_is_a_seed_on_every_transport():
    with_zero = generation_pb2.SamplingParams(max_tokens=5, seed=0)
    assert with_zero.HasField("seed") and proto_codec.sampling(with_zero, LIMITS).seed == 0
    assert proto_codec.sampling(generation_pb2.SamplingParams(max_tokens=5), LIMITS).seed is None
    messages = [{"role": "user", "content": "hi"}]
    assert json_mirror.GenerateBody(messages=messages, seed=0).sampling(LIMITS).seed == 0
    assert json_mirror.GenerateBody(messages=messages).sampling(LIMITS).seed is None
    chat = openai_format.ChatCompletionRequest(model="t", messages=messages, seed=0)
    assert chat.sampling(LIMITS).seed == 0


def test_one_request_means_the_same_over_grpc_json_and_openai():
    values = {"max_tokens": 7, "temperature": 0.5, "top_p": 0.75, "seed": 3, "repetition_penalty": 1.25,
              "top_k": 5, "presence_penalty": 0.5, "frequency_penalty": 0.25, "stop": ["\n\n"]}
    messages = [{"role": "user", "content": "hi"}]
    grpc = proto_codec.generate_request(generation_pb2.GenerateRequest(
        twin="Mara Quill", messages=[common_pb2.ChatMessage(role="user", content="hi")],
        sampling=generation_pb2.SamplingParams(**values)), LIMITS)
    mirror = json_mirror.GenerateBody(messages=messages, twin="Mara Quill", **values)
    chat = openai_format.ChatCompletionRequest(model="mara-quill", messages=messages, **values)
    completion = openai_format.CompletionRequest(model="mara-quill", prompt="hi", **values)
    expected = mirror.sampling(LIMITS)
    assert grpc.params == expected == chat.sampling(LIMITS) == completion.sampling(LIMITS)
    assert (grpc.twin, grpc.messages) == ("Mara Quill", messages)
    assert expected.temperature == 0.5 and expected.stop == ("\n\n",)


def test_unset_values_take_the_servers_defaults_and_limits_apply():
    empty = proto_codec.sampling(generation_pb2.SamplingParams(), LIMITS)
    assert (empty.max_tokens, empty.repetition_penalty, empty.top_p, empty.seed) == (50, 1.15, 1.0, None)
    with pytest.raises(InvalidGenerationRequest, match="max_tokens must be between 1 and 100"):
        json_mirror.GenerateBody(messages=[{"role": "user", "content": "x"}], max_tokens=101).sampling(LIMITS)


def test_the_json_mirror_has_every_sampling_field_of_the_proto():
    proto = {f.name for f in generation_pb2.SamplingParams.DESCRIPTOR.fields}
    assert proto <= set(json_mirror.GenerateBody.model_fields)
    assert {"twin", "messages", "stream"} <= set(json_mirror.GenerateBody.model_fields)
