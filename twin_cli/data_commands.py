"""The data path: crawl, extract, import, index, search, status, and the data-quality evaluations."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from llm_twin.config import Settings
from services.crawler.sources import SOURCE_TYPES, SOURCES

from .common import bar, fail, settings_of


@click.command()
@click.argument("targets", nargs=-1, required=True)
@click.option("--author", required=True, help="Whose writing this is, e.g. 'Paul Iusztin'.")
@click.option("--source", default="auto", show_default=True,
              type=click.Choice(SOURCE_TYPES),
              help="Source type; auto detects it from the path or the fetched content. "
              + "; ".join(f"{name}: {cls.summary}" for name, cls in SOURCES.items()) + ".")
@click.option("--allow-private", is_flag=True, help="Also reach loopback and private-network addresses for this run "
              "(your own intranet or a local test site); otherwise only public addresses and "
              "TWIN_CRAWL_ALLOWED_NETWORKS are crawled.")
@click.option("--allow-insecure-git", is_flag=True, help="Also clone git repositories over http://, ssh:// or git:// "
              "(otherwise https:// only).")
@click.pass_context
def crawl(ctx: click.Context, targets, author, source, allow_private, allow_insecure_git) -> None:
    """Crawl URLs or paths into the warehouse: articles, feeds, sitemaps, git repos, folders, LinkedIn exports."""
    from services.crawler.core import Crawler
    from services.crawler.errors import CrawlError

    if not author.strip():
        fail("--author is empty: name the person whose writing this is")
    crawler = Crawler.from_settings(settings_of(ctx), allow_private=allow_private,
                                    allow_insecure_git=allow_insecure_git)
    marks = {"stored": ("stored   ", "green"), "updated": ("updated  ", "cyan"),
             "unchanged": ("unchanged", None), "failed": ("failed   ", "red")}

    def show(outcome) -> None:
        mark, colour = marks[outcome.status]
        click.echo(click.style(mark,
                               fg=colour) + f" {outcome.target}" + (f"  ({outcome.detail})" if outcome.detail else ""))

    try:
        report = crawler.crawl(targets, author, source, on_outcome=show)
    except (CrawlError, ValueError) as exc:
        fail(str(exc))
    finally:
        crawler.fetcher.close()
    click.echo(f"{report.summary()}")
    if not report.ok:
        fail("nothing could be crawled")


@click.command()
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


@click.command("import-handbook")
@click.argument("directory", type=click.Path(path_type=Path))
@click.pass_context
def import_handbook_cmd(ctx: click.Context, directory: Path) -> None:
    """Import the LLM Engineer's Handbook warehouse export (ArticleDocument.json, ...)."""
    from llm_twin.handbook import HandbookImportError, import_handbook
    from llm_twin.warehouse import Warehouse

    try:
        counts = import_handbook(directory, Warehouse(settings_of(ctx).resolved_warehouse_uri))
    except HandbookImportError as exc:
        fail(str(exc))
    click.echo(f"{counts['stored']} stored, {counts['updated']} updated, {counts['unchanged']} unchanged")


@click.command()
@click.pass_context
def index(ctx: click.Context) -> None:
    """Clean, chunk, embed and load new or changed documents into Milvus (incremental)."""
    from services.embedding.core import Embedder
    from services.retrieval.indexer import Indexer
    from services.retrieval.store import MilvusStore

    settings = settings_of(ctx)
    started = time.perf_counter()
    click.echo("loading the embedding model ...", err=True)
    embedder = Embedder.from_settings(settings)
    store = MilvusStore.from_settings(settings, embedder.dimension)
    report = Indexer.from_settings(settings, embedder, store).run(
        progress=lambda label, total: bar(label, total, "chunk").update)
    click.echo(f"{report.summary()} in {time.perf_counter() - started:.1f} s")


def _retriever(settings: Settings):
    from services.embedding.core import Embedder
    from services.retrieval.core import Retriever

    return Retriever.from_settings(settings, Embedder.from_settings(settings))


STRATEGIES = click.Choice(["rrf", "hybrid", "dense", "keyword"])


@click.command()
@click.argument("question")
@click.option("--author", help="Only this twin's writing (name or slug).")
@click.option("--category", type=click.Choice(["article", "post", "code"]), help="Only this category.")
@click.option("--top-k", default=5, show_default=True, type=int, help="Documents to return.")
@click.option("--strategy", type=STRATEGIES, help="First stage (default: TWIN_RETRIEVAL_STRATEGY, rrf).")
@click.option("--self-query/--no-self-query", default=True, show_default=True,
              help="Without --author, take an author named in the question as the filter.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.pass_context
def search(ctx: click.Context, question, author, category, top_k, strategy, self_query, as_json) -> None:
    """Search the index: dense + keyword retrieval fused, one result per document."""
    from services.retrieval.errors import RetrievalError

    try:
        results = _retriever(settings_of(ctx)).search(question, author=author, category=category, top_k=top_k,
                                                      strategy=strategy, self_query=self_query)
    except RetrievalError as exc:
        fail(str(exc))
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


@click.group("eval")
def eval_group() -> None:
    """Measure extraction, retrieval and model quality."""


@eval_group.command("retrieval")
@click.option("--questions", required=True, type=click.Path(path_type=Path), help="JSONL question file.")
@click.option("--strategy", type=STRATEGIES, help="First stage (default: TWIN_RETRIEVAL_STRATEGY, rrf).")
@click.option("--rewrite/--no-rewrite", default=True, show_default=True,
              help="Search a follow-up together with the question it follows (as chat does).")
@click.option("--self-query/--no-self-query", default=True, show_default=True,
              help="Take an author named in the question as the filter when the file gives none.")
@click.option("--reranker", help="Second stage: `sentence` or a local cross-encoder folder (default: "
              "TWIN_RERANKER_MODEL; `none` for none).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def eval_retrieval(ctx: click.Context, questions, strategy, rewrite, self_query, reranker, as_json) -> None:
    """hit@1, hit@5 and MRR@10 (document level) of the current index on a question file, overall
    and per kind of question ("kind" in the file)."""
    from llm_twin.evaluation.retrieval import QuestionFileError, evaluate, load_questions
    from services.retrieval.errors import RetrievalError
    from services.retrieval.query import contextual_query

    settings = settings_of(ctx)
    if reranker:
        settings = settings.model_copy(update={"retrieval": settings.retrieval.model_copy(
            update={"reranker_model": None if reranker == "none" else reranker})})
    try:
        items = load_questions(questions)
        retriever = _retriever(settings)
        scores = evaluate(items, lambda q: [r.link for r in retriever.search(
            contextual_query(q.messages) if rewrite else q.question, author=q.author, top_k=10,
            strategy=strategy, self_query=self_query)])
    except (QuestionFileError, RetrievalError, FileNotFoundError) as exc:
        fail(str(exc))
    misses = scores.pop("misses")
    if as_json:
        click.echo(json.dumps(scores))
        return
    click.echo(f"strategy {strategy or retriever.strategy}: hit@1 {scores['hit@1']:.3f}  hit@5 {scores['hit@5']:.3f}  "
               f"MRR@10 {scores['mrr@10']:.3f}  (n={scores['n']})")
    if len(scores["kinds"]) > 1:
        for kind, k in scores["kinds"].items():
            click.echo(f"  {kind:12} hit@1 {k['hit@1']:.3f}  hit@5 {k['hit@5']:.3f}  MRR@10 {k['mrr@10']:.3f}  "
                       f"(n={k['n']})")
    for question in misses:
        click.echo(f"  not in top 10: {question}")


@eval_group.command("relevance")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--calibrate", is_flag=True, help="Fit the decision for the configured embedder on these files "
              "and keep it under <data_dir>/relevance/ (it then wins over the shipped one).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def eval_relevance(ctx: click.Context, files, calibrate, as_json) -> None:
    """False refusals and false answers of the answer-or-decline decision on labelled question
    files (per kind), run as the chat path runs it. FILES: labelled JSONL ({"question", "twin",
    "answerable", "kind", "conversation"}) or retrieval question files (answerable, each asked to
    its gold document's twin); each question decided wrongly is listed after the rates. With
    --calibrate the figures printed are on the files fitted on: measure on other files for figures
    that mean something."""
    from llm_twin.evaluation.relevance import error_rates
    from llm_twin.evaluation.retrieval import QuestionFileError
    from services.retrieval.errors import RetrievalError
    from services.retrieval.relevance import calibration_path

    from . import relevance_eval as rv

    settings = settings_of(ctx)
    try:
        retriever = _retriever(settings)
        rows = rv.load_files(files, retriever.store)
        if calibrate:
            model = rv.fit(retriever, rows, settings.embedding.model, ", ".join(f.name for f in files))
            path = calibration_path(settings.data_dir, settings.embedding.model)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(model.to_dict(), indent=1) + "\n", encoding="utf-8")
            retriever.relevance = model
            if not as_json:
                click.echo(f"calibration for {model.embedding_model} written to {path}")
        elif retriever.relevance is None and not as_json:
            click.echo(f"no relevance calibration for embedder {settings.embedding.model or 'default'}: the "
                       f"similarity cut ({settings.retrieval.min_source_similarity}) decides; run with --calibrate")
        answered = rv.decide(rv.chat_for(retriever, settings), rows)
        rates, wrong = error_rates(rows, answered), rv.wrong_decisions(rows, answered)
    except (QuestionFileError, RetrievalError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    if as_json:
        click.echo(json.dumps({**rates, "wrong": wrong}))
        return
    click.echo("\n".join([*rv.format_rates("decision", rates), *rv.format_wrong(wrong)]))


@eval_group.command("extraction")
@click.argument("directory", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def eval_extraction(directory: Path, as_json) -> None:
    """Score main-text extraction on the article-extraction benchmark (html/ + ground-truth.json)."""
    from tqdm import tqdm

    from llm_twin.evaluation.extraction import run_benchmark
    from services.crawler.extract import extract_article

    if not (directory / "ground-truth.json").is_file():
        fail(f"{directory}: no ground-truth.json (expected the article-extraction benchmark folder)")
    result = run_benchmark(directory, lambda raw: extract_article(raw).text,
                           progress=lambda it: tqdm(it, desc="extracting", file=sys.stderr, disable=None, leave=False))
    if as_json:
        click.echo(json.dumps(result.as_dict()))
    else:
        click.echo(f"F1 {result.f1:.4f}  precision {result.precision:.4f}  recall {result.recall:.4f}  "
                   f"({result.pages} pages, {result.failures} without text)")


@click.command()
@click.pass_context
def status(ctx: click.Context) -> None:
    """What is in the warehouse and the index."""
    from llm_twin.warehouse import Warehouse
    from services.embedding.core import embedding_dimension
    from services.retrieval.store import MilvusStore

    settings = settings_of(ctx)
    warehouse = Warehouse(settings.resolved_warehouse_uri)
    click.echo(f"warehouse {settings.resolved_warehouse_uri}")
    for slug, name in warehouse.authors().items():
        click.echo(f"  {name} ({slug}): {len(warehouse.paths(slug))} documents")
    store = MilvusStore.from_settings(settings, embedding_dimension(settings.embedding.model))
    click.echo(f"index {settings.resolved_milvus_uri} collection {settings.collection}: {store.count()} chunks")


@click.command("refresh")
@click.option("--config", "config_path", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A rendered TwinModel (the operator's ConfigMap).")
@click.option("--report", "report_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write the counts as JSON to this file (the operator's Job: its termination message).")
@click.pass_context
def refresh_cmd(ctx: click.Context, config_path, report_path) -> None:
    """Re-crawl a TwinModel's sources and re-index what changed (the operator runs it as a Job)."""
    from llm_twin.twinmodel import InvalidSpec, TwinModelSpec
    from operators.twinmodel import refresh as fresh
    from services.embedding.core import Embedder

    try:
        spec = TwinModelSpec.parse(json.loads(config_path.read_text())["spec"])
    except (InvalidSpec, ValueError, KeyError) as exc:
        fail(f"{config_path}: not a rendered TwinModel ({exc})", 2)
    settings = fresh.settings_for(spec, settings_of(ctx))
    report = fresh.refresh(spec, settings, Embedder.from_settings(settings))
    counts = {"added": report.added, "changed": report.changed, "removed": report.removed, "failed": report.failed,
              "documents": report.documents, "chunks_written": report.chunks_written}
    click.echo(json.dumps(counts))
    if report_path:
        report_path.write_text(json.dumps(counts))


COMMANDS = [crawl, extract, import_handbook_cmd, index, search, eval_group, status, refresh_cmd]
