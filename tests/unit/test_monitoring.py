"""Prompt monitoring records, the judge's reply parsing, stop strings across deltas."""

import asyncio
import json
import time

import pytest

from llm_twin.evaluation.judge import JudgeReplyError, context_scores, parse_reply
from llm_twin.monitoring import PromptLog, PromptRecord, load, parse_since, summarize
from services.generation.api import Delta, TokenLogprob
from services.generation.streams import stop_at


def record(rid: str, **kw) -> PromptRecord:
    values = dict(id=rid, time=time.time(), operation="chat", twin="mara-quill", model="m", question="q?",
                  answer="a.", finish_reason="stop", prompt_tokens=10, completion_tokens=5, ttft_s=0.1,
                  latency_s=0.5, transport="http")
    return PromptRecord(**{**values, **kw})


def test_records_are_partitioned_by_day_append_only_and_joined_with_feedback_and_judge(tmp_path):
    log = PromptLog(str(tmp_path))
    log.record(record("a" * 32))
    log.flush()
    log.record(record("b" * 32, finish_reason="no_sources", latency_s=2.0))
    log.feedback("a" * 32, 1, "nice")
    log.judged("a" * 32, {"style": 3, "faithfulness": 0.9}, "llm:j")
    log.flush()
    parts = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jsonl"))
    day = time.strftime("%Y-%m-%d", time.gmtime())
    assert len(parts) == 4 and all(p.startswith("monitoring/") and f"date={day}/part-" in p for p in parts)
    found = {r["id"]: r for r in load(str(tmp_path), time.time() - 60)}
    assert found["a" * 32]["feedback"] == [{"score": 1, "comment": "nice"}]
    assert found["a" * 32]["judge"] == {"style": 3, "faithfulness": 0.9}
    summary = summarize(list(found.values()), 60)
    assert summary["requests"] == 2 and summary["no_sources_share"] == 0.5 and summary["feedback"]["up"] == 1
    assert summary["slowest"][0]["id"] == "b" * 32 and summary["worst_judged"][0]["id"] == "a" * 32
    assert load(str(tmp_path), time.time() - 60, twin="someone-else") == []


def test_masking_sampling_and_retention(tmp_path):
    log = PromptLog(str(tmp_path), mask_pii=True, sample_ratio=0.0, retention_days=7)
    log.record(record("c" * 32, question="mail ada@example.com", answer="call +44 20 7946 0958 or ada@example.com"))
    log.flush()
    (row,) = load(str(tmp_path), 0)
    assert "ada@example.com" not in json.dumps(row) and row["question"].startswith("mail ")
    assert not log.sampled()
    old = tmp_path / "monitoring" / "requests" / "date=2020-01-01"
    old.mkdir(parents=True)
    (old / "part-1.jsonl").write_text("{}\n")
    removed = log.cleanup()
    assert [p.rsplit("/", 1)[-1] for p in removed] == ["date=2020-01-01"] and not old.exists()
    assert load(str(tmp_path), 0)  # today's partition stays


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
