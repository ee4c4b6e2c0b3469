"""Pure builders: a TwinModel's typed spec (`TwinModelSpec`) -> the manifests of its children, and status conditions.
No API calls here; tested as dicts."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import yaml

from llm_twin.config import GatewaySettings
from llm_twin.documents import author_slug
from llm_twin.twinmodel import SecretKeyRef, TwinModelSpec
from services.gateway.proxy_guard import proxy_env
from services.gateway.serve_config import GRPC_PORT, HTTP_PORT, PIPELINE_COMMAND, serve_config

from .spec import GROUP, STAGES

LABEL = f"{GROUP}/twinmodel"
HASH_LABEL = f"{GROUP}/stage-hash"
CONFIG_KEY = "twinmodel.json"


def labels(name: str, stage_hash: str | None = None) -> dict[str, str]:
    out = {LABEL: name, "app.kubernetes.io/managed-by": "llm-twin-operator"}
    if stage_hash:
        out[HASH_LABEL] = stage_hash
    return out


def config_map(name: str, namespace: str, spec: TwinModelSpec, hashes: dict[str, str]) -> dict:
    """The rendered configuration the training job reads (`twin pipeline --config`)."""
    return {"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": f"{name}-config", "namespace": namespace, "labels": labels(name)},
            "data": {CONFIG_KEY: json.dumps({"name": name, "spec": spec.as_resource(), "stageHashes": hashes},
                                            indent=2, sort_keys=True)}}


def model_uri(spec: TwinModelSpec, name: str, hashes: dict[str, str]) -> str:
    """Where `twin pipeline` registers the twin (the registry's models/<author>/<version> layout,
    the version being the evaluation stage's hash)."""
    return f"{spec.storage.artifact_uri.rstrip('/')}/models/{author_slug(spec.author.name)}/{hashes['evaluation']}"


def job_name(name: str, hashes: dict[str, str]) -> str:
    return f"{name}-train-{hashes['evaluation'][:10]}"


def _secret_env(name: str, ref: SecretKeyRef | None) -> list[dict]:
    return [{"name": name, "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}] if ref else []


def secret_env(spec: TwinModelSpec, *, teacher: bool) -> list[dict]:
    """Secrets by reference: the Milvus token (and, for the training job, the teacher's and the judge's keys) reach
    the containers as environment from their Secrets, never through the ConfigMap."""
    env = _secret_env("TWIN_MILVUS_TOKEN", spec.vector_store.token_secret_ref)
    if teacher:
        teacher_, judge = spec.dataset.teacher, spec.evaluation.judge
        env += _secret_env("TWIN_TEACHER_KEY", teacher_.secret_ref if teacher_ else None)
        env += _secret_env("TWIN_JUDGE_KEY", judge.secret_ref if judge else None)
    return env


# Ray pods need no Kubernetes API and no root. Ray writes its session files under /tmp, so the root
# file system stays writable; everything else is locked down.
POD_SECURITY = {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
                "seccompProfile": {"type": "RuntimeDefault"}}
CONTAINER_SECURITY = {"allowPrivilegeEscalation": False, "privileged": False, "capabilities": {"drop": ["ALL"]}}
KEYS_DIR = "/etc/llm-twin/keys"
# Ray's token authentication, managed by KubeRay (>= 1.5.1; a Secret with a random token per cluster,
# RAY_AUTH_MODE/RAY_AUTH_TOKEN set in every Ray container). It needs rayVersion >= 2.52.
AUTH_OPTIONS = {"mode": "token"}


def ray_version() -> str:
    """The Ray the platform's image carries (the operator runs the same image)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("ray")
    except PackageNotFoundError:
        return "2.60.0"


def proxy_environment() -> list[dict]:
    """What the Serve proxies of a twin's cluster read at start (services/gateway/proxy_guard.py):
    gRPC's receive limit (the HTTP body limit) and the HTTP proxy's guard."""
    return [{"name": k, "value": v} for k,
            v in proxy_env(GatewaySettings.model_fields["max_request_bytes"].default).items()]


def ray_pod(containers: list[dict], volumes: list[dict], name: str) -> dict:
    """A Ray pod template: labelled with its twin (the twin's NetworkPolicy selects it), hardened,
    no service account token."""
    spec = {"automountServiceAccountToken": False, "enableServiceLinks": False, "securityContext": dict(POD_SECURITY),
            "containers": [{**c, "securityContext": dict(CONTAINER_SECURITY)} for c in containers]}
    if volumes:
        spec["volumes"] = volumes
    return {"metadata": {"labels": {f"{GROUP}/ray": "true", LABEL: name}}, "spec": spec}


def tracking_env(tracking_uri: str) -> list[dict]:
    """The MLflow server the pipeline's run, the registry and the prompt traces go to (the chart's
    tracking.uri or its own server); none: the pipeline starts a throwaway local one in its pod."""
    return [{"name": "TWIN_TRACKING_URI", "value": tracking_uri}] if tracking_uri else []


def _container(spec: TwinModelSpec, *, gpus: int, cpu: str = "4", memory: str = "16Gi",
               tracking_uri: str = "") -> dict:
    limits = {"cpu": cpu, "memory": memory}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    container = {"image": spec.training.image, "resources": {"limits": limits, "requests": dict(limits)}}
    env = secret_env(spec, teacher=True) + tracking_env(tracking_uri)
    return {**container, "env": env} if env else container


def ray_job(name: str, namespace: str, spec: TwinModelSpec, hashes: dict[str, str], tracking_uri: str = "") -> dict:
    """Ingest + dataset + training + evaluation in one KubeRay RayJob whose entrypoint is the CLI."""
    training = spec.training
    head = {**_container(spec, gpus=0, tracking_uri=tracking_uri), "name": "ray-head",
            "volumeMounts": [{"name": "config", "mountPath": "/etc/llm-twin"}]}
    worker = {**_container(spec, gpus=training.gpus_per_worker, tracking_uri=tracking_uri), "name": "ray-worker",
              "volumeMounts": [{"name": "config", "mountPath": "/etc/llm-twin"}]}
    volumes = [{"name": "config", "configMap": {"name": f"{name}-config"}}]
    return {
        "apiVersion": "ray.io/v1", "kind": "RayJob",
        "metadata": {"name": job_name(name, hashes), "namespace": namespace,
                     "labels": labels(name, hashes["evaluation"])},
        "spec": {
            "entrypoint": " ".join(PIPELINE_COMMAND),
            # KubeRay submits the job over the dashboard's HTTP API itself: no submitter pod needs
            # to reach the head (the twin's NetworkPolicy lets only KubeRay's operator in).
            "submissionMode": "HTTPMode",
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 3600,
            "backoffLimit": 0,
            "rayClusterSpec": {
                "rayVersion": ray_version(), "authOptions": dict(AUTH_OPTIONS),
                "headGroupSpec": {"rayStartParams": {"num-cpus": "0"}, "template": ray_pod([head], volumes, name)},
                "workerGroupSpecs": [{
                    "groupName": "train", "replicas": training.workers,
                    "minReplicas": training.workers, "maxReplicas": training.workers,
                    "rayStartParams": {},
                    "template": ray_pod([worker], volumes, name)}],
            },
        },
    }


def platform_serve_config(name: str, spec: TwinModelSpec, hashes: dict[str, str]) -> dict:
    """The twin's Serve config: the platform's one serve config (`serve_config`) over the base
    model, with the twin pinned to the version this spec trained (the registry version is the
    evaluation hash), so a new version rolls out as a config change."""
    serving = spec.serving
    gpus = serving.resources.gpus
    args = {"generation_model": spec.training.base_model, "generation_engine": serving.engine,
            "artifact_uri": spec.storage.artifact_uri,
            "milvus_uri": spec.vector_store.milvus_uri, "collection": spec.vector_store.collection,
            "pinned_models": {author_slug(spec.author.name): hashes["evaluation"]}, "http_host": "0.0.0.0",
            # On a cluster a twin never answers keyless (a sidecar proxy would make every caller loopback).
            "require_keys": True, "key_max_concurrent": serving.key_max_concurrent,
            "key_requests_per_minute": serving.key_requests_per_minute, "monitoring_mask_pii": serving.mask_pii}
    if serving.engine == "transformers":  # an engine's options go to that engine only (Settings refuses others)
        args["generation_device"] = "cuda" if gpus else "cpu"
    if spec.storage.warehouse_uri:
        args["warehouse_uri"] = spec.storage.warehouse_uri
    return serve_config(args, request_timeout_s=float(serving.request_timeout_seconds), generation_gpus=gpus,
                        max_queued_requests=serving.max_queued_requests,
                        generation_autoscaling={"min_replicas": serving.min_replicas,
                                                "max_replicas": serving.max_replicas,
                                                "target_ongoing_requests": serving.target_ongoing_requests})


def ray_service(name: str, namespace: str, spec: TwinModelSpec, hashes: dict[str, str],
                tracking_uri: str = "") -> dict:
    """The twin's RayService. A new model changes serveConfigV2 in place; with canaryPercent the
    upgrade moves traffic in steps of that size to the new cluster (KubeRay incremental upgrade)."""
    serving = spec.serving
    resources = serving.resources
    gpus = resources.gpus
    limits = {"cpu": str(resources.cpu), "memory": str(resources.memory)}
    if gpus:
        limits["nvidia.com/gpu"] = str(gpus)
    image = spec.training.image
    # Who may call: the keys file from serving.apiKeysSecret; without one every call is refused (require_keys).
    env = {"env": [{"name": "TWIN_API_KEYS_FILE", "value": f"{KEYS_DIR}/api-keys.json"},
                   *proxy_environment(), *secret_env(spec, teacher=False), *tracking_env(tracking_uri)]}
    volumes, mounts = [], {}
    if serving.api_keys_secret:
        volumes = [{"name": "api-keys", "secret": {"secretName": serving.api_keys_secret}}]
        mounts = {"volumeMounts": [{"name": "api-keys", "mountPath": KEYS_DIR, "readOnly": True}]}
    canary = serving.canary_percent
    upgrade = ({"type": "NewClusterWithIncrementalUpgrade",
                "clusterUpgradeOptions": {"stepSizePercent": canary, "intervalSeconds": 60, "maxSurgePercent": 100}}
               if canary else {"type": "NewCluster"})
    return {
        "apiVersion": "ray.io/v1", "kind": "RayService",
        "metadata": {"name": name, "namespace": namespace, "labels": labels(name, hashes["serving"]),
                     "annotations": {f"{GROUP}/engine": serving.engine}},
        "spec": {
            "upgradeStrategy": upgrade,
            "serveConfigV2": yaml.safe_dump(platform_serve_config(name, spec, hashes), sort_keys=False),
            "rayClusterConfig": {
                "rayVersion": ray_version(), "authOptions": dict(AUTH_OPTIONS),
                "enableInTreeAutoscaling": True,
                "headGroupSpec": {"rayStartParams": {"num-cpus": "0"}, "template": ray_pod([{
                    "name": "ray-head", "image": image,
                    "ports": [{"name": "serve", "containerPort": HTTP_PORT}, {"name": "grpc",
                                                                              "containerPort": GRPC_PORT}],
                    "resources": {"limits": {"cpu": "2", "memory": "8Gi"}}, **env, **mounts}], volumes, name)},
                "workerGroupSpecs": [{
                    "groupName": "serve", "replicas": max(1, serving.min_replicas),
                    "minReplicas": serving.min_replicas, "maxReplicas": serving.max_replicas,
                    "rayStartParams": {},
                    "template": ray_pod([{"name": "ray-worker", "image": image, **env, **mounts,
                                          "resources": {"limits": limits, "requests": dict(limits)}}], volumes, name)}],
            },
        },
    }


def endpoints(name: str, namespace: str) -> dict:
    service = f"{name}-serve-svc.{namespace}.svc"  # KubeRay's serve service for a RayService
    return {"grpc": f"{service}:{GRPC_PORT}", "http": f"http://{service}:{HTTP_PORT}"}


# -- status ------------------------------------------------------------------------------------------
def now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(conditions: list[dict], type_: str, status: bool | None, reason: str, message: str,
                  generation: int | None, at: str | None = None) -> list[dict]:
    """Conditions in the Kubernetes convention; lastTransitionTime moves only when status changes."""
    value = "Unknown" if status is None else ("True" if status else "False")
    out = [dict(c) for c in conditions or []]
    current = next((c for c in out if c["type"] == type_), None)
    entry = {"type": type_, "status": value, "reason": reason, "message": message, "observedGeneration": generation,
             "lastTransitionTime": at or now()}
    if current is None:
        out.append(entry)
    else:
        if current.get("status") == value:
            entry["lastTransitionTime"] = current.get("lastTransitionTime", entry["lastTransitionTime"])
        current.update(entry)
    order = {t: i for i, t in enumerate((*STAGES, "Ready"))}
    return sorted(out, key=lambda c: order.get(c["type"], len(order)))


def job_outcome(job: dict) -> str:
    """'succeeded', 'failed' or 'running' from a RayJob's status. Complete alone only means the
    job finished: success is jobDeploymentStatus=Complete AND jobStatus=SUCCEEDED."""
    status = job.get("status") or {}
    deployment, job_status = status.get("jobDeploymentStatus"), status.get("jobStatus")
    if deployment == "Complete" and job_status == "SUCCEEDED":
        return "succeeded"
    if deployment in ("Failed", "ValidationFailed") or job_status in ("FAILED", "STOPPED") or deployment == "Complete":
        return "failed"
    return "running"


def service_ready(service: dict) -> tuple[bool, str]:
    """(ready, why) from a RayService's status: its Ready condition (KubeRay >= 1.3)."""
    status = service.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "Ready":
            return condition.get("status") == "True", condition.get("message") or condition.get("reason", "")
    return False, "waiting for the RayService to report Ready"

