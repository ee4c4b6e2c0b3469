"""Watching and judging answers: `twin eval rag` (end to end, with a judge) and `twin monitor`
(what the served twins were asked and how they did)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import click

from .common import fail, settings_of


@click.command("rag")
@click.option("--questions", required=True, type=click.Path(path_type=Path), help="JSONL question file.")
@click.option("--url", default="http://127.0.0.1:8000", show_default=True, help="The platform's HTTP gateway.")
@click.option("--key", envvar="TWIN_API_KEY", help="API key for --url [env TWIN_API_KEY].")
@click.option("--twin", help="Twin for questions whose \"author\" is null.")
@click.option("--judge-url", help="OpenAI-compatible judge endpoint (…/v1) [env TWIN_JUDGE_URL]; without one the "
              "embedding-based fallbacks score, labelled as such.")
@click.option("--judge-model", help="The judge's model name [env TWIN_JUDGE_MODEL].")
@click.option("--max-tokens", default=128, show_default=True, type=click.IntRange(1, 1024))
@click.option("--concurrency", default=4, show_default=True, type=click.IntRange(1, 64),
              help="Questions in flight at once (the platform batches concurrent chats).")
@click.option("--out", type=click.Path(path_type=Path), help="Per-question JSONL (default: "
              "<data_dir>/eval/rag-<time>.jsonl); the summary goes beside it as .summary.json.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
@click.pass_context
def eval_rag(ctx: click.Context, questions, url, key, twin, judge_url, judge_model, max_tokens, concurrency, out,
             as_json) -> None:
    """Every question through the real chat path (retrieval + generation), every answer judged:
    faithfulness, answer relevance, context precision/recall, accuracy and style."""
    from tqdm import tqdm

    from llm_twin.evaluation.judge import EmbeddingJudge, LLMJudge
    from llm_twin.evaluation.rag import ChatEndpoint, evaluate_rag
    from llm_twin.evaluation.retrieval import QuestionFileError, load_questions

    settings = settings_of(ctx)
    try:
        items = load_questions(questions)
    except QuestionFileError as exc:
        fail(str(exc))
    if not twin and any(q.author is None for q in items):
        fail(f"{questions}: some questions have no \"author\"; name the twin with --twin")
    judge_url = judge_url or settings.judge.url
    if judge_url:
        judge = LLMJudge(judge_url, judge_model or settings.judge.model or "judge", settings.judge.key)
    else:
        from services.embedding.core import Embedder

        judge = EmbeddingJudge(Embedder.from_settings(settings))
        click.echo("no judge configured (--judge-url): embedding-based fallback scores, no accuracy", err=True)
    rows, summary = evaluate_rag(items, ChatEndpoint(url, key, max_tokens), judge, twin=twin, concurrency=concurrency,
                                 progress=lambda it: tqdm(it, desc="questions", file=sys.stderr, disable=None,
                                                          leave=False, total=len(items)))
    out = out or Path(settings.data_dir) / "eval" / f"rag-{time.strftime('%Y%m%d-%H%M%S')}.jsonl"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    summary["rows"] = str(out)
    out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=1), encoding="utf-8")
    if summary["failed"] == summary["n"]:
        fail(f"every question failed; first error: {rows[0]['error']}")
    if as_json:
        click.echo(json.dumps(summary))
        return
    click.echo(f"{summary['n']} questions, judge {summary['judge']}: {summary['scored']} scored, "
               f"{summary['unscored']} unscored, {summary['no_sources']} without sources, {summary['failed']} failed")
    for name, value in summary["scores"].items():
        click.echo(f"  {name:24} {value:.3f}")
    for kind, scores in summary["kinds"].items():
        click.echo(f"  [{kind}] " + "  ".join(f"{k} {v:.2f}" for k,
                                              v in scores.items() if k != "n") + f"  (n={scores['n']})")
    click.echo(f"per question: {out}")


@click.command()
@click.option("--twin", help="Only this twin's requests.")
@click.option("--since", default="1h", show_default=True, help="Window: 90s, 15m, 1h, 7d.")
@click.option("--follow", is_flag=True, help="Print again every --interval seconds until Ctrl-C.")
@click.option("--interval", default=5.0, show_default=True, type=click.FloatRange(0.5, 3600))
@click.option("--json", "as_json", is_flag=True, help="One JSON object (with --follow: one per line).")
@click.option("--records", is_flag=True, help="With --json: include every record in the window.")
@click.pass_context
def monitor(ctx: click.Context, twin, since, follow, interval, as_json, records) -> None:
    """Requests answered by the served twins: rate, latency and time to first token (p50/p95),
    tokens/s, "nothing relevant" share, feedback and judge scores, slowest and worst-judged ids."""
    from llm_twin import tracking
    from llm_twin.documents import author_slug
    from llm_twin.monitoring import parse_since, summarize
    from llm_twin.prompt_traces import load

    settings = settings_of(ctx)
    if not settings.monitoring.enabled:
        fail("prompt monitoring is off (TWIN_MONITORING_ENABLED=false): nothing is recorded")
    try:
        start = parse_since(since)
        slug = author_slug(twin) if twin else None
    except ValueError as exc:
        fail(str(exc))
    window = time.time() - start
    try:
        uri = tracking.resolve_uri(settings)
    except tracking.TrackingError as exc:
        fail(str(exc))
    if uri is None:
        fail(f"no MLflow server holds the records: `twin serve` (data folder {settings.data_dir}) starts one, or "
             "set TWIN_TRACKING_URI / MLFLOW_TRACKING_URI to yours")
    while True:
        start = time.time() - window  # with --follow, a sliding window
        found = load(uri, start, slug)
        summary = summarize(found, window)
        if as_json:
            click.echo(json.dumps({**summary, "since": start, **({"records": found} if records else {})}))
        else:
            _print_summary(summary, since, twin)
        if not follow:
            return
        time.sleep(interval)


def _print_summary(s: dict, since: str, twin: str | None) -> None:
    def fmt(value, unit=""):
        return "-" if value is None else f"{value}{unit}"

    click.echo(f"last {since}{f' for {twin}' if twin else ''}: {s['requests']} requests "
               f"({fmt(s['requests_per_minute'])}/min)")
    click.echo(f"  latency p50 {fmt(s['latency_s']['p50'], ' s')}  p95 {fmt(s['latency_s']['p95'], ' s')}   "
               f"first token p50 {fmt(s['ttft_s']['p50'], ' s')}  p95 {fmt(s['ttft_s']['p95'], ' s')}   "
               f"{fmt(s['tokens_per_s'])} tokens/s")
    click.echo(f"  tokens: {s['prompt_tokens']} prompt, {s['completion_tokens']} completion;  "
               f"nothing relevant: {fmt(s['no_sources_share'])}")
    f, j = s["feedback"], s["judge"]
    click.echo(f"  feedback: {f['up']} up, {f['down']} down (mean {fmt(f['mean'])});  judged: {j['count']} "
               f"(mean {fmt(j['mean'])})")
    for title, items in (("slowest", s["slowest"]), ("worst judged", s["worst_judged"])):
        for r in items[:3]:
            click.echo(f"  {title}: {r['id']}  {r['latency_s']} s  {r['question']!r}")
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        click.echo("  (a record's mlflow_trace_id, tr-<id>, is its trace id in Tempo/Grafana too)")


COMMANDS = [monitor]
