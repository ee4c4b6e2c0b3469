"""The model registry: trained adapters (and merged models) with their metadata, in the artifact
store under ``models/<author>/<version>/`` (where serving loads them from), each a version of the
twin's registered model in MLflow (``twin-<slug>``, llm_twin.tracking).

Which version serves is one fact: the registered model's ``serving`` alias (moved by a pipeline whose
model passed the gate, or by hand in MLflow's UI to roll back). Without any tracking server (a
library user, a bare folder) the newest servable folder serves. `twin serve` and `twin models sync`
register folders that MLflow does not know yet (registries from before MLflow, `twin train`).
"""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime

import fsspec

from llm_twin import tracking
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
              "registered": datetime.now(UTC).isoformat(timespec="microseconds")}
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


def register_version(client, author: str, model: dict, *, source: str, run_id: str | None, servable: bool,
                     why: str, move_alias: bool = True) -> str:
    """A registry folder's model as a version of ``twin-<slug>``; idempotent by the folder's version
    name (one already registered gets the new verdict, not a second version). -> the version number."""
    from mlflow.exceptions import MlflowException

    name = tracking.twin_name(author)
    try:
        client.create_registered_model(name, tags={"twin": author},
                                       description=f"{author}'s twin: LoRA adapters over the base model.")
    except MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
    existing = _versions(client, name, model["version"])
    if existing:
        number = existing[0].version
        client.set_model_version_tag(name, number, "servable", str(servable).lower())
        client.set_model_version_tag(name, number, "gate", why[:5000])
    else:
        number = client.create_model_version(
            name, source=source, run_id=run_id, description=f"base {model.get('base_model')}; gate: {why}"[:5000],
            tags={"twin.version": model["version"], "twin.path": model["path"], "servable": str(servable).lower(),
                  "gate": why[:5000], "base_model": str(model.get("base_model"))}).version
    if servable and move_alias:
        client.set_registered_model_alias(name, tracking.SERVING_ALIAS, number)
    return str(number)


def _versions(client, name: str, version: str) -> list:
    if "'" in version:  # version names are slugs and hashes; a quote would break the filter
        raise ValueError(f"version {version!r}: quotes are not allowed")
    return client.search_model_versions(f"name = '{name}' and tag.`twin.version` = '{version}'")


def serving_version(client, author: str, pinned: str | None = None) -> str | None:
    """The folder version name that serves ``author``: the pinned one (a folder version name, or an
    MLflow version number) if registered and servable, else the one the ``serving`` alias names."""
    from mlflow.exceptions import MlflowException

    name = tracking.twin_name(author)
    try:
        if pinned:
            found = _versions(client, name, pinned)
            if not found and pinned.isdigit():
                found = [client.get_model_version(name, pinned)]
        else:
            found = [client.get_model_version_by_alias(name, tracking.SERVING_ALIAS)]
    except MlflowException as exc:
        if exc.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None  # no registered model, no alias yet, or no such version
        raise
    found = [v for v in found if v.tags.get("servable") == "true" and v.tags.get("twin.version")]
    return found[0].tags["twin.version"] if found else None


def serving(settings, author: str, pinned: str | None = None) -> dict | None:
    """The registered model (its folder's metadata) that serves ``author``, or None."""
    uri = tracking.resolve_uri(settings)
    if uri is None:
        return latest(settings.resolved_artifact_uri, author, True, pinned)
    try:
        version = serving_version(tracking.client(uri), author, pinned)
    except Exception as exc:  # noqa: BLE001 - an unreachable or failing server: say so, never a bare error
        raise tracking.TrackingError(f"the MLflow server at {uri} could not say which version of {author!r} serves "
                                     f"({type(exc).__name__}: {str(exc)[:200]}); check that it runs") from exc
    return latest(settings.resolved_artifact_uri, author, True, version) if version else None


def sync(settings, uri: str, say=print) -> list[str]:
    """Register in MLflow every folder model it does not know (oldest first, each with a run holding
    its adapter and figures); a twin with no ``serving`` alias gets it on its newest servable model.
    Idempotent. -> the "author version" pairs registered."""
    client = tracking.client(uri)
    done = []
    for model in sorted(list_models(settings.resolved_artifact_uri), key=lambda m: m.get("registered", "")):
        if _versions(client, tracking.twin_name(model["author"]), model["version"]):
            continue
        publish(settings, uri, model, "imported from the folder registry", move_alias=False)
        done.append(f"{model['author']} {model['version']}")
        say(f"registered {model['author']} {model['version']} in MLflow")
    for author in {m["author"] for m in list_models(settings.resolved_artifact_uri)}:
        name = tracking.twin_name(author)
        try:
            client.get_model_version_by_alias(name, tracking.SERVING_ALIAS)
        except Exception:  # noqa: BLE001 - no alias (or no model): give it the newest servable folder
            newest = latest(settings.resolved_artifact_uri, author)
            found = _versions(client, name, newest["version"]) if newest else []
            if found:
                client.set_registered_model_alias(name, tracking.SERVING_ALIAS, found[0].version)
    return done


def publish(settings, uri: str, model: dict, why: str, move_alias: bool = True) -> str:
    """A folder model made outside a pipeline run (`twin train`, `twin eval model`, an older registry)
    in MLflow: a run holding its adapter and figures the first time, its verdict every time, and the
    serving alias when it is servable (and ``move_alias``). -> the version number."""
    client = tracking.client(uri)
    name = tracking.twin_name(model["author"])
    known = _versions(client, name, model["version"])
    run_id = known[0].run_id if known else None
    if not known:
        run_id = client.create_run(tracking.experiment_id(client, model["author"]),
                                   run_name=f"import {model['version']}",
                                   tags={"twin": model["author"], "mlflow.source.name": "twin models"}).info.run_id
        _log_imported(client, run_id, model, settings)
        client.set_terminated(run_id)
    return register_version(client, model["author"], model, source=f"runs:/{run_id}/adapter", run_id=run_id,
                            servable=bool(model.get("servable")), why=why, move_alias=move_alias)


def _log_imported(client, run_id: str, model: dict, settings) -> None:
    import time

    from mlflow.entities import Metric

    now = int(time.time() * 1000)
    metrics = [Metric(f"train.{k}", float(v), now, 0) for k, v in (model.get("metrics") or {}).items()
               if isinstance(v, int | float) and not isinstance(v, bool)]
    metrics += [Metric(f"eval.{k}", float(v), now, 0) for k, v in (model.get("evaluation") or {}).items()
                if isinstance(v, int | float) and not isinstance(v, bool)]
    client.log_batch(run_id, metrics=metrics[:1000], synchronous=True)
    client.log_artifacts(run_id, local_adapter(model, os.path.join(str(settings.data_dir), "cache", "adapters")),
                         "adapter")
