"""The TwinModel CRD, generated from `llm_twin.twinmodel.TwinModelSpec` (`make crd`).

Pydantic writes JSON Schema; Kubernetes wants a structural OpenAPI v3 schema: references inlined,
no `anyOf` with null (an optional field is simply not required), boolean `exclusiveMinimum`, no
`additionalProperties` beside `properties`, no titles. The status schema is the operator's own
contract and is written here.
"""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

from .twinmodel import GROUP, KIND, PLURAL, VERSION, TwinModelSpec

CRD_PATH = Path(__file__).resolve().parents[1] / "helm" / "llm-twin" / "crds" / f"{PLURAL}.{GROUP}.yaml"
HEADER = ("# The TwinModel custom resource: one object carries a twin from its sources to serving.\n"
          "# Generated from llm_twin/twinmodel.py by `make crd`; do not edit (a test compares them).\n")

STATUS = {
    "type": "object", "x-kubernetes-preserve-unknown-fields": True,
    "properties": {
        "observedGeneration": {"type": "integer"},
        "stage": {"type": "string"},
        "stageHashes": {"type": "object", "additionalProperties": {"type": "string"}},
        "conditions": {"type": "array", "items": {
            "type": "object", "required": ["type", "status"],
            "properties": {"type": {"type": "string"}, "status": {"type": "string", "enum": ["True", "False",
                                                                                             "Unknown"]},
                           "reason": {"type": "string"}, "message": {"type": "string"},
                           "lastTransitionTime": {"type": "string", "format": "date-time"},
                           "observedGeneration": {"type": "integer"}}}},
        **{name: {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
           for name in ("artifacts", "training", "serving", "refresh", "lastFailure")},
    },
}


def structural(schema: dict, defs: dict) -> dict:
    """One pydantic JSON-schema node -> a Kubernetes structural schema node."""
    if "$ref" in schema:
        target = structural(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
        return {**target, **{k: v for k, v in schema.items() if k not in ("$ref", "title")}}
    if "anyOf" in schema:  # X | None: optional, not nullable
        options = [o for o in schema["anyOf"] if o.get("type") != "null"]
        if len(options) != 1:
            raise ValueError(f"a union the CRD cannot express: {schema}")
        merged = {**structural(options[0], defs), **{k: v for k, v in schema.items() if k not in ("anyOf", "title")}}
        if merged.get("default", 0) is None:
            merged.pop("default")
        return merged
    out: dict = {}
    for key, value in schema.items():
        if key in ("title", "$defs", "additionalProperties"):
            continue
        if key == "properties":
            out[key] = {name: structural(prop, defs) for name, prop in value.items()}
        elif key == "items":
            out[key] = structural(value, defs)
        elif key == "exclusiveMinimum":
            out.update(minimum=value, exclusiveMinimum=True)
        elif key == "exclusiveMaximum":
            out.update(maximum=value, exclusiveMaximum=True)
        else:
            out[key] = value
    if "enum" in out and "type" not in out:
        out["type"] = "integer" if all(isinstance(v, int) for v in out["enum"]) else "string"
    if out.get("type") == "object" and isinstance(out.get("default"), dict):
        out.pop("default")  # nested defaults apply field by field, as the operator's parsing does
    return out


def spec_schema() -> dict:
    schema = TwinModelSpec.model_json_schema(by_alias=True)
    return structural(schema, schema.get("$defs", {}))


def crd() -> dict:
    return {
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP, "scope": "Namespaced",
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL, "singular": KIND.lower(),
                      "shortNames": ["twin", "tm"], "categories": ["llmtwin"]},
            "versions": [{
                "name": VERSION, "served": True, "storage": True, "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Stage", "type": "string", "jsonPath": ".status.stage"},
                    {"name": "Ready", "type": "string", "jsonPath": '.status.conditions[?(@.type=="Ready")].status'},
                    {"name": "Base model", "type": "string", "jsonPath": ".spec.training.baseModel"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}],
                "schema": {"openAPIV3Schema": {
                    "type": "object", "required": ["spec"],
                    "properties": {"apiVersion": {"type": "string"}, "kind": {"type": "string"},
                                   "metadata": {"type": "object"}, "spec": spec_schema(), "status": STATUS}}},
            }],
        },
    }


def render() -> str:
    return HEADER + yaml.safe_dump(crd(), sort_keys=False, width=120)


if __name__ == "__main__":
    CRD_PATH.write_text(render())
    print(f"wrote {CRD_PATH}", file=sys.stderr)
