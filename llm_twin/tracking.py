"""Where runs, registered twin versions and prompt traces go: an MLflow tracking server.

One server per deployment, reached over HTTP by every process (the pipeline's driver, its Ray Train
workers, each gateway replica), so no two processes ever write one SQLite file at once:

- the setting ``tracking_uri`` (``TWIN_TRACKING_URI``), else ``MLFLOW_TRACKING_URI``: an existing
  server (on Kubernetes the chart's, backed by a SQL database and object storage);
- else, on a laptop, a local server on loopback over ``<data_dir>/mlflow.db`` with artifacts under
  ``<data_dir>/mlartifacts``: `twin serve` starts it for as long as it runs (and prints its address),
  `twin pipeline` uses the running one or starts one for its own duration.

Names: each twin has one experiment (``twin-<slug>``: its pipeline runs and its chats' traces) and
one registered model (the same name); the alias ``serving`` marks the version that serves.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from llm_twin.documents import author_slug

SERVING_ALIAS = "serving"
STATE_FILE = "mlflow-server.json"
# The server's background job runner (scheduled LLM judges of MLflow's own) is two more processes
# that nothing here uses.
SERVER_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
# MLflow reports usage to its makers by default; nothing here talks to the internet unasked
# (the server, the pipeline's workers and the replicas inherit this).
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


class TrackingError(RuntimeError):
    """The tracking server is misconfigured or cannot be reached; the message names the fix."""


def twin_name(author: str) -> str:
    """The experiment and the registered model of a twin."""
    return f"twin-{author_slug(author)}"


def configured_uri(settings) -> str | None:
    """The tracking server the user named (setting, then MLFLOW_TRACKING_URI), checked; None: local."""
    uri = settings.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        return None
    if not uri.startswith(("http://", "https://")):
        raise TrackingError(f"tracking_uri {uri!r}: give an MLflow server's http(s) address (several processes log "
                            "at once, so a file or database is reached through a server: `mlflow server "
                            "--backend-store-uri ...`); leave it unset for the local server over <data_dir>/mlflow.db")
    return uri.rstrip("/")


def _state_path(data_dir) -> Path:
    return Path(data_dir).resolve() / STATE_FILE


def _alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ProcessLookupError, ValueError, TypeError):
        return False
    except PermissionError:
        return True
    return True


def _healthy(uri: str, timeout_s: float = 2.0) -> bool:
    import httpx

    try:
        return httpx.get(f"{uri}/health", timeout=timeout_s).status_code == 200
    except httpx.HTTPError:
        return False


def local_state(data_dir) -> dict | None:
    """{"pid", "uri"} of this data folder's local server when one runs and answers."""
    try:
        state = json.loads(_state_path(data_dir).read_text())
    except (OSError, ValueError):
        return None
    return state if _alive(state.get("pid")) and _healthy(state["uri"]) else None


def running_local(data_dir) -> str | None:
    """The address of this data folder's local server when one runs and answers."""
    state = local_state(data_dir)
    return state["uri"] if state else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_local(data_dir, say: Callable[[str], None] = print, timeout_s: float = 120,
                backend_store_uri: str | None = None) -> tuple[str, int]:
    """Start a local MLflow server for ``data_dir`` on loopback (over ``<data_dir>/mlflow.db``, or a
    database by ``backend_store_uri``: the PostgreSQL path a cluster uses); -> (address, pid)."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    log = open(data_dir / "mlflow-server.log", "ab")  # noqa: SIM115 - the child keeps writing it
    store = backend_store_uri or f"sqlite:///{data_dir / 'mlflow.db'}"
    say(f"starting the MLflow tracking server over {store.split('@')[-1]} (a few seconds)")
    process = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", store,
         "--artifacts-destination", str(data_dir / "mlartifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        env={**os.environ, **SERVER_ENV}, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True)  # its own process group: stop_local ends the server and its workers together
    log.close()
    deadline = time.monotonic() + timeout_s
    while not _healthy(uri, 1.0):
        if process.poll() is not None:
            raise TrackingError(f"the MLflow server exited with {process.returncode}; "
                                f"see {data_dir / 'mlflow-server.log'}")
        if time.monotonic() > deadline:
            stop_pid(process.pid)
            raise TrackingError(f"the MLflow server did not answer within {timeout_s:.0f} s; see "
                                f"{data_dir / 'mlflow-server.log'}")
        time.sleep(0.25)
    _state_path(data_dir).write_text(json.dumps({"pid": process.pid, "uri": uri}))
    return uri, process.pid


def stop_pid(pid: int, timeout_s: float = 20) -> None:
    """End a server started by start_local, with its worker processes (one process group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            pass
        if not _alive(pid) or Path(f"/proc/{pid}").exists() and _zombie(pid):
            break
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    # A killed process lingers until it is reaped (the leader by us, its workers by init): wait for
    # the whole group to be gone, so "stopped" means no process is left (a CI run once saw one).
    deadline = time.monotonic() + 5
    while _group(pid) and time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)


def _group(pgid: int) -> list[int]:
    """The processes of process group ``pgid`` still in /proc (Linux; elsewhere none are seen)."""
    members = []
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if entry.isdigit():
            with contextlib.suppress(ValueError):
                if int(_stat(int(entry))[2] or -1) == pgid:
                    members.append(int(entry))
    return members


def _stat(pid: int) -> list[str]:
    """/proc/<pid>/stat's fields after the command name (state, ppid, pgrp, ...); [""] * 3 when gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return [""] * 3
    return fields if len(fields) >= 3 else [""] * 3


def _zombie(pid: int) -> bool:
    return _stat(pid)[0] == "Z"


def stop_local(data_dir, pid: int) -> None:
    stop_pid(pid)
    path = _state_path(data_dir)
    with contextlib.suppress(OSError, ValueError):
        if json.loads(path.read_text()).get("pid") == pid:
            path.unlink()


@contextlib.contextmanager
def server(settings, say: Callable[[str], None] = print) -> Iterator[str]:
    """The tracking server's address for as long as the block runs: the configured one, this data
    folder's running local one, or a local one started here and stopped at the end."""
    uri = configured_uri(settings) or running_local(settings.data_dir)
    if uri:
        yield uri
        return
    uri, pid = start_local(settings.data_dir, say)
    try:
        yield uri
    finally:
        stop_local(settings.data_dir, pid)


def resolve_uri(settings) -> str | None:
    """The server to use without starting one (serving replicas, readers): None when there is none."""
    return configured_uri(settings) or running_local(settings.data_dir)


def client(uri: str):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_id(mlflow_client, author: str) -> str:
    """The twin's experiment (created on first use; a concurrent creator's wins)."""
    from mlflow.exceptions import MlflowException

    name = twin_name(author)
    found = mlflow_client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return mlflow_client.create_experiment(name, tags={"twin": author})
    except MlflowException:
        found = mlflow_client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id
