from __future__ import annotations

import os
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

    def do_GET(self) -> None:  # noqa: N802
        path = self.path.split("?")[0]
        self.hits[path] = self.hits.get(path, 0) + 1
        route = self.routes.get(path)
        if route is None:
            return super().do_GET()  # files under the served folder (a git repo over dumb HTTP)
        status, content_type, body = route(self.hits[path]) if callable(route) else route
        data = body.encode() if isinstance(body, str) else body
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class FixtureSite:
    """An HTTP server on 127.0.0.1 serving routes set by a test, and files under ``root``."""

    def __init__(self, root: Path):
        handler = type("Handler", (_Handler,), {"routes": {}, "hits": {}})
        self.routes, self.hits = handler.routes, handler.hits
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), lambda *a: handler(*a, directory=str(root)))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def add(self, path: str, body, content_type: str = "text/html; charset=utf-8", status: int = 200) -> str:
        self.routes[path] = (status, content_type, body)
        return self.url + path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def site(tmp_path):
    server = FixtureSite(tmp_path)
    yield server
    server.close()
