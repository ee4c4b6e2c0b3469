"""The chat page in a real browser (Debian's headless Chromium through Selenium) against a real
`twin serve`: pick a twin, ask, watch the answer stream in with its source links, follow up with
the conversation's history; then the key prompt and a readable error. Screenshots are kept under
.test-artifacts/ (the README's picture is one of them)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest

from llm_twin.keys import KeyStore

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = Path(os.environ.get("TWIN_TEST_ARTIFACTS", ROOT / ".test-artifacts"))
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def wait(browser, condition, what: str, timeout_s: float = 240):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(browser, timeout_s, poll_frequency=0.2).until(lambda b: condition(b))
    except Exception:  # noqa: BLE001 - say what did not happen, and keep the picture
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "chat-page-failure.png"))
        pytest.fail(f"timed out waiting for {what}; page text: {browser.find_element('tag name', 'body').text[:800]}")


def answers(browser):
    return browser.find_elements("css selector", ".message.twin[data-done=true]")


def send(browser, text: str) -> None:
    from selenium.webdriver.common.keys import Keys

    box = browser.find_element("id", "question")
    box.send_keys(text.split("\n")[0])
    for line in text.split("\n")[1:]:  # Shift+Enter is a new line, Enter sends
        box.send_keys(Keys.SHIFT, Keys.ENTER)
        box.send_keys(line)
    box.send_keys(Keys.ENTER)


def test_ask_watch_the_answer_stream_follow_up(platform, browser):
    browser.get(f"{platform.http}/")
    wait(browser, lambda b: b.find_elements("css selector", "#twin option[value='mara-quill']"), "the twin list")
    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "twin")).select_by_value("mara-quill")
    assert not browser.find_element("id", "key-form").is_displayed(), "no key needed on loopback without keys"
    assert not browser.find_element("id", "error").is_displayed()
    # Record what the page sends, to see that follow-ups carry the conversation.
    browser.execute_script("""window.sent = []; const f = window.fetch;
        window.fetch = (url, opts) => {
            if (opts && opts.body) window.sent.push(JSON.parse(opts.body));
            return f(url, opts);
        };""")
    send(browser, "How should I cut documents\ninto chunks?")
    first = wait(browser, lambda b: answers(b), "the first streamed answer")[0]
    links = first.find_elements("css selector", ".sources a")
    assert links and all(a.get_attribute("href").startswith("http") and a.text for a in links)
    assert first.find_element("css selector", ".text").text.strip()
    assert first.find_element("css selector", ".who").text == "Mara Quill"
    assert "nothing" not in first.get_attribute("class")
    status = browser.find_element("id", "status").text
    assert "mara-quill" in status and "tokens/s" in status and "first token after" in status
    assert "adapter: test-adapter" in status  # the registered adapter answers for this twin
    # A follow-up with no word pointing back: answered from the post it follows, not declined.
    send(browser, "Why keep the overlap small?")
    follow_up = wait(browser, lambda b: len(answers(b)) == 2 and answers(b)[1], "the follow-up's answer")
    assert "nothing" not in follow_up.get_attribute("class")
    assert [a.text for a in follow_up.find_elements("css selector", ".sources a")][:1] == \
        [a.text for a in links][:1], "answered from the chunking post"
    sent = browser.execute_script("return window.sent")
    chats = [body for body in sent if "messages" in body]
    assert chats[0]["messages"] == [{"role": "user", "content": "How should I cut documents\ninto chunks?"}]
    assert [m["role"] for m in chats[1]["messages"]] == ["user", "assistant", "user"], "follow-ups use the history"
    assert chats[1]["stream"] is True
    # Thumbs up on the first answer: the feedback joins that answer's monitoring record.
    votes = first.find_elements("css selector", ".feedback .vote")
    assert [v.get_attribute("aria-label") for v in votes] == ["Good answer", "Bad answer"]
    assert all(v.find_elements("css selector", "svg path") and not v.text for v in votes), \
        "the thumbs are drawn (an emoji showed as an empty box without an emoji font)"
    first.find_element("css selector", ".feedback .vote[data-score='1']").click()
    wait(browser, lambda b: first.find_element("css selector", ".feedback").get_attribute("data-sent") == "1",
         "the feedback to be recorded")
    feedback = [body for body in browser.execute_script("return window.sent") if "score" in body]
    from llm_twin import tracking
    from llm_twin.prompt_traces import load

    rid = feedback[0]["response_id"].removeprefix("chatcmpl-")
    uri = tracking.running_local(platform.data_dir)  # the MLflow server `twin serve` started
    record = wait(browser, lambda b: [r for r in load(uri, 0) if r["id"] == rid and r["feedback"]],
                  "the feedback as an assessment on the answer's trace")[0]
    assert record["question"] == "How should I cut documents\ninto chunks?" and record["feedback"][0]["score"] == 1
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    browser.save_screenshot(str(ARTIFACTS / "chat-page.png"))  # docs/chat-page.png: the follow-up answered

    send(browser, "What do you think about the best pizza in Naples?")
    nothing = wait(browser, lambda b: len(answers(b)) == 3 and answers(b)[2], "an answer about nothing relevant")
    assert "nothing" in nothing.get_attribute("class") and not nothing.find_elements("css selector", ".sources a")
    browser.find_element("id", "new-chat").click()
    assert browser.find_elements("css selector", ".message") == []


def test_the_page_asks_for_a_key_and_shows_errors_readably(platform, browser):
    keys_file = platform.data_dir / "api-keys.json"
    store = KeyStore(keys_file)
    key = store.create("page-test", "chat")
    try:
        deadline = time.monotonic() + 10
        while httpx.get(f"{platform.http}/v1/models", timeout=30).status_code != 401 and time.monotonic() < deadline:
            time.sleep(0.2)
        browser.get(f"{platform.http}/")
        wait(browser, lambda b: b.find_element("id", "key-form").is_displayed(), "the key prompt")
        browser.find_element("id", "key").send_keys("twk_not-a-key")
        browser.find_element("css selector", "#key-form button").click()
        error = wait(browser, lambda b: b.find_element("id", "error").is_displayed() and b.find_element("id", "error"),
                     "the refusal")
        assert "unknown or revoked API key" in error.text and "Traceback" not in error.text
        browser.find_element("id", "key").send_keys(key)
        browser.find_element("css selector", "#key-form button").click()
        wait(browser, lambda b: b.find_elements("css selector", "#twin option[value='mara-quill']"), "the twins")
        assert json.loads(browser.execute_script("return JSON.stringify(sessionStorage)"))["llm-twin-api-key"] == key
        assert not browser.execute_script("return localStorage.length"), "the key stays in this tab only"
        # A twin that is gone answers with a readable message, not a stack trace.
        browser.execute_script("""const o = document.createElement('option'); o.value = 'nobody-at-all';
            o.textContent = 'Gone'; const s = document.getElementById('twin');
            s.append(o); s.value = 'nobody-at-all';""")
        send(browser, "Hello?")
        error = wait(browser, lambda b: "does not exist" in b.find_element("id", "error").text and
                     b.find_element("id", "error"), "the unknown-twin message")
        assert "Traceback" not in error.text
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "chat-page-error.png"))
    finally:
        keys_file.unlink(missing_ok=True)
        deadline = time.monotonic() + 10
        while httpx.get(f"{platform.http}/v1/models", timeout=30).status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.2)
