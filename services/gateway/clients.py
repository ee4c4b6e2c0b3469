"""The data plane's view of the other deployments, over Ray Serve handles.

Each client exposes the deployment's methods as plain coroutines (``await client.search(...)``),
so the data plane never sees a handle and tests pass in-process objects with the same methods.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from services.generation.backend import Delta, SamplingParams


class HandleClient:
    """``await client.name(*args)`` -> ``await handle.name.remote(*args)``."""

    def __init__(self, handle):
        self.handle = handle

    def __getattr__(self, name: str):
        method = getattr(self.handle, name)

        async def call(*args, **kwargs):
            return await method.remote(*args, **kwargs)

        return call


class GenerationClient(HandleClient):
    """Streams go to a replica holding the twin's adapter (Serve's multiplexed model id); a
    consumer that stops early cancels the generation downstream."""

    def stream(self, messages: list[dict], params: SamplingParams, twin: str | None = None) -> AsyncIterator[Delta]:
        options = {"stream": True, **({"multiplexed_model_id": twin} if twin else {})}
        return self._relay(self.handle.options(**options).stream.remote(messages, params))

    def stream_text(self, prompt: str, params: SamplingParams) -> AsyncIterator[Delta]:
        return self._relay(self.handle.options(stream=True).stream_text.remote(prompt, params))

    @staticmethod
    async def _relay(response) -> AsyncIterator[Delta]:
        finished = False
        try:
            async for delta in response:
                yield delta
            finished = True
        finally:
            if not finished:
                response.cancel()
