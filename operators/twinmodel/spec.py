"""The TwinModel spec as the operator reads it: validation (with messages that name the fix) and
the per-stage hashes that decide what must run again.

The CRD's OpenAPI schema and CEL rules reject most bad specs at the API server; this repeats the
rules the operator depends on, because not every API server (or emulator) enforces the schema.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

GROUP, VERSION, PLURAL, KIND = "llmtwin.dev", "v1alpha1", "twinmodels", "TwinModel"
STAGES = ("SourcesIngested", "DatasetReady", "Trained", "Evaluated", "Serving")
ENGINES = ("tensorrt-llm", "transformers")

DEFAULTS: dict[str, Any] = {
    "suspend": False,
    "storage": {"warehouseUri": "", "artifactUri": "s3://llm-twin/artifacts"},
    "vectorStore": {"milvusUri": "http://milvus:19530", "collection": "twin_chunks"},
    "dataset": {"maxExamples": 2000, "testFraction": 0.1},
    "training": {"image": "ghcr.io/llm-twin/llm-twin:0.1.0", "workers": 1, "gpusPerWorker": 1,
                 "sft": {"epochs": 3, "learningRate": 2e-4, "maxLength": 2048},
                 "dpo": {"enabled": True, "epochs": 1, "beta": 0.1},
                 "lora": {"r": 16, "alpha": 32, "dropout": 0.05, "targetModules": ["q_proj", "k_proj", "v_proj", "o_proj"]},
                 "deepspeed": {"zeroStage": 2, "offload": False}},
    "evaluation": {"gate": {"maxPerplexityRatio": 1.0, "minStyleSimilarity": 0.0}},
    "serving": {"engine": "transformers", "minReplicas": 0, "maxReplicas": 2, "targetOngoingRequests": 8,
                "canaryPercent": 0, "resources": {"cpu": "2", "memory": "8Gi", "gpus": 0}},
}


class InvalidSpec(ValueError):
    """The spec cannot be reconciled; the message says which field and how to fix it."""


def _merge(defaults: dict, given: dict) -> dict:
    out = dict(defaults)
    for key, value in (given or {}).items():
        out[key] = _merge(defaults[key], value) if isinstance(value, dict) and isinstance(defaults.get(key), dict) else value
    return out


def normalise(spec: dict) -> dict:
    """Defaults filled in and the operator's rules checked; raises InvalidSpec."""
    spec = _merge(DEFAULTS, dict(spec or {}))
    author = spec.get("author") or {}
    if not str(author.get("name", "")).strip():
        raise InvalidSpec("spec.author.name is required: whose writing is this twin made of?")
    sources = author.get("sources") or {}
    if not any(sources.get(k) for k in ("feeds", "pages", "repositories", "linkedinExport")):
        raise InvalidSpec("spec.author.sources needs at least one of feeds, pages, repositories, linkedinExport")
    training = spec["training"]
    if not str(training.get("baseModel", "")).strip():
        raise InvalidSpec("spec.training.baseModel is required (a Hugging Face id or folder)")
    if not 1 <= int(training["workers"]) <= 64:
        raise InvalidSpec(f"spec.training.workers must be 1..64, got {training['workers']}")
    if training["deepspeed"]["zeroStage"] not in (0, 1, 2, 3):
        raise InvalidSpec(f"spec.training.deepspeed.zeroStage must be 0-3, got {training['deepspeed']['zeroStage']}")
    if training["deepspeed"]["offload"] and training["deepspeed"]["zeroStage"] < 2:
        raise InvalidSpec("spec.training.deepspeed.offload needs zeroStage 2 or 3")
    serving = spec["serving"]
    if serving["engine"] not in ENGINES:
        raise InvalidSpec(f"spec.serving.engine must be one of {', '.join(ENGINES)}, got {serving['engine']!r}")
    if serving["minReplicas"] > serving["maxReplicas"]:
        raise InvalidSpec("spec.serving.minReplicas must not exceed spec.serving.maxReplicas")
    if serving["engine"] == "tensorrt-llm" and int(serving["resources"].get("gpus", 0)) < 1:
        raise InvalidSpec("spec.serving.engine tensorrt-llm needs spec.serving.resources.gpus >= 1")
    if not 0 <= int(serving["canaryPercent"]) <= 100:
        raise InvalidSpec("spec.serving.canaryPercent must be 0..100")
    return spec


def digest(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage_hashes(spec: dict) -> dict[str, str]:
    """Each stage's hash covers the spec parts it depends on, and the hash of the stage before it:
    a change re-runs the stage it touches and every stage after it, nothing before."""
    ingest = digest(spec["author"], spec["storage"].get("warehouseUri"), spec["vectorStore"])
    dataset = digest(ingest, spec["dataset"])
    training = digest(dataset, {k: v for k, v in spec["training"].items()}, spec["storage"].get("artifactUri"))
    evaluation = digest(training, spec["evaluation"])
    serving = digest(evaluation, spec["serving"])
    return {"ingest": ingest, "dataset": dataset, "training": training, "evaluation": evaluation,
            "serving": serving}
