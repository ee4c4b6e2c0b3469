"""The TwinModel spec as the operator reads it: parsed and validated by the one typed contract
(`llm_twin.twinmodel.TwinModelSpec`, which also generates the CRD), and the per-stage hashes that
decide what must run again.

The API server rejects most bad specs with the CRD's schema and CEL rules; the operator parses
every spec again, because not every API server (or emulator) enforces the schema.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from llm_twin.twinmodel import GROUP, PLURAL, VERSION, InvalidSpec, TwinModelSpec

__all__ = ["GROUP", "PLURAL", "VERSION", "STAGES", "InvalidSpec", "normalise", "stage_hashes", "digest",
           "place_storage", "secret_refs", "SECRET_OPT_IN"]
# A Secret a TwinModel may name (Milvus token, teacher and judge keys, API keys) carries this label:
# a TwinModel's author cannot hand the twin's pods (running an image they choose) any other Secret.
SECRET_OPT_IN = f"{GROUP}/twin-secret"

STAGES = ("SourcesIngested", "DatasetReady", "Trained", "Evaluated", "Serving")


def normalise(spec: dict) -> dict:
    """The spec as the resource spells it, every default filled in; raises InvalidSpec."""
    return TwinModelSpec.parse(spec).as_resource()


def digest(*parts: Any) -> str:
    blob = json.dumps(parts, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def stage_hashes(spec: dict, data_revision: int = 0) -> dict[str, str]:
    """Each stage's hash covers the spec parts it depends on, and the hash of the stage before it:
    a change re-runs the stage it touches and every stage after it, nothing before.
    ``data_revision`` counts the refreshes that found enough new writing to retrain on."""
    ingest = digest(spec["author"], spec["storage"].get("warehouseUri"), spec["vectorStore"],
                    *([data_revision] if data_revision else []))
    dataset = digest(ingest, spec["dataset"])
    training = digest(dataset, spec["training"], spec["storage"].get("artifactUri"))
    evaluation = digest(training, spec["evaluation"])
    serving = digest(evaluation, spec["serving"])
    return {"ingest": ingest, "dataset": dataset, "training": training, "evaluation": evaluation,
            "serving": serving}


def _clean(uri: str) -> str:
    return uri.strip().rstrip("/")


def place_storage(spec: dict, namespace: str, name: str, root: str) -> dict:
    """The spec with the twin's storage placed under ``<root>/<namespace>/<name>/``: empty paths
    are put there, a path elsewhere (another twin's, or anywhere else) raises InvalidSpec naming it.
    Warehouse and artifacts hold what trains and serves the twin: another twin's must be out of reach."""
    own = f"{_clean(root)}/{namespace}/{name}"
    storage = dict(spec.get("storage") or {})
    for field, default in (("warehouseUri", "warehouse"), ("artifactUri", "artifacts")):
        uri = _clean(storage.get(field) or "")
        if not uri:
            storage[field] = f"{own}/{default}"
            continue
        parts = uri.split("://", 1)[-1].split("/")
        if ".." in parts or "." in parts or "//" in uri.split("://", 1)[-1] or not (uri + "/").startswith(own + "/"):
            raise InvalidSpec(f"spec.storage.{field}: {uri!r} is outside this twin's storage {own}/ (each twin "
                              f"stores under <storage root>/<namespace>/<name>/; leave it empty to use "
                              f"{own}/{default})")
        storage[field] = uri
    return {**spec, "storage": storage}


def secret_refs(spec: dict) -> list[tuple[str, str]]:
    """(field path, Secret name) of every Secret the spec names."""
    refs = []
    if (spec.get("vectorStore") or {}).get("tokenSecretRef"):
        refs.append(("spec.vectorStore.tokenSecretRef", spec["vectorStore"]["tokenSecretRef"]["name"]))
    teacher = (spec.get("dataset") or {}).get("teacher") or {}
    if teacher.get("secretRef"):
        refs.append(("spec.dataset.teacher.secretRef", teacher["secretRef"]["name"]))
    judge = ((spec.get("evaluation") or {}).get("judge") or {})
    if judge.get("secretRef"):
        refs.append(("spec.evaluation.judge.secretRef", judge["secretRef"]["name"]))
    if (spec.get("serving") or {}).get("apiKeysSecret"):
        refs.append(("spec.serving.apiKeysSecret", spec["serving"]["apiKeysSecret"]))
    return refs
