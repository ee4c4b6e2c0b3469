"""Pure builders for what keeps one twin apart from the rest of a shared cluster: its NetworkPolicies
and the refresh crawl as a Job in its own namespace.

Who may reach a twin's Ray pods (both its RayJob's and its RayService's clusters):
- every port: the twin's own Ray pods (a Ray cluster talks to itself on GCS 6379, the dashboard
  8265, the client port 10001, the raylets' and workers' ports);
- the dashboard/jobs API (8265) and the dashboard agent (52365): the KubeRay operator only, named
  by its namespace and pod labels (RayJobs are submitted by KubeRay itself, submissionMode HTTPMode,
  so no submitter pod needs them);
- the serving ports (8000 HTTP, 9000 gRPC): pods of the twin's namespace and of the namespaces the
  chart names (an ingress controller's);
- Ray's metrics port (8080): the Prometheus namespace, when the chart names one.
Everything else is refused, from every namespace: a NetworkPolicy that selects a pod makes
ingress default-deny for it. The refresh crawl's pod accepts no connections at all.

Ray's token authentication (KubeRay `authOptions: {mode: token}`) is on as well: a peer that does
get through still needs the cluster's token for GCS, the dashboard and job submission.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from llm_twin.twinmodel import TwinModelSpec
from services.gateway.serve_config import GRPC_PORT, HTTP_PORT

from .builders import (
    CONFIG_KEY,
    CONTAINER_SECURITY,
    LABEL,
    POD_SECURITY,
    labels,
    secret_env,
)
from .spec import GROUP

RAY_POD = f"{GROUP}/ray"
JOB_LABEL = f"{GROUP}/job"
DASHBOARD_PORT, DASHBOARD_AGENT_PORT, METRICS_PORT = 8265, 52365, 8080
RAY_CONTROL_PORTS = (6379, DASHBOARD_PORT, 10001, DASHBOARD_AGENT_PORT)  # what the tests probe, among all
REFRESH_REPORT = "/dev/termination-log"  # the Job's report travels as its pod's termination message


@dataclass(frozen=True)
class ClusterPolicy:
    """Where the operator's peers are; from the operator's environment (set by the chart)."""

    kuberay_namespace: str = "kuberay-system"
    kuberay_labels: dict = field(default_factory=lambda: {"app.kubernetes.io/name": "kuberay-operator"})
    serving_namespaces: tuple[str, ...] = ()  # besides the twin's own
    prometheus_namespace: str = ""
    storage_root: str = "s3://llm-twin"
    tracking_uri: str = ""  # the MLflow server twins' jobs and services log to (the chart's tracking)

    @classmethod
    def from_env(cls, environ=os.environ) -> ClusterPolicy:
        names = [n.strip() for n in environ.get("TWIN_OPERATOR_SERVING_NAMESPACES", "").split(",") if n.strip()]
        return cls(kuberay_namespace=environ.get("TWIN_OPERATOR_KUBERAY_NAMESPACE", cls.kuberay_namespace),
                   serving_namespaces=tuple(names),
                   prometheus_namespace=environ.get("TWIN_OPERATOR_PROMETHEUS_NAMESPACE", ""),
                   storage_root=environ.get("TWIN_OPERATOR_STORAGE_ROOT", cls.storage_root),
                   tracking_uri=environ.get("TWIN_OPERATOR_TRACKING_URI", ""))


def _namespace(name: str) -> dict:
    return {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": name}}}


def _tcp(*ports: int) -> list[dict]:
    return [{"protocol": "TCP", "port": p} for p in ports]


def network_policies(name: str, namespace: str, policy: ClusterPolicy) -> list[dict]:
    """The twin's NetworkPolicies (its namespace): its Ray pods, and its refresh pods."""
    own_ray = {LABEL: name, RAY_POD: "true"}
    serving_from = [{"podSelector": {}}] + [_namespace(n) for n in policy.serving_namespaces]
    ingress = [
        {"from": [{"podSelector": {"matchLabels": dict(own_ray)}}]},
        {"from": [{**_namespace(policy.kuberay_namespace),
                   "podSelector": {"matchLabels": dict(policy.kuberay_labels)}}],
         "ports": _tcp(DASHBOARD_PORT, DASHBOARD_AGENT_PORT)},
        {"from": serving_from, "ports": _tcp(HTTP_PORT, GRPC_PORT)},
    ]
    if policy.prometheus_namespace:
        ingress.append({"from": [_namespace(policy.prometheus_namespace)], "ports": _tcp(METRICS_PORT)})
    meta = {"namespace": namespace, "labels": labels(name)}
    return [
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": f"{name}-ray", **meta},
         "spec": {"podSelector": {"matchLabels": own_ray}, "policyTypes": ["Ingress"], "ingress": ingress}},
        {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": f"{name}-refresh", **meta},
         "spec": {"podSelector": {"matchLabels": {LABEL: name, JOB_LABEL: "refresh"}}, "policyTypes": ["Ingress"],
                  "ingress": []}},
    ]


def refresh_job_name(name: str, epoch: float) -> str:
    return f"{name[:40]}-refresh-{int(epoch)}"


def refresh_job(name: str, namespace: str, spec: TwinModelSpec, epoch: float, deadline_s: int = 3600) -> dict:
    """The refresh crawl as a Job: hostile web content is parsed here, in the twin's namespace, by a
    pod with no Kubernetes API access (no service account token), no root, no privileges, no
    ingress, and only the twin's own Secrets (by reference). It reports through its termination
    message (`twin refresh --report`), which the operator reads from the pod's status."""
    pod_labels = {**labels(name), JOB_LABEL: "refresh"}
    # The root is read-only: caches that follow HOME go to the scratch /tmp.
    env = [{"name": "HOME", "value": "/tmp"}, *secret_env(spec, teacher=False)]
    container = {
        "name": "refresh", "image": spec.training.image,
        "args": ["refresh", "--config", f"/etc/llm-twin/{CONFIG_KEY}", "--report", REFRESH_REPORT],
        "resources": {"limits": {"cpu": "1", "memory": "2Gi"}, "requests": {"cpu": "250m", "memory": "1Gi"}},
        "securityContext": {**CONTAINER_SECURITY, "readOnlyRootFilesystem": True},
        "terminationMessagePolicy": "File",
        "volumeMounts": [{"name": "config", "mountPath": "/etc/llm-twin", "readOnly": True},
                         {"name": "tmp", "mountPath": "/tmp"}, {"name": "data", "mountPath": "/data"}],
        "env": env,
    }
    return {
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": refresh_job_name(name, epoch), "namespace": namespace, "labels": pod_labels},
        "spec": {
            "backoffLimit": 0, "activeDeadlineSeconds": int(deadline_s), "ttlSecondsAfterFinished": 3600,
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                         "enableServiceLinks": False, "securityContext": dict(POD_SECURITY),
                         "containers": [container],
                         "volumes": [{"name": "config", "configMap": {"name": f"{name}-config"}},
                                     {"name": "tmp", "emptyDir": {"sizeLimit": "1Gi"}},
                                     {"name": "data", "emptyDir": {"sizeLimit": "4Gi"}}]},
            },
        },
    }


REPORT_FIELDS = ("added", "changed", "removed", "failed", "documents", "chunks_written")


def parse_report(message: str | None) -> dict[str, int] | None:
    """The refresh Job's report from its termination message: a JSON object of counts, nothing
    else taken from it (the pod ran an image the TwinModel's author chose)."""
    import json

    if not message or len(message) > 4096:
        return None
    try:
        raw = json.loads(message)
    except ValueError:
        return None
    if not isinstance(raw, dict):
        return None
    out = {}
    for key in REPORT_FIELDS:
        value = raw.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 10_000_000:
            return None
        out[key] = value
    return out
