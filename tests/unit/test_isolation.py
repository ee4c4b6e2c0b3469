"""A twin on a shared cluster, read the way a reviewer would: for every pod the operator and the
chart create, which peers reach which ports, by evaluating the rendered NetworkPolicies with
Kubernetes' semantics (a pod selected by a policy accepts only what some rule allows; rules add
up). Also the operator's rights, the storage each twin may name, and the refresh Job's pod.

The policies are rendered (the operator's pure builders, the chart through real `helm template`);
no cluster runs here, so what a CNI plugin would enforce is evaluated by `reaches` below.
"""

from __future__ import annotations

import json

import pytest
import yaml

from llm_twin.twinmodel import TwinModelSpec
from operators.twinmodel import builders, isolation
from operators.twinmodel.spec import (
    InvalidSpec,
    normalise,
    place_storage,
    secret_refs,
    stage_hashes,
)
from tests.unit.test_kubernetes import (
    chart,  # noqa: F401 - the fixture
    render,
)

SPEC = {"author": {"name": "Ada Writer", "sources": {"feeds": ["https://ada.test/feed.xml"]}},
        "training": {"baseModel": "m"}, "serving": {"apiKeysSecret": "ada-keys"},
        "vectorStore": {"tokenSecretRef": {"name": "milvus-auth", "key": "token"}}}
POLICY = isolation.ClusterPolicy(kuberay_namespace="kuberay-system", serving_namespaces=("ingress-nginx",),
                                 storage_root="s3://llm-twin")


# -- NetworkPolicy semantics ----------------------------------------------------------------------------
def _matches(selector: dict | None, labels: dict) -> bool:
    if selector is None:
        return True
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expr in selector.get("matchExpressions") or []:
        key, op, values = expr["key"], expr["operator"], expr.get("values") or []
        if op == "In" and labels.get(key) not in values or op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels or op == "DoesNotExist" and key in labels:
            return False
    return True


def reaches(policies: list[dict], pod: dict, peer: dict, port: int) -> bool:
    """Kubernetes ingress semantics for TCP ``port`` on ``pod`` from ``peer`` ({namespace, labels})."""
    selecting = [p for p in policies if p["metadata"]["namespace"] == pod["namespace"]
                 and "Ingress" in p["spec"].get("policyTypes", ["Ingress"])
                 and _matches(p["spec"]["podSelector"], pod["labels"])]
    if not selecting:
        return True
    peer_ns_labels = {"kubernetes.io/metadata.name": peer["namespace"]}
    for policy in selecting:
        for rule in policy["spec"].get("ingress") or []:
            ports = rule.get("ports")
            if ports and not any(p.get("port") == port and p.get("protocol", "TCP") == "TCP" for p in ports):
                continue
            sources = rule.get("from")
            if not sources:
                return True
            for source in sources:
                ns_sel, pod_sel = source.get("namespaceSelector"), source.get("podSelector")
                if ns_sel is None:  # podSelector alone: pods of the policy's own namespace
                    if peer["namespace"] == policy["metadata"]["namespace"] and _matches(pod_sel, peer["labels"]):
                        return True
                elif _matches(ns_sel, peer_ns_labels) and _matches(pod_sel, peer["labels"]):
                    return True
    return False


def _pods_of(obj: dict, namespace: str) -> list[dict]:
    """Every pod template in a RayJob, RayService or Job, as (namespace, labels)."""
    spec = obj["spec"]
    cluster = spec.get("rayClusterSpec") or spec.get("rayClusterConfig")
    if cluster:
        groups = [cluster["headGroupSpec"], *cluster["workerGroupSpecs"]]
        return [{"namespace": namespace, "labels": g["template"]["metadata"]["labels"]} for g in groups]
    return [{"namespace": namespace, "labels": spec["template"]["metadata"]["labels"]}]


def twin_objects(name="ada", namespace="team-a"):
    spec = normalise(SPEC)
    hashes = stage_hashes(spec)
    return (isolation.network_policies(name, namespace, POLICY),
            _pods_of(builders.ray_job(name, namespace, TwinModelSpec.parse(spec), hashes), namespace)
            + _pods_of(builders.ray_service(name, namespace, TwinModelSpec.parse(spec), hashes), namespace),
            _pods_of(isolation.refresh_job(name, namespace, TwinModelSpec.parse(spec), 1700000000), namespace)[0])


KUBERAY = {"namespace": "kuberay-system", "labels": {"app.kubernetes.io/name": "kuberay-operator"}}
PEERS = {
    "pod in another namespace": {"namespace": "evil", "labels": {"app": "x"}},
    "other pod of the twin's namespace": {"namespace": "team-a", "labels": {"app": "notebook"}},
    "another twin's Ray pod, same namespace": {"namespace": "team-a",
                                               "labels": {"llmtwin.dev/ray": "true", "llmtwin.dev/twinmodel": "bob"}},
    "Ray pod of a twin elsewhere": {"namespace": "team-b",
                                    "labels": {"llmtwin.dev/ray": "true", "llmtwin.dev/twinmodel": "ada"}},
    "unlabelled pod in KubeRay's namespace": {"namespace": "kuberay-system", "labels": {}},
    "ingress controller": {"namespace": "ingress-nginx", "labels": {"app": "ingress"}},
}


@pytest.mark.parametrize("peer", list(PEERS))
def test_ray_control_ports_of_a_twin_are_closed_to_every_other_pod(peer):
    policies, ray_pods, _ = twin_objects()
    for pod in ray_pods:
        for port in (*isolation.RAY_CONTROL_PORTS, 8076, 10002, 12345):
            assert not reaches(policies, pod, PEERS[peer], port), (peer, port, pod)


def test_who_reaches_a_twins_ray_pods():
    policies, ray_pods, _ = twin_objects()
    own = ray_pods[0]
    for pod in ray_pods:
        for port in (6379, 8265, 10001, 52365, 8000, 9000, 12345):
            assert reaches(policies, pod, own, port), ("the cluster talks to itself", port)
        assert reaches(policies, pod, KUBERAY, 8265) and reaches(policies, pod, KUBERAY, 52365)
        assert not reaches(policies, pod, KUBERAY, 6379) and not reaches(policies, pod, KUBERAY, 10001)
        for port in (8000, 9000):  # serving: the twin's namespace and the ingress namespace only
            assert reaches(policies, pod, PEERS["other pod of the twin's namespace"], port)
            assert reaches(policies, pod, PEERS["ingress controller"], port)
            assert not reaches(policies, pod, PEERS["pod in another namespace"], port)
        assert not reaches(policies, pod, PEERS["pod in another namespace"], 8080)


def test_the_refresh_pod_accepts_no_connection():
    policies, _, refresh_pod = twin_objects()
    for peer in [*PEERS.values(), KUBERAY]:
        for port in (80, 8000, 8265, 12345):
            assert not reaches(policies, refresh_pod, peer, port)


def test_two_twins_in_one_namespace_cannot_reach_each_others_control_ports():
    ada_policies, ada_pods, _ = twin_objects("ada")
    bob_policies, bob_pods, _ = twin_objects("bob")
    policies = ada_policies + bob_policies
    for port in (6379, 8265, 10001):
        assert not reaches(policies, ada_pods[0], bob_pods[0], port)
        assert not reaches(policies, bob_pods[0], ada_pods[0], port)
    assert reaches(policies, ada_pods[0], bob_pods[0], 8000)  # serving: the namespace may call it (with a key)


def test_ray_token_authentication_and_kuberay_submission(chart):  # noqa: F811
    spec = normalise(SPEC)
    hashes = stage_hashes(spec)
    typed = TwinModelSpec.parse(spec)
    job = builders.ray_job("ada", "team-a", typed, hashes)
    service = builders.ray_service("ada", "team-a", typed, hashes)
    assert job["spec"]["rayClusterSpec"]["authOptions"] == {"mode": "token"}
    assert service["spec"]["rayClusterConfig"]["authOptions"] == {"mode": "token"}
    assert job["spec"]["submissionMode"] == "HTTPMode"  # no submitter pod needs the dashboard
    major, minor, *_ = (int(x) for x in service["spec"]["rayClusterConfig"]["rayVersion"].split("."))
    assert (major, minor) >= (2, 52)
    args = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]
    assert args["require_keys"] is True
    env = {e["name"]: e.get("value") for e in
           service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"] == str(1024 * 1024)
    assert env["RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"] == "services.gateway.proxy_guard:middlewares"


def test_the_charts_platform_pods_are_reachable_only_as_intended(chart):  # noqa: F811
    documents = render(chart, "platform.enabled=true", "auth.apiKeysSecret=k", "networkPolicy.ingressNamespace=ingress")
    policies = [d for d in documents if d["kind"] == "NetworkPolicy"]
    service = next(d for d in documents if d["kind"] == "RayService")
    pods = _pods_of(service, "llm-twin")
    kuberay = {"namespace": "llm-twin", "labels": {"app.kubernetes.io/name": "kuberay-operator"}}
    twin_in_release_ns = {"namespace": "llm-twin", "labels": {"llmtwin.dev/ray": "true", "llmtwin.dev/twinmodel": "x"}}
    for pod in pods:
        assert reaches(policies, pod, pods[0], 6379) and reaches(policies, pod, kuberay, 8265)
        assert not reaches(policies, pod, kuberay, 6379)
        for peer in (twin_in_release_ns, {"namespace": "evil", "labels": {}}, {"namespace": "llm-twin", "labels": {}}):
            for port in (6379, 8265, 10001, 52365):
                assert not reaches(policies, pod, peer, port), (peer, port)
        assert reaches(policies, pod, {"namespace": "ingress", "labels": {}}, 8000)
        assert not reaches(policies, pod, {"namespace": "evil", "labels": {}}, 9000)


# -- the operator's rights --------------------------------------------------------------------------------
def _rules(documents: list[dict], kind: str) -> list[dict]:
    return [r for d in documents if d["kind"] == kind for r in d.get("rules") or []]


@pytest.mark.parametrize("scoped", [False, True])
def test_the_operators_rights_are_what_it_does(chart, scoped):  # noqa: F811
    sets = ["operator.watchNamespaces={team-a,team-b}"] if scoped else []
    documents = render(chart, *sets)
    cluster_rules, namespaced = _rules(documents, "ClusterRole"), _rules(documents, "Role")
    every = cluster_rules + namespaced
    for rule in every:
        assert "*" not in rule["verbs"] and "*" not in rule["resources"] and "*" not in rule["apiGroups"], rule
        assert not {"rbac.authorization.k8s.io", "admissionregistration.k8s.io"} & set(rule["apiGroups"]), rule
        assert not {"pods/exec", "pods/attach", "serviceaccounts/token", "nodes"} & set(rule["resources"]), rule
    secrets = [r for r in every if "secrets" in r["resources"]]
    assert secrets and all(r["verbs"] == ["get"] for r in secrets), "Secrets: metadata checks by name only"
    pods = [r for r in every if "pods" in r["resources"]]
    assert all(set(r["verbs"]) <= {"get", "list"} for r in pods), "the operator never creates pods"
    if scoped:
        assert not any("secrets" in r["resources"] for r in cluster_rules), "no cluster-wide Secret reads"
        roles = [d for d in documents if d["kind"] == "Role"]
        assert sorted(r["metadata"]["namespace"] for r in roles) == ["team-a", "team-b"]
    operator = next(d for d in documents if d["kind"] == "Deployment")
    env = {e["name"]: e["value"] for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TWIN_OPERATOR_STORAGE_ROOT"] == "s3://llm-twin" and env["TWIN_OPERATOR_KUBERAY_NAMESPACE"] == "llm-twin"


# -- storage, Secrets, the refresh Job --------------------------------------------------------------------
def test_each_twin_stores_under_its_own_prefix():
    placed = place_storage(normalise(SPEC), "team-a", "ada", "s3://llm-twin/")
    assert placed["storage"] == {"warehouseUri": "s3://llm-twin/team-a/ada/warehouse",
                                 "artifactUri": "s3://llm-twin/team-a/ada/artifacts"}
    mine = {**SPEC, "storage": {"artifactUri": "s3://llm-twin/team-a/ada/models-v2"}}
    assert place_storage(normalise(mine), "team-a", "ada", "s3://llm-twin")["storage"]["artifactUri"] == \
        "s3://llm-twin/team-a/ada/models-v2"


@pytest.mark.parametrize("uri", ["s3://llm-twin/team-a/bob/artifacts", "s3://llm-twin/team-b/ada/artifacts",
                                 "s3://llm-twin/team-a/ada/../bob/artifacts", "s3://llm-twin/team-a",
                                 "s3://llm-twin/team-a/adam/artifacts", "s3://other-bucket/x", "/etc",
                                 "file:///var/run/secrets", "s3://llm-twin/team-a/ada/./x/../../bob",
                                 "s3://llm-twin//team-a/ada/x"])
def test_a_path_outside_the_twins_prefix_is_refused_naming_it(uri):
    for field in ("artifactUri", "warehouseUri"):
        with pytest.raises(InvalidSpec, match=f"spec.storage.{field}") as refused:
            place_storage(normalise({**SPEC, "storage": {field: uri}}), "team-a", "ada", "s3://llm-twin")
        assert "s3://llm-twin/team-a/ada/" in str(refused.value)


def test_every_secret_a_spec_names_is_listed_for_the_opt_in_check():
    full = {**SPEC, "dataset": {"teacher": {"endpoint": "https://t.test/v1", "model": "m",
                                            "secretRef": {"name": "teacher", "key": "k"}}},
            "evaluation": {"judge": {"endpoint": "https://j.test/v1", "model": "m", "secretRef": {"name": "judge",
                                                                                                  "key": "k"}}}}
    assert {name for _, name in secret_refs(normalise(full))} == {"milvus-auth", "teacher", "judge", "ada-keys"}


def test_the_refresh_job_runs_the_crawl_without_api_access_or_privileges():
    spec = place_storage(normalise(SPEC), "team-a", "ada", "s3://llm-twin")
    job = isolation.refresh_job("ada", "team-a", TwinModelSpec.parse(spec), 1700000000)
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["args"][:3] == ["refresh", "--config", "/etc/llm-twin/twinmodel.json"]
    assert pod["automountServiceAccountToken"] is False and pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"] == {"drop": ["ALL"]}
    assert job["spec"]["backoffLimit"] == 0 and job["spec"]["activeDeadlineSeconds"] > 0
    assert [e["name"] for e in container["env"]] == ["HOME", "TWIN_MILVUS_TOKEN"]  # its own Secret, by reference
    assert "TWIN_TEACHER_KEY" not in json.dumps(job)


@pytest.mark.parametrize("message, expected", [
    ('{"added": 2, "changed": 1, "removed": 0, "failed": 0, "documents": 7, "chunks_written": 12}',
     {"added": 2, "changed": 1, "removed": 0, "failed": 0, "documents": 7, "chunks_written": 12}),
    ('{"added": -1}', None), ('{"added": "2"}', None), ('{"added": true}', None), ("[1, 2]", None), ("not json", None),
    ("", None), (None, None), ('{"added": 1}' + " " * 5000, None), ('{"added": 99999999999}', None),
])
def test_the_refresh_report_is_read_as_counts_only(message, expected):
    parsed = isolation.parse_report(message)
    if expected is None:
        assert parsed is None
    else:
        assert parsed == expected
