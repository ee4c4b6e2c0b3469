"""Retrieval quality stage by stage, per kind of question, on five handbook question sets:

- handbook_questions.jsonl (80, the easy development set),
- handbook_questions_hard.jsonl (62: paraphrases, answers one sentence deep, authors named in
  the question, follow-ups; the set the default pipeline was chosen on),
- handbook_questions_heldout.jsonl (40 of the same kinds, written before any tuning and never
  tuned on),
- handbook_questions_heldout2.jsonl (24 more, written 2026-12-07 after every setting was chosen;
  its wording is closer to the articles' than the first held-out set's: an easier set),
- handbook_questions_styles.jsonl (32, written 2026-12-07 after that, measured once before it was
  added: other ways of asking - bare keywords, "have you written about ...", long questions with
  the asker's situation in them, typos and no capitals).

Stages are cumulative from `rrf` on; the default pipeline is marked. Also the first stage's
latency against dense-only. Needs ../shared (the corpus); indexing it takes ~1-2 min.
"""

from __future__ import annotations

import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETS = ("handbook_questions.jsonl", "handbook_questions_hard.jsonl", "handbook_questions_heldout.jsonl",
        "handbook_questions_heldout2.jsonl", "handbook_questions_styles.jsonl")
# name, first stage, rewrite follow-ups, self-query, reranker ("expand": LLM query expansion)
STAGES = (
    ("dense", "dense", False, False, None),
    ("BM25", "keyword", False, False, None),
    ("hybrid (fused per document)", "hybrid", False, False, None),
    ("rrf (fused per chunk)", "rrf", False, False, None),
    ("rrf + rewrite", "rrf", True, False, None),
    ("rrf + rewrite + self-query", "rrf", True, True, None),
    ("  + sentence rerank", "rrf", True, True, "sentence"),
    ("  + expansion (local 135M LLM)", "rrf", True, True, "expand"),
)
DEFAULT = "rrf + rewrite + self-query"
RERANK_SETS = ("handbook_questions_hard.jsonl",)  # ~3 s per question on 2 cores: the hard set only


def local_completer(settings):
    """``complete(prompt) -> text`` over the local generation model (greedy, 40 tokens)."""
    import asyncio

    from services.generation.core import Generator

    generator = Generator.from_settings(settings)
    params = generator.limits.params(max_tokens=40, repetition_penalty=1.1)

    def complete(prompt: str) -> str:
        return asyncio.run(generator.complete([{"role": "user", "content": prompt}], params)).text

    return complete


def run(store, embedder, settings, sets: tuple[str, ...] = SETS, stages: tuple[str, ...] | None = None) -> dict:
    from llm_twin.evaluation.retrieval import evaluate, load_questions
    from services.retrieval.core import Retriever
    from services.retrieval.query import contextual_query, expansions
    from services.retrieval.rerank import SentenceReranker

    complete = None
    results: dict = {}
    for name in sets:
        questions = load_questions(ROOT / "tests" / "data" / name)
        results[name] = {}
        for stage, strategy, rewrite, self_query, reranker in STAGES:
            if (reranker and name not in RERANK_SETS) or (stages is not None and stage not in stages):
                continue
            retriever = Retriever(store, embedder, strategy=strategy,
                                  reranker=SentenceReranker(embedder) if reranker == "sentence" else None)
            if reranker == "expand" and complete is None:
                complete = local_completer(settings)

            def search(q, retriever=retriever, rewrite=rewrite, self_query=self_query, reranker=reranker,
                       complete=complete):
                text = contextual_query(q.messages) if rewrite else q.question
                if reranker == "expand":
                    return [r.link for r in retriever.search_expanded([text, *expansions(text, complete)],
                                                                      author=q.author, top_k=10, self_query=self_query)]
                return [r.link for r in retriever.search(text, author=q.author, top_k=10, self_query=self_query)]

            started = time.perf_counter()
            scores = evaluate(questions, search)
            scores["ms_per_query"] = (time.perf_counter() - started) / len(questions) * 1000
            results[name][stage] = scores
            print(line(name, stage, scores), flush=True)
    return results


def line(name: str, stage: str, s: dict) -> str:
    kinds = "  ".join(f"{k} {v['hit@1']:.2f}/{v['hit@5']:.2f}/{v['mrr@10']:.2f}" for k, v in s["kinds"].items()
                      if len(s["kinds"]) > 1)
    mark = " (default)" if stage == DEFAULT else ""
    return (f"retrieval {name.removeprefix('handbook_questions').removesuffix('.jsonl') or '_easy'}: "
            f"{stage + mark:38} hit@1 {s['hit@1']:.3f} hit@5 {s['hit@5']:.3f} MRR@10 {s['mrr@10']:.3f} "
            f"{s['ms_per_query']:5.0f} ms/q  {kinds}")
