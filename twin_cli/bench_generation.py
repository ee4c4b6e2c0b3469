"""Generation on this CPU, each quantization against float32 in the same run (`make bench`):

- speed: single-stream decode tokens/s of the platform's own decode loop (the transformers
  backend, greedy, 64 new tokens), the median over repeated runs of four prompts;
- quality: perplexity of held-out author text (the sample corpus's posts, never trained on by
  the base model's makers in this form) and the share of greedy answers identical to float32's
  on a fixed prompt set.
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


def _decode_rate(backend, prompt: str) -> float:
    from services.generation.backend import SamplingParams

    async def run() -> float:
        first = last = None
        count = 0
        rendered = backend.render([{"role": "user", "content": prompt}])
        async for delta in backend.stream(rendered, SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0)):
            now = time.perf_counter()
            first = first or now
            last, count = now, delta.completion_tokens
        return (count - 1) / (last - first) if count > 1 and last > first else 0.0

    return asyncio.run(run())


def _answers(backend, n_tokens: int = 32) -> list[str]:
    from services.generation.backend import SamplingParams, collect

    async def one(prompt: str) -> str:
        rendered = backend.render([{"role": "user", "content": prompt}])
        text, _ = await collect(backend.stream(rendered, SamplingParams(max_tokens=n_tokens, temperature=0.0)))
        return text

    return [asyncio.run(one(p)) for p in PROMPTS]


def _perplexity(backend, texts: list[str]) -> float:
    import torch

    total, count = 0.0, 0
    with torch.inference_mode():
        for text in texts:
            ids = backend.tokenizer(text, return_tensors="pt")["input_ids"]
            loss = backend.model(input_ids=ids, labels=ids).loss
            total += float(loss) * (ids.shape[1] - 1)
            count += ids.shape[1] - 1
    return math.exp(total / count)


def run() -> dict:
    from llm_twin.config import Settings, configure_torch_threads
    from services.generation.model_store import resolve_model
    from services.generation.transformers_backend import TransformersBackend

    from .sample_corpus import POSTS

    texts = [" ".join(paragraphs) for _, paragraphs in POSTS.values()]
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), torch_threads=2)
        configure_torch_threads(settings)
        path = resolve_model(settings.generation_model, settings.data_dir)
        results, reference = {}, None
        for quantization in ("none", "bf16", "int8"):
            started = time.perf_counter()
            backend = TransformersBackend(path, quantization=quantization, max_batch_size=1, batch_wait_s=0)
            load_s = time.perf_counter() - started
            try:
                _decode_rate(backend, PROMPTS[0])  # warm-up
                rates = [_decode_rate(backend, p) for _ in range(REPEATS) for p in PROMPTS[:4]]
                answers = _answers(backend)
                reference = reference or answers
                results[quantization] = {
                    "tokens_per_s": statistics.median(rates), "perplexity": _perplexity(backend, texts),
                    "identical": sum(a == b for a, b in zip(answers, reference, strict=True)) / len(PROMPTS),
                    "load_s": load_s}
            finally:
                backend.close()
    base = results["none"]
    for quantization, r in results.items():
        print(f"generation {quantization:4}: single-stream decode {r['tokens_per_s']:.1f} tok/s / float32 "
              f"{base['tokens_per_s']:.1f} = {r['tokens_per_s'] / base['tokens_per_s']:.2f}; held-out perplexity "
              f"{r['perplexity']:.2f} (float32 {base['perplexity']:.2f}, {r['perplexity'] / base['perplexity'] - 1:+.1%}); "
              f"greedy answers identical to float32 {r['identical']:.0%}; load {r['load_s']:.1f} s", flush=True)
    print("generation: TWIN_GENERATION_QUANTIZATION=auto serves int8 on a CPU (see README)")
    return results


if __name__ == "__main__":
    run()
