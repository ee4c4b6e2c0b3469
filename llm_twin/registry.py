"""The model registry: trained adapters (and merged models) with their metadata, in the artifact
store under ``models/<author>/<version>/``."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

import fsspec

from llm_twin.documents import author_slug


def register(artifact_uri: str, author: str, version: str, output_dir: str, metadata: dict) -> str:
    """Copies the adapter (and merged model) from ``output_dir`` and writes metadata.json last."""
    path = f"{artifact_uri.rstrip('/')}/models/{author_slug(author)}/{version}"
    fs, root = fsspec.core.url_to_fs(path)
    fs.makedirs(root, exist_ok=True)
    for part in ("adapter", "merged"):
        source = os.path.join(output_dir, part)
        if os.path.isdir(source):
            fs.put(source, f"{root}/{part}", recursive=True)
    record = {**metadata, "author": author, "version": version, "path": path,
              "registered": datetime.now(UTC).isoformat(timespec="seconds")}
    with fs.open(f"{root}/metadata.json", "w") as f:
        json.dump(record, f, indent=2, sort_keys=True, default=str)
    return path


def list_models(artifact_uri: str) -> list[dict]:
    fs, root = fsspec.core.url_to_fs(f"{artifact_uri.rstrip('/')}/models")
    if not fs.exists(root):
        return []
    out = []
    for meta in sorted(fs.glob(f"{root}/*/*/metadata.json")):
        with fs.open(meta) as f:
            out.append(json.load(f))
    return sorted(out, key=lambda m: m.get("registered", ""), reverse=True)


def latest(artifact_uri: str, author: str, servable_only: bool = True, version: str | None = None) -> dict | None:
    """The newest registered model of a twin (by default only one whose evaluation passed the gate),
    or, with ``version``, that version (None when it is missing or, servable_only, held back)."""
    slug = author_slug(author)
    for model in list_models(artifact_uri):
        if author_slug(model["author"]) != slug or (version and model.get("version") != version):
            continue
        if model.get("servable") or not servable_only:
            return model
    return None


def update(path: str, **fields) -> dict:
    """Adds fields (the evaluation, whether it may serve) to a registered model's metadata."""
    fs, root = fsspec.core.url_to_fs(path)
    with fs.open(f"{root}/metadata.json") as f:
        record = json.load(f)
    record.update(fields)
    with fs.open(f"{root}/metadata.json", "w") as f:
        json.dump(record, f, indent=2, sort_keys=True, default=str)
    return record


def local_adapter(model: dict, cache_dir: str) -> str:
    """A local folder holding the model's adapter (downloaded once when the registry is remote)."""
    from fsspec.implementations.local import LocalFileSystem

    fs, root = fsspec.core.url_to_fs(f"{model['path']}/adapter")
    if isinstance(fs, LocalFileSystem):
        return root
    target = os.path.join(cache_dir, author_slug(model["author"]), model["version"])
    if not os.path.exists(os.path.join(target, "adapter_config.json")):
        fs.get(root, target, recursive=True)
    return target
