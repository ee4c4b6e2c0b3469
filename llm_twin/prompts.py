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
