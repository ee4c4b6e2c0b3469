"""The data plane's view of the other deployments, over Ray Serve handles.

Each client exposes the deployment's methods as plain coroutines (``await client.search(...)``),
so the data plane never sees a handle and tests pass in-process objects with the same methods.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

from ray.exceptions import RayActorError

from services.generation.api import Delta, SamplingParams

from .status import ReplicaLost

# A replica that died under a call (killed, crashed, its node gone): Serve starts another and routes
# new calls to live replicas, so a call that had not produced anything yet is made once more.
REPLICA_GONE = (RayActorError,)
LOST = "a {name} replica stopped while working on this request (Serve is starting another): retry in a few seconds"


class HandleClient:
    """``await client.name(*args)`` -> ``await handle.name.remote(*args)``."""

    def __init__(self, handle):
        self.handle = handle

    def __getattr__(self, name: str):
        method = getattr(self.handle, name)

        async def call(*args, **kwargs):
            # Every method the data plane calls is safe to repeat (reads; a crawl stores by content
            # hash), so a call whose replica died is made once more, on a live one.
            try:
                return await method.remote(*args, **kwargs)
            except REPLICA_GONE:
                try:
                    return await method.remote(*args, **kwargs)
                except REPLICA_GONE as exc:
                    raise ReplicaLost(LOST.format(name=self.deployment)) from exc

        return call

    @property
    def deployment(self) -> str:
        return str(getattr(self.handle, "deployment_name", "")) or "service"


class GenerationClient(HandleClient):
    """Streams go to a replica holding the twin's adapter (Serve's multiplexed model id); a
    consumer that stops early cancels the generation downstream."""

    def stream(self, messages: list[dict], params: SamplingParams, twin: str | None = None,
               voice: bool = False, whole: bool = False) -> AsyncIterator[Delta]:
        """``twin``: the replica applies its adapter; ``voice``: only the adapter may answer; ``whole``:
        the caller waits for the whole answer, so the replica sends the first delta and the last only."""
        options = {"stream": True, **({"multiplexed_model_id": twin} if twin else {})}
        return self._relay(lambda: self.handle.options(**options).stream.remote(messages, params, voice, whole))

    def stream_text(self, prompt: str, params: SamplingParams, twin: str | None = None,
                    whole: bool = False) -> AsyncIterator[Delta]:
        options = {"stream": True, **({"multiplexed_model_id": twin} if twin else {})}
        return self._relay(lambda: self.handle.options(**options).stream_text.remote(prompt, params, bool(twin),
                                                                                     whole))

    @staticmethod
    async def _relay(start: Callable) -> AsyncIterator[Delta]:
        """The stream ``start()`` makes; when its replica dies before the first delta it is started
        once more (a live replica answers it), after that the loss is a ReplicaLost (503 /
        UNAVAILABLE, or an error event once a stream has started)."""
        for attempt in (1, 2):
            response, produced, finished = start(), False, False
            try:
                async for delta in response:
                    produced = True
                    yield delta
                finished = True
                return
            except REPLICA_GONE as exc:
                if produced or attempt == 2:
                    raise ReplicaLost(LOST.format(name="generation")) from exc
            finally:
                if not finished:
                    response.cancel()
