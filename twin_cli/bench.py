"""`make bench`: speed and quality figures, each as a ratio against a baseline measured in the same run.

- extraction: this extractor's F1 / trafilatura's default F1 on the article-extraction benchmark;
- archives (twin_cli/bench_archives.py): each archive format's pieces kept, text F1 and dropped
  items leaked, on archives built from the formats' documented shapes;
- retrieval (twin_cli/bench_retrieval.py): every stage per kind of question on the five handbook
  question sets, the default's MRR@10 / plain chunk RRF's on the hard set, and first-stage latency
  / dense-only latency;
- indexing: chunks per second embedded and loaded;
- generation (twin_cli/bench_generation.py): single-stream decode tokens/s of the lean loop in each
  quantization against the float32 loop through transformers' forward, with perplexity and
  greedy-agreement deltas; 8 streams against one; inter-token latency while prompts arrive
  (chunked against whole prefill); time to first token with the prefix cache against without;
  the local teacher 8 at a time against one at a time;
- structured (twin_cli/bench_structured.py): tokens/s with a JSON schema against without, valid
  answers constrained against asked for in the prompt, the local teacher's kept instructions and
  the platform's own model as judge (unscored answers, agreement with the embedding scores);
- serving (twin_cli/bench_serving.py): tokens/s through gRPC and HTTP against the same engine
  streaming in process, and 8 concurrent chat clients against one;
- tracing (twin_cli/bench_tracing.py): chat throughput with every request an MLflow trace against
  monitoring off, and the cost of one traced request's logging;
- peer (twin_cli/bench_peer.py): llama.cpp (built once from PyPI's source distribution) against the
  platform on the same model file: in process and server against server, 1 and 8 streams;
- training (twin_cli/bench_training.py): Ray Train samples/s against plain TRL's;
- pii: masking time of pathological inputs at the request size limit (TWIN_MAX_REQUEST_CHARS) and
  at a tenth of it: the ratio is ~10 when masking is linear (it was ~100 for several patterns).
The data-plane parts need ../shared (the benchmark pages and the corpus); says so and stops where it is absent.
`python -m twin_cli.bench [data] [archives] [generation] [structured] [serving] [tracing] [peer] [training]
[pii]` runs some
(`make bench BENCH="data"`); all by default. Each part's output replaces its section of
docs/benchmarks.md (bench_report.py).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from . import bench_report as report

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


PARTS = ("data", "relevance", "archives", "generation", "structured", "serving", "tracing", "peer", "training",
         "pii")
# Inputs that made a backtracking pattern rescan the rest of the text from every position.
PII_PATHOLOGICAL = ("a.", "a-", "1.", "1 ", "eyJ-", "-----BEGIN A-----", "a@", "aB/", "a:", "+1(", "sk-", "a.a@")


def main(parts: list[str]) -> None:
    unknown = set(parts) - set(PARTS)
    if unknown:
        sys.exit(f"unknown benchmark {', '.join(sorted(unknown))}; choose from {', '.join(PARTS)}")
    parts = parts or list(PARTS)
    runs = {"data": data_plane, "relevance": _part("bench_relevance"),
            "archives": _part("bench_archives"), "generation": _part("bench_generation"),
            "structured": _part("bench_structured"),
            "serving": _part("bench_serving"), "tracing": _part("bench_tracing"), "peer": _part("bench_peer"),
            "training": _part("bench_training"), "pii": pii_masking}
    for part in parts:
        with report.captured(part):
            runs[part]()
    print(f"figures written to {report.PAGE.relative_to(ROOT)}")


def _part(module: str):
    def run() -> None:
        import importlib

        importlib.import_module(f"twin_cli.{module}").run()

    return run


def pii_masking() -> None:
    from llm_twin import pii
    from llm_twin.config import Settings

    size = Settings().gateway.max_request_chars
    worst = 0.0
    print(f"pii masking, pathological inputs ({size} characters / {size // 10}):")
    for unit in PII_PATHOLOGICAL:
        seconds = []
        for n in (size // 10, size):
            text = (unit * (n // len(unit) + 1))[:n]
            best = min(_timed(pii.mask, text) for _ in range(3))
            seconds.append(best)
        worst = max(worst, seconds[1])
        print(f"  {unit!r:22} {seconds[1] * 1000:8.1f} ms   10x input / 1x = {seconds[1] / seconds[0]:5.1f}")
    print(f"pii masking: slowest input at the size limit {worst * 1000:.0f} ms")


def _timed(fn, *args) -> float:
    started = time.perf_counter()
    fn(*args)
    return time.perf_counter() - started


def data_plane() -> None:
    """Extraction, indexing and retrieval (bench_retrieval.py) on ../shared."""
    if not SHARED.is_dir():
        sys.exit(f"make bench needs {SHARED} (the benchmark pages and the handbook corpus)")
    import trafilatura

    from llm_twin.config import Settings
    from llm_twin.evaluation.extraction import run_benchmark
    from llm_twin.handbook import import_handbook
    from llm_twin.warehouse import Warehouse
    from services.crawler.extract import _CONFIG, extract_article
    from services.embedding.core import Embedder
    from services.retrieval.indexer import Indexer
    from services.retrieval.store import MilvusStore

    from . import bench_retrieval

    pages = SHARED / "benchmarks" / "article-extraction"
    ours = run_benchmark(pages, lambda raw: extract_article(raw).text)
    base = run_benchmark(pages, lambda raw: trafilatura.extract(raw, config=_CONFIG) or "")
    print(f"extraction F1: ours {ours.f1:.4f} / trafilatura default {base.f1:.4f} = {ours.f1 / base.f1:.3f}")

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(data_dir=Path(tmp), torch_threads=2)
        import_handbook(SHARED / "corpus" / "llm-engineers-handbook", Warehouse(settings.resolved_warehouse_uri))
        embedder = Embedder.from_settings(settings)
        store = MilvusStore.from_settings(settings, embedder.dimension)
        started = time.perf_counter()
        report = Indexer.from_settings(settings, embedder, store).run()
        seconds = time.perf_counter() - started
        print(f"indexing: {report.chunks_written} chunks in {seconds:.1f} s = {report.chunks_written / seconds:.1f} "
              f"chunks/s")

        stages = bench_retrieval.run(store, embedder, settings)
        dev, default = stages["handbook_questions_hard.jsonl"], bench_retrieval.DEFAULT
        print(f"retrieval hard set MRR@10 default / plain chunk RRF = "
              f"{dev[default]['mrr@10'] / dev['rrf (fused per chunk)']['mrr@10']:.3f}; first-stage latency "
              f"rrf / dense = {dev['rrf (fused per chunk)']['ms_per_query'] / dev['dense']['ms_per_query']:.2f}")
        store.close()


if __name__ == "__main__":
    main(sys.argv[1:])
