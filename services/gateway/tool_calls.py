"""OpenAI function tools over a model: what the answer is constrained to, and the calls read back.

``tool_choice``:
- a named function: the answer is that function's arguments, constrained to its ``parameters``
  schema (so it parses and validates whatever the model);
- ``"required"``: the answer is a JSON list of ``{"name", "arguments"}`` (one item unless
  ``parallel_tool_calls``), each constrained to its function's schema;
- ``"auto"`` (OpenAI's default when tools are sent): the model decides, in the format its chat
  template declares (``ChatTemplate.tool_format``: Hermes' ``<tool_call>`` blocks); a template that
  declares no tools is refused with the reason (a model never shown tools in training cannot be
  expected to call them of its own accord);
- ``"none"``: the tools are not shown and the model answers in text.
Calls come back as ``tool_calls`` with ``finish_reason: "tool_calls"``.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from services.generation.errors import InvalidGenerationRequest
from services.generation.structured import canonical_schema

from .status import InvalidRequest

MAX_TOOLS = 64
NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
HERMES_CALL = re.compile(r"<tool_call>\s*(\{.*?\})\s*</tool_call>", re.S)


@dataclass(frozen=True)
class ToolPlan:
    mode: Literal["named", "required", "auto"]
    functions: tuple[dict, ...]  # {"name", "description", "parameters"}
    schema: dict | None  # what the answer is constrained to (None: auto)
    name: str | None = None  # the named function

    def tools_json(self) -> str:
        return json.dumps(list(self.functions))


def functions(tools: list[dict]) -> list[dict]:
    """OpenAI ``tools`` -> their function definitions, each checked (the error names the field)."""
    if not isinstance(tools, list) or not tools:
        raise InvalidRequest("tools must be a non-empty list of {\"type\": \"function\", \"function\": {...}}")
    if len(tools) > MAX_TOOLS:
        raise InvalidRequest(f"tools: {len(tools)} tools; the limit is {MAX_TOOLS}")
    out, names = [], set()
    for i, tool in enumerate(tools):
        if not isinstance(tool, dict) or tool.get("type") != "function" or not isinstance(tool.get("function"), dict):
            raise InvalidRequest(f"tools[{i}]: only {{\"type\": \"function\", \"function\": {{...}}}} tools "
                                 "are supported")
        f = tool["function"]
        name = f.get("name")
        if not isinstance(name, str) or not NAME.match(name):
            raise InvalidRequest(f"tools[{i}].function.name must be 1-64 letters, digits, _ or -, got {name!r}")
        if name in names:
            raise InvalidRequest(f"tools[{i}].function.name: {name!r} is listed twice")
        names.add(name)
        parameters = f.get("parameters") or {"type": "object", "properties": {}}
        try:
            canonical_schema(parameters, f"tools[{i}].function.parameters")
        except InvalidGenerationRequest as exc:
            raise InvalidRequest(str(exc)) from None
        out.append({"name": name, "description": str(f.get("description") or ""), "parameters": parameters})
    return out


def plan(tools: list[dict] | None, tool_choice: Any, parallel: bool | None, tool_format: str | None,
         model: str) -> ToolPlan | None:
    """The request's tools -> a plan; None: no tools in play (none sent, or ``tool_choice: "none"``)."""
    if not tools:
        if tool_choice not in (None, "none"):
            raise InvalidRequest("tool_choice needs tools: send the function definitions in tools")
        return None
    defined = functions(tools)
    choice = "auto" if tool_choice is None else tool_choice
    if choice == "none":
        return None
    if choice == "auto":
        if tool_format is None:
            raise InvalidRequest(
                f"tools with tool_choice \"auto\" (the default) need a model whose chat template declares tool "
                f"calling; {model}'s does not. "
                "Use tool_choice \"required\" or {\"type\": \"function\", \"function\": {\"name\": ...}}: the call "
                "is then constrained to the function's schema")
        return ToolPlan("auto", tuple(defined), None)
    if choice == "required":
        items = [{"type": "object", "properties": {"name": {"const": f["name"]}, "arguments": f["parameters"]},
                  "required": ["name", "arguments"], "additionalProperties": False} for f in defined]
        # At most one call per function (one in all unless parallel calls are allowed): a small
        # model left an open-ended list repeats its call until max_tokens.
        schema = {"type": "array", "items": items[0] if len(items) == 1 else {"anyOf": items}, "minItems": 1,
                  "maxItems": 1 if parallel is False else len(items)}
        return ToolPlan("required", tuple(defined), schema)
    if isinstance(choice, dict) and choice.get("type") == "function" and isinstance(choice.get("function"), dict):
        name = choice["function"].get("name")
        chosen = [f for f in defined if f["name"] == name]
        if not chosen:
            raise InvalidRequest(f"tool_choice.function.name: {name!r} is not among tools "
                                 f"({', '.join(f['name'] for f in defined)})")
        return ToolPlan("named", tuple(chosen), chosen[0]["parameters"], name)
    raise InvalidRequest("tool_choice must be \"none\", \"auto\", \"required\" or "
                         "{\"type\": \"function\", \"function\": {\"name\": ...}}")


def _call(name: str, arguments: Any) -> dict:
    text = arguments if isinstance(arguments, str) else json.dumps(arguments, ensure_ascii=False)
    return {"id": f"call_{uuid.uuid4().hex[:24]}", "type": "function", "function": {"name": name, "arguments": text}}


def read_calls(p: ToolPlan, text: str) -> tuple[str | None, list[dict]]:
    """An answer -> (the text left for ``content``, the calls). No calls: the answer as it is
    (an answer cut by max_tokens, or ``auto`` where the model chose to answer in text)."""
    if p.mode == "named":
        try:
            json.loads(text)
        except ValueError:
            return text, []
        return None, [_call(p.name, text)]
    if p.mode == "required":
        try:
            items = json.loads(text)
        except ValueError:
            return text, []
        return None, [_call(item["name"], item["arguments"]) for item in items]
    calls = []
    for match in HERMES_CALL.finditer(text):
        try:
            item = json.loads(match.group(1))
            name = item["name"]
        except (ValueError, KeyError, TypeError):
            continue
        if any(f["name"] == name for f in p.functions):
            calls.append(_call(name, item.get("arguments", item.get("parameters", {}))))
    if not calls:
        return text, []
    rest = HERMES_CALL.sub("", text).strip()
    return rest or None, calls


def as_messages(message: dict) -> dict:
    """A conversation turn that carries tool calls or a tool's result -> plain text the model
    reads (every template can render it): the assistant's calls as JSON, a tool result as the
    user's message naming the call."""
    if message["role"] == "assistant" and message.get("tool_calls"):
        calls = [{"name": c.get("function", {}).get("name"), "arguments": c.get("function", {}).get("arguments")}
                 for c in message["tool_calls"]]
        text = (message.get("content") or "").strip()
        return {"role": "assistant", "content": (text + "\n" if text else "") + json.dumps({"tool_calls": calls})}
    if message["role"] == "tool":
        return {"role": "user", "content": f"Result of tool call {message.get('tool_call_id') or ''}: "
                                           f"{message.get('content') or ''}".replace("  ", " ")}
    return message
