"""Prompt monitoring records (MLflow traces on a real server), the judge's reply parsing, stop strings across deltas."""

import asyncio
import json
import time
import uuid

import pytest

from llm_twin.evaluation.judge import JudgeReplyError, context_scores, parse_reply
from llm_twin.monitoring import PromptRecord, parse_since, summarize
from llm_twin.prompt_traces import PromptTraces, load
from services.generation.api import Delta, TokenLogprob
from services.generation.streams import stop_at


def record(rid: str, **kw) -> PromptRecord:
    values = dict(id=rid, time=time.time(), operation="chat", twin="mara-quill", model="m", question="q?",
                  answer="a.", finish_reason="stop", prompt_tokens=10, completion_tokens=5, ttft_s=0.1,
                  latency_s=0.5, transport="http")
    return PromptRecord(**{**values, **kw})


def test_records_are_traces_in_the_twins_experiment_with_feedback_and_judge_as_assessments(mlflow_server):
    from llm_twin import tracking

    twin = f"mara-{uuid.uuid4().hex[:8]}"
    traced, plain = uuid.uuid4().hex, uuid.uuid4().hex
    log = PromptTraces(mlflow_server)
    log.feedback(plain, -1, "late")  # before its trace is written: kept and retried
    log.flush()
    log.record(record(plain, twin=twin, finish_reason="no_sources", latency_s=2.0, key="ops"))
    log.record(record(traced, twin=twin, trace_id="ab" * 16, sources=[
        {"id": "c1", "link": "https://mara.example/chunking", "similarity": 0.61}]), passages=["Chunk by headings."])
    log.feedback(traced, 1, "nice")
    log.judged(traced, {"style": 3, "faithfulness": 0.9}, "llm:j")
    log.flush()
    found = {r["id"]: r for r in load(mlflow_server, time.time() - 60, twin)}
    assert set(found) == {traced, plain}
    assert found[traced]["mlflow_trace_id"] == "tr-" + "ab" * 16  # the OpenTelemetry trace id
    assert found[plain]["mlflow_trace_id"] == f"tr-{plain}"  # untraced: the response id
    assert found[traced]["feedback"] == [{"score": 1, "comment": "nice"}]
    assert found[plain]["feedback"] == [{"score": -1, "comment": "late"}]
    assert found[traced]["judge"] == {"style": 3, "faithfulness": 0.9} and found[plain]["judge"] is None
    summary = summarize(list(found.values()), 60)
    assert summary["requests"] == 2 and summary["no_sources_share"] == 0.5 and summary["feedback"]["up"] == 1
    assert summary["slowest"][0]["id"] == plain and summary["worst_judged"][0]["id"] == traced
    assert load(mlflow_server, time.time() - 60, twin="someone-else") == []

    client = tracking.client(mlflow_server)
    trace = client.get_trace("tr-" + "ab" * 16)
    assert trace.info.experiment_id == client.get_experiment_by_name(f"twin-{twin}").experiment_id
    assert {"twin": twin, "transport": "http", "operation": "chat", "response_id": traced}.items() <= \
        trace.info.tags.items()
    by_name = {s.name: s for s in trace.data.spans}
    assert set(by_name) == {"chat", "retrieval", "generation"}
    assert by_name["retrieval"].outputs == [{"page_content": "Chunk by headings.", "metadata": {
        "doc_uri": "https://mara.example/chunking", "chunk_id": "c1", "score": 0.61}}]
    assert by_name["generation"].get_attribute("mlflow.chat.tokenUsage") == {
        "input_tokens": 10, "output_tokens": 5, "total_tokens": 15}
    assert by_name["chat"].inputs["question"] == "q?" and by_name["chat"].outputs["answer"] == "a."


def test_masking_sampling_and_retention(mlflow_server):
    twin = f"ada-{uuid.uuid4().hex[:8]}"
    old, new = uuid.uuid4().hex, uuid.uuid4().hex
    log = PromptTraces(mlflow_server, mask_pii=True, sample_ratio=0.0, retention_days=7)
    log.record(record(new, twin=twin, question="mail ada@example.com",
                      answer="call +44 20 7946 0958 or ada@example.com"))
    log.record(record(old, twin=twin, time=time.time() - 9 * 86400))
    log.flush()  # the first flush also deletes what is past retention (then hourly)
    found = {r["id"]: r for r in load(mlflow_server, 0, twin)}
    assert set(found) == {new}  # the 9-day-old trace is gone, today's stays
    assert "ada@example.com" not in json.dumps(found[new]) and found[new]["question"].startswith("mail ")
    assert not log.sampled()
    keeper = PromptTraces(mlflow_server, retention_days=30)  # 9 days is within its retention
    keeper.record(record(old, twin=twin, time=time.time() - 9 * 86400))
    keeper.flush()
    assert len(load(mlflow_server, 0, twin)) == 2 and log.cleanup() == 1


def test_a_started_writer_does_its_first_work_before_any_request_then_writes_in_the_background(mlflow_server):
    """A server starts its writer as it starts: expired traces go (and MLflow's client loads) with no
    request recorded yet, not beside the first requests; records then reach MLflow on their own."""
    twin = f"eve-{uuid.uuid4().hex[:8]}"
    old, new = uuid.uuid4().hex, uuid.uuid4().hex
    keeper = PromptTraces(mlflow_server, retention_days=30)
    keeper.record(record(old, twin=twin, time=time.time() - 9 * 86400))
    keeper.flush()
    assert [r["id"] for r in load(mlflow_server, 0, twin)] == [old]

    def wait_for(ids: set, seconds: float = 60):
        deadline = time.monotonic() + seconds
        while {r["id"] for r in load(mlflow_server, 0, twin)} != ids:
            assert time.monotonic() < deadline, f"MLflow never showed {ids}"
            time.sleep(0.2)

    writer = PromptTraces(mlflow_server, retention_days=7, flush_every_s=0.2)
    writer.start()
    wait_for(set())  # the 9-day-old trace is deleted though nothing was recorded
    writer.record(record(new, twin=twin))
    wait_for({new})  # no flush called: the background writer wrote it


def test_parse_since():
    now = 1_000_000.0
    assert parse_since("90s", now) == now - 90 and parse_since("2h", now) == now - 7200
    for bad in ("", "h", "5", "-1h", "1w"):
        with pytest.raises(ValueError, match="--since"):
            parse_since(bad, now)


def test_judge_replies():
    ok = parse_reply('Sure! ```json\n{"faithfulness": 1, "answer_relevance": 0.5, "context_precision": 0,'
                     ' "accuracy": 3, "style": 2, "reason": "fine"}\n```')
    assert ok["accuracy"] == 3 and ok["answer_relevance"] == 0.5
    for bad, fragment in (("no json here", "no JSON object"), ("{great, 7/10}", "not valid JSON"),
                          ('{"faithfulness": 2}', "faithfulness"),
                          ('{"faithfulness": 1, "answer_relevance": 1, "context_precision": 1, "accuracy": 4, '
                           '"style": 1}',
                           "accuracy")):
        with pytest.raises(JudgeReplyError, match=fragment):
            parse_reply(bad)
    assert context_scores(["u1", "u2"], ["u2", "u2-copy"]) == {"context_precision_gold": 0.5, "context_recall": 1.0}
    assert context_scores(["u1"], []) == {}


async def deltas(*parts: str):
    for i, text in enumerate(parts):
        last = i == len(parts) - 1
        yield Delta(text, "length" if last else None, 3, i + 1, (TokenLogprob(text, -0.1),))


def run(stream) -> list[Delta]:
    async def collect():
        return [d async for d in stream]
    return asyncio.run(collect())


@pytest.mark.parametrize("parts, stops, text, reason", [
    (("Hel", "lo wo", "rld"), ("o w",), "Hell", "stop"),       # across deltas
    (("Hel", "lo wo", "rld"), ("xyz",), "Hello world", "length"),  # held-back text still arrives
    (("ab", "c"), ("c", "b"), "a", "stop"),                    # the earliest of several
    (("a", "b", "c"), ("bcd",), "abc", "length"),              # a partial match at the end is text
])
def test_stop_strings(parts, stops, text, reason):
    out = run(stop_at(deltas(*parts), stops))
    assert "".join(d.text for d in out) == text and out[-1].finish_reason == reason
    assert sum(len(d.logprobs) for d in out) <= len(parts)


def test_the_gate_reads_the_judges_style_score():
    from llm_twin.twinmodel import Gate
    from training.evaluate import gate, judge_style

    class Judge:
        name = "llm:stub"

        def __init__(self, replies):
            self.replies = iter(replies)

        def judge(self, question, answer, passages, author):
            from llm_twin.evaluation.judge import Verdict
            style = next(self.replies)
            return Verdict({"style": style} if style else None, self.name, None if style else "not JSON")

    judged = judge_style(Judge([3, None, 2]), "Ada", ["q1", "q2", "q3"], ["a1", "a2", "a3"], ["r1", "r2", "r3"])
    assert judged == {"judge_style": 2.5, "judge_unscored": 1, "judge": "llm:stub"}
    result = {"perplexity_ratio": 0.9, "judge_style_twin": 2.5}
    rules = dict(max_perplexity_ratio=1.0, min_style_similarity=-1)
    assert gate(result, Gate(**rules, min_judge_style=2.5))[0]
    held, why = gate(result, Gate(**rules, min_judge_style=2.6))
    assert not held and "judge style 2.50 < minJudgeStyle 2.6" in why
    held, why = gate({"perplexity_ratio": 0.9}, Gate(**rules, min_judge_style=2))
    assert not held and "no judge scored" in why


def test_min_judge_style_without_a_judge_is_refused_in_the_spec():
    from llm_twin.twinmodel import InvalidSpec, TwinModelSpec

    with pytest.raises(InvalidSpec, match="minJudgeStyle needs a judge"):
        TwinModelSpec.parse({"author": {"name": "Ada"}, "evaluation": {"gate": {"minJudgeStyle": 2}}})
