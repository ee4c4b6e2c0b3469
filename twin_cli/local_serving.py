"""`twin serve`: the platform on this machine (a local Ray cluster that lives as long as the command).

The process that runs `twin serve` owns the cluster: it starts Ray, deploys the application, prints
the endpoints and waits (a local MLflow server beside it unless one is configured); Ctrl-C, SIGTERM
or `twin serve --stop` (which signals it through the pid file under the data folder) shuts Serve,
Ray and that MLflow server down, leaving no processes behind.

Ray 2.60 turns token authentication on by default: the local cluster is created with a token
under ~/.ray and this process, its only driver, uses it. Nothing else needs to connect to Ray:
clients use the gRPC and HTTP ports, and `--stop` uses a signal, not the Ray API.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from llm_twin import tracking
from llm_twin.config import Settings
from llm_twin.telemetry import serve_tracing_env
from services.gateway.proxy_guard import proxy_env
from services.gateway.serve_config import serve_config

log = logging.getLogger(__name__)


def state_file(settings: Settings) -> Path:
    return Path(settings.data_dir).resolve() / "serve.json"


def _say(message: str) -> None:
    print(message, flush=True)


# Ray Serve's housekeeping, slowed where nothing waits on it: its controller reconciles every 0.1 s
# and each replica and router exports its cached metrics every 0.1 s. At rest the platform's
# processes then took 12.8 % of one core (2,280 wake-ups a second), and on 2 cores every wake-up
# pre-empts a decode thread: decoding beside the idle platform ran at 0.87-0.89 of decoding alone.
# With these 8.9 % and 0.90-0.91 (make bench BENCH=serving measures it every run). A deployment
# still converges within a second; metrics are scraped every 15 s or more anyway. Values set in
# the environment win.
AT_REST = {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.5", "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000"}


def ray_env(environ: dict[str, str]) -> dict[str, str]:
    """What `twin serve` adds to ``environ`` for Ray's processes (they inherit it): AT_REST where
    the user set nothing."""
    return {name: value for name, value in AT_REST.items() if name not in environ}


def start(settings: Settings, *, trace_sampling_ratio: float = 1.0, ready_timeout_s: float = 600) -> dict:
    """Start Ray and Serve and deploy the platform; returns the endpoints once it answers."""
    from services.generation.model_store import resolve_model

    if not settings.generation.model:
        _say("preparing the default model (SmolLM2-135M-Instruct; converted once, ~30 s the first time)")
    model = resolve_model(settings.generation.model, settings.data_dir)
    settings = settings.with_overrides(generation_model=model, data_dir=Path(settings.data_dir).resolve())
    os.environ.update(serve_tracing_env(trace_sampling_ratio))
    os.environ.update(ray_env(os.environ))
    # The proxies' guards (proxy_guard.py): gRPC's receive limit = the HTTP body limit, the HTTP proxy's middleware.
    os.environ.update(proxy_env(settings.gateway.max_request_bytes))
    # Workers and replicas inherit this process's environment (torch threads, TWIN_*, OTEL_*).
    import ray
    from ray import serve

    from services.gateway.server import build_app

    config = serve_config(settings.model_dump(mode="json"), http_host=settings.gateway.http_host,
                          http_port=settings.gateway.http_port, grpc_port=settings.gateway.grpc_port,
                          request_timeout_s=settings.gateway.request_timeout_s,
                          max_queued_requests=settings.gateway.max_queued_requests,
                          generation_max_ongoing_requests=settings.generation.max_ongoing_requests)
    app = config["applications"][0]
    _say("starting Ray")
    ray.init(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
             namespace="llm-twin", configure_logging=True)
    serve.start(http_options=config["http_options"], grpc_options=config["grpc_options"])
    _say("deploying the platform (gateway, crawler, retrieval, embedding, generation)")
    serve.run(build_app(app["args"], app["deployments"]), name=app["name"], route_prefix=app["route_prefix"],
              blocking=False)
    deadline = time.monotonic() + ready_timeout_s
    while True:
        status = serve.status().applications.get(app["name"])
        if status and status.status == "RUNNING":
            break
        if status and status.status in ("DEPLOY_FAILED", "UNHEALTHY"):
            raise RuntimeError(f"the platform failed to deploy: {status.message}")
        if time.monotonic() > deadline:
            raise RuntimeError("the platform did not become ready in time; see the Ray logs under /tmp/ray")
        time.sleep(0.5)
    return {"grpc": f"127.0.0.1:{settings.gateway.grpc_port}",
            "http": f"http://{settings.gateway.http_host}:{settings.gateway.http_port}",
            "model": model}


def access_line(settings: Settings) -> str:
    """Who may call: said when the server starts, so nobody exposes it by accident."""
    from llm_twin.keys import KeyStore

    if settings.gateway.insecure_no_auth:
        return "access: NO AUTHENTICATION (--insecure-no-auth): anyone who reaches these ports may use them"
    store = KeyStore(settings.resolved_api_keys_file)
    if store.configured():
        return f"access: API keys from {store.path} (Authorization: Bearer KEY); `twin keys` manages them"
    return ("access: no API keys, so loopback clients only (the gRPC proxy listens on every interface; others get "
            "UNAUTHENTICATED / 401). Create a key with `twin keys create NAME` to serve others")


def stop_local() -> None:
    import ray
    from ray import serve

    if not ray.is_initialized():  # serve.shutdown() would start a cluster just to stop it
        return
    try:
        serve.shutdown()
    finally:
        ray.shutdown()


def run(settings: Settings, *, trace_sampling_ratio: float = 1.0) -> None:
    """Start, write the pid file, wait for a signal, stop."""
    path = state_file(settings)
    if path.exists():
        existing = json.loads(path.read_text())
        if _alive(existing.get("pid")):
            sys.exit(f"the platform already runs (pid {existing['pid']}); stop it with `twin serve --stop`")
    stop = threading.Event()

    def handle_signals() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: stop.set())

    handle_signals()
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written before starting so that `--stop` works while the platform is still coming up.
    path.write_text(json.dumps({"pid": os.getpid(), "ready": False}))
    tracking_pid = None
    try:
        settings, tracking_pid = start_tracking(settings)
        endpoints = start(settings, trace_sampling_ratio=trace_sampling_ratio)
        # ray.init installs its own fatal-signal handler, which would kill this process before it
        # could stop the cluster: take the signals back.
        handle_signals()
        if stop.is_set():
            return
        path.write_text(json.dumps({"pid": os.getpid(), "ready": True, **endpoints}))
        _say(f"ready: gRPC {endpoints['grpc']} (twin.v1, reflection, grpc.health.v1) · HTTP {endpoints['http']} "
             f"(OpenAI API at {endpoints['http']}/v1) · stop with Ctrl-C or `twin serve --stop`")
        _say(f"chat page: {endpoints['http']}/ (open it in a browser)")
        _say(f"MLflow: {settings.tracking_uri} (runs, the twins' registered versions, chats as traces)")
        _say(access_line(settings))
        while not stop.wait(1.0):
            pass
    finally:
        _say("shutting down")
        try:
            stop_local()
        finally:
            if tracking_pid is not None:
                tracking.stop_local(settings.data_dir, tracking_pid)
        path.unlink(missing_ok=True)
        _say("stopped")


def start_tracking(settings: Settings) -> tuple[Settings, int | None]:
    """The MLflow server this platform logs to: the configured one, or a local one started for as long
    as `twin serve` runs (-> its pid, to stop). Registry folders MLflow does not know yet are
    registered (llm_twin.registry.sync), so the serving alias is the one answer to what serves."""
    from llm_twin import registry

    uri, pid = tracking.configured_uri(settings), None
    if uri is None:
        # One left running by a `twin serve` that was killed is taken over (and stopped with this one).
        left = tracking.local_state(settings.data_dir)
        uri, pid = (left["uri"], left["pid"]) if left else tracking.start_local(settings.data_dir, _say)
    try:
        registry.sync(settings, uri, _say)
    except Exception as exc:  # noqa: BLE001 - serving goes on; the message says what to run
        _say(f"warning: registering older models in MLflow failed ({exc}); retry with `twin models sync`")
    return settings.with_overrides(tracking_uri=uri), pid


def _alive(pid) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError):
        return False
    except PermissionError:
        return True
    try:  # an exited child its parent has not reaped yet is a zombie, not a running server
        return Path(f"/proc/{int(pid)}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def read_state(settings: Settings) -> dict | None:
    """The running platform's pid, readiness and endpoints, or None."""
    try:
        state = json.loads(state_file(settings).read_text())
    except (OSError, ValueError):
        return None
    return state if _alive(state.get("pid")) else None


def stop_running(settings: Settings, timeout_s: float = 60) -> bool:
    """Signal the `twin serve` of this data folder and wait for it to finish; False if none ran."""
    path = state_file(settings)
    if not path.exists():
        return False
    pid = json.loads(path.read_text()).get("pid")
    if not _alive(pid):
        path.unlink(missing_ok=True)
        return False
    os.kill(int(pid), signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        raise RuntimeError(f"`twin serve` (pid {pid}) did not stop within {timeout_s:.0f} s; "
                           f"kill it with kill -9 {pid}")
    return True


class ServeProcess:
    """`twin serve` in a child process, for the demo, the benchmarks and the tests: started with
    :meth:`start`, :meth:`wait_ready` until it answers, :meth:`stop` as a user would."""

    def __init__(self, data_dir: Path, grpc_port: int, http_port: int, env: dict | None = None, log=None):
        self.data_dir, self.grpc_port, self.http_port = Path(data_dir), grpc_port, http_port
        self.env = {**os.environ, **(env or {}), "TWIN_DATA_DIR": str(data_dir)}
        self.log = log
        self.process = None

    @property
    def grpc(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def twin(self, *args: str, **kwargs) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "twin_cli", *args], env=self.env, **kwargs)

    def start(self) -> ServeProcess:
        self.process = subprocess.Popen([sys.executable, "-m", "twin_cli", "serve", "--grpc-port", str(self.grpc_port),
                                         "--http-port", str(self.http_port)], env=self.env, stdout=self.log,
                                        stderr=subprocess.STDOUT if self.log is not None else None,
                                        text=self.log is subprocess.PIPE)
        return self

    def output(self):
        """The server's output as text lines, when started with ``log=subprocess.PIPE``."""
        return self.process.stdout

    def wait_ready(self, timeout_s: float = 600) -> float:
        """Seconds until ready; raises RuntimeError when the process exits or the time runs out."""
        started = time.monotonic()
        settings = Settings(data_dir=self.data_dir)
        while not (read_state(settings) or {}).get("ready"):
            if self.process.poll() is not None:
                raise RuntimeError(f"`twin serve` exited with {self.process.returncode}")
            if time.monotonic() - started > timeout_s:
                raise RuntimeError(f"`twin serve` was not ready within {timeout_s:.0f} s")
            time.sleep(0.5)
        return time.monotonic() - started

    def stop(self, timeout_s: float = 180) -> subprocess.CompletedProcess:
        """`twin serve --stop`, then wait for the server process to end."""
        done = self.twin("serve", "--stop", capture_output=True, text=True, timeout=timeout_s)
        if self.process is not None:
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                raise
        return done
