"""Structured output: the JSON schemas a request may constrain its answer to, checked once where
the request comes in, and the grammar options every engine compiles them with.

Constrained decoding itself is the engine's (``engines/transformers/guided.py``): at each step the
tokens the schema's grammar does not allow are masked out, so the answer parses and validates
whatever the model's size. The grammar library is llguidance (decision record
docs/decisions/0010-structured-generation.md: compiled in ~1-2 ms, ~60-90 µs a token's mask here,
no dependencies; xgrammar needs triton, outlines-core took 0.2-5 s to compile a schema).
"""

from __future__ import annotations

import json
from functools import lru_cache

from .errors import InvalidGenerationRequest

MAX_SCHEMA_CHARS = 32_000
JSON_OBJECT = {"type": "object"}  # OpenAI's response_format json_object: any JSON object
# Compact separators, no free whitespace: a small model given free whitespace can fill max_tokens
# with newlines inside a valid document.
GRAMMAR_OPTIONS = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def canonical_schema(schema: str | dict, field: str = "json_schema") -> str:
    """A JSON schema (text or parsed) -> its canonical text (the cache key of its compiled grammar),
    refused with the reason when it is not a JSON object or uses what the grammar cannot express
    (``uniqueItems``, ``if``/``then``, look-around in a ``pattern``, remote ``$ref``s, ...)."""
    if isinstance(schema, str):
        if len(schema) > MAX_SCHEMA_CHARS:
            raise InvalidGenerationRequest(f"{field}: {len(schema)} characters; the limit is {MAX_SCHEMA_CHARS}")
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise InvalidGenerationRequest(f"{field} is not JSON: {exc}") from None
    if not isinstance(schema, dict):
        raise InvalidGenerationRequest(f"{field} must be a JSON object (a JSON schema), got {type(schema).__name__}")
    # Keys keep their order: properties are generated in the order the schema lists them.
    text = json.dumps(_without_no_ops(schema), separators=(",", ":"), ensure_ascii=False)
    if len(text) > MAX_SCHEMA_CHARS:
        raise InvalidGenerationRequest(f"{field}: {len(text)} characters; the limit is {MAX_SCHEMA_CHARS}")
    problem = _grammar_problem(text)
    if problem:
        raise InvalidGenerationRequest(f"{field} cannot be used for constrained decoding: {problem}")
    return text


# Keywords whose value here constrains nothing (the grammar library refuses the keyword whatever its value).
NO_OPS = {"uniqueItems": False}


def _without_no_ops(node):
    """The schema without keywords that constrain nothing (``"uniqueItems": false``); property
    names are left alone (a property may be called "uniqueItems")."""
    if isinstance(node, list):
        return [_without_no_ops(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {}
    for key, value in node.items():
        if key in NO_OPS and value is NO_OPS[key]:
            continue
        if key in ("properties", "patternProperties", "$defs", "definitions") and isinstance(value, dict):
            out[key] = {name: _without_no_ops(sub) for name, sub in value.items()}
        else:
            out[key] = _without_no_ops(value)
    return out


def grammar(schema_text: str) -> str:
    """The llguidance grammar of a canonical schema."""
    import llguidance

    return llguidance.LLMatcher.grammar_from_json_schema(schema_text, defaults=GRAMMAR_OPTIONS)


@lru_cache(maxsize=512)
def _grammar_problem(schema_text: str) -> str:
    """'' when the schema compiles; else the grammar library's reason, on one line."""
    import llguidance

    try:
        problem = llguidance.LLMatcher.validate_grammar(grammar(schema_text))
    except (ValueError, TypeError, RuntimeError) as exc:
        problem = str(exc) or type(exc).__name__
    return " ".join(line.strip() for line in problem.strip().splitlines())[:300] if problem else ""
