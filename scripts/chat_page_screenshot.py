"""The README's picture of the chat page: the browser test's steps (tests/integration/test_chat_page.py)
against `twin serve` over the sample corpus with the base model (the test platform serves a
random test adapter, whose answers are noise). Usage: .venv/bin/python scripts/chat_page_screenshot.py OUT.png"""

import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from selenium import webdriver  # noqa: E402
from selenium.webdriver.common.keys import Keys  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from twin_cli.local_serving import ServeProcess  # noqa: E402
from twin_cli.sample_corpus import index_sample  # noqa: E402


def main(out: str) -> None:
    data = Path(tempfile.mkdtemp(prefix="twin-shot-"))
    index_sample(data)
    server = ServeProcess(data, 9412, 8412, env={"TWIN_TORCH_THREADS": "2"}, log=open(data / "serve.log", "w")).start()  # noqa: SIM115
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1000,820"):
        options.add_argument(arg)
    os.environ.setdefault("SE_AVOID_STATS", "true")
    browser = webdriver.Chrome(options=options, service=webdriver.ChromeService(shutil.which("chromedriver")))
    try:
        server.wait_ready(600)
        browser.get(server.http + "/")
        wait = WebDriverWait(browser, 300, poll_frequency=0.2)
        wait.until(lambda b: b.find_elements("css selector", "#twin option[value='mara-quill']"))
        for n, question in enumerate(["How should I cut documents into chunks?", "Why keep the overlap small?"], 1):
            browser.find_element("id", "question").send_keys(question, Keys.ENTER)
            wait.until(lambda b, n=n: len(b.find_elements("css selector", ".message.twin[data-done=true]")) == n)
        browser.save_screenshot(out)
    finally:
        browser.quit()
        server.stop()
        shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main(sys.argv[1])
