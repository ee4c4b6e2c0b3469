"""One TwinModel contract: every field of a full spec, each set to a value other than its default,
reaches what acts on it: the pipeline's config (as the RayJob reads it from the rendered ConfigMap,
and as `twin pipeline --print-config` shows it), the RayJob, or the RayService. A field added to the
spec without a destination here fails this test."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from llm_twin.twinmodel import TwinModelSpec
from operators.twinmodel import builders
from operators.twinmodel.spec import normalise, stage_hashes
from training.config import PipelineConfig

ROOT = Path(__file__).resolve().parents[2]

FULL = {
    "suspend": True,
    "author": {"name": "Ada Writer", "sources": {
        "feeds": ["https://ada.test/feed.xml"], "pages": ["https://ada.test/sitemap.xml", "https://ada.test/p"],
        "repositories": ["https://git.test/ada/tools.git"], "linkedinExport": {"uri": "s3://exports/ada.zip"},
        "archives": ["s3://exports/ada-medium.zip", "gs://docs/talk.pdf"]}},
    "storage": {"warehouseUri": "s3://b/warehouse", "artifactUri": "gs://b/artifacts"},
    "vectorStore": {"milvusUri": "http://milvus.db:19531", "collection": "ada_chunks",
                    "tokenSecretRef": {"name": "milvus-auth", "key": "token"}},
    "dataset": {"teacher": {"endpoint": "https://teacher.test/v1", "model": "big-teacher",
                            "secretRef": {"name": "teacher-auth", "key": "api-key"}},
                "maxExamples": 321, "testFraction": 0.25, "rejectedMaxTokens": 96},
    "training": {"baseModel": "org/base-7b", "image": "registry.test/twin:9", "workers": 3, "gpusPerWorker": 2,
                 "threadsPerWorker": 5,
                 "sft": {"epochs": 2.5, "maxSteps": 77, "learningRate": 0.0003, "batchSize": 6, "maxLength": 1024},
                 "dpo": {"enabled": False, "epochs": 1.5, "maxSteps": 11, "learningRate": 0.00001, "batchSize": 3,
                         "maxLength": 768, "beta": 0.3},
                 "lora": {"r": 8, "alpha": 24, "dropout": 0.1, "targetModules": ["q_proj", "v_proj", "up_proj"],
                          "quantization": "4bit"},
                 "deepspeed": {"zeroStage": 3, "offload": True}},
    "evaluation": {"gate": {"maxPerplexityRatio": 0.95, "minStyleSimilarity": 0.4, "minJudgeStyle": 2.5},
                   "judge": {"endpoint": "https://judge.test/v1", "model": "big-judge",
                             "secretRef": {"name": "judge-auth", "key": "token"}}},
    "serving": {"engine": "tensorrt-llm", "minReplicas": 1, "maxReplicas": 4, "targetOngoingRequests": 16,
                "canaryPercent": 25, "requestTimeoutSeconds": 90, "maxQueuedRequests": 40, "apiKeysSecret": "ada-keys",
                "keyMaxConcurrent": 3, "keyRequestsPerMinute": 77, "maskPii": False, "resources": {"cpu": "6",
                                                                                                   "memory": "40Gi",
                                                                                                   "gpus": 2}},
    "refresh": {"interval": "12h", "retrainAfterDocuments": 3},
}
# Acted on by the operator itself; tests/integration/test_operator.py shows each.
OPERATOR = {"suspend", "refresh.interval", "refresh.retrainAfterDocuments"}


def leaves(value, path=()):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from leaves(item, (*path, key))
    else:
        yield ".".join(path), value


def rendered(spec: dict) -> dict:
    """What the RayJob's `twin pipeline --config` reads: the operator's ConfigMap."""
    normal = normalise(spec)
    hashes = stage_hashes(normal)
    return json.loads(builders.config_map("ada", "twins", TwinModelSpec.parse(normal),
                                          hashes)["data"][builders.CONFIG_KEY])


def destinations(spec: dict) -> dict:
    """Spec path -> the value found where it is acted on."""
    document = rendered(spec)
    normal, hashes = document["spec"], document["stageHashes"]
    p = PipelineConfig.from_twinmodel(document)
    t = p.train
    job = builders.ray_job("ada", "twins", TwinModelSpec.parse(normal), hashes)
    service = builders.ray_service("ada", "twins", TwinModelSpec.parse(normal), hashes)
    serve = yaml.safe_load(service["spec"]["serveConfigV2"])
    args = serve["applications"][0]["args"]
    generation = next(d for d in serve["applications"][0]["deployments"] if d["name"] == "Generation")
    gateway = next(d for d in serve["applications"][0]["deployments"] if d["name"] == "Gateway")
    worker = service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]
    job_env = {e["name"]: e["valueFrom"]["secretKeyRef"]
               for e in job["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]}
    serve_env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in worker["env"] if "valueFrom" in e}
    keys_volume = service["spec"]["rayClusterConfig"]["workerGroupSpecs"][0]["template"]["spec"]["volumes"][0]
    job_workers = job["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]
    return {
        "author.name": p.author,
        "author.sources.feeds": p.sources.feeds, "author.sources.pages": p.sources.pages,
        "author.sources.repositories": p.sources.repositories,
        "author.sources.linkedinExport.uri": p.sources.linkedin_export.uri,
        "author.sources.archives": p.sources.archives,
        "storage.warehouseUri": p.storage.warehouse_uri == args["warehouse_uri"] and p.storage.warehouse_uri,
        "storage.artifactUri": p.storage.artifact_uri == args["artifact_uri"] and p.storage.artifact_uri,
        "vectorStore.milvusUri": p.storage.milvus_uri == args["milvus_uri"] and p.storage.milvus_uri,
        "vectorStore.collection": p.storage.collection == args["collection"] and p.storage.collection,
        "vectorStore.tokenSecretRef.name": job_env["TWIN_MILVUS_TOKEN"] == serve_env["TWIN_MILVUS_TOKEN"]
        and serve_env["TWIN_MILVUS_TOKEN"]["name"],
        "vectorStore.tokenSecretRef.key": serve_env["TWIN_MILVUS_TOKEN"]["key"],
        "dataset.teacher.endpoint": p.dataset.teacher_url, "dataset.teacher.model": p.dataset.teacher_model,
        "dataset.teacher.secretRef.name": job_env["TWIN_TEACHER_KEY"]["name"],
        "dataset.teacher.secretRef.key": job_env["TWIN_TEACHER_KEY"]["key"],
        "dataset.maxExamples": p.dataset.max_examples, "dataset.testFraction": p.dataset.test_fraction,
        "dataset.rejectedMaxTokens": p.dataset.rejected_max_tokens,
        "training.baseModel": p.base_model == args["generation_model"] and p.base_model,
        "training.image": job_workers["template"]["spec"]["containers"][0]["image"] == worker["image"]
        and worker["image"],
        "training.workers": t.workers == job_workers["replicas"] and t.workers,
        "training.gpusPerWorker": t.gpus_per_worker,
        "training.threadsPerWorker": t.threads_per_worker,
        **{f"training.sft.{k}": getattr(t.sft, s) for k, s in (("epochs", "epochs"), ("maxSteps", "max_steps"),
                                                               ("learningRate", "learning_rate"),
                                                               ("batchSize", "batch_size"), ("maxLength",
                                                                                             "max_length"))},
        **{f"training.dpo.{k}": getattr(t.dpo, s) for k, s in (("enabled", "enabled"), ("epochs", "epochs"),
                                                               ("maxSteps", "max_steps"),
                                                               ("learningRate", "learning_rate"),
                                                               ("batchSize", "batch_size"), ("maxLength", "max_length"),
                                                               ("beta", "beta"))},
        "training.lora.r": t.lora.r, "training.lora.alpha": t.lora.alpha, "training.lora.dropout": t.lora.dropout,
        "training.lora.targetModules": t.lora.target_modules, "training.lora.quantization": t.lora.quantization,
        "training.deepspeed.zeroStage": t.deepspeed.zero_stage, "training.deepspeed.offload": t.deepspeed.offload,
        "evaluation.gate.maxPerplexityRatio": p.gate.max_perplexity_ratio,
        "evaluation.gate.minStyleSimilarity": p.gate.min_style_similarity,
        "evaluation.gate.minJudgeStyle": p.gate.min_judge_style,
        "evaluation.judge.endpoint": p.judge.judge_url, "evaluation.judge.model": p.judge.judge_model,
        "evaluation.judge.secretRef.name": job_env["TWIN_JUDGE_KEY"]["name"],
        "evaluation.judge.secretRef.key": job_env["TWIN_JUDGE_KEY"]["key"],
        "serving.engine": args["generation_engine"],
        "serving.minReplicas": generation["autoscaling_config"]["min_replicas"],
        "serving.maxReplicas": generation["autoscaling_config"]["max_replicas"],
        "serving.targetOngoingRequests": generation["autoscaling_config"]["target_ongoing_requests"],
        "serving.maxQueuedRequests": generation["max_queued_requests"] == gateway["max_queued_requests"]
        and gateway["max_queued_requests"],
        "serving.apiKeysSecret": keys_volume["secret"]["secretName"],
        "serving.keyMaxConcurrent": args["key_max_concurrent"],
        "serving.keyRequestsPerMinute": args["key_requests_per_minute"],
        "serving.maskPii": args["monitoring_mask_pii"],
        "serving.canaryPercent": service["spec"]["upgradeStrategy"]["clusterUpgradeOptions"]["stepSizePercent"],
        "serving.requestTimeoutSeconds": serve["http_options"]["request_timeout_s"]
        == serve["grpc_options"]["request_timeout_s"] and serve["http_options"]["request_timeout_s"],
        "serving.resources.cpu": worker["resources"]["limits"]["cpu"],
        "serving.resources.memory": worker["resources"]["limits"]["memory"],
        "serving.resources.gpus": generation["ray_actor_options"]["num_gpus"] == int(
            worker["resources"]["limits"]["nvidia.com/gpu"]) and generation["ray_actor_options"]["num_gpus"],
    }


def test_the_full_spec_sets_every_field_to_a_non_default_value():
    defaults = dict(leaves(TwinModelSpec.model_validate({
        "author": {"name": "x", "sources": {"feeds": ["https://x"]}}, "training": {"baseModel": "m"}}).as_resource()))
    given = dict(leaves(FULL))
    schema_leaves = set(dict(leaves(TwinModelSpec.parse(FULL).as_resource())))
    assert set(given) == schema_leaves, "FULL must set every field of the spec"
    assert [k for k, v in given.items() if defaults.get(k) == v] == []


def test_every_field_reaches_what_acts_on_it():
    found = destinations(FULL)
    assert set(found) | OPERATOR == set(dict(leaves(FULL))), "a spec field with no destination"
    wrong = {path: (value, found[path]) for path, value in leaves(FULL) if path in found and found[path] != value}
    assert wrong == {}


def test_print_config_shows_the_resolved_pipeline_config_and_does_nothing(tmp_path):
    config = tmp_path / "twinmodel.json"
    config.write_text(json.dumps(rendered(FULL)))
    done = subprocess.run([sys.executable, "-m", "twin_cli", "--data-dir", str(tmp_path / "data"), "pipeline",
                           "--config", str(config), "--print-config"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["pipeline"] == PipelineConfig.from_twinmodel(rendered(FULL)).model_dump(mode="json")
    assert shown["pipeline"]["train"]["dpo"]["enabled"] is False
    assert shown["pipeline"]["sources"]["linkedin_export"]["uri"] == "s3://exports/ada.zip"
    assert shown["pipeline"]["sources"]["archives"] == ["s3://exports/ada-medium.zip", "gs://docs/talk.pdf"]
    assert shown["storage"]["milvus_uri"] == "http://milvus.db:19531"
    assert shown["secrets"] == {"teacher_key": False, "milvus_token": False, "judge_key": False}
    assert not (tmp_path / "data").exists(), "--print-config must do no work"


def test_print_config_with_flags_builds_from_the_same_classes(tmp_path):
    done = subprocess.run([sys.executable, "-m", "twin_cli", "--data-dir", str(tmp_path), "pipeline", "--author", "Ada",
                           "--sft-learning-rate", "0.001", "--no-dpo", "--lora-target-modules", "q_proj",
                           "--lora-target-modules", "k_proj", "--deepspeed-zero-stage", "3", "--min-style-similarity",
                           "0.2", "--print-config"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    train = json.loads(done.stdout)["pipeline"]["train"]
    assert (train["sft"]["learning_rate"], train["dpo"]["enabled"], train["lora"]["target_modules"],
            train["deepspeed"]["zero_stage"]) == (0.001, False, ["q_proj", "k_proj"], 3)
    assert json.loads(done.stdout)["pipeline"]["gate"]["min_style_similarity"] == 0.2


@pytest.mark.parametrize("args, fragment", [
    (["--sft-learning-rate", "0.5"], "--sft-learning-rate"),
    (["--lora-r", "0"], "--lora-r"),
    (["--deepspeed-offload", "--deepspeed-zero-stage", "1"], "offload needs zeroStage 2 or 3"),
    (["--qlora"], "4bit (QLoRA) needs GPU workers"),
    (["--lora-quantization", "4bit", "--gpus-per-worker", "0"], "set gpusPerWorker >= 1"),
    (["--lora-quantization", "8bit"], "--lora-quantization"),
    (["--qlora", "--lora-quantization", "none", "--gpus-per-worker", "1"], "--qlora and --lora-quantization none"),
])
def test_bad_flags_are_refused_naming_the_flag(tmp_path, args, fragment):
    done = subprocess.run([sys.executable, "-m", "twin_cli", "--data-dir", str(tmp_path), "pipeline", "--author", "Ada",
                           *args, "--print-config"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and fragment in done.stderr, done.stderr


def test_qlora_flag_is_the_lora_quantization_field(tmp_path):
    done = subprocess.run([sys.executable, "-m", "twin_cli", "--data-dir", str(tmp_path), "pipeline", "--author", "Ada",
                           "--qlora", "--gpus-per-worker", "1", "--print-config"], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["pipeline"]["train"]["lora"]["quantization"] == "4bit"


def test_qlora_is_refused_naming_the_fix_where_a_worker_cannot_run_it(tmp_path):
    """This machine has no CUDA GPU: the training function refuses before loading anything."""
    done = subprocess.run([sys.executable, "-m", "twin_cli", "--data-dir", str(tmp_path), "train", "--author", "Ada",
                           "--dataset", str(tmp_path / "dataset"), "--base-model", str(tmp_path / "no-model"),
                           "--qlora", "--gpus-per-worker", "1", "--no-ray"], capture_output=True, text=True,
                           timeout=120)
    assert done.returncode == 2, done.stderr
    assert "needs a CUDA GPU on every training worker" in done.stderr and "lora.quantization none" in done.stderr


def test_qlora_without_bitsandbytes_names_the_package(monkeypatch):
    import importlib.util

    from training import sft_dpo
    from training.config import TrainConfig

    cfg = TrainConfig(author="Ada", base_model="m", dataset_dir="d", output_dir="o", gpus_per_worker=1,
                      lora={"quantization": "4bit"})
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "bitsandbytes" else real(name, *a))
    with pytest.raises(ValueError, match="pip install bitsandbytes"):
        sft_dpo.four_bit_config(cfg, on_gpu=True)
    plain = cfg.model_copy(update={"lora": cfg.lora.model_copy(update={"quantization": "none"})})
    assert sft_dpo.four_bit_config(plain, on_gpu=True) is None
    with pytest.raises(ValueError, match="merge the adapter into 4-bit weights"):
        TrainConfig(author="Ada", base_model="m", dataset_dir="d", output_dir="o", gpus_per_worker=1,
                    lora={"quantization": "4bit"}, merge=True)


def test_config_and_flags_together_are_refused(tmp_path):
    config = tmp_path / "twinmodel.json"
    config.write_text(json.dumps(rendered(FULL)))
    done = subprocess.run([sys.executable, "-m", "twin_cli", "pipeline", "--config", str(config), "--lora-r", "4",
                           "--print-config"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--config carries the whole configuration" in done.stderr
