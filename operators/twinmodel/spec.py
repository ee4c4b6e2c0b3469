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

__all__ = ["GROUP", "PLURAL", "VERSION", "STAGES", "InvalidSpec", "normalise", "stage_hashes", "digest"]

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
