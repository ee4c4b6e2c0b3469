"""The generation deployment: one model, its engine's batching, token streaming."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import AsyncIterator
from contextlib import aclosing
from pathlib import Path

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from ray import serve

from llm_twin import registry
from llm_twin.config import Settings
from llm_twin.telemetry import tracer
from llm_twin.tracking import TrackingError

from .api import Delta, SamplingParams
from .core import Generator
from .errors import ModelUnavailable, NoTwinModel
from .streams import coalesced, collect


class _LoadedAdapter:
    """What Serve's multiplexing caches per twin; evicting it unloads the adapter."""

    def __init__(self, engine, name: str | None, version: str | None = None):
        self.engine, self.name, self.version = engine, name, version

    def __del__(self):
        if self.name:
            self.engine.unload_adapter(self.name)


@serve.deployment(name="Generation", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
class GenerationDeployment:
    """One base model; each twin's serving LoRA adapter (llm_twin.registry.serving) is loaded on
    demand (Ray Serve model multiplexing: requests for a twin go to a replica that has it) and
    applied per row in the shared decode batch."""

    def __init__(self, settings: dict):
        self.settings = Settings(**settings)
        self.generator = Generator.from_settings(self.settings)
        self.generator.engine.warm()  # before the replica is ready: no first guided request waits for it
        self.loaded: dict[str, str | None] = {}  # twin -> adapter version (None: base model)

    @serve.multiplexed(max_num_models_per_replica=8)
    async def _adapter_for(self, twin: str) -> _LoadedAdapter:
        import asyncio

        pinned = self.settings.generation.pinned_models.get(twin)
        # The version the twin's registered model marks `serving` in MLflow (or the pinned one).
        try:
            model = await asyncio.to_thread(registry.serving, self.settings, twin, pinned)
        except TrackingError as exc:  # the client gets 503 / UNAVAILABLE naming the server, not a 500
            raise ModelUnavailable(str(exc)) from exc
        if model is None and pinned:
            raise ModelUnavailable(f"twin {twin!r} is pinned to version {pinned}, which the registry at "
                                   f"{self.settings.resolved_artifact_uri} does not hold as servable")
        if model is None:  # no trained twin (yet): the base model answers
            self.loaded[twin] = None
            return _LoadedAdapter(self.generator.engine, None)
        path = await asyncio.to_thread(registry.local_adapter, model,
                                       str(Path(self.settings.data_dir) / "cache" / "adapters"))
        await asyncio.to_thread(self.generator.engine.load_adapter, twin, path)
        self.loaded[twin] = model["version"]
        return _LoadedAdapter(self.generator.engine, twin, model["version"])

    async def _adapter(self, required: bool) -> str | None:
        """The adapter of the twin the request is for (Serve's multiplexed model id); None: the base
        model. ``required``: the twin's own voice was asked for (Generate with ``twin``, completions
        with ``model: <twin>``), so a twin without a servable model is refused, not answered by the
        base model (a chat answers from the twin's writing either way)."""
        twin = serve.get_multiplexed_model_id()
        name = (await self._adapter_for(twin)).name if twin else None
        if required and twin and name is None:
            raise NoTwinModel(f"twin {twin!r} has no servable fine-tuned model in the registry at "
                              f"{self.settings.resolved_artifact_uri}: train one (`twin train`, or a TwinModel), or "
                              "leave twin/model empty for the base model")
        return name

    def model_id(self) -> str:
        return self.generator.model_id

    def stats(self) -> dict:
        return {**self.generator.engine.stats(), "adapters": dict(self.loaded)}

    def capabilities(self) -> dict:
        """What the gateway asks before it plans a request: how the chat template declares tools."""
        return {"tool_format": self.generator.engine.template.tool_format}

    # Serve streams only from methods that are generators themselves (not ones returning one).
    async def stream(self, messages: list[dict], params: SamplingParams, voice: bool = False,
                     whole: bool = False) -> AsyncIterator[Delta]:
        """Deltas for one chat request (rendered with the model's chat template). ``voice``: the
        twin's adapter must answer (see _adapter). ``whole``: see _run."""
        async for delta in self._run(lambda: self.generator.prompt(messages, params.tools), params, "chat", voice,
                                     whole):
            yield delta

    async def stream_text(self, prompt: str, params: SamplingParams, voice: bool = False,
                          whole: bool = False) -> AsyncIterator[Delta]:
        """Deltas continuing a plain prompt (/v1/completions): no chat template."""
        async for delta in self._run(lambda: self.generator.check_prompt(prompt), params, "text_completion", voice,
                                     whole):
            yield delta

    async def _run(self, render, params: SamplingParams, operation: str, voice: bool,
                   whole: bool = False) -> AsyncIterator[Delta]:
        """The span is ended by hand: a span kept current across the yields of an async generator
        would be detached in another context when a client leaves."""
        span = tracer().start_span(f"{operation} {self.generator.model_id}", kind=SpanKind.CLIENT, attributes={
            "gen_ai.operation.name": operation, "gen_ai.provider.name": "llm_twin",
            "gen_ai.request.model": self.generator.model_id, "gen_ai.request.max_tokens": params.max_tokens,
            "gen_ai.request.temperature": params.temperature, "gen_ai.request.top_p": params.top_p})
        last = None
        try:
            with trace.use_span(span, end_on_exit=False):
                prompt = render()
                adapter = await self._adapter(voice)
            if adapter:
                span.set_attribute("gen_ai.request.model", f"{self.generator.model_id}+{adapter}")
            # ``whole``: the caller answers once the generation is done (a response that is not
            # streamed), so only the first delta (errors, time to first token) and the last travel:
            # each message costs CPU in this replica, Ray and the gateway, on the cores that decode
            # (8 non-streamed completions at once: 125 -> 140 tokens/s on 2 cores, decision 0011).
            interval = math.inf if whole else self.settings.generation.stream_interval_ms / 1000
            async with aclosing(coalesced(self.generator.raw(prompt, params, adapter), interval)) as deltas:
                async for delta in deltas:
                    last = delta
                    yield delta
        except BaseException as exc:
            span.set_status(Status(StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
            span.set_attribute("error.type", type(exc).__name__)
            raise
        finally:
            if last is not None:
                span.set_attribute("gen_ai.usage.input_tokens", last.prompt_tokens)
                span.set_attribute("gen_ai.usage.output_tokens", last.completion_tokens)
                if last.finish_reason:
                    span.set_attribute("gen_ai.response.finish_reasons", [last.finish_reason])
            span.end()

    async def generate(self, messages: list[dict], params: SamplingParams) -> dict:
        text, last = await collect(self.stream(messages, dataclasses.replace(params, n=1)))
        return {"text": text, "finish_reason": last.finish_reason, "prompt_tokens": last.prompt_tokens,
                "completion_tokens": last.completion_tokens, "model": self.generator.model_id}
