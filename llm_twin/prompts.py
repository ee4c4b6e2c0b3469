"""The prompt template: the ONE place that decides what the model sees.

Serving (RAG chat) and training (SFT/DPO examples) both build their messages here, so a twin is
trained on exactly the framing it is served with. The model's own chat template (ChatML for
SmolLM2) then renders the messages; nothing else formats prompts.
"""

from __future__ import annotations

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

    def render(self, messages: Sequence[dict]) -> str:
        """Messages -> the prompt string, ending where the assistant's answer starts."""
        return self.tokenizer.apply_chat_template(list(messages), add_generation_prompt=True, tokenize=False)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def count_tokens(self, text: str) -> int:
        return len(self.encode(text))


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
