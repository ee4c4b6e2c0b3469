"""`twin eval rag`'s loop: questions in flight together, rows in the questions' order."""

import threading
import time

import pytest

from llm_twin.evaluation.judge import Verdict
from llm_twin.evaluation.rag import ChatEndpointError, evaluate_rag
from llm_twin.evaluation.retrieval import Question


class SlowEndpoint:
    """Answers after a delay that shrinks along the list (later questions finish first), counting
    how many questions are in flight at once."""

    def __init__(self, n: int):
        self.n, self.now, self.most = n, 0, 0
        self.lock = threading.Lock()

    def ask(self, twin: str, messages: list[dict]) -> dict:
        with self.lock:
            self.now += 1
            self.most = max(self.most, self.now)
        try:
            i = int(messages[-1]["content"].split()[-1])
            time.sleep(0.02 * (self.n - i))
            if i == 3:
                raise ChatEndpointError("the chat failed for this one")
            return {"id": f"chatcmpl-{i}", "choices": [{"message": {"content": f"answer {i}"},
                                                        "finish_reason": "stop"}],
                    "sources": [{"link": f"https://x/{i}", "text": "a passage", "author": "Mara Quill"}]}
        finally:
            with self.lock:
                self.now -= 1


class Judge:
    name = "test-judge"

    def judge(self, question, answer, passages, author):
        return Verdict({"faithfulness": 1.0}, self.name)


def questions(n: int) -> list[Question]:
    return [Question(question=f"question {i}", gold_links=(f"https://x/{i}",), author="Mara Quill") for i in range(n)]


@pytest.mark.parametrize("concurrency", [1, 3])
def test_questions_run_concurrently_and_rows_keep_the_questions_order(concurrency):
    endpoint = SlowEndpoint(8)
    rows, summary = evaluate_rag(questions(8), endpoint, Judge(), concurrency=concurrency)
    assert endpoint.most == concurrency
    assert [r["question"] for r in rows] == [f"question {i}" for i in range(8)]
    assert [r["answer"] for r in rows if r["answer"]] == [f"answer {i}" for i in range(8) if i != 3]
    assert rows[3]["error"] == "the chat failed for this one" and summary["failed"] == 1
    assert summary["scores"]["context_recall"] == 1.0


def test_concurrency_below_one_is_refused():
    with pytest.raises(ValueError, match="concurrency"):
        evaluate_rag(questions(1), SlowEndpoint(1), Judge(), concurrency=0)


class EmptyAnswerEndpoint:
    """Answers with sources but no text (a model that ended at once)."""

    def ask(self, twin: str, messages: list[dict]) -> dict:
        return {"id": "chatcmpl-0", "choices": [{"message": {"content": "  "}, "finish_reason": "stop"}],
                "sources": [{"link": "https://x/0", "text": "a passage", "author": "Mara Quill"}]}


class CountingJudge(Judge):
    def __init__(self):
        self.calls = 0

    def judge(self, question, answer, passages, author):
        self.calls += 1
        return super().judge(question, answer, passages, author)


def test_an_empty_answer_is_recorded_unscored_and_never_sent_to_the_judge():
    judge = CountingJudge()
    rows, summary = evaluate_rag(questions(1), EmptyAnswerEndpoint(), judge)
    assert judge.calls == 0
    assert rows[0]["error"] == "unscored: empty answer" and "faithfulness" not in rows[0]["scores"]
    assert summary["unscored"] == 1 and summary["scored"] == 0
    assert rows[0]["scores"]["context_recall"] == 1.0  # what the search found is still measured
