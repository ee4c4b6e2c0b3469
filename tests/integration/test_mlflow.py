"""MLflow beside `twin serve`: the registered version that serves, chats as traces with feedback, and
MLflow's own UI showing them in a real browser (Debian's headless Chromium; screenshots under
.test-artifacts/, the docs' pictures are from there)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from llm_twin import tracking
from llm_twin.prompt_traces import load

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("TWIN_TEST_ARTIFACTS", ROOT / ".test-artifacts"))
QUESTION = "How should I cut documents into chunks?"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _until(condition, what: str, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout_s} s waiting for {what}")


def _page(browser, url: str, text: str, shot: str) -> str:
    """Open an MLflow UI page, wait for ``text``, close its first-visit popups, keep a screenshot."""
    browser.set_window_size(1500, 950)
    browser.get(url)
    body = _until(lambda: text in (t := browser.find_element("tag name", "body").text) and t, f"{text!r} on {url}")
    for label in ("Got it",):  # MLflow's feature tour
        for button in browser.find_elements("xpath", f"//button[normalize-space()='{label}']"):
            button.click()
    for close in browser.find_elements("css selector", "[aria-label='Close'], [aria-label='Close guidance']"):
        try:
            close.click()
        except Exception:  # noqa: BLE001, S110 - a hidden close button: nothing to close
            pass
    time.sleep(1)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.save_screenshot(str(ARTIFACTS / shot))
    return body


def test_chats_are_traces_with_feedback_and_the_registry_says_what_serves(platform, browser):
    uri = tracking.running_local(platform.data_dir)
    assert uri and uri.startswith("http://127.0.0.1:")
    client = tracking.client(uri)
    name = tracking.twin_name(platform.author)
    # `twin serve` registered the folder model it found, and its alias is what the generation replica loads.
    serving = client.get_model_version_by_alias(name, tracking.SERVING_ALIAS)
    assert serving.tags["twin.version"] == "test-adapter" and serving.tags["servable"] == "true"

    reply = httpx.post(f"{platform.http}/v1/chat/completions", timeout=120, json={
        "model": platform.model, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 24})
    assert reply.status_code == 200
    rid = reply.json()["id"].removeprefix("chatcmpl-")
    sent = httpx.post(f"{platform.http}/v1/feedback", timeout=30,
                      json={"response_id": reply.json()["id"], "score": 1, "comment": "clear"})
    assert sent.status_code == 200
    record = _until(lambda: next((r for r in load(uri, time.time() - 600) if r["id"] == rid and r["feedback"]),
                                 None), "the answer's trace with its feedback")
    assert record["adapter_version"] == "test-adapter" and record["question"] == QUESTION
    assert record["feedback"] == [{"score": 1, "comment": "clear"}]
    trace = client.get_trace(record["mlflow_trace_id"])
    (feedback,) = [a for a in trace.info.assessments if a.name == "user_feedback"]
    assert feedback.value == 1 and feedback.source.source_type == "HUMAN"
    generation = next(s for s in trace.data.spans if s.name == "generation")
    assert generation.get_attribute("mlflow.chat.tokenUsage")["output_tokens"] == reply.json()["usage"][
        "completion_tokens"]

    # `twin monitor` reads the same records back from MLflow.
    done = subprocess.run([sys.executable, "-m", "twin_cli", "--data-dir", str(platform.data_dir), "monitor", "--json",
                           "--records", "--since", "30m", "--twin", platform.model], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    mine = next(r for r in shown["records"] if r["id"] == rid)
    assert mine["feedback"] == [{"score": 1, "comment": "clear"}] and mine["mlflow_trace_id"] == trace.info.trace_id
    assert shown["requests"] == len(shown["records"]) >= 1 and shown["feedback"]["up"] >= 1
    assert shown["completion_tokens"] == sum(r["completion_tokens"] for r in shown["records"])

    experiment = client.get_experiment_by_name(name).experiment_id
    text = _page(browser, f"{uri}/#/experiments/{experiment}/traces", QUESTION[:30], "mlflow-traces.png")
    assert "user_feedback" in text
    browser.find_element("xpath", f"//*[contains(text(), '{QUESTION[:30]}')]").click()  # the trace's spans
    _until(lambda: "retrieval" in browser.find_element("tag name", "body").text, "the trace's retrieval span")
    time.sleep(1)
    browser.save_screenshot(str(ARTIFACTS / "mlflow-trace.png"))
    text = _page(browser, f"{uri}/#/models/{name}", "serving", "mlflow-model.png")
    assert f"Version {serving.version}" in text or serving.version in text


def test_mlflow_on_postgresql_keeps_runs_versions_and_traces(postgres, tmp_path):
    """The database path a cluster's MLflow uses (the chart's server on a SQL database)."""
    from llm_twin import registry
    from llm_twin.config import Settings
    from llm_twin.monitoring import PromptRecord
    from llm_twin.prompt_traces import PromptTraces
    from training.experiment import PipelineRun

    uri, pid = tracking.start_local(tmp_path / "mlflow", say=lambda _: None, backend_store_uri=postgres)
    try:
        settings = Settings(data_dir=tmp_path, tracking_uri=uri)
        run = PipelineRun.start(uri, "Ada Writer", {"train": {"sft": {"max_steps": 3}}})
        run.log(metrics={"eval": {"perplexity_twin": 7.5}})
        out = tmp_path / "out"
        (out / "adapter").mkdir(parents=True)
        (out / "adapter" / "adapter_config.json").write_text("{}")
        path = registry.register(settings.resolved_artifact_uri, "Ada Writer", "pg-1", str(out), {"base_model": "b"})
        run.artifact_dir(str(out / "adapter"), "adapter")
        number = run.register(registry.update(path, servable=True), True, "passed")
        run.finish(True)
        assert registry.serving(settings, "Ada Writer")["version"] == "pg-1"
        client = tracking.client(uri)
        assert client.get_run(run.run_id).data.metrics["eval.perplexity_twin"] == 7.5
        assert client.get_model_version_by_alias("twin-ada-writer", tracking.SERVING_ALIAS).version == number

        rid = "c" * 32
        traces = PromptTraces(uri)
        traces.record(PromptRecord(id=rid, time=time.time(), operation="chat", twin="ada-writer", model="m",
                                   question="Why?", answer="Because.", finish_reason="stop", prompt_tokens=9,
                                   completion_tokens=2, ttft_s=0.1, latency_s=0.3, transport="grpc"))
        traces.feedback(rid, -1, "too short")
        traces.flush()
        (record,) = load(uri, 0, "ada-writer")
        assert record["id"] == rid and record["feedback"] == [{"score": -1, "comment": "too short"}]
    finally:
        tracking.stop_local(tmp_path / "mlflow", pid)
