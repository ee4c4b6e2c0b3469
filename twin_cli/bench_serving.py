"""Serving benchmark (part of `make bench`), every figure a ratio against a baseline of this run:

- tokens/s streamed through gRPC (GenerationService/GenerateStream) and through HTTP (SSE) divided
  by tokens/s of the same generation engine streaming in this process, same prompt, same settings
  (goal >= 0.9: Ray Serve's proxy and the gateway hop cost little). The in-process stream runs with
  the platform's processes paused (SIGSTOP: the engine as if alone) and again with them running
  idle beside it (which parts the hops' cost from the platform's mere presence); the four are
  interleaved in rounds, medians taken, so that what else this shared machine runs weighs on each;
- throughput of 8 concurrent chat clients (RAG included) divided by one client's (goal >= 4:
  concurrent requests share decode steps), and the same for plain generation (batching alone);
- `twin eval rag` with 4 questions in flight against one at a time (questions/s).

Needs nothing from ../shared: it serves the sample corpus.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from contextlib import contextmanager, suppress
from pathlib import Path

PROMPT = "Write a detailed paragraph about how rivers shape the landscape over thousands of years."
TOKENS = 64
CLIENTS = 8
# Chat answers of 128 tokens: on 2 CPU cores the prefill of a RAG prompt (~300 tokens, compute-
# bound, no gain from batching) is a large share of a short answer; both figures are printed.
CHAT_TOKENS = (48, 128)
EVAL_CONCURRENCY = 4  # `twin eval rag --concurrency`'s default


ROUNDS = 5  # of the four streams (paused, beside, gRPC, HTTP): medians of these


class InProcess:
    """The platform's own generation engine (same settings: quantization, decode loop) streaming in
    this process: what the gRPC and HTTP figures would be with no Ray, proxy or network hop."""

    def __init__(self, settings):
        from services.generation.core import Generator

        self.generator = Generator.from_settings(settings)

    def tokens_per_s(self) -> float:
        import asyncio

        async def one() -> float:
            started = time.perf_counter()
            tokens = 0
            async for delta in self.generator.stream([{"role": "user", "content": PROMPT}],
                                                     self.generator.limits.params(max_tokens=TOKENS)):
                tokens = delta.completion_tokens or tokens
            return tokens / (time.perf_counter() - started)

        return asyncio.run(one())

    def close(self) -> None:
        self.generator.engine.close()


def _descendants(pid: int) -> list[int]:
    """``pid`` and every process under it (from /proc): `twin serve` and the Ray cluster it started."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) if entry.name.isdigit() else None
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        if parent is not None:
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        found.append(todo.pop())
        todo.extend(children.get(found[-1], []))
    return found


@contextmanager
def _paused(pids: Sequence[int]):
    """The platform stopped (SIGSTOP) for a moment and resumed (SIGCONT) whatever happens: a few
    seconds, well inside Ray's and gRPC's liveness timeouts."""
    stopped = []
    try:
        for pid in pids:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
                stopped.append(pid)
        yield
    finally:
        for pid in stopped:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)


def _streams(engine: InProcess, platform_pid: int, address: str, base: str) -> dict[str, float]:
    """Median tokens/s of each way to stream the same answer, in interleaved rounds (a warm-up of
    each first)."""
    pids = _descendants(platform_pid)
    grpc_stream, http_stream = _grpc_stream(address), _http_stream(base)

    def alone() -> float:
        with _paused(pids):
            return engine.tokens_per_s()

    ways = {"alone": alone, "beside": engine.tokens_per_s, "grpc": grpc_stream, "http": http_stream}
    rates: dict[str, list[float]] = {name: [] for name in ways}
    for i in range(ROUNDS + 1):
        for name, way in ways.items():
            rate = way()
            if i:
                rates[name].append(rate)
    return {name: statistics.median(values) for name, values in rates.items()}


def _grpc_stream(address: str):
    """-> a function streaming the answer once through GenerationService/GenerateStream: tokens/s."""
    import grpc

    from twin.v1 import common_pb2, generation_pb2, generation_pb2_grpc

    stub = generation_pb2_grpc.GenerationServiceStub(grpc.insecure_channel(address))
    request = generation_pb2.GenerateRequest(messages=[common_pb2.ChatMessage(role="user", content=PROMPT)],
                                             sampling=generation_pb2.SamplingParams(max_tokens=TOKENS))

    def once() -> float:
        started = time.perf_counter()
        chunks = list(stub.GenerateStream(request, timeout=300))
        return chunks[-1].usage.completion_tokens / (time.perf_counter() - started)

    return once


def _http_stream(base: str):
    """-> a function streaming the answer once through the gateway's SSE path (the JSON mirror of
    GenerateStream; the chat route adds retrieval, which the concurrency figures include)."""
    import httpx

    body = {"messages": [{"role": "user", "content": PROMPT}], "max_tokens": TOKENS, "stream": True}

    def once() -> float:
        started = time.perf_counter()
        tokens = 0
        with httpx.stream("POST", f"{base}/v1/generate", json=body, timeout=300) as reply:
            reply.raise_for_status()
            for line in reply.iter_lines():
                if line.startswith("data: {") and '"usage"' in line:
                    tokens = json.loads(line[6:])["usage"]["completion_tokens"]
        return tokens / (time.perf_counter() - started)

    return once


def _fan_out(clients: int, one) -> float:
    """Runs ``one(i)`` (returning tokens) for ``clients`` clients at once; -> total tokens/s."""
    tokens = [0] * clients

    def run(i: int) -> None:
        tokens[i] = one(i)

    started = time.perf_counter()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(tokens) / (time.perf_counter() - started)


def _generate_throughput(address: str, clients: int) -> float:
    """Plain generation (short prompt, no retrieval): what batching alone buys."""
    import grpc

    from twin.v1 import common_pb2, generation_pb2, generation_pb2_grpc

    stub = generation_pb2_grpc.GenerationServiceStub(grpc.insecure_channel(address))

    def one(i: int) -> int:
        return stub.Generate(generation_pb2.GenerateRequest(
            messages=[common_pb2.ChatMessage(role="user", content=f"{PROMPT} ({i})")],
            sampling=generation_pb2.SamplingParams(max_tokens=TOKENS)), timeout=900).usage.completion_tokens

    return _fan_out(clients, one)


# Every measured chat asks a question asked nowhere before in the run, so that one client and 8
# clients alike prefill prompts not in the prefix cache (the twin's system prompt opening aside,
# cached by the warm-up for both): a repeated question would find its whole prompt cached.
WARM_UP_QUESTION = "Why keep a build log?"
CHAT_QUESTIONS = (
    "Why combine BM25 with embeddings?", "How should I cut documents into chunks?",
    "What should a good alert have?", "How do you run database migrations without downtime?",
    "When is a small model enough?", "What does a Kubernetes operator do for its users?",
    "Why write the evaluation set first?", "What belongs in a trace of one request?",
    "How can code review teach?", "Why should feature flags expire?",
    "How do you invalidate a cache safely?", "What makes documentation get read?",
    "What is a data contract between teams?", "How do you run a blameless postmortem?",
    "Why are GPU costs a design input?", "Where should prompt templates live?",
    "Why treat a flaky test as a bug?", "What makes a dashboard answer questions?")


def _chat_throughput(address: str, questions: Sequence[str], max_tokens: int) -> float:
    """One client per question, all at once -> total tokens/s."""
    import grpc

    from twin.v1 import chat_pb2, chat_pb2_grpc, common_pb2, generation_pb2

    stub = chat_pb2_grpc.ChatServiceStub(grpc.insecure_channel(address))

    def one(i: int) -> int:
        return stub.Chat(chat_pb2.ChatRequest(
            twin="mara-quill", messages=[common_pb2.ChatMessage(role="user", content=questions[i])],
            sampling=generation_pb2.SamplingParams(max_tokens=max_tokens, repetition_penalty=1.0)),
            timeout=900).usage.completion_tokens

    return _fan_out(len(questions), one)


EVAL_QUESTIONS = ("Why combine BM25 with embeddings?", "How should I cut documents into chunks?",
                  "What should a good alert have?", "How do you run database migrations without downtime?",
                  "What does a Kubernetes operator do?", "How do I keep on-call humane?",
                  "When is a reranker worth it?", "What makes a runbook useful?")


def _eval_rate(base: str, settings, concurrency: int) -> float:
    """`twin eval rag`'s loop (chat through the HTTP API, embedding judge in this process) over
    the questions above: questions/s."""
    from llm_twin.evaluation.judge import EmbeddingJudge
    from llm_twin.evaluation.rag import ChatEndpoint, evaluate_rag
    from llm_twin.evaluation.retrieval import Question
    from services.embedding.core import Embedder

    from .sample_corpus import AUTHOR

    questions = [Question(q, AUTHOR, ()) for q in EVAL_QUESTIONS]
    judge = EmbeddingJudge(Embedder.from_settings(settings))
    started = time.perf_counter()
    rows, _ = evaluate_rag(questions, ChatEndpoint(base, max_tokens=48), judge, concurrency=concurrency)
    if any(r["error"] and not r["error"].startswith("no sources") for r in rows):
        sys.exit(f"make bench: twin eval rag failed: {[r['error'] for r in rows if r['error']]}")
    return len(questions) / (time.perf_counter() - started)


def run() -> None:
    from llm_twin.config import Settings, configure_torch_threads
    from services.generation.model_store import resolve_model

    from .local_serving import ServeProcess
    from .sample_corpus import index_sample

    settings = Settings()
    configure_torch_threads(settings)
    model = resolve_model(settings.generation.model, settings.data_dir)
    print(f"serving: {Path(model).name} streamed in this process, through gRPC and HTTP ...", flush=True)
    engine = InProcess(settings.with_overrides(generation_model=model))
    with tempfile.TemporaryDirectory(prefix="twin-bench-") as tmp:
        data_dir = Path(tmp)
        index_sample(data_dir)
        platform = ServeProcess(data_dir, 9300, 8300, env={"TWIN_GENERATION_MODEL": model},
                                log=subprocess.DEVNULL).start()
        try:
            try:
                platform.wait_ready(600)
            except RuntimeError as exc:
                sys.exit(f"make bench: {exc} (run `twin serve` by hand to see why)")
            address, base = platform.grpc, platform.http
            try:
                streams = _streams(engine, platform.process.pid, address, base)
            finally:
                engine.close()
            _chat_throughput(address, [WARM_UP_QUESTION], 8)  # warm the chat path
            fresh = iter(CHAT_QUESTIONS)
            concurrency = {n: (_chat_throughput(address, [next(fresh)], n),
                               _chat_throughput(address, [next(fresh) for _ in range(CLIENTS)], n))
                           for n in CHAT_TOKENS}
            generate = (_generate_throughput(address, 1), _generate_throughput(address, CLIENTS))
            _eval_rate(base, settings, EVAL_CONCURRENCY)  # both runs below then find every prompt cached
            evals = (_eval_rate(base, settings, 1), _eval_rate(base, settings, EVAL_CONCURRENCY))
        finally:
            platform.stop()
    alone, beside = streams["alone"], streams["beside"]
    print(f"serving: in-process stream with the platform paused {alone:.1f} tok/s, with it idle beside "
          f"{beside:.1f} tok/s = {beside / alone:.2f} (the platform's mere presence), medians of {ROUNDS} "
          "interleaved rounds")
    for name, rate in (("gRPC stream", streams["grpc"]), ("HTTP SSE", streams["http"])):
        print(f"serving: {name} {rate:.1f} tok/s / in-process stream {alone:.1f} tok/s = {rate / alone:.2f} "
              f"(goal >= 0.9); / in-process with the platform idle beside it = {rate / beside:.2f} (the hops alone)")
    print(f"serving: {CLIENTS} concurrent generate clients {generate[1]:.1f} tok/s / 1 client {generate[0]:.1f} tok/s "
          f"= {generate[1] / generate[0]:.2f} (batching alone: short prompts, no retrieval)")
    print(f"serving: twin eval rag {len(EVAL_QUESTIONS)} questions, {EVAL_CONCURRENCY} at a time {evals[1]:.2f} "
          f"questions/s / one at a time {evals[0]:.2f} = {evals[1] / evals[0]:.2f} (batch inference through the "
          "chat API, embedding judge, prompts cached in both)")
    for n, (one, many) in concurrency.items():
        print(f"serving: {CLIENTS} concurrent chat clients {many:.1f} tok/s / 1 client {one:.1f} tok/s = "
              f"{many / one:.2f} (goal >= 4), answers of up to {n} tokens")


if __name__ == "__main__":
    run()
