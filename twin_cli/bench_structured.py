"""`make bench BENCH=structured`: what constrained decoding costs and what it buys, each against a
baseline measured in the same run.

- the grammar library's own cost: compile time and the per-token mask (fill + apply) of llguidance
  on this CPU for three real schemas (the judge's scores, a nested plan, any object);
- decode tokens/s with a JSON schema against without, the same prompts, 8 at a time and one at a
  time, interleaved rounds (goal >= 0.85);
- valid answers: share of answers that parse and validate when the schema is only asked for in
  the prompt (what a client got before) against constrained;
- the local teacher: instructions kept out of the sample corpus' passages, written through
  QUESTION_SCHEMA and checked (training/datasets.py) against free text with the old filter;
- the platform's own model as `twin eval rag`'s judge (through /v1/chat/completions, model
  "base"): share of unscored answers asked through the judge's schema against asked in plain
  text, and the judge's agreement with the embedding-based scores on the same answers.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROUNDS = 3
MAX_TOKENS = 128
PROMPTS = ("Plan a blog post about vector databases.", "Suggest a talk for a Python meetup.",
           "Outline a newsletter issue on MLOps.", "Describe a side project for a data engineer.",
           "Plan a workshop on prompt engineering.", "Suggest a podcast episode about Kubernetes.",
           "Outline a tutorial on feature stores.", "Describe a study plan for learning Rust.")
PLAN = {"type": "object", "properties": {
    "title": {"type": "string", "maxLength": 80},
    "audience": {"type": "string", "enum": ["beginners", "practitioners", "experts"]},
    "sections": {"type": "array", "items": {"type": "object", "properties": {
        "heading": {"type": "string", "maxLength": 60}, "minutes": {"type": "integer", "minimum": 1, "maximum": 60}},
        "required": ["heading", "minutes"]}, "minItems": 2, "maxItems": 4},
    "published": {"type": "boolean"}}, "required": ["title", "audience", "sections", "published"]}
PLAN_EXAMPLE = {"title": "Vector databases in practice", "audience": "practitioners", "sections": [
    {"heading": "Why not a plain index", "minutes": 5}, {"heading": "HNSW in one picture", "minutes": 12}],
    "published": False}


def _mask_cost() -> None:
    import llguidance
    import llguidance.hf
    import llguidance.torch as lt
    import torch
    from transformers import AutoTokenizer

    from llm_twin.config import Settings
    from llm_twin.evaluation.judge import JUDGE_SCHEMA
    from services.generation.model_store import resolve_model
    from services.generation.structured import grammar

    settings = Settings()
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(settings.generation.model, settings.data_dir))
    vocab = len(tokenizer)
    started = time.perf_counter()
    ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab)
    warm = llguidance.LLMatcher(ll_tokenizer, grammar('{"type":"object"}'))
    warm_mask = lt.allocate_token_bitmask(1, vocab)
    lt.fill_next_token_bitmask(warm, warm_mask, 0)
    print(f"structured: llguidance tokenizer built and first mask in {time.perf_counter() - started:.2f} s "
          "(once per engine)")
    judged = {"faithfulness": 0.8, "answer_relevance": 0.9, "context_precision": 0.5, "accuracy": 3, "style": 2,
              "reason": "The answer follows the passages and addresses the question."}
    cases = {"judge scores": (JUDGE_SCHEMA, judged), "nested plan": (PLAN, PLAN_EXAMPLE),
             "any object": ({"type": "object"}, {"idea": "A post on caching", "tags": ["cache", "latency"]})}
    for name, (schema, instance) in cases.items():
        text = json.dumps(schema)
        started = time.perf_counter()
        matcher = llguidance.LLMatcher(ll_tokenizer, grammar(text))
        compile_ms = (time.perf_counter() - started) * 1000
        mask, logits, times = lt.allocate_token_bitmask(1, vocab), torch.randn(1, vocab), []
        for token in tokenizer.encode(json.dumps(instance), add_special_tokens=False):
            started = time.perf_counter()
            lt.fill_next_token_bitmask(matcher, mask, 0)
            lt.apply_token_bitmask_inplace(logits, mask)
            times.append(time.perf_counter() - started)
            if not matcher.consume_token(token):
                sys.exit(f"make bench: the {name} example does not fit its schema: {matcher.get_error()}")
        first, rest = times[0], sorted(times[1:])
        print(f"structured: llguidance {name}: compile {compile_ms:.1f} ms, first mask {first * 1000:.1f} ms, then "
              f"{statistics.mean(rest) * 1e6:.0f} us/token mean, {rest[int(len(rest) * 0.95)] * 1e6:.0f} us p95 "
              f"({len(times)} tokens)")


async def _batch(generator, prompts, params, gaps: list | None = None) -> tuple[float, list]:
    """Every prompt at once -> (tokens/s over the batch's wall time, the answers); ``gaps``
    collects each stream's times between tokens (the decode step's length, whatever the answers'
    lengths: JSON answers end sooner and leave the batch's last steps emptier)."""

    async def one(prompt: str) -> tuple[str, int]:
        parts, last, at = [], None, None
        async for delta in generator.stream([{"role": "user", "content": prompt}], params):
            now = time.perf_counter()
            if at is not None and gaps is not None:
                gaps.append(now - at)
            parts.append(delta.text)
            last, at = delta, now
        return "".join(parts), last.completion_tokens

    started = time.perf_counter()
    done = await asyncio.gather(*(one(p) for p in prompts))
    seconds = time.perf_counter() - started
    return sum(n for _, n in done) / seconds, [text for text, _ in done]


def _engine_figures() -> None:
    import jsonschema

    from llm_twin.config import Settings, configure_torch_threads
    from services.generation.core import Generator

    settings = Settings()
    configure_torch_threads(settings)
    generator = Generator.from_settings(settings)
    try:
        limits = generator.limits
        plain = limits.params(max_tokens=MAX_TOKENS)
        guided = limits.params(max_tokens=MAX_TOKENS, json_schema=PLAN)
        asyncio.run(_batch(generator, PROMPTS[:2], guided))  # warm: the tokenizer's trie, the schema's grammar
        rates = {"plain": {8: [], 1: []}, "schema": {8: [], 1: []}}
        gaps: dict[str, list] = {"plain": [], "schema": []}
        for _ in range(ROUNDS):
            for name, params in (("plain", plain), ("schema", guided)):
                rates[name][8].append(asyncio.run(_batch(generator, PROMPTS, params, gaps[name]))[0])
                rates[name][1].append(statistics.mean(asyncio.run(_batch(generator, [p], params))[0]
                                                      for p in PROMPTS[:3]))
        for n in (8, 1):
            a, b = statistics.median(rates["schema"][n]), statistics.median(rates["plain"][n])
            print(f"structured: {n} stream{'s' if n > 1 else ''} with a JSON schema {a:.1f} tok/s / without "
                  f"{b:.1f} tok/s = {a / b:.2f} (goal >= 0.85; medians of {ROUNDS} interleaved rounds)")
        a, b = statistics.median(gaps["schema"]), statistics.median(gaps["plain"])
        print(f"structured: 8 streams, median time between a stream's tokens (the decode step) with a schema "
              f"{a * 1000:.1f} ms, without {b * 1000:.1f} ms: {b / a:.2f} of the speed (the masks' own cost)")

        asked = [f"{p} Answer with JSON only, matching this JSON schema: {json.dumps(PLAN)}" for p in PROMPTS]
        valid = {}
        for name, schema in (("asked in the prompt", None), ("constrained", PLAN)):
            _, texts = asyncio.run(_batch(generator, asked, limits.params(max_tokens=256, json_schema=schema)))
            valid[name] = sum(_validates(t, PLAN, jsonschema) for t in texts)
        print(f"structured: answers that parse and validate against the plan schema, {len(PROMPTS)} prompts: "
              f"constrained {valid['constrained']}/{len(PROMPTS)}, schema only asked for in the prompt "
              f"{valid['asked in the prompt']}/{len(PROMPTS)}")
        _dataset_figures(generator)
    finally:
        generator.engine.close()


def _validates(text: str, schema: dict, jsonschema) -> bool:
    try:
        jsonschema.validate(json.loads(text), schema)
        return True
    except (ValueError, jsonschema.ValidationError):
        return False


_OLD_PROMPT = ("Here is a passage written by {author}:\n\n{passage}\n\n"
               "Write the one question that this passage answers. Reply with the question only, in one sentence.")
_OLD_QUESTION = re.compile(r"^(?:question\s*:\s*)?(.+?\?)", re.IGNORECASE | re.DOTALL)


def _old_filter(reply: str) -> str | None:
    """The instruction filter before schemas (free text: the first question mark, 12-300
    characters, not naming "passage"): with _OLD_PROMPT, the baseline."""
    match = _OLD_QUESTION.search(reply.strip().strip('"'))
    if not match:
        return None
    question = " ".join(match.group(1).split())
    return question if 12 <= len(question) <= 300 and "passage" not in question.lower() else None


def _dataset_figures(generator) -> None:
    from llm_twin.config import Settings
    from llm_twin.documents import RawDocument
    from llm_twin.warehouse import Warehouse
    from training import datasets

    from .sample_corpus import AUTHOR, POSTS

    with tempfile.TemporaryDirectory(prefix="twin-bench-") as tmp:
        warehouse = Warehouse(Settings(data_dir=Path(tmp)).resolved_warehouse_uri)
        for slug, (title, paragraphs) in POSTS.items():
            link = f"https://mara.example/{slug}"
            warehouse.put(RawDocument.create(author=AUTHOR, category="article", source=link, link=link, title=title,
                                             text="\n\n".join(paragraphs)))
        items = datasets.passages(warehouse, AUTHOR)
    teacher = datasets.LocalTeacher(generator)
    asks = [[{"role": "user",
              "content": datasets.QUESTION_PROMPT.format(author=AUTHOR, title=p.title, passage=p.text)}]
            for p in items]
    before = [[{"role": "user", "content": _OLD_PROMPT.format(author=AUTHOR, passage=p.text)}] for p in items]
    free = [_old_filter(r) for r in teacher.complete(before, max_tokens=60)]
    written = [datasets.clean_instruction(r)
               for r in teacher.complete(asks, max_tokens=80, json_schema=datasets.QUESTION_SCHEMA)]
    kept = [q for q, p in zip(written, items, strict=True)
            if q is not None and datasets.question_problem(q, f"{p.title}\n{p.text}") is None]
    old_checked = sum(q is not None and datasets.question_problem(q, f"{p.title}\n{p.text}") is None
                      for q, p in zip(free, items, strict=True))
    print(f"structured: local teacher, {len(items)} passages of the sample corpus: instructions kept "
          f"{len(kept)} through the schema and check / {sum(q is not None for q in free)} free text with the old "
          f"filter (of which {old_checked} pass the new check)")
    for q in kept[:3]:
        print(f"structured:   e.g. {q!r}")
    for q in [q for q in free if q][:3]:
        print(f"structured:   free text e.g. {q!r}")


class _Judges:
    """evaluate_rag's judge: the embedding judge's verdict goes in the rows; the platform's own
    model judges the same answers through its schema and in plain text, kept on the side."""

    def __init__(self, embedding, structured, plain):
        self.embedding, self.structured, self.plain = embedding, structured, plain
        self.name = embedding.name
        self.verdicts: list[tuple] = []

    def judge(self, question, answer, passages, author):
        verdicts = tuple(j.judge(question, answer, passages, author)
                         for j in (self.embedding, self.structured, self.plain))
        self.verdicts.append(verdicts)
        return verdicts[0]


def _judge_figures() -> None:
    from llm_twin.config import Settings, configure_torch_threads
    from llm_twin.evaluation.judge import EmbeddingJudge, LLMJudge
    from llm_twin.evaluation.rag import ChatEndpoint, evaluate_rag
    from llm_twin.evaluation.retrieval import Question
    from services.embedding.core import Embedder
    from services.generation.model_store import resolve_model

    from .bench_serving import EVAL_QUESTIONS
    from .local_serving import ServeProcess
    from .sample_corpus import AUTHOR, index_sample

    settings = Settings()
    configure_torch_threads(settings)
    model = resolve_model(settings.generation.model, settings.data_dir)
    with tempfile.TemporaryDirectory(prefix="twin-bench-") as tmp:
        index_sample(Path(tmp))
        platform = ServeProcess(Path(tmp), 9310, 8310, env={"TWIN_GENERATION_MODEL": model},
                                log=subprocess.DEVNULL).start()
        try:
            try:
                platform.wait_ready(600)
            except RuntimeError as exc:
                sys.exit(f"make bench: {exc} (run `twin serve` by hand to see why)")
            plain = LLMJudge(f"{platform.http}/v1", "base")
            plain.structured = False  # asked as before: JSON requested in the prompt only
            judges = _Judges(EmbeddingJudge(Embedder.from_settings(settings)), LLMJudge(f"{platform.http}/v1", "base"),
                             plain)
            questions = [Question(q, AUTHOR, ()) for q in EVAL_QUESTIONS]
            evaluate_rag(questions, ChatEndpoint(platform.http, max_tokens=64), judges, concurrency=4)
        finally:
            platform.stop()
    n = len(judges.verdicts)
    if not n:
        sys.exit("make bench: no answer was judged (every question found no sources?)")
    unscored = [sum(v[i].scores is None for v in judges.verdicts) for i in (1, 2)]
    print(f"structured: twin eval rag with the platform's own model (base) as judge, {n} answers: unscored "
          f"{unscored[0]}/{n} through the judge's schema / {unscored[1]}/{n} asked in plain text (goal 0)")
    for key in ("faithfulness", "answer_relevance", "context_precision"):
        pairs = [(v[0].scores[key], v[1].scores[key]) for v in judges.verdicts
                 if v[0].scores and v[1].scores and key in v[0].scores]
        print(f"structured: judge {key} against the embedding score: Spearman {_spearman(pairs):+.2f} over "
              f"{len(pairs)} answers (mean judge {statistics.mean(b for _, b in pairs):.2f}, embedding "
              f"{statistics.mean(a for a, _ in pairs):.2f})" if len(pairs) > 2 else
              f"structured: judge {key}: too few scored answers to compare")


def _spearman(pairs: list[tuple[float, float]]) -> float:
    def ranks(values):
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    a, b = ranks([p[0] for p in pairs]), ranks([p[1] for p in pairs])
    if len(set(a)) < 2 or len(set(b)) < 2:
        return 0.0
    return statistics.correlation(a, b)


def run() -> None:
    _mask_cost()
    _engine_figures()
    _judge_figures()
