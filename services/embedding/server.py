"""The embedding deployment: all-MiniLM-L6-v2 behind a Serve handle."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from ray import serve

from llm_twin.config import Settings
from llm_twin.telemetry import span

from .core import Embedder
from .errors import InvalidEmbeddingRequest

MAX_TEXTS = 256
MAX_TEXT_CHARS = 32_000


@serve.deployment(name="Embedding", ray_actor_options={"num_cpus": 0.5})
class EmbeddingDeployment:
    def __init__(self, settings: dict):
        self.settings = Settings(**settings)
        # Every torch call of this replica on one thread: several threads running parallel torch
        # ops keep several OpenMP teams, and libgomp then stops spinning between parallel regions
        # (see llm_twin.config.in_own_thread; 1.5x slower steps measured in generation).
        self._torch = ThreadPoolExecutor(max_workers=1, thread_name_prefix="embedding-torch")
        self.embedder = self._torch.submit(Embedder.from_settings, self.settings).result()

    def info(self) -> dict:
        return {"model": self.embedder.name, "dimension": self.embedder.dimension}

    async def count_tokens(self, texts: list[str]) -> list[int]:
        return await asyncio.to_thread(self.embedder.count_tokens, texts)

    async def embed(self, texts: list[str]) -> dict:
        """-> {"vectors": float32 array, "prompt_tokens": int}"""
        if not texts:
            raise InvalidEmbeddingRequest("send at least one text to embed")
        if len(texts) > MAX_TEXTS:
            raise InvalidEmbeddingRequest(f"{len(texts)} texts in one request; the limit is {MAX_TEXTS}")
        for i, text in enumerate(texts):
            if not isinstance(text, str) or not text.strip():
                raise InvalidEmbeddingRequest(f"input[{i}] is empty")
            if len(text) > MAX_TEXT_CHARS:
                raise InvalidEmbeddingRequest(f"input[{i}] has {len(text)} characters; the limit is {MAX_TEXT_CHARS}")
        with span(f"embeddings {self.embedder.name}", **{"gen_ai.operation.name": "embeddings",
                                                        "gen_ai.request.model": self.embedder.name,
                                                        "gen_ai.embeddings.input_count": len(texts)}) as s:
            vectors = await asyncio.get_running_loop().run_in_executor(self._torch, self.embedder.embed, texts)
            tokens = sum(await asyncio.to_thread(self.embedder.count_tokens, texts)) + 2 * len(texts)
            s.set_attribute("gen_ai.usage.input_tokens", tokens)
        return {"vectors": vectors, "prompt_tokens": tokens}
