"""The JSON mirror of twin.v1: request bodies for /v1/generate, /v1/search and /v1/crawl.

The generate body is built from the proto's own messages (``GenerateRequest`` with its
``SamplingParams`` flattened, plus ``stream``), so the mirror cannot drift from the gRPC contract:
a field added to the proto is a field here, and the codec test fails until something reads it.
Every field is optional in JSON (absent = the server's default) and 0 is a value, as in the proto's
``optional`` fields.
"""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import FieldDescriptor
from pydantic import BaseModel, ConfigDict, Field, create_model

from services.generation.api import GenerationLimits, SamplingParams
from twin.v1 import generation_pb2


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SearchBody(Body):
    query: str
    twin: str | None = None
    category: str | None = None
    top_k: int | None = Field(None, description="Documents to return (default 5).")
    strategy: str | None = Field(None, description="rrf (default: TWIN_RETRIEVAL_STRATEGY), hybrid, dense or keyword.")


class CrawlBody(Body):
    twin: str
    targets: list[str]
    source_type: str | None = None
    index: bool = False


class MessageBody(Body):
    role: str
    content: str


_SCALARS = {FieldDescriptor.TYPE_INT32: int, FieldDescriptor.TYPE_INT64: int, FieldDescriptor.TYPE_FLOAT: float,
            FieldDescriptor.TYPE_DOUBLE: float, FieldDescriptor.TYPE_STRING: str, FieldDescriptor.TYPE_BOOL: bool}


def _json_type(field: FieldDescriptor) -> Any:
    if field.name == "json_schema":  # JSON text in the proto; in JSON the schema object itself, or its text
        return dict[str, Any] | str
    kind = _SCALARS[field.type]
    return list[kind] if field.is_repeated else kind


SAMPLING_FIELDS = tuple(f.name for f in generation_pb2.SamplingParams.DESCRIPTOR.fields)


class _GenerateBase(Body):
    messages: list[MessageBody]
    stream: bool = Field(False, description="Server-sent events: {\"delta\"}, the last with finish_reason and usage.")

    def sampling(self, limits: GenerationLimits) -> SamplingParams:
        values = {name: getattr(self, name) for name in SAMPLING_FIELDS}
        return limits.params(values.pop("max_tokens"), values.pop("temperature"), values.pop("top_p"),
                             values.pop("seed"), values.pop("repetition_penalty"), **values)


GenerateBody = create_model(
    "GenerateBody", __base__=_GenerateBase,
    twin=(str | None, Field(None, description="Whose fine-tuned model answers; absent: the base model.")),
    **{f.name: (_json_type(f) | None, None) for f in generation_pb2.SamplingParams.DESCRIPTOR.fields})
