"""`make bench`: speed and quality figures, each as a ratio against a baseline measured in the same run.

- extraction: this extractor's F1 / trafilatura's default F1 on the article-extraction benchmark;
- retrieval: hybrid MRR@10 / chunk-level RRF MRR@10 on the handbook question set, and hybrid
  latency / dense-only latency;
- indexing: chunks per second embedded and loaded;
- serving (twin_cli/bench_serving.py): tokens/s through gRPC and HTTP against in-process
  `generate`, and 8 concurrent chat clients against one;
- training (twin_cli/bench_training.py): Ray Train samples/s against plain TRL's.
The data-plane parts need ../shared (the benchmark pages and the corpus); says so and stops where it is absent.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


def main() -> None:
    if not SHARED.is_dir():
        sys.exit(f"make bench needs {SHARED} (the benchmark pages and the handbook corpus)")
    import trafilatura

    from llm_twin.config import Settings
    from llm_twin.evaluation.extraction import run_benchmark
    from llm_twin.evaluation.retrieval import evaluate, load_questions
    from llm_twin.handbook import import_handbook
    from llm_twin.warehouse import Warehouse
    from services.crawler.extract import _CONFIG, extract_article
    from services.embedding.core import Embedder
    from services.retrieval.core import Retriever
    from services.retrieval.indexer import Indexer
    from services.retrieval.store import MilvusStore

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
        print(f"indexing: {report.chunks_written} chunks in {seconds:.1f} s = {report.chunks_written / seconds:.1f} chunks/s")

        retriever = Retriever(store, embedder)
        questions = load_questions(ROOT / "tests" / "data" / "handbook_questions.jsonl")
        results, latency = {}, {}
        for strategy in ("dense", "rrf", "hybrid"):
            started = time.perf_counter()
            results[strategy] = evaluate(questions, lambda q: [r.link for r in retriever.search(
                q.question, author=q.author, top_k=10, strategy=strategy)])
            latency[strategy] = (time.perf_counter() - started) / len(questions)
        for strategy, scores in results.items():
            print(f"retrieval {strategy:6}: hit@1 {scores['hit@1']:.3f} hit@5 {scores['hit@5']:.3f} "
                  f"MRR@10 {scores['mrr@10']:.3f}  {latency[strategy] * 1000:.0f} ms/query")
        print(f"retrieval MRR@10 hybrid / rrf = {results['hybrid']['mrr@10'] / results['rrf']['mrr@10']:.3f}; "
              f"latency hybrid / dense = {latency['hybrid'] / latency['dense']:.2f}")
        store.close()


if __name__ == "__main__":
    main()
