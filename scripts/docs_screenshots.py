"""The docs' pictures from what `make demo` built (its trained twin answers; the tests' random
adapter would only show noise): serves the demo's data folder, asks the chat page a question and a
follow-up with no pointer word, gives the first answer a thumbs up, then photographs MLflow's UI (the
chats as traces, one trace's spans, the registered model's serving alias, the pipeline run and its
SFT loss curves). Needs Debian's chromium and chromedriver (`make setup`).

    make demo && .venv/bin/python scripts/docs_screenshots.py [--data-dir .twin/demo] [--out docs]
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

QUESTION = "How should I cut documents into chunks?"
FOLLOW_UP = "Why keep the overlap small?"


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _until(condition, what: str, timeout_s: float = 300):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.3)
    sys.exit(f"timed out waiting for {what}")


def _browser():
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    service = webdriver.ChromeService(executable_path=shutil.which("chromedriver"))
    return webdriver.Chrome(options=options, service=service)


def _text(browser) -> str:
    return browser.find_element("tag name", "body").text


def _close_popups(browser) -> None:
    """MLflow's first-visit feature tour and its assistant panel."""
    for button in browser.find_elements("xpath", "//button[normalize-space()='Got it']") + browser.find_elements(
            "css selector", "button[aria-label='Close'], button[aria-label='Close guidance']"):
        try:
            button.click()
        except Exception:  # noqa: BLE001, S110 - hidden already
            pass


def chat_page(browser, http: str, out: Path) -> None:
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    browser.set_window_size(1000, 900)
    browser.get(f"{http}/")
    _until(lambda: browser.find_elements("css selector", "#twin option[value='mara-quill']"), "the twin list")
    Select(browser.find_element("id", "twin")).select_by_value("mara-quill")
    answers = lambda: browser.find_elements("css selector", ".message.twin[data-done=true]")  # noqa: E731
    for n, text in enumerate((QUESTION, FOLLOW_UP), 1):
        browser.find_element("id", "question").send_keys(text, Keys.ENTER)
        _until(lambda n=n: len(answers()) == n, f"answer {n}")
    if "nothing" in answers()[1].get_attribute("class"):
        print("warning: the follow-up was declined", file=sys.stderr)
    answers()[0].find_element("css selector", ".feedback .vote[data-score='1']").click()
    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    time.sleep(1)
    browser.save_screenshot(str(out / "chat-page.png"))


def mlflow_pages(browser, uri: str, out: Path) -> None:
    from llm_twin import tracking

    client = tracking.client(uri)
    name = tracking.twin_name("Mara Quill")
    experiment = client.get_experiment_by_name(name).experiment_id
    pipeline = client.search_runs([experiment], "tags.`mlflow.source.name` = 'twin pipeline'",
                                  order_by=["start_time DESC"], max_results=1)[0]
    sft = client.search_runs([experiment], f"tags.mlflow.parentRunId = '{pipeline.info.run_id}' "
                                           "and attributes.run_name = 'sft'")[0]
    browser.set_window_size(1500, 950)

    def page(url: str, text: str, shot: str) -> None:
        browser.get(url)
        _until(lambda: text in _text(browser), f"{text!r} on {url}")
        _close_popups(browser)
        time.sleep(1.5)
        browser.save_screenshot(str(out / shot))

    _until(lambda: any(a.name == "user_feedback" for t in client.search_traces(locations=[experiment])
                       for a in t.info.assessments), "the thumbs up on a trace", 60)
    page(f"{uri}/#/experiments/{experiment}/traces", QUESTION[:30], "mlflow-traces.png")
    browser.find_element("xpath", f"//*[contains(text(), '{QUESTION[:30]}')]").click()
    _until(lambda: "retrieval" in _text(browser), "the trace's spans")
    time.sleep(1.5)
    browser.save_screenshot(str(out / "mlflow-trace.png"))
    page(f"{uri}/#/models/{name}", "serving", "mlflow-model.png")
    page(f"{uri}/#/experiments/{experiment}/runs/{pipeline.info.run_id}", "gate", "mlflow-pipeline-run.png")
    page(f"{uri}/#/experiments/{experiment}/runs/{sft.info.run_id}/model-metrics", "loss", "mlflow-sft-run.png")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", default=str(ROOT / ".twin" / "demo"))
    parser.add_argument("--out", default=str(ROOT / "docs"))
    args = parser.parse_args()
    from llm_twin import tracking
    from twin_cli.local_serving import ServeProcess

    data_dir, out = Path(args.data_dir).resolve(), Path(args.out).resolve()
    if not (data_dir / "mlflow.db").exists():
        sys.exit(f"{data_dir} holds no demo: run `make demo` first")
    out.mkdir(parents=True, exist_ok=True)
    env = {"TWIN_TORCH_THREADS": os.environ.get("TWIN_TORCH_THREADS", "2")}
    platform = ServeProcess(data_dir, _port(), _port(), env=env, log=subprocess.DEVNULL).start()
    browser = None
    try:
        platform.wait_ready(600)
        browser = _browser()
        chat_page(browser, platform.http, out)
        mlflow_pages(browser, tracking.running_local(data_dir), out)
    finally:
        if browser is not None:
            browser.quit()
        platform.stop()
    print(f"screenshots written to {out}")


if __name__ == "__main__":
    main()
