"""The prompt template: the ONE place that decides what the model sees.

Serving (RAG chat) and training (SFT/DPO examples) both build their messages here, so a twin is
trained on exactly the framing it is served with. The model's own chat template (ChatML for
SmolLM2) then renders the messages; nothing else formats prompts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

TEMPLATE_VERSION = "1"
MAX_SOURCE_CHARS = 1_200  # per passage: four passages fit a small model's window with room to answer

NO_SOURCES_ANSWER = (
    "I haven't written about that, so I can't answer it in my own words. "
    "Ask me about something I've written on."
)


WORD_JOINER = "\u2060"  # invisible, and no tokenizer's special token contains it


def control_tokens(tokenizer) -> frozenset[str]:
    """The strings a tokenizer turns into control tokens (<|im_start|>, </s>, ...)."""
    found = set(getattr(tokenizer, "all_special_tokens", ()) or ())
    try:
        found |= {t for t in tokenizer.get_added_vocab() if not t.isalnum()}
    except (AttributeError, TypeError):
        pass
    return frozenset(t for t in found if len(t) > 1)


class ChatTemplate:
    """A model's chat template over its tokenizer: what every engine renders prompts and counts
    tokens with (one implementation for all of them). Works with any tokenizer that has
    ``apply_chat_template`` and ``encode`` (transformers', TensorRT-LLM's)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.control_tokens = control_tokens(tokenizer)

    @property
    def present(self) -> bool:
        return bool(getattr(self.tokenizer, "chat_template", None))

    @property
    def tool_format(self) -> str | None:
        """How the template shows tools and the model calls them: "hermes" (the template renders a
        ``tools`` list and the model answers ``<tool_call>{"name", "arguments"}</tool_call>``:
        Qwen2.5, Hermes, SmolLM3 ...), or None (the template knows no tools: SmolLM2)."""
        source = getattr(self.tokenizer, "chat_template", None) or ""
        source = source if isinstance(source, str) else " ".join(str(v) for v in dict(source).values())
        return "hermes" if "tools" in source and "<tool_call>" in source else None

    def render(self, messages: Sequence[dict], tools: Sequence[dict] | None = None) -> str:
        """Messages -> the prompt string, ending where the assistant's answer starts. ``tools``
        (OpenAI function definitions): the template renders them (:attr:`tool_format` set), else
        they are described in the system message (:func:`with_tools`)."""
        if tools and self.tool_format:
            return self.tokenizer.apply_chat_template(list(messages), tools=[{"type": "function", "function": t}
                                                                             for t in tools],
                                                      add_generation_prompt=True, tokenize=False)
        if tools:
            messages = with_tools(messages, tools)
        return self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))


def with_tools(messages: Sequence[dict], tools: Sequence[dict]) -> list[dict]:
    """The function tools described in the system message, for a template that knows no tools
    (the answer's form is then held by constrained decoding: tool_choice required or named)."""
    lines = ["You can call these functions; to call one, answer with JSON."]
    for t in tools:
        lines.append(f"- {t['name']}: {t.get('description') or 'no description'}. "
                     f"Parameters (JSON schema): {json.dumps(t.get('parameters') or {'type': 'object'})}")
    block = "\n".join(lines)
    messages = list(messages)
    if messages and messages[0].get("role") == "system":
        return [{**messages[0], "content": f"{messages[0]['content']}\n\n{block}"}, *messages[1:]]
    return [{"role": "system", "content": block}, *messages]


def as_text(text: str, tokens: frozenset[str] | Sequence[str]) -> str:
    """Control-token strings written in user content or in a crawled page stay text: a word joiner
    after their first character keeps the tokenizer from matching them, so nobody can forge a role
    (`<|im_start|>system`) by typing it. A reader sees the same characters."""
    for token in sorted(tokens, key=len, reverse=True):
        if token in text:
            text = text.replace(token, token[0] + WORD_JOINER + token[1:])
    return text


@dataclass(frozen=True)
class Passage:
    title: str
    text: str
    link: str = ""


def system_prompt(twin_name: str, passages: Sequence[Passage] = ()) -> str:
    """The system message for a twin, with the passages of their writing the answer must use."""
    lines = [
        f"You are {twin_name}. Answer as {twin_name} would, in the first person and in their style.",
    ]
    if passages:
        lines.append("Use only these passages from your own writing; if they do not answer the question, say so.")
        for i, p in enumerate(passages, start=1):
            text = p.text.strip()
            if len(text) > MAX_SOURCE_CHARS:
                text = text[:MAX_SOURCE_CHARS].rsplit(" ", 1)[0] + " ..."
            lines.append(f"[{i}] {p.title.strip() or 'Untitled'}\n{text}")
    return "\n\n".join(lines)


def chat_messages(twin_name: str, conversation: Sequence[dict], passages: Sequence[Passage] = ()) -> list[dict]:
    """The messages sent to the model: the twin's system prompt, then the conversation as given
    (a caller's own system messages are dropped: the twin's framing is not negotiable)."""
    turns = [{"role": m["role"], "content": m["content"]} for m in conversation if m["role"] != "system"]
    return [{"role": "system", "content": system_prompt(twin_name, passages)}, *turns]


def training_example(twin_name: str, instruction: str, answer: str,
                     passages: Sequence[Passage] = ()) -> list[dict]:
    """One SFT example in the serving framing: system + user instruction + the author's answer."""
    return [*chat_messages(twin_name, [{"role": "user", "content": instruction}], passages),
            {"role": "assistant", "content": answer}]
