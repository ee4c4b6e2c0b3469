"""The generation deployment: one model, its backend's batching, token streaming."""

from __future__ import annotations

from collections.abc import AsyncIterator

from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode
from ray import serve

from llm_twin.config import Settings, configure_torch_threads
from llm_twin.telemetry import tracer

from .backend import Delta, SamplingParams
from .core import Generator
from .model_store import resolve_model
from .transformers_backend import TransformersBackend


def build_generator(settings: Settings) -> Generator:
    configure_torch_threads(settings)
    backend = TransformersBackend(resolve_model(settings.generation_model, settings.data_dir),
                                  device=settings.generation_device, dtype=settings.generation_dtype,
                                  max_batch_size=settings.max_batch_size, batch_wait_s=settings.batch_wait_s)
    return Generator(backend=backend, default_max_tokens=settings.default_max_tokens,
                     max_new_tokens=settings.max_new_tokens, max_prompt_tokens=settings.max_prompt_tokens,
                     repetition_penalty=settings.repetition_penalty)


@serve.deployment(name="Generation", ray_actor_options={"num_cpus": 1}, max_ongoing_requests=64)
class GenerationDeployment:
    def __init__(self, settings: dict):
        self.generator = build_generator(Settings(**settings))

    def model_id(self) -> str:
        return self.generator.model_id

    def stats(self) -> dict:
        return self.generator.backend.stats()

    def validate(self, messages: list[dict]) -> None:
        """Raises InvalidGenerationRequest for what the model would refuse (prompt too long...)."""
        self.generator.prompt(messages)

    async def stream(self, messages: list[dict], params: SamplingParams) -> AsyncIterator[Delta]:
        """Deltas for one request. The span is ended by hand: a span kept current across the
        yields of an async generator would be detached in another context when a client leaves."""
        span = tracer().start_span(f"chat {self.generator.model_id}", kind=SpanKind.CLIENT, attributes={
            "gen_ai.operation.name": "chat", "gen_ai.provider.name": "llm_twin",
            "gen_ai.request.model": self.generator.model_id, "gen_ai.request.max_tokens": params.max_tokens,
            "gen_ai.request.temperature": params.temperature, "gen_ai.request.top_p": params.top_p})
        last = None
        try:
            with trace.use_span(span, end_on_exit=False):
                prompt = self.generator.prompt(messages)
            async for delta in self.generator.backend.stream(prompt, params):
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
        parts, last = [], None
        async for delta in self.stream(messages, params):
            parts.append(delta.text)
            last = delta
        return {"text": "".join(parts), "finish_reason": last.finish_reason, "prompt_tokens": last.prompt_tokens,
                "completion_tokens": last.completion_tokens, "model": self.generator.model_id}
