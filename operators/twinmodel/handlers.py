"""Thin kopf handlers: read the world, call the pure builders, write children and status.

One reconcile runs on create, update and resume. Each stage is keyed by a hash of the spec parts
it depends on (spec.stage_hashes): the training RayJob is named after its hash, so an unchanged
stage finds its job again (also after an operator restart) and is never re-run, and a changed one
gets a new job. A RayJob or RayService still working means "come back later"
(kopf.TemporaryError with a delay), never a sleep.
"""

from __future__ import annotations

import json
import logging
import os

import kopf
from kubernetes import client, config
from kubernetes.client.rest import ApiException

from llm_twin.twinmodel import TwinModelSpec

from . import builders, isolation
from .spec import (
    GROUP,
    PLURAL,
    SECRET_OPT_IN,
    VERSION,
    InvalidSpec,
    normalise,
    place_storage,
    secret_refs,
    stage_hashes,
)

POLL_S = float(os.environ.get("TWIN_OPERATOR_POLL_S", "15"))
# How often the refresh timer looks at each twin; a twin refreshes when its spec.refresh.interval is due.
REFRESH_TICK_S = float(os.environ.get("TWIN_OPERATOR_REFRESH_TICK_S", "60"))
RAY = ("ray.io", "v1")
REVISION = f"{GROUP}/data-revision"  # bumped by a refresh that found enough new writing to retrain on
POLICY = isolation.ClusterPolicy.from_env()


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_) -> None:
    settings.posting.level = logging.WARNING
    settings.persistence.finalizer = f"{GROUP}/finalizer"
    if os.environ.get("TWIN_OPERATOR_NO_SCANNING"):  # API emulators without namespace/CRD listing
        settings.scanning.disabled = True
    try:
        config.load_incluster_config()
    except config.ConfigException:
        config.load_kube_config()


def _custom() -> client.CustomObjectsApi:
    return client.CustomObjectsApi()


def _get(group: str, version: str, plural: str, namespace: str, name: str) -> dict | None:
    try:
        return _custom().get_namespaced_custom_object(group, version, namespace, plural, name)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise kopf.TemporaryError(f"reading {plural}/{name}: {exc.reason}", delay=POLL_S) from exc


def _apply_custom(plural: str, body: dict, owner: dict) -> dict:
    """Create the child, or patch it when it exists (converges after restarts: no duplicates)."""
    kopf.adopt(body, owner=owner)
    meta = body["metadata"]
    existing = _get(*RAY, plural, meta["namespace"], meta["name"])
    if existing is None:
        result = _custom().create_namespaced_custom_object(*RAY, meta["namespace"], plural, body)
    elif existing.get("spec") != body["spec"] or existing["metadata"].get("labels") != meta.get("labels"):
        result = _custom().patch_namespaced_custom_object(*RAY, meta["namespace"], plural, meta["name"],
                                                          {"metadata": {"labels": meta["labels"]},
                                                           "spec": body["spec"]})
    else:
        return existing
    return result if isinstance(result, dict) and result.get("metadata") else body


def _apply_core(body: dict, owner: dict, read, create, patch, field: str, current_value) -> None:
    """Create a built-in child, or patch its ``field`` when it differs (converges after restarts)."""
    kopf.adopt(body, owner=owner)
    meta = body["metadata"]
    try:
        current = read(meta["name"], meta["namespace"])
    except ApiException as exc:
        if exc.status != 404:
            raise
        create(meta["namespace"], body)
        return
    if current_value(current) != body[field]:
        patch(meta["name"], meta["namespace"], {field: body[field]})


def _apply_network_policy(body: dict, owner: dict) -> None:
    api = client.NetworkingV1Api()
    _apply_core(body, owner, api.read_namespaced_network_policy, api.create_namespaced_network_policy,
                api.patch_namespaced_network_policy, "spec",
                lambda current: client.ApiClient().sanitize_for_serialization(current.spec))


def _apply_config_map(body: dict, owner: dict) -> None:
    core = client.CoreV1Api()
    _apply_core(body, owner, core.read_namespaced_config_map, core.create_namespaced_config_map,
                core.patch_namespaced_config_map, "data", lambda current: current.data or {})


class SecretNotAllowed(Exception):
    """A Secret the spec names has not opted in to TwinModels (its label)."""


def _check_secrets(spec: dict, namespace: str) -> None:
    """Every Secret the spec names must carry the opt-in label. Only the Secret's metadata is
    requested (PartialObjectMetadata): the operator never reads a Secret's data; pods get the
    values through secretKeyRef."""
    for where, secret in secret_refs(spec):
        try:
            response = client.ApiClient().call_api(
                f"/api/v1/namespaces/{namespace}/secrets/{secret}", "GET",
                header_params={"Accept": "application/json;as=PartialObjectMetadata;g=meta.k8s.io;v=v1"},
                auth_settings=["BearerToken"], _return_http_data_only=True, _preload_content=False)
            meta = json.loads(response.data)
        except ApiException as exc:
            if exc.status == 404:
                raise SecretNotAllowed(f"{where}: no Secret {secret!r} in namespace {namespace}") from None
            raise kopf.TemporaryError(f"reading Secret {secret} metadata: {exc.reason}", delay=POLL_S) from exc
        if ((meta or {}).get("metadata", {}).get("labels") or {}).get(SECRET_OPT_IN) != "true":
            raise SecretNotAllowed(f"{where}: Secret {secret!r} is not labelled {SECRET_OPT_IN}=true; label it "
                                   f"(kubectl label secret {secret} {SECRET_OPT_IN}=true) to let TwinModels use it")


class _Status:
    """Accumulates the status patch of one reconcile."""

    def __init__(self, status: dict, patch, generation: int):
        self.conditions = list(status.get("conditions") or [])
        self.patch, self.generation = patch, generation
        self.patch.status["observedGeneration"] = generation

    def condition(self, type_: str, ok: bool | None, reason: str, message: str = "") -> None:
        self.conditions = builders.set_condition(self.conditions, type_, ok, reason, message, self.generation)
        self.patch.status["conditions"] = self.conditions

    def stages(self, upto: tuple[str, ...], ok: bool | None, reason: str, message: str = "") -> None:
        for type_ in upto:
            self.condition(type_, ok, reason, message)

    def fail(self, stage: str, reason: str, message: str) -> None:
        self.patch.status["stage"] = "Failed"
        self.patch.status["lastFailure"] = {"stage": stage, "reason": reason, "message": message,
                                            "time": builders.now()}
        self.condition("Ready", False, reason, message)


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def reconcile(spec, status, meta, name, namespace, body, patch, logger, **_) -> None:
    state = _Status(status or {}, patch, meta.get("generation", 1))
    try:
        spec = place_storage(normalise(dict(spec)), namespace, name, POLICY.storage_root)
    except InvalidSpec as exc:
        state.fail("Validation", "InvalidSpec", str(exc))
        raise kopf.PermanentError(str(exc)) from exc
    try:
        _check_secrets(spec, namespace)
    except SecretNotAllowed as exc:
        state.fail("Validation", "SecretNotAllowed", str(exc))
        raise kopf.PermanentError(str(exc)) from exc
    # The twin's Ray pods and refresh pods are closed to the cluster before any of them exists.
    for policy in isolation.network_policies(name, namespace, POLICY):
        _apply_network_policy(policy, body)
    if spec["suspend"]:
        patch.status["stage"] = "Suspended"
        state.condition("Ready", False, "Suspended", "spec.suspend is true: nothing runs until it is false")
        return

    hashes = stage_hashes(spec, data_revision(meta))
    patch.status["stageHashes"] = hashes
    typed = TwinModelSpec.parse(spec)  # the builders read the typed spec, never the camelCase dict
    _apply_config_map(builders.config_map(name, namespace, typed, hashes), body)

    model = (status or {}).get("artifacts", {}).get("model", {})
    if model.get("evaluationHash") != hashes["evaluation"]:
        _train(name, namespace, typed, hashes, body, state, logger)
    _serve(name, namespace, typed, hashes, body, state)


def _train(name, namespace, spec: TwinModelSpec, hashes, body, state: _Status, logger) -> None:
    job_name = builders.job_name(name, hashes)
    job = _get(*RAY, "rayjobs", namespace, job_name)
    if job is None:
        _apply_custom("rayjobs", builders.ray_job(name, namespace, spec, hashes, POLICY.tracking_uri), body)
        logger.info(f"started RayJob {job_name}")
        job = {"status": {}}
    outcome = builders.job_outcome(job)
    job_status = job.get("status") or {}
    state.patch.status["training"] = {"rayJob": job_name, "jobStatus": job_status.get("jobStatus", "PENDING"),
                                      "jobDeploymentStatus": job_status.get("jobDeploymentStatus", "Initializing"),
                                      "message": job_status.get("message", "")}
    stages = ("SourcesIngested", "DatasetReady", "Trained", "Evaluated")
    if outcome == "running":
        state.patch.status["stage"] = "Training"
        state.stages(stages, None, "JobRunning", f"RayJob {job_name} is running")
        state.condition("Ready", False, "Training", f"RayJob {job_name} is running")
        raise kopf.TemporaryError(f"RayJob {job_name} still running", delay=POLL_S)
    if outcome == "failed":
        message = job_status.get("message") or f"RayJob {job_name} ended with {job_status.get('jobStatus')}"
        state.stages(stages, False, "JobFailed", message)
        state.fail("Training", "JobFailed", message)
        raise kopf.PermanentError(f"RayJob {job_name} failed: {message}")  # a spec change starts a new job
    state.stages(stages, True, "JobSucceeded", f"RayJob {job_name} succeeded")
    state.patch.status["artifacts"] = {"model": {"uri": builders.model_uri(spec, name, hashes),
                                                 "evaluationHash": hashes["evaluation"], "rayJob": job_name,
                                                 "time": builders.now()}}


def _serve(name, namespace, spec: TwinModelSpec, hashes, body, state: _Status) -> None:
    service = _apply_custom("rayservices", builders.ray_service(name, namespace, spec, hashes, POLICY.tracking_uri),
                            body)
    ready, why = builders.service_ready(service)
    state.patch.status["serving"] = {"rayService": name, **builders.endpoints(name, namespace),
                                     "version": hashes["evaluation"],
                                     "revisions": [{"model": builders.model_uri(spec, name, hashes),
                                                    "servingHash": hashes["serving"],
                                                    "traffic": 100}]}
    if not ready:
        state.patch.status["stage"] = "Deploying"
        state.condition("Serving", False, "Deploying", why)
        state.condition("Ready", False, "Deploying", why)
        raise kopf.TemporaryError(f"RayService {name} not ready: {why}", delay=POLL_S)
    state.patch.status["stage"] = "Ready"
    state.condition("Serving", True, "RayServiceReady", "the RayService reports Ready")
    state.condition("Ready", True, "Ready", "the twin is trained, evaluated and served")


def data_revision(meta) -> int:
    try:
        return int((meta.get("annotations") or {}).get(REVISION, 0))
    except ValueError:
        return 0


def _list(path: str, selector: str) -> list[dict]:
    """Objects at ``path`` as plain dicts (the operator reads a few fields of them; typed models would
    refuse an object for a field it does not need)."""
    response = client.ApiClient().call_api(path, "GET", query_params=[("labelSelector", selector)],
                                           header_params={"Accept": "application/json"}, auth_settings=["BearerToken"],
                                           _return_http_data_only=True, _preload_content=False)
    return json.loads(response.data).get("items") or []


def _refresh_jobs(name: str, namespace: str) -> list[dict]:
    jobs = _list(f"/apis/batch/v1/namespaces/{namespace}/jobs",
                 f"{builders.LABEL}={name},{isolation.JOB_LABEL}=refresh")
    # Not every API server filters by label selector.
    return [j for j in jobs if (j["metadata"].get("labels") or {}).get(builders.LABEL) == name
            and (j["metadata"].get("labels") or {}).get(isolation.JOB_LABEL) == "refresh"]


def _job_report(job: dict, namespace: str) -> tuple[str, dict | None]:
    """('running' | 'succeeded' | 'failed', the report from its pod's termination message)."""
    status, name = job.get("status") or {}, job["metadata"]["name"]
    if not (status.get("succeeded") or status.get("failed")):
        return "running", None
    message = None
    for pod in _list(f"/api/v1/namespaces/{namespace}/pods", f"job-name={name}"):
        if (pod["metadata"].get("labels") or {}).get("job-name") != name:
            continue
        for container in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (container.get("state") or {}).get("terminated") or {}
            if terminated.get("exitCode") == 0:
                message = terminated.get("message")
    return ("succeeded" if status.get("succeeded") else "failed"), isolation.parse_report(message)


@kopf.timer(GROUP, VERSION, PLURAL, interval=REFRESH_TICK_S, initial_delay=REFRESH_TICK_S)
def refresh(spec, status, meta, name, namespace, body, patch, logger, **_) -> None:
    """spec.refresh: when the interval is due, a Job in the twin's namespace re-crawls the sources
    and re-indexes what changed (`twin refresh`, isolation.refresh_job); nothing fetched from the
    web is parsed in the operator. When it ends, its report (the pod's termination message) updates
    the status, and when the changes since the served model was trained reach
    retrainAfterDocuments, the data revision is bumped (an annotation: the update handler then
    trains, gates and rolls out a new version)."""
    import time

    try:
        parsed = TwinModelSpec.parse(dict(spec))
        normalised = place_storage(parsed.as_resource(), namespace, name, POLICY.storage_root)
    except InvalidSpec:
        return  # the reconcile handler reports it
    every = parsed.refresh.seconds
    previous = dict((status or {}).get("refresh") or {})
    batch = client.BatchV1Api()
    for job in _refresh_jobs(name, namespace):
        outcome, report = _job_report(job, namespace)
        if outcome == "running":
            return  # one refresh at a time; the Job's activeDeadlineSeconds bounds it
        _record_refresh(patch, meta, parsed, previous, outcome, report, job["metadata"]["name"], logger)
        batch.delete_namespaced_job(job["metadata"]["name"], namespace, propagation_policy="Background")
        return
    if parsed.suspend or not every:
        return
    if time.time() - float(previous.get("lastRefreshEpoch", 0)) < every:
        return
    epoch = time.time()
    job = isolation.refresh_job(name, namespace, TwinModelSpec.parse(normalised), epoch)
    kopf.adopt(job, owner=body)
    batch.create_namespaced_job(namespace, job)
    patch.status["refresh"] = {**previous, "lastRefreshEpoch": epoch, "job": job["metadata"]["name"],
                               "lastRefresh": builders.now()}
    logger.info(f"refresh: started Job {job['metadata']['name']}")


def _record_refresh(patch, meta, parsed, previous: dict, outcome: str, report: dict | None, job: str, logger) -> None:
    if outcome != "succeeded" or report is None:
        patch.status["refresh"] = {**previous, "job": job, "lastFailure": {
            "time": builders.now(), "message": f"refresh Job {job} {outcome} without a report (see its pod's log)"}}
        logger.warning(f"refresh Job {job} {outcome} without a report")
        return
    changes = report["added"] + report["changed"] + report["removed"]
    # The first refresh is the baseline: the served model was trained on a crawl of the same sources.
    baseline = not previous.get("baselineDone")
    pending = int(previous.get("pendingDocuments", 0)) + (0 if baseline else changes)
    revision = data_revision(meta)
    retrain = pending >= parsed.refresh.retrain_after_documents
    if retrain:
        revision += 1
        patch.metadata.annotations[REVISION] = str(revision)
        pending = 0
    patch.status["refresh"] = {
        "lastRefresh": previous.get("lastRefresh") or builders.now(),
        "lastRefreshEpoch": previous.get("lastRefreshEpoch", 0), "job": job, "baselineDone": True,
        "documentsAdded": report["added"], "documentsChanged": report["changed"],
        "documentsRemoved": report["removed"], "failed": report["failed"], "documents": report["documents"],
        "chunksWritten": report["chunks_written"], "pendingDocuments": pending, "dataRevision": revision,
        "retrainTriggered": retrain, "lastFailure": None}
    if changes:  # kept until the next refresh that changes something (status patches merge)
        patch.status["refresh"]["lastChange"] = {
            "time": builders.now(), "added": report["added"], "changed": report["changed"],
            "removed": report["removed"], "chunksWritten": report["chunks_written"], "pendingDocuments": pending,
            "retrainTriggered": retrain, "baseline": baseline}
    logger.info(f"refresh: {report['added']} added, {report['changed']} changed, {report['removed']} removed"
                + (f"; retraining (data revision {revision})" if retrain else ""))


@kopf.on.delete(GROUP, VERSION, PLURAL)
def cleanup(name, namespace, logger, **_) -> None:
    """Owner references let the cluster's garbage collector remove the children; deleting them
    here as well makes deletion prompt and independent of the collector."""
    selector = f"{builders.LABEL}={name}"
    for plural in ("rayservices", "rayjobs"):
        try:
            items = _custom().list_namespaced_custom_object(*RAY, namespace, plural, label_selector=selector)["items"]
        except ApiException as exc:
            logger.warning(f"listing {plural}: {exc.reason}")
            continue
        for item in items:
            if (item["metadata"].get("labels") or {}).get(builders.LABEL) != name:
                continue  # not every API server filters by label selector
            _delete(lambda n=item["metadata"]["name"], p=plural: _custom().delete_namespaced_custom_object(
                *RAY, namespace, p, n))
    _delete(lambda: client.CoreV1Api().delete_namespaced_config_map(f"{name}-config", namespace))
    for policy in (f"{name}-ray", f"{name}-refresh"):
        _delete(lambda p=policy: client.NetworkingV1Api().delete_namespaced_network_policy(p, namespace))
    try:
        for job in _refresh_jobs(name, namespace):
            _delete(lambda j=job["metadata"]["name"]: client.BatchV1Api().delete_namespaced_job(
                j, namespace, propagation_policy="Background"))
    except ApiException as exc:
        logger.warning(f"listing refresh Jobs: {exc.reason}")


def _delete(call) -> None:
    try:
        call()
    except ApiException as exc:
        if exc.status != 404:
            raise
