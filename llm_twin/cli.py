"""`twin`: the LLM Twin command line."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path

import click

from .config import Settings

log = logging.getLogger("llm_twin")


def _settings(ctx: click.Context) -> Settings:
    return ctx.obj["settings"]


def _fail(message: str, code: int = 1) -> None:
    click.secho(f"error: {message}", fg="red", err=True)
    sys.exit(code)


def _progress(label: str, total: int):
    return _bar(label, total, "chunk").update


def _bar(label: str, total: int, unit: str = "item"):
    from tqdm import tqdm

    return tqdm(total=total, desc=label, unit=unit, file=sys.stderr, disable=None, leave=False)


def _quiet_libraries() -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("pymilvus", "milvus_lite", "sentence_transformers", "transformers", "httpx", "trafilatura"):
        logging.getLogger(name).setLevel(logging.ERROR)
    try:
        import transformers

        transformers.utils.logging.disable_progress_bar()
    except Exception:  # noqa: BLE001 - only cosmetics
        pass


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--data-dir", type=click.Path(path_type=Path), help="Data folder [env TWIN_DATA_DIR, default ./.twin].")
@click.option("--milvus-uri", help="Milvus Lite file or server URI [env TWIN_MILVUS_URI].")
@click.option("--warehouse-uri", help="fsspec URI of the warehouse, e.g. s3://bucket/wh [env TWIN_WAREHOUSE_URI].")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
@click.pass_context
def main(ctx: click.Context, data_dir, milvus_uri, warehouse_uri, verbose) -> None:
    """LLM Twin: crawl a person's writing, index it, search it (and, soon, chat with their twin)."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    _quiet_libraries()
    try:
        settings = Settings().with_overrides(data_dir=data_dir, milvus_uri=milvus_uri, warehouse_uri=warehouse_uri)
    except Exception as exc:  # pydantic ValidationError: a bad TWIN_* variable
        _fail(f"invalid configuration: {exc}")
    ctx.obj = {"settings": settings}


@main.command()
@click.argument("targets", nargs=-1, required=True)
@click.option("--author", required=True, help="Whose writing this is, e.g. 'Paul Iusztin'.")
@click.option("--source", default="auto", show_default=True,
              type=click.Choice(["auto", "article", "feed", "sitemap", "git", "folder", "linkedin-export"]),
              help="Source type; auto detects it from the path or the fetched content.")
@click.pass_context
def crawl(ctx: click.Context, targets, author, source) -> None:
    """Crawl URLs or paths into the warehouse: articles, feeds, sitemaps, git repos, folders, LinkedIn exports."""
    from services.crawler.errors import CrawlError

    from .app import build_crawler, open_warehouse

    settings = _settings(ctx)
    if not author.strip():
        _fail("--author is empty: name the person whose writing this is")
    crawler = build_crawler(settings, open_warehouse(settings))
    marks = {"stored": ("stored   ", "green"), "updated": ("updated  ", "cyan"),
             "unchanged": ("unchanged", None), "failed": ("failed   ", "red")}

    def show(outcome) -> None:
        mark, colour = marks[outcome.status]
        click.echo(click.style(mark, fg=colour) + f" {outcome.target}" + (f"  ({outcome.detail})" if outcome.detail else ""))

    try:
        report = crawler.crawl(targets, author, source, on_outcome=show)
    except (CrawlError, ValueError) as exc:
        _fail(str(exc))
    finally:
        crawler.fetcher.close()
    click.echo(f"{report.summary()}")
    if not report.ok:
        _fail("nothing could be crawled")


@main.command()
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--jsonl", is_flag=True, help="Print one {path, title, text} JSON object per file.")
def extract(paths, jsonl) -> None:
    """Run the main-text extractor on saved pages (.html or .html.gz)."""
    from services.crawler.errors import CrawlError
    from services.crawler.extract import extract_article, read_saved_page

    failed = 0
    for path in paths:
        try:
            page = extract_article(read_saved_page(path), url=None)
            title, text = page.title, page.text
        except (CrawlError, OSError) as exc:
            failed += 1
            click.secho(f"failed {path}: {getattr(exc, 'reason', exc)}", fg="red", err=True)
            title, text = "", ""
            if not jsonl:
                continue
        if jsonl:
            click.echo(json.dumps({"path": str(path), "title": title, "text": text}, ensure_ascii=False))
        else:
            click.echo(f"# {title}\n\n{text}\n")
    if failed == len(paths):
        sys.exit(1)


@main.command("import-handbook")
@click.argument("directory", type=click.Path(path_type=Path))
@click.pass_context
def import_handbook_cmd(ctx: click.Context, directory: Path) -> None:
    """Import the LLM Engineer's Handbook warehouse export (ArticleDocument.json, ...)."""
    from .app import open_warehouse
    from .handbook import HandbookImportError, import_handbook

    try:
        counts = import_handbook(directory, open_warehouse(_settings(ctx)))
    except HandbookImportError as exc:
        _fail(str(exc))
    click.echo(f"{counts['stored']} stored, {counts['updated']} updated, {counts['unchanged']} unchanged")


@main.command()
@click.pass_context
def index(ctx: click.Context) -> None:
    """Clean, chunk, embed and load new or changed documents into Milvus (incremental)."""
    from .app import build_indexer, load_embedder, open_store

    settings = _settings(ctx)
    started = time.perf_counter()
    click.echo("loading the embedding model ...", err=True)
    embedder = load_embedder(settings)
    store = open_store(settings, embedder.dimension)
    report = build_indexer(settings, embedder, store).run(progress=_progress)
    click.echo(f"{report.summary()} in {time.perf_counter() - started:.1f} s")


def _retrieval(settings: Settings):
    from .app import build_retriever, load_embedder, open_store

    embedder = load_embedder(settings)
    return build_retriever(settings, embedder, open_store(settings, embedder.dimension))


@main.command()
@click.argument("question")
@click.option("--author", help="Only this twin's writing (name or slug).")
@click.option("--category", type=click.Choice(["article", "post", "code"]), help="Only this category.")
@click.option("--top-k", default=5, show_default=True, type=int, help="Documents to return.")
@click.option("--strategy", default="hybrid", show_default=True,
              type=click.Choice(["hybrid", "rrf", "dense", "keyword"]))
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_context
def search(ctx: click.Context, question, author, category, top_k, strategy, as_json) -> None:
    """Search the index: hybrid dense + keyword retrieval, one result per document."""
    from services.retrieval.errors import RetrievalError

    try:
        retriever = _retrieval(_settings(ctx))
        results = retriever.search(question, author=author, category=category, top_k=top_k, strategy=strategy)
    except RetrievalError as exc:
        _fail(str(exc))
    if as_json:
        click.echo(json.dumps([r.__dict__ for r in results], ensure_ascii=False, indent=1))
        return
    if not results:
        click.echo("no results (is the index empty? run `twin index`)")
    for rank, r in enumerate(results, start=1):
        click.secho(f"{rank}. [{r.score:.4f}] {r.title}", bold=True)
        click.echo(f"   {r.author} · {r.category} · {r.link}")
        snippet = " ".join(r.text.split())
        click.echo(f"   {snippet[:300]}{'...' if len(snippet) > 300 else ''}\n")


@main.group("eval")
def eval_group() -> None:
    """Measure extraction and retrieval quality."""


@eval_group.command("retrieval")
@click.option("--questions", required=True, type=click.Path(path_type=Path), help="JSONL question file.")
@click.option("--strategy", default="hybrid", show_default=True,
              type=click.Choice(["hybrid", "rrf", "dense", "keyword"]))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def eval_retrieval(ctx: click.Context, questions, strategy, as_json) -> None:
    """hit@1, hit@5 and MRR@10 (document level) of the current index on a question file."""
    from services.retrieval.errors import RetrievalError

    from .evaluation.retrieval import QuestionFileError, evaluate, load_questions

    try:
        items = load_questions(questions)
        retriever = _retrieval(_settings(ctx))
        scores = evaluate(items, lambda q: [r.link for r in retriever.search(
            q.question, author=q.author, top_k=10, strategy=strategy)])
    except (QuestionFileError, RetrievalError) as exc:
        _fail(str(exc))
    misses = scores.pop("misses")
    if as_json:
        click.echo(json.dumps(scores))
        return
    click.echo(f"strategy {strategy}: hit@1 {scores['hit@1']:.3f}  hit@5 {scores['hit@5']:.3f}  "
               f"MRR@10 {scores['mrr@10']:.3f}  (n={scores['n']})")
    for question in misses:
        click.echo(f"  not in top 10: {question}")


@eval_group.command("extraction")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def eval_extraction(directory: Path, as_json) -> None:
    """Score main-text extraction on the article-extraction benchmark (html/ + ground-truth.json)."""
    from tqdm import tqdm

    from services.crawler.extract import extract_article

    from .evaluation.extraction import run_benchmark

    if not (directory / "ground-truth.json").is_file():
        _fail(f"{directory}: no ground-truth.json (expected the article-extraction benchmark folder)")
    result = run_benchmark(directory, lambda raw: extract_article(raw).text,
                           progress=lambda it: tqdm(it, desc="extracting", file=sys.stderr, disable=None, leave=False))
    if as_json:
        click.echo(json.dumps(result.as_dict()))
    else:
        click.echo(f"F1 {result.f1:.4f}  precision {result.precision:.4f}  recall {result.recall:.4f}  "
                   f"({result.pages} pages, {result.failures} without text)")


@main.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """What is in the warehouse and the index."""
    from .app import open_store, open_warehouse

    settings = _settings(ctx)
    warehouse = open_warehouse(settings)
    click.echo(f"warehouse {settings.resolved_warehouse_uri}")
    for slug, name in warehouse.authors().items():
        click.echo(f"  {name} ({slug}): {len(warehouse.paths(slug))} documents")
    from services.embedding.core import DIMENSION

    store = open_store(settings, DIMENSION)
    click.echo(f"index {settings.resolved_milvus_uri} collection {settings.collection}: {store.count()} chunks")


@main.command()
@click.option("--grpc-port", type=int, help="Ray Serve's gRPC proxy port [env TWIN_GRPC_PORT, default 9000].")
@click.option("--http-port", type=int, help="HTTP gateway port [env TWIN_HTTP_PORT, default 8000].")
@click.option("--model", "generation_model", help="Generation model folder or cached hub id "
              "[env TWIN_GENERATION_MODEL; default: the embedded SmolLM2-135M-Instruct].")
@click.option("--trace-sampling-ratio", type=click.FloatRange(0, 1), default=1.0, show_default=True,
              help="Share of requests traced (exported only when OTEL_EXPORTER_OTLP_ENDPOINT is set).")
@click.option("--stop", is_flag=True, help="Stop the platform started by `twin serve` for this data folder.")
@click.pass_context
def serve(ctx: click.Context, grpc_port, http_port, generation_model, trace_sampling_ratio, stop) -> None:
    """Serve the platform: gRPC (twin.v1) and HTTP (JSON + OpenAI API) over the local index."""
    from . import serving

    settings = _settings(ctx).with_overrides(grpc_port=grpc_port, http_port=http_port,
                                             generation_model=generation_model)
    if stop:
        try:
            stopped = serving.stop_running(settings)
        except RuntimeError as exc:
            _fail(str(exc))
        click.echo("stopped" if stopped else f"nothing to stop (no `twin serve` for {settings.data_dir})")
        return
    try:
        serving.run(settings, trace_sampling_ratio=trace_sampling_ratio)
    except Exception as exc:  # noqa: BLE001 - a clear line beats a Ray traceback
        _fail(f"serve failed: {exc}")


@main.command(context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
@click.option("-n", "--namespace", "namespaces", multiple=True, help="Namespace(s) to watch (repeatable; globs allowed).")
@click.option("-A", "--all-namespaces", is_flag=True, help="Watch the whole cluster.")
@click.option("--standalone", is_flag=True, help="No peering with other operator instances.")
@click.option("--liveness", help="Liveness endpoint, e.g. http://0.0.0.0:8080/healthz.")
def operator(namespaces, all_namespaces, standalone, liveness) -> None:
    """Run the TwinModel operator (kopf) against the current kubeconfig or in-cluster account."""
    import asyncio

    import kopf

    import operators.twinmodel.handlers  # noqa: F401  (registers the handlers)

    if not namespaces and not all_namespaces:
        _fail("say what to watch: -n NAMESPACE (repeatable) or -A for the whole cluster", 2)
    asyncio.run(kopf.operator(clusterwide=all_namespaces, namespaces=list(namespaces), standalone=standalone,
                              liveness_endpoint=liveness))


@main.command()
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A rendered TwinModel (the operator's ConfigMap); its spec gives the author, sources, training.")
@click.option("--author", help="Without --config: the twin's author (their writing already crawled).")
@click.option("--max-examples", type=int, default=2000, show_default=True)
@click.option("--sft-steps", type=int, default=-1, show_default=True)
@click.option("--dpo-steps", type=int, default=-1, show_default=True)
@click.option("--rejected-max-tokens", type=int, default=160, show_default=True,
              help="Length of the base model's (rejected) answers in the preference pairs.")
@click.option("--no-ray", is_flag=True, help="Train in this process instead of Ray Train workers.")
@click.pass_context
def pipeline(ctx: click.Context, config_path, author, max_examples, sft_steps, dpo_steps, rejected_max_tokens,
             no_ray) -> None:
    """A twin end to end: crawl -> index -> dataset -> train (SFT + DPO) -> evaluate -> register."""
    import json

    from training.pipeline import PipelineOptions, run

    settings = _settings(ctx)
    if config_path:
        spec = json.loads(config_path.read_text())["spec"]
        sources = spec["author"].get("sources", {})
        training = spec.get("training", {})
        lora = training.get("lora", {})
        options = PipelineOptions(
            author=spec["author"]["name"],
            sources=[*sources.get("feeds", []), *sources.get("pages", []), *sources.get("repositories", [])],
            base_model=training.get("baseModel"), version=os.environ.get("TWIN_MODEL_VERSION"),
            max_examples=spec.get("dataset", {}).get("maxExamples", max_examples),
            test_fraction=spec.get("dataset", {}).get("testFraction", 0.2),
            teacher_url=spec.get("dataset", {}).get("teacherEndpoint"),
            train={"num_workers": training.get("workers", 1), "gpus_per_worker": training.get("gpusPerWorker", 0),
                   "lora": {"r": lora.get("r", 16), "alpha": lora.get("alpha", 32), "dropout": lora.get("dropout", 0.05),
                            "target_modules": lora.get("targetModules", ["q_proj", "k_proj", "v_proj", "o_proj"])},
                   **({"deepspeed": {"zero_stage": training["deepspeed"].get("zeroStage", 2),
                                     "offload": training["deepspeed"].get("offload", False)}}
                      if training.get("deepspeed") else {})},
            max_perplexity_ratio=spec.get("evaluation", {}).get("gate", {}).get("maxPerplexityRatio", 1.0),
            use_ray=not no_ray)
    elif author:
        options = PipelineOptions(author=author, max_examples=max_examples, use_ray=not no_ray,
                                  rejected_max_tokens=rejected_max_tokens,
                                  train={"sft": {"max_steps": sft_steps, "batch_size": 2},
                                         "dpo": {"max_steps": dpo_steps, "batch_size": 2},
                                         "threads_per_worker": settings.torch_threads or 1})
    else:
        _fail("give --config (a rendered TwinModel) or --author", 2)
    bars: dict = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage) or bars.setdefault(stage, _bar(stage, total))
        bar.update(done - bar.n)

    try:
        result = run(settings, options, say=click.echo, progress=progress)
    except (ValueError, RuntimeError) as exc:
        _fail(str(exc), 3)
    finally:
        for bar in bars.values():
            bar.close()
    click.echo(f"registered {result['model']} ({'servable' if result['servable'] else 'held back by the gate'})")
    if not result["servable"]:
        sys.exit(4)

# -- training ---------------------------------------------------------------------------------------
def _artifact_uri(settings: Settings) -> str:
    return settings.resolved_artifact_uri


def _local_generator(settings: Settings, model: str | None = None):
    from services.generation.core import Generator
    from services.generation.model_store import resolve_model
    from services.generation.transformers_backend import TransformersBackend

    from .config import configure_torch_threads

    configure_torch_threads(settings)
    path = resolve_model(model or settings.generation_model, settings.data_dir)
    return Generator(backend=TransformersBackend(path, max_batch_size=settings.max_batch_size)), path


@main.group("dataset")
def dataset_group() -> None:
    """Instruction and preference datasets from an author's writing."""


@dataset_group.command("build")
@click.option("--author", required=True, help="Whose writing, e.g. 'Mara Quill'.")
@click.option("--teacher-url", envvar="TWIN_TEACHER_URL", help="OpenAI-compatible endpoint writing the instructions "
              "(private data is masked first); default: the local model.")
@click.option("--teacher-model", envvar="TWIN_TEACHER_MODEL", default="gpt-4o-mini", show_default=True)
@click.option("--test-fraction", type=click.FloatRange(0.01, 0.5), default=0.2, show_default=True)
@click.option("--max-examples", type=click.IntRange(2, 1_000_000), default=2000, show_default=True)
@click.pass_context
def dataset_build(ctx: click.Context, author, teacher_url, teacher_model, test_fraction, max_examples) -> None:
    """Backtranslated instructions (the author's text is the answer) and preference pairs."""
    from training import datasets

    from .app import open_warehouse

    settings = _settings(ctx)
    generator, _ = _local_generator(settings)
    base = datasets.LocalTeacher(generator)
    teacher = datasets.OpenAITeacher(teacher_url, teacher_model, os.environ.get("TWIN_TEACHER_KEY", "unused")) \
        if teacher_url else base
    bars: dict = {}

    def progress(stage: str, done: int, total: int) -> None:
        bar = bars.get(stage) or bars.setdefault(stage, _bar(stage, total))
        bar.update(done - bar.n)

    try:
        manifest = datasets.build(author, open_warehouse(settings), _artifact_uri(settings), teacher, base,
                                  test_fraction=test_fraction, max_examples=max_examples, progress=progress)
    except ValueError as exc:
        _fail(str(exc))
    finally:
        for bar in bars.values():
            bar.close()
        generator.backend.close()
    counts = manifest["counts"]
    click.echo(f"{'reused' if manifest['reused'] else 'built'} {manifest['path']}: {counts['train']} train, "
               f"{counts['test']} test ({len(manifest['documents']['test'])} held-out documents), "
               f"{counts['preference']} preference pairs, {counts['dropped']} passages dropped; digest {manifest['digest'][:12]}")


@main.command()
@click.option("--author", required=True)
@click.option("--dataset", "dataset_dir", required=True, help="Path printed by `twin dataset build`.")
@click.option("--base-model", help="Default: the serving model (SmolLM2-135M-Instruct).")
@click.option("--workers", type=int, default=1, show_default=True, help="Ray Train workers.")
@click.option("--gpus-per-worker", type=int, default=0, show_default=True)
@click.option("--threads-per-worker", type=int, default=1, show_default=True)
@click.option("--sft-steps", type=int, default=-1, show_default=True, help="-1: whole epochs.")
@click.option("--dpo-steps", type=int, default=-1, show_default=True)
@click.option("--no-dpo", is_flag=True)
@click.option("--lora-r", type=int, default=16, show_default=True)
@click.option("--zero-stage", type=click.IntRange(0, 3), help="DeepSpeed ZeRO stage (default: no DeepSpeed).")
@click.option("--no-ray", is_flag=True, help="Run the training function in this process (one worker).")
@click.pass_context
def train(ctx: click.Context, author, dataset_dir, base_model, workers, gpus_per_worker, threads_per_worker, sft_steps,
          dpo_steps, no_dpo, lora_r, zero_stage, no_ray) -> None:
    """SFT then DPO with a LoRA adapter (Ray Train + TRL), registered in the artifact store."""
    import tempfile

    from pydantic import ValidationError

    from training import registry, trainer
    from training.config import TrainConfig
    from training.sft_dpo import train as train_here

    settings = _settings(ctx)
    if not base_model:
        from services.generation.model_store import resolve_model

        base_model = resolve_model(settings.generation_model, settings.data_dir)
    output = tempfile.mkdtemp(prefix="twin-train-", dir=settings.data_dir)
    try:
        cfg = TrainConfig(author=author, base_model=base_model, dataset_dir=dataset_dir, output_dir=output,
                          num_workers=workers, gpus_per_worker=gpus_per_worker, threads_per_worker=threads_per_worker,
                          sft={"max_steps": sft_steps}, dpo={"max_steps": dpo_steps, "enabled": not no_dpo},
                          lora={"r": lora_r, "alpha": 2 * lora_r},
                          deepspeed={"zero_stage": zero_stage} if zero_stage is not None else None)
    except ValidationError as exc:
        _fail("invalid training configuration:\n" + "\n".join(f"  {'.'.join(map(str, e['loc']))}: {e['msg']}"
                                                               for e in exc.errors()), 2)
    try:
        metrics = train_here(cfg.model_dump()) if no_ray else trainer.run(cfg, str(settings.data_dir.resolve() / "ray"))
    except ValueError as exc:
        _fail(str(exc), 2)
    import json as _json

    manifest = _json.loads(open(os.path.join(dataset_dir, "manifest.json")).read()) if os.path.exists(
        os.path.join(dataset_dir, "manifest.json")) else {}
    version = f"{manifest.get('key', 'local')}-{os.path.basename(output).split('-')[-1]}"
    path = registry.register(_artifact_uri(settings), author, version, output, {
        "base_model": base_model, "dataset": dataset_dir, "dataset_digest": manifest.get("digest"),
        "hyperparameters": cfg.model_dump(exclude={"output_dir", "dataset_dir"}), "metrics": metrics})
    click.echo(f"registered {path}: " + ", ".join(f"{k} {v}" for k, v in metrics.items() if k != "stage"))


@eval_group.command("model")
@click.option("--model", "model_path", required=True, help="A registered model folder (see `twin models list`).")
@click.option("--dataset", "dataset_dir", help="Default: the dataset the model was trained on.")
@click.option("--max-perplexity-ratio", type=float, default=1.0, show_default=True,
              help="Gate: twin perplexity / base perplexity on held-out text must not exceed this.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def eval_model(ctx: click.Context, model_path, dataset_dir, max_perplexity_ratio, as_json) -> None:
    """Perplexity on the author's held-out documents and style similarity, base vs twin, and the gate."""
    import json as _json

    from training import datasets
    from training.evaluate import evaluate, gate

    from .app import load_embedder

    settings = _settings(ctx)
    meta = _json.loads(open(os.path.join(model_path, "metadata.json")).read())
    rows = datasets.load(dataset_dir or meta["dataset"], "test.jsonl")
    if not rows:
        _fail("the dataset has no held-out examples to evaluate on")
    result = evaluate(meta["base_model"], os.path.join(model_path, "adapter"), meta["author"], rows,
                      embedder=load_embedder(settings))
    ok, why = gate(result, max_perplexity_ratio)
    result.update(gate_passed=ok, gate=why)
    with open(os.path.join(model_path, "evaluation.json"), "w") as f:
        _json.dump(result, f, indent=2)
    from training.registry import update

    update(model_path, evaluation={k: v for k, v in result.items() if k != "samples"}, servable=ok)
    if as_json:
        click.echo(_json.dumps(result, indent=2))
        return
    click.echo(f"perplexity base {result['perplexity_base']:.2f} -> twin {result['perplexity_twin']:.2f} "
               f"(ratio {result['perplexity_ratio']:.3f}) on {result['test_examples']} held-out examples")
    if "style_twin" in result:
        click.echo(f"style similarity base {result['style_base']:.3f} -> twin {result['style_twin']:.3f}")
        for s in result.get("samples", []):
            click.echo(f"  Q: {s['instruction']}\n    base: {s['base'][:160]}\n    twin: {s['twin'][:160]}")
    click.echo(f"gate: {'PASS' if ok else 'FAIL'} ({why})")
    if not ok:
        sys.exit(3)


@main.group("models")
def models_group() -> None:
    """The model registry."""


@models_group.command("list")
@click.pass_context
def models_list(ctx: click.Context) -> None:
    from training.registry import list_models

    found = list_models(_artifact_uri(_settings(ctx)))
    if not found:
        click.echo("no models yet: `twin dataset build` then `twin train`")
    for m in found:
        click.echo(f"{m['author']}  {m['version']}  base {m['base_model']}  {m['registered']}  {m['path']}")


if __name__ == "__main__":
    main()
