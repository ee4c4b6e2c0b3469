"""Generation on this CPU (`make bench`), every figure against a baseline measured in the same run:

- speed: single-stream decode tokens/s (greedy, 64 new tokens, median over repeated runs of four
  prompts) of each quantization in the lean decode loop, divided by the float32 loop through
  transformers' forward (what served before the lean loop; goal >= 2 for the default);
- quality: perplexity of held-out author text (the sample corpus's posts) computed by the same
  forward that decodes, and the share of greedy answers identical to the float32 baseline's;
- batching: 8 concurrent streams' tokens/s divided by one stream's (goal >= 4);
- prefill that does not stall decoding: inter-token latency p95 of 8 running streams while long
  RAG-sized prompts arrive, chunked prefill against whole-prompt prefill;
- prefix caching: time to first token of a prompt whose long opening was seen before, against the
  same with the cache off;
- batch inference: passages/s of the local teacher writing dataset questions, 8 at a time
  against one at a time.
"""

from __future__ import annotations

import asyncio
import math
import statistics
import tempfile
import time
from pathlib import Path

PROMPTS = [
    "Why combine BM25 with dense embeddings in search?",
    "How should I chunk long documents for retrieval?",
    "What makes a Kubernetes operator reliable?",
    "Give three tips for writing a good runbook.",
    "Explain reciprocal rank fusion in two sentences.",
    "What is a LoRA adapter?",
    "How do I keep a build log useful?",
    "Why trace every request across services?",
]
NEW_TOKENS = 64
REPEATS = 3
STREAMS = 8


def _params(max_tokens: int):
    from services.generation.api import SamplingParams

    return SamplingParams(max_tokens=max_tokens, temperature=0.0, repetition_penalty=1.15)


async def _timed(backend, messages: list[dict], max_tokens: int) -> list[tuple[float, int]]:
    """(time, tokens so far) at each delta."""
    marks = []
    async for delta in backend.stream(backend.template.render(messages), _params(max_tokens)):
        marks.append((time.perf_counter(), delta.completion_tokens))
    return marks


def _rate(marks: list[tuple[float, int]]) -> float:
    (first, n0), (last, n1) = marks[0], marks[-1]
    return (n1 - n0) / (last - first) if last > first else 0.0


def _decode_rate(backend, prompt: str) -> float:
    return _rate(asyncio.run(_timed(backend, [{"role": "user", "content": prompt}], NEW_TOKENS)))


def _answers(backend, n_tokens: int = 32) -> list[str]:
    from services.generation.streams import collect

    async def one(prompt: str) -> str:
        text, _ = await collect(backend.stream(backend.template.render([{"role": "user", "content": prompt}]),
                                               _params(n_tokens)))
        return text

    return [asyncio.run(one(p)) for p in PROMPTS]


def _perplexity(backend, texts: list[str]) -> float:
    """Through the forward that decodes: the lean engine (row 0, while nothing else runs) or the
    model. Run in a thread of its own (in_own_thread): torch work left on this thread would slow
    the decode thread for the rest of the run."""
    import torch

    total, count = 0.0, 0
    with torch.inference_mode():
        for text in texts:
            ids = backend.tokenizer(text, return_tensors="pt")["input_ids"]
            if backend.lean is not None:
                logits = backend.lean.engine.prefill(0, ids[0], 0, None, all_logits=True)
                loss = torch.nn.functional.cross_entropy(logits[:-1], ids[0, 1:])
            else:
                loss = backend.model(input_ids=ids, labels=ids).loss
            total += float(loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return math.exp(total / count)


def _batching(backend) -> tuple[float, float]:
    """(1 stream, 8 streams) tokens/s, each the median of REPEATS runs."""
    one = statistics.median(_throughput(backend, 1) for _ in range(REPEATS))
    return one, statistics.median(_throughput(backend, STREAMS) for _ in range(REPEATS))


def _throughput(backend, streams: int) -> float:
    async def run():
        started = time.perf_counter()
        marks = await asyncio.gather(*(_timed(backend, [{"role": "user", "content": PROMPTS[i % len(PROMPTS)]}],
                                               NEW_TOKENS) for i in range(streams)))
        return sum(m[-1][1] for m in marks) / (time.perf_counter() - started)

    return asyncio.run(run())


def _rag_prompt(i: int) -> list[dict]:
    from .sample_corpus import POSTS

    posts = list(POSTS.values())
    passages = "\n\n".join(" ".join(paragraphs) for _, paragraphs in (posts * 2)[i % len(posts):i % len(posts) + 5])
    return [{"role": "system", "content": f"Answer from these passages.\n\n{passages}"},
            {"role": "user", "content": f"Question {i}: what do the passages say about testing?"}]


ARRIVALS = 6


def _itl_under_arrivals(backend) -> tuple:
    """8 streams decode 96 tokens each; meanwhile a RAG-sized prompt arrives every 0.4 s (each
    answered with 4 tokens). -> (p50, p95, p99, max of the streams' inter-token gaps in ms,
    tokens of an arriving prompt)."""
    async def run():
        streams = [asyncio.create_task(_timed(backend, [{"role": "user", "content": PROMPTS[i]}], 96))
                   for i in range(STREAMS)]
        await asyncio.sleep(0.5)
        arrivals = []
        for i in range(ARRIVALS):
            arrivals.append(asyncio.create_task(_timed(backend, _rag_prompt(i), 4)))
            await asyncio.sleep(0.4)
        marks = await asyncio.gather(*streams)
        await asyncio.gather(*arrivals)
        gaps = sorted(b[0] - a[0] for m in marks for a, b in zip(m, m[1:], strict=False))
        cuts = statistics.quantiles(gaps, n=100)
        return cuts[49] * 1000, cuts[94] * 1000, cuts[98] * 1000, gaps[-1] * 1000

    return (*asyncio.run(run()), backend.template.count_tokens(backend.template.render(_rag_prompt(0))))


def _ttft(backend, messages: list[dict]) -> float:
    return asyncio.run(_timed(backend, messages, 1))[0][0]


def _prefix_ttft(backend) -> tuple[float, float]:
    """-> (TTFT with the opening cached, TTFT with the cache off), ms: medians of 3."""
    from services.generation.engines.transformers.prefix_cache import PrefixCache

    def median_ttft(question_offset: int) -> float:
        times = []
        for i in range(3):
            messages = _rag_prompt(0)
            messages[1] = {"role": "user", "content": f"Follow-up {question_offset + i}: and about deployment?"}
            started = time.perf_counter()
            times.append((_ttft(backend, messages) - started) * 1000)
        return statistics.median(times)

    _ttft(backend, _rag_prompt(0))  # the opening seen once
    cached = median_ttft(0)
    kept, backend.lean.prefix = backend.lean.prefix, PrefixCache(0)
    try:
        uncached = median_ttft(100)
    finally:
        backend.lean.prefix = kept
    return cached, uncached


def _teacher_rate(backend, concurrency: int, passages: list[str]) -> float:
    from services.generation.core import Generator
    from training.datasets import QUESTION_PROMPT, LocalTeacher

    teacher = LocalTeacher(Generator(backend), concurrency=concurrency)
    started = time.perf_counter()
    teacher.complete([[{"role": "user", "content": QUESTION_PROMPT.format(author="Mara Quill", title="Notes",
                                                                                          passage=p)}]
                      for p in passages], max_tokens=48)
    return len(passages) / (time.perf_counter() - started)


def run() -> dict:
    from llm_twin.config import Settings, configure_torch_threads, in_own_thread
    from services.generation.engines.transformers import Engine as TransformersEngine
    from services.generation.engines.transformers.int8_kernel import pick_isa
    from services.generation.engines.transformers.prefix_cache import PrefixCache
    from services.generation.model_store import resolve_model

    from .sample_corpus import POSTS

    texts = [" ".join(paragraphs) for _, paragraphs in POSTS.values()]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), torch_threads=2)
        configure_torch_threads(settings)
        path = resolve_model(settings.generation.model, settings.data_dir)
        results, reference = {}, None
        variants = [("float32, transformers forward (baseline)", "none", False, "auto"),
                    ("float32, lean", "none", True, "auto"), ("bf16, lean", "bf16", True, "auto")]
        if pick_isa()[0] is not None:  # the default's native int8 kernel against torch's, same run
            variants.append(("int8, lean, torch's int8 kernel", "int8", True, "torch"))
        variants.append(("int8, lean (default)", "int8", True, "auto"))
        for name, quantization, lean, kernel in variants:
            started = time.perf_counter()
            backend = TransformersEngine(path, quantization=quantization, lean=lean, max_batch_size=STREAMS,
                                          batch_wait_s=0, int8_kernel=kernel)
            load_s = time.perf_counter() - started
            try:
                _decode_rate(backend, PROMPTS[0])  # warm-up
                rates = [_decode_rate(backend, p) for _ in range(REPEATS) for p in PROMPTS[:4]]
                answers = _answers(backend)
                reference = reference or answers
                results[name] = {"tokens_per_s": statistics.median(rates),
                                 "perplexity": in_own_thread(_perplexity, backend, texts),
                                 "identical": sum(a == b for a, b in zip(answers, reference, strict=True))
                                 / len(PROMPTS),
                                 "load_s": load_s,
                                 "weights_mb": backend.lean.engine.weight_bytes() / 2**20 if backend.lean else None}
                print(f"generation: measured {name}", flush=True)
                if quantization == "int8":
                    results[name]["batching"] = _batching(backend)
                if name.endswith("(default)"):
                    results["kernel"] = "native" if backend.int8_op is not None else "torch's"
                    kept, backend.lean.prefix = backend.lean.prefix, PrefixCache(0)  # every prompt prefilled
                    chunked = _itl_under_arrivals(backend)
                    backend.lean.chunk = backend.lean.engine.max_len
                    whole = _itl_under_arrivals(backend)
                    backend.lean.chunk, backend.lean.prefix = settings.generation.transformers.prefill_chunk, kept
                    results["itl"] = (chunked, whole)
                    results["prefix"] = _prefix_ttft(backend)
                    sample = [" ".join(p) for _, p in POSTS.values()][:8]
                    results["teacher"] = (_teacher_rate(backend, 1, sample), _teacher_rate(backend, 8, sample))
            finally:
                backend.close()
    _report(results, settings.generation.transformers.prefill_chunk)
    return results


def _report(results: dict, chunk: int) -> None:
    base = results["float32, transformers forward (baseline)"]
    for name, r in results.items():
        if not isinstance(r, dict):
            continue
        ratio = r["tokens_per_s"] / base["tokens_per_s"]
        goal = " (goal >= 2)" if name.endswith("(default)") else ""
        print(f"generation {name}: single-stream decode {r['tokens_per_s']:.1f} tok/s / baseline "
              f"{base['tokens_per_s']:.1f} = {ratio:.2f}{goal}; held-out perplexity {r['perplexity']:.2f} "
              f"(baseline {base['perplexity']:.2f}, {r['perplexity'] / base['perplexity'] - 1:+.1%}); greedy answers "
              f"identical to the baseline's {r['identical']:.0%}; load {r['load_s']:.1f} s"
              + (f"; weights the lean loop holds {r['weights_mb']:.0f} MB" if r["weights_mb"] else ""), flush=True)
    for name, r in results.items():
        if isinstance(r, dict) and "batching" in r:
            one, many = r["batching"]
            goal = f" (goal >= 4; {results['kernel']} int8 kernel)" if name.endswith("(default)") else ""
            print(f"generation {name}: {STREAMS} concurrent streams {many:.1f} tok/s / 1 stream {one:.1f} tok/s = "
                  f"{many / one:.2f}{goal}, medians of {REPEATS} runs")
    chunked, whole = results["itl"]
    print(f"generation: inter-token latency of {STREAMS} streams while {ARRIVALS} prompts of {chunked[-1]} tokens "
          f"arrive, prefill in chunks of {chunk} / whole prompts (lower is better): " + ", ".join(
              f"{name} {c:.0f} ms / {w:.0f} ms = {c / w:.2f}"
              for name, c, w in zip(("p50", "p95", "p99", "max"), chunked, whole, strict=False)))
    cached, uncached = results["prefix"]
    print(f"generation: time to first token with the prompt's opening cached {cached:.0f} ms / cache off "
          f"{uncached:.0f} ms = {cached / uncached:.2f} (lower is better)")
    one_at_a_time, batched = results["teacher"]
    print(f"generation: local teacher writing dataset questions, 8 at a time {batched:.2f} passages/s / one at a "
          f"time {one_at_a_time:.2f} = {batched / one_at_a_time:.2f}")


if __name__ == "__main__":
    run()
