"""Judging RAG answers: an LLM judge over any OpenAI-compatible endpoint, or embedding-based
fallbacks when none is configured (labelled as such in every score set).

Scores (the book's chapter on RAG evaluation):
- faithfulness (0-1): the answer says only what the passages support;
- answer_relevance (0-1): the answer addresses the question;
- context_precision (0-1): share of the given passages that are relevant to the question;
- context_recall (0-1): share of the gold documents among the passages -- only with gold links,
  computed, not judged (see ``context_scores``);
- accuracy and style (1-3): factually right and complete; written like a blog/social post in the
  author's voice rather than like a textbook.

The scores are asked for through a JSON schema (``response_format`` json_schema, JUDGE_SCHEMA): an
endpoint with constrained decoding (this platform's own, vLLM, OpenAI) always answers JSON with
these fields, whatever the judge model's size. An endpoint that refuses ``response_format`` is
asked in plain text from then on; a reply that is not valid JSON with these fields is retried once,
then the question is recorded as unscored with the reason: never a crash. Private data is masked before it leaves
(llm_twin.pii, as for the teacher).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass

from llm_twin import pii

JUDGE_SYSTEM = ("You are a strict evaluator of answers produced by a retrieval-augmented assistant. "
                "Reply with JSON only.")
JUDGE_PROMPT = """Evaluate the ANSWER to the QUESTION, written in the voice of {author}, given the PASSAGES it was
allowed to use.

QUESTION:
{question}

PASSAGES:
{passages}

ANSWER:
{answer}

Return one JSON object with exactly these keys:
- "faithfulness": number from 0 to 1, the share of the answer's claims supported by the passages;
- "answer_relevance": number from 0 to 1, how directly the answer addresses the question;
- "context_precision": number from 0 to 1, the share of passages relevant to the question;
- "accuracy": integer 1 (wrong or incomplete), 2 (mostly right), 3 (right and complete);
- "style": integer 1 (formal, textbook-like), 2 (mixed), 3 (reads like the author's own blog or post);
- "reason": one short sentence.
"""
FRACTIONS = ("faithfulness", "answer_relevance", "context_precision")
GRADES = ("accuracy", "style")
JUDGE_SCHEMA = {
    "type": "object",
    "properties": {**{k: {"type": "number", "minimum": 0, "maximum": 1} for k in FRACTIONS},
                   **{k: {"type": "integer", "enum": [1, 2, 3]} for k in GRADES},
                   "reason": {"type": "string", "maxLength": 200}},
    "required": [*FRACTIONS, *GRADES, "reason"], "additionalProperties": False}
RESPONSE_FORMAT = {"type": "json_schema", "json_schema": {"name": "rag_scores", "schema": JUDGE_SCHEMA, "strict": True}}


class JudgeReplyError(ValueError):
    pass


def parse_reply(text: str) -> dict:
    """The judge's JSON (inside a code fence or prose is tolerated) -> validated scores."""
    match = re.search(r"\{.*\}", text or "", re.DOTALL)
    if not match:
        raise JudgeReplyError("the judge's reply holds no JSON object")
    try:
        data = json.loads(match.group(0))
    except json.JSONDecodeError as exc:
        raise JudgeReplyError(f"the judge's reply is not valid JSON ({exc.msg})") from exc
    scores = {}
    for key in FRACTIONS:
        value = data.get(key)
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
            raise JudgeReplyError(f"the judge's {key!r} is {value!r}, not a number from 0 to 1")
        scores[key] = float(value)
    for key in GRADES:
        value = data.get(key)
        if isinstance(value, bool) or value not in (1, 2, 3):
            raise JudgeReplyError(f"the judge's {key!r} is {value!r}, not 1, 2 or 3")
        scores[key] = int(value)
    scores["reason"] = str(data.get("reason", ""))[:500]
    return scores


@dataclass(frozen=True)
class Verdict:
    scores: dict | None  # None: unscored
    judge: str
    error: str | None = None


class LLMJudge:
    def __init__(self, base_url: str, model: str, api_key: str | None = None, timeout_s: float = 120):
        import openai

        self.client = openai.OpenAI(base_url=base_url, api_key=api_key or "unused", timeout=timeout_s, max_retries=1)
        self.model = model
        self.name = f"llm:{model}@{base_url}"
        self.structured = True  # False once the endpoint refuses response_format
    @classmethod
    def from_settings(cls, settings) -> LLMJudge | None:
        if not settings.judge.url:
            return None
        return cls(settings.judge.url, settings.judge.model or "judge", settings.judge.key)

    def judge(self, question: str, answer: str, passages: Sequence[str], author: str) -> Verdict:
        mapping: dict[str, str] = {}
        masked = []
        for text in (question, answer, *passages):
            text, mapping = pii.mask(text, mapping)
            masked.append(text)
        prompt = JUDGE_PROMPT.format(author=author, question=masked[0], answer=masked[1],
                                     passages="\n\n".join(f"[{i + 1}] {p}" for i,
                                                          p in enumerate(masked[2:])) or "(none)")
        error = None
        for _ in range(2):  # one retry for a reply that is not the JSON asked for
            try:
                reply = self._ask(prompt)
                return Verdict(parse_reply(reply.choices[0].message.content or ""), self.name)
            except JudgeReplyError as exc:
                error = str(exc)
            except Exception as exc:  # noqa: BLE001 - an unreachable judge leaves the question unscored
                return Verdict(None, self.name, f"the judge failed: {type(exc).__name__}: {exc}"[:300])
        return Verdict(None, self.name, error)

    def _ask(self, prompt: str):
        import openai

        messages = [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": prompt}]
        if self.structured:
            try:
                return self.client.chat.completions.create(model=self.model, temperature=0, max_tokens=300,
                                                           messages=messages, response_format=RESPONSE_FORMAT)
            except openai.BadRequestError as exc:
                if "response_format" not in str(exc):
                    raise
                self.structured = False  # an endpoint without structured output: asked in plain text
        return self.client.chat.completions.create(model=self.model, temperature=0, max_tokens=300,
                                                   messages=messages)


class EmbeddingJudge:
    """Without an LLM judge: cosine similarities with the embedder. faithfulness = mean over the
    answer's sentences of their best similarity to a passage sentence; answer_relevance =
    similarity of question and answer; context_precision = share of passages with similarity to
    the question >= ``relevant``; style = similarity of the answer to the passages the author
    wrote, on the 1-3 scale (<0.4: 1, <0.6: 2, else 3). accuracy needs a judge: left out."""

    name = "embedding-fallback"

    def __init__(self, embedder, relevant: float = 0.3):
        self.embedder = embedder
        self.relevant = relevant
        # `twin eval rag` judges from several threads: one encode at a time, on the torch threads
        # configured (concurrent encodes oversubscribe the cores, many times slower).
        self._lock = threading.Lock()

    def judge(self, question: str, answer: str, passages: Sequence[str], author: str) -> Verdict:
        import numpy as np

        from llm_twin.features.chunk import split_sentences

        if not answer.strip():
            return Verdict(None, self.name, "empty answer")
        answer_sentences = split_sentences(answer) or [answer]
        passage_sentences = [s for p in passages for s in (split_sentences(p) or [p])]
        with self._lock:
            vectors = self.embedder.embed([question, answer, *answer_sentences, *passage_sentences, *passages])
        q, a = vectors[0], vectors[1]
        n_a, n_p = len(answer_sentences), len(passage_sentences)
        a_s, p_s, p_v = vectors[2:2 + n_a], vectors[2 + n_a:2 + n_a + n_p], vectors[2 + n_a + n_p:]
        faithful = float(np.mean((a_s @ p_s.T).max(axis=1))) if n_p else 0.0
        precision = float(np.mean(p_v @ q >= self.relevant)) if len(p_v) else 0.0
        style_sim = float((p_v @ a).max()) if len(p_v) else 0.0
        return Verdict({"faithfulness": round(max(faithful, 0.0), 4),
                        "answer_relevance": round(max(float(q @ a), 0.0), 4),
                        "context_precision": round(precision, 4),
                        "style": 1 if style_sim < 0.4 else 2 if style_sim < 0.6 else 3}, self.name)


def context_scores(source_links: Sequence[str], gold_links: Sequence[str]) -> dict:
    """Against gold links (alternatives: copies of one answer's page): precision = share of
    sources that are gold documents; recall = 1 when a gold document is among the sources."""
    if not gold_links:
        return {}
    gold = set(gold_links)
    hits = [link for link in source_links if link in gold]
    return {"context_precision_gold": round(len(hits) / len(source_links), 4) if source_links else 0.0,
            "context_recall": 1.0 if hits else 0.0}
